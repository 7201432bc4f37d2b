//! SuspensionsActor: the register of suspensions and shaping overrides, each with its
//! expiry.
//!
//! A suspension is created by an automation rule (through the ClassifierActor) or by
//! MailOps (`POST /api/v1/suspensions`). This actor gives it an id, stores it durably in the
//! spool's `state` keyspace, logs a `Suspension` record, sets its gauge, and tells the actor
//! that owns the effect:
//!
//! - tenant and campaign suspensions go to the TenantActor, which holds them and passes
//!   them down to its campaigns and scheduled queues (a held queue sends nothing to the
//!   suspended site and pulls back what it had handed to ready queues);
//! - source suspensions (source × site) go into [`crate::engine::Shared`]'s source register,
//!   which scheduled queues consult when picking a source, and to the ReadyQueueActor, which
//!   hands its waiting messages back to be routed over the pool's other sources.
//!
//! When a suspension expires (or is resumed) it logs `Resume`, clears the gauge, deletes the
//! state entry and tells the owner to release; held mail is then due at once. The same
//! target suspended again while active is extended, not duplicated. SetConfig overrides
//! work alike: kept here with their expiry, applied by the ready queues of their site.

use crate::engine::Shared;
use crate::message::now_ms;
use crate::record::{rfc3339, LogRecord};
use crate::shaping::{OptionValue, ShapingOptions};
use crate::tenant::{Hold, Release};
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

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
}

impl Suspension {
    fn same_target(&self, o: &Suspension) -> bool {
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

    fn gauge_labels(&self) -> (&'static str, Vec<(&'static str, String)>) {
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
    fn publish_expiry(&self, active: bool) {
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

    fn record(&self, kind: &'static str) -> LogRecord {
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
    /// Ends, ms since the epoch.
    pub expires_ms: u64,
}

impl Override {
    /// The override as shaping options.
    pub fn options(&self) -> ShapingOptions {
        let mut o = ShapingOptions::default();
        let _ = o.set(&self.name, &self.value);
        o
    }

    fn same_target(&self, o: &Override) -> bool {
        (&self.source, &self.site, &self.name) == (&o.source, &o.site, &o.name)
    }
}

/// RFC 3339 of a ms timestamp.
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

fn new_id() -> String {
    let r: u32 = rand::random();
    format!("{:x}{r:08x}", now_ms())
}

/// The register.
#[derive(Default)]
pub struct SuspensionsActor {
    shared: Option<Arc<Shared>>,
    suspensions: HashMap<String, Suspension>,
    overrides: HashMap<String, Override>,
    timers: HashMap<String, SpawnHandle>,
}

impl SuspensionsActor {
    fn arm(&mut self, id: &str, expires_ms: u64, ctx: &mut Context<Self>) {
        if let Some(old) = self.timers.remove(id) {
            ctx.cancel_future(old);
        }
        let delay = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        let key = id.to_string();
        let handle = ctx.run_later(delay, move |act, ctx| {
            act.timers.remove(&key);
            act.end(&key, "expired", ctx);
        });
        self.timers.insert(id.to_string(), handle);
    }

    fn set_gauge(&self, s: &Suspension) {
        s.publish_expiry(self.suspensions.contains_key(&s.id));
        let (name, labels) = s.gauge_labels();
        let active = self
            .suspensions
            .values()
            .any(|o| o.kind == s.kind && o.gauge_labels().1 == labels);
        metrics::gauge!(name, &labels).set(if active { 1.0 } else { 0.0 });
    }

    /// Put a suspension into effect (new or restored).
    fn apply(&self, s: &Suspension) {
        let Some(shared) = &self.shared else {
            return;
        };
        match s.kind {
            SuspensionKind::Tenant | SuspensionKind::Campaign => {
                if let Some(t) = &s.tenant {
                    shared.tenant(t).do_send(Hold(Arc::new(s.clone())));
                }
            }
            SuspensionKind::Source => {
                if let (Some(source), Some(site)) = (&s.source, &s.site) {
                    shared.suspend_source(source, site, Some(s.expires_ms));
                }
            }
        }
    }

    fn lift(&self, s: &Suspension) {
        let Some(shared) = &self.shared else {
            return;
        };
        match s.kind {
            SuspensionKind::Tenant | SuspensionKind::Campaign => {
                if let Some(t) = &s.tenant {
                    shared.tenant(t).do_send(Release { id: s.id.clone() });
                }
            }
            SuspensionKind::Source => {
                if let (Some(source), Some(site)) = (&s.source, &s.site) {
                    shared.suspend_source(source, site, None);
                }
            }
        }
    }

    fn persist<T: Serialize>(&self, key: String, value: &T) {
        if let (Some(shared), Ok(v)) = (&self.shared, serde_json::to_vec(value)) {
            shared.ports.spool.put_state(key, v);
        }
    }

    fn forget(&self, key: String) {
        if let Some(shared) = &self.shared {
            shared.ports.spool.delete_state(key);
        }
    }

    /// End a suspension or override by id.
    fn end(&mut self, id: &str, why: &str, ctx: &mut Context<Self>) -> bool {
        if let Some(handle) = self.timers.remove(id) {
            ctx.cancel_future(handle);
        }
        if let Some(s) = self.suspensions.remove(id) {
            self.forget(format!("suspension/{id}"));
            self.set_gauge(&s);
            self.lift(&s);
            if let Some(shared) = &self.shared {
                let mut r = s.record("Resume");
                r.reason = Some(why.to_string());
                shared.ports.events.write(r);
            }
            tracing::info!(id, kind = ?s.kind, tenant = ?s.tenant, source = ?s.source, site = ?s.site, why, "suspension ended");
            return true;
        }
        if let Some(o) = self.overrides.remove(id) {
            self.forget(format!("override/{id}"));
            if let Some(shared) = &self.shared {
                shared.set_overrides(self.overrides.values().cloned().collect(), &o.site);
            }
            tracing::info!(id, site = %o.site, option = %o.name, why, "shaping override ended");
            return true;
        }
        false
    }
}

impl Actor for SuspensionsActor {
    type Context = Context<Self>;
}

/// Connect the register to the engine (sent once at start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach(pub Arc<Shared>);

impl Handler<Attach> for SuspensionsActor {
    type Result = ();

    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) {
        self.shared = Some(msg.0);
    }
}

/// Suspend (or extend the suspension of) a target; the reply is the suspension as stored.
#[derive(Message)]
#[rtype(result = "Suspension")]
pub struct Suspend(pub Suspension);

impl Handler<Suspend> for SuspensionsActor {
    type Result = MessageResult<Suspend>;

    fn handle(&mut self, Suspend(mut s): Suspend, ctx: &mut Context<Self>) -> Self::Result {
        let existing = self
            .suspensions
            .values_mut()
            .find(|o| o.same_target(&s))
            .map(|o| {
                o.expires_ms = o.expires_ms.max(s.expires_ms);
                o.reason = s.reason.clone();
                o.clone()
            });
        let s = match existing {
            Some(extended) => {
                if extended.kind == SuspensionKind::Source {
                    self.apply(&extended);
                }
                extended
            }
            None => {
                s.id = new_id();
                if s.created_ms == 0 {
                    s.created_ms = now_ms();
                }
                self.suspensions.insert(s.id.clone(), s.clone());
                self.apply(&s);
                s
            }
        };
        self.persist(format!("suspension/{}", s.id), &s);
        self.set_gauge(&s);
        if let Some(shared) = &self.shared {
            shared.ports.events.write(s.record("Suspension"));
        }
        tracing::info!(id = %s.id, kind = ?s.kind, tenant = ?s.tenant, campaign = ?s.campaign, source = ?s.source, site = ?s.site, rule = ?s.rule, "suspended until {}", rfc3339_ms(s.expires_ms));
        self.arm(&s.id.clone(), s.expires_ms, ctx);
        MessageResult(s)
    }
}

/// Resume a suspension (or end an override) now; `true` when the id existed.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Resume {
    /// Its id.
    pub id: String,
}

impl Handler<Resume> for SuspensionsActor {
    type Result = bool;

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) -> bool {
        self.end(&msg.id, "resumed", ctx)
    }
}

/// Every active suspension, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<Suspension>")]
pub struct ListSuspensions;

impl Handler<ListSuspensions> for SuspensionsActor {
    type Result = MessageResult<ListSuspensions>;

    fn handle(&mut self, _: ListSuspensions, _: &mut Context<Self>) -> Self::Result {
        let mut all: Vec<Suspension> = self.suspensions.values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        MessageResult(all)
    }
}

/// Set (or extend) a shaping override.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetOverride(pub Override);

impl Handler<SetOverride> for SuspensionsActor {
    type Result = ();

    fn handle(&mut self, SetOverride(mut o): SetOverride, ctx: &mut Context<Self>) {
        if let Some(existing) = self.overrides.values_mut().find(|x| x.same_target(&o)) {
            existing.expires_ms = existing.expires_ms.max(o.expires_ms);
            existing.value = o.value.clone();
            o = existing.clone();
        } else {
            o.id = new_id();
            self.overrides.insert(o.id.clone(), o.clone());
        }
        self.persist(format!("override/{}", o.id), &o);
        if let Some(shared) = &self.shared {
            shared.set_overrides(self.overrides.values().cloned().collect(), &o.site);
        }
        self.arm(&o.id.clone(), o.expires_ms, ctx);
    }
}

/// Suspensions and overrides read back from the spool at start: put back into effect with
/// their remaining time (those already past end at once, with a Resume record).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore {
    /// Suspensions.
    pub suspensions: Vec<Suspension>,
    /// Overrides.
    pub overrides: Vec<Override>,
}

impl Handler<Restore> for SuspensionsActor {
    type Result = ();

    fn handle(&mut self, msg: Restore, ctx: &mut Context<Self>) {
        for s in msg.suspensions {
            self.suspensions.insert(s.id.clone(), s.clone());
            self.apply(&s);
            self.set_gauge(&s);
            self.arm(&s.id, s.expires_ms, ctx);
        }
        for o in msg.overrides {
            self.overrides.insert(o.id.clone(), o.clone());
            self.arm(&o.id, o.expires_ms, ctx);
        }
        if let Some(shared) = &self.shared {
            let all: Vec<Override> = self.overrides.values().cloned().collect();
            let sites: std::collections::HashSet<String> =
                all.iter().map(|o| o.site.clone()).collect();
            for site in sites {
                shared.set_overrides(all.clone(), &site);
            }
        }
    }
}
