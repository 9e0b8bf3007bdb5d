//! The admin API (loopback by default): `GET /healthz` (the process is up), `GET /readyz`
//! (queues open and ingest accepting), `GET /metrics` (Prometheus text format),
//! `GET /api/v1/stats` (live statistics, `docs/stats-api.md`), and the
//! dead-letter routes `GET /api/v1/dlq/{pipeline}?limit=N`, `POST /api/v1/dlq/{pipeline}/replay`
//! (`{"ids": [...]}` or `{"all": true}`) and `POST /api/v1/dlq/{pipeline}/purge` (same body).
//! When `[api] token` is set, every route but `/healthz` needs `Authorization: Bearer <token>`,
//! compared in constant time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::deadletter::{DeadLetters, LIST_MAX, QueueLookup};
use crate::problem::Problem;
use crate::stats::Registry;

/// Shared by the admin routes.
pub(crate) struct ApiState {
    pub(crate) stats: Arc<Registry>,
    pub(crate) accepting: Arc<AtomicBool>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) dead_letters: HashMap<String, Arc<DeadLetters>>,
    pub(crate) queues: QueueLookup,
    pub(crate) token: Option<String>,
}

pub(crate) fn router(state: Arc<ApiState>) -> Router {
    let guarded = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/dlq/{pipeline}", get(dlq_list))
        .route("/api/v1/dlq/{pipeline}/replay", post(dlq_replay))
        .route("/api/v1/dlq/{pipeline}/purge", post(dlq_purge))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/healthz", get(healthz))
        .merge(guarded)
        .with_state(state)
}

async fn require_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &st.token
        && !crate::auth::bearer_matches(&headers, std::slice::from_ref(token))
    {
        return crate::auth::unauthorized(
            "this route needs `Authorization: Bearer <token>` with the [api] token",
        );
    }
    next.run(request).await
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(st): State<Arc<ApiState>>) -> Response {
    if st.accepting.load(Ordering::Acquire) {
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

async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn stats(State(st): State<Arc<ApiState>>) -> Response {
    axum::Json(st.stats.snapshot()).into_response()
}

fn dlq_of(st: &ApiState, pipeline: &str) -> Result<Arc<DeadLetters>, Problem> {
    st.dead_letters.get(pipeline).cloned().ok_or_else(|| {
        let mut known: Vec<&str> = st.dead_letters.keys().map(String::as_str).collect();
        known.sort_unstable();
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-pipeline",
            "Unknown pipeline",
            format!("no pipeline `{pipeline}`; pipelines: {}", known.join(", ")),
        )
    })
}

async fn dlq_list(
    State(st): State<Arc<ApiState>>,
    Path(pipeline): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let dlq = dlq_of(&st, &pipeline)?;
        let limit = match query.get("limit") {
            None => 100,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=LIST_MAX).contains(n))
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad-limit",
                        "Bad limit",
                        format!("`limit` must be a whole number from 1 to {LIST_MAX}"),
                    )
                })?,
        };
        let entries = dlq
            .list(limit)
            .await
            .map_err(|e| storage_problem(&dlq.name, &e.to_string()))?;
        Ok::<_, Problem>(
            axum::Json(json!({ "pipeline": pipeline, "entries": entries })).into_response(),
        )
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `{"ids": [..]}` or `{"all": true}`.
fn selection(body: &[u8]) -> Result<Option<HashSet<String>>, Problem> {
    let bad = |detail: &str| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-selection",
            "Bad selection",
            detail.to_owned(),
        )
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("the body must be JSON: {e}")))?;
    if value["all"] == json!(true) {
        return Ok(None);
    }
    match value["ids"].as_array() {
        Some(ids) if !ids.is_empty() => ids
            .iter()
            .map(|id| {
                id.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("`ids` must be strings"))
            })
            .collect::<Result<HashSet<_>, _>>()
            .map(Some),
        _ => Err(bad("send {\"ids\": [\"…\"]} or {\"all\": true}")),
    }
}

fn storage_problem(dlq: &str, detail: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "dlq-unavailable",
        "Dead-letter queue unavailable",
        format!("dead-letter queue `{dlq}`: {detail}"),
    )
    .retry_after(1)
}

async fn dlq_take(
    st: &ApiState,
    pipeline: &str,
    body: &[u8],
    purge: bool,
) -> Result<Response, Problem> {
    let dlq = dlq_of(st, pipeline)?;
    let ids = selection(body)?;
    let outcome = dlq
        .take(ids.as_ref(), purge, &st.queues)
        .await
        .map_err(|e| storage_problem(&dlq.name, &e))?;
    Ok(axum::Json(json!({
        "pipeline": pipeline,
        "replayed": outcome.replayed,
        "purged": outcome.purged,
        "remaining": outcome.kept,
    }))
    .into_response())
}

async fn dlq_replay(
    State(st): State<Arc<ApiState>>,
    Path(pipeline): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    dlq_take(&st, &pipeline, &body, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn dlq_purge(
    State(st): State<Arc<ApiState>>,
    Path(pipeline): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    dlq_take(&st, &pipeline, &body, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
