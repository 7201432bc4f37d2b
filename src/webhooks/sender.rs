//! One webhook endpoint's sender: the event log from its cursor, in batches, signed,
//! retried, and the cursor moved on only once the endpoint said 2xx.
//!
//! Each round gathers up to `batch_size` records that pass the endpoint's filters (tenant,
//! record types) — waiting at most `batch_wait` after the first — and POSTs them as one JSON
//! array with the Standard Webhooks headers: `webhook-id` (the batch's first record id, the
//! same on every retry), `webhook-timestamp` and `webhook-signature` (`v1,` + base64
//! HMAC-SHA256 of `id.timestamp.body`, one per key, re-signed on each attempt). Every record
//! keeps its log fields and gains `record_id`. A 2xx moves the cursor past the batch (and
//! past the records the filters left out) and stores it in the spool's state; 5xx, 408, 429
//! (after its `Retry-After`), a 3xx (redirects are not followed), a timeout or a connection
//! error try again after an exponential, jittered backoff (1 s doubling to 5 min); any other
//! 4xx is logged and the batch skipped (`webhook-id` is the endpoint's name with the
//! batch's first and last record ids, so a batch is never confused with another). Records older than `max_age` are given up (counted,
//! their range logged) instead of sent. The log on disk is the queue: a sender that cannot
//! send holds one batch in memory, nothing more, and slows nothing else.

use super::tail::{Cursor, LogTail, Tailed};
use super::{Endpoint, Status};
use crate::https::{HttpsClient, Request};
use crate::logs::LatestSegment;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use switchyard_actors::ports::SpoolPort;

/// How often a sender that has read everything looks at the log again.
const POLL: Duration = Duration::from_millis(100);
/// First wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A cursor moved only past filtered-out records is stored at most this often.
const IDLE_CURSOR_SAVE: Duration = Duration::from_secs(5);
/// Longest `Retry-After` obeyed.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// After the log could not be read, try again this much later.
const LOG_RETRY: Duration = Duration::from_secs(1);

/// A record on its way: its id, log time and JSON with `record_id` added.
struct Outgoing {
    record_id: String,
    timestamp: Option<SystemTime>,
    json: serde_json::Value,
}

/// What the sender shares with the daemon.
pub struct Sender {
    pub endpoint: Arc<Endpoint>,
    pub https: HttpsClient,
    pub log_dir: PathBuf,
    /// The log's newest segment, from its writer.
    pub latest: LatestSegment,
    pub store: Arc<dyn SpoolPort>,
    pub status: Arc<Mutex<Status>>,
}

impl Sender {
    /// Run from `cursor` until the task is aborted.
    pub async fn run(self, cursor: Cursor) {
        let mut tail = LogTail::new(&self.log_dir, cursor).following(self.latest.clone());
        let mut saved_at = Instant::now();
        loop {
            let (batch, after, rest) = self.gather(tail).await;
            tail = rest;
            let Some(after) = after else {
                continue;
            };
            if batch.is_empty() {
                // Only records the filters leave out: move on, and store it now and then.
                self.set_cursor(&after, false);
                if saved_at.elapsed() >= IDLE_CURSOR_SAVE {
                    self.save(&after);
                    saved_at = Instant::now();
                }
                continue;
            }
            self.deliver(batch).await;
            self.set_cursor(&after, true);
            self.save(&after);
            saved_at = Instant::now();
        }
    }

    /// Read records until a batch is full, or `batch_wait` after its first record, or (with
    /// none) until something was read at all. Returns the batch, the cursor past every record
    /// it read (`None`: nothing read), and the tail.
    async fn gather(&self, mut tail: LogTail) -> (Vec<Outgoing>, Option<Cursor>, LogTail) {
        let e = &self.endpoint;
        let mut batch: Vec<Outgoing> = Vec::new();
        let mut after = None;
        let mut first_at: Option<Instant> = None;
        loop {
            let room = e.batch_size - batch.len();
            let cursor = tail.cursor().clone();
            let read = tokio::task::spawn_blocking(move || {
                let records = tail.read(room);
                let error = tail.take_error();
                (tail, records, error)
            })
            .await;
            let records = match read {
                Ok((t, records, error)) => {
                    tail = t;
                    if let Some(why) = error {
                        self.failed("log_read", why);
                        tokio::time::sleep(LOG_RETRY).await;
                    }
                    records
                }
                Err(e) => {
                    // The reader panicked: start a new one where it was.
                    self.failed("log_read", format!("event log reader failed: {e}"));
                    tail = LogTail::new(&self.log_dir, cursor).following(self.latest.clone());
                    tokio::time::sleep(LOG_RETRY).await;
                    Vec::new()
                }
            };
            let read_any = !records.is_empty();
            for r in records {
                after = Some(r.after.clone());
                if let Some(out) = e.take(r) {
                    first_at.get_or_insert_with(Instant::now);
                    batch.push(out);
                }
            }
            if batch.len() >= e.batch_size {
                break;
            }
            match first_at {
                Some(t) if t.elapsed() >= e.batch_wait => break,
                Some(t) if !read_any => {
                    self.lag(batch.first());
                    tokio::time::sleep(POLL.min(e.batch_wait.saturating_sub(t.elapsed()))).await;
                }
                Some(_) => {}
                None if read_any => return (batch, after, tail),
                None => {
                    self.lag(None);
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        (batch, after, tail)
    }

    /// Send `batch` until the endpoint takes it, skips it (4xx), or its records age out.
    async fn deliver(&self, mut batch: Vec<Outgoing>) {
        let e = &self.endpoint;
        // Unique per batch content: the endpoint, its first and its last record.
        let id = format!(
            "msg_{}_{}_{}",
            e.name,
            batch[0].record_id.replace(':', "_"),
            batch[batch.len() - 1].record_id.replace(':', "_")
        );
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.give_up_old(&mut batch);
            if batch.is_empty() {
                return;
            }
            self.lag(batch.first());
            let body = Bytes::from(
                serde_json::to_vec(&batch.iter().map(|o| &o.json).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            let headers = super::signed_headers(&e.keys, &id, &body);
            let request = Request {
                method: hyper::Method::POST,
                url: &e.url,
                headers,
                body,
            };
            // The status decides; the body is not read (a 2xx with a long or slow body is
            // still a 2xx).
            let answer = self.https.send(request, 0, e.timeout).await;
            let (reason, why, wait) = match answer {
                Ok(a) if (200..300).contains(&a.status) => {
                    self.counted("delivered", batch.len());
                    return;
                }
                Ok(a) if (400..500).contains(&a.status) && a.status != 408 && a.status != 429 => {
                    let (first, last) = (&batch[0].record_id, &batch[batch.len() - 1].record_id);
                    tracing::warn!(
                        webhook = %e.name,
                        status = a.status,
                        first = %first,
                        last = %last,
                        "webhook endpoint refused a batch; skipped"
                    );
                    self.failed("status_4xx", format!("{} answered {}", e.url, a.status));
                    self.counted("rejected", batch.len());
                    return;
                }
                Ok(a) => {
                    let reason = match a.status {
                        429 => "status_429",
                        408 => "status_408",
                        500..=599 => "status_5xx",
                        300..=399 => "status_3xx",
                        _ => "status_other",
                    };
                    let wait = a.retry_after.map(|d| d.min(MAX_RETRY_AFTER));
                    let mut why = format!("{} answered {}", e.url, a.status);
                    if (300..400).contains(&a.status) {
                        why.push_str(" (redirects are not followed)");
                    }
                    (reason, why, wait)
                }
                Err(why) if why.starts_with("no answer") => ("timeout", why, None),
                Err(why) => ("connection", why, None),
            };
            self.failed(reason, why);
            // Jitter spreads retries; a Retry-After is a floor, so only upwards from it.
            let pause = match wait {
                Some(at_least) => at_least.mul_f64(1.0 + rand::random::<f64>() * 0.2),
                None => backoff.mul_f64(0.8 + rand::random::<f64>() * 0.4),
            };
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Drop the records past `max_age` from `batch` (counted, their range logged).
    fn give_up_old(&self, batch: &mut Vec<Outgoing>) {
        let e = &self.endpoint;
        let now = SystemTime::now();
        let old = |o: &Outgoing| {
            o.timestamp
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > e.max_age)
        };
        let n = batch.iter().filter(|o| old(o)).count();
        if n == 0 {
            return;
        }
        let first = batch.iter().find(|o| old(o)).map(|o| o.record_id.clone());
        let last = batch
            .iter()
            .rev()
            .find(|o| old(o))
            .map(|o| o.record_id.clone());
        batch.retain(|o| !old(o));
        tracing::warn!(
            webhook = %e.name,
            records = n,
            first = ?first,
            last = ?last,
            max_age = ?e.max_age,
            "webhook records older than max_age given up"
        );
        self.counted("expired", n);
    }

    fn counted(&self, outcome: &'static str, n: usize) {
        metrics::counter!("switchyard_webhook_records_total", "webhook" => self.endpoint.name.clone(), "outcome" => outcome)
            .increment(n as u64);
    }

    /// One failed attempt: counted, logged at debug, and kept as the last error.
    fn failed(&self, reason: &'static str, why: String) {
        metrics::counter!("switchyard_webhook_failures_total", "webhook" => self.endpoint.name.clone(), "reason" => reason)
            .increment(1);
        tracing::debug!(webhook = %self.endpoint.name, reason, "webhook attempt failed: {why}");
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.last_error = Some(why);
        s.last_error_at = Some(SystemTime::now());
    }

    /// `switchyard_webhook_lag_seconds`: the age of the oldest record not yet delivered.
    fn lag(&self, oldest: Option<&Outgoing>) {
        let age = oldest
            .and_then(|o| o.timestamp)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!("switchyard_webhook_lag_seconds", "webhook" => self.endpoint.name.clone())
            .set(age);
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lag_seconds = age;
    }

    fn set_cursor(&self, cursor: &Cursor, delivered: bool) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.cursor = cursor.clone();
        if delivered {
            s.last_delivery = Some(SystemTime::now());
        }
    }

    fn save(&self, cursor: &Cursor) {
        if let Ok(json) = serde_json::to_vec(cursor) {
            self.store
                .put_state(super::cursor_key(&self.endpoint.name), json);
        }
    }
}

impl Endpoint {
    /// The record as it goes out, if the endpoint's filters let it through.
    fn take(&self, r: Tailed) -> Option<Outgoing> {
        let mut json: serde_json::Value = match serde_json::from_slice(&r.line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(webhook = %self.name, record = %r.record_id, "event log line is not JSON ({e}); skipped");
                return None;
            }
        };
        let map = json.as_object_mut()?;
        if let Some(types) = &self.records {
            let kind = map.get("type").and_then(|t| t.as_str()).unwrap_or("");
            if !types.iter().any(|t| t == kind) {
                return None;
            }
        }
        if let Some(tenant) = &self.tenant {
            if map.get("tenant").and_then(|t| t.as_str()) != Some(tenant.as_str()) {
                return None;
            }
        }
        let timestamp = map
            .get("timestamp")
            .and_then(|t| t.as_str())
            .and_then(|t| humantime::parse_rfc3339(t).ok());
        map.insert("record_id".into(), r.record_id.clone().into());
        Some(Outgoing {
            record_id: r.record_id,
            timestamp,
            json,
        })
    }
}
