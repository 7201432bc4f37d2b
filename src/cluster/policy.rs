//! The policy the nodes share: suspensions, throttles, bounce orders and overrides.
//!
//! Each object is a key `<prefix>:policy:<id>` holding its latest [`PolicyChange`] (a
//! deletion too, as a tombstone), expiring with the object, and listed in the sorted set
//! `<prefix>:policy-index` by that expiry. A change is written by one Lua script that keeps
//! whichever of the two is newer (`updated_ms`) and, when it wrote, publishes the change
//! on the channel `<prefix>:policy`; every node applies what it hears there at once.
//!
//! Pub/sub loses what is said while a node is disconnected, so each node reconciles in
//! full every [`RECONCILE_EVERY`], whenever its subscription is made again and whenever
//! Redis answers again: it writes everything it knows (Redis keeps the newer of each),
//! then applies everything Redis holds. The newest
//! change of each object wins on both sides.

use super::Cluster;
use futures::StreamExt;
use redis::Script;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;
use switchyard_actors::cluster::PolicyChange;
use switchyard_actors::engine::Engine;

/// How often the policy is reconciled in full.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// How soon a lost subscription is made again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Write the change ARGV[1] (updated ARGV[2], expiring ARGV[3] ms since the epoch) to KEYS[1]
/// unless what is there is as new or it is already over, list it in KEYS[2] and publish it
/// on KEYS[3].
static WRITE_SCRIPT: LazyLock<Script> = script_now_ms!(
    r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and tonumber(c['updated_ms']) and tonumber(c['updated_ms']) >= tonumber(ARGV[2]) then
    return 0
  end
end
local ttl = tonumber(ARGV[3]) - now
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', math.floor(ttl))
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"#
);

/// Every change held in the index KEYS[1] whose object has not expired.
static READ_ALL_SCRIPT: LazyLock<Script> = script_now_ms!(
    r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i = 1, #keys, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #keys) do chunk[#chunk + 1] = keys[j] end
  local values = redis.call('MGET', unpack(chunk))
  for k = 1, #chunk do
    if values[k] then out[#out + 1] = values[k] end
  end
end
return out
"#
);

impl Cluster {
    fn channel(&self) -> String {
        self.key("policy")
    }

    /// Write one change (Redis keeps the newer of it and its own copy).
    async fn write_change(&self, change: &PolicyChange) -> redis::RedisResult<()> {
        let mut c = self.connection().await?;
        let json = serde_json::to_string(change).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "policy change", e.to_string()))
        })?;
        let _written: i64 = WRITE_SCRIPT
            .key(self.key(&format!("policy:{}", change.id)))
            .key(self.key("policy-index"))
            .key(self.channel())
            .arg(json)
            .arg(change.updated_ms)
            .arg(change.expires_ms)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Tell the other nodes of a change made here; if Redis does not answer, the next
    /// reconciliation writes it.
    pub(super) async fn share_change(&self, change: PolicyChange) {
        if let Err(e) = self.write_change(&change).await {
            tracing::debug!(id = %change.id, "cluster: policy change not written now ({e}); it will be at the next reconciliation");
            self.reconcile.notify_one();
        }
    }

    /// Start sharing the policy of `engine`'s suspension register with the other nodes:
    /// the subscription and the reconciliation.
    pub fn share_policy(self: &Arc<Self>, engine: Arc<Engine>) {
        let (this, to) = (self.clone(), engine.clone());
        tokio::spawn(async move { this.listen(to).await });
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.reconcile_once(&engine).await {
                    tracing::debug!("cluster: policy not reconciled: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                    _ = this.reconcile.notified() => {}
                }
            }
        });
    }

    /// Hear the other nodes' changes, subscribing again whenever the subscription is lost.
    async fn listen(&self, engine: Arc<Engine>) {
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(self.channel()).await {
                    Ok(()) => {
                        // What was said while not subscribed is only in Redis.
                        self.reconcile.notify_one();
                        let mut messages = pubsub.on_message();
                        while let Some(m) = messages.next().await {
                            let Ok(payload) = m.get_payload::<String>() else {
                                continue;
                            };
                            match read_change(&payload) {
                                Some(c) if c.node != self.settings.node => {
                                    engine.apply_shared(vec![c])
                                }
                                _ => {}
                            }
                        }
                        tracing::debug!("cluster: policy subscription lost");
                    }
                    Err(e) => tracing::debug!("cluster: cannot subscribe: {e}"),
                },
                Err(e) => tracing::debug!("cluster: no subscription connection: {e}"),
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }

    /// Write everything this node knows (Redis keeps the newer), then apply everything
    /// Redis holds (the register keeps the newer).
    async fn reconcile_once(&self, engine: &Engine) -> redis::RedisResult<()> {
        let Some(mine) = engine.shared_snapshot().await else {
            return Ok(());
        };
        for change in &mine {
            self.write_change(change).await?;
        }
        let mut c = self.connection().await?;
        let all: Vec<String> = READ_ALL_SCRIPT
            .key(self.key("policy-index"))
            .invoke_async(&mut c)
            .await?;
        engine.apply_shared(all.iter().filter_map(|s| read_change(s)).collect());
        Ok(())
    }
}

/// A change as stored or published; `None` for anything else (an empty answer).
fn read_change(json: &str) -> Option<PolicyChange> {
    if json.is_empty() {
        return None;
    }
    serde_json::from_str(json)
        .map_err(|e| tracing::warn!("cluster: a policy change in Redis cannot be read ({e})"))
        .ok()
}
