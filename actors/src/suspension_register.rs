//! SuspensionRegister: the register of suspensions, throttles and shaping overrides, each
//! with its expiry — the one owner of that state.
//!
//! A suspension is created by an automation rule (through the ClassifierActor) or by
//! MailOps (`POST /api/v1/suspensions`). The register gives it an id, stores it durably in
//! the spool's `state` keyspace, logs a `Suspension` record, sets its gauge, and puts it
//! into the [`SuspensionView`] that the actors acting on it read:
//!
//! - a tenant or campaign suspension: the tenant's actor is told to [`Recheck`], and passes
//!   it down to its campaigns and scheduled queues; a held queue sends nothing to the
//!   suspended site and pulls back what it had handed to ready queues;
//! - a source suspension (source × site): scheduled queues skip the source when picking
//!   one, and its ReadyQueueActor hands its waiting messages back to be routed over the
//!   pool's other sources.
//!
//! When a suspension expires (or is resumed) it logs `Resume`, clears the gauge, deletes the
//! state entry, takes it out of the view and tells the same actors; held mail is then due at
//! once. The same target suspended again while active is extended, not duplicated.
//! Bounce orders ([`crate::timed_bounce`]) too: `bounce/ID`, in the view, the tenants told.
//! Throttles ([`crate::throttle`]) work alike: stored as `throttle/ID`, logged as `Throttle`
//! and `ThrottleEnd`, put into the view with their limiter, and the tenant told to recheck.
//! SetConfig overrides too: stored as `override/ID`, logged as `Override`/`OverrideEnd`,
//! applied by the ready queues of their site.

use crate::message::now_ms;
use crate::messages::{
    ListBounces, ListOverrides, ListSuspensions, ListThrottles, Recheck, Restore, Resume,
    SetBounce, SetOverride, SetThrottle, SourceSuspension, Suspend,
};
use crate::ports::Ports;
use crate::ready_queue::ReadyQueues;
use crate::record::RecordKind;
use crate::suspension::{new_id, rfc3339_ms, Override, Suspension, SuspensionKind, SuspensionView};
use crate::tenant::Tenants;
use crate::throttle::Throttle;
use crate::timed_bounce::TimedBounce;
use actix::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The register.
pub struct SuspensionRegister {
    view: Arc<SuspensionView>,
    tenants: Arc<Tenants>,
    ready: Arc<ReadyQueues>,
    ports: Ports,
    suspensions: HashMap<String, Suspension>,
    throttles: HashMap<String, Throttle>,
    bounces: HashMap<String, TimedBounce>,
    overrides: HashMap<String, Override>,
    timers: HashMap<String, SpawnHandle>,
    /// How often the gauges of what is in force are published again (see
    /// [`crate::registry::gauge_refresh`]).
    refresh: std::time::Duration,
}

impl SuspensionRegister {
    /// An empty register writing `view`.
    pub fn new(
        view: Arc<SuspensionView>,
        tenants: Arc<Tenants>,
        ready: Arc<ReadyQueues>,
        ports: Ports,
        refresh: std::time::Duration,
    ) -> Self {
        SuspensionRegister {
            refresh,
            view,
            tenants,
            ready,
            ports,
            suspensions: HashMap::new(),
            throttles: HashMap::new(),
            bounces: HashMap::new(),
            overrides: HashMap::new(),
            timers: HashMap::new(),
        }
    }

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

    /// Its expiry series; for a source suspension also `switchyard_source_suspended` (a
    /// tenant's or campaign's gauge is its tenant actor's).
    fn set_gauge(&self, s: &Suspension) {
        s.publish_expiry(self.suspensions.contains_key(&s.id));
        if s.kind != SuspensionKind::Source {
            return;
        }
        let (name, labels) = s.gauge_labels();
        let active = self
            .suspensions
            .values()
            .any(|o| o.kind == s.kind && o.gauge_labels().1 == labels);
        metrics::gauge!(name, &labels).set(if active { 1.0 } else { 0.0 });
    }

    /// Put a suspension into effect (new, extended or restored).
    fn apply(&self, s: &Suspension) {
        match s.kind {
            SuspensionKind::Tenant | SuspensionKind::Campaign => {
                self.view.put_hold(Arc::new(s.clone()));
                self.recheck(s);
            }
            SuspensionKind::Source => {
                if let (Some(source), Some(site)) = (&s.source, &s.site) {
                    self.view.set_source(source, site, Some(s.expires_ms));
                    for ready in self.ready.existing(source, site) {
                        ready.do_send(SourceSuspension { suspended: true });
                    }
                }
            }
        }
    }

    /// Take an ended suspension out of effect.
    fn lift(&self, s: &Suspension) {
        match s.kind {
            SuspensionKind::Tenant | SuspensionKind::Campaign => {
                self.view.remove_hold(s);
                self.recheck(s);
            }
            SuspensionKind::Source => {
                if let (Some(source), Some(site)) = (&s.source, &s.site) {
                    self.view.set_source(source, site, None);
                    for ready in self.ready.existing(source, site) {
                        ready.do_send(SourceSuspension { suspended: false });
                    }
                }
            }
        }
    }

    /// Tell the suspension's tenant to look again (started for it if need be: it shows
    /// the suspension in its gauges).
    fn recheck(&self, s: &Suspension) {
        if let Some(tenant) = s.tenant.as_deref() {
            self.recheck_tenant(tenant);
        }
    }

    fn recheck_tenant(&self, tenant: &str) {
        self.tenants
            .get_or_start(&Arc::from(tenant))
            .do_send(Recheck);
    }

    /// Put the bounce orders in force, and have the tenants they name (every tenant, for
    /// one without) look again, so that what they hold is bounced now.
    fn publish_bounces(&self, changed: &TimedBounce) {
        self.view
            .set_bounces(self.bounces.values().cloned().map(Arc::new).collect());
        match changed.tenant.as_deref() {
            Some(tenant) => self.recheck_tenant(tenant),
            None => self
                .tenants
                .registry
                .all()
                .iter()
                .for_each(|t| t.do_send(Recheck)),
        }
    }

    /// Put a throttle into effect (new, changed or restored).
    fn apply_throttle(&self, t: &Throttle) {
        self.view.put_throttle(Arc::new(t.clone()));
        t.publish(true);
        self.recheck_tenant(&t.tenant);
    }

    /// Put the overrides in force and have the ready queues of `site` reshape.
    fn publish_overrides(&self, site: &str) {
        self.view
            .set_overrides(self.overrides.values().cloned().collect());
        self.ready.reshape(Some(site));
    }

    fn persist<T: Serialize>(&self, key: String, value: &T) {
        if let Ok(v) = serde_json::to_vec(value) {
            self.ports.spool.put_state(key, v);
        }
    }

    /// End a suspension or override by id.
    fn end(&mut self, id: &str, why: &str, ctx: &mut Context<Self>) -> bool {
        if let Some(handle) = self.timers.remove(id) {
            ctx.cancel_future(handle);
        }
        if let Some(s) = self.suspensions.remove(id) {
            self.ports.spool.delete_state(format!("suspension/{id}"));
            self.set_gauge(&s);
            self.lift(&s);
            let mut r = s.record(RecordKind::Resume);
            r.reason = Some(why.to_string());
            self.ports.events.write(r);
            tracing::info!(id, kind = ?s.kind, tenant = ?s.tenant, source = ?s.source, site = ?s.site, why, "suspension ended");
            return true;
        }
        if let Some(t) = self.throttles.remove(id) {
            self.ports.spool.delete_state(format!("throttle/{id}"));
            self.view.remove_throttle(&t);
            t.publish(false);
            // Queues waiting on its limiter go again at once.
            self.recheck_tenant(&t.tenant);
            let mut r = t.record(RecordKind::ThrottleEnd);
            r.reason = Some(why.to_string());
            self.ports.events.write(r);
            tracing::info!(id, tenant = %t.tenant, campaign = ?t.campaign, site = ?t.site, why, "throttle ended");
            return true;
        }
        if let Some(b) = self.bounces.remove(id) {
            self.ports.spool.delete_state(format!("bounce/{id}"));
            self.publish_bounces(&b);
            b.publish(false);
            tracing::info!(id, tenant = ?b.tenant, campaign = ?b.campaign, domain = ?b.domain, site = ?b.site, why, "bounce order ended");
            return true;
        }
        if let Some(o) = self.overrides.remove(id) {
            self.ports.spool.delete_state(format!("override/{id}"));
            self.publish_overrides(&o.site);
            o.publish_expiry(false);
            let mut r = o.record(RecordKind::OverrideEnd);
            r.reason = Some(why.to_string());
            self.ports.events.write(r);
            tracing::info!(id, site = %o.site, option = %o.name, why, "shaping override ended");
            return true;
        }
        false
    }
}

impl Actor for SuspensionRegister {
    type Context = Context<Self>;

    /// Gauges that are not set again vanish from /metrics (the exporter's idle timeout):
    /// what is in force is published again every `refresh`, however long it lasts.
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.refresh, |act, _| {
            act.suspensions.values().for_each(|s| act.set_gauge(s));
            act.throttles.values().for_each(|t| t.publish(true));
            act.bounces.values().for_each(|b| b.publish(true));
            act.overrides.values().for_each(|o| o.publish_expiry(true));
        });
    }
}

impl Handler<Suspend> for SuspensionRegister {
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
                self.apply(&extended);
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
        self.ports.events.write(s.record(RecordKind::Suspension));
        tracing::info!(id = %s.id, kind = ?s.kind, tenant = ?s.tenant, campaign = ?s.campaign, source = ?s.source, site = ?s.site, rule = ?s.rule, "suspended until {}", rfc3339_ms(s.expires_ms));
        self.arm(&s.id.clone(), s.expires_ms, ctx);
        MessageResult(s)
    }
}

impl Handler<Resume> for SuspensionRegister {
    type Result = bool;

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) -> bool {
        self.end(&msg.id, "resumed", ctx)
    }
}

impl Handler<ListSuspensions> for SuspensionRegister {
    type Result = MessageResult<ListSuspensions>;

    fn handle(&mut self, _: ListSuspensions, _: &mut Context<Self>) -> Self::Result {
        let mut all: Vec<Suspension> = self.suspensions.values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        MessageResult(all)
    }
}

impl Handler<SetOverride> for SuspensionRegister {
    type Result = ();

    fn handle(&mut self, SetOverride(mut o): SetOverride, ctx: &mut Context<Self>) {
        if let Some(existing) = self.overrides.values_mut().find(|x| x.same_target(&o)) {
            existing.expires_ms = existing.expires_ms.max(o.expires_ms);
            existing.value = o.value.clone();
            o = existing.clone();
        } else {
            o.id = new_id();
            if o.created_ms == 0 {
                o.created_ms = now_ms();
            }
            self.overrides.insert(o.id.clone(), o.clone());
        }
        self.persist(format!("override/{}", o.id), &o);
        self.publish_overrides(&o.site);
        o.publish_expiry(true);
        self.ports.events.write(o.record(RecordKind::Override));
        tracing::info!(id = %o.id, source = ?o.source, site = %o.site, option = %o.name, value = %o.value, rule = ?o.rule, "shaping override until {}", rfc3339_ms(o.expires_ms));
        self.arm(&o.id.clone(), o.expires_ms, ctx);
    }
}

impl Handler<ListOverrides> for SuspensionRegister {
    type Result = MessageResult<ListOverrides>;

    fn handle(&mut self, _: ListOverrides, _: &mut Context<Self>) -> Self::Result {
        let mut all: Vec<Override> = self.overrides.values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        MessageResult(all)
    }
}

impl Handler<SetThrottle> for SuspensionRegister {
    type Result = MessageResult<SetThrottle>;

    fn handle(&mut self, SetThrottle(mut t): SetThrottle, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(existing) = self.throttles.values_mut().find(|x| x.same_target(&t)) {
            // Fired again: same id, the later expiry, the new rate.
            existing.expires_ms = existing.expires_ms.max(t.expires_ms);
            existing.rate = t.rate;
            existing.reason = t.reason.clone();
            existing.rule = t.rule.clone().or(existing.rule.take());
            t = existing.clone();
        } else {
            t.id = new_id();
            if t.created_ms == 0 {
                t.created_ms = now_ms();
            }
            self.throttles.insert(t.id.clone(), t.clone());
        }
        self.apply_throttle(&t);
        self.persist(format!("throttle/{}", t.id), &t);
        self.ports.events.write(t.record(RecordKind::Throttle));
        tracing::info!(id = %t.id, tenant = %t.tenant, campaign = ?t.campaign, domain = ?t.domain, site = ?t.site, rate = %t.rate, rule = ?t.rule, "throttled until {}", rfc3339_ms(t.expires_ms));
        self.arm(&t.id.clone(), t.expires_ms, ctx);
        MessageResult(t)
    }
}

impl Handler<SetBounce> for SuspensionRegister {
    type Result = MessageResult<SetBounce>;

    fn handle(&mut self, SetBounce(mut b): SetBounce, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(existing) = self.bounces.values_mut().find(|x| x.same_target(&b)) {
            existing.expires_ms = existing.expires_ms.max(b.expires_ms);
            existing.reason = b.reason.clone();
            b = existing.clone();
        } else {
            b.id = new_id();
            if b.created_ms == 0 {
                b.created_ms = now_ms();
            }
            self.bounces.insert(b.id.clone(), b.clone());
        }
        self.publish_bounces(&b);
        b.publish(true);
        self.persist(format!("bounce/{}", b.id), &b);
        tracing::info!(id = %b.id, tenant = ?b.tenant, campaign = ?b.campaign, domain = ?b.domain, site = ?b.site, rule = ?b.rule, "bouncing until {}", b.expires());
        self.arm(&b.id.clone(), b.expires_ms, ctx);
        MessageResult(b)
    }
}

impl Handler<ListBounces> for SuspensionRegister {
    type Result = MessageResult<ListBounces>;

    fn handle(&mut self, _: ListBounces, _: &mut Context<Self>) -> Self::Result {
        let mut all: Vec<TimedBounce> = self.bounces.values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        MessageResult(all)
    }
}

impl Handler<ListThrottles> for SuspensionRegister {
    type Result = MessageResult<ListThrottles>;

    fn handle(&mut self, _: ListThrottles, _: &mut Context<Self>) -> Self::Result {
        let mut all: Vec<Throttle> = self.throttles.values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        MessageResult(all)
    }
}

impl Handler<Restore> for SuspensionRegister {
    type Result = ();

    fn handle(&mut self, msg: Restore, ctx: &mut Context<Self>) {
        for s in msg.suspensions {
            self.suspensions.insert(s.id.clone(), s.clone());
            self.apply(&s);
            self.set_gauge(&s);
            self.arm(&s.id, s.expires_ms, ctx);
        }
        for t in msg.throttles {
            self.throttles.insert(t.id.clone(), t.clone());
            self.apply_throttle(&t);
            self.arm(&t.id, t.expires_ms, ctx);
        }
        for b in msg.bounces {
            self.bounces.insert(b.id.clone(), b.clone());
            b.publish(true);
            self.arm(&b.id, b.expires_ms, ctx);
        }
        if let Some(b) = self.bounces.values().next().cloned() {
            self.publish_bounces(&b);
        }
        for o in msg.overrides {
            self.overrides.insert(o.id.clone(), o.clone());
            o.publish_expiry(true);
            self.arm(&o.id, o.expires_ms, ctx);
        }
        let sites: HashSet<String> = self.overrides.values().map(|o| o.site.clone()).collect();
        for site in sites {
            self.publish_overrides(&site);
        }
    }
}
