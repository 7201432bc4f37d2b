//! Metrics as Prometheus sees them: `promtool check metrics` on `/metrics` of a daemon that
//! has delivered, deferred, bounced and suspended, and a real Prometheus scraping it every
//! second, asked every PromQL expression of the Grafana dashboard.

mod common;

use common::{free_port, send_as, wait_for_port, world, Tool};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Prometheus {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: [\"{target}\"]\n"),
        )
        .unwrap();
        Tool::Prometheus.require();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts");
        wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(30),
        );
        Prometheus {
            port,
            child,
            _dir: dir,
        }
    }

    fn query(&self, promql: &str) -> Value {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) =
            common::http_get(format!("127.0.0.1:{}", self.port).parse().unwrap(), &path);
        assert_eq!(status, 200, "{promql}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Every PromQL expression of the dashboard (panel targets and template variables), with
/// variables replaced as the acceptance check says.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards/switchyard.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(metric, label) asks for the metric's series.
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            out.push(inner.split(',').next().unwrap().trim().to_string());
        }
    }
    out.iter()
        .map(|e| {
            let mut e = e.replace("$__rate_interval", "1m");
            for v in ["tenant", "campaign", "source", "site"] {
                e = e
                    .replace(&format!("${{{v}}}"), ".*")
                    .replace(&format!("${v}"), ".*");
            }
            e
        })
        .collect()
}

#[test]
fn promtool_accepts_metrics_and_every_dashboard_query_returns_series() {
    let domains = ["ok.test", "defer.test", "bounce.test", "gmail.test"];
    let mx: Vec<String> = domains.iter().map(|d| format!("mx.{d}")).collect();
    let mx: Vec<(&str, &str)> = domains
        .iter()
        .copied()
        .zip(mx.iter().map(String::as_str))
        .collect();
    // A webhook whose endpoint refuses connections: its series, failures included.
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys.txt");
    std::fs::write(&keys, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let w = world(
        &mx,
        "[[rule]]\nrecipient_domain = \"defer.test\"\ncode = 451\nmsg = \"4.3.0 later\"\n\n[[rule]]\nrecipient_domain = \"bounce.test\"\ncode = 550\nmsg = \"5.1.1 no such user\"\n\n[[rule]]\nrecipient_domain = \"gmail.test\"\ncode = 550\nmsg = \"5.7.26 This message does not have authentication information\"\n",
        "[[\"gmail.test\".automation]]\nname = \"gmail-auth\"\nregex = \"does not have authentication\"\naction = \"SuspendCampaign\"\nduration = \"1h\"\n\n[[\"defer.test\".automation]]\nname = \"slow-down\"\nregex = \"later\"\naction = {SetConfig={name=\"max_message_rate\", value=\"100/h\"}}\nduration = \"1h\"\n",
        &format!("[queue]\nretry_interval = \"1h\"\n\n[[source]]\nname = \"ip-1\"\naddress = \"127.0.0.2\"\n\n[[pool]]\nname = \"default\"\nsources = [{{ source = \"ip-1\", weight = 1 }}]\n\n[[webhook]]\nname = \"events\"\nurl = \"http://127.0.0.1:9/events\"\nsecret_file = \"{}\"\nbatch_wait = \"100ms\"\n", keys.display()),
    );
    let d = &w.d;
    let prometheus = Prometheus::start(d.http);

    for (domain, n) in [
        ("ok.test", 5),
        ("defer.test", 2),
        ("bounce.test", 2),
        ("gmail.test", 1),
    ] {
        send_as(d, n, "a@acme.example", &format!("u@{domain}"), "acme");
    }
    // A campaign's mail (through the Python client's X-Campaign header) and a suspension of
    // each kind.
    let (ok, out, err) = common::python(
        "smtp_client.py",
        &[
            "send".into(),
            "127.0.0.1".into(),
            d.smtp.port().to_string(),
            "--rcpt".into(),
            "u@gmail.test".into(),
            "--tenant".into(),
            "beta".into(),
            "--campaign".into(),
            "spring".into(),
        ],
    );
    assert!(ok, "{out}{err}");
    d.wait_events("both firings", |ev| {
        ev.iter().filter(|e| e["type"] == "AutomationFired").count() >= 2
    });
    for body in [
        r#"{"tenant":"acme","duration":"1h","reason":"test"}"#,
        r#"{"source":"ip-1","site":"mx.defer.test","duration":"1h","reason":"test"}"#,
    ] {
        let (status, text) = d.request("POST", "/api/v1/suspensions", Some(body));
        assert_eq!(status, 201, "{text}");
    }
    // A throttle and a bounce order, for their panels (the override comes from the
    // defer.test rule).
    let (status, text) = d.request(
        "POST",
        "/api/v1/throttles",
        Some(r#"{"tenant":"beta","site":"mx.ok.test","rate":"100/h","duration":"1h"}"#),
    );
    assert_eq!(status, 201, "{text}");
    let (status, text) = d.request(
        "POST",
        "/api/v1/bounces",
        Some(r#"{"tenant":"gamma","duration":"1h","reason":"test"}"#),
    );
    assert_eq!(status, 200, "{text}");
    d.wait_events("deliveries, deferrals, bounces", |ev| {
        let n = |t: &str| ev.iter().filter(|e| e["type"] == t).count();
        n("Delivery") >= 5 && n("TransientFailure") >= 2 && n("Bounce") >= 3
    });

    // Each actor exports the series of its own identity (set by the actors as they hear
    // of things, so read until they have).
    let expected = [
        ("switchyard_tenant_campaigns", vec!["tenant=\"acme\""], None),
        (
            "switchyard_campaign_queues",
            vec!["tenant=\"beta\"", "campaign=\"spring\""],
            Some(1.0),
        ),
        (
            "switchyard_connection_sessions_total",
            vec![
                "source=\"ip-1\"",
                "site=\"mx.ok.test\"",
                "mx=\"mx.ok.test\"",
            ],
            None,
        ),
        (
            "switchyard_connection_replies_total",
            vec!["site=\"mx.bounce.test\"", "class=\"5xx\""],
            Some(2.0),
        ),
        (
            "switchyard_connection_replies_total",
            vec!["site=\"mx.ok.test\"", "class=\"2xx\""],
            Some(5.0),
        ),
        (
            "switchyard_classifier_matches_total",
            vec!["rule=\"gmail-auth\""],
            Some(2.0),
        ),
        (
            "switchyard_tenant_suspended",
            vec!["tenant=\"acme\"", "site=\"*\""],
            Some(1.0),
        ),
    ];
    let unmet = |metrics: &str| -> Vec<String> {
        expected
            .iter()
            .filter_map(|(name, labels, value)| {
                let line = metrics
                    .lines()
                    .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)));
                match (line, value) {
                    (None, _) => Some(format!("no {name} with {labels:?}")),
                    (Some(l), Some(want)) => {
                        let got: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
                        (got != *want).then(|| format!("{l}, want {want}"))
                    }
                    (Some(_), None) => None,
                }
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, metrics) = d.get("/metrics");
        let missing = unmet(&metrics);
        if missing.is_empty() {
            break metrics;
        }
        assert!(Instant::now() < deadline, "per-actor series: {missing:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // promtool lints the exposition.
    for name in [
        "switchyard_received_total",
        "switchyard_delivery_total",
        "switchyard_ready_delivery_total",
        "switchyard_scheduled_messages",
        "switchyard_ready_messages",
        "switchyard_connections",
        "switchyard_tenant_suspended",
        "switchyard_campaign_suspended",
        "switchyard_source_suspended",
        "switchyard_automation_fired_total",
        "switchyard_bounce_class_total",
        "switchyard_spool_messages",
        "switchyard_spool_bytes",
        "switchyard_smtp_sessions",
        "switchyard_injection_seconds_bucket",
        "switchyard_delivery_seconds_bucket",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    Tool::Promtool.require();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Prometheus has scraped a few times: every dashboard expression has data.
    let deadline = Instant::now() + Duration::from_secs(60);
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let mut missing: Vec<String>;
    loop {
        missing = queries
            .iter()
            .filter(|q| {
                let v = prometheus.query(q);
                v["data"]["result"].as_array().is_none_or(|r| r.is_empty())
            })
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(missing.is_empty(), "queries without series: {missing:#?}");
    let table = prometheus.query("(switchyard_suspension_expires_timestamp_seconds - time()) > 0");
    let rules: Vec<&str> = table["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"gmail-auth") && rules.contains(&"manual"),
        "{rules:?}"
    );
}

#[test]
fn campaign_labels_can_be_turned_off() {
    let w = world(
        &[("ok.test", "mx.ok.test")],
        "",
        "",
        "[metrics]\ncampaign_labels = false\n",
    );
    let (ok, out, err) = common::python(
        "smtp_client.py",
        &[
            "send".into(),
            "127.0.0.1".into(),
            w.d.smtp.port().to_string(),
            "--rcpt".into(),
            "u@ok.test".into(),
            "--tenant".into(),
            "acme".into(),
            "--campaign".into(),
            "spring".into(),
        ],
    );
    assert!(ok, "{out}{err}");
    w.d.wait_metric(
        "switchyard_delivery_total",
        "outcome=\"delivered\",tenant=\"acme\"",
        1.0,
    );
    let (_, metrics) = w.d.get("/metrics");
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("switchyard_delivery_total{")
                || l.starts_with("switchyard_scheduled_messages{")
        })
        .collect();
    assert!(lines.len() >= 2, "{metrics}");
    assert!(lines.iter().all(|l| !l.contains("campaign=")), "{lines:?}");
}

#[test]
fn counters_whose_labels_are_known_are_exported_at_zero_from_the_start() {
    let w = world(
        &[("ok.test", "mx.ok.test")],
        "",
        "[[\"ok.test\".automation]]\nname = \"ok-auth\"\nregex = \"does not have authentication\"\naction = [\"SuspendTenant\", {ThrottleTenant = \"10/min\"}]\nduration = \"1h\"\n",
        "[tenant.\"acme\"]\n\n[[source]]\nname = \"ip-1\"\naddress = \"127.0.0.2\"\n\n[[pool]]\nname = \"default\"\nsources = [{ source = \"ip-1\", weight = 1 }]\n",
    );
    let d = &w.d;
    // Before any mail: the rule's counters and the configured tenant's reception count.
    for (name, labels) in [
        (
            "switchyard_automation_fired_total",
            "action=\"SuspendTenant\",rule=\"ok-auth\"",
        ),
        (
            "switchyard_automation_fired_total",
            "action=\"ThrottleTenant\",rule=\"ok-auth\"",
        ),
        ("switchyard_classifier_matches_total", "rule=\"ok-auth\""),
        ("switchyard_received_total", "tenant=\"acme\""),
    ] {
        assert_eq!(d.metric(name, labels), Some(0.0), "{name}{{{labels}}}");
    }
    // A first message: its queue's every outcome and bounce class, its ready queue's every
    // outcome.
    send_as(d, 1, "a@acme.example", "u@ok.test", "acme");
    d.wait_metric(
        "switchyard_delivery_total",
        "outcome=\"delivered\",tenant=\"acme\"",
        1.0,
    );
    for (name, labels) in [
        (
            "switchyard_delivery_total",
            "outcome=\"bounced\",tenant=\"acme\"",
        ),
        (
            "switchyard_delivery_total",
            "outcome=\"expired\",tenant=\"acme\"",
        ),
        (
            "switchyard_delivery_total",
            "outcome=\"admin_bounced\",tenant=\"acme\"",
        ),
        (
            "switchyard_bounce_class_total",
            "class=\"Uncategorized\",tenant=\"acme\"",
        ),
        (
            "switchyard_ready_delivery_total",
            "outcome=\"transient\",site=\"mx.ok.test\",source=\"ip-1\"",
        ),
    ] {
        assert_eq!(d.metric(name, labels), Some(0.0), "{name}{{{labels}}}");
    }
    // A rule added by a reload counts from 0 at once.
    let shaping = w.d.dir.path().join("shaping.toml");
    let text = std::fs::read_to_string(&shaping).unwrap();
    std::fs::write(
        &shaping,
        format!("{text}\n[[\"ok.test\".automation]]\nname = \"added\"\nregex = \"later\"\naction = \"Suspend\"\nduration = \"1h\"\n"),
    )
    .unwrap();
    let (status, body) = d.request("POST", "/api/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        d.metric(
            "switchyard_automation_fired_total",
            "action=\"Suspend\",rule=\"added\""
        ),
        Some(0.0)
    );
}
