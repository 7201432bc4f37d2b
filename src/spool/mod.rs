//! The spool: every accepted message, durable on disk before its `250`.
//!
//! One fjall database under `data_dir/spool` with three keyspaces:
//! - `messages`: message id → envelope + body, written once;
//! - `queue`: message id + recipient index → scheduling state of one recipient
//!   (queue name, attempts, next due time, created time);
//! - `state`: suspensions, overrides and counters that must survive a restart.
//!
//! A message is stored once, whatever its number of recipients; each recipient gets its own
//! `queue` entry, because each can have its own fate (delivered, deferred, bounced) and its own
//! scheduled queue (`campaign:tenant@domain`). The message record goes when its last
//! recipient entry goes.
//!
//! Durability: all writes go through one writer thread that does *group commit*: it takes
//! every write waiting in its channel — new messages from ingress, and removals and
//! reschedulings from the scheduled queues — puts them into one fjall batch and commits it
//! with `PersistMode::SyncAll`, then answers each new-message request. (A batch holding only
//! settlements is not fsynced on its own: see `Writer::commit_ops`.) Many concurrent SMTP sessions thus
//! cost one fsync per batch, not one per message, and no caller hears "stored" before the
//! fsync returned. A batch of fewer than 8 writes first waits `[spool] commit_delay`
//! (default 300 µs) for more to join it: on a busy server that halves the fsyncs and the
//! CPU they cost, for a fraction of a millisecond of latency. Before a batch of new messages the writer checks
//! the filesystem's free space: it must hold each message twice (journal, then table or
//! blob), `[spool] min_free_space`, and what a flush of the memtables can still write (the
//! live mail in them) — else `452 4.3.1`, cleanly, instead of
//! failing half-way through a journal write or leaving no room to give space back. Deleted
//! messages' space comes back when their memtables are flushed: the writer starts those
//! flushes when a batch is refused (at most once a second; under normal load fjall flushes
//! as memtables fill);
//! fjall seals its active journal only past 64 MB; on a volume too small for that the spool
//! rotates to a new generation instead.
//!
//! Where things are: this file holds the records and the [`Spool`] handle; `writer.rs` the
//! group-commit writer thread, the full-disk guard and the compactor; `generation.rs` the
//! generations on disk and the rotation's copy and clean-up.

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

mod generation;
mod writer;

use generation::{current_generation, Slot, Store};
use writer::{Compactor, Writer};

/// Requests a batch may hold before it is committed, so one commit never grows without bound.
const MAX_BATCH_REQUESTS: usize = 4096;
/// Bytes a batch may hold before it is committed.
const MAX_BATCH_BYTES: usize = 64 << 20;
/// New messages that may wait for the writer; injectors beyond that wait (back-pressure).
/// Removals and reschedulings are not limited here: there is exactly one per message in
/// flight, so their number is bounded by the ready queues' capacity.
const WRITE_QUEUE_DEPTH: usize = 8192;
/// How long a reading of the journal's size on disk is used before it is read again.
const JOURNAL_SIZE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Memtable flushes started to reclaim space, at most this often.
const RECLAIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// A batch with fewer writes than this waits `commit_delay` for more before its fsync.
const COMMIT_SIBLINGS: usize = 8;
/// An empty spool whose message files take more than this on disk is compacted.
const COMPACT_EMPTY_ABOVE: u64 = 32 << 20;
/// fjall's block cache for the spool.
const SPOOL_CACHE: u64 = 8 << 20;
/// Memory the spool's memtables may take before they are flushed (at most every
/// [`RECLAIM_EVERY`]). fjall's own limit is 64 MiB per keyspace, and a spool holding
/// deferred mail never stops writing, so without this RSS climbed by the memtables' size
/// over a 10-minute soak (bench/soak.sh). Flushing writes only what is still alive: for
/// relayed mail mostly tombstones.
const MEMTABLE_BUDGET: u64 = 32 << 20;
/// Table and blob files of the message store beyond which a flush for size is followed by a
/// compaction ([`Compactor`]): without it they piled up, three open files more per flush,
/// over a 10-minute soak (bench/soak.sh).
const MESSAGE_FILES_ABOVE: usize = 12;
/// An empty spool flushes memtables holding more than this ([`Spool::upkeep`]).
const FLUSH_EMPTY_ABOVE: u64 = 4 << 20;
/// Compactions to give space back start at most this often.
const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A journal smaller than this is never a reason to rotate the spool ([`Writer::rotate`]).
const ROTATE_JOURNAL_ABOVE: u64 = 8 << 20;
/// Free space a rotation needs besides twice the live data it copies.
const ROTATE_ROOM: u64 = 1 << 20;
/// How often the writer looks whether the spool should rotate.
const ROTATION_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the spool could not take a write.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The filesystem is (nearly) full.
    #[error("spool disk is full ({available} bytes free, {required} required)")]
    DiskFull {
        /// Free bytes on the spool's filesystem.
        available: u64,
        /// Bytes the batch plus the reserve need.
        required: u64,
    },
    /// fjall failed (I/O error, poisoned journal).
    #[error("spool write failed: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error("corrupt spool record: {0}")]
    Corrupt(String),
    /// The writer thread is gone (shutdown).
    #[error("spool writer has stopped")]
    Closed,
}

impl From<fjall::Error> for SpoolError {
    fn from(e: fjall::Error) -> Self {
        SpoolError::Storage(e.to_string())
    }
}

/// A time-ordered message id (UUIDv7), printed as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub uuid::Uuid);

impl MessageId {
    /// A new id; ids made later sort after ids made earlier.
    pub fn new() -> Self {
        MessageId(uuid::Uuid::now_v7())
    }
    fn key(&self) -> [u8; 16] {
        *self.0.as_bytes()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.simple().fmt(f)
    }
}

/// Who sent a message and to whom, as the ingress saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM address (empty for the null sender).
    pub sender: String,
    /// RCPT TO addresses, in order.
    pub recipients: Vec<String>,
    /// The tenant the message belongs to.
    pub tenant: String,
    /// Its campaign, if it named one.
    pub campaign: Option<String>,
    /// Reception time, milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// The injecting client's address.
    pub client_addr: String,
    /// The client's EHLO/HELO name.
    pub helo: String,
    /// The body is stored in wire form (dot-stuffed, ending in CRLF); records from before
    /// that was done are not.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dot_stuffed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Scheduling state of one recipient of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The recipient address.
    pub recipient: String,
    /// Scheduled queue name, `campaign:tenant@domain` (no `campaign:` without a campaign).
    pub queue: String,
    /// Owning tenant.
    pub tenant: String,
    /// Owning campaign.
    pub campaign: Option<String>,
    /// Destination domain (lower case).
    pub domain: String,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, ms since the epoch.
    pub due_ms: u64,
    /// When the message was received, ms since the epoch.
    pub created_ms: u64,
    /// Time spent held by suspensions, ms; not counted towards `max_age`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl QueueEntry {
    /// This recipient as the delivery engine takes it, under spool key `key`.
    pub fn submission(&self, key: MessageKey) -> switchyard_actors::engine::Submission {
        switchyard_actors::engine::Submission {
            queue: switchyard_actors::message::QueueIdentity {
                tenant: self.tenant.as_str().into(),
                campaign: self.campaign.as_deref().map(Into::into),
                domain: self.domain.as_str().into(),
            },
            message: switchyard_actors::message::QueuedMessage {
                key,
                recipient: self.recipient.as_str().into(),
                attempts: self.attempts,
                due_ms: self.due_ms,
                created_ms: self.created_ms,
                held_ms: self.held_ms,
                hot: None,
            },
        }
    }
}

/// The name of the scheduled queue for (tenant, campaign, domain).
pub fn queue_name(tenant: &str, campaign: Option<&str>, domain: &str) -> String {
    match campaign {
        Some(c) => format!("{c}:{tenant}@{domain}"),
        None => format!("{tenant}@{domain}"),
    }
}

/// A message ready to be spooled.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Its id.
    pub id: MessageId,
    /// Its envelope.
    pub envelope: Envelope,
    /// The RFC 5322 content as it will be sent (shared with the hot copy, not copied).
    pub body: bytes::Bytes,
    /// One entry per recipient, in envelope order.
    pub entries: Vec<QueueEntry>,
    /// Its Reception record as the event log will write it (one JSON object), kept with
    /// the message until the log has it ([`Spool::unlogged_receptions`]).
    pub reception: bytes::Bytes,
}

/// Key of a recipient's queue entry (see [`entry_key`]): the actors' one key type.
pub use switchyard_actors::message::MessageKey;

/// Key of a recipient's queue entry: message id then recipient index, so entries sort by time.
pub fn entry_key(id: MessageId, index: u32) -> MessageKey {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&id.key());
    k[16..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Split an entry key back into its message id and recipient index.
pub fn parse_entry_key(k: &[u8]) -> Option<(MessageId, u32)> {
    let id: [u8; 16] = k.get(..16)?.try_into().ok()?;
    let idx: [u8; 4] = k.get(16..20)?.try_into().ok()?;
    Some((
        MessageId(uuid::Uuid::from_bytes(id)),
        u32::from_be_bytes(idx),
    ))
}

fn encode_message(envelope: &Envelope, body: &[u8]) -> Vec<u8> {
    // Serializing a struct of strings to JSON cannot fail.
    let head = serde_json::to_vec(envelope).unwrap_or_default();
    let mut v = Vec::with_capacity(4 + head.len() + body.len());
    v.extend_from_slice(&(head.len() as u32).to_le_bytes());
    v.extend_from_slice(&head);
    v.extend_from_slice(body);
    v
}

/// The envelope of a stored record, and where its body starts.
fn decode_envelope(v: &[u8]) -> Result<(Envelope, usize), SpoolError> {
    let corrupt = |m: &str| SpoolError::Corrupt(m.to_string());
    let len: [u8; 4] = v
        .get(..4)
        .ok_or_else(|| corrupt("short record"))?
        .try_into()
        .map_err(|_| corrupt("short record"))?;
    let len = u32::from_le_bytes(len) as usize;
    let head = v
        .get(4..4 + len)
        .ok_or_else(|| corrupt("truncated envelope"))?;
    let envelope = serde_json::from_slice(head).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
    Ok((envelope, 4 + len))
}

fn decode_message(v: &[u8]) -> Result<(Envelope, Vec<u8>), SpoolError> {
    let (envelope, at) = decode_envelope(v)?;
    Ok((envelope, v[at..].to_vec()))
}

enum WriteOp {
    Store {
        message: Box<NewMessage>,
        done: oneshot::Sender<Result<(), SpoolError>>,
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    Remove(MessageKey),
    Reschedule {
        key: MessageKey,
        attempts: u32,
        due_ms: u64,
        held_ms: u64,
    },
    PutState {
        key: String,
        value: Vec<u8>,
    },
    DeleteState(String),
    /// The event log has written these messages' Reception records.
    ReceptionsLogged(Vec<MessageId>),
    /// Rotate now, whatever the journal's size (tests).
    #[cfg(test)]
    Rotate(oneshot::Sender<Result<(), String>>),
    /// Answer once every write queued before it has been through the writer: `true` when
    /// its state changes and settlements were committed and fsynced.
    Sync(oneshot::Sender<bool>),
}

/// The spool handle; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    /// The generation in use ([`Store`]); the writer swaps it when the spool rotates.
    store: Slot,
    /// `None` only while dropping, so the writer sees its channel close.
    writer: Option<mpsc::UnboundedSender<WriteOp>>,
    store_permits: Arc<tokio::sync::Semaphore>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    fn publish(&self) {
        metrics::gauge!("switchyard_spool_messages")
            .set(self.messages.load(Ordering::Relaxed) as f64);
        metrics::gauge!("switchyard_spool_bytes").set(self.bytes.load(Ordering::Relaxed) as f64);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the channel, then wait for the writer so the database is released (and its
        // last batch answered) before whoever dropped us goes on.
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

impl Spool {
    /// Open (or create) the spool under `dir` and start its writer thread, with no commit
    /// delay.
    pub fn open(dir: &Path, min_free_space: u64) -> Result<Spool, SpoolError> {
        Spool::open_with_delay(dir, min_free_space, std::time::Duration::ZERO)
    }

    /// [`Spool::open`] with a commit delay: a batch of fewer than 8 writes waits this long
    /// for more before its fsync (`[spool] commit_delay`).
    pub fn open_with_delay(
        dir: &Path,
        min_free_space: u64,
        commit_delay: std::time::Duration,
    ) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SpoolError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let store = Arc::new(Store::open(&current_generation(dir)?)?);
        let (mut count, mut bytes) = (0u64, 0u64);
        // Sizes only: with key-value separation the bodies are not read.
        for item in store.messages.iter() {
            bytes += u64::from(item.size()?);
            count += 1;
        }
        let counters = Arc::new(Counters {
            messages: AtomicU64::new(count),
            bytes: AtomicU64::new(bytes),
        });
        counters.publish();
        let slot = Slot(Arc::new(std::sync::RwLock::new(store.clone())));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            store,
            slot: slot.clone(),
            counters: counters.clone(),
            path: dir.to_path_buf(),
            min_free_space,
            commit_delay,
            last_reclaim: std::cell::Cell::new(None),
            last_flush: std::cell::Cell::new(None),
            compactor: Compactor::start(slot.clone())?,
            journal_size: std::cell::Cell::new((None, 0)),
            last_rotation_check: None,
        };
        let writer_thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| SpoolError::Storage(format!("cannot start spool writer: {e}")))?;
        Ok(Spool {
            inner: Arc::new(Inner {
                store: slot,
                writer: Some(tx),
                store_permits: Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE_DEPTH)),
                writer_thread: Some(writer_thread),
                counters,
            }),
        })
    }

    /// Store a message durably; returns once it is fsynced (or failed).
    pub async fn store(&self, message: NewMessage) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        let permit = self
            .inner
            .store_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SpoolError::Closed)?;
        let writer = self.inner.writer.as_ref().ok_or(SpoolError::Closed)?;
        writer
            .send(WriteOp::Store {
                message: Box::new(message),
                done,
                _permit: permit,
            })
            .map_err(|_| SpoolError::Closed)?;
        wait.await.map_err(|_| SpoolError::Closed)?
    }

    fn send_op(&self, op: WriteOp) {
        match self.inner.writer.as_ref() {
            Some(w) if w.send(op).is_ok() => {}
            _ => tracing::error!("spool writer has stopped; a settlement was not recorded"),
        }
    }

    /// A recipient is done: remove its entry (and the message with its last entry).
    pub fn remove(&self, key: MessageKey) {
        self.send_op(WriteOp::Remove(key));
    }

    /// A recipient was deferred: record its attempts and next due time.
    pub fn reschedule(&self, key: MessageKey, attempts: u32, due_ms: u64, held_ms: u64) {
        self.send_op(WriteOp::Reschedule {
            key,
            attempts,
            due_ms,
            held_ms,
        });
    }

    /// Wait until every write queued so far is committed and fsynced: settlements, which
    /// are otherwise only handed to the OS, included. Shutdown calls it last. `false` when
    /// they could not be (a storage error, or the writer has stopped).
    pub async fn sync(&self) -> bool {
        let (done, wait) = oneshot::channel();
        self.send_op(WriteOp::Sync(done));
        wait.await.unwrap_or(false)
    }

    /// The event log has written these messages' Reception records: forget the copies
    /// kept with them. A settlement: not fsynced on its own.
    pub fn receptions_logged(&self, ids: Vec<MessageId>) {
        if !ids.is_empty() {
            self.send_op(WriteOp::ReceptionsLogged(ids));
        }
    }

    /// The Reception records stored with their messages that the event log may not have
    /// written yet: a process killed between a message's `250` and the log's write leaves
    /// them (the daemon writes the missing ones at start, see `logs::missing_receptions`).
    /// After a clean stop there are none.
    pub fn unlogged_receptions(&self) -> Result<Vec<(MessageId, Vec<u8>)>, SpoolError> {
        let mut out = Vec::new();
        for item in self.inner.store.get().receptions.iter() {
            let (k, v) = item.into_inner()?;
            let id: [u8; 16] = k[..]
                .try_into()
                .map_err(|_| SpoolError::Corrupt("bad reception key".into()))?;
            out.push((MessageId(uuid::Uuid::from_bytes(id)), v.to_vec()));
        }
        Ok(out)
    }

    /// Every state entry whose key starts with `prefix`.
    pub fn state_entries(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        let mut out = Vec::new();
        for item in self.inner.store.get().state.prefix(prefix.as_bytes()) {
            let (k, v) = item.into_inner()?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// The entries of the `state` keyspace under `prefix`, read back from JSON (see
    /// [`read_state`]).
    pub fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, T)>, SpoolError> {
        Ok(read_state(self.state_entries(prefix)?, prefix, None))
    }

    /// Remove messages that no recipient entry refers to any more (left by a crash between a
    /// last removal and the message's own removal). Returns how many went.
    pub fn remove_orphans(&self) -> Result<usize, SpoolError> {
        let store = self.inner.store.get();
        let mut orphans = Vec::new();
        for item in store.messages.iter() {
            let k = item.key()?;
            if store.queue.prefix(&k).next().is_none() {
                orphans.push(k);
            }
        }
        for k in &orphans {
            let size = store.messages.size_of(k)?.unwrap_or(0);
            store.messages.remove(k.clone())?;
            self.inner.counters.messages.fetch_sub(1, Ordering::Relaxed);
            self.inner
                .counters
                .bytes
                .fetch_sub(u64::from(size), Ordering::Relaxed);
        }
        self.inner.counters.publish();
        Ok(orphans.len())
    }

    /// Every few seconds (the server's upkeep): set the spool gauges again (they must not go
    /// idle while the spool is quiet), and flush the memtables of an empty spool that still
    /// hold more than [`FLUSH_EMPTY_ABOVE`]: a wave of mail gone would otherwise leave its
    /// entries and tombstones in memory long after it.
    pub fn upkeep(&self) {
        let inner = &self.inner;
        inner.counters.publish();
        let store = inner.store.get();
        if inner.counters.messages.load(Ordering::Relaxed) == 0
            && store.db.write_buffer_size() > FLUSH_EMPTY_ABOVE
        {
            store.flush_memtables();
        }
    }

    /// Messages in the spool.
    pub fn message_count(&self) -> u64 {
        self.inner.counters.messages.load(Ordering::Relaxed)
    }

    /// Bytes of spooled message records.
    pub fn byte_count(&self) -> u64 {
        self.inner.counters.bytes.load(Ordering::Relaxed)
    }

    /// Read a message's envelope and body.
    pub fn read_message(&self, id: MessageId) -> Result<Option<(Envelope, Vec<u8>)>, SpoolError> {
        match self.inner.store.get().messages.get(id.key())? {
            Some(v) => decode_message(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Sender and content of the message a recipient entry belongs to.
    pub fn load(
        &self,
        key: &MessageKey,
    ) -> Result<switchyard_actors::message::LoadedMessage, SpoolError> {
        let id = MessageId(uuid::Uuid::from_bytes(
            key[..16].try_into().unwrap_or_default(),
        ));
        let Some(v) = self.inner.store.get().messages.get(id.key())? else {
            return Err(SpoolError::Corrupt(format!("message {id} is missing")));
        };
        let (envelope, at) = decode_envelope(&v)?;
        Ok(switchyard_actors::message::LoadedMessage {
            sender: envelope.sender,
            body: bytes::Bytes::copy_from_slice(&v[at..]),
            stuffed: envelope.dot_stuffed,
        })
    }

    /// Every recipient entry in the spool, oldest first (of the generation in use when it
    /// started, which it keeps open).
    pub fn queue_entries(
        &self,
    ) -> impl Iterator<Item = Result<(MessageId, u32, QueueEntry), SpoolError>> + '_ {
        let store = self.inner.store.get();
        let entries = store.queue.iter();
        entries.map(move |item| {
            let _open = &store;
            let (k, v) = item.into_inner()?;
            let (id, idx) =
                parse_entry_key(&k).ok_or_else(|| SpoolError::Corrupt("bad queue key".into()))?;
            let entry =
                serde_json::from_slice(&v).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
            Ok((id, idx, entry))
        })
    }
}

impl switchyard_actors::ports::SpoolPort for Spool {
    fn remove(&self, key: MessageKey) {
        Spool::remove(self, key);
    }

    fn reschedule(&self, key: MessageKey, attempts: u32, due_ms: u64, held_ms: u64) {
        Spool::reschedule(self, key, attempts, due_ms, held_ms);
    }

    fn put_state(&self, key: String, value: Vec<u8>) {
        self.send_op(WriteOp::PutState { key, value });
    }

    fn delete_state(&self, key: String) {
        self.send_op(WriteOp::DeleteState(key));
    }

    fn sync(&self) -> futures::future::BoxFuture<'static, bool> {
        let spool = self.clone();
        Box::pin(async move { Spool::sync(&spool).await })
    }

    fn load(&self, key: &MessageKey) -> Result<switchyard_actors::ports::LoadedMessage, String> {
        Spool::load(self, key).map_err(|e| e.to_string())
    }
}

/// State entries (as [`Spool::state_entries`] lists them) read back from JSON: (key, the
/// key after `prefix`, value). One that cannot be read back is logged and left out — and,
/// given `store`, deleted from it.
pub fn read_state<T: serde::de::DeserializeOwned>(
    entries: Vec<(String, Vec<u8>)>,
    prefix: &str,
    store: Option<&dyn switchyard_actors::ports::SpoolPort>,
) -> Vec<(String, String, T)> {
    entries
        .into_iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix(prefix)?.to_string();
            match serde_json::from_slice(&value) {
                Ok(v) => Some((key, name, v)),
                Err(e) => {
                    match store {
                        Some(store) => {
                            tracing::error!("spool state {key} cannot be read back ({e}); dropped");
                            store.delete_state(key);
                        }
                        None => {
                            tracing::error!("spool state {key} cannot be read back ({e}); left out")
                        }
                    }
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn message(tenant: &str, rcpts: &[&str]) -> NewMessage {
        let id = MessageId::new();
        NewMessage {
            id,
            envelope: Envelope {
                sender: "a@example.com".into(),
                recipients: rcpts.iter().map(|s| s.to_string()).collect(),
                tenant: tenant.into(),
                campaign: Some("spring".into()),
                received_ms: 1,
                client_addr: "127.0.0.1:1".into(),
                helo: "client".into(),
                dot_stuffed: false,
            },
            body: bytes::Bytes::from_static(b"Subject: hi\r\n\r\nhello\r\n"),
            entries: rcpts
                .iter()
                .map(|r| QueueEntry {
                    recipient: r.to_string(),
                    queue: queue_name(tenant, Some("spring"), "example.org"),
                    tenant: tenant.into(),
                    campaign: Some("spring".into()),
                    domain: "example.org".into(),
                    attempts: 0,
                    due_ms: 1,
                    created_ms: 1,
                    held_ms: 0,
                })
                .collect(),
            reception: bytes::Bytes::from(format!(r#"{{"type":"Reception","id":"{id}"}}"#)),
        }
    }

    #[tokio::test]
    async fn stored_messages_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let m = message("acme", &["x@example.org", "y@example.org"]);
        let id = m.id;
        {
            let spool = Spool::open(dir.path(), 0).unwrap();
            spool.store(m.clone()).await.unwrap();
            assert_eq!(spool.message_count(), 1);
        }
        let spool = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(spool.message_count(), 1);
        let (env, body) = spool.read_message(id).unwrap().unwrap();
        assert_eq!(env, m.envelope);
        assert_eq!(body, m.body);
        let entries: Vec<_> = spool.queue_entries().map(Result::unwrap).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].2.queue, "spring:acme@example.org");
    }

    #[tokio::test]
    async fn full_disk_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), u64::MAX / 4).unwrap();
        let err = spool
            .store(message("acme", &["x@example.org"]))
            .await
            .unwrap_err();
        assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
        assert_eq!(spool.message_count(), 0);
    }
}
