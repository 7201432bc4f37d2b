//! MTA-STS (RFC 8461) from the outside: dnsmasq publishes the `_mta-sts` TXT records and
//! points `mta-sts.<domain>` and the MX hosts at loopback addresses, a real HTTPS server
//! (Python's, on port 443, with a certificate from a test CA listed in `[tls]
//! trust_roots`) serves the policies, and `switchyard sink`s present certificates from the
//! same CA — or their own — for their MX names.
//!
//! Each test has its own loopback address for port 443, so they run side by side.

mod common;

use common::pki::{self_signed, tls_sink_on, Pki};
use common::{send_as, Daemon, Dnsmasq, ResponseSink};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// The records of `kind` about recipients at `domain`.
fn of<'a>(ev: &'a [Value], kind: &str, domain: &str) -> Vec<&'a Value> {
    ev.iter()
        .filter(|e| e["type"] == kind && e["domain"] == domain)
        .collect()
}

fn wait_long(d: &Daemon, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    d.wait_events_within(what, Duration::from_secs(60), f)
}

/// An enforce policy listing `mx`, cached for a day.
fn enforce(mx: &[&str]) -> String {
    policy("enforce", mx, 86400)
}

fn policy(mode: &str, mx: &[&str], max_age: u64) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text + &format!("max_age: {max_age}\r\n")
}

/// dnsmasq options: `domain`'s MX hosts (preference, name, address), and its `_mta-sts`
/// TXT record with `id` (none when `None`) with `mta-sts.<domain>` at `web`.
fn zone(domain: &str, mx: &[(u16, &str, &str)], id: Option<&str>, web: &str) -> Vec<String> {
    let mut opts = Vec::new();
    for (pref, host, ip) in mx {
        opts.push(format!("--mx-host={domain},{host},{pref}"));
        opts.push(format!("--host-record={host},{ip}"));
    }
    if let Some(id) = id {
        opts.push(format!("--txt-record=_mta-sts.{domain},v=STSv1; id={id}"));
        opts.push(format!("--host-record=mta-sts.{domain},{web}"));
    }
    opts
}

/// The policy web server: `policies/<domain>.txt` under the test directory, served on
/// `ip:443` with a certificate for every `mta-sts.<domain>` of `domains`.
struct PolicyServer {
    child: Option<Child>,
    ip: String,
    pair: [PathBuf; 2],
    root: PathBuf,
    log: PathBuf,
}

impl PolicyServer {
    fn start(dir: &Path, pki: &Pki, ip: &str, domains: &[&str]) -> PolicyServer {
        let names: Vec<String> = domains.iter().map(|d| format!("mta-sts.{d}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let root = dir.join("policies");
        std::fs::create_dir_all(&root).unwrap();
        let mut server = PolicyServer {
            child: None,
            ip: ip.to_string(),
            pair: pki.issue_for(dir, "web", &names),
            root,
            log: dir.join("policy-requests.jsonl"),
        };
        server.up();
        server
    }

    /// Publish `text` as `domain`'s policy.
    fn publish(&self, domain: &str, text: &str) {
        std::fs::write(self.root.join(format!("{domain}.txt")), text).unwrap();
    }

    fn up(&mut self) {
        let args = [
            "--listen".into(),
            format!("{}:443", self.ip).into(),
            "--cert".into(),
            self.pair[0].clone().into_os_string(),
            "--key".into(),
            self.pair[1].clone().into_os_string(),
            "--root".into(),
            self.root.clone().into_os_string(),
            "--log".into(),
            self.log.clone().into_os_string(),
        ];
        self.child = Some(common::python_server(
            "mta_sts_server.py",
            &args,
            &format!(
                "the policy server could not listen on {}:443 (the MTA-STS tests bind port 443 and need root, as CI has)",
                self.ip
            ),
        ));
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// How many requests asked for `domain`'s policy.
    fn fetches(&self, domain: &str) -> usize {
        common::read_jsonl(&self.log)
            .iter()
            .filter(|r| r["host"] == format!("mta-sts.{domain}"))
            .count()
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// A daemon resolving through `dns`, trusting the test CA, shaping everything to `port`
/// with `enable_tls = "Disabled"` (so TLS seen on the wire is the policy's doing), plus
/// `shaping`.
fn daemon(dir: tempfile::TempDir, dns: &Dnsmasq, port: u16, shaping: &str) -> Daemon {
    common::daemon_over(
        dir,
        dns.port,
        port,
        shaping,
        "[tls]\ntrust_roots = [\"ca.pem\"]\n",
    )
}

#[test]
fn enforce_testing_and_no_policy_each_do_what_the_domain_published() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_ca(dir.path());
    let port = common::free_port();
    // MX sinks, each on its own loopback address, all on `port`.
    let verified = tls_sink_on(
        dir.path(),
        &pki.issue_for(dir.path(), "mx", &["mx.enforce.test", "mx.mismatch.test"]),
        "",
        "127.0.0.11",
        port,
    );
    let own_cert = tls_sink_on(
        dir.path(),
        &self_signed(dir.path(), "self", "mx.selfsigned.test"),
        "",
        "127.0.0.12",
        port,
    );
    let plain = ResponseSink::start_with(dir.path(), "", "127.0.0.13", port, &[]);
    let domains = [
        "enforce.test",
        "mismatch.test",
        "selfsigned.test",
        "testing.test",
        "disabled.test",
        "redirect.test",
        "oversize.test",
        "none.test",
    ];
    let web = PolicyServer::start(dir.path(), &pki, "127.0.0.1", &domains);
    web.publish("enforce.test", &enforce(&["mx.enforce.test"]));
    web.publish("mismatch.test", &enforce(&["*.elsewhere.test"]));
    web.publish("selfsigned.test", &enforce(&["mx.selfsigned.test"]));
    web.publish(
        "testing.test",
        &policy("testing", &["mx.elsewhere.test"], 86400),
    );
    web.publish("disabled.test", &enforce(&["mx.elsewhere.test"]));
    web.publish(
        "redirect.test",
        "REDIRECT https://mta-sts.enforce.test/.well-known/mta-sts.txt\n",
    );
    // A valid enforce policy padded past 64 KiB with keys a reader ignores.
    web.publish(
        "oversize.test",
        &(enforce(&["mx.elsewhere.test"]) + &"x-padding: 0123456789abcdef\r\n".repeat(2500)),
    );
    web.publish("none.test", &policy("none", &[], 86400));
    let web_ip = "127.0.0.1";
    let mut opts = Vec::new();
    for (domain, mx_ip, id) in [
        ("enforce.test", "127.0.0.11", Some("e1")),
        ("mismatch.test", "127.0.0.11", Some("m1")),
        ("selfsigned.test", "127.0.0.12", Some("s1")),
        ("testing.test", "127.0.0.13", Some("t1")),
        ("disabled.test", "127.0.0.13", Some("d1")),
        ("redirect.test", "127.0.0.13", Some("r1")),
        ("oversize.test", "127.0.0.13", Some("o1")),
        ("none.test", "127.0.0.13", Some("n1")),
        ("plain.test", "127.0.0.13", None),
    ] {
        let mx = format!("mx.{domain}");
        opts.extend(zone(domain, &[(10, &mx, mx_ip)], id, web_ip));
    }
    let dns = Dnsmasq::start(&opts);
    let d = daemon(
        dir,
        &dns,
        port,
        "[\"disabled.test\"]\nenable_mta_sts = false\n",
    );
    for domain in domains.iter().chain(&["plain.test"]) {
        send_as(&d, 1, "a@tenant.test", &format!("u@{domain}"), "acme");
    }
    let delivered = [
        "enforce.test",
        "testing.test",
        "disabled.test",
        "redirect.test",
        "oversize.test",
        "none.test",
        "plain.test",
    ];
    let deferred = ["mismatch.test", "selfsigned.test"];
    let ev = wait_long(&d, "every domain settled", |ev| {
        delivered
            .iter()
            .all(|dom| !of(ev, "Delivery", dom).is_empty())
            && deferred
                .iter()
                .all(|dom| !of(ev, "TransientFailure", dom).is_empty())
    });
    let first = |kind: &str, dom: &str| of(&ev, kind, dom)[0].clone();

    // enforce, a listed MX with a certificate from a trusted CA: delivered over verified
    // TLS although enable_tls says Disabled, and the record names the policy.
    let e = first("Delivery", "enforce.test");
    assert_eq!(e["tls"]["verified"], true, "{e}");
    assert_eq!(
        e["mta_sts"],
        serde_json::json!({"mode": "enforce", "id": "e1"}),
        "{e}"
    );
    let at_verified = verified.received();
    assert_eq!(at_verified.len(), 1, "{at_verified:?}");
    assert_eq!(at_verified[0]["tls"], true, "{at_verified:?}");

    // enforce, the MX is not one the policy lists: not delivered, a transient failure that
    // says why.
    let m = first("TransientFailure", "mismatch.test");
    assert_eq!(m["response"]["code"], 451, "{m}");
    assert_eq!(m["response"]["enhanced"], "4.4.4", "{m}");
    let text = m["response"]["text"].as_str().unwrap();
    assert!(
        text.contains("MTA-STS")
            && text.contains("mx.mismatch.test")
            && text.contains("*.elsewhere.test"),
        "{m}"
    );
    assert_eq!(
        m["mta_sts"],
        serde_json::json!({"mode": "enforce", "id": "m1"}),
        "{m}"
    );

    // enforce, a listed MX whose certificate no CA vouches for: not delivered.
    let s = first("TransientFailure", "selfsigned.test");
    assert_eq!(s["response"]["enhanced"], "4.7.5", "{s}");
    assert!(
        s["response"]["text"]
            .as_str()
            .unwrap()
            .contains("requires verified TLS"),
        "{s}"
    );
    assert_eq!(s["mta_sts"]["mode"], "enforce", "{s}");
    assert!(own_cert.received().is_empty());
    for dom in deferred {
        assert!(of(&ev, "Delivery", dom).is_empty(), "{dom}");
    }

    // testing: delivered as usual (in plain text, to an MX the policy does not list), and
    // what enforce would have refused is logged.
    let t = first("Delivery", "testing.test");
    assert_eq!(
        t["mta_sts"],
        serde_json::json!({"mode": "testing", "id": "t1", "would_fail": "mx_mismatch"}),
        "{t}"
    );
    assert!(t.get("tls").is_none(), "{t}");
    assert!(
        d.log().contains("would fail under enforce"),
        "no testing-mode line in the daemon log"
    );

    // No policy record, MTA-STS turned off for the domain, a policy URL that redirects (not
    // followed), a policy over 64 KiB, mode none: delivered as usual, no policy on the
    // record.
    for dom in [
        "plain.test",
        "disabled.test",
        "redirect.test",
        "oversize.test",
        "none.test",
    ] {
        let r = first("Delivery", dom);
        assert!(r.get("mta_sts").is_none(), "{r}");
    }
    assert_eq!(
        web.fetches("disabled.test"),
        0,
        "enable_mta_sts = false still fetched"
    );
    assert_eq!(web.fetches("redirect.test"), 1);
    assert_eq!(
        web.fetches("enforce.test"),
        1,
        "only the policy itself, not the redirect's target"
    );
    assert_eq!(web.fetches("oversize.test"), 1);
    assert_eq!(plain.received().len(), 6);

    let metric = |name: &str, labels: &str| d.metric(name, labels).unwrap_or(0.0);
    assert_eq!(
        metric("switchyard_mta_sts_policies", "mode=\"enforce\""),
        3.0
    );
    assert_eq!(
        metric("switchyard_mta_sts_policies", "mode=\"testing\""),
        1.0
    );
    assert_eq!(metric("switchyard_mta_sts_policies", "mode=\"none\""), 1.0);
    assert!(metric("switchyard_mta_sts_failures_total", "reason=\"fetch\"") >= 2.0);
    let log = d.log();
    assert!(log.contains("redirects are not followed"), "{log}");
    assert!(log.contains("length limit exceeded"), "{log}");
    assert!(
        metric(
            "switchyard_mta_sts_failures_total",
            "reason=\"mx_mismatch\""
        ) >= 2.0
    );
    assert!(metric("switchyard_mta_sts_failures_total", "reason=\"tls\"") >= 1.0);
}

#[test]
fn a_policy_is_kept_across_restarts_and_outages_and_fetched_again_when_its_id_changes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_ca(dir.path());
    let port = common::free_port();
    // mx1 is preferred; the first policy lists only mx2, the later one only mx1.
    let pair = pki.issue_for(dir.path(), "mx", &["mx1.cached.test", "mx2.cached.test"]);
    let mx1 = tls_sink_on(dir.path(), &pair, "", "127.0.0.21", port);
    let mx2 = tls_sink_on(dir.path(), &pair, "", "127.0.0.22", port);
    let web_ip = "127.0.0.20";
    let mut web = PolicyServer::start(dir.path(), &pki, web_ip, &["cached.test"]);
    let mx = [
        (10, "mx1.cached.test", "127.0.0.21"),
        (20, "mx2.cached.test", "127.0.0.22"),
    ];
    web.publish("cached.test", &enforce(&["mx2.cached.test"]));
    let mut dns = Dnsmasq::start(&zone("cached.test", &mx, Some("1"), web_ip));
    let mut d = daemon(dir, &dns, port, "");
    // The n-th Delivery record (from 1) for cached.test, once there is one.
    let delivery_with = |d: &Daemon, n: usize| {
        let ev = wait_long(d, "a delivery", |ev| {
            of(ev, "Delivery", "cached.test").len() >= n
        });
        of(&ev, "Delivery", "cached.test")[n - 1].clone()
    };

    // 1. Fetched and enforced: the mail skips the preferred mx1 for mx2.
    send_as(&d, 1, "a@tenant.test", "u@cached.test", "acme");
    let first = delivery_with(&d, 1);
    assert_eq!(first["mta_sts"]["id"], "1", "{first}");
    assert_eq!(first["peer"]["host"], "mx2.cached.test", "{first}");
    assert_eq!(web.fetches("cached.test"), 1);

    // 2. The policy server goes down and the id changes; switchyard restarts. The fetch of
    //    the new id fails, and the stored policy stays in force (RFC 8461 §5.1).
    web.down();
    d.terminate();
    dns.restart(&zone("cached.test", &mx, Some("2"), web_ip));
    d.spawn();
    send_as(&d, 1, "a@tenant.test", "u@cached.test", "acme");
    let second = delivery_with(&d, 2);
    assert_eq!(
        second["mta_sts"],
        serde_json::json!({"mode": "enforce", "id": "1"}),
        "{second}"
    );
    assert_eq!(second["peer"]["host"], "mx2.cached.test", "{second}");
    assert!(
        d.metric("switchyard_mta_sts_failures_total", "reason=\"fetch\"")
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!((mx1.received().len(), mx2.received().len()), (0, 2));

    // 3. The server is back with a new policy under a new id, while switchyard runs: once
    //    the route is looked up again (dnsmasq's TTL is 0, switchyard keeps a route at
    //    least 5 s), the new id is seen, the policy fetched and applied.
    web.publish("cached.test", &policy("enforce", &["mx1.cached.test"], 24));
    web.up();
    dns.restart(&zone("cached.test", &mx, Some("3"), web_ip));
    std::thread::sleep(Duration::from_secs(7));
    send_as(&d, 1, "a@tenant.test", "u@cached.test", "acme");
    let third = delivery_with(&d, 3);
    assert_eq!(third["mta_sts"]["id"], "3", "{third}");
    assert_eq!(third["peer"]["host"], "mx1.cached.test", "{third}");
    assert_eq!(web.fetches("cached.test"), 2);

    // 4. Past half its max_age (24 s) the policy is fetched again, in the background...
    std::thread::sleep(Duration::from_secs(13));
    send_as(&d, 1, "a@tenant.test", "u@cached.test", "acme");
    assert_eq!(delivery_with(&d, 4)["mta_sts"]["id"], "3");
    common::poll_until(
        "the policy refreshed",
        Duration::from_secs(20),
        || vec![Value::from(web.fetches("cached.test"))],
        |n| n[0].as_u64() >= Some(3),
    );

    // 5. ...so it outlives the first copy's expiry: with the server gone, mail sent after
    //    that still goes under it. Half the refreshed copy's life has passed by then: its
    //    refresh fails...
    web.down();
    let failures = |d: &Daemon| {
        d.metric("switchyard_mta_sts_failures_total", "reason=\"fetch\"")
            .unwrap_or(0.0)
    };
    let failed_before = failures(&d);
    std::thread::sleep(Duration::from_secs(12));
    send_as(&d, 1, "a@tenant.test", "u@cached.test", "acme");
    let fifth = delivery_with(&d, 5);
    assert_eq!(fifth["mta_sts"]["id"], "3", "{fifth}");
    common::poll_until(
        "a failed refresh",
        Duration::from_secs(30),
        || vec![Value::from(failures(&d))],
        |v| v[0].as_f64() > Some(failed_before),
    );

    // 6. ...and the cached policy stays in force (RFC 8461 §5.1) at the next look.
    std::thread::sleep(Duration::from_secs(6));
    send_as(&d, 1, "a@tenant.test", "u@cached.test", "acme");
    let sixth = delivery_with(&d, 6);
    assert_eq!(
        sixth["mta_sts"],
        serde_json::json!({"mode": "enforce", "id": "3"}),
        "{sixth}"
    );
    assert_eq!(mx1.received().len(), 4);
}
