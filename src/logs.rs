//! Event logs: one JSON line per event in `data_dir/logs/`, one file per UTC hour.
//!
//! Callers hand a [`LogRecord`] to [`EventLog::write`], which only queues it; a dedicated
//! thread serializes and appends. The queue is bounded: when the disk is slower than the
//! mail, writers wait a moment rather than the logger dropping records or growing without
//! limit. The thread flushes whenever its queue runs dry, so a record is on disk (in the page
//! cache) within milliseconds of the event.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::SystemTime;

/// Records that may wait for the log thread.
const LOG_QUEUE_DEPTH: usize = 65_536;

/// The remote side of a delivery attempt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peer {
    /// MX host name.
    pub host: String,
    /// Address connected to.
    pub addr: String,
}

/// An SMTP reply as logged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Response {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code, e.g. "5.7.26".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    /// Reply text.
    pub text: String,
}

/// One event. Fields that do not apply stay `None` and are left out of the line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogRecord {
    /// Reception, Delivery, TransientFailure, Bounce, Expiration, AdminBounce, Rejection,
    /// Suspension, Resume or AutomationFired.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339 time of the event.
    pub timestamp: String,
    /// Message id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Campaign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// Envelope sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The recipient this record is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// All recipients of an accepted message (Reception).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
    /// Destination domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Scheduled queue name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Egress source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Destination site (MX rollup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Remote peer of a delivery attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    /// Injecting client's address (Reception, Rejection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The SMTP reply this record is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    /// Delivery attempts so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Bounce classification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce_class: Option<String>,
    /// Automation rule name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Automation action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When a suspension or override ends (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Message size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl LogRecord {
    /// A record of `kind` stamped now.
    pub fn new(kind: &'static str) -> Self {
        LogRecord {
            kind,
            timestamp: rfc3339(SystemTime::now()),
            ..Default::default()
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The sending side of the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: SyncSender<LogRecord>,
}

impl EventLog {
    /// Start the log thread writing under `dir`.
    pub fn start(dir: &Path) -> std::io::Result<EventLog> {
        std::fs::create_dir_all(dir)?;
        let (tx, rx) = sync_channel(LOG_QUEUE_DEPTH);
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || write_loop(dir, rx))?;
        Ok(EventLog { tx })
    }

    /// Queue a record. Blocks only while the log thread is a full queue behind.
    pub fn write(&self, record: LogRecord) {
        if self.tx.send(record).is_err() {
            tracing::error!("event log thread has stopped; record lost");
        }
    }
}

struct Segment {
    hour: String,
    out: BufWriter<File>,
}

fn write_loop(dir: PathBuf, rx: Receiver<LogRecord>) {
    let mut segment: Option<Segment> = None;
    let mut line = Vec::with_capacity(1024);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            // "2026-11-28T10:15:00.000Z" → segment "20261128-10".
            let ts = record.timestamp.as_bytes();
            let hour: String = ts
                .get(..13)
                .map(|h| {
                    h.iter()
                        .filter(|b| b.is_ascii_digit())
                        .map(|&b| b as char)
                        .collect()
                })
                .unwrap_or_default();
            let hour = format!(
                "{}-{}",
                hour.get(..8).unwrap_or(""),
                hour.get(8..).unwrap_or("")
            );
            if segment.as_ref().map(|s| s.hour != hour).unwrap_or(true) {
                if let Some(mut s) = segment.take() {
                    let _ = s.out.flush();
                }
                let path = dir.join(format!("{hour}.jsonl"));
                match OpenOptions::new().create(true).append(true).open(&path) {
                    Ok(f) => {
                        segment = Some(Segment {
                            hour,
                            out: BufWriter::new(f),
                        })
                    }
                    Err(e) => tracing::error!("cannot open log segment {}: {e}", path.display()),
                }
            }
            line.clear();
            if serde_json::to_writer(&mut line, &record).is_ok() {
                line.push(b'\n');
                if let Some(s) = segment.as_mut() {
                    if let Err(e) = s.out.write_all(&line) {
                        tracing::error!("cannot write event log: {e}");
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if let Some(s) = segment.as_mut() {
            if let Err(e) = s.out.flush() {
                tracing::error!("cannot flush event log: {e}");
            }
        }
    }
}
