//! Queue policy per scope, over real sockets: `[queue]` < `[queue.domain."D"]` <
//! `[queue.tenant."T"]` < `[queue.campaign."C:T"]`. A tenant's short `max_age` expires its
//! mail while another tenant's waits on; a domain's `egress_pool` sends through that pool's
//! address; a reload changes the policy of queues that already exist.

mod common;

use common::{send_as, world};
use serde_json::Value;
use std::time::Duration;

const TWO_POOLS: &str = "[[source]]\nname = \"ip-1\"\naddress = \"127.0.0.2\"\n\n[[source]]\nname = \"ip-2\"\naddress = \"127.0.0.3\"\n\n[[pool]]\nname = \"default\"\nsources = [{ source = \"ip-1\", weight = 1 }]\n\n[[pool]]\nname = \"gmail-ips\"\nsources = [{ source = \"ip-2\", weight = 1 }]\n";

fn count(ev: &[Value], kind: &str, tenant: &str) -> usize {
    ev.iter()
        .filter(|e| e["type"] == kind && e["tenant"] == tenant)
        .count()
}

#[test]
fn a_tenants_max_age_expires_its_mail_while_another_tenants_waits() {
    let w = world(
        &[("slow.test", "mx.slow.test")],
        "[[rule]]\nrecipient_domain = \"slow.test\"\ncode = 451\nmsg = \"4.3.0 try later\"\n",
        "",
        &format!(
            "[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"1s\"\nmax_age = \"1h\"\n\n[queue.tenant.\"brief\"]\nmax_age = \"3s\"\n\n{TWO_POOLS}"
        ),
    );
    send_as(&w.d, 2, "a@brief.example", "u@slow.test", "brief");
    send_as(&w.d, 2, "a@patient.example", "u@slow.test", "patient");
    let ev = w.d.wait_events("brief's two expirations", |ev| {
        count(ev, "Expiration", "brief") >= 2
    });
    // Meanwhile the other tenant's mail was retried as often, and waits on.
    assert!(count(&ev, "TransientFailure", "patient") >= 4, "{ev:?}");
    assert_eq!(count(&ev, "Expiration", "patient"), 0);
    let attempts: Vec<u64> = ev
        .iter()
        .filter(|e| e["type"] == "Expiration")
        .map(|e| e["attempts"].as_u64().unwrap())
        .collect();
    assert!(attempts.iter().all(|a| *a >= 2), "{attempts:?}");
}

#[test]
fn a_domains_egress_pool_sends_through_that_pool_and_a_reload_changes_it() {
    let mut w = world(
        &[
            ("gmail.test", "mx.gmail.test"),
            ("other.test", "mx.other.test"),
        ],
        "",
        "",
        &format!("[queue.domain.\"gmail.test\"]\negress_pool = \"gmail-ips\"\n\n{TWO_POOLS}"),
    );
    send_as(&w.d, 3, "a@acme.example", "u@gmail.test", "acme");
    send_as(&w.d, 3, "a@acme.example", "u@other.test", "acme");
    let got = w
        .sink
        .wait("6 delivered", Duration::from_secs(15), |g| g.len() >= 6);
    let peers = |domain: &str, got: &[Value]| -> Vec<String> {
        got.iter()
            .filter(|r| r["rcpts"][0].as_str().unwrap().ends_with(domain))
            .map(|r| r["peer"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(peers("gmail.test", &got), vec!["127.0.0.3"; 3]);
    assert_eq!(peers("other.test", &got), vec!["127.0.0.2"; 3]);
    // The domain's pool dropped from the config: its existing queue follows after a reload.
    let config = std::fs::read_to_string(&w.d.config).unwrap();
    std::fs::write(
        &w.d.config,
        config.replace("egress_pool = \"gmail-ips\"", "retry_interval = \"30s\""),
    )
    .unwrap();
    let (status, body) = w.d.request("POST", "/api/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["restart_needed"], serde_json::json!([]), "{body}");
    send_as(&w.d, 2, "a@acme.example", "u@gmail.test", "acme");
    let got = w
        .sink
        .wait("8 delivered", Duration::from_secs(15), |g| g.len() >= 8);
    assert_eq!(peers("gmail.test", &got)[3..], ["127.0.0.2", "127.0.0.2"]);
    w.d.kill();
}

#[test]
fn explain_names_the_block_and_line_of_every_option_of_a_layered_path() {
    let shaping = "[provider.\"googleish\"]\nmatch = [{MXSuffix = \".gmail.test\"}]\nmax_message_rate = \"100/s\"\nconnection_limit = 5\n\n[\"gmail.test\"]\nmx_rollup = false\nconnection_limit = 3\n\n[\"gmail.test\".sources.\"ip-1\"]\nmax_deliveries_per_connection = 50\n";
    let w = world(
        &[("gmail.test", "mx.gmail.test")],
        "",
        shaping,
        &format!("[queue.tenant.\"acme\"]\nmax_age = \"2h\"\n\n{TWO_POOLS}"),
    );
    let (status, body) = w.d.request(
        "POST",
        "/api/v1/throttles",
        Some(r#"{"tenant":"acme","domain":"gmail.test","rate":"10/min","duration":"1h"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let v =
        w.d.get_json("/api/v1/explain?tenant=acme&domain=gmail.test&source=ip-1");
    assert_eq!(v["site"], "mx.gmail.test", "{v}");
    let text = std::fs::read_to_string(w.d.dir.path().join("shaping.toml")).unwrap();
    let line_of = |option: &str, after: &str| -> usize {
        let start = text.find(after).unwrap();
        text[..start].matches('\n').count()
            + text[start..]
                .lines()
                .position(|l| l.starts_with(&format!("{option} =")))
                .unwrap()
            + 1
    };
    let options = &v["shaping"][0]["options"];
    let expect = [
        ("smtp_port", "default", "[\"default\"]"),
        ("prohibited_hosts", "default", "[\"default\"]"),
        (
            "max_message_rate",
            "provider.googleish",
            "[provider.\"googleish\"]",
        ),
        ("connection_limit", "gmail.test", "[\"gmail.test\"]"),
        (
            "max_deliveries_per_connection",
            "gmail.test.sources.ip-1",
            "[\"gmail.test\".sources.\"ip-1\"]",
        ),
    ];
    for (option, block, header) in expect {
        let o = &options[option];
        assert_eq!(o["block"], block, "{option}: {o}");
        let at = o["at"].as_str().unwrap();
        assert!(
            at.ends_with(&format!("shaping.toml:{}", line_of(option, header))),
            "{option} at {at}, expected line {} of\n{text}",
            line_of(option, header)
        );
    }
    assert_eq!(
        options["connection_limit"]["value"], "3",
        "the domain block wins"
    );
    assert_eq!(
        v["shaping"][0]["blocks"],
        serde_json::json!([
            "default",
            "provider.googleish",
            "gmail.test",
            "gmail.test.sources.ip-1"
        ])
    );
    assert_eq!(v["queue_policy"]["max_age"]["value"], "2h");
    assert_eq!(
        v["queue_policy"]["max_age"]["from"],
        "[queue.tenant.\"acme\"]"
    );
    assert_eq!(v["queue_policy"]["retry_interval"]["from"], "[queue]");
    assert_eq!(v["throttles"][0]["rate"], "10/min");
    // The same from the command line; a path without a tenant is a 400.
    let (ok, out, err) = common::ctl(
        &w.d,
        &["explain", "--tenant", "acme", "--domain", "gmail.test"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("SHAPING via ip-1")
            && out.contains("provider.googleish")
            && out.contains("THROTTLES (1)"),
        "{out}"
    );
    let (status, body) = w.d.get("/api/v1/explain?domain=gmail.test");
    assert_eq!(status, 400, "{body}");
}
