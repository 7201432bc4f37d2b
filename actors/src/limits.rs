//! Limits and gates: the rate limiters and shared counters that pace mail.
//!
//! - [`Limiter`]: one GCRA rate (`governor`), e.g. a ready queue's `max_message_rate` or a
//!   tenant's QoS `max_message_rate`;
//! - [`ProviderGate`]: what a provider's sites share per egress source
//!   (`provider_connection_limit`, `provider_max_message_rate`), kept in [`ProviderGates`].
//!
//! With a cluster ([`crate::cluster`]), a limit not written `local:` is shared by its
//! nodes: rates through [`SharedRate`], connection limits through leases (the ready queue
//! takes them, [`ProviderGate::lease_limit`]).
//!
//! A check that passes reads no clock: the clock is read only to say how long to wait.

use crate::cluster::{alone_share, ClusterPort, SharedRate};
use crate::shaping::{Limit, Provider, Rate};
use governor::clock::Clock;
use governor::DefaultDirectRateLimiter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a limiter that said no wants us to wait.
fn wait_time(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> Duration {
    not_until.wait_time_from(governor::clock::DefaultClock::default().now())
}

/// One rate limit: the node's own, or shared by the nodes of a cluster.
pub struct Limiter {
    rate: Rate,
    pace: Pace,
}

enum Pace {
    Local(DefaultDirectRateLimiter),
    Shared(SharedRate),
}

/// Where a limit is shared: the cluster, and the limit's key there.
pub type SharedAs<'a> = Option<(&'a Arc<dyn ClusterPort>, String)>;

impl Limiter {
    /// A limiter for `rate`, this node's own.
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            pace: Pace::Local(DefaultDirectRateLimiter::direct(rate.quota())),
        }
    }

    /// A limiter for `rate`, shared under `shared`'s key when there is a cluster and the
    /// rate is not written `local:`.
    pub fn shared(rate: Rate, shared: SharedAs<'_>) -> Limiter {
        match shared {
            Some((port, key)) if !rate.local => Limiter {
                rate,
                pace: Pace::Shared(SharedRate::new(port.clone(), key, rate)),
            },
            _ => Limiter::new(rate),
        }
    }

    /// Take one event now, or say how long until one is allowed.
    pub fn check(&self) -> Result<(), Duration> {
        match &self.pace {
            Pace::Local(l) => l.check().map_err(wait_time),
            Pace::Shared(s) => s.check(),
        }
    }

    /// `old` if it already limits to `want` (its state kept), else a fresh limiter.
    pub fn keep_or_new(old: Option<Limiter>, want: Option<Rate>) -> Option<Limiter> {
        Limiter::keep_or_new_shared(old, want, None)
    }

    /// As [`Limiter::keep_or_new`], shared as `shared` says.
    pub fn keep_or_new_shared(
        old: Option<Limiter>,
        want: Option<Rate>,
        shared: SharedAs<'_>,
    ) -> Option<Limiter> {
        match (old, want) {
            (Some(l), Some(w)) if l.rate == w => Some(l),
            (_, Some(w)) => Some(Limiter::shared(w, shared)),
            (_, None) => None,
        }
    }
}

/// Limits a provider's sites share, per egress source.
pub struct ProviderGate {
    /// Connections open now across the provider's sites (on this node).
    connections: AtomicUsize,
    /// Most connections at once.
    connection_limit: Option<Limit>,
    /// Its key in the cluster (`provider/<provider>/<source>`).
    key: String,
    /// Messages across the provider's sites.
    messages: Option<Limiter>,
}

impl ProviderGate {
    /// May one more message go out now? Otherwise how long until it may.
    pub fn message_permit(&self) -> Result<(), Duration> {
        match &self.messages {
            Some(l) => l.check(),
            None => Ok(()),
        }
    }

    /// Whether every connection slot of this node is taken (`nodes`: the cluster's nodes
    /// when the limit is shared and Redis does not answer, so that each takes its share).
    pub fn full(&self, nodes: Option<usize>) -> bool {
        self.connection_limit.is_some_and(|limit| {
            let mine = match nodes {
                Some(n) if !limit.local => alone_share(limit.count as u64, n) as usize,
                _ => limit.count,
            };
            self.connections.load(Ordering::Relaxed) >= mine
        })
    }

    /// The cluster-wide connection limit a connection takes a lease on, if any.
    pub fn lease_limit(&self) -> Option<(String, usize)> {
        self.connection_limit
            .filter(|l| !l.local)
            .map(|l| (format!("conn/{}", self.key), l.count))
    }

    /// A connection opened.
    pub fn opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn closed(&self) {
        let _ = self
            .connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// (provider name, source name) of a provider gate.
type GateKey = (Arc<str>, Arc<str>);

/// Every provider gate, by (provider, source).
#[derive(Default)]
pub struct ProviderGates {
    gates: Mutex<HashMap<GateKey, Arc<ProviderGate>>>,
    /// The cluster the provider limits are shared in, if any.
    cluster: Option<Arc<dyn ClusterPort>>,
}

impl ProviderGates {
    /// Gates whose limits are shared in `cluster`, if any.
    pub fn new(cluster: Option<Arc<dyn ClusterPort>>) -> ProviderGates {
        ProviderGates {
            gates: Mutex::default(),
            cluster,
        }
    }

    /// The shared limits of `provider` for `source`.
    pub fn gate(&self, provider: &Provider, source: &str) -> Arc<ProviderGate> {
        let mut map = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((provider.name.clone(), source.into()))
            .or_insert_with(|| {
                let key = format!("provider/{}/{source}", provider.name);
                let shared = self.cluster.as_ref().map(|c| (c, format!("msg/{key}")));
                Arc::new(ProviderGate {
                    connections: AtomicUsize::new(0),
                    connection_limit: provider.connection_limit,
                    messages: provider
                        .max_message_rate
                        .map(|r| Limiter::shared(r, shared)),
                    key,
                })
            })
            .clone()
    }
}

/// Tenants' QoS rates (`[tenant."x"] max_message_rate`), shared by all their queues.
#[derive(Default)]
pub struct TenantLimits {
    limiters: HashMap<String, Arc<Limiter>>,
}

impl TenantLimits {
    /// Limiters for these rates, shared in `cluster` if any.
    pub fn new(
        rates: &HashMap<String, Rate>,
        cluster: Option<&Arc<dyn ClusterPort>>,
    ) -> TenantLimits {
        TenantLimits {
            limiters: rates
                .iter()
                .map(|(t, r)| {
                    let shared = cluster.map(|c| (c, format!("msg/tenant/{t}")));
                    (t.clone(), Arc::new(Limiter::shared(*r, shared)))
                })
                .collect(),
        }
    }

    /// The tenant's limiter, when it has a rate.
    pub fn of(&self, tenant: &str) -> Option<Arc<Limiter>> {
        self.limiters.get(tenant).cloned()
    }
}
