//! Webhooks: the event log's records pushed to each `[[webhook]]` endpoint, per tenant,
//! batched, signed (Standard Webhooks), retried, never lost.
//!
//! - [`tail`] reads the log from a cursor, through rotation and compression;
//! - [`sender`] is one endpoint's loop: batches, signatures, retries, the cursor;
//! - [`Webhooks`] runs one sender per endpoint, starts a new endpoint at the end of the log
//!   (no replay), keeps each cursor in the spool's `state` keyspace (`webhook/<name>`), and
//!   applies a reload: endpoints added, changed (restarted from their cursor) or removed.
//!
//! Delivery is at least once: the cursor moves only after a 2xx, so a crash or restart
//! sends the batch in flight again; receivers drop duplicates by `record_id`.

pub mod sender;
pub mod tail;

use crate::config::{LoadedConfig, WebhookConfig};
use crate::https::{HttpsClient, Url};
use crate::logs::LatestSegment;
use crate::spool::read_state;
use base64::Engine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use switchyard_actors::ports::SpoolPort;
use tail::Cursor;

/// One endpoint, as its sender uses it.
pub struct Endpoint {
    pub name: String,
    pub url: Url,
    pub tenant: Option<String>,
    pub records: Option<Vec<String>>,
    /// Decoded signing keys.
    pub keys: Vec<Vec<u8>>,
    pub batch_size: usize,
    pub batch_wait: Duration,
    pub timeout: Duration,
    pub max_age: Duration,
}

/// What `ctl webhooks` shows of one endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub cursor: Cursor,
    pub lag_seconds: f64,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_delivery: Option<SystemTime>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_error_at: Option<SystemTime>,
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&switchyard_actors::record::rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// The spool state entries of the webhooks' cursors: `webhook/<name>`.
pub const CURSOR_PREFIX: &str = "webhook/";

/// The spool state key of `name`'s cursor.
pub fn cursor_key(name: &str) -> String {
    format!("{CURSOR_PREFIX}{name}")
}

/// The keys of a `secret_file`: one `whsec_` + base64 per line (blank lines and `#`
/// comments skipped), at least one.
pub fn read_secrets(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read webhook secret_file {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line
            .strip_prefix("whsec_")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                format!(
                    "{}:{}: a webhook key is \"whsec_\" and base64",
                    path.display(),
                    n + 1
                )
            })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(format!(
            "webhook secret_file {} holds no key",
            path.display()
        ));
    }
    Ok(keys)
}

/// The `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body` per key,
/// separated by spaces (Standard Webhooks).
pub fn sign(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    keys.iter()
        .map(|k| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
            let mut ctx = ring::hmac::Context::with_key(&key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(timestamp.to_string().as_bytes());
            ctx.update(b".");
            ctx.update(body);
            format!("v1,{}", b64.encode(ctx.sign().as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An endpoint as configured, with its keys as read now (or why they cannot be read).
type Wanted<'a> = (&'a WebhookConfig, Result<Vec<Vec<u8>>, String>);

/// The headers of a signed POST: `Content-Type`, `webhook-id`, `webhook-timestamp` (now)
/// and `webhook-signature` by every key.
pub fn signed_headers(
    keys: &[Vec<u8>],
    id: &str,
    body: &[u8],
) -> Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)> {
    use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut headers = vec![
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(timestamp),
        ),
    ];
    // Ids are built from names and record ids (letters, digits, `_-.`), signatures are
    // base64: both are valid header values.
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.push((HeaderName::from_static("webhook-id"), v));
    }
    if let Ok(v) = HeaderValue::from_str(&sign(keys, id, timestamp, body)) {
        headers.push((HeaderName::from_static("webhook-signature"), v));
    }
    headers
}

/// One running sender.
struct Running {
    config: WebhookConfig,
    endpoint: Arc<Endpoint>,
    status: Arc<Mutex<Status>>,
    task: tokio::task::JoinHandle<()>,
}

/// Every endpoint's sender.
pub struct Webhooks {
    https: HttpsClient,
    log_dir: PathBuf,
    /// The log's newest segment, from its writer.
    latest: LatestSegment,
    store: Arc<dyn SpoolPort>,
    /// Stored cursors, read at start.
    stored: Mutex<HashMap<String, Cursor>>,
    running: Mutex<HashMap<String, Running>>,
}

impl Webhooks {
    /// Senders for the endpoints of `loaded`, reading `log_dir` (whose writer keeps
    /// `latest`); `stored` are the spool's
    /// `webhook/` state entries (the cursors of endpoints no longer configured are
    /// forgotten: one added again later starts at the end of the log).
    pub async fn start(
        loaded: &LoadedConfig,
        https: HttpsClient,
        log_dir: &Path,
        latest: LatestSegment,
        stored: Vec<(String, Vec<u8>)>,
        store: Arc<dyn SpoolPort>,
    ) -> Arc<Webhooks> {
        let configured: Vec<&String> = loaded
            .config
            .webhook
            .iter()
            .map(|w| w.name.get_ref())
            .collect();
        let mut cursors = HashMap::new();
        for (key, name, cursor) in read_state::<Cursor>(stored, CURSOR_PREFIX, Some(&*store)) {
            if configured.iter().any(|n| **n == name) {
                cursors.insert(name, cursor);
            } else {
                store.delete_state(key);
            }
        }
        let hooks = Arc::new(Webhooks {
            https,
            log_dir: log_dir.to_path_buf(),
            latest,
            store,
            stored: Mutex::new(cursors),
            running: Mutex::new(HashMap::new()),
        });
        hooks.apply(loaded).await;
        hooks
    }

    /// Bring the senders in line with `loaded`'s `[[webhook]]`s: new ones start at the end
    /// of the log, changed ones (their settings or their keys) go on from their cursor,
    /// removed ones stop and forget it. A sender is stopped — and has stopped — before its
    /// cursor is read.
    pub async fn apply(&self, loaded: &LoadedConfig) {
        let wanted: HashMap<String, Wanted<'_>> = loaded
            .config
            .webhook
            .iter()
            .map(|w| {
                let keys = read_secrets(&loaded.resolve(w.secret_file.get_ref()));
                (w.name.get_ref().clone(), (w, keys))
            })
            .collect();
        let stopping: Vec<(String, Running)> = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let changed: Vec<String> = running
                .iter()
                .filter(|(name, r)| {
                    !wanted.get(*name).is_some_and(|(w, keys)| {
                        **w == r.config && keys.as_ref().ok() == Some(&r.endpoint.keys)
                    })
                })
                .map(|(name, _)| name.clone())
                .collect();
            changed
                .into_iter()
                .filter_map(|name| running.remove(&name).map(|r| (name, r)))
                .collect()
        };
        for (name, r) in stopping {
            r.task.abort();
            let _ = r.task.await;
            let cursor = r
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cursor
                .clone();
            if wanted.contains_key(&name) {
                self.stored
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name, cursor);
            } else {
                self.stored
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
                self.store.delete_state(cursor_key(&name));
                metrics::gauge!("switchyard_webhook_lag_seconds", "webhook" => name.clone())
                    .set(0.0);
                tracing::info!(webhook = %name, "webhook removed");
            }
        }
        for (name, (config, keys)) in wanted {
            if self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&name)
            {
                continue;
            }
            match self.launch(config, keys).await {
                Ok(r) => {
                    self.running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, r);
                }
                Err(e) => tracing::error!(webhook = %name, "webhook not started: {e}"),
            }
        }
    }

    async fn launch(
        &self,
        w: &WebhookConfig,
        keys: Result<Vec<Vec<u8>>, String>,
    ) -> Result<Running, String> {
        let name = w.name.get_ref().clone();
        let endpoint = Arc::new(Endpoint {
            name: name.clone(),
            url: Url::parse(w.url.get_ref())?,
            tenant: w.tenant.clone(),
            records: w.records.as_ref().map(|r| r.get_ref().clone()),
            keys: keys?,
            batch_size: w.batch_size.max(1),
            batch_wait: w.batch_wait.0,
            timeout: w.timeout.0,
            max_age: w.max_age.0,
        });
        let stored = self
            .stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned();
        let cursor = match stored {
            Some(c) => c,
            None => {
                // A new endpoint starts with what comes next, not with the log's past.
                let dir = self.log_dir.clone();
                let c = tokio::task::spawn_blocking(move || tail::end_of_log(&dir))
                    .await
                    .map_err(|e| format!("cannot find the end of the event log: {e}"))?;
                if let Ok(json) = serde_json::to_vec(&c) {
                    self.store.put_state(cursor_key(&name), json);
                }
                tracing::info!(webhook = %name, segment = %c.segment, line = c.line, "new webhook starts at the end of the log");
                c
            }
        };
        for outcome in ["delivered", "rejected", "expired"] {
            metrics::counter!("switchyard_webhook_records_total", "webhook" => name.clone(), "outcome" => outcome)
                .increment(0);
        }
        metrics::gauge!("switchyard_webhook_lag_seconds", "webhook" => name.clone()).set(0.0);
        let status = Arc::new(Mutex::new(Status {
            cursor: cursor.clone(),
            ..Default::default()
        }));
        let sender = sender::Sender {
            endpoint: endpoint.clone(),
            https: self.https.clone(),
            log_dir: self.log_dir.clone(),
            latest: self.latest.clone(),
            store: self.store.clone(),
            status: status.clone(),
        };
        let task = tokio::spawn(sender.run(cursor));
        Ok(Running {
            config: w.clone(),
            endpoint,
            status,
            task,
        })
    }

    /// Each endpoint's name, URL, cursor, lag and last error (`ctl webhooks`).
    pub fn status(&self) -> Vec<serde_json::Value> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<serde_json::Value> = running
            .values()
            .map(|r| {
                let s = r.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.insert("name".into(), r.endpoint.name.clone().into());
                    m.insert("url".into(), r.endpoint.url.to_string().into());
                }
                v
            })
            .collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }

    /// Send one signed test event to `name` now: the endpoint's status code, or why not;
    /// `None` when no webhook has that name.
    pub async fn test(&self, name: &str) -> Option<Result<u16, String>> {
        let endpoint = {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.get(name).map(|r| r.endpoint.clone())?
        };
        let now = SystemTime::now();
        let id = format!(
            "msg_test_{}",
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        let body = serde_json::to_vec(&serde_json::json!([{
            "type": "Test",
            "timestamp": switchyard_actors::record::rfc3339(now),
            "record_id": id,
            "webhook": name,
        }]))
        .unwrap_or_default();
        let headers = signed_headers(&endpoint.keys, &id, &body);
        let request = crate::https::Request {
            method: hyper::Method::POST,
            url: &endpoint.url,
            headers,
            body: body.into(),
        };
        Some(
            self.https
                .send(request, 64 * 1024, endpoint.timeout)
                .await
                .map(|a| a.status),
        )
    }

    /// Stop every sender (shutdown): their cursors are in the spool already.
    pub fn stop(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for r in running.values() {
            r.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_hmac_sha256_of_id_timestamp_and_body_per_key() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = sign(
            &[key.clone(), key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let one = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(sig, format!("{one} {one}"));
    }

    #[test]
    fn secrets_are_whsec_and_base64_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(
            &f,
            "# rotation\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\nwhsec_AAAA\n",
        )
        .unwrap();
        assert_eq!(read_secrets(&f).unwrap().len(), 2);
        std::fs::write(&f, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        assert!(read_secrets(&f).unwrap_err().contains(":1:"));
        std::fs::write(&f, "\n").unwrap();
        assert!(read_secrets(&f).is_err());
    }
}
