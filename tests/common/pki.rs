//! A test certificate authority: certificates for MX hosts and HTTPS servers, issued by a CA
//! the daemon is told to trust through `[tls] trust_roots`.

use super::ResponseSink;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// A CA and the means to issue certificates under it.
pub struct Pki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The CA certificate written to `dir/ca.pem` (for `[tls] trust_roots = ["ca.pem"]`).
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &self.ca_pem).unwrap();
        ca
    }

    /// A certificate for `name` issued by this CA (expired when `expired`), written to
    /// `dir` as `stem.pem` and `stem.key`.
    pub fn issue(&self, dir: &Path, stem: &str, name: &str, expired: bool) -> [PathBuf; 2] {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.sign(dir, stem, params)
    }

    /// A certificate valid for every one of `names`.
    pub fn issue_for(&self, dir: &Path, stem: &str, names: &[&str]) -> [PathBuf; 2] {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        self.sign(dir, stem, rcgen::CertificateParams::new(names).unwrap())
    }

    fn sign(&self, dir: &Path, stem: &str, params: rcgen::CertificateParams) -> [PathBuf; 2] {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        write_pair(dir, stem, &cert.pem(), &key.serialize_pem())
    }
}

/// A self-signed certificate for `name` (no CA vouches for it).
pub fn self_signed(dir: &Path, stem: &str, name: &str) -> [PathBuf; 2] {
    let own = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    write_pair(dir, stem, &own.cert.pem(), &own.signing_key.serialize_pem())
}

pub fn write_pair(dir: &Path, stem: &str, cert: &str, key: &str) -> [PathBuf; 2] {
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    [c, k]
}

/// `switchyard sink` on `ip:port` presenting `pair` for STARTTLS, answering per `responses`.
pub fn tls_sink_on(
    dir: &Path,
    pair: &[PathBuf; 2],
    responses: &str,
    ip: &str,
    port: u16,
) -> ResponseSink {
    let args = [
        OsStr::new("--tls-certificate"),
        pair[0].as_os_str(),
        OsStr::new("--tls-private-key"),
        pair[1].as_os_str(),
    ];
    ResponseSink::start_with(dir, responses, ip, port, &args)
}
