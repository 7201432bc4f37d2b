//! ClassifierActor: automation. Every SMTP reply a connection gets is reported here, without
//! the connection waiting for it, while automation rules are in force.
//!
//! (A reply's bounce class is not worked out here: the rules are pure and shared, so the
//! connection classifies where it reads the reply, [`crate::bounce::BounceClassifier`].)
//!
//! It runs the automation rules of the shaping files:
//! the rules of the scopes that apply to the reply's site ([`RuleBook::scopes_for`], cached
//! per site and domain) are matched against `"CODE ENHANCED TEXT"`; a rule whose trigger is
//! met fires each of its actions as a message to the actor that owns the state:
//!
//! - `Suspend`, `SuspendTenant`, `SuspendCampaign` → the SuspensionRegister (which tells the
//!   tenant, campaign or ready queue);
//! - `ThrottleTenant`, `ThrottleCampaign` → the SuspensionRegister as a throttle of the
//!   tenant's (campaign's) mail to the site;
//! - `SetConfig`, `SetDomainConfig` → the SuspensionRegister as a time-limited override
//!   (SetConfig: the source × site ready queue; SetDomainConfig: the triggering source's
//!   mail to the triggering domain, which gets a ready queue of its own meanwhile);
//! - `Bounce` → every TenantActor (their mail to the reply's domain, as KumoMTA scopes it);
//!   `BounceTenant`, `BounceCampaign` → the TenantActor (its mail to the site); each also
//!   → the SuspensionRegister as a bounce order for new arrivals until `duration` is over.
//!
//! Threshold windows count per rule × source × site. In a cluster they are the cluster's:
//! each match is counted in one window in Redis, and the rule fires on the node whose
//! match makes the count (counted here while Redis does not answer). Otherwise they are
//! the node's own: they are written to the spool's
//! `state` keyspace (at most once a second each) and read back at start, so matches counted
//! before a restart still count, and a reload keeps those of rules that kept their name.
//! The cache of which scopes apply to a site starts afresh when MX rollup re-resolves.
//!
//! Each firing writes an `AutomationFired` record and counts in
//! `switchyard_automation_fired_total{rule, action}`; every match, fired or not (a threshold
//! counts several), counts in the classifier's own `switchyard_classifier_matches_total{rule}`. The reply itself keeps its normal
//! outcome: the connection reports it to the message's scheduled queue as usual.

use crate::automation::{Action, Rule, RuleBook, RulesInForce, ThresholdWindow, Trigger};
use crate::cluster::{ClusterPort, Unreachable};
use crate::message::{now_ms, QueueIdentity};
use crate::messages::{AdminBounce, ReplySeen, SetBounce, SetOverride, SetThrottle, Suspend};
use crate::ports::{EventSink, SpoolPort};
use crate::record::{LogRecord, RecordKind};
use crate::suspension::{rfc3339_ms, Override, Suspension, SuspensionKind};
use crate::suspension_register::SuspensionRegister;
use crate::tenant::Tenants;
use crate::throttle::Throttle;
use crate::timed_bounce::TimedBounce;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Most (site, domain) scope lists kept; the cache starts afresh beyond it.
const SCOPE_CACHE_LIMIT: usize = 100_000;
/// Most threshold windows kept before stale ones are swept.
const WINDOW_SWEEP_AT: usize = 10_000;

/// (site, domain) of a reply: which rule scopes apply depends on both.
type SiteAndDomain = (Arc<str>, Arc<str>);

/// A threshold window's identity: (rule name, source, site).
type WindowKey = (Arc<str>, Arc<str>, Arc<str>);

/// Changed threshold windows are written to the spool at most this often.
const WINDOW_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A threshold window as stored in the spool's `state` keyspace (`threshold/...`), so that
/// half-counted matches outlive a restart.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredWindow {
    /// The rule's name.
    pub rule: String,
    /// Egress source.
    pub source: String,
    /// Site.
    pub site: String,
    /// Its matches.
    pub window: ThresholdWindow,
}

impl StoredWindow {
    /// Its key in the `state` keyspace.
    pub fn state_key(rule: &str, source: &str, site: &str) -> String {
        format!("threshold/{}", serde_json::json!([rule, source, site]))
    }
}

/// Threshold windows read back at start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestoreWindows(pub Vec<StoredWindow>);

/// Replies that may wait in the classifier's mailbox; a connection whose report finds it
/// full waits for room (the classifier is the bound then, not memory).
pub const MAILBOX: usize = 4096;

/// Whom a fired rule's actions go to.
pub struct Effects {
    /// The rules in force.
    pub rules: Arc<RulesInForce>,
    /// Suspensions and overrides.
    pub register: Addr<SuspensionRegister>,
    /// `BounceTenant`, `BounceCampaign`: the tenant.
    pub tenants: Arc<Tenants>,
    /// AutomationFired records.
    pub events: Arc<dyn EventSink>,
    /// Where threshold windows are kept across restarts.
    pub spool: Arc<dyn SpoolPort>,
    /// The cluster whose nodes count threshold matches together, if any.
    pub cluster: Option<Arc<dyn ClusterPort>>,
}

/// The automation state.
pub struct ClassifierActor {
    effects: Effects,
    scopes: HashMap<SiteAndDomain, Arc<[usize]>>,
    /// The site index version the scope cache was filled under.
    sites_seen: u64,
    /// Threshold windows by (rule name, source, site): kept across reloads for rules of
    /// the same name, and across restarts through the spool.
    windows: HashMap<WindowKey, ThresholdWindow>,
    /// Windows changed since they were last written.
    dirty: std::collections::HashSet<WindowKey>,
    /// The rules the cache belongs to.
    book: Arc<RuleBook>,
    /// `switchyard_classifier_matches_total` by rule index of `book`.
    matches: HashMap<usize, metrics::Counter>,
}

impl ClassifierActor {
    /// A classifier acting through `effects`.
    pub fn new(effects: Effects) -> Self {
        ClassifierActor {
            effects,
            scopes: HashMap::new(),
            sites_seen: 0,
            windows: HashMap::new(),
            dirty: std::collections::HashSet::new(),
            book: Arc::new(RuleBook::default()),
            matches: HashMap::new(),
        }
    }

    fn automate(&mut self, msg: &ReplySeen, text: &str, ctx: &Context<Self>) {
        let rules = self.effects.rules.rules();
        if !Arc::ptr_eq(&rules, &self.book) {
            // Reloaded: the scope cache and counters refer to the old rules' indexes; the
            // windows of rules that kept their name (and a threshold) stay.
            self.book = rules.clone();
            self.scopes.clear();
            self.matches.clear();
            let kept: std::collections::HashSet<&str> = rules
                .rules()
                .iter()
                .filter(|r| matches!(r.trigger, Trigger::Threshold { .. }))
                .map(|r| &*r.name)
                .collect();
            let gone: Vec<WindowKey> = self
                .windows
                .keys()
                .filter(|k| !kept.contains(&*k.0))
                .cloned()
                .collect();
            for k in gone {
                self.windows.remove(&k);
                self.dirty.insert(k);
            }
        }
        let sites = self.effects.rules.shaping().sites.version();
        if sites != self.sites_seen {
            // MX rollup re-resolved: which block applies to a site may have changed.
            self.sites_seen = sites;
            self.scopes.clear();
        }
        if rules.rules().is_empty() {
            return;
        }
        let key = (msg.site.clone(), msg.queue.domain.clone());
        let scopes = match self.scopes.get(&key) {
            Some(s) => s.clone(),
            None => {
                if self.scopes.len() >= SCOPE_CACHE_LIMIT {
                    self.scopes.clear();
                }
                let s: Arc<[usize]> = rules
                    .scopes_for(&self.effects.rules.shaping(), &msg.queue.domain, &msg.site)
                    .into();
                self.scopes.insert(key, s.clone());
                s
            }
        };
        let matched = rules.matching(&scopes, text, msg.reply.internal);
        let now = now_ms();
        for r in matched {
            let rule = &rules.rules()[r];
            self.matches
                .entry(r)
                .or_insert_with(|| {
                    metrics::counter!("switchyard_classifier_matches_total", "rule" => rule.name.to_string())
                })
                .increment(1);
            if let Trigger::Threshold { count, period } = rule.trigger {
                if let Some(cluster) = &self.effects.cluster {
                    // Counted in the cluster's window; fired (or counted here, when Redis
                    // does not answer) when the answer comes.
                    let key = format!("threshold/{}/{}/{}", rule.name, msg.source, msg.site);
                    let (me, seen, name) = (ctx.address(), msg.clone(), rule.name.clone());
                    cluster.count_match(
                        key,
                        count,
                        period,
                        Box::new(move |answer| {
                            me.do_send(ClusterCounted {
                                rule: name,
                                seen,
                                at_ms: now,
                                answer,
                            })
                        }),
                    );
                    continue;
                }
                if !self.count_here(&rule.name, msg, now, count, period) {
                    continue;
                }
            }
            fire_rule(&self.effects, rule, msg);
        }
    }
}

impl ClassifierActor {
    /// Count a match in the node's own window; true when the rule fires.
    fn count_here(
        &mut self,
        rule: &Arc<str>,
        msg: &ReplySeen,
        now: u64,
        count: u32,
        period: std::time::Duration,
    ) -> bool {
        if self.windows.len() >= WINDOW_SWEEP_AT {
            self.sweep(now);
        }
        let key = (rule.clone(), msg.source.clone(), msg.site.clone());
        let fired = self
            .windows
            .entry(key.clone())
            .or_default()
            .hit(now, count, period);
        self.dirty.insert(key);
        fired
    }

    /// Drop windows without recent matches (the rule's period has passed since the last).
    fn sweep(&mut self, now: u64) {
        let periods: HashMap<&str, std::time::Duration> = self
            .book
            .rules()
            .iter()
            .filter_map(|r| match r.trigger {
                Trigger::Threshold { period, .. } => Some((&*r.name, period)),
                Trigger::Immediate => None,
            })
            .collect();
        let stale: Vec<WindowKey> = self
            .windows
            .iter()
            .filter(|(k, w)| periods.get(&*k.0).is_none_or(|p| w.is_stale(now, *p)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.windows.remove(&k);
            self.dirty.insert(k);
        }
    }

    /// Write the windows changed since the last flush (an empty or dropped one is deleted).
    fn flush_windows(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            let state_key = StoredWindow::state_key(&key.0, &key.1, &key.2);
            match self.windows.get(&key).filter(|w| !w.is_empty()) {
                Some(w) => {
                    let stored = StoredWindow {
                        rule: key.0.to_string(),
                        source: key.1.to_string(),
                        site: key.2.to_string(),
                        window: w.clone(),
                    };
                    if let Ok(v) = serde_json::to_vec(&stored) {
                        self.effects.spool.put_state(state_key, v);
                    }
                }
                None => self.effects.spool.delete_state(state_key),
            }
        }
    }
}

/// Carry out every action of a fired rule, for the rule's duration from now.
fn fire_rule(effects: &Effects, rule: &Rule, msg: &ReplySeen) {
    let expires_ms = now_ms() + rule.duration.as_millis() as u64;
    for action in &rule.actions {
        fire(effects, &rule.name, action, msg, expires_ms);
    }
}

/// Carry out one action of a fired rule, and log it.
fn fire(effects: &Effects, rule: &Arc<str>, action: &Action, msg: &ReplySeen, expires_ms: u64) {
    let q: &QueueIdentity = &msg.queue;
    let suspension = |kind: SuspensionKind| Suspension {
        id: String::new(),
        kind,
        tenant: (kind != SuspensionKind::Source).then(|| q.tenant.to_string()),
        campaign: (kind == SuspensionKind::Campaign)
            .then(|| q.campaign.as_deref().map(str::to_string))
            .flatten(),
        domain: None,
        site: Some(msg.site.to_string()),
        source: (kind == SuspensionKind::Source).then(|| msg.source.to_string()),
        reason: msg.reply.match_text(),
        rule: Some(rule.to_string()),
        created_ms: 0,
        expires_ms,
        updated_ms: 0,
    };
    // SetConfig: the (source, site) ready queue; SetDomainConfig (KumoMTA's scope): the
    // triggering source's mail to the triggering domain only, in a ready queue of its own.
    let override_of = |domain_only: bool, name: &str, value| Override {
        id: String::new(),
        domain_only,
        source: Some(msg.source.to_string()),
        site: msg.site.to_string(),
        name: name.to_string(),
        value,
        rule: Some(rule.to_string()),
        domain: Some(q.domain.to_string()),
        created_ms: 0,
        expires_ms,
        updated_ms: 0,
    };
    let throttle = |campaign: Option<String>, rate| Throttle {
        id: String::new(),
        tenant: q.tenant.to_string(),
        campaign,
        domain: None,
        site: Some(msg.site.to_string()),
        rate,
        reason: msg.reply.match_text(),
        rule: Some(rule.to_string()),
        created_ms: 0,
        expires_ms,
        updated_ms: 0,
    };
    let reason = format!("rule {rule}: {}", msg.reply.match_text());
    // Bounce what is queued now, and order the same for what arrives until the rule's
    // duration is over.
    let bounce = |tenant: Option<&str>, campaign: Option<Option<String>>, whole_domain: bool| {
        let (domain, site) = if whole_domain {
            (Some(q.domain.to_string()), None)
        } else {
            (None, Some(msg.site.to_string()))
        };
        let now = AdminBounce {
            campaign: campaign.clone(),
            domain: domain.clone(),
            site: site.clone(),
            reason: reason.clone(),
        };
        match tenant {
            Some(t) => {
                if let Some(tenant) = effects.tenants.registry.get(&Arc::from(t)) {
                    tenant.do_send(now);
                }
            }
            None => {
                for tenant in effects.tenants.registry.all() {
                    tenant.do_send(now.clone());
                }
            }
        }
        effects.register.do_send(SetBounce(TimedBounce {
            id: String::new(),
            tenant: tenant.map(str::to_string),
            campaign: campaign.flatten(),
            domain,
            site,
            reason: reason.clone(),
            rule: Some(rule.to_string()),
            created_ms: 0,
            expires_ms,
            updated_ms: 0,
        }));
    };
    match action {
        Action::Suspend => effects
            .register
            .do_send(Suspend(suspension(SuspensionKind::Source))),
        Action::SuspendTenant => effects
            .register
            .do_send(Suspend(suspension(SuspensionKind::Tenant))),
        Action::SuspendCampaign => {
            let kind = if q.campaign.is_some() {
                SuspensionKind::Campaign
            } else {
                SuspensionKind::Tenant
            };
            effects.register.do_send(Suspend(suspension(kind)))
        }
        Action::SetConfig { name, value } => {
            effects
                .register
                .do_send(SetOverride(override_of(false, name, value.clone())))
        }
        Action::SetDomainConfig { name, value } => effects
            .register
            .do_send(SetOverride(override_of(true, name, value.clone()))),
        Action::ThrottleTenant(rate) => {
            effects.register.do_send(SetThrottle(throttle(None, *rate)))
        }
        Action::ThrottleCampaign(rate) => effects.register.do_send(SetThrottle(throttle(
            q.campaign.as_deref().map(str::to_string),
            *rate,
        ))),
        Action::Bounce => bounce(None, None, true),
        Action::BounceTenant => bounce(Some(&q.tenant), None, false),
        // Mail without a campaign: the tenant's, as SuspendCampaign does.
        Action::BounceCampaign => bounce(
            Some(&q.tenant),
            q.campaign.as_deref().map(|c| Some(c.to_string())),
            false,
        ),
    }
    metrics::counter!("switchyard_automation_fired_total", "rule" => rule.to_string(), "action" => action.name())
        .increment(1);
    tracing::info!(%rule, action = %action.describe(), tenant = %q.tenant, source = %msg.source, site = %msg.site, "automation rule fired");
    effects.events.write(LogRecord {
        tenant: Some(q.tenant.to_string()),
        campaign: q.campaign.as_deref().map(str::to_string),
        domain: Some(q.domain.to_string()),
        source: Some(msg.source.to_string()),
        site: Some(msg.site.to_string()),
        response: Some((&msg.reply).into()),
        rule: Some(rule.to_string()),
        action: Some(action.describe()),
        expires: Some(rfc3339_ms(expires_ms)),
        ..LogRecord::new(RecordKind::AutomationFired)
    });
}

impl Actor for ClassifierActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        // Threshold windows reach the spool at most once a second each, however many
        // replies count in them.
        ctx.run_interval(WINDOW_FLUSH_EVERY, |act, _| act.flush_windows());
    }
}

impl Handler<RestoreWindows> for ClassifierActor {
    type Result = ();

    fn handle(&mut self, RestoreWindows(stored): RestoreWindows, _: &mut Context<Self>) {
        for s in stored {
            let key = (
                Arc::from(s.rule.as_str()),
                Arc::from(s.source.as_str()),
                Arc::from(s.site.as_str()),
            );
            self.windows.insert(key, s.window);
        }
        // Those of rules gone since are dropped at the first reply (a reload's check).
        self.book = Arc::new(RuleBook::default());
    }
}

impl Handler<ReplySeen> for ClassifierActor {
    type Result = ();

    /// Run the automation rules in force on the reply.
    fn handle(&mut self, msg: ReplySeen, ctx: &mut Context<Self>) {
        let text = msg.reply.match_text();
        self.automate(&msg, &text, ctx);
    }
}

/// The cluster's answer to a threshold match counted there.
struct ClusterCounted {
    rule: Arc<str>,
    seen: ReplySeen,
    at_ms: u64,
    answer: Result<bool, Unreachable>,
}

impl Message for ClusterCounted {
    type Result = ();
}

impl Handler<ClusterCounted> for ClassifierActor {
    type Result = ();

    fn handle(&mut self, c: ClusterCounted, _: &mut Context<Self>) {
        let rules = self.effects.rules.rules();
        // The rule as it is now (a reload may have changed or removed it).
        let Some(rule) = rules.rules().iter().find(|r| r.name == c.rule) else {
            return;
        };
        let fired = match (c.answer, &rule.trigger) {
            (Ok(fired), _) => fired,
            (Err(Unreachable), Trigger::Threshold { count, period }) => {
                let (count, period) = (*count, *period);
                self.count_here(&c.rule, &c.seen, c.at_ms, count, period)
            }
            (Err(Unreachable), Trigger::Immediate) => true,
        };
        if fired {
            fire_rule(&self.effects, rule, &c.seen);
        }
    }
}
