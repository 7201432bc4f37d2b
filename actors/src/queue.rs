//! QueueActor: the scheduled queue of one `campaign:tenant@domain`.
//!
//! It owns the retry schedule of its messages. When a message is due, it resolves the
//! domain's route (site and MX hosts), picks an egress source from the tenant's pool by
//! weight, and offers the message to that (source, site)'s ReadyQueueActor. A ready queue
//! that is full takes only part of an offer; the rest stays here and is offered again
//! shortly. Each outcome comes back here and is settled: delivered and bounced messages leave
//! the spool, deferred ones get their next due time (exponential backoff with jitter), and
//! one whose next retry would pass `max_age` expires. Every settlement writes one log record.
//!
//! Suspensions reach it from its CampaignActor ([`Hold`], [`Release`]). While one holds the
//! queue (its tenant or campaign, its domain or the site its route goes to), nothing is
//! offered, messages already handed to ready queues are pulled back, and attempts are not
//! counted; the held time is added to each message's `held_ms`, which `max_age` does not
//! count. On release every held message is due at once. A source suspended towards the
//! site is skipped when picking a source; with none left, the queue waits. A tenant with a
//! QoS rate paces how fast its queues release messages.
//!
//! An empty queue with nothing in flight tells its CampaignActor it is idle; the campaign
//! reaps it when no new mail is on its way, so millions of combinations cost nothing while
//! empty.

use crate::campaign::{CampaignActor, QueueIdle};
use crate::engine::Shared;
use crate::message::{
    message_id_hex, now_ms, MessageKey, Peer, QueueIdentity, QueuedMessage, Reply,
};
use crate::pool::{Pool, PoolCursor};
use crate::ports::{EgressSource, Route, RouteError};
use crate::ready_queue::{Offer, ReadyItem, ReadyQueueActor, Withdraw};
use crate::record::LogRecord;
use crate::suspensions::Suspension;
use crate::tenant::{AdminBounce, Hold, Release};
use actix::prelude::*;
use governor::clock::Clock;
use governor::DefaultDirectRateLimiter;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most messages moved to ready queues in one turn before yielding to other work.
const PUMP_BATCH: usize = 512;
/// A queue refused by a full ready queue waits for that queue's `ReadyRoom` call; if none
/// comes (the ready queue went away), it offers again after this long anyway.
const READY_FULL_FALLBACK: Duration = Duration::from_secs(30);
/// With every source of the pool suspended towards the site, look again after at most this.
const ALL_SOURCES_SUSPENDED_RECHECK: Duration = Duration::from_secs(5);

/// The scheduled queue of one tenant × campaign × domain.
pub struct QueueActor {
    id: Arc<QueueIdentity>,
    name: String,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    cursor: PoolCursor,
    parent: Addr<CampaignActor>,
    scheduled: BTreeMap<(u64, MessageKey), QueuedMessage>,
    in_flight: HashMap<MessageKey, QueuedMessage>,
    route: Option<Route>,
    /// The route was just looked up: use it for this pump even if its TTL has run out.
    fresh_route: bool,
    resolving: bool,
    wake: Option<(u64, SpawnHandle)>,
    batches_received: u64,
    idle_since: Option<Instant>,
    idle_reported: bool,
    /// A ready queue refused messages: wait for room before offering again.
    blocked_until: Option<Instant>,
    /// ReadyRoom calls received; an offer refused after a call it crossed is not blocked.
    room_calls: u64,
    queued_gauge: metrics::Gauge,
    /// Suspensions concerning this queue's tenant or campaign.
    holds: Vec<Arc<Suspension>>,
    /// Since when (ms) a suspension holds the queue.
    held_since: Option<u64>,
    /// Ready queues this queue has handed messages to, by source.
    offered_to: HashMap<Arc<str>, Addr<ReadyQueueActor>>,
    /// The tenant's QoS rate, if it has one.
    tenant_limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

impl QueueActor {
    /// A new, empty scheduled queue.
    pub fn new(
        id: Arc<QueueIdentity>,
        shared: Arc<Shared>,
        pool: Arc<Pool>,
        parent: Addr<CampaignActor>,
        holds: Vec<Arc<Suspension>>,
    ) -> Self {
        let queued_gauge =
            metrics::gauge!("switchyard_scheduled_messages", &gauge_labels(&id, &shared));
        let tenant_limiter = shared.tenant_limiter(&id.tenant);
        QueueActor {
            name: id.name(),
            id,
            shared,
            pool,
            cursor: PoolCursor::default(),
            parent,
            scheduled: BTreeMap::new(),
            in_flight: HashMap::new(),
            route: None,
            fresh_route: false,
            resolving: false,
            wake: None,
            batches_received: 0,
            idle_since: Some(Instant::now()),
            idle_reported: false,
            blocked_until: None,
            room_calls: 0,
            queued_gauge,
            holds,
            held_since: None,
            offered_to: HashMap::new(),
            tenant_limiter,
        }
    }

    /// The suspension holding this queue when its route goes to `site`, if any.
    fn hold_for(&self, site: &str) -> Option<&Arc<Suspension>> {
        self.holds.iter().find(|s| {
            s.holds(
                &self.id.tenant,
                self.id.campaign.as_deref(),
                &self.id.domain,
                site,
            )
        })
    }

    /// A suspension now holds the queue: stop, and pull back what ready queues still have.
    fn enter_hold(&mut self, ctx: &mut Context<Self>) {
        if self.held_since.is_some() {
            return;
        }
        self.held_since = Some(now_ms());
        if let Some((_, handle)) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        self.withdraw_all(None, ctx);
    }

    /// Ask every ready queue for this queue's messages back; they return to the schedule
    /// (or are bounced, with `bounce` as the reason), attempts unchanged.
    fn withdraw_all(&mut self, bounce: Option<String>, ctx: &mut Context<Self>) {
        let readies: Vec<Addr<ReadyQueueActor>> = self.offered_to.drain().map(|(_, r)| r).collect();
        for ready in readies {
            let bounce = bounce.clone();
            ctx.spawn(
                ready
                    .send(Withdraw {
                        queue: self.id.clone(),
                    })
                    .into_actor(self)
                    .map(move |keys, act, ctx| {
                        act.take_back(keys.unwrap_or_default(), bounce.as_deref(), ctx)
                    }),
            );
        }
    }

    /// Messages handed back by a ready queue: rescheduled due now, or bounced.
    fn take_back(&mut self, keys: Vec<MessageKey>, bounce: Option<&str>, ctx: &mut Context<Self>) {
        let now = now_ms();
        for key in keys {
            let Some(mut m) = self.in_flight.remove(&key) else {
                continue;
            };
            match bounce {
                Some(reason) => self.admin_bounce(m, reason),
                None => {
                    m.due_ms = m.due_ms.min(now);
                    self.schedule(m);
                }
            }
        }
        self.pump(ctx);
    }

    /// The hold is gone: count the held time and make every held message due now.
    fn leave_hold(&mut self, ctx: &mut Context<Self>) {
        let Some(since) = self.held_since.take() else {
            return;
        };
        let now = now_ms();
        let held: Vec<QueuedMessage> = std::mem::take(&mut self.scheduled).into_values().collect();
        for mut m in held {
            m.held_ms += now.saturating_sub(since.max(m.created_ms));
            m.due_ms = now;
            self.shared
                .ports
                .spool
                .reschedule(m.key, m.attempts, m.due_ms, m.held_ms);
            self.schedule(m);
        }
        self.pump(ctx);
    }

    /// Bounce one message on an operator's or a rule's order.
    fn admin_bounce(&mut self, m: QueuedMessage, reason: &str) {
        let reply = Reply::internal(550, "5.0.0", format!("bounced by administrator: {reason}"));
        self.settle(
            m,
            &reply,
            Settlement {
                admin: true,
                ..Default::default()
            },
        );
    }

    fn publish(&mut self) {
        let queued = self.scheduled.len() + self.in_flight.len();
        self.queued_gauge.set(queued as f64);
        if queued == 0 {
            if self.idle_since.is_none() {
                self.idle_since = Some(Instant::now());
            }
        } else {
            self.idle_since = None;
            self.idle_reported = false;
        }
    }

    fn schedule(&mut self, m: QueuedMessage) {
        self.scheduled.insert((m.due_ms, m.key), m);
    }

    /// Arrange a pump at `due_ms` unless one is already set for then or earlier.
    fn wake_at(&mut self, due_ms: u64, ctx: &mut Context<Self>) {
        if let Some((at, handle)) = self.wake {
            if at <= due_ms {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = Duration::from_millis(due_ms.saturating_sub(now_ms()));
        let handle = ctx.run_later(delay, |act, ctx| {
            act.wake = None;
            act.pump(ctx);
        });
        self.wake = Some((due_ms, handle));
    }

    /// Move due messages towards their ready queues.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = now_ms();
        let Some(&(first_due, _)) = self.scheduled.keys().next() else {
            self.publish();
            return;
        };
        if first_due > now {
            self.wake_at(first_due, ctx);
            self.publish();
            return;
        }
        if let Some(until) = self.blocked_until {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                // Whatever woke us, the fallback must stay armed.
                self.wake_at(now + left.as_millis() as u64 + 1, ctx);
                return self.publish();
            }
            self.blocked_until = None;
        }
        let route = match &self.route {
            Some(r) if self.fresh_route || r.expires > Instant::now() => r.clone(),
            _ => return self.resolve(ctx),
        };
        self.fresh_route = false;
        if self.hold_for(&route.site).is_some() {
            // Released by a Release message, not by a timer.
            self.enter_hold(ctx);
            return self.publish();
        }
        let shared = self.shared.clone();
        let mut by_source: HashMap<Arc<str>, (Arc<EgressSource>, Vec<QueuedMessage>)> =
            HashMap::new();
        let mut wait: Option<Duration> = None;
        for _ in 0..PUMP_BATCH {
            let Some(entry) = self.scheduled.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            if let Some(limiter) = &self.tenant_limiter {
                if let Err(not_until) = limiter.check() {
                    let clock = governor::clock::DefaultClock::default();
                    wait = Some(not_until.wait_time_from(clock.now()));
                    break;
                }
            }
            let picked = self.cursor.pick(&self.pool, |s| {
                shared.source_suspended(&s.name, &route.site).is_none()
            });
            match picked {
                Some(source) => {
                    let m = entry.remove();
                    by_source
                        .entry(source.name.clone())
                        .or_insert_with(|| (source.clone(), Vec::new()))
                        .1
                        .push(m)
                }
                None => {
                    // Every source is suspended towards this site (or the pool is empty):
                    // wait for the first suspension to end.
                    let until = self
                        .pool
                        .members
                        .iter()
                        .filter_map(|(s, _)| shared.source_suspended(&s.name, &route.site))
                        .min()
                        .map(|t| Duration::from_millis(t.saturating_sub(now) + 1))
                        .unwrap_or(ALL_SOURCES_SUSPENDED_RECHECK);
                    wait = Some(until.min(ALL_SOURCES_SUSPENDED_RECHECK));
                    break;
                }
            }
        }
        for (_, (source, messages)) in by_source {
            self.offer(source, &route, messages, ctx);
        }
        match (self.scheduled.keys().next(), wait) {
            (Some(_), Some(wait)) => self.wake_at(now + wait.as_millis() as u64 + 1, ctx),
            (Some(&(due, _)), None) if due <= now => ctx.notify(Pump),
            (Some(&(due, _)), None) => self.wake_at(due, ctx),
            (None, _) => {}
        }
        self.publish();
    }

    fn offer(
        &mut self,
        source: Arc<EgressSource>,
        route: &Route,
        messages: Vec<QueuedMessage>,
        ctx: &mut Context<Self>,
    ) {
        let ready = self.shared.ready_queue(&source, route, &self.id.domain);
        self.offered_to.insert(source.name.clone(), ready.clone());
        let me = ctx.address().recipient();
        let keys: Vec<MessageKey> = messages.iter().map(|m| m.key).collect();
        let items = messages
            .iter()
            .map(|m| ReadyItem {
                message: m.clone(),
                queue: self.id.clone(),
                outcome_to: me.clone(),
                back_to: ctx.address().recipient(),
            })
            .collect();
        for m in messages {
            self.in_flight.insert(m.key, m);
        }
        let offer = Offer {
            items,
            hosts: route.hosts.clone(),
            queue: self.name.as_str().into(),
            room_to: ctx.address().recipient(),
        };
        let calls_before = self.room_calls;
        let (source_name, site) = (source.name.clone(), route.site.clone());
        ctx.spawn(
            ready
                .send(offer)
                .into_actor(self)
                .map(move |taken, act, ctx| {
                    let taken = taken.unwrap_or(0);
                    if taken < keys.len() {
                        // Back to the schedule, due now; offered again when the ready queue
                        // says it has room (or after the fallback), not polled.
                        for key in &keys[taken..] {
                            if let Some(m) = act.in_flight.remove(key) {
                                act.schedule(m);
                            }
                        }
                        let suspended = act.shared.source_suspended(&source_name, &site).is_some();
                        if suspended || act.room_calls != calls_before {
                            // Refused by a suspended source (pick another), or room was
                            // made meanwhile: go again now.
                            ctx.notify(Pump);
                        } else {
                            act.blocked_until = Some(Instant::now() + READY_FULL_FALLBACK);
                            act.wake_at(now_ms() + READY_FULL_FALLBACK.as_millis() as u64, ctx);
                        }
                    }
                    act.publish();
                }),
        );
    }

    fn resolve(&mut self, ctx: &mut Context<Self>) {
        if self.resolving {
            return;
        }
        self.resolving = true;
        let lookup = self.shared.ports.resolver.resolve(self.id.domain.clone());
        ctx.spawn(lookup.into_actor(self).map(|result, act, ctx| {
            act.resolving = false;
            match result {
                Ok(route) => {
                    act.route = Some(route);
                    act.fresh_route = true;
                    act.pump(ctx);
                }
                Err(RouteError::Permanent(reply)) | Err(RouteError::Transient(reply)) => {
                    // Every due message shares the domain's fate; each counts an attempt.
                    let now = now_ms();
                    let mut due = Vec::new();
                    while let Some(entry) = act.scheduled.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        due.push(entry.remove());
                    }
                    let class = act.shared.bounces.classify(&reply.match_text()).to_string();
                    for m in due {
                        act.settle(
                            m,
                            &reply,
                            Settlement {
                                bounce_class: Some(class.clone()),
                                ..Default::default()
                            },
                        );
                    }
                    act.pump(ctx);
                }
            }
        }));
    }

    /// Decide a message's fate from `reply`, log it, and tell the spool.
    fn settle(&mut self, mut m: QueuedMessage, reply: &Reply, s: Settlement) {
        if !s.admin {
            m.attempts += 1;
        }
        let now = now_ms();
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let policy = &self.shared.settings.retry;
        let (kind, outcome, next_due) = if s.admin {
            ("AdminBounce", "admin_bounced", None)
        } else if reply.is_success() {
            ("Delivery", "delivered", None)
        } else if reply.is_permanent() {
            ("Bounce", "bounced", None)
        } else {
            match policy.next_due(m.attempts, now, m.created_ms, m.held_ms, jitter) {
                Some(due) => ("TransientFailure", "transient", Some(due)),
                None => ("Expiration", "expired", None),
            }
        };
        let record = LogRecord {
            id: Some(message_id_hex(&m.key)),
            tenant: Some(self.id.tenant.to_string()),
            campaign: self.id.campaign.as_deref().map(str::to_string),
            sender: s.sender,
            recipient: Some(m.recipient.to_string()),
            domain: Some(self.id.domain.to_string()),
            queue: Some(self.name.clone()),
            source: s.source.as_deref().map(str::to_string),
            site: s.site.as_deref().map(str::to_string),
            peer: s.peer,
            response: Some(reply.into()),
            attempts: Some(m.attempts),
            bounce_class: if reply.is_success() {
                None
            } else {
                s.bounce_class.clone()
            },
            size: s.size,
            ..LogRecord::new(kind)
        };
        self.shared.ports.events.write(record);
        let mut labels = vec![("tenant", self.id.tenant.to_string())];
        if self.shared.settings.campaign_labels {
            labels.push((
                "campaign",
                self.id.campaign.as_deref().unwrap_or("").to_string(),
            ));
        }
        labels.push(("outcome", outcome.to_string()));
        metrics::counter!("switchyard_delivery_total", &labels).increment(1);
        if let (Some(source), Some(site)) = (&s.source, &s.site) {
            metrics::counter!("switchyard_ready_delivery_total", "source" => source.to_string(), "site" => site.to_string(), "outcome" => outcome)
                .increment(1);
        }
        if kind == "Bounce" {
            let class = s
                .bounce_class
                .unwrap_or_else(|| crate::bounce::UNCATEGORIZED.to_string());
            metrics::counter!("switchyard_bounce_class_total", "tenant" => self.id.tenant.to_string(), "class" => class).increment(1);
        }
        if kind == "Delivery" {
            metrics::histogram!("switchyard_delivery_seconds")
                .record(now.saturating_sub(m.created_ms) as f64 / 1000.0);
        }
        match next_due {
            Some(due) => {
                m.due_ms = due;
                self.shared
                    .ports
                    .spool
                    .reschedule(m.key, m.attempts, due, m.held_ms);
                self.schedule(m);
            }
            None => self.shared.ports.spool.remove(m.key),
        }
    }
}

fn gauge_labels(id: &QueueIdentity, shared: &Shared) -> Vec<(&'static str, String)> {
    let mut l = vec![("tenant", id.tenant.to_string())];
    if shared.settings.campaign_labels {
        l.push(("campaign", id.campaign.as_deref().unwrap_or("").to_string()));
    }
    l.push(("domain", id.domain.to_string()));
    l
}

/// What is known about an attempt besides its reply.
#[derive(Default)]
struct Settlement {
    source: Option<Arc<str>>,
    site: Option<Arc<str>>,
    peer: Option<Peer>,
    sender: Option<String>,
    size: Option<u64>,
    bounce_class: Option<String>,
    /// An administrative bounce (API or automation), not an attempt.
    admin: bool,
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared.count_scheduled_queue(1);
        let reap_after = self.shared.settings.reap_after;
        ctx.run_interval(crate::engine::gauge_refresh(reap_after), move |act, _| {
            act.publish();
            if !act.idle_reported && act.idle_since.is_some_and(|t| t.elapsed() >= reap_after) {
                act.idle_reported = true;
                act.parent.do_send(QueueIdle {
                    domain: act.id.domain.clone(),
                    batches_received: act.batches_received,
                });
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.shared.count_scheduled_queue(-1);
        self.queued_gauge.set(0.0);
    }
}

/// New messages for this queue (from its CampaignActor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue {
    /// The messages.
    pub messages: Vec<QueuedMessage>,
}

impl Handler<Enqueue> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        self.batches_received += 1;
        for m in msg.messages {
            self.schedule(m);
        }
        self.pump(ctx);
    }
}

/// The outcome of one delivery attempt (from a ConnectionActor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliveryOutcome {
    /// Which message.
    pub key: MessageKey,
    /// The reply that decides it.
    pub reply: Reply,
    /// Who answered.
    pub peer: Option<Peer>,
    /// From which source.
    pub source: Arc<str>,
    /// To which site.
    pub site: Arc<str>,
    /// Envelope sender, when the message was read.
    pub sender: Option<String>,
    /// Size sent.
    pub size: Option<u64>,
    /// Bounce class of a failure.
    pub bounce_class: Option<String>,
}

impl Handler<DeliveryOutcome> for QueueActor {
    type Result = ();

    fn handle(&mut self, o: DeliveryOutcome, ctx: &mut Context<Self>) {
        let Some(m) = self.in_flight.remove(&o.key) else {
            tracing::warn!(queue = %self.name, "outcome for a message not in flight");
            return;
        };
        let s = Settlement {
            source: Some(o.source),
            site: Some(o.site),
            peer: o.peer,
            sender: o.sender,
            size: o.size,
            bounce_class: o.bounce_class,
            admin: false,
        };
        self.settle(m, &o.reply, s);
        if let Some(&(due, _)) = self.scheduled.keys().next() {
            self.wake_at(due, ctx);
        }
        self.publish();
    }
}

/// A ready queue that refused this queue's messages has room again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadyRoom;

impl Handler<ReadyRoom> for QueueActor {
    type Result = ();

    fn handle(&mut self, _: ReadyRoom, ctx: &mut Context<Self>) {
        self.room_calls += 1;
        self.blocked_until = None;
        self.pump(ctx);
    }
}

/// Move due messages on (sent to self to yield between batches).
#[derive(Message)]
#[rtype(result = "()")]
struct Pump;

impl Handler<Pump> for QueueActor {
    type Result = ();

    fn handle(&mut self, _: Pump, ctx: &mut Context<Self>) {
        self.pump(ctx);
    }
}

/// The campaign confirms the queue is idle with nothing on its way: stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reap;

impl Handler<Reap> for QueueActor {
    type Result = ();

    fn handle(&mut self, _: Reap, ctx: &mut Context<Self>) {
        if self.scheduled.is_empty() && self.in_flight.is_empty() {
            ctx.stop();
        }
    }
}

impl Handler<Hold> for QueueActor {
    type Result = ();

    fn handle(&mut self, hold: Hold, ctx: &mut Context<Self>) {
        self.holds.retain(|s| s.id != hold.0.id);
        self.holds.push(hold.0);
        let site = self.route.as_ref().map(|r| r.site.clone());
        if site.is_some_and(|site| self.hold_for(&site).is_some()) {
            self.enter_hold(ctx);
            self.publish();
        }
    }
}

impl Handler<Release> for QueueActor {
    type Result = ();

    fn handle(&mut self, release: Release, ctx: &mut Context<Self>) {
        self.holds.retain(|s| s.id != release.id);
        let still_held = self
            .route
            .as_ref()
            .is_some_and(|r| self.hold_for(&r.site).is_some());
        if !still_held {
            self.leave_hold(ctx);
        }
    }
}

/// Messages a ready queue hands back undelivered (its source was suspended, or a Bounce
/// rule fired): rescheduled due now, attempts unchanged — or bounced.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BackToSchedule {
    /// Which messages.
    pub keys: Vec<MessageKey>,
    /// Bounce them with this reason instead.
    pub bounce: Option<String>,
}

impl Handler<BackToSchedule> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: BackToSchedule, ctx: &mut Context<Self>) {
        self.take_back(msg.keys, msg.bounce.as_deref(), ctx);
    }
}

impl Handler<AdminBounce> for QueueActor {
    type Result = ResponseActFuture<Self, usize>;

    /// Bounce every queued message (if the site matches), including those pulled back from
    /// ready queues; the reply counts them all.
    fn handle(&mut self, msg: AdminBounce, _: &mut Context<Self>) -> Self::Result {
        if let Some(site) = &msg.site {
            if self.route.as_ref().is_none_or(|r| &*r.site != site) {
                return Box::pin(actix::fut::ready(0));
            }
        }
        let all: Vec<QueuedMessage> = std::mem::take(&mut self.scheduled).into_values().collect();
        let n = all.len();
        for m in all {
            self.admin_bounce(m, &msg.reason);
        }
        self.publish();
        let withdrawals: Vec<_> = self
            .offered_to
            .drain()
            .map(|(_, ready)| {
                ready.send(Withdraw {
                    queue: self.id.clone(),
                })
            })
            .collect();
        Box::pin(futures::future::join_all(withdrawals).into_actor(self).map(
            move |results, act, _| {
                let mut more = 0;
                for key in results.into_iter().flat_map(|r| r.unwrap_or_default()) {
                    if let Some(m) = act.in_flight.remove(&key) {
                        act.admin_bounce(m, &msg.reason);
                        more += 1;
                    }
                }
                act.publish();
                n + more
            },
        ))
    }
}

/// Gather the answers of several actors asked for [`QueueInfo`] (a gone actor adds none).
pub async fn gather_infos<F>(asks: Vec<F>) -> Vec<ScheduledInfo>
where
    F: std::future::Future<Output = Result<Vec<ScheduledInfo>, MailboxError>>,
{
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap_or_default())
        .collect()
}

/// Add up the counts of several actors asked for an [`AdminBounce`].
pub async fn sum_counts<F>(asks: Vec<F>) -> usize
where
    F: std::future::Future<Output = Result<usize, MailboxError>>,
{
    futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .sum()
}

/// What a scheduled queue holds, for `GET /api/v1/queues`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScheduledInfo {
    /// `campaign:tenant@domain`.
    pub name: String,
    /// Tenant.
    pub tenant: String,
    /// Campaign.
    pub campaign: Option<String>,
    /// Destination domain.
    pub domain: String,
    /// Messages waiting or in flight.
    pub messages: usize,
    /// Held by a suspension.
    pub suspended: bool,
}

/// Describe the queue(s).
#[derive(Message, Clone, Copy)]
#[rtype(result = "Vec<ScheduledInfo>")]
pub struct QueueInfo;

impl Handler<QueueInfo> for QueueActor {
    type Result = MessageResult<QueueInfo>;

    fn handle(&mut self, _: QueueInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(vec![ScheduledInfo {
            name: self.name.clone(),
            tenant: self.id.tenant.to_string(),
            campaign: self.id.campaign.as_deref().map(str::to_string),
            domain: self.id.domain.to_string(),
            messages: self.scheduled.len() + self.in_flight.len(),
            suspended: self.held_since.is_some(),
        }])
    }
}
