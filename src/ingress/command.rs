//! Parsing one SMTP command line into a request, or into the reply that refuses it.
//!
//! `smtp-proto` does the parsing; this adds what it lacks (address literals such as
//! `user@[127.0.0.1]`, RFC 5321 §4.1.3) and maps its errors to reply codes. It is a pure
//! function of the line, which is what the `smtp_command` fuzz target drives.

use smtp_proto::{Error as ParseError, Request};

/// The request on `line` (CRLF included), or the reply code and text that refuse it.
pub fn parse_command(line: &[u8]) -> Result<Request<String>, (u16, String)> {
    // smtp-proto does not take address literals: parse with a placeholder domain and put
    // the literal back.
    let literal = split_address_literal(line);
    let line = literal.as_ref().map(|(l, _)| l.as_slice()).unwrap_or(line);
    let request = Request::parse(&mut line.iter())
        .map_err(refusal)?
        .into_owned();
    match &request {
        Request::Ehlo { host } | Request::Helo { host } if has_controls(host) => {
            return Err((
                501,
                "5.5.4 Syntax: control characters in the hostname".into(),
            ))
        }
        Request::Mail { from } if has_controls(&from.address) => {
            return Err((501, "5.1.7 Invalid sender address".into()))
        }
        Request::Rcpt { to } if has_controls(&to.address) => {
            return Err((501, "5.1.3 Invalid recipient address".into()))
        }
        _ => {}
    }
    Ok(match (request, literal) {
        (Request::Rcpt { mut to }, Some((_, lit))) => {
            to.address = to.address.replace(LITERAL_PLACEHOLDER, &lit);
            Request::Rcpt { to }
        }
        (Request::Mail { mut from }, Some((_, lit))) => {
            from.address = from.address.replace(LITERAL_PLACEHOLDER, &lit);
            Request::Mail { from }
        }
        (r, _) => r,
    })
}

/// NUL, CR, LF or another ASCII control character: smtp-proto lets them through in a
/// hostname, but echoed in a reply or written into a log or an outbound command they are
/// trouble, and no real name has them (found by the `smtp_command` fuzz target).
fn has_controls(s: &str) -> bool {
    s.chars().any(|c| c.is_ascii_control())
}

/// A client's parameter as echoed in a reply: at most 40 characters, no controls (a NUL
/// echoed back was found by the `smtp_command` fuzz target).
fn shown(param: &str) -> String {
    param.chars().filter(|c| !c.is_control()).take(40).collect()
}

/// The reply to a line smtp-proto could not parse.
fn refusal(e: ParseError) -> (u16, String) {
    match e {
        ParseError::UnknownCommand => (500, "5.5.1 Unknown command".to_string()),
        ParseError::InvalidSenderAddress => (501, "5.1.7 Invalid sender address".into()),
        ParseError::InvalidRecipientAddress => (501, "5.1.3 Invalid recipient address".into()),
        ParseError::SyntaxError { syntax } => (501, format!("5.5.4 Syntax: {syntax}")),
        ParseError::InvalidParameter { param } => {
            (501, format!("5.5.4 Invalid parameter {}", shown(param)))
        }
        ParseError::UnsupportedParameter { param } => (
            555,
            format!("5.5.4 Unsupported parameter {}", shown(&param)),
        ),
        _ => (500, "5.5.2 Syntax error".into()),
    }
}

/// Stands in for an address literal while smtp-proto parses the command.
const LITERAL_PLACEHOLDER: &str = "address-literal.invalid";

/// If `line` is a MAIL/RCPT command whose address has a valid address-literal domain, the
/// line with the literal replaced by [`LITERAL_PLACEHOLDER`], and the literal.
fn split_address_literal(line: &[u8]) -> Option<(Vec<u8>, String)> {
    let head = line.get(..5)?;
    if !head.eq_ignore_ascii_case(b"RCPT ") && !head.eq_ignore_ascii_case(b"MAIL ") {
        return None;
    }
    let start = line.windows(2).position(|w| w == b"@[")? + 1;
    let len = line[start..].iter().position(|&b| b == b']')? + 1;
    if line.get(start + len) != Some(&b'>') {
        return None;
    }
    let literal = std::str::from_utf8(&line[start..start + len]).ok()?;
    let inner = &literal[1..literal.len() - 1];
    let valid = match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    };
    if !valid {
        return None;
    }
    let mut rewritten = Vec::with_capacity(line.len());
    rewritten.extend_from_slice(&line[..start]);
    rewritten.extend_from_slice(LITERAL_PLACEHOLDER.as_bytes());
    rewritten.extend_from_slice(&line[start + len..]);
    Some((rewritten, literal.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_literals() {
        let (line, lit) =
            split_address_literal(b"RCPT TO:<nobody@[127.0.0.1]> NOTIFY=NEVER\r\n").unwrap();
        assert_eq!(lit, "[127.0.0.1]");
        assert_eq!(
            line,
            b"RCPT TO:<nobody@address-literal.invalid> NOTIFY=NEVER\r\n"
        );
        assert!(split_address_literal(b"RCPT TO:<a@[IPv6:::1]>\r\n").is_some());
        assert!(split_address_literal(b"RCPT TO:<a@[999.1.1.1]>\r\n").is_none());
        assert!(split_address_literal(b"RCPT TO:<a@example.com>\r\n").is_none());
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(parse_command(b"EHLO cl\x01\0x\r\n").unwrap_err().0, 501);
        assert_eq!(parse_command(b"HELO a\x7fb\r\n").unwrap_err().0, 501);
        assert!(parse_command(b"EHLO client.example\r\n").is_ok());
    }
}
