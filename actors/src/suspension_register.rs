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
//!
//! In a cluster ([`crate::cluster`]) every change made here — new, extended, resumed — is
//! stamped with its time and told to the other nodes; theirs arrive as [`ApplyShared`] and
//! are put into effect here the same way (and logged here too: each node's log says what
//! it enforces), unless this node knows a newer change of the same object. A resume leaves
//! a tombstone (`tombstone/ID`) until the object's own expiry; an expiry needs none (every
//! copy ends at the same moment). Two nodes that made an object for the same target
//! before hearing of each other's end up with one: the smaller id, with the later expiry.
//! [`SharedSnapshot`] is everything, for reconciliation.

use crate::cluster::{PolicyChange, PolicyKind};
use crate::message::now_ms;
use crate::messages::{
    ApplyShared, ListBounces, ListOverrides, ListSuspensions, ListThrottles, Recheck, Restore,
    Resume, SetBounce, SetOverride, SetThrottle, SharedSnapshot, SourceSuspension, Suspend,
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
    /// In a cluster: what was deleted (resumed, cancelled) and when, kept until the
    /// object's own expiry so that an older copy from another node cannot bring it back.
    tombstones: HashMap<String, PolicyChange>,
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
            tombstones: HashMap::new(),
        }
    }

    /// A change of `kind`'s `id` made on this node (`object` `None`: deleted).
    fn change(
        &self,
        kind: PolicyKind,
        id: &str,
        updated_ms: u64,
        expires_ms: u64,
        object: Option<serde_json::Value>,
    ) -> PolicyChange {
        PolicyChange {
            kind,
            id: id.to_string(),
            updated_ms,
            expires_ms,
            node: self
                .ports
                .cluster
                .as_ref()
                .map(|c| c.node().to_string())
                .unwrap_or_default(),
            object,
        }
    }

    /// `x` as it is now, as a change.
    fn change_of<T: Shared>(&self, x: &T) -> PolicyChange {
        let (updated_ms, expires_ms) = x.times();
        self.change(
            T::KIND,
            x.id(),
            updated_ms,
            expires_ms,
            serde_json::to_value(x).ok(),
        )
    }

    /// Tell the other nodes of `x` as it is now.
    fn share<T: Shared>(&self, x: &T) {
        if let Some(cluster) = &self.ports.cluster {
            cluster.share(vec![self.change_of(x)]);
        }
    }

    /// Delete `id` everywhere: tell the other nodes (after `first`, if any, in that order)
    /// and keep the tombstone.
    fn share_deletion(
        &mut self,
        first: Option<PolicyChange>,
        kind: PolicyKind,
        id: &str,
        updated_ms: u64,
        expires_ms: u64,
    ) {
        let tombstone = self.change(kind, id, updated_ms, expires_ms, None);
        if let Some(cluster) = &self.ports.cluster {
            cluster.share(first.into_iter().chain([tombstone.clone()]).collect());
        }
        self.bury(tombstone);
    }

    /// What is known of `id`, live or deleted: when it last changed.
    fn version_of(&self, id: &str) -> Option<u64> {
        self.suspensions
            .get(id)
            .map(|s| s.updated_ms)
            .or_else(|| self.throttles.get(id).map(|t| t.updated_ms))
            .or_else(|| self.bounces.get(id).map(|b| b.updated_ms))
            .or_else(|| self.overrides.get(id).map(|o| o.updated_ms))
            .or_else(|| self.tombstones.get(id).map(|t| t.updated_ms))
    }

    /// Keep a deletion (cluster only) until the object's expiry.
    fn bury(&mut self, tombstone: PolicyChange) {
        if self.ports.cluster.is_none() || tombstone.expires_ms <= now_ms() {
            return;
        }
        self.persist(tombstone_key(&tombstone.id), &tombstone);
        self.tombstones.insert(tombstone.id.clone(), tombstone);
    }

    /// Forget the tombstones whose object would have expired by now.
    fn prune_tombstones(&mut self) {
        let now = now_ms();
        let gone: Vec<String> = self
            .tombstones
            .values()
            .filter(|t| t.expires_ms <= now)
            .map(|t| t.id.clone())
            .collect();
        for id in gone {
            self.tombstones.remove(&id);
            self.ports.spool.delete_state(tombstone_key(&id));
        }
    }

    /// A suspension in force, new or changed (here or on another node): stored, applied,
    /// logged and timed.
    fn put_suspension(&mut self, s: Suspension, ctx: &mut Context<Self>) {
        self.suspensions.insert(s.id.clone(), s.clone());
        self.apply(&s);
        self.persist(s.state_key(), &s);
        self.set_gauge(&s);
        self.ports.events.write(s.record(RecordKind::Suspension));
        tracing::info!(id = %s.id, kind = ?s.kind, tenant = ?s.tenant, campaign = ?s.campaign, source = ?s.source, site = ?s.site, rule = ?s.rule, "suspended until {}", rfc3339_ms(s.expires_ms));
        self.arm(&s.id, s.expires_ms, ctx);
    }

    /// An override in force, new or changed.
    fn put_override(&mut self, o: Override, ctx: &mut Context<Self>) {
        self.overrides.insert(o.id.clone(), o.clone());
        self.persist(o.state_key(), &o);
        self.publish_overrides(&o.site);
        o.publish_expiry(true);
        self.ports.events.write(o.record(RecordKind::Override));
        tracing::info!(id = %o.id, source = ?o.source, site = %o.site, option = %o.name, value = %o.value, rule = ?o.rule, "shaping override until {}", rfc3339_ms(o.expires_ms));
        self.arm(&o.id, o.expires_ms, ctx);
    }

    /// A throttle in force, new or changed.
    fn put_throttle(&mut self, t: Throttle, ctx: &mut Context<Self>) {
        self.throttles.insert(t.id.clone(), t.clone());
        self.apply_throttle(&t);
        self.persist(t.state_key(), &t);
        self.ports.events.write(t.record(RecordKind::Throttle));
        tracing::info!(id = %t.id, tenant = %t.tenant, campaign = ?t.campaign, domain = ?t.domain, site = ?t.site, rate = %t.rate, rule = ?t.rule, "throttled until {}", rfc3339_ms(t.expires_ms));
        self.arm(&t.id, t.expires_ms, ctx);
    }

    /// A bounce order in force, new or changed.
    fn put_bounce(&mut self, b: TimedBounce, ctx: &mut Context<Self>) {
        self.bounces.insert(b.id.clone(), b.clone());
        self.publish_bounces(&b);
        b.publish(true);
        self.persist(b.state_key(), &b);
        tracing::info!(id = %b.id, tenant = ?b.tenant, campaign = ?b.campaign, domain = ?b.domain, site = ?b.site, rule = ?b.rule, "bouncing until {}", b.expires());
        self.arm(&b.id, b.expires_ms, ctx);
    }

    /// A change made on another node, unless this node knows a newer one. Every change
    /// comes here from Redis — the channel carries only what Redis kept, a reconciliation
    /// reads what it holds — and of two changes made in the same millisecond Redis keeps
    /// the one written first: on such a tie Redis's copy wins here too, so every node ends
    /// on the same one.
    fn apply_shared(&mut self, mut c: PolicyChange, ctx: &mut Context<Self>) {
        let known = self.version_of(&c.id);
        if known.is_some_and(|v| v > c.updated_ms) || c.expires_ms <= now_ms() {
            return;
        }
        let tie = known == Some(c.updated_ms);
        let Some(object) = c.object.take() else {
            if !(tie && self.tombstones.contains_key(&c.id)) {
                self.end(&c.id, &format!("resumed on node {}", c.node), ctx);
                self.bury(c);
            }
            return;
        };
        let read = match c.kind {
            PolicyKind::Suspension => self.adopt::<Suspension>(object, tie, ctx),
            PolicyKind::Throttle => self.adopt::<Throttle>(object, tie, ctx),
            PolicyKind::Bounce => self.adopt::<TimedBounce>(object, tie, ctx),
            PolicyKind::Override => self.adopt::<Override>(object, tie, ctx),
        };
        if let Err(e) = read {
            tracing::warn!(id = %c.id, node = %c.node, "a policy change from the cluster cannot be read ({e}); left out");
        }
    }

    /// Put `object`, Redis's copy of a `T`, in force — unless, on a tie, this node already
    /// has it just so (every reconciliation hears it again).
    fn adopt<T: Shared + serde::de::DeserializeOwned>(
        &mut self,
        object: serde_json::Value,
        tie: bool,
        ctx: &mut Context<Self>,
    ) -> serde_json::Result<()> {
        let x: T = serde_json::from_value(object)?;
        if tie {
            let as_known = x.known(self).map(serde_json::to_value);
            if as_known.is_some_and(|k| k.ok() == serde_json::to_value(&x).ok()) {
                return Ok(());
            }
        }
        if self.tombstones.remove(x.id()).is_some() {
            self.ports.spool.delete_state(tombstone_key(x.id()));
        }
        self.put_shared(x, ctx);
        Ok(())
    }

    /// An object from another node. When this node already has one for the same target
    /// under another id (both made one before hearing of the other's), one stays: under
    /// the smaller id, with the contents of the one changed last and the later expiry; the
    /// other is ended and deleted everywhere. Every node decides the same; the kept one is
    /// in force before the other ends, and is announced before the deletion (no moment
    /// without a hold, here or elsewhere).
    fn put_shared<T: Shared>(&mut self, x: T, ctx: &mut Context<Self>) {
        let Some(twin) = x.twin(self) else {
            return x.put(self, ctx);
        };
        let (smaller, gone) = if twin.id() < x.id() {
            (twin, x)
        } else {
            (x, twin)
        };
        let ((kept_at, kept_until), (gone_at, gone_until)) = (smaller.times(), gone.times());
        let mut keep = if gone_at > kept_at {
            let mut newer = gone.clone();
            newer.take_identity(&smaller);
            newer
        } else {
            smaller
        };
        keep.stretch(kept_until.max(gone_until), changed_at(kept_at.max(gone_at)));
        keep.clone().put(self, ctx);
        self.end(gone.id(), &format!("merged into {}", keep.id()), ctx);
        let kept = self.change_of(&keep);
        self.share_deletion(
            Some(kept),
            T::KIND,
            gone.id(),
            changed_at(gone_at),
            gone_until,
        );
        tracing::info!(kept = %keep.id(), merged = %gone.id(), kind = ?T::KIND, "two nodes made the same policy object; merged into one");
    }

    /// Everything this node knows, live or deleted, as changes to reconcile with Redis.
    fn snapshot(&self) -> Vec<PolicyChange> {
        let mut all: Vec<PolicyChange> = Vec::new();
        all.extend(self.suspensions.values().map(|x| self.change_of(x)));
        all.extend(self.throttles.values().map(|x| self.change_of(x)));
        all.extend(self.bounces.values().map(|x| self.change_of(x)));
        all.extend(self.overrides.values().map(|x| self.change_of(x)));
        all.extend(self.tombstones.values().cloned());
        all
    }

    fn arm(&mut self, id: &str, expires_ms: u64, ctx: &mut Context<Self>) {
        if let Some(old) = self.timers.remove(id) {
            ctx.cancel_future(old);
        }
        let delay = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        let key = id.to_string();
        let handle = ctx.run_later(delay, move |act, ctx| {
            act.timers.remove(&key);
            // Its copy in Redis expires at the same moment: nothing to tell.
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

    /// End a suspension, throttle, bounce order or override by id; what it was and when
    /// it would have expired.
    fn end(
        &mut self,
        id: &str,
        why: &str,
        ctx: &mut Context<Self>,
    ) -> Option<(PolicyKind, u64, u64)> {
        if let Some(handle) = self.timers.remove(id) {
            ctx.cancel_future(handle);
        }
        if let Some(s) = self.suspensions.remove(id) {
            self.ports
                .spool
                .delete_state(state_key(PolicyKind::Suspension, id));
            self.set_gauge(&s);
            self.lift(&s);
            let mut r = s.record(RecordKind::Resume);
            r.reason = Some(why.to_string());
            self.ports.events.write(r);
            tracing::info!(id, kind = ?s.kind, tenant = ?s.tenant, source = ?s.source, site = ?s.site, why, "suspension ended");
            return Some((PolicyKind::Suspension, s.updated_ms, s.expires_ms));
        }
        if let Some(t) = self.throttles.remove(id) {
            self.ports
                .spool
                .delete_state(state_key(PolicyKind::Throttle, id));
            self.view.remove_throttle(&t);
            t.publish(false);
            // Queues waiting on its limiter go again at once.
            self.recheck_tenant(&t.tenant);
            let mut r = t.record(RecordKind::ThrottleEnd);
            r.reason = Some(why.to_string());
            self.ports.events.write(r);
            tracing::info!(id, tenant = %t.tenant, campaign = ?t.campaign, site = ?t.site, why, "throttle ended");
            return Some((PolicyKind::Throttle, t.updated_ms, t.expires_ms));
        }
        if let Some(b) = self.bounces.remove(id) {
            self.ports
                .spool
                .delete_state(state_key(PolicyKind::Bounce, id));
            self.publish_bounces(&b);
            b.publish(false);
            tracing::info!(id, tenant = ?b.tenant, campaign = ?b.campaign, domain = ?b.domain, site = ?b.site, why, "bounce order ended");
            return Some((PolicyKind::Bounce, b.updated_ms, b.expires_ms));
        }
        if let Some(o) = self.overrides.remove(id) {
            self.ports
                .spool
                .delete_state(state_key(PolicyKind::Override, id));
            self.publish_overrides(&o.site);
            o.publish_expiry(false);
            let mut r = o.record(RecordKind::OverrideEnd);
            r.reason = Some(why.to_string());
            self.ports.events.write(r);
            tracing::info!(id, site = %o.site, option = %o.name, why, "shaping override ended");
            return Some((PolicyKind::Override, o.updated_ms, o.expires_ms));
        }
        None
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
            act.prune_tombstones();
        });
    }
}

impl Handler<Suspend> for SuspensionRegister {
    type Result = MessageResult<Suspend>;

    fn handle(&mut self, Suspend(mut s): Suspend, ctx: &mut Context<Self>) -> Self::Result {
        let existing = self
            .suspensions
            .values()
            .find(|o| o.same_target(&s))
            .cloned();
        let s = match existing {
            Some(mut extended) => {
                extended.expires_ms = extended.expires_ms.max(s.expires_ms);
                extended.reason = s.reason;
                extended.updated_ms = changed_at(extended.updated_ms);
                extended
            }
            None => {
                s.id = new_id();
                if s.created_ms == 0 {
                    s.created_ms = now_ms();
                }
                s.updated_ms = changed_at(0);
                s
            }
        };
        self.put_suspension(s.clone(), ctx);
        self.share(&s);
        MessageResult(s)
    }
}

impl Handler<Resume> for SuspensionRegister {
    type Result = bool;

    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) -> bool {
        let Some((kind, updated_ms, expires_ms)) = self.end(&msg.id, "resumed", ctx) else {
            return false;
        };
        self.share_deletion(None, kind, &msg.id, changed_at(updated_ms), expires_ms);
        true
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
        if let Some(existing) = self.overrides.values().find(|x| x.same_target(&o)) {
            let mut changed = existing.clone();
            changed.expires_ms = existing.expires_ms.max(o.expires_ms);
            changed.value = o.value.clone();
            changed.updated_ms = changed_at(existing.updated_ms);
            o = changed;
        } else {
            o.id = new_id();
            if o.created_ms == 0 {
                o.created_ms = now_ms();
            }
            o.updated_ms = changed_at(0);
        }
        self.put_override(o.clone(), ctx);
        self.share(&o);
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
        if let Some(existing) = self.throttles.values().find(|x| x.same_target(&t)) {
            // Fired again: same id, the later expiry, the new rate.
            let mut changed = existing.clone();
            changed.expires_ms = existing.expires_ms.max(t.expires_ms);
            changed.rate = t.rate;
            changed.reason = t.reason.clone();
            changed.rule = t.rule.clone().or(changed.rule.take());
            changed.updated_ms = changed_at(existing.updated_ms);
            t = changed;
        } else {
            t.id = new_id();
            if t.created_ms == 0 {
                t.created_ms = now_ms();
            }
            t.updated_ms = changed_at(0);
        }
        self.put_throttle(t.clone(), ctx);
        self.share(&t);
        MessageResult(t)
    }
}

impl Handler<SetBounce> for SuspensionRegister {
    type Result = MessageResult<SetBounce>;

    fn handle(&mut self, SetBounce(mut b): SetBounce, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(existing) = self.bounces.values().find(|x| x.same_target(&b)) {
            let mut changed = existing.clone();
            changed.expires_ms = existing.expires_ms.max(b.expires_ms);
            changed.reason = b.reason.clone();
            changed.updated_ms = changed_at(existing.updated_ms);
            b = changed;
        } else {
            b.id = new_id();
            if b.created_ms == 0 {
                b.created_ms = now_ms();
            }
            b.updated_ms = changed_at(0);
        }
        self.put_bounce(b.clone(), ctx);
        self.share(&b);
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
        for t in msg.tombstones {
            self.tombstones.insert(t.id.clone(), t);
        }
        let sites: HashSet<String> = self.overrides.values().map(|o| o.site.clone()).collect();
        for site in sites {
            self.publish_overrides(&site);
        }
    }
}

/// When a change made now is stamped: now, and always after the change before it.
fn changed_at(before_ms: u64) -> u64 {
    now_ms().max(before_ms + 1)
}

impl Handler<ApplyShared> for SuspensionRegister {
    type Result = ();

    fn handle(&mut self, ApplyShared(changes): ApplyShared, ctx: &mut Context<Self>) {
        for c in changes {
            self.apply_shared(c, ctx);
        }
    }
}

impl Handler<SharedSnapshot> for SuspensionRegister {
    type Result = MessageResult<SharedSnapshot>;

    fn handle(&mut self, _: SharedSnapshot, _: &mut Context<Self>) -> Self::Result {
        self.prune_tombstones();
        MessageResult(self.snapshot())
    }
}

/// What the register shares with the other nodes, alike for its four kinds.
trait Shared: Clone + Serialize {
    const KIND: PolicyKind;
    fn id(&self) -> &str;
    /// (last changed, ends), ms since the epoch.
    fn times(&self) -> (u64, u64);
    fn stretch(&mut self, expires_ms: u64, updated_ms: u64);
    /// Become `other` by id and creation, keeping its own contents.
    fn take_identity(&mut self, other: &Self);
    /// One the register has for the same target under another id.
    fn twin(&self, register: &SuspensionRegister) -> Option<Self>;
    /// The register's own copy of it (same id), if it is in force.
    fn known<'r>(&self, register: &'r SuspensionRegister) -> Option<&'r Self>;
    /// Put it in force.
    fn put(self, register: &mut SuspensionRegister, ctx: &mut Context<SuspensionRegister>);
    /// Its entry in the spool's `state` keyspace.
    fn state_key(&self) -> String {
        state_key(Self::KIND, self.id())
    }
}

/// The `state` entry of `kind`'s `id`: `suspension/ID`, `throttle/ID`, ...
fn state_key(kind: PolicyKind, id: &str) -> String {
    format!("{}/{id}", kind.state_prefix())
}

/// The prefix of the `state` entries of tombstones (cluster only).
pub const TOMBSTONE_PREFIX: &str = "tombstone";

/// The `state` entry of the tombstone of `id`.
fn tombstone_key(id: &str) -> String {
    format!("{TOMBSTONE_PREFIX}/{id}")
}

/// [`Shared`] for a kind: its fields are named alike; `$map` is where the register keeps
/// it, `$put` how it puts one in force.
macro_rules! impl_shared {
    ($kind:ty, $tag:expr, $map:ident, $put:ident) => {
        impl Shared for $kind {
            const KIND: PolicyKind = $tag;
            fn id(&self) -> &str {
                &self.id
            }
            fn times(&self) -> (u64, u64) {
                (self.updated_ms, self.expires_ms)
            }
            fn stretch(&mut self, expires_ms: u64, updated_ms: u64) {
                self.expires_ms = expires_ms;
                self.updated_ms = updated_ms;
            }
            fn take_identity(&mut self, other: &Self) {
                self.id = other.id.clone();
                self.created_ms = other.created_ms;
            }
            fn twin(&self, r: &SuspensionRegister) -> Option<Self> {
                r.$map
                    .values()
                    .find(|o| o.id != self.id && o.same_target(self))
                    .cloned()
            }
            fn known<'r>(&self, r: &'r SuspensionRegister) -> Option<&'r Self> {
                r.$map.get(&self.id)
            }
            fn put(self, r: &mut SuspensionRegister, ctx: &mut Context<SuspensionRegister>) {
                r.$put(self, ctx)
            }
        }
    };
}

impl_shared!(
    Suspension,
    PolicyKind::Suspension,
    suspensions,
    put_suspension
);
impl_shared!(Throttle, PolicyKind::Throttle, throttles, put_throttle);
impl_shared!(TimedBounce, PolicyKind::Bounce, bounces, put_bounce);
impl_shared!(Override, PolicyKind::Override, overrides, put_override);
