//! ScheduledQueueActor: the scheduled queue of one `campaign:tenant@domain`.
//!
//! Messages enter here straight from ingress (or from the spool at start), through the
//! registry of scheduled queues ([`ScheduledQueues`]), with a bounded hand-off. The queue's
//! work is split by job:
//!
//! - [`schedule`] — when each message is due: the retry schedule (exponential backoff with
//!   jitter, `max_age`), the wake-up timer, and holds: while a suspension of its tenant or
//!   campaign holds the queue (read from the [`SuspensionView`]), nothing goes out, what ready
//!   queues still have is pulled back, and the held time does not count towards `max_age`;
//! - [`route`] — where due messages go: the domain's route (site and MX hosts), an egress
//!   source of the tenant's pool by weight (skipping sources suspended towards the site),
//!   paced by the tenant's QoS rate, the queue's own `max_message_rate` and throttles of
//!   the tenant or campaign; retry, expiry, pool and pace come from the queue's policy
//!   ([`crate::queue_policy`], looked up again after a reload),
//!   and an offer to that (source, site)'s ready queue — one offer at a time, so a slow ready
//!   queue makes this queue wait instead of piling offers up in its mailbox;
//!   A bounce order covering the queue (see [`crate::timed_bounce`]) bounces what it holds
//!   instead, for as long as the order lasts;
//! - [`settle`] — what an attempt's reply means: delivered, bounced, deferred or expired,
//!   with one log record each, the spool told, and the counters of this queue.
//!
//! An empty queue with nothing in flight takes itself out of the registry after
//! `reap_after` — only once every message leased to it has arrived — tells its campaign, and
//! stops; so millions of combinations cost nothing while empty.

mod route;
pub mod schedule;
mod settle;

use crate::bounce::BounceClassifier;
use crate::limits::{Limiter, TenantLimits};
use crate::message::{MessageKey, QueueIdentity, QueuedMessage};
use crate::messages::{
    AdminBounce, BackToSchedule, DeliveryOutcome, Enqueue, QueueGone, QueueInfo, QueueLine,
    ReadyRoom, Recheck, ScheduledInfo,
};
use crate::mta_sts::StsPolicy;
use crate::pool::{Pool, PoolCursor, Pools};
use crate::ports::{Ports, Route};
use crate::queue_policy::{PoliciesInForce, QueuePolicy};
use crate::ready_queue::{ReadyQueueActor, ReadyQueues};
use crate::registry::{Arbiters, Lease, Registry};
use crate::suspension::SuspensionView;
use crate::timed_bounce::TimedBounce;
use actix::prelude::*;
use settle::{Counters, Settlement};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages (outcomes, answers) that may wait in a scheduled queue's mailbox before senders
/// wait for room; new mail is bounded by the registry's room instead.
const MAILBOX: usize = 256;

/// Batches of new mail that may wait for one scheduled queue; ingress waits beyond that.
pub const ENQUEUE_ROOM: usize = 64;

/// Every scheduled queue, and what starting one needs.
pub struct ScheduledQueues {
    /// The live ones.
    pub registry: Registry<QueueIdentity, ScheduledQueueActor>,
    /// Where due messages go.
    pub ready: Arc<ReadyQueues>,
    /// Suspensions in force.
    pub view: Arc<SuspensionView>,
    /// Spool, log, DNS.
    pub ports: Ports,
    /// Bounce classes of failures found without a connection (DNS).
    pub bounces: Arc<BounceClassifier>,
    /// Retry, expiry, pool and pace per scope.
    pub policies: Arc<PoliciesInForce>,
    /// Egress pools and which tenant uses which.
    pub pools: Pools,
    /// Tenants' QoS rates.
    pub tenant_limits: TenantLimits,
    /// An idle queue is reaped after this.
    pub reap_after: Duration,
    /// Keep the campaign label on per-campaign series.
    pub campaign_labels: bool,
    /// Threads to spread queues over.
    pub arbiters: Arc<Arbiters>,
}

impl ScheduledQueues {
    /// The queue of `id` for one [`Enqueue`] (leased: it cannot stop before that arrives),
    /// started when there is none; `parent` gives the campaign to tell when it goes.
    pub fn lease(
        self: &Arc<Self>,
        id: &QueueIdentity,
        parent: impl FnOnce() -> Recipient<QueueGone>,
    ) -> Lease<ScheduledQueueActor> {
        self.registry.lease(id, |serial| {
            let (id, all, parent) = (Arc::new(id.clone()), self.clone(), parent());
            ScheduledQueueActor::start_in_arbiter(&self.arbiters.next(), move |_| {
                ScheduledQueueActor::new(id, all, parent, serial)
            })
        })
    }
}

/// The scheduled queue of one tenant × campaign × domain.
pub struct ScheduledQueueActor {
    id: Arc<QueueIdentity>,
    name: String,
    all: Arc<ScheduledQueues>,
    serial: u64,
    pool: Arc<Pool>,
    cursor: PoolCursor,
    parent: Recipient<QueueGone>,
    scheduled: BTreeMap<(u64, MessageKey), QueuedMessage>,
    in_flight: HashMap<MessageKey, QueuedMessage>,
    route: Option<Route>,
    /// The domain's MTA-STS policy, looked up with the route.
    mta_sts: Option<Arc<StsPolicy>>,
    /// The route was just looked up: use it for this pump even if its TTL has run out.
    fresh_route: bool,
    resolving: bool,
    wake: Option<(u64, SpawnHandle)>,
    /// Enqueue batches received (each was leased by its sender).
    batches_received: u64,
    idle_since: Option<Instant>,
    /// A ready queue refused messages: wait for room before offering again.
    blocked_until: Option<Instant>,
    /// ReadyRoom calls received; an offer refused after a call it crossed is not blocked.
    room_calls: u64,
    /// Offers on their way to ready queues: the next pump waits for their answers.
    offers_out: usize,
    /// How many messages the next pump offers (fewer after a ready queue refused some).
    offer_size: usize,
    /// Bytes of in-memory content held by messages in `scheduled`.
    hot_bytes: usize,
    /// (view version, site) → whether a suspension holds the queue, last looked up.
    hold_seen: Option<(u64, Arc<str>, bool)>,
    /// Since when (ms) a suspension holds the queue.
    held_since: Option<u64>,
    /// Ready queues this queue has handed messages to, by source and lane.
    offered_to: HashMap<Arc<str>, Addr<ReadyQueueActor>>,
    /// How ready queues and connections reach this queue (set when it starts).
    line: Option<Arc<QueueLine>>,
    /// The tenant's QoS rate, if it has one.
    tenant_limiter: Option<Arc<Limiter>>,
    /// Its queue policy, and the version of the policies it was looked up in.
    policy: (u64, QueuePolicy),
    /// Its own pace (`max_message_rate` of its queue policy).
    queue_limiter: Option<Limiter>,
    /// (view version, site) → the limiters of the throttles pacing the queue, last looked up.
    throttles_seen: Option<(u64, Arc<str>, Arc<[Arc<Limiter>]>)>,
    /// (view version, site) → the bounce order covering the queue, last looked up.
    bounce_seen: Option<(u64, Arc<str>, Option<Arc<TimedBounce>>)>,
    counters: Counters,
}

impl ScheduledQueueActor {
    /// A new, empty scheduled queue.
    pub fn new(
        id: Arc<QueueIdentity>,
        all: Arc<ScheduledQueues>,
        parent: Recipient<QueueGone>,
        serial: u64,
    ) -> Self {
        let counters = Counters::new(&id, all.campaign_labels, all.bounces.classes());
        let policy = all.policies.get().policy_for(&id);
        ScheduledQueueActor {
            name: id.name(),
            pool: all.pools.pool_of(&id.tenant, policy.egress_pool.as_deref()),
            queue_limiter: policy.max_message_rate.map(Limiter::new),
            policy: (all.policies.version(), policy),
            tenant_limiter: all.tenant_limits.of(&id.tenant),
            id,
            all,
            serial,
            cursor: PoolCursor::default(),
            parent,
            scheduled: BTreeMap::new(),
            in_flight: HashMap::new(),
            route: None,
            mta_sts: None,
            fresh_route: false,
            resolving: false,
            wake: None,
            batches_received: 0,
            idle_since: Some(Instant::now()),
            blocked_until: None,
            room_calls: 0,
            offers_out: 0,
            offer_size: route::PUMP_BATCH,
            hot_bytes: 0,
            hold_seen: None,
            throttles_seen: None,
            bounce_seen: None,
            held_since: None,
            offered_to: HashMap::new(),
            line: None,
            counters,
        }
    }

    /// Its queue policy, looked up again (pool and pace with it) after a reload.
    fn refresh_policy(&mut self) {
        let version = self.all.policies.version();
        if self.policy.0 == version {
            return;
        }
        let policy = self.all.policies.get().policy_for(&self.id);
        if policy.egress_pool != self.policy.1.egress_pool {
            self.pool = self
                .all
                .pools
                .pool_of(&self.id.tenant, policy.egress_pool.as_deref());
            self.cursor = PoolCursor::default();
        }
        self.queue_limiter =
            Limiter::keep_or_new(self.queue_limiter.take(), policy.max_message_rate);
        self.policy = (version, policy);
    }

    /// Publish the gauge; note when the queue became empty.
    fn publish(&mut self) {
        let queued = self.scheduled.len() + self.in_flight.len();
        self.counters.queued.set(queued as f64);
        if queued == 0 {
            if self.idle_since.is_none() {
                self.idle_since = Some(Instant::now());
            }
        } else {
            self.idle_since = None;
        }
    }

    /// Empty for the reap period with every leased batch received: leave the registry and
    /// stop.
    fn reap_if_idle(&mut self, ctx: &mut Context<Self>) {
        let idle_long = self
            .idle_since
            .is_some_and(|t| t.elapsed() >= self.all.reap_after);
        if idle_long
            && self.scheduled.is_empty()
            && self.in_flight.is_empty()
            && self
                .all
                .registry
                .retire(&self.id, self.serial, self.batches_received)
        {
            self.parent.do_send(QueueGone {
                domain: self.id.domain.clone(),
                serial: self.serial,
            });
            ctx.stop();
        }
    }
}

impl Actor for ScheduledQueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        let me = ctx.address();
        self.line = Some(Arc::new(QueueLine {
            outcome: me.clone().recipient(),
            back: me.clone().recipient(),
            room: me.recipient(),
        }));
        let every = crate::registry::gauge_refresh(self.all.reap_after);
        ctx.run_interval(every, |act, ctx| {
            act.publish();
            act.reap_if_idle(ctx);
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.counters.queued.set(0.0);
    }
}

impl Handler<Enqueue> for ScheduledQueueActor {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        // The sender's permit (msg.room) is given back when this returns.
        self.batches_received += 1;
        crate::test_hooks::slow_enqueue();
        for m in msg.messages {
            crate::test_hooks::hop(&m.key, "scheduled-queue");
            self.schedule(m);
        }
        self.pump(ctx);
    }
}

impl Handler<DeliveryOutcome> for ScheduledQueueActor {
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
            mta_sts: o.mta_sts,
            admin: false,
        };
        self.settle(m, &o.reply, s);
        if let Some(&(due, _)) = self.scheduled.keys().next() {
            self.wake_at(due, ctx);
        }
        self.publish();
    }
}

impl Handler<ReadyRoom> for ScheduledQueueActor {
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

impl Handler<Pump> for ScheduledQueueActor {
    type Result = ();

    fn handle(&mut self, _: Pump, ctx: &mut Context<Self>) {
        self.pump(ctx);
    }
}

impl Handler<Recheck> for ScheduledQueueActor {
    type Result = ();

    /// The suspensions changed: enter or leave a hold.
    fn handle(&mut self, _: Recheck, ctx: &mut Context<Self>) {
        let Some(site) = self.route.as_ref().map(|r| r.site.clone()) else {
            return;
        };
        if self.bounce_if_ordered(&site) {
            return;
        }
        if self.held(&site) {
            self.enter_hold(ctx);
            self.publish();
        } else if self.held_since.is_some() {
            self.leave_hold(ctx);
        } else {
            // A throttle began, changed or ended: go at the new pace now.
            self.pump(ctx);
        }
    }
}

impl Handler<BackToSchedule> for ScheduledQueueActor {
    type Result = ();

    fn handle(&mut self, msg: BackToSchedule, ctx: &mut Context<Self>) {
        self.take_back(msg.keys, msg.bounce.as_deref(), ctx);
    }
}

impl Handler<AdminBounce> for ScheduledQueueActor {
    type Result = ResponseActFuture<Self, usize>;

    /// Bounce every queued message (if the site matches), including those pulled back from
    /// ready queues; the reply counts them all.
    fn handle(&mut self, msg: AdminBounce, _: &mut Context<Self>) -> Self::Result {
        if let Some(site) = &msg.site {
            if self.route.as_ref().is_none_or(|r| &*r.site != site) {
                return Box::pin(actix::fut::ready(0));
            }
        }
        let all = self.take_schedule();
        let n = all.len();
        for m in all {
            self.admin_bounce(m, &msg.reason);
        }
        self.publish();
        let withdrawals: Vec<_> = self
            .offered_to
            .drain()
            .map(|(_, ready)| {
                ready.send(crate::messages::Withdraw {
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

impl Handler<QueueInfo> for ScheduledQueueActor {
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
