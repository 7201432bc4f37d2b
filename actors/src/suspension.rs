//! Suspensions and shaping overrides: what they are, and the [`SuspensionView`] through
//! which the actors that act on them read what is in force.
//!
//! The suspension register (`suspension_register.rs`) owns every suspension and override:
//! it alone changes them, stores them durably and ends them. It writes the view; scheduled
//! queues read it to know whether they are held and which egress sources are suspended
//! towards their site, and ready queues read the overrides layered on their shaping. A
//! change bumps the view's version, so a reader re-checks only after one.

use crate::cluster::ClusterPort;
use crate::limits::Limiter;
use crate::message::now_ms;
use crate::record::{LogRecord, RecordKind};
use crate::shaping::{OptionValue, ShapingOptions};
use crate::throttle::{Throttle, ThrottleInForce};
use crate::timed_bounce::TimedBounce;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// What a suspension holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuspensionKind {
    /// A tenant's mail (to a site or domain, or all of it).
    Tenant,
    /// One campaign's mail.
    Campaign,
    /// An egress source towards a site.
    Source,
}

impl SuspensionKind {
    /// The automation action that creates this kind.
    pub fn action(&self) -> &'static str {
        match self {
            SuspensionKind::Tenant => "SuspendTenant",
            SuspensionKind::Campaign => "SuspendCampaign",
            SuspensionKind::Source => "Suspend",
        }
    }
}

/// One suspension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// Id (given by the register).
    pub id: String,
    /// What it holds.
    pub kind: SuspensionKind,
    /// Tenant (tenant and campaign kinds).
    pub tenant: Option<String>,
    /// Campaign (campaign kind).
    pub campaign: Option<String>,
    /// Only mail to this destination domain.
    pub domain: Option<String>,
    /// Only mail to this site.
    pub site: Option<String>,
    /// Egress source (source kind).
    pub source: Option<String>,
    /// Why: the reply that fired the rule, or the operator's reason.
    pub reason: String,
    /// The rule that fired, for automatic suspensions.
    pub rule: Option<String>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Ends, ms since the epoch.
    pub expires_ms: u64,
    /// Last changed, ms since the epoch: in a cluster, the newest change wins.
    #[serde(default)]
    pub updated_ms: u64,
}

impl Suspension {
    pub(crate) fn same_target(&self, o: &Suspension) -> bool {
        (
            self.kind,
            &self.tenant,
            &self.campaign,
            &self.domain,
            &self.site,
            &self.source,
        ) == (
            o.kind,
            &o.tenant,
            &o.campaign,
            &o.domain,
            &o.site,
            &o.source,
        )
    }

    /// Whether it holds the scheduled queue of (tenant, campaign, domain) whose route goes
    /// to `site`.
    pub fn holds(&self, tenant: &str, campaign: Option<&str>, domain: &str, site: &str) -> bool {
        let who = match self.kind {
            SuspensionKind::Tenant => self.tenant.as_deref() == Some(tenant),
            SuspensionKind::Campaign => {
                self.tenant.as_deref() == Some(tenant) && self.campaign.as_deref() == campaign
            }
            SuspensionKind::Source => false,
        };
        who && self.domain.as_deref().is_none_or(|d| d == domain)
            && self.site.as_deref().is_none_or(|s| s == site)
    }

    /// The `site` label of its gauge: the site, else the domain, else `*` (everything).
    fn site_label(&self) -> String {
        self.site
            .clone()
            .or_else(|| self.domain.clone())
            .unwrap_or_else(|| "*".into())
    }

    /// Its gauge: `switchyard_tenant_suspended{tenant,site}`,
    /// `switchyard_campaign_suspended{tenant,campaign,site}` (set by the tenant's actor) or
    /// `switchyard_source_suspended{source,site}` (set by the register).
    pub fn gauge_labels(&self) -> (&'static str, Vec<(&'static str, String)>) {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        match self.kind {
            SuspensionKind::Tenant => (
                "switchyard_tenant_suspended",
                vec![("tenant", s(&self.tenant)), ("site", self.site_label())],
            ),
            SuspensionKind::Campaign => (
                "switchyard_campaign_suspended",
                vec![
                    ("tenant", s(&self.tenant)),
                    ("campaign", s(&self.campaign)),
                    ("site", self.site_label()),
                ],
            ),
            SuspensionKind::Source => (
                "switchyard_source_suspended",
                vec![("source", s(&self.source)), ("site", self.site_label())],
            ),
        }
    }

    /// `switchyard_suspension_expires_timestamp_seconds`: one series per suspension, with
    /// its rule, for the dashboard's table (remaining time = value − time()).
    pub(crate) fn publish_expiry(&self, active: bool) {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        let labels = [
            ("id", self.id.clone()),
            ("kind", format!("{:?}", self.kind).to_lowercase()),
            ("tenant", s(&self.tenant)),
            ("campaign", s(&self.campaign)),
            ("source", s(&self.source)),
            ("site", self.site_label()),
            ("rule", self.rule.clone().unwrap_or_else(|| "manual".into())),
        ];
        let value = if active {
            self.expires_ms as f64 / 1000.0
        } else {
            0.0
        };
        metrics::gauge!("switchyard_suspension_expires_timestamp_seconds", &labels).set(value);
    }

    pub(crate) fn record(&self, kind: RecordKind) -> LogRecord {
        LogRecord {
            id: Some(self.id.clone()),
            tenant: self.tenant.clone(),
            campaign: self.campaign.clone(),
            domain: self.domain.clone(),
            source: self.source.clone(),
            site: self.site.clone(),
            rule: self.rule.clone(),
            action: Some(self.kind.action().to_string()),
            reason: Some(self.reason.clone()),
            expires: Some(rfc3339_ms(self.expires_ms)),
            ..LogRecord::new(kind)
        }
    }
}

/// A time-limited shaping override (SetConfig / SetDomainConfig).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    /// Id.
    pub id: String,
    /// Only this source's ready queue (SetConfig); every source's when `None`.
    pub source: Option<String>,
    /// The site.
    pub site: String,
    /// Option name.
    pub name: String,
    /// Option value.
    pub value: OptionValue,
    /// The rule that set it.
    pub rule: Option<String>,
    /// The destination domain of the reply that fired the rule.
    #[serde(default)]
    pub domain: Option<String>,
    /// SetDomainConfig, KumoMTA's scope: only `domain`'s mail from `source`, which goes to a
    /// ready queue of its own while the override lasts.
    #[serde(default)]
    pub domain_only: bool,
    /// Created, ms since the epoch (0 for overrides stored before it was kept).
    #[serde(default)]
    pub created_ms: u64,
    /// Ends, ms since the epoch.
    pub expires_ms: u64,
    /// Last changed, ms since the epoch: in a cluster, the newest change wins.
    #[serde(default)]
    pub updated_ms: u64,
}

impl Override {
    /// `switchyard_override_expires_timestamp_seconds{id,source,site,rule}`: one series per
    /// override for the dashboard's table (remaining time = value − time()); 0 once ended.
    pub(crate) fn publish_expiry(&self, active: bool) {
        let value = if active {
            self.expires_ms as f64 / 1000.0
        } else {
            0.0
        };
        metrics::gauge!(
            "switchyard_override_expires_timestamp_seconds",
            "id" => self.id.clone(),
            "source" => self.source.clone().unwrap_or_else(|| "*".into()),
            "site" => self.site.clone(),
            "rule" => self.rule.clone().unwrap_or_else(|| "manual".into())
        )
        .set(value);
    }

    /// Its `Override` / `OverrideEnd` record; `action` is `name=value`.
    pub(crate) fn record(&self, kind: RecordKind) -> LogRecord {
        LogRecord {
            id: Some(self.id.clone()),
            domain: self.domain.clone(),
            source: self.source.clone(),
            site: Some(self.site.clone()),
            rule: self.rule.clone(),
            action: Some(format!("{}={}", self.name, self.value)),
            expires: Some(rfc3339_ms(self.expires_ms)),
            ..LogRecord::new(kind)
        }
    }

    /// The override as shaping options.
    pub fn options(&self) -> ShapingOptions {
        let mut o = ShapingOptions::default();
        let _ = o.set(&self.name, &self.value);
        o
    }

    pub(crate) fn same_target(&self, o: &Override) -> bool {
        let lane = |x: &Override| x.domain_only.then(|| x.domain.clone());
        (&self.source, &self.site, &self.name, lane(self)) == (&o.source, &o.site, &o.name, lane(o))
    }
}

pub use crate::record::rfc3339_ms;

/// A new id for a suspension or override: time then randomness.
pub(crate) fn new_id() -> String {
    let r: u32 = rand::random();
    format!("{:x}{r:08x}", now_ms())
}

/// What is in force, as the register last wrote it.
#[derive(Default)]
struct InForce {
    /// Tenant and campaign suspensions, by tenant.
    holds: HashMap<Arc<str>, Vec<Arc<Suspension>>>,
    /// Suspended (source, site) → until (ms since the epoch).
    sources: HashMap<(Arc<str>, Arc<str>), u64>,
    /// Active shaping overrides.
    overrides: Vec<Override>,
    /// Throttles, by tenant.
    throttles: HashMap<Arc<str>, Vec<ThrottleInForce>>,
    /// Bounce orders.
    bounces: Vec<Arc<TimedBounce>>,
}

/// The suspensions and overrides in force, written by the suspension register only.
#[derive(Default)]
pub struct SuspensionView {
    version: AtomicU64,
    state: RwLock<InForce>,
    /// The cluster throttles are shared in, if any.
    cluster: Option<Arc<dyn ClusterPort>>,
}

impl SuspensionView {
    /// An empty view whose throttles are shared in `cluster`, if any.
    pub fn new(cluster: Option<Arc<dyn ClusterPort>>) -> SuspensionView {
        SuspensionView {
            cluster,
            ..SuspensionView::default()
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, InForce> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the state, then bump the version: a reader that sees the new version sees
    /// the change.
    fn change(&self, f: impl FnOnce(&mut InForce)) {
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            f(&mut state);
        }
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Bumped by every change: a reader that saw this number has seen everything before it.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The suspension holding the scheduled queue of (tenant, campaign, domain) when its
    /// route goes to `site`, if any.
    pub fn hold_for(
        &self,
        tenant: &str,
        campaign: Option<&str>,
        domain: &str,
        site: &str,
    ) -> Option<Arc<Suspension>> {
        let state = self.read();
        state
            .holds
            .get(tenant)?
            .iter()
            .find(|s| s.holds(tenant, campaign, domain, site))
            .cloned()
    }

    /// Every tenant and campaign suspension of `tenant` in force.
    pub fn holds_of(&self, tenant: &str) -> Vec<Arc<Suspension>> {
        self.read().holds.get(tenant).cloned().unwrap_or_default()
    }

    /// Until when `source` is suspended towards `site` (ms since the epoch), if it is.
    pub fn source_suspended(&self, source: &str, site: &str) -> Option<u64> {
        let state = self.read();
        if state.sources.is_empty() {
            return None;
        }
        state
            .sources
            .get(&(Arc::from(source), Arc::from(site)))
            .copied()
            .filter(|&t| t > now_ms())
    }

    /// The overrides in force for the ready queue of (source, site) — of `alone`'s own lane
    /// when the queue carries one domain alone — layered in order. A domain-only override
    /// (SetDomainConfig) applies to that domain's lane only.
    pub fn overrides_for(&self, source: &str, site: &str, alone: Option<&str>) -> ShapingOptions {
        let state = self.read();
        let now = now_ms();
        let mut o = ShapingOptions::default();
        for x in state.overrides.iter() {
            if x.site == site
                && x.expires_ms > now
                && x.source.as_deref().is_none_or(|s| s == source)
                && (!x.domain_only || x.domain.as_deref() == alone)
            {
                o = o.overlay(&x.options());
            }
        }
        o
    }

    /// Whether a domain-only override gives `domain`'s mail from `source` to `site` a ready
    /// queue of its own now.
    pub fn domain_alone(&self, source: &str, site: &str, domain: &str) -> bool {
        let state = self.read();
        let now = now_ms();
        state.overrides.iter().any(|x| {
            x.domain_only
                && x.expires_ms > now
                && x.site == site
                && x.domain.as_deref() == Some(domain)
                && x.source.as_deref().is_none_or(|s| s == source)
        })
    }

    /// A tenant or campaign suspension is in force (new, extended or restored).
    pub(crate) fn put_hold(&self, s: Arc<Suspension>) {
        let Some(tenant) = s.tenant.as_deref().map(Arc::<str>::from) else {
            return;
        };
        self.change(|state| {
            let list = state.holds.entry(tenant).or_default();
            list.retain(|o| o.id != s.id);
            list.push(s);
        });
    }

    /// A tenant or campaign suspension ended.
    pub(crate) fn remove_hold(&self, s: &Suspension) {
        let Some(tenant) = s.tenant.as_deref() else {
            return;
        };
        self.change(|state| {
            if let Some(list) = state.holds.get_mut(tenant) {
                list.retain(|o| o.id != s.id);
                if list.is_empty() {
                    state.holds.remove(tenant);
                }
            }
        });
    }

    /// Suspend `source` towards `site` until `until` (ms since the epoch), or lift it.
    pub(crate) fn set_source(&self, source: &str, site: &str, until: Option<u64>) {
        let key = (Arc::from(source), Arc::from(site));
        self.change(|state| {
            match until {
                Some(t) => state.sources.insert(key, t),
                None => state.sources.remove(&key),
            };
        });
    }

    /// Replace the active overrides.
    pub(crate) fn set_overrides(&self, all: Vec<Override>) {
        self.change(|state| state.overrides = all);
    }

    /// The limiters of the throttles pacing the scheduled queue of (tenant, campaign,
    /// domain) whose route goes to `site`.
    pub fn throttles_for(
        &self,
        tenant: &str,
        campaign: Option<&str>,
        domain: &str,
        site: &str,
    ) -> Vec<Arc<Limiter>> {
        let state = self.read();
        state
            .throttles
            .get(tenant)
            .map(|list| {
                list.iter()
                    .filter(|t| t.throttle.applies(tenant, campaign, domain, site))
                    .map(|t| t.limiter.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A throttle is in force (new, changed or restored); its limiter is kept while its
    /// rate stays the same.
    pub(crate) fn put_throttle(&self, t: Arc<Throttle>) {
        let tenant: Arc<str> = Arc::from(t.tenant.as_str());
        let shared = self
            .cluster
            .as_ref()
            .map(|c| (c, format!("msg/throttle/{}", t.id)));
        self.change(|state| {
            let list = state.throttles.entry(tenant).or_default();
            let old = list
                .iter()
                .position(|o| o.throttle.id == t.id)
                .map(|i| list.remove(i));
            let limiter = match old {
                Some(o) if o.throttle.rate == t.rate => o.limiter,
                _ => Arc::new(Limiter::shared(t.rate, shared)),
            };
            list.push(ThrottleInForce {
                throttle: t,
                limiter,
            });
        });
    }

    /// The bounce order covering the scheduled queue of (tenant, campaign, domain) whose
    /// route goes to `site`, if any.
    pub fn bounce_for(
        &self,
        tenant: &str,
        campaign: Option<&str>,
        domain: &str,
        site: &str,
    ) -> Option<Arc<TimedBounce>> {
        let state = self.read();
        let now = now_ms();
        state
            .bounces
            .iter()
            .find(|b| b.expires_ms > now && b.applies(tenant, campaign, domain, site))
            .cloned()
    }

    /// Replace the active bounce orders.
    pub(crate) fn set_bounces(&self, all: Vec<Arc<TimedBounce>>) {
        self.change(|state| state.bounces = all);
    }

    /// A throttle ended.
    pub(crate) fn remove_throttle(&self, t: &Throttle) {
        self.change(|state| {
            if let Some(list) = state.throttles.get_mut(t.tenant.as_str()) {
                list.retain(|o| o.throttle.id != t.id);
                if list.is_empty() {
                    state.throttles.remove(t.tenant.as_str());
                }
            }
        });
    }
}
