//! Broken configs give precise `file:line:col: message` errors from `check` and `serve`,
//! with exit code 1 and no panic.

mod common;

use common::{run, BIN};
use std::process::Command;

/// (config text, the exact first line of the expected error, after the file name)
const BROKEN: &[(&str, &str)] = &[
    (
        "[queue.domain.\"gmail.com\"]\negress_pool = \"gmail-ips\"\n",
        ":2:15: [queue.domain.\"gmail.com\"] names egress_pool \"gmail-ips\", which no [[pool]] defines",
    ),
    (
        "[queue.campaign.\"spring\"]\nmax_age = \"1h\"\n",
        ":1:17: [queue.campaign.\"spring\"]: name the campaign as \"campaign:tenant\"",
    ),
    (
        "[queue.tenant.\"acme\"]\nmax_agee = \"1h\"\n",
        ":2:1: unknown field `max_agee`",
    ),
    (
        "[smtp]\nlisten = [\"127.0.0.1:2525\"]\nmax_mesage_size = \"10MiB\"\n",
        ":3:1: unknown field `max_mesage_size`",
    ),
    ("[queue]\nretry_interval = \"20m\"\nmax_age = \"three days\"\n", ":3:11: invalid duration \"three days\""),
    ("[smtp]\nmax_message_size = \"25 parsecs\"\n", ":2:20: invalid size \"25 parsecs\""),
    (
        "[[source]]\nname = \"ip-1\"\naddress = \"127.0.0.2\"\n\n[[pool]]\nname = \"shared\"\nsources = [{ source = \"ip-9\", weight = 3 }]\n",
        ":7:23: pool \"shared\" names source \"ip-9\", which no [[source]] defines",
    ),
    ("[tenant.\"acme\"]\npool = \"premium\"\nmax_message_rate = \"100/h\"\n", ":2:8: tenant \"acme\" names pool \"premium\", which no [[pool]] defines"),
    ("[smtp]\nrelay_hosts = [\"127.0.0.0/8\", \"10.0.0.0/33\"]\n", ":2:31: invalid network \"10.0.0.0/33\""),
    ("[tenant.\"acme\"]\nmax_message_rate = \"100 per hour\"\n", ":2:20: invalid rate \"100 per hour\""),
    ("[http]\nlisten = \"localhost\"\n", ":2:10: invalid socket address syntax"),
    ("[tls]\ntrust_roots = [\"missing-ca.pem\"]\n", ":2:16: cannot read CA certificates from"),
    (
        "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\nlease_ttl = \"100ms\"\n",
        ":3:13: [cluster] lease_ttl must be at least 1s",
    ),
    (
        "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\nnode = \"mta 1\"\n",
        ":3:8: invalid node name \"mta 1\"",
    ),
    ("[cluster]\nredis = \"http://127.0.0.1/\"\n", ":2:9: [cluster] redis:"),
];

#[test]
fn broken_configs_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, expected)) in BROKEN.iter().enumerate() {
        let path = dir.path().join(format!("broken{i}.toml"));
        std::fs::write(&path, text).unwrap();
        for verb in ["check", "serve"] {
            let out = run(Command::new(BIN)
                .arg(verb)
                .arg("--config")
                .arg(&path)
                .current_dir(dir.path()));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{verb} {text:?}: {stderr}");
            let want = format!("{}{expected}", path.display());
            assert!(
                stderr.lines().next().unwrap_or("").starts_with(&want),
                "{verb}: wanted {want:?}, got {stderr:?}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

#[test]
fn a_missing_config_file_and_a_syntax_error_are_reported_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(BIN)
        .args(["check", "--config", "nope.toml"])
        .current_dir(dir.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("nope.toml:1:1: cannot read config file")
    );
    let path = dir.path().join("syntax.toml");
    std::fs::write(&path, "hostname = \"a\"\n[smtp\n").unwrap();
    let out = run(Command::new(BIN).arg("check").arg("--config").arg(&path));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:2:", path.display())),
        "{stderr}"
    );
}

#[test]
fn a_good_config_and_the_embedded_default_check_clean() {
    let out = run(Command::new(BIN).arg("check"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let out = run(Command::new(BIN).args(["check", "--config", example]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
