//! ReadyQueueActor: messages due now for one (egress source, site), and the connections
//! that carry them.
//!
//! Traffic shaping applies here: at most `connection_limit` ConnectionActors, each carrying
//! up to `max_deliveries_per_connection` messages, and the recipients of one message that
//! wait here side by side leave together in one transaction (up to
//! `max_recipients_per_batch`); at most `max_ready` messages waiting —
//! an offer beyond that is refused in part, and the scheduled queue keeps the rest (back-
//! pressure instead of an unbounded pile). A connection that finds the queue empty waits up
//! to the idle timeout for the next message rather than hanging up at once.
//! When empty with no connections for a while, the actor takes itself out of the registry
//! ([`ReadyQueues`]) and stops; the next offer creates a fresh one (an offer that reached
//! the stopping one is answered `MailboxError::Closed`, and the scheduled queue asks again).
//! A ready queue runs on the thread of the scheduled queue that first needed it, and its
//! connections on the same thread: a message changes threads as little as it can.
//!
//! Rates are GCRA limiters (`governor`): `max_message_rate` paces the hand-out of messages
//! to connections, `max_connection_rate` the opening of connections; a provider's
//! `provider_connection_limit` and `provider_max_message_rate` are shared by the ready
//! queues of all its sites ([`crate::limits::ProviderGate`]). SetConfig overrides from
//! automation, read from the [`SuspensionView`], are layered over the shaping files' options
//! ([`Reshape`]). After
//! `consecutive_connection_failures_before_delay` failed connections in a row, every waiting
//! message is deferred with the last failure. A suspended source ([`SourceSuspension`])
//! hands its messages back to their scheduled queues, to go out over other sources.
//!
//! In a cluster ([`crate::cluster`]), limits not written `local:` are the cluster's, keyed
//! by source and lane: the rates are shared limiters, and each connection holds a lease on
//! `connection_limit` (and on its providers' `provider_connection_limit`), asked for before
//! it opens and given back when it closes. While Redis does not answer, the ready queue
//! goes by its share: the limit divided by the nodes last seen.

use crate::automation::RulesInForce;
use crate::cluster::{LeaseId, Unreachable};
use crate::connection::{ConnectionActor, ConnectionKit, ReadyLine};
use crate::limits::{Limiter, ProviderGate, ProviderGates};
use crate::message::{message_id, now_ms, MessageKey, QueueIdentity, Reply};
use crate::messages::{
    BackToSchedule, Batch, ConnectResult, ConnectionClosed, DeliveryOutcome, NextMessage, Offer,
    QueueLine, ReadyInfo, ReadyItem, ReadyQueueInfo, ReadyRoom, Reshape, SourceSuspension,
    Withdraw,
};
use crate::mta_sts::{StsMode, StsPolicy};
use crate::ports::{ConnectTarget, EgressSource, MxHost, TlsMode};
use crate::registry::Registry;
use crate::shaping::{PathSettings, ShapingOptions};
use crate::suspension::SuspensionView;
use actix::dev::SendError;
use actix::prelude::*;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How soon a ready queue held back only by a provider's shared connection limit looks
/// again (the slot frees in another ready queue, which cannot call this one).
const PROVIDER_SLOT_RECHECK: Duration = Duration::from_millis(200);
/// How soon a ready queue refused a cluster lease (every slot taken on other nodes) asks
/// again.
const LEASE_RECHECK: Duration = Duration::from_millis(100);
/// After Redis did not answer a lease, the ready queue goes by its share this long before
/// asking again.
const ALONE_FOR: Duration = Duration::from_secs(1);
/// Messages (offers, requests of connections) that may wait in a ready queue's mailbox.
const MAILBOX: usize = 256;

/// (source name, lane) of a ready queue: the lane is its site, or `site/domain` for a
/// domain that has a ready queue of its own ([`lane_of`]).
pub type ReadyKey = (Arc<str>, Arc<str>);

/// The lane of `domain`'s mail on `site`: the site itself, shared by every domain of the
/// site (MX rollup), or `site/domain` when the domain goes alone — its block says
/// `mx_rollup = false`, or a SetDomainConfig override for it is in force.
pub fn lane_of(site: &Arc<str>, domain: &str, alone: bool) -> Arc<str> {
    if alone {
        format!("{site}/{domain}").into()
    } else {
        site.clone()
    }
}

/// Whether a ready queue's lane belongs to `site`.
fn on_site(lane: &str, site: &str) -> bool {
    lane == site
        || lane
            .strip_prefix(site)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Every ready queue, and what starting one needs.
pub struct ReadyQueues {
    /// The live ones.
    pub registry: Registry<ReadyKey, ReadyQueueActor>,
    /// Shaping in force.
    pub rules: Arc<RulesInForce>,
    /// Source suspensions and overrides in force.
    pub view: Arc<SuspensionView>,
    /// Provider limits shared across sites.
    pub gates: ProviderGates,
    /// What every connection shares.
    pub kit: Arc<ConnectionKit>,
    /// An idle ready queue stops after this.
    pub reap_after: Duration,
    /// Shutting down: no connection opens, none gets another message (each ends with
    /// QUIT after the transaction it is in), and what waits stays spooled.
    pub draining: std::sync::atomic::AtomicBool,
}

impl ReadyQueues {
    /// The ready queue of (source, route's site), started on this thread on demand with the
    /// shaping of `domain`.
    pub fn ready_queue(
        self: &Arc<Self>,
        source: &Arc<EgressSource>,
        site: &Arc<str>,
        hosts: &Arc<[MxHost]>,
        mta_sts: &Option<Arc<StsPolicy>>,
        domain: &Arc<str>,
        alone: bool,
    ) -> Addr<ReadyQueueActor> {
        let lane = lane_of(site, domain, alone);
        self.registry
            .get_or_start(&(source.name.clone(), lane.clone()), |serial| {
                let (source, site, domain, all) =
                    (source.clone(), site.clone(), domain.clone(), self.clone());
                let destination = Destination {
                    hosts: hosts.clone(),
                    mta_sts: mta_sts.clone(),
                };
                let lane = Lane {
                    name: lane,
                    alone: alone.then(|| domain.clone()),
                };
                ReadyQueueActor::start_in_arbiter(&Arbiter::current(), move |_| {
                    ReadyQueueActor::new(source, site, lane, destination, domain, all, serial)
                })
            })
    }

    /// The running ready queues of (source, site): the shared one and the lanes of domains
    /// that go alone.
    pub fn existing(&self, source: &str, site: &str) -> Vec<Addr<ReadyQueueActor>> {
        self.registry
            .filtered(|(s, lane)| &**s == source && on_site(lane, site))
    }

    /// Tell every ready queue of `site` (or every one) to recompute its settings.
    pub fn reshape(&self, site: Option<&str>) {
        for addr in self
            .registry
            .filtered(|(_, lane)| site.is_none_or(|site| on_site(lane, site)))
        {
            addr.do_send(Reshape);
        }
    }
}

/// A ready queue's lane: its registry name and metrics `site` label, and the one domain it
/// carries when that domain goes alone.
struct Lane {
    name: Arc<str>,
    alone: Option<Arc<str>>,
}

/// Where a ready queue's mail goes, as the latest offer said.
struct Destination {
    /// The site's hosts.
    hosts: Arc<[MxHost]>,
    /// The domain's MTA-STS policy (a lane of its own).
    mta_sts: Option<Arc<StsPolicy>>,
}

/// The ready queue for one (source, site) — or (source, site, domain) for a domain alone.
pub struct ReadyQueueActor {
    source: Arc<EgressSource>,
    site: Arc<str>,
    lane: Lane,
    destination: Destination,
    /// The hosts its connections may try, or why none may (`prohibited_hosts`,
    /// `skip_hosts`, an `enforce` MTA-STS policy listing none of them).
    targets: Result<Arc<[MxHost]>, Reply>,
    /// The MTA-STS policy its connections go under, when `enable_mta_sts` applies one.
    mta_sts: Option<Arc<StsPolicy>>,
    /// `targets` is an error because that policy lists none of the hosts.
    targets_refused_by_mta_sts: bool,
    /// The domain whose mail created it: shaping is looked up through it.
    domain: Arc<str>,
    /// Options from the shaping files; overrides are layered on top.
    base: ShapingOptions,
    settings: PathSettings,
    providers: Vec<Arc<ProviderGate>>,
    message_limiter: Option<Limiter>,
    connection_limiter: Option<Limiter>,
    /// A timer to hand out or connect again once a limit allows.
    pace: Option<SpawnHandle>,
    /// Cluster leases held by its open connections (one each, while Redis answers).
    leases: Vec<LeaseId>,
    /// A lease granted for the next connection.
    spare_lease: Option<LeaseId>,
    /// The cluster-wide connection limits its connections take leases on (none without a
    /// cluster, or when they are all `local:`).
    lease_limits: Vec<(String, usize)>,
    /// A lease has been asked for.
    leasing: bool,
    /// Since when Redis has not answered a lease: connections go by the node's share of
    /// the cluster limits meanwhile.
    alone: Option<Instant>,
    /// The source is suspended towards this site.
    suspended: bool,
    /// Connection attempts that failed in a row.
    failures: usize,
    all: Arc<ReadyQueues>,
    serial: u64,
    /// How its connections reach it (set when it starts).
    line: Option<ReadyLine>,
    ready: VecDeque<ReadyItem>,
    waiting: VecDeque<oneshot::Sender<Batch>>,
    connections: usize,
    /// Connections started that have not yet asked for their first message.
    starting: usize,
    idle_since: Option<Instant>,
    reaped: bool,
    /// Scheduled queues refused for lack of room, to be called back in order.
    blocked: VecDeque<(Arc<str>, Arc<QueueLine>)>,
    blocked_names: HashSet<Arc<str>>,
    ready_gauge: metrics::Gauge,
    connections_gauge: metrics::Gauge,
}

impl ReadyQueueActor {
    /// A new, empty ready queue.
    fn new(
        source: Arc<EgressSource>,
        site: Arc<str>,
        lane: Lane,
        destination: Destination,
        domain: Arc<str>,
        all: Arc<ReadyQueues>,
        serial: u64,
    ) -> Self {
        let path = all.rules.shaping().path(&domain, &site, &source.name);
        let labels = [
            ("source", source.name.to_string()),
            ("site", lane.name.to_string()),
        ];
        // Every outcome at 0 from the start, so that increase() sees the first one.
        for outcome in crate::record::OUTCOMES {
            metrics::counter!("switchyard_ready_delivery_total", "source" => source.name.to_string(), "site" => site.to_string(), "outcome" => outcome)
                .increment(0);
        }
        let ready_gauge = metrics::gauge!("switchyard_ready_messages", &labels);
        let connections_gauge = metrics::gauge!("switchyard_connections", &labels);
        let providers = path
            .providers
            .iter()
            .map(|p| all.gates.gate(p, &source.name))
            .collect();
        let suspended = all.view.source_suspended(&source.name, &site).is_some();
        let mut q = ReadyQueueActor {
            domain,
            settings: PathSettings::from_options(&path.options),
            base: path.options,
            providers,
            message_limiter: None,
            connection_limiter: None,
            pace: None,
            leases: Vec::new(),
            spare_lease: None,
            lease_limits: Vec::new(),
            leasing: false,
            alone: None,
            suspended,
            failures: 0,
            source,
            site,
            lane,
            targets: Ok(destination.hosts.clone()),
            mta_sts: None,
            targets_refused_by_mta_sts: false,
            destination,
            all,
            serial,
            line: None,
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
            .all
            .rules
            .shaping()
            .path(&self.domain, &self.site, &self.source.name);
        self.base = path.options;
        self.providers = path
            .providers
            .iter()
            .map(|p| self.all.gates.gate(p, &self.source.name))
            .collect();
        let over =
            self.all
                .view
                .overrides_for(&self.source.name, &self.site, self.lane.alone.as_deref());
        let settings = PathSettings::from_options(&self.base.overlay(&over));
        let cluster = self.all.kit.ports.cluster.as_ref();
        let shared = |what: &str| {
            cluster.map(|c| (c, format!("{what}/{}/{}", self.source.name, self.lane.name)))
        };
        self.message_limiter = Limiter::keep_or_new_shared(
            self.message_limiter.take(),
            settings.max_message_rate,
            shared("msg"),
        );
        self.connection_limiter = Limiter::keep_or_new_shared(
            self.connection_limiter.take(),
            settings.max_connection_rate,
            shared("connect"),
        );
        if settings != self.settings {
            tracing::info!(source = %self.source.name, site = %self.site, ?settings, "ready queue reshaped");
        }
        self.settings = settings;
        self.lease_limits = self.leased_limits();
        self.screen_hosts();
    }

    /// Work out which of the site's hosts may be tried, and under which MTA-STS policy.
    fn screen_hosts(&mut self) {
        // A policy is the domain's: it applies only in the domain's own lane.
        self.mta_sts = self.destination.mta_sts.clone().filter(|p| {
            p.mode != StsMode::None && self.settings.enable_mta_sts && self.lane.alone.is_some()
        });
        self.targets_refused_by_mta_sts = false;
        self.targets = self
            .settings
            .screen_hosts(&self.destination.hosts)
            .and_then(|hosts| match &self.mta_sts {
                Some(policy) if policy.mode == StsMode::Enforce => {
                    let allowed = enforce_mx(policy, &self.domain, &hosts);
                    self.targets_refused_by_mta_sts = allowed.is_err();
                    allowed
                }
                _ => Ok(hosts),
            });
        if let Err(reply) = &self.targets {
            tracing::warn!(source = %self.source.name, site = %self.site, reply = %reply.match_text(), "no host of this site may be connected to");
        }
    }

    /// Settle every waiting message with `reply` (a failure that is the site's, not theirs).
    fn fail_all(&mut self, reply: &Reply) {
        let applied = self.mta_sts.as_ref().map(|p| Arc::new(p.applied(None)));
        for item in self.ready.drain(..) {
            item.to.outcome.do_send(DeliveryOutcome {
                key: item.message.key,
                reply: reply.clone(),
                peer: None,
                source: self.source.name.clone(),
                site: self.site.clone(),
                sender: None,
                size: None,
                bounce_class: None,
                mta_sts: applied.clone(),
            });
        }
        self.wake_blocked();
        self.publish();
    }

    /// May one more message go out now? Otherwise how long until it may.
    fn message_permit(&self) -> Result<(), Duration> {
        for gate in &self.providers {
            gate.message_permit()?;
        }
        match &self.message_limiter {
            Some(l) => l.check(),
            None => Ok(()),
        }
    }

    /// The nodes of the cluster while Redis does not answer leases (each node then takes
    /// its share of a shared connection limit).
    fn alone_in(&self) -> Option<usize> {
        self.alone?;
        self.all.kit.ports.cluster.as_ref().map(|c| c.nodes())
    }

    /// Most connections this ready queue opens now.
    fn connection_cap(&self) -> usize {
        self.settings
            .connection_limit_as_set()
            .mine(self.alone_in())
    }

    /// The cluster-wide connection limits a new connection counts against, for
    /// `lease_limits` (recomputed when the settings are).
    fn leased_limits(&self) -> Vec<(String, usize)> {
        if self.all.kit.ports.cluster.is_none() {
            return Vec::new();
        }
        let own = (!self.settings.connection_limit_local).then(|| {
            (
                format!("conn/{}/{}", self.source.name, self.lane.name),
                self.settings.connection_limit,
            )
        });
        own.into_iter()
            .chain(self.providers.iter().filter_map(|g| g.lease_limit()))
            .collect()
    }

    /// A lease for one more connection: `Ok(None)` when none is needed (no cluster limit,
    /// or Redis does not answer), `Err` while one is being asked for (its answer comes
    /// back as [`LeaseAnswer`]). Connections opened without one while Redis did not answer
    /// get theirs first, before any new connection.
    fn take_lease(&mut self, ctx: &mut Context<Self>) -> Result<Option<LeaseId>, ()> {
        if self.lease_limits.is_empty() {
            return Ok(None);
        }
        if self.leases.len() >= self.connections {
            if let Some(lease) = self.spare_lease.take() {
                return Ok(Some(lease));
            }
        }
        self.ask_lease(ctx);
        if self.alone.is_some() {
            Ok(None)
        } else {
            Err(())
        }
    }

    /// Ask the cluster for a lease, unless one is on its way or Redis did not answer a
    /// moment ago.
    fn ask_lease(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.all.kit.ports.cluster.clone() else {
            return;
        };
        if self.leasing || self.alone.is_some_and(|t| t.elapsed() < ALONE_FOR) {
            return;
        }
        self.leasing = true;
        let me = ctx.address();
        let back = cluster.clone();
        cluster.lease(
            self.lease_limits.clone(),
            Box::new(move |answer| {
                // A ready queue gone meanwhile gives the lease straight back.
                if let Err(
                    SendError::Full(LeaseAnswer(Ok(Some(lease))))
                    | SendError::Closed(LeaseAnswer(Ok(Some(lease)))),
                ) = me.try_send(LeaseAnswer(answer))
                {
                    back.release(lease);
                }
            }),
        );
    }

    /// Give back a lease no connection took.
    fn release_spare(&mut self) {
        if let Some(lease) = self.spare_lease.take() {
            self.release(lease);
        }
    }

    fn release(&self, lease: LeaseId) {
        if let Some(c) = &self.all.kit.ports.cluster {
            c.release(lease);
        }
    }

    /// Leases owed: connections opened while Redis did not answer have none; and going
    /// alone, ask again now and then whether Redis answers. (Called from every dispatch,
    /// whether or not a connection may open.)
    fn lease_owed(&mut self, ctx: &mut Context<Self>) {
        if (self.alone.is_some() || self.leases.len() < self.connections)
            && !self.lease_limits.is_empty()
        {
            self.ask_lease(ctx);
        }
    }

    /// May one more connection open now? Otherwise how long until it may.
    fn connection_permit(&self) -> Result<(), Duration> {
        let nodes = self.alone_in();
        if self.providers.iter().any(|g| g.full(nodes)) {
            return Err(PROVIDER_SLOT_RECHECK);
        }
        match &self.connection_limiter {
            Some(l) => l.check(),
            None => Ok(()),
        }
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
        let mut by_queue: HashMap<*const QueueIdentity, (Arc<QueueLine>, Vec<MessageKey>)> =
            HashMap::new();
        for item in self.ready.drain(..) {
            by_queue
                .entry(Arc::as_ptr(&item.queue))
                .or_insert_with(|| (item.to.clone(), Vec::new()))
                .1
                .push(item.message.key);
        }
        for (_, (to, keys)) in by_queue {
            to.back.do_send(BackToSchedule {
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
            room.room.do_send(ReadyRoom);
        }
    }

    /// The next message: the front item and the items right behind it that are other
    /// recipients of the same message (its offer put them side by side).
    fn pop_batch(&mut self) -> Option<Batch> {
        let first = self.ready.pop_front()?;
        let key = first.message.key;
        let id = message_id(&key);
        let mut batch = vec![first];
        while batch.len() < self.settings.max_recipients_per_batch
            && self
                .ready
                .front()
                .is_some_and(|next| message_id(&next.message.key) == id)
        {
            batch.extend(self.ready.pop_front());
        }
        Some(batch)
    }

    /// Hand waiting connections their next message, then open connections while there is
    /// more mail than connections and the limit allows.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.suspended || self.all.draining.load(std::sync::atomic::Ordering::Relaxed) {
            self.waiting.clear();
            self.release_spare();
            return self.publish();
        }
        self.lease_owed(ctx);
        let hosts = match &self.targets {
            Ok(hosts) => hosts.clone(),
            Err(reply) => {
                let reply = reply.clone();
                self.release_spare();
                if self.targets_refused_by_mta_sts {
                    metrics::counter!("switchyard_mta_sts_failures_total", "reason" => "mx_mismatch")
                        .increment(self.ready.len() as u64);
                }
                self.fail_all(&reply);
                self.idle_since = (self.connections == 0).then(Instant::now);
                return;
            }
        };
        self.waiting.retain(|w| !w.is_closed());
        while !self.ready.is_empty() && !self.waiting.is_empty() {
            if let Err(wait) = self.message_permit() {
                self.pace_after(wait, ctx);
                break;
            }
            let (Some(batch), Some(w)) = (self.pop_batch(), self.waiting.pop_front()) else {
                break;
            };
            if let Err(batch) = w.send(batch) {
                for item in batch.into_iter().rev() {
                    self.ready.push_front(item);
                }
            }
        }
        self.wake_blocked();
        // Each starting connection will take one message: open more only for the rest, and
        // none while the message rate holds messages back.
        while self.connections < self.connection_cap()
            && self.starting < self.ready.len()
            && self.pace.is_none()
        {
            // The lease first: a connection-rate event is not spent on a connection that
            // cannot open.
            let Ok(lease) = self.take_lease(ctx) else {
                break;
            };
            if let Err(wait) = self.connection_permit() {
                if lease.is_some() {
                    self.spare_lease = lease;
                }
                self.pace_after(wait, ctx);
                break;
            }
            self.leases.extend(lease);
            self.connections += 1;
            self.starting += 1;
            for gate in &self.providers {
                gate.opened();
            }
            // An `enforce` policy wants verified TLS, whatever `enable_tls` says.
            let enforced = self
                .mta_sts
                .as_ref()
                .is_some_and(|p| p.mode == StsMode::Enforce);
            let target = ConnectTarget {
                source: self.source.clone(),
                hosts: hosts.clone(),
                port: self.settings.smtp_port,
                tls: if enforced {
                    TlsMode::Required
                } else {
                    self.settings.enable_tls
                },
                timeouts: self.settings.timeouts,
                remember_broken_tls: self.settings.remember_broken_tls,
                reconnect_on_failed_handshake: self.settings.reconnect_on_failed_handshake,
            };
            let Some(line) = self.line.clone() else {
                break;
            };
            ConnectionActor {
                ready: line,
                kit: self.all.kit.clone(),
                target,
                site: self.site.clone(),
                max_deliveries: self.settings.max_deliveries_per_connection,
                mta_sts: self.mta_sts.clone(),
            }
            .start();
        }
        if self.ready.is_empty() {
            self.release_spare();
        }
        self.idle_since = (self.ready.is_empty() && self.connections == 0).then(Instant::now);
        self.publish();
    }
}

/// The policy a lane should go under after an offer carrying `offered`, when it is not the
/// one it has (`held`). Several scheduled queues (tenants, campaigns) may offer into one
/// domain's lane, each with the policy it last looked up: the one fetched last wins, and an
/// offer without one (a queue that knows of none yet) drops a policy only once it expired.
fn newer_policy(
    held: &Option<Arc<StsPolicy>>,
    offered: Option<Arc<StsPolicy>>,
) -> Option<Option<Arc<StsPolicy>>> {
    match (held, offered) {
        (Some(h), Some(o)) if Arc::ptr_eq(h, &o) || o.fetched_ms < h.fetched_ms => None,
        (Some(h), None) if h.expires_ms() > now_ms() => None,
        (None, None) => None,
        (_, offered) => Some(offered),
    }
}

/// The hosts an `enforce` policy lets `domain`'s mail go to, in order; none →
/// `451 4.4.4` naming the policy, the hosts and what it lists.
fn enforce_mx(
    policy: &StsPolicy,
    domain: &str,
    hosts: &Arc<[MxHost]>,
) -> Result<Arc<[MxHost]>, Reply> {
    if hosts.iter().all(|h| policy.mx_matches(&h.name)) {
        return Ok(hosts.clone());
    }
    let kept: Vec<MxHost> = hosts
        .iter()
        .filter(|h| policy.mx_matches(&h.name))
        .cloned()
        .collect();
    if !kept.is_empty() {
        return Ok(kept.into());
    }
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    Err(Reply::internal(
        451,
        "4.4.4",
        format!(
            "the MTA-STS policy of {domain} (enforce, id {}) lists none of its MX hosts {} (it lists {})",
            policy.id,
            names.join(", "),
            policy.mx.join(", ")
        ),
    ))
}

impl Actor for ReadyQueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        let me = ctx.address();
        self.line = Some(ReadyLine {
            next: me.clone().recipient(),
            connected: me.clone().recipient(),
            closed: me.recipient(),
        });
        ctx.run_interval(
            crate::registry::gauge_refresh(self.all.reap_after),
            |act, ctx| {
                act.publish();
                act.lease_owed(ctx);
                let idle_long = !act.suspended
                    && act
                        .idle_since
                        .is_some_and(|t| t.elapsed() >= act.all.reap_after);
                if idle_long && !act.reaped {
                    act.reaped = true;
                    let key = (act.source.name.clone(), act.lane.name.clone());
                    act.all.registry.retire(&key, act.serial, 0);
                    ctx.stop();
                }
            },
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.release_spare();
        for lease in std::mem::take(&mut self.leases) {
            self.release(lease);
        }
        self.ready_gauge.set(0.0);
        self.connections_gauge.set(0.0);
        for (_, room) in self.blocked.drain(..) {
            room.room.do_send(ReadyRoom);
        }
    }
}

impl Handler<Offer> for ReadyQueueActor {
    type Result = usize;

    fn handle(&mut self, offer: Offer, ctx: &mut Context<Self>) -> usize {
        if self.reaped {
            // Out of the registry already: the queue asks again and gets a fresh one.
            offer.from.room.do_send(ReadyRoom);
            return 0;
        }
        let policy = newer_policy(&self.destination.mta_sts, offer.mta_sts);
        if !Arc::ptr_eq(&self.destination.hosts, &offer.hosts) || policy.is_some() {
            self.destination.hosts = offer.hosts;
            if let Some(policy) = policy {
                self.destination.mta_sts = policy;
            }
            self.screen_hosts();
        }
        let room = if self.suspended {
            0
        } else {
            self.settings.max_ready.saturating_sub(self.ready.len())
        };
        let taken = offer.items.len().min(room);
        if taken < offer.items.len() && self.blocked_names.insert(offer.queue.clone()) {
            self.blocked.push_back((offer.queue, offer.from));
        }
        for item in offer.items.into_iter().take(taken) {
            crate::test_hooks::hop(&item.message.key, "ready-queue");
            self.ready.push_back(item);
        }
        self.dispatch(ctx);
        taken
    }
}

impl Handler<NextMessage> for ReadyQueueActor {
    type Result = ResponseFuture<Option<Batch>>;

    fn handle(&mut self, ask: NextMessage, ctx: &mut Context<Self>) -> Self::Result {
        if ask.first {
            self.starting = self.starting.saturating_sub(1);
        }
        if self.suspended || self.all.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Box::pin(async { None });
        }
        if !self.ready.is_empty() && self.waiting.is_empty() {
            match self.message_permit() {
                Ok(()) => {
                    let batch = self.pop_batch();
                    self.wake_blocked();
                    self.publish();
                    return Box::pin(async move { batch });
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

impl Handler<ConnectionClosed> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, _: ConnectionClosed, ctx: &mut Context<Self>) {
        self.connections = self.connections.saturating_sub(1);
        // Leases are this queue's, not one connection's: one goes back only when the queue
        // holds more than it has connections (those opened while Redis did not answer
        // hold none).
        if self.leases.len() > self.connections {
            if let Some(lease) = self.leases.pop() {
                self.release(lease);
            }
        }
        for gate in &self.providers {
            gate.closed();
        }
        self.dispatch(ctx);
    }
}

/// The answer to a lease asked for by [`ReadyQueueActor::take_lease`].
struct LeaseAnswer(Result<Option<LeaseId>, Unreachable>);

impl Message for LeaseAnswer {
    type Result = ();
}

impl Handler<LeaseAnswer> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, LeaseAnswer(answer): LeaseAnswer, ctx: &mut Context<Self>) {
        self.leasing = false;
        match answer {
            Ok(granted) => {
                if self.alone.take().is_some() {
                    tracing::info!(source = %self.source.name, site = %self.lane.name, "cluster connection leases answer again");
                }
                match granted {
                    // A connection opened while Redis did not answer takes it, and the
                    // next is asked for; otherwise it is for the next connection.
                    Some(lease) if self.leases.len() < self.connections => {
                        self.leases.push(lease);
                        if self.leases.len() < self.connections {
                            self.ask_lease(ctx);
                        } else {
                            self.dispatch(ctx);
                        }
                    }
                    Some(lease) => {
                        if let Some(old) = self.spare_lease.replace(lease) {
                            self.release(old);
                        }
                        self.dispatch(ctx);
                    }
                    // Every slot is taken in the cluster: look again soon.
                    None => self.pace_after(LEASE_RECHECK, ctx),
                }
            }
            Err(Unreachable) => {
                if self.alone.is_none() {
                    tracing::warn!(source = %self.source.name, site = %self.lane.name, "Redis does not answer for connection leases; going by this node's share of the cluster limits");
                }
                self.alone = Some(Instant::now());
                self.dispatch(ctx);
            }
        }
    }
}

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
        self.fail_all(&reply);
    }
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

impl Handler<SourceSuspension> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, msg: SourceSuspension, ctx: &mut Context<Self>) {
        self.suspended = msg.suspended;
        if msg.suspended {
            self.release_spare();
            // Waiting connections get nothing more and close.
            self.waiting.clear();
            self.hand_back(None);
        } else {
            self.wake_blocked();
            self.dispatch(ctx);
        }
    }
}

impl Handler<Reshape> for ReadyQueueActor {
    type Result = ();

    fn handle(&mut self, _: Reshape, ctx: &mut Context<Self>) {
        self.reshape();
        self.dispatch(ctx);
    }
}

impl Handler<ReadyQueueInfo> for ReadyQueueActor {
    type Result = MessageResult<ReadyQueueInfo>;

    fn handle(&mut self, _: ReadyQueueInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ReadyInfo {
            name: format!("{}->{}", self.source.name, self.lane.name),
            source: self.source.name.to_string(),
            site: self.lane.name.to_string(),
            messages: self.ready.len(),
            connections: self.connections,
            suspended: self.suspended,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(id: &str, fetched_ms: u64, max_age: u64) -> Arc<StsPolicy> {
        let mut p = StsPolicy::parse(
            id,
            &format!("version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: {max_age}\n"),
        )
        .unwrap();
        p.fetched_ms = fetched_ms;
        Arc::new(p)
    }

    #[test]
    fn a_lane_keeps_the_policy_fetched_last_and_drops_one_only_when_it_expired() {
        let now = now_ms();
        let old = policy("1", now - 5_000, 86400);
        let new = policy("2", now - 1_000, 86400);
        let expired = policy("0", now - 10_000, 5);
        // A first policy, a newer one, and the same one again.
        assert_eq!(
            newer_policy(&None, Some(old.clone())),
            Some(Some(old.clone()))
        );
        assert_eq!(
            newer_policy(&Some(old.clone()), Some(new.clone())),
            Some(Some(new.clone()))
        );
        assert_eq!(newer_policy(&Some(new.clone()), Some(new.clone())), None);
        // A queue that looked up earlier, or knows of none, changes nothing...
        assert_eq!(newer_policy(&Some(new.clone()), Some(old)), None);
        assert_eq!(newer_policy(&Some(new), None), None);
        assert_eq!(newer_policy(&None, None), None);
        // ...unless the policy held has expired.
        assert_eq!(newer_policy(&Some(expired), None), Some(None));
    }
}
