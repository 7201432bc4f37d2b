//! A full disk, and space that comes back.
//!
//! The spool on a 256 MiB tmpfs and on a 48 MiB one (mounted here; the tests run as root, as
//! CI does; fjall seals its journal only past 64 MB, which the small one never holds, so there
//! the spool rotates to a new generation): clients get `452 4.3.1` near the limit, nothing
//! accepted is lost, the event log keeps every record, acceptance resumes by itself within
//! 5 s of the drain, and the space of the delivered messages is given back.
//!
//! The event log on a tiny tmpfs of its own: failed writes are retried, no record is
//! dropped, and recipients leave the spool only once their final records are written.

mod common;

use common::{python, Daemon, ResponseSink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and must run as root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill(d: &Daemon, most: usize, prefix: &str) -> serde_json::Value {
    let (ok, out, err) = python(
        "fill.py",
        &[
            "127.0.0.1".into(),
            d.smtp.port().to_string(),
            most.to_string(),
            "20480".into(),
            prefix.into(),
        ],
    );
    assert!(ok, "{out}{err}");
    serde_json::from_str(out.trim()).unwrap()
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du").args(["-sk"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|k| k.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_full_disk_refuses_new_mail_and_space_comes_back_after_delivery() {
    full_disk("256m", "16MiB", 2000, false);
}

/// A volume smaller than fjall's 64 MB journal, which fjall would never seal there: after the
/// drain the spool rotates to a new generation and gives the journal's space back, and then
/// more mail than the whole volume holds flows through it without a refusal.
#[test]
fn a_small_full_disk_recovers_and_then_carries_more_mail_than_it_holds() {
    full_disk("48m", "8MiB", 500, true);
}

/// Fill a spool on a tmpfs of `size` while the receiver is down, bring the receiver back,
/// and check that acceptance resumes by itself within 5 s of the drain, nothing is lost,
/// and the space comes back. `flow`: then send more than the volume holds through it.
fn full_disk(size: &str, min_free_space: &str, at_least: usize, flow: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, size);
    // The receiver is down at first: mail piles up in the spool.
    let receiver = common::free_port();
    let d = Daemon::start_in(
        dir,
        &format!(
            "[spool]\nmin_free_space = \"{min_free_space}\"\n\n[queue]\nretry_interval = \"1s\"\nmax_retry_interval = \"1s\"\n\n[logs]\ncompress = false\n\n[routes]\n\"example.org\" = \"127.0.0.1:{receiver}\"\n"
        ),
    );
    let first = fill(&d, 20000, "a");
    let mut accepted: Vec<String> = first["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(first["refusal"][0], 452, "{}", first["refusal"]);
    assert!(
        first["refusal"][1].as_str().unwrap().starts_with("4.3.1"),
        "{}",
        first["refusal"]
    );
    assert!(
        accepted.len() > at_least,
        "{} accepted before the disk filled",
        accepted.len()
    );
    let full_kib = du(&data.join("spool"));
    // The receiver comes back; everything accepted is delivered.
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = ResponseSink::start_with(sink_dir.path(), "", "127.0.0.1", receiver, &[]);
    let delivered_all = |accepted: &[String]| {
        let got = sink.wait("every accepted message", Duration::from_secs(90), |t| {
            t.iter().filter(|t| t["code"] == 250).count() >= accepted.len()
        });
        let delivered: std::collections::HashSet<String> = got
            .iter()
            .flat_map(|t| t["rcpts"].as_array().unwrap())
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        for a in accepted {
            assert!(
                delivered.contains(a),
                "{a} was accepted and never delivered"
            );
        }
    };
    delivered_all(&accepted);
    d.wait_metric("switchyard_spool_messages", "", 0.0);
    // Acceptance resumes by itself.
    let drained = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        let r = fill(&d, 1, "b");
        if let Some(rcpt) = r["accepted"][0].as_str() {
            accepted.push(rcpt.to_string());
            break Instant::now();
        }
        if Instant::now() >= deadline {
            let listing = Command::new("du").arg("-ak").arg(&data).output().unwrap();
            panic!(
                "still refused 30 s after the spool drained: {r}\n{}\n{}",
                String::from_utf8_lossy(&listing.stdout),
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // The space comes back: the blob files of the delivered messages go (the compaction
    // that drops them runs at most every 10 s), and on a small volume the old generation.
    let deadline = Instant::now() + Duration::from_secs(25);
    let empty_kib = loop {
        let kib = du(&data.join("spool"));
        if kib < full_kib / 2 || Instant::now() >= deadline {
            break kib;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let resumed_after = (resumed - drained).as_secs_f64();
    eprintln!(
        "disk full on {size}: {} accepted, then {}; spool {full_kib} KiB full, {empty_kib} KiB drained; accepting again {resumed_after:.1} s after the drain",
        accepted.len() - 1,
        first["refusal"],
    );
    assert!(
        resumed_after <= 5.0,
        "acceptance resumed only {resumed_after:.1} s after the drain\n{}",
        d.log()
    );
    assert!(
        empty_kib < full_kib / 2,
        "the spool still takes {empty_kib} KiB of {full_kib} after it drained\n{}",
        d.log()
    );
    if flow {
        // More mail than the volume holds, while the receiver takes it: the journal of
        // what was delivered must keep coming back, or this would end in 452s.
        let more = fill(&d, 3000, "c");
        let flowed: Vec<String> = more["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            more["refusal"],
            serde_json::Value::Null,
            "refused after {} of 3,000 messages of 20 KiB on a {size} volume\n{}",
            flowed.len(),
            d.log()
        );
        delivered_all(&flowed);
        let rotations = d.log().matches("rotated to a new generation").count();
        eprintln!(
            "then 3,000 messages of 20 KiB ({} MiB) through the {size} volume with no refusal; {rotations} spool rotations",
            3000 * 20 / 1024
        );
        assert!(rotations >= 2, "{rotations} rotations");
        accepted.extend(flowed);
    }
    // Every accepted recipient has its records: nothing the full disk made the log drop.
    let ev = d.wait_events("a Delivery per accepted message", |ev| {
        ev.iter().filter(|e| e["type"] == "Delivery").count() >= accepted.len()
    });
    let receptions = ev.iter().filter(|e| e["type"] == "Reception").count();
    assert!(receptions >= accepted.len(), "{receptions} receptions");
}

/// The event log's own disk fills (a 256 KiB tmpfs mounted on `data/logs`) while mail flows:
/// writes fail and are counted, no record is dropped, and delivered recipients stay in the
/// spool until their final records are written — so a crash meanwhile would repeat a
/// delivery, never lose its record. Given room, the log writes everything it kept and the
/// spool empties.
#[test]
fn a_full_log_disk_keeps_every_record_and_holds_removals_until_it_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("data/logs");
    let tmpfs = Tmpfs::mount(&logs, "256k");
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = ResponseSink::start(sink_dir.path(), "");
    let d = Daemon::start_in(
        dir,
        &format!(
            "[logs]\ncompress = false\n\n[routes]\n\"example.org\" = \"127.0.0.1:{}\"\n",
            sink.port
        ),
    );
    let acks = d.dir.path().join("acks.txt");
    let (ok, out, err) = common::inject(&d, 800, &acks, &["--rcpt", "someone@example.org"]);
    assert!(ok, "{out}{err}");
    let accepted = std::fs::read_to_string(&acks).unwrap().lines().count();
    assert_eq!(accepted, 800);
    sink.wait("every message delivered", Duration::from_secs(30), |t| {
        t.iter().filter(|t| t["code"] == 250).count() >= accepted
    });
    let failures = d
        .metric("switchyard_log_write_failures_total", "")
        .unwrap_or(0.0);
    assert!(failures > 0.0, "the log's disk never filled");
    // Delivered, but their records are not written: they stay in the spool.
    std::thread::sleep(Duration::from_millis(500));
    let held = d.metric("switchyard_spool_messages", "").unwrap();
    assert!(
        held > 0.0,
        "removed from the spool before their records were written"
    );
    let written = d
        .events()
        .iter()
        .filter(|e| e["type"] == "Delivery")
        .count();
    assert!(
        written < accepted,
        "{written} Delivery records on a full disk"
    );
    // Room again: every record kept is written, and then the spool empties.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&tmpfs.0)
        .status()
        .unwrap();
    assert!(grown.success());
    let ev = d.wait_events("every record once the log has room", |ev| {
        ev.iter().filter(|e| e["type"] == "Delivery").count() >= accepted
    });
    d.wait_metric("switchyard_spool_messages", "", 0.0);
    let receptions = ev.iter().filter(|e| e["type"] == "Reception").count();
    assert_eq!(receptions, accepted, "every Reception record written");
    eprintln!(
        "full log disk: {accepted} delivered, {failures} failed log writes retried, {held} messages held in the spool until their records were written; then all {} records written",
        ev.len()
    );
}
