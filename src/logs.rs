//! Event logs: one JSON line per event in `data_dir/logs/`.
//!
//! Segments are named `YYYYMMDD-HH-NNN.jsonl` (UTC hour, then a sequence number): a new one
//! starts every hour and whenever the current one reaches `[logs] max_segment_size`. A closed
//! segment is compressed to `.jsonl.zst` on a helper thread, so compression never holds up
//! the writer.
//!
//! Callers hand a [`LogRecord`] to [`EventLog::write`], which never blocks and never drops a
//! record: it only queues it, and the log thread serializes and appends. An MTA's log is its
//! accounting, so a record is never lost; and a slow log disk must not stall the actor
//! threads that write settlements. The queue is bounded where new work enters instead:
//! ingress awaits [`EventLog::room`] before it accepts a message, so while the log thread is
//! more than [`LOG_QUEUE_DEPTH`] records behind, clients wait rather than memory growing.
//! The thread flushes whenever its queue runs dry, then lets records gather for 2 ms, so a
//! record reaches the file within milliseconds of the event.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
pub use switchyard_actors::record::{LogRecord, RecordKind, Response};

/// How long the log thread lets records gather after writing out what it had.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Records the log thread may be behind before ingress waits for it.
pub const LOG_QUEUE_DEPTH: usize = 65_536;

/// How segments are cut and kept.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    /// Start a new segment past this many bytes.
    pub max_segment_size: u64,
    /// zstd-compress closed segments.
    pub compress: bool,
}

/// The sending side of the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: Sender<LogRecord>,
    backlog: Arc<Backlog>,
}

/// Records queued and not yet written, and a wake-up for whoever waits for room.
#[derive(Default)]
struct Backlog {
    pending: AtomicUsize,
    room: tokio::sync::Notify,
}

impl EventLog {
    /// Start the log thread writing under `dir`; closed segments left by an earlier run are
    /// compressed first.
    pub fn start(dir: &Path, settings: LogSettings) -> std::io::Result<EventLog> {
        std::fs::create_dir_all(dir)?;
        let (tx, rx) = channel();
        let backlog = Arc::new(Backlog::default());
        let writer = SegmentWriter {
            dir: dir.to_path_buf(),
            settings,
            current: None,
            orphans: Vec::new(),
            backlog: backlog.clone(),
        };
        if settings.compress {
            for path in uncompressed_segments(dir)? {
                compress_later(path);
            }
        }
        std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(EventLog { tx, backlog })
    }

    /// Queue a record. Never blocks, never drops.
    pub fn write(&self, record: LogRecord) {
        self.backlog.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(record).is_err() {
            tracing::error!("event log thread has stopped; record lost");
        }
    }

    /// Records queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.backlog.pending.load(Ordering::Relaxed)
    }

    /// Wait while the log thread is more than [`LOG_QUEUE_DEPTH`] records behind.
    pub async fn room(&self) {
        loop {
            let notified = self.backlog.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.backlog() <= LOG_QUEUE_DEPTH {
                return;
            }
            notified.await;
        }
    }
}

impl switchyard_actors::ports::EventSink for EventLog {
    fn write(&self, record: LogRecord) {
        EventLog::write(self, record);
    }
}

/// Pending bytes that make a segment write out before the round ends.
const FLUSH_AT: usize = 64 * 1024;
/// A failed write is tried again after this.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

struct Segment {
    hour: String,
    path: PathBuf,
    written: u64,
    out: File,
    /// Bytes not yet in the file: records of this round, and whatever a failed write (a
    /// full disk) left, which the next round writes first. Nothing is dropped.
    pending: Vec<u8>,
}

impl Segment {
    /// Write what is pending; on an error keep the rest for the next try.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            match self.out.write(&self.pending) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

struct SegmentWriter {
    dir: PathBuf,
    settings: LogSettings,
    current: Option<Segment>,
    /// Lines no segment could take yet (none could be opened); the next one starts with them.
    orphans: Vec<u8>,
    backlog: Arc<Backlog>,
}

/// "2026-11-28T10:15:00.000Z" → "20261128-10".
fn hour_of(timestamp: &str) -> String {
    let digits: String = timestamp
        .chars()
        .take(13)
        .filter(char::is_ascii_digit)
        .collect();
    format!(
        "{}-{}",
        digits.get(..8).unwrap_or("19700101"),
        digits.get(8..).unwrap_or("00")
    )
}

fn uncompressed_segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}

/// Compress `path` to `path.zst` and remove it, on a helper thread.
fn compress_later(path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("log-compress".into())
        .spawn(move || {
            let target = PathBuf::from(format!("{}.zst", path.display()));
            let result = (|| -> std::io::Result<()> {
                let mut input = File::open(&path)?;
                let output = File::create(&target)?;
                let mut encoder = zstd::stream::Encoder::new(output, 3)?;
                std::io::copy(&mut input, &mut encoder)?;
                encoder.finish()?.sync_all()?;
                std::fs::remove_file(&path)
            })();
            if let Err(e) = result {
                tracing::error!("cannot compress log segment {}: {e}", path.display());
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start log compression: {e}");
    }
}

impl SegmentWriter {
    fn run(mut self, rx: Receiver<LogRecord>) {
        let mut line = Vec::with_capacity(1024);
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            let mut written = 0;
            while let Some(record) = next {
                line.clear();
                if serde_json::to_writer(&mut line, &record).is_ok() {
                    line.push(b'\n');
                    self.append(&hour_of(&record.timestamp), &line);
                }
                written += 1;
                if written % 1024 == 0 {
                    self.written(1024);
                }
                next = rx.try_recv().ok();
            }
            self.written(written % 1024);
            self.flush_current();
            // Let records gather for a moment before the next round: under load this thread
            // then wakes (and wakes its writers' futex) a few hundred times a second instead
            // of once per record.
            std::thread::sleep(LINGER);
        }
        self.close();
    }

    /// `n` more records are out of the queue: wake ingress if it waits for room.
    fn written(&self, n: usize) {
        let before = self.backlog.pending.fetch_sub(n, Ordering::Relaxed);
        if before > LOG_QUEUE_DEPTH && before - n <= LOG_QUEUE_DEPTH {
            self.backlog.room.notify_waiters();
        }
    }

    /// Write the current segment's pending bytes. A failure (a full disk) keeps them, and
    /// the writer waits a little before the next round, which tries again first.
    fn flush_current(&mut self) {
        if let Some(s) = self.current.as_mut() {
            if let Err(e) = s.flush() {
                tracing::error!(
                    pending = s.pending.len(),
                    "cannot write event log {}: {e}; retrying",
                    s.path.display()
                );
                metrics::counter!("switchyard_log_write_failures_total").increment(1);
                std::thread::sleep(RETRY_AFTER);
            }
        }
    }

    fn append(&mut self, hour: &str, line: &[u8]) {
        let rotate = match &self.current {
            None => true,
            Some(s) => {
                s.hour != hour || s.written + line.len() as u64 > self.settings.max_segment_size
            }
        };
        if rotate {
            // A segment with bytes it cannot write yet (a full disk) stays current until
            // they are out: its records keep their order.
            let stuck = self.current.as_mut().is_some_and(|s| s.flush().is_err());
            if !stuck {
                self.close();
                self.current = self.open(hour);
            }
        }
        match self.current.as_mut() {
            Some(s) => {
                s.pending.extend_from_slice(line);
                s.written += line.len() as u64;
                if s.pending.len() >= FLUSH_AT {
                    self.flush_current();
                }
            }
            None => {
                // Cannot even open a segment (a full disk): keep the line for the next one.
                self.orphans.extend_from_slice(line);
            }
        }
    }

    fn close(&mut self) {
        self.flush_current();
        if let Some(s) = self.current.take() {
            if !s.pending.is_empty() {
                // Still unwritten: keep the bytes for the next segment.
                self.orphans.extend_from_slice(&s.pending);
            }
            drop(s.out);
            if self.settings.compress {
                compress_later(s.path);
            }
        }
    }

    /// The next segment for `hour`: the first sequence number not yet used this hour.
    fn open(&mut self, hour: &str) -> Option<Segment> {
        let used = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(hour))
                    .count()
            })
            .unwrap_or(0);
        let path = (used..used + 1000)
            .map(|n| self.dir.join(format!("{hour}-{n:03}.jsonl")))
            .find(|p| !p.exists() && !PathBuf::from(format!("{}.zst", p.display())).exists())?;
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => Some(Segment {
                hour: hour.to_string(),
                path,
                written: 0,
                out: f,
                pending: std::mem::take(&mut self.orphans),
            }),
            Err(e) => {
                tracing::error!("cannot open log segment {}: {e}", path.display());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hours() {
        assert_eq!(hour_of("2026-11-28T10:15:00.000Z"), "20261128-10");
    }

    #[test]
    fn segments_rotate_by_size_and_closed_ones_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::start(
            dir.path(),
            LogSettings {
                max_segment_size: 2000,
                compress: true,
            },
        )
        .unwrap();
        for i in 0..100 {
            log.write(LogRecord {
                recipient: Some(format!("r{i}@example.org")),
                ..LogRecord::new(RecordKind::Delivery)
            });
        }
        drop(log);
        let mut lines = 0;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(50));
            let names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect();
            if names.iter().all(|n| n.ends_with(".jsonl.zst")) && names.len() > 2 {
                lines = names
                    .iter()
                    .map(|n| {
                        let data =
                            zstd::decode_all(File::open(dir.path().join(n)).unwrap()).unwrap();
                        String::from_utf8(data).unwrap().lines().count()
                    })
                    .sum();
                break;
            }
        }
        assert_eq!(
            lines, 100,
            "every record, in compressed segments of at most 2000 bytes"
        );
    }
}
