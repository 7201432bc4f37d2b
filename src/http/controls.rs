//! The time-limited controls besides suspensions: throttles (`/api/v1/throttles`), bounces
//! (`/api/v1/bounces`: once, or an order lasting a `duration`) and the shaping overrides
//! automation sets (`/api/v1/overrides`). Each is listed and cancelled by id; throttles and
//! bounces are also made by hand. The SuspensionRegister owns them all.

use super::{bad_request, parse_body, stopped, ApiError, Body, HttpState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use switchyard_actors::message::now_ms;
use switchyard_actors::messages::AdminBounce;
use switchyard_actors::shaping::Rate;
use switchyard_actors::suspension::{rfc3339_ms, Override};
use switchyard_actors::throttle::Throttle;
use switchyard_actors::timed_bounce::TimedBounce;

/// A duration of a request body: humantime, more than zero.
pub(super) fn positive_duration(text: &str) -> Result<std::time::Duration, ApiError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| bad_request(format!("bad duration {text:?}: {e}")))?;
    if d.is_zero() {
        return Err(bad_request("duration must be more than 0"));
    }
    Ok(d)
}

fn throttle_json(t: &Throttle) -> serde_json::Value {
    json!({
        "id": t.id,
        "tenant": t.tenant,
        "campaign": t.campaign,
        "site": t.site,
        "domain": t.domain,
        "rate": t.rate.to_string(),
        "rule": t.rule,
        "reason": t.reason,
        "created": rfc3339_ms(t.created_ms),
        "expires": rfc3339_ms(t.expires_ms),
    })
}

pub(super) async fn list_throttles(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let all = state.engine.throttles().await.ok_or_else(stopped)?;
    Ok(Json(all.iter().map(throttle_json).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewThrottle {
    tenant: Option<String>,
    campaign: Option<String>,
    domain: Option<String>,
    site: Option<String>,
    rate: String,
    duration: String,
    reason: Option<String>,
}

pub(super) async fn create_throttle(
    State(state): State<HttpState>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: NewThrottle = parse_body(body)?;
    let tenant = req
        .tenant
        .ok_or_else(|| bad_request("say which tenant to throttle (and campaign, if one)"))?;
    let rate: Rate = req.rate.parse().map_err(bad_request)?;
    let duration = positive_duration(&req.duration)?;
    let now = now_ms();
    let t = Throttle {
        id: String::new(),
        tenant,
        campaign: req.campaign,
        domain: req.domain.map(|d| d.to_ascii_lowercase()),
        site: req.site,
        rate,
        reason: req
            .reason
            .unwrap_or_else(|| "throttled by an operator".into()),
        rule: None,
        created_ms: now,
        expires_ms: now + duration.as_millis() as u64,
        updated_ms: 0,
    };
    let stored = state.engine.throttle(t).await?;
    Ok((StatusCode::CREATED, Json(throttle_json(&stored))).into_response())
}

/// End the control `id` if `exists` says it is one of the listed kind; 404 otherwise.
async fn end(
    state: &HttpState,
    id: String,
    exists: bool,
    what: &str,
) -> Result<Response, ApiError> {
    if exists && state.engine.resume(id.clone()).await? {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Err(ApiError(StatusCode::NOT_FOUND, format!("no {what} {id:?}")))
}

pub(super) async fn delete_throttle(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let all = state.engine.throttles().await.ok_or_else(stopped)?;
    let exists = all.iter().any(|t| t.id == id);
    end(&state, id, exists, "throttle").await
}

fn override_json(o: &Override) -> serde_json::Value {
    json!({
        "id": o.id,
        "source": o.source,
        "site": o.site,
        "domain": o.domain,
        "options": { o.name.clone(): o.value },
        "rule": o.rule,
        "created": (o.created_ms > 0).then(|| rfc3339_ms(o.created_ms)),
        "expires": rfc3339_ms(o.expires_ms),
    })
}

pub(super) async fn list_overrides(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let all = state.engine.overrides().await.ok_or_else(stopped)?;
    Ok(Json(all.iter().map(override_json).collect::<Vec<_>>()).into_response())
}

pub(super) async fn delete_override(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let all = state.engine.overrides().await.ok_or_else(stopped)?;
    let exists = all.iter().any(|o| o.id == id);
    end(&state, id, exists, "override").await
}

fn bounce_json(b: &TimedBounce) -> serde_json::Value {
    json!({
        "id": b.id,
        "tenant": b.tenant,
        "campaign": b.campaign,
        "domain": b.domain,
        "site": b.site,
        "reason": b.reason,
        "rule": b.rule,
        "created": rfc3339_ms(b.created_ms),
        "expires": rfc3339_ms(b.expires_ms),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BounceRequest {
    tenant: Option<String>,
    campaign: Option<String>,
    domain: Option<String>,
    reason: Option<String>,
    duration: Option<String>,
}

/// Bounce queued mail now (`{"bounced": N}`), and with a `duration` keep bouncing what
/// arrives until it is over (`{"id", "bounced", "expires"}`).
pub(super) async fn bounce(
    State(state): State<HttpState>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: BounceRequest = parse_body(body)?;
    if req.tenant.is_none() && req.campaign.is_none() && req.domain.is_none() {
        return Err(bad_request(
            "say what to bounce: tenant, campaign and/or domain",
        ));
    }
    if req.campaign.is_some() && req.tenant.is_none() {
        return Err(bad_request("a campaign needs its tenant"));
    }
    let duration = req.duration.as_deref().map(positive_duration).transpose()?;
    let reason = req
        .reason
        .unwrap_or_else(|| "bounced by an operator".into());
    let domain = req.domain.map(|d| d.to_ascii_lowercase());
    // What is queued now is counted first; the order then catches what arrives.
    let now = AdminBounce {
        campaign: req.campaign.clone().map(Some),
        domain: domain.clone(),
        site: None,
        reason: reason.clone(),
    };
    let n = state.engine.bounce(req.tenant.as_deref(), now).await?;
    let order = match duration {
        Some(d) => {
            let now = now_ms();
            let order = TimedBounce {
                id: String::new(),
                tenant: req.tenant,
                campaign: req.campaign,
                domain,
                site: None,
                reason,
                rule: None,
                created_ms: now,
                expires_ms: now + d.as_millis() as u64,
                updated_ms: 0,
            };
            Some(state.engine.bounce_order(order).await?)
        }
        None => None,
    };
    Ok(Json(match order {
        Some(o) => json!({ "id": o.id, "bounced": n, "expires": rfc3339_ms(o.expires_ms) }),
        None => json!({ "bounced": n }),
    })
    .into_response())
}

pub(super) async fn list_bounces(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let all = state.engine.bounce_orders().await.ok_or_else(stopped)?;
    Ok(Json(all.iter().map(bounce_json).collect::<Vec<_>>()).into_response())
}

pub(super) async fn cancel_bounce(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let all = state.engine.bounce_orders().await.ok_or_else(stopped)?;
    let exists = all.iter().any(|b| b.id == id);
    end(&state, id, exists, "bounce").await
}
