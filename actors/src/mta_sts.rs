//! MTA-STS (RFC 8461): what a destination domain publishes about its TLS, and what that does
//! to its mail.
//!
//! A domain publishes a TXT record `_mta-sts.<domain>` (`v=STSv1; id=...`) and a policy at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`; the daemon fetches and caches them
//! (`src/mta_sts.rs`). Here is the pure part, shared by the daemon and the actors:
//! [`parse_txt`] and [`StsPolicy::parse`] read both strictly, [`StsPolicy::mx_matches`]
//! checks an MX host against the policy's `mx` patterns (`*.` matches exactly one label).
//!
//! What a policy does (in the ready queue and its connections, when `enable_mta_sts` is on,
//! as it is by default): `enforce` — only MX hosts the policy lists are tried, with TLS
//! Required and the certificate verified for the MX name; none listed → a transient
//! failure. `testing` — delivery as usual; each session that would have failed under
//! `enforce` is logged ([`StsApplied::would_fail`]). `none`, or no policy — nothing changes.
//! A domain under an `enforce` or `testing` policy has ready queues of its own (its lane
//! `site/domain`): the policy is the domain's, not its site's.

use serde::{Deserialize, Serialize};

/// The longest `max_age` RFC 8461 allows (about a year); longer values are cut to it.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The `reason` label values of `switchyard_mta_sts_failures_total`: the TXT lookup failed
/// (`dns`), the policy could not be fetched (`fetch`) or read (`invalid_policy`), no MX host
/// is listed by the policy (`mx_mismatch`), TLS failed or was not verified (`tls`). The last
/// two count `enforce` failures and `testing` would-be failures alike.
pub const FAILURE_REASONS: [&str; 5] = ["dns", "fetch", "invalid_policy", "mx_mismatch", "tls"];

/// A policy's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    /// Deliver only to listed MX hosts, over verified TLS.
    Enforce,
    /// Deliver as usual; report what would have failed.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl StsMode {
    /// Every mode (the `mode` label values of `switchyard_mta_sts_policies`).
    pub const ALL: [StsMode; 3] = [StsMode::Enforce, StsMode::Testing, StsMode::None];

    /// As written in policies, records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// A fetched policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    /// The TXT record's `id` it was fetched under.
    pub id: String,
    /// Its mode.
    pub mode: StsMode,
    /// MX host patterns, lower case, without a final dot; `*.example.net` matches one label.
    pub mx: Vec<String>,
    /// How long it may be cached, in seconds (at most [`MAX_AGE_LIMIT`]).
    pub max_age: u64,
    /// When its fetch began (ms since the epoch; 0 until a cache sets it): of two copies of
    /// a domain's policy, the later fetched is the one in force.
    #[serde(default)]
    pub fetched_ms: u64,
}

/// The `id` of a domain's `_mta-sts` TXT records: `Ok(None)` when none is an MTA-STS record;
/// an error when several are or the one is malformed — RFC 8461 §3.1: then the domain has no
/// usable policy record. Each item is one record, its strings already joined. A repeated
/// field counts the first time; unknown fields are ignored.
pub fn parse_txt(records: &[String]) -> Result<Option<String>, String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1;") || r.as_str() == "v=STSv1")
        .collect();
    let record = match sts.as_slice() {
        [] => return Ok(None),
        [one] => one.as_str(),
        _ => return Err(format!("{} MTA-STS TXT records, not one", sts.len())),
    };
    let mut id = None;
    for field in record.split(';').skip(1) {
        let field = field.trim_matches([' ', '\t']);
        if field.is_empty() {
            continue;
        }
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("malformed field {field:?} in {record:?}"));
        };
        if key == "id" && id.is_none() {
            let ok =
                (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(format!("id {value:?} is not 1-32 letters and digits"));
            }
            id = Some(value.to_string());
        }
    }
    id.map(Some).ok_or_else(|| format!("no id in {record:?}"))
}

impl StsPolicy {
    /// Read a policy body (RFC 8461 §3.2), fetched under the TXT record's `id`: lines of
    /// `key: value` (LF or CRLF), keys and values as the ABNF writes them (case counts);
    /// `version: STSv1`, `mode` and `max_age` required — a repeated one counts the first
    /// time — and at least one `mx` unless the mode is `none`; unknown keys are ignored.
    pub fn parse(id: &str, text: &str) -> Result<StsPolicy, String> {
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for (n, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let at = n + 1;
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("line {at}: not \"key: value\""));
            };
            let value = value.trim_matches([' ', '\t']);
            let first = |slot: &mut Option<String>| {
                slot.get_or_insert_with(|| value.to_string());
            };
            match key {
                "version" => first(&mut version),
                "mode" => first(&mut mode),
                "max_age" => first(&mut max_age),
                "mx" => mx.push(mx_pattern(value).map_err(|e| format!("line {at}: {e}"))?),
                _ => {}
            }
        }
        match version.as_deref() {
            Some("STSv1") => {}
            Some(v) => return Err(format!("version {v:?} is not STSv1")),
            None => return Err("no version".into()),
        }
        let mode = match mode.as_deref() {
            Some("enforce") => StsMode::Enforce,
            Some("testing") => StsMode::Testing,
            Some("none") => StsMode::None,
            Some(other) => return Err(format!("mode {other:?} is not enforce, testing or none")),
            None => return Err("no mode".into()),
        };
        let max_age = match max_age {
            Some(v) if (1..=10).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) => {
                v.parse::<u64>().unwrap_or(u64::MAX).min(MAX_AGE_LIMIT)
            }
            Some(v) => return Err(format!("max_age {v:?} is not a number of seconds")),
            None => return Err("no max_age".into()),
        };
        if mx.is_empty() && mode != StsMode::None {
            return Err(format!("mode {} lists no mx", mode.as_str()));
        }
        Ok(StsPolicy {
            id: id.to_string(),
            mode,
            mx,
            max_age,
            fetched_ms: 0,
        })
    }

    /// Whether MX host `host` is one the policy lists (RFC 8461 §4.1): the same name, or one
    /// label under a `*.` pattern's parent. Case and a final dot do not matter.
    pub fn mx_matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }

    /// What a record says of an attempt under this policy.
    pub fn applied(&self, would_fail: Option<&'static str>) -> StsApplied {
        StsApplied {
            mode: self.mode,
            id: self.id.clone(),
            would_fail,
        }
    }

    /// When the policy expires (ms since the epoch).
    pub fn expires_ms(&self) -> u64 {
        self.fetched_ms
            .saturating_add(self.max_age.saturating_mul(1000))
    }
}

/// One `mx` value: a host name, or `*.` and a host name; lower case, final dot dropped.
fn mx_pattern(value: &str) -> Result<String, String> {
    let v = value.trim_end_matches('.').to_ascii_lowercase();
    let name = v.strip_prefix("*.").unwrap_or(&v);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("mx {value:?} is not a host name or *.host pattern"));
    }
    Ok(v)
}

/// The policy a delivery attempt went under: logged as `mta_sts {mode, id}` on Delivery and
/// TransientFailure records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StsApplied {
    /// `enforce` or `testing`.
    pub mode: StsMode,
    /// The policy's id.
    pub id: String,
    /// Under `testing`: why this session would have failed under `enforce` (a reason of
    /// [`FAILURE_REASONS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_fail: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<StsPolicy, String> {
        StsPolicy::parse("20260101", text)
    }

    #[test]
    fn a_policy_is_read_with_lf_or_crlf_and_unknown_keys_ignored() {
        let p = policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.net\r\nmx: *.Mail.Example.NET.\r\nmax_age: 86400\r\nextension: x\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert_eq!(p.mx, ["mx1.example.net", "*.mail.example.net"]);
        assert_eq!((p.max_age, p.id.as_str()), (86400, "20260101"));
        let p = policy("version: STSv1\nmode: none\nmax_age: 0").unwrap();
        assert_eq!((p.mode, p.mx.len()), (StsMode::None, 0));
        // A repeated field other than mx: the first counts (RFC 8461 §3.2).
        let p = policy(
            "version: STSv1\nmode: testing\nmode: enforce\nmx: a.b\nmax_age: 5\nmax_age: 9\n",
        )
        .unwrap();
        assert_eq!((p.mode, p.max_age), (StsMode::Testing, 5));
    }

    #[test]
    fn a_bad_policy_is_refused_with_the_reason() {
        for (text, why) in [
            ("mode: enforce\nmx: a.b\nmax_age: 1\n", "no version"),
            (
                "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                "STSv2",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",
                "strict",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "lists no mx"),
            ("version: STSv1\nmode: testing\nmx: a.b\n", "no max_age"),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1d\n",
                "max_age",
            ),
            (
                "Version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                "no version",
            ),
            (
                "version: stsv1\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                "stsv1",
            ),
            (
                "version: STSv1\nmode: Enforce\nmx: a.b\nmax_age: 1\n",
                "Enforce",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n",
                "line 3",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1\n",
                "pattern",
            ),
            ("<html>not a policy</html>", "line 1"),
        ] {
            let e = policy(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn max_age_is_bounded_to_the_rfc_range() {
        let mut p =
            policy("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 9999999999\n").unwrap();
        assert_eq!(p.max_age, MAX_AGE_LIMIT);
        p.fetched_ms = 1_000;
        assert_eq!(p.expires_ms(), 1_000 + MAX_AGE_LIMIT * 1000);
    }

    #[test]
    fn a_wildcard_matches_exactly_one_label() {
        let p = policy("version: STSv1\nmode: enforce\nmx: *.mail.example.net\nmx: mx.example.org\nmax_age: 1\n").unwrap();
        assert!(p.mx_matches("a.mail.example.net"));
        assert!(p.mx_matches("A.MAIL.example.net."));
        assert!(!p.mx_matches("a.b.mail.example.net"));
        assert!(!p.mx_matches("mail.example.net"));
        assert!(!p.mx_matches("amail.example.net"));
        assert!(p.mx_matches("mx.example.org"));
        assert!(!p.mx_matches("mx2.example.org"));
        assert!(!p.mx_matches("x.mx.example.org"));
    }

    #[test]
    fn exactly_one_sts_txt_record_gives_the_id() {
        let txt = |r: &[&str]| parse_txt(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            txt(&["v=STSv1; id=20260101T1;"]).unwrap().as_deref(),
            Some("20260101T1")
        );
        assert_eq!(
            txt(&["v=spf1 -all", "v=STSv1;id=abc"]).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(txt(&["v=spf1 -all"]).unwrap(), None);
        assert_eq!(txt(&[]).unwrap(), None);
        assert!(txt(&["v=STSv1; id=a", "v=STSv1; id=b"]).is_err());
        assert!(txt(&["v=STSv1; id=not-alnum"]).is_err());
        assert!(txt(&["v=STSv1; id=123456789012345678901234567890123"]).is_err());
        assert!(txt(&["v=STSv1;"]).is_err());
        assert_eq!(
            txt(&["v=STSv1; id=a; id=b; ext=1"]).unwrap().as_deref(),
            Some("a")
        );
    }
}
