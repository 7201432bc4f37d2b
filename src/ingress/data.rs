//! Reading the DATA phase: dot-unstuffing, the end-of-data mark, and limits.
//!
//! The only end of data is `<CRLF>.<CRLF>` (RFC 5321 §4.1.1.4). A bare `<LF>.<LF>` or
//! `<LF>.<CRLF>` is *not* an end: treating it as one is what "SMTP smuggling" exploits, where
//! a second, forged message hides inside the first. A bare LF is stored as CRLF so that no
//! later hop can read a line break where we read none; a dot after it is kept as text (and is
//! dot-stuffed again when the message is relayed).
//!
//! Limits are enforced while reading, without buffering past them: once the message is over
//! `max_message_size` the rest is read and thrown away until the end mark, then `552` is
//! answered; a text line over 1000 octets (RFC 5321 §4.5.3.1.6) gives `500 5.5.2`.

/// Longest text line, CRLF included.
pub const MAX_TEXT_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the very beginning).
    LineStart,
    /// Inside a line.
    Text,
    /// Saw CR inside a line.
    Cr,
    /// Saw "." at the start of a line.
    Dot,
    /// Saw ".\r" at the start of a line.
    DotCr,
}

/// What went wrong with a message body, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// Longer than the size limit.
    TooBig,
    /// A line longer than [`MAX_TEXT_LINE`].
    LineTooLong,
}

/// Incremental DATA decoder: feed it bytes as they arrive.
pub struct DataReader {
    state: State,
    body: Vec<u8>,
    max_size: usize,
    line_len: usize,
    /// Lines ended so far (by CRLF or a bare LF).
    lines: u64,
    total: u64,
    problem: Option<DataProblem>,
}

impl DataReader {
    /// A reader that keeps at most `max_size` body bytes, with room at first for the size
    /// the client declared (MAIL's SIZE; 0 when it did not), or 16 KiB.
    pub fn new(max_size: usize, declared_size: usize) -> Self {
        let room = if declared_size > 0 {
            declared_size
        } else {
            16 * 1024
        };
        DataReader {
            state: State::LineStart,
            body: Vec::with_capacity(room.min(max_size)),
            max_size,
            line_len: 0,
            lines: 0,
            total: 0,
            problem: None,
        }
    }

    fn push(&mut self, b: u8) {
        self.total += 1;
        if self.problem.is_some() {
            return;
        }
        if self.body.len() >= self.max_size {
            self.problem = Some(DataProblem::TooBig);
            self.body = Vec::new();
            return;
        }
        self.body.push(b);
    }

    fn count_line(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_TEXT_LINE && self.problem.is_none() {
            self.problem = Some(DataProblem::LineTooLong);
            self.body = Vec::new();
        }
    }

    /// Feed bytes; returns `Some(n)` when the end mark ended at `input[n - 1]` (the bytes from
    /// `n` on belong to the next command), `None` when more data is needed.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Text {
                // The common case: the rest of a line, copied in one go up to its CR or LF.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    self.text_run(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                // The dot is not counted: RFC 5321 §4.5.3.1.6 leaves out the dot doubled for
                // transparency, which the relayed form may get back.
                (State::LineStart, b'.') => State::Dot,
                (State::Dot, b'\r') => State::DotCr,
                (State::DotCr, b'\n') => return Some(i),
                // ".X": a stuffed dot; the dot itself is dropped.
                (State::Dot, _) => self.text_byte(b),
                (State::DotCr, _) => {
                    self.push(b'\r');
                    self.count_line(1);
                    self.text_byte(b)
                }
                (State::Cr, b'\n') => {
                    self.push(b'\n');
                    self.count_line(1);
                    self.line_len = 0;
                    self.lines += 1;
                    State::LineStart
                }
                (_, _) => self.text_byte(b),
            };
        }
        None
    }

    /// Text bytes with no CR or LF among them: the same as pushing and counting each, with
    /// the same first problem (a full body wins over a long line at the same byte).
    fn text_run(&mut self, run: &[u8]) {
        self.total += run.len() as u64;
        if self.problem.is_none() {
            let full_at = self.max_size.saturating_sub(self.body.len());
            let long_at = MAX_TEXT_LINE.saturating_sub(self.line_len);
            if full_at < run.len() && full_at <= long_at {
                self.problem = Some(DataProblem::TooBig);
                self.body = Vec::new();
            } else if long_at < run.len() {
                self.problem = Some(DataProblem::LineTooLong);
                self.body = Vec::new();
            } else {
                self.body.extend_from_slice(run);
            }
        }
        self.line_len += run.len();
    }

    fn text_byte(&mut self, b: u8) -> State {
        match b {
            b'\r' => {
                self.push(b'\r');
                self.count_line(1);
                State::Cr
            }
            b'\n' => {
                // Bare LF: store a real line break, but it does not start a line for the
                // purpose of finding the end mark.
                self.push(b'\r');
                self.push(b'\n');
                self.count_line(2);
                self.line_len = 0;
                self.lines += 1;
                State::Text
            }
            _ => {
                self.push(b);
                self.count_line(1);
                State::Text
            }
        }
    }

    /// Lines ended so far, by CRLF or a bare LF (the session's per-line deadline).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes received so far (before unstuffing), for logs and limits.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The body, or the problem that made it unacceptable.
    pub fn finish(self) -> Result<Vec<u8>, DataProblem> {
        match self.problem {
            Some(p) => Err(p),
            None => Ok(self.body),
        }
    }
}

/// `body` in its wire form (RFC 5321 §4.5.2): every line that starts with "." gets another
/// one, and the text ends in CRLF; the end mark is not added. The common body has no such
/// line and comes back as it is, without a copy.
pub fn wire_form(mut body: Vec<u8>) -> Vec<u8> {
    let dots =
        usize::from(body.first() == Some(&b'.')) + memchr::memmem::find_iter(&body, b"\n.").count();
    if dots > 0 {
        let mut out = Vec::with_capacity(body.len() + dots + 2);
        let mut line_start = true;
        for &b in &body {
            if line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            line_start = b == b'\n';
        }
        body = out;
    }
    if !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], max: usize) -> (Option<usize>, Result<Vec<u8>, DataProblem>) {
        let mut r = DataReader::new(max, 0);
        let end = r.feed(input);
        (end, r.finish())
    }

    #[test]
    fn ends_only_on_crlf_dot_crlf() {
        let (end, body) = read(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n", 1000);
        assert_eq!(end, Some(21));
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nhi\r\n");
    }

    #[test]
    fn bare_lf_dot_is_not_an_end() {
        let input = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\n";
        let (end, _) = read(input, 1000);
        assert_eq!(end, None);
        let input = b"hi\r\n.\nstill data\r\n.\r\n";
        let (end, body) = read(input, 1000);
        assert_eq!(end, Some(input.len()));
        // The lone dot line survives as text; the bare LFs became CRLF.
        assert_eq!(body.unwrap(), b"hi\r\n\r\nstill data\r\n");
    }

    #[test]
    fn unstuffs_dots_and_splits_across_feeds() {
        let mut r = DataReader::new(1000, 0);
        assert_eq!(r.feed(b"..leading dot\r"), None);
        assert_eq!(r.feed(b"\n."), None);
        assert_eq!(r.feed(b"\r"), None);
        assert_eq!(r.feed(b"\nrest"), Some(1));
        assert_eq!(r.finish().unwrap(), b".leading dot\r\n");
    }

    #[test]
    fn too_big_keeps_reading_to_the_end() {
        let mut input = vec![b'a'; 50];
        input.extend_from_slice(b"\r\n.\r\n");
        let (end, body) = read(&input, 10);
        assert_eq!(end, Some(input.len()));
        assert_eq!(body, Err(DataProblem::TooBig));
    }

    #[test]
    fn wire_form_stuffs_what_reading_unstuffs() {
        let body = b".lead\r\nmid\r\n.\r\n..two\r\nend".to_vec();
        let wire = wire_form(body.clone());
        assert_eq!(wire, b"..lead\r\nmid\r\n..\r\n...two\r\nend\r\n");
        let mut r = DataReader::new(1 << 20, 0);
        let mut input = wire.clone();
        input.extend_from_slice(b".\r\n");
        assert_eq!(r.feed(&input), Some(input.len()));
        let mut expected = body;
        expected.extend_from_slice(b"\r\n");
        assert_eq!(r.finish().unwrap(), expected);
        let plain = b"Subject: x\r\n\r\nno dots\r\n".to_vec();
        let ptr = plain.as_ptr();
        let same = wire_form(plain);
        assert_eq!(same.as_ptr(), ptr, "nothing to stuff: no copy");
    }

    #[test]
    fn feeding_byte_by_byte_reads_the_same() {
        let mut input = b"Subject: x\r\n\r\n..dot\r\nbare\nlf\r\n.\nx\r".to_vec();
        input.extend(vec![b'y'; 990]);
        input.extend_from_slice(b"\r\n.\r\nNEXT");
        for max in [10, 40, 1030, 1 << 20] {
            let whole = read(&input, max);
            let mut r = DataReader::new(max, 0);
            let mut end = None;
            for (i, b) in input.iter().enumerate() {
                if let Some(n) = r.feed(std::slice::from_ref(b)) {
                    end = Some(i + n);
                    break;
                }
            }
            assert_eq!((end, r.finish()), whole, "max {max}");
        }
    }

    #[test]
    fn long_line() {
        let mut input = vec![b'a'; 1200];
        input.extend_from_slice(b"\r\n.\r\n");
        let (end, body) = read(&input, 1 << 20);
        assert_eq!(end, Some(input.len()));
        assert_eq!(body, Err(DataProblem::LineTooLong));
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(read(&ok, 1 << 20).1.is_ok());
    }

    /// 1000 octets with the CRLF, leaving out a dot doubled for transparency (RFC 5321
    /// §4.5.3.1.6); a bare LF counts as the CRLF it is stored as.
    #[test]
    fn line_limit_is_exact() {
        let line = |head: &[u8], n: usize, tail: &[u8]| {
            let mut v = head.to_vec();
            v.extend(std::iter::repeat_n(b'a', n));
            v.extend_from_slice(tail);
            v.extend_from_slice(b"\r\n.\r\n");
            read(&v, 1 << 20).1.map(|_| ())
        };
        assert_eq!(line(b"", 998, b"\r\n"), Ok(()));
        assert_eq!(line(b"", 999, b"\r\n"), Err(DataProblem::LineTooLong));
        assert_eq!(line(b".", 998, b"\r\n"), Ok(()), "stuffed dot");
        assert_eq!(line(b"", 998, b"\n"), Ok(()));
        assert_eq!(
            line(b"", 999, b"\n"),
            Err(DataProblem::LineTooLong),
            "stored as CRLF"
        );
        // Found by the data_reader fuzz target: a line after a bare LF that starts with a
        // dot gets the dot doubled when relayed, which must not make it too long.
        assert_eq!(line(b"x\n.", 997, b"\r\n"), Ok(()));
    }
}
