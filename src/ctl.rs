//! `switchyard ctl`: the admin client. Every subcommand is one or a few calls to the HTTP
//! API of a running daemon (`--api`, `SWITCHYARD_API`; `--token`, `SWITCHYARD_TOKEN`), shown
//! as aligned tables for people or, with `--json`, as the API's JSON for scripts.
//!
//! The HTTP client is a plain HTTP/1.1 exchange over a TCP stream: the admin API listens
//! on loopback (or behind a proxy that terminates TLS), and a CLI needs no more.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Where and how to reach the daemon.
pub struct Api {
    /// `http://host:port`.
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
}

/// A failed command: what to print.
pub struct CtlError(pub String);

impl Api {
    fn host_port(&self) -> Result<String, CtlError> {
        let rest = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| CtlError(format!("--api {:?} must start with http://", self.url)))?;
        Ok(rest.trim_end_matches('/').to_string())
    }

    /// One request; the parsed JSON answer of a 2xx, or the API's `{"error"}` as an error.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CtlError> {
        let (status, text) = self.raw(method, path, body)?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text)
                .map_err(|e| CtlError(format!("the daemon's answer is not JSON ({e}): {text}")));
        }
        let why = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(CtlError(format!("{method} {path}: {status}: {why}")))
    }

    /// One request: (status, body).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), CtlError> {
        let hp = self.host_port()?;
        let unreachable = |e: std::io::Error| {
            CtlError(format!(
                "cannot reach the daemon at {} ({e}); is `switchyard serve` running? Set --api or SWITCHYARD_API.",
                self.url
            ))
        };
        let mut s = TcpStream::connect(&hp).map_err(unreachable)?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = self
            .token
            .as_deref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {hp}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(unreachable)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).map_err(unreachable)?;
        let resp = String::from_utf8_lossy(&resp);
        let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}

/// Print rows as a table with aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `ctl queues`.
pub fn queues(api: &Api, as_json: bool) -> Result<String, CtlError> {
    let v = api.call("GET", "/api/v1/queues", None)?;
    if as_json {
        return Ok(format!("{v}\n"));
    }
    let rows = |key: &str, cols: &[&str]| -> Vec<Vec<String>> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|q| cols.iter().map(|c| text(&q[*c])).collect())
                    .collect()
            })
            .unwrap_or_default()
    };
    let sched_cols = [
        "name",
        "tenant",
        "campaign",
        "domain",
        "messages",
        "suspended",
    ];
    let ready_cols = ["source", "site", "messages", "connections", "suspended"];
    Ok(format!(
        "SCHEDULED QUEUES\n{}\nREADY QUEUES\n{}",
        table(
            &sched_cols
                .map(str::to_uppercase)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &rows("scheduled", &sched_cols)
        ),
        table(
            &ready_cols
                .map(str::to_uppercase)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &rows("ready", &ready_cols)
        ),
    ))
}

/// `ctl suspensions`.
pub fn suspensions(api: &Api, as_json: bool) -> Result<String, CtlError> {
    let v = api.call("GET", "/api/v1/suspensions", None)?;
    if as_json {
        return Ok(format!("{v}\n"));
    }
    let cols = [
        "id", "kind", "tenant", "campaign", "source", "site", "domain", "rule", "expires", "reason",
    ];
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| cols.iter().map(|c| text(&s[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    Ok(table(
        &cols
            .map(str::to_uppercase)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &rows,
    ))
}

/// What `ctl suspend` and `ctl bounce` say about their target.
#[derive(Default)]
pub struct Target {
    /// Tenant.
    pub tenant: Option<String>,
    /// Campaign.
    pub campaign: Option<String>,
    /// Domain.
    pub domain: Option<String>,
    /// Source.
    pub source: Option<String>,
    /// Site.
    pub site: Option<String>,
}

/// `ctl suspend`.
pub fn suspend(
    api: &Api,
    t: &Target,
    duration: &str,
    reason: &str,
    as_json: bool,
) -> Result<String, CtlError> {
    let body = json!({
        "tenant": t.tenant, "campaign": t.campaign, "domain": t.domain,
        "source": t.source, "site": t.site, "duration": duration, "reason": reason,
    });
    let v = api.call("POST", "/api/v1/suspensions", Some(&body))?;
    Ok(if as_json {
        format!("{v}\n")
    } else {
        format!(
            "suspended: {} (until {})\n",
            text(&v["id"]),
            text(&v["expires"])
        )
    })
}

/// `ctl resume ID`.
pub fn resume(api: &Api, id: &str, as_json: bool) -> Result<String, CtlError> {
    api.call("DELETE", &format!("/api/v1/suspensions/{id}"), None)?;
    Ok(if as_json {
        format!("{}\n", json!({"resumed": id}))
    } else {
        format!("resumed: {id}\n")
    })
}

/// `ctl bounce`.
pub fn bounce(api: &Api, t: &Target, reason: &str, as_json: bool) -> Result<String, CtlError> {
    let body =
        json!({"tenant": t.tenant, "campaign": t.campaign, "domain": t.domain, "reason": reason});
    let v = api.call("POST", "/api/v1/bounces", Some(&body))?;
    Ok(if as_json {
        format!("{v}\n")
    } else {
        format!("bounced: {}\n", text(&v["bounced"]))
    })
}

/// Per-tenant counters read from `/metrics`.
#[derive(Default, Clone)]
struct TenantFigures {
    queued: f64,
    delivered: f64,
    deferred: f64,
    bounced: f64,
}

/// Parse `name{a="x",b="y"} value` lines into (labels, value) for one metric.
fn series<'a>(metrics: &'a str, name: &str) -> Vec<(BTreeMap<&'a str, &'a str>, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let labels = head[name.len() + 1..].strip_suffix('}')?;
            let mut map = BTreeMap::new();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"")?;
                map.insert(k, v.trim_end_matches('"'));
            }
            Some((map, value.parse().ok()?))
        })
        .collect()
}

fn tenant_figures(metrics: &str) -> BTreeMap<String, TenantFigures> {
    let mut out: BTreeMap<String, TenantFigures> = BTreeMap::new();
    for (l, v) in series(metrics, "switchyard_delivery_total") {
        let f = out
            .entry(l.get("tenant").unwrap_or(&"").to_string())
            .or_default();
        match l.get("outcome").copied() {
            Some("delivered") => f.delivered += v,
            Some("transient") => f.deferred += v,
            Some("bounced") | Some("expired") | Some("admin_bounced") => f.bounced += v,
            _ => {}
        }
    }
    for (l, v) in series(metrics, "switchyard_scheduled_messages") {
        out.entry(l.get("tenant").unwrap_or(&"").to_string())
            .or_default()
            .queued += v;
    }
    out
}

/// `ctl top`: refresh every `interval`, `iterations` times (0 = until interrupted).
pub fn top(api: &Api, interval: Duration, iterations: u64) -> Result<(), CtlError> {
    let mut before: Option<BTreeMap<String, TenantFigures>> = None;
    let mut n = 0;
    loop {
        let (status, metrics) = api.raw("GET", "/metrics", None)?;
        if status != 200 {
            return Err(CtlError(format!("GET /metrics: {status}")));
        }
        let now = tenant_figures(&metrics);
        let secs = interval.as_secs_f64().max(0.001);
        let rate = |t: &str, f: fn(&TenantFigures) -> f64| match &before {
            Some(b) => ((now.get(t).map(f).unwrap_or(0.0) - b.get(t).map(f).unwrap_or(0.0)) / secs)
                .max(0.0),
            None => 0.0,
        };
        let rows: Vec<Vec<String>> = now
            .iter()
            .map(|(t, f)| {
                vec![
                    t.clone(),
                    format!("{}", f.queued),
                    format!("{:.1}", rate(t, |f| f.delivered)),
                    format!("{:.1}", rate(t, |f| f.deferred)),
                    format!("{:.1}", rate(t, |f| f.bounced)),
                ]
            })
            .collect();
        let mut screen = String::from("\x1b[2J\x1b[H");
        screen.push_str(&format!("switchyard top — {}   (per second)\n\n", api.url));
        screen.push_str(&table(
            &["TENANT", "QUEUED", "DELIVERED/s", "DEFERRED/s", "BOUNCED/s"],
            &rows,
        ));
        screen.push_str("\nSUSPENSIONS\n");
        screen.push_str(&suspensions(api, false)?);
        let mut sites: Vec<(f64, String, String, f64)> =
            series(&metrics, "switchyard_ready_messages")
                .into_iter()
                .map(|(l, v)| {
                    let conns = series(&metrics, "switchyard_connections")
                        .into_iter()
                        .find(|(c, _)| {
                            c.get("site") == l.get("site") && c.get("source") == l.get("source")
                        })
                        .map(|(_, c)| c)
                        .unwrap_or(0.0);
                    (
                        v,
                        l.get("source").unwrap_or(&"").to_string(),
                        l.get("site").unwrap_or(&"").to_string(),
                        conns,
                    )
                })
                .collect();
        sites.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.3.total_cmp(&a.3)));
        let site_rows: Vec<Vec<String>> = sites
            .iter()
            .take(10)
            .map(|(m, src, site, c)| {
                vec![site.clone(), src.clone(), format!("{m}"), format!("{c}")]
            })
            .collect();
        screen.push_str("\nBUSIEST SITES\n");
        screen.push_str(&table(
            &["SITE", "SOURCE", "READY", "CONNECTIONS"],
            &site_rows,
        ));
        print!("{screen}");
        let _ = std::io::stdout().flush();
        before = Some(now);
        n += 1;
        if iterations > 0 && n >= iterations {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}
