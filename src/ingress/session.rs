//! One SMTP injection session: the command loop from banner to QUIT.
//!
//! Commands are read as lines of at most 512 octets (RFC 5321 §4.5.3.1.4) and parsed by
//! `smtp-proto`. Replies are buffered and flushed when the client has no more pipelined
//! commands waiting (RFC 2920), so a pipelining client gets its replies in one write.
//! Nothing a client sends can make the session buffer without bound: lines are capped,
//! DATA is capped by `max_message_size`, replies are flushed when the buffer fills, and a
//! silent client is dropped after `idle_timeout` with a `421`.

use super::accept::Accepted;
use super::auth::{decode_b64, encode_b64, parse_plain};
use super::command::parse_command;
use super::data::{DataProblem, DataReader};
use super::tenancy::{check_name, take_headers};
use super::Ingress;
use crate::logs::{LogRecord, RecordKind};
use crate::spool::MessageId;
use smtp_proto::{Request, AUTH_LOGIN, AUTH_PLAIN};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest SASL response line (RFC 4954 §4).
const MAX_AUTH_LINE: usize = 12_288;
/// Bad commands before the session is dropped, as Postfix's `smtpd_hard_error_limit`.
const MAX_ERRORS: u32 = 20;
/// NOOP, RSET, VRFY and HELP commands between two messages before each one more counts as
/// an error (Postfix's `smtpd_junk_command_limit`): a client cannot idle forever on them.
const MAX_JUNK_COMMANDS: u32 = 100;
/// Failed AUTH attempts before the session is dropped.
const MAX_AUTH_FAILURES: u32 = 3;
/// Reply bytes buffered before they are written even if more commands are pipelined.
const MAX_REPLY_BUFFER: usize = 16 * 1024;

/// How a session's run over one stream ended.
pub enum Ended<S> {
    /// The client quit, vanished or was dropped.
    Closed,
    /// The client asked for STARTTLS: the plain stream, to be wrapped.
    StartTls(S),
}

enum Input {
    Line(Vec<u8>),
    TooLong,
    Eof,
    Timeout,
    /// The daemon is shutting down (between transactions).
    Stopping,
}

enum Next {
    Continue,
    Close,
    StartTls,
}

struct Transaction {
    sender: String,
    recipients: Vec<(String, String)>,
    started: Instant,
    /// The size the client declared with MAIL's SIZE parameter (0 when it did not).
    declared_size: usize,
}

/// State of one client session.
pub struct Session {
    ctx: Arc<Ingress>,
    peer: SocketAddr,
    relay_allowed: bool,
    tls: bool,
    helo: Option<String>,
    esmtp: bool,
    auth_tenant: Option<String>,
    auth_failures: u32,
    errors: u32,
    /// Junk commands since the last message (see [`MAX_JUNK_COMMANDS`]).
    junk: u32,
    transaction: Option<Transaction>,
    out: Vec<u8>,
}

impl Session {
    /// A new session for a client at `peer`.
    pub fn new(ctx: Arc<Ingress>, peer: SocketAddr) -> Session {
        let relay_allowed = ctx
            .smtp
            .relay_hosts
            .values
            .iter()
            .any(|c| c.contains(peer.ip()));
        Session {
            ctx,
            peer,
            relay_allowed,
            tls: false,
            helo: None,
            esmtp: false,
            auth_tenant: None,
            auth_failures: 0,
            errors: 0,
            junk: 0,
            transaction: None,
            out: Vec::with_capacity(1024),
        }
    }

    /// After the TLS handshake: RFC 3207 §4.2 says to forget everything learnt before it.
    pub fn restart_after_tls(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.auth_tenant = None;
        self.transaction = None;
    }

    /// Queue the banner.
    pub fn banner(&mut self) {
        let host = self.ctx.hostname.clone();
        self.reply(220, &format!("{host} ESMTP switchyard"));
    }

    fn reply(&mut self, code: u16, text: &str) {
        if code >= 400 && code != 421 {
            metrics::counter!("switchyard_smtp_rejections_total", "code" => code.to_string())
                .increment(1);
        }
        self.out
            .extend_from_slice(format!("{code} {text}\r\n").as_bytes());
    }

    fn reply_lines(&mut self, code: u16, lines: &[String]) {
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("{code}{sep}{l}\r\n").as_bytes());
        }
    }

    fn error(&mut self, code: u16, text: &str) {
        self.errors += 1;
        self.reply(code, text);
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.ctx.smtp.idle_timeout.0;
        let result = tokio::time::timeout(timeout, async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        })
        .await;
        self.out.clear();
        match result {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client does not read",
            )),
        }
    }

    /// Run the command loop over `io` until the client leaves or asks for STARTTLS.
    pub async fn run<S>(&mut self, mut io: BufReader<S>) -> std::io::Result<Ended<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut stopping = self.ctx.stopping();
        loop {
            if io.buffer().is_empty() || self.out.len() > MAX_REPLY_BUFFER {
                self.flush(io.get_mut()).await?;
            }
            let idle = self.ctx.smtp.idle_timeout.0;
            // Between transactions a shutdown ends the session, even one waiting for the
            // client; inside a transaction the client finishes it first.
            let input = if self.transaction.is_none() {
                tokio::select! {
                    biased;
                    _ = stopping.wait_for(|stop| *stop) => Input::Stopping,
                    input = read_line(&mut io, MAX_COMMAND_LINE, idle) => input?,
                }
            } else {
                read_line(&mut io, MAX_COMMAND_LINE, idle).await?
            };
            let next = match input {
                Input::Stopping => {
                    let host = self.ctx.hostname.clone();
                    self.reply(
                        421,
                        &format!("4.3.2 {host} Service shutting down, try again later"),
                    );
                    Next::Close
                }
                Input::Eof => Next::Close,
                Input::Timeout => {
                    let host = self.ctx.hostname.clone();
                    self.reply(421, &format!("4.4.2 {host} Error: timeout exceeded"));
                    Next::Close
                }
                Input::TooLong => {
                    self.error(500, "5.5.2 Line too long");
                    Next::Continue
                }
                Input::Line(line) => self.command(&line, &mut io).await?,
            };
            let next = if self.errors >= MAX_ERRORS {
                self.reply(421, "4.7.0 Too many errors, closing connection");
                Next::Close
            } else {
                next
            };
            match next {
                Next::Continue => {}
                Next::Close => {
                    let _ = self.flush(io.get_mut()).await;
                    return Ok(Ended::Closed);
                }
                Next::StartTls => {
                    self.flush(io.get_mut()).await?;
                    // Anything pipelined after STARTTLS is dropped with the buffer: it was
                    // sent in the clear and must not be executed inside TLS (CVE-2011-0411).
                    return Ok(Ended::StartTls(io.into_inner()));
                }
            }
        }
    }

    async fn command<S>(&mut self, line: &[u8], io: &mut BufReader<S>) -> std::io::Result<Next>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let request = match parse_command(line) {
            Ok(r) => r,
            Err((code, text)) => {
                self.error(code, &text);
                return Ok(Next::Continue);
            }
        };
        if matches!(
            request,
            Request::Noop { .. } | Request::Rset | Request::Vrfy { .. } | Request::Help { .. }
        ) {
            self.junk += 1;
            if self.junk > MAX_JUNK_COMMANDS {
                self.errors += 1;
            }
        }
        match request {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Lhlo { .. } => self.error(500, "5.5.1 LHLO is for LMTP"),
            Request::Mail { from } => self.mail(from.address, from.size),
            Request::Rcpt { to } => self.rcpt(to.address),
            Request::Data => return self.data(io).await,
            Request::Rset => {
                self.transaction = None;
                self.reply(250, "2.0.0 Ok");
            }
            Request::Noop { .. } => self.reply(250, "2.0.0 Ok"),
            Request::Quit => {
                self.reply(221, "2.0.0 Bye");
                return Ok(Next::Close);
            }
            Request::Vrfy { .. } => self.reply(
                252,
                "2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Request::Expn { .. } => self.reply(502, "5.5.1 EXPN not available"),
            Request::Help { .. } => self.reply(214, "2.0.0 See RFC 5321"),
            Request::StartTls => return Ok(self.starttls()),
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response, io).await,
            Request::Bdat { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error(502, "5.5.1 Command not implemented"),
        }
        Ok(Next::Continue)
    }

    fn hello(&mut self, host: String, esmtp: bool) {
        self.transaction = None;
        self.esmtp = esmtp;
        let me = self.ctx.hostname.clone();
        if !esmtp {
            self.reply(250, &me);
            self.helo = Some(host);
            return;
        }
        let mut lines = vec![
            format!("{me} Hello {host}"),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.smtp.max_message_size.0),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.ctx.tls.is_some() && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        self.reply_lines(250, &lines);
        self.helo = Some(host);
    }

    fn auth_offered(&self) -> bool {
        !self.ctx.users.is_empty() && (self.tls || self.ctx.smtp.allow_plaintext_auth)
    }

    fn mail(&mut self, sender: String, declared_size: usize) {
        if self.helo.is_none() {
            return self.error(503, "5.5.1 Send EHLO/HELO first");
        }
        if self.transaction.is_some() {
            return self.error(503, "5.5.1 Nested MAIL command");
        }
        if declared_size as u64 > self.ctx.smtp.max_message_size.0 {
            return self.reply(552, "5.3.4 Message size exceeds fixed maximum message size");
        }
        self.transaction = Some(Transaction {
            sender,
            recipients: Vec::new(),
            started: Instant::now(),
            declared_size,
        });
        self.reply(250, "2.1.0 Ok");
    }

    fn rcpt(&mut self, address: String) {
        let relay = self.relay_allowed || self.auth_tenant.is_some();
        let max = self.ctx.smtp.max_recipients;
        let Some(tx) = self.transaction.as_mut() else {
            return self.error(503, "5.5.1 Need MAIL command first");
        };
        if !relay {
            let sender = tx.sender.clone();
            self.log_rejection(Some(&sender), Some(&address), 550, "5.7.1 Relaying denied");
            return self.reply(550, "5.7.1 Relaying denied");
        }
        if tx.recipients.len() >= max {
            return self.reply(452, "4.5.3 Too many recipients");
        }
        let domain = match address.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                domain.to_ascii_lowercase()
            }
            _ => return self.error(501, "5.1.3 Recipient address needs a domain"),
        };
        tx.recipients.push((address, domain));
        self.reply(250, "2.1.5 Ok");
    }

    fn starttls(&mut self) -> Next {
        if self.tls {
            self.error(503, "5.5.1 TLS already active");
            return Next::Continue;
        }
        if self.ctx.tls.is_none() {
            self.error(502, "5.5.1 STARTTLS not available");
            return Next::Continue;
        }
        self.reply(220, "2.0.0 Ready to start TLS");
        Next::StartTls
    }

    async fn auth<S>(
        &mut self,
        mechanism: u64,
        initial: String,
        io: &mut BufReader<S>,
    ) -> std::io::Result<Next>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.auth_offered() {
            if self.ctx.users.is_empty() {
                self.error(502, "5.5.1 AUTH not available");
            } else {
                self.error(
                    538,
                    "5.7.11 Encryption required for requested authentication mechanism",
                );
            }
            return Ok(Next::Continue);
        }
        if self.auth_tenant.is_some() {
            self.error(503, "5.5.1 Already authenticated");
            return Ok(Next::Continue);
        }
        if self.transaction.is_some() {
            self.error(503, "5.5.1 AUTH not allowed during a mail transaction");
            return Ok(Next::Continue);
        }
        let credentials = if mechanism == AUTH_PLAIN {
            let response = if initial.is_empty() {
                self.reply(334, "");
                match self.sasl_line(io).await? {
                    Some(r) => r,
                    None => return Ok(Next::Continue),
                }
            } else {
                initial
            };
            decode_b64(&response).as_deref().and_then(parse_plain)
        } else if mechanism == AUTH_LOGIN {
            let user = if initial.is_empty() {
                self.reply(334, &encode_b64(b"Username:"));
                match self.sasl_line(io).await? {
                    Some(r) => r,
                    None => return Ok(Next::Continue),
                }
            } else {
                initial
            };
            self.reply(334, &encode_b64(b"Password:"));
            let Some(pass) = self.sasl_line(io).await? else {
                return Ok(Next::Continue);
            };
            match (
                decode_b64(&user).and_then(|u| String::from_utf8(u).ok()),
                decode_b64(&pass),
            ) {
                (Some(u), Some(p)) => Some((u, p)),
                _ => None,
            }
        } else {
            self.error(504, "5.5.4 Unrecognized authentication type");
            return Ok(Next::Continue);
        };
        let Some((user, password)) = credentials else {
            self.error(501, "5.5.2 Cannot decode AUTH response");
            return Ok(Next::Continue);
        };
        let ip = self.peer.ip().to_canonical();
        if self.ctx.guard.locked_out(ip) {
            return Ok(self.locked_out());
        }
        match self.ctx.users.verify(user.clone(), password).await {
            Some(tenant) => {
                self.auth_tenant = Some(tenant);
                self.reply(235, "2.7.0 Authentication successful");
                Ok(Next::Continue)
            }
            None => {
                let failure = self.ctx.guard.failed(ip, &user);
                if !failure.delay.is_zero() {
                    tokio::time::sleep(failure.delay).await;
                }
                self.auth_failures += 1;
                self.reply(535, "5.7.8 Authentication credentials invalid");
                if failure.locked {
                    return Ok(self.locked_out());
                }
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.reply(421, "4.7.0 Too many authentication failures");
                    return Ok(Next::Close);
                }
                Ok(Next::Continue)
            }
        }
    }

    /// This client IP's AUTH is locked out: say so and end the session.
    fn locked_out(&mut self) -> Next {
        self.log_rejection(
            None,
            None,
            454,
            "4.7.0 Too many authentication failures from your address",
        );
        self.reply(
            454,
            "4.7.0 Too many authentication failures from your address, try again later",
        );
        Next::Close
    }

    /// Read one SASL response line; `None` (with the reply given) when it is `*` or unusable.
    async fn sasl_line<S>(&mut self, io: &mut BufReader<S>) -> std::io::Result<Option<String>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.flush(io.get_mut()).await?;
        match read_line(io, MAX_AUTH_LINE, self.ctx.smtp.idle_timeout.0).await? {
            Input::Line(l) => {
                let s = String::from_utf8_lossy(&l).trim_end().to_string();
                if s == "*" {
                    self.error(501, "5.7.0 Authentication canceled");
                    Ok(None)
                } else {
                    Ok(Some(s))
                }
            }
            Input::TooLong => {
                self.error(500, "5.5.6 Authentication exchange line too long");
                Ok(None)
            }
            Input::Eof | Input::Timeout | Input::Stopping => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "client left during AUTH",
            )),
        }
    }

    async fn data<S>(&mut self, io: &mut BufReader<S>) -> std::io::Result<Next>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match &self.transaction {
            None => {
                self.error(503, "5.5.1 Need MAIL command first");
                return Ok(Next::Continue);
            }
            Some(tx) if tx.recipients.is_empty() => {
                self.error(503, "5.5.1 Need RCPT command first");
                return Ok(Next::Continue);
            }
            Some(_) => {}
        }
        let declared_size = self.transaction.as_ref().map_or(0, |tx| tx.declared_size);
        self.reply(354, "End data with <CR><LF>.<CR><LF>");
        self.flush(io.get_mut()).await?;
        let data_started = Instant::now();
        let mut reader = DataReader::new(self.ctx.smtp.max_message_size.0 as usize, declared_size);
        // Each line must arrive whole within idle_timeout (Postfix's smtpd_per_record_deadline),
        // so a client trickling its message a byte at a time is dropped like a silent one.
        let idle = self.ctx.smtp.idle_timeout.0;
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, io.fill_buf()).await {
                Err(_) => {
                    self.transaction = None;
                    let host = self.ctx.hostname.clone();
                    self.reply(421, &format!("4.4.2 {host} Error: timeout exceeded"));
                    return Ok(Next::Close);
                }
                Ok(r) => r?,
            };
            if chunk.is_empty() {
                // The client went away mid-message: nothing was accepted, nothing is kept.
                self.transaction = None;
                return Ok(Next::Close);
            }
            let n = chunk.len();
            let lines_before = reader.lines();
            match reader.feed(chunk) {
                Some(end) => {
                    io.consume(end);
                    break;
                }
                None => io.consume(n),
            }
            if reader.lines() != lines_before {
                deadline = tokio::time::Instant::now() + idle;
            }
        }
        self.junk = 0;
        let Some(tx) = self.transaction.take() else {
            return Ok(Next::Continue);
        };
        match reader.finish() {
            Err(DataProblem::TooBig) => {
                self.log_rejection(
                    Some(&tx.sender),
                    None,
                    552,
                    "5.3.4 Message size exceeds fixed maximum message size",
                );
                self.reply(552, "5.3.4 Message size exceeds fixed maximum message size");
            }
            Err(DataProblem::LineTooLong) => {
                self.reply(500, "5.5.2 Line too long (RFC 5321 allows 1000 octets)")
            }
            Ok(body) => self.accept(tx, body, data_started).await,
        }
        Ok(Next::Continue)
    }

    async fn accept(&mut self, tx: Transaction, mut body: Vec<u8>, data_started: Instant) {
        let tenancy = &self.ctx.tenancy;
        let headers = take_headers(&mut body, &tenancy.tenant_header, &tenancy.campaign_header);
        let tenant = match (&self.auth_tenant, headers.tenant) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => {
                if let Err(e) = check_name(&tenancy.tenant_header, &t) {
                    return self.reply(550, &format!("5.6.0 {e}"));
                }
                t
            }
            (None, None) => tenancy.default_tenant.clone(),
        };
        if let Some(c) = &headers.campaign {
            if let Err(e) = check_name(&tenancy.campaign_header, c) {
                return self.reply(550, &format!("5.6.0 {e}"));
            }
        }
        let campaign = headers.campaign;
        let id = MessageId::new();
        switchyard_actors::test_hooks::hop(id.0.as_bytes(), "data-dot");
        let helo = self.helo.clone().unwrap_or_default();
        let mut message = self.received_header(&id, &helo, SystemTime::now());
        message.extend_from_slice(&body);
        drop(body);
        let accepted = Accepted {
            sender: tx.sender,
            recipients: tx.recipients,
            tenant,
            campaign,
            message,
            client: self.peer.to_string(),
            helo,
        };
        match self.ctx.store(id, accepted).await {
            Ok(()) => {
                metrics::histogram!("switchyard_injection_seconds")
                    .record(data_started.elapsed().as_secs_f64());
                self.reply(250, &format!("2.0.0 Ok: queued as {id}"));
                tracing::debug!(%id, elapsed = ?tx.started.elapsed(), "message accepted");
            }
            Err((e, sender)) => {
                tracing::error!("cannot store a message from {}: {e}", self.peer);
                let (code, text) = e.reply();
                self.log_rejection(Some(&sender), None, code, text);
                self.reply(code, text);
            }
        }
    }

    fn received_header(&self, id: &MessageId, helo: &str, now: SystemTime) -> Vec<u8> {
        let with = match (self.esmtp, self.tls, self.auth_tenant.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let helo: String = helo
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        format!(
            "Received: from {helo} ([{}])\r\n\tby {} (switchyard) with {with} id {id};\r\n\t{}\r\n",
            self.peer.ip(),
            self.ctx.hostname,
            httpdate::fmt_http_date(now)
        )
        .into_bytes()
    }

    fn log_rejection(&self, sender: Option<&str>, recipient: Option<&str>, code: u16, text: &str) {
        let (enhanced, text) = text.split_once(' ').unwrap_or(("", text));
        self.ctx.log.write(LogRecord {
            client: Some(self.peer.to_string()),
            sender: sender.map(str::to_string),
            recipient: recipient.map(str::to_string),
            response: Some(crate::logs::Response {
                code,
                enhanced: Some(enhanced.to_string()),
                text: text.to_string(),
            }),
            ..LogRecord::new(RecordKind::Rejection)
        });
    }
}

/// Read one line of at most `max` octets (LF included). A longer line is read to its end and
/// thrown away without being buffered, and reported as [`Input::TooLong`]. The whole line
/// must arrive within `idle`, not each of its pieces: a client trickling a byte at a time
/// (slowloris) gets [`Input::Timeout`] like a silent one.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    idle: Duration,
) -> std::io::Result<Input> {
    let mut line = Vec::new();
    let mut too_long = false;
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, r.fill_buf()).await {
            Err(_) => return Ok(Input::Timeout),
            Ok(c) => c?,
        };
        if chunk.is_empty() {
            return Ok(Input::Eof);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if line.len() + take > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(take);
        if done {
            return Ok(if too_long {
                Input::TooLong
            } else {
                Input::Line(line)
            });
        }
    }
}
