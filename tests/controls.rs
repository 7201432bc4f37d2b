//! The time-limited controls as MailOps sees them. Throttles: an automation rule throttles
//! one tenant (`ThrottleTenant`), the tenant next to it on the same IP and site is not
//! slowed; the throttle is listed, survives a restart, is changed by firing again (same id,
//! new rate), shown as a metric, recorded, and cancelled — over the API and with
//! `switchyard ctl`. SetConfig overrides are listed and reverted the same way. Bounces with a
//! duration keep bouncing new arrivals until they end or are cancelled. Rates take KumoMTA's
//! throttle forms with its burst. Providers are played by `switchyard sink --responses`,
//! DNS by dnsmasq, the egress source is 127.0.0.2.

mod common;

use common::{send_as, world, Daemon, BIN};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const ONE_SOURCE: &str = "[[source]]\nname = \"ip-1\"\naddress = \"127.0.0.2\"\n\n[[pool]]\nname = \"default\"\nsources = [{ source = \"ip-1\", weight = 1 }]\n";

/// Gmail's answer to a sender going too fast.
const GMAIL_4_7_28: &str = "4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address";

/// `switchyard ctl ARGS`, which must succeed: its output.
fn ctl(d: &Daemon, args: &[&str]) -> String {
    let (ok, stdout, stderr) = common::ctl(d, args);
    assert!(ok, "ctl {args:?}: {stdout}{stderr}");
    stdout
}

fn list(d: &Daemon, route: &str) -> Vec<Value> {
    d.get_json(route).as_array().cloned().unwrap_or_default()
}

fn of<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["type"] == kind).collect()
}

/// Times (s) at which the sink accepted the messages of `sender_domain`.
fn accepted_times(got: &[Value], sender_domain: &str) -> Vec<f64> {
    let mut t: Vec<f64> = got
        .iter()
        .filter(|r| {
            r["code"] == 250
                && r["mail_from"]
                    .as_str()
                    .is_some_and(|m| m.ends_with(sender_domain))
        })
        .map(|r| r["time"].as_f64().unwrap())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

#[test]
fn throttle_tenant_paces_that_tenant_only_and_is_listed_changed_kept_and_cancelled() {
    let responses = format!(
        "[[rule]]\nsender_domain = \"fast.example\"\nrecipient_domain = \"gmail.test\"\nlimit = 1\ncode = 421\nmsg = \"{GMAIL_4_7_28}\"\n"
    );
    let shaping = "[[\"gmail.test\".automation]]\nname = \"gmail-rate\"\nregex = \"unusual rate of unsolicited mail\"\naction = { ThrottleTenant = \"4/s,max_burst=1\" }\nduration = \"1 hour\"\n";
    let mut w = world(
        &[("gmail.test", "mx.gmail.test")],
        &responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"1s\"\n\n{ONE_SOURCE}"),
    );

    // Gmail's 421 4.7.28 fires the rule for the tenant that got it.
    send_as(&w.d, 1, "news@fast.example", "u@gmail.test", "fast");
    let ev = w.d.wait_events("the firing and the throttle", |ev| {
        !of(ev, "AutomationFired").is_empty() && !of(ev, "Throttle").is_empty()
    });
    let fired = of(&ev, "AutomationFired")[0];
    assert_eq!(fired["action"], "ThrottleTenant(4/s,max_burst=1)");
    let record = of(&ev, "Throttle")[0];
    assert_eq!(
        (
            &record["tenant"],
            &record["site"],
            &record["rule"],
            &record["rate"]
        ),
        (
            &Value::from("fast"),
            &Value::from("mx.gmail.test"),
            &Value::from("gmail-rate"),
            &Value::from("4/s,max_burst=1")
        ),
        "{record}"
    );
    let listed = list(&w.d, "/api/v1/throttles");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let t = &listed[0];
    assert_eq!(
        (
            &t["tenant"],
            &t["site"],
            &t["rate"],
            &t["rule"],
            &t["campaign"]
        ),
        (
            &Value::from("fast"),
            &Value::from("mx.gmail.test"),
            &Value::from("4/s,max_burst=1"),
            &Value::from("gmail-rate"),
            &Value::Null
        ),
        "{t}"
    );
    let id = t["id"].as_str().unwrap().to_string();
    w.d.wait_metric(
        "switchyard_tenant_throttle_rate",
        "site=\"mx.gmail.test\",tenant=\"fast\"",
        4.0,
    );

    // Both tenants send 12 over the same IP to the same site: only "fast" is paced.
    send_as(&w.d, 12, "news@fast.example", "u@gmail.test", "fast");
    send_as(&w.d, 12, "news@slow.example", "u@gmail.test", "other");
    let got = w
        .sink
        .wait("13 + 12 delivered", Duration::from_secs(30), |g| {
            accepted_times(g, "fast.example").len() >= 13
                && accepted_times(g, "slow.example").len() >= 12
        });
    let (fast, other) = (
        accepted_times(&got, "fast.example"),
        accepted_times(&got, "slow.example"),
    );
    let fast_span = fast[fast.len() - 1] - fast[fast.len() - 12];
    let other_span = other[other.len() - 1] - other[0];
    eprintln!(
        "12 messages each: throttled tenant over {fast_span:.2}s, the other over {other_span:.2}s"
    );
    // 4/s with no burst: eleven gaps of 250 ms take at least 2.75 s.
    assert!(
        fast_span >= 2.5,
        "the throttled tenant was not paced: {fast_span:.2}s"
    );
    assert!(
        other[other.len() - 1] < fast[fast.len() - 1] && other_span < fast_span / 2.0,
        "the other tenant was slowed too: {other_span:.2}s"
    );

    // Throttled again (by hand, same target): same id, the new rate, a later expiry.
    let (status, body) = w.d.request(
        "POST",
        "/api/v1/throttles",
        Some(r#"{"tenant":"fast","site":"mx.gmail.test","rate":"1,000/h","duration":"2 hours","reason":"ops"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let again: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["rate"], "1000/h");
    assert!(
        again["expires"].as_str() > t["expires"].as_str(),
        "{again} vs {t}"
    );
    let rate =
        w.d.metric(
            "switchyard_tenant_throttle_rate",
            "site=\"mx.gmail.test\",tenant=\"fast\"",
        )
        .unwrap();
    assert!((rate - 1000.0 / 3600.0).abs() < 1e-6, "{rate}");

    // It survives a restart, with its id, rate and expiry.
    w.d.kill();
    w.d.spawn();
    let kept = list(&w.d, "/api/v1/throttles");
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (&kept[0]["id"], &kept[0]["rate"], &kept[0]["expires"]),
        (&again["id"], &again["rate"], &again["expires"])
    );

    // Cancelled: a ThrottleEnd record, the gauge back to 0, gone from the list.
    let (status, body) =
        w.d.request("DELETE", &format!("/api/v1/throttles/{id}"), None);
    assert_eq!(status, 204, "{body}");
    let (status, body) =
        w.d.request("DELETE", &format!("/api/v1/throttles/{id}"), None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert!(list(&w.d, "/api/v1/throttles").is_empty());
    w.d.wait_metric(
        "switchyard_tenant_throttle_rate",
        "site=\"mx.gmail.test\",tenant=\"fast\"",
        0.0,
    );
    let ev =
        w.d.wait_events("the ThrottleEnd", |ev| !of(ev, "ThrottleEnd").is_empty());
    assert_eq!(of(&ev, "ThrottleEnd")[0]["id"], id.as_str());
    // Bad requests get a clear 400.
    for bad in [
        r#"{"tenant":"fast","rate":"fast","duration":"1h"}"#,
        r#"{"tenant":"fast","rate":"10/h","duration":"0s"}"#,
        r#"{"rate":"10/h","duration":"1h"}"#,
    ] {
        let (status, body) = w.d.request("POST", "/api/v1/throttles", Some(bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
}

#[test]
fn ctl_throttles_lists_and_unthrottles() {
    let w = world(&[("gmail.test", "mx.gmail.test")], "", "", ONE_SOURCE);
    let out = ctl(
        &w.d,
        &[
            "throttle",
            "--tenant",
            "acme",
            "--domain",
            "gmail.test",
            "--rate",
            "100/h",
            "--duration",
            "2 hours",
        ],
    );
    assert!(out.starts_with("throttled: "), "{out}");
    let table = ctl(&w.d, &["throttles"]);
    assert!(
        table.contains("acme") && table.contains("100/h") && table.contains("gmail.test"),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&ctl(&w.d, &["throttles", "--json"])).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["domain"], "gmail.test");
    assert_eq!(listed[0]["rule"], Value::Null);
    let out = ctl(&w.d, &["unthrottle", &id]);
    assert_eq!(out, format!("unthrottled: {id}\n"));
    assert!(list(&w.d, "/api/v1/throttles").is_empty());
    // A campaign's throttle has its own gauge.
    let out = ctl(
        &w.d,
        &[
            "throttle",
            "--tenant",
            "acme",
            "--campaign",
            "spring",
            "--site",
            "mx.gmail.test",
            "--rate",
            "36/h",
            "--duration",
            "1h",
        ],
    );
    assert!(out.starts_with("throttled: "), "{out}");
    w.d.wait_metric(
        "switchyard_campaign_throttle_rate",
        "campaign=\"spring\",site=\"mx.gmail.test\",tenant=\"acme\"",
        0.01,
    );
    let listed = list(&w.d, "/api/v1/throttles");
    assert_eq!(
        (&listed[0]["campaign"], &listed[0]["rate"]),
        (&Value::from("spring"), &Value::from("36/h"))
    );
}

#[test]
fn set_config_overrides_are_listed_recorded_and_reverted() {
    let responses = "[[rule]]\nrecipient_domain = \"slow.test\"\nlimit = 1\ncode = 451\nmsg = \"4.7.0 You are sending too fast, slow down please\"\n";
    let shaping = "[[\"slow.test\".automation]]\nname = \"slow-down\"\nregex = \"slow down please\"\naction = {SetConfig={name=\"max_message_rate\", value=\"1/minute\"}}\nduration = \"90 minutes\"\n";
    let w = world(
        &[("slow.test", "mx.slow.test")],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"1s\"\n\n{ONE_SOURCE}"),
    );
    send_as(&w.d, 1, "a@acme.example", "u@slow.test", "acme");
    let ev =
        w.d.wait_events("the override", |ev| !of(ev, "Override").is_empty());
    let record = of(&ev, "Override")[0];
    assert_eq!(
        (
            &record["site"],
            &record["source"],
            &record["rule"],
            &record["action"]
        ),
        (
            &Value::from("mx.slow.test"),
            &Value::from("ip-1"),
            &Value::from("slow-down"),
            &Value::from("max_message_rate=\"1/minute\"")
        ),
        "{record}"
    );
    let listed = list(&w.d, "/api/v1/overrides");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let o = &listed[0];
    assert_eq!(
        o["options"],
        serde_json::json!({"max_message_rate": "1/minute"})
    );
    assert_eq!(
        (&o["site"], &o["domain"]),
        (&Value::from("mx.slow.test"), &Value::from("slow.test"))
    );
    let id = o["id"].as_str().unwrap().to_string();
    let expires =
        w.d.metric(
            "switchyard_override_expires_timestamp_seconds",
            &format!("id=\"{id}\",rule=\"slow-down\",site=\"mx.slow.test\",source=\"ip-1\""),
        )
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expires - now - 5400.0).abs() < 60.0,
        "expires {expires}, now {now}"
    );
    let table = ctl(&w.d, &["overrides"]);
    assert!(
        table.contains(&id) && table.contains("max_message_rate"),
        "{table}"
    );

    // At one a minute, 10 more would take 10 minutes; reverted, they go at once.
    send_as(&w.d, 10, "a@acme.example", "u@slow.test", "acme");
    std::thread::sleep(Duration::from_millis(1500));
    let before = accepted_times(&w.sink.received(), "acme.example").len();
    assert!(before <= 3, "{before} delivered under 1/minute");
    assert_eq!(ctl(&w.d, &["revert", &id]), format!("reverted: {id}\n"));
    w.sink
        .wait("all 11 delivered", Duration::from_secs(20), |g| {
            accepted_times(g, "acme.example").len() >= 11
        });
    assert!(list(&w.d, "/api/v1/overrides").is_empty());
    let ev =
        w.d.wait_events("the OverrideEnd", |ev| !of(ev, "OverrideEnd").is_empty());
    assert_eq!(of(&ev, "OverrideEnd")[0]["id"], id.as_str());
    w.d.wait_metric(
        "switchyard_override_expires_timestamp_seconds",
        &format!("id=\"{id}\""),
        0.0,
    );
    let (status, _) =
        w.d.request("DELETE", &format!("/api/v1/overrides/{id}"), None);
    assert_eq!(status, 404);
}

/// Each of KumoMTA's throttle forms, in every rate option a config or shaping file has.
const FORMS: &[&str] = &[
    "100/h",
    "1,000/hr",
    "1_000/h",
    "10/5min",
    "local:100/s",
    "60/min,max_burst=1",
    "local:1,000/hr, max_burst = 10",
    "2/day",
];

#[test]
fn every_rate_option_takes_kumomtas_throttle_forms_and_a_bad_one_is_placed() {
    let dir = tempfile::tempdir().unwrap();
    for (i, form) in FORMS.iter().enumerate() {
        let shaping = format!(
            "[\"default\"]\nmax_message_rate = \"{form}\"\nmax_connection_rate = \"{form}\"\n\n[provider.\"p\"]\nmatch = [{{MXSuffix = \".p.test\"}}]\nprovider_max_message_rate = \"{form}\"\n\n[[\"default\".automation]]\nregex = \"slow\"\naction = [{{SetConfig = {{name = \"max_message_rate\", value = \"{form}\"}}}}, {{ThrottleTenant = \"{form}\"}}, {{ThrottleCampaign = \"{form}\"}}]\nduration = \"1h\"\n"
        );
        std::fs::write(dir.path().join(format!("shaping-{i}.toml")), shaping).unwrap();
        let config = dir.path().join(format!("config-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data\"\n[shaping]\nfiles = [\"shaping-{i}.toml\"]\n\n[tenant.\"acme\"]\nmax_message_rate = \"{form}\"\n"
            ),
        )
        .unwrap();
        let out = common::run(
            Command::new(BIN)
                .args(["check", "--config"])
                .arg(&config)
                .current_dir(dir.path()),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{form}: {stderr}");
        assert!(!stderr.contains("rate"), "{form}: {stderr}");
    }
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\n[tenant.\"acme\"]\nmax_message_rate = \"1,000/fortnight\"\n",
    )
    .unwrap();
    let out = common::run(Command::new(BIN).args(["check", "--config"]).arg(&config));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with(&format!(
            "{}:3:20: invalid rate \"1,000/fortnight\"",
            config.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_rate_lets_its_burst_go_at_once_and_max_burst_spreads_it() {
    // Two tenants at 120/min: "burst" with KumoMTA's default burst (120), "even" with
    // max_burst=1 (one every 500 ms).
    let w = world(
        &[("burst.test", "mx.burst.test")],
        "",
        "",
        &format!(
            "[tenant.\"burst\"]\nmax_message_rate = \"120/min\"\n\n[tenant.\"even\"]\nmax_message_rate = \"120/min,max_burst=1\"\n\n{ONE_SOURCE}"
        ),
    );
    send_as(&w.d, 6, "a@burst.example", "u@burst.test", "burst");
    send_as(&w.d, 6, "a@even.example", "u@burst.test", "even");
    let got = w.sink.wait("12 delivered", Duration::from_secs(20), |g| {
        accepted_times(g, "burst.example").len() >= 6
            && accepted_times(g, "even.example").len() >= 6
    });
    let span = |t: Vec<f64>| t[t.len() - 1] - t[0];
    let (burst, even) = (
        span(accepted_times(&got, "burst.example")),
        span(accepted_times(&got, "even.example")),
    );
    eprintln!("6 messages at 120/min: default burst over {burst:.2}s, max_burst=1 over {even:.2}s");
    // Five gaps of 500 ms: at least 2.5 s when spread; the burst needs no wait at all.
    assert!(even >= 2.3, "max_burst=1 did not spread them: {even:.2}s");
    assert!(
        burst < even / 2.0,
        "the default burst did not let them go at once: {burst:.2}s"
    );
}

/// (AdminBounce, Delivery) records of `tenant` so far.
fn fates(d: &Daemon, tenant: &str) -> (usize, usize) {
    let ev = d.events();
    let n = |kind: &str| {
        ev.iter()
            .filter(|e| e["type"] == kind && e["tenant"] == tenant)
            .count()
    };
    (n("AdminBounce"), n("Delivery"))
}

fn wait_fates(d: &Daemon, tenant: &str, want: (usize, usize)) {
    common::poll_until(
        &format!("{tenant}: {want:?} (admin bounces, deliveries)"),
        Duration::from_secs(15),
        || {
            let (b, dl) = fates(d, tenant);
            vec![serde_json::json!([b, dl])]
        },
        |v| v[0] == serde_json::json!([want.0, want.1]),
    );
}

#[test]
fn bounce_rules_keep_bouncing_new_arrivals_for_their_duration() {
    let responses = "[[rule]]\nsender_domain = \"trigger.example\"\nlimit = 1\ncode = 550\nmsg = \"5.7.1 policy violation, go away\"\n\n[[rule]]\nsender_domain = \"spam.example\"\nlimit = 1\ncode = 550\nmsg = \"5.7.1 listed on our blocklist\"\n";
    let shaping = "[[\"b.test\".automation]]\nname = \"policy\"\nregex = \"policy violation\"\naction = \"BounceTenant\"\nduration = \"1 hour\"\n\n[[\"d.test\".automation]]\nname = \"blocklisted\"\nregex = \"blocklist\"\naction = \"Bounce\"\nduration = \"1 hour\"\n";
    let w = world(
        &[("b.test", "mx.b.test"), ("d.test", "mx.d.test")],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1h\"\n\n{ONE_SOURCE}"),
    );
    let d = &w.d;
    // BounceTenant: acme's mail to the site is bounced from now on, other's is not.
    send_as(d, 1, "t@trigger.example", "u@b.test", "acme");
    d.wait_events("the firing", |ev| !of(ev, "AutomationFired").is_empty());
    let orders = list(d, "/api/v1/bounces");
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(
        (&orders[0]["tenant"], &orders[0]["site"], &orders[0]["rule"]),
        (
            &Value::from("acme"),
            &Value::from("mx.b.test"),
            &Value::from("policy")
        )
    );
    send_as(d, 3, "a@acme.example", "u@b.test", "acme");
    send_as(d, 2, "a@other.example", "u@b.test", "other");
    wait_fates(d, "acme", (3, 0));
    wait_fates(d, "other", (0, 2));
    let bounced = of(&d.events(), "AdminBounce")
        .iter()
        .map(|e| e["response"]["text"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert!(
        bounced
            .iter()
            .all(|t| t.contains("rule policy") && t.contains("policy violation")),
        "{bounced:?}"
    );
    // Cancelled: acme's new mail goes out again.
    let id = orders[0]["id"].as_str().unwrap();
    let (status, body) = d.request("DELETE", &format!("/api/v1/bounces/{id}"), None);
    assert_eq!(status, 204, "{body}");
    send_as(d, 2, "a@acme.example", "u@b.test", "acme");
    wait_fates(d, "acme", (3, 2));

    // Bounce: KumoMTA's scope — every tenant's mail to the destination domain.
    send_as(d, 1, "x@spam.example", "u@d.test", "acme");
    common::poll_until(
        "the domain-wide order",
        Duration::from_secs(10),
        || list(d, "/api/v1/bounces"),
        |o| o.len() == 1 && o[0]["domain"] == "d.test",
    );
    send_as(d, 2, "a@other.example", "u@d.test", "other");
    send_as(d, 1, "a@other.example", "u@b.test", "other");
    wait_fates(d, "other", (2, 3));
}

#[test]
fn a_manual_bounce_with_a_duration_is_kept_listed_and_cancelled() {
    let mut w = world(
        &[("gmail.test", "mx.gmail.test")],
        "",
        "",
        &format!("[queue]\nretry_interval = \"1h\"\n\n{ONE_SOURCE}"),
    );
    let (status, body) = w.d.request(
        "POST",
        "/api/v1/bounces",
        Some(r#"{"tenant":"acme","duration":"2 hours","reason":"account closed"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["bounced"], 0);
    let id = v["id"].as_str().unwrap().to_string();
    send_as(&w.d, 2, "a@acme.example", "u@gmail.test", "acme");
    wait_fates(&w.d, "acme", (2, 0));
    let reason = of(&w.d.events(), "AdminBounce")[0]["response"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("account closed"), "{reason}");
    // Kept across a restart.
    w.d.kill();
    w.d.spawn();
    send_as(&w.d, 1, "a@acme.example", "u@gmail.test", "acme");
    wait_fates(&w.d, "acme", (3, 0));
    let table = ctl(&w.d, &["bounces"]);
    assert!(
        table.contains(&id) && table.contains("account closed"),
        "{table}"
    );
    assert_eq!(
        ctl(&w.d, &["bounce-cancel", &id]),
        format!("cancelled: {id}\n")
    );
    send_as(&w.d, 1, "a@acme.example", "u@gmail.test", "acme");
    wait_fates(&w.d, "acme", (3, 1));
    let (status, _) =
        w.d.request("DELETE", &format!("/api/v1/bounces/{id}"), None);
    assert_eq!(status, 404);
    // ctl bounce --duration; a bad duration is a 400.
    let out = ctl(&w.d, &["bounce", "--tenant", "beta", "--duration", "1h"]);
    assert!(
        out.starts_with("bounced: 0; bouncing what arrives until "),
        "{out}"
    );
    let (status, body) = w.d.request(
        "POST",
        "/api/v1/bounces",
        Some(r#"{"tenant":"acme","duration":"soon"}"#),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn set_domain_config_paces_only_the_triggering_domain_from_the_triggering_source() {
    // a.test and b.test share one site (the same MX); a.test's provider verdict must not
    // slow b.test down.
    let responses = "[[rule]]\nrecipient_domain = \"a.test\"\nlimit = 1\ncode = 451\nmsg = \"4.7.0 You are sending too fast, slow down please\"\n";
    let shaping = "[[\"a.test\".automation]]\nname = \"domain-slow\"\nregex = \"slow down please\"\naction = {SetDomainConfig={name=\"max_message_rate\", value=\"1/minute\"}}\nduration = \"1 hour\"\n";
    let w = world(
        &[("a.test", "mx.shared.test"), ("b.test", "mx.shared.test")],
        responses,
        shaping,
        &format!("[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"1s\"\n\n{ONE_SOURCE}"),
    );
    send_as(&w.d, 1, "x@acme.example", "u@a.test", "acme");
    w.d.wait_events("the override", |ev| !of(ev, "Override").is_empty());
    let o = &list(&w.d, "/api/v1/overrides")[0];
    assert_eq!(
        (&o["source"], &o["site"], &o["domain"]),
        (
            &Value::from("ip-1"),
            &Value::from("mx.shared.test"),
            &Value::from("a.test")
        ),
        "{o}"
    );
    send_as(&w.d, 5, "y@acme.example", "u@a.test", "acme");
    send_as(&w.d, 5, "z@acme.example", "u@b.test", "acme");
    // b.test's five go at once over the shared ready queue.
    let got = w.sink.wait("b.test's 5", Duration::from_secs(15), |g| {
        g.iter()
            .filter(|r| r["code"] == 250 && r["rcpts"][0] == "u@b.test")
            .count()
            >= 5
    });
    std::thread::sleep(Duration::from_millis(1500));
    let a = w
        .sink
        .received()
        .iter()
        .filter(|r| r["code"] == 250 && r["rcpts"][0] == "u@a.test")
        .count();
    assert!(
        a <= 2,
        "a.test not paced at 1/minute: {a} delivered; {got:?}"
    );
    // a.test has a ready queue of its own meanwhile.
    let queues = w.d.get_json("/api/v1/queues");
    let lanes: Vec<&str> = queues["ready"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["site"].as_str().unwrap())
        .collect();
    assert!(lanes.contains(&"mx.shared.test/a.test"), "{lanes:?}");
}
