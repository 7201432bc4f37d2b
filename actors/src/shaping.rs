//! Traffic shaping options in KumoMTA's format, and the settings they give a ready queue.
//!
//! A shaping file holds `["default"]` and per-destination blocks (`["gmail.com"]`) of
//! options; later files layer over earlier ones. The ready queue for (source, site) runs
//! with the default block overlaid by its destination's block. Automation rules, providers,
//! per-source blocks and MX rollup of blocks arrive with issue 4.

use crate::ports::{Timeouts, TlsMode};
use std::collections::HashMap;
use std::time::Duration;

/// The options of one block; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShapingOptions {
    /// Concurrent connections per ready queue.
    pub connection_limit: Option<usize>,
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
}

impl ShapingOptions {
    /// `self` with every option `over` sets replaced.
    pub fn overlay(&self, over: &ShapingOptions) -> ShapingOptions {
        ShapingOptions {
            connection_limit: over.connection_limit.or(self.connection_limit),
            max_deliveries_per_connection: over
                .max_deliveries_per_connection
                .or(self.max_deliveries_per_connection),
            max_ready: over.max_ready.or(self.max_ready),
            enable_tls: over.enable_tls.or(self.enable_tls),
            smtp_port: over.smtp_port.or(self.smtp_port),
            connect_timeout: over.connect_timeout.or(self.connect_timeout),
            command_timeout: over.command_timeout.or(self.command_timeout),
            idle_timeout: over.idle_timeout.or(self.idle_timeout),
            data_timeout: over.data_timeout.or(self.data_timeout),
            data_dot_timeout: over.data_dot_timeout.or(self.data_dot_timeout),
        }
    }

    /// Read the options this module knows from a block; the names of the others are returned
    /// so the loader can warn about them. Errors name the option.
    pub fn from_table(table: &toml::Table) -> Result<(ShapingOptions, Vec<String>), String> {
        let mut o = ShapingOptions::default();
        let mut unknown = Vec::new();
        for (key, value) in table {
            match key.as_str() {
                "connection_limit" => o.connection_limit = Some(count(key, value)?),
                "max_deliveries_per_connection" => {
                    o.max_deliveries_per_connection = Some(count(key, value)?)
                }
                "max_ready" => o.max_ready = Some(count(key, value)?),
                "smtp_port" => {
                    o.smtp_port = Some(
                        u16::try_from(count(key, value)?)
                            .map_err(|_| format!("{key} must be a port number"))?,
                    )
                }
                "enable_tls" => o.enable_tls = Some(tls_mode(value)?),
                "connect_timeout" => o.connect_timeout = Some(duration(key, value)?),
                "banner_timeout" | "ehlo_timeout" | "mail_from_timeout" | "rcpt_to_timeout" => {
                    o.command_timeout = Some(duration(key, value)?)
                }
                "idle_timeout" => o.idle_timeout = Some(duration(key, value)?),
                "data_timeout" => o.data_timeout = Some(duration(key, value)?),
                "data_dot_timeout" => o.data_dot_timeout = Some(duration(key, value)?),
                _ => unknown.push(key.clone()),
            }
        }
        Ok((o, unknown))
    }
}

fn count(key: &str, v: &toml::Value) -> Result<usize, String> {
    v.as_integer()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{key} must be a non-negative integer"))
}

fn duration(key: &str, v: &toml::Value) -> Result<Duration, String> {
    match v {
        toml::Value::String(s) => {
            humantime::parse_duration(s).map_err(|e| format!("{key}: invalid duration {s:?} ({e})"))
        }
        toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
        _ => Err(format!("{key} must be a duration such as \"30s\"")),
    }
}

fn tls_mode(v: &toml::Value) -> Result<TlsMode, String> {
    match v.as_str() {
        Some("Opportunistic") => Ok(TlsMode::Opportunistic),
        Some("OpportunisticInsecure") => Ok(TlsMode::OpportunisticInsecure),
        Some("Required") => Ok(TlsMode::Required),
        Some("RequiredInsecure") => Ok(TlsMode::RequiredInsecure),
        Some("Disabled") => Ok(TlsMode::Disabled),
        _ => Err(format!(
            "enable_tls must be one of Opportunistic, OpportunisticInsecure, Required, RequiredInsecure, Disabled; got {v}"
        )),
    }
}

/// The settings one ready queue runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSettings {
    /// Concurrent connections.
    pub connection_limit: usize,
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
}

/// Every shaping block, layered.
#[derive(Debug, Clone, Default)]
pub struct Shaping {
    /// `["default"]`.
    pub default: ShapingOptions,
    /// Per destination domain (lower case).
    pub domains: HashMap<String, ShapingOptions>,
}

impl Shaping {
    /// Settings for mail to `domain`, KumoMTA's defaults where nothing is set.
    pub fn settings_for(&self, domain: &str) -> PathSettings {
        let o = match self.domains.get(domain) {
            Some(d) => self.default.overlay(d),
            None => self.default.clone(),
        };
        PathSettings {
            connection_limit: o.connection_limit.unwrap_or(32).max(1),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_overlays_default() {
        let default: toml::Table =
            toml::from_str("connection_limit = 10\nsmtp_port = 2525\nmystery = 1").unwrap();
        let gmail: toml::Table =
            toml::from_str("connection_limit = 5\nenable_tls = \"Required\"").unwrap();
        let (d, unknown) = ShapingOptions::from_table(&default).unwrap();
        assert_eq!(unknown, vec!["mystery".to_string()]);
        let mut s = Shaping {
            default: d,
            ..Default::default()
        };
        s.domains.insert(
            "gmail.com".into(),
            ShapingOptions::from_table(&gmail).unwrap().0,
        );
        let g = s.settings_for("gmail.com");
        assert_eq!(
            (g.connection_limit, g.smtp_port, g.enable_tls),
            (5, 2525, TlsMode::Required)
        );
        let o = s.settings_for("other.example");
        assert_eq!(
            (o.connection_limit, o.max_ready, o.enable_tls),
            (10, 1024, TlsMode::Opportunistic)
        );
        let bad: toml::Table = toml::from_str("enable_tls = \"Sometimes\"").unwrap();
        assert!(ShapingOptions::from_table(&bad).is_err());
    }
}
