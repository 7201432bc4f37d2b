//! Limits and gates: the rate limiters and shared counters that pace mail.
//!
//! - [`Limiter`]: one GCRA rate (`governor`), e.g. a ready queue's `max_message_rate` or a
//!   tenant's QoS `max_message_rate`;
//! - [`ProviderGate`]: what a provider's sites share per egress source
//!   (`provider_connection_limit`, `provider_max_message_rate`), kept in [`ProviderGates`].
//!
//! A check that passes reads no clock: the clock is read only to say how long to wait.

use crate::shaping::{Provider, Rate};
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

/// One rate limit.
pub struct Limiter {
    rate: Rate,
    limiter: DefaultDirectRateLimiter,
}

impl Limiter {
    /// A limiter for `rate`.
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            limiter: DefaultDirectRateLimiter::direct(rate.quota()),
        }
    }

    /// Take one event now, or say how long until one is allowed.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter.check().map_err(wait_time)
    }

    /// `old` if it already limits to `want` (its state kept), else a fresh limiter.
    pub fn keep_or_new(old: Option<Limiter>, want: Option<Rate>) -> Option<Limiter> {
        match (old, want) {
            (Some(l), Some(w)) if l.rate == w => Some(l),
            (_, Some(w)) => Some(Limiter::new(w)),
            (_, None) => None,
        }
    }
}

/// Limits a provider's sites share, per egress source.
pub struct ProviderGate {
    /// Connections open now across the provider's sites.
    connections: AtomicUsize,
    /// Most connections at once.
    connection_limit: Option<usize>,
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

    /// Whether every connection slot is taken.
    pub fn full(&self) -> bool {
        self.connection_limit
            .is_some_and(|limit| self.connections.load(Ordering::Relaxed) >= limit)
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
}

impl ProviderGates {
    /// The shared limits of `provider` for `source`.
    pub fn gate(&self, provider: &Provider, source: &str) -> Arc<ProviderGate> {
        let mut map = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((provider.name.clone(), source.into()))
            .or_insert_with(|| {
                Arc::new(ProviderGate {
                    connections: AtomicUsize::new(0),
                    connection_limit: provider.connection_limit,
                    messages: provider.max_message_rate.map(Limiter::new),
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
    /// Limiters for these rates.
    pub fn new(rates: &HashMap<String, Rate>) -> TenantLimits {
        TenantLimits {
            limiters: rates
                .iter()
                .map(|(t, r)| (t.clone(), Arc::new(Limiter::new(*r))))
                .collect(),
        }
    }

    /// The tenant's limiter, when it has a rate.
    pub fn of(&self, tenant: &str) -> Option<Arc<Limiter>> {
        self.limiters.get(tenant).cloned()
    }
}
