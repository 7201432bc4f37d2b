//! MTA-STS policy discovery (RFC 8461): which policy a destination domain has published,
//! fetched, cached and kept across restarts. What a policy then does to delivery is the
//! actors' business (`switchyard_actors::mta_sts`).
//!
//! For a domain, each time its route is looked up:
//! 1. the TXT record `_mta-sts.<domain>` through the configured resolver gives the policy
//!    id (none, or a malformed or ambiguous record: no policy record);
//! 2. a cached policy with that id is used as it is — and fetched again in the background
//!    once half its `max_age` has passed, so it is refreshed before it expires;
//! 3. a new id (or none cached) fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//!    ([`HttpsClient`]: web PKI roots plus `[tls] trust_roots`, no redirects, 64 KiB,
//!    20 s); a failed fetch keeps the cached policy (§5.1), is counted, and is not tried
//!    again for that id for 5 minutes;
//! 4. with no TXT record (or a failed lookup), a cached policy stays in force until it
//!    expires.
//!
//! Policies are cached for their `max_age` and stored in the spool's `state` keyspace
//! (`mta-sts/<domain>`), so a restart starts with them. `switchyard_mta_sts_policies{mode}`
//! counts the cached ones; `switchyard_mta_sts_failures_total{reason}` counts failed
//! lookups (`dns`), fetches (`fetch`) and policies that could not be read
//! (`invalid_policy`).

use crate::https::HttpsClient;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
/// Prefix of the stored policies in the spool's `state` keyspace.
const STATE_PREFIX: &str = "mta-sts/";
/// Where a policy is published.
const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// A policy as stored: with when it was fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    policy: StsPolicy,
    fetched_ms: u64,
}

/// What is known of one domain.
#[derive(Default)]
struct Entry {
    policy: Option<(Arc<StsPolicy>, u64)>,
    /// The id whose fetch failed last, and until when it is not tried again.
    failed: Option<(String, Instant)>,
    /// A background refresh is under way.
    refreshing: bool,
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
        for (key, value) in stored {
            let Some(domain) = key.strip_prefix(STATE_PREFIX) else {
                continue;
            };
            match serde_json::from_slice::<Stored>(&value) {
                Ok(s) if s.policy.expires_ms(s.fetched_ms) > now => {
                    let entry = Entry {
                        policy: Some((Arc::new(s.policy), s.fetched_ms)),
                        ..Default::default()
                    };
                    entries.insert(domain.to_string(), entry);
                }
                Ok(_) => store.delete_state(key),
                Err(e) => {
                    tracing::error!("spool state {key} cannot be read back ({e}); dropped");
                    store.delete_state(key);
                }
            }
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
        let now = now_ms();
        let (cached, failed_recently) =
            inner.look(domain, txt.as_ref().ok().cloned().flatten(), now);
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
            if inner.refresh_due(domain, now) {
                let (this, domain, id) = (self.clone(), domain.to_string(), id.clone());
                tokio::spawn(async move {
                    this.inner.fetch_and_keep(&domain, &id).await;
                    this.inner.refreshed(&domain);
                });
            }
            return Some(policy.clone());
        }
        if failed_recently {
            return cached;
        }
        inner.fetch_and_keep(domain, &id).await.or(cached)
    }
}

impl MtaSts {
    /// Publish `switchyard_mta_sts_policies` again (gauges not set for a while leave
    /// /metrics).
    pub fn publish_gauges(&self) {
        self.inner.publish();
    }
}

impl Inner {
    /// The cached, unexpired policy of `domain` (an expired one is forgotten), and whether
    /// fetching `id` failed a moment ago.
    fn look(&self, domain: &str, id: Option<String>, now: u64) -> (Option<Arc<StsPolicy>>, bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.get_mut(domain) else {
            return (None, false);
        };
        if let Some((p, fetched)) = &entry.policy {
            if p.expires_ms(*fetched) <= now {
                entry.policy = None;
                self.store.delete_state(format!("{STATE_PREFIX}{domain}"));
                drop(entries);
                self.publish();
                return (None, false);
            }
        }
        let failed = match (&entry.failed, id) {
            (Some((failed_id, until)), Some(id)) => *failed_id == id && *until > Instant::now(),
            _ => false,
        };
        (entry.policy.as_ref().map(|(p, _)| p.clone()), failed)
    }

    /// Whether the cached policy of `domain` is past half its life with no refresh under
    /// way; if so, one is now.
    fn refresh_due(&self, domain: &str, now: u64) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.get_mut(domain) else {
            return false;
        };
        let half_life = |(p, fetched): &(Arc<StsPolicy>, u64)| {
            now.saturating_sub(*fetched) >= p.max_age.saturating_mul(500)
        };
        let failed_recently = entry
            .failed
            .as_ref()
            .is_some_and(|(_, until)| *until > Instant::now());
        let due =
            !entry.refreshing && !failed_recently && entry.policy.as_ref().is_some_and(half_life);
        entry.refreshing |= due;
        due
    }

    fn refreshed(&self, domain: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(domain) {
            entry.refreshing = false;
        }
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

    /// Fetch `domain`'s policy under `id`; on success cache and store it, on failure count
    /// it and remember it for a while.
    async fn fetch_and_keep(&self, domain: &str, id: &str) -> Option<Arc<StsPolicy>> {
        match self.fetch(domain, id).await {
            Ok(policy) => {
                let fetched_ms = now_ms();
                let stored = Stored {
                    policy: policy.clone(),
                    fetched_ms,
                };
                if let Ok(json) = serde_json::to_vec(&stored) {
                    self.store
                        .put_state(format!("{STATE_PREFIX}{domain}"), json);
                }
                let policy = Arc::new(policy);
                tracing::info!(
                    domain,
                    id,
                    mode = policy.mode.as_str(),
                    max_age = policy.max_age,
                    "MTA-STS policy fetched"
                );
                {
                    let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = entries.entry(domain.to_string()).or_default();
                    entry.policy = Some((policy.clone(), fetched_ms));
                    entry.failed = None;
                }
                self.publish();
                Some(policy)
            }
            Err((reason, why)) => {
                metrics::counter!("switchyard_mta_sts_failures_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(domain, id, reason, "MTA-STS policy fetch failed: {why}");
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                entries.entry(domain.to_string()).or_default().failed =
                    Some((id.to_string(), Instant::now() + FAILED_FETCH_BACKOFF));
                None
            }
        }
    }

    /// One fetch: `Err((reason, why))` with a reason of `FAILURE_REASONS`.
    async fn fetch(&self, domain: &str, id: &str) -> Result<StsPolicy, (&'static str, String)> {
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
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for mode in StsMode::ALL {
            let n = entries
                .values()
                .filter(|e| e.policy.as_ref().is_some_and(|(p, _)| p.mode == mode))
                .count();
            metrics::gauge!("switchyard_mta_sts_policies", "mode" => mode.as_str()).set(n as f64);
        }
    }
}
