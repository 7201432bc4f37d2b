//! Traffic shaping in KumoMTA's format: the blocks of the shaping files and the settings
//! they give one ready queue.
//!
//! A shaping file has `["default"]`, per-destination blocks (`["gmail.com"]`), per-source
//! blocks under a destination (`["gmail.com".sources."ip-1"]`) and providers
//! (`[provider."google"]` with `match = [{MXSuffix = ".google.com"}]`). For the ready queue of
//! (source, site) the options are layered, later winning:
//!
//! `default` < matching providers < the destination block < the destination's source block.
//!
//! A destination block with `mx_rollup = true` (the default) applies to its whole *site*:
//! the loader resolves the block's MX set at load (and again when its TTL runs out) and
//! records which site it stands for in [`SiteIndex`]; every domain whose MX set is the same
//! site gets the block. Automation rules live in [`crate::automation`].

use crate::ports::{Timeouts, TlsMode};
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A rate: "N/unit" with unit s|sec|m|min|minute|h|hr|hour|d|day (plural accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many events...
    pub count: u64,
    /// ...per this period.
    pub per: Duration,
}

impl Rate {
    /// The GCRA quota: one event every `per / count`, with no burst beyond one, so a
    /// throttled path sends evenly instead of in clumps.
    pub fn quota(&self) -> governor::Quota {
        let interval =
            (self.per / self.count.clamp(1, u32::MAX as u64) as u32).max(Duration::from_nanos(1));
        governor::Quota::with_period(interval)
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid rate {s:?}; expected \"N/unit\" with unit s, min, h or day, e.g. \"100/h\"")
        };
        let (num, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = num.trim().parse().map_err(|_| bad())?;
        let unit = unit.trim().to_ascii_lowercase();
        let secs = match unit.trim_end_matches('s') {
            "" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hr" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be at least 1"));
        }
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A shaping option's value as written in a file (or a SetConfig action).
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// An integer.
    Integer(i64),
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// Anything else (float, date, array, table).
    #[serde(skip)]
    Other,
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Integer(n) => write!(f, "{n}"),
            OptionValue::String(s) => write!(f, "{s:?}"),
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Other => f.write_str("(unsupported value)"),
        }
    }
}

/// The options of one block; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShapingOptions {
    /// Concurrent connections per ready queue.
    pub connection_limit: Option<usize>,
    /// New connections per period.
    pub max_connection_rate: Option<Rate>,
    /// Messages per period.
    pub max_message_rate: Option<Rate>,
    /// Messages per connection before QUIT.
    pub max_deliveries_per_connection: Option<usize>,
    /// Messages a ready queue holds before pushing back.
    pub max_ready: Option<usize>,
    /// STARTTLS policy.
    pub enable_tls: Option<TlsMode>,
    /// Remote port.
    pub smtp_port: Option<u16>,
    /// TCP connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Banner/command timeout.
    pub command_timeout: Option<Duration>,
    /// Idle connection timeout.
    pub idle_timeout: Option<Duration>,
    /// Content send timeout.
    pub data_timeout: Option<Duration>,
    /// Final-dot reply timeout.
    pub data_dot_timeout: Option<Duration>,
    /// Failed connections in a row before the ready queue's messages are deferred.
    pub consecutive_connection_failures_before_delay: Option<usize>,
    /// How long a host whose STARTTLS failed is sent to in plain text (Opportunistic only).
    pub remember_broken_tls: Option<Duration>,
    /// Recipients of one message sent in one transaction.
    pub max_recipients_per_batch: Option<usize>,
}

impl ShapingOptions {
    /// `self` with every option `over` sets replaced.
    pub fn overlay(&self, over: &ShapingOptions) -> ShapingOptions {
        macro_rules! pick {
            ($($f:ident),*) => { ShapingOptions { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            connection_limit,
            max_connection_rate,
            max_message_rate,
            max_deliveries_per_connection,
            max_ready,
            enable_tls,
            smtp_port,
            connect_timeout,
            command_timeout,
            idle_timeout,
            data_timeout,
            data_dot_timeout,
            consecutive_connection_failures_before_delay,
            remember_broken_tls,
            max_recipients_per_batch
        )
    }

    /// Set one option by its KumoMTA name. `Ok(false)` when switchyard does not apply an
    /// option of that name (the loader warns once about it); `Err` when the value is wrong.
    pub fn set(&mut self, name: &str, value: &OptionValue) -> Result<bool, String> {
        match name {
            "connection_limit" => self.connection_limit = Some(limit(name, value)?),
            "max_connection_rate" => self.max_connection_rate = Some(rate(name, value)?),
            "max_message_rate" => self.max_message_rate = Some(rate(name, value)?),
            "max_deliveries_per_connection" => {
                self.max_deliveries_per_connection = Some(count(name, value)?)
            }
            "max_ready" => self.max_ready = Some(count(name, value)?),
            "smtp_port" => {
                self.smtp_port = Some(
                    u16::try_from(count(name, value)?)
                        .map_err(|_| format!("{name} must be a port number"))?,
                )
            }
            "enable_tls" => self.enable_tls = Some(tls_mode(value)?),
            "connect_timeout" => self.connect_timeout = Some(duration(name, value)?),
            "banner_timeout" | "ehlo_timeout" | "mail_from_timeout" | "rcpt_to_timeout" => {
                self.command_timeout = Some(duration(name, value)?)
            }
            "idle_timeout" => self.idle_timeout = Some(duration(name, value)?),
            "data_timeout" => self.data_timeout = Some(duration(name, value)?),
            "data_dot_timeout" => self.data_dot_timeout = Some(duration(name, value)?),
            "consecutive_connection_failures_before_delay" => {
                self.consecutive_connection_failures_before_delay = Some(count(name, value)?)
            }
            "remember_broken_tls" => self.remember_broken_tls = Some(duration(name, value)?),
            "max_recipients_per_batch" => self.max_recipients_per_batch = Some(count(name, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn count(key: &str, v: &OptionValue) -> Result<usize, String> {
    match v {
        OptionValue::Integer(n) if *n >= 0 => Ok(*n as usize),
        _ => Err(format!("{key} must be a non-negative integer, got {v}")),
    }
}

/// A limit; KumoMTA's `"local:N"` (a limit not shared between nodes) is N here, where
/// every limit is local.
fn limit(key: &str, v: &OptionValue) -> Result<usize, String> {
    match v {
        OptionValue::String(s) => s
            .strip_prefix("local:")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("{key} must be an integer or \"local:N\", got {v}")),
        _ => count(key, v),
    }
}

fn rate(key: &str, v: &OptionValue) -> Result<Rate, String> {
    match v {
        OptionValue::String(s) => s
            .strip_prefix("local:")
            .unwrap_or(s)
            .parse()
            .map_err(|e| format!("{key}: {e}")),
        _ => Err(format!("{key} must be a rate such as \"100/h\", got {v}")),
    }
}

fn duration(key: &str, v: &OptionValue) -> Result<Duration, String> {
    match v {
        OptionValue::String(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{key}: invalid duration {s:?} ({e})")),
        OptionValue::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
        _ => Err(format!("{key} must be a duration such as \"30s\", got {v}")),
    }
}

fn tls_mode(v: &OptionValue) -> Result<TlsMode, String> {
    let OptionValue::String(s) = v else {
        return Err(format!("enable_tls must be a string, got {v}"));
    };
    match s.as_str() {
        "Opportunistic" => Ok(TlsMode::Opportunistic),
        "OpportunisticInsecure" => Ok(TlsMode::OpportunisticInsecure),
        "Required" => Ok(TlsMode::Required),
        "RequiredInsecure" => Ok(TlsMode::RequiredInsecure),
        "Disabled" => Ok(TlsMode::Disabled),
        _ => Err(format!(
            "enable_tls must be one of Opportunistic, OpportunisticInsecure, Required, RequiredInsecure, Disabled; got {v}"
        )),
    }
}

/// The settings one ready queue runs with: the layered options with KumoMTA's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSettings {
    /// Concurrent connections.
    pub connection_limit: usize,
    /// New connections per period.
    pub max_connection_rate: Option<Rate>,
    /// Messages per period.
    pub max_message_rate: Option<Rate>,
    /// Messages per connection.
    pub max_deliveries_per_connection: usize,
    /// Ready-queue capacity.
    pub max_ready: usize,
    /// STARTTLS policy.
    pub enable_tls: TlsMode,
    /// Remote port.
    pub smtp_port: u16,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Failed connections in a row before the ready queue's messages are deferred.
    pub consecutive_connection_failures_before_delay: usize,
    /// How long a broken STARTTLS host is remembered.
    pub remember_broken_tls: Option<Duration>,
    /// Recipients of one message sent in one transaction.
    pub max_recipients_per_batch: usize,
}

impl PathSettings {
    /// Resolve layered options, KumoMTA's defaults where nothing is set.
    pub fn from_options(o: &ShapingOptions) -> PathSettings {
        PathSettings {
            connection_limit: o.connection_limit.unwrap_or(32).max(1),
            max_connection_rate: o.max_connection_rate,
            max_message_rate: o.max_message_rate,
            max_deliveries_per_connection: o.max_deliveries_per_connection.unwrap_or(1024).max(1),
            max_ready: o.max_ready.unwrap_or(1024).max(1),
            enable_tls: o.enable_tls.unwrap_or(TlsMode::Opportunistic),
            smtp_port: o.smtp_port.unwrap_or(25),
            timeouts: Timeouts {
                connect: o.connect_timeout.unwrap_or(Duration::from_secs(60)),
                command: o.command_timeout.unwrap_or(Duration::from_secs(60)),
                data: o.data_timeout.unwrap_or(Duration::from_secs(300)),
                data_dot: o.data_dot_timeout.unwrap_or(Duration::from_secs(300)),
                idle: o.idle_timeout.unwrap_or(Duration::from_secs(60)),
            },
            consecutive_connection_failures_before_delay: o
                .consecutive_connection_failures_before_delay
                .unwrap_or(100)
                .max(1),
            remember_broken_tls: o.remember_broken_tls,
            max_recipients_per_batch: o.max_recipients_per_batch.unwrap_or(100).max(1),
        }
    }
}

/// One way a provider recognises its sites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderMatch {
    /// Every MX host name of the site ends with this (lower case, no trailing dot).
    MxSuffix(String),
    /// The destination domain ends with this.
    DomainSuffix(String),
    /// One of the site's MX hosts is exactly this.
    HostName(String),
}

impl ProviderMatch {
    fn matches(&self, domain: &str, mx_hosts: &[&str]) -> bool {
        match self {
            ProviderMatch::MxSuffix(s) => {
                !mx_hosts.is_empty() && mx_hosts.iter().all(|h| h.ends_with(s.as_str()))
            }
            ProviderMatch::DomainSuffix(s) => domain.ends_with(s.as_str()),
            ProviderMatch::HostName(s) => mx_hosts.contains(&s.as_str()),
        }
    }
}

/// `[provider."name"]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provider {
    /// Its name.
    pub name: Arc<str>,
    /// Any of these makes a site the provider's.
    pub matches: Vec<ProviderMatch>,
    /// Options for each of its sites.
    pub options: ShapingOptions,
    /// Per-source options.
    pub sources: HashMap<String, ShapingOptions>,
    /// Connections per source across all its sites.
    pub connection_limit: Option<usize>,
    /// Messages per source across all its sites.
    pub max_message_rate: Option<Rate>,
}

/// `["domain"]` with its per-source blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainShaping {
    /// Options.
    pub options: ShapingOptions,
    /// Applies to the domain's whole site (default) or to the domain alone.
    pub mx_rollup: bool,
    /// `["domain".sources."name"]`.
    pub sources: HashMap<String, ShapingOptions>,
}

impl Default for DomainShaping {
    fn default() -> Self {
        DomainShaping {
            options: ShapingOptions::default(),
            mx_rollup: true,
            sources: HashMap::new(),
        }
    }
}

/// Which site each MX-rollup destination block stands for, filled in by DNS at load and
/// refreshed by TTL: site → block name.
#[derive(Debug, Default)]
pub struct SiteIndex {
    sites: RwLock<HashMap<Arc<str>, String>>,
}

impl SiteIndex {
    /// The rollup block for `site`, if any.
    pub fn block_for(&self, site: &str) -> Option<String> {
        self.sites
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(site)
            .cloned()
    }

    /// Record that `block` resolves to `site` (dropping its previous site). Returns the
    /// other block already standing for that site, if one does (an ambiguity to warn about).
    pub fn set(&self, block: &str, site: Arc<str>) -> Option<String> {
        let mut map = self.sites.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, b| b != block);
        match map.get(&site) {
            Some(other) if other != block => Some(other.clone()),
            _ => {
                map.insert(site, block.to_string());
                None
            }
        }
    }
}

/// Every shaping block, layered.
#[derive(Debug, Default)]
pub struct Shaping {
    /// `["default"]`.
    pub default: ShapingOptions,
    /// `["default".sources."name"]`.
    pub default_sources: HashMap<String, ShapingOptions>,
    /// Per destination domain (lower case).
    pub domains: HashMap<String, DomainShaping>,
    /// Providers, in file order.
    pub providers: Vec<Arc<Provider>>,
    /// Sites of the MX-rollup destination blocks.
    pub sites: SiteIndex,
}

/// What shaping says about one (source, site): its options and the providers it belongs to.
#[derive(Debug, Clone)]
pub struct PathShaping {
    /// Layered options.
    pub options: ShapingOptions,
    /// Providers whose limits it shares.
    pub providers: Vec<Arc<Provider>>,
}

/// The MX host names of a site (`mx1,mx2`); a route's `host:port` site has none.
pub fn site_hosts(site: &str) -> Vec<&str> {
    site.split(',')
        .filter(|h| !h.is_empty() && !h.contains(':') && !h.starts_with('['))
        .collect()
}

impl Shaping {
    /// The destination block that applies to `domain` on `site`: the domain's own block, or
    /// the MX-rollup block standing for the site.
    pub fn domain_block(&self, domain: &str, site: &str) -> Option<(&str, &DomainShaping)> {
        if let Some((name, d)) = self.domains.get_key_value(domain) {
            return Some((name.as_str(), d));
        }
        let name = self.sites.block_for(site)?;
        self.domains
            .get_key_value(&name)
            .filter(|(_, d)| d.mx_rollup)
            .map(|(n, d)| (n.as_str(), d))
    }

    /// Providers matching `domain` on `site`, in file order.
    pub fn providers_for(&self, domain: &str, site: &str) -> Vec<Arc<Provider>> {
        let hosts = site_hosts(site);
        self.providers
            .iter()
            .filter(|p| p.matches.iter().any(|m| m.matches(domain, &hosts)))
            .cloned()
            .collect()
    }

    /// The layered options for mail from `source` to `domain` on `site`.
    pub fn path(&self, domain: &str, site: &str, source: &str) -> PathShaping {
        let providers = self.providers_for(domain, site);
        let mut o = self.default.clone();
        if let Some(s) = self.default_sources.get(source) {
            o = o.overlay(s);
        }
        for p in &providers {
            o = o.overlay(&p.options);
            if let Some(s) = p.sources.get(source) {
                o = o.overlay(s);
            }
        }
        if let Some((_, d)) = self.domain_block(domain, site) {
            o = o.overlay(&d.options);
            if let Some(s) = d.sources.get(source) {
                o = o.overlay(s);
            }
        }
        PathShaping {
            options: o,
            providers,
        }
    }

    /// The settings of the ready queue for `source` → `site`, first met through `domain`.
    pub fn settings_for(&self, domain: &str, site: &str, source: &str) -> PathSettings {
        PathSettings::from_options(&self.path(domain, site, source).options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, OptionValue)]) -> ShapingOptions {
        let mut o = ShapingOptions::default();
        for (k, v) in pairs {
            assert!(o.set(k, v).unwrap(), "{k}");
        }
        o
    }

    #[test]
    fn precedence_default_provider_domain_source() {
        let mut s = Shaping {
            default: opts(&[
                ("connection_limit", OptionValue::Integer(10)),
                ("smtp_port", OptionValue::Integer(2525)),
            ]),
            ..Default::default()
        };
        s.providers.push(Arc::new(Provider {
            name: "google".into(),
            matches: vec![ProviderMatch::MxSuffix(".google.com".into())],
            options: opts(&[
                ("connection_limit", OptionValue::Integer(5)),
                ("enable_tls", OptionValue::String("Required".into())),
            ]),
            ..Default::default()
        }));
        let mut gmail = DomainShaping {
            options: opts(&[("connection_limit", OptionValue::Integer(3))]),
            ..Default::default()
        };
        gmail.sources.insert(
            "ip-2".into(),
            opts(&[("connection_limit", OptionValue::Integer(1))]),
        );
        s.domains.insert("gmail.com".into(), gmail);
        let site = "alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com";
        assert!(s.sites.set("gmail.com", site.into()).is_none());

        let g = s.settings_for("gmail.com", site, "ip-1");
        assert_eq!(
            (g.connection_limit, g.smtp_port, g.enable_tls),
            (3, 2525, TlsMode::Required)
        );
        assert_eq!(
            s.settings_for("gmail.com", site, "ip-2").connection_limit,
            1
        );
        // Another domain on the same site gets the rolled-up block.
        assert_eq!(
            s.settings_for("googlemail.com", site, "ip-1")
                .connection_limit,
            3
        );
        // A Google-hosted domain on another MX set gets the provider only.
        let other = s.settings_for("corp.example", "aspmx.l.google.com", "ip-1");
        assert_eq!(
            (other.connection_limit, other.enable_tls),
            (5, TlsMode::Required)
        );
        let o = s.settings_for("other.example", "mx.other.example", "ip-1");
        assert_eq!(
            (o.connection_limit, o.max_ready, o.enable_tls),
            (10, 1024, TlsMode::Opportunistic)
        );
    }

    #[test]
    fn option_values_are_checked() {
        let mut o = ShapingOptions::default();
        assert!(o
            .set("enable_tls", &OptionValue::String("Sometimes".into()))
            .is_err());
        assert!(o
            .set("max_message_rate", &OptionValue::String("ten".into()))
            .is_err());
        assert_eq!(o.set("mystery", &OptionValue::Integer(1)), Ok(false));
        assert!(o
            .set("connection_limit", &OptionValue::String("local:5".into()))
            .unwrap());
        assert_eq!(o.connection_limit, Some(5));
        assert!(o
            .set("max_message_rate", &OptionValue::String("1/minute".into()))
            .unwrap());
        assert_eq!(o.max_message_rate.unwrap().per, Duration::from_secs(60));
    }

    #[test]
    fn rates_parse() {
        let r: Rate = "100/h".parse().unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(3600)));
        for u in [
            "s", "sec", "m", "min", "minute", "minutes", "h", "hr", "hour", "d", "day",
        ] {
            assert!(format!("5/{u}").parse::<Rate>().is_ok(), "{u}");
        }
        assert!("100".parse::<Rate>().is_err());
        assert!("0/s".parse::<Rate>().is_err());
    }
}
