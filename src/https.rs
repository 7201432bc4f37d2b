//! A small HTTP client for what switchyard fetches and sends itself (MTA-STS policies,
//! webhook batches).
//!
//! Names are resolved through the daemon's resolver (`[dns] nameservers`); over `https` the
//! certificate is verified against the web PKI roots plus `[tls] trust_roots`; the request
//! is HTTP/1.1 over one fresh connection, redirects are not followed (the caller sees the
//! 3xx), and the answer's body is read up to a limit: a longer one is an error, not a
//! truncated body. Every step together waits at most the caller's timeout.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// Longest wait for one address to take the connection (the next one is tried then).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a request goes: `http[s]://host[:port]/path[?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https`.
    pub tls: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// Port (default 443 or 80).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    /// Read an `http://` or `https://` URL; an error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{text:?} is not an http:// or https:// URL"));
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(format!(
                "{text:?}: credentials in the URL are not supported"
            ));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{text:?}: unclosed [ in the host"))?;
                if !after.is_empty() && !after.starts_with(':') {
                    return Err(format!("{text:?}: junk after the address"));
                }
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{text:?} has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{text:?}: bad port {p:?}"))?,
            None if tls => 443,
            None => 80,
        };
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{text:?}: spaces or control characters in the path"
            ));
        }
        Ok(Url {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// The `Host` header's value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The media type of `Content-Type`, lower case, without parameters.
    pub media_type: Option<String>,
    /// `Retry-After`, as seconds or as an HTTP date (how long from now).
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Bytes,
}

/// A request: method, URL, extra headers and body.
pub struct Request<'a> {
    /// `GET`, `POST`.
    pub method: hyper::Method,
    /// Where to.
    pub url: &'a Url,
    /// Headers besides Host and User-Agent.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body (empty for GET).
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
        let url = Url {
            tls: true,
            host: host.to_string(),
            port: 443,
            path: path.to_string(),
        };
        let request = Request {
            method: hyper::Method::GET,
            url: &url,
            headers: Vec::new(),
            body: Bytes::new(),
        };
        self.send(request, limit, timeout).await
    }

    /// Send `request`, the answer's body at most `limit` bytes (0: the body is not read —
    /// the status decides), all within `timeout`.
    pub async fn send(
        &self,
        request: Request<'_>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Response, String> {
        let url = request.url.to_string();
        tokio::time::timeout(timeout, self.send_now(request, limit))
            .await
            .unwrap_or_else(|_| Err(format!("no answer from {url} within {timeout:?}")))
    }

    async fn connect(&self, url: &Url) -> Result<tokio::net::TcpStream, String> {
        let host = &url.host;
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self
                .resolver
                .lookup_ip(format!("{host}.").as_str())
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .iter()
                .collect(),
        };
        let mut last = format!("{host} has no address");
        for ip in addrs {
            let addr = SocketAddr::new(ip, url.port);
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = format!("cannot connect to {host} ({addr}): {e}"),
                Err(_) => last = format!("connecting to {host} ({addr}) timed out"),
            }
        }
        Err(last)
    }

    async fn send_now(&self, request: Request<'_>, limit: usize) -> Result<Response, String> {
        let url = request.url;
        let tcp = self.connect(url).await?;
        if !url.tls {
            return exchange(TokioIo::new(tcp), request, limit).await;
        }
        let name = match url.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(url.host.clone())
                .map_err(|e| format!("{} is not a host name: {e}", url.host))?,
        };
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", url.host))?;
        exchange(TokioIo::new(tls), request, limit).await
    }
}

/// One request and its answer over a connected stream.
async fn exchange<S>(io: S, request: Request<'_>, limit: usize) -> Result<Response, String>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let url = request.url;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP with {} failed: {e}", url.host))?;
    let driver = tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .uri(url.path.as_str())
        .header(HOST, url.authority())
        .header(
            USER_AGENT,
            concat!("switchyard/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let http_request = builder
        .body(Full::new(request.body))
        .map_err(|e| format!("bad request for {url}: {e}"))?;
    let result = async {
        let response = sender
            .send_request(http_request)
            .await
            .map_err(|e| format!("HTTP with {} failed: {e}", url.host))?;
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let media_type = header(CONTENT_TYPE).map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
        let retry_after = header(RETRY_AFTER).and_then(retry_after);
        let body = if limit == 0 {
            Bytes::new()
        } else {
            Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("reading the answer of {} failed: {e}", url.host))?
                .to_bytes()
        };
        Ok(Response {
            status,
            media_type,
            retry_after,
            body,
        })
    }
    .await;
    driver.abort();
    result
}

/// `Retry-After`: delay-seconds, or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::Url;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        use std::time::{Duration, SystemTime};
        assert_eq!(super::retry_after(" 120 "), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = super::retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            super::retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(super::retry_after("soon"), None);
    }

    #[test]
    fn urls_are_read_with_their_default_ports_and_bad_ones_refused() {
        let u = Url::parse("https://Hooks.Example.net/mail-events?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "hooks.example.net", 443, "/mail-events?x=1")
        );
        assert_eq!(u.to_string(), "https://hooks.example.net/mail-events?x=1");
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8080, "/"));
        let u = Url::parse("http://[::1]:9000/h").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.to_string(), "http://[::1]:9000/h");
        for bad in [
            "ftp://x/",
            "https://",
            "https://user:pw@host/",
            "http://host:0/",
            "http://host:99999/",
            "http://host/a b",
            "hooks.example.net/x",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
