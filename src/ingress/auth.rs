//! SMTP AUTH (RFC 4954): PLAIN and LOGIN against the `[[smtp.user]]` table.
//!
//! Passwords are checked against argon2 hashes on the blocking pool, so a slow hash never
//! stalls other sessions. An unknown user costs the same hash as a known one, so response
//! time does not tell an attacker which user names exist.

use crate::config::SmtpUser;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use std::collections::HashMap;
use std::sync::Arc;

/// The AUTH users, by login name.
#[derive(Clone, Default)]
pub struct Users {
    by_name: Arc<HashMap<String, (String, String)>>,
    dummy_hash: Arc<String>,
}

impl Users {
    /// Build the table from the config.
    pub fn new(users: &[SmtpUser]) -> Users {
        let by_name = users
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    (
                        u.password_hash.get_ref().clone(),
                        u.tenant.get_ref().clone(),
                    ),
                )
            })
            .collect::<HashMap<_, _>>();
        let dummy_hash = if by_name.is_empty() {
            String::new()
        } else {
            let salt = argon2::password_hash::SaltString::from_b64("c3dpdGNoeWFyZHNhbHQ").ok();
            salt.and_then(|s| {
                Argon2::default()
                    .hash_password(b"-", &s)
                    .ok()
                    .map(|h| h.to_string())
            })
            .unwrap_or_default()
        };
        Users {
            by_name: Arc::new(by_name),
            dummy_hash: Arc::new(dummy_hash),
        }
    }

    /// Whether AUTH is configured at all.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The tenant of `name` if `password` is right.
    pub async fn verify(&self, name: String, password: Vec<u8>) -> Option<String> {
        let users = self.clone();
        tokio::task::spawn_blocking(move || {
            let (hash, tenant) = match users.by_name.get(&name) {
                Some((h, t)) => (h.as_str(), Some(t.clone())),
                None => (users.dummy_hash.as_str(), None),
            };
            let ok = PasswordHash::new(hash)
                .map(|h| Argon2::default().verify_password(&password, &h).is_ok())
                .unwrap_or(false);
            if ok {
                tenant
            } else {
                None
            }
        })
        .await
        .ok()
        .flatten()
    }
}

/// Decode a base64 SASL response; `None` when it is not base64.
pub fn decode_b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// Encode a SASL challenge.
pub fn encode_b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Split a PLAIN response `authzid\0authcid\0passwd` into (authcid, passwd).
pub fn parse_plain(decoded: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut parts = decoded.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let authcid = parts.next()?;
    let passwd = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((String::from_utf8(authcid.to_vec()).ok()?, passwd.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_parsing() {
        assert_eq!(
            parse_plain(b"\0acme\0pw"),
            Some(("acme".into(), b"pw".to_vec()))
        );
        assert_eq!(parse_plain(b"acme\0pw"), None);
    }

    #[tokio::test]
    async fn verifies_argon2() {
        let salt = argon2::password_hash::SaltString::from_b64("YWJjZGVmZ2hpamtsbW5vcA").unwrap();
        let hash = Argon2::default()
            .hash_password(b"secret", &salt)
            .unwrap()
            .to_string();
        let cfg: crate::config::Config = toml::from_str(&format!(
            "[[smtp.user]]\nname = \"acme\"\npassword_hash = \"{hash}\"\ntenant = \"acme-t\"\n"
        ))
        .unwrap();
        let users = Users::new(&cfg.smtp.user);
        assert_eq!(
            users
                .verify("acme".into(), b"secret".to_vec())
                .await
                .as_deref(),
            Some("acme-t")
        );
        assert_eq!(users.verify("acme".into(), b"wrong".to_vec()).await, None);
        assert_eq!(
            users.verify("nobody".into(), b"secret".to_vec()).await,
            None
        );
    }
}
