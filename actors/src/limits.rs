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

use crate::cluster::{alone_share, ClusterPort, Unreachable};
use crate::shaping::{Limit, Provider, Rate};
use governor::clock::Clock;
use governor::DefaultDirectRateLimiter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The key of its connection leases in the cluster (`conn/provider/<provider>/<source>`).
    lease_key: String,
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
        self.connection_limit
            .is_some_and(|limit| self.connections.load(Ordering::Relaxed) >= limit.mine(nodes))
    }

    /// The cluster-wide connection limit a connection takes a lease on, if any.
    pub fn lease_limit(&self) -> Option<(String, usize)> {
        self.connection_limit
            .filter(|l| !l.local)
            .map(|l| (self.lease_key.clone(), l.count))
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
                    lease_key: format!("conn/{key}"),
                })
            })
            .clone()
    }
}

/// How long a check waits while an answer from Redis is on its way.
const ASKING_WAIT: Duration = Duration::from_millis(2);
/// Events granted but not used within this are given up (never used later in a burst).
const GRANT_LIFETIME: Duration = Duration::from_secs(1);
/// Most events asked for at once.
const MOST_AT_ONCE: u64 = 16;
/// After Redis did not answer, the limiter goes on alone this long before asking again.
const ALONE_FOR: Duration = Duration::from_secs(1);

/// A rate shared by the nodes of a cluster: events are taken from its GCRA in Redis, as
/// many at once as the last ask used up (from one, doubling up to the burst or 16; events
/// not used within a second are given up, and the next ask is for one). While Redis does
/// not answer, the node goes on alone at its share of the rate.
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
    /// How many events the next ask is for.
    want: u32,
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

    /// Most events asked for at once.
    fn most_at_once(&self) -> u32 {
        self.rate.burst().min(MOST_AT_ONCE) as u32
    }

    /// Take one event now, or say how long to wait before asking again.
    pub fn check(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.granted > 0 && s.granted_until.is_some_and(|t| t > now) {
            s.granted -= 1;
            if s.granted == 0 {
                // All used: ask for more next time.
                s.want = (s.want.max(1) * 2).min(self.most_at_once());
            }
            return Ok(());
        }
        if s.granted > 0 {
            // Some went unused: ask for one next time.
            s.want = 1;
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
        let want = s.want.clamp(1, self.most_at_once());
        drop(s);
        let (state, port, rate) = (self.state.clone(), self.port.clone(), self.rate);
        self.port.take(
            self.key.clone(),
            rate.interval(),
            rate.burst(),
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
                            let nodes = port.nodes();
                            let share = Rate {
                                count: alone_share(rate.count, nodes),
                                burst: rate.burst.map(|b| alone_share(b, nodes)),
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
