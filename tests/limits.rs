//! The daemon's own limits under load from the network: `max_connections` (then
//! `421 4.7.0`), thousands of idle connections held in little memory while others are
//! served, slowloris inside DATA, and NOOP-style junk commands that cannot idle forever.

mod common;

use common::{swaks, Daemon, Raw};
use std::time::{Duration, Instant};

#[test]
fn max_connections_gets_421_4_7_0_and_a_freed_place_is_free_again() {
    // relay_hosts: the per-address limits do not apply, only max_connections.
    let d = Daemon::start("[smtp]\nrelay_hosts = [\"127.0.0.1/32\"]\nmax_connections = 3\n");
    let mut held: Vec<Raw> = (0..3).map(|_| Raw::connect(d.smtp)).collect();
    let mut fourth = Raw::from_stream(std::net::TcpStream::connect(d.smtp).unwrap());
    let reply = fourth.reply();
    assert!(reply.starts_with("421 4.7.0"), "{reply:?}");
    assert_eq!(fourth.reply(), "", "closed after the 421");
    assert!(held[0].cmd("QUIT").starts_with("221"));
    held.remove(0);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Raw::connect(d.smtp);
    assert!(again.cmd("EHLO client.test").starts_with("250"));
}

#[test]
fn five_thousand_idle_connections_are_held_in_little_memory_while_another_client_is_served() {
    const IDLE: usize = 5_000;
    // The client side of 5,000 connections needs more than the usual 1,024 files too.
    let limit = switchyard::server::raise_open_files().unwrap_or(0);
    if limit < (IDLE + 200) as u64 {
        eprintln!("SKIP: this process may open only {limit} files, {IDLE} connections need more");
        return;
    }
    let d = Daemon::start(
        "[smtp]\nrelay_hosts = [\"127.0.0.1/32\"]\nmax_connections = 6000\nidle_timeout = \"5min\"\n",
    );
    let idle_rss = d.rss_kib();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut r = Raw::from_stream(std::net::TcpStream::connect(d.smtp).unwrap());
        let banner = r.line();
        assert!(
            banner.starts_with("220 "),
            "{banner:?} after {} connections",
            idle.len()
        );
        idle.push(r);
    }
    assert_eq!(d.metric("switchyard_smtp_sessions", ""), Some(IDLE as f64));
    let rss = d.rss_kib();

    let started = Instant::now();
    let (ok, out) = swaks(d.smtp, &["--to", "someone@example.org"]);
    let served = started.elapsed();
    assert!(ok, "{out}");
    let mut probe = Raw::connect(d.smtp);
    let probe_started = Instant::now();
    assert!(probe.cmd("EHLO probe.test").starts_with("250"));
    assert!(probe.cmd("QUIT").starts_with("221"));
    let answered = probe_started.elapsed();
    eprintln!(
        "{IDLE} idle sessions: RSS {idle_rss} -> {rss} KiB; swaks served in {served:?}, EHLO+QUIT in {answered:?}"
    );
    assert!(rss <= 200 * 1024, "RSS {rss} KiB with {IDLE} idle sessions");
    assert!(
        answered < Duration::from_secs(1),
        "EHLO+QUIT took {answered:?}"
    );
    assert!(
        served < Duration::from_secs(5),
        "a whole swaks run took {served:?}"
    );
    drop(idle);
}

#[test]
fn a_client_trickling_its_message_a_byte_at_a_time_gets_421_and_nothing_is_kept() {
    // Slowloris in DATA: each byte well within idle_timeout (2 s), the line never within it.
    let d = Daemon::start("[smtp]\nrelay_hosts = [\"127.0.0.1/32\"]\nidle_timeout = \"2s\"\n");
    let mut raw = Raw::connect(d.smtp);
    assert!(raw.cmd("EHLO slow.test").starts_with("250"));
    assert!(raw.cmd("MAIL FROM:<a@slow.test>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<b@example.org>").starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(b"Subject: slow\r\n\r\n");
    let mut writer = raw.stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..20 {
            if std::io::Write::write_all(&mut writer, b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(400));
        }
    });
    let started = Instant::now();
    let reply = raw.reply();
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "dropped only after {:?}: the timeout is per read, not per line",
        started.elapsed()
    );
    trickle.join().unwrap();
    let (ok, out) = swaks(d.smtp, &["--to", "ok@example.org"]);
    assert!(ok, "{out}");
    let events = d.wait_events("the other message", |ev| {
        ev.iter().any(|e| e["type"] == "Reception")
    });
    let received = events.iter().filter(|e| e["type"] == "Reception").count();
    assert_eq!(received, 1, "only swaks's message is kept");
}

#[test]
fn junk_commands_without_a_message_end_in_421() {
    let d = Daemon::start("[smtp]\nrelay_hosts = [\"127.0.0.1/32\"]\n");
    let mut raw = Raw::connect(d.smtp);
    raw.send(&b"NOOP\r\n".repeat(200));
    let mut ok = 0;
    let last = loop {
        let r = raw.reply();
        if !r.starts_with("250") {
            break r;
        }
        ok += 1;
    };
    assert!(last.starts_with("421 4.7.0"), "{last:?}");
    // 100 free, then 20 more that count as errors (MAX_ERRORS).
    assert_eq!(ok, 120);
}
