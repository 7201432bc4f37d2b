//! Who may use switchyard: an admin API exposed without a token is refused at load, AUTH
//! guessing locks out the guessing address (not the user), and one address gets a bounded
//! number of sessions.

mod common;

use common::{python, run, Daemon, Raw, BIN};
use std::process::Command;

#[test]
fn an_admin_api_listening_beyond_loopback_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("open.toml");
    std::fs::write(&config, "[http]\nlisten = \"0.0.0.0:28025\"\n").unwrap();
    for verb in ["check", "serve"] {
        let out = run(Command::new(BIN).args([verb, "--config"]).arg(&config));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{verb}: {stderr}");
        assert!(
            stderr.contains("[http] token is not set"),
            "{verb}: {stderr}"
        );
    }
    // With a token it loads.
    std::fs::write(
        &config,
        "[http]\nlisten = \"0.0.0.0:28025\"\ntoken = \"s3cret\"\n",
    )
    .unwrap();
    let out = run(Command::new(BIN).args(["check", "--config"]).arg(&config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn guessing_locks_out_the_guessing_address_while_the_real_user_logs_in() {
    let d = Daemon::start(&format!(
        "[smtp]\nallow_plaintext_auth = true\n\n[[smtp.user]]\nname = \"alice\"\npassword_hash = \"{}\"\ntenant = \"acme\"\n",
        common::hash_password("correct horse")
    ));
    let (ok, out, err) = python(
        "auth_guess.py",
        &[
            "127.0.0.1".into(),
            d.smtp.port().to_string(),
            "alice".into(),
            "correct horse".into(),
            "300".into(),
            "127.0.0.2".into(),
            "127.0.0.3".into(),
        ],
    );
    assert!(ok, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!("guessing: {r}");
    let checked = r["checked"].as_u64().unwrap();
    assert!(checked <= 50, "{r}");
    assert!(checked >= 5, "the first guesses are checked: {r}");
    assert!(r["refused"].as_u64().unwrap() > 0, "{r}");
    assert!(r["user_seconds"].as_f64().unwrap() < 2.0, "{r}");
    assert_eq!(d.metric("switchyard_auth_lockouts_total", ""), Some(1.0));
    let ev = d.wait_events("the real user's message", |ev| {
        ev.iter()
            .any(|e| e["type"] == "Reception" && e["tenant"] == "acme")
    });
    assert!(ev
        .iter()
        .any(|e| e["type"] == "Rejection" && e["response"]["code"] == 454));
}

#[test]
fn one_address_gets_a_bounded_number_of_sessions_unless_it_may_relay() {
    let d = Daemon::start("[smtp]\nrelay_hosts = [\"127.0.0.1/32\"]\nmax_connections_per_ip = 2\n");
    let from = |ip: &str| {
        let socket = socket2_connect(ip, d.smtp);
        Raw::from_stream(socket)
    };
    // One at a time: the server takes connections in any order.
    let mut a = from("127.0.0.2");
    assert!(a.line().starts_with("220"));
    let mut b = from("127.0.0.2");
    assert!(b.line().starts_with("220"));
    let mut c = from("127.0.0.2");
    assert!(
        c.line().starts_with("421 4.7.0"),
        "the third session from one address"
    );
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        from("127.0.0.2").line().starts_with("220"),
        "a freed place is free again"
    );
    // The relay host (the ESP's own injectors) is not limited.
    let mut own: Vec<Raw> = (0..5).map(|_| from("127.0.0.1")).collect();
    for r in &mut own {
        assert!(r.line().starts_with("220"));
    }
}

#[test]
fn new_connections_from_one_address_are_paced_unless_it_may_relay() {
    let d = Daemon::start(
        "[smtp]\nrelay_hosts = [\"127.0.0.1/32\"]\nmax_connection_rate_per_ip = \"3/min\"\n",
    );
    let from = |ip: &str| Raw::from_stream(socket2_connect(ip, d.smtp));
    // The burst (3), each closed at once: the rate counts connections, not sessions open.
    for _ in 0..3 {
        let mut r = from("127.0.0.3");
        assert!(r.line().starts_with("220"));
        r.send(b"QUIT\r\n");
    }
    assert!(
        from("127.0.0.3").line().starts_with("421 4.7.0"),
        "the fourth new connection within the minute"
    );
    assert!(
        from("127.0.0.4").line().starts_with("220"),
        "another address"
    );
    for _ in 0..10 {
        assert!(from("127.0.0.1").line().starts_with("220"), "a relay host");
    }
}

#[test]
fn the_open_files_limit_is_raised_to_its_maximum_at_start() {
    let d = Daemon::start("");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft = hard: {line}");
    assert!(d.log().contains("open-files limit"), "{}", d.log());
}

/// A TCP connection to `to` from the local address `ip`.
fn socket2_connect(ip: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let local: std::net::SocketAddr = format!("{ip}:0").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(local).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(socket.connect(to)).unwrap();
    stream.into_std().unwrap()
}
