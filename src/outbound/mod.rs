//! Outbound SMTP: the connector the ConnectionActors use to reach remote MTAs.
//!
//! [`Connector::connect`] binds the egress source's address, tries the site's hosts in
//! order (each of their addresses), reads the banner, says EHLO with the source's name and
//! applies the STARTTLS policy:
//! - Opportunistic(Insecure): STARTTLS when offered; if the handshake fails, connect again
//!   in plain text (a broken TLS stack at the receiver must not stop the mail), and remember
//!   the host's broken TLS for an hour so the next sessions do not fail the same way first;
//! - Required(Insecure): no TLS, no delivery — a transient failure, logged;
//! - the Insecure variants skip certificate checks, the others verify against webpki roots.

pub mod client;
pub mod stream;

use client::{Client, TransportError};
use futures::future::BoxFuture;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream::Stream;
use switchyard_actors::message::{Peer, Reply};
use switchyard_actors::ports::{
    ConnectFailure, ConnectTarget, EgressSource, SmtpConnector, SmtpSession, TlsMode,
};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

/// How long a host whose STARTTLS failed is sent to in plain text without trying again,
/// when shaping's `remember_broken_tls` does not say.
const REMEMBER_BROKEN_TLS: Duration = Duration::from_secs(3600);

/// Opens outbound sessions.
#[derive(Clone)]
pub struct Connector {
    verified: TlsConnector,
    insecure: TlsConnector,
    broken_tls: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Connector {
    /// A connector with webpki roots for verified TLS.
    pub fn new() -> anyhow::Result<Connector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
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

    fn tls_known_broken(&self, host: &str) -> bool {
        let mut map = self.broken_tls.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(host) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(host);
                false
            }
            None => false,
        }
    }

    fn remember_broken_tls(&self, host: &str, how_long: Duration) {
        let mut map = self.broken_tls.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(host.to_string(), Instant::now() + how_long);
    }
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
                    };
                    match this.session(&target, addr, peer, target.tls).await {
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
    async fn session(
        &self,
        target: &ConnectTarget,
        addr: SocketAddr,
        peer: Peer,
        tls: TlsMode,
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
        let transport = |e: TransportError| fail(e.reply());
        let banner = client.reply(t.command).await.map_err(transport)?;
        if banner.code != 220 {
            return Err(fail(banner));
        }
        let hello = client.hello(&target.source.ehlo).await.map_err(transport)?;
        if !hello.is_success() {
            return Err(fail(hello));
        }
        let opportunistic = matches!(tls, TlsMode::Opportunistic | TlsMode::OpportunisticInsecure);
        if opportunistic && self.tls_known_broken(&peer.host) {
            return Ok(client);
        }
        let (wants, verify) = match tls {
            TlsMode::Disabled => return Ok(client),
            TlsMode::Opportunistic => (false, true),
            TlsMode::OpportunisticInsecure => (false, false),
            TlsMode::Required => (true, true),
            TlsMode::RequiredInsecure => (true, false),
        };
        if !client.offers_starttls() {
            if wants {
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
        let started = client.command("STARTTLS").await.map_err(transport)?;
        let upgraded = if started.code == 220 {
            self.handshake(client, &peer.host, addr.ip(), verify).await
        } else {
            Err(format!(
                "STARTTLS refused: {} {}",
                started.code, started.text
            ))
        };
        match upgraded {
            Ok(stream) => {
                let mut client = Client::new(Stream::Tls(Box::new(stream)), peer.clone(), t);
                let hello = client.hello(&target.source.ehlo).await.map_err(transport)?;
                if !hello.is_success() {
                    return Err(fail(hello));
                }
                Ok(client)
            }
            Err(why) if wants => Err(fail(Reply::internal(
                451,
                "4.7.5",
                format!("TLS required but failed with {}: {why}", peer.host),
            ))),
            Err(why) => {
                tracing::info!(host = %peer.host, "STARTTLS failed ({why}); delivering in plain text");
                let how_long = target.remember_broken_tls.unwrap_or(REMEMBER_BROKEN_TLS);
                self.remember_broken_tls(&peer.host, how_long);
                Box::pin(self.session(target, addr, peer.clone(), TlsMode::Disabled)).await
            }
        }
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
