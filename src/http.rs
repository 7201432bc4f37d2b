//! The admin HTTP server: health, `/metrics`, and (later) the `/api/v1` routes of CONTRACT.md.
//!
//! Every error is a JSON `{"error": "..."}` with a 4xx status, never a panic.

use crate::telemetry::Telemetry;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Metrics renderer.
    pub telemetry: Telemetry,
}

/// The router with every route.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Serve the router on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: HttpState) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("HTTP API on {addr}");
    }
    axum::serve(listener, router(state)).await?;
    Ok(())
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<HttpState>,
) -> impl IntoResponse {
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
