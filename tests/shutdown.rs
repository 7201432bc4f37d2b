//! SIGTERM under load: listeners close, sessions end between transactions with
//! `421 4.3.2` (none without a reply), outbound transactions finish and are settled, the
//! process exits 0 within `shutdown_timeout`, and a restart delivers the rest exactly once.

mod common;

use common::{Daemon, ResponseSink, Tool};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_under_load_answers_every_session_and_loses_nothing() {
    Tool::Python.require();
    let dir = tempfile::tempdir().unwrap();
    // A slowish receiver, so that deliveries are under way when SIGTERM comes.
    let sink = ResponseSink::start(
        dir.path(),
        "[[rule]]\nstage = \"data\"\ncode = 250\nmsg = \"2.0.0 ok, slowly\"\ndelay = \"100ms\"\n",
    );
    let mut d = Daemon::start_in(
        dir,
        &format!(
            "[smtp]\nshutdown_timeout = \"10s\"\n\n[routes]\n\"example.org\" = \"127.0.0.1:{}\"\n",
            sink.port
        ),
    );
    let started = d.dir.path().join("load-started");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/inject_until_closed.py");
    let load = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &d.smtp.port().to_string(), "4"])
        .arg(&started)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the load never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let status = d.terminate();
    let took = t0.elapsed();
    let out = load.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "shutdown: exit {status:?} after {took:?}; {} accepted, endings {}, silent {}",
        r["accepted"].as_array().unwrap().len(),
        r["endings"],
        r["silent"]
    );
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(12),
        "within shutdown_timeout: {took:?}"
    );
    assert_eq!(
        r["silent"],
        serde_json::json!([]),
        "a session closed without a reply"
    );
    let endings = r["endings"].as_array().unwrap();
    assert!(
        !endings.is_empty() && endings.iter().all(|c| c == 421),
        "{endings:?}"
    );
    let log = d.log();
    assert!(log.contains("every session and connection ended"), "{log}");
    // A restart delivers the rest; each accepted message reaches the sink exactly once.
    let accepted: Vec<String> = r["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    d.spawn();
    let received = sink.wait("every accepted message", Duration::from_secs(30), |got| {
        got.iter().filter(|t| t["code"] == 250).count() >= accepted.len()
    });
    let mut times: HashMap<String, usize> = HashMap::new();
    for t in received.iter().filter(|t| t["code"] == 250) {
        for rcpt in t["rcpts"].as_array().unwrap() {
            *times.entry(rcpt.as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    for a in &accepted {
        assert_eq!(
            times.get(a),
            Some(&1),
            "{a} delivered {:?} times",
            times.get(a)
        );
    }
}
