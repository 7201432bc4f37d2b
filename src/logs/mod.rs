//! Event logs: one JSON line per event in `data_dir/logs/`.
//!
//! Segments are named `YYYYMMDD-HH-NNN.jsonl` (UTC hour, then a sequence number): a new one
//! starts every hour and whenever the current one reaches `[logs] max_segment_size`, so
//! their names sort in the order they were written. A closed
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
//!
//! A recipient's final record comes with the order to remove it from the spool
//! ([`EventSink::write_final`]): the thread hands that removal to the spool only once the
//! record is in the file (written to the OS, which a killed process cannot take back). A
//! crash in between costs a repeated delivery, logged again — never a recipient gone from
//! the spool without its record. While the log cannot write (a full disk) its removals wait
//! with its records, and the thread tries again every 100 ms.
//!
//! A segment left by a killed process may end in half a line: at start, before it is
//! compressed, it is cut back to its last whole line.

use crate::spool::{MessageId, Spool};

mod reception;
pub use reception::{missing_receptions, Reception};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use switchyard_actors::message::MessageKey;
use switchyard_actors::ports::{EventSink, SpoolPort};
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
    tx: Sender<Entry>,
    backlog: Arc<Backlog>,
    latest: LatestSegment,
}

/// The name of the newest segment, as the log thread last opened it (or as the directory
/// had it at start): a reader at the end of an older one knows there is more to read
/// without listing the directory.
#[derive(Clone, Default)]
pub struct LatestSegment(Arc<std::sync::Mutex<String>>);

impl LatestSegment {
    /// The newest segment's name; empty before the first.
    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, name: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }
}

/// What the log thread is given.
enum Entry {
    /// A record to append.
    Record(LogRecord),
    /// A final record, and the recipient to remove from the spool once it is written.
    Final(LogRecord, Removal),
    /// A Reception record, already rendered, whose copy in the spool goes once it is written.
    Reception(Reception),
    /// Answer once everything queued before it is written and its removals handed on.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// A recipient to remove from the spool once its final record is written.
struct Removal {
    key: MessageKey,
    spool: Arc<dyn SpoolPort>,
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
        let latest = LatestSegment::default();
        latest.set(segments(dir).pop().unwrap_or_default());
        let writer = SegmentWriter {
            latest: latest.clone(),
            dir: dir.to_path_buf(),
            settings,
            current: None,
            orphans: Vec::new(),
            backlog: backlog.clone(),
            failures: 0,
        };
        for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
            if entry.path().extension().is_some_and(|x| x == "tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for path in uncompressed_segments(dir)? {
            cut_partial_line(&path);
            if settings.compress {
                compress_later(path);
            }
        }
        std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(EventLog {
            tx,
            backlog,
            latest,
        })
    }

    /// The newest segment's name, kept up to date.
    pub fn latest_segment(&self) -> LatestSegment {
        self.latest.clone()
    }

    /// Queue a record. Never blocks, never drops.
    pub fn write(&self, record: LogRecord) {
        self.send(Entry::Record(record));
    }

    /// Queue a message's Reception record; once it is in the file, the spool forgets the
    /// copy it keeps with the message. Never blocks, never drops.
    pub fn write_reception(&self, reception: Reception) {
        self.send(Entry::Reception(reception));
    }

    fn send(&self, entry: Entry) {
        self.backlog.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(entry).is_err() {
            tracing::error!("event log thread has stopped; record lost");
        }
    }

    /// Wait until every record queued so far is in its file and every removal waiting on
    /// one is handed to the spool. Shutdown calls it before the spool's last sync.
    pub async fn sync(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(Entry::Barrier(done));
        let _ = wait.await;
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

impl EventSink for EventLog {
    fn write(&self, record: LogRecord) {
        EventLog::write(self, record);
    }

    fn write_final(&self, record: LogRecord, key: MessageKey, spool: Arc<dyn SpoolPort>) {
        self.send(Entry::Final(record, Removal { key, spool }));
    }

    fn sync(&self) -> futures::future::BoxFuture<'static, ()> {
        let log = self.clone();
        Box::pin(async move { EventLog::sync(&log).await })
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
    /// Failed writes since the last one that went through (logged once, counted each time).
    failures: u64,
    /// The newest segment's name, for readers.
    latest: LatestSegment,
}

/// "2026-11-28T10:15:00.000Z" → "20261128-10".
pub fn hour_of(timestamp: &str) -> String {
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

/// The segments in `dir`, by name (= the order they were written).
pub fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".jsonl.zst")
                        .or_else(|| name.strip_suffix(".jsonl"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

fn uncompressed_segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}

/// Compress `path` to `path.zst` and remove it, on a helper thread. The compressed file is
/// written under a temporary name and renamed when complete, so a `.zst` is never partial
/// (a crash or a full disk in between leaves the `.jsonl`, compressed at the next start).
/// For a moment both exist: a reader takes the `.zst` then.
fn compress_later(path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("log-compress".into())
        .spawn(move || {
            let target = PathBuf::from(format!("{}.zst", path.display()));
            let partial = PathBuf::from(format!("{}.zst.tmp", path.display()));
            let result = (|| -> std::io::Result<()> {
                let mut input = File::open(&path)?;
                let output = File::create(&partial)?;
                let mut encoder = zstd::stream::Encoder::new(output, 3)?;
                std::io::copy(&mut input, &mut encoder)?;
                encoder.finish()?.sync_all()?;
                std::fs::rename(&partial, &target)?;
                std::fs::remove_file(&path)
            })();
            if let Err(e) = result {
                let _ = std::fs::remove_file(&partial);
                tracing::error!("cannot compress log segment {}: {e}", path.display());
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start log compression: {e}");
    }
}

/// Cut a segment left by a killed process back to its last whole line (a process killed in
/// the middle of a write may leave half a record).
fn cut_partial_line(path: &Path) {
    let result = (|| -> std::io::Result<Option<u64>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        // Read back from the end a block at a time, up to the last line break: a segment may
        // be hundreds of MiB, its torn record a few hundred bytes.
        let mut end = len;
        let mut block = vec![0u8; 64 * 1024];
        let whole = loop {
            if end == 0 {
                break 0;
            }
            let start = end.saturating_sub(block.len() as u64);
            let n = (end - start) as usize;
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut block[..n])?;
            if let Some(i) = block[..n].iter().rposition(|b| *b == b'\n') {
                break start + i as u64 + 1;
            }
            end = start;
        };
        if whole == len {
            return Ok(None);
        }
        file.set_len(whole)?;
        Ok(Some(len - whole))
    })();
    match result {
        Ok(None) => {}
        Ok(Some(cut)) => tracing::warn!(
            bytes = cut,
            "event log {} ended in half a record (the process was killed while writing it): cut back to its last whole line",
            path.display()
        ),
        Err(e) => tracing::error!("cannot check event log {}: {e}", path.display()),
    }
}

impl SegmentWriter {
    fn run(mut self, rx: Receiver<Entry>) {
        let mut line = Vec::with_capacity(1024);
        // Removals and barriers whose records are not all in the file yet.
        let mut removals: Vec<Removal> = Vec::new();
        // Messages whose Reception records are written once this round's bytes are out, and
        // the spool keeping their copies.
        let mut receptions: Vec<MessageId> = Vec::new();
        let mut reception_spool: Option<Spool> = None;
        let mut barriers: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
        loop {
            // With bytes still unwritten (a full disk), wake up to try again without waiting
            // for a new record.
            let first = if self.unwritten() {
                match rx.recv_timeout(RETRY_AFTER) {
                    Ok(entry) => Some(entry),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(entry) => Some(entry),
                    Err(_) => break,
                }
            };
            let mut next = first;
            let mut taken = 0;
            while let Some(entry) = next {
                let record = match entry {
                    Entry::Record(record) => record,
                    Entry::Final(record, removal) => {
                        removals.push(removal);
                        record
                    }
                    Entry::Reception(r) => {
                        line.clear();
                        line.extend_from_slice(&r.line);
                        line.push(b'\n');
                        self.append(&r.hour, &line);
                        receptions.push(r.id);
                        reception_spool = Some(r.spool);
                        taken += 1;
                        next = rx.try_recv().ok();
                        continue;
                    }
                    Entry::Barrier(done) => {
                        barriers.push(done);
                        taken += 1;
                        next = rx.try_recv().ok();
                        continue;
                    }
                };
                line.clear();
                if serde_json::to_writer(&mut line, &record).is_ok() {
                    line.push(b'\n');
                    self.append(&hour_of(&record.timestamp), &line);
                }
                taken += 1;
                if taken % 1024 == 0 {
                    self.taken(1024);
                }
                next = rx.try_recv().ok();
            }
            self.taken(taken % 1024);
            self.flush_current();
            if !self.unwritten() {
                for r in removals.drain(..) {
                    r.spool.remove(r.key);
                }
                if let Some(spool) = &reception_spool {
                    spool.receptions_logged(std::mem::take(&mut receptions));
                }
                for done in barriers.drain(..) {
                    let _ = done.send(());
                }
            }
            // Let records gather for a moment before the next round: under load this thread
            // then wakes (and wakes its writers' futex) a few hundred times a second instead
            // of once per record.
            std::thread::sleep(LINGER);
        }
        self.close();
        if !self.unwritten() {
            for r in removals {
                r.spool.remove(r.key);
            }
            if let Some(spool) = &reception_spool {
                spool.receptions_logged(receptions);
            }
        }
    }

    /// Whether some bytes could not be written yet.
    fn unwritten(&self) -> bool {
        !self.orphans.is_empty() || self.current.as_ref().is_some_and(|s| !s.pending.is_empty())
    }

    /// `n` more entries are out of the queue: wake ingress if it waits for room.
    fn taken(&self, n: usize) {
        let before = self.backlog.pending.fetch_sub(n, Ordering::Relaxed);
        if before > LOG_QUEUE_DEPTH && before - n <= LOG_QUEUE_DEPTH {
            self.backlog.room.notify_waiters();
        }
    }

    /// Write the current segment's pending bytes. A failure (a full disk) keeps them, and
    /// the next round, at most [`RETRY_AFTER`] later, tries again first.
    fn flush_current(&mut self) {
        if self.current.is_none() && !self.orphans.is_empty() {
            // No segment could be opened yet: try again.
            let now = switchyard_actors::record::rfc3339(std::time::SystemTime::now());
            self.current = self.open(&hour_of(&now));
        }
        if let Some(s) = self.current.as_mut() {
            match s.flush() {
                Err(e) => {
                    if self.failures == 0 {
                        tracing::error!(
                            pending = s.pending.len(),
                            "cannot write event log {}: {e}; retrying every {RETRY_AFTER:?}, its records and the spool removals waiting on them are kept",
                            s.path.display()
                        );
                    }
                    self.failures += 1;
                    metrics::counter!("switchyard_log_write_failures_total").increment(1);
                }
                Ok(()) if self.failures > 0 => {
                    tracing::info!(
                        failed_writes = self.failures,
                        "event log {} is written again; nothing was dropped",
                        s.path.display()
                    );
                    self.failures = 0;
                }
                Ok(()) => {}
            }
        }
    }

    fn append(&mut self, hour: &str, line: &[u8]) {
        let rotate = match &self.current {
            None => true,
            // Only a later hour starts a segment: a record stamped a moment before the hour
            // turned, filed after it, goes into the current one. Segment names then sort in
            // the order they were written, which readers of the log (webhooks) rely on.
            Some(s) => {
                hour > s.hour.as_str()
                    || s.written + line.len() as u64 > self.settings.max_segment_size
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

    /// The next segment for `hour`: past the highest sequence number used this hour.
    fn open(&mut self, hour: &str) -> Option<Segment> {
        // Never an hour before the latest segment's (a record stamped before the hour
        // turned, a size rotation just after it, a clock stepped back across a restart):
        // names must sort in the order segments are written.
        let latest = self.latest.get();
        let latest_hour = latest.get(..11).unwrap_or_default();
        let hour = latest_hour.max(hour);
        // Past the latest's sequence number in its hour (the writer names every segment,
        // and `latest` starts from the directory).
        let used = latest
            .strip_prefix(&format!("{hour}-"))
            .and_then(|seq| seq.parse::<u32>().ok())
            .map_or(0, |seq| seq + 1);
        let path = (used..used + 1000)
            .map(|n| self.dir.join(format!("{hour}-{n:03}.jsonl")))
            .find(|p| !p.exists() && !PathBuf::from(format!("{}.zst", p.display())).exists())?;
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => {
                let name = path.file_stem().map(|n| n.to_string_lossy().into_owned());
                self.latest.set(name.unwrap_or_default());
                Some(Segment {
                    hour: hour.to_string(),
                    path,
                    written: 0,
                    out: f,
                    pending: std::mem::take(&mut self.orphans),
                })
            }
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

    #[tokio::test]
    async fn a_final_record_is_in_the_file_before_its_recipient_leaves_the_spool() {
        use switchyard_actors::memory::{MemorySpool, SpoolCall};
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::start(
            dir.path(),
            LogSettings {
                max_segment_size: 1 << 20,
                compress: false,
            },
        )
        .unwrap();
        let spool = Arc::new(MemorySpool::default());
        let key = [7u8; 20];
        let record = LogRecord {
            recipient: Some("last@example.org".into()),
            ..LogRecord::new(RecordKind::Delivery)
        };
        EventSink::write_final(&log, record, key, spool.clone());
        for _ in 0..200 {
            if !spool.calls().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // By the time the spool hears of it, the record is in the file.
        let text = std::fs::read_to_string(&uncompressed_segments(dir.path()).unwrap()[0]).unwrap();
        assert!(matches!(spool.calls()[..], [SpoolCall::Remove(k)] if k == key));
        assert!(text.contains("last@example.org"), "{text}");
        log.sync().await;
    }

    #[test]
    fn a_half_written_last_line_is_cut_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("20261129-06-000.jsonl");
        std::fs::write(&path, "{\"type\":\"Delivery\"}\n{\"type\":\"Deliv").unwrap();
        cut_partial_line(&path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"type\":\"Delivery\"}\n"
        );
        cut_partial_line(&path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"type\":\"Delivery\"}\n"
        );
    }

    #[test]
    fn a_segment_never_sorts_before_one_written_earlier() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::start(
            dir.path(),
            LogSettings {
                max_segment_size: 300,
                compress: false,
            },
        )
        .unwrap();
        // Stamped 13:00, then (a moment earlier, filed later) 12:59, each filling a segment.
        for (i, at) in ["2026-11-29T13:00:00.001Z", "2026-11-29T12:59:59.999Z"]
            .iter()
            .cycle()
            .take(6)
            .enumerate()
        {
            log.write(LogRecord {
                timestamp: at.to_string(),
                recipient: Some(format!("r{i}@{}", "x".repeat(200))),
                ..LogRecord::new(RecordKind::Delivery)
            });
        }
        drop(log);
        std::thread::sleep(Duration::from_millis(300));
        let names = segments(dir.path());
        assert!(names.len() >= 3, "{names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("20261129-13-")),
            "{names:?}"
        );
        // In name order, the records are in the order they were written.
        let mut order = Vec::new();
        for n in &names {
            let text =
                String::from_utf8(crate::webhooks::tail::read_segment(dir.path(), n).unwrap())
                    .unwrap();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                order.push(v["recipient"].as_str().unwrap()[..2].to_string());
            }
        }
        assert_eq!(order, ["r0", "r1", "r2", "r3", "r4", "r5"]);
    }

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
