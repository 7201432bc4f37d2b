//! The outbound client against receivers that misbehave on purpose (`switchyard sink` with
//! scripted answers), over real sockets and a real DNS server: RFC 2920's `354` after a
//! refused recipient, `421`, a connection dropped mid-DATA, malformed and multi-line
//! replies, each timeout on its own step, `prohibited_hosts` and `skip_hosts`, providers
//! matched per MX host, and TLS with KumoMTA's semantics.

mod common;

use common::pki::{self_signed, tls_sink_on, Pki};
use common::{send_as, world, Daemon, Dnsmasq, ResponseSink};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn of<'a>(ev: &'a [Value], kind: &str, rcpt_domain: &str) -> Vec<&'a Value> {
    ev.iter()
        .filter(|e| {
            e["type"] == kind
                && e["recipient"]
                    .as_str()
                    .is_some_and(|r| r.ends_with(&format!("@{rcpt_domain}")))
        })
        .collect()
}

fn has(kind: &'static str, domain: &'static str, n: usize) -> impl Fn(&[Value]) -> bool {
    move |ev| of(ev, kind, domain).len() >= n
}

fn wait_long(d: &Daemon, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    d.wait_events_within(what, Duration::from_secs(30), f)
}

const FAST_RETRY: &str = "[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"1s\"\n";

#[test]
fn a_354_after_the_only_rcpt_was_refused_gets_a_lone_dot_and_the_session_goes_on() {
    // RFC 2920 §3.1: the pipelined DATA may be answered 354 although no recipient was
    // accepted. One connection carries everything, so a stalled session would hold up the
    // five messages behind the refused one.
    let w = world(
        &[
            ("refused.test", "mx.sink.test"),
            ("ok.test", "mx.sink.test"),
        ],
        r#"
[[rule]]
recipient_domain = "refused.test"
stage = "rcpt"
code = 550
msg = "5.1.1 no such user"

[[rule]]
stage = "data_command"
code = 354
msg = "go ahead anyway"
"#,
        "connection_limit = 1\n",
        "",
    );
    send_as(&w.d, 1, "a@tenant.test", "u@refused.test", "acme");
    send_as(&w.d, 5, "a@tenant.test", "v@ok.test", "acme");
    let ev = w.d.wait_events("1 bounce and 5 deliveries", |ev| {
        has("Bounce", "refused.test", 1)(ev) && has("Delivery", "ok.test", 5)(ev)
    });
    let bounce = of(&ev, "Bounce", "refused.test")[0];
    assert_eq!(bounce["response"]["code"], 550, "{bounce}");
    assert!(of(&ev, "TransientFailure", "ok.test").is_empty(), "{ev:?}");
    let received = w.sink.received();
    // The sink saw the empty DATA end with the lone dot, and answered it.
    assert!(
        received
            .iter()
            .any(|t| t["code"] == 554 && t["rcpts"] == serde_json::json!([])),
        "{received:?}"
    );
}

#[test]
fn a_421_a_drop_mid_data_and_a_malformed_reply_defer_only_their_message() {
    let w = world(
        &[
            ("ok.test", "mx.sink.test"),
            ("drop.test", "mx.sink.test"),
            ("multi.test", "mx.sink.test"),
        ],
        r#"
[[rule]]
sender_domain = "closing.test"
stage = "mail"
code = 421
msg = "4.7.0 too busy, closing"
limit = 1

[[rule]]
recipient_domain = "drop.test"
stage = "data"
action = "drop"
limit = 1

[[rule]]
sender_domain = "garbage.test"
stage = "mail"
raw = true
msg = "this is not SMTP"
limit = 1

[[rule]]
recipient_domain = "multi.test"
stage = "rcpt"
code = 550
msg = "5.7.1 first line\n5.7.1 second line"
"#,
        "",
        FAST_RETRY,
    );
    send_as(&w.d, 1, "a@closing.test", "a@ok.test", "acme");
    send_as(&w.d, 1, "a@tenant.test", "b@drop.test", "acme");
    send_as(&w.d, 1, "a@garbage.test", "c@ok.test", "acme");
    send_as(&w.d, 1, "a@tenant.test", "d@multi.test", "acme");
    send_as(&w.d, 3, "a@tenant.test", "e@ok.test", "acme");
    let ev = wait_long(&w.d, "every message settled", |ev| {
        has("Delivery", "ok.test", 5)(ev)
            && has("Delivery", "drop.test", 1)(ev)
            && has("Bounce", "multi.test", 1)(ev)
    });
    let transient =
        |f: &dyn Fn(&Value) -> bool| ev.iter().any(|e| e["type"] == "TransientFailure" && f(e));
    assert!(
        transient(&|e| e["response"]["code"] == 421 && e["sender"] == "a@closing.test"),
        "the 421 decides its message: {ev:?}"
    );
    assert!(
        transient(&|e| e["recipient"] == "b@drop.test" && e["response"]["enhanced"] == "4.4.2"),
        "a drop mid-DATA is a transient failure: {ev:?}"
    );
    assert!(
        transient(&|e| e["sender"] == "a@garbage.test" && e["response"]["enhanced"] == "4.5.0"),
        "a malformed reply is a transient failure: {ev:?}"
    );
    let bounce = of(&ev, "Bounce", "multi.test")[0];
    assert_eq!(bounce["response"]["enhanced"], "5.7.1", "{bounce}");
    assert_eq!(
        bounce["response"]["text"], "first line second line",
        "a multi-line reply is kept whole: {bounce}"
    );
    // Nothing else was deferred: the three messages behind them went straight through.
    let deferred = ev
        .iter()
        .filter(|e| e["type"] == "TransientFailure")
        .count();
    assert_eq!(deferred, 3, "{ev:?}");
}

#[test]
fn each_timeout_applies_to_its_own_step() {
    let w = world(
        &[
            ("slowrcpt.test", "mx.sink.test"),
            ("slowdot.test", "mx.sink.test"),
        ],
        r#"
[[rule]]
recipient_domain = "slowrcpt.test"
stage = "rcpt"
code = 250
msg = "2.1.5 ok, slowly"
delay = "2s"

[[rule]]
recipient_domain = "slowdot.test"
code = 250
msg = "2.0.0 ok, slowly"
delay = "3s"
limit = 1
"#,
        "rcpt_to_timeout = \"10s\"\ndata_dot_timeout = \"1s\"\n",
        FAST_RETRY,
    );
    send_as(&w.d, 1, "a@tenant.test", "u@slowrcpt.test", "acme");
    send_as(&w.d, 1, "a@tenant.test", "v@slowdot.test", "acme");
    let ev = wait_long(&w.d, "both delivered", |ev| {
        has("Delivery", "slowrcpt.test", 1)(ev) && has("Delivery", "slowdot.test", 1)(ev)
    });
    // A 2 s RCPT reply is within rcpt_to_timeout, though longer than data_dot_timeout.
    assert!(
        of(&ev, "TransientFailure", "slowrcpt.test").is_empty(),
        "{ev:?}"
    );
    // A 3 s reply to the end mark is not within data_dot_timeout.
    let late = of(&ev, "TransientFailure", "slowdot.test");
    assert_eq!(late.len(), 1, "{ev:?}");
    assert!(
        late[0]["response"]["text"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{}",
        late[0]
    );
}

#[test]
fn prohibited_hosts_refuse_a_site_and_skip_hosts_leave_addresses_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // Two receivers on one port: 127.0.0.2 (the preferred MX) and 127.0.0.1.
    let preferred = ResponseSink::start_with(dir.path(), "", "127.0.0.2", port, &[]);
    let second = ResponseSink::start_with(dir.path(), "", "127.0.0.1", port, &[]);
    let dns = Dnsmasq::start(&[
        "--mx-host=prohibited.test,mx.prohibited.test,10".into(),
        "--host-record=mx.prohibited.test,127.0.0.1".into(),
        "--mx-host=skip.test,mx1.skip.test,10".into(),
        "--mx-host=skip.test,mx2.skip.test,20".into(),
        "--host-record=mx1.skip.test,127.0.0.2".into(),
        "--host-record=mx2.skip.test,127.0.0.1".into(),
        "--mx-host=plain.test,mx1.skip.test,10".into(),
        "--mx-host=none.test,mx.none.test,10".into(),
        "--host-record=mx.none.test,127.0.0.3".into(),
    ]);
    std::fs::write(
        dir.path().join("shaping.toml"),
        format!(
            r#"["default"]
smtp_port = {port}
enable_tls = "Disabled"
prohibited_hosts = []

["prohibited.test"]
mx_rollup = false
prohibited_hosts = ["127.0.0.0/8", "::1"]

["skip.test"]
mx_rollup = false
skip_hosts = ["127.0.0.2"]

["none.test"]
mx_rollup = false
skip_hosts = ["127.0.0.0/8"]
"#
        ),
    )
    .unwrap();
    let d = Daemon::start_in(
        dir,
        &format!(
            "[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\n[shaping]\nfiles = [\"shaping.toml\"]\n\n[queue]\nretry_interval = \"1h\"\n",
            dns.port
        ),
    );
    for rcpt in [
        "u@prohibited.test",
        "u@skip.test",
        "u@plain.test",
        "u@none.test",
    ] {
        send_as(&d, 1, "a@tenant.test", rcpt, "acme");
    }
    let ev = d.wait_events("every message settled", |ev| {
        has("Bounce", "prohibited.test", 1)(ev)
            && has("Delivery", "skip.test", 1)(ev)
            && has("Delivery", "plain.test", 1)(ev)
            && has("TransientFailure", "none.test", 1)(ev)
    });
    let refused = of(&ev, "Bounce", "prohibited.test")[0];
    assert_eq!(refused["response"]["code"], 550, "{refused}");
    assert_eq!(refused["response"]["enhanced"], "5.4.4", "{refused}");
    assert!(
        refused["response"]["text"]
            .as_str()
            .unwrap()
            .contains("mx.prohibited.test"),
        "the record names the host: {refused}"
    );
    let none = of(&ev, "TransientFailure", "none.test")[0];
    assert_eq!(
        (&none["response"]["code"], &none["response"]["enhanced"]),
        (&Value::from(451), &Value::from("4.4.4")),
        "{none}"
    );
    let rcpts = |sink: &ResponseSink| -> Vec<String> {
        sink.received()
            .iter()
            .flat_map(|t| t["rcpts"].as_array().cloned().unwrap_or_default())
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    // skip.test's preferred host was left out; plain.test (that host alone) was not.
    assert_eq!(rcpts(&second), ["u@skip.test"]);
    assert_eq!(rcpts(&preferred), ["u@plain.test"]);
}

#[test]
fn a_provider_matches_a_site_whose_mx_hosts_each_fit_one_of_its_rules() {
    // The provider requires TLS, which the sink does not offer: its mail is deferred with
    // 4.7.4, anybody else's delivered. workspace.test mixes two of the provider's host
    // names; vanity.test mixes the provider with somebody else.
    let mixed = world(
        &[
            ("workspace.test", "aspmx.l.google.test"),
            ("workspace.test", "aspmx2.googlemail.test"),
            ("vanity.test", "aspmx.l.google.test"),
            ("vanity.test", "mx.elsewhere.test"),
        ],
        "",
        r#"
[provider."google"]
match = [{MXSuffix = ".l.google.test"}, {MXSuffix = ".googlemail.test"}]
enable_tls = "Required"
"#,
        "[queue]\nretry_interval = \"1h\"\n",
    );
    send_as(&mixed.d, 1, "a@tenant.test", "u@workspace.test", "acme");
    send_as(&mixed.d, 1, "a@tenant.test", "u@vanity.test", "acme");
    let ev = mixed.d.wait_events("both settled", |ev| {
        has("TransientFailure", "workspace.test", 1)(ev) && has("Delivery", "vanity.test", 1)(ev)
    });
    let deferred = of(&ev, "TransientFailure", "workspace.test")[0];
    assert_eq!(deferred["response"]["enhanced"], "4.7.4", "{deferred}");
}

// ----------------------------------------------------------------------------------------
// TLS

fn tls_sink(dir: &Path, pair: &[std::path::PathBuf; 2]) -> ResponseSink {
    tls_sink_answering(dir, pair, "")
}

fn tls_sink_answering(dir: &Path, pair: &[std::path::PathBuf; 2], responses: &str) -> ResponseSink {
    tls_sink_on(dir, pair, responses, "127.0.0.1", common::free_port())
}

#[test]
fn tls_follows_kumomtas_semantics_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_ca(dir.path());
    let good = tls_sink(
        dir.path(),
        &pki.issue(dir.path(), "good", "mx.good.test", false),
    );
    let expired = tls_sink(
        dir.path(),
        &pki.issue(dir.path(), "expired", "mx.expired.test", true),
    );
    let wrong = tls_sink(
        dir.path(),
        &pki.issue(dir.path(), "wrong", "mx.other.test", false),
    );
    let own = self_signed(dir.path(), "self", "mx.self.test");
    let selfsigned = tls_sink(dir.path(), &own);
    let remembered = tls_sink(dir.path(), &own);
    let other_port = tls_sink(dir.path(), &own);
    // (domain, MX host, sink, shaping of the domain); each its own site.
    let cases: [(&str, &str, &ResponseSink, &str); 7] = [
        ("good.test", "mx.good.test", &good, ""),
        ("expired.test", "mx.expired.test", &expired, ""),
        ("wrong.test", "mx.wrong.test", &wrong, ""),
        ("self.test", "mx.self.test", &selfsigned, ""),
        (
            "insecure.test",
            "mx.insecure.test",
            &selfsigned,
            "enable_tls = \"OpportunisticInsecure\"\n",
        ),
        (
            "reconnect.test",
            "mx.reconnect.test",
            &selfsigned,
            "opportunistic_tls_reconnect_on_failed_handshake = true\n",
        ),
        (
            "remember.test",
            "mx.remember.test",
            &remembered,
            "remember_broken_tls = \"1h\"\n",
        ),
    ];
    let mut opts = Vec::new();
    let mut shaping =
        String::from("[\"default\"]\nenable_tls = \"Opportunistic\"\nprohibited_hosts = []\n\n");
    for (domain, mx, sink, extra) in &cases {
        opts.push(format!("--mx-host={domain},{mx},10"));
        opts.push(format!("--host-record={mx},127.0.0.1"));
        shaping.push_str(&format!(
            "[\"{domain}\"]\nmx_rollup = false\nsmtp_port = {}\n{extra}\n",
            sink.port
        ));
    }
    // The same host as remember.test on another port (through a route): what is remembered
    // is the host *and* port.
    shaping.push_str("[\"otherport.test\"]\nmx_rollup = false\nremember_broken_tls = \"1h\"\n");
    let dns = Dnsmasq::start(&opts);
    std::fs::write(dir.path().join("shaping.toml"), shaping).unwrap();
    let d = Daemon::start_in(
        dir,
        &format!(
            "[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\n[shaping]\nfiles = [\"shaping.toml\"]\n\n[tls]\ntrust_roots = [\"ca.pem\"]\n\n[routes]\n\"otherport.test\" = \"mx.remember.test:{}\"\n\n{FAST_RETRY}",
            dns.port, other_port.port
        ),
    );
    for (domain, ..) in &cases {
        send_as(&d, 1, "a@tenant.test", &format!("u@{domain}"), "acme");
    }
    // Only once mx.remember.test's TLS is known broken on its MX port:
    d.wait_events(
        "remember.test's failed TLS",
        has("TransientFailure", "remember.test", 1),
    );
    send_as(&d, 1, "a@tenant.test", "u@otherport.test", "acme");
    let ev = wait_long(&d, "every case settled", |ev| {
        [
            "good.test",
            "insecure.test",
            "reconnect.test",
            "remember.test",
            "otherport.test",
        ]
        .iter()
        .all(|dom| !of(ev, "Delivery", dom).is_empty())
            && ["expired.test", "wrong.test", "self.test"]
                .iter()
                .all(|dom| of(ev, "TransientFailure", dom).len() >= 2)
    });
    let delivery = |dom: &str| of(&ev, "Delivery", dom)[0].clone();
    let good = delivery("good.test");
    assert_eq!(good["tls"]["verified"], true, "{good}");
    assert!(
        good["tls"]["version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1"),
        "{good}"
    );
    assert!(
        !good["tls"]["cipher"].as_str().unwrap().is_empty(),
        "{good}"
    );
    assert_eq!(delivery("insecure.test")["tls"]["verified"], false);
    // Verified Opportunistic TLS that fails fails the attempt, again and again: never plain.
    for dom in ["expired.test", "wrong.test", "self.test"] {
        for e in of(&ev, "TransientFailure", dom) {
            assert_eq!(e["response"]["enhanced"], "4.7.5", "{e}");
        }
        assert!(of(&ev, "Delivery", dom).is_empty(), "{dom}");
    }
    // The plain-text reconnect happens only where it is configured...
    let reconnect = delivery("reconnect.test");
    assert!(reconnect.get("tls").is_none(), "{reconnect}");
    assert!(of(&ev, "TransientFailure", "reconnect.test").is_empty());
    // ...and remember_broken_tls sends the next attempt in plain text, for that host and
    // port only: the other port of the same host tried TLS first, and failed, itself.
    for dom in ["remember.test", "otherport.test"] {
        assert_eq!(of(&ev, "TransientFailure", dom).len(), 1, "{dom}: {ev:?}");
        assert_eq!(
            of(&ev, "TransientFailure", dom)[0]["response"]["enhanced"],
            "4.7.5"
        );
        assert!(delivery(dom).get("tls").is_none(), "{dom}");
    }
    let plain = |sink: &ResponseSink| sink.received().iter().filter(|t| t["tls"] == false).count();
    assert_eq!((plain(&remembered), plain(&other_port)), (1, 1));
}
