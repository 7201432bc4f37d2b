//! Webhooks from the outside: switchyard relays to a sink through a route, and pushes its
//! event log to Python HTTP receivers that check every batch with the Standard Webhooks
//! reference library (`standardwebhooks`), through endpoint failures, an endpoint outage, a
//! SIGKILL of the daemon, filters, reloads and the admin API.

mod common;

use common::{ctl, Daemon, ResponseSink, Tool};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// Two keys, one per line: the endpoints verify with one or the other (key rotation).
const KEYS: [&str; 2] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_c3dpdGNoeWFyZCB0ZXN0IGtleSBudW1iZXIgdHdv",
];

/// A receiver process (tests/py/webhook_receiver.py) on a fixed port.
struct Receiver {
    port: u16,
    https: bool,
    out: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Receiver {
    fn start(dir: &Path, name: &str, secret: &str, extra: &[&str]) -> Receiver {
        let mut r = Receiver {
            port: common::free_port(),
            https: extra.contains(&"--cert"),
            out: dir.join(format!("received-{name}.jsonl")),
            args: [&["--secret", secret], extra]
                .concat()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            child: None,
        };
        r.up();
        r
    }

    fn up(&mut self) {
        Tool::StandardWebhooks.require();
        let mut args: Vec<std::ffi::OsString> = vec![
            "--listen".into(),
            format!("127.0.0.1:{}", self.port).into(),
            "--out".into(),
            self.out.clone().into_os_string(),
        ];
        args.extend(self.args.iter().map(Into::into));
        self.child = Some(common::python_server(
            "webhook_receiver.py",
            &args,
            "the webhook receiver did not start",
        ));
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/events", self.port)
    }

    /// Every request recorded so far.
    fn requests(&self) -> Vec<Value> {
        common::read_jsonl(&self.out)
    }

    /// Every record received, in order, duplicates included.
    fn records(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .flat_map(|r| r["records"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The ids of every record received, once each.
    fn record_ids(&self) -> HashSet<String> {
        self.records()
            .iter()
            .map(|r| r["record_id"].as_str().unwrap_or("").to_string())
            .collect()
    }

    fn distinct(&self) -> usize {
        self.record_ids().len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// Every record of the daemon's log with its record id (`segment:line`).
fn log_records(d: &Daemon) -> Vec<(String, Value)> {
    let dir = d.dir.path().join("data/logs");
    let mut out = Vec::new();
    for segment in switchyard::webhooks::tail::segments(&dir) {
        let Ok(bytes) = switchyard::webhooks::tail::read_segment(&dir, &segment) else {
            continue;
        };
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                out.push((format!("{segment}:{i}"), v));
            }
        }
    }
    out
}

/// (segment, line) of a record id, for ordering.
fn position(record_id: &str) -> (String, u64) {
    let (s, l) = record_id.rsplit_once(':').unwrap();
    (s.to_string(), l.parse().unwrap())
}

fn wait(what: &str, secs: u64, f: impl Fn() -> bool) {
    common::poll_until(
        what,
        Duration::from_secs(secs),
        || vec![Value::Bool(f())],
        |v| v[0] == true,
    );
}

/// Wait until `name`'s cursor (as `GET /api/v1/webhooks` shows it) is past every record
/// `receiver` has.
fn wait_cursor_past(d: &Daemon, name: &str, receiver: &Receiver) {
    let last = receiver
        .records()
        .iter()
        .filter_map(|r| {
            r["record_id"]
                .as_str()
                .filter(|id| id.contains(':'))
                .map(position)
        })
        .max()
        .unwrap();
    wait("the cursor past the records received", 10, || {
        let hooks = d.get_json("/api/v1/webhooks");
        hooks.as_array().unwrap().iter().any(|w| {
            w["name"] == name
                && (
                    w["cursor"]["segment"].as_str().unwrap().to_string(),
                    w["cursor"]["line"].as_u64().unwrap(),
                ) > last
        })
    });
}

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret_file = \"keys.txt\"\n{extra}\n"
    )
}

/// Small log segments (64 KiB), so that the senders read through rotation and compression.
fn daemon(dir: tempfile::TempDir, sink: &ResponseSink, webhooks: &str) -> Daemon {
    std::fs::write(dir.path().join("keys.txt"), KEYS.join("\n") + "\n").unwrap();
    Daemon::start_in(
        dir,
        &format!(
            "[logs]\nmax_segment_size = \"64KiB\"\n\n[routes]\n\"sink.test\" = \"127.0.0.1:{}\"\n\n{webhooks}",
            sink.port
        ),
    )
}

#[test]
fn every_delivery_reaches_the_endpoint_in_order_and_signed_through_failures_an_outage_and_a_sigkill(
) {
    let dir = tempfile::tempdir().unwrap();
    let sink = ResponseSink::start(dir.path(), "");
    // The endpoint of all tenants answers 500 to every third request.
    let mut all = Receiver::start(dir.path(), "all", KEYS[1], &["--fail-every", "3"]);
    let t1 = Receiver::start(dir.path(), "t1", KEYS[0], &[]);
    let hooks = webhook(
        "all",
        &all.url(),
        "records = [\"Delivery\"]\nbatch_size = 50\nbatch_wait = \"200ms\"",
    ) + &webhook("t1", &t1.url(), "tenant = \"t1\"\nbatch_wait = \"200ms\"");
    let mut d = daemon(dir, &sink, &hooks);
    let acks = d.dir.path().join("acks.txt");
    let (ok, out, err) = common::inject(
        &d,
        2000,
        &acks,
        &[
            "--threads",
            "4",
            "--tenant-prefix",
            "t",
            "--rcpt",
            "u@sink.test",
        ],
    );
    assert!(ok, "{out}{err}");

    // Midway the endpoint is gone for 10 s...
    wait("500 records at the endpoint", 120, || all.distinct() >= 500);
    all.down();
    std::thread::sleep(Duration::from_secs(10));
    all.up();
    // ...and later switchyard is SIGKILLed with batches in flight, and started again.
    wait("1000 records at the endpoint", 120, || {
        all.distinct() >= 1000
    });
    d.kill();
    d.spawn();

    let deliveries = |d: &Daemon| -> Vec<String> {
        log_records(d)
            .into_iter()
            .filter(|(_, v)| v["type"] == "Delivery")
            .map(|(id, _)| id)
            .collect()
    };
    wait("2000 deliveries in the log", 120, || {
        deliveries(&d).len() >= 2000
    });
    wait("every delivery at the endpoint", 240, || {
        let got = all.record_ids();
        deliveries(&d).iter().all(|id| got.contains(id))
    });

    let segments = switchyard::webhooks::tail::segments(&d.dir.path().join("data/logs"));
    assert!(segments.len() >= 10, "{segments:?}");
    // Every batch verifies with the reference library, and is JSON.
    let requests = all.requests();
    let batch_ids: Vec<&str> = requests
        .iter()
        .map(|r| r["webhook_id"].as_str().unwrap())
        .collect();
    let t1_ids: HashSet<String> = t1
        .requests()
        .iter()
        .map(|r| r["webhook_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        batch_ids.iter().all(|id| !t1_ids.contains(*id)),
        "two endpoints shared a webhook-id"
    );
    for r in &requests {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["content_type"], "application/json");
    }
    // In log order (first arrivals), every field of the log kept.
    let log: HashMap<String, Value> = log_records(&d).into_iter().collect();
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut duplicates = 0;
    for r in all.records() {
        let id = r["record_id"].as_str().unwrap().to_string();
        assert_eq!(r["type"], "Delivery", "{r}");
        let mut expected = log[&id].clone();
        expected["record_id"] = Value::from(id.clone());
        assert_eq!(r, expected);
        if seen.insert(id.clone()) {
            order.push(position(&id));
        } else {
            duplicates += 1;
        }
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert!(order == sorted, "records arrived out of log order");
    eprintln!(
        "{} requests, {} records, {} distinct, {duplicates} duplicates",
        requests.len(),
        seen.len() + duplicates,
        seen.len()
    );

    // The tenant-filtered endpoint gets t1's records of every type, and no one else's.
    let t1_in_log: HashSet<String> = log_records(&d)
        .into_iter()
        .filter(|(_, v)| v["tenant"] == "t1")
        .map(|(id, _)| id)
        .collect();
    assert!(t1_in_log.len() > 500, "{}", t1_in_log.len());
    wait("t1's records at its endpoint", 120, || {
        let got = t1.record_ids();
        t1_in_log.is_subset(&got)
    });
    for r in t1.records() {
        assert_eq!(r["tenant"], "t1", "{r}");
    }
    for r in t1.requests() {
        assert_eq!(r["verified"], true, "{r}");
    }
    // Since the restart: batches delivered, and the every-third 500s retried.
    let metric = |name: &str, labels: &str| d.metric(name, labels).unwrap_or(0.0);
    assert!(
        metric(
            "switchyard_webhook_records_total",
            "webhook=\"all\",outcome=\"delivered\""
        ) >= 1.0
    );
    assert!(
        metric(
            "switchyard_webhook_failures_total",
            "webhook=\"all\",reason=\"status_5xx\""
        ) >= 1.0
    );
    assert_eq!(
        metric("switchyard_webhook_lag_seconds", "webhook=\"all\""),
        0.0
    );
}

#[test]
fn refusals_age_reloads_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ResponseSink::start(dir.path(), "");
    let refusing = Receiver::start(dir.path(), "refusing", KEYS[0], &["--status", "400"]);
    let dead = webhook(
        "dead",
        &format!("http://127.0.0.1:{}/nobody", common::free_port()),
        "max_age = \"2s\"\nbatch_wait = \"100ms\"\ntimeout = \"1s\"",
    );
    // The late endpoint (below) is HTTPS, with a certificate from a CA in trust_roots.
    let pki = common::pki::Pki::new();
    pki.write_ca(dir.path());
    let hook_cert = pki.issue_for(dir.path(), "hook", &["127.0.0.1"]);
    let base = "[tls]\ntrust_roots = [\"ca.pem\"]\n\n".to_string()
        + &webhook("refusing", &refusing.url(), "batch_wait = \"100ms\"")
        + &dead;
    let mut d = daemon(dir, &sink, &base);
    assert_eq!(common::send_many(&d, 3, "u@sink.test", "acme").len(), 3);
    let metric = |d: &Daemon, labels: &str| {
        d.metric("switchyard_webhook_records_total", labels)
            .unwrap_or(0.0)
    };
    // A 4xx skips the batch (counted); an endpoint nobody answers ages its records out.
    wait("refused batches counted", 30, || {
        metric(&d, "webhook=\"refusing\",outcome=\"rejected\"") >= 6.0
    });
    wait("aged-out records counted", 60, || {
        metric(&d, "webhook=\"dead\",outcome=\"expired\"") >= 6.0
    });
    assert!(
        d.metric(
            "switchyard_webhook_failures_total",
            "webhook=\"dead\",reason=\"connection\""
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(d.log().contains("older than max_age given up"));
    let (ok, out, err) = ctl(&d, &["webhooks"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("refusing") && out.contains("answered 400"),
        "{out}"
    );
    let (ok, out, _) = ctl(&d, &["--json", "webhooks"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // A webhook added by a reload starts at the end of the log: nothing from before.
    let (cert, key) = (
        hook_cert[0].display().to_string(),
        hook_cert[1].display().to_string(),
    );
    let late = Receiver::start(
        d.dir.path(),
        "late",
        KEYS[1],
        &["--cert", &cert, "--key", &key],
    );
    assert!(late.url().starts_with("https://"));
    let config = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        config.clone() + &webhook("late", &late.url(), "batch_wait = \"100ms\""),
    )
    .unwrap();
    let reloaded_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let (status, body) = d.request("POST", "/api/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    let deliveries = |r: &Receiver| {
        r.records()
            .iter()
            .filter(|r| r["type"] == "Delivery")
            .count()
    };
    common::send_many(&d, 1, "u@sink.test", "acme");
    wait(
        "the new message's delivery at the late endpoint",
        30,
        || deliveries(&late) >= 1,
    );
    for r in late.records() {
        assert!(
            r["timestamp"].as_str().unwrap() >= reloaded_at.as_str(),
            "a new webhook replayed the log: {r}"
        );
    }

    // A test event, signed, on demand.
    let (ok, out, err) = ctl(&d, &["webhooks", "test", "late"]);
    assert!(ok && out.contains("204"), "{out}{err}");
    wait("the test event", 10, || {
        late.requests()
            .iter()
            .any(|r| r["verified"] == true && r["records"][0]["type"] == "Test")
    });
    let (status, body) = d.request("POST", "/api/v1/webhooks/nobody/test", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");

    // A changed webhook goes on from its cursor: no replay, nothing missed; a removed one
    // is gone.
    wait_cursor_past(&d, "late", &late);
    std::fs::write(
        &d.config,
        config.replace(&dead, "")
            + &webhook(
                "late",
                &late.url(),
                "batch_wait = \"100ms\"\nbatch_size = 7",
            ),
    )
    .unwrap();
    let (status, body) = d.request("POST", "/api/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    common::send_many(&d, 1, "u@sink.test", "acme");
    wait("the delivery after the change", 30, || {
        deliveries(&late) >= 2
    });
    let (ok, out, _) = ctl(&d, &["--json", "webhooks"]);
    assert!(ok);
    let names: Vec<String> = serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["late", "refusing"]);

    // Kept across a restart: the cursor is in the spool. (The cursor moves when the sender
    // has the endpoint's 2xx, a moment after the endpoint recorded the batch: wait for it,
    // or the restart rightly sends that batch again.)
    wait_cursor_past(&d, "late", &late);
    d.terminate();
    d.spawn();
    common::send_many(&d, 1, "u@sink.test", "acme");
    wait("the delivery after a restart", 30, || {
        deliveries(&late) >= 3
    });
    let ids: Vec<String> = late
        .records()
        .iter()
        .filter(|r| r["type"] != "Test")
        .map(|r| r["record_id"].as_str().unwrap_or("").to_string())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "records sent again: {ids:?}");
    assert_eq!(deliveries(&late), 3);
}
