//! Delivery over real sockets: dnsmasq for MX records, aiosmtpd sinks on loopback, egress
//! sources on 127.0.0.2/127.0.0.3, retries, expiry, restart, STARTTLS.

mod common;

use common::{free_port, inject, send_many, swaks, Daemon, Dnsmasq, Sink};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

fn write_shaping(dir: &Path, text: &str) {
    std::fs::write(dir.join("shaping.toml"), text).unwrap();
}

fn of_type<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn count(kind: &'static str, n: usize) -> impl Fn(&[serde_json::Value]) -> bool {
    move |ev| ev.iter().filter(|e| e["type"] == kind).count() >= n
}

#[test]
fn mx_preference_implicit_mx_null_mx_and_nxdomain() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(free_port(), dir.path(), "accept", None);
    let dns = Dnsmasq::start(&[
        "--mx-host=two.test,mx1.two.test,10".into(),
        "--mx-host=two.test,mx2.two.test,20".into(),
        // The preferred MX refuses connections; delivery must go on to the second.
        "--host-record=mx1.two.test,127.0.0.4".into(),
        "--host-record=mx2.two.test,127.0.0.1".into(),
        "--host-record=implicit.test,127.0.0.1".into(),
        // Null MX (RFC 7505): preference 0, exchange ".".
        "--dns-rr=nullmx.test,15,000000".into(),
    ]);
    write_shaping(
        dir.path(),
        &format!(
            "[\"default\"]\nsmtp_port = {}\nenable_tls = \"Disabled\"\nprohibited_hosts = []\n",
            sink.port
        ),
    );
    let d = Daemon::start_in(
        dir,
        &format!(
            "[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\n[shaping]\nfiles = [\"shaping.toml\"]\n",
            dns.port
        ),
    );
    for rcpt in [
        "a@two.test",
        "b@implicit.test",
        "c@nullmx.test",
        "d@nx.test",
    ] {
        let (ok, out) = swaks(d.smtp, &["--to", rcpt, "--header", "X-Tenant: acme"]);
        assert!(ok, "{out}");
    }
    let ev = d.wait_events("2 deliveries and 2 bounces", |ev| {
        count("Delivery", 2)(ev) && count("Bounce", 2)(ev)
    });
    let by_rcpt: HashMap<&str, &serde_json::Value> = ev
        .iter()
        .filter(|e| e["type"] != "Reception")
        .map(|e| (e["recipient"].as_str().unwrap(), e))
        .collect();
    let two = by_rcpt["a@two.test"];
    assert_eq!(two["type"], "Delivery");
    assert_eq!(
        two["peer"]["host"], "mx2.two.test",
        "the refused preferred MX was skipped"
    );
    assert_eq!(
        two["site"], "mx1.two.test,mx2.two.test",
        "site = sorted MX set"
    );
    assert_eq!(two["tenant"], "acme");
    assert_eq!(two["queue"], "acme@two.test");
    assert_eq!(two["attempts"], 1);
    assert_eq!(by_rcpt["b@implicit.test"]["type"], "Delivery");
    assert_eq!(by_rcpt["b@implicit.test"]["peer"]["host"], "implicit.test");
    let null = by_rcpt["c@nullmx.test"];
    assert_eq!(
        (null["type"].as_str(), null["response"]["code"].as_u64()),
        (Some("Bounce"), Some(556))
    );
    assert_eq!(null["response"]["enhanced"], "5.1.10");
    assert_eq!(null["bounce_class"], "BadDomain");
    let nx = by_rcpt["d@nx.test"];
    assert_eq!(
        (nx["type"].as_str(), nx["response"]["code"].as_u64()),
        (Some("Bounce"), Some(550))
    );
    assert_eq!(nx["response"]["enhanced"], "5.1.2");
    let got = sink.wait_accepted(2, Duration::from_secs(5));
    let rcpts: HashSet<String> = got
        .iter()
        .map(|r| r["rcpts"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        rcpts,
        HashSet::from(["a@two.test".to_string(), "b@implicit.test".to_string()])
    );
    d.wait_metric("switchyard_spool_messages", "", 0.0);
    assert_eq!(
        d.metric("switchyard_delivery_total", "outcome=\"bounced\""),
        Some(2.0)
    );
}

#[test]
fn two_sources_weighted_three_to_one() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(free_port(), dir.path(), "accept", None);
    write_shaping(
        dir.path(),
        "[\"default\"]\nmax_deliveries_per_connection = 1\nenable_tls = \"Disabled\"\n",
    );
    let d = Daemon::start_in(
        dir,
        &format!(
            "[routes]\n\"weights.test\" = \"127.0.0.1:{}\"\n\n[shaping]\nfiles = [\"shaping.toml\"]\n\n\
             [[source]]\nname = \"ip-a\"\naddress = \"127.0.0.2\"\nehlo = \"a.mta.test\"\n\n\
             [[source]]\nname = \"ip-b\"\naddress = \"127.0.0.3\"\nehlo = \"b.mta.test\"\n\n\
             [[pool]]\nname = \"default\"\nsources = [{{ source = \"ip-a\", weight = 3 }}, {{ source = \"ip-b\", weight = 1 }}]\n",
            sink.port
        ),
    );
    let n = 400;
    send_many(&d, n, "someone@weights.test", "shared");
    let got = sink.wait_accepted(n, Duration::from_secs(60));
    let mut per_ip: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_ip
            .entry(r["peer"].as_str().unwrap().to_string())
            .or_default() += 1;
        let expected_ehlo = if r["peer"] == "127.0.0.2" {
            "a.mta.test"
        } else {
            "b.mta.test"
        };
        assert_eq!(r["ehlo"], expected_ehlo, "{r}");
    }
    let a = per_ip.get("127.0.0.2").copied().unwrap_or(0) as f64 / n as f64;
    let b = per_ip.get("127.0.0.3").copied().unwrap_or(0) as f64 / n as f64;
    // Stated tolerance: each share within 5 points of 75/25 over 400 connections.
    assert!(
        (a - 0.75).abs() <= 0.05 && (b - 0.25).abs() <= 0.05,
        "shares {a:.3}/{b:.3}: {per_ip:?}"
    );
    let ev = d.wait_events("400 deliveries", count("Delivery", n));
    let sources: HashSet<&str> = of_type(&ev, "Delivery")
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, HashSet::from(["ip-a", "ip-b"]));
}

#[test]
fn deferred_twice_then_delivered_on_the_third_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(free_port(), dir.path(), "fail-first:2", None);
    let d = Daemon::start_in(
        dir,
        &format!(
            "[routes]\n\"grey.test\" = \"127.0.0.1:{}\"\n\n[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"2s\"\n",
            sink.port
        ),
    );
    send_many(&d, 1, "user@grey.test", "acme");
    let ev = d.wait_events("a Delivery", count("Delivery", 1));
    let transient = of_type(&ev, "TransientFailure");
    assert_eq!(transient.len(), 2, "{ev:?}");
    assert_eq!(transient[0]["attempts"], 1);
    assert_eq!(transient[1]["attempts"], 2);
    assert_eq!(transient[0]["response"]["code"], 451);
    let delivery = of_type(&ev, "Delivery")[0];
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(sink.received().len(), 3);
}

#[test]
fn a_message_that_is_always_deferred_expires_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(free_port(), dir.path(), "always451", None);
    let d = Daemon::start_in(
        dir,
        &format!(
            "[routes]\n\"deferred.test\" = \"127.0.0.1:{}\"\n\n[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"1s\"\nmax_age = \"5s\"\n",
            sink.port
        ),
    );
    send_many(&d, 1, "user@deferred.test", "acme");
    let ev = d.wait_events("an Expiration", count("Expiration", 1));
    std::thread::sleep(Duration::from_millis(1500));
    let ev2 = d.events();
    assert_eq!(of_type(&ev2, "Expiration").len(), 1, "{ev:?}");
    assert!(of_type(&ev2, "Delivery").is_empty());
    let exp = of_type(&ev2, "Expiration")[0];
    assert_eq!(exp["response"]["code"], 451);
    assert!(exp["attempts"].as_u64().unwrap() >= 3, "{exp}");
    d.wait_metric("switchyard_spool_messages", "", 0.0);
    drop(sink);
}

#[test]
fn restart_mid_queue_delivers_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port();
    let mut d = Daemon::start_in(
        dir,
        &format!(
            "[routes]\n\"example.net\" = \"127.0.0.1:{sink_port}\"\n\n[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"2s\"\n"
        ),
    );
    let acks = d.dir.path().join("acks.txt");
    let (ok, out, err) = inject(&d, 500, &acks, &[]);
    assert!(ok, "{out}{err}");
    // The client sends to rcpt@example.net, routed to a sink that is not there yet.
    d.wait_events("first attempts", count("TransientFailure", 1));
    d.kill();
    let sink = Sink::start(sink_port, d.dir.path(), "accept", None);
    d.spawn();
    let got = sink.wait_accepted(500, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    let got_after = sink.received();
    assert_eq!(got_after.len(), got.len(), "no further deliveries");
    let ids: Vec<String> = got_after
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "each Message-ID exactly once");
    let acked: HashSet<String> = std::fs::read_to_string(&acks)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(acked.len(), 500);
    assert_eq!(
        unique.into_iter().cloned().collect::<HashSet<String>>(),
        acked
    );
}

#[test]
fn starttls_opportunistic_insecure_and_required_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (
        dir.path().join("sink-cert.pem"),
        dir.path().join("sink-key.pem"),
    );
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls_sink = Sink::start(
        free_port(),
        dir.path(),
        "accept",
        Some((&cert_path, &key_path)),
    );
    let plain_sink = Sink::start(free_port(), dir.path(), "accept", None);
    write_shaping(
        dir.path(),
        "[\"tls.test\"]\nenable_tls = \"OpportunisticInsecure\"\n\n[\"plain.test\"]\nenable_tls = \"Required\"\n",
    );
    let d = Daemon::start_in(
        dir,
        &format!(
            "[routes]\n\"tls.test\" = \"127.0.0.1:{}\"\n\"plain.test\" = \"127.0.0.1:{}\"\n\n[shaping]\nfiles = [\"shaping.toml\"]\n",
            tls_sink.port, plain_sink.port
        ),
    );
    send_many(&d, 1, "user@tls.test", "acme");
    send_many(&d, 1, "user@plain.test", "acme");
    let got = tls_sink.wait_accepted(1, Duration::from_secs(20));
    assert_eq!(got[0]["tls"], true, "delivered inside STARTTLS");
    let ev = d.wait_events("a Delivery and a TransientFailure", |ev| {
        count("Delivery", 1)(ev) && count("TransientFailure", 1)(ev)
    });
    let t = of_type(&ev, "TransientFailure")[0];
    assert_eq!(t["recipient"], "user@plain.test");
    assert_eq!(t["response"]["enhanced"], "4.7.4", "{t}");
    assert!(
        plain_sink.received().is_empty(),
        "nothing sent in the clear"
    );
}
