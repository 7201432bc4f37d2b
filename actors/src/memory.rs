//! In-memory implementations of the [`ports`](crate::ports), to run the actors without
//! disk, DNS or sockets: in tests (`actors/tests/`) that take milliseconds, and in
//! benchmarks of the actors alone.
//!
//! - [`MemorySpool`] keeps bodies and records every settlement;
//! - [`MemoryEvents`] keeps every log record;
//! - [`StaticRoutes`] routes every domain to one site named after it (or as told);
//! - [`ScriptedConnector`] opens sessions that answer each recipient as a script says,
//!   and records every transaction; it can hold connections back until let go.

use crate::message::{LoadedMessage, MessageKey, Peer, Reply};
use crate::ports::{
    ConnectFailure, ConnectTarget, EventSink, MxHost, MxResolver, Ports, Route, RouteError,
    SmtpConnector, SmtpSession, SpoolPort,
};
use crate::record::{LogRecord, RecordKind};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the actors told the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolCall {
    /// A recipient is done.
    Remove(MessageKey),
    /// A recipient was deferred or released: (key, attempts, due, held).
    Reschedule(MessageKey, u32, u64, u64),
}

/// A spool in memory.
#[derive(Default)]
pub struct MemorySpool {
    bodies: Mutex<HashMap<[u8; 16], LoadedMessage>>,
    calls: Mutex<Vec<SpoolCall>>,
    state: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemorySpool {
    /// Keep the content of message `id` (the first 16 bytes of its keys).
    pub fn put(&self, id: [u8; 16], content: LoadedMessage) {
        lock(&self.bodies).insert(id, content);
    }

    /// Every settlement so far, in order.
    pub fn calls(&self) -> Vec<SpoolCall> {
        lock(&self.calls).clone()
    }

    /// The state entries.
    pub fn state(&self) -> HashMap<String, Vec<u8>> {
        lock(&self.state).clone()
    }
}

impl SpoolPort for MemorySpool {
    fn remove(&self, key: MessageKey) {
        lock(&self.calls).push(SpoolCall::Remove(key));
    }

    fn reschedule(&self, key: MessageKey, attempts: u32, due_ms: u64, held_ms: u64) {
        lock(&self.calls).push(SpoolCall::Reschedule(key, attempts, due_ms, held_ms));
    }

    fn put_state(&self, key: String, value: Vec<u8>) {
        lock(&self.state).insert(key, value);
    }

    fn delete_state(&self, key: String) {
        lock(&self.state).remove(&key);
    }

    fn sync(&self) -> futures::future::BoxFuture<'static, bool> {
        Box::pin(std::future::ready(true))
    }

    fn load(&self, key: &MessageKey) -> Result<LoadedMessage, String> {
        let id: [u8; 16] = key[..16].try_into().map_err(|_| "short key".to_string())?;
        lock(&self.bodies)
            .get(&id)
            .cloned()
            .ok_or_else(|| "no such message".to_string())
    }
}

/// An event log in memory.
#[derive(Default)]
pub struct MemoryEvents {
    records: Mutex<Vec<LogRecord>>,
}

impl MemoryEvents {
    /// Every record so far.
    pub fn records(&self) -> Vec<LogRecord> {
        lock(&self.records).clone()
    }

    /// The records of one kind.
    pub fn of(&self, kind: RecordKind) -> Vec<LogRecord> {
        lock(&self.records)
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    /// Wait (polling every millisecond, up to `timeout`) until `f` holds on the records;
    /// returns them, or `None` on timeout.
    pub async fn wait(
        &self,
        timeout: Duration,
        f: impl Fn(&[LogRecord]) -> bool,
    ) -> Option<Vec<LogRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let records = lock(&self.records);
                if f(&records) {
                    return Some(records.clone());
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl EventSink for MemoryEvents {
    fn write(&self, record: LogRecord) {
        lock(&self.records).push(record);
    }
}

/// Routes every domain to the site `mx.DOMAIN` with one host, unless told otherwise.
#[derive(Default)]
pub struct StaticRoutes {
    routes: Mutex<HashMap<String, Result<Route, RouteError>>>,
}

impl StaticRoutes {
    /// Route `domain` to `site` (one host of that name).
    pub fn route(&self, domain: &str, site: &str) {
        lock(&self.routes).insert(domain.to_string(), Ok(route_to(site)));
    }

    /// Make `domain` fail to resolve.
    pub fn fail(&self, domain: &str, error: RouteError) {
        lock(&self.routes).insert(domain.to_string(), Err(error));
    }
}

fn route_to(site: &str) -> Route {
    Route {
        site: site.into(),
        hosts: Arc::from(vec![MxHost {
            name: site.to_string(),
            addrs: vec![[127, 0, 0, 1].into()],
            port: None,
            configured: true,
        }]),
        expires: Instant::now() + Duration::from_secs(3600),
    }
}

impl MxResolver for StaticRoutes {
    fn resolve(&self, domain: Arc<str>) -> BoxFuture<'static, Result<Route, RouteError>> {
        let answer = lock(&self.routes)
            .get(&*domain)
            .cloned()
            .unwrap_or_else(|| Ok(route_to(&format!("mx.{domain}"))));
        Box::pin(async move { answer })
    }
}

/// One transaction a scripted session took part in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The site's host connected to.
    pub host: String,
    /// MAIL FROM.
    pub sender: String,
    /// RCPT TO, in order.
    pub recipients: Vec<String>,
    /// Bytes of content.
    pub size: usize,
}

/// How a scripted receiver answers one recipient.
pub type Script = dyn Fn(&str) -> Reply + Send + Sync;

/// Opens sessions that answer as a script says.
pub struct ScriptedConnector {
    script: Box<Script>,
    transactions: Mutex<Vec<Transaction>>,
    connections: AtomicUsize,
    /// While `Some`, connecting waits until this is let go.
    gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl ScriptedConnector {
    /// Sessions answering each recipient with `script(recipient)`.
    pub fn new(script: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Self {
        ScriptedConnector {
            script: Box::new(script),
            transactions: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            gate: Mutex::new(None),
        }
    }

    /// Sessions that accept everything.
    pub fn accepting() -> Self {
        Self::new(|_| Reply {
            code: 250,
            enhanced: Some("2.0.0".into()),
            text: "ok".into(),
            internal: false,
        })
    }

    /// Every transaction so far.
    pub fn transactions(&self) -> Vec<Transaction> {
        lock(&self.transactions).clone()
    }

    /// Connections opened so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Hold every new connection back until [`ScriptedConnector::open`].
    pub fn close_gate(&self) {
        *lock(&self.gate) = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Let held connections through.
    pub fn open(&self) {
        if let Some(gate) = lock(&self.gate).take() {
            gate.close();
        }
    }
}

struct ScriptedSession {
    peer: Peer,
    owner: Arc<ScriptedConnector>,
}

impl SmtpSession for ScriptedSession {
    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn send<'a>(
        &'a mut self,
        sender: &'a str,
        recipients: &'a [&'a str],
        content: &'a LoadedMessage,
    ) -> BoxFuture<'a, Vec<Reply>> {
        let replies: Vec<Reply> = recipients.iter().map(|r| (self.owner.script)(r)).collect();
        let accepted: Vec<String> = recipients
            .iter()
            .zip(&replies)
            .filter(|(_, r)| r.is_success())
            .map(|(r, _)| r.to_string())
            .collect();
        if !accepted.is_empty() {
            lock(&self.owner.transactions).push(Transaction {
                host: self.peer.host.clone(),
                sender: sender.to_string(),
                recipients: accepted,
                size: content.body.len(),
            });
        }
        Box::pin(async move { replies })
    }

    fn usable(&self) -> bool {
        true
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// A connector shared by the ports and the test that inspects it.
pub struct SharedConnector(pub Arc<ScriptedConnector>);

impl SmtpConnector for SharedConnector {
    fn connect(
        &self,
        target: ConnectTarget,
    ) -> BoxFuture<'static, Result<Box<dyn SmtpSession>, ConnectFailure>> {
        let owner = self.0.clone();
        Box::pin(async move {
            let gate = lock(&owner.gate).clone();
            if let Some(gate) = gate {
                // Closed when let go: acquiring then fails and we go on.
                let _ = gate.acquire().await;
            }
            owner.connections.fetch_add(1, Ordering::Relaxed);
            let host = target
                .hosts
                .first()
                .map(|h| h.name.clone())
                .unwrap_or_default();
            let session: Box<dyn SmtpSession> = Box::new(ScriptedSession {
                peer: Peer {
                    host,
                    addr: "127.0.0.1".into(),
                    tls: None,
                },
                owner,
            });
            Ok(session)
        })
    }
}

/// Ports over fresh in-memory parts, with handles to inspect them.
pub struct MemoryPorts {
    /// The ports, as the engine takes them.
    pub ports: Ports,
    /// The spool.
    pub spool: Arc<MemorySpool>,
    /// The event log.
    pub events: Arc<MemoryEvents>,
    /// The routes.
    pub routes: Arc<StaticRoutes>,
    /// The receivers.
    pub connector: Arc<ScriptedConnector>,
}

impl MemoryPorts {
    /// In-memory ports whose receivers answer as `connector` says.
    pub fn new(connector: ScriptedConnector) -> MemoryPorts {
        let spool = Arc::new(MemorySpool::default());
        let events = Arc::new(MemoryEvents::default());
        let routes = Arc::new(StaticRoutes::default());
        let connector = Arc::new(connector);
        MemoryPorts {
            ports: Ports {
                spool: spool.clone(),
                events: events.clone(),
                resolver: routes.clone(),
                connector: Arc::new(SharedConnector(connector.clone())),
                cluster: None,
            },
            spool,
            events,
            routes,
            connector,
        }
    }
}
