//! `switchyard sink`: a fast receiving SMTP server for tests and benchmarks that can answer
//! the way real mailbox providers do — and misbehave the way real receivers do.
//!
//! The sink speaks enough ESMTP for an MTA to deliver to it (EHLO with PIPELINING, MAIL,
//! RCPT, DATA, RSET, NOOP, QUIT, and STARTTLS when given a certificate), throws every
//! message away, and answers as a [`Responses`] file says:
//!
//! 1. `[[rule]]` entries, checked first and in file order. A rule can match on the sender's
//!    domain, the recipient's domain and the client's IP (our egress source), fires with a
//!    `chance`, may answer only `limit` times in the sink's life, and answers at its
//!    `stage`: `connect` (instead of the greeting), `ehlo`, `mail`, `rcpt`, `data_command`
//!    (the reply to DATA itself: `354` there goes ahead even when no recipient was
//!    accepted, as RFC 2920 allows) or `data` (after the final dot; the default). Its
//!    `action` is `reply` (the default: `code` and `msg`, several lines for a multi-line
//!    reply), `drop` (close the connection instead of answering; at `data`, in the middle
//!    of the message) or `hang` (never answer). `delay = "2s"` answers late; `raw = true`
//!    writes `msg` as it is, a malformed reply. A `421` closes the connection after it.
//! 2. KumoMTA's `responses.toml` sections, by recipient domain: `[default]` and
//!    `[domain."d"]` give the percent chances of a bounce and of a deferral, and
//!    `[[bounce."d"]]` / `[[defer."d"]]` list the replies to pick from at random.
//! 3. Otherwise `250 2.0.0 Ok (sink)`.
//!
//! Without a responses file every recipient is accepted.
//!
//! With `--record FILE` the sink appends one JSON line per finished transaction (and per
//! recipient refused at RCPT): when, from which IP, EHLO name, whether over TLS, envelope,
//! the reply given, the size of the data and how many sessions were open. Tests read it to
//! see what arrived.
//!
//! Speed matters, since benchmarks push tens of thousands of messages through it: replies are
//! collected in a buffer and written only when the client has nothing more pipelined, and
//! message data is streamed and discarded, never held in memory.

use anyhow::Context;
use ipnet::IpNet;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Longest command line kept; the rest of a longer one is skipped and answered with `500`.
const MAX_LINE: usize = 64 * 1024;

/// Size of the read buffer of a connection (pipelined commands and message data).
const READ_BUFFER: usize = 64 * 1024;

/// The reply to every recipient nothing else decides about.
const OK_TEXT: &str = "2.0.0 Ok (sink)";
/// The bounce of a domain with a bounce chance but no `[[bounce."d"]]` replies.
const GENERIC_BOUNCE: (u16, &str) = (550, "5.1.1 No such user (sink)");
/// The deferral of a domain with a defer chance but no `[[defer."d"]]` replies.
const GENERIC_DEFER: (u16, &str) = (451, "4.3.0 Temporary failure (sink)");

/// How the sink runs.
pub struct SinkOptions {
    /// Address to listen on (port 0 picks a free one; `run` prints the one it got).
    pub listen: SocketAddr,
    /// How to answer recipients; `None` accepts everything.
    pub responses: Option<Responses>,
    /// File to append one JSON line per transaction to.
    pub record: Option<PathBuf>,
    /// Name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Offer STARTTLS with this certificate ([`tls_config`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A server TLS config from PEM files: the certificate chain and its private key.
pub fn tls_config(certificate: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", certificate.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------
// The responses file, as written.

/// A percent chance, 0 to 100.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "f64")]
struct Percent(f64);

impl TryFrom<f64> for Percent {
    type Error = String;
    fn try_from(p: f64) -> Result<Self, String> {
        if (0.0..=100.0).contains(&p) {
            Ok(Percent(p))
        } else {
            Err(format!("{p} is not a percentage from 0 to 100"))
        }
    }
}

/// An SMTP reply code, 200 to 599.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "u16")]
struct Code(u16);

impl TryFrom<u16> for Code {
    type Error = String;
    fn try_from(code: u16) -> Result<Self, String> {
        if (200..600).contains(&code) {
            Ok(Code(code))
        } else {
            Err(format!("{code} is not an SMTP reply code (200 to 599)"))
        }
    }
}

/// A rule's `peer_ip`: one address or a CIDR network.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct PeerMatch(IpNet);

impl TryFrom<String> for PeerMatch {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(PeerMatch)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
    }
}

/// When a rule's reply is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    /// Instead of the greeting.
    Connect,
    /// The reply to EHLO.
    Ehlo,
    /// The reply to MAIL.
    Mail,
    /// At RCPT TO: the recipient is refused there (when the reply is not 2xx).
    Rcpt,
    /// The reply to the DATA command itself.
    DataCommand,
    /// After the final dot of DATA; RCPT gets `250`.
    #[default]
    Data,
}

/// What a rule does at its stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    /// Answer with `code` and `msg`.
    #[default]
    Reply,
    /// Close the connection instead (at `data`: in the middle of the message).
    Drop,
    /// Never answer; wait for the client to give up.
    Hang,
}

/// A rule's `delay`: a duration such as "2s".
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct Delay(Duration);

impl TryFrom<String> for Delay {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Delay)
            .map_err(|e| format!("{s:?} is not a duration ({e})"))
    }
}

/// `[default]` and `[domain."d"]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChancesDoc {
    bounce: Option<Percent>,
    defer: Option<Percent>,
}

/// One entry of `[[bounce."d"]]` or `[[defer."d"]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CannedDoc {
    code: Code,
    msg: String,
}

/// One `[[rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    sender_domain: Option<String>,
    recipient_domain: Option<String>,
    peer_ip: Option<PeerMatch>,
    chance: Option<Percent>,
    limit: Option<u64>,
    #[serde(default)]
    stage: Stage,
    #[serde(default)]
    action: Action,
    delay: Option<Delay>,
    #[serde(default)]
    raw: bool,
    code: Option<Code>,
    #[serde(default)]
    msg: String,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponsesDoc {
    default: Option<ChancesDoc>,
    #[serde(default)]
    domain: HashMap<String, ChancesDoc>,
    #[serde(default)]
    bounce: HashMap<String, Vec<CannedDoc>>,
    #[serde(default)]
    defer: HashMap<String, Vec<CannedDoc>>,
    #[serde(default)]
    rule: Vec<RuleDoc>,
}

// ---------------------------------------------------------------------------------------
// The responses file, ready to answer.

/// Percent chances of a bounce and of a deferral.
#[derive(Debug, Clone, Copy, Default)]
struct Chances {
    bounce: f64,
    defer: f64,
}

impl From<ChancesDoc> for Chances {
    fn from(c: ChancesDoc) -> Self {
        Chances {
            bounce: c.bounce.map_or(0.0, |p| p.0),
            defer: c.defer.map_or(0.0, |p| p.0),
        }
    }
}

/// A `[[rule]]`; domains are lowercase.
#[derive(Debug)]
struct Rule {
    sender_domain: Option<String>,
    recipient_domain: Option<String>,
    peer: Option<IpNet>,
    chance: f64,
    limit: Option<u64>,
    /// Times this rule has answered (counted only when it has a limit).
    used: AtomicU64,
    stage: Stage,
    action: Action,
    delay: Option<Duration>,
    raw: bool,
    code: u16,
    text: String,
}

impl Rule {
    fn matches(&self, sender_domain: &str, recipient_domain: &str, peer: IpAddr) -> bool {
        self.sender_domain
            .as_deref()
            .is_none_or(|d| d.eq_ignore_ascii_case(sender_domain))
            && self
                .recipient_domain
                .as_deref()
                .is_none_or(|d| d.eq_ignore_ascii_case(recipient_domain))
            && self.peer.is_none_or(|net| net.contains(&peer))
    }

    /// Take one of the rule's answers; `false` once its limit is used up.
    fn take_one(&self) -> bool {
        match self.limit {
            None => true,
            Some(limit) => self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                })
                .is_ok(),
        }
    }
}

/// How to answer recipients: a parsed responses file (see the module doc for the format).
///
/// Shared by every connection of the sink; rule `limit` counters live inside, so `choose`
/// takes `&self`.
#[derive(Debug)]
pub struct Responses {
    rules: Vec<Rule>,
    default: Chances,
    /// `[domain."d"]`, keys lowercase.
    domains: HashMap<String, Chances>,
    /// `[[bounce."d"]]`, keys lowercase.
    bounces: HashMap<String, Vec<(u16, String)>>,
    /// `[[defer."d"]]`, keys lowercase.
    defers: HashMap<String, Vec<(u16, String)>>,
}

/// An answer: the reply, when it is given and how.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    code: u16,
    text: String,
    stage: Stage,
    action: Action,
    delay: Option<Duration>,
    raw: bool,
}

impl Decision {
    fn ok() -> Decision {
        Decision::reply(250, OK_TEXT.to_string(), Stage::Data)
    }

    fn reply(code: u16, text: String, stage: Stage) -> Decision {
        Decision {
            code,
            text,
            stage,
            action: Action::Reply,
            delay: None,
            raw: false,
        }
    }

    fn of(rule: &Rule) -> Decision {
        Decision {
            code: rule.code,
            text: rule.text.clone(),
            stage: rule.stage,
            action: rule.action,
            delay: rule.delay,
            raw: rule.raw,
        }
    }

    fn is_failure(&self) -> bool {
        !(200..300).contains(&self.code)
    }
}

impl Responses {
    /// Parse a responses file. Errors read `line:col: message`, pointing into `text`; an
    /// unknown key is an error naming it.
    pub fn parse(text: &str) -> Result<Responses, String> {
        let doc: ResponsesDoc = toml::from_str(text).map_err(|e| {
            let (line, col) = line_col(text, e.span().map_or(0, |s| s.start));
            format!("{line}:{col}: {}", e.message().trim_end())
        })?;
        let mut rules = Vec::new();
        for (i, r) in doc.rule.into_iter().enumerate() {
            let code = match (r.code, r.action, r.raw) {
                (Some(c), _, _) => c.0,
                (None, Action::Reply, false) => {
                    return Err(format!(
                        "rule {}: `code` is required unless the action is drop or hang, or the reply is raw",
                        i + 1
                    ))
                }
                (None, _, _) => 0,
            };
            rules.push(Rule {
                sender_domain: r.sender_domain.map(|d| d.to_ascii_lowercase()),
                recipient_domain: r.recipient_domain.map(|d| d.to_ascii_lowercase()),
                peer: r.peer_ip.map(|p| p.0),
                chance: r.chance.map_or(100.0, |p| p.0),
                limit: r.limit,
                used: AtomicU64::new(0),
                stage: r.stage,
                action: r.action,
                delay: r.delay.map(|d| d.0),
                raw: r.raw,
                code,
                text: r.msg,
            });
        }
        Ok(Responses {
            rules,
            default: doc.default.map(Chances::from).unwrap_or_default(),
            domains: doc
                .domain
                .into_iter()
                .map(|(d, c)| (d.to_ascii_lowercase(), c.into()))
                .collect(),
            bounces: canned_by_domain(doc.bounce),
            defers: canned_by_domain(doc.defer),
        })
    }

    /// The reply for one recipient: `(code, text after the code)`, e.g.
    /// `(550, "5.7.26 This message ...")`. `roll` returns uniform numbers in `[0, 100)`
    /// (pass a constant for deterministic tests). Whether a rule's reply is given at RCPT or
    /// after the data is the server's business and not part of the answer.
    pub fn choose(
        &self,
        sender_domain: &str,
        recipient_domain: &str,
        peer: IpAddr,
        roll: &mut dyn FnMut() -> f64,
    ) -> (u16, String) {
        let d = self.decide(sender_domain, recipient_domain, peer, roll);
        (d.code, d.text)
    }

    /// The first rule of `stage` (connect, ehlo, mail or data_command) that fires, if any.
    fn rule_at(
        &self,
        stage: Stage,
        sender_domain: &str,
        peer: IpAddr,
        roll: &mut dyn FnMut() -> f64,
    ) -> Option<Decision> {
        let peer = peer.to_canonical();
        self.rules
            .iter()
            .filter(|r| r.stage == stage && r.recipient_domain.is_none())
            .find(|r| r.matches(sender_domain, "", peer) && roll() < r.chance && r.take_one())
            .map(Decision::of)
    }

    /// [`Responses::choose`] with the stage of the reply (rules of the rcpt and data stages,
    /// then the chances).
    fn decide(
        &self,
        sender_domain: &str,
        recipient_domain: &str,
        peer: IpAddr,
        roll: &mut dyn FnMut() -> f64,
    ) -> Decision {
        let peer = peer.to_canonical();
        for rule in &self.rules {
            if matches!(rule.stage, Stage::Rcpt | Stage::Data)
                && rule.matches(sender_domain, recipient_domain, peer)
                && roll() < rule.chance
                && rule.take_one()
            {
                return Decision::of(rule);
            }
        }
        let domain = lowercase(recipient_domain);
        let chances = self
            .domains
            .get(domain.as_ref())
            .copied()
            .unwrap_or(self.default);
        let (code, text) = if roll() < chances.bounce {
            pick(self.bounces.get(domain.as_ref()), roll, GENERIC_BOUNCE)
        } else if roll() < chances.defer {
            pick(self.defers.get(domain.as_ref()), roll, GENERIC_DEFER)
        } else {
            return Decision::ok();
        };
        Decision::reply(code, text, Stage::Data)
    }
}

/// One reply of `list` at random, or `generic` when there is none.
fn pick(
    list: Option<&Vec<(u16, String)>>,
    roll: &mut dyn FnMut() -> f64,
    generic: (u16, &str),
) -> (u16, String) {
    match list.filter(|l| !l.is_empty()) {
        Some(l) => {
            let i = ((roll() / 100.0) * l.len() as f64) as usize;
            l[i.min(l.len() - 1)].clone()
        }
        None => (generic.0, generic.1.to_string()),
    }
}

/// `[[bounce."d"]]` / `[[defer."d"]]` keyed by lowercase domain (lists of domains that
/// differ only in case are merged).
fn canned_by_domain(m: HashMap<String, Vec<CannedDoc>>) -> HashMap<String, Vec<(u16, String)>> {
    let mut out: HashMap<String, Vec<(u16, String)>> = HashMap::new();
    for (domain, list) in m {
        out.entry(domain.to_ascii_lowercase())
            .or_default()
            .extend(list.into_iter().map(|c| (c.code.0, c.msg)));
    }
    out
}

/// `s` in lowercase, copying only when it has uppercase letters.
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset)];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

// ---------------------------------------------------------------------------------------
// The server.

/// What every connection shares.
struct Shared {
    hostname: String,
    responses: Option<Responses>,
    record: Option<Mutex<io::BufWriter<std::fs::File>>>,
    /// Sessions open now (recorded with each transaction, so tests can see concurrency).
    open: AtomicU64,
    tls: Option<TlsAcceptor>,
}

/// One record line (see the module doc).
struct Transaction<'a> {
    peer: IpAddr,
    ehlo: &'a str,
    tls: bool,
    mail_from: &'a str,
    rcpts: &'a [String],
    code: u16,
    text: &'a str,
    size: u64,
}

impl Shared {
    /// Append `t` to the record file, if there is one, and flush it.
    fn record(&self, t: Transaction<'_>) {
        let Some(file) = &self.record else { return };
        let line = serde_json::json!({
            "time": now_secs(),
            "peer": t.peer.to_string(),
            "ehlo": t.ehlo,
            "tls": t.tls,
            "mail_from": t.mail_from,
            "rcpts": t.rcpts,
            "code": t.code,
            "text": t.text,
            "size": t.size,
            "open": self.open.load(Ordering::Relaxed),
        });
        let mut w = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(w, "{line}").and_then(|()| w.flush()) {
            tracing::warn!("cannot write the sink record: {e}");
        }
    }

    /// A rule of `stage`, if one fires.
    fn rule_at(&self, stage: Stage, sender_domain: &str, peer: IpAddr) -> Option<Decision> {
        self.responses
            .as_ref()?
            .rule_at(stage, sender_domain, peer, &mut roll)
    }
}

fn roll() -> f64 {
    rand::random::<f64>() * 100.0
}

/// Bind `options.listen`, print `sink listening on ADDR` to stdout, and serve until the
/// process ends. Errors only when it cannot listen or open the record file.
pub async fn run(options: SinkOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let record = match &options.record {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            Some(Mutex::new(io::BufWriter::new(file)))
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        hostname: options.hostname,
        responses: options.responses,
        record,
        open: AtomicU64::new(0),
        tls: options.tls.map(TlsAcceptor::from),
    });
    let addr = listener.local_addr()?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "sink listening on {addr}")?;
    stdout.flush()?;
    drop(stdout);
    serve(listener, shared).await
}

/// Accept connections forever, one task each.
async fn serve(listener: TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("sink: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.open.fetch_add(1, Ordering::Relaxed);
            // A broken connection just ends its session.
            if let Err(e) = session(stream, peer.ip().to_canonical(), &shared).await {
                tracing::debug!("sink: session with {peer} ended: {e}");
            }
            shared.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A connection's bytes: plain TCP, or TLS after STARTTLS.
enum SinkStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for SinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SinkStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SinkStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SinkStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SinkStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SinkStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SinkStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SinkStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SinkStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What reading a command line gave.
enum Line {
    /// A line, without its line ending, is in the buffer.
    Complete,
    /// The line was longer than [`MAX_LINE`]; it was skipped.
    TooLong,
    /// The client closed the connection.
    Eof,
}

/// What the session does after an answer.
#[derive(PartialEq, Eq)]
enum Then {
    Continue,
    Close,
}

/// A client connection: buffered input, and replies waiting to be written.
struct Conn {
    io: BufReader<SinkStream>,
    /// Replies not yet written: they go out when the client has nothing more pipelined.
    out: Vec<u8>,
}

impl Conn {
    /// Queue a reply; text with several lines becomes a multi-line reply.
    fn reply(&mut self, code: u16, text: &str) {
        let mut lines = text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            // Writing to a Vec cannot fail.
            let _ = write!(self.out, "{code}{sep}{line}\r\n");
        }
    }

    /// Give a rule's answer: late, raw, not at all, or by closing (see the module doc).
    async fn answer(&mut self, d: &Decision) -> io::Result<Then> {
        if let Some(delay) = d.delay {
            self.flush().await?;
            tokio::time::sleep(delay).await;
        }
        match d.action {
            Action::Drop => return Ok(Then::Close),
            Action::Hang => {
                self.flush().await?;
                // Read and ignore until the client gives up.
                while !self.io.fill_buf().await?.is_empty() {
                    let n = self.io.buffer().len();
                    self.io.consume(n);
                }
                return Ok(Then::Close);
            }
            Action::Reply => {}
        }
        if d.raw {
            self.out.extend_from_slice(d.text.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.reply(d.code, &d.text);
        }
        if d.code == 421 {
            self.flush().await?;
            return Ok(Then::Close);
        }
        Ok(Then::Continue)
    }

    /// Write the queued replies.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let w = self.io.get_mut();
            w.write_all(&self.out).await?;
            w.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// More input. Before waiting for the client (nothing is buffered), write the queued
    /// replies: that is what makes pipelined commands get their replies in one write.
    async fn fill(&mut self) -> io::Result<&[u8]> {
        if self.io.buffer().is_empty() {
            self.flush().await?;
        }
        self.io.fill_buf().await
    }

    /// Read one command line into `line`, without its line ending.
    async fn read_line(&mut self, line: &mut Vec<u8>) -> io::Result<Line> {
        line.clear();
        let mut too_long = false;
        loop {
            let buf = self.fill().await?;
            if buf.is_empty() {
                return Ok(Line::Eof);
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if !too_long {
                if line.len() + take > MAX_LINE + 2 {
                    too_long = true;
                    line.clear();
                } else {
                    line.extend_from_slice(&buf[..take]);
                }
            }
            self.io.consume(take);
            if done {
                if too_long {
                    return Ok(Line::TooLong);
                }
                while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                    line.pop();
                }
                return Ok(Line::Complete);
            }
        }
    }

    /// Read message data up to the line `.`, discarding it as it streams. Returns the bytes
    /// before that line (line endings included, dot-stuffing kept), or `None` at end of
    /// stream.
    async fn read_data(&mut self) -> io::Result<Option<u64>> {
        let mut size = 0u64;
        // Length of the current line so far (line ending included) and its first two bytes.
        let mut line_len = 0usize;
        let mut head = [0u8; 2];
        loop {
            let buf = self.fill().await?;
            if buf.is_empty() {
                return Ok(None);
            }
            let mut start = 0;
            let mut end_of_data = None;
            while start < buf.len() {
                let (end, newline) = match buf[start..].iter().position(|&b| b == b'\n') {
                    Some(i) => (start + i + 1, true),
                    None => (buf.len(), false),
                };
                let piece = &buf[start..end];
                for (i, &b) in piece
                    .iter()
                    .enumerate()
                    .take(2usize.saturating_sub(line_len))
                {
                    head[line_len + i] = b;
                }
                line_len += piece.len();
                start = end;
                if newline {
                    let is_dot =
                        (line_len == 2 && head == *b".\n") || (line_len == 3 && head == *b".\r");
                    if is_dot {
                        end_of_data = Some(end);
                        break;
                    }
                    size += line_len as u64;
                    line_len = 0;
                }
            }
            if let Some(end) = end_of_data {
                self.io.consume(end);
                return Ok(Some(size));
            }
            let n = buf.len();
            self.io.consume(n);
        }
    }
}

/// The address inside `<...>` at the start of `arg` (after `FROM:` / `TO:`); parameters
/// after it are ignored.
fn path_arg(arg: &str) -> Option<&str> {
    let inner = arg.trim_start().strip_prefix('<')?;
    inner.find('>').map(|end| &inner[..end])
}

/// `arg` without a case-insensitive `prefix` (`FROM:`, `TO:`).
fn strip_prefix_ignore_case<'a>(arg: &'a str, prefix: &str) -> Option<&'a str> {
    let head = arg.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &arg[prefix.len()..])
}

/// The domain of an address (empty for `<>` or a bare local part).
fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, d)| d)
}

/// An open mail transaction.
struct Envelope {
    mail_from: String,
    /// Accepted recipients.
    rcpts: Vec<String>,
    /// The first failure decided for an accepted recipient: the answer after the data.
    failure: Option<Decision>,
}

/// One SMTP session, until QUIT or the connection ends.
async fn session(stream: TcpStream, peer: IpAddr, shared: &Shared) -> io::Result<()> {
    // Replies are batched by hand, so Nagle would only add latency.
    stream.set_nodelay(true)?;
    let mut conn = Conn {
        io: BufReader::with_capacity(READ_BUFFER, SinkStream::Plain(stream)),
        out: Vec::with_capacity(4096),
    };
    let hostname = shared.hostname.as_str();
    let mut tls = false;
    match shared.rule_at(Stage::Connect, "", peer) {
        Some(d) => {
            if conn.answer(&d).await? == Then::Close || d.code >= 400 {
                return conn.flush().await;
            }
        }
        None => conn.reply(220, &format!("{hostname} ESMTP switchyard sink")),
    }
    let mut line = Vec::with_capacity(512);
    let mut ehlo = String::new();
    let mut envelope: Option<Envelope> = None;
    loop {
        match conn.read_line(&mut line).await? {
            Line::Complete => {}
            Line::TooLong => {
                conn.reply(500, "5.5.2 Line too long");
                continue;
            }
            Line::Eof => return Ok(()),
        }
        let command = String::from_utf8_lossy(&line).into_owned();
        let (verb, arg) = command.split_once(' ').unwrap_or((&command, ""));
        let is = |name: &str| verb.eq_ignore_ascii_case(name);
        if is("EHLO") || is("HELO") {
            if arg.trim().is_empty() {
                conn.reply(501, "5.5.4 Syntax: EHLO hostname");
                continue;
            }
            envelope = None;
            if let Some(d) = shared.rule_at(Stage::Ehlo, "", peer) {
                if conn.answer(&d).await? == Then::Close {
                    return conn.flush().await;
                }
                if d.code < 400 {
                    ehlo = arg.trim().to_string();
                }
                continue;
            }
            ehlo = arg.trim().to_string();
            if is("EHLO") {
                let starttls = if shared.tls.is_some() && !tls {
                    "\nSTARTTLS"
                } else {
                    ""
                };
                conn.reply(
                    250,
                    &format!(
                        "{hostname}\nPIPELINING\n8BITMIME\nSIZE 104857600\nENHANCEDSTATUSCODES{starttls}"
                    ),
                );
            } else {
                conn.reply(250, hostname);
            }
        } else if is("STARTTLS") && shared.tls.is_some() && !tls {
            conn.reply(220, "2.0.0 Ready to start TLS");
            conn.flush().await?;
            // Anything the client pipelined after STARTTLS is dropped (RFC 3207).
            let SinkStream::Plain(tcp) = conn.io.into_inner() else {
                return Ok(());
            };
            let acceptor = shared.tls.clone().expect("checked above");
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                // The client refused our certificate, or spoke no TLS: the session ends.
                Err(_) => return Ok(()),
            };
            conn = Conn {
                io: BufReader::with_capacity(READ_BUFFER, SinkStream::Tls(Box::new(stream))),
                out: Vec::with_capacity(4096),
            };
            tls = true;
            ehlo.clear();
            envelope = None;
        } else if is("MAIL") {
            if envelope.is_some() {
                conn.reply(503, "5.5.1 Nested MAIL command");
                continue;
            }
            let Some(from) = strip_prefix_ignore_case(arg, "FROM:").and_then(path_arg) else {
                conn.reply(501, "5.5.4 Syntax: MAIL FROM:<address>");
                continue;
            };
            if let Some(d) = shared.rule_at(Stage::Mail, domain_of(from), peer) {
                if conn.answer(&d).await? == Then::Close {
                    return conn.flush().await;
                }
                if d.code >= 400 || d.raw {
                    continue;
                }
            } else {
                conn.reply(250, "2.1.0 Ok");
            }
            envelope = Some(Envelope {
                mail_from: from.to_string(),
                rcpts: Vec::new(),
                failure: None,
            });
        } else if is("RCPT") {
            let Some(env) = envelope.as_mut() else {
                conn.reply(503, "5.5.1 MAIL first");
                continue;
            };
            let Some(rcpt) = strip_prefix_ignore_case(arg, "TO:").and_then(path_arg) else {
                conn.reply(501, "5.5.4 Syntax: RCPT TO:<address>");
                continue;
            };
            let decision = match &shared.responses {
                Some(r) => r.decide(domain_of(&env.mail_from), domain_of(rcpt), peer, &mut roll),
                None => Decision::ok(),
            };
            if decision.stage == Stage::Rcpt {
                let refused = decision.is_failure() || decision.action != Action::Reply;
                if refused {
                    shared.record(Transaction {
                        peer,
                        ehlo: &ehlo,
                        tls,
                        mail_from: &env.mail_from,
                        rcpts: &[rcpt.to_string()],
                        code: decision.code,
                        text: &decision.text,
                        size: 0,
                    });
                }
                if conn.answer(&decision).await? == Then::Close {
                    return conn.flush().await;
                }
                if !refused {
                    env.rcpts.push(rcpt.to_string());
                }
            } else {
                let special = decision.is_failure()
                    || decision.action != Action::Reply
                    || decision.delay.is_some();
                if special && env.failure.is_none() {
                    env.failure = Some(decision);
                }
                env.rcpts.push(rcpt.to_string());
                conn.reply(250, "2.1.5 Ok");
            }
        } else if is("DATA") {
            let Some(env) = envelope.as_ref() else {
                conn.reply(503, "5.5.1 MAIL first");
                continue;
            };
            let forced = shared.rule_at(Stage::DataCommand, domain_of(&env.mail_from), peer);
            match &forced {
                Some(d) if d.code != 354 || d.action != Action::Reply => {
                    if conn.answer(d).await? == Then::Close {
                        return conn.flush().await;
                    }
                    continue;
                }
                Some(d) => {
                    conn.answer(d).await?;
                }
                None if env.rcpts.is_empty() => {
                    conn.reply(554, "5.5.1 No valid recipients");
                    continue;
                }
                None => conn.reply(354, "End data with <CR><LF>.<CR><LF>"),
            }
            let Some(env) = envelope.take() else {
                continue;
            };
            if env
                .failure
                .as_ref()
                .is_some_and(|d| d.action == Action::Drop)
            {
                // In the middle of the message: read what has come, then hang up.
                conn.flush().await?;
                let _ = conn.io.fill_buf().await?;
                return Ok(());
            }
            let Some(size) = conn.read_data().await? else {
                return Ok(());
            };
            let answer = if env.rcpts.is_empty() {
                Decision::reply(554, "5.5.1 No valid recipients".into(), Stage::Data)
            } else {
                env.failure.clone().unwrap_or_else(Decision::ok)
            };
            shared.record(Transaction {
                peer,
                ehlo: &ehlo,
                tls,
                mail_from: &env.mail_from,
                rcpts: &env.rcpts,
                code: answer.code,
                text: &answer.text,
                size,
            });
            if conn.answer(&answer).await? == Then::Close {
                return conn.flush().await;
            }
        } else if is("RSET") {
            envelope = None;
            conn.reply(250, "2.0.0 Ok");
        } else if is("NOOP") {
            conn.reply(250, "2.0.0 Ok");
        } else if is("QUIT") {
            conn.reply(221, "2.0.0 Bye");
            return conn.flush().await;
        } else if verb.is_empty() {
            conn.reply(500, "5.5.2 Syntax error, command unrecognized");
        } else {
            conn.reply(502, "5.5.2 Command not implemented");
        }
    }
}

/// Now, in seconds since the Unix epoch.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_kumomtas_responses_file() {
        let path = "/work/shared/data/kumomta/responses.toml";
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("skipped: cannot read {path}: {e}");
                return;
            }
        };
        let r = Responses::parse(&text).unwrap();
        let (code, text) = r.choose("a.example", "aol.com", LOCAL, &mut || 0.0);
        assert_eq!(code, 550, "{text}");
        assert_eq!(
            r.choose("a.example", "AOL.com", LOCAL, &mut || 99.9),
            (250, OK_TEXT.to_string())
        );
        // [default] applies to other domains; with no messages listed, the generic bounce.
        assert_eq!(
            r.choose("a.example", "elsewhere.example", LOCAL, &mut || 0.0),
            (GENERIC_BOUNCE.0, GENERIC_BOUNCE.1.to_string())
        );
    }

    #[test]
    fn a_rule_matches_only_its_sender_and_recipient_domains() {
        let r = Responses::parse(
            r#"
[[rule]]
sender_domain = "tenant-b.example"
recipient_domain = "gmail.example"
code = 550
msg = "5.7.26 unauthenticated"
"#,
        )
        .unwrap();
        let mut roll = || 50.0;
        let bounce = (550, "5.7.26 unauthenticated".to_string());
        assert_eq!(
            r.choose("Tenant-B.example", "gmail.EXAMPLE", LOCAL, &mut roll),
            bounce
        );
        assert_eq!(
            r.choose("tenant-a.example", "gmail.example", LOCAL, &mut roll)
                .0,
            250
        );
        assert_eq!(
            r.choose("tenant-b.example", "yahoo.example", LOCAL, &mut roll)
                .0,
            250
        );
    }

    #[test]
    fn a_rule_with_a_limit_stops_answering() {
        let r = Responses::parse("[[rule]]\nlimit = 1\ncode = 421\nmsg = \"4.7.0 try later\"\n")
            .unwrap();
        let mut roll = || 0.0;
        assert_eq!(r.choose("a", "b", LOCAL, &mut roll).0, 421);
        assert_eq!(r.choose("a", "b", LOCAL, &mut roll).0, 250);
        assert_eq!(r.choose("a", "b", LOCAL, &mut roll).0, 250);
    }

    #[test]
    fn a_rules_chance_is_rolled() {
        let r = Responses::parse("[[rule]]\nchance = 30\ncode = 421\nmsg = \"4.7.0 x\"\n").unwrap();
        assert_eq!(r.choose("a", "b", LOCAL, &mut || 29.9).0, 421);
        assert_eq!(r.choose("a", "b", LOCAL, &mut || 30.0).0, 250);
    }

    #[test]
    fn peer_ip_takes_an_address_or_a_cidr() {
        let r = Responses::parse(
            r#"
[[rule]]
peer_ip = "127.0.0.0/30"
stage = "rcpt"
code = 421
msg = "4.7.0 [TSS04] deferred"

[[rule]]
peer_ip = "10.0.0.9"
code = 554
msg = "5.7.1 blocked"
"#,
        )
        .unwrap();
        let mut roll = || 0.0;
        assert_eq!(r.choose("a", "b", ip("127.0.0.3"), &mut roll).0, 421);
        assert_eq!(r.choose("a", "b", ip("::ffff:127.0.0.1"), &mut roll).0, 421);
        assert_eq!(r.choose("a", "b", ip("127.0.0.4"), &mut roll).0, 250);
        assert_eq!(r.choose("a", "b", ip("10.0.0.9"), &mut roll).0, 554);
        let d = r.decide("a", "b", ip("127.0.0.1"), &mut roll);
        assert_eq!(d.stage, Stage::Rcpt);
    }

    #[test]
    fn errors_name_the_key_and_its_position() {
        let e =
            Responses::parse("[[rule]]\ncode = 550\nmsg = \"x\"\nsender = \"a\"\n").unwrap_err();
        assert!(e.starts_with("4:1:") && e.contains("sender"), "{e}");
        let e = Responses::parse("[default]\nbounce = 10\nbogus = 1\n").unwrap_err();
        assert!(e.starts_with("3:1:") && e.contains("bogus"), "{e}");
        let e =
            Responses::parse("[[rule]]\npeer_ip = \"nope\"\ncode = 550\nmsg = \"\"\n").unwrap_err();
        assert!(e.starts_with("2:11:") && e.contains("nope"), "{e}");
        let e =
            Responses::parse("[[rule]]\nstage = \"later\"\ncode = 550\nmsg = \"\"\n").unwrap_err();
        assert!(e.starts_with("2:9:"), "{e}");
        assert!(Responses::parse("[[rule]]\ncode = 99\nmsg = \"\"\n").is_err());
        assert!(Responses::parse("[default]\nbounce = 101\n").is_err());
    }

    /// Start a sink on a free loopback port; its address.
    async fn start(responses: &str, record: Option<PathBuf>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = record.map(|p| {
            Mutex::new(io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap(),
            ))
        });
        let shared = Arc::new(Shared {
            hostname: "sink.test".into(),
            responses: Some(Responses::parse(responses).unwrap()),
            record,
            open: AtomicU64::new(0),
            tls: None,
        });
        tokio::spawn(serve(listener, shared));
        addr
    }

    /// Send `input` in one write, close the sending side, and read everything back.
    async fn exchange(addr: SocketAddr, input: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(input).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn a_pipelined_session_gets_its_replies_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record.jsonl");
        let addr = start(
            r#"
[[rule]]
recipient_domain = "refused.test"
stage = "rcpt"
code = 550
msg = "5.1.1 no such user"

[[rule]]
recipient_domain = "later.test"
code = 451
msg = "4.7.0 first line\n4.7.0 second line"
"#,
            Some(record.clone()),
        )
        .await;
        let long = "x".repeat(MAX_LINE + 10);
        let body = format!("Subject: hi\r\n\r\n..stuffed\r\n{long}\r\n");
        let input = format!(
            "EHLO client.test\r\nMAIL FROM:<a@tenant.test> SIZE=100\r\n\
             RCPT TO:<u@refused.test>\r\nRCPT TO:<v@ok.test>\r\nDATA\r\n{body}.\r\n\
             MAIL FROM:<a@tenant.test>\r\nRCPT TO:<w@later.test>\r\nDATA\r\n.\r\n\
             DATA\r\n{long}\r\nNOOP\r\nQUIT\r\n"
        );
        let got = exchange(addr, input.as_bytes()).await;
        let codes: Vec<&str> = got.lines().map(|l| &l[..4]).collect();
        assert_eq!(
            codes,
            [
                "220 ", "250-", "250-", "250-", "250-", "250 ", "250 ", "550 ", "250 ", "354 ",
                "250 ", "250 ", "250 ", "354 ", "451-", "451 ", "503 ", "500 ", "250 ", "221 "
            ],
            "{got}"
        );
        assert!(got.contains("451-4.7.0 first line\r\n451 4.7.0 second line\r\n"));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["code"], 550);
        assert_eq!(lines[0]["rcpts"], serde_json::json!(["u@refused.test"]));
        assert_eq!(lines[0]["size"], 0);
        assert_eq!(lines[1]["code"], 250);
        assert_eq!(lines[1]["ehlo"], "client.test");
        assert_eq!(lines[1]["mail_from"], "a@tenant.test");
        assert_eq!(lines[1]["peer"], "127.0.0.1");
        assert_eq!(lines[1]["rcpts"], serde_json::json!(["v@ok.test"]));
        assert_eq!(lines[1]["size"], body.len());
        assert_eq!(lines[1]["open"], 1);
        assert!(lines[1]["time"].as_f64().unwrap() > 1e9);
        assert_eq!(lines[2]["code"], 451);
        assert_eq!(lines[2]["size"], 0);
    }

    #[tokio::test]
    async fn data_without_recipients_is_refused() {
        let addr = start(
            "[[rule]]\nstage = \"rcpt\"\ncode = 550\nmsg = \"5.1.1 no\"\n",
            None,
        )
        .await;
        let got = exchange(
            addr,
            b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@y>\r\nDATA\r\nRCPT TO:<x@y>\r\nQUIT\r\n",
        )
        .await;
        assert_eq!(
            got,
            "220 sink.test ESMTP switchyard sink\r\n250 sink.test\r\n250 2.1.0 Ok\r\n\
             550 5.1.1 no\r\n554 5.5.1 No valid recipients\r\n550 5.1.1 no\r\n221 2.0.0 Bye\r\n"
        );
    }
}
