//! Queue policy per scope: how a scheduled queue retries, when its mail expires, which egress
//! pool it sends through and how fast it releases messages — `[queue]` for every queue,
//! then `[queue.domain."D"]`, `[queue.tenant."T"]` and `[queue.campaign."C:T"]`, later
//! winning key by key:
//!
//! `[queue]` < domain < tenant < campaign.
//!
//! `egress_pool` may be set for a domain or a tenant (else the tenant's `[tenant."T"] pool`,
//! else `default`); `max_message_rate` here paces one scheduled queue (KumoMTA's meaning),
//! while `[tenant."T"] max_message_rate` paces all of a tenant's queues together. A reload
//! puts new policies in force; each scheduled queue takes its own at its next decision.

use crate::message::QueueIdentity;
use crate::shaping::Rate;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Retry settings: the retry schedule and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub retry_interval: Duration,
    /// Cap on the delay.
    pub max_retry_interval: Duration,
    /// A message whose next retry would fall after this age expires instead.
    pub max_age: Duration,
}

impl RetryPolicy {
    /// Delay after the `attempts`-th failed attempt: `retry_interval × 2^(attempts-1)`,
    /// capped at `max_retry_interval`, then ±10 % jitter (`jitter` in [-1, 1]) so messages
    /// deferred together do not all come back in the same instant.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let base = self.retry_interval.as_secs_f64()
            * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.max_retry_interval.as_secs_f64());
        Duration::from_secs_f64((capped * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0))).max(0.0))
    }

    /// Next due time after a failure at `now_ms`, or `None` when that would be past `max_age`
    /// (counting from `created_ms`, less `held_ms` spent held by a suspension).
    pub fn next_due(
        &self,
        attempts: u32,
        now_ms: u64,
        created_ms: u64,
        held_ms: u64,
        jitter: f64,
    ) -> Option<u64> {
        let due = now_ms + self.delay(attempts, jitter).as_millis() as u64;
        let age_then = due.saturating_sub(created_ms).saturating_sub(held_ms);
        (age_then <= self.max_age.as_millis() as u64).then_some(due)
    }
}

/// The settings one scope gives; `None` leaves the one below in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyLayer {
    /// First retry delay.
    pub retry_interval: Option<Duration>,
    /// Cap on the retry delay.
    pub max_retry_interval: Option<Duration>,
    /// Age at which mail expires.
    pub max_age: Option<Duration>,
    /// Egress pool (domain and tenant scopes).
    pub egress_pool: Option<String>,
    /// Pace of one scheduled queue.
    pub max_message_rate: Option<Rate>,
}

impl PolicyLayer {
    fn apply(&self, p: &mut QueuePolicy) {
        if let Some(v) = self.retry_interval {
            p.retry.retry_interval = v;
        }
        if let Some(v) = self.max_retry_interval {
            p.retry.max_retry_interval = v;
        }
        if let Some(v) = self.max_age {
            p.retry.max_age = v;
        }
        if let Some(v) = &self.egress_pool {
            p.egress_pool = Some(v.clone());
        }
        if let Some(v) = self.max_message_rate {
            p.max_message_rate = Some(v);
        }
    }
}

/// Every scope's settings, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicies {
    /// `[queue]`.
    pub base: RetryPolicy,
    /// `[queue.domain."D"]`, by lowercase domain.
    pub domains: HashMap<String, PolicyLayer>,
    /// `[queue.tenant."T"]`.
    pub tenants: HashMap<String, PolicyLayer>,
    /// `[queue.campaign."C:T"]`, by (tenant, campaign).
    pub campaigns: HashMap<(String, String), PolicyLayer>,
}

impl QueuePolicies {
    /// Only `[queue]`.
    pub fn uniform(base: RetryPolicy) -> QueuePolicies {
        QueuePolicies {
            base,
            domains: HashMap::new(),
            tenants: HashMap::new(),
            campaigns: HashMap::new(),
        }
    }

    /// The scopes that apply to the scheduled queue `id`, in the order they are layered
    /// (later wins), each with its section name: `[queue.domain."D"]`,
    /// `[queue.tenant."T"]`, `[queue.campaign."C:T"]`.
    pub fn layers_for(&self, id: &QueueIdentity) -> Vec<(String, &PolicyLayer)> {
        let mut out = Vec::new();
        if let Some(l) = self.domains.get(&*id.domain) {
            out.push((format!("[queue.domain.\"{}\"]", id.domain), l));
        }
        if let Some(l) = self.tenants.get(&*id.tenant) {
            out.push((format!("[queue.tenant.\"{}\"]", id.tenant), l));
        }
        if let Some(c) = &id.campaign {
            if let Some(l) = self.campaigns.get(&(id.tenant.to_string(), c.to_string())) {
                out.push((format!("[queue.campaign.\"{c}:{}\"]", id.tenant), l));
            }
        }
        out
    }

    /// The policy of the scheduled queue `id`.
    pub fn policy_for(&self, id: &QueueIdentity) -> QueuePolicy {
        let mut p = QueuePolicy {
            retry: self.base,
            egress_pool: None,
            max_message_rate: None,
        };
        for (_, l) in self.layers_for(id) {
            l.apply(&mut p);
        }
        p
    }
}

/// What one scheduled queue follows.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Retry schedule and expiry.
    pub retry: RetryPolicy,
    /// Egress pool by name, when a scope sets one.
    pub egress_pool: Option<String>,
    /// The queue's own pace.
    pub max_message_rate: Option<Rate>,
}

/// The policies in force; a reload replaces them and bumps the version, and each queue
/// looks its policy up again when it sees a new version.
pub struct PoliciesInForce {
    current: RwLock<Arc<QueuePolicies>>,
    version: AtomicU64,
}

impl PoliciesInForce {
    /// These in force.
    pub fn new(p: QueuePolicies) -> PoliciesInForce {
        PoliciesInForce {
            current: RwLock::new(Arc::new(p)),
            version: AtomicU64::new(1),
        }
    }

    /// Bumped by every replacement.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The policies in force.
    pub fn get(&self) -> Arc<QueuePolicies> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Put new policies in force.
    pub fn replace(&self, p: QueuePolicies) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
        self.version.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_scopes_win_key_by_key() {
        let hour = Duration::from_secs(3600);
        let base = RetryPolicy {
            retry_interval: Duration::from_secs(60),
            max_retry_interval: hour,
            max_age: 72 * hour,
        };
        let mut p = QueuePolicies::uniform(base);
        p.domains.insert(
            "gmail.com".into(),
            PolicyLayer {
                max_age: Some(24 * hour),
                egress_pool: Some("gmail-ips".into()),
                ..Default::default()
            },
        );
        p.tenants.insert(
            "acme".into(),
            PolicyLayer {
                max_age: Some(hour),
                ..Default::default()
            },
        );
        p.campaigns.insert(
            ("acme".into(), "spring".into()),
            PolicyLayer {
                retry_interval: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        );
        let id = |tenant: &str, campaign: Option<&str>, domain: &str| QueueIdentity {
            tenant: tenant.into(),
            campaign: campaign.map(Into::into),
            domain: domain.into(),
        };
        let q = p.policy_for(&id("acme", Some("spring"), "gmail.com"));
        assert_eq!(q.retry.max_age, hour, "tenant over domain");
        assert_eq!(q.retry.retry_interval, Duration::from_secs(5), "campaign");
        assert_eq!(
            q.egress_pool.as_deref(),
            Some("gmail-ips"),
            "domain's pool kept"
        );
        let other = p.policy_for(&id("beta", None, "gmail.com"));
        assert_eq!(other.retry.max_age, 24 * hour);
        assert_eq!(p.policy_for(&id("beta", None, "yahoo.com")).retry, base);
    }

    const P: RetryPolicy = RetryPolicy {
        retry_interval: Duration::from_secs(60),
        max_retry_interval: Duration::from_secs(600),
        max_age: Duration::from_secs(3600),
    };

    #[test]
    fn doubles_and_caps() {
        let secs: Vec<u64> = (1..=6).map(|a| P.delay(a, 0.0).as_secs()).collect();
        assert_eq!(secs, vec![60, 120, 240, 480, 600, 600]);
        assert_eq!(P.delay(1, 1.0).as_secs(), 66);
        assert_eq!(P.delay(1, -1.0).as_secs(), 54);
    }

    #[test]
    fn expires_past_max_age_not_counting_held_time() {
        assert_eq!(P.next_due(1, 1000, 0, 0, 0.0), Some(61_000));
        assert_eq!(P.next_due(5, 3_100_000, 0, 0, 0.0), None);
        assert_eq!(P.next_due(5, 3_100_000, 0, 1_000_000, 0.0), Some(3_700_000));
    }
}
