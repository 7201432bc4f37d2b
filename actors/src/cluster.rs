//! The actors' side of a cluster: what they ask of the other nodes, and the limits they
//! share with them.
//!
//! With `[cluster]` set, the daemon gives the actors a [`ClusterPort`] (over Redis, in
//! `src/cluster.rs`); without it there is none and every limit is the node's own.
//!
//! - Shared policy: the suspension register announces every change of a suspension,
//!   throttle, bounce order or override as a [`PolicyChange`] ([`ClusterPort::share`]),
//!   and applies the changes of the other nodes (`messages::ApplyShared`); the newest
//!   change of each object wins, and a deletion stays as a tombstone until the object's
//!   own expiry.
//! - Shared rates (`SharedRate`, inside `limits::Limiter`): events are taken from one
//!   GCRA in Redis, a few at a time; while Redis does not answer, the limiter goes on alone
//!   at the rate divided by the nodes last seen.
//! - Shared connection limits ([`ClusterPort::lease`]): a connection holds a lease on each
//!   limit it counts against; the port renews the leases it holds and they expire by
//!   themselves when a node dies.
//! - Threshold rules count their matches in one window for the whole cluster
//!   ([`ClusterPort::count_match`]).
//!
//! This module depends on no other of the crate: the limits, ready queues, classifier
//! and register use it.
//!
//! Calls answer through a callback, on the port's own runtime: an actor that asks sends the
//! answer to itself.

use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// Announce changes made on this node, in this order (kept and announced again at
    /// the next reconciliation if Redis does not answer now).
    fn share(&self, changes: Vec<PolicyChange>);
    /// Take up to `want` events now from the shared GCRA of `key`: one every `interval`,
    /// `burst` at once.
    fn take(
        &self,
        key: String,
        interval: Duration,
        burst: u64,
        want: u32,
        answer: Answer<Result<Taken, Unreachable>>,
    );
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
