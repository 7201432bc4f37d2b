//! Real SMTP clients against a real daemon: swaks (plain, PIPELINING, STARTTLS, AUTH) and
//! Python smtplib (send_message, several messages per session, several recipients), and
//! relay control by source address.

mod common;

use common::{python, swaks, Daemon, Raw};
use std::collections::HashSet;

fn receptions(d: &Daemon, n: usize) -> Vec<serde_json::Value> {
    d.wait_events(&format!("{n} Reception records"), |ev| {
        ev.iter().filter(|e| e["type"] == "Reception").count() >= n
    })
    .into_iter()
    .filter(|e| e["type"] == "Reception")
    .collect()
}

#[test]
fn swaks_plain_to_an_address_literal() {
    let d = Daemon::start("");
    let (ok, out) = swaks(
        d.smtp,
        &[
            "--to",
            "nobody@[127.0.0.1]",
            "--header",
            "X-Tenant: acme",
            "--header",
            "X-Campaign: spring",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    let r = receptions(&d, 1);
    assert_eq!(r[0]["tenant"], "acme");
    assert_eq!(r[0]["campaign"], "spring");
    assert_eq!(r[0]["recipient"], "nobody@[127.0.0.1]");
    assert_eq!(
        d.metric("switchyard_received_total", "tenant=\"acme\""),
        Some(1.0)
    );
    // Accepted, then refused by prohibited_hosts: a literal may not aim us at loopback.
    let ev = d.wait_events("a Bounce", |ev| ev.iter().any(|e| e["type"] == "Bounce"));
    let bounce = ev.iter().find(|e| e["type"] == "Bounce").unwrap();
    assert_eq!(bounce["response"]["enhanced"], "5.4.4", "{bounce}");
    assert!(
        bounce["response"]["text"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{bounce}"
    );
}

#[test]
fn swaks_pipelining() {
    let d = Daemon::start("");
    let (ok, out) = swaks(
        d.smtp,
        &[
            "--pipeline",
            "--to",
            "a@example.org,b@example.org",
            "--from",
            "s@example.com",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("PIPELINING"), "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    let r = receptions(&d, 1);
    assert_eq!(
        r[0]["recipients"],
        serde_json::json!(["a@example.org", "b@example.org"])
    );
    assert_eq!(r[0]["tenant"], "default");
}

fn tls_config(dir: &std::path::Path, user_tenant: &str) -> String {
    let cert =
        rcgen::generate_simple_self_signed(vec!["mta.test".to_string(), "localhost".to_string()])
            .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::from_b64("dGVzdHNhbHR0ZXN0c2FsdA").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"s3cret", &salt)
        .unwrap()
        .to_string();
    format!(
        "[smtp]\ntls_certificate = \"cert.pem\"\ntls_private_key = \"key.pem\"\n\n[[smtp.user]]\nname = \"acme-user\"\npassword_hash = \"{hash}\"\ntenant = \"{user_tenant}\"\n"
    )
}

#[test]
fn swaks_starttls_then_auth_plain_and_the_auth_tenant_wins() {
    let dir = tempfile::tempdir().unwrap();
    let extra = tls_config(dir.path(), "acme");
    let d = Daemon::start_in(dir, &extra);

    // Before STARTTLS: STARTTLS offered, AUTH not, and AUTH is refused.
    let mut raw = Raw::connect(d.smtp);
    let ehlo = raw.cmd("EHLO client.test");
    assert!(ehlo.contains("STARTTLS\r\n"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(raw
        .cmd("AUTH PLAIN AGFjbWUtdXNlcgBzM2NyZXQ=")
        .starts_with("538 5.7.11"));

    let (ok, out) = swaks(
        d.smtp,
        &[
            "-tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "acme-user",
            "--auth-password",
            "s3cret",
            "--to",
            "someone@example.org",
            "--header",
            "X-Tenant: somebody-else",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("TLS started"), "{out}");
    assert!(out.contains("~> AUTH PLAIN"), "{out}");
    assert!(out.contains("<~  235 2.7.0"), "{out}");
    assert!(out.contains("<~  250 2.0.0 Ok: queued as"), "{out}");
    let r = receptions(&d, 1);
    assert_eq!(
        r[0]["tenant"], "acme",
        "the AUTH user's tenant wins over the header"
    );

    let (ok, out) = swaks(
        d.smtp,
        &[
            "-tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "acme-user",
            "--auth-password",
            "wrong",
            "--to",
            "x@example.org",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("535 5.7.8"), "{out}");
}

#[test]
fn smtplib_several_messages_several_recipients_one_session() {
    let d = Daemon::start("");
    let (ok, stdout, stderr) = python(
        "smtp_client.py",
        &[
            "send".into(),
            "127.0.0.1".into(),
            d.smtp.port().to_string(),
            "--count".into(),
            "3".into(),
            "--rcpt".into(),
            "a@one.example".into(),
            "--rcpt".into(),
            "b@two.example".into(),
            "--rcpt".into(),
            "c@two.example".into(),
            "--tenant".into(),
            "py".into(),
            "--campaign".into(),
            "launch".into(),
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    let sent: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter().all(|s| s["refused"] == serde_json::json!({})),
        "{stdout}"
    );
    let r = receptions(&d, 3);
    assert_eq!(r.len(), 3);
    assert!(r
        .iter()
        .all(|e| e["tenant"] == "py" && e["campaign"] == "launch"));
    assert_eq!(
        d.metric("switchyard_received_total", "tenant=\"py\""),
        Some(3.0)
    );

    // The spool holds each message once with one entry per recipient, queued per domain,
    // and the tenancy headers are gone from the stored content.
    let mut d = d;
    d.kill();
    let spool = switchyard::spool::Spool::open(&d.dir.path().join("data/spool"), 0).unwrap();
    assert_eq!(spool.message_count(), 3);
    let entries: Vec<_> = spool.queue_entries().map(Result::unwrap).collect();
    assert_eq!(entries.len(), 9);
    let queues: HashSet<_> = entries.iter().map(|(_, _, e)| e.queue.clone()).collect();
    assert_eq!(
        queues,
        HashSet::from([
            "launch:py@one.example".to_string(),
            "launch:py@two.example".to_string()
        ])
    );
    for (id, _, _) in &entries {
        let (env, body) = spool.read_message(*id).unwrap().unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(env.tenant, "py");
        assert!(text.starts_with("Received: from client.test"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("x-tenant:"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("x-campaign:"), "{text}");
        let ids: HashSet<_> = sent
            .iter()
            .map(|s| s["message_id"].as_str().unwrap().to_string())
            .collect();
        assert!(ids.iter().any(|m| text.contains(m.as_str())), "{text}");
    }
}

#[test]
fn relay_is_refused_from_an_address_outside_relay_hosts() {
    let d = Daemon::start("[smtp]\nrelay_hosts = [\"127.0.0.1/32\"]\n");
    let (ok, out) = swaks(
        d.smtp,
        &["--local-interface", "127.0.0.9", "--to", "x@example.org"],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("550 5.7.1 Relaying denied"), "{out}");
    let (ok, out) = swaks(
        d.smtp,
        &["--local-interface", "127.0.0.1", "--to", "x@example.org"],
    );
    assert!(ok, "{out}");
    let ev = d.wait_events("a Rejection", |ev| {
        ev.iter().any(|e| e["type"] == "Rejection")
    });
    let rej = ev.iter().find(|e| e["type"] == "Rejection").unwrap();
    assert_eq!(rej["response"]["code"], 550);
    assert!(rej["client"].as_str().unwrap().starts_with("127.0.0.9:"));
    assert_eq!(d.metric("switchyard_spool_messages", ""), Some(1.0));
}
