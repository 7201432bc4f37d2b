//! ClassifierActor: every SMTP reply a connection gets comes here.
//!
//! It answers with the reply's bounce class (for the log record and
//! `switchyard_bounce_class_total`), and runs the automation rules of the shaping files:
//! the rules of the scopes that apply to the reply's site ([`RuleBook::scopes_for`], cached
//! per site and domain) are matched against `"CODE ENHANCED TEXT"`; a rule whose trigger is
//! met fires each of its actions as a message to the actor that owns the state:
//!
//! - `Suspend`, `SuspendTenant`, `SuspendCampaign` → the SuspensionsActor (which tells the
//!   tenant, campaign or ready queue);
//! - `SetConfig`, `SetDomainConfig` → the SuspensionsActor as a time-limited override;
//! - `Bounce` → the (source, site) ReadyQueueActor; `BounceTenant`, `BounceCampaign` → the
//!   TenantActor.
//!
//! Each firing writes an `AutomationFired` record and counts in
//! `switchyard_automation_fired_total{rule, action}`. The reply itself keeps its normal
//! outcome: the connection reports it to the message's scheduled queue as usual.

use crate::automation::{Action, RuleBook, ThresholdWindow, Trigger};
use crate::bounce::BounceClassifier;
use crate::engine::Shared;
use crate::message::{now_ms, QueueIdentity, Reply};
use crate::ready_queue::BounceReady;
use crate::record::LogRecord;
use crate::suspensions::{rfc3339_ms, Override, SetOverride, Suspend, Suspension, SuspensionKind};
use crate::tenant::AdminBounce;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Most (site, domain) scope lists kept; the cache starts afresh beyond it.
const SCOPE_CACHE_LIMIT: usize = 100_000;
/// Most threshold windows kept before stale ones are swept.
const WINDOW_SWEEP_AT: usize = 10_000;

/// (site, domain) of a reply: which rule scopes apply depends on both.
type SiteAndDomain = (Arc<str>, Arc<str>);

/// The classifier and the automation state.
pub struct ClassifierActor {
    bounces: Arc<BounceClassifier>,
    shared: Option<Arc<Shared>>,
    scopes: HashMap<SiteAndDomain, Arc<[usize]>>,
    windows: HashMap<(usize, Arc<str>, Arc<str>), ThresholdWindow>,
    /// The rules the cache and windows belong to.
    book: Arc<RuleBook>,
}

impl ClassifierActor {
    /// A classifier over compiled bounce rules.
    pub fn new(bounces: Arc<BounceClassifier>) -> Self {
        ClassifierActor {
            bounces,
            shared: None,
            scopes: HashMap::new(),
            windows: HashMap::new(),
            book: Arc::new(RuleBook::default()),
        }
    }

    fn automate(&mut self, shared: &Arc<Shared>, msg: &ClassifyReply, text: &str) {
        let rules = shared.rules();
        if !Arc::ptr_eq(&rules, &self.book) {
            // Reloaded: scopes and windows refer to the old rules.
            self.book = rules.clone();
            self.scopes.clear();
            self.windows.clear();
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
                    .scopes_for(&shared.shaping(), &msg.queue.domain, &msg.site)
                    .into();
                self.scopes.insert(key, s.clone());
                s
            }
        };
        let matched = rules.matching(&scopes, text, msg.reply.internal);
        let now = Instant::now();
        for r in matched {
            let rule = &rules.rules()[r];
            if let Trigger::Threshold { count, period } = rule.trigger {
                if self.windows.len() >= WINDOW_SWEEP_AT {
                    self.windows.retain(|(i, _, _), w| {
                        !w.is_stale(
                            now,
                            match rules.rules()[*i].trigger {
                                Trigger::Threshold { period, .. } => period,
                                Trigger::Immediate => std::time::Duration::ZERO,
                            },
                        )
                    });
                }
                let window = self
                    .windows
                    .entry((r, msg.source.clone(), msg.site.clone()))
                    .or_default();
                if !window.hit(now, count, period) {
                    continue;
                }
            }
            let expires_ms = now_ms() + rule.duration.as_millis() as u64;
            for action in &rule.actions {
                fire(shared, &rule.name, action, msg, expires_ms);
            }
        }
    }
}

/// Carry out one action of a fired rule, and log it.
fn fire(
    shared: &Arc<Shared>,
    rule: &Arc<str>,
    action: &Action,
    msg: &ClassifyReply,
    expires_ms: u64,
) {
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
    };
    let override_of = |source: Option<&str>, name: &str, value| Override {
        id: String::new(),
        source: source.map(str::to_string),
        site: msg.site.to_string(),
        name: name.to_string(),
        value,
        rule: Some(rule.to_string()),
        expires_ms,
    };
    let bounce = |campaign: Option<Option<String>>| AdminBounce {
        campaign,
        domain: None,
        site: Some(msg.site.to_string()),
        reason: format!("rule {rule}: {}", msg.reply.match_text()),
    };
    match action {
        Action::Suspend => shared
            .suspensions
            .do_send(Suspend(suspension(SuspensionKind::Source))),
        Action::SuspendTenant => shared
            .suspensions
            .do_send(Suspend(suspension(SuspensionKind::Tenant))),
        Action::SuspendCampaign => {
            let kind = if q.campaign.is_some() {
                SuspensionKind::Campaign
            } else {
                SuspensionKind::Tenant
            };
            shared.suspensions.do_send(Suspend(suspension(kind)))
        }
        Action::SetConfig { name, value } => shared.suspensions.do_send(SetOverride(override_of(
            Some(&msg.source),
            name,
            value.clone(),
        ))),
        Action::SetDomainConfig { name, value } => shared
            .suspensions
            .do_send(SetOverride(override_of(None, name, value.clone()))),
        Action::Bounce => {
            if let Some(ready) = shared.existing_ready_queue(&msg.source, &msg.site) {
                ready.do_send(BounceReady {
                    reason: format!("rule {rule}: {}", msg.reply.match_text()),
                });
            }
        }
        Action::BounceTenant => shared.tenant(&q.tenant).do_send(bounce(None)),
        Action::BounceCampaign => shared
            .tenant(&q.tenant)
            .do_send(bounce(Some(q.campaign.as_deref().map(str::to_string)))),
    }
    metrics::counter!("switchyard_automation_fired_total", "rule" => rule.to_string(), "action" => action.name())
        .increment(1);
    tracing::info!(%rule, action = %action.describe(), tenant = %q.tenant, source = %msg.source, site = %msg.site, "automation rule fired");
    shared.ports.events.write(LogRecord {
        tenant: Some(q.tenant.to_string()),
        campaign: q.campaign.as_deref().map(str::to_string),
        domain: Some(q.domain.to_string()),
        source: Some(msg.source.to_string()),
        site: Some(msg.site.to_string()),
        response: Some((&msg.reply).into()),
        rule: Some(rule.to_string()),
        action: Some(action.describe()),
        expires: Some(rfc3339_ms(expires_ms)),
        ..LogRecord::new("AutomationFired")
    });
}

impl Actor for ClassifierActor {
    type Context = Context<Self>;
}

/// Connect the classifier to the engine (sent once at start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach(pub Arc<Shared>);

impl Handler<Attach> for ClassifierActor {
    type Result = ();

    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) {
        self.shared = Some(msg.0);
    }
}

/// A reply seen by a connection, with whose mail it was about.
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct ClassifyReply {
    /// The reply.
    pub reply: Reply,
    /// Whose message it answered.
    pub queue: Arc<QueueIdentity>,
    /// From which source.
    pub source: Arc<str>,
    /// To which site.
    pub site: Arc<str>,
}

impl Handler<ClassifyReply> for ClassifierActor {
    type Result = Option<String>;

    /// The bounce class of a failure reply (`None` for a success); rules run on every reply.
    fn handle(&mut self, msg: ClassifyReply, _: &mut Context<Self>) -> Option<String> {
        let has_rules = self
            .shared
            .as_ref()
            .is_some_and(|s| !s.rules().rules().is_empty());
        if msg.reply.is_success() && !has_rules {
            // The common case with no automation: nothing to match, no text to build.
            return None;
        }
        let text = msg.reply.match_text();
        if let Some(shared) = self.shared.clone() {
            self.automate(&shared, &msg, &text);
        }
        if msg.reply.is_success() {
            return None;
        }
        Some(self.bounces.classify(&text).to_string())
    }
}
