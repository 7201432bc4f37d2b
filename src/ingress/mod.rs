//! SMTP ingress: where mail enters switchyard.
//!
//! Plain tokio I/O, not an actor: one task per client connection. A session (`session.rs`)
//! reads commands, checks relay permission and AUTH (`auth.rs`), reads DATA with its limits
//! (`data.rs`), works out tenant and campaign (`tenancy.rs`), and only answers `250` once the
//! spool has fsynced the message (`accept.rs`, shared with HTTP injection).

pub mod accept;
pub mod auth;
pub mod command;
pub mod data;
pub mod guard;
pub mod session;
pub mod tenancy;

use crate::config::{LoadedConfig, SmtpConfig, TenancyConfig};
use crate::logs::EventLog;
use crate::spool::Spool;
use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use session::{Ended, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_actors::message::HotBudget;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Bytes of fresh messages' content kept in memory for their first attempt (beyond it,
/// connections read the content back from the spool).
const HOT_CONTENT_BUDGET: usize = 128 << 20;

/// Time a client has to finish the TLS handshake after STARTTLS.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every injection session shares.
pub struct Ingress {
    /// Banner name.
    pub hostname: String,
    /// `[smtp]` settings.
    pub smtp: SmtpConfig,
    /// `[tenancy]` settings.
    pub tenancy: TenancyConfig,
    /// STARTTLS, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// AUTH users.
    pub users: auth::Users,
    /// Where accepted mail goes.
    pub spool: Spool,
    /// Event log.
    pub log: EventLog,
    /// Where spooled mail goes next.
    pub engine: Arc<switchyard_actors::engine::Engine>,
    /// Memory for fresh messages' content on its way to the first attempt.
    pub hot: Arc<HotBudget>,
    /// DKIM signers in force (replaced on reload).
    pub dkim: Arc<crate::dkim::DkimKeys>,
    /// Sessions per client IP and AUTH lockouts.
    pub guard: Arc<guard::Guard>,
    /// Set on SIGTERM: sessions end between transactions with `421 4.3.2`.
    stopping: tokio::sync::watch::Sender<bool>,
    sessions: Arc<Semaphore>,
}

impl Ingress {
    /// Build the ingress from the config.
    pub fn new(
        loaded: &LoadedConfig,
        spool: Spool,
        log: EventLog,
        engine: Arc<switchyard_actors::engine::Engine>,
    ) -> anyhow::Result<Arc<Ingress>> {
        let c = &loaded.config;
        // The tenants known from the config count from 0, so that increase() sees their
        // first message.
        let known = c
            .tenant
            .keys()
            .cloned()
            .chain(c.smtp.user.iter().map(|u| u.tenant.get_ref().clone()))
            .chain([c.tenancy.default_tenant.clone()]);
        for tenant in known {
            metrics::counter!("switchyard_received_total", "tenant" => tenant).increment(0);
        }
        let tls = match (&c.smtp.tls_certificate, &c.smtp.tls_private_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(
                &loaded.resolve(cert.get_ref()),
                &loaded.resolve(key.get_ref()),
            )?),
            _ => None,
        };
        Ok(Arc::new(Ingress {
            hostname: c.hostname.clone(),
            smtp: c.smtp.clone(),
            tenancy: c.tenancy.clone(),
            tls,
            users: auth::Users::new(&c.smtp.user),
            spool,
            log,
            engine,
            hot: HotBudget::new(HOT_CONTENT_BUDGET),
            dkim: crate::dkim::DkimKeys::new(
                crate::dkim::Signers::load(loaded).map_err(|e| anyhow::anyhow!(e))?,
            ),
            guard: guard::Guard::new(
                c.smtp.max_connections_per_ip,
                c.smtp.max_connection_rate_per_ip,
                c.smtp.relay_hosts.values.clone(),
                c.smtp.auth_failure_limit,
                c.smtp.auth_lockout.0,
            ),
            sessions: Arc::new(Semaphore::new(c.smtp.max_connections)),
            stopping: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Shutting down: every session ends at its next point between transactions (at once
    /// when it is waiting for a command), with `421 4.3.2`; one in a transaction finishes it.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Watches for [`Ingress::stop`].
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Sessions currently open.
    pub fn open_sessions(&self) -> usize {
        self.smtp.max_connections - self.sessions.available_permits()
    }

    /// Bind every `[smtp] listen` address (failing if any cannot be bound).
    pub async fn bind(&self) -> anyhow::Result<Vec<TcpListener>> {
        let mut listeners = Vec::new();
        for addr in &self.smtp.listen.values {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for SMTP on {addr}"))?;
            tracing::info!("SMTP ingress on {addr}");
            listeners.push(l);
        }
        Ok(listeners)
    }

    /// Publish `switchyard_smtp_sessions` again (it is set when a session opens or closes).
    pub fn publish_gauges(&self) {
        metrics::gauge!("switchyard_smtp_sessions").set(self.open_sessions() as f64);
    }

    /// Accept clients on `listener` forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let ctx = self.clone();
                    tokio::spawn(async move { ctx.handle(stream, peer).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let Ok(_permit) = self.sessions.clone().try_acquire_owned() else {
            metrics::counter!("switchyard_smtp_rejections_total", "code" => "421").increment(1);
            let _ = stream
                .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
                .await;
            return;
        };
        let Some(_slot) = self.guard.open(peer.ip().to_canonical()) else {
            metrics::counter!("switchyard_smtp_rejections_total", "code" => "421").increment(1);
            let _ = stream
                .write_all(b"421 4.7.0 Too many connections from your address, try again later\r\n")
                .await;
            return;
        };
        let _gauge = SessionGauge::open(self.clone());
        let mut session = Session::new(self.clone(), peer);
        session.banner();
        let ended = session.run(BufReader::new(stream)).await;
        let Ok(Ended::StartTls(stream)) = ended else {
            return;
        };
        let Some(acceptor) = self.tls.clone() else {
            return;
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                session.restart_after_tls();
                let _ = session.run(BufReader::new(tls)).await;
            }
            Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
            Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
        }
    }
}

/// Keeps `switchyard_smtp_sessions` right while a session lives. The gauge is always set
/// to the absolute count, so it survives being dropped from the registry while idle.
struct SessionGauge(Arc<Ingress>);

impl SessionGauge {
    fn open(ingress: Arc<Ingress>) -> Self {
        ingress.publish_gauges();
        SessionGauge(ingress)
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        // The permit is released after this guard: count this session as gone already.
        let open = self.0.open_sessions().saturating_sub(1);
        metrics::gauge!("switchyard_smtp_sessions").set(open as f64);
    }
}

/// A rustls acceptor from PEM files.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
