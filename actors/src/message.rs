//! What the actors handle: queued messages (and, on their first way out, their content),
//! SMTP replies, peers.

use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Spool key of one recipient of one message: 16 bytes of message id (UUIDv7, time-ordered)
/// then the recipient's index, big-endian.
pub type MessageKey = [u8; 20];

/// The message-id part of a key: the same for every recipient of one message.
pub fn message_id(key: &MessageKey) -> &[u8] {
    &key[..16]
}

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

/// What a connection needs of a message to send it.
#[derive(Debug, Clone)]
pub struct LoadedMessage {
    /// Envelope sender (MAIL FROM).
    pub sender: String,
    /// Content as stored (with our Received header); shared, never copied on its way.
    pub body: bytes::Bytes,
    /// The content is already in its wire form: dot-stuffed and ending in CRLF, so it goes
    /// to the socket as it is, followed by the end mark.
    pub stuffed: bool,
}

/// How many bytes of content may be kept in memory for messages on their first way out.
pub struct HotBudget {
    used: AtomicUsize,
    limit: usize,
}

impl HotBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<HotBudget> {
        Arc::new(HotBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Keep `content` in memory if the budget allows; `None` when it is spent (the
    /// connection then reads the content from the spool, as for any retry).
    pub fn keep(self: &Arc<Self>, content: LoadedMessage) -> Option<Arc<HotContent>> {
        let n = content.body.len();
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + n > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        Some(Arc::new(HotContent {
            content,
            budget: self.clone(),
        }))
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A fresh message's content, kept from ingress to its first attempt so that the
/// connection need not read back what was just written: the bytes go from DATA to the
/// socket without another copy. Its bytes return to the budget when the last recipient
/// lets go of it (delivered, deferred or held).
pub struct HotContent {
    /// The content.
    pub content: LoadedMessage,
    budget: Arc<HotBudget>,
}

impl Drop for HotContent {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.content.body.len(), Ordering::Relaxed);
    }
}

impl std::fmt::Debug for HotContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HotContent({} bytes)", self.content.body.len())
    }
}

impl PartialEq for HotContent {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for HotContent {}

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
    /// Its content, while it is on its first way out (see [`HotContent`]).
    pub hot: Option<Arc<HotContent>>,
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
    /// The session's TLS, when STARTTLS succeeded (logged as the record's own `tls`).
    #[serde(skip)]
    pub tls: Option<TlsInfo>,
}

/// What a session's TLS was: logged as `tls` in Delivery and TransientFailure records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    /// "TLSv1_3", "TLSv1_2".
    pub version: String,
    /// The cipher suite, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// Whether the certificate was verified (Opportunistic, Required) or not (the
    /// Insecure modes).
    pub verified: bool,
}
