//! A test-only trace of the threads one message visits between the end of its DATA and the
//! remote server's reply, to count the thread hops on the hot path.
//!
//! Off unless the daemon runs with `SWITCHYARD_TRACE_HOPS=1`; then each step records
//! `step@thread` for the message, and its settlement puts the list in the log record's
//! `hops` field. Off, a step costs one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

static ON: AtomicBool = AtomicBool::new(false);

fn traces() -> &'static Mutex<HashMap<[u8; 16], Vec<String>>> {
    static TRACES: OnceLock<Mutex<HashMap<[u8; 16], Vec<String>>>> = OnceLock::new();
    TRACES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Turn tracing on when the environment asks for it (called once at start).
pub fn enable_from_env() {
    if std::env::var_os("SWITCHYARD_TRACE_HOPS").is_some_and(|v| v == "1") {
        ON.store(true, Ordering::Relaxed);
    }
}

/// Message `id` (its 16 id bytes) reached `step` on this thread.
pub fn record(id: &[u8], step: &str) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let Ok(id) = <[u8; 16]>::try_from(id.get(..16).unwrap_or_default()) else {
        return;
    };
    let thread = std::thread::current();
    let here = format!(
        "{step}@{}{:?}",
        thread.name().unwrap_or("thread"),
        thread.id()
    );
    let mut map = traces().lock().unwrap_or_else(|e| e.into_inner());
    map.entry(id).or_default().push(here);
}

/// The steps recorded for message `id` so far (kept for its other recipients).
pub fn trace(id: &[u8]) -> Option<Vec<String>> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    let id = <[u8; 16]>::try_from(id.get(..16)?).ok()?;
    let map = traces().lock().unwrap_or_else(|e| e.into_inner());
    map.get(&id).cloned()
}
