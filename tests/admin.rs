//! The operator's surface against a live daemon: every HTTP API route with good and bad
//! input (and the bearer token), `switchyard ctl` as a real process, HTTP injection with a
//! SIGKILL after the 200s, and live reload of shaping.

mod common;

use common::{ctl, send_as, world, Daemon, Dnsmasq, ResponseSink, BIN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

/// A request with an optional bearer token: (status, body).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// The scheduled queue of hold.test, as `GET /api/v1/queues` lists it.
fn hold_test_queue(addr: SocketAddr, token: Option<&str>) -> Value {
    let (status, body) = call(addr, "GET", "/api/v1/queues", token, "");
    assert_eq!(status, 200, "{body}");
    let q: Value = serde_json::from_str(&body).unwrap();
    q["scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["domain"] == "hold.test")
        .cloned()
        .unwrap_or_else(|| panic!("no hold.test queue: {q}"))
}

fn is_error(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok_and(|v| v["error"].is_string())
}

/// A daemon whose mail for each of `domains` (MX `mx.DOMAIN`) goes to a responses sink.
fn setup(
    responses: &str,
    shaping: &str,
    extra: &str,
    domains: &[&str],
) -> (Dnsmasq, ResponseSink, Daemon) {
    let mx: Vec<(&str, String)> = domains.iter().map(|d| (*d, format!("mx.{d}"))).collect();
    let mx: Vec<(&str, &str)> = mx.iter().map(|(d, m)| (*d, m.as_str())).collect();
    let w = world(&mx, responses, shaping, extra);
    (w.dns, w.sink, w.d)
}

#[test]
fn every_route_answers_good_and_bad_input_behind_the_token() {
    let (_dns, sink, d) = setup(
        "[[rule]]\nrecipient_domain = \"hold.test\"\ncode = 451\nmsg = \"4.3.0 later\"\n",
        "",
        "[http]\ntoken = \"s3cret\"\n\n[queue]\nretry_interval = \"1h\"\n",
        &["ok.test", "hold.test"],
    );
    // The test harness writes its own [http] listen; the token section merges with it.
    let a = d.http;
    let t = Some("s3cret");
    assert_eq!(
        call(a, "GET", "/api/v1/health", None, "").0,
        200,
        "health needs no token"
    );
    for (method, path) in [
        ("GET", "/api/v1/queues"),
        ("GET", "/api/v1/suspensions"),
        ("POST", "/api/v1/suspensions"),
        ("DELETE", "/api/v1/suspensions/x"),
        ("POST", "/api/v1/bounces"),
        ("GET", "/api/v1/bounces"),
        ("DELETE", "/api/v1/bounces/x"),
        ("GET", "/api/v1/throttles"),
        ("POST", "/api/v1/throttles"),
        ("DELETE", "/api/v1/throttles/x"),
        ("GET", "/api/v1/overrides"),
        ("DELETE", "/api/v1/overrides/x"),
        ("POST", "/api/v1/inject"),
        ("POST", "/api/v1/reload"),
    ] {
        let (status, body) = call(a, method, path, None, "{}");
        assert_eq!(status, 401, "{method} {path} without token: {body}");
        assert!(is_error(&body));
        let (status, body) = call(a, method, path, Some("s3cre7"), "{}");
        assert_eq!(status, 401, "{method} {path} with a wrong token: {body}");
    }
    let (status, body) = call(a, "GET", "/api/v1/nope", t, "");
    assert!(status == 404 && is_error(&body), "{status} {body}");
    let (status, body) = call(a, "PUT", "/api/v1/queues", t, "");
    assert!(status == 405 && is_error(&body), "{status} {body}");

    // Inject: good and bad.
    let msg = |rcpts: Value| {
        json!({"envelope_sender": "news@acme.example", "recipients": rcpts,
               "content": "From: news@acme.example\nSubject: hi\n\nhello\n", "tenant": "acme", "campaign": "fall"})
        .to_string()
    };
    let (status, body) = call(
        a,
        "POST",
        "/api/v1/inject",
        t,
        &msg(json!([{"email": "a@ok.test"}, {"email": "broken"}, {"email": "b@hold.test"}])),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"][0]["email"], "broken");
    for bad in [
        "{not json".to_string(),
        msg(json!([])),
        msg(json!([{"email": "nobody"}])),
        json!({"envelope_sender": "x@y", "recipients": [{"email": "a@ok.test"}]}).to_string(),
        json!({"envelope_sender": "x@y", "recipients": [{"email": "a@ok.test"}], "content": "x", "tenant": "bad name!"}).to_string(),
        json!({"envelope_sender": "x@y", "recipients": [{"email": "a@ok.test"}], "content": "x", "surprise": 1}).to_string(),
    ] {
        let (status, body) = call(a, "POST", "/api/v1/inject", t, &bad);
        assert!((400..500).contains(&status) && is_error(&body), "{bad}: {status} {body}");
    }
    // An oversized body is refused by its length, with a JSON error.
    let mut s = TcpStream::connect(a).unwrap();
    write!(s, "POST /api/v1/inject HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{{").unwrap();
    // The server answers at once and may keep waiting for the body: read what came.
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut resp = String::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        resp.push_str(&String::from_utf8_lossy(&buf[..n]));
        if resp.contains("\r\n\r\n") && resp.ends_with('}') {
            break;
        }
    }
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(is_error(resp.split_once("\r\n\r\n").unwrap().1), "{resp}");

    sink.wait("the ok.test delivery", Duration::from_secs(10), |g| {
        g.iter().any(|r| r["code"] == 250)
    });
    d.wait_events("the hold.test deferral", |ev| {
        ev.iter().any(|e| e["type"] == "TransientFailure")
    });

    // Queues.
    let (status, body) = call(a, "GET", "/api/v1/queues", t, "");
    assert_eq!(status, 200, "{body}");
    let q: Value = serde_json::from_str(&body).unwrap();
    let held = hold_test_queue(a, t);
    assert_eq!(
        (
            &held["name"],
            &held["tenant"],
            &held["campaign"],
            &held["messages"],
            &held["suspended"]
        ),
        (
            &json!("fall:acme@hold.test"),
            &json!("acme"),
            &json!("fall"),
            &json!(1),
            &json!(false)
        )
    );
    assert!(q["ready"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["source"].is_string() && r["site"].is_string()));

    // Suspensions: create, list, resume; bad ones refused.
    let (status, body) = call(
        a,
        "POST",
        "/api/v1/suspensions",
        t,
        r#"{"tenant":"acme","domain":"hold.test","duration":"2h","reason":"tenant DNS broken"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, body) = call(a, "GET", "/api/v1/suspensions", t, "");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(
        (&list[0]["kind"], &list[0]["reason"]),
        (&json!("tenant"), &json!("tenant DNS broken"))
    );
    for k in ["created", "expires", "campaign", "site", "source", "rule"] {
        assert!(list[0].get(k).is_some(), "{k} missing: {list}");
    }
    for bad in [
        r#"{"tenant":"acme","duration":"-1"}"#,
        r#"{"campaign":"x","duration":"1h"}"#,
        r#"{"tenant":"a","source":"b","duration":"1h"}"#,
        "[]",
    ] {
        let (status, body) = call(a, "POST", "/api/v1/suspensions", t, bad);
        assert!(status == 400 && is_error(&body), "{bad}: {status} {body}");
    }
    // The hold reaches the queue through the tenant and campaign actors: wait until the
    // queue says it is held, so the resume below has something to release.
    common::poll_until(
        "the queue to show the hold",
        Duration::from_secs(10),
        || vec![hold_test_queue(a, t)],
        |q| q[0]["suspended"] == true,
    );
    assert_eq!(
        call(a, "DELETE", &format!("/api/v1/suspensions/{id}"), t, "").0,
        204
    );
    assert_eq!(
        call(a, "DELETE", &format!("/api/v1/suspensions/{id}"), t, "").0,
        404
    );

    // Bounces.
    // The resume made the held message due at once: wait for that retry's deferral, so the
    // message is back in its scheduled queue (not in flight) when it is bounced.
    d.wait_events("the retry after the resume", |ev| {
        ev.iter()
            .filter(|e| e["type"] == "TransientFailure" && e["domain"] == "hold.test")
            .count()
            >= 2
    });
    let (status, body) = call(a, "POST", "/api/v1/bounces", t, "{}");
    assert!(status == 400 && is_error(&body), "{body}");
    let (status, body) = call(
        a,
        "POST",
        "/api/v1/bounces",
        t,
        r#"{"tenant":"acme","domain":"hold.test","reason":"cleanup"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["bounced"], 1);
    let ev = d.wait_events("the AdminBounce", |ev| {
        ev.iter().any(|e| e["type"] == "AdminBounce")
    });
    let ab = ev.iter().find(|e| e["type"] == "AdminBounce").unwrap();
    assert_eq!(
        (&ab["recipient"], &ab["campaign"]),
        (&json!("b@hold.test"), &json!("fall"))
    );
    assert!(ab["response"]["text"].as_str().unwrap().contains("cleanup"));

    // Reload works behind the token.
    let (status, body) = call(a, "POST", "/api/v1/reload", t, "");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn ctl_drives_a_live_daemon() {
    let (_dns, _sink, d) = setup(
        "[[rule]]\nrecipient_domain = \"slow.test\"\ncode = 451\nmsg = \"4.3.0 later\"\n",
        "",
        "[queue]\nretry_interval = \"1h\"\n",
        &["slow.test"],
    );
    send_as(&d, 2, "a@acme.example", "u@slow.test", "acme");
    d.wait_events("2 deferrals", |ev| {
        ev.iter()
            .filter(|e| e["type"] == "TransientFailure")
            .count()
            >= 2
    });

    let (ok, out, err) = ctl(
        &d,
        &[
            "suspend",
            "--tenant",
            "acme",
            "--domain",
            "slow.test",
            "--duration",
            "1h",
            "--reason",
            "DNS",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("suspended: "), "{out}");
    let (ok, out, _) = ctl(&d, &["suspensions"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("TENANT") && lines[0].contains("EXPIRES"),
        "{out}"
    );
    assert!(
        lines[1].contains("acme") && lines[1].contains("tenant"),
        "{out}"
    );
    // Columns line up: every row has TENANT's column at the header's offset.
    let col = lines[0].find("TENANT").unwrap();
    assert_eq!(&lines[1][col..col + 4], "acme", "{out}");
    let (ok, out, _) = ctl(&d, &["suspensions", "--json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();

    let (ok, out, _) = ctl(&d, &["queues"]);
    assert!(
        ok && out.contains("acme@slow.test") && out.contains("SCHEDULED QUEUES"),
        "{out}"
    );
    let (ok, out, _) = ctl(&d, &["--json", "queues"]);
    assert!(ok);
    let q: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(q["scheduled"][0]["messages"], 2);

    let (ok, out, _) = ctl(&d, &["resume", &id]);
    assert!(ok && out.trim() == format!("resumed: {id}"), "{out}");
    let (ok, _, err) = ctl(&d, &["resume", &id]);
    assert!(!ok && err.contains("404"), "{err}");

    let (ok, out, _) = ctl(
        &d,
        &[
            "bounce",
            "--tenant",
            "acme",
            "--domain",
            "slow.test",
            "--json",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["bounced"], 2);
    let (ok, out, _) = ctl(&d, &["top", "--iterations", "2", "--interval", "200ms"]);
    assert!(
        ok && out.contains("TENANT") && out.contains("acme") && out.contains("BUSIEST SITES"),
        "{out}"
    );

    let out = Command::new(BIN)
        .args(["ctl", "--api", "http://127.0.0.1:9", "queues"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the daemon at http://127.0.0.1:9"),
        "{err}"
    );
}

#[test]
fn http_injection_survives_a_sigkill_after_the_200s() {
    let (_dns, sink, mut d) = setup("", "", "", &["inj.test"]);
    let addr = d.http;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..250 {
                    let body = json!({"envelope_sender": "a@acme.example",
                        "recipients": [{"email": format!("u{t}-{i}@inj.test")}],
                        "content": format!("Subject: {t}-{i}\r\n\r\nhello\r\n"), "tenant": "acme"});
                    let (status, text) =
                        call(addr, "POST", "/api/v1/inject", None, &body.to_string());
                    assert_eq!(status, 200, "{text}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    d.kill();
    d.spawn();
    let got = sink.wait("1000 distinct recipients", Duration::from_secs(60), |g| {
        g.iter()
            .filter(|r| r["code"] == 250)
            .map(|r| r["rcpts"][0].as_str().unwrap().to_string())
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 1000
    });
    assert!(got.len() >= 1000);
    d.wait_metric("switchyard_spool_messages", "", 0.0);
}

#[test]
fn reload_adds_a_rule_and_refuses_a_broken_file() {
    let (_dns, _sink, d) = setup(
        "[[rule]]\nrecipient_domain = \"gmail.test\"\ncode = 550\nmsg = \"5.7.26 This message does not have authentication information\"\n",
        "",
        "",
        &["gmail.test"],
    );
    send_as(&d, 1, "a@one.example", "u@gmail.test", "one");
    d.wait_events("a bounce", |ev| ev.iter().any(|e| e["type"] == "Bounce"));
    assert!(d.suspensions().is_empty(), "no rule yet");

    let shaping = d.dir.path().join("shaping.toml");
    let text = std::fs::read_to_string(&shaping).unwrap();
    std::fs::write(&shaping, format!("{text}\n[[\"gmail.test\".automation]]\nname = \"auth\"\nregex = \"does not have authentication\"\naction = \"SuspendTenant\"\nduration = \"1h\"\n")).unwrap();
    let (status, body) = d.request("POST", "/api/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["rules"], 1);
    send_as(&d, 1, "a@two.example", "u@gmail.test", "two");
    let s = d.wait_suspensions(1);
    assert_eq!(
        (&s[0]["tenant"], &s[0]["rule"]),
        (&json!("two"), &json!("auth"))
    );

    // A broken file: refused with its position, the rule in force stays.
    let good = std::fs::read_to_string(&shaping).unwrap();
    std::fs::write(
        &shaping,
        good.replace("\"SuspendTenant\"", "\"SuspendTennant\""),
    )
    .unwrap();
    let (status, body) = d.request("POST", "/api/v1/reload", None);
    assert_eq!(status, 422, "{body}");
    let why = serde_json::from_str::<Value>(&body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        why.contains("shaping.toml:") && why.contains("did you mean \"SuspendTenant\""),
        "{why}"
    );
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    send_as(&d, 1, "a@three.example", "u@gmail.test", "three");
    let s = d.wait_suspensions(2);
    assert!(
        s.iter()
            .any(|x| x["tenant"] == "three" && x["rule"] == "auth"),
        "{s:?}"
    );
    assert!(
        d.log().contains("reload refused"),
        "SIGHUP's refusal is logged"
    );
}
