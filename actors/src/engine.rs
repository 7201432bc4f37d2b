//! The engine: starts the actor system, and is the door into it for the daemon.
//!
//! actix runs on its own thread (the classifier and the suspension register live there)
//! plus one arbiter per core for tenants, campaigns and scheduled queues, handed out round
//! robin; a ready queue and its connections run on the thread of the scheduled queue that
//! first needed them. [`Engine::submit`] is how spooled mail (fresh from ingress or recovered
//! at start) enters: straight to its scheduled queue through the registry, with a bounded
//! hand-off — a full mailbox makes the injecting client wait instead of memory growing.

use crate::automation::{RuleBook, RulesInForce};
use crate::bounce::BounceClassifier;
use crate::campaign::{CampaignKey, Campaigns, QueueStarted};
use crate::classifier::{ClassifierActor, Effects, RestoreWindows, StoredWindow};
use crate::connection::ConnectionKit;
use crate::limits::{ProviderGates, TenantLimits};
use crate::message::{QueueIdentity, QueuedMessage};
use crate::messages::{
    AdminBounce, Enqueue, ListBounces, ListOverrides, ListSuspensions, ListThrottles, QueueInfo,
    ReadyInfo, ReadyQueueInfo, Restore, Resume, ScheduledInfo, SetBounce, SetThrottle, Suspend,
};
use crate::pool::Pools;
use crate::ports::Ports;
use crate::queue_policy::{PoliciesInForce, QueuePolicies};
use crate::ready_queue::ReadyQueues;
use crate::registry::{Arbiters, Lease, Registry};
use crate::scheduled_queue::{ScheduledQueueActor, ScheduledQueues};
use crate::shaping::{Rate, Shaping};
use crate::suspension::{Override, Suspension, SuspensionView};
use crate::suspension_register::SuspensionRegister;
use crate::tenant::{CampaignStarted, Tenants};
use crate::throttle::Throttle;
use crate::timed_bounce::TimedBounce;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything the engine is configured with.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Queue policy per scope (retry, expiry, pool, pace).
    pub policies: QueuePolicies,
    /// Egress pools and which tenant uses which.
    pub pools: Pools,
    /// Traffic shaping.
    pub shaping: Arc<Shaping>,
    /// Automation rules of the shaping files.
    pub rules: Arc<RuleBook>,
    /// Tenant QoS: `[tenant."x"] max_message_rate`.
    pub tenant_rates: HashMap<String, Rate>,
    /// An idle queue (tenant, campaign) is reaped after this.
    pub reap_after: Duration,
    /// Keep the campaign label on per-campaign series.
    pub campaign_labels: bool,
    /// Worker arbiters (threads).
    pub arbiters: usize,
}

/// One message for [`Engine::submit`].
#[derive(Debug, Clone)]
pub struct Submission {
    /// Its scheduled queue.
    pub queue: QueueIdentity,
    /// The message.
    pub message: QueuedMessage,
}

/// Why an operator's change was not answered as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotDone {
    /// The actor system has stopped (shutdown).
    #[error("engine stopped")]
    Stopped,
    /// It is in force, but the spool could not store it (see the daemon's log): a restart
    /// would not have it.
    #[error("in force now, but the spool could not store it (see the daemon's log)")]
    NotStored,
}

/// Handle on the running actor system.
pub struct Engine {
    tenants: Arc<Tenants>,
    campaigns: Arc<Campaigns>,
    queues: Arc<ScheduledQueues>,
    ready: Arc<ReadyQueues>,
    rules: Arc<RulesInForce>,
    register: Addr<SuspensionRegister>,
    pools: Pools,
    policies: Arc<PoliciesInForce>,
    classifier: Addr<ClassifierActor>,
    spool: Arc<dyn crate::ports::SpoolPort>,
    events: Arc<dyn crate::ports::EventSink>,
}

impl Engine {
    /// Start the actor system on its own threads.
    pub fn start(
        settings: EngineSettings,
        ports: Ports,
        bounces: BounceClassifier,
    ) -> std::io::Result<Engine> {
        let (tx, rx) = std::sync::mpsc::channel();
        let workers = settings.arbiters.max(1);
        std::thread::Builder::new()
            .name("actors".into())
            .spawn(move || {
                let system = System::new();
                let arbiters = system.block_on(async move {
                    let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
                    let handles = arbiters.iter().map(Arbiter::handle).collect();
                    let _ = tx.send(Engine::build(settings, ports, bounces, handles));
                    arbiters
                });
                system.run().ok();
                drop(arbiters);
            })?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the actor system did not start"))
    }

    /// Wire the actors together (on the actor system's thread).
    fn build(
        settings: EngineSettings,
        ports: Ports,
        bounces: BounceClassifier,
        handles: Vec<ArbiterHandle>,
    ) -> Engine {
        let arbiters = Arc::new(Arbiters::new(handles));
        let bounces = Arc::new(bounces);
        let rules = Arc::new(RulesInForce::new(
            settings.shaping.clone(),
            settings.rules.clone(),
        ));
        let view = Arc::new(SuspensionView::new(ports.cluster.clone()));
        let policies = Arc::new(PoliciesInForce::new(settings.policies.clone()));
        // The classifier and the register need what needs them: take their addresses first.
        let classifier_ctx = Context::<ClassifierActor>::new();
        let register_ctx = Context::<SuspensionRegister>::new();
        let ready = Arc::new(ReadyQueues {
            registry: Registry::new("switchyard_ready_queues", 1),
            rules: rules.clone(),
            view: view.clone(),
            gates: ProviderGates::new(ports.cluster.clone()),
            kit: Arc::new(ConnectionKit {
                ports: ports.clone(),
                bounces: bounces.clone(),
                rules: rules.clone(),
                classifier: classifier_ctx.address().recipient(),
            }),
            reap_after: settings.reap_after,
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        let tenants = Arc::new(Tenants {
            registry: Registry::new("switchyard_tenants", 1),
            arbiters: arbiters.clone(),
            reap_after: settings.reap_after,
            view: view.clone(),
        });
        let campaigns = Arc::new(Campaigns {
            registry: Registry::new("switchyard_campaigns", 1),
            arbiters: arbiters.clone(),
            reap_after: settings.reap_after,
        });
        let queues = Arc::new(ScheduledQueues {
            registry: Registry::new(
                "switchyard_scheduled_queues",
                crate::scheduled_queue::ENQUEUE_ROOM,
            ),
            ready: ready.clone(),
            view: view.clone(),
            ports: ports.clone(),
            bounces,
            policies: policies.clone(),
            pools: settings.pools.clone(),
            tenant_limits: TenantLimits::new(&settings.tenant_rates, ports.cluster.as_ref()),
            reap_after: settings.reap_after,
            campaign_labels: settings.campaign_labels,
            arbiters,
        });
        let register = register_ctx.run(SuspensionRegister::new(
            view,
            tenants.clone(),
            ready.clone(),
            ports.clone(),
            crate::registry::gauge_refresh(settings.reap_after),
        ));
        let classifier = classifier_ctx.run(ClassifierActor::new(Effects {
            rules: rules.clone(),
            register: register.clone(),
            tenants: tenants.clone(),
            events: ports.events.clone(),
            spool: ports.spool.clone(),
            cluster: ports.cluster.clone(),
        }));
        Engine {
            spool: ports.spool.clone(),
            events: ports.events.clone(),
            tenants,
            campaigns,
            queues,
            ready,
            rules,
            register,
            pools: settings.pools,
            policies,
            classifier,
        }
    }

    /// Hand spooled messages to their scheduled queues. Waits only while a queue's mailbox
    /// is full.
    pub async fn submit(&self, batch: Vec<Submission>) {
        let mut by_queue: HashMap<QueueIdentity, Vec<QueuedMessage>> = HashMap::new();
        for s in batch {
            by_queue.entry(s.queue).or_default().push(s.message);
        }
        for (id, messages) in by_queue {
            let lease = self.lease_queue(&id);
            // Wait for room among the batches waiting for this queue: the bound on new mail.
            let room = lease.room.acquire_owned().await.ok();
            let enqueue = Enqueue { messages, room };
            // Leased and within its room: the queue cannot stop before this arrives, and
            // the mailbox holds at most ENQUEUE_ROOM of these.
            // (A fresh address never refuses as full: actix queues past the capacity.)
            if lease.addr.try_send(enqueue).is_err() {
                tracing::error!(queue = %id.name(), "scheduled queue is gone; its messages wait in the spool for the next start");
            }
        }
    }

    /// The scheduled queue of `id`, leased for one Enqueue; a new queue is registered with
    /// its campaign (and a new campaign with its tenant).
    fn lease_queue(&self, id: &QueueIdentity) -> Lease<ScheduledQueueActor> {
        let mut campaign = None;
        let lease = self.queues.lease(id, || {
            let key: CampaignKey = (id.tenant.clone(), id.campaign.clone());
            let addr = self.lease_campaign(&key);
            let gone = addr.clone().recipient();
            campaign = Some(addr);
            gone
        });
        if let (Some(serial), Some(campaign)) = (lease.started, campaign) {
            // Leased above: the campaign cannot stop before this arrives. One message per
            // queue started, so this mailbox is bounded by the queues there are.
            campaign.do_send(QueueStarted {
                domain: id.domain.clone(),
                serial,
                addr: lease.addr.clone(),
            });
        }
        lease
    }

    /// The campaign of `key`, leased for one QueueStarted.
    fn lease_campaign(&self, key: &CampaignKey) -> Addr<crate::campaign::CampaignActor> {
        let mut tenant = None;
        let lease = self.campaigns.lease(key, || {
            let addr = self.tenants.lease(&key.0);
            let gone = addr.clone().recipient();
            tenant = Some(addr);
            gone
        });
        if let (Some(serial), Some(tenant)) = (lease.started, tenant) {
            tenant.do_send(CampaignStarted {
                campaign: key.1.clone(),
                serial,
                addr: lease.addr.clone(),
            });
        }
        lease.addr
    }

    /// Every live scheduled queue and ready queue, for the admin API.
    pub async fn queues(&self) -> (Vec<ScheduledInfo>, Vec<ReadyInfo>) {
        let asks = self
            .tenants
            .registry
            .all()
            .iter()
            .map(|t| t.send(QueueInfo))
            .collect();
        let scheduled = crate::messages::gather_infos(asks).await;
        let ready = futures::future::join_all(
            self.ready
                .registry
                .all()
                .iter()
                .map(|r| r.send(ReadyQueueInfo)),
        )
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
        (scheduled, ready)
    }

    /// Bounce queued mail with AdminBounce records: one tenant's (or every tenant's),
    /// optionally one campaign's and one domain's. Returns how many recipients, once their
    /// records are written and their removal from the spool is on disk.
    pub async fn bounce(
        &self,
        tenant: Option<&str>,
        bounce: AdminBounce,
    ) -> Result<usize, NotDone> {
        let tenants = match tenant {
            Some(t) => self
                .tenants
                .registry
                .get(&Arc::from(t))
                .into_iter()
                .collect(),
            None => self.tenants.registry.all(),
        };
        let asks = tenants.iter().map(|t| t.send(bounce.clone())).collect();
        let n = crate::messages::sum_counts(asks).await;
        // Each bounced recipient leaves the spool once its record is written: first the
        // log's barrier (which hands those removals to the spool), then the spool's.
        self.events.sync().await;
        if !self.spool.sync().await {
            return Err(NotDone::NotStored);
        }
        Ok(n)
    }

    /// Suspend (or extend); the suspension as stored.
    pub async fn suspend(&self, s: Suspension) -> Result<Suspension, NotDone> {
        self.durable(self.register.send(Suspend(s))).await
    }

    /// End a suspension, throttle or override now: `true` when the id existed.
    pub async fn resume(&self, id: String) -> Result<bool, NotDone> {
        self.durable(self.register.send(Resume { id })).await
    }

    /// Put changes of the shared policy made on other nodes into effect (newest wins).
    pub fn apply_shared(&self, changes: Vec<crate::cluster::PolicyChange>) {
        if !changes.is_empty() {
            self.register.do_send(crate::messages::ApplyShared(changes));
        }
    }

    /// Everything this node knows of the shared policy, live or deleted.
    pub async fn shared_snapshot(&self) -> Option<Vec<crate::cluster::PolicyChange>> {
        self.register
            .send(crate::messages::SharedSnapshot)
            .await
            .ok()
    }

    /// Every active suspension, oldest first.
    pub async fn suspensions(&self) -> Option<Vec<Suspension>> {
        self.register.send(ListSuspensions).await.ok()
    }

    /// Throttle (or re-throttle); the throttle as stored.
    pub async fn throttle(&self, t: Throttle) -> Result<Throttle, NotDone> {
        self.durable(self.register.send(SetThrottle(t))).await
    }

    /// Every active throttle, oldest first.
    pub async fn throttles(&self) -> Option<Vec<Throttle>> {
        self.register.send(ListThrottles).await.ok()
    }

    /// Start (or extend) a bounce order; the order as stored.
    pub async fn bounce_order(&self, b: TimedBounce) -> Result<TimedBounce, NotDone> {
        self.durable(self.register.send(SetBounce(b))).await
    }

    /// An operator's change, answered only once what it stored is on disk: a change the
    /// API acknowledged survives a crash right after. (The register queues its writes
    /// before it answers, so the barrier queued after the answer comes after them.)
    async fn durable<T>(
        &self,
        change: impl std::future::Future<Output = Result<T, actix::MailboxError>>,
    ) -> Result<T, NotDone> {
        let answer = change.await.map_err(|_| NotDone::Stopped)?;
        if !self.spool.sync().await {
            return Err(NotDone::NotStored);
        }
        Ok(answer)
    }

    /// Every active bounce order, oldest first.
    pub async fn bounce_orders(&self) -> Option<Vec<TimedBounce>> {
        self.register.send(ListBounces).await.ok()
    }

    /// Every active shaping override, oldest first.
    pub async fn overrides(&self) -> Option<Vec<Override>> {
        self.register.send(ListOverrides).await.ok()
    }

    /// Put stored suspensions, throttles and overrides back into effect (at start).
    pub async fn restore(&self, restore: Restore) -> Option<()> {
        self.register.send(restore).await.ok()
    }

    /// Publish the gauges of how many actors are live again (they change only when one
    /// starts or goes, and a gauge not set for a while vanishes from /metrics).
    pub fn publish_gauges(&self) {
        self.tenants.registry.publish();
        self.campaigns.registry.publish();
        self.queues.registry.publish();
        self.ready.registry.publish();
    }

    /// Live actors: (tenants, campaigns, scheduled queues, ready queues).
    pub fn live(&self) -> (usize, usize, usize, usize) {
        (
            self.tenants.registry.len(),
            self.campaigns.registry.len(),
            self.queues.registry.len(),
            self.ready.registry.len(),
        )
    }

    /// Begin shutting down delivery: no new outbound connection, and each open one ends
    /// with QUIT after its current transaction, whose outcome is settled as usual. What
    /// waits stays spooled for the next start.
    pub fn drain(&self) {
        self.ready
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake connections idling for their next message: they get none and QUIT.
        self.ready.reshape(None);
    }

    /// Outbound connections open now (every ready queue's).
    pub async fn open_connections(&self) -> usize {
        self.queues().await.1.iter().map(|r| r.connections).sum()
    }

    /// The route (site and hosts) of `domain`, as the scheduled queues see it.
    pub async fn route(
        &self,
        domain: &str,
    ) -> Result<crate::ports::Route, crate::ports::RouteError> {
        self.queues
            .ports
            .resolver
            .resolve(Arc::from(domain.to_ascii_lowercase()))
            .await
    }

    /// Put stored threshold windows back (at start).
    pub async fn restore_windows(&self, windows: Vec<StoredWindow>) -> Option<()> {
        self.classifier.send(RestoreWindows(windows)).await.ok()
    }

    /// Put reloaded queue policies in force: each scheduled queue takes its own at its next
    /// decision.
    pub fn replace_queue_policies(&self, policies: QueuePolicies) {
        self.policies.replace(policies);
    }

    /// The queue policies in force.
    pub fn queue_policies(&self) -> Arc<QueuePolicies> {
        self.policies.get()
    }

    /// The egress pools.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The shaping in force.
    pub fn shaping(&self) -> Arc<Shaping> {
        self.rules.shaping()
    }

    /// Put reloaded shaping and rules in force, and have every ready queue reshape.
    /// Queues, suspensions and overrides are untouched.
    pub fn replace_shaping(&self, shaping: Arc<Shaping>, rules: Arc<RuleBook>) {
        self.rules.replace(shaping, rules);
        self.ready.reshape(None);
    }
}
