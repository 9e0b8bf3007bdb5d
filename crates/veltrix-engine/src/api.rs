//! The admin API (loopback by default): `GET /healthz` (the process is up) and `GET /readyz`
//! (queues open and ingest accepting).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::problem::Problem;

pub(crate) fn router(accepting: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(accepting)
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(accepting): State<Arc<AtomicBool>>) -> Response {
    if accepting.load(Ordering::Acquire) {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            "the engine is starting or shutting down",
        )
        .retry_after(1)
        .into_response()
    }
}
