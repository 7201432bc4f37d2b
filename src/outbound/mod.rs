//! Outbound SMTP: the connector the ConnectionActors use to reach remote MTAs.
//!
//! [`Connector::connect`] binds the egress source's address, tries the site's hosts in
//! order (each of their addresses), reads the banner, says EHLO with the source's name and
//! applies `enable_tls` with KumoMTA's semantics:
//! - `Opportunistic`: STARTTLS when offered, the certificate verified (web PKI roots plus
//!   `[tls] trust_roots`); `OpportunisticInsecure`: STARTTLS when offered, unverified. A
//!   handshake that fails fails the attempt (`451 4.7.5`) — unless the path sets
//!   `opportunistic_tls_reconnect_on_failed_handshake`, which connects again at once in
//!   plain text. With `remember_broken_tls` the failure is remembered for that host *and
//!   port* for that long, and that path's next sessions there skip STARTTLS;
//! - `Required` (verified) and `RequiredInsecure`: no TLS, no delivery (`451 4.7.4/4.7.5`);
//! - `Disabled`: never STARTTLS.
//!
//! A session's TLS (version, cipher, verified) rides on its [`Peer`] into the records.
//! Each step waits at most its own timeout (`banner_timeout`, `ehlo_timeout`,
//! `starttls_timeout`, ... see [`Timeouts`](switchyard_actors::ports::Timeouts)).

pub mod client;
pub mod stream;

use client::Client;
use futures::future::BoxFuture;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream::Stream;
use switchyard_actors::message::{Peer, Reply, TlsInfo};
use switchyard_actors::ports::{
    ConnectFailure, ConnectTarget, EgressSource, SmtpConnector, SmtpSession, TlsMode,
};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

/// Opens outbound sessions.
#[derive(Clone)]
pub struct Connector {
    verified: TlsConnector,
    insecure: TlsConnector,
    broken_tls: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Connector {
    /// A connector that verifies with `verified` (see [`verified_tls_config`]).
    pub fn new(verified: rustls::ClientConfig) -> anyhow::Result<Connector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let insecure = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Ok(Connector {
            verified: TlsConnector::from(Arc::new(verified)),
            insecure: TlsConnector::from(Arc::new(insecure)),
            broken_tls: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Whether STARTTLS with `host:port` failed within its remembered time.
    fn tls_known_broken(&self, key: &str) -> bool {
        let mut map = self.broken_tls.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember_broken_tls(&self, key: &str, how_long: Duration) {
        let mut map = self.broken_tls.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key.to_string(), Instant::now() + how_long);
    }
}

/// A TLS client configuration that verifies certificates against the web PKI roots and
/// `extra_roots` (`[tls] trust_roots`): outbound SMTP and switchyard's own HTTPS fetches.
pub fn verified_tls_config(
    extra_roots: Vec<CertificateDer<'static>>,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("[tls] trust_roots: {e}"))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Why one host could not be used.
struct Attempt {
    reply: Reply,
    peer: Option<Peer>,
}

impl SmtpConnector for Connector {
    fn connect(
        &self,
        target: ConnectTarget,
    ) -> BoxFuture<'static, Result<Box<dyn SmtpSession>, ConnectFailure>> {
        let this = self.clone();
        Box::pin(async move {
            let mut last = Attempt {
                reply: Reply::internal(451, "4.4.4", "no host to connect to"),
                peer: None,
            };
            for host in target.hosts.iter() {
                for &ip in &host.addrs {
                    let addr = SocketAddr::new(ip, host.port.unwrap_or(target.port));
                    let peer = Peer {
                        host: host.name.clone(),
                        addr: addr.to_string(),
                        tls: None,
                    };
                    match this.session(&target, addr, peer).await {
                        Ok(c) => return Ok(Box::new(c) as Box<dyn SmtpSession>),
                        Err(a) => last = a,
                    }
                }
            }
            Err(ConnectFailure {
                reply: last.reply,
                peer: last.peer,
            })
        })
    }
}

impl Connector {
    /// Connect, read the banner and say EHLO, in plain text.
    async fn plain_session(
        &self,
        target: &ConnectTarget,
        addr: SocketAddr,
        peer: &Peer,
    ) -> Result<Client, Attempt> {
        let fail = |reply: Reply| Attempt {
            reply,
            peer: Some(peer.clone()),
        };
        let t = target.timeouts;
        let tcp = match tokio::time::timeout(t.connect, tcp_connect(&target.source, addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(fail(Reply::internal(
                    451,
                    "4.4.1",
                    format!("cannot connect to {addr}: {e}"),
                )))
            }
            Err(_) => {
                return Err(fail(Reply::internal(
                    451,
                    "4.4.1",
                    format!("connection to {addr} timed out"),
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut client = Client::new(Stream::Plain(tcp), peer.clone(), t);
        let banner = client.reply(t.banner).await.map_err(|e| fail(e.reply()))?;
        if banner.code != 220 {
            return Err(fail(banner));
        }
        let hello = client
            .hello(&target.source.ehlo)
            .await
            .map_err(|e| fail(e.reply()))?;
        if !hello.is_success() {
            return Err(fail(hello));
        }
        Ok(client)
    }

    async fn session(
        &self,
        target: &ConnectTarget,
        addr: SocketAddr,
        peer: Peer,
    ) -> Result<Client, Attempt> {
        let fail = |reply: Reply| Attempt {
            reply,
            peer: Some(peer.clone()),
        };
        let client = self.plain_session(target, addr, &peer).await?;
        let (required, verify) = match target.tls {
            TlsMode::Disabled => return Ok(client),
            TlsMode::Opportunistic => (false, true),
            TlsMode::OpportunisticInsecure => (false, false),
            TlsMode::Required => (true, true),
            TlsMode::RequiredInsecure => (true, false),
        };
        let broken_key = format!("{}:{}", peer.host, addr.port());
        if !required && target.remember_broken_tls.is_some() && self.tls_known_broken(&broken_key) {
            return Ok(client);
        }
        if !client.offers_starttls() {
            if required {
                return Err(fail(Reply::internal(
                    451,
                    "4.7.4",
                    format!(
                        "TLS is required for {} but it does not offer STARTTLS",
                        peer.host
                    ),
                )));
            }
            return Ok(client);
        }
        let mut client = client;
        let started = client
            .command_within("STARTTLS", target.timeouts.starttls)
            .await
            .map_err(|e| fail(e.reply()))?;
        if started.code != 220 {
            if required {
                return Err(fail(Reply::internal(
                    451,
                    "4.7.4",
                    format!(
                        "TLS is required for {} but it refused STARTTLS: {} {}",
                        peer.host, started.code, started.text
                    ),
                )));
            }
            // The server declined after offering it: the session goes on in plain text.
            return Ok(client);
        }
        let handshake = tokio::time::timeout(
            target.timeouts.starttls,
            self.handshake(client, &peer.host, addr.ip(), verify),
        )
        .await
        .unwrap_or_else(|_| Err("the TLS handshake timed out".into()));
        let why = match handshake {
            Ok(stream) => {
                let (_, conn) = stream.get_ref();
                let tls = TlsInfo {
                    version: conn
                        .protocol_version()
                        .and_then(|v| v.as_str())
                        .unwrap_or("unknown")
                        .to_string(),
                    cipher: conn
                        .negotiated_cipher_suite()
                        .and_then(|c| c.suite().as_str())
                        .unwrap_or("unknown")
                        .to_string(),
                    verified: verify,
                };
                let tls_peer = Peer {
                    tls: Some(tls),
                    ..peer.clone()
                };
                let mut client =
                    Client::new(Stream::Tls(Box::new(stream)), tls_peer, target.timeouts);
                let hello = client
                    .hello(&target.source.ehlo)
                    .await
                    .map_err(|e| fail(e.reply()))?;
                if !hello.is_success() {
                    return Err(fail(hello));
                }
                return Ok(client);
            }
            Err(why) => why,
        };
        if !required {
            if let Some(how_long) = target.remember_broken_tls {
                self.remember_broken_tls(&broken_key, how_long);
            }
            if target.reconnect_on_failed_handshake {
                tracing::info!(host = %peer.host, %addr, "STARTTLS failed ({why}); connecting again in plain text");
                return self.plain_session(target, addr, &peer).await;
            }
        }
        Err(fail(Reply::internal(
            451,
            "4.7.5",
            format!("TLS with {} ({addr}) failed: {why}", peer.host),
        )))
    }

    async fn handshake(
        &self,
        client: Client,
        host: &str,
        ip: IpAddr,
        verify: bool,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let Stream::Plain(tcp) = client.into_stream() else {
            return Err("already TLS".into());
        };
        let name = ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::IpAddress(ip.into()));
        let connector = if verify {
            &self.verified
        } else {
            &self.insecure
        };
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    }
}

async fn tcp_connect(
    source: &EgressSource,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(local) = source.address {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    socket.connect(addr).await
}

/// Certificate "verification" for the Insecure TLS modes: anything goes, as configured.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
