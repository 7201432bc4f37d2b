//! Event-log records: one JSON line per decision that changes a message's fate.
//!
//! The actors fill them in; the daemon's log writer (`src/logs.rs`) serializes and files them.

use crate::message::{Peer, TlsInfo};
use crate::mta_sts::StsApplied;
use serde::Serialize;
use std::sync::Arc;
use std::time::SystemTime;

/// An SMTP reply as logged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Response {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code, e.g. "5.7.26".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    /// Reply text.
    pub text: String,
}

impl From<&crate::message::Reply> for Response {
    fn from(r: &crate::message::Reply) -> Self {
        Response {
            code: r.code,
            enhanced: r.enhanced.clone(),
            text: r.text.clone(),
        }
    }
}

/// What a record is about: its `type` in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub enum RecordKind {
    /// A message was accepted (ingress).
    #[default]
    Reception,
    /// A recipient was delivered.
    Delivery,
    /// An attempt failed for now; a retry is scheduled.
    TransientFailure,
    /// A recipient failed for good.
    Bounce,
    /// A recipient was still undelivered at `max_age`.
    Expiration,
    /// A recipient was bounced by an operator or a Bounce rule.
    AdminBounce,
    /// A message was refused at ingress.
    Rejection,
    /// A suspension began (or was extended).
    Suspension,
    /// A suspension ended.
    Resume,
    /// An automation rule fired.
    AutomationFired,
    /// A throttle began (or was extended, or its rate changed).
    Throttle,
    /// A throttle ended.
    ThrottleEnd,
    /// A shaping override began (or was extended).
    Override,
    /// A shaping override ended.
    OverrideEnd,
}

/// Every record type's name, as `type` says it.
pub const RECORD_KINDS: [&str; 14] = [
    "Reception",
    "Delivery",
    "TransientFailure",
    "Bounce",
    "Expiration",
    "AdminBounce",
    "Rejection",
    "Suspension",
    "Resume",
    "AutomationFired",
    "Throttle",
    "ThrottleEnd",
    "Override",
    "OverrideEnd",
];

/// The `outcome` label values of `switchyard_delivery_total` and
/// `switchyard_ready_delivery_total`.
pub const OUTCOMES: [&str; 5] = [
    "delivered",
    "transient",
    "bounced",
    "expired",
    "admin_bounced",
];

/// One event. Fields that do not apply stay `None` and are left out of the line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogRecord {
    /// What it is about.
    #[serde(rename = "type")]
    pub kind: RecordKind,
    /// RFC 3339 time of the event.
    pub timestamp: String,
    /// Message id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Campaign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// Envelope sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The recipient this record is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// All recipients of an accepted message (Reception).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
    /// Destination domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Scheduled queue name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Egress source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Destination site (MX rollup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Remote peer of a delivery attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    /// The attempt's TLS session (Delivery, TransientFailure, Bounce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    /// The MTA-STS policy the attempt went under (Delivery, TransientFailure, Bounce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mta_sts: Option<Arc<StsApplied>>,
    /// Injecting client's address (Reception, Rejection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The SMTP reply this record is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    /// Delivery attempts so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Bounce classification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce_class: Option<String>,
    /// Automation rule name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Automation action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A throttle's rate (Throttle, ThrottleEnd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Why a suspension began or ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When a suspension or override ends (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Message size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The domains whose DKIM signatures were added at reception (Reception).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dkim: Option<Vec<String>>,
    /// Threads the message visited from DATA's end to the remote reply (test-only trace,
    /// `SWITCHYARD_TRACE_HOPS=1`; see `test_hooks.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops: Option<Vec<String>>,
}

impl LogRecord {
    /// A record of `kind` stamped now.
    pub fn new(kind: RecordKind) -> Self {
        LogRecord {
            kind,
            timestamp: rfc3339(SystemTime::now()),
            ..Default::default()
        }
    }
}

/// RFC 3339 of a timestamp in ms since the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T10:15:00.000Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
