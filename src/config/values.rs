//! Value types of the config files: durations ("90s", "3 hours"), sizes ("25MiB"),
//! rates ("100/h") and CIDR networks ("127.0.0.0/8").
//!
//! Each parses from the string a MailOps engineer would write and fails with a message
//! that says what form was expected; the TOML loader attaches `file:line:col` to it.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// A humantime duration: "90s", "20m", "3 hours", "3d".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); expected e.g. \"90s\", \"20m\", \"3 hours\", \"3d\""))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A count within a window: "5/10m" (5 within 10 minutes), "60/1h".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountPer {
    /// How many...
    pub count: u32,
    /// ...within this long.
    pub window: Duration,
}

impl FromStr for CountPer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid limit {s:?}; expected \"N/duration\", e.g. \"5/10m\"");
        let (n, window) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let window = humantime::parse_duration(window.trim()).map_err(|_| bad())?;
        if count == 0 || window.is_zero() {
            return Err(bad());
        }
        Ok(CountPer { count, window })
    }
}

impl<'de> Deserialize<'de> for CountPer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A byte size: "25MiB", "10MB", "512KiB", "1024", or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("invalid size {s:?}; expected e.g. \"25MiB\", \"10MB\", \"512KiB\"");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

pub use switchyard_actors::shaping::Rate;

/// An IP network in CIDR form; a bare address means just that host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(net) = t.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net));
        }
        t.parse::<IpAddr>()
            .map(|ip| Cidr(ipnet::IpNet::from(ip)))
            .map_err(|_| {
                format!(
                    "invalid network {s:?}; expected CIDR such as \"127.0.0.0/8\" or \"::1/128\""
                )
            })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A list of values parsed from strings, remembering where each bad element was.
///
/// TOML deserializers report a failing array element at the array's start; MailOps deserve
/// the element's own column. So elements are taken as spanned strings and parsed here, and
/// the config's validation reports [`List::problems`] with their exact spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T> {
    /// The elements that parsed, in order.
    pub values: Vec<T>,
    problems: Vec<(std::ops::Range<usize>, String)>,
}

impl<T> List<T> {
    /// Elements that did not parse: (byte span, message).
    pub fn problems(&self) -> &[(std::ops::Range<usize>, String)] {
        &self.problems
    }
}

impl<T> From<Vec<T>> for List<T> {
    fn from(values: Vec<T>) -> Self {
        List {
            values,
            problems: Vec::new(),
        }
    }
}

impl<'de, T> Deserialize<'de> for List<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<toml::Spanned<String>>::deserialize(d)?;
        let mut list = List::from(Vec::with_capacity(raw.len()));
        for item in raw {
            match item.get_ref().parse::<T>() {
                Ok(v) => list.values.push(v),
                Err(e) => {
                    let m = e.to_string();
                    let raw = item.get_ref();
                    let m = if m.contains(raw.as_str()) {
                        m
                    } else {
                        format!("{m}: {raw:?}")
                    };
                    list.problems.push((item.span(), m));
                }
            }
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_human_forms() {
        for (s, secs) in [
            ("90s", 90),
            ("20m", 1200),
            ("3 hours", 10800),
            ("3d", 259_200),
        ] {
            assert_eq!(
                s.parse::<HumanDuration>().unwrap().0,
                Duration::from_secs(secs),
                "{s}"
            );
        }
        assert!("soon".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!("25MiB".parse::<ByteSize>().unwrap().0, 25 << 20);
        assert_eq!("10MB".parse::<ByteSize>().unwrap().0, 10_000_000);
        assert_eq!("1024".parse::<ByteSize>().unwrap().0, 1024);
        assert!("25 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(c.contains("127.0.0.9".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.contains("10.0.0.1".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!("127.0.0.0/33".parse::<Cidr>().is_err());
    }
}
