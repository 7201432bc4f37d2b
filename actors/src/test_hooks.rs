//! Hooks for tests that drive the daemon from outside, off unless its environment turns
//! them on (each costs one relaxed atomic load when off):
//!
//! - `SWITCHYARD_TRACE_HOPS=1`: a trace of the threads one message visits between the end
//!   of its DATA and the remote server's reply, to count the thread hops on the hot path.
//!   Each step records `step@thread`; the settlement puts the list in the log record's
//!   `hops` field.
//! - `SWITCHYARD_TEST_SLOW_ENQUEUE_MS=N`: every scheduled queue blocks its thread N ms per
//!   batch it is handed — an actor thread made artificially slow, to show that injection
//!   then slows to the rate the actors drain instead of memory filling up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

static ON: AtomicBool = AtomicBool::new(false);
static SLOW_ENQUEUE_MS: AtomicU64 = AtomicU64::new(0);

fn traces() -> &'static Mutex<HashMap<[u8; 16], Vec<String>>> {
    static TRACES: OnceLock<Mutex<HashMap<[u8; 16], Vec<String>>>> = OnceLock::new();
    TRACES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Turn the hooks on that the environment asks for (called once at start).
pub fn enable_from_env() {
    if std::env::var_os("SWITCHYARD_TRACE_HOPS").is_some_and(|v| v == "1") {
        ON.store(true, Ordering::Relaxed);
    }
    if let Some(ms) = std::env::var("SWITCHYARD_TEST_SLOW_ENQUEUE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        SLOW_ENQUEUE_MS.store(ms, Ordering::Relaxed);
    }
}

/// Make every scheduled queue block its thread `ms` per batch (as the environment variable
/// does), for a test in its own process.
pub fn set_slow_enqueue_ms(ms: u64) {
    SLOW_ENQUEUE_MS.store(ms, Ordering::Relaxed);
}

/// Block this thread as long as `SWITCHYARD_TEST_SLOW_ENQUEUE_MS` says (normally not at all).
pub fn slow_enqueue() {
    let ms = SLOW_ENQUEUE_MS.load(Ordering::Relaxed);
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Message `id` (its 16 id bytes) reached `step` on this thread.
pub fn hop(id: &[u8], step: &str) {
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
pub fn hops(id: &[u8]) -> Option<Vec<String>> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    let id = <[u8; 16]>::try_from(id.get(..16)?).ok()?;
    let map = traces().lock().unwrap_or_else(|e| e.into_inner());
    map.get(&id).cloned()
}
