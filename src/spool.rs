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
//! blob), `[spool] min_free_space`, and the journal not yet flushed (a flush rewrites what
//! is alive in it before the journal file can go) — else `452 4.3.1`, cleanly, instead of
//! failing half-way through a journal write or leaving no room to give space back. Deleted
//! messages' space comes back when their memtables are flushed: the writer starts those
//! flushes when a batch is refused (at most once a second; under normal load fjall flushes
//! as memtables fill);
//! fjall seals its active journal only past 64 MB, so up to that much returns as more mail
//! flows.

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

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

/// The group-commit writer, alone on its thread.
struct Writer {
    /// The generation it writes to: the same as `slot` holds.
    store: Arc<Store>,
    slot: Slot,
    counters: Arc<Counters>,
    /// The spool's directory (`data_dir/spool`), where its generations live.
    path: PathBuf,
    min_free_space: u64,
    commit_delay: std::time::Duration,
    last_reclaim: std::cell::Cell<Option<std::time::Instant>>,
    /// When the memtables were last flushed for their size ([`MEMTABLE_BUDGET`]).
    last_flush: std::cell::Cell<Option<std::time::Instant>>,
    /// Requests to the [`Compactor`] thread.
    compactor: std::sync::mpsc::SyncSender<()>,
    /// The journal's size on disk, read at most every [`JOURNAL_SIZE_EVERY`].
    journal_size: std::cell::Cell<(Option<std::time::Instant>, u64)>,
    /// When the writer last looked whether the spool should rotate ([`Writer::rotate`]).
    last_rotation_check: Option<std::time::Instant>,
}

/// One generation of the spool: a fjall database with its keyspaces, in its own directory
/// under the spool's (`gen-NNNNNN`; a spool from before generations is its own directory).
/// fjall seals its active journal only past 64 MB, so on a small volume the journal of mail
/// long delivered could fill the disk: the writer then starts a new generation, copies what
/// is still alive into it, and deletes the old one whole ([`Writer::rotate`]).
struct Store {
    dir: PathBuf,
    db: Database,
    messages: Keyspace,
    queue: Keyspace,
    state: Keyspace,
    /// Message id → its Reception record, until the event log has written it (see
    /// [`Spool::unlogged_receptions`]).
    receptions: Keyspace,
}

impl Store {
    fn open(dir: &Path) -> Result<Store, SpoolError> {
        // The spool reads little (recovery, the rare cold message): a small block cache, not
        // fjall's 32 MiB, which a wave of deliveries fills and RSS then keeps showing.
        let db = Database::builder(dir).cache_size(SPOOL_CACHE).open()?;
        // Bodies are large and written once: keep them out of the LSM's compaction path.
        let messages = db.keyspace("messages", || {
            KeyspaceCreateOptions::default()
                .with_kv_separation(Some(KvSeparationOptions::default()))
        })?;
        let queue = db.keyspace("queue", KeyspaceCreateOptions::default)?;
        // Suspensions and shaping overrides, keyed "suspension/ID", "override/ID".
        let state = db.keyspace("state", KeyspaceCreateOptions::default)?;
        let receptions = db.keyspace("receptions", KeyspaceCreateOptions::default)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            messages,
            queue,
            state,
            receptions,
        })
    }

    fn keyspaces(&self) -> [&Keyspace; 4] {
        [&self.messages, &self.queue, &self.state, &self.receptions]
    }

    /// Start flushing every memtable (fjall does it in the background).
    fn flush_memtables(&self) {
        for ks in self.keyspaces() {
            if let Err(e) = ks.rotate_memtable() {
                tracing::warn!("spool: cannot flush a memtable: {e}");
            }
        }
    }
}

/// The generation in use, shared by the writer (which swaps it) and the readers.
#[derive(Clone)]
struct Slot(Arc<std::sync::RwLock<Arc<Store>>>);

impl Slot {
    fn get(&self) -> Arc<Store> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, store: Arc<Store>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = store;
    }
}

/// The file in the spool's directory that names the generation in use.
const GENERATION_FILE: &str = "generation";
/// What fjall keeps at the top of its directory: a spool from before generations has these
/// in the spool's own directory.
const FJALL_TOP_LEVEL: [&str; 3] = ["version", "lock", "keyspaces"];

fn generation_name(n: u64) -> String {
    format!("gen-{n:06}")
}

fn generation_number(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

/// The directory of the generation in use: named by the generation file, else the spool's
/// own directory when it holds a database from before generations, else a first generation.
/// Directories of other generations (left by a rotation a crash interrupted, or by a
/// process that stopped before it deleted the old one) are removed.
fn current_generation(spool_dir: &Path) -> Result<PathBuf, SpoolError> {
    let io = |what: &str, e: std::io::Error| {
        SpoolError::Storage(format!("{what} in {}: {e}", spool_dir.display()))
    };
    let named = match std::fs::read_to_string(spool_dir.join(GENERATION_FILE)) {
        Ok(name) => Some(name.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("cannot read the generation file", e)),
    };
    let legacy = FJALL_TOP_LEVEL.iter().any(|f| spool_dir.join(f).exists());
    let current = match named {
        Some(name) if generation_number(&name).is_some() => spool_dir.join(name),
        Some(name) => {
            return Err(SpoolError::Corrupt(format!(
                "{} names no generation: {name:?}",
                spool_dir.join(GENERATION_FILE).display()
            )))
        }
        None if legacy => return Ok(spool_dir.to_path_buf()),
        None => {
            let first = spool_dir.join(generation_name(1));
            write_generation_file(spool_dir, &generation_name(1))
                .map_err(|e| io("cannot write the generation file", e))?;
            first
        }
    };
    for entry in std::fs::read_dir(spool_dir).map_err(|e| io("cannot list", e))? {
        let path = entry.map_err(|e| io("cannot list", e))?.path();
        let is_generation = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| generation_number(n).is_some());
        if is_generation && path != current {
            tracing::info!(
                "spool: removing {}, a generation no longer in use",
                path.display()
            );
            std::fs::remove_dir_all(&path).map_err(|e| io("cannot remove an old generation", e))?;
        }
    }
    if legacy {
        remove_generation(spool_dir, spool_dir)
            .map_err(|e| io("cannot remove the old spool", e))?;
    }
    Ok(current)
}

/// Name `name` the generation in use: written under a temporary name, fsynced, renamed,
/// and the directory fsynced, so a crash leaves either the old name or the new one.
fn write_generation_file(spool_dir: &Path, name: &str) -> std::io::Result<()> {
    use std::io::Write;
    let partial = spool_dir.join(format!("{GENERATION_FILE}.tmp"));
    let mut f = std::fs::File::create(&partial)?;
    f.write_all(format!("{name}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&partial, spool_dir.join(GENERATION_FILE))?;
    std::fs::File::open(spool_dir)?.sync_all()
}

/// Delete a generation no longer in use: its directory, or for a spool from before
/// generations, fjall's files at the top of the spool's directory.
fn remove_generation(spool_dir: &Path, dir: &Path) -> std::io::Result<()> {
    if dir != spool_dir {
        return std::fs::remove_dir_all(dir);
    }
    for entry in std::fs::read_dir(spool_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if FJALL_TOP_LEVEL.contains(&name) && path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else if FJALL_TOP_LEVEL.contains(&name) || name.ends_with(".jnl") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
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

/// Disk space the spool's journal files use now (blocks allocated, not their length).
fn journal_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "jnl"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Add `op` to the batch, counting a new message's bytes.
fn take_into(ops: &mut Vec<WriteOp>, bytes: &mut usize, op: WriteOp) {
    if let WriteOp::Store { message, .. } = &op {
        *bytes += message.body.len();
    }
    ops.push(op);
}

/// Add every write already waiting, up to the batch limits.
fn gather(rx: &mut mpsc::UnboundedReceiver<WriteOp>, ops: &mut Vec<WriteOp>, bytes: &mut usize) {
    while ops.len() < MAX_BATCH_REQUESTS && *bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(op) => take_into(ops, bytes, op),
            Err(_) => break,
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<WriteOp>) {
        let mut ops: Vec<WriteOp> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = 0usize;
            take_into(&mut ops, &mut bytes, first);
            gather(&mut rx, &mut ops, &mut bytes);
            // Group commit with a commit delay (PostgreSQL's `commit_delay`): a batch of
            // only a few writes waits a moment for more to join it, one fsync for all.
            if !self.commit_delay.is_zero() && ops.len() < COMMIT_SIBLINGS {
                std::thread::sleep(self.commit_delay);
                gather(&mut rx, &mut ops, &mut bytes);
            }
            let result = self.commit(&ops, bytes as u64);
            if let Err(e) = &result {
                tracing::error!("spool batch of {} writes failed: {e}", ops.len());
            }
            // A full disk refuses the new messages of a batch but commits the rest.
            let settled = matches!(result, Ok(()) | Err(SpoolError::DiskFull { .. }));
            for op in ops.drain(..) {
                #[cfg(test)]
                if let WriteOp::Rotate(done) = op {
                    let _ = done.send(self.rotate().map_err(|e| e.to_string()));
                    continue;
                }
                if let WriteOp::Sync(done) = op {
                    let _ = done.send(settled);
                } else if let WriteOp::Store { done, .. } = op {
                    let answer = match &result {
                        Ok(()) => Ok(()),
                        Err(SpoolError::DiskFull {
                            available,
                            required,
                        }) => Err(SpoolError::DiskFull {
                            available: *available,
                            required: *required,
                        }),
                        Err(e) => Err(SpoolError::Storage(e.to_string())),
                    };
                    let _ = done.send(answer);
                }
            }
            self.rotate_if_due(false);
        }
    }

    fn commit(&mut self, ops: &[WriteOp], bytes: u64) -> Result<(), SpoolError> {
        if bytes > 0 {
            let required = self.required(bytes);
            let mut available = available_space(&self.path);
            if available.is_some_and(|a| a < required) {
                // Deleted messages may still hold space: start giving it back (the flush
                // runs in fjall's background; a full disk may slow it), start a new
                // generation if the journal is what holds it, and look again.
                self.reclaim();
                self.rotate_if_due(true);
                available = available_space(&self.path);
            }
            let required = self.required(bytes);
            if let Some(available) = available {
                if available < required {
                    // Refuse new mail, but still settle what was delivered: removals free space.
                    let settles: Vec<&WriteOp> = ops
                        .iter()
                        .filter(|o| !matches!(o, WriteOp::Store { .. }))
                        .collect();
                    if !settles.is_empty() {
                        self.commit_ops(settles.into_iter())?;
                    }
                    return Err(SpoolError::DiskFull {
                        available,
                        required,
                    });
                }
            }
        }
        self.commit_ops(ops.iter())
    }

    /// Free space a batch of new messages of `bytes` needs: room for them twice (journal,
    /// then their table or blob file when the memtable is flushed), the free-space floor,
    /// and what a flush of the memtables may still write — the live data in them, at most
    /// the messages still spooled. The journal of what was deleted needs nothing more (a
    /// flush writes only what is alive); it is given back when fjall seals it or the spool
    /// rotates ([`Writer::rotate`]).
    fn required(&self, bytes: u64) -> u64 {
        let live = self.counters.bytes.load(Ordering::Relaxed);
        let unflushed = live.min(self.store.db.write_buffer_size());
        bytes
            .saturating_mul(2)
            .saturating_add(self.min_free_space)
            .saturating_add(unflushed)
    }

    /// Start a new generation when the journal holds a good part of the disk's room and
    /// little of it is still alive (see [`Writer::rotate`]). Looked at after a batch at most
    /// every [`ROTATION_CHECK_EVERY`], and whenever a batch is refused for space (`refused`).
    fn rotate_if_due(&mut self, refused: bool) -> bool {
        if !refused
            && self
                .last_rotation_check
                .is_some_and(|t| t.elapsed() < ROTATION_CHECK_EVERY)
        {
            return false;
        }
        self.last_rotation_check = Some(std::time::Instant::now());
        let journal = self.journal_bytes_recent();
        let live = self.counters.bytes.load(Ordering::Relaxed);
        // Copying what is alive must cost a small part of what it gives back.
        if journal < ROTATE_JOURNAL_ABOVE || live > journal / 4 {
            return false;
        }
        let Some(available) = available_space(&self.path) else {
            return false;
        };
        // On a volume with room for fjall's own 64 MB journals, fjall seals them itself.
        if !refused && journal.saturating_mul(3) < available {
            return false;
        }
        // Room for the copy (journal now, its tables or blobs later) and the new journal's
        // first writes.
        if available < live.saturating_mul(2).saturating_add(ROTATE_ROOM) {
            return false;
        }
        match self.rotate() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("spool: cannot start a new generation: {e}");
                false
            }
        }
    }

    /// Rotate the spool: open a new generation, copy into it what is still alive (messages,
    /// recipient entries, state, unlogged Reception records), fsync it, name it in the
    /// generation file, and use it; the old one is deleted whole once nothing reads it any
    /// more. New writes wait meanwhile (this is the writer's thread); a crash before the
    /// generation file names the new one leaves the old one in use, after it the new one,
    /// and the next start removes the other.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        let started = std::time::Instant::now();
        let journal = journal_bytes(&self.store.dir);
        let number = self
            .store
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(generation_number)
            .unwrap_or(0)
            + 1;
        let name = generation_name(number);
        let dir = self.path.join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| SpoolError::Storage(format!("cannot clear {}: {e}", dir.display())))?;
        }
        let copied = Store::open(&dir).and_then(|next| {
            let copied = copy_live(&self.store, &next)?;
            write_generation_file(&self.path, &name).map_err(|e| {
                SpoolError::Storage(format!("cannot write the generation file: {e}"))
            })?;
            Ok((next, copied))
        });
        let (next, copied) = match copied {
            Ok(c) => c,
            Err(e) => {
                // The half-made generation goes (its database is closed by now).
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut self.store, Arc::new(next));
        self.slot.set(self.store.clone());
        self.journal_size.set((None, 0));
        tracing::info!(
            generation = name,
            journal_bytes = journal,
            copied_bytes = copied,
            ms = started.elapsed().as_millis() as u64,
            "spool: rotated to a new generation to give back the journal of delivered mail"
        );
        retire(old, self.path.clone());
        Ok(())
    }

    /// The journal's size on disk, as of at most [`JOURNAL_SIZE_EVERY`] ago.
    fn journal_bytes_recent(&self) -> u64 {
        let (at, bytes) = self.journal_size.get();
        if at.is_some_and(|t| t.elapsed() < JOURNAL_SIZE_EVERY) {
            return bytes;
        }
        let bytes = journal_bytes(&self.store.dir);
        self.journal_size
            .set((Some(std::time::Instant::now()), bytes));
        bytes
    }

    /// Give back the space of deleted messages: their bytes stay in the journal of the
    /// active memtables until those are flushed (the flush writes only what is still
    /// alive), and the journal files go once every memtable they hold is flushed. Starts
    /// the flushes (fjall runs them in the background), at most once a second.
    fn reclaim(&self) {
        if self
            .last_reclaim
            .get()
            .is_some_and(|t| t.elapsed() < RECLAIM_EVERY)
        {
            return;
        }
        self.last_reclaim.set(Some(std::time::Instant::now()));
        self.store.flush_memtables();
        tracing::info!(
            journal_bytes = journal_bytes(&self.store.dir),
            "spool: giving back the space of deleted messages"
        );
        self.compact();
    }

    /// Ask the compactor to give back the blob files of deleted messages ([`Compactor`]).
    fn compact(&self) {
        // A request already waiting covers this one.
        let _ = self.compactor.try_send(());
    }

    fn commit_ops<'a>(
        &self,
        ops: impl Iterator<Item = &'a WriteOp> + Clone,
    ) -> Result<(), SpoolError> {
        // New messages and state are fsynced before anyone hears of them. A batch of
        // settlements alone is only handed to the OS: the next fsync (the journal is one
        // sequential file) makes it durable too, and if a crash comes first the worst case
        // is a recipient delivered once more — never a message lost.
        let must_sync = ops.clone().any(|op| {
            !matches!(
                op,
                WriteOp::Remove(_) | WriteOp::Reschedule { .. } | WriteOp::ReceptionsLogged(_)
            )
        });
        let mode = if must_sync {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        let store = &self.store;
        let mut batch = store.db.batch().durability(Some(mode));
        let (mut added, mut added_bytes) = (0u64, 0u64);
        let mut removed_ids = Vec::new();
        for op in ops {
            match op {
                WriteOp::Store { message: m, .. } => {
                    switchyard_actors::test_hooks::hop(m.id.0.as_bytes(), "spool-commit");
                    let record = encode_message(&m.envelope, &m.body);
                    added += 1;
                    added_bytes += record.len() as u64;
                    batch.insert(&store.messages, m.id.key(), record);
                    for (i, e) in m.entries.iter().enumerate() {
                        let v = serde_json::to_vec(e)
                            .map_err(|e| SpoolError::Storage(e.to_string()))?;
                        batch.insert(&store.queue, entry_key(m.id, i as u32), v);
                    }
                    // Kept until the event log has written it: see `unlogged_receptions`.
                    batch.insert(&store.receptions, m.id.key(), &m.reception[..]);
                }
                WriteOp::Remove(key) => {
                    batch.remove(&store.queue, *key);
                    removed_ids.push(<[u8; 16]>::try_from(&key[..16]).unwrap_or_default());
                }
                WriteOp::Reschedule {
                    key,
                    attempts,
                    due_ms,
                    held_ms,
                } => {
                    // Rewrites of an entry still in this batch are rare (a retry is minutes
                    // away); read the stored one.
                    if let Some(v) = store.queue.get(key)? {
                        if let Ok(mut e) = serde_json::from_slice::<QueueEntry>(&v) {
                            e.attempts = *attempts;
                            e.due_ms = *due_ms;
                            e.held_ms = *held_ms;
                            let v = serde_json::to_vec(&e)
                                .map_err(|e| SpoolError::Storage(e.to_string()))?;
                            batch.insert(&store.queue, *key, v);
                        }
                    }
                }
                WriteOp::ReceptionsLogged(ids) => {
                    for id in ids {
                        batch.remove(&store.receptions, id.key());
                    }
                }
                WriteOp::PutState { key, value } => {
                    batch.insert(&store.state, key.as_bytes(), value.as_slice())
                }
                WriteOp::DeleteState(key) => batch.remove(&store.state, key.as_bytes()),
                WriteOp::Sync(_) => {}
                #[cfg(test)]
                WriteOp::Rotate(_) => {}
            }
        }
        batch.commit()?;
        self.counters.messages.fetch_add(added, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(added_bytes, Ordering::Relaxed);
        // A message goes once its last recipient entry has gone. Not fsynced on its own: a
        // message left without entries by a crash is removed at the next start.
        removed_ids.sort_unstable();
        removed_ids.dedup();
        let mut cleanup = store.db.batch();
        for id in removed_ids {
            if store.queue.prefix(id).next().is_none() {
                if let Some(size) = store.messages.size_of(id)? {
                    cleanup.remove(&store.messages, id);
                    self.counters.messages.fetch_sub(1, Ordering::Relaxed);
                    self.counters
                        .bytes
                        .fetch_sub(u64::from(size), Ordering::Relaxed);
                }
            }
        }
        cleanup.commit()?;
        self.counters.publish();
        let empty = self.counters.messages.load(Ordering::Relaxed) == 0;
        if empty && store.messages.disk_space() > COMPACT_EMPTY_ABOVE {
            self.compact();
        }
        let due = self
            .last_flush
            .get()
            .is_none_or(|t| t.elapsed() >= RECLAIM_EVERY);
        if due && store.db.write_buffer_size() > MEMTABLE_BUDGET {
            self.last_flush.set(Some(std::time::Instant::now()));
            store.flush_memtables();
            // Each flush leaves a table and a blob file of the message store; the blob files
            // of a spool that always holds some deferred mail go only in a compaction.
            if store.messages.table_count() + store.messages.blob_file_count() > MESSAGE_FILES_ABOVE
            {
                self.compact();
            }
        }
        Ok(())
    }
}

/// Copy every entry of `from` into `to` (the same keyspaces), in batches of at most
/// [`MAX_BATCH_BYTES`], then fsync `to`. Returns the bytes copied.
fn copy_live(from: &Store, to: &Store) -> Result<u64, SpoolError> {
    let mut copied = 0u64;
    for (source, target) in from.keyspaces().into_iter().zip(to.keyspaces()) {
        let mut batch = to.db.batch();
        let mut pending = 0usize;
        for item in source.iter() {
            let (k, v) = item.into_inner()?;
            pending += k.len() + v.len();
            copied += (k.len() + v.len()) as u64;
            batch.insert(target, k, v);
            if pending >= MAX_BATCH_BYTES {
                std::mem::replace(&mut batch, to.db.batch()).commit()?;
                pending = 0;
            }
        }
        batch.commit()?;
    }
    to.db.persist(PersistMode::SyncAll)?;
    Ok(copied)
}

/// Close a generation no longer in use and delete it, on a thread of its own: once nothing
/// reads it any more (a recovery still reading it keeps it), its database is closed, then its
/// files go. A process that stops first leaves it to the next start.
fn retire(old: Arc<Store>, spool_dir: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("spool-retire".into())
        .spawn(move || {
            let mut old = old;
            let store = loop {
                match Arc::try_unwrap(old) {
                    Ok(store) => break store,
                    Err(still_read) => {
                        old = still_read;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            };
            let dir = store.dir.clone();
            drop(store);
            match remove_generation(&spool_dir, &dir) {
                Ok(()) => tracing::info!("spool: removed the old generation {}", dir.display()),
                Err(e) => tracing::warn!(
                    "spool: cannot remove the old generation {} (the next start will): {e}",
                    dir.display()
                ),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "spool: cannot start removing the old generation (the next start will): {e}"
        );
    }
}

/// Gives back the blob files of deleted messages, on its own thread: fjall drops a blob
/// file once no table refers to its values any more, which takes a compaction of the message
/// tables (their tombstones go, and with them the last references). The writer asks for one
/// when a batch is refused for space, and when the spool has emptied while its message files
/// still take more than [`COMPACT_EMPTY_ABOVE`]; the compactor runs at most every
/// [`COMPACT_EVERY`] (a request meanwhile waits for its turn, requests coalesce): flush the
/// memtables, then a major compaction of the (small) message index. It works on the
/// generation in use when it starts.
struct Compactor {
    slot: Slot,
}

impl Compactor {
    fn start(slot: Slot) -> Result<std::sync::mpsc::SyncSender<()>, SpoolError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let c = Compactor { slot };
        std::thread::Builder::new()
            .name("spool-compact".into())
            .spawn(move || c.run(rx))
            .map_err(|e| SpoolError::Storage(format!("cannot start the spool compactor: {e}")))?;
        Ok(tx)
    }

    fn run(self, requests: std::sync::mpsc::Receiver<()>) {
        let mut last: Option<std::time::Instant> = None;
        while requests.recv().is_ok() {
            if let Some(wait) = last.and_then(|t| COMPACT_EVERY.checked_sub(t.elapsed())) {
                std::thread::sleep(wait);
            }
            while requests.try_recv().is_ok() {}
            last = Some(std::time::Instant::now());
            let store = self.slot.get();
            let before = store.messages.disk_space();
            match compact(&store) {
                Ok(()) => tracing::info!(
                    before,
                    after = store.messages.disk_space(),
                    "spool: compacted the message files of deleted messages"
                ),
                Err(e) => tracing::warn!("spool: compaction to give space back failed: {e}"),
            }
        }
    }
}

fn compact(store: &Store) -> Result<(), fjall::Error> {
    for ks in store.keyspaces() {
        ks.rotate_memtable_and_wait()?;
    }
    // The first pass drops the deleted messages' entries and marks their blob files
    // stale; fjall deletes a dead blob file only in the compaction after that (fjall
    // 3.1, measured: 2 blob files of 4,000 deleted 20 KB values stay after one pass,
    // none after two).
    store.messages.major_compact()?;
    store.messages.major_compact()?;
    store.queue.major_compact()?;
    store.receptions.major_compact()?;
    // The files of replaced versions are deleted by fjall's version maintenance, which
    // runs when a memtable is rotated: give it one (a tiny state entry) to rotate.
    store.state.insert(
        "spool/compacted",
        switchyard_actors::message::now_ms().to_be_bytes(),
    )?;
    store.state.rotate_memtable_and_wait()
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
fn available_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
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

    fn message(tenant: &str, rcpts: &[&str]) -> NewMessage {
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

    impl Spool {
        async fn rotate_now(&self) -> Result<(), String> {
            let (done, wait) = oneshot::channel();
            self.send_op(WriteOp::Rotate(done));
            wait.await.map_err(|e| e.to_string())?
        }
    }

    fn generation(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(GENERATION_FILE))
            .unwrap()
            .trim()
            .to_string()
    }

    fn entries_of(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Waits for the retired generation's directory to go.
    fn wait_gone(path: &Path) {
        for _ in 0..200 {
            if !path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} is still there", path.display());
    }

    #[tokio::test]
    async fn a_rotation_keeps_what_is_alive_and_deletes_the_old_generation() {
        let dir = tempfile::tempdir().unwrap();
        let kept = message("acme", &["x@example.org", "y@example.org"]);
        let gone = message("acme", &["z@example.org"]);
        {
            let spool = Spool::open(dir.path(), 0).unwrap();
            assert_eq!(generation(dir.path()), "gen-000001");
            spool.store(kept.clone()).await.unwrap();
            spool.store(gone.clone()).await.unwrap();
            spool.remove(entry_key(gone.id, 0));
            spool.remove(entry_key(kept.id, 0));
            spool.receptions_logged(vec![gone.id]);
            use switchyard_actors::ports::SpoolPort;
            spool.put_state("suspension/1".into(), b"{}".to_vec());
            assert!(spool.sync().await);
            spool.rotate_now().await.unwrap();
            assert_eq!(generation(dir.path()), "gen-000002");
            wait_gone(&dir.path().join("gen-000001"));
            // Written after the rotation: into the new generation.
            spool.reschedule(entry_key(kept.id, 1), 3, 77, 0);
            assert!(spool.sync().await);
            assert_eq!(spool.message_count(), 1);
            assert!(spool.read_message(gone.id).unwrap().is_none());
        }
        assert_eq!(entries_of(dir.path()), ["gen-000002", "generation"]);
        let spool = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(spool.message_count(), 1);
        let (env, body) = spool.read_message(kept.id).unwrap().unwrap();
        assert_eq!((env, body), (kept.envelope.clone(), kept.body.to_vec()));
        let entries: Vec<_> = spool.queue_entries().map(Result::unwrap).collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].1, entries[0].2.attempts, entries[0].2.due_ms),
            (1, 3, 77)
        );
        assert_eq!(spool.state_entries("suspension/").unwrap().len(), 1);
        let unlogged = spool.unlogged_receptions().unwrap();
        assert_eq!(unlogged.len(), 1);
        assert_eq!(unlogged[0], (kept.id, kept.reception.to_vec()));
    }

    #[tokio::test]
    async fn a_spool_from_before_generations_is_used_in_place_and_rotated_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = message("acme", &["x@example.org"]);
        {
            // The layout before generations: fjall's files in the spool's own directory.
            let store = Store::open(dir.path()).unwrap();
            store
                .messages
                .insert(m.id.key(), encode_message(&m.envelope, &m.body))
                .unwrap();
            store
                .queue
                .insert(
                    entry_key(m.id, 0),
                    serde_json::to_vec(&m.entries[0]).unwrap(),
                )
                .unwrap();
            store.db.persist(PersistMode::SyncAll).unwrap();
        }
        {
            let spool = Spool::open(dir.path(), 0).unwrap();
            assert!(!dir.path().join(GENERATION_FILE).exists());
            assert_eq!(spool.message_count(), 1);
            spool.rotate_now().await.unwrap();
            assert_eq!(generation(dir.path()), "gen-000001");
            wait_gone(&dir.path().join("keyspaces"));
            assert!(spool.read_message(m.id).unwrap().is_some());
        }
        assert_eq!(entries_of(dir.path()), ["gen-000001", "generation"]);
        let spool = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(spool.message_count(), 1);
        assert_eq!(spool.queue_entries().count(), 1);
    }

    #[tokio::test]
    async fn a_generation_left_by_an_interrupted_rotation_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let m = message("acme", &["x@example.org"]);
        {
            let spool = Spool::open(dir.path(), 0).unwrap();
            spool.store(m.clone()).await.unwrap();
        }
        // A crash after the copy began, before the generation file named the new one.
        drop(Store::open(&dir.path().join("gen-000002")).unwrap());
        let spool = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(entries_of(dir.path()), ["gen-000001", "generation"]);
        assert!(spool.read_message(m.id).unwrap().is_some());
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
