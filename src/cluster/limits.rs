//! Limits shared by the nodes: the actors' [`ClusterPort`] over Redis.
//!
//! Each is one Lua script, so it is atomic in Redis, and each reads Redis's own `TIME`, so
//! no node's clock matters:
//!
//! - a rate (`<prefix>:rate:<key>`) is a GCRA whose theoretical arrival time is kept in
//!   microseconds — the same burst meaning as the node's own limiter (`max_burst` events at
//!   once, then one every period / N), at sub-second resolution;
//! - a connection limit (`<prefix>:lease:<key>`) is a sorted set of leases scored by when
//!   they expire; a lease is taken on every limit a connection counts against at once, or
//!   on none. This node renews its leases every third of `lease_ttl`, gives each back when
//!   its connection closes, and a dead node's leases expire by themselves;
//! - a threshold window (`<prefix>:threshold:<key>`) is a sorted set of match times.

use super::Cluster;
use redis::Script;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_actors::cluster::{Answer, ClusterPort, LeaseId, PolicyChange, Taken, Unreachable};

/// Take up to ARGV[3] events from the GCRA of KEYS[1] (one every ARGV[1] µs, ARGV[2] at
/// once): {granted, 0} or {0, µs to wait}.
static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local allowance = interval * (tonumber(ARGV[2]) - 1)
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local granted = 0
while granted < want and tat - now <= allowance do
  tat = tat + interval
  granted = granted + 1
end
if granted > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  return {granted, 0}
end
return {0, tat - now - allowance}
"#,
    )
});

/// Lease ARGV[2] on every set of KEYS (at most ARGV[2 + i] in KEYS[i]) for ARGV[1] ms, all
/// or none: 1 when granted.
static LEASE_SCRIPT: LazyLock<Script> = script_now_ms!(
    r#"
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i + 2]) then return 0 end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return 1
"#
);

/// Renew lease ARGV[2i] in KEYS[i] (at most ARGV[2i + 1] there) for ARGV[1] ms; one that
/// Redis lost (restarted, or expired while it did not answer) is taken again if there is
/// room. Returns how many could not be.
static RENEW_SCRIPT: LazyLock<Script> = script_now_ms!(
    r#"
local ttl = tonumber(ARGV[1])
local lost = 0
for i = 1, #KEYS do
  local member = ARGV[2 * i]
  if redis.call('ZSCORE', KEYS[i], member) then
    redis.call('ZADD', KEYS[i], 'XX', now + ttl, member)
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[2 * i + 1]) then
      redis.call('ZADD', KEYS[i], now + ttl, member)
    else
      lost = lost + 1
    end
  end
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return lost
"#
);

/// Count match ARGV[3] in the window KEYS[1] of ARGV[1] ms: 1 when it makes ARGV[2] (the
/// window then starts afresh).
static THRESHOLD_SCRIPT: LazyLock<Script> = script_now_ms!(
    r#"
local period = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
redis.call('ZADD', KEYS[1], now, ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('PEXPIRE', KEYS[1], period)
return 0
"#
);

/// Leases renewed per script call.
const RENEW_BATCH: usize = 500;

/// The leases this node holds: lease → the sets it is in, with their limits.
#[derive(Default)]
pub(super) struct Leases {
    next: AtomicU64,
    held: Mutex<HashMap<u64, Vec<(String, usize)>>>,
}

impl Cluster {
    /// A lease's member in the sets: this instance and its number.
    fn member(&self, lease: u64) -> String {
        format!("{}:{lease}", self.instance)
    }

    /// Renew this node's leases every third of `lease_ttl`, for as long as it runs.
    pub(super) fn keep_leases(&self) {
        self.spawn(|this| async move {
            let every = (this.settings.lease_ttl / 3).max(Duration::from_millis(100));
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = this.renew_leases().await {
                    tracing::debug!("cluster: leases not renewed: {e}");
                }
            }
        });
    }

    async fn renew_leases(&self) -> redis::RedisResult<()> {
        let held: Vec<(u64, String, usize)> = {
            let held = self.leases.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .flat_map(|(n, keys)| keys.iter().map(|(k, limit)| (*n, k.clone(), *limit)))
                .collect()
        };
        if held.is_empty() {
            return Ok(());
        }
        let mut c = self.connection().await?;
        let script = &*RENEW_SCRIPT;
        let mut lost = 0;
        for chunk in held.chunks(RENEW_BATCH) {
            let mut call = script.prepare_invoke();
            call.arg(self.settings.lease_ttl.as_millis() as u64);
            for (n, key, limit) in chunk {
                call.key(key).arg(self.member(*n)).arg(*limit);
            }
            lost += call.invoke_async::<i64>(&mut c).await?;
        }
        if lost > 0 {
            tracing::warn!(lost, "cluster: connection leases lost in Redis and taken by other nodes since; those connections count over the cluster's limit until they close");
        }
        // A lease given back while this renewal ran may have been put back: out again.
        let gone: Vec<(u64, String)> = {
            let now = self.leases.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .filter(|(n, _, _)| !now.contains_key(n))
                .map(|(n, k, _)| (*n, k.clone()))
                .collect()
        };
        self.remove_members(&gone).await
    }

    async fn take_rate(
        &self,
        key: &str,
        interval: Duration,
        burst: u64,
        want: u32,
    ) -> redis::RedisResult<Taken> {
        let mut c = self.connection().await?;
        let (granted, wait_us): (u32, u64) = GCRA_SCRIPT
            .key(self.key(&format!("rate:{key}")))
            .arg(interval.as_micros().max(1) as u64)
            .arg(burst.max(1))
            .arg(want.max(1))
            .invoke_async(&mut c)
            .await?;
        Ok(Taken {
            granted,
            wait: Duration::from_micros(wait_us),
        })
    }

    async fn take_lease(&self, limits: &[(String, usize)]) -> redis::RedisResult<Option<LeaseId>> {
        let mut c = self.connection().await?;
        let n = self.leases.next.fetch_add(1, Ordering::Relaxed);
        let keys: Vec<(String, usize)> = limits
            .iter()
            .map(|(k, limit)| (self.key(&format!("lease:{k}")), *limit))
            .collect();
        let script = &*LEASE_SCRIPT;
        let mut call = script.prepare_invoke();
        call.arg(self.settings.lease_ttl.as_millis() as u64)
            .arg(self.member(n));
        for (key, limit) in &keys {
            call.key(key).arg(*limit);
        }
        let granted: i64 = call.invoke_async(&mut c).await?;
        if granted != 1 {
            return Ok(None);
        }
        self.leases
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, keys);
        Ok(Some(LeaseId(n)))
    }

    /// Take `leases` out of those this node holds, and out of Redis in one round trip.
    async fn give_back(&self, leases: impl IntoIterator<Item = u64>) -> redis::RedisResult<()> {
        let members: Vec<(u64, String)> = {
            let mut held = self.leases.held.lock().unwrap_or_else(|e| e.into_inner());
            leases
                .into_iter()
                .filter_map(|n| held.remove(&n).map(|keys| (n, keys)))
                .flat_map(|(n, keys)| keys.into_iter().map(move |(key, _)| (n, key)))
                .collect()
        };
        self.remove_members(&members).await
    }

    /// Remove lease `n` from set `key`, for each pair.
    async fn remove_members(&self, members: &[(u64, String)]) -> redis::RedisResult<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut c = self.connection().await?;
        let mut pipe = redis::pipe();
        for (n, key) in members {
            pipe.cmd("ZREM").arg(key).arg(self.member(*n)).ignore();
        }
        pipe.query_async(&mut c).await
    }

    /// Give every lease back (shutdown).
    pub(super) async fn give_back_all(&self) {
        let all: Vec<u64> = {
            let held = self.leases.held.lock().unwrap_or_else(|e| e.into_inner());
            held.keys().copied().collect()
        };
        let _ = self.give_back(all).await;
    }

    async fn count(&self, key: &str, count: u32, period: Duration) -> redis::RedisResult<bool> {
        let mut c = self.connection().await?;
        let fired: i64 = THRESHOLD_SCRIPT
            .key(self.key(&format!("threshold:{key}")))
            .arg(period.as_millis() as u64)
            .arg(count)
            .arg(uuid::Uuid::now_v7().to_string())
            .invoke_async(&mut c)
            .await?;
        Ok(fired == 1)
    }
}

/// An answer promised to an actor: given once, and [`Unreachable`] if the task carrying it
/// ends without giving it (the runtime shutting down), so no asker waits for ever.
struct Promise<T: 'static>(Option<Answer<Result<T, Unreachable>>>);

impl<T> Promise<T> {
    fn keep(mut self, result: Result<T, Unreachable>) {
        if let Some(answer) = self.0.take() {
            answer(result);
        }
    }
}

impl<T> Drop for Promise<T> {
    fn drop(&mut self) {
        if let Some(answer) = self.0.take() {
            answer(Err(Unreachable));
        }
    }
}

impl Cluster {
    /// Run `work` against Redis on the daemon's runtime and give its result to `answer`:
    /// [`Unreachable`] when Redis did not answer (logged at debug: the askers say it once).
    fn ask<T, F>(
        &self,
        what: &'static str,
        answer: Answer<Result<T, Unreachable>>,
        work: impl FnOnce(Arc<Cluster>) -> F,
    ) where
        T: Send + 'static,
        F: std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let answer = Promise(Some(answer));
        self.spawn(|this| {
            let work = work(this);
            async move {
                let result = work.await.map_err(|e| {
                    tracing::debug!("cluster: {what}: {e}");
                    Unreachable
                });
                answer.keep(result);
            }
        });
    }
}

impl ClusterPort for Cluster {
    fn node(&self) -> &str {
        &self.settings.node
    }

    fn share(&self, changes: Vec<PolicyChange>) {
        self.spawn(|this| async move {
            for change in changes {
                this.share_change(change).await;
            }
        });
    }

    fn take(
        &self,
        key: String,
        interval: Duration,
        burst: u64,
        want: u32,
        answer: Answer<Result<Taken, Unreachable>>,
    ) {
        self.ask("rate", answer, |this| async move {
            this.take_rate(&key, interval, burst, want).await
        });
    }

    fn lease(
        &self,
        limits: Vec<(String, usize)>,
        answer: Answer<Result<Option<LeaseId>, Unreachable>>,
    ) {
        self.ask("lease", answer, |this| async move {
            this.take_lease(&limits).await
        });
    }

    fn release(&self, lease: LeaseId) {
        self.spawn(|this| async move {
            if let Err(e) = this.give_back([lease.0]).await {
                // Not given back: it expires by itself within lease_ttl.
                tracing::debug!("cluster: lease not given back: {e}");
            }
        });
    }

    fn count_match(
        &self,
        key: String,
        count: u32,
        period: Duration,
        answer: Answer<Result<bool, Unreachable>>,
    ) {
        self.ask("threshold", answer, |this| async move {
            this.count(&key, count, period).await
        });
    }

    fn nodes(&self) -> usize {
        self.last_nodes.load(Ordering::Relaxed).max(1)
    }
}
