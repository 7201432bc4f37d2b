//! The spool's generations on disk: each is a fjall database in its own directory under
//! the spool's, `gen-NNNNNN`, and `generation` names the one in use. fjall seals its
//! active journal only past 64 MB, so on a small volume the journal of mail long delivered
//! could fill the disk; the writer then rotates ([`super::writer`]): it opens the next
//! generation, copies what is alive ([`copy_live`]), names it, and the old one is deleted
//! whole once nothing reads it ([`retire`]). A spool from before generations (fjall's files
//! directly in the spool's directory) is used in place until its first rotation.

use super::*;

/// One generation of the spool: a fjall database with its keyspaces, in its own directory
/// under the spool's (`gen-NNNNNN`; a spool from before generations is its own directory).
/// fjall seals its active journal only past 64 MB, so on a small volume the journal of mail
/// long delivered could fill the disk: the writer then starts a new generation, copies what
/// is still alive into it, and deletes the old one whole ([`Writer::rotate`]).
pub(super) struct Store {
    pub(super) dir: PathBuf,
    pub(super) db: Database,
    pub(super) messages: Keyspace,
    pub(super) queue: Keyspace,
    pub(super) state: Keyspace,
    /// Message id → its Reception record, until the event log has written it (see
    /// [`Spool::unlogged_receptions`]).
    pub(super) receptions: Keyspace,
}

impl Store {
    pub(super) fn open(dir: &Path) -> Result<Store, SpoolError> {
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

    pub(super) fn keyspaces(&self) -> [&Keyspace; 4] {
        [&self.messages, &self.queue, &self.state, &self.receptions]
    }

    /// Start flushing every memtable (fjall does it in the background).
    pub(super) fn flush_memtables(&self) {
        for ks in self.keyspaces() {
            if let Err(e) = ks.rotate_memtable() {
                tracing::warn!("spool: cannot flush a memtable: {e}");
            }
        }
    }
}

/// The generation in use, shared by the writer (which swaps it) and the readers.
#[derive(Clone)]
pub(super) struct Slot(pub(super) Arc<std::sync::RwLock<Arc<Store>>>);

impl Slot {
    pub(super) fn get(&self) -> Arc<Store> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set(&self, store: Arc<Store>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = store;
    }
}

/// The file in the spool's directory that names the generation in use.
pub(super) const GENERATION_FILE: &str = "generation";
/// What fjall keeps at the top of its directory: a spool from before generations has these
/// in the spool's own directory.
pub(super) const FJALL_TOP_LEVEL: [&str; 3] = ["version", "lock", "keyspaces"];

pub(super) fn generation_name(n: u64) -> String {
    format!("gen-{n:06}")
}

pub(super) fn generation_number(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

/// The directory of the generation in use: named by the generation file, else the spool's
/// own directory when it holds a database from before generations, else a first generation.
/// Directories of other generations (left by a rotation a crash interrupted, or by a
/// process that stopped before it deleted the old one) are removed.
pub(super) fn current_generation(spool_dir: &Path) -> Result<PathBuf, SpoolError> {
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
pub(super) fn write_generation_file(spool_dir: &Path, name: &str) -> std::io::Result<()> {
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
pub(super) fn remove_generation(spool_dir: &Path, dir: &Path) -> std::io::Result<()> {
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

/// Copy every entry of `from` into `to` (the same keyspaces), in batches of at most
/// [`MAX_BATCH_BYTES`], then fsync `to`. Returns the bytes copied.
pub(super) fn copy_live(from: &Store, to: &Store) -> Result<u64, SpoolError> {
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
pub(super) fn retire(old: Arc<Store>, spool_dir: PathBuf) {
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

/// Disk space the spool's journal files use now (blocks allocated, not their length).
pub(super) fn journal_bytes(dir: &Path) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::super::tests::message;
    use super::*;

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
}
