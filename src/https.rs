//! A small HTTPS client for what switchyard fetches itself (MTA-STS policies).
//!
//! Names are resolved through the daemon's resolver (`[dns] nameservers`), the certificate
//! is verified against the web PKI roots plus `[tls] trust_roots`, the request is HTTP/1.1
//! over one fresh connection, redirects are not followed (the caller sees the 3xx), and the
//! body is read up to a limit: a longer one is an error, not a truncated body. Every step
//! together waits at most the caller's timeout.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// Longest wait for one address to take the connection (the next one is tried then).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The media type of `Content-Type`, lower case, without parameters.
    pub media_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// Fetches over HTTPS.
#[derive(Clone)]
pub struct HttpsClient {
    tls: TlsConnector,
    resolver: hickory_resolver::TokioResolver,
}

impl HttpsClient {
    /// A client verifying with `tls` (see `outbound::verified_tls_config`) and resolving
    /// through `resolver`.
    pub fn new(tls: rustls::ClientConfig, resolver: hickory_resolver::TokioResolver) -> Self {
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        HttpsClient {
            tls: TlsConnector::from(Arc::new(tls)),
            resolver,
        }
    }

    /// `GET https://host/path` (port 443), the body at most `limit` bytes, all within
    /// `timeout`. An error says what failed, for logs and failure counts.
    pub async fn get(
        &self,
        host: &str,
        path: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<Response, String> {
        tokio::time::timeout(timeout, self.get_now(host, path, limit))
            .await
            .unwrap_or_else(|_| Err(format!("no answer from {host} within {timeout:?}")))
    }

    async fn get_now(&self, host: &str, path: &str, limit: usize) -> Result<Response, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host} is not a host name: {e}"))?;
        let addrs = self
            .resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let mut last = format!("{host} has no address");
        let mut tcp = None;
        for ip in addrs.iter() {
            let addr = SocketAddr::new(ip, 443);
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = format!("cannot connect to {host} ({addr}): {e}"),
                Err(_) => last = format!("connecting to {host} ({addr}) timed out"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host} failed: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {host} failed: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(HOST, host)
            .header(
                USER_AGENT,
                concat!("switchyard/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request for {host}{path}: {e}"))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP with {host} failed: {e}"))?;
            let status = response.status().as_u16();
            let media_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                });
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("reading the answer of {host} failed: {e}"))?
                .to_bytes();
            Ok(Response {
                status,
                media_type,
                body,
            })
        }
        .await;
        driver.abort();
        result
    }
}
