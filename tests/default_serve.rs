//! `switchyard serve` with no --config runs the embedded default: SMTP on 127.0.0.1:2525,
//! HTTP on 127.0.0.1:8025, data in ./data. (The only test that uses those fixed ports.)

mod common;

use common::{http_get, swaks, wait_for_port, BIN};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn embedded_default_accepts_a_message_to_an_address_literal() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let smtp: SocketAddr = "127.0.0.1:2525".parse().unwrap();
    let http: SocketAddr = "127.0.0.1:8025".parse().unwrap();
    wait_for_port(smtp, Duration::from_secs(20));
    wait_for_port(http, Duration::from_secs(20));
    let (ok, out) = swaks(smtp, &["--to", "nobody@[127.0.0.1]"]);
    let (status, health) = http_get(http, "/api/v1/health");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("<-  250 2.0.0 Ok: queued as"), "{out}");
    assert_eq!((status, health.as_str()), (200, "{\"status\":\"ok\"}"));
    assert!(exit.success(), "SIGTERM exits cleanly: {exit:?}");
    assert!(dir.path().join("data/spool").is_dir(), "spool under ./data");
    assert!(dir.path().join("data/logs").is_dir(), "logs under ./data");
}
