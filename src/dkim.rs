//! DKIM signing at reception, before the spool: the stored message is exactly the one that
//! is delivered.
//!
//! Each `[[dkim]]` entry is one key and the mail it signs: by default mail whose From:
//! domain is the entry's `domain` (with `subdomains`, also domains under it); with
//! `sign = "all"` every message (of its `tenant`, when set) — the ESP's own second
//! signature. Several entries may sign one message; each adds its `DKIM-Signature`.
//! Signatures are rsa-sha256 or ed25519-sha256, relaxed/relaxed, with `t=` and optional
//! `x=`, made by `mail-auth` 0.13 with signers built once per key at load. `over_sign`
//! lists each configured header once more than the message has it (KumoMTA's meaning), so
//! a header added later breaks the signature.
//!
//! mail-auth 0.13.3 hashes a relaxed body that ends in whitespace-only lines wrongly (it
//! keeps line breaks that relaxed canonicalisation drops). Such trailing lines carry nothing
//! — relaxed canonicalisation removes them anyway — so they are removed from the message
//! before it is signed, and the signature matches what every verifier computes.
//!
//! Keys are read at start and on reload ([`DkimKeys::replace`]); a key that cannot be used
//! is a config error naming its file. Signing costs ~0.4 ms per RSA-2048 signature, so the
//! ingress calls [`Signers::sign`] on the blocking pool.

use crate::config::{DkimConfig, DkimSign, LoadedConfig};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The signers in force, swapped whole on reload.
pub struct DkimKeys {
    current: RwLock<Arc<Signers>>,
}

impl DkimKeys {
    /// Keys in force from the start.
    pub fn new(signers: Signers) -> Arc<DkimKeys> {
        Arc::new(DkimKeys {
            current: RwLock::new(Arc::new(signers)),
        })
    }

    /// The signers in force now.
    pub fn current(&self) -> Arc<Signers> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Put `signers` in force (a reload).
    pub fn replace(&self, signers: Signers) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(signers);
    }
}

/// A loaded signing key.
enum Key {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One `[[dkim]]` entry, ready to sign.
struct Entry {
    domain: String,
    subdomains: bool,
    all: bool,
    tenant: Option<String>,
    key: Key,
    signed: metrics::Counter,
}

impl Entry {
    /// Whether this entry signs a message of `tenant` whose From: domain is `from`.
    fn applies(&self, tenant: &str, from: Option<&str>) -> bool {
        if self.tenant.as_deref().is_some_and(|t| t != tenant) {
            return false;
        }
        if self.all {
            return true;
        }
        let Some(from) = from else { return false };
        from == self.domain
            || (self.subdomains
                && from
                    .strip_suffix(self.domain.as_str())
                    .is_some_and(|rest| rest.ends_with('.')))
    }

    fn sign(&self, message: &[u8]) -> mail_auth::Result<String> {
        match &self.key {
            Key::Rsa(s) => s.sign(message).map(|sig| sig.to_header()),
            Key::Ed25519(s) => s.sign(message).map(|sig| sig.to_header()),
        }
    }
}

/// Every `[[dkim]]` entry.
#[derive(Default)]
pub struct Signers {
    entries: Vec<Entry>,
}

/// Why a message that should be signed could not be.
#[derive(Debug)]
pub struct SignError {
    /// The entry's domain.
    pub domain: String,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DKIM signing for {} failed: {}",
            self.domain, self.reason
        )
    }
}

impl Signers {
    /// Build the signers of a loaded config; `Err` names the entry's key file and why.
    pub fn load(loaded: &LoadedConfig) -> Result<Signers, String> {
        let mut entries = Vec::new();
        for c in &loaded.config.dkim {
            let key = load_key(&loaded.resolve(c.key_file.get_ref()), c)?;
            let domain = c.domain.get_ref().to_ascii_lowercase();
            entries.push(Entry {
                signed: metrics::counter!("switchyard_dkim_signed_total", "domain" => domain.clone()),
                domain,
                subdomains: c.subdomains,
                all: c.sign == DkimSign::All,
                tenant: c.tenant.clone(),
                key,
            });
        }
        Ok(Signers { entries })
    }

    /// No `[[dkim]]` entry: nothing is ever signed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sign `message` (headers and body, CRLF line ends, not dot-stuffed) for `tenant` with
    /// every entry that applies: the signatures go on top of it. Returns the signing
    /// domains, in entry order.
    pub fn sign(&self, tenant: &str, message: &mut Vec<u8>) -> Result<Vec<String>, SignError> {
        let from = from_domain(message);
        let signing: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.applies(tenant, from.as_deref()))
            .collect();
        if signing.is_empty() {
            return Ok(Vec::new());
        }
        trim_trailing_blank_lines(message);
        let mut headers = Vec::new();
        for e in &signing {
            match e.sign(message) {
                Ok(h) => headers.extend_from_slice(h.as_bytes()),
                Err(err) => {
                    let reason = err.to_string();
                    metrics::counter!("switchyard_dkim_failures_total", "domain" => e.domain.clone(), "reason" => reason.clone()).increment(1);
                    return Err(SignError {
                        domain: e.domain.clone(),
                        reason,
                    });
                }
            }
        }
        for e in &signing {
            e.signed.increment(1);
        }
        headers.extend_from_slice(message);
        *message = headers;
        Ok(signing.iter().map(|e| e.domain.clone()).collect())
    }
}

/// Check that an entry's key can sign (config validation): `Err` names the file and why.
pub fn check_key(path: &Path, c: &DkimConfig) -> Result<(), String> {
    load_key(path, c).map(|_| ())
}

/// Read and check one entry's key: RSA 2048–4096 bits (PKCS#1 or PKCS#8) or Ed25519
/// (PKCS#8, OpenSSL's form accepted), and build its signer.
fn load_key(path: &Path, c: &DkimConfig) -> Result<Key, String> {
    let named = |why: String| format!("DKIM key {}: {why}", path.display());
    let der = PrivateKeyDer::from_pem_file(path)
        .map_err(|e| named(format!("cannot read a PEM private key ({e})")))?;
    let mut headers: Vec<String> = Vec::new();
    for h in &c.headers {
        headers.push(h.clone());
        if c.over_sign {
            // Named twice: mail-auth signs every instance present for the first, and the
            // second (never found) adds one empty instance — one more than present.
            headers.push(h.clone());
        }
    }
    let expiration = c.expiration.as_ref().map_or(0, |d| d.0.as_secs());
    let domain = c.domain.get_ref().to_ascii_lowercase();
    let (selector, headers) = (c.selector.as_str(), headers.as_slice());
    match &der {
        PrivateKeyDer::Pkcs1(_) => RsaKey::<Sha256>::from_key_der(der.clone_key())
            .map(|k| Key::Rsa(signer(k, &domain, selector, headers, expiration)))
            .map_err(|e| named(format!("{e} (RSA keys must be 2048 to 4096 bits)"))),
        PrivateKeyDer::Pkcs8(p) => match RsaKey::<Sha256>::from_key_der(der.clone_key()) {
            Ok(k) => Ok(Key::Rsa(signer(k, &domain, selector, headers, expiration))),
            Err(rsa) => Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
                .map(|k| Key::Ed25519(signer(k, &domain, selector, headers, expiration)))
                .map_err(|_| {
                    named(format!(
                        "neither a usable RSA key ({rsa}; 2048 to 4096 bits) nor an Ed25519 key"
                    ))
                }),
        },
        _ => Err(named(
            "an EC (SEC1) key; DKIM here signs with RSA or Ed25519".into(),
        )),
    }
}

fn signer<K: mail_auth::common::crypto::SigningKey>(
    key: K,
    domain: &str,
    selector: &str,
    headers: &[String],
    expiration: u64,
) -> DkimSigner<K, Done> {
    let s = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(headers.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    if expiration > 0 {
        s.expiration(expiration)
    } else {
        s
    }
}

/// The lower-case domain of the first address of the first From: header, if any.
fn from_domain(message: &[u8]) -> Option<String> {
    let end = find(message, b"\r\n\r\n").unwrap_or(message.len());
    let head = &message[..end];
    let mut value: Option<Vec<u8>> = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match (&mut value, line.first()) {
            (Some(v), Some(b' ' | b'\t')) => v.extend_from_slice(line),
            (Some(_), _) => break,
            (None, _) => {
                if line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"from:") {
                    value = Some(line[5..].to_vec());
                }
            }
        }
    }
    let value = String::from_utf8_lossy(&value?).into_owned();
    // The first address: inside <...> when there is one, else the first comma-separated
    // item (a display name with a comma is quoted, so split outside quotes).
    let first = match value.find('<') {
        Some(open) => value[open + 1..]
            .split('>')
            .next()
            .unwrap_or("")
            .to_string(),
        None => first_item(&value),
    };
    let domain = first.rsplit_once('@')?.1.trim().trim_end_matches('>');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

/// The text up to the first comma outside double quotes.
fn first_item(value: &str) -> String {
    let mut quoted = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => return value[..i].to_string(),
            _ => {}
        }
    }
    value.to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Remove whitespace-only and empty lines at the end of the body (see the module doc),
/// keeping the CRLF that ends the last line with content.
fn trim_trailing_blank_lines(message: &mut Vec<u8>) {
    let Some(head_end) = find(message, b"\r\n\r\n").map(|i| i + 4) else {
        return;
    };
    let mut end = message.len();
    while end > head_end {
        let line_start = message[head_end..end - usize::from(message[end - 1] == b'\n')]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(head_end, |i| head_end + i + 1);
        let line = &message[line_start..end];
        if line
            .iter()
            .all(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            end = line_start;
        } else {
            break;
        }
    }
    message.truncate(end);
}

/// The algorithm of a key `switchyard dkim-keygen` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlgorithm {
    /// Ed25519 (RFC 8463): small keys, fast signatures; not every verifier knows it yet.
    Ed25519,
    /// RSA, 2048 bits: what every verifier knows.
    Rsa2048,
}

/// A new private key as PKCS#8 PEM, and the DNS TXT record value that publishes its public
/// half (`v=DKIM1; k=...; p=...`).
pub fn generate(algorithm: KeyAlgorithm) -> anyhow::Result<(String, String)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    match algorithm {
        KeyAlgorithm::Ed25519 => {
            use ring::signature::KeyPair as _;
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| anyhow::anyhow!("cannot read back the Ed25519 key"))?;
            let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
            for chunk in b64.encode(pkcs8.as_ref()).as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(chunk)?);
                pem.push('\n');
            }
            pem.push_str("-----END PRIVATE KEY-----\n");
            let txt = format!(
                "v=DKIM1; k=ed25519; p={}",
                b64.encode(pair.public_key().as_ref())
            );
            Ok((pem, txt))
        }
        KeyAlgorithm::Rsa2048 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
            let pem = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
            let public = key.to_public_key().to_public_key_der()?;
            let txt = format!("v=DKIM1; k=rsa; p={}", b64.encode(public.as_bytes()));
            Ok((pem, txt))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_from_domain() {
        let m = |h: &str| format!("{h}\r\nTo: x@y\r\n\r\nbody\r\n").into_bytes();
        assert_eq!(
            from_domain(&m("From: a@Acme.Example")).as_deref(),
            Some("acme.example")
        );
        assert_eq!(
            from_domain(&m("From: \"Doe, Jane\" <jane@one.test>, b@two.test")).as_deref(),
            Some("one.test")
        );
        assert_eq!(
            from_domain(&m("from:\r\n\tJane <jane@folded.test>")).as_deref(),
            Some("folded.test")
        );
        assert_eq!(from_domain(&m("Sender: s@x.test")), None);
        assert_eq!(
            from_domain(b"From: a@b.test\r\nSubject: no body"),
            Some("b.test".into())
        );
    }

    #[test]
    fn a_message_that_cannot_be_signed_is_an_error_not_an_unsigned_message() {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        let key = Ed25519Key::from_pkcs8_der(pkcs8.as_ref()).unwrap();
        // No header to sign: mail-auth refuses (config validation requires From).
        let signer = signer(key, "acme.example", "s1", &[], 0);
        let signers = Signers {
            entries: vec![Entry {
                domain: "acme.example".into(),
                subdomains: false,
                all: true,
                tenant: None,
                key: Key::Ed25519(signer),
                signed: metrics::Counter::noop(),
            }],
        };
        let mut m = b"From: a@acme.example\r\n\r\nbody\r\n".to_vec();
        let before = m.clone();
        let e = signers.sign("t", &mut m).unwrap_err();
        assert_eq!(e.domain, "acme.example");
        assert_eq!(m, before, "nothing half-signed");
    }

    #[test]
    fn trims_only_blank_lines_at_the_end() {
        let trimmed = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            trim_trailing_blank_lines(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(
            trimmed("H: v\r\n\r\nbody\r\n  \r\n\t\r\n\r\n"),
            "H: v\r\n\r\nbody\r\n"
        );
        assert_eq!(trimmed("H: v\r\n\r\nbody  \r\n"), "H: v\r\n\r\nbody  \r\n");
        assert_eq!(
            trimmed("H: v\r\n\r\na\r\n \r\nb\r\n"),
            "H: v\r\n\r\na\r\n \r\nb\r\n"
        );
        assert_eq!(trimmed("H: v\r\n\r\n \r\n\r\n"), "H: v\r\n\r\n");
        assert_eq!(trimmed("H: v\r\n\r\nbody"), "H: v\r\n\r\nbody");
    }
}
