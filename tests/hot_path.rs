//! The hot path, seen from outside: how many threads a message crosses from the end of its
//! DATA to the remote server's reply. The daemon runs with `SWITCHYARD_TRACE_HOPS=1`, which
//! puts the threads each step ran on into the Delivery record (`hops`).

mod common;

use common::{send_as, world};
use std::time::{Duration, Instant};

#[test]
fn a_message_crosses_at_most_four_threads_from_data_to_the_remote_reply() {
    let mut w = world(&[("hops.test", "mx.hops.test")], "", "", "");
    w.d.kill();
    w.d.spawn_with_env(&[("SWITCHYARD_TRACE_HOPS", "1")]);
    send_as(&w.d, 3, "a@sender.example", "u@hops.test", "acme");
    let ev = w.d.wait_events("3 deliveries", |ev| {
        ev.iter().filter(|e| e["type"] == "Delivery").count() >= 3
    });
    for delivery in ev.iter().filter(|e| e["type"] == "Delivery") {
        let hops: Vec<&str> = delivery["hops"]
            .as_array()
            .unwrap_or_else(|| panic!("no hops traced: {delivery}"))
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        let steps: Vec<&str> = hops.iter().map(|h| h.split('@').next().unwrap()).collect();
        assert_eq!(
            steps,
            [
                "data-dot",
                "spool-commit",
                "spooled",
                "scheduled-queue",
                "ready-queue",
                "connection-send",
                "remote-reply"
            ],
            "{hops:?}"
        );
        let threads: Vec<&str> = hops.iter().map(|h| h.split('@').nth(1).unwrap()).collect();
        let changes = threads.windows(2).filter(|p| p[0] != p[1]).count();
        eprintln!("{changes} thread hops: {hops:?}");
        assert!(changes <= 4, "{changes} thread hops: {hops:?}");
    }
}

/// Every scheduled queue's thread is made slow (10 ms per batch handed to it); 20 clients
/// inject for 60 s. Injection must slow down to what the actors drain — clients waiting
/// for their 250 (as RFC 5321 lets them, for minutes), not refused — with memory bounded,
/// and every acknowledged message must be delivered in the end.
#[test]
fn a_slow_actor_thread_slows_the_injecting_clients_instead_of_filling_memory() {
    const SLOW_MS: u64 = 10;
    let mut w = world(&[("bp.test", "mx.bp.test")], "", "", "");
    w.d.kill();
    w.d.spawn_with_env(&[("SWITCHYARD_TEST_SLOW_ENQUEUE_MS", &SLOW_MS.to_string())]);
    std::thread::sleep(Duration::from_secs(1));
    let idle_kib = w.d.rss_kib();
    let acks = w.d.dir.path().join("acks.txt");
    common::Tool::Python.require();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/smtp_client.py");
    let mut clients = std::process::Command::new("python3")
        .arg(script)
        .args(["inject", "127.0.0.1", &w.d.smtp.port().to_string()])
        .args(["--count", "1000000", "--threads", "20", "--seconds", "60"])
        .args(["--rcpt", "u@bp.test", "--size", "2000", "--timeout", "300"])
        .arg("--out")
        .arg(&acks)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut peak_kib = idle_kib;
    while clients.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(400), "clients hang");
        peak_kib = peak_kib.max(w.d.rss_kib());
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = started.elapsed().as_secs_f64();
    let out = clients.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a client was refused: {stderr}");
    let acked = std::fs::read_to_string(&acks).unwrap().lines().count();
    // What the slowed threads can take: one batch per SLOW_MS on each worker thread. Each
    // client session holds one message at a time, and each of the 20 scheduled queues (one
    // per client tenant) lets ENQUEUE_ROOM = 64 batches wait for it.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let drain = threads * 1000.0 / SLOW_MS as f64;
    let bound = drain * took * 1.2 + 20.0 * 64.0;
    eprintln!(
        "{took:.0} s: {acked} acknowledged ({:.0}/s) against a drain of {drain:.0}/s (bound {bound:.0}); RSS {} -> {} MiB",
        acked as f64 / took,
        idle_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        (acked as f64) <= bound,
        "injection did not slow to the drain rate: {acked} acknowledged in {took:.0} s"
    );
    assert!(
        peak_kib <= idle_kib + 200 * 1024,
        "RSS grew from {idle_kib} KiB to {peak_kib} KiB"
    );
    // Nothing lost: restarted at full speed, every acknowledged message is delivered.
    w.d.kill();
    w.d.spawn();
    let ev = common::poll_until(
        "every acknowledged message delivered",
        Duration::from_secs(60),
        || w.d.events(),
        |ev| delivered_ids(ev).len() >= acked,
    );
    assert_eq!(delivered_ids(&ev).len(), acked);
}

/// Spool ids of the messages delivered so far (a message delivered twice across a crash
/// counts once).
fn delivered_ids(ev: &[serde_json::Value]) -> std::collections::HashSet<String> {
    ev.iter()
        .filter(|e| e["type"] == "Delivery")
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect()
}
