//! The hot path, seen from outside: how many threads a message crosses from the end of its
//! DATA to the remote server's reply. The daemon runs with `SWITCHYARD_TRACE_HOPS=1`, which
//! puts the threads each step ran on into the Delivery record (`hops`).

mod common;

use common::{send_as, world};

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
