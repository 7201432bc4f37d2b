//! The engine: starts the actor system and is the door into it.
//!
//! actix runs on its own thread (the classifier lives there) plus one arbiter per core for
//! tenants, campaigns, scheduled queues, ready queues and connections, handed out round
//! robin. [`Engine::submit`] is how spooled mail (fresh from ingress or recovered at start)
//! enters: it waits on the tenant actor's bounded mailbox, so a flood of injection slows
//! down at the door instead of piling up inside.

use crate::bounce::BounceClassifier;
use crate::classifier::ClassifierActor;
use crate::message::{ForTenant, QueueIdentity, QueuedMessage};
use crate::pool::Pool;
use crate::ports::{EgressSource, Ports, Route};
use crate::ready_queue::ReadyQueueActor;
use crate::schedule::RetryPolicy;
use crate::shaping::Shaping;
use crate::tenant::{EnqueueTenant, TenantActor};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// An idle queue is reaped after this.
    pub reap_after: Duration,
    /// Keep the campaign label on per-campaign series.
    pub campaign_labels: bool,
    /// Worker arbiters (threads).
    pub arbiters: usize,
}

/// (source name, site) of a ready queue.
type ReadyKey = (Arc<str>, Arc<str>);

/// State every actor shares.
pub struct Shared {
    /// Settings.
    pub settings: EngineSettings,
    /// Outside world.
    pub ports: Ports,
    /// Where replies go.
    pub classifier: Addr<ClassifierActor>,
    /// Bounce rules, for failures found without a connection (DNS).
    pub bounces: Arc<BounceClassifier>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    /// Live QueueActors.
    pub scheduled_queues: AtomicUsize,
    /// Live ReadyQueueActors.
    pub live_ready_queues: AtomicUsize,
    ready_queues: Mutex<HashMap<ReadyKey, Addr<ReadyQueueActor>>>,
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
        let settings = self.settings.shaping.settings_for(domain);
        let addr = ReadyQueueActor::start_in_arbiter(&self.arbiter(), move |_| {
            ReadyQueueActor::new(source, site, hosts, settings, shared)
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
    tenants: Mutex<HashMap<Arc<str>, Addr<TenantActor>>>,
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
                    let _ = tx.send((
                        arbiters.iter().map(Arbiter::handle).collect::<Vec<_>>(),
                        classifier,
                    ));
                    arbiters
                });
                system.run().ok();
                drop(arbiters);
            })?;
        let (arbiters, classifier) = rx
            .recv()
            .map_err(|_| std::io::Error::other("the actor system did not start"))?;
        Ok(Engine {
            shared: Arc::new(Shared {
                settings,
                ports,
                classifier,
                bounces,
                arbiters,
                next_arbiter: AtomicUsize::new(0),
                scheduled_queues: AtomicUsize::new(0),
                live_ready_queues: AtomicUsize::new(0),
                ready_queues: Mutex::new(HashMap::new()),
            }),
            tenants: Mutex::new(HashMap::new()),
        })
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
            let addr = self.tenant(&tenant);
            if addr.send(EnqueueTenant { messages }).await.is_err() {
                tracing::error!(%tenant, "tenant actor is gone; its messages wait in the spool for the next start");
            }
        }
    }

    fn tenant(&self, tenant: &Arc<str>) -> Addr<TenantActor> {
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(tenant.clone())
            .or_insert_with(|| {
                let (t, shared) = (tenant.clone(), self.shared.clone());
                let pool = shared.pool_for(tenant);
                TenantActor::start_in_arbiter(&self.shared.arbiter(), move |_| {
                    TenantActor::new(t, shared, pool)
                })
            })
            .clone()
    }

    /// Shared state (for status and tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}
