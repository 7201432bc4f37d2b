//! New mail waits for room at a saturated scheduled queue (its own test binary: it slows
//! every queue of the process through a test hook).

mod common;

use common::{engine, message, plain_settings};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_actors::memory::ScriptedConnector;
use switchyard_actors::scheduled_queue::ENQUEUE_ROOM;

#[actix::test]
async fn submissions_beyond_the_room_wait_until_the_queue_takes_them() {
    const SLOW_MS: u64 = 20;
    switchyard_actors::test_hooks::set_slow_enqueue_ms(SLOW_MS);
    let (engine, mem) = engine(ScriptedConnector::accepting(), plain_settings());
    let engine = Arc::new(engine);
    let handed = Arc::new(AtomicUsize::new(0));
    let total = 3 * ENQUEUE_ROOM;
    let mut tasks = Vec::new();
    for n in 0..total {
        let (engine, handed) = (engine.clone(), handed.clone());
        let batch = message(&mem, (n % 250) as u8, "acme", &["u@h.test"]);
        tasks.push(actix::spawn(async move {
            engine.submit(batch).await;
            handed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // In 200 ms the queue takes ~10 batches (one per 20 ms): the room's 64 went at once,
    // the rest wait.
    let now = handed.load(Ordering::Relaxed);
    assert!(
        now >= ENQUEUE_ROOM && now <= ENQUEUE_ROOM + 200 / SLOW_MS as usize + 5,
        "{now} of {total} submissions handed over in 200 ms"
    );
    switchyard_actors::test_hooks::set_slow_enqueue_ms(0);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        handed.load(Ordering::Relaxed),
        total,
        "every waiting one went in the end"
    );
}
