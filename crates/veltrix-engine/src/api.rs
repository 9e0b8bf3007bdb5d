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
use axum::routing::{MethodRouter, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::deadletter::{DeadLetters, LIST_MAX, QueueLookup};
use crate::engine::{Reload, Reloader};
use crate::listener::BodyError;
use crate::live::Live;
use crate::problem::Problem;

/// Shared by the admin routes.
pub(crate) struct ApiState {
    pub(crate) live: Arc<Live>,
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) accepting: Arc<AtomicBool>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) token: Option<String>,
    /// A request body (dead-letter selections) must arrive within this (408 after).
    pub(crate) body_timeout: std::time::Duration,
}

/// Every admin route that needs the `[api]` token when one is set, as (method, path). The
/// router is built from this list (a route missing here does not exist), so the tests that
/// knock on each of these without the token cover every guarded route.
pub const GUARDED_ROUTES: &[(&str, &str)] = &[
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/dlq/{pipeline}"),
    ("POST", "/api/v1/dlq/{pipeline}/replay"),
    ("POST", "/api/v1/dlq/{pipeline}/purge"),
    ("POST", "/api/v1/reload"),
];

/// The handler of a [`GUARDED_ROUTES`] entry.
fn guarded(method: &str, path: &str) -> MethodRouter<Arc<ApiState>> {
    match (method, path) {
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/api/v1/stats") => get(stats),
        ("GET", "/api/v1/dlq/{pipeline}") => get(dlq_list),
        ("POST", "/api/v1/dlq/{pipeline}/replay") => post(dlq_replay),
        ("POST", "/api/v1/dlq/{pipeline}/purge") => post(dlq_purge),
        ("POST", "/api/v1/reload") => post(reload),
        other => unreachable!("GUARDED_ROUTES lists {other:?}, which has no handler"),
    }
}

/// Largest dead-letter selection body (`{"ids": [...]}`).
const SELECTION_BYTES_MAX: usize = 2 * 1024 * 1024;

pub(crate) fn router(state: Arc<ApiState>) -> Router {
    let guarded = GUARDED_ROUTES
        .iter()
        .fold(Router::new(), |router, (method, path)| {
            router.route(path, guarded(method, path))
        })
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
    match st.live.stats() {
        Some(stats) => axum::Json(stats.snapshot()).into_response(),
        None => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "Starting",
            "no statistics yet",
        )
        .retry_after(1)
        .into_response(),
    }
}

fn dlq_of(st: &ApiState, pipeline: &str) -> Result<Arc<DeadLetters>, Problem> {
    let dlqs = st.live.dead_letters();
    dlqs.get(pipeline).cloned().ok_or_else(|| {
        let mut known: Vec<&str> = dlqs.keys().map(String::as_str).collect();
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
    body: axum::body::Body,
    purge: bool,
) -> Result<Response, Problem> {
    let dlq = dlq_of(st, pipeline)?;
    let body = crate::listener::read_body(body, SELECTION_BYTES_MAX, st.body_timeout)
        .await
        .map_err(|e| {
            let status = match e {
                BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
                BodyError::Unreadable(_) => StatusCode::BAD_REQUEST,
            };
            Problem::new(status, "bad-body", "Bad request body", e.to_string())
        })?;
    let ids = selection(&body)?;
    let outcome = dlq
        .take(ids.as_ref(), purge, &queue_lookup(&st.live))
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
    body: axum::body::Body,
) -> Response {
    dlq_take(&st, &pipeline, body, false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn dlq_purge(
    State(st): State<Arc<ApiState>>,
    Path(pipeline): Path<String>,
    body: axum::body::Body,
) -> Response {
    dlq_take(&st, &pipeline, body, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn queue_lookup(live: &Arc<Live>) -> QueueLookup {
    let live = live.clone();
    Arc::new(move |name: &str| live.queue_log(name))
}

/// `POST /api/v1/reload[?force=true]`: validate and apply the config file again.
async fn reload(
    State(st): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let force = query.get("force").is_some_and(|v| v == "true" || v == "1");
    match st.reloader.reload(force).await {
        Reload::Applied(changes) => axum::Json(json!({
            "status": "applied",
            "changed": !changes.is_empty(),
            "changes": changes.to_json(),
        }))
        .into_response(),
        Reload::Invalid(diagnostics) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-config",
            "Invalid config",
            format!("the new config is invalid; the running one keeps going:\n{diagnostics}"),
        )
        .into_response(),
        Reload::Refused(why) => Problem::new(
            StatusCode::CONFLICT,
            "reload-refused",
            "Reload refused",
            format!("{why}; the running config keeps going"),
        )
        .into_response(),
        Reload::Failed(why) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload-failed",
            "Reload failed",
            why,
        )
        .into_response(),
    }
}
