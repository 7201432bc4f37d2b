//! Reading the event log from a cursor: the webhooks' queue is the log itself.
//!
//! A [`Cursor`] is a segment's name (`20261129-12-000`) and how many of its lines have been
//! read. [`LogTail::read`] goes on from there: through the segment being written (a line
//! without its newline yet waits for it), on to the next segment once a later one exists
//! (the writer finishes a segment before it starts the next, and names sort in the order
//! they were written), and through compression (a closed segment becomes `.jsonl.zst`; an
//! open file keeps reading the removed `.jsonl`, and a segment opened afresh is read from
//! whichever exists). Each record read gets a `record_id`, `<segment>:<line>`, the same
//! whenever it is read again.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Where a reader of the log is: `line` lines of `segment` are behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// A segment's name, without extension; empty: before the first.
    pub segment: String,
    /// Lines of it already read.
    pub line: u64,
}

/// One record read from the log.
#[derive(Debug, Clone)]
pub struct Tailed {
    /// `<segment>:<line>` (from 0): unique per record, the same when read again.
    pub record_id: String,
    /// The JSON line, without its newline.
    pub line: Vec<u8>,
    /// The cursor just past it.
    pub after: Cursor,
}

/// An open segment.
struct Open {
    reader: Box<dyn BufRead + Send>,
    /// The start of a line whose end is not written yet.
    partial: Vec<u8>,
}

/// Reads the log from a cursor.
pub struct LogTail {
    dir: PathBuf,
    cursor: Cursor,
    open: Option<Open>,
    /// Why the last read stopped short (the segment is opened again next time).
    error: Option<String>,
    /// The newest segment, from the log's writer: at the end of the cursor's segment, the
    /// directory is listed for the next one only once a later one exists.
    latest: Option<LatestSegment>,
}

pub use crate::logs::segments;
use crate::logs::LatestSegment;

/// The cursor at the end of the log as it is now: where a new webhook starts.
pub fn end_of_log(dir: &Path) -> Cursor {
    let Some(last) = segments(dir).pop() else {
        return Cursor::default();
    };
    let mut tail = LogTail::new(
        dir,
        Cursor {
            segment: last,
            line: 0,
        },
    );
    while !tail.read(10_000).is_empty() {}
    tail.cursor
}

impl LogTail {
    /// A reader going on from `cursor`.
    pub fn new(dir: &Path, cursor: Cursor) -> LogTail {
        LogTail {
            dir: dir.to_path_buf(),
            cursor,
            open: None,
            error: None,
            latest: None,
        }
    }

    /// Told by the log's writer which segment is the newest (without it, the directory is
    /// listed whenever the reader is at the end of a segment).
    pub fn following(mut self, latest: LatestSegment) -> LogTail {
        self.latest = Some(latest);
        self
    }

    /// The cursor past the last record read.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Why the last [`LogTail::read`] stopped short of the end of the log, if it did: the
    /// segment could not be read (it is tried again from the cursor, never skipped).
    pub fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }

    /// Up to `max` more records, in log order; none when the reader has reached the end of
    /// what is written. Blocking (file IO).
    pub fn read(&mut self, max: usize) -> Vec<Tailed> {
        let mut out = Vec::new();
        while out.len() < max {
            if self.open.is_none() && !self.open_segment() {
                break;
            }
            match self.next_line() {
                Ok(Some(line)) => self.take(line, &mut out),
                Ok(None) => {
                    // The end of what is written. A later segment means this one is
                    // complete: read what may have come in meanwhile, then go on there.
                    if let Some(latest) = &self.latest {
                        if latest.get() <= self.cursor.segment {
                            break;
                        }
                    }
                    let later = segments(&self.dir)
                        .into_iter()
                        .find(|s| *s > self.cursor.segment);
                    let Some(next) = later else {
                        break;
                    };
                    match self.next_line() {
                        Ok(Some(line)) => {
                            self.take(line, &mut out);
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.stop(e);
                            break;
                        }
                    }
                    if self.open.as_ref().is_some_and(|o| !o.partial.is_empty()) {
                        tracing::warn!(
                            segment = %self.cursor.segment,
                            "event log segment ends in half a record (cut by a crash); skipped"
                        );
                    }
                    self.open = None;
                    self.cursor = Cursor {
                        segment: next,
                        line: 0,
                    };
                }
                Err(e) => {
                    self.stop(e);
                    break;
                }
            }
        }
        out
    }

    /// Count a line read; keep it unless it is empty (no record, but a line all the same).
    fn take(&mut self, line: Vec<u8>, out: &mut Vec<Tailed>) {
        let record_id = format!("{}:{}", self.cursor.segment, self.cursor.line);
        self.cursor.line += 1;
        if !line.is_empty() {
            out.push(Tailed {
                record_id,
                line,
                after: self.cursor.clone(),
            });
        }
    }

    /// A read failed: close the segment (it is opened again from the cursor next time).
    fn stop(&mut self, why: String) {
        tracing::error!(segment = %self.cursor.segment, "cannot read the event log: {why}");
        self.open = None;
        self.error = Some(format!(
            "cannot read event log segment {}: {why}",
            self.cursor.segment
        ));
    }

    /// The next whole line of the open segment, if one is there.
    fn next_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        let Some(open) = self.open.as_mut() else {
            return Ok(None);
        };
        let mut buf = std::mem::take(&mut open.partial);
        loop {
            match open.reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    open.partial = buf;
                    return Ok(None);
                }
                Ok(_) if buf.ends_with(b"\n") => {
                    buf.pop();
                    return Ok(Some(buf));
                }
                Ok(_) => {
                    // The rest of this line is not written yet.
                    open.partial = buf;
                    return Ok(None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Open the cursor's segment (or, when it is gone, the next one) and skip the lines
    /// already read. False when there is none to open yet.
    fn open_segment(&mut self) -> bool {
        loop {
            let names = segments(&self.dir);
            let segment = if names.contains(&self.cursor.segment) {
                self.cursor.segment.clone()
            } else {
                match names.into_iter().find(|s| *s > self.cursor.segment) {
                    Some(next) => {
                        if !self.cursor.segment.is_empty() {
                            tracing::warn!(
                                from = %self.cursor.segment,
                                to = %next,
                                "event log segment gone; going on with the next"
                            );
                        }
                        self.cursor = Cursor {
                            segment: next.clone(),
                            line: 0,
                        };
                        next
                    }
                    None => return false,
                }
            };
            let mut open = match open_reader(&self.dir, &segment) {
                Ok(reader) => Open {
                    reader,
                    partial: Vec::new(),
                },
                // Compressed between the listing and the open: look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.stop(e.to_string());
                    return false;
                }
            };
            // Skip what was read before.
            let mut skipped = 0;
            let mut sink = Vec::new();
            while skipped < self.cursor.line {
                sink.clear();
                match open.reader.read_until(b'\n', &mut sink) {
                    Ok(0) => break,
                    Ok(_) if sink.ends_with(b"\n") => skipped += 1,
                    Ok(_) => {
                        open.partial = std::mem::take(&mut sink);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.open = Some(open);
            return true;
        }
    }
}

/// A reader of `segment`'s lines: its complete `.zst` first (for a moment both exist, and
/// the `.jsonl` goes next), else its `.jsonl`.
fn open_reader(dir: &Path, segment: &str) -> std::io::Result<Box<dyn BufRead + Send>> {
    match File::open(dir.join(format!("{segment}.jsonl.zst"))) {
        Ok(f) => Ok(Box::new(BufReader::new(zstd::stream::Decoder::new(f)?))),
        Err(_) => Ok(Box::new(BufReader::new(File::open(
            dir.join(format!("{segment}.jsonl")),
        )?))),
    }
}

/// Read a whole segment's lines (tests, `ctl`).
pub fn read_segment(dir: &Path, segment: &str) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    open_reader(dir, segment)?.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(dir: &Path, segment: &str, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{segment}.jsonl")))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn compress(dir: &Path, segment: &str) {
        let plain = dir.join(format!("{segment}.jsonl"));
        let data = std::fs::read(&plain).unwrap();
        let z = zstd::encode_all(&data[..], 3).unwrap();
        std::fs::write(dir.join(format!("{segment}.jsonl.zst")), z).unwrap();
        std::fs::remove_file(plain).unwrap();
    }

    fn ids(records: &[Tailed]) -> Vec<String> {
        records.iter().map(|r| r.record_id.clone()).collect()
    }

    #[test]
    fn the_tail_follows_a_growing_segment_rotation_and_compression() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut tail = LogTail::new(d, Cursor::default());
        assert!(tail.read(10).is_empty());
        append(d, "20261129-12-000", "{\"n\":0}\n{\"n\":1}\n{\"n\"");
        assert_eq!(
            ids(&tail.read(10)),
            ["20261129-12-000:0", "20261129-12-000:1"]
        );
        // Half a line waits for the rest.
        assert!(tail.read(10).is_empty());
        append(d, "20261129-12-000", ":2}\n");
        let got = tail.read(10);
        assert_eq!(String::from_utf8_lossy(&got[0].line), "{\"n\":2}");
        // The segment is closed, compressed, and a new one started.
        append(d, "20261129-12-000", "{\"n\":3}\n");
        compress(d, "20261129-12-000");
        append(d, "20261129-13-000", "{\"n\":4}\n");
        assert_eq!(
            ids(&tail.read(10)),
            ["20261129-12-000:3", "20261129-13-000:0"]
        );
        assert_eq!(
            tail.cursor(),
            &Cursor {
                segment: "20261129-13-000".into(),
                line: 1
            }
        );
        // A new reader from a saved cursor, in a compressed segment, skips what was read.
        let mut again = LogTail::new(
            d,
            Cursor {
                segment: "20261129-12-000".into(),
                line: 2,
            },
        );
        let got = again.read(2);
        assert_eq!(ids(&got), ["20261129-12-000:2", "20261129-12-000:3"]);
        assert_eq!(ids(&again.read(10)), ["20261129-13-000:0"]);
        // The end of the log is where a new webhook starts.
        assert_eq!(
            end_of_log(d),
            Cursor {
                segment: "20261129-13-000".into(),
                line: 1
            }
        );
        assert_eq!(read_segment(d, "20261129-12-000").unwrap().len(), 32);
    }
}
