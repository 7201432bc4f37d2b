//! The actors' side of a cluster: what they ask of the other nodes, and the limits they
//! share with them.
//!
//! With `[cluster]` set, the daemon gives the actors a [`ClusterPort`] (over Redis, in
//! `src/cluster.rs`); without it there is none and every limit is the node's own.
//!
//! - Shared policy: the suspension register announces every change of a suspension,
//!   throttle, bounce order or override as a [`PolicyChange`] ([`ClusterPort::share`]),
//!   and applies the changes of the other nodes ([`crate::messages::ApplyShared`]); the
//!   newest change of each object wins, and a deletion stays as a tombstone until the
//!   object's own expiry.
//! - Shared rates ([`SharedRate`], inside [`crate::limits::Limiter`]): events are taken
//!   from one GCRA in Redis, a few at a time; while Redis does not answer, the limiter goes
//!   on alone at the rate divided by the nodes last seen.
//! - Shared connection limits ([`ClusterPort::lease`]): a connection holds a lease on each
//!   limit it counts against; the port renews the leases it holds and they expire by
//!   themselves when a node dies.
//! - Threshold rules count their matches in one window for the whole cluster
//!   ([`ClusterPort::count_match`]).
//!
//! Calls answer through a callback, on the port's own runtime: an actor that asks sends the
//! answer to itself.

use crate::limits::Limiter;
use crate::shaping::Rate;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What kind of policy object a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// A suspension.
    Suspension,
    /// A throttle.
    Throttle,
    /// A bounce order.
    Bounce,
    /// A shaping override.
    Override,
}

impl PolicyKind {
    /// The prefix of its entries in the spool's `state` keyspace.
    pub fn state_prefix(&self) -> &'static str {
        match self {
            PolicyKind::Suspension => "suspension",
            PolicyKind::Throttle => "throttle",
            PolicyKind::Bounce => "bounce",
            PolicyKind::Override => "override",
        }
    }
}

/// One change of a policy object, as the nodes tell each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChange {
    /// What it is.
    pub kind: PolicyKind,
    /// Its id.
    pub id: String,
    /// When the change was made (ms since the epoch): the newest change wins.
    pub updated_ms: u64,
    /// When the object ends (a tombstone is kept until then).
    pub expires_ms: u64,
    /// The node that made the change.
    #[serde(default)]
    pub node: String,
    /// The object as JSON; `None`: deleted (resumed, cancelled).
    pub object: Option<serde_json::Value>,
}

impl PolicyChange {
    /// A deletion.
    pub fn is_tombstone(&self) -> bool {
        self.object.is_none()
    }
}

/// Redis did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// What a shared rate gave: `granted` events now, or (none) how long until the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Events granted.
    pub granted: u32,
    /// With none granted: the wait until one is.
    pub wait: Duration,
}

/// A lease on shared connection slots, released by [`ClusterPort::release`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseId(pub u64);

/// A callback with the answer.
pub type Answer<T> = Box<dyn FnOnce(T) + Send>;

/// What the actors ask of the cluster.
pub trait ClusterPort: Send + Sync + 'static {
    /// This node's name.
    fn node(&self) -> &str;
    /// Announce a change made on this node (kept and announced again at the next
    /// reconciliation if Redis does not answer now).
    fn share(&self, change: PolicyChange);
    /// Take up to `want` events now from the shared GCRA of `key` at `rate`.
    fn take(&self, key: String, rate: Rate, want: u32, answer: Answer<Result<Taken, Unreachable>>);
    /// One lease on each of `limits` (key, most leases), all or none: `Some` when granted.
    fn lease(
        &self,
        limits: Vec<(String, usize)>,
        answer: Answer<Result<Option<LeaseId>, Unreachable>>,
    );
    /// Give a lease back.
    fn release(&self, lease: LeaseId);
    /// Count a match of a threshold rule in the cluster-wide window `key`; true when it
    /// makes `count` within `period` (the window then starts afresh).
    fn count_match(
        &self,
        key: String,
        count: u32,
        period: Duration,
        answer: Answer<Result<bool, Unreachable>>,
    );
    /// The nodes last seen alive (at least 1): a shared limit is divided by it while Redis
    /// does not answer.
    fn nodes(&self) -> usize;
}

/// A cluster limit as one node applies it while Redis does not answer: `limit` divided by
/// the nodes last seen, at least 1.
pub fn alone_share(limit: u64, nodes: usize) -> u64 {
    (limit / nodes.max(1) as u64).max(1)
}

/// How long a check waits while an answer from Redis is on its way.
const ASKING_WAIT: Duration = Duration::from_millis(2);
/// Events granted but not used within this are given up (never used later in a burst).
const GRANT_LIFETIME: Duration = Duration::from_secs(1);
/// Most events asked for at once.
const MOST_AT_ONCE: u64 = 16;
/// After Redis did not answer, the limiter goes on alone this long before asking again.
const ALONE_FOR: Duration = Duration::from_secs(1);

/// A rate shared by the nodes of a cluster.
pub struct SharedRate {
    port: Arc<dyn ClusterPort>,
    key: String,
    rate: Rate,
    state: Arc<Mutex<SharedState>>,
}

#[derive(Default)]
struct SharedState {
    /// Events granted and not yet used, until `granted_until`.
    granted: u32,
    granted_until: Option<Instant>,
    /// An answer is on its way.
    asking: bool,
    /// The shared limiter said: none before this.
    not_before: Option<Instant>,
    /// Redis did not answer: the node's own share of the rate, until `alone_until`.
    alone: Option<Arc<Limiter>>,
    alone_until: Option<Instant>,
}

impl SharedRate {
    /// `rate` shared under `key`.
    pub fn new(port: Arc<dyn ClusterPort>, key: String, rate: Rate) -> SharedRate {
        SharedRate {
            port,
            key,
            rate,
            state: Arc::default(),
        }
    }

    /// Take one event now, or say how long to wait before asking again.
    pub fn check(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.granted > 0 && s.granted_until.is_some_and(|t| t > now) {
            s.granted -= 1;
            return Ok(());
        }
        s.granted = 0;
        if let Some(until) = s.alone_until {
            if until > now || s.asking {
                let alone = s.alone.clone();
                drop(s);
                return alone.map_or(Ok(()), |l| l.check());
            }
        }
        if s.asking {
            return Err(ASKING_WAIT);
        }
        if let Some(t) = s.not_before.filter(|t| *t > now) {
            return Err(t - now);
        }
        s.asking = true;
        drop(s);
        let want = self.rate.burst().min(MOST_AT_ONCE) as u32;
        let (state, port, rate) = (self.state.clone(), self.port.clone(), self.rate);
        self.port.take(
            self.key.clone(),
            self.rate,
            want,
            Box::new(move |answer| {
                let now = Instant::now();
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.asking = false;
                match answer {
                    Ok(t) => {
                        s.alone = None;
                        s.alone_until = None;
                        s.granted = t.granted;
                        s.granted_until = Some(now + GRANT_LIFETIME);
                        s.not_before = (t.granted == 0).then(|| now + t.wait);
                    }
                    Err(Unreachable) => {
                        if s.alone.is_none() {
                            let share = Rate {
                                count: alone_share(rate.count, port.nodes()),
                                burst: rate.burst.map(|b| alone_share(b, port.nodes())),
                                ..rate
                            };
                            s.alone = Some(Arc::new(Limiter::new(share)));
                        }
                        s.alone_until = Some(now + ALONE_FOR);
                    }
                }
            }),
        );
        Err(ASKING_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_a_node_takes_its_share_of_a_cluster_limit() {
        assert_eq!(alone_share(10, 2), 5);
        assert_eq!(alone_share(3, 2), 1);
        assert_eq!(alone_share(1, 5), 1);
        assert_eq!(alone_share(7, 0), 7);
    }
}
