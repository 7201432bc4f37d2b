//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every crash the fuzzers ever found
//! (`fuzz/regressions/<target>/`) through the same checks the fuzz targets run
//! (`switchyard::fuzzing`), without libFuzzer: a fixed crash stays fixed. The long fuzz
//! runs themselves are `fuzz/run.sh`, on demand.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    let mut failed = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            inputs += 1;
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(
        inputs > 0,
        "no corpus for {target} under {}",
        root.display()
    );
    assert!(failed.is_empty(), "{target} fails on {failed:#?}");
}

#[test]
fn smtp_command_corpus() {
    replay("smtp_command", switchyard::fuzzing::smtp_command);
}

#[test]
fn data_reader_corpus() {
    replay("data_reader", switchyard::fuzzing::data_reader);
}

#[test]
fn outbound_reply_corpus() {
    replay("outbound_reply", switchyard::fuzzing::outbound_reply);
}

#[test]
fn config_corpus() {
    replay("config", switchyard::fuzzing::config);
}

#[test]
fn shaping_corpus() {
    replay("shaping", switchyard::fuzzing::shaping);
}

#[test]
fn mta_sts_policy_corpus() {
    replay("mta_sts_policy", switchyard::fuzzing::mta_sts_policy);
}
