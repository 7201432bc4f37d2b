//! The cluster: several switchyard nodes sharing one Redis (`[cluster]`), and no other
//! daemon.
//!
//! - Membership (here). Each node claims its name in Redis (`<prefix>:node:<name>`,
//!   holding a random instance id, expiring unless renewed) and, every second, renews the
//!   claim and stamps its heartbeat — with Redis's own `TIME`, so no node's clock matters —
//!   into the hash `<prefix>:nodes` with its live queues and open connections, in one Lua
//!   script. A node whose name is claimed by another live instance is refused at start. The
//!   nodes heard from in the last 5 s are the cluster (`GET /api/v1/cluster`, `ctl cluster`,
//!   `switchyard_cluster_nodes`); `switchyard_cluster_up` says whether Redis answers. Redis
//!   down (at start or later) never stops a node: it goes on alone, says so, and connects
//!   again by itself.
//! - Shared limits ([`limits`]): the actors' [`ClusterPort`] — GCRA rates, connection
//!   leases and threshold windows, each one Lua script timed by Redis's `TIME`.
//! - Shared policy ([`policy`]): suspensions, throttles, bounce orders and overrides as
//!   keys expiring with them, announced on a channel, reconciled in full on a timer and
//!   whenever Redis comes back.
//!
//! Every call to Redis runs on the daemon's runtime ([`Cluster::spawn`]); none blocks an
//! actor.

/// A Lua script (a `LazyLock<redis::Script>`, hashed once) that begins with `now`: Redis's
/// own `TIME` in ms, so no node's clock matters.
macro_rules! script_now_ms {
    ($body:expr) => {
        std::sync::LazyLock::new(|| {
            redis::Script::new(concat!(
                "local t = redis.call('TIME')\n",
                "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
                $body
            ))
        })
    };
}

mod limits;
mod policy;

pub use switchyard_actors::cluster::ClusterPort;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often a node renews its claim and stamps its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard from for this long is gone (its claim expires then too).
const NODE_TTL: Duration = Duration::from_secs(5);
/// Longest wait for one Redis answer (the client's default is 500 ms).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed first connection, callers are told at once for this long.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Renew the claim on KEYS[1] for instance ARGV[1] (PX ARGV[2]) unless another instance
/// holds it (then -1), and stamp the heartbeat of node ARGV[3] (queues ARGV[4], connections
/// ARGV[5]) into the hash KEYS[2] with Redis's clock; returns that time in ms.
static HEARTBEAT_SCRIPT: LazyLock<Script> = script_now_ms!(
    r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[3] .. ' ' .. now .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
return now
"#
);

/// What `[cluster]` says.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `redis://...` or `rediss://...`.
    pub redis: String,
    /// This node's name.
    pub node: String,
    /// Prefix of every key.
    pub key_prefix: String,
    /// How long a connection lease lives unless renewed.
    pub lease_ttl: Duration,
}

/// One node as the cluster sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeInfo {
    pub node: String,
    /// RFC 3339, by Redis's clock.
    pub last_heartbeat: String,
    pub queues: u64,
    pub connections: u64,
}

/// What a node counts of itself for its heartbeat: (live queues, open connections).
pub type Counts = Arc<dyn Fn() -> futures::future::BoxFuture<'static, (u64, u64)> + Send + Sync>;

/// This node in the cluster.
pub struct Cluster {
    settings: Settings,
    instance: String,
    client: redis::Client,
    /// The connection to Redis, once made (it reconnects by itself after that).
    connection: std::sync::RwLock<Option<ConnectionManager>>,
    /// Held while a first connection is being made, with when the last attempt failed:
    /// other callers are answered at once meanwhile, not queued behind it.
    connecting: tokio::sync::Mutex<Option<std::time::Instant>>,
    up: AtomicBool,
    nodes: Mutex<Vec<NodeInfo>>,
    /// The nodes last seen alive (at least 1).
    last_nodes: AtomicUsize,
    /// The daemon's runtime, where every call to Redis runs.
    runtime: tokio::runtime::Handle,
    /// Itself, for the tasks it spawns.
    me: Weak<Cluster>,
    /// Connection leases held by this node.
    leases: limits::Leases,
    /// Wakes the policy reconciliation (Redis came back, a change could not be written).
    reconcile: tokio::sync::Notify,
}

/// `url` without its password.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let user = if user.is_empty() {
                String::new()
            } else {
                format!("{user}@")
            };
            format!("{scheme}://{user}{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

/// The system's host name (the default node name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".to_string())
}

impl Cluster {
    /// Join: connect, claim the node name (refused while another live node holds it),
    /// and start the heartbeat. Redis unreachable now is no error: the node starts alone.
    pub async fn join(settings: Settings, counts: Counts) -> anyhow::Result<Arc<Cluster>> {
        let client = redis::Client::open(settings.redis.as_str())
            .map_err(|e| anyhow::anyhow!("[cluster] redis: {e}"))?;
        let cluster = Arc::new_cyclic(|me| Cluster {
            instance: uuid::Uuid::now_v7().to_string(),
            settings,
            client,
            connection: std::sync::RwLock::new(None),
            connecting: tokio::sync::Mutex::new(None),
            up: AtomicBool::new(false),
            nodes: Mutex::new(Vec::new()),
            last_nodes: AtomicUsize::new(1),
            runtime: tokio::runtime::Handle::current(),
            me: me.clone(),
            leases: limits::Leases::default(),
            reconcile: tokio::sync::Notify::new(),
        });
        match cluster.beat(counts().await).await {
            Ok(true) => {}
            Ok(false) => anyhow::bail!(
                "[cluster] node name {:?} is held by another live node (its heartbeat is in Redis at {}); give this node another `node`",
                cluster.settings.node,
                shown_url(&cluster.settings.redis)
            ),
            Err(e) => tracing::warn!(
                redis = %shown_url(&cluster.settings.redis),
                "Redis does not answer ({e}); this node starts alone and keeps trying"
            ),
        }
        cluster.keep_leases();
        let this = cluster.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            // A beat that waited for Redis is not made up for by a burst of beats.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match this.beat(counts().await).await {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(
                        node = %this.settings.node,
                        "another live node now holds this node's name in Redis; give one of them another `node`"
                    ),
                    Err(e) => tracing::debug!("cluster heartbeat failed: {e}"),
                }
            }
        });
        Ok(cluster)
    }

    /// The connection, made if there is none yet. While one caller makes it (or for a
    /// moment after that failed) the others get an error at once: a node without Redis
    /// goes on alone rather than waiting in line.
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let made = || {
            self.connection
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        };
        if let Some(c) = made() {
            return Ok(c);
        }
        let not_now = |why: &'static str| redis::RedisError::from((redis::ErrorKind::Io, why));
        let Ok(mut failed) = self.connecting.try_lock() else {
            return Err(not_now("connecting to Redis"));
        };
        if let Some(c) = made() {
            return Ok(c);
        }
        if failed.is_some_and(|t| t.elapsed() < RECONNECT_PAUSE) {
            return Err(not_now("Redis did not answer a moment ago"));
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1);
        match ConnectionManager::new_with_config(self.client.clone(), config).await {
            Ok(c) => {
                *self.connection.write().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
                *failed = None;
                Ok(c)
            }
            Err(e) => {
                *failed = Some(std::time::Instant::now());
                Err(e)
            }
        }
    }

    /// One heartbeat, then the list of nodes. `Ok(false)`: the name is held by another
    /// instance.
    async fn beat(&self, (queues, connections): (u64, u64)) -> redis::RedisResult<bool> {
        let result = self.beat_once(queues, connections).await;
        let up = result.is_ok();
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(redis = %shown_url(&self.settings.redis), "cluster: Redis answers");
                // Whatever changed on either side meanwhile is reconciled now.
                self.reconcile.notify_one();
            } else {
                tracing::warn!(redis = %shown_url(&self.settings.redis), "cluster: Redis does not answer; going on alone with what this node knows");
            }
        }
        metrics::gauge!("switchyard_cluster_up").set(if up { 1.0 } else { 0.0 });
        if !up {
            metrics::gauge!("switchyard_cluster_nodes").set(1.0);
        }
        result
    }

    async fn beat_once(&self, queues: u64, connections: u64) -> redis::RedisResult<bool> {
        let mut c = self.connection().await?;
        let now: i64 = HEARTBEAT_SCRIPT
            .key(self.node_key())
            .key(self.key("nodes"))
            .arg(&self.instance)
            .arg((NODE_TTL.as_millis()) as u64)
            .arg(&self.settings.node)
            .arg(queues)
            .arg(connections)
            .invoke_async(&mut c)
            .await?;
        if now < 0 {
            return Ok(false);
        }
        let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("nodes"))
            .query_async(&mut c)
            .await?;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (name, value) in all {
            let parts: Vec<&str> = value.split(' ').collect();
            let [_, ms, queues, connections] = parts[..] else {
                gone.push(name);
                continue;
            };
            let ms: i64 = ms.parse().unwrap_or(0);
            if now - ms > NODE_TTL.as_millis() as i64 {
                gone.push(name);
                continue;
            }
            nodes.push(NodeInfo {
                node: name,
                last_heartbeat: switchyard_actors::record::rfc3339_ms(ms.max(0) as u64),
                queues: queues.parse().unwrap_or(0),
                connections: connections.parse().unwrap_or(0),
            });
        }
        if !gone.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("HDEL")
                .arg(self.key("nodes"))
                .arg(&gone)
                .query_async(&mut c)
                .await;
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        self.last_nodes.store(nodes.len().max(1), Ordering::Relaxed);
        metrics::gauge!("switchyard_cluster_nodes").set(nodes.len() as f64);
        *self.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
        Ok(true)
    }

    /// Run `work` on the daemon's runtime (callers may be actors on their own threads).
    fn spawn<F>(&self, work: impl FnOnce(Arc<Cluster>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(this) = self.me.upgrade() {
            self.runtime.spawn(work(this));
        }
    }

    /// Prefix a key.
    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.settings.key_prefix)
    }

    /// This node's heartbeat key.
    fn node_key(&self) -> String {
        self.key(&format!("node:{}", self.settings.node))
    }

    /// Leave (shutdown): give the name and the heartbeat up at once.
    pub async fn leave(&self) {
        self.give_back_all().await;
        let Ok(mut c) = self.connection().await else {
            return;
        };
        let _: redis::RedisResult<()> = redis::pipe()
            .cmd("DEL")
            .arg(self.node_key())
            .cmd("HDEL")
            .arg(self.key("nodes"))
            .arg(&self.settings.node)
            .query_async(&mut c)
            .await;
    }

    /// `GET /api/v1/cluster`.
    pub fn view(&self) -> serde_json::Value {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::json!({
            "node": self.settings.node,
            "redis": {
                "up": self.up.load(Ordering::Relaxed),
                "url": shown_url(&self.settings.redis),
            },
            // What each cluster limit is divided by while Redis does not answer.
            "nodes_last_seen": self.last_nodes.load(Ordering::Relaxed).max(1),
            "nodes": nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn a_shown_url_has_no_password() {
        assert_eq!(
            shown_url("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://10.0.0.5:6379/0"
        );
        assert_eq!(
            shown_url("rediss://mta:s3cret@redis.example.net/2"),
            "rediss://mta@redis.example.net/2"
        );
        assert_eq!(
            shown_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
