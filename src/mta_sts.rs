//! MTA-STS policy discovery (RFC 8461): which policy a destination domain has published,
//! fetched, cached and kept across restarts. What a policy then does to delivery is the
//! actors' business (`switchyard_actors::mta_sts`).
//!
//! For a domain, each time its route is looked up:
//! 1. the TXT record `_mta-sts.<domain>` through the configured resolver gives the policy
//!    id (none, or a malformed or ambiguous record: no policy record);
//! 2. a cached policy with that id is used as it is;
//! 3. a new id (or none cached) fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//!    ([`HttpsClient`]: web PKI roots plus `[tls] trust_roots`, no redirects, 64 KiB,
//!    20 s) — one fetch per domain at a time, however many queues ask; a failed fetch keeps
//!    the cached policy (§5.1), is counted, and is not tried again for that id for 5
//!    minutes;
//! 4. with no TXT record (or a failed lookup), a cached policy stays in force until it
//!    expires.
//!
//! Policies are cached for their `max_age` and stored in the spool's `state` keyspace
//! (`mta-sts/<domain>`), so a restart starts with them. Once half its `max_age` has
//! passed, a policy is fetched again in the background — when its domain's route is looked
//! up, or by the daemon's upkeep ([`MtaSts::upkeep`]) for a domain that gets no mail
//! meanwhile — so it is refreshed before it expires; upkeep also forgets expired policies. `switchyard_mta_sts_policies{mode}`
//! counts the cached ones; `switchyard_mta_sts_failures_total{reason}` counts failed
//! lookups (`dns`), fetches (`fetch`) and policies that could not be read
//! (`invalid_policy`).

use crate::https::HttpsClient;
use crate::spool::read_state;
use futures::future::{BoxFuture, FutureExt, Shared};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use switchyard_actors::message::now_ms;
use switchyard_actors::mta_sts::{parse_txt, StsMode, StsPolicy, FAILURE_REASONS};
use switchyard_actors::ports::SpoolPort;

/// The whole fetch: connecting, TLS, the request and the body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest policy body read (RFC 8461 §3.3 suggests 64 KiB).
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// A fetch that failed is not tried again for the same id before this.
const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(300);
/// Most background refreshes one upkeep round starts.
const REFRESHES_PER_UPKEEP: usize = 100;
/// Prefix of the stored policies in the spool's `state` keyspace.
pub const STATE_PREFIX: &str = "mta-sts/";
/// Where a policy is published.
const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// A fetch under way, shared by everyone who waits for it.
type Fetch = Shared<BoxFuture<'static, Option<Arc<StsPolicy>>>>;

/// What is known of one domain.
#[derive(Default)]
struct Entry {
    policy: Option<Arc<StsPolicy>>,
    /// The id whose fetch failed last, and until when it is not tried again.
    failed: Option<(String, Instant)>,
    /// The fetch under way, and the id it is for.
    fetching: Option<(String, Fetch)>,
}

impl Entry {
    fn failed_recently(&self, id: Option<&str>) -> bool {
        self.failed
            .as_ref()
            .is_some_and(|(f, until)| id.is_none_or(|id| id == f) && *until > Instant::now())
    }

    /// Past half its life, with no fetch under way and none failed a moment ago.
    fn refresh_due(&self, now: u64) -> bool {
        self.fetching.is_none()
            && !self.failed_recently(None)
            && self
                .policy
                .as_ref()
                .is_some_and(|p| now.saturating_sub(p.fetched_ms) >= p.max_age.saturating_mul(500))
    }
}

/// Discovers, caches and stores MTA-STS policies.
#[derive(Clone)]
pub struct MtaSts {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: TokioResolver,
    https: HttpsClient,
    entries: Mutex<HashMap<String, Entry>>,
    store: Arc<dyn SpoolPort>,
}

impl MtaSts {
    /// Discovery through `resolver` and `https`, starting with the `stored` state entries
    /// (`mta-sts/<domain>` → policy); expired ones are dropped from `store`.
    pub fn new(
        resolver: TokioResolver,
        https: HttpsClient,
        stored: Vec<(String, Vec<u8>)>,
        store: Arc<dyn SpoolPort>,
    ) -> MtaSts {
        let now = now_ms();
        let mut entries = HashMap::new();
        for (key, domain, p) in read_state::<StsPolicy>(stored, STATE_PREFIX, Some(&*store)) {
            if p.expires_ms() <= now {
                store.delete_state(key);
                continue;
            }
            let entry = Entry {
                policy: Some(Arc::new(p)),
                ..Default::default()
            };
            entries.insert(domain, entry);
        }
        if !entries.is_empty() {
            tracing::info!(
                policies = entries.len(),
                "MTA-STS policies restored from the spool"
            );
        }
        for reason in FAILURE_REASONS {
            metrics::counter!("switchyard_mta_sts_failures_total", "reason" => reason).increment(0);
        }
        let inner = Inner {
            resolver,
            https,
            entries: Mutex::new(entries),
            store,
        };
        inner.publish();
        MtaSts {
            inner: Arc::new(inner),
        }
    }

    /// The policy in force for `domain`, fetching it when its id is new.
    pub async fn policy(&self, domain: &str) -> Option<Arc<StsPolicy>> {
        let inner = &self.inner;
        let txt = inner.txt_id(domain).await;
        let (cached, failed_recently, refresh) = {
            let entries = inner.lock();
            let entry = entries.get(domain);
            let cached = entry.as_ref().and_then(|e| e.policy.clone());
            let id = txt.as_ref().ok().and_then(|id| id.as_deref());
            (
                cached.filter(|p| p.expires_ms() > now_ms()),
                entry.as_ref().is_some_and(|e| e.failed_recently(id)),
                entry.is_some_and(|e| e.refresh_due(now_ms())),
            )
        };
        let id = match txt {
            Ok(Some(id)) => id,
            Ok(None) => return cached,
            Err(e) => {
                metrics::counter!("switchyard_mta_sts_failures_total", "reason" => "dns")
                    .increment(1);
                tracing::debug!(domain, "MTA-STS TXT lookup failed: {e}");
                return cached;
            }
        };
        if let Some(policy) = cached.as_ref().filter(|p| p.id == id) {
            if refresh {
                // In the background: mail goes on under the cached policy meanwhile.
                drop(inner.fetch(domain, &id));
            }
            return Some(policy.clone());
        }
        if failed_recently {
            return cached;
        }
        inner.fetch(domain, &id).await.or(cached)
    }

    /// Forget expired policies (from the spool too) and failures past their back-off, fetch
    /// again the policies past half their life (a few at a time), and publish
    /// `switchyard_mta_sts_policies` again (gauges not set for a while leave /metrics).
    /// Called now and then by the daemon's upkeep.
    pub fn upkeep(&self) {
        let inner = &self.inner;
        let now = now_ms();
        let mut due = Vec::new();
        {
            let mut entries = inner.lock();
            entries.retain(|domain, entry| {
                if entry.policy.as_ref().is_some_and(|p| p.expires_ms() <= now) {
                    entry.policy = None;
                    inner.store.delete_state(format!("{STATE_PREFIX}{domain}"));
                }
                if !entry.failed_recently(None) {
                    entry.failed = None;
                }
                if entry.refresh_due(now) && due.len() < REFRESHES_PER_UPKEEP {
                    due.push(domain.clone());
                }
                entry.policy.is_some() || entry.failed.is_some() || entry.fetching.is_some()
            });
        }
        inner.publish();
        for domain in due {
            let this = self.clone();
            tokio::spawn(async move {
                // The same steps as for mail: the TXT record, then a fetch (its refresh).
                this.policy(&domain).await;
            });
        }
    }
}

/// Clears an entry's fetch under way when the fetch ends, however it ends.
struct FetchDone {
    inner: Arc<Inner>,
    domain: String,
    id: String,
}

impl Drop for FetchDone {
    fn drop(&mut self) {
        let mut entries = self.inner.lock();
        if let Some(entry) = entries.get_mut(&self.domain) {
            if entry
                .fetching
                .as_ref()
                .is_some_and(|(id, _)| *id == self.id)
            {
                entry.fetching = None;
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetch `domain`'s policy under `id` — or join the fetch of it already under way. The
    /// fetch runs on its own: it finishes (and is kept) whether anyone waits or not.
    fn fetch(self: &Arc<Self>, domain: &str, id: &str) -> Fetch {
        let mut entries = self.lock();
        let entry = entries.entry(domain.to_string()).or_default();
        if let Some((fetching, under_way)) = &entry.fetching {
            if fetching == id {
                return under_way.clone();
            }
        }
        let done = FetchDone {
            inner: self.clone(),
            domain: domain.to_string(),
            id: id.to_string(),
        };
        let task = tokio::spawn(async move {
            let policy = done.inner.fetch_and_keep(&done.domain, &done.id).await;
            drop(done);
            policy
        });
        let (d, i) = (domain.to_string(), id.to_string());
        let fetch = async move {
            task.await.unwrap_or_else(|e| {
                tracing::error!(domain = %d, id = %i, "MTA-STS policy fetch failed: {e}");
                None
            })
        }
        .boxed()
        .shared();
        entry.fetching = Some((id.to_string(), fetch.clone()));
        fetch
    }

    /// The id of `domain`'s `_mta-sts` TXT record (see `parse_txt`); `Err` when the lookup
    /// itself failed. A malformed or ambiguous record counts as none, and is logged.
    async fn txt_id(&self, domain: &str) -> Result<Option<String>, String> {
        let name = format!("_mta-sts.{domain}.");
        let lookup = match self.resolver.txt_lookup(name.as_str()).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let records: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        match parse_txt(&records) {
            Ok(id) => Ok(id),
            Err(e) => {
                tracing::info!(
                    domain,
                    "MTA-STS TXT record not usable ({e}); no policy record"
                );
                Ok(None)
            }
        }
    }

    /// Fetch `domain`'s policy under `id`; on success cache and store it (unless a copy
    /// fetched later is there already), on failure count it and remember it for a while.
    async fn fetch_and_keep(&self, domain: &str, id: &str) -> Option<Arc<StsPolicy>> {
        let started = now_ms();
        match self.fetch_once(domain, id).await {
            Ok(mut policy) => {
                policy.fetched_ms = started;
                let policy = Arc::new(policy);
                tracing::info!(
                    domain,
                    id,
                    mode = policy.mode.as_str(),
                    max_age = policy.max_age,
                    "MTA-STS policy fetched"
                );
                let kept = {
                    let mut entries = self.lock();
                    let entry = entries.entry(domain.to_string()).or_default();
                    entry.failed = None;
                    match &entry.policy {
                        Some(later) if later.fetched_ms > started => later.clone(),
                        _ => {
                            // Under the lock, so that the spool sees the puts and deletes of
                            // one domain in the order the cache made them.
                            if let Ok(json) = serde_json::to_vec(&*policy) {
                                self.store
                                    .put_state(format!("{STATE_PREFIX}{domain}"), json);
                            }
                            entry.policy = Some(policy.clone());
                            policy
                        }
                    }
                };
                self.publish();
                Some(kept)
            }
            Err((reason, why)) => {
                metrics::counter!("switchyard_mta_sts_failures_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(domain, id, reason, "MTA-STS policy fetch failed: {why}");
                let mut entries = self.lock();
                entries.entry(domain.to_string()).or_default().failed =
                    Some((id.to_string(), Instant::now() + FAILED_FETCH_BACKOFF));
                None
            }
        }
    }

    /// One fetch: `Err((reason, why))` with a reason of `FAILURE_REASONS`.
    async fn fetch_once(
        &self,
        domain: &str,
        id: &str,
    ) -> Result<StsPolicy, (&'static str, String)> {
        let host = format!("mta-sts.{domain}");
        let answer = self
            .https
            .get(&host, POLICY_PATH, MAX_POLICY_BYTES, FETCH_TIMEOUT)
            .await
            .map_err(|e| ("fetch", e))?;
        match answer.status {
            200 => {}
            300..=399 => {
                return Err((
                    "fetch",
                    format!(
                        "{host} answered {} (redirects are not followed)",
                        answer.status
                    ),
                ))
            }
            s => return Err(("fetch", format!("{host} answered {s}"))),
        }
        if answer.media_type.as_deref() != Some("text/plain") {
            return Err((
                "invalid_policy",
                format!(
                    "{host} served the policy as {}, not text/plain",
                    answer.media_type.as_deref().unwrap_or("(no Content-Type)")
                ),
            ));
        }
        let text = std::str::from_utf8(&answer.body).map_err(|_| {
            (
                "invalid_policy",
                format!("the policy of {host} is not UTF-8"),
            )
        })?;
        StsPolicy::parse(id, text)
            .map_err(|e| ("invalid_policy", format!("the policy of {host}: {e}")))
    }

    /// `switchyard_mta_sts_policies{mode}`: the cached policies by mode.
    fn publish(&self) {
        let entries = self.lock();
        for mode in StsMode::ALL {
            let n = entries
                .values()
                .filter(|e| e.policy.as_ref().is_some_and(|p| p.mode == mode))
                .count();
            metrics::gauge!("switchyard_mta_sts_policies", "mode" => mode.as_str()).set(n as f64);
        }
    }
}
