//! The admin HTTP server: health, `/metrics` and the `/api/v1` routes of CONTRACT.md.
//!
//! Handlers talk to the actors through the engine (the SuspensionRegister for suspensions;
//! throttles and overrides are in [`controls`]). Every
//! error is a JSON `{"error": "..."}` with a 4xx status, never a panic; bodies are read as
//! bytes and parsed here so a malformed one gets a clear message. With `[http] token` set,
//! every `/api/v1` route but health needs `Authorization: Bearer TOKEN`.

mod controls;
mod explain;

use crate::ingress::accept::Accepted;
use crate::ingress::tenancy::{check_name, take_headers};
use crate::ingress::Ingress;
use crate::reload::Reloader;
use crate::spool::MessageId;
use crate::telemetry::Telemetry;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use switchyard_actors::engine::Engine;
use switchyard_actors::message::now_ms;
use switchyard_actors::suspension::{rfc3339_ms, Suspension, SuspensionKind};
use tokio::net::TcpListener;

/// Largest request body accepted (an injected message is limited by `[smtp]
/// max_message_size` as well).
const MAX_BODY: usize = 64 << 20;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Metrics renderer.
    pub telemetry: Telemetry,
    /// The delivery engine.
    pub engine: Arc<Engine>,
    /// Bearer token for the API, when set.
    pub token: Option<Arc<str>>,
    /// The ingress, for HTTP injection.
    pub ingress: Arc<Ingress>,
    /// Live reload.
    pub reloader: Arc<Reloader>,
    /// Webhook senders.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// This node's cluster membership, with `[cluster]`.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The router with every route.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/suspensions",
            get(list_suspensions).post(create_suspension),
        )
        .route("/api/v1/suspensions/{id}", delete(resume_suspension))
        .route(
            "/api/v1/throttles",
            get(controls::list_throttles).post(controls::create_throttle),
        )
        .route("/api/v1/throttles/{id}", delete(controls::delete_throttle))
        .route("/api/v1/overrides", get(controls::list_overrides))
        .route("/api/v1/explain", get(explain::explain))
        .route("/api/v1/overrides/{id}", delete(controls::delete_override))
        .route("/api/v1/queues", get(queues))
        .route(
            "/api/v1/bounces",
            get(controls::list_bounces).post(controls::bounce),
        )
        .route("/api/v1/bounces/{id}", delete(controls::cancel_bounce))
        .route("/api/v1/inject", post(inject))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/webhooks", get(list_webhooks))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/webhooks/{name}/test", post(test_webhook))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// `GET /api/v1/cluster`: this node, Redis, and the nodes heard from. Without `[cluster]`:
/// this node alone, `redis.url` null.
async fn cluster(State(state): State<HttpState>) -> Json<serde_json::Value> {
    Json(match &state.cluster {
        Some(c) => c.view(),
        None => json!({
            "node": crate::cluster::hostname(),
            "redis": { "up": false, "url": null },
            "nodes": [],
        }),
    })
}

/// `GET /api/v1/webhooks`: each endpoint's cursor, lag and last error.
async fn list_webhooks(State(state): State<HttpState>) -> Json<serde_json::Value> {
    Json(serde_json::Value::Array(state.webhooks.status()))
}

/// `POST /api/v1/webhooks/{name}/test`: one signed test event, now; `{"status"}` is the
/// endpoint's answer. An unknown name is a 404; an endpoint that cannot be reached, a 502.
async fn test_webhook(
    State(state): State<HttpState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.webhooks.test(&name).await {
        Some(Ok(status)) => Ok(Json(json!({ "webhook": name, "status": status }))),
        Some(Err(e)) => Err(ApiError(StatusCode::BAD_GATEWAY, e)),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no webhook named {name:?}"),
        )),
    }
}

/// An API error: a 4xx (or 5xx) with `{"error": message}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// A change the engine did not finish: 503 with what happened.
impl From<switchyard_actors::engine::NotDone> for ApiError {
    fn from(e: switchyard_actors::engine::NotDone) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// The engine has stopped (shutdown): 503.
fn stopped() -> ApiError {
    switchyard_actors::engine::NotDone::Stopped.into()
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let open = path == "/api/v1/health" || !path.starts_with("/api/v1/");
    if let (Some(token), false) = (&state.token, open) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.as_bytes(), token.as_bytes()) {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            )
            .into_response();
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        // Refuse by the declared length, before reading any of it.
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// A request body as read by axum, or its rejection (too large, broken) as a JSON error.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// Parse a JSON body into `T`, with the reason when it does not fit.
fn parse_body<T: for<'de> Deserialize<'de>>(body: Body) -> Result<T, ApiError> {
    let body = body.map_err(|r| ApiError(r.status(), r.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| bad_request(format!("bad request body: {e}")))
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route".into(),
    )
}

fn suspension_json(s: &Suspension) -> serde_json::Value {
    json!({
        "id": s.id,
        "kind": s.kind,
        "tenant": s.tenant,
        "campaign": s.campaign,
        "domain": s.domain,
        "site": s.site,
        "source": s.source,
        "reason": s.reason,
        "rule": s.rule,
        "created": rfc3339_ms(s.created_ms),
        "expires": rfc3339_ms(s.expires_ms),
    })
}

async fn list_suspensions(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let all = state.engine.suspensions().await.ok_or_else(stopped)?;
    let list: Vec<serde_json::Value> = all.iter().map(suspension_json).collect();
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSuspension {
    tenant: Option<String>,
    campaign: Option<String>,
    domain: Option<String>,
    source: Option<String>,
    site: Option<String>,
    duration: String,
    reason: Option<String>,
}

async fn create_suspension(
    State(state): State<HttpState>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: NewSuspension = parse_body(body)?;
    let duration = controls::positive_duration(&req.duration)?;
    let kind = match (&req.tenant, &req.campaign, &req.source) {
        (Some(_), _, Some(_)) => {
            return Err(bad_request(
                "suspend either a tenant (or campaign) or a source, not both",
            ))
        }
        (None, Some(_), _) => return Err(bad_request("a campaign needs its tenant")),
        (Some(_), Some(_), None) => SuspensionKind::Campaign,
        (Some(_), None, None) => SuspensionKind::Tenant,
        (None, None, Some(_)) => {
            if req.site.is_none() {
                return Err(bad_request("a source suspension needs the site"));
            }
            SuspensionKind::Source
        }
        (None, None, None) => return Err(bad_request("say which tenant, campaign or source")),
    };
    if let Some(source) = &req.source {
        if !state.engine.pools().has_source(source) {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no source named {source:?}"),
            ));
        }
    }
    let now = now_ms();
    let s = Suspension {
        id: String::new(),
        kind,
        tenant: req.tenant,
        campaign: req.campaign,
        domain: req.domain.map(|d| d.to_ascii_lowercase()),
        site: req.site,
        source: req.source,
        reason: req
            .reason
            .unwrap_or_else(|| "suspended by an operator".into()),
        rule: None,
        created_ms: now,
        expires_ms: now + duration.as_millis() as u64,
        updated_ms: 0,
    };
    let stored = state.engine.suspend(s).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": stored.id, "expires": rfc3339_ms(stored.expires_ms)})),
    )
        .into_response())
}

async fn resume_suspension(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = state.engine.resume(id.clone()).await?;
    if found {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no suspension {id:?}"),
        ))
    }
}

/// Serve the router on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: HttpState) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("HTTP API on {addr}");
    }
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await?;
    Ok(())
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.telemetry.render(),
    )
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such route"})),
    )
}

async fn queues(State(state): State<HttpState>) -> impl IntoResponse {
    let (mut scheduled, mut ready) = state.engine.queues().await;
    scheduled.sort_by(|a, b| a.name.cmp(&b.name));
    ready.sort_by(|a, b| a.name.cmp(&b.name));
    Json(json!({ "scheduled": scheduled, "ready": ready }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectRecipient {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectRequest {
    envelope_sender: String,
    recipients: Vec<InjectRecipient>,
    content: String,
    tenant: Option<String>,
    campaign: Option<String>,
}

/// Content with CRLF line ends (a bare LF becomes CRLF, as over SMTP).
fn crlf(content: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 40);
    let mut prev = 0u8;
    for &b in content.as_bytes() {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn inject(
    State(state): State<HttpState>,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<std::net::SocketAddr>,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let req: InjectRequest = parse_body(body)?;
    let ingress = &state.ingress;
    let sender = req.envelope_sender.trim().to_string();
    if !sender.is_empty() && !sender.contains('@') {
        return Err(bad_request(format!(
            "envelope_sender {sender:?} is not an address"
        )));
    }
    if req.recipients.is_empty() {
        return Err(bad_request("recipients is empty"));
    }
    if req.recipients.len() > ingress.smtp.max_recipients {
        return Err(bad_request(format!(
            "more than {} recipients",
            ingress.smtp.max_recipients
        )));
    }
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for r in req.recipients {
        match r.email.trim().rsplit_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !domain.is_empty()
                    && !r.email.contains(char::is_whitespace) =>
            {
                accepted.push((r.email.trim().to_string(), domain.to_ascii_lowercase()))
            }
            _ => rejected.push(json!({"email": r.email, "error": "not an address with a domain"})),
        }
    }
    if accepted.is_empty() {
        return Err(bad_request("no valid recipient"));
    }
    let mut content = crlf(&req.content);
    if content.len() as u64 > ingress.smtp.max_message_size.0 {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "content exceeds max_message_size".into(),
        ));
    }
    let tenancy = &ingress.tenancy;
    let headers = take_headers(
        &mut content,
        &tenancy.tenant_header,
        &tenancy.campaign_header,
    );
    let tenant = req
        .tenant
        .or(headers.tenant)
        .unwrap_or_else(|| tenancy.default_tenant.clone());
    check_name("tenant", &tenant).map_err(bad_request)?;
    let campaign = req.campaign.or(headers.campaign);
    if let Some(c) = &campaign {
        check_name("campaign", c).map_err(bad_request)?;
    }
    let id = MessageId::new();
    let mut message = format!(
        "Received: from [{}] by {} (switchyard) with HTTP id {id};\r\n\t{}\r\n",
        client.ip(),
        ingress.hostname,
        httpdate::fmt_http_date(std::time::SystemTime::now())
    )
    .into_bytes();
    message.extend_from_slice(&content);
    let n = accepted.len();
    let stored = ingress
        .store(
            id,
            Accepted {
                sender,
                recipients: accepted,
                tenant,
                campaign,
                message,
                client: client.to_string(),
                helo: String::new(),
            },
        )
        .await;
    match stored {
        Ok(()) => {
            metrics::histogram!("switchyard_injection_seconds")
                .record(started.elapsed().as_secs_f64());
            Ok(
                Json(json!({"id": id.to_string(), "accepted": n, "rejected": rejected}))
                    .into_response(),
            )
        }
        Err((e, _)) => {
            tracing::error!("cannot store an HTTP injection from {client}: {e}");
            Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                e.reply().1.to_string(),
            ))
        }
    }
}

async fn reload(State(state): State<HttpState>) -> Result<Response, ApiError> {
    match state.reloader.reload().await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(errors) => Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "reload refused, the running config stays: {}",
                errors.join("; ")
            ),
        )),
    }
}
