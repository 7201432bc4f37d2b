//! `switchyard ctl`: the admin client. Every subcommand is one or a few calls to the HTTP
//! API of a running daemon (`--api`, `SWITCHYARD_API`; `--token`, `SWITCHYARD_TOKEN`), shown
//! as aligned tables for people or, with `--json`, as the API's JSON for scripts.
//!
//! HTTP goes through `ureq` (plain HTTP to a loopback API, or HTTPS through a proxy that
//! terminates TLS; chunked and compressed bodies alike), and `ctl top` reads `/metrics` with
//! `prometheus-parse`.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

/// Where and how to reach the daemon.
pub struct Api {
    /// `http://host:port` (or `https://` through a TLS proxy).
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
}

/// A failed command: what to print.
pub struct CtlError(pub String);

/// Largest answer read (a busy daemon's `/metrics` is a few MiB).
const MAX_ANSWER: u64 = 256 << 20;

impl Api {
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
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            return Err(CtlError(format!(
                "--api {:?} must start with http:// or https://",
                self.url
            )));
        }
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let request = request
            .body(body.map(Value::to_string).unwrap_or_default())
            .map_err(|e| CtlError(format!("bad request to {url}: {e}")))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut response = agent.run(request).map_err(|e| {
            CtlError(format!(
                "cannot reach the daemon at {} ({e}); is `switchyard serve` running? Set --api or SWITCHYARD_API.",
                self.url
            ))
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| CtlError(format!("cannot read the answer of {url}: {e}")))?;
        Ok((status, text))
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

/// A list route shown as a table of `cols` (or its JSON).
fn listing(api: &Api, path: &str, cols: &[&str], as_json: bool) -> Result<String, CtlError> {
    let headers: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    listing_rows(api, path, &headers, as_json, |item| {
        cols.iter().map(|c| text(&item[*c])).collect()
    })
}

/// A list route shown as a table with `headers`, each item's row made by `row` (or its JSON).
fn listing_rows(
    api: &Api,
    path: &str,
    headers: &[&str],
    as_json: bool,
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<String, CtlError> {
    let v = api.call("GET", path, None)?;
    if as_json {
        return Ok(format!("{v}\n"));
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| a.iter().map(&row).collect())
        .unwrap_or_default();
    Ok(table(headers, &rows))
}

/// `ctl suspensions`.
pub fn suspensions(api: &Api, as_json: bool) -> Result<String, CtlError> {
    let cols = [
        "id", "kind", "tenant", "campaign", "source", "site", "domain", "rule", "expires", "reason",
    ];
    listing(api, "/api/v1/suspensions", &cols, as_json)
}

/// `ctl throttles`.
pub fn throttles(api: &Api, as_json: bool) -> Result<String, CtlError> {
    let cols = [
        "id", "tenant", "campaign", "site", "domain", "rate", "rule", "expires", "reason",
    ];
    listing(api, "/api/v1/throttles", &cols, as_json)
}

/// `ctl overrides`.
pub fn overrides(api: &Api, as_json: bool) -> Result<String, CtlError> {
    let cols = [
        "id", "source", "site", "domain", "options", "rule", "expires",
    ];
    listing(api, "/api/v1/overrides", &cols, as_json)
}

/// `ctl cluster`.
pub fn cluster(api: &Api, as_json: bool) -> Result<String, CtlError> {
    let v = api.call("GET", "/api/v1/cluster", None)?;
    if as_json {
        return Ok(format!("{v}\n"));
    }
    let redis = match (&v["redis"]["url"], v["redis"]["up"].as_bool()) {
        (Value::Null, _) => "no [cluster]: a single node".to_string(),
        (url, Some(true)) => format!("redis {} up", text(url)),
        (url, _) => format!(
            "redis {} DOWN: going on alone with the policy this node knows and 1/{} of each cluster limit (the nodes last seen)",
            text(url),
            v["nodes_last_seen"].as_u64().unwrap_or(1)
        ),
    };
    let rows: Vec<Vec<String>> = v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    ["node", "last_heartbeat", "queues", "connections"]
                        .iter()
                        .map(|c| text(&n[*c]))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(format!(
        "node {}; {redis}\n{}",
        text(&v["node"]),
        table(&["NODE", "LAST HEARTBEAT", "QUEUES", "CONNECTIONS"], &rows)
    ))
}

/// `ctl webhooks`.
pub fn webhooks(api: &Api, as_json: bool) -> Result<String, CtlError> {
    let headers = [
        "NAME",
        "URL",
        "CURSOR",
        "LAG",
        "LAST DELIVERY",
        "LAST ERROR",
    ];
    listing_rows(api, "/api/v1/webhooks", &headers, as_json, |w| {
        vec![
            text(&w["name"]),
            text(&w["url"]),
            format!(
                "{}:{}",
                text(&w["cursor"]["segment"]),
                text(&w["cursor"]["line"])
            ),
            format!("{:.1}s", w["lag_seconds"].as_f64().unwrap_or(0.0)),
            text(&w["last_delivery"]),
            text(&w["last_error"]),
        ]
    })
}

/// `ctl webhooks test NAME`.
pub fn webhook_test(api: &Api, name: &str, as_json: bool) -> Result<String, CtlError> {
    let path = format!("/api/v1/webhooks/{}/test", query_value(name));
    let v = api.call("POST", &path, None)?;
    Ok(if as_json {
        format!("{v}\n")
    } else {
        format!("{name}: the endpoint answered {}\n", text(&v["status"]))
    })
}

/// `ctl throttle`.
pub fn throttle(
    api: &Api,
    t: &Target,
    rate: &str,
    duration: &str,
    reason: &str,
    as_json: bool,
) -> Result<String, CtlError> {
    let body = json!({
        "tenant": t.tenant, "campaign": t.campaign, "domain": t.domain, "site": t.site,
        "rate": rate, "duration": duration, "reason": reason,
    });
    let v = api.call("POST", "/api/v1/throttles", Some(&body))?;
    Ok(if as_json {
        format!("{v}\n")
    } else {
        format!(
            "throttled: {} at {} (until {})\n",
            text(&v["id"]),
            text(&v["rate"]),
            text(&v["expires"])
        )
    })
}

/// `ctl unthrottle ID` and `ctl revert ID`: end a throttle or an override now.
pub fn end(
    api: &Api,
    route: &str,
    id: &str,
    done: &str,
    as_json: bool,
) -> Result<String, CtlError> {
    api.call("DELETE", &format!("/api/v1/{route}/{id}"), None)?;
    Ok(if as_json {
        format!("{}\n", json!({ done: id }))
    } else {
        format!("{done}: {id}\n")
    })
}

/// What `ctl suspend`, `ctl throttle` and `ctl bounce` say about their target.
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

/// `ctl bounce`: now, and with `duration` also what arrives until it is over.
pub fn bounce(
    api: &Api,
    t: &Target,
    duration: Option<&str>,
    reason: &str,
    as_json: bool,
) -> Result<String, CtlError> {
    let body = json!({
        "tenant": t.tenant, "campaign": t.campaign, "domain": t.domain, "reason": reason,
        "duration": duration,
    });
    let v = api.call("POST", "/api/v1/bounces", Some(&body))?;
    Ok(if as_json {
        format!("{v}\n")
    } else if v["id"].is_string() {
        format!(
            "bounced: {}; bouncing what arrives until {} ({})\n",
            text(&v["bounced"]),
            text(&v["expires"]),
            text(&v["id"])
        )
    } else {
        format!("bounced: {}\n", text(&v["bounced"]))
    })
}

/// `ctl bounces`.
pub fn bounces(api: &Api, as_json: bool) -> Result<String, CtlError> {
    let cols = [
        "id", "tenant", "campaign", "domain", "site", "rule", "expires", "reason",
    ];
    listing(api, "/api/v1/bounces", &cols, as_json)
}

/// A query-string value or a path segment, percent-encoded.
fn query_value(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `ctl explain`: why a tenant's mail to a domain behaves as it does.
pub fn explain(api: &Api, t: &Target, as_json: bool) -> Result<String, CtlError> {
    let (Some(tenant), Some(domain)) = (&t.tenant, &t.domain) else {
        return Err(CtlError("explain needs --tenant and --domain".into()));
    };
    let mut path = format!(
        "/api/v1/explain?tenant={}&domain={}",
        query_value(tenant),
        query_value(domain)
    );
    for (key, value) in [("campaign", &t.campaign), ("source", &t.source)] {
        if let Some(v) = value {
            path.push_str(&format!("&{key}={}", query_value(v)));
        }
    }
    let v = api.call("GET", &path, None)?;
    if as_json {
        return Ok(format!("{v}\n"));
    }
    let mut out = format!(
        "{} -> {} (site {})\n\nQUEUE POLICY\n",
        text(&v["tenant"]),
        text(&v["domain"]),
        text(&v["site"])
    );
    let rows: Vec<Vec<String>> = v["queue_policy"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, x)| vec![k.clone(), text(&x["value"]), text(&x["from"])])
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&table(&["KEY", "VALUE", "FROM"], &rows));
    for path in v["shaping"].as_array().into_iter().flatten() {
        out.push_str(&format!("\nSHAPING via {}\n", text(&path["source"])));
        let rows: Vec<Vec<String>> = path["options"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, x)| {
                        vec![
                            k.clone(),
                            text(&x["value"]),
                            text(&x["block"]),
                            text(&x["at"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&table(&["OPTION", "VALUE", "BLOCK", "AT"], &rows));
    }
    for key in ["suspensions", "throttles", "overrides", "bounces"] {
        let list = v[key].as_array().cloned().unwrap_or_default();
        out.push_str(&format!("\n{} ({})\n", key.to_uppercase(), list.len()));
        for x in list {
            out.push_str(&format!("  {x}\n"));
        }
    }
    Ok(out)
}

/// Per-tenant counters read from `/metrics`.
#[derive(Default, Clone)]
struct TenantFigures {
    queued: f64,
    delivered: f64,
    deferred: f64,
    bounced: f64,
}

/// The samples of one metric in a `/metrics` text: (labels, value).
fn series(metrics: &prometheus_parse::Scrape, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    metrics
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some((labels, value))
        })
        .collect()
}

fn tenant_figures(metrics: &prometheus_parse::Scrape) -> BTreeMap<String, TenantFigures> {
    let mut out: BTreeMap<String, TenantFigures> = BTreeMap::new();
    for (l, v) in series(metrics, "switchyard_delivery_total") {
        let f = out
            .entry(l.get("tenant").cloned().unwrap_or_default())
            .or_default();
        match l.get("outcome").map(String::as_str) {
            Some("delivered") => f.delivered += v,
            Some("transient") => f.deferred += v,
            Some("bounced") | Some("expired") | Some("admin_bounced") => f.bounced += v,
            _ => {}
        }
    }
    for (l, v) in series(metrics, "switchyard_scheduled_messages") {
        out.entry(l.get("tenant").cloned().unwrap_or_default())
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
        let (status, text) = api.raw("GET", "/metrics", None)?;
        if status != 200 {
            return Err(CtlError(format!("GET /metrics: {status}")));
        }
        let metrics = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .map_err(|e| CtlError(format!("cannot read /metrics: {e}")))?;
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
                        l.get("source").cloned().unwrap_or_default(),
                        l.get("site").cloned().unwrap_or_default(),
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
