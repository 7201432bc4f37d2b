//! What travels between the actors: queued messages, SMTP replies and delivery outcomes.

use serde::Serialize;
use std::sync::Arc;

/// Spool key of one recipient of one message: 16 bytes of message id (UUIDv7, time-ordered)
/// then the recipient's index, big-endian.
pub type MessageKey = [u8; 20];

/// Hex of the message-id part of a key, as printed in logs and `250 ... queued as`.
pub fn message_id_hex(key: &MessageKey) -> String {
    key[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A message on its way to a campaign: (destination domain, message).
pub type ForCampaign = (Arc<str>, QueuedMessage);

/// A message on its way to a tenant: (campaign, destination domain, message).
pub type ForTenant = (Option<Arc<str>>, Arc<str>, QueuedMessage);

/// One recipient waiting in a scheduled queue. Only metadata: the body stays in the spool
/// until a connection sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Spool key.
    pub key: MessageKey,
    /// Recipient address.
    pub recipient: Box<str>,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since epoch).
    pub due_ms: u64,
    /// When it was received (ms since epoch).
    pub created_ms: u64,
    /// Time spent held by suspensions (ms); `max_age` does not count it.
    pub held_ms: u64,
}

/// Which scheduled queue a message belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueIdentity {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Campaign, if any.
    pub campaign: Option<Arc<str>>,
    /// Destination domain, lower case.
    pub domain: Arc<str>,
}

impl QueueIdentity {
    /// The scheduled queue's name, `campaign:tenant@domain` (`tenant@domain` without campaign).
    pub fn name(&self) -> String {
        match &self.campaign {
            Some(c) => format!("{c}:{}@{}", self.tenant, self.domain),
            None => format!("{}@{}", self.tenant, self.domain),
        }
    }
}

/// An SMTP reply, real or synthesized by switchyard for a local failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code ("5.7.26"), when the server gave one.
    pub enhanced: Option<String>,
    /// Reply text (lines joined with a space).
    pub text: String,
    /// Made up by switchyard (DNS or connection failure), not said by a remote server.
    #[serde(skip)]
    pub internal: bool,
}

impl Reply {
    /// A synthetic reply for a local failure.
    pub fn internal(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced.to_string()),
            text: text.into(),
            internal: true,
        }
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// `"CODE ENHANCED TEXT"`, the form bounce and automation rules match against.
    pub fn match_text(&self) -> String {
        match &self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, self.text),
            None => format!("{} {}", self.code, self.text),
        }
    }
}

/// The remote end of a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// MX host name.
    pub host: String,
    /// Address connected to.
    pub addr: String,
}
