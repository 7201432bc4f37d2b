//! One outbound SMTP session: banner, EHLO (HELO fallback), STARTTLS, and messages.
//!
//! Replies are parsed by smtp-proto. One transaction carries one message to every recipient
//! of a batch; with PIPELINING the envelope (MAIL, each RCPT, DATA) goes in one write, and
//! every reply of the group is read and judged on its own (RFC 2920): a recipient refused
//! at RCPT keeps its own reply, the others get the one that decided the message. A DATA
//! answered `354` when no recipient was accepted gets a lone end mark, so the session stays
//! in step. A transaction that ended with the reply to the end mark leaves the peer's state
//! clear (RFC 5321 §4.1.1.4), so the next message follows at once; one that stopped
//! earlier is closed with RSET first. The peer's SIZE is respected before anything is
//! sent. Content stored in wire form (dot-stuffed at ingress) goes out as it is, without a
//! copy, in one vectored write with its end mark. Every step waits at most its own timeout
//! (KumoMTA's `mail_from_timeout`, `rcpt_to_timeout`, `data_timeout`, ...). A `421` at any
//! step ends the session: that reply decides the message (a transient failure) and the
//! connection is not used again. A transport error (a dropped connection, a timeout, a
//! reply too long) turns into a synthetic `451 4.4.2` reply and makes the session
//! unusable; a reply that cannot be parsed becomes `451 4.5.0`.

use super::stream::Stream;
use bytes::Buf;
use futures::future::BoxFuture;
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EhloResponse, EXT_PIPELINING, EXT_SIZE, EXT_START_TLS};
use std::time::Duration;
use switchyard_actors::message::{LoadedMessage, Peer, Reply};
use switchyard_actors::ports::{SmtpSession, Timeouts};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Longest reply we read (RFC 5321 allows 512 octets a line; providers write more).
const MAX_REPLY: usize = 16 * 1024;

/// A transport-level problem, turned into a reply by the caller.
#[derive(Debug)]
pub struct TransportError(pub String);

impl TransportError {
    /// The synthetic reply for a message caught by this error.
    pub fn reply(&self) -> Reply {
        Reply::internal(451, "4.4.2", format!("connection lost: {}", self.0))
    }
}

/// An SMTP client connection, before or after EHLO.
pub struct Client {
    io: BufReader<Stream>,
    pub(crate) peer: Peer,
    timeouts: Timeouts,
    pub(crate) extensions: u32,
    pub(crate) size_limit: usize,
    need_rset: bool,
    usable: bool,
}

/// Whether `line` (one line of a reply) is its last: "250-more" continues, "250 last" (or a
/// bare "250") ends it.
pub fn ends_reply(line: &[u8]) -> bool {
    line.len() < 4 || line[3] != b'-'
}

/// One whole reply as read from the peer. A reply that does not parse, or whose code is
/// outside 2xx–5xx (RFC 5321 §4.2.1), is a protocol error: a made-up `451 4.5.0`, so the
/// message is tried again rather than bounced on the word of a confused server.
pub fn parse_reply(raw: &[u8]) -> Reply {
    match ResponseReceiver::default().parse(&mut raw.iter()) {
        Ok(r) if !(200..600).contains(&r.code) => Reply::internal(
            451,
            "4.5.0",
            format!("reply code {} from peer is not 2xx-5xx", r.code),
        ),
        Ok(r) => {
            let enhanced =
                (r.esc[0] != 0).then(|| format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2]));
            let text = r
                .message
                .split(['\r', '\n'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
                // NUL and other controls from a broken peer go no further than here.
                .replace(|c: char| c.is_ascii_control(), " ");
            Reply {
                code: r.code,
                enhanced,
                text,
                internal: false,
            }
        }
        Err(e) => Reply::internal(451, "4.5.0", format!("unparsable reply from peer: {e:?}")),
    }
}

impl Client {
    /// Wrap a connected stream.
    pub fn new(stream: Stream, peer: Peer, timeouts: Timeouts) -> Client {
        Client {
            io: BufReader::new(stream),
            peer,
            timeouts,
            extensions: 0,
            size_limit: 0,
            need_rset: false,
            usable: true,
        }
    }

    /// Give back the stream (for STARTTLS); anything buffered is dropped, as RFC 3207 wants.
    pub fn into_stream(self) -> Stream {
        self.io.into_inner()
    }

    /// Read one whole reply (all its lines) within `timeout`.
    async fn read_raw(&mut self, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        let read = async {
            let mut raw = Vec::new();
            loop {
                let start = raw.len();
                let n = (&mut self.io)
                    .take((MAX_REPLY - raw.len().min(MAX_REPLY)) as u64 + 1)
                    .read_until(b'\n', &mut raw)
                    .await;
                match n {
                    Ok(0) => return Err(TransportError("peer closed the connection".into())),
                    Ok(_) => {}
                    Err(e) => return Err(TransportError(e.to_string())),
                }
                if raw.len() > MAX_REPLY {
                    return Err(TransportError("reply too long".into()));
                }
                let line = &raw[start..];
                if ends_reply(line) {
                    return Ok(raw);
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or_else(|_| Err(TransportError("timed out waiting for the peer".into())))
    }

    /// Read one reply. One that cannot be parsed leaves the session out of step: it is not
    /// used again.
    pub async fn reply(&mut self, timeout: Duration) -> Result<Reply, TransportError> {
        let reply = parse_reply(&self.read_raw(timeout).await?);
        self.usable &= !reply.internal;
        Ok(reply)
    }

    /// Write bytes within `timeout`.
    pub async fn write(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), TransportError> {
        let w = async {
            let s = self.io.get_mut();
            s.write_all(bytes).await?;
            s.flush().await
        };
        written_within(timeout, w).await
    }

    /// Send a command and read its reply, each within `t`.
    pub async fn command_within(
        &mut self,
        line: &str,
        t: Duration,
    ) -> Result<Reply, TransportError> {
        self.write(format!("{line}\r\n").as_bytes(), t).await?;
        self.reply(t).await
    }

    /// EHLO, falling back to HELO when the peer refuses EHLO. Returns the final reply.
    pub async fn hello(&mut self, name: &str) -> Result<Reply, TransportError> {
        let t = self.timeouts.ehlo;
        self.write(format!("EHLO {name}\r\n").as_bytes(), t).await?;
        let raw = self.read_raw(t).await?;
        let reply = parse_reply(&raw);
        if reply.is_success() {
            if let Ok(ehlo) = EhloResponse::parse(&mut raw.iter()) {
                self.extensions = ehlo.capabilities;
                self.size_limit = if ehlo.capabilities & EXT_SIZE != 0 {
                    ehlo.size
                } else {
                    0
                };
            }
            return Ok(reply);
        }
        self.extensions = 0;
        self.command_within(&format!("HELO {name}"), t).await
    }

    /// Whether the peer offered STARTTLS.
    pub fn offers_starttls(&self) -> bool {
        self.extensions & EXT_START_TLS != 0
    }

    /// One message to `recipients`: one reply each (see the module doc).
    async fn transaction(
        &mut self,
        sender: &str,
        recipients: &[&str],
        content: &LoadedMessage,
    ) -> Result<Vec<Reply>, TransportError> {
        let t = self.timeouts;
        let all = |r: &Reply| vec![r.clone(); recipients.len()];
        if self.need_rset {
            let r = self.command_within("RSET", t.rset).await?;
            if !r.is_success() {
                self.usable = false;
                return Ok(all(&r));
            }
        }
        // Until the reply to the end mark clears the peer's state, the next message needs RSET.
        self.need_rset = true;
        let body = &content.body;
        if self.size_limit > 0 && body.len() > self.size_limit {
            return Ok(all(&Reply::internal(
                552,
                "5.3.4",
                format!(
                    "message of {} bytes exceeds the peer's SIZE limit of {}",
                    body.len(),
                    self.size_limit
                ),
            )));
        }
        let mail = format!("MAIL FROM:<{sender}>\r\n");
        let rcpt = |r: &str| format!("RCPT TO:<{r}>\r\n");
        let (mail_reply, rcpt_replies, data_reply) = if self.extensions & EXT_PIPELINING != 0 {
            let mut envelope = mail;
            for r in recipients {
                envelope.push_str(&rcpt(r));
            }
            envelope.push_str("DATA\r\n");
            self.write(envelope.as_bytes(), t.mail_from).await?;
            // Each reply of the group on its own, within its own command's timeout; a 421
            // anywhere means the peer is closing, so it decides the whole message.
            let m = self.reply(t.mail_from).await?;
            if m.code == 421 {
                return Ok(self.closing(&m, recipients.len()));
            }
            let mut rs = Vec::with_capacity(recipients.len());
            for _ in recipients {
                let r = self.reply(t.rcpt_to).await?;
                if r.code == 421 {
                    return Ok(self.closing(&r, recipients.len()));
                }
                rs.push(r);
            }
            let d = self.reply(t.data).await?;
            if d.code == 421 {
                return Ok(self.closing(&d, recipients.len()));
            }
            (m, rs, Some(d))
        } else {
            self.write(mail.as_bytes(), t.mail_from).await?;
            let m = self.reply(t.mail_from).await?;
            if m.code == 421 {
                return Ok(self.closing(&m, recipients.len()));
            }
            if !m.is_success() {
                return Ok(all(&m));
            }
            let mut rs = Vec::with_capacity(recipients.len());
            for r in recipients {
                self.write(rcpt(r).as_bytes(), t.rcpt_to).await?;
                let r = self.reply(t.rcpt_to).await?;
                if r.code == 421 {
                    return Ok(self.closing(&r, recipients.len()));
                }
                rs.push(r);
            }
            let data = if rs.iter().any(Reply::is_success) {
                Some(self.command_within("DATA", t.data).await?)
            } else {
                None
            };
            if let Some(d) = data.as_ref().filter(|d| d.code == 421) {
                return Ok(self.closing(d, recipients.len()));
            }
            (m, rs, data)
        };
        let accepted = mail_reply.is_success() && rcpt_replies.iter().any(Reply::is_success);
        if data_reply.as_ref().is_some_and(|d| d.code == 354) && !accepted {
            // RFC 2920 §3.1: DATA went ahead of the refusals; close it with nothing in it.
            self.write(b".\r\n", self.timeouts.data).await?;
            self.reply(self.timeouts.data_dot).await?;
            self.need_rset = false;
        }
        if !mail_reply.is_success() {
            return Ok(all(&mail_reply));
        }
        let decided = match data_reply {
            _ if !accepted => None,
            Some(d) if d.code == 354 => {
                if content.stuffed {
                    self.write_all_then_dot(body.clone()).await?;
                } else {
                    self.write(&dot_stuff(body), self.timeouts.data).await?;
                }
                let end = self.reply(self.timeouts.data_dot).await?;
                self.need_rset = false;
                self.usable &= end.code != 421;
                Some(end)
            }
            other => other,
        };
        Ok(rcpt_replies
            .into_iter()
            .map(|r| match (&decided, r.is_success()) {
                (Some(d), true) => d.clone(),
                _ => r,
            })
            .collect())
    }

    /// The peer said 421 (it is closing the connection): that reply for every recipient,
    /// and the session is not used again.
    fn closing(&mut self, reply: &Reply, recipients: usize) -> Vec<Reply> {
        self.usable = false;
        vec![reply.clone(); recipients]
    }

    /// Write content already in wire form and the end mark, in one vectored write where
    /// the socket allows it.
    async fn write_all_then_dot(&mut self, body: bytes::Bytes) -> Result<(), TransportError> {
        let w = async {
            let s = self.io.get_mut();
            s.write_all_buf(&mut body.chain(&b".\r\n"[..])).await?;
            s.flush().await
        };
        written_within(self.timeouts.data, w).await
    }
}

/// A write (and its flush) within `timeout`, its failure as a [`TransportError`].
async fn written_within(
    timeout: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), TransportError> {
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(TransportError(e.to_string())),
        Err(_) => Err(TransportError("timed out writing to the peer".into())),
    }
}

/// The message as it goes on the wire after DATA, for content stored before ingress kept
/// it in wire form: dot-stuffed, a final CRLF if missing, then the end mark.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = crate::ingress::data::wire_form(body.to_vec());
    out.extend_from_slice(b".\r\n");
    out
}

impl SmtpSession for Client {
    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn send<'a>(
        &'a mut self,
        sender: &'a str,
        recipients: &'a [&'a str],
        content: &'a LoadedMessage,
    ) -> BoxFuture<'a, Vec<Reply>> {
        Box::pin(async move {
            match self.transaction(sender, recipients, content).await {
                Ok(r) => r,
                Err(e) => {
                    self.usable = false;
                    vec![e.reply(); recipients.len()]
                }
            }
        })
    }

    fn usable(&self) -> bool {
        self.usable
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if self.usable {
                let _ = self.command_within("QUIT", Duration::from_secs(5)).await;
            }
            let _ = self.io.get_mut().shutdown().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffs_dots_and_terminates() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
    }

    #[test]
    fn parses_multiline_replies_with_enhanced_codes() {
        let r = parse_reply(b"550-5.7.26 This message does not have authentication\r\n550 5.7.26 information. Learn more\r\n");
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced.as_deref(), Some("5.7.26"));
        assert_eq!(
            r.text,
            "This message does not have authentication information. Learn more"
        );
        let plain = parse_reply(b"250 ok\r\n");
        assert_eq!(
            (plain.code, plain.enhanced, plain.text.as_str()),
            (250, None, "ok")
        );
    }

    /// A receiver on loopback that offers PIPELINING, refuses `RCPT TO:<refused@…>`,
    /// answers a DATA with no accepted recipient `554`, and records every command line.
    async fn scripted_peer() -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (r, mut w) = tcp.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"220 peer.test ready\r\n").await.unwrap();
            let mut accepted = 0;
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line.clone());
                let reply: &[u8] = match line.split(':').next().unwrap_or("") {
                    l if l.starts_with("EHLO") => b"250-peer.test\r\n250 PIPELINING\r\n",
                    "MAIL FROM" => {
                        accepted = 0;
                        b"250 2.1.0 ok\r\n"
                    }
                    "RCPT TO" if line.contains("refused@") => b"550 5.1.1 no such user\r\n",
                    "RCPT TO" => {
                        accepted += 1;
                        b"250 2.1.5 ok\r\n"
                    }
                    "DATA" if accepted == 0 => b"554 5.5.1 no valid recipients\r\n",
                    "DATA" => {
                        w.write_all(b"354 go ahead\r\n").await.unwrap();
                        while let Ok(Some(body)) = lines.next_line().await {
                            if body == "." {
                                break;
                            }
                        }
                        b"250 2.0.0 queued\r\n"
                    }
                    "RSET" => b"250 2.0.0 reset\r\n",
                    _ => b"221 2.0.0 bye\r\n",
                };
                w.write_all(reply).await.unwrap();
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let wait = Duration::from_secs(5);
        let timeouts = Timeouts::all(wait);
        let peer = Peer {
            host: "peer.test".into(),
            addr: addr.to_string(),
            tls: None,
        };
        let mut client = Client::new(Stream::Plain(tcp), peer, timeouts);
        assert_eq!(client.reply(wait).await.unwrap().code, 220);
        assert!(client.hello("switchyard.test").await.unwrap().is_success());
        (client, seen)
    }

    #[tokio::test]
    async fn rset_only_after_a_transaction_that_did_not_reach_the_end_mark() {
        let (mut client, seen) = scripted_peer().await;
        let message = LoadedMessage {
            sender: "a@example.com".into(),
            body: bytes::Bytes::from_static(b"Subject: t\r\n\r\n..dot\r\n"),
            stuffed: true,
        };
        for rcpt in [
            "one@example.org",
            "two@example.org",
            "refused@example.org",
            "three@example.org",
        ] {
            let replies = client.send("a@example.com", &[rcpt], &message).await;
            let expected = if rcpt.starts_with("refused") {
                550
            } else {
                250
            };
            assert_eq!(replies[0].code, expected, "{rcpt}: {:?}", replies[0]);
        }
        let commands: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                !l.starts_with("Subject") && !l.is_empty() && !l.starts_with("..") && *l != "."
            })
            .cloned()
            .collect();
        let envelope = |r: &str| {
            vec![
                "MAIL FROM:<a@example.com>".to_string(),
                format!("RCPT TO:<{r}>"),
                "DATA".to_string(),
            ]
        };
        let mut expected = vec!["EHLO switchyard.test".to_string()];
        // A completed transaction leaves the peer's state clear: no RSET between them.
        expected.extend(envelope("one@example.org"));
        expected.extend(envelope("two@example.org"));
        expected.extend(envelope("refused@example.org"));
        // The refused one ended at DATA's 554, so the next message resets first.
        expected.push("RSET".to_string());
        expected.extend(envelope("three@example.org"));
        assert_eq!(commands, expected);
    }
}
