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

use crate::message::Reply;
use crate::ports::{MxHost, Timeouts, TlsMode};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A rate in KumoMTA's throttle syntax: `[local:]N/[k]period[,max_burst=B]`.
///
/// `N` may use `,` or `_` between digits (`"1,000/hr"`, `"1_000/h"`); the period is a unit
/// (`s`, `sec`, `second`, `m`, `min`, `minute`, `h`, `hr`, `hour`, `d`, `day`, plurals too)
/// with an optional multiplier (`"10/5min"`). The limiter is a GCRA: one event every
/// `period / N`, with up to `max_burst` at once — by default `N`, as in KumoMTA, so
/// `"60/min"` lets 60 go at once and then one a second; `max_burst=1` spreads them evenly.
/// `local:` marks a limit that stays per node when a cluster shares limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many events...
    pub count: u64,
    /// ...per this period.
    pub per: Duration,
    /// Most events at once (`max_burst`); `None`: `count`.
    pub burst: Option<u64>,
    /// Written with `local:`.
    pub local: bool,
}

impl Rate {
    /// `count` per `per`, burst `count`.
    pub fn new(count: u64, per: Duration) -> Rate {
        Rate {
            count,
            per,
            burst: None,
            local: false,
        }
    }

    /// Most events at once.
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.count).max(1)
    }

    /// Events per second, for gauges.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The time between two events: `per / count` (at least 1 ns).
    pub fn interval(&self) -> Duration {
        (self.per / self.count.clamp(1, u32::MAX as u64) as u32).max(Duration::from_nanos(1))
    }

    /// The GCRA quota: one event every [`Rate::interval`], `burst` at once.
    pub fn quota(&self) -> governor::Quota {
        let interval = self.interval();
        let burst = std::num::NonZeroU32::new(self.burst().min(u32::MAX as u64) as u32)
            .unwrap_or(std::num::NonZeroU32::MIN);
        governor::Quota::with_period(interval)
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.local {
            f.write_str("local:")?;
        }
        let secs = self.per.as_secs();
        let (n, unit) = if self.per.subsec_nanos() != 0 || secs == 0 {
            (self.per.as_millis() as u64, "ms")
        } else if secs % 86_400 == 0 {
            (secs / 86_400, "d")
        } else if secs % 3600 == 0 {
            (secs / 3600, "h")
        } else if secs % 60 == 0 {
            (secs / 60, "min")
        } else {
            (secs, "s")
        };
        write!(f, "{}/", self.count)?;
        if n != 1 {
            write!(f, "{n}")?;
        }
        f.write_str(unit)?;
        if let Some(b) = self.burst {
            write!(f, ",max_burst={b}")?;
        }
        Ok(())
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid rate {s:?}; expected \"[local:]N/period[,max_burst=B]\" such as \"100/h\", \"1,000/hr\" or \"10/5min\""
            )
        };
        let mut spec = s.trim();
        let local = match spec.strip_prefix("local:") {
            Some(rest) => {
                spec = rest.trim();
                true
            }
            None => false,
        };
        // `,` may separate thousands in N, so max_burst is found by name.
        let mut burst = None;
        if let Some(at) = spec.find("max_burst") {
            let (head, tail) = spec.split_at(at);
            let value = tail["max_burst".len()..]
                .trim()
                .strip_prefix('=')
                .ok_or_else(bad)?;
            let b = parse_count(value).ok_or_else(bad)?;
            if b == 0 {
                return Err(format!("invalid rate {s:?}: max_burst must be at least 1"));
            }
            burst = Some(b);
            spec = head.trim().strip_suffix(',').ok_or_else(bad)?.trim();
        }
        let (num, period) = spec.split_once('/').ok_or_else(bad)?;
        let count = parse_count(num).ok_or_else(bad)?;
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be at least 1"));
        }
        let period = period.trim();
        let digits = period.len()
            - period
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        let multiplier: u64 = if digits == 0 {
            1
        } else {
            period[..digits].parse().map_err(|_| bad())?
        };
        let unit = period[digits..].trim().to_ascii_lowercase();
        let secs: u64 = match unit
            .strip_suffix('s')
            .filter(|u| !u.is_empty())
            .unwrap_or(&unit)
        {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hr" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if multiplier == 0 {
            return Err(bad());
        }
        Ok(Rate {
            count,
            per: Duration::from_secs(secs.saturating_mul(multiplier)),
            burst,
            local,
        })
    }
}

/// An integer that may use `,` or `_` between its digits.
fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.starts_with([',', '_']) || s.ends_with([',', '_']) {
        return None;
    }
    s.chars()
        .filter(|c| *c != ',' && *c != '_')
        .collect::<String>()
        .parse()
        .ok()
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
    /// An array.
    List(Vec<OptionValue>),
    /// Anything else (float, date, table).
    #[serde(skip)]
    Other,
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Integer(n) => write!(f, "{n}"),
            OptionValue::String(s) => write!(f, "{s:?}"),
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            OptionValue::Other => f.write_str("(unsupported value)"),
        }
    }
}

/// The options of one block; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShapingOptions {
    /// Concurrent connections per ready queue.
    pub connection_limit: Option<Limit>,
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
    /// TCP connect (`connect_timeout`).
    pub connect_timeout: Option<Duration>,
    /// The greeting (`banner_timeout`).
    pub banner_timeout: Option<Duration>,
    /// EHLO's reply (`ehlo_timeout`).
    pub ehlo_timeout: Option<Duration>,
    /// MAIL's reply (`mail_from_timeout`).
    pub mail_from_timeout: Option<Duration>,
    /// Each RCPT's reply (`rcpt_to_timeout`).
    pub rcpt_to_timeout: Option<Duration>,
    /// DATA's reply and sending the content (`data_timeout`).
    pub data_timeout: Option<Duration>,
    /// The reply to the end mark (`data_dot_timeout`).
    pub data_dot_timeout: Option<Duration>,
    /// RSET's reply (`rset_timeout`).
    pub rset_timeout: Option<Duration>,
    /// An idle connection waits this long for the next message (`idle_timeout`).
    pub idle_timeout: Option<Duration>,
    /// STARTTLS's reply and the TLS handshake (`starttls_timeout`).
    pub starttls_timeout: Option<Duration>,
    /// Failed connections in a row before the ready queue's messages are deferred.
    pub consecutive_connection_failures_before_delay: Option<usize>,
    /// How long a host whose STARTTLS failed is sent to in plain text (Opportunistic only).
    pub remember_broken_tls: Option<Duration>,
    /// Opportunistic TLS: connect again in plain text when the handshake fails.
    pub opportunistic_tls_reconnect_on_failed_handshake: Option<bool>,
    /// Recipients of one message sent in one transaction.
    pub max_recipients_per_batch: Option<usize>,
    /// A site with any address in these is refused (`550 5.4.4`).
    pub prohibited_hosts: Option<Arc<[IpNet]>>,
    /// Addresses in these are left out of a site's hosts.
    pub skip_hosts: Option<Arc<[IpNet]>>,
    /// Apply the destination domain's MTA-STS policy.
    pub enable_mta_sts: Option<bool>,
}

impl ShapingOptions {
    /// `self` with every option `over` sets replaced.
    pub fn overlay(&self, over: &ShapingOptions) -> ShapingOptions {
        macro_rules! pick {
            ($($f:ident),*) => {
                ShapingOptions { $($f: over.$f.clone().or_else(|| self.$f.clone())),* }
            };
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
            banner_timeout,
            ehlo_timeout,
            mail_from_timeout,
            rcpt_to_timeout,
            data_timeout,
            data_dot_timeout,
            rset_timeout,
            idle_timeout,
            starttls_timeout,
            consecutive_connection_failures_before_delay,
            remember_broken_tls,
            opportunistic_tls_reconnect_on_failed_handshake,
            max_recipients_per_batch,
            prohibited_hosts,
            skip_hosts,
            enable_mta_sts
        )
    }

    /// Set one option by its KumoMTA name. `Ok(false)` when switchyard does not apply an
    /// option of that name (the loader warns once about it); `Err` when the value is wrong.
    pub fn set(&mut self, name: &str, value: &OptionValue) -> Result<bool, String> {
        match name {
            "connection_limit" => self.connection_limit = Some(Limit::parse(name, value)?),
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
            "banner_timeout" => self.banner_timeout = Some(duration(name, value)?),
            "ehlo_timeout" => self.ehlo_timeout = Some(duration(name, value)?),
            "mail_from_timeout" => self.mail_from_timeout = Some(duration(name, value)?),
            "rcpt_to_timeout" => self.rcpt_to_timeout = Some(duration(name, value)?),
            "data_timeout" => self.data_timeout = Some(duration(name, value)?),
            "data_dot_timeout" => self.data_dot_timeout = Some(duration(name, value)?),
            "rset_timeout" => self.rset_timeout = Some(duration(name, value)?),
            "idle_timeout" => self.idle_timeout = Some(duration(name, value)?),
            "starttls_timeout" => self.starttls_timeout = Some(duration(name, value)?),
            "consecutive_connection_failures_before_delay" => {
                self.consecutive_connection_failures_before_delay = Some(count(name, value)?)
            }
            "remember_broken_tls" => self.remember_broken_tls = Some(duration(name, value)?),
            "opportunistic_tls_reconnect_on_failed_handshake" => {
                self.opportunistic_tls_reconnect_on_failed_handshake = Some(boolean(name, value)?)
            }
            "prohibited_hosts" => self.prohibited_hosts = Some(networks(name, value)?),
            "skip_hosts" => self.skip_hosts = Some(networks(name, value)?),
            "max_recipients_per_batch" => self.max_recipients_per_batch = Some(count(name, value)?),
            "enable_mta_sts" => self.enable_mta_sts = Some(boolean(name, value)?),
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

/// A count limit: `N`, shared by the nodes of a cluster, or KumoMTA's `"local:N"`, each
/// node's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The most at once.
    pub count: usize,
    /// Written `local:`.
    pub local: bool,
}

impl Limit {
    /// `N` or `"local:N"`.
    pub fn parse(key: &str, v: &OptionValue) -> Result<Limit, String> {
        match v {
            OptionValue::String(s) => s
                .strip_prefix("local:")
                .and_then(|n| n.trim().parse().ok())
                .map(|count| Limit { count, local: true })
                .ok_or_else(|| format!("{key} must be an integer or \"local:N\", got {v}")),
            _ => count(key, v).map(|count| Limit {
                count,
                local: false,
            }),
        }
    }

    /// The most this node takes: the limit, or — while the cluster's Redis does not
    /// answer (`alone_among`: the nodes last seen) and the limit is shared — its share.
    pub fn mine(&self, alone_among: Option<usize>) -> usize {
        match alone_among {
            Some(nodes) if !self.local => {
                crate::cluster::alone_share(self.count as u64, nodes) as usize
            }
            _ => self.count,
        }
    }
}

fn rate(key: &str, v: &OptionValue) -> Result<Rate, String> {
    match v {
        OptionValue::String(s) => s.parse().map_err(|e| format!("{key}: {e}")),
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

fn boolean(key: &str, v: &OptionValue) -> Result<bool, String> {
    match v {
        OptionValue::Bool(b) => Ok(*b),
        _ => Err(format!("{key} must be true or false, got {v}")),
    }
}

/// A list of networks: CIDR blocks ("10.0.0.0/8") or single addresses ("::1").
fn networks(key: &str, v: &OptionValue) -> Result<Arc<[IpNet]>, String> {
    let one = |item: &OptionValue| match item {
        OptionValue::String(s) => s
            .trim()
            .parse::<IpNet>()
            .or_else(|_| s.trim().parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{key}: {s:?} is neither an address nor a CIDR block")),
        _ => Err(format!(
            "{key} must list addresses or CIDR blocks, got {item}"
        )),
    };
    match v {
        OptionValue::List(items) => items.iter().map(one).collect(),
        OptionValue::String(_) => Ok(Arc::from([one(v)?])),
        _ => Err(format!(
            "{key} must be a list of addresses or CIDR blocks, got {v}"
        )),
    }
}

/// KumoMTA's default `prohibited_hosts`: loopback and unspecified addresses.
fn default_prohibited_hosts() -> Arc<[IpNet]> {
    ["127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
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
    /// `connection_limit` was written `local:` (not shared by a cluster's nodes).
    pub connection_limit_local: bool,
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
    /// How long a broken STARTTLS host is remembered (`None`: not remembered).
    pub remember_broken_tls: Option<Duration>,
    /// Opportunistic TLS whose handshake failed connects again in plain text.
    pub reconnect_on_failed_handshake: bool,
    /// Recipients of one message sent in one transaction.
    pub max_recipients_per_batch: usize,
    /// A site with an address in these is refused.
    pub prohibited_hosts: Arc<[IpNet]>,
    /// Addresses left out of a site.
    pub skip_hosts: Arc<[IpNet]>,
    /// Apply the destination domain's MTA-STS policy (default true).
    pub enable_mta_sts: bool,
}

impl PathSettings {
    /// `connection_limit` as written (its count, and whether `local:`).
    pub fn connection_limit_as_set(&self) -> Limit {
        Limit {
            count: self.connection_limit,
            local: self.connection_limit_local,
        }
    }

    /// Resolve layered options, KumoMTA's defaults where nothing is set.
    pub fn from_options(o: &ShapingOptions) -> PathSettings {
        PathSettings {
            connection_limit: o.connection_limit.map_or(32, |l| l.count).max(1),
            connection_limit_local: o.connection_limit.is_some_and(|l| l.local),
            max_connection_rate: o.max_connection_rate,
            max_message_rate: o.max_message_rate,
            max_deliveries_per_connection: o.max_deliveries_per_connection.unwrap_or(1024).max(1),
            max_ready: o.max_ready.unwrap_or(1024).max(1),
            enable_tls: o.enable_tls.unwrap_or(TlsMode::Opportunistic),
            smtp_port: o.smtp_port.unwrap_or(25),
            timeouts: Timeouts {
                connect: o.connect_timeout.unwrap_or(secs(60)),
                banner: o.banner_timeout.unwrap_or(secs(60)),
                ehlo: o.ehlo_timeout.unwrap_or(secs(300)),
                mail_from: o.mail_from_timeout.unwrap_or(secs(300)),
                rcpt_to: o.rcpt_to_timeout.unwrap_or(secs(300)),
                data: o.data_timeout.unwrap_or(secs(300)),
                data_dot: o.data_dot_timeout.unwrap_or(secs(300)),
                rset: o.rset_timeout.unwrap_or(secs(5)),
                idle: o.idle_timeout.unwrap_or(secs(5)),
                starttls: o.starttls_timeout.unwrap_or(secs(5)),
            },
            consecutive_connection_failures_before_delay: o
                .consecutive_connection_failures_before_delay
                .unwrap_or(100)
                .max(1),
            remember_broken_tls: o.remember_broken_tls,
            reconnect_on_failed_handshake: o
                .opportunistic_tls_reconnect_on_failed_handshake
                .unwrap_or(false),
            max_recipients_per_batch: o.max_recipients_per_batch.unwrap_or(100).max(1),
            prohibited_hosts: o
                .prohibited_hosts
                .clone()
                .unwrap_or_else(default_prohibited_hosts),
            skip_hosts: o.skip_hosts.clone().unwrap_or_else(|| Arc::from([])),
            enable_mta_sts: o.enable_mta_sts.unwrap_or(true),
        }
    }

    /// The hosts a site's connections may try, by `prohibited_hosts` and `skip_hosts`
    /// (KumoMTA's semantics): any prohibited address refuses the whole site with
    /// `550 5.4.4`; skipped addresses are left out, and a site left with none fails with
    /// `451 4.4.4`. Hosts from the operator's `[routes]` are taken as they are.
    pub fn screen_hosts(&self, hosts: &Arc<[MxHost]>) -> Result<Arc<[MxHost]>, Reply> {
        let within = |nets: &[IpNet], ip: &IpAddr| nets.iter().any(|n| n.contains(ip));
        for host in hosts.iter().filter(|h| !h.configured) {
            if let Some(ip) = host
                .addrs
                .iter()
                .find(|ip| within(&self.prohibited_hosts, ip))
            {
                return Err(Reply::internal(
                    550,
                    "5.4.4",
                    format!(
                        "MX host {} has the address {ip}, which prohibited_hosts refuses",
                        host.name
                    ),
                ));
            }
        }
        let skips =
            |h: &MxHost| !h.configured && h.addrs.iter().any(|ip| within(&self.skip_hosts, ip));
        if !hosts.iter().any(skips) {
            return Ok(hosts.clone());
        }
        let kept: Vec<MxHost> = hosts
            .iter()
            .filter_map(|h| {
                let mut h = h.clone();
                if !h.configured {
                    h.addrs.retain(|ip| !within(&self.skip_hosts, ip));
                }
                (!h.addrs.is_empty()).then_some(h)
            })
            .collect();
        if kept.is_empty() {
            let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            return Err(Reply::internal(
                451,
                "4.4.4",
                format!(
                    "skip_hosts leaves no address of {} to connect to",
                    names.join(", ")
                ),
            ));
        }
        Ok(kept.into())
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One way a provider recognises its sites (see [`Provider::matches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderMatch {
    /// An MX host name ends with this (lower case, no trailing dot).
    MxSuffix(String),
    /// The destination domain ends with this.
    DomainSuffix(String),
    /// An MX host is exactly this.
    HostName(String),
}

/// `name` ends with `suffix`, ignoring case (KumoMTA's suffix test).
fn suffix_matches(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
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
    pub connection_limit: Option<Limit>,
    /// Messages per source across all its sites.
    pub max_message_rate: Option<Rate>,
}

impl Provider {
    /// Whether mail to `domain`, whose MX hosts are `mx_hosts`, is this provider's, by
    /// KumoMTA's rule: a `DomainSuffix` that fits the domain decides at once; otherwise,
    /// when the provider has MX rules, *every* MX host must fit *one of* its `MXSuffix` or
    /// `HostName` rules (so a site mixing two of the provider's host names is still its
    /// own, and a vanity domain mixing providers is nobody's).
    pub fn matches(&self, domain: &str, mx_hosts: &[&str]) -> bool {
        let domain_rule = self.matches.iter().any(|m| match m {
            ProviderMatch::DomainSuffix(s) => suffix_matches(domain, s),
            _ => false,
        });
        if domain_rule {
            return true;
        }
        let host_fits = |host: &str| {
            let host = host.trim_end_matches('.');
            self.matches.iter().any(|m| match m {
                ProviderMatch::MxSuffix(s) => suffix_matches(host, s),
                ProviderMatch::HostName(n) => host.eq_ignore_ascii_case(n.trim_end_matches('.')),
                ProviderMatch::DomainSuffix(_) => false,
            })
        };
        let has_mx_rules = self
            .matches
            .iter()
            .any(|m| !matches!(m, ProviderMatch::DomainSuffix(_)));
        has_mx_rules && !mx_hosts.is_empty() && mx_hosts.iter().all(|h| host_fits(h))
    }
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
    /// Bumped whenever a block's site changes: caches of which block applies to a site
    /// (the classifier's scope cache) start afresh when they see a new number.
    version: std::sync::atomic::AtomicU64,
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
        if map.get(&site).is_some_and(|b| b == block) {
            return None;
        }
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        map.retain(|_, b| b != block);
        match map.get(&site) {
            Some(other) if other != block => Some(other.clone()),
            _ => {
                map.insert(site, block.to_string());
                None
            }
        }
    }

    /// Bumped by every change.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
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
    /// Where each option of each block was set, for `explain`: block → option → origin.
    /// Blocks are named `default`, `default.sources.S`, `provider.P`,
    /// `provider.P.sources.S`, `D` and `D.sources.S`.
    pub origins: HashMap<String, BTreeMap<String, Origin>>,
}

/// Where an option's value was written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    /// The value as written.
    pub value: String,
    /// `file:line`.
    pub at: String,
}

/// One option of a path as `explain` shows it: its value, the block that gave it and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explained {
    /// The value as written.
    pub value: String,
    /// The block it came from.
    pub block: String,
    /// `file:line`.
    pub at: String,
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

    /// Whether `domain`'s own block says `mx_rollup = false`: its mail then has ready queues
    /// of its own instead of sharing its site's.
    pub fn alone(&self, domain: &str) -> bool {
        self.domains.get(domain).is_some_and(|d| !d.mx_rollup)
    }

    /// Whether `domain`'s MTA-STS policy is looked for: `enable_mta_sts` of its blocks
    /// without a source (default, providers, the domain's block). A source's own block can
    /// still turn it off for that source's ready queues.
    pub fn mta_sts_wanted(&self, domain: &str, site: &str) -> bool {
        self.path(domain, site, "")
            .options
            .enable_mta_sts
            .unwrap_or(true)
    }

    /// Providers matching `domain` on `site`, in file order.
    pub fn providers_for(&self, domain: &str, site: &str) -> Vec<Arc<Provider>> {
        let hosts = site_hosts(site);
        self.providers
            .iter()
            .filter(|p| p.matches(domain, &hosts))
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

    /// The blocks layered for mail from `source` to `domain` on `site`, in order (later
    /// wins), as named in [`Shaping::origins`].
    pub fn layers(&self, domain: &str, site: &str, source: &str) -> Vec<String> {
        let mut out = vec!["default".to_string(), format!("default.sources.{source}")];
        for p in self.providers_for(domain, site) {
            out.push(format!("provider.{}", p.name));
            out.push(format!("provider.{}.sources.{source}", p.name));
        }
        if let Some((name, _)) = self.domain_block(domain, site) {
            out.push(name.to_string());
            out.push(format!("{name}.sources.{source}"));
        }
        out
    }

    /// Every option set for mail from `source` to `domain` on `site`, with the block and the
    /// `file:line` its value comes from (the same layering as [`Shaping::path`]).
    pub fn explain(&self, domain: &str, site: &str, source: &str) -> BTreeMap<String, Explained> {
        let mut out = BTreeMap::new();
        for layer in self.layers(domain, site, source) {
            for (name, o) in self.origins.get(&layer).into_iter().flatten() {
                out.insert(
                    name.clone(),
                    Explained {
                        value: o.value.clone(),
                        block: layer.clone(),
                        at: o.at.clone(),
                    },
                );
            }
        }
        out
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
        assert_eq!(
            o.connection_limit,
            Some(Limit {
                count: 5,
                local: true
            })
        );
        assert!(o
            .set("max_message_rate", &OptionValue::String("1/minute".into()))
            .unwrap());
        assert_eq!(o.max_message_rate.unwrap().per, Duration::from_secs(60));
    }

    #[test]
    fn rates_parse() {
        let r: Rate = "100/h".parse().unwrap();
        assert_eq!(
            (r.count, r.per, r.burst()),
            (100, Duration::from_secs(3600), 100)
        );
        for u in [
            "s", "sec", "second", "seconds", "m", "min", "mins", "minute", "minutes", "h", "hr",
            "hrs", "hour", "hours", "d", "day", "days",
        ] {
            assert!(format!("5/{u}").parse::<Rate>().is_ok(), "{u}");
        }
        assert!("100".parse::<Rate>().is_err());
        assert!("0/s".parse::<Rate>().is_err());
        assert!("ten/s".parse::<Rate>().is_err());
        assert!("10/5fortnights".parse::<Rate>().is_err());
        assert!("10/h,max_burst=0".parse::<Rate>().is_err());
        assert!("10/h,max_burst".parse::<Rate>().is_err());
        assert!(",100/h".parse::<Rate>().is_err());
    }

    #[test]
    fn kumomtas_throttle_forms_parse() {
        let cases: &[(&str, u64, u64, Option<u64>, bool)] = &[
            ("1,000/hr", 1000, 3600, None, false),
            ("1_000/h", 1000, 3600, None, false),
            ("10/5min", 10, 300, None, false),
            ("10/5 minutes", 10, 300, None, false),
            ("local:100/s", 100, 1, None, true),
            ("60/min,max_burst=1", 60, 60, Some(1), false),
            ("local:1,000/hr, max_burst = 10", 1000, 3600, Some(10), true),
            ("2/day", 2, 86_400, None, false),
        ];
        for &(spec, count, secs, burst, local) in cases {
            let r: Rate = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                (r.count, r.per, r.burst, r.local),
                (count, Duration::from_secs(secs), burst, local),
                "{spec}"
            );
            // What is shown parses back to the same rate.
            assert_eq!(
                r.to_string().parse::<Rate>().unwrap(),
                r,
                "{spec} shown as {r}"
            );
        }
    }

    #[test]
    fn the_burst_defaults_to_the_limit() {
        use governor::DefaultDirectRateLimiter;
        let all_at_once =
            DefaultDirectRateLimiter::direct("60/min".parse::<Rate>().unwrap().quota());
        assert_eq!((0..100).filter(|_| all_at_once.check().is_ok()).count(), 60);
        let evenly =
            DefaultDirectRateLimiter::direct("60/min,max_burst=1".parse::<Rate>().unwrap().quota());
        assert_eq!((0..100).filter(|_| evenly.check().is_ok()).count(), 1);
    }

    #[test]
    fn a_provider_matches_when_every_mx_host_fits_one_of_its_rules() {
        let google = Provider {
            name: "google".into(),
            matches: vec![
                ProviderMatch::MxSuffix(".l.google.com".into()),
                ProviderMatch::MxSuffix(".googlemail.com".into()),
                ProviderMatch::HostName("smtp.google.com".into()),
            ],
            ..Default::default()
        };
        // A Workspace domain whose MX set mixes the provider's host names.
        assert!(google.matches(
            "acme.test",
            &["aspmx.l.google.com", "aspmx2.googlemail.com"]
        ));
        assert!(google.matches("acme.test", &["SMTP.Google.com."]));
        // A vanity domain mixing providers is nobody's.
        assert!(!google.matches("mixed.test", &["aspmx.l.google.com", "mx.other.test"]));
        assert!(!google.matches("none.test", &[]));
        let outlook = Provider {
            name: "outlook".into(),
            matches: vec![ProviderMatch::DomainSuffix(".outlook.com".into())],
            ..Default::default()
        };
        assert!(outlook.matches("eur.outlook.com", &["mx.elsewhere.test"]));
        assert!(!outlook.matches("outlook.com", &["mx.elsewhere.test"]));
        let mut s = Shaping::default();
        s.providers.push(Arc::new(google));
        let site = "aspmx.l.google.com,aspmx2.googlemail.com";
        assert_eq!(s.providers_for("acme.test", site).len(), 1);
    }

    #[test]
    fn each_timeout_is_its_own_with_kumomta_defaults() {
        let t = PathSettings::from_options(&ShapingOptions::default()).timeouts;
        let s = Duration::from_secs;
        assert_eq!(
            (t.connect, t.banner, t.ehlo, t.mail_from, t.rcpt_to),
            (s(60), s(60), s(300), s(300), s(300))
        );
        assert_eq!(
            (t.data, t.data_dot, t.rset, t.idle, t.starttls),
            (s(300), s(300), s(5), s(5), s(5))
        );
        let names = [
            "connect_timeout",
            "banner_timeout",
            "ehlo_timeout",
            "mail_from_timeout",
            "rcpt_to_timeout",
            "data_timeout",
            "data_dot_timeout",
            "rset_timeout",
            "idle_timeout",
            "starttls_timeout",
        ];
        let mut o = ShapingOptions::default();
        for (i, name) in names.iter().enumerate() {
            assert!(o
                .set(name, &OptionValue::String(format!("{}s", i + 1)))
                .unwrap());
        }
        let t = PathSettings::from_options(&o).timeouts;
        let got = [
            t.connect,
            t.banner,
            t.ehlo,
            t.mail_from,
            t.rcpt_to,
            t.data,
            t.data_dot,
            t.rset,
            t.idle,
            t.starttls,
        ];
        let want: Vec<Duration> = (1..=10).map(s).collect();
        assert_eq!(got.to_vec(), want, "each option sets its own step");
    }

    fn host(name: &str, addrs: &[&str], configured: bool) -> MxHost {
        MxHost {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            port: None,
            configured,
        }
    }

    #[test]
    fn prohibited_hosts_refuse_a_site_and_skip_hosts_thin_it() {
        let defaults = PathSettings::from_options(&ShapingOptions::default());
        let public: Arc<[MxHost]> = vec![host("mx.example.org", &["192.0.2.1"], false)].into();
        assert_eq!(defaults.screen_hosts(&public).unwrap(), public);
        for addr in ["127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::"] {
            let hosts: Arc<[MxHost]> = vec![
                host("mx1.example.org", &["192.0.2.1"], false),
                host("mx2.example.org", &["192.0.2.2", addr], false),
            ]
            .into();
            let reply = defaults.screen_hosts(&hosts).unwrap_err();
            assert_eq!(
                (reply.code, reply.enhanced.as_deref()),
                (550, Some("5.4.4")),
                "{addr}"
            );
            assert!(reply.text.contains("mx2.example.org"), "{}", reply.text);
        }
        // The operator's own routes are not screened.
        let routed: Arc<[MxHost]> = vec![host("127.0.0.1", &["127.0.0.1"], true)].into();
        assert!(defaults.screen_hosts(&routed).is_ok());
        // prohibited_hosts = [] lets loopback MX hosts through.
        let open =
            PathSettings::from_options(&opts(&[("prohibited_hosts", OptionValue::List(vec![]))]));
        let loopback: Arc<[MxHost]> = vec![host("mx.test", &["127.0.0.1"], false)].into();
        assert!(open.screen_hosts(&loopback).is_ok());
        // skip_hosts leaves addresses out, and a site left with none fails transiently.
        let skip = PathSettings::from_options(&opts(&[(
            "skip_hosts",
            OptionValue::List(vec![OptionValue::String("192.0.2.0/24".into())]),
        )]));
        let hosts: Arc<[MxHost]> = vec![
            host("mx1.example.org", &["192.0.2.1"], false),
            host("mx2.example.org", &["192.0.2.2", "198.51.100.2"], false),
        ]
        .into();
        let kept = skip.screen_hosts(&hosts).unwrap();
        assert_eq!(
            kept.to_vec(),
            vec![host("mx2.example.org", &["198.51.100.2"], false)]
        );
        let reply = skip.screen_hosts(&public).unwrap_err();
        assert_eq!(
            (reply.code, reply.enhanced.as_deref()),
            (451, Some("4.4.4"))
        );
        assert!(ShapingOptions::default()
            .set(
                "prohibited_hosts",
                &OptionValue::List(vec![OptionValue::String("nope".into())])
            )
            .is_err());
    }
}
