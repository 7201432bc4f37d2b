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

use crate::connection::ConnectionActor;
use crate::engine::Shared;
use crate::message::{QueueIdentity, QueuedMessage};
use crate::ports::{ConnectTarget, EgressSource, MxHost};
use crate::queue::{DeliveryOutcome, ReadyRoom};
use crate::shaping::PathSettings;
use actix::prelude::*;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// A message handed to a ready queue, with where its outcome goes.
pub struct ReadyItem {
    /// The message.
    pub message: QueuedMessage,
    /// Its scheduled queue's identity.
    pub queue: Arc<QueueIdentity>,
    /// Its scheduled queue.
    pub outcome_to: Recipient<DeliveryOutcome>,
}

/// The ready queue for one (source, site).
pub struct ReadyQueueActor {
    source: Arc<EgressSource>,
    site: Arc<str>,
    hosts: Arc<[MxHost]>,
    settings: PathSettings,
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
        settings: PathSettings,
        shared: Arc<Shared>,
    ) -> Self {
        let labels = [
            ("source", source.name.to_string()),
            ("site", site.to_string()),
        ];
        let ready_gauge = metrics::gauge!("switchyard_ready_messages", &labels);
        let connections_gauge = metrics::gauge!("switchyard_connections", &labels);
        ReadyQueueActor {
            source,
            site,
            hosts,
            settings,
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
        }
    }

    fn publish(&self) {
        self.ready_gauge.set(self.ready.len() as f64);
        self.connections_gauge.set(self.connections as f64);
    }

    /// Call back as many refused scheduled queues as there are free places (each brings at
    /// least one message), oldest refusal first.
    fn wake_blocked(&mut self) {
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
        while let Some(item) = self.ready.pop_front() {
            match self.waiting.pop_front() {
                Some(w) => {
                    if let Err(item) = w.send(item) {
                        self.ready.push_front(item);
                    }
                }
                None => {
                    self.ready.push_front(item);
                    break;
                }
            }
        }
        // Each starting connection will take one message: open more only for the rest.
        while self.connections < self.settings.connection_limit && self.starting < self.ready.len()
        {
            self.connections += 1;
            self.starting += 1;
            let target = ConnectTarget {
                source: self.source.clone(),
                hosts: self.hosts.clone(),
                port: self.settings.smtp_port,
                tls: self.settings.enable_tls,
                timeouts: self.settings.timeouts,
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
                let idle_long = act
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
        let room = self.settings.max_ready.saturating_sub(self.ready.len());
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

    fn handle(&mut self, ask: NextMessage, _: &mut Context<Self>) -> Self::Result {
        if ask.first {
            self.starting = self.starting.saturating_sub(1);
        }
        if let Some(item) = self.ready.pop_front() {
            self.wake_blocked();
            self.publish();
            return Box::pin(async move { Some(item) });
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
        self.waiting.retain(|w| !w.is_closed());
        self.dispatch(ctx);
    }
}
