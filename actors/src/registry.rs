//! Where actors that come and go are found: tenants, campaigns, scheduled queues and ready
//! queues are started on demand and reaped when idle, and a [`Registry`] maps each one's key
//! to its address meanwhile. [`Arbiters`] spreads them over the worker threads.
//!
//! Reaping must never lose a message that is on its way. A sender that gets an address with
//! [`Registry::lease`] counts one message towards that actor; the actor counts what it
//! received, and [`Registry::retire`] takes it out only when the two counts agree. So an
//! actor never stops with a leased message in its mailbox, and a sender holding a lease can
//! hand its message over without fear of it being dropped. Messages that are answered
//! (`send().await`) need no lease: a stopped actor answers them with `MailboxError::Closed`,
//! and the sender asks the registry again.
//!
//! A lease also carries the actor's [`Lease::room`]: a semaphore of as many permits as
//! leased messages may wait for the actor at once. The sender waits for a permit and sends
//! it along; the actor drops it when it has handled the message. This, not the actix
//! mailbox, is what bounds the hand-off: actix lets every clone of an address put one more
//! message into a full mailbox, so its capacity does not hold against many senders.

use actix::prelude::*;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The worker arbiters (threads), handed out round robin.
pub struct Arbiters {
    handles: Vec<ArbiterHandle>,
    next: AtomicUsize,
}

impl Arbiters {
    /// Over these arbiters (at least one).
    pub fn new(handles: Vec<ArbiterHandle>) -> Arbiters {
        Arbiters {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// The next arbiter, round robin; the current thread's when there are none.
    pub fn next(&self) -> ArbiterHandle {
        if self.handles.is_empty() {
            return Arbiter::current();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].clone()
    }
}

struct Entry<A: Actor> {
    addr: Addr<A>,
    serial: u64,
    leased: u64,
    room: Arc<Semaphore>,
}

/// An actor's address for one leased message, and the room to wait for before sending it.
pub struct Lease<A: Actor> {
    /// The actor.
    pub addr: Addr<A>,
    /// Permits for messages waiting for the actor (see the module doc).
    pub room: Arc<Semaphore>,
    /// Its serial number, when this lease started it.
    pub started: Option<u64>,
}

/// Live actors of one kind, by key.
pub struct Registry<K, A: Actor> {
    map: Mutex<HashMap<K, Entry<A>>>,
    serials: AtomicU64,
    /// `switchyard_{name}` gauge of how many are live.
    gauge: &'static str,
    /// Leased messages that may wait for one actor.
    room: usize,
}

impl<K: Eq + Hash + Clone, A: Actor> Registry<K, A> {
    /// An empty registry whose size is published as the gauge `gauge`; at most `room`
    /// leased messages wait for one actor.
    pub fn new(gauge: &'static str, room: usize) -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
            serials: AtomicU64::new(0),
            gauge,
            room: room.max(1),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry<A>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of `key` (started by `start(serial)` when there is none) with `leases` more
    /// leased messages; and its serial when it was just started.
    fn entry(
        &self,
        key: &K,
        leases: u64,
        start: impl FnOnce(u64) -> Addr<A>,
    ) -> (Addr<A>, Arc<Semaphore>, Option<u64>) {
        let mut map = self.map();
        if let Some(e) = map.get_mut(key) {
            e.leased += leases;
            return (e.addr.clone(), e.room.clone(), None);
        }
        let serial = self.serials.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Entry {
            addr: start(serial),
            serial,
            leased: leases,
            room: Arc::new(Semaphore::new(self.room)),
        };
        let found = (entry.addr.clone(), entry.room.clone(), Some(serial));
        map.insert(key.clone(), entry);
        metrics::gauge!(self.gauge).set(map.len() as f64);
        found
    }

    /// The actor of `key`, started by `start(serial)` when there is none. Counts one leased
    /// message: the caller must hand the actor exactly one message that the actor counts
    /// towards [`Registry::retire`].
    pub fn lease(&self, key: &K, start: impl FnOnce(u64) -> Addr<A>) -> Lease<A> {
        let (addr, room, started) = self.entry(key, 1, start);
        Lease {
            addr,
            room,
            started,
        }
    }

    /// The actor of `key`, if one is live (no lease).
    pub fn get(&self, key: &K) -> Option<Addr<A>> {
        self.map().get(key).map(|e| e.addr.clone())
    }

    /// The actor of `key`, started by `start(serial)` when there is none (no lease: for
    /// answered messages, whose senders ask again on `MailboxError::Closed`).
    pub fn get_or_start(&self, key: &K, start: impl FnOnce(u64) -> Addr<A>) -> Addr<A> {
        self.entry(key, 0, start).0
    }

    /// Take the actor `serial` of `key` out, if every message leased to it has been
    /// received (`received`). `true`: it is out, no sender can reach it any more, and it
    /// must stop now.
    pub fn retire(&self, key: &K, serial: u64, received: u64) -> bool {
        let mut map = self.map();
        let quiet = map
            .get(key)
            .is_some_and(|e| e.serial == serial && e.leased == received);
        if quiet {
            map.remove(key);
            // A map keeps its capacity: after a wave of 100,000 queues has been reaped, give
            // the room back rather than hold it for the next wave.
            if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
                let room = map.len() * 2;
                map.shrink_to(room);
            }
            metrics::gauge!(self.gauge).set(map.len() as f64);
        }
        quiet
    }

    /// Publish the gauge of how many are live again (see [`gauge_refresh`]).
    pub fn publish(&self) {
        let live = self.map().len();
        metrics::gauge!(self.gauge).set(live as f64);
    }

    /// Every live actor.
    pub fn all(&self) -> Vec<Addr<A>> {
        self.map().values().map(|e| e.addr.clone()).collect()
    }

    /// Every live actor whose key passes `f`.
    pub fn filtered(&self, f: impl Fn(&K) -> bool) -> Vec<Addr<A>> {
        self.map()
            .iter()
            .filter(|(k, _)| f(k))
            .map(|(_, e)| e.addr.clone())
            .collect()
    }

    /// How many are live.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// None live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The live children of a tenant (its campaigns) or of a campaign (its scheduled queues):
/// each registered by its start message and forgotten by its "gone" message, with a gauge
/// of how many there are and since when there have been none.
pub struct Children<K, A: Actor> {
    live: HashMap<K, (Addr<A>, u64)>,
    /// Start messages received (each was leased: see [`Registry::retire`]).
    pub registrations: u64,
    idle_since: Option<Instant>,
    gauge: metrics::Gauge,
}

impl<K: Eq + Hash, A: Actor> Children<K, A> {
    /// None yet; `gauge` counts them.
    pub fn new(gauge: metrics::Gauge) -> Self {
        Children {
            live: HashMap::new(),
            registrations: 0,
            idle_since: Some(Instant::now()),
            gauge,
        }
    }

    /// Child `serial` of `key` started.
    pub fn started(&mut self, key: K, addr: Addr<A>, serial: u64) {
        self.registrations += 1;
        self.idle_since = None;
        self.live.insert(key, (addr, serial));
        self.gauge.set(self.live.len() as f64);
    }

    /// Child `serial` of `key` went away (a newer one for the same key stays).
    pub fn gone(&mut self, key: &K, serial: u64) {
        if self.live.get(key).is_some_and(|(_, s)| *s == serial) {
            self.live.remove(key);
        }
        if self.live.is_empty() {
            self.idle_since = Some(Instant::now());
        }
        self.gauge.set(self.live.len() as f64);
    }

    /// None for at least `period`.
    pub fn idle_for(&self, period: Duration) -> bool {
        self.idle_since.is_some_and(|t| t.elapsed() >= period)
    }

    /// The live ones, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Addr<A>)> {
        self.live.iter().map(|(k, (a, _))| (k, a))
    }

    /// Tell every live one.
    pub fn tell<M>(&self, msg: M)
    where
        M: Message + Send + Clone + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: actix::dev::ToEnvelope<A, M>,
    {
        for (addr, _) in self.live.values() {
            addr.do_send(msg.clone());
        }
    }

    /// How many are live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// None live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The gauge, set to 0 (the parent is going).
    pub fn clear_gauge(&self) {
        self.gauge.set(0.0);
    }
}

/// How often a live actor republishes its gauges and looks whether it is idle long enough
/// to be reaped (gauges not set for ten minutes vanish from /metrics).
pub fn gauge_refresh(reap_after: std::time::Duration) -> std::time::Duration {
    (reap_after / 4).clamp(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(60),
    )
}
