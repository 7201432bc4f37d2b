//! The engine: starts the actor system and is the door into it.
//!
//! actix runs on its own thread (the classifier and the suspension register live there)
//! plus one arbiter per core for
//! tenants, campaigns, scheduled queues, ready queues and connections, handed out round
//! robin. [`Engine::submit`] is how spooled mail (fresh from ingress or recovered at start)
//! enters: it waits on the tenant actor's bounded mailbox, so a flood of injection slows
//! down at the door instead of piling up inside.

use crate::automation::RuleBook;
use crate::bounce::BounceClassifier;
use crate::classifier::ClassifierActor;
use crate::message::{now_ms, ForTenant, QueueIdentity, QueuedMessage};
use crate::pool::Pool;
use crate::ports::{EgressSource, Ports, Route};
use crate::ready_queue::{ReadyQueueActor, Reshape, SourceSuspension};
use crate::schedule::RetryPolicy;
use crate::shaping::{Rate, Shaping, ShapingOptions};
use crate::suspensions::{Attach, Override, SuspensionsActor};
use crate::tenant::{EnqueueTenant, TenantActor};
use actix::prelude::*;
use governor::DefaultDirectRateLimiter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Everything the engine is configured with.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Pools by name; "default" must exist.
    pub pools: HashMap<String, Arc<Pool>>,
    /// Tenant → pool name, for declared tenants.
    pub tenant_pools: HashMap<String, String>,
    /// Traffic shaping.
    pub shaping: Arc<Shaping>,
    /// Automation rules of the shaping files.
    pub rules: Arc<RuleBook>,
    /// Tenant QoS: `[tenant."x"] max_message_rate`.
    pub tenant_rates: HashMap<String, Rate>,
    /// An idle queue is reaped after this.
    pub reap_after: Duration,
    /// Keep the campaign label on per-campaign series.
    pub campaign_labels: bool,
    /// Worker arbiters (threads).
    pub arbiters: usize,
}

/// (source name, site) of a ready queue.
type ReadyKey = (Arc<str>, Arc<str>);

/// (provider name, source name) of a provider gate.
type ProviderKey = (Arc<str>, Arc<str>);

/// Limits a provider's sites share, per egress source (`provider_connection_limit`,
/// `provider_max_message_rate`).
pub struct ProviderGate {
    /// Connections open now across the provider's sites.
    pub connections: AtomicUsize,
    /// Most connections at once.
    pub connection_limit: Option<usize>,
    /// Messages across the provider's sites.
    pub messages: Option<DefaultDirectRateLimiter>,
}

/// State every actor shares.
pub struct Shared {
    /// Settings.
    pub settings: EngineSettings,
    /// Outside world.
    pub ports: Ports,
    /// Where replies go.
    pub classifier: Addr<ClassifierActor>,
    /// The register of suspensions and overrides.
    pub suspensions: Addr<SuspensionsActor>,
    /// Bounce rules, for failures found without a connection (DNS).
    pub bounces: Arc<BounceClassifier>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    /// Live QueueActors.
    pub scheduled_queues: AtomicUsize,
    /// Live ReadyQueueActors.
    pub live_ready_queues: AtomicUsize,
    ready_queues: Mutex<HashMap<ReadyKey, Addr<ReadyQueueActor>>>,
    tenants: Mutex<HashMap<Arc<str>, Addr<TenantActor>>>,
    /// Suspended (source, site) → until (ms since the epoch).
    source_suspensions: RwLock<HashMap<ReadyKey, u64>>,
    /// Active shaping overrides.
    overrides: RwLock<Vec<Override>>,
    provider_gates: Mutex<HashMap<ProviderKey, Arc<ProviderGate>>>,
    tenant_limiters: HashMap<String, Arc<DefaultDirectRateLimiter>>,
    /// Shaping and rules in force (replaced by a reload).
    current: RwLock<(Arc<Shaping>, Arc<RuleBook>)>,
}

impl Shared {
    /// The next arbiter, round robin.
    pub fn arbiter(&self) -> ArbiterHandle {
        let i = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        self.arbiters[i].clone()
    }

    /// The pool of `tenant`.
    pub fn pool_for(&self, tenant: &str) -> Arc<Pool> {
        let name = self
            .settings
            .tenant_pools
            .get(tenant)
            .map(String::as_str)
            .unwrap_or("default");
        self.settings
            .pools
            .get(name)
            .or_else(|| self.settings.pools.get("default"))
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Pool {
                    name: "default".into(),
                    members: Vec::new(),
                })
            })
    }

    /// The ready queue for (source, route's site), created on demand with the shaping of
    /// `domain`.
    pub fn ready_queue(
        self: &Arc<Self>,
        source: &Arc<EgressSource>,
        route: &Route,
        domain: &str,
    ) -> Addr<ReadyQueueActor> {
        let key = (source.name.clone(), route.site.clone());
        let mut map = self.ready_queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = map.get(&key) {
            if addr.connected() {
                return addr.clone();
            }
        }
        let (source, site, hosts, shared) = (
            source.clone(),
            route.site.clone(),
            route.hosts.clone(),
            self.clone(),
        );
        let domain: Arc<str> = domain.into();
        let addr = ReadyQueueActor::start_in_arbiter(&self.arbiter(), move |_| {
            ReadyQueueActor::new(source, site, hosts, domain, shared)
        });
        map.insert(key, addr.clone());
        addr
    }

    /// A ready queue is stopping: drop it from the registry if it is still the one there.
    pub fn forget_ready_queue(
        &self,
        source: &Arc<str>,
        site: &Arc<str>,
        addr: &Addr<ReadyQueueActor>,
    ) {
        let mut map = self.ready_queues.lock().unwrap_or_else(|e| e.into_inner());
        let key = (source.clone(), site.clone());
        if map.get(&key) == Some(addr) {
            map.remove(&key);
        }
    }

    /// The shaping in force.
    pub fn shaping(&self) -> Arc<Shaping> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The automation rules in force.
    pub fn rules(&self) -> Arc<RuleBook> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Put reloaded shaping and rules in force, and have every ready queue reshape.
    /// Queues, suspensions and overrides are untouched.
    pub fn replace_shaping(&self, shaping: Arc<Shaping>, rules: Arc<RuleBook>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (shaping, rules);
        let map = self.ready_queues.lock().unwrap_or_else(|e| e.into_inner());
        for addr in map.values() {
            addr.do_send(Reshape);
        }
    }

    /// Every running ready queue.
    pub fn ready_queue_list(&self) -> Vec<Addr<ReadyQueueActor>> {
        let map = self.ready_queues.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|a| a.connected()).cloned().collect()
    }

    /// The running ready queue of (source, site), if there is one.
    pub fn existing_ready_queue(&self, source: &str, site: &str) -> Option<Addr<ReadyQueueActor>> {
        let map = self.ready_queues.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(Arc::from(source), Arc::from(site)))
            .filter(|a| a.connected())
            .cloned()
    }

    /// The tenant's actor, created on demand.
    pub fn tenant(self: &Arc<Self>, tenant: &str) -> Addr<TenantActor> {
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = map.get(tenant) {
            return addr.clone();
        }
        let t: Arc<str> = tenant.into();
        let (name, shared) = (t.clone(), self.clone());
        let pool = self.pool_for(tenant);
        let addr = TenantActor::start_in_arbiter(&self.arbiter(), move |_| {
            TenantActor::new(name, shared, pool)
        });
        map.insert(t, addr.clone());
        addr
    }

    /// Suspend `source` towards `site` until `until` (ms since the epoch), or lift it
    /// (`None`), and tell its ready queue.
    pub fn suspend_source(&self, source: &str, site: &str, until: Option<u64>) {
        let key: ReadyKey = (source.into(), site.into());
        {
            let mut map = self
                .source_suspensions
                .write()
                .unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) => map.insert(key, t),
                None => map.remove(&key),
            };
        }
        if let Some(ready) = self.existing_ready_queue(source, site) {
            ready.do_send(SourceSuspension {
                suspended: until.is_some(),
            });
        }
    }

    /// Until when `source` is suspended towards `site` (ms since the epoch), if it is.
    pub fn source_suspended(&self, source: &str, site: &str) -> Option<u64> {
        let map = self
            .source_suspensions
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return None;
        }
        map.get(&(Arc::from(source), Arc::from(site)))
            .copied()
            .filter(|&t| t > now_ms())
    }

    /// Replace the active overrides, and have the ready queues of `site` reshape.
    pub fn set_overrides(&self, all: Vec<Override>, site: &str) {
        *self.overrides.write().unwrap_or_else(|e| e.into_inner()) = all;
        let map = self.ready_queues.lock().unwrap_or_else(|e| e.into_inner());
        for ((_, s), addr) in map.iter() {
            if &**s == site {
                addr.do_send(Reshape);
            }
        }
    }

    /// The overrides in force for the ready queue of (source, site), layered in order.
    pub fn overrides_for(&self, source: &str, site: &str) -> ShapingOptions {
        let all = self.overrides.read().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        let mut o = ShapingOptions::default();
        for x in all.iter() {
            if x.site == site
                && x.expires_ms > now
                && x.source.as_deref().is_none_or(|s| s == source)
            {
                o = o.overlay(&x.options());
            }
        }
        o
    }

    /// The shared limits of `provider` for `source`.
    pub fn provider_gate(
        &self,
        provider: &crate::shaping::Provider,
        source: &str,
    ) -> Arc<ProviderGate> {
        let mut map = self
            .provider_gates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry((provider.name.clone(), source.into()))
            .or_insert_with(|| {
                Arc::new(ProviderGate {
                    connections: AtomicUsize::new(0),
                    connection_limit: provider.connection_limit,
                    messages: provider
                        .max_message_rate
                        .map(|r| DefaultDirectRateLimiter::direct(r.quota())),
                })
            })
            .clone()
    }

    /// The tenant's QoS limiter, when it has `max_message_rate`.
    pub fn tenant_limiter(&self, tenant: &str) -> Option<Arc<DefaultDirectRateLimiter>> {
        self.tenant_limiters.get(tenant).cloned()
    }

    /// Count a QueueActor starting (+1) or stopping (-1) in `switchyard_scheduled_queues`.
    pub fn count_scheduled_queue(&self, delta: isize) {
        let n = add(&self.scheduled_queues, delta);
        metrics::gauge!("switchyard_scheduled_queues").set(n as f64);
    }

    /// Count a ReadyQueueActor starting (+1) or stopping (-1) in `switchyard_ready_queues`.
    pub fn count_ready_queue(&self, delta: isize) {
        let n = add(&self.live_ready_queues, delta);
        metrics::gauge!("switchyard_ready_queues").set(n as f64);
    }
}

fn add(counter: &AtomicUsize, delta: isize) -> usize {
    if delta >= 0 {
        counter.fetch_add(delta as usize, Ordering::Relaxed) + delta as usize
    } else {
        counter
            .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed)
            .saturating_sub(delta.unsigned_abs())
    }
}

/// How often a live actor republishes its gauges (they vanish after ten idle minutes).
pub fn gauge_refresh(reap_after: Duration) -> Duration {
    (reap_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(60))
}

/// One message for [`Engine::submit`].
#[derive(Debug, Clone)]
pub struct Submission {
    /// Its scheduled queue.
    pub queue: QueueIdentity,
    /// The message.
    pub message: QueuedMessage,
}

/// Handle on the running actor system.
pub struct Engine {
    shared: Arc<Shared>,
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
        let bounces = Arc::new(bounces);
        let for_classifier = bounces.clone();
        std::thread::Builder::new()
            .name("actors".into())
            .spawn(move || {
                let system = System::new();
                let arbiters = system.block_on(async move {
                    let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
                    let classifier = ClassifierActor::new(for_classifier).start();
                    let suspensions = SuspensionsActor::default().start();
                    let _ = tx.send((
                        arbiters.iter().map(Arbiter::handle).collect::<Vec<_>>(),
                        classifier,
                        suspensions,
                    ));
                    arbiters
                });
                system.run().ok();
                drop(arbiters);
            })?;
        let (arbiters, classifier, suspensions) = rx
            .recv()
            .map_err(|_| std::io::Error::other("the actor system did not start"))?;
        let tenant_limiters = settings
            .tenant_rates
            .iter()
            .map(|(t, r)| {
                (
                    t.clone(),
                    Arc::new(DefaultDirectRateLimiter::direct(r.quota())),
                )
            })
            .collect();
        let current = RwLock::new((settings.shaping.clone(), settings.rules.clone()));
        let shared = Arc::new(Shared {
            current,
            settings,
            ports,
            classifier: classifier.clone(),
            suspensions: suspensions.clone(),
            bounces,
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            scheduled_queues: AtomicUsize::new(0),
            live_ready_queues: AtomicUsize::new(0),
            ready_queues: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
            source_suspensions: RwLock::new(HashMap::new()),
            overrides: RwLock::new(Vec::new()),
            provider_gates: Mutex::new(HashMap::new()),
            tenant_limiters,
        });
        // Mailboxes keep order: these arrive before anything else is sent to the two.
        classifier.do_send(crate::classifier::Attach(shared.clone()));
        suspensions.do_send(Attach(shared.clone()));
        Ok(Engine { shared })
    }

    /// Hand spooled messages to their tenants. Waits while a tenant's mailbox is full.
    pub async fn submit(&self, batch: Vec<Submission>) {
        let mut by_tenant: HashMap<Arc<str>, Vec<ForTenant>> = HashMap::new();
        for s in batch {
            by_tenant.entry(s.queue.tenant.clone()).or_default().push((
                s.queue.campaign,
                s.queue.domain,
                s.message,
            ));
        }
        for (tenant, messages) in by_tenant {
            let addr = self.shared.tenant(&tenant);
            if addr.send(EnqueueTenant { messages }).await.is_err() {
                tracing::error!(%tenant, "tenant actor is gone; its messages wait in the spool for the next start");
            }
        }
    }

    /// Every live scheduled queue and ready queue, for the admin API.
    pub async fn queues(
        &self,
    ) -> (
        Vec<crate::queue::ScheduledInfo>,
        Vec<crate::ready_queue::ReadyInfo>,
    ) {
        let asks = self
            .tenant_actors()
            .iter()
            .map(|t| t.send(crate::queue::QueueInfo))
            .collect();
        let scheduled = crate::queue::gather_infos(asks).await;
        let ready = futures::future::join_all(
            self.shared
                .ready_queue_list()
                .iter()
                .map(|r| r.send(crate::ready_queue::ReadyQueueInfo)),
        )
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
        (scheduled, ready)
    }

    /// Bounce queued mail with AdminBounce records: one tenant's (or every tenant's),
    /// optionally one campaign's and one domain's. Returns how many recipients.
    pub async fn bounce(&self, tenant: Option<&str>, bounce: crate::tenant::AdminBounce) -> usize {
        let tenants = match tenant {
            Some(t) => vec![self.shared.tenant(t)],
            None => self.tenant_actors(),
        };
        let asks = tenants.iter().map(|t| t.send(bounce.clone())).collect();
        crate::queue::sum_counts(asks).await
    }

    fn tenant_actors(&self) -> Vec<Addr<TenantActor>> {
        let map = self
            .shared
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// Shared state (for status and tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}
