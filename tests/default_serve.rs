//! `switchyard serve` with no --config runs the embedded default: SMTP on 127.0.0.1:2525,
//! HTTP on 127.0.0.1:8025, data in ./data, and one demo route: `sink.test` to
//! `switchyard sink`'s default 127.0.0.1:2626. (The only test that uses those fixed ports.)
//! It walks the README's first message.

mod common;

use common::{events_in, http_get, poll_until, swaks, wait_for_port, BIN};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn embedded_default_delivers_through_its_route_and_refuses_a_loopback_literal() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Command::new(BIN)
        .args(["sink", "--record"])
        .arg(dir.path().join("sink.jsonl"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let smtp: SocketAddr = "127.0.0.1:2525".parse().unwrap();
    let http: SocketAddr = "127.0.0.1:8025".parse().unwrap();
    wait_for_port("127.0.0.1:2626".parse().unwrap(), Duration::from_secs(20));
    wait_for_port(smtp, Duration::from_secs(20));
    wait_for_port(http, Duration::from_secs(20));
    let tenant = [
        "--header",
        "X-Tenant: acme",
        "--header",
        "X-Campaign: spring-sale",
    ];
    let (ok, out) = swaks(
        smtp,
        &[&["--to", "someone@sink.test"][..], &tenant].concat(),
    );
    let (literal_ok, literal_out) = swaks(smtp, &["--to", "nobody@[127.0.0.1]"]);
    let (status, health) = http_get(http, "/api/v1/health");
    let logs = dir.path().join("data/logs");
    let events = poll_until(
        "a Delivery and a Bounce",
        Duration::from_secs(20),
        || events_in(&logs),
        |ev| {
            ["Delivery", "Bounce"]
                .iter()
                .all(|t| ev.iter().any(|e| e["type"] == *t))
        },
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    let _ = sink.kill();
    let _ = sink.wait();
    assert!(ok, "{out}");
    assert!(out.contains("<-  250 2.0.0 Ok: queued as"), "{out}");
    let delivery = events.iter().find(|e| e["type"] == "Delivery").unwrap();
    assert_eq!(
        (
            &delivery["tenant"],
            &delivery["campaign"],
            &delivery["recipient"]
        ),
        (
            &"acme".into(),
            &"spring-sale".into(),
            &"someone@sink.test".into()
        ),
        "{delivery}"
    );
    let received = std::fs::read_to_string(dir.path().join("sink.jsonl")).unwrap();
    assert!(received.contains("someone@sink.test"), "{received}");
    // An address literal on loopback is accepted, then refused by prohibited_hosts.
    assert!(literal_ok, "{literal_out}");
    let bounce = events.iter().find(|e| e["type"] == "Bounce").unwrap();
    assert_eq!(bounce["response"]["code"], 550, "{bounce}");
    assert_eq!(bounce["response"]["enhanced"], "5.4.4", "{bounce}");
    assert!(
        !received.contains("nobody@"),
        "nothing connected for it: {received}"
    );
    assert_eq!((status, health.as_str()), (200, "{\"status\":\"ok\"}"));
    assert!(exit.success(), "SIGTERM exits cleanly: {exit:?}");
    assert!(dir.path().join("data/spool").is_dir(), "spool under ./data");
    assert!(dir.path().join("data/logs").is_dir(), "logs under ./data");
}
