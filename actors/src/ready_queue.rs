//! ReadyQueueActor: messages due now for one (egress source, site), and the connections
//! that carry them.
//!
//! Traffic shaping applies here: at most `connection_limit` ConnectionActors, each carrying
//! up to `max_deliveries_per_connection` messages; at most `max_ready` messages waiting —
//! an offer beyond that is refused in part, and the scheduled queue keeps the rest (back-
//! pressure instead of an unbounded pile). A connection that finds the queue empty waits up
//! to the idle timeout for the next message rather than hanging up at once.
//! When empty with no connections for a while, the actor removes itself from the registry
//! and stops; the next offer creates a fresh one.
//!
//! Rates are GCRA limiters (`governor`): `max_message_rate` paces the hand-out of messages
//! to connections, `max_connection_rate` the opening of connections; a provider's
//! `provider_connection_limit` and `provider_max_message_rate` are shared by the ready
//! queues of all its sites ([`crate::engine::ProviderGate`]). SetConfig overrides from
//! automation are layered over the shaping files' options ([`Reshape`]). After
//! `consecutive_connection_failures_before_delay` failed connections in a row, every waiting
//! message is deferred with the last failure. A suspended source ([`SourceSuspension`])
//! hands its messages back to their scheduled queues, to go out over other sources.

use crate::connection::ConnectionActor;
use crate::engine::{ProviderGate, Shared};
use crate::message::{MessageKey, QueueIdentity, QueuedMessage, Reply};
use crate::ports::{ConnectTarget, EgressSource, MxHost};
use crate::queue::{BackToSchedule, DeliveryOutcome, ReadyRoom};
use crate::shaping::{PathSettings, Rate, ShapingOptions};
use actix::prelude::*;
use governor::clock::Clock;
use governor::DefaultDirectRateLimiter;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How soon a ready queue held back only by a provider's shared connection limit looks
/// again (the slot frees in another ready queue, which cannot call this one).
const PROVIDER_SLOT_RECHECK: Duration = Duration::from_millis(200);

/// A message handed to a ready queue, with where its outcome goes.
pub struct ReadyItem {
    /// The message.
    pub message: QueuedMessage,
    /// Its scheduled queue's identity.
    pub queue: Arc<QueueIdentity>,
    /// Its scheduled queue.
    pub outcome_to: Recipient<DeliveryOutcome>,
    /// Its scheduled queue, for handing it back undelivered.
    pub back_to: Recipient<BackToSchedule>,
}

/// The ready queue for one (source, site).
pub struct ReadyQueueActor {
    source: Arc<EgressSource>,
    site: Arc<str>,
    hosts: Arc<[MxHost]>,
    /// The domain whose mail created it: shaping is looked up through it.
    domain: Arc<str>,
    /// Options from the shaping files; overrides are layered on top.
    base: ShapingOptions,
    settings: PathSettings,
    providers: Vec<Arc<ProviderGate>>,
    message_limiter: Option<(Rate, DefaultDirectRateLimiter)>,
    connection_limiter: Option<(Rate, DefaultDirectRateLimiter)>,
    /// A timer to hand out or connect again once a limit allows.
    pace: Option<SpawnHandle>,
    /// The source is suspended towards this site.
    suspended: bool,
    /// Connection attempts that failed in a row.
    failures: usize,
    shared: Arc<Shared>,
    ready: VecDeque<ReadyItem>,
    waiting: VecDeque<oneshot::Sender<ReadyItem>>,
    connections: usize,
    /// Connections started that have not yet asked for their first message.
    starting: usize,
    idle_since: Option<Instant>,
    reaped: bool,
    /// Scheduled queues refused for lack of room, to be called back in order.
    blocked: VecDeque<(Arc<str>, Recipient<ReadyRoom>)>,
    blocked_names: HashSet<Arc<str>>,
    ready_gauge: metrics::Gauge,
    connections_gauge: metrics::Gauge,
}

impl ReadyQueueActor {
    /// A new, empty ready queue.
    pub fn new(
        source: Arc<EgressSource>,
        site: Arc<str>,
        hosts: Arc<[MxHost]>,
        domain: Arc<str>,
        shared: Arc<Shared>,
    ) -> Self {
        let path = shared.shaping().path(&domain, &site, &source.name);
        let labels = [
            ("source", source.name.to_string()),
            ("site", site.to_string()),
        ];
        let ready_gauge = metrics::gauge!("switchyard_ready_messages", &labels);
        let connections_gauge = metrics::gauge!("switchyard_connections", &labels);
        let providers = path
            .providers
            .iter()
            .map(|p| shared.provider_gate(p, &source.name))
            .collect();
        let suspended = shared.source_suspended(&source.name, &site).is_some();
        let mut q = ReadyQueueActor {
            domain,
            settings: PathSettings::from_options(&path.options),
            base: path.options,
            providers,
            message_limiter: None,
            connection_limiter: None,
            pace: None,
            suspended,
            failures: 0,
            source,
            site,
            hosts,
            shared,
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            connections: 0,
            starting: 0,
            idle_since: Some(Instant::now()),
            reaped: false,
            blocked: VecDeque::new(),
            blocked_names: HashSet::new(),
            ready_gauge,
            connections_gauge,
        };
        q.reshape();
        q
    }

    /// Recompute the settings: the shaping in force with the active overrides on top.
    fn reshape(&mut self) {
        let path = self
            .shared
            .shaping()
            .path(&self.domain, &self.site, &self.source.name);
        self.base = path.options;
        self.providers = path
            .providers
            .iter()
            .map(|p| self.shared.provider_gate(p, &self.source.name))
            .collect();
        let over = self.shared.overrides_for(&self.source.name, &self.site);
        let settings = PathSettings::from_options(&self.base.overlay(&over));
        fn limiter(
            old: Option<(Rate, DefaultDirectRateLimiter)>,
            want: Option<Rate>,
        ) -> Option<(Rate, DefaultDirectRateLimiter)> {
            match (old, want) {
                (Some((r, l)), Some(w)) if r == w => Some((r, l)),
                (_, Some(w)) => Some((w, DefaultDirectRateLimiter::direct(w.quota()))),
                (_, None) => None,
            }
        }
        self.message_limiter = limiter(self.message_limiter.take(), settings.max_message_rate);
        self.connection_limiter =
            limiter(self.connection_limiter.take(), settings.max_connection_rate);
        if settings != self.settings {
            tracing::info!(source = %self.source.name, site = %self.site, ?settings, "ready queue reshaped");
        }
        self.settings = settings;
    }

    /// May one more message go out now? Otherwise how long until it may.
    fn message_permit(&self) -> Result<(), Duration> {
        let clock = governor::clock::DefaultClock::default();
        for gate in &self.providers {
            if let Some(l) = &gate.messages {
                l.check().map_err(|e| e.wait_time_from(clock.now()))?;
            }
        }
        if let Some((_, l)) = &self.message_limiter {
            l.check().map_err(|e| e.wait_time_from(clock.now()))?;
        }
        Ok(())
    }

    /// May one more connection open now? Otherwise how long until it may.
    fn connection_permit(&self) -> Result<(), Duration> {
        for gate in &self.providers {
            if gate
                .connection_limit
                .is_some_and(|limit| gate.connections.load(Ordering::Relaxed) >= limit)
            {
                return Err(PROVIDER_SLOT_RECHECK);
            }
        }
        if let Some((_, l)) = &self.connection_limiter {
            let clock = governor::clock::DefaultClock::default();
            l.check().map_err(|e| e.wait_time_from(clock.now()))?;
        }
        Ok(())
    }

    /// Dispatch again after `wait`, unless a timer is already set.
    fn pace_after(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        if self.pace.is_none() {
            self.pace = Some(ctx.run_later(wait, |act, ctx| {
                act.pace = None;
                act.dispatch(ctx);
            }));
        }
    }

    /// Hand every message back to its scheduled queue (or bounce them all).
    fn hand_back(&mut self, bounce: Option<String>) {
        let mut by_queue: HashMap<
            *const QueueIdentity,
            (Recipient<BackToSchedule>, Vec<MessageKey>),
        > = HashMap::new();
        for item in self.ready.drain(..) {
            by_queue
                .entry(Arc::as_ptr(&item.queue))
                .or_insert_with(|| (item.back_to.clone(), Vec::new()))
                .1
                .push(item.message.key);
        }
        for (_, (to, keys)) in by_queue {
            to.do_send(BackToSchedule {
                keys,
                bounce: bounce.clone(),
            });
        }
        self.wake_blocked();
        self.publish();
    }

    fn publish(&self) {
        self.ready_gauge.set(self.ready.len() as f64);
        self.connections_gauge.set(self.connections as f64);
    }

    /// Call back as many refused scheduled queues as there are free places (each brings at
    /// least one message), oldest refusal first.
    fn wake_blocked(&mut self) {
        if self.suspended {
            return;
        }
        let free = self.settings.max_ready.saturating_sub(self.ready.len());
        for _ in 0..free {
            let Some((name, room)) = self.blocked.pop_front() else {
                break;
            };
            self.blocked_names.remove(&name);
            room.do_send(ReadyRoom);
        }
    }

    /// Hand waiting connections their next message, then open connections while there is
    /// more mail than connections and the limit allows.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.suspended {
            return self.publish();
        }
        self.waiting.retain(|w| !w.is_closed());
        while !self.ready.is_empty() && !self.waiting.is_empty() {
            if let Err(wait) = self.message_permit() {
                self.pace_after(wait, ctx);
                break;
            }
            let (Some(item), Some(w)) = (self.ready.pop_front(), self.waiting.pop_front()) else {
                break;
            };
            if let Err(item) = w.send(item) {
                self.ready.push_front(item);
            }
        }
        self.wake_blocked();
        // Each starting connection will take one message: open more only for the rest, and
        // none while the message rate holds messages back.
        while self.connections < self.settings.connection_limit
            && self.starting < self.ready.len()
            && self.pace.is_none()
        {
            if let Err(wait) = self.connection_permit() {
                self.pace_after(wait, ctx);
                break;
            }
            self.connections += 1;
            self.starting += 1;
            for gate in &self.providers {
                gate.connections.fetch_add(1, Ordering::Relaxed);
            }
            let target = ConnectTarget {
                source: self.source.clone(),
                hosts: self.hosts.clone(),
                port: self.settings.smtp_port,
                tls: self.settings.enable_tls,
                timeouts: self.settings.timeouts,
                remember_broken_tls: self.settings.remember_broken_tls,
            };
            ConnectionActor {
                ready: ctx.address(),
                classifier: self.shared.classifier.clone(),
                ports: self.shared.ports.clone(),
                target,
                site: self.site.clone(),
                max_deliveries: self.settings.max_deliveries_per_connection,
            }
            .start();
        }
        self.idle_since = (self.ready.is_empty() && self.connections == 0).then(Instant::now);
        self.publish();
    }
}

impl Actor for ReadyQueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared.count_ready_queue(1);
        ctx.run_interval(
            crate::engine::gauge_refresh(self.shared.settings.reap_after),
            |act, ctx| {
                act.publish();
                let idle_long = !act.suspended
                    && act
                        .idle_since
                        .is_some_and(|t| t.elapsed() >= act.shared.settings.reap_after);
                if idle_long && !act.reaped {
                    act.reaped = true;
                    act.shared
                        .forget_ready_queue(&act.source.name, &act.site, &ctx.address());
                    ctx.stop();
                }
            },
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.shared.count_ready_queue(-1);
        self.ready_gauge.set(0.0);
        self.connections_gauge.set(0.0);
        for (_, room) in self.blocked.drain(..) {
            room.do_send(ReadyRoom);
        }
    }
}

/// Messages offered by a scheduled queue; the reply is how many (from the front) were taken.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Offer {
    /// The messages, in order.
    pub items: Vec<ReadyItem>,
    /// The site's current hosts.
    pub hosts: Arc<[MxHost]>,
    /// The offering scheduled queue's name.
    pub queue: Arc<str>,
    /// Where to say there is room again after refusing part of the offer.
    pub room_to: Recipient<ReadyRoom>,
}

impl Handler<Offer> for ReadyQueueActor {
    type Result = usize;

    fn handle(&mut self, offer: Offer, ctx: &mut Context<Self>) -> usize {
        if self.reaped {
            return 0;
        }
        self.hosts = offer.hosts;
        let room = if self.suspended {
            0
        } else {
            self.settings.max_ready.saturating_sub(self.ready.len())
        };
        let taken = offer.items.len().min(room);
        if taken < offer.items.len() && self.blocked_names.insert(offer.queue.clone()) {
            self.blocked.push_back((offer.queue, offer.room_to));
        }
        self.ready.extend(offer.items.into_iter().take(taken));
        self.dispatch(ctx);
        taken
    }
}

/// A connection asks for its next message; `None` after the idle timeout.
#[derive(Message)]
#[rtype(result = "Option<ReadyItem>")]
pub struct NextMessage {
    /// The connection's first request (it was counted as starting).
    pub first: bool,
}

impl Handler<NextMessage> for ReadyQueueActor {
    type Result = ResponseFuture<Option<ReadyItem>>;

    fn handle(&mut self, ask: NextMessage, ctx: &mut Context<Self>) -> Self::Result {
        if ask.first {
            self.starting = self.starting.saturating_sub(1);
        }
        if self.suspended {
            return Box::pin(async { None });
        }
        if !self.ready.is_empty() && self.waiting.is_empty() {
            match self.message_permit() {
                Ok(()) => {
                    let item = self.ready.pop_front();
                    self.wake_blocked();
                    self.publish();
                    return Box::pin(async move { item });
                }
                Err(wait) => self.pace_after(wait, ctx),
            }
        }
        let (tx, mut rx) = oneshot::channel();
        self.waiting.push_back(tx);
        let idle = self.settings.timeouts.idle;
        Box::pin(async move {
            tokio::select! {
                r = &mut rx => r.ok(),
                _ = tokio::time::sleep(idle) => {
                    // Close first: an item sent in the same instant is still received here,
                    // and any later send fails back to the ready queue. Nothing is dropped.
                    rx.close();
                    rx.try_recv().ok()
                }
            }
        })
    }
}

/// A connection ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed;

impl Handler<ConnectionClosed> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, _: ConnectionClosed, ctx: &mut Context<Self>) {
        self.connections = self.connections.saturating_sub(1);
        for gate in &self.providers {
            let _ = gate
                .connections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        self.dispatch(ctx);
    }
}

/// A connection attempt's result: `None` when it connected, else the failure's reply.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectResult(pub Option<Reply>);

impl Handler<ConnectResult> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, ConnectResult(failure): ConnectResult, _: &mut Context<Self>) {
        let Some(reply) = failure else {
            self.failures = 0;
            return;
        };
        self.failures += 1;
        if self.failures < self.settings.consecutive_connection_failures_before_delay {
            return;
        }
        self.failures = 0;
        tracing::info!(source = %self.source.name, site = %self.site, waiting = self.ready.len(), "connections keep failing; deferring the ready queue");
        for item in self.ready.drain(..) {
            item.outcome_to.do_send(DeliveryOutcome {
                key: item.message.key,
                reply: reply.clone(),
                peer: None,
                source: self.source.name.clone(),
                site: self.site.clone(),
                sender: None,
                size: None,
                bounce_class: None,
            });
        }
        self.wake_blocked();
        self.publish();
    }
}

/// Give back the messages of one scheduled queue (it is held by a suspension).
#[derive(Message)]
#[rtype(result = "Vec<MessageKey>")]
pub struct Withdraw {
    /// Whose messages.
    pub queue: Arc<QueueIdentity>,
}

impl Handler<Withdraw> for ReadyQueueActor {
    type Result = MessageResult<Withdraw>;

    fn handle(&mut self, msg: Withdraw, _: &mut Context<Self>) -> Self::Result {
        let mut keys = Vec::new();
        self.ready.retain(|item| {
            let theirs = Arc::ptr_eq(&item.queue, &msg.queue) || *item.queue == *msg.queue;
            if theirs {
                keys.push(item.message.key);
            }
            !theirs
        });
        self.wake_blocked();
        self.publish();
        MessageResult(keys)
    }
}

/// The source was suspended towards this site (hand everything back, take nothing), or
/// the suspension ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SourceSuspension {
    /// Suspended now.
    pub suspended: bool,
}

impl Handler<SourceSuspension> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, msg: SourceSuspension, ctx: &mut Context<Self>) {
        self.suspended = msg.suspended;
        if msg.suspended {
            // Waiting connections get nothing more and close.
            self.waiting.clear();
            self.hand_back(None);
        } else {
            self.wake_blocked();
            self.dispatch(ctx);
        }
    }
}

/// Bounce everything waiting here (a `Bounce` rule fired for this source and site).
#[derive(Message)]
#[rtype(result = "()")]
pub struct BounceReady {
    /// Why.
    pub reason: String,
}

impl Handler<BounceReady> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, msg: BounceReady, _: &mut Context<Self>) {
        self.hand_back(Some(msg.reason));
    }
}

/// The overrides for this site, or the shaping files (reload), changed: recompute the
/// settings.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reshape;

impl Handler<Reshape> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, _: Reshape, ctx: &mut Context<Self>) {
        self.reshape();
        self.dispatch(ctx);
    }
}

/// What a ready queue holds, for `GET /api/v1/queues`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadyInfo {
    /// `source->site`.
    pub name: String,
    /// Egress source.
    pub source: String,
    /// Site.
    pub site: String,
    /// Messages waiting for a connection.
    pub messages: usize,
    /// Open connections.
    pub connections: usize,
    /// The source is suspended towards the site.
    pub suspended: bool,
}

/// Describe the ready queue.
#[derive(Message)]
#[rtype(result = "ReadyInfo")]
pub struct ReadyQueueInfo;

impl Handler<ReadyQueueInfo> for ReadyQueueActor {
    type Result = MessageResult<ReadyQueueInfo>;

    fn handle(&mut self, _: ReadyQueueInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ReadyInfo {
            name: format!("{}->{}", self.source.name, self.site),
            source: self.source.name.to_string(),
            site: self.site.to_string(),
            messages: self.ready.len(),
            connections: self.connections,
            suspended: self.suspended,
        })
    }
}
