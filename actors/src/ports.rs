//! The actors' view of the outside world: spool, event log, DNS and outbound SMTP.
//!
//! The daemon (`src/`) implements these over fjall, the log thread, hickory-resolver and
//! tokio-rustls; tests can implement them in memory. Everything here may be called from actor
//! threads, so no method blocks except [`SpoolPort::load`], which the connection calls on the
//! blocking pool.

pub use crate::message::LoadedMessage;
use crate::message::{MessageKey, Peer, Reply};
use crate::mta_sts::StsPolicy;
use crate::record::LogRecord;
use futures::future::BoxFuture;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Durable changes to the spool; each is queued to the group-commit writer.
pub trait SpoolPort: Send + Sync + 'static {
    /// The recipient is done (delivered, bounced, expired): forget it.
    fn remove(&self, key: MessageKey);
    /// The recipient was deferred (or released from a suspension): record its attempts,
    /// next due time and the time it has spent held.
    fn reschedule(&self, key: MessageKey, attempts: u32, due_ms: u64, held_ms: u64);
    /// Store a suspension or override (`state` keyspace) durably.
    fn put_state(&self, key: String, value: Vec<u8>);
    /// Forget a state entry.
    fn delete_state(&self, key: String);
    /// Resolves once every change queued before it has been through the writer: `true`
    /// when the state changes among them are committed and fsynced. What an operator's
    /// change waits for before it is answered, so an acknowledged change survives a crash.
    fn sync(&self) -> BoxFuture<'static, bool>;
    /// Read sender and body. Blocking; call it off actor threads.
    fn load(&self, key: &MessageKey) -> Result<LoadedMessage, String>;
}

/// Where log records go.
pub trait EventSink: Send + Sync + 'static {
    /// File one record.
    fn write(&self, record: LogRecord);

    /// File a recipient's final record (Delivery, Bounce, Expiration, AdminBounce) and, only
    /// once it is written, remove the recipient from `spool`. A crash between the two then
    /// costs a repeated attempt (a duplicate delivery, logged again), never a recipient that
    /// left the spool without its final record. This default, for sinks that write at once,
    /// does both in order.
    fn write_final(&self, record: LogRecord, key: MessageKey, spool: Arc<dyn SpoolPort>) {
        self.write(record);
        spool.remove(key);
    }

    /// Resolves once every record filed before it is written and the removals waiting on
    /// them are handed to the spool. This default is for sinks that write at once.
    fn sync(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// One host to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name (or the literal address) as published.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// Port, when a route fixes it (otherwise the shaping `smtp_port`).
    pub port: Option<u16>,
    /// Set by the operator's `[routes]`: not screened by `prohibited_hosts`/`skip_hosts`.
    pub configured: bool,
}

/// Where mail for a domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The site: the sorted MX host set (MX rollup), a route's target, or an address literal.
    pub site: Arc<str>,
    /// Hosts in the order to try them (preference, then random among equals).
    pub hosts: Arc<[MxHost]>,
    /// When to look again.
    pub expires: Instant,
}

/// Why a domain has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Will not change by retrying (NXDOMAIN, null MX): bounce with this reply.
    Permanent(Reply),
    /// May work later (SERVFAIL, timeout): defer with this reply.
    Transient(Reply),
}

/// MX resolution with caching, and MTA-STS policy discovery.
pub trait MxResolver: Send + Sync + 'static {
    /// The route for `domain` (lower case; `[1.2.3.4]` for address literals).
    fn resolve(&self, domain: Arc<str>) -> BoxFuture<'static, Result<Route, RouteError>>;

    /// The MTA-STS policy in force for `domain` (cached, fetched when its TXT record's id
    /// is new), or `None` when it publishes none that could be read. Resolvers without
    /// MTA-STS (tests) know of none.
    fn mta_sts(&self, domain: Arc<str>) -> BoxFuture<'static, Option<Arc<StsPolicy>>> {
        let _ = domain;
        Box::pin(async { None })
    }
}

/// STARTTLS policy (`enable_tls` in shaping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Try TLS when offered; on failure go on in plain text.
    Opportunistic,
    /// As Opportunistic, without certificate checks.
    OpportunisticInsecure,
    /// TLS or no delivery (transient failure).
    Required,
    /// As Required, without certificate checks.
    RequiredInsecure,
    /// Never STARTTLS.
    Disabled,
}

/// Per-connection timeouts, one per step, named and defaulted as KumoMTA's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (60 s).
    pub connect: Duration,
    /// The greeting (60 s).
    pub banner: Duration,
    /// EHLO's (or HELO's) reply (300 s).
    pub ehlo: Duration,
    /// MAIL's reply (300 s).
    pub mail_from: Duration,
    /// Each RCPT's reply (300 s).
    pub rcpt_to: Duration,
    /// DATA's reply, and sending the content (300 s).
    pub data: Duration,
    /// The reply to the end mark (300 s).
    pub data_dot: Duration,
    /// RSET's reply (5 s).
    pub rset: Duration,
    /// An idle connection waits this long for its next message, then QUITs (5 s).
    pub idle: Duration,
    /// STARTTLS's reply and the TLS handshake (5 s).
    pub starttls: Duration,
}

impl Timeouts {
    /// Every step the same (tests).
    pub fn all(d: Duration) -> Timeouts {
        Timeouts {
            connect: d,
            banner: d,
            ehlo: d,
            mail_from: d,
            rcpt_to: d,
            data: d,
            data_dot: d,
            rset: d,
            idle: d,
            starttls: d,
        }
    }
}

/// An egress source: the local address and name a connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressSource {
    /// Name used in pools, shaping, logs and metrics.
    pub name: Arc<str>,
    /// Address to bind, or `None` for the system's choice.
    pub address: Option<IpAddr>,
    /// EHLO name.
    pub ehlo: String,
}

/// What a connection is asked to reach.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
    /// From where.
    pub source: Arc<EgressSource>,
    /// Where to, in order.
    pub hosts: Arc<[MxHost]>,
    /// Port unless a host fixes its own.
    pub port: u16,
    /// STARTTLS policy.
    pub tls: TlsMode,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// How long a host (and port) whose STARTTLS failed is then sent to in plain text
    /// (Opportunistic modes); `None`: not remembered.
    pub remember_broken_tls: Option<Duration>,
    /// Opportunistic TLS whose handshake failed connects again in plain text at once.
    pub reconnect_on_failed_handshake: bool,
}

/// A failed connection: the reply to log for the message that waited on it.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    /// Synthetic (or a remote banner/EHLO refusal) reply.
    pub reply: Reply,
    /// The last peer tried, if any.
    pub peer: Option<Peer>,
}

/// An open SMTP session to one peer.
pub trait SmtpSession: Send {
    /// Who we are talking to.
    fn peer(&self) -> &Peer;
    /// Send one message to several recipients in one transaction; one reply per
    /// recipient, in order: its RCPT reply if that refused it, else the reply that decided
    /// the message (MAIL, DATA or the final dot). After a transport error the replies are
    /// synthetic and [`SmtpSession::usable`] turns false.
    fn send<'a>(
        &'a mut self,
        sender: &'a str,
        recipients: &'a [&'a str],
        content: &'a LoadedMessage,
    ) -> BoxFuture<'a, Vec<Reply>>;
    /// Whether another message may be sent on this session.
    fn usable(&self) -> bool;
    /// QUIT and close.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Opens SMTP sessions.
pub trait SmtpConnector: Send + Sync + 'static {
    /// Connect, read the banner, EHLO, and STARTTLS as the policy says.
    fn connect(
        &self,
        target: ConnectTarget,
    ) -> BoxFuture<'static, Result<Box<dyn SmtpSession>, ConnectFailure>>;
}

/// The ports bundled, as every actor receives them.
#[derive(Clone)]
pub struct Ports {
    /// Spool.
    pub spool: Arc<dyn SpoolPort>,
    /// Event log.
    pub events: Arc<dyn EventSink>,
    /// DNS.
    pub resolver: Arc<dyn MxResolver>,
    /// Outbound SMTP.
    pub connector: Arc<dyn SmtpConnector>,
    /// The other nodes, with `[cluster]`.
    pub cluster: Option<Arc<dyn crate::cluster::ClusterPort>>,
}
