//! Hostile and broken clients: each gets its reply or a timeout, the daemon keeps serving
//! everyone else, and memory stays bounded.

mod common;

use common::{swaks, Daemon, Raw};
use std::net::Shutdown;
use std::time::{Duration, Instant};

const CONFIG: &str =
    "[smtp]\nmax_message_size = \"1MiB\"\nmax_recipients = 1000\nidle_timeout = \"2s\"\n";

fn still_serving(d: &Daemon) {
    let (ok, out) = swaks(d.smtp, &["--to", "ok@example.org"]);
    assert!(ok, "daemon stopped serving: {out}");
}

#[test]
fn binary_garbage_gets_errors_then_a_421() {
    let d = Daemon::start(CONFIG);
    let mut raw = Raw::connect(d.smtp);
    // Deterministic noise: 19 short lines and one over-long line, 20 errors in all, so the
    // 421 comes right after the last of it has been read.
    let mut x: u32 = 2463534242;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                match x as u8 {
                    b'\n' | b'\r' => 0xff,
                    b => b,
                }
            })
            .chain(*b"\r\n")
            .collect()
    };
    let mut garbage = Vec::new();
    for _ in 0..19 {
        garbage.extend(noise(100));
    }
    garbage.extend(noise(5000));
    raw.send(&garbage);
    let mut replies = Vec::new();
    loop {
        let r = raw.reply();
        if r.is_empty() {
            break;
        }
        replies.push(r);
    }
    assert!(replies.len() >= 2, "{replies:?}");
    assert!(
        replies[..replies.len() - 1]
            .iter()
            .all(|r| r.starts_with('5')),
        "{replies:?}"
    );
    assert!(
        replies.last().unwrap().starts_with("421 4.7.0"),
        "{replies:?}"
    );
    still_serving(&d);
}

#[test]
fn a_ten_megabyte_line_is_refused_without_being_buffered() {
    let d = Daemon::start(CONFIG);
    let before = d.rss_kib();
    let mut raw = Raw::connect(d.smtp);
    raw.send(b"EHLO ");
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..10 {
        raw.send(&chunk);
    }
    assert!(raw.cmd("").starts_with("500 5.5.2"), "line too long");
    assert!(raw.cmd("NOOP").starts_with("250"), "session goes on");
    let after = d.rss_kib();
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    still_serving(&d);
}

#[test]
fn data_over_the_size_limit_gets_552_and_is_not_kept() {
    let d = Daemon::start(CONFIG);
    let before = d.rss_kib();
    let mut raw = Raw::connect(d.smtp);
    assert!(raw.cmd("EHLO client.test").contains("SIZE 1048576"));
    assert!(raw
        .cmd("MAIL FROM:<a@example.com> SIZE=2000000")
        .starts_with("552 5.3.4"));
    assert!(raw.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<b@example.org>").starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    let line = [vec![b'x'; 998], b"\r\n".to_vec()].concat();
    for _ in 0..8000 {
        raw.send(&line); // 8 MB, eight times the limit
    }
    assert!(raw.cmd(".").starts_with("552 5.3.4"));
    let after = d.rss_kib();
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // The session is still usable, and a message within the limit goes through.
    assert!(raw.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<b@example.org>").starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    assert!(raw
        .cmd("Subject: small\r\n\r\nfits\r\n.")
        .starts_with("250 2.0.0"));
    assert_eq!(d.metric("switchyard_spool_messages", ""), Some(1.0));
}

#[test]
fn a_thousand_pipelined_commands_get_a_thousand_replies() {
    let d = Daemon::start(CONFIG);
    let mut raw = Raw::connect(d.smtp);
    let mut batch = String::from("EHLO client.test\r\nMAIL FROM:<a@example.com>\r\n");
    for i in 0..997 {
        batch.push_str(&format!("RCPT TO:<r{i}@example.org>\r\n"));
    }
    batch.push_str("RSET\r\n");
    raw.send(batch.as_bytes());
    let replies: Vec<String> = (0..1000).map(|_| raw.reply()).collect();
    assert!(replies[0].starts_with("250-"), "{}", replies[0]);
    assert!(replies[1].starts_with("250 2.1.0"));
    assert!(replies[2..999].iter().all(|r| r.starts_with("250 2.1.5")));
    assert!(replies[999].starts_with("250 2.0.0"));
    assert!(raw.cmd("QUIT").starts_with("221"));
}

#[test]
fn limits_and_bad_sequences_get_their_codes() {
    let d = Daemon::start("[smtp]\nmax_recipients = 2\n");
    let mut raw = Raw::connect(d.smtp);
    assert!(
        raw.cmd("MAIL FROM:<a@example.com>")
            .starts_with("503 5.5.1"),
        "MAIL before EHLO"
    );
    assert!(raw.cmd("FROB").starts_with("500 5.5.1"), "unknown command");
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    assert!(
        raw.cmd("RCPT TO:<b@example.org>").starts_with("503 5.5.1"),
        "RCPT before MAIL"
    );
    assert!(raw.cmd("DATA").starts_with("503 5.5.1"), "DATA before MAIL");
    assert!(raw.cmd("VRFY someone").starts_with("252"));
    assert!(raw.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(
        raw.cmd("MAIL FROM:<a@example.com>")
            .starts_with("503 5.5.1"),
        "nested MAIL"
    );
    assert!(raw.cmd("DATA").starts_with("503 5.5.1"), "DATA before RCPT");
    assert!(raw.cmd("RCPT TO:<b@example.org>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<c@example.org>").starts_with("250"));
    assert!(
        raw.cmd("RCPT TO:<d@example.org>").starts_with("452 4.5.3"),
        "max_recipients"
    );
    assert!(
        raw.cmd("STARTTLS").starts_with("502"),
        "no certificate configured"
    );
    let long = format!("NOOP {}", "x".repeat(600));
    assert!(
        raw.cmd(&long).starts_with("500 5.5.2"),
        "command line over 512 octets"
    );
    assert!(raw.cmd("DATA").starts_with("354"));
    let long_text = format!("Subject: x\r\n\r\n{}\r\n.", "y".repeat(1200));
    assert!(
        raw.cmd(&long_text).starts_with("500 5.5.2"),
        "text line over 1000 octets"
    );
    assert!(raw.cmd("QUIT").starts_with("221"));
}

#[test]
fn a_silent_client_gets_421_and_others_are_served_meanwhile() {
    let d = Daemon::start(CONFIG);
    let mut silent = Raw::connect(d.smtp);
    let started = Instant::now();
    still_serving(&d);
    let reply = silent.reply();
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before idle_timeout"
    );
    assert_eq!(silent.reply(), "", "connection closed after the 421");
}

#[test]
fn a_half_closed_socket_gets_its_replies_and_no_message_is_kept() {
    let d = Daemon::start(CONFIG);
    let mut raw = Raw::connect(d.smtp);
    raw.send(b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: cut\r\n\r\nhalf a mess");
    raw.stream.shutdown(Shutdown::Write).unwrap();
    assert!(raw.reply().starts_with("250-"));
    assert!(raw.reply().starts_with("250 2.1.0"));
    assert!(raw.reply().starts_with("250 2.1.5"));
    assert!(raw.reply().starts_with("354"));
    assert_eq!(raw.reply(), "", "closed without a 250");
    assert_eq!(d.metric("switchyard_spool_messages", ""), Some(0.0));
    still_serving(&d);
}

#[test]
fn a_bare_lf_dot_lf_does_not_end_the_message() {
    let d = Daemon::start(CONFIG);
    let mut raw = Raw::connect(d.smtp);
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    assert!(raw.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<b@example.org>").starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    // The smuggling attempt: a forged second transaction after <LF>.<LF>.
    raw.send(b"Subject: first\r\n\r\nbody\n.\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: forged\r\n\r\nsend money\r\n.\r\n");
    let reply = raw.reply();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert!(raw.cmd("QUIT").starts_with("221"));
    let ev = d.wait_events("one Reception", |ev| {
        ev.iter().any(|e| e["type"] == "Reception")
    });
    std::thread::sleep(Duration::from_millis(300));
    let receptions: Vec<_> = d
        .events()
        .into_iter()
        .filter(|e| e["type"] == "Reception")
        .collect();
    assert_eq!(receptions.len(), 1, "{ev:?}");
    assert_eq!(
        receptions[0]["recipients"],
        serde_json::json!(["b@example.org"])
    );
    assert_eq!(d.metric("switchyard_spool_messages", ""), Some(1.0));
}

/// What the spool must hold for a DATA body sent as `sent` (without the end mark), as the
/// README states it: every line break is CRLF (a bare LF becomes CRLF, a bare CR stays a CR),
/// and a "." that starts a CRLF line is removed (dot-unstuffing, RFC 5321 §4.5.2) — the only
/// end is <CRLF>.<CRLF>.
fn stored_form(sent: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line_start = true;
    let mut i = 0;
    while i < sent.len() {
        let b = sent[i];
        if line_start && b == b'.' {
            line_start = false;
            i += 1;
            continue;
        }
        match b {
            b'\n' => {
                let after_cr = out.last() == Some(&b'\r') && i > 0 && sent[i - 1] == b'\r';
                if !after_cr {
                    out.push(b'\r');
                }
                out.push(b'\n');
                line_start = after_cr;
            }
            _ => {
                out.push(b);
                line_start = false;
            }
        }
        i += 1;
    }
    out
}

#[test]
fn a_smuggling_matrix_never_ends_data_early_and_is_stored_as_sent() {
    let mut d = Daemon::start(&format!(
        "{CONFIG}\n[routes]\n\"example.org\" = \"127.0.0.1:9\"\n"
    ));
    let cases: &[(&str, &[u8])] = &[
        (
            "lf-dot-lf",
            b"before\n.\nMAIL FROM:<ceo@bank.example>\r\nafter",
        ),
        (
            "cr-dot-cr",
            b"before\r.\rMAIL FROM:<ceo@bank.example>\r\nafter",
        ),
        (
            "lf-dot-crlf",
            b"before\n.\r\nMAIL FROM:<ceo@bank.example>\r\nafter",
        ),
        (
            "crlf-dot-lf",
            b"before\r\n.\nMAIL FROM:<ceo@bank.example>\r\nafter",
        ),
        ("nul-in-header", b"X-Nul: a\0b\r\n\r\nbody"),
        (
            "8bit-in-header",
            "X-Name: Zoë Ørsted ünïcødé\r\n\r\nbody".as_bytes(),
        ),
    ];
    let mut raw = Raw::connect(d.smtp);
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    let mut ids = Vec::new();
    for (name, body) in cases {
        assert!(raw.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
        assert!(raw
            .cmd(&format!("RCPT TO:<{name}@example.org>"))
            .starts_with("250"));
        assert!(raw.cmd("DATA").starts_with("354"));
        let mut message =
            format!("Message-ID: <{name}@matrix.test>\r\nSubject: {name}\r\n").into_bytes();
        message.extend_from_slice(body);
        message.extend_from_slice(b"\r\n.\r\n");
        raw.send(&message);
        let reply = raw.reply();
        assert!(reply.starts_with("250 2.0.0"), "{name}: {reply}");
        ids.push((
            name,
            reply.rsplit(' ').next().unwrap().trim().to_string(),
            message,
        ));
    }
    assert!(
        raw.cmd("QUIT").starts_with("221"),
        "no forged command was read as one"
    );
    let receptions = d.wait_events("six receptions", |ev| {
        ev.iter().filter(|e| e["type"] == "Reception").count() >= cases.len()
    });
    assert_eq!(
        receptions
            .iter()
            .filter(|e| e["type"] == "Reception")
            .count(),
        cases.len(),
        "one message per DATA, nothing smuggled"
    );
    d.kill();
    let spool = switchyard::spool::Spool::open(&d.dir.path().join("data/spool"), 0).unwrap();
    let stored: std::collections::HashMap<String, Vec<u8>> = spool
        .queue_entries()
        .map(|e| {
            let (id, _, _) = e.unwrap();
            let (_, body) = spool.read_message(id).unwrap().unwrap();
            let text = String::from_utf8_lossy(&body).into_owned();
            let mid = text
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: "))
                .unwrap()
                .trim()
                .to_string();
            (mid, body)
        })
        .collect();
    for (name, _, message) in &ids {
        // Without the end mark's ".\r\n"; its leading CRLF ends the last line.
        let sent = &message[..message.len() - 3];
        let want = stored_form(sent);
        // The spool keeps the message in wire form (dot-stuffed) after the Received header
        // switchyard adds: what the next hop reads is that, dot-unstuffed.
        let kept = &stored[&format!("<{name}@matrix.test>")];
        let from = kept.windows(11).position(|w| w == b"Message-ID:").unwrap();
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, b)| *b != b'\n' || (i > 0 && kept[i - 1] == b'\r')),
            "{name}: a bare LF was kept"
        );
        let got = &stored_form(&kept[from..]);
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(&want),
            "{name}: stored differs from what was sent"
        );
        assert_eq!(got, &want, "{name}: bytes");
        // And nothing the client sent as text ended the message: its last line is there.
        assert!(
            got.ends_with(b"after\r\n") || got.ends_with(b"body\r\n"),
            "{name}"
        );
    }
}

#[test]
fn a_client_trickling_a_command_a_byte_at_a_time_gets_421_like_a_silent_one() {
    // Slowloris: each byte comes well within idle_timeout (2 s), the line never within it.
    let d = Daemon::start(CONFIG);
    let mut raw = Raw::connect(d.smtp);
    let mut writer = raw.stream.try_clone().unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let line = b"EHLO slow.client.test\r\n";
    let trickle = std::thread::spawn(move || {
        for b in line {
            if std::io::Write::write_all(&mut writer, &[*b]).is_err() {
                return;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(400));
        }
    });
    let reply = raw.reply();
    let when = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(
        when < line.len(),
        "answered only after the whole line ({when} of {} bytes)",
        line.len()
    );
    trickle.join().unwrap();
    still_serving(&d);
}
