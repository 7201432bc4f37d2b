//! The spool's writer thread: group commit of new messages, settlements and state into one
//! fsynced fjall batch, the full-disk guard, memtable flushes, rotation to a new generation
//! ([`super::generation`]), and the compactor thread that gives back the files of deleted
//! messages.

use super::generation::*;
use super::*;

/// The group-commit writer, alone on its thread.
pub(super) struct Writer {
    /// The generation it writes to: the same as `slot` holds.
    pub(super) store: Arc<Store>,
    pub(super) slot: Slot,
    pub(super) counters: Arc<Counters>,
    /// The spool's directory (`data_dir/spool`), where its generations live.
    pub(super) path: PathBuf,
    pub(super) min_free_space: u64,
    pub(super) commit_delay: std::time::Duration,
    pub(super) last_reclaim: std::cell::Cell<Option<std::time::Instant>>,
    /// When the memtables were last flushed for their size ([`MEMTABLE_BUDGET`]).
    pub(super) last_flush: std::cell::Cell<Option<std::time::Instant>>,
    /// Requests to the [`Compactor`] thread.
    pub(super) compactor: std::sync::mpsc::SyncSender<()>,
    /// The journal's size on disk, read at most every [`JOURNAL_SIZE_EVERY`].
    pub(super) journal_size: std::cell::Cell<(Option<std::time::Instant>, u64)>,
    /// When the writer last looked whether the spool should rotate ([`Writer::rotate`]).
    pub(super) last_rotation_check: Option<std::time::Instant>,
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
    pub(super) fn run(mut self, mut rx: mpsc::UnboundedReceiver<WriteOp>) {
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
    pub(super) fn rotate(&mut self) -> Result<(), SpoolError> {
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

/// Gives back the blob files of deleted messages, on its own thread: fjall drops a blob
/// file once no table refers to its values any more, which takes a compaction of the message
/// tables (their tombstones go, and with them the last references). The writer asks for one
/// when a batch is refused for space, and when the spool has emptied while its message files
/// still take more than [`COMPACT_EMPTY_ABOVE`]; the compactor runs at most every
/// [`COMPACT_EVERY`] (a request meanwhile waits for its turn, requests coalesce): flush the
/// memtables, then a major compaction of the (small) message index. It works on the
/// generation in use when it starts.
pub(super) struct Compactor {
    slot: Slot,
}

impl Compactor {
    pub(super) fn start(slot: Slot) -> Result<std::sync::mpsc::SyncSender<()>, SpoolError> {
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
