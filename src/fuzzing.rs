//! The properties the fuzz targets check, one function per target.
//!
//! `fuzz/` (cargo-fuzz, libFuzzer) feeds each function arbitrary bytes; `tests/fuzzing.rs`
//! replays the corpus kept in `fuzz/corpus/` and every crash ever found (`fuzz/regressions/`)
//! through the same functions on every `cargo test`, so a fixed crash stays fixed without
//! libFuzzer. Each function panics when a property fails; returning means the input passed.
//!
//! What is checked, beyond "no panic, no hang":
//! - [`smtp_command`]: a refusal is a 5xx with a one-line text; an accepted address or
//!   hostname holds no CR, LF or NUL (it is written into outbound commands and logs).
//! - [`data_reader`]: the end of data is found at the same byte and the same body is kept
//!   however the input is split into reads; the end is always `<CRLF>.<CRLF>` (or `.<CRLF>`
//!   first); the stored body, dot-stuffed again for relaying, reads back as itself.
//! - [`outbound_reply`]: a reply is either a 2xx–5xx code with a one-line text or a made-up
//!   451 protocol error.
//! - [`config`] and [`shaping`]: a text either loads or gives errors, each at a `line:col`
//!   inside the text and naming the file.
//! - [`mta_sts_policy`]: a policy body (what any HTTPS server may send) is either refused or
//!   read into a well-formed policy — a known mode, `max_age` within RFC 8461's range, `mx`
//!   patterns in lower case with nothing but host name characters — whose patterns match
//!   the hosts they stand for; the TXT record reader on the same text, line by line, gives
//!   an id of 1-32 letters and digits or none.

use crate::ingress::command::parse_command;
use crate::ingress::data::{wire_form, DataReader};
use crate::ingress::session::MAX_COMMAND_LINE;
use crate::outbound::client::{ends_reply, parse_reply};
use smtp_proto::Request;

fn one_line(s: &str) -> bool {
    !s.contains(['\r', '\n', '\0'])
}

/// The SMTP command parser on one command line, as the session reads it.
pub fn smtp_command(data: &[u8]) {
    let mut line = match data.iter().position(|&b| b == b'\n') {
        Some(i) => data[..=i].to_vec(),
        None => [data, b"\r\n"].concat(),
    };
    line.truncate(MAX_COMMAND_LINE);
    match parse_command(&line) {
        Err((code, text)) => {
            assert!((500..600).contains(&code), "refusal {code}");
            assert!(one_line(&text) && text.len() < 200, "refusal text {text:?}");
        }
        Ok(Request::Mail { from }) => assert!(one_line(&from.address), "{:?}", from.address),
        Ok(Request::Rcpt { to }) => assert!(one_line(&to.address), "{:?}", to.address),
        Ok(Request::Ehlo { host } | Request::Helo { host }) => {
            assert!(one_line(&host), "{host:?}")
        }
        Ok(_) => {}
    }
}

/// The DATA reader on the bytes after `DATA`; the first byte picks the size limit and how
/// the rest is split into reads.
pub fn data_reader(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let max_size = if control & 0x80 != 0 {
        64 + usize::from(control & 0x3f) * 16
    } else {
        1 << 20
    };
    let mut whole = DataReader::new(max_size, 0);
    let end = whole.feed(input);

    let mut pieces = DataReader::new(max_size, 0);
    let mut pieces_end = None;
    let (mut at, mut seed) = (0, u32::from(control) | 1);
    while at < input.len() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = 1 + (seed >> 16) as usize % 17;
        let piece = &input[at..(at + n).min(input.len())];
        if let Some(k) = pieces.feed(piece) {
            pieces_end = Some(at + k);
            break;
        }
        at += piece.len();
    }
    assert_eq!(
        end, pieces_end,
        "end of data depends on how the input was split"
    );
    assert_eq!(whole.total(), pieces.total());
    if let Some(n) = end {
        let read = &input[..n];
        assert!(
            read == b".\r\n" || read.ends_with(b"\r\n.\r\n"),
            "ended on {:?}",
            String::from_utf8_lossy(&read[n.saturating_sub(8)..])
        );
    }
    let body = whole.finish();
    assert_eq!(
        body,
        pieces.finish(),
        "body depends on how the input was split"
    );

    if let (Some(_), Ok(body)) = (end, body) {
        let mut wire = wire_form(body.clone());
        wire.extend_from_slice(b".\r\n");
        let mut again = DataReader::new(wire.len(), 0);
        assert_eq!(
            again.feed(&wire),
            Some(wire.len()),
            "relayed form ends early or late"
        );
        let mut expected = body;
        if !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        assert_eq!(
            again.finish(),
            Ok(expected),
            "relayed form reads back differently"
        );
    }
}

/// The outbound client's reply reader on what a remote server sends: lines up to the one
/// that ends the reply, then parsed.
pub fn outbound_reply(data: &[u8]) {
    let mut raw = Vec::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        raw.extend_from_slice(line);
        if ends_reply(line) {
            break;
        }
    }
    let reply = parse_reply(&raw);
    assert!(one_line(&reply.text), "reply text {:?}", reply.text);
    if reply.internal {
        assert_eq!(reply.code, 451);
    } else {
        assert!((200..600).contains(&reply.code), "code {}", reply.code);
    }
}

/// Where an error says it is, against the text it is about.
fn check_position(e: &crate::config::ConfigError, name: &str, text: &str) {
    assert_eq!(e.file, name);
    let lines = text.split('\n').count();
    assert!(
        e.line >= 1 && e.line <= lines,
        "{e} (text has {lines} lines)"
    );
    let width = text
        .split('\n')
        .nth(e.line - 1)
        .map_or(0, |l| l.chars().count());
    assert!(
        e.col >= 1 && e.col <= width + 1,
        "{e} (line is {width} wide)"
    );
}

/// The config loader on a `switchyard.toml` text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let name = "fuzz.toml";
    match crate::config::load_str(text, name, std::path::Path::new("/nonexistent")) {
        Ok(loaded) => {
            let _ = loaded.config.queue.policies();
            let _ = loaded.shaping_files();
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                check_position(e, name, text);
            }
        }
    }
}

/// The shaping loader on a shaping file's text.
pub fn shaping(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let name = "fuzz-shaping.toml";
    match crate::shaping::load_texts(&[(name.to_string(), text.to_string())]) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                check_position(w, name, text);
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                check_position(e, name, text);
            }
        }
    }
}

/// The MTA-STS policy and TXT record readers on a text from a remote server.
pub fn mta_sts_policy(data: &[u8]) {
    use switchyard_actors::mta_sts::{parse_txt, StsMode, StsPolicy, MAX_AGE_LIMIT};
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = StsPolicy::parse("fuzz", &text) {
        assert!(p.max_age <= MAX_AGE_LIMIT, "max_age {}", p.max_age);
        assert!(p.mode == StsMode::None || !p.mx.is_empty(), "{p:?}");
        for m in &p.mx {
            let host_chars =
                |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
            let name = m.strip_prefix("*.").unwrap_or(m);
            assert!(!name.is_empty() && name.bytes().all(host_chars), "mx {m:?}");
            let alone = StsPolicy {
                mx: vec![m.clone()],
                ..p.clone()
            };
            match m.strip_prefix("*.") {
                Some(parent) => {
                    assert!(alone.mx_matches(&format!("a.{parent}")), "{m:?}");
                    assert!(!alone.mx_matches(parent), "{m:?}");
                    assert!(!alone.mx_matches(&format!("a.b.{parent}")), "{m:?}");
                }
                None => assert!(alone.mx_matches(&m.to_ascii_uppercase()), "{m:?}"),
            }
        }
    }
    let records: Vec<String> = text.lines().map(str::to_string).collect();
    if let Ok(Some(id)) = parse_txt(&records) {
        assert!((1..=32).contains(&id.len()), "id {id:?}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "id {id:?}");
    }
}
