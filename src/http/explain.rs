//! `GET /api/v1/explain?tenant=T&domain=D[&campaign=C][&source=S]`: why a tenant's mail to a
//! domain behaves as it does. For that path it shows the site the domain's route goes to,
//! the queue policy (retry, expiry, pool, pace) with the section each value comes from, the
//! effective shaping of each egress source of the pool — every option with the block and the
//! `file:line` it was written at (default < providers < destination < source blocks) — and
//! the suspensions, throttles, overrides and bounce orders that apply to it now.

use super::{bad_request, stopped, ApiError, HttpState};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_actors::message::QueueIdentity;
use switchyard_actors::ports::RouteError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExplainQuery {
    tenant: String,
    domain: String,
    campaign: Option<String>,
    source: Option<String>,
}

/// Where a queue policy value comes from: the last layered section that sets it.
fn policy_source(
    policies: &switchyard_actors::queue_policy::QueuePolicies,
    id: &QueueIdentity,
    set: impl Fn(&switchyard_actors::queue_policy::PolicyLayer) -> bool,
) -> String {
    policies
        .layers_for(id)
        .into_iter()
        .rev()
        .find(|(_, l)| set(l))
        .map_or_else(|| "[queue]".into(), |(section, _)| section)
}

pub(super) async fn explain(
    State(state): State<HttpState>,
    query: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| bad_request(format!("explain needs ?tenant=T&domain=D: {e}")))?;
    let domain = q.domain.to_ascii_lowercase();
    let engine = &state.engine;
    let site = match engine.route(&domain).await {
        Ok(route) => route.site.to_string(),
        Err(RouteError::Permanent(r)) | Err(RouteError::Transient(r)) => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{domain} has no route now: {}", r.match_text()),
            ))
        }
    };
    let id = QueueIdentity {
        tenant: q.tenant.as_str().into(),
        campaign: q.campaign.as_deref().map(Into::into),
        domain: domain.as_str().into(),
    };
    let policies = engine.queue_policies();
    let policy = policies.policy_for(&id);
    let pool = engine
        .pools()
        .pool_of(&q.tenant, policy.egress_pool.as_deref());
    let from = |set: fn(&switchyard_actors::queue_policy::PolicyLayer) -> bool| {
        policy_source(&policies, &id, set)
    };
    let queue_policy = json!({
        "retry_interval": {"value": humantime::format_duration(policy.retry.retry_interval).to_string(), "from": from(|l| l.retry_interval.is_some())},
        "max_retry_interval": {"value": humantime::format_duration(policy.retry.max_retry_interval).to_string(), "from": from(|l| l.max_retry_interval.is_some())},
        "max_age": {"value": humantime::format_duration(policy.retry.max_age).to_string(), "from": from(|l| l.max_age.is_some())},
        "egress_pool": {"value": pool.name.to_string(), "from": if policy.egress_pool.is_some() { from(|l| l.egress_pool.is_some()) } else { format!("[tenant.\"{}\"] pool, else \"default\"", q.tenant) }},
        "max_message_rate": {"value": policy.max_message_rate.map(|r| r.to_string()), "from": from(|l| l.max_message_rate.is_some())},
    });
    let shaping = engine.shaping();
    let sources: Vec<String> = match &q.source {
        Some(s) => vec![s.clone()],
        None => pool
            .members
            .iter()
            .map(|(s, _)| s.name.to_string())
            .collect(),
    };
    let paths: Vec<Value> = sources
        .iter()
        .map(|source| {
            json!({
                "source": source,
                "blocks": shaping.layers(&domain, &site, source)
                    .into_iter()
                    .filter(|b| shaping.origins.contains_key(b))
                    .collect::<Vec<_>>(),
                "options": shaping.explain(&domain, &site, source),
            })
        })
        .collect();
    let applies =
        |tenant: Option<&str>, campaign: Option<&str>, d: Option<&str>, s: Option<&str>| {
            tenant.is_none_or(|t| t == q.tenant)
                && campaign.is_none_or(|c| Some(c) == q.campaign.as_deref())
                && d.is_none_or(|d| d == domain)
                && s.is_none_or(|s| s == site)
        };
    let suspensions: Vec<Value> = engine
        .suspensions()
        .await
        .ok_or_else(stopped)?
        .into_iter()
        .filter(|s| match &s.source {
            Some(src) => sources.contains(src) && s.site.as_deref().is_none_or(|x| x == site),
            None => applies(s.tenant.as_deref(), s.campaign.as_deref(), s.domain.as_deref(), s.site.as_deref()),
        })
        .map(|s| json!({"id": s.id, "kind": s.kind, "tenant": s.tenant, "campaign": s.campaign, "source": s.source, "site": s.site, "domain": s.domain, "rule": s.rule, "reason": s.reason}))
        .collect();
    let throttles: Vec<Value> = engine
        .throttles()
        .await
        .ok_or_else(stopped)?
        .into_iter()
        .filter(|t| t.applies(&q.tenant, q.campaign.as_deref(), &domain, &site))
        .map(|t| json!({"id": t.id, "rate": t.rate.to_string(), "campaign": t.campaign, "site": t.site, "domain": t.domain, "rule": t.rule}))
        .collect();
    let overrides: Vec<Value> = engine
        .overrides()
        .await
        .ok_or_else(stopped)?
        .into_iter()
        .filter(|o| o.site == site && o.source.as_ref().is_none_or(|s| sources.contains(s)))
        .map(|o| json!({"id": o.id, "source": o.source, "options": {o.name.clone(): o.value}, "rule": o.rule}))
        .collect();
    let bounces: Vec<Value> = engine
        .bounce_orders()
        .await
        .ok_or_else(stopped)?
        .into_iter()
        .filter(|b| b.applies(&q.tenant, q.campaign.as_deref(), &domain, &site))
        .map(|b| json!({"id": b.id, "reason": b.reason, "rule": b.rule, "expires": b.expires()}))
        .collect();
    Ok(Json(json!({
        "tenant": q.tenant,
        "campaign": q.campaign,
        "domain": domain,
        "site": site,
        "queue_policy": queue_policy,
        "shaping": paths,
        "suspensions": suspensions,
        "throttles": throttles,
        "overrides": overrides,
        "bounces": bounces,
    }))
    .into_response())
}
