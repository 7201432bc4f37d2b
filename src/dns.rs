//! MX resolution: where mail for a domain goes, and which *site* that is.
//!
//! A domain's site is its sorted set of MX host names (MX rollup): every domain hosted by
//! the same provider shares one site, and so one ready queue per egress source. Lookups use
//! hickory-resolver (`[dns] nameservers`, else the system configuration) and are cached until
//! their TTL runs out.
//!
//! - MX records: ordered by preference, shuffled among equal preferences so load spreads.
//! - No MX records (but the name exists): the domain itself is the host (implicit MX, RFC
//!   5321 §5.1).
//! - Null MX (RFC 7505) → permanent `556 5.1.10`; NXDOMAIN → permanent `550 5.1.2`.
//! - SERVFAIL, timeouts and other failures → transient `451 4.4.3`.
//! - `[routes]` send a domain to a fixed host:port without looking up MX; address literals
//!   (`[127.0.0.1]`) go straight to that address.

use crate::mta_sts::MtaSts;
use futures::future::BoxFuture;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_actors::message::Reply;
use switchyard_actors::mta_sts::StsPolicy;
use switchyard_actors::ports::{MxHost, MxResolver, Route, RouteError};

/// Routes for fixed targets and address literals never expire; look again now and then anyway.
const FIXED_ROUTE_TTL: Duration = Duration::from_secs(3600);
/// Shortest time a route is kept, whatever the TTL: a zero TTL must not turn every due
/// message into a DNS query.
const MIN_ROUTE_TTL: Duration = Duration::from_secs(5);

/// The resolver with its cache.
#[derive(Clone)]
pub struct Dns {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: TokioResolver,
    /// MTA-STS discovery, once the daemon has set it up.
    mta_sts: std::sync::OnceLock<MtaSts>,
    cache: Mutex<HashMap<Arc<str>, Route>>,
    routes: HashMap<String, (String, u16)>,
    runtime: tokio::runtime::Handle,
}

impl Dns {
    /// A resolver asking `nameservers` (or the system's when empty), with `routes` that skip
    /// MX lookup. Must be called on the tokio runtime that will run the lookups.
    pub fn new(
        nameservers: &[SocketAddr],
        routes: HashMap<String, (String, u16)>,
    ) -> anyhow::Result<Dns> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let servers = nameservers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        // Names are absolute: never try them under a search domain.
        opts.ndots = 0;
        let resolver = builder.build()?;
        Ok(Dns {
            inner: Arc::new(Inner {
                resolver,
                mta_sts: std::sync::OnceLock::new(),
                cache: Mutex::new(HashMap::new()),
                routes,
                runtime: tokio::runtime::Handle::current(),
            }),
        })
    }
}

impl Dns {
    /// The resolver itself (for lookups other than MX).
    pub fn resolver(&self) -> TokioResolver {
        self.inner.resolver.clone()
    }

    /// Tidy what the resolver keeps beyond its cache (MTA-STS policies) and publish its
    /// gauges.
    pub fn upkeep(&self) {
        if let Some(m) = self.inner.mta_sts.get() {
            m.upkeep();
        }
    }

    /// Discover MTA-STS policies through `mta_sts` from now on.
    pub fn enable_mta_sts(&self, mta_sts: MtaSts) {
        let _ = self.inner.mta_sts.set(mta_sts);
    }
}

impl MxResolver for Dns {
    fn mta_sts(&self, domain: Arc<str>) -> BoxFuture<'static, Option<Arc<StsPolicy>>> {
        let Some(mta_sts) = self.inner.mta_sts.get().cloned() else {
            return Box::pin(async { None });
        };
        // On the daemon's runtime, like the MX lookups.
        let task = self
            .inner
            .runtime
            .spawn(async move { mta_sts.policy(&domain).await });
        Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                tracing::error!("MTA-STS lookup task failed ({e}); going on without a policy");
                None
            })
        })
    }

    fn resolve(&self, domain: Arc<str>) -> BoxFuture<'static, Result<Route, RouteError>> {
        let inner = self.inner.clone();
        if let Some(route) = inner.cached(&domain) {
            return Box::pin(async move { Ok(route) });
        }
        // Lookups run on the daemon's runtime, whichever thread the asking actor is on.
        let task = inner.runtime.clone().spawn(async move {
            let result = inner.lookup(&domain).await.map(|mut r| {
                r.expires = r.expires.max(Instant::now() + MIN_ROUTE_TTL);
                r
            });
            if let Ok(route) = &result {
                inner
                    .cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(domain, route.clone());
            }
            result
        });
        Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                Err(RouteError::Transient(Reply::internal(
                    451,
                    "4.4.3",
                    format!("DNS lookup task failed: {e}"),
                )))
            })
        })
    }
}

fn transient(domain: &str, e: impl std::fmt::Display) -> RouteError {
    RouteError::Transient(Reply::internal(
        451,
        "4.4.3",
        format!("DNS lookup for {domain} failed: {e}"),
    ))
}

fn nxdomain(domain: &str) -> RouteError {
    RouteError::Permanent(Reply::internal(
        550,
        "5.1.2",
        format!("domain {domain} does not exist (NXDOMAIN)"),
    ))
}

/// The response code of a "no records" answer, if that is what `e` is.
fn no_records(e: &NetError) -> Option<ResponseCode> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => Some(nr.response_code),
        _ => None,
    }
}

impl Inner {
    fn cached(&self, domain: &str) -> Option<Route> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(domain)
            .filter(|r| r.expires > Instant::now())
            .cloned()
    }

    async fn lookup(&self, domain: &str) -> Result<Route, RouteError> {
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip_text = literal.strip_prefix("IPv6:").unwrap_or(literal);
            let ip: IpAddr = ip_text.parse().map_err(|_| {
                RouteError::Permanent(Reply::internal(
                    550,
                    "5.1.2",
                    format!("bad address literal {domain}"),
                ))
            })?;
            return Ok(fixed(
                domain,
                vec![MxHost {
                    name: ip.to_string(),
                    addrs: vec![ip],
                    port: None,
                    configured: false,
                }],
            ));
        }
        if let Some((host, port)) = self.routes.get(domain) {
            let addrs = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => self.addresses(host).await?.0,
            };
            let site = format!("{host}:{port}");
            return Ok(fixed(
                &site,
                vec![MxHost {
                    name: host.clone(),
                    addrs,
                    port: Some(*port),
                    configured: true,
                }],
            ));
        }
        let fqdn = format!("{domain}.");
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((
                            m.preference,
                            m.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect();
                if mx.len() == 1 && mx[0].1.is_empty() {
                    return Err(RouteError::Permanent(Reply::internal(
                        556,
                        "5.1.10",
                        format!("domain {domain} accepts no mail (null MX, RFC 7505)"),
                    )));
                }
                mx.retain(|(_, host)| !host.is_empty());
                if mx.is_empty() {
                    return self.implicit_mx(domain).await;
                }
                let mut site_names: Vec<&str> = mx.iter().map(|(_, h)| h.as_str()).collect();
                site_names.sort_unstable();
                site_names.dedup();
                let site = site_names.join(",");
                // Preference order, shuffled among equals.
                mx.shuffle(&mut rand::rng());
                mx.sort_by_key(|(pref, _)| *pref);
                let mut hosts = Vec::new();
                let mut expires = lookup.valid_until();
                let mut last_error = None;
                for (_, host) in mx {
                    match self.addresses(&host).await {
                        Ok((addrs, until)) => {
                            expires = expires.min(until);
                            hosts.push(MxHost {
                                name: host,
                                addrs,
                                port: None,
                                configured: false,
                            });
                        }
                        Err(e) => last_error = Some(e),
                    }
                }
                if hosts.is_empty() {
                    return Err(last_error
                        .unwrap_or_else(|| transient(domain, "no MX host has an address")));
                }
                Ok(Route {
                    site: site.into(),
                    hosts: hosts.into(),
                    expires,
                })
            }
            Err(e) => match no_records(&e) {
                Some(ResponseCode::NXDomain) => Err(nxdomain(domain)),
                Some(_) => self.implicit_mx(domain).await,
                None => Err(transient(domain, e)),
            },
        }
    }

    /// No MX: the domain's own A/AAAA records are its mail host.
    async fn implicit_mx(&self, domain: &str) -> Result<Route, RouteError> {
        let (addrs, expires) = self.addresses(domain).await?;
        Ok(Route {
            site: domain.into(),
            hosts: vec![MxHost {
                name: domain.to_string(),
                addrs,
                port: None,
                configured: false,
            }]
            .into(),
            expires,
        })
    }

    async fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, Instant), RouteError> {
        let fqdn = format!("{host}.");
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(l) => {
                let addrs: Vec<IpAddr> = l.iter().collect();
                if addrs.is_empty() {
                    return Err(transient(host, "no addresses"));
                }
                Ok((addrs, l.valid_until()))
            }
            Err(e) => match no_records(&e) {
                Some(ResponseCode::NXDomain) => Err(nxdomain(host)),
                Some(_) => Err(RouteError::Permanent(Reply::internal(
                    550,
                    "5.1.2",
                    format!("{host} has neither MX nor address records"),
                ))),
                None => Err(transient(host, e)),
            },
        }
    }
}

fn fixed(site: &str, hosts: Vec<MxHost>) -> Route {
    Route {
        site: site.into(),
        hosts: hosts.into(),
        expires: Instant::now() + FIXED_ROUTE_TTL,
    }
}
