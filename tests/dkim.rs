//! DKIM signing at reception, judged by an independent verifier: Python's dkimpy (with
//! PyNaCl for Ed25519), given the public keys `switchyard dkim-keygen` printed. Messages go
//! through the daemon to an aiosmtpd sink that keeps each one exactly as received.

mod common;

use common::{python, run, Daemon, Sink, Tool, BIN};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `switchyard dkim-keygen`: writes the key, returns ("selector._domainkey.domain", TXT).
fn keygen(
    dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: &str,
    file: &str,
) -> (String, String) {
    let out = run(Command::new(BIN)
        .args([
            "dkim-keygen",
            "--domain",
            domain,
            "--selector",
            selector,
            "--algorithm",
            algorithm,
            "--out",
        ])
        .arg(dir.join(file)));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("IN TXT"))
        .expect(&stdout);
    assert!(
        line.starts_with(&format!(
            "{selector}._domainkey.{domain}. IN TXT \"v=DKIM1; k="
        )),
        "{line}"
    );
    let txt = line
        .split_once("IN TXT \"")
        .unwrap()
        .1
        .trim_end_matches('"')
        .to_string();
    (format!("{selector}._domainkey.{domain}"), txt)
}

/// dkimpy's verdict on each signature of each message file.
fn verify(keys: &BTreeMap<String, String>, dir: &Path, files: &[String]) -> Vec<Value> {
    Tool::Dkimpy.require();
    let keys_file = dir.join("keys.json");
    std::fs::write(&keys_file, serde_json::to_string(keys).unwrap()).unwrap();
    let mut args = vec![keys_file.display().to_string()];
    args.extend(files.iter().cloned());
    let (ok, out, err) = python("dkim_verify.py", &args);
    assert!(ok, "{out}{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Send `message` (CRLF line ends) from `sender`; panics unless it is accepted.
fn send(d: &Daemon, dir: &Path, name: &str, sender: &str, message: &str, utf8: bool) {
    let file = dir.join(format!("{name}.eml"));
    std::fs::write(&file, message.replace('\n', "\r\n")).unwrap();
    let mut args = vec![
        "127.0.0.1".to_string(),
        d.smtp.port().to_string(),
        sender.to_string(),
        "rcpt@example.org".to_string(),
        file.display().to_string(),
    ];
    if utf8 {
        args.push("--smtputf8".into());
    }
    let (ok, out, err) = python("send_raw.py", &args);
    assert!(ok, "{name}: {out}{err}");
}

/// (name, tenant, From, subject, body, SMTPUTF8, the domains that must sign)
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    String,
    String,
    bool,
    Vec<&'a str>,
);

fn message(tenant: &str, from: &str, id: &str, subject: &str, body: &str) -> String {
    format!(
        "X-Tenant: {tenant}\nFrom: {from}\nTo: Rcpt <rcpt@example.org>\nSubject: {subject}\nDate: Sun, 29 Nov 2026 10:00:00 +0000\nMessage-ID: <{id}@test>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}"
    )
}

#[test]
fn signatures_verify_with_dkimpy_for_every_kind_of_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(common::free_port(), dir.path(), "accept", None);
    let mut keys = BTreeMap::new();
    for (domain, selector, algorithm, file) in [
        ("acme.example", "s2026", "rsa2048", "acme.pem"),
        ("esp.example", "esp", "ed25519", "esp.pem"),
        ("beta.example", "b1", "rsa2048", "beta.pem"),
    ] {
        let (name, txt) = keygen(dir.path(), domain, selector, algorithm, file);
        keys.insert(name, txt);
    }
    let work = dir.path().to_path_buf();
    let d = Daemon::start_in(
        dir,
        &format!(
            r#"[routes]
"example.org" = "127.0.0.1:{}"

[[dkim]]
domain = "acme.example"
selector = "s2026"
key_file = "acme.pem"
over_sign = true
expiration = "7d"

[[dkim]]
domain = "esp.example"
selector = "esp"
key_file = "esp.pem"
sign = "all"

[[dkim]]
domain = "beta.example"
subdomains = true
selector = "b1"
key_file = "beta.pem"
tenant = "beta"
"#,
            sink.port
        ),
    );
    let long_subject = format!(
        "a long folded subject{}",
        "\n\tthat goes on and on".repeat(8)
    );
    // (name, tenant, From, subject, body, SMTPUTF8, the domains that must sign)
    let cases: Vec<Case> = vec![
        (
            "ascii",
            "acme",
            "News <news@acme.example>",
            "ascii".into(),
            "Hello.\n".into(),
            false,
            vec!["acme.example", "esp.example"],
        ),
        (
            "eightbit",
            "acme",
            "news@acme.example",
            "eightbit".into(),
            "Gr\u{fc}\u{df}e, 8-bit body \u{e9}\u{e8}\n".into(),
            false,
            vec!["acme.example", "esp.example"],
        ),
        (
            "smtputf8",
            "acme",
            "news@acme.example",
            "Gr\u{fc}\u{df}e aus M\u{fc}nchen".into(),
            "\u{65e5}\u{672c}\u{8a9e}\n".into(),
            true,
            vec!["acme.example", "esp.example"],
        ),
        (
            "folded",
            "acme",
            "news@acme.example",
            long_subject,
            "Folded headers.\n".into(),
            false,
            vec!["acme.example", "esp.example"],
        ),
        (
            "dots",
            "acme",
            "news@acme.example",
            "dots".into(),
            ".leading dot\n..two dots\n.\nend\n".into(),
            false,
            vec!["acme.example", "esp.example"],
        ),
        (
            "blank-end",
            "acme",
            "news@acme.example",
            "blankend".into(),
            "Text\n\n  \n\t\n\n".into(),
            false,
            vec!["acme.example", "esp.example"],
        ),
        (
            "space-end",
            "acme",
            "news@acme.example",
            "spaceend".into(),
            "Text  \n \t \n".into(),
            false,
            vec!["acme.example", "esp.example"],
        ),
        // The beta key is the beta tenant's: another tenant's beta.example mail gets none.
        (
            "other-tenant",
            "acme",
            "news@beta.example",
            "othertenant".into(),
            "Hi.\n".into(),
            false,
            vec!["esp.example"],
        ),
        (
            "beta-sub",
            "beta",
            "news@mail.beta.example",
            "betasub".into(),
            "Hi.\n".into(),
            false,
            vec!["beta.example", "esp.example"],
        ),
        (
            "no-from-match",
            "acme",
            "someone@elsewhere.example",
            "nofrom".into(),
            "Hi.\n".into(),
            false,
            vec!["esp.example"],
        ),
    ];
    for (name, tenant, from, subject, body, utf8, _) in &cases {
        let m = message(tenant, from, name, subject, body);
        send(&d, &work, name, "bounce@acme.example", &m, *utf8);
    }
    // Mail injected over HTTP is signed the same way.
    let (status, body) = d.request(
        "POST",
        "/api/v1/inject",
        Some(&serde_json::json!({
            "envelope_sender": "bounce@acme.example",
            "recipients": [{"email": "rcpt@example.org"}],
            "tenant": "acme",
            "content": "From: news@acme.example\r\nTo: rcpt@example.org\r\nSubject: http\r\nMessage-ID: <http@test>\r\n\r\nOver HTTP.\r\n",
        })
        .to_string()),
    );
    assert_eq!(status, 200, "{body}");
    let received = sink.wait_accepted(cases.len() + 1, Duration::from_secs(20));
    // Message-ID → the file holding the message as the sink received it.
    let by_id: BTreeMap<String, String> = received
        .iter()
        .map(|r| {
            let file = r["content_file"].as_str().unwrap().to_string();
            let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: "))
                .unwrap_or("")
                .trim_end()
                .to_string();
            (id, file)
        })
        .collect();
    let files: Vec<String> = by_id.values().cloned().collect();
    let verdicts = verify(&keys, &work, &files);
    let mut expected: Vec<(String, Vec<&str>)> = cases
        .iter()
        .map(|(name, _, _, _, _, _, domains)| (format!("<{name}@test>"), domains.clone()))
        .collect();
    expected.push(("<http@test>".into(), vec!["acme.example", "esp.example"]));
    for (message_id, domains) in expected {
        let file = by_id
            .get(&message_id)
            .unwrap_or_else(|| panic!("{message_id} not received: {by_id:?}"));
        let v = verdicts.iter().find(|v| v["file"] == *file).unwrap();
        let sigs = v["signatures"].as_array().unwrap();
        let signed: BTreeSet<&str> = sigs.iter().map(|s| s["d"].as_str().unwrap()).collect();
        assert_eq!(
            signed,
            domains.iter().copied().collect(),
            "{message_id}: {v}"
        );
        for s in sigs {
            assert_eq!(s["ok"], true, "{message_id}: dkimpy refuses {s}");
        }
    }
    // Reception records name the signing domains; the counters count signatures.
    let ev = d.wait_events("receptions", |ev| {
        ev.iter().filter(|e| e["type"] == "Reception").count() > cases.len()
    });
    assert!(ev.iter().any(|e| e["type"] == "Reception"
        && e["dkim"] == serde_json::json!(["acme.example", "esp.example"])));
    assert_eq!(
        d.metric("switchyard_dkim_signed_total", "domain=\"esp.example\""),
        Some((cases.len() + 1) as f64)
    );
}

#[test]
fn a_key_swapped_on_disk_is_in_force_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(common::free_port(), dir.path(), "accept", None);
    let (name, old) = keygen(dir.path(), "acme.example", "s1", "ed25519", "acme.pem");
    let work = dir.path().to_path_buf();
    let mut d = Daemon::start_in(
        dir,
        &format!(
            "[routes]\n\"example.org\" = \"127.0.0.1:{}\"\n\n[[dkim]]\ndomain = \"acme.example\"\nselector = \"s1\"\nkey_file = \"acme.pem\"\n",
            sink.port
        ),
    );
    let m = |id: &str| message("acme", "news@acme.example", id, id, "Hi.\n");
    send(
        &d,
        &work,
        "before",
        "bounce@acme.example",
        &m("before"),
        false,
    );
    // A new key replaces the file; the daemon reads it again on SIGHUP.
    let (_, new) = keygen(&work, "acme.example", "s1", "ed25519", "acme-new.pem");
    std::fs::rename(work.join("acme-new.pem"), work.join("acme.pem")).unwrap();
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    common::poll_until(
        "the reload",
        Duration::from_secs(10),
        || vec![Value::from(d.log())],
        |log| log[0].as_str().unwrap().contains("SIGHUP: reloaded"),
    );
    send(
        &d,
        &work,
        "after",
        "bounce@acme.example",
        &m("after"),
        false,
    );
    let received = sink.wait_accepted(2, Duration::from_secs(20));
    let file_of = |id: &str| {
        received
            .iter()
            .map(|r| r["content_file"].as_str().unwrap().to_string())
            .find(|f| {
                String::from_utf8_lossy(&std::fs::read(f).unwrap())
                    .contains(&format!("<{id}@test>"))
            })
            .unwrap()
    };
    let ok_with = |txt: &str, id: &str| {
        let keys = BTreeMap::from([(name.clone(), txt.to_string())]);
        verify(&keys, &work, &[file_of(id)])[0]["signatures"][0]["ok"] == true
    };
    assert!(ok_with(&old, "before") && !ok_with(&new, "before"));
    assert!(
        ok_with(&new, "after") && !ok_with(&old, "after"),
        "the new key signs after SIGHUP"
    );
    assert!(d.alive());
}

#[test]
fn an_unusable_key_is_a_config_error_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let short = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let pem =
        rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_pem(&short, rsa::pkcs8::LineEnding::LF).unwrap();
    std::fs::write(dir.path().join("short.pem"), pem.as_bytes()).unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "not a key\n").unwrap();
    for (file, why) in [
        ("missing.pem", "cannot read a PEM private key"),
        ("garbage.pem", "cannot read a PEM private key"),
        ("short.pem", "2048 to 4096 bits"),
    ] {
        let config = dir.path().join(format!("{file}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[dkim]]\ndomain = \"acme.example\"\nselector = \"s1\"\nkey_file = \"{file}\"\n"
            ),
        )
        .unwrap();
        let out = run(Command::new(BIN).args(["check", "--config"]).arg(&config));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&format!("{}:4:12: DKIM key ", config.display()))
                && first.contains(file)
                && first.contains(why),
            "{file}: {stderr}"
        );
    }
}

#[test]
fn hash_password_reads_standard_input_and_prints_an_argon2id_hash() {
    let hash = common::hash_password("s3cret pass");
    let hash = hash.as_str();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    use argon2::PasswordVerifier;
    let parsed = argon2::PasswordHash::new(hash).unwrap();
    assert!(argon2::Argon2::default()
        .verify_password(b"s3cret pass", &parsed)
        .is_ok());
    assert!(argon2::Argon2::default()
        .verify_password(b"other", &parsed)
        .is_err());
}
