//! `switchyard sink`: a fast receiving SMTP server for tests and benchmarks that can answer
//! like real providers do.
//!
//! Without `--responses` it accepts everything. With it, each recipient's fate is chosen by
//! the responses file: first switchyard's `[[rule]]` entries, in order (keyed on the sender's
//! domain, the recipient's domain, the client's IP and a chance, optionally answering only
//! `limit` times), then KumoMTA's `responses.toml` sections — `[default]` and
//! `[domain."d"]` percentages of bounces and deferrals, with the replies to pick from in
//! `[[bounce."d"]]` and `[[defer."d"]]`. A failure is given after the final dot (or at RCPT
//! with `stage = "rcpt"`). `--record` appends one JSON line per transaction, which tests
//! read to see what arrived, from which source IP, when, and how many sessions were open.

use anyhow::Context;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest command line read; the rest of a longer one is skipped.
const MAX_LINE: usize = 64 * 1024;

/// How the sink runs.
pub struct SinkOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Replies to give; `None` accepts everything.
    pub responses: Option<Responses>,
    /// Where to append one JSON line per transaction.
    pub record: Option<PathBuf>,
    /// Banner and EHLO name.
    pub hostname: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Chances {
    #[serde(default)]
    bounce: f64,
    #[serde(default)]
    defer: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Canned {
    code: u16,
    msg: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    sender_domain: Option<String>,
    recipient_domain: Option<String>,
    peer_ip: Option<String>,
    chance: Option<f64>,
    limit: Option<u64>,
    stage: Option<String>,
    code: u16,
    msg: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponsesDoc {
    default: Option<Chances>,
    #[serde(default)]
    domain: HashMap<String, Chances>,
    #[serde(default)]
    bounce: HashMap<String, Vec<Canned>>,
    #[serde(default)]
    defer: HashMap<String, Vec<Canned>>,
    #[serde(default)]
    rule: Vec<RuleDoc>,
}

#[derive(Debug)]
struct Rule {
    sender_domain: Option<String>,
    recipient_domain: Option<String>,
    peer: Option<IpNet>,
    chance: f64,
    limit: Option<u64>,
    used: AtomicU64,
    at_rcpt: bool,
    reply: (u16, String),
}

/// A parsed responses file.
#[derive(Debug)]
pub struct Responses {
    default: (f64, f64),
    domains: HashMap<String, (f64, f64)>,
    bounces: HashMap<String, Vec<Canned>>,
    defers: HashMap<String, Vec<Canned>>,
    rules: Vec<Rule>,
}

/// One recipient's fate: the reply, and whether it is given at RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Reply code.
    pub code: u16,
    /// Reply text after the code.
    pub text: String,
    /// Given at RCPT TO instead of after the data.
    pub at_rcpt: bool,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

impl Responses {
    /// Parse a responses file; an error reads `line:col: message`.
    pub fn parse(text: &str) -> Result<Responses, String> {
        let doc: ResponsesDoc = toml::from_str(text).map_err(|e| {
            let (line, col) = line_col(text, e.span().map(|s| s.start).unwrap_or(0));
            format!("{line}:{col}: {}", e.message().trim())
        })?;
        let mut rules = Vec::new();
        for (i, r) in doc.rule.into_iter().enumerate() {
            let peer = match &r.peer_ip {
                None => None,
                Some(p) => Some(
                    p.parse::<IpNet>()
                        .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            format!("rule {}: peer_ip {p:?} is not an address or CIDR", i + 1)
                        })?,
                ),
            };
            let at_rcpt = match r.stage.as_deref() {
                None | Some("data") => false,
                Some("rcpt") => true,
                Some(other) => {
                    return Err(format!(
                        "rule {}: stage {other:?} must be \"rcpt\" or \"data\"",
                        i + 1
                    ))
                }
            };
            rules.push(Rule {
                sender_domain: r.sender_domain.map(|d| d.to_ascii_lowercase()),
                recipient_domain: r.recipient_domain.map(|d| d.to_ascii_lowercase()),
                peer,
                chance: r.chance.unwrap_or(100.0),
                limit: r.limit,
                used: AtomicU64::new(0),
                at_rcpt,
                reply: (r.code, r.msg),
            });
        }
        let chances = |c: &Chances| (c.bounce, c.defer);
        Ok(Responses {
            default: doc.default.as_ref().map(chances).unwrap_or((0.0, 0.0)),
            domains: doc
                .domain
                .iter()
                .map(|(d, c)| (d.to_ascii_lowercase(), chances(c)))
                .collect(),
            bounces: lower_keys(doc.bounce),
            defers: lower_keys(doc.defer),
            rules,
        })
    }

    /// The reply for one recipient. `roll` gives uniform numbers in [0, 100).
    pub fn choose(
        &self,
        sender_domain: &str,
        recipient_domain: &str,
        peer: IpAddr,
        roll: &mut dyn FnMut() -> f64,
    ) -> Choice {
        let (sender_domain, recipient_domain) = (
            sender_domain.to_ascii_lowercase(),
            recipient_domain.to_ascii_lowercase(),
        );
        for r in &self.rules {
            let applies = r
                .sender_domain
                .as_deref()
                .is_none_or(|d| d == sender_domain)
                && r.recipient_domain
                    .as_deref()
                    .is_none_or(|d| d == recipient_domain)
                && r.peer.is_none_or(|n| n.contains(&peer))
                && roll() < r.chance;
            if !applies {
                continue;
            }
            // Count the answer only if the limit allows it.
            let within = r.limit.is_none_or(|limit| {
                r.used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < limit).then_some(n + 1)
                    })
                    .is_ok()
            });
            if within {
                return Choice {
                    code: r.reply.0,
                    text: r.reply.1.clone(),
                    at_rcpt: r.at_rcpt,
                };
            }
        }
        let (bounce, defer) = self
            .domains
            .get(&recipient_domain)
            .copied()
            .unwrap_or(self.default);
        let pick =
            |list: Option<&Vec<Canned>>, roll: &mut dyn FnMut() -> f64, fallback: (u16, &str)| {
                match list.filter(|l| !l.is_empty()) {
                    Some(l) => {
                        let i = ((roll() / 100.0) * l.len() as f64) as usize;
                        let c = &l[i.min(l.len() - 1)];
                        (c.code, c.msg.clone())
                    }
                    None => (fallback.0, fallback.1.to_string()),
                }
            };
        let (code, text) = if roll() < bounce {
            pick(
                self.bounces.get(&recipient_domain),
                roll,
                (550, "5.1.1 No such user (sink)"),
            )
        } else if roll() < defer {
            pick(
                self.defers.get(&recipient_domain),
                roll,
                (451, "4.3.0 Temporary failure (sink)"),
            )
        } else {
            (250, "2.0.0 Ok (sink)".to_string())
        };
        Choice {
            code,
            text,
            at_rcpt: false,
        }
    }
}

fn lower_keys<V>(m: HashMap<String, V>) -> HashMap<String, V> {
    m.into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// Shared by every connection.
struct State {
    /// Sessions open now (recorded with each transaction, to see concurrency).
    open: AtomicU64,
    hostname: String,
    responses: Option<Responses>,
    record: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl State {
    fn record(&self, line: serde_json::Value) {
        if let Some(w) = &self.record {
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    }
}

/// Bind, say so on stdout, and serve until the process ends.
pub async fn run(options: SinkOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let record = match &options.record {
        Some(path) => Some(Mutex::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ))),
        None => None,
    };
    let state = Arc::new(State {
        open: AtomicU64::new(0),
        hostname: options.hostname,
        responses: options.responses,
        record,
    });
    println!("sink listening on {}", listener.local_addr()?);
    let _ = std::io::stdout().flush();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            state.open.fetch_add(1, Ordering::Relaxed);
            let _ = session(stream, peer.ip(), &state).await;
            state.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Read one line (without CRLF) into `line`; `false` at end of stream. A line longer than
/// [`MAX_LINE`] is cut there and the rest skipped.
async fn read_line(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(!line.is_empty());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        r.consume(take);
        if done {
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            return Ok(true);
        }
    }
}

fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// The address inside `FROM:<...>` / `TO:<...>`, parameters ignored.
fn path_arg(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

async fn session(stream: TcpStream, peer: IpAddr, state: &State) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, read);
    let mut w = tokio::io::BufWriter::new(write);
    w.write_all(format!("220 {} ESMTP switchyard sink\r\n", state.hostname).as_bytes())
        .await?;
    w.flush().await?;
    let mut line = Vec::new();
    let mut ehlo = String::new();
    let mut sender: Option<String> = None;
    let mut rcpts: Vec<(String, Choice)> = Vec::new();
    loop {
        if !read_line(&mut r, &mut line).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let (verb, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let reply: String = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                ehlo = rest.trim().to_string();
                format!(
                    "250-{}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES",
                    state.hostname
                )
            }
            "HELO" => {
                ehlo = rest.trim().to_string();
                format!("250 {}", state.hostname)
            }
            "MAIL" => match rest.get(..5).filter(|p| p.eq_ignore_ascii_case("FROM:")) {
                Some(_) => match path_arg(&rest[5..]) {
                    Some(a) => {
                        sender = Some(a);
                        rcpts.clear();
                        "250 2.1.0 Ok".into()
                    }
                    None => "501 5.5.4 Syntax: MAIL FROM:<address>".into(),
                },
                None => "501 5.5.4 Syntax: MAIL FROM:<address>".into(),
            },
            "RCPT" => match (
                &sender,
                rest.get(..3).filter(|p| p.eq_ignore_ascii_case("TO:")),
            ) {
                (None, _) => "503 5.5.1 MAIL first".into(),
                (Some(_), None) => "501 5.5.4 Syntax: RCPT TO:<address>".into(),
                (Some(from), Some(_)) => match path_arg(&rest[3..]) {
                    None => "501 5.5.4 Syntax: RCPT TO:<address>".into(),
                    Some(rcpt) => {
                        let choice = match &state.responses {
                            Some(resp) => {
                                resp.choose(domain_of(from), domain_of(&rcpt), peer, &mut || {
                                    rand::random::<f64>() * 100.0
                                })
                            }
                            None => Choice {
                                code: 250,
                                text: "2.0.0 Ok (sink)".into(),
                                at_rcpt: false,
                            },
                        };
                        if choice.at_rcpt && choice.code >= 300 {
                            state.record(serde_json::json!({
                                "time": now_secs(), "peer": peer.to_string(), "ehlo": ehlo,
                                "mail_from": from, "rcpts": [rcpt], "code": choice.code,
                                "text": choice.text, "size": 0,
                                "open": state.open.load(Ordering::Relaxed),
                            }));
                            format!("{} {}", choice.code, choice.text)
                        } else {
                            rcpts.push((rcpt, choice));
                            "250 2.1.5 Ok".into()
                        }
                    }
                },
            },
            "DATA" => {
                if rcpts.is_empty() {
                    "554 5.5.1 No valid recipients".into()
                } else {
                    w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    w.flush().await?;
                    let mut size = 0u64;
                    loop {
                        if !read_line(&mut r, &mut line).await? {
                            return Ok(());
                        }
                        if line == b"." {
                            break;
                        }
                        size += line.len() as u64 + 2;
                    }
                    let failed = rcpts.iter().find(|(_, c)| c.code >= 300).map(|(_, c)| c);
                    let (code, text) = match failed {
                        Some(c) => (c.code, c.text.clone()),
                        None => (250, "2.0.0 Ok (sink)".to_string()),
                    };
                    state.record(serde_json::json!({
                        "time": now_secs(), "peer": peer.to_string(), "ehlo": ehlo,
                        "mail_from": sender.as_deref().unwrap_or(""),
                        "rcpts": rcpts.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
                        "code": code, "text": text, "size": size,
                        "open": state.open.load(Ordering::Relaxed),
                    }));
                    sender = None;
                    rcpts.clear();
                    format!("{code} {text}")
                }
            }
            "RSET" => {
                sender = None;
                rcpts.clear();
                "250 2.0.0 Ok".into()
            }
            "NOOP" => "250 2.0.0 Ok".into(),
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                w.flush().await?;
                return Ok(());
            }
            _ => "502 5.5.2 Command not recognized".into(),
        };
        w.write_all(reply.as_bytes()).await?;
        w.write_all(b"\r\n").await?;
        // Pipelining: answer in one write once the client's buffered commands are read.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn reads_kumomtas_responses_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/kumomta/responses.toml"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipped: {path} is not here");
            return;
        };
        let r = Responses::parse(&text).unwrap();
        let bounce = r.choose("a.example", "aol.com", LOCAL, &mut || 0.0);
        assert_eq!(bounce.code, 550);
        let ok = r.choose("a.example", "aol.com", LOCAL, &mut || 99.9);
        assert_eq!(ok.code, 250);
    }

    #[test]
    fn rules_match_sender_recipient_peer_and_limit() {
        let r = Responses::parse(
            "[[rule]]\nsender_domain = \"bad.example\"\nrecipient_domain = \"gmail.test\"\nlimit = 1\ncode = 550\nmsg = \"5.7.26 no auth\"\n\n[[rule]]\npeer_ip = \"127.0.0.2/31\"\nstage = \"rcpt\"\ncode = 421\nmsg = \"4.7.0 [TSS04] deferred\"\n",
        )
        .unwrap();
        let two: IpAddr = "127.0.0.3".parse().unwrap();
        let mut roll = || 50.0;
        assert_eq!(
            r.choose("good.example", "gmail.test", LOCAL, &mut roll)
                .code,
            250
        );
        let c = r.choose("Bad.Example", "gmail.test", LOCAL, &mut roll);
        assert_eq!((c.code, c.text.as_str()), (550, "5.7.26 no auth"));
        assert_eq!(
            r.choose("bad.example", "gmail.test", LOCAL, &mut roll).code,
            250,
            "limit 1"
        );
        let c = r.choose("x.example", "y.test", two, &mut roll);
        assert_eq!((c.code, c.at_rcpt), (421, true));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_position() {
        let e =
            Responses::parse("[[rule]]\ncode = 550\nmsg = \"x\"\nsender = \"a\"\n").unwrap_err();
        assert!(e.starts_with("4:1:") && e.contains("sender"), "{e}");
        assert!(Responses::parse("[[rule]]\npeer_ip = \"nope\"\ncode = 1\nmsg = \"\"\n").is_err());
    }
}
