//! What DKIM signing costs per 5 KiB message at reception, for each key type: one
//! `Signers::sign` call (From: domain lookup, the trailing-blank-line trim, relaxed/relaxed
//! canonicalisation, hashing and the signature) on one core.
//!
//! `cargo bench --bench dkim_sign`. Keys come from `switchyard::dkim::generate`, the same
//! code as `switchyard dkim-keygen`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use switchyard::dkim::{generate, KeyAlgorithm, Signers};

fn signers(algorithm: KeyAlgorithm) -> (tempfile::TempDir, Signers) {
    let dir = tempfile::tempdir().unwrap();
    let (pem, _) = generate(algorithm).unwrap();
    std::fs::write(dir.path().join("key.pem"), pem).unwrap();
    let config =
        "[[dkim]]\ndomain = \"example.com\"\nselector = \"bench\"\nkey_file = \"key.pem\"\n";
    let loaded = switchyard::config::load_str(config, "bench.toml", dir.path()).unwrap();
    let signers = Signers::load(&loaded).unwrap();
    (dir, signers)
}

/// A 5 KiB message as smtp-source sends it.
fn message() -> Vec<u8> {
    let mut m = b"From: <bench@example.com>\r\nTo: <rcpt@example.org>\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-Id: <1@bench>\r\nSubject: bench\r\n\r\n".to_vec();
    let mut line = 0;
    while m.len() < 5120 {
        line += 1;
        m.extend_from_slice(format!("{line}{}\r\n", "X".repeat(77)).as_bytes());
    }
    m
}

fn bench(c: &mut Criterion) {
    let template = message();
    for (name, algorithm) in [
        ("rsa2048", KeyAlgorithm::Rsa2048),
        ("ed25519", KeyAlgorithm::Ed25519),
    ] {
        let (_dir, signers) = signers(algorithm);
        c.bench_function(&format!("sign 5 KiB, {name}"), |b| {
            b.iter(|| {
                let mut m = template.clone();
                black_box(signers.sign("default", &mut m).unwrap());
                m
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
