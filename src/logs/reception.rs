//! Reception records kept by the spool until the log has them: [`Reception`] is what the
//! ingress files (rendered once, stored with the message), and at start
//! [`missing_receptions`] finds which of the copies a crash left the log lacks, so that the
//! daemon writes them with `"recovered": true`.

use super::*;

/// A message's Reception record as the spool keeps it until the log has written it.
pub struct Reception {
    /// The message.
    pub id: MessageId,
    /// The record, one JSON object (no line break).
    pub line: bytes::Bytes,
    /// Its hour, as [`hour_of`] its timestamp.
    pub hour: String,
    /// The spool that keeps its copy.
    pub spool: Spool,
}

impl Reception {
    /// A Reception record the spool kept and the log lost (see [`missing_receptions`]), to be
    /// written now: the same record, with `"recovered": true`. Its timestamp stays the
    /// reception time.
    pub fn recovered(id: MessageId, stored: &[u8], spool: Spool) -> Reception {
        let timestamp = serde_json::from_slice::<serde_json::Value>(stored)
            .ok()
            .and_then(|v| v.get("timestamp")?.as_str().map(str::to_string))
            .unwrap_or_else(|| switchyard_actors::record::rfc3339(std::time::SystemTime::now()));
        let body = stored.strip_suffix(b"}").unwrap_or(stored);
        let mut line = body.to_vec();
        line.extend_from_slice(br#","recovered":true}"#);
        Reception {
            id,
            line: line.into(),
            hour: hour_of(&timestamp),
            spool,
        }
    }
}

/// Of the Reception records the spool kept (as [`Spool::unlogged_receptions`] lists them),
/// which ones the log under `dir` has, and which it lacks: a process killed between a
/// message's `250` and the log's write lost those. Only the segments that can hold them are
/// read: from the one in use at the oldest record's hour on. Called before
/// [`EventLog::start`], which cuts a torn last line: a torn record counts as missing.
pub fn missing_receptions(
    dir: &Path,
    unlogged: Vec<(MessageId, Vec<u8>)>,
) -> (Vec<MessageId>, Vec<(MessageId, Vec<u8>)>) {
    if unlogged.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let oldest = unlogged
        .iter()
        .filter_map(|(_, line)| {
            let v: serde_json::Value = serde_json::from_slice(line).ok()?;
            Some(hour_of(v.get("timestamp")?.as_str()?))
        })
        .min()
        .unwrap_or_default();
    let names = segments(dir);
    let first = names
        .iter()
        .position(|n| n.as_str() >= oldest.as_str())
        .unwrap_or(names.len())
        .saturating_sub(1);
    let wanted: std::collections::HashSet<String> =
        unlogged.iter().map(|(id, _)| id.to_string()).collect();
    let mut found = std::collections::HashSet::new();
    let finder = memchr::memmem::Finder::new(br#""type":"Reception""#);
    for name in &names[first..] {
        let text = match crate::webhooks::tail::read_segment(dir, name) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!("cannot read event log {name} for Reception records: {e}");
                continue;
            }
        };
        for line in text.split(|b| *b == b'\n') {
            if finder.find(line).is_none() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(id) = v.get("id").and_then(|id| id.as_str()) {
                if wanted.contains(id) {
                    found.insert(id.to_string());
                }
            }
        }
    }
    let (logged, missing): (Vec<_>, Vec<_>) = unlogged
        .into_iter()
        .partition(|(id, _)| found.contains(&id.to_string()));
    (logged.into_iter().map(|(id, _)| id).collect(), missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reception_records_the_log_lacks_are_found_and_written_back_marked_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let ids: Vec<MessageId> = (0..4).map(|_| MessageId::new()).collect();
        let record = |id: &MessageId, at: &str| {
            format!(r#"{{"type":"Reception","timestamp":"{at}","id":"{id}","tenant":"t"}}"#)
        };
        // An older hour's segment, compressed, holds ids[0]; the last one holds ids[1] and
        // ends in a torn copy of ids[2]'s record; ids[3] was never written.
        let old = format!("{}\n", record(&ids[0], "2026-12-08T09:59:59.990Z"));
        std::fs::write(
            logs.join("20261208-09-000.jsonl.zst"),
            zstd::encode_all(old.as_bytes(), 3).unwrap(),
        )
        .unwrap();
        let torn = record(&ids[2], "2026-12-08T10:00:00.200Z");
        std::fs::write(
            logs.join("20261208-10-000.jsonl"),
            format!(
                "{{\"type\":\"Delivery\",\"id\":\"{}\"}}\n{}\n{}",
                ids[3],
                record(&ids[1], "2026-12-08T10:00:00.100Z"),
                &torn[..torn.len() - 5]
            ),
        )
        .unwrap();
        let unlogged: Vec<(MessageId, Vec<u8>)> = ids
            .iter()
            .zip([
                "2026-12-08T09:59:59.990Z",
                "2026-12-08T10:00:00.100Z",
                "2026-12-08T10:00:00.200Z",
                "2026-12-08T10:00:00.300Z",
            ])
            .map(|(id, at)| (*id, record(id, at).into_bytes()))
            .collect();
        let (logged, missing) = missing_receptions(&logs, unlogged);
        assert_eq!(logged, [ids[0], ids[1]]);
        let missing_ids: Vec<MessageId> = missing.iter().map(|(id, _)| *id).collect();
        assert_eq!(missing_ids, [ids[2], ids[3]]);
        // Written back: the same record with "recovered": true, filed under its own hour.
        let spool = Spool::open(&dir.path().join("spool"), 0).unwrap();
        let r = Reception::recovered(missing[1].0, &missing[1].1, spool);
        let v: serde_json::Value = serde_json::from_slice(&r.line).unwrap();
        assert_eq!(v["recovered"], true);
        assert_eq!(v["id"], ids[3].to_string());
        assert_eq!(v["timestamp"], "2026-12-08T10:00:00.300Z");
        assert_eq!(r.hour, "20261208-10");
        // Nothing kept, nothing read.
        assert_eq!(
            missing_receptions(&logs, Vec::new()),
            (Vec::new(), Vec::new())
        );
    }
}
