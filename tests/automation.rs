//! Response automation over real sockets: `switchyard sink --responses` plays the provider,
//! dnsmasq the DNS, egress sources are 127.0.0.2 and 127.0.0.3. Each test drives the daemon
//! through its public names only (config, shaping files, SMTP, the HTTP API, /metrics, the
//! event log).

mod common;

use common::{send_as, world, Dnsmasq, BIN, GMAIL_5_7_26};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ONE_SOURCE: &str = "[[source]]\nname = \"ip-1\"\naddress = \"127.0.0.2\"\n\n[[pool]]\nname = \"default\"\nsources = [{ source = \"ip-1\", weight = 1 }]\n";
const TWO_SOURCES: &str = "[[source]]\nname = \"ip-1\"\naddress = \"127.0.0.2\"\n\n[[source]]\nname = \"ip-2\"\naddress = \"127.0.0.3\"\n\n[[pool]]\nname = \"default\"\nsources = [{ source = \"ip-1\", weight = 1 }, { source = \"ip-2\", weight = 1 }]\n";

fn of<'a>(ev: &'a [Value], kind: &str, tenant: &str) -> Vec<&'a Value> {
    ev.iter()
        .filter(|e| e["type"] == kind && (tenant.is_empty() || e["tenant"] == tenant))
        .collect()
}

fn count(kind: &'static str, tenant: &'static str, n: usize) -> impl Fn(&[Value]) -> bool {
    move |ev| of(ev, kind, tenant).len() >= n
}

#[test]
fn a_tenant_is_suspended_not_the_shared_ip() {
    let responses = format!(
        "[[rule]]\nsender_domain = \"bad.example\"\nrecipient_domain = \"gmail.test\"\nlimit = 1\ncode = 550\nmsg = \"{GMAIL_5_7_26}\"\n"
    );
    // The seed's rule, as in CONTRACT.md, with a name.
    let shaping = "[[\"gmail.test\".automation]]\nname = \"gmail-auth\"\nregex = \"This message does not have authentication information\"\naction = \"SuspendTenant\"\nduration = \"3 hours\"\n";
    let w = world(
        &[("gmail.test", "mx.gmail.test")],
        &responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1h\"\n\n{ONE_SOURCE}"),
    );
    let d = &w.d;

    // The first rejection fires the rule.
    send_as(d, 1, "news@bad.example", "u@gmail.test", "bad");
    let ev = d.wait_events("the bounce and the firing", |ev| {
        count("Bounce", "bad", 1)(ev) && count("AutomationFired", "", 1)(ev)
    });
    let fired = of(&ev, "AutomationFired", "")[0];
    assert_eq!(fired["rule"], "gmail-auth");
    assert_eq!(fired["action"], "SuspendTenant");
    assert_eq!(fired["tenant"], "bad");
    assert_eq!(fired["site"], "mx.gmail.test");
    assert_eq!(fired["response"]["enhanced"], "5.7.26");
    let s = &d.wait_suspensions(1)[0];
    assert_eq!(
        (&s["kind"], &s["tenant"], &s["site"], &s["rule"]),
        (
            &Value::from("tenant"),
            &Value::from("bad"),
            &Value::from("mx.gmail.test"),
            &Value::from("gmail-auth")
        ),
        "{s}"
    );
    let id = s["id"].as_str().unwrap().to_string();

    // The rest of the bad tenant's mail is held; the good tenant's goes out over the same IP.
    send_as(d, 9, "news@bad.example", "u@gmail.test", "bad");
    send_as(d, 10, "news@good.example", "u@gmail.test", "good");
    d.wait_events(
        "the good tenant's 10 deliveries",
        count("Delivery", "good", 10),
    );
    let got = w.sink.received();
    let good: Vec<&Value> = got
        .iter()
        .filter(|r| r["mail_from"] == "news@good.example")
        .collect();
    assert_eq!(good.len(), 10);
    assert!(good
        .iter()
        .all(|r| r["peer"] == "127.0.0.2" && r["code"] == 250));
    assert!(got
        .iter()
        .any(|r| r["mail_from"] == "news@bad.example" && r["peer"] == "127.0.0.2"));
    std::thread::sleep(Duration::from_millis(500));
    let ev = d.events();
    assert_eq!(of(&ev, "Bounce", "bad").len(), 1, "held, not bounced");
    assert!(of(&ev, "Delivery", "bad").is_empty() && of(&ev, "TransientFailure", "bad").is_empty());
    assert_eq!(
        got.iter()
            .filter(|r| r["mail_from"] == "news@bad.example")
            .count(),
        1,
        "held mail is not attempted"
    );
    d.wait_metric("switchyard_scheduled_messages", "tenant=\"bad\"", 9.0);
    d.wait_metric(
        "switchyard_tenant_suspended",
        "site=\"mx.gmail.test\",tenant=\"bad\"",
        1.0,
    );
    d.wait_metric(
        "switchyard_automation_fired_total",
        "action=\"SuspendTenant\",rule=\"gmail-auth\"",
        1.0,
    );
    let suspension = of(&ev, "Suspension", "bad");
    assert_eq!(suspension.len(), 1);
    assert_eq!(suspension[0]["rule"], "gmail-auth");

    // Resume: the held mail goes now, its attempts untouched by the hold.
    let (status, body) = d.request("DELETE", &format!("/api/v1/suspensions/{id}"), None);
    assert_eq!(status, 204, "{body}");
    let ev = d.wait_events("the 9 held messages delivered", count("Delivery", "bad", 9));
    assert!(of(&ev, "Delivery", "bad")
        .iter()
        .all(|e| e["attempts"] == 1));
    assert_eq!(of(&ev, "Resume", "bad").len(), 1);
    assert!(d.suspensions().is_empty());
    d.wait_metric(
        "switchyard_tenant_suspended",
        "site=\"mx.gmail.test\",tenant=\"bad\"",
        0.0,
    );
    let (status, body) = d.request("DELETE", &format!("/api/v1/suspensions/{id}"), None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""));
}

#[test]
fn a_threshold_rule_fires_on_the_third_match_not_the_second() {
    let responses = "[[rule]]\nrecipient_domain = \"th.test\"\ncode = 451\nmsg = \"4.7.1 Please slow down (greylisted)\"\n";
    let shaping = "[[\"th.test\".automation]]\nregex = \"Please slow down\"\ntrigger = {Threshold=\"3/1m\"}\naction = \"SuspendTenant\"\nduration = \"1 hour\"\n";
    let w = world(
        &[("th.test", "mx.th.test")],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1h\"\n\n{ONE_SOURCE}"),
    );
    let d = &w.d;
    for n in 1..=2 {
        send_as(d, 1, "a@acme.example", "u@th.test", "acme");
        d.wait_events("a deferral", count("TransientFailure", "acme", n));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        of(&d.events(), "AutomationFired", "").is_empty(),
        "2 matches of 3/1m must not fire"
    );
    assert!(d.suspensions().is_empty());
    send_as(d, 1, "a@acme.example", "u@th.test", "acme");
    let ev = d.wait_events("the firing", count("AutomationFired", "", 1));
    assert_eq!(
        of(&ev, "AutomationFired", "")[0]["rule"],
        "th.test#0",
        "default name scope#index"
    );
    let s = d.wait_suspensions(1);
    assert_eq!(s[0]["tenant"], "acme");
}

#[test]
fn a_threshold_half_counted_before_a_sigkill_fires_on_the_remaining_matches_after_restart() {
    let responses = "[[rule]]\nrecipient_domain = \"th.test\"\ncode = 451\nmsg = \"4.7.1 Please slow down (greylisted)\"\n";
    let shaping = "[[\"th.test\".automation]]\nname = \"slow\"\nregex = \"Please slow down\"\ntrigger = {Threshold=\"3/10m\"}\naction = \"SuspendTenant\"\nduration = \"1 hour\"\n";
    let mut w = world(
        &[("th.test", "mx.th.test")],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1h\"\n\n{ONE_SOURCE}"),
    );
    for n in 1..=2 {
        send_as(&w.d, 1, "a@acme.example", "u@th.test", "acme");
        w.d.wait_events("a deferral", count("TransientFailure", "acme", n));
    }
    // Windows reach the spool within a second; then the process is killed.
    std::thread::sleep(Duration::from_millis(1500));
    w.d.kill();
    w.d.spawn();
    assert!(w.d.suspensions().is_empty());
    assert!(of(&w.d.events(), "AutomationFired", "").is_empty());
    // The third match since the first two — after the restart — fires the rule.
    send_as(&w.d, 1, "b@acme.example", "u@th.test", "acme");
    let ev =
        w.d.wait_events("the firing", count("AutomationFired", "", 1));
    assert_eq!(of(&ev, "AutomationFired", "")[0]["rule"], "slow");
    assert_eq!(w.d.wait_suspensions(1)[0]["tenant"], "acme");
}

#[test]
fn suspend_moves_a_sites_traffic_to_the_other_source_until_expiry() {
    // Yahoo's own rule from KumoMTA's shaping.toml, on a provider matched by MX suffix.
    let shaping = "[provider.\"yahoo\"]\nmatch = [{MXSuffix = \".yahoodns.test\"}]\n\n[[provider.\"yahoo\".automation]]\nregex = \"\\\\[TS?S04\\\\]\"\naction = \"Suspend\"\nduration = \"6s\"\n";
    let responses = "[[rule]]\nrecipient_domain = \"yahoo.test\"\npeer_ip = \"127.0.0.2\"\nlimit = 1\ncode = 421\nmsg = \"4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred due to unexpected volume or user complaints\"\n";
    let w = world(
        &[
            ("yahoo.test", "mta5.yahoodns.test"),
            ("other.test", "mx.other.test"),
        ],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1s\"\n\n{TWO_SOURCES}"),
    );
    let d = &w.d;
    // Round robin starts on ip-1, which the provider defers.
    send_as(d, 1, "a@acme.example", "u@yahoo.test", "acme");
    let ev = d.wait_events("the deferral and the firing", |ev| {
        count("TransientFailure", "acme", 1)(ev) && count("AutomationFired", "", 1)(ev)
    });
    let fired = of(&ev, "AutomationFired", "")[0];
    assert_eq!(
        (&fired["rule"], &fired["action"], &fired["source"]),
        (
            &Value::from("provider.yahoo#0"),
            &Value::from("Suspend"),
            &Value::from("ip-1")
        )
    );
    let s = &d.wait_suspensions(1)[0];
    assert_eq!(
        (&s["kind"], &s["source"], &s["site"]),
        (
            &Value::from("source"),
            &Value::from("ip-1"),
            &Value::from("mta5.yahoodns.test")
        )
    );
    d.wait_metric(
        "switchyard_source_suspended",
        "site=\"mta5.yahoodns.test\",source=\"ip-1\"",
        1.0,
    );
    let started = Instant::now();

    send_as(d, 8, "a@acme.example", "u@yahoo.test", "acme");
    send_as(d, 8, "a@acme.example", "u@other.test", "acme");
    d.wait_events("9 deliveries to yahoo, 8 to other", |ev| {
        ev.iter()
            .filter(|e| e["type"] == "Delivery" && e["domain"] == "yahoo.test")
            .count()
            >= 9
            && ev
                .iter()
                .filter(|e| e["type"] == "Delivery" && e["domain"] == "other.test")
                .count()
                >= 8
    });
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "too slow to observe the suspension"
    );
    let got = w.sink.received();
    let yahoo_ok: Vec<&Value> = got
        .iter()
        .filter(|r| r["code"] == 250 && r["rcpts"][0].as_str().unwrap().ends_with("@yahoo.test"))
        .collect();
    assert_eq!(yahoo_ok.len(), 9);
    assert!(
        yahoo_ok.iter().all(|r| r["peer"] == "127.0.0.3"),
        "the suspended source was used for its site: {yahoo_ok:?}"
    );
    let other_peers: std::collections::HashSet<&str> = got
        .iter()
        .filter(|r| r["rcpts"][0].as_str().unwrap().ends_with("@other.test"))
        .map(|r| r["peer"].as_str().unwrap())
        .collect();
    assert!(
        other_peers.contains("127.0.0.2") && other_peers.contains("127.0.0.3"),
        "other sites keep both sources: {other_peers:?}"
    );

    // After expiry the source carries the site's mail again.
    d.wait_events("the resume", count("Resume", "", 1));
    assert!(started.elapsed() >= Duration::from_secs(4));
    d.wait_metric(
        "switchyard_source_suspended",
        "site=\"mta5.yahoodns.test\",source=\"ip-1\"",
        0.0,
    );
    send_as(d, 6, "a@acme.example", "u@yahoo.test", "acme");
    let got = w.sink.wait(
        "ip-1 delivering to yahoo again",
        Duration::from_secs(10),
        |got| {
            got.iter().any(|r| {
                r["code"] == 250
                    && r["peer"] == "127.0.0.2"
                    && r["rcpts"][0].as_str().unwrap().ends_with("@yahoo.test")
            })
        },
    );
    assert!(!got.is_empty());
}

#[test]
fn set_config_throttles_the_site_for_its_duration_then_recovers() {
    let responses = "[[rule]]\nrecipient_domain = \"slow.test\"\nlimit = 1\ncode = 451\nmsg = \"4.7.0 You are sending too fast, slow down please\"\n";
    let shaping = "[[\"slow.test\".automation]]\nname = \"throttle\"\nregex = \"slow down please\"\naction = {SetConfig={name=\"max_message_rate\", value=\"60/min,max_burst=1\"}}\nduration = \"20s\"\n";
    let w = world(
        &[("slow.test", "mx.slow.test")],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1h\"\n\n{ONE_SOURCE}"),
    );
    let d = &w.d;
    send_as(d, 1, "a@acme.example", "u@slow.test", "acme");
    d.wait_events("the firing", count("AutomationFired", "", 1));
    let fired_at = Instant::now();
    send_as(d, 60, "a@acme.example", "u@slow.test", "acme");
    // During the override the sink sees about one message a second.
    std::thread::sleep(Duration::from_secs(17).saturating_sub(fired_at.elapsed()));
    let accepted = |got: &[Value]| got.iter().filter(|r| r["code"] == 250).count();
    let got = w.sink.received();
    let times: Vec<f64> = got
        .iter()
        .filter(|r| r["code"] == 250)
        .map(|r| r["time"].as_f64().unwrap())
        .collect();
    assert!(times.len() >= 5, "{got:?}");
    // Rate over the steady part: from the 2nd to the last accepted message so far.
    let span = times[times.len() - 1] - times[1];
    let per_min = (times.len() - 2) as f64 / span * 60.0;
    eprintln!("throttled: {} accepted, {per_min:.1}/min", times.len());
    assert!(
        (48.0..=72.0).contains(&per_min),
        "rate {per_min:.1}/min, expected 60 ±20%"
    );
    // Once the 20 s are over, the rest goes at full speed.
    let got = w
        .sink
        .wait("all 60 delivered", Duration::from_secs(20), |g| {
            accepted(g) >= 60
        });
    let last: Vec<f64> = got
        .iter()
        .filter(|r| r["code"] == 250)
        .map(|r| r["time"].as_f64().unwrap())
        .collect();
    let tail = &last[last.len() - 20..];
    let fast = (tail.len() - 1) as f64 / (tail[tail.len() - 1] - tail[0]).max(0.001) * 60.0;
    eprintln!("recovered: last 20 at {fast:.0}/min");
    assert!(fast > 600.0, "did not recover: {fast:.0}/min");
}

#[test]
fn a_suspension_survives_a_restart_with_its_expiry() {
    let w = world(&[("keep.test", "mx.keep.test")], "", "", ONE_SOURCE);
    let mut w = w;
    let (status, body) = w.d.request(
        "POST",
        "/api/v1/suspensions",
        Some(r#"{"tenant":"acme","domain":"keep.test","duration":"1h","reason":"DNS broken"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let before = w.d.wait_suspensions(1);
    send_as(&w.d, 3, "a@acme.example", "u@keep.test", "acme");
    w.d.wait_metric("switchyard_scheduled_messages", "tenant=\"acme\"", 3.0);
    w.d.terminate();
    w.d.spawn();
    let after = w.d.wait_suspensions(1);
    assert_eq!(before, after, "same id, reason and expiry");
    assert_eq!(after[0]["reason"], "DNS broken");
    w.d.wait_metric(
        "switchyard_tenant_suspended",
        "site=\"keep.test\",tenant=\"acme\"",
        1.0,
    );
    w.d.wait_metric("switchyard_scheduled_messages", "tenant=\"acme\"", 3.0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w.sink.received().is_empty(),
        "held mail went out after the restart"
    );
    // Bad requests get a 4xx with {"error"}.
    for body in [
        "{not json",
        r#"{"tenant":"acme","duration":"soon"}"#,
        r#"{"duration":"1h"}"#,
        r#"{"source":"nope","site":"x","duration":"1h"}"#,
    ] {
        let (status, text) = w.d.request("POST", "/api/v1/suspensions", Some(body));
        assert!((400..500).contains(&status), "{body}: {status} {text}");
        assert!(serde_json::from_str::<Value>(&text).unwrap()["error"].is_string());
    }
    let id = after[0]["id"].as_str().unwrap();
    assert_eq!(
        w.d.request("DELETE", &format!("/api/v1/suspensions/{id}"), None)
            .0,
        204
    );
    w.sink
        .wait("the held mail", Duration::from_secs(10), |g| g.len() >= 3);
}

#[test]
fn held_time_does_not_count_towards_max_age() {
    // Two deferrals each fire a 2 s suspension; max_age is 3 s. The message spends ~4 s in
    // the queue, 2 of them held: it must be delivered on its third attempt, not expired.
    let responses = "[[rule]]\nrecipient_domain = \"age.test\"\nlimit = 2\ncode = 451\nmsg = \"4.7.0 hold on a moment\"\n";
    let shaping = "[[\"age.test\".automation]]\nregex = \"hold on a moment\"\naction = \"SuspendTenant\"\nduration = \"2s\"\n";
    let w = world(
        &[("age.test", "mx.age.test")],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1s\"\nmax_age = \"3s\"\n\n{ONE_SOURCE}"),
    );
    let d = &w.d;
    send_as(d, 1, "a@acme.example", "u@age.test", "acme");
    let ev = d.wait_events("the delivery", |ev| {
        count("Delivery", "acme", 1)(ev) || count("Expiration", "acme", 1)(ev)
    });
    assert!(
        of(&ev, "Expiration", "acme").is_empty(),
        "expired while held: {ev:?}"
    );
    let delivery = of(&ev, "Delivery", "acme")[0];
    assert_eq!(delivery["attempts"], 3, "{delivery}");
    assert_eq!(of(&ev, "Suspension", "acme").len(), 2);
    let reception = of(&ev, "Reception", "acme")[0];
    let age = |e: &Value| humantime::parse_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    let took = age(delivery).duration_since(age(reception)).unwrap();
    assert!(
        took > Duration::from_secs(3),
        "delivered after {took:?}, within max_age anyway"
    );
}

#[test]
fn check_loads_kumomtas_shaping_files_with_warnings_only() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/kumomta");
    if !base.join("shaping.toml").exists() {
        eprintln!("skipped: {} is not here", base.display());
        return;
    }
    // Every MX-rollup block of the two files resolves, so DNS adds no warnings.
    let mut opts = Vec::new();
    for (domain, mx) in [
        ("comcast.net", "mx1.comcast.test"),
        ("mail.com", "mx00.mail.test"),
        ("smtp.mailgun.com", "mxa.mailgun.test"),
        ("yahoo.co.jp", "mx.yahoo.test"),
    ] {
        opts.push(format!("--mx-host={domain},{mx},10"));
        opts.push(format!("--host-record={mx},127.0.0.1"));
    }
    let dns = Dnsmasq::start(&opts);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\n[shaping]\nfiles = [\"{}\", \"{}\"]\n",
            dns.port,
            base.join("shaping.toml").display(),
            base.join("community/shaping.toml").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].starts_with("warning: ")
            && warnings[0].contains(
                "shaping.toml:242:1: shaping option system_shutdown_timeout is not applied"
            ),
        "{stderr}"
    );

    // A misspelt action is an error at its position, with a suggestion.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[\"gmail.com\".automation]]\nregex = \"x\"\naction = \"SuspendTennant\"\nduration = \"3 hours\"\n").unwrap();
    std::fs::write(&config, "[shaping]\nfiles = [\"bad.toml\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "bad.toml:3:10: unknown action \"SuspendTennant\"; did you mean \"SuspendTenant\"?"
        ),
        "{stderr}"
    );
}

#[test]
fn bounce_tenant_bounces_the_tenants_queued_mail_to_the_site() {
    let responses = "[[rule]]\nsender_domain = \"first.example\"\ncode = 451\nmsg = \"4.3.0 try again later\"\n\n[[rule]]\nsender_domain = \"trigger.example\"\ncode = 451\nmsg = \"4.7.1 policy violation, go away\"\n";
    let shaping = "[[\"b.test\".automation]]\nname = \"policy\"\nregex = \"policy violation\"\naction = \"BounceTenant\"\nduration = \"1m\"\n";
    let w = world(
        &[
            ("b.test", "mx.b.test"),
            ("elsewhere.test", "mx.elsewhere.test"),
        ],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1h\"\n\n{ONE_SOURCE}"),
    );
    let d = &w.d;
    send_as(d, 3, "a@first.example", "u@b.test", "acme");
    // Another tenant's deferred mail to the same site is not touched.
    send_as(d, 2, "a@first.example", "u@b.test", "other");
    let ev = d.wait_events("5 deferrals", |ev| {
        ev.iter()
            .filter(|e| e["type"] == "TransientFailure")
            .count()
            >= 5
    });
    let deferred: std::collections::HashSet<String> = of(&ev, "TransientFailure", "acme")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    send_as(d, 1, "t@trigger.example", "u@b.test", "acme");
    let ev = d.wait_events("3 admin bounces", count("AdminBounce", "acme", 3));
    let bounced: std::collections::HashSet<String> = of(&ev, "AdminBounce", "acme")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(deferred.is_subset(&bounced), "{deferred:?} ⊄ {bounced:?}");
    assert!(of(&ev, "AdminBounce", "other").is_empty());
    let fired = of(&ev, "AutomationFired", "acme");
    assert_eq!(
        (&fired[0]["rule"], &fired[0]["action"]),
        (&Value::from("policy"), &Value::from("BounceTenant"))
    );
    d.wait_metric(
        "switchyard_delivery_total",
        "outcome=\"admin_bounced\",tenant=\"acme\"",
        bounced.len() as f64,
    );
    d.wait_metric("switchyard_scheduled_messages", "tenant=\"other\"", 2.0);
}

#[test]
fn a_tenant_qos_rate_paces_only_that_tenant() {
    let w = world(
        &[("qos.test", "mx.qos.test")],
        "",
        "",
        &format!("[tenant.\"slow\"]\nmax_message_rate = \"300/min,max_burst=1\"\n\n{ONE_SOURCE}"),
    );
    let d = &w.d;
    send_as(d, 10, "a@slow.example", "u@qos.test", "slow");
    send_as(d, 10, "a@fast.example", "u@qos.test", "fast");
    let got = w
        .sink
        .wait("20 messages", Duration::from_secs(20), |g| g.len() >= 20);
    let span = |domain: &str| {
        let t: Vec<f64> = got
            .iter()
            .filter(|r| r["mail_from"].as_str().unwrap().ends_with(domain))
            .map(|r| r["time"].as_f64().unwrap())
            .collect();
        t.iter().cloned().fold(f64::MIN, f64::max) - t.iter().cloned().fold(f64::MAX, f64::min)
    };
    let (slow, fast) = (span("slow.example"), span("fast.example"));
    eprintln!("10 messages: slow tenant over {slow:.2}s, fast tenant over {fast:.2}s");
    // 300/min is one every 200 ms: nine gaps take at least 1.8 s.
    assert!(slow >= 1.6, "slow tenant not paced: {slow:.2}s");
    assert!(fast < 1.0, "fast tenant was paced too: {fast:.2}s");
}

#[test]
fn a_provider_connection_limit_is_shared_by_its_sites() {
    // Two sites of one provider, one connection between them; short idle so the slot moves.
    let shaping = "[provider.\"big\"]\nmatch = [{MXSuffix = \".big.test\"}]\nprovider_connection_limit = 1\nidle_timeout = \"300ms\"\n";
    let w = world(
        &[("a.test", "mx1.big.test"), ("b.test", "mx2.big.test")],
        "",
        shaping,
        ONE_SOURCE,
    );
    send_as(&w.d, 15, "x@acme.example", "u@a.test", "acme");
    send_as(&w.d, 15, "x@acme.example", "u@b.test", "acme");
    let got = w
        .sink
        .wait("30 messages", Duration::from_secs(30), |g| g.len() >= 30);
    let most = got
        .iter()
        .map(|r| r["open"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(most, 1, "more than one connection to the provider at once");
    let sites: std::collections::HashSet<String> =
        w.d.events()
            .iter()
            .filter(|e| e["type"] == "Delivery")
            .map(|e| e["site"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(sites.len(), 2, "{sites:?}");
}

#[test]
fn consecutive_connection_failures_defer_the_whole_ready_queue() {
    // The site's MX accepts TCP but never greets (a listener nobody serves): each attempt
    // fails at the 1 s banner timeout. After 2 failures in a row the ready queue's waiting
    // messages are deferred together instead of each costing a connection.
    let dir = tempfile::tempdir().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = silent.local_addr().unwrap().port();
    let dns = Dnsmasq::start(&[
        "--mx-host=down.test,mx.down.test,10".into(),
        "--host-record=mx.down.test,127.0.0.1".into(),
    ]);
    std::fs::write(
        dir.path().join("shaping.toml"),
        format!("[\"default\"]\nsmtp_port = {closed}\nconnection_limit = 1\nbanner_timeout = \"1s\"\nconsecutive_connection_failures_before_delay = 2\nprohibited_hosts = []\n"),
    )
    .unwrap();
    let d = common::Daemon::start_in(
        dir,
        &format!("[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\n[shaping]\nfiles = [\"shaping.toml\"]\n\n[queue]\nretry_interval = \"1h\"\n", dns.port),
    );
    send_as(&d, 10, "a@acme.example", "u@down.test", "acme");
    let ev = d.wait_events("10 deferrals", count("TransientFailure", "acme", 10));
    assert!(of(&ev, "Bounce", "acme").is_empty());
    assert!(
        d.log()
            .contains("connections keep failing; deferring the ready queue"),
        "{}",
        d.log()
    );
    // Far fewer connection attempts than messages: the failures the connections themselves
    // reported carry a peer; the ready queue's batch deferral does not.
    let with_peer = of(&ev, "TransientFailure", "acme")
        .iter()
        .filter(|e| e.get("peer").is_some())
        .count();
    assert!(
        with_peer <= 3,
        "{with_peer} of 10 messages cost a connection attempt"
    );
    drop(silent);
}
