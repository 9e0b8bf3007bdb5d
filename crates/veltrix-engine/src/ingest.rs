//! HTTP ingest: `POST /v1/events`.
//!
//! A request is all or nothing. The body is read up to `body_bytes_max` (413 beyond, without
//! reading further) within the listener's `body_timeout` (408 after it), decoded (415 for an unknown content type, 400 naming every bad event),
//! routed (422 naming every event whose type no queue takes), then appended to each queue as one
//! batch. `202 {"accepted": N}` is sent only after every queue's group commit made the events
//! durable. A full queue answers 429 with `Retry-After` at once; storage failures answer 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use veltrix_core::event::{self, DecodeError, Headers};

use crate::listener::BodyError;
use crate::live::Live;
use crate::problem::{EventProblem, Problem};
use crate::queues::Queue;
use crate::record;
use crate::stats::SourceCounters;
use veltrix_core::config::{self, WhenFull};

/// Shared by every ingest request.
pub(crate) struct IngestState {
    /// The source's name (metrics label).
    pub(crate) source: String,
    pub(crate) counters: Arc<SourceCounters>,
    /// `veltrix_events_received_total` for this source, resolved once.
    pub(crate) received: metrics::Counter,
    /// Routing and queues (swapped by reloads).
    pub(crate) live: Arc<Live>,
    pub(crate) body_bytes_max: u64,
    /// The whole body must arrive within this once reading starts (408 after).
    pub(crate) body_timeout: std::time::Duration,
    /// When non-empty, requests need one of these bearer tokens.
    pub(crate) tokens: Vec<String>,
    /// False once shutdown began: requests get 503.
    pub(crate) accepting: Arc<AtomicBool>,
    /// Bytes of request bodies this source may hold at once (see [`body_budget`]); requests
    /// beyond it wait for room before their body is read, so concurrent producers cannot push
    /// memory past the bound.
    pub(crate) body_budget: Arc<Semaphore>,
}

/// Bytes of request bodies in flight per source: 64 MiB, or one largest body if that is more.
pub(crate) fn body_budget(body_bytes_max: u64) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(budget_bytes(body_bytes_max) as usize))
}

const BODY_BYTES_IN_FLIGHT_MAX: u64 = 64 * 1024 * 1024;

fn budget_bytes(body_bytes_max: u64) -> u64 {
    BODY_BYTES_IN_FLIGHT_MAX.max(body_bytes_max)
}

/// Permits one request takes from the body budget: its declared length, or the largest body
/// when it declares none (chunked).
fn body_permits(declared: Option<u64>, body_bytes_max: u64) -> u32 {
    let bytes = declared
        .unwrap_or(body_bytes_max)
        .clamp(1, budget_bytes(body_bytes_max));
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

pub(crate) fn router(state: Arc<IngestState>) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .with_state(state)
}

struct HeaderMapView<'a>(&'a HeaderMap);

impl Headers for HeaderMapView<'_> {
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str)) {
        for (name, value) in self.0 {
            if let Ok(value) = value.to_str() {
                f(name.as_str(), value);
            }
        }
    }
}

fn unavailable(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Service unavailable",
        detail,
    )
    .retry_after(1)
}

async fn post_events(
    State(st): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !st.tokens.is_empty() && !crate::auth::bearer_matches(&headers, &st.tokens) {
        st.counters.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("veltrix_events_rejected_total", "source" => st.source.clone(), "reason" => "unauthorized").increment(1);
        return crate::auth::unauthorized(
            "this source needs `Authorization: Bearer <token>` with one of its tokens",
        );
    }
    match ingest(&st, &headers, body).await {
        Ok(Accepted { accepted, dropped }) => {
            st.received.increment(accepted as u64);
            st.counters
                .received
                .fetch_add(accepted as u64, Ordering::Relaxed);
            let body = if dropped == 0 {
                json!({ "accepted": accepted })
            } else {
                json!({ "accepted": accepted, "dropped": dropped })
            };
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err(problem) => {
            st.counters.rejected.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(
                "veltrix_events_rejected_total",
                "source" => st.source.clone(),
                "reason" => problem.slug()
            )
            .increment(1);
            problem.into_response()
        }
    }
}

async fn ingest(st: &IngestState, headers: &HeaderMap, body: Body) -> Result<Accepted, Problem> {
    if !st.accepting.load(Ordering::Acquire) {
        return Err(unavailable("the engine is shutting down"));
    }
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!(
                "the body exceeds body_bytes_max ({} bytes); split it into smaller requests",
                st.body_bytes_max
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.body_bytes_max) {
        return Err(too_large());
    }
    // Held until the events are durable: the body and its decoded events count against it.
    let _room = st
        .body_budget
        .acquire_many(body_permits(declared, st.body_bytes_max))
        .await
        .map_err(|_| unavailable("the engine is shutting down"))?;
    let limit = usize::try_from(st.body_bytes_max).unwrap_or(usize::MAX);
    let bytes = crate::listener::read_body(body, limit, st.body_timeout)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => too_large(),
            BodyError::Timeout { .. } => Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
                format!("{e} (body_timeout); send the body at once, or in smaller requests"),
            ),
            BodyError::Unreadable(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Unreadable body",
                e.to_string(),
            ),
        })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Events borrow their strings from the body: nothing is copied until the stored form.
    let events = event::decode_body_ref(content_type, &HeaderMapView(headers), &bytes).map_err(
        |e| match e {
            DecodeError::UnsupportedMediaType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                e.to_string(),
            ),
            DecodeError::Invalid(errors) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-events",
                "Invalid events",
                format!(
                    "{} event(s) are invalid; nothing of this request was accepted",
                    errors.len()
                ),
            )
            .with_errors(
                errors
                    .into_iter()
                    .map(|e| EventProblem {
                        index: e.index,
                        message: e.message,
                    })
                    .collect(),
            ),
        },
    )?;
    if events.is_empty() {
        return Ok(Accepted {
            accepted: 0,
            dropped: 0,
        });
    }
    // One span per event (`veltrix::event`, enabled only when spans are exported), open until
    // the event is durable.
    let _spans: Vec<tracing::Span> = if tracing::enabled!(target: "veltrix::event", tracing::Level::TRACE)
    {
        events
            .iter()
            .map(|e| tracing::trace_span!(target: "veltrix::event", "veltrix.ingest", event.id = e.id(), event.type = e.ty(), source = %st.source))
            .collect()
    } else {
        Vec::new()
    };
    store(&st.live, &events).await.map_err(store_problem)
}

/// Why events could not be stored (nothing of the call was stored, except as noted).
#[derive(Debug)]
pub(crate) enum StoreError {
    /// Events no queue takes (all or nothing: nothing was stored).
    Unroutable(Vec<EventProblem>),
    /// A backpressure queue is full: retry later.
    Full { queue: String, reason: String },
    /// An event is larger than the queue's record limit.
    TooLarge {
        queue: String,
        size: usize,
        max: u32,
    },
    /// The engine is shutting down.
    Closed,
    /// Storage failed (the log says why). Queues before this one may have kept their share.
    Failed { queue: String, message: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unroutable(events) => write!(
                f,
                "{} event(s) match no queue's `types`: {}",
                events.len(),
                events
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            StoreError::Full { queue, reason } => write!(f, "queue `{queue}` is full ({reason})"),
            StoreError::TooLarge { queue, size, max } => write!(
                f,
                "an event of {size} bytes exceeds queue `{queue}`'s record limit of {max} bytes"
            ),
            StoreError::Closed => f.write_str("the engine is shutting down"),
            StoreError::Failed { queue, message } => {
                write!(f, "queue `{queue}` could not store the events: {message}")
            }
        }
    }
}

/// Routes `events` and stores each queue's share as one batch, returning once every share is
/// as durable as its queue promises (fsync: on disk). Refused whole when a backpressure queue is
/// full (`drop_*` queues drop their share instead, counted). This is how every source stores:
/// HTTP answers 202 after it, pull sources acknowledge upstream after it.
pub(crate) async fn store(
    live: &Live,
    events: &[event::EventRef<'_>],
) -> Result<Accepted, StoreError> {
    if events.is_empty() {
        return Ok(Accepted {
            accepted: 0,
            dropped: 0,
        });
    }
    let routing = live.routing();
    let accepted_at = record::now_micros();
    let per_queue = store_routed(events, &routing.router, routing.queues.len(), accepted_at)
        .map_err(StoreError::Unroutable)?;
    // Check every queue's room first, so a call spread over several queues is refused whole
    // when one is full (a concurrent call can still take the room in between: then the
    // earlier queues keep their share and the client's retry deduplicates by id). Queues that
    // prefer loss to pushback make room or drop here instead.
    let mut dropped = 0;
    let mut tickets = Vec::new();
    for (queue, batch) in routing.queues.iter().zip(&per_queue) {
        if batch.is_empty() {
            continue;
        }
        let slices = batch.slices();
        if has_room(queue, &slices)? {
            tickets.push((queue, slices));
        } else {
            dropped += batch.len();
        }
    }
    // Only once every queue has room does any append start (all or nothing across queues).
    let tickets = tickets
        .into_iter()
        .map(|(queue, slices)| {
            queue
                .log
                .append_batch(&slices)
                .map(|ticket| (queue, ticket))
                .map_err(|e| append_error(&queue.name, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (queue, ticket) in tickets {
        ticket.await.map_err(|e| append_error(&queue.name, e))?;
    }
    Ok(Accepted {
        accepted: events.len() - dropped,
        dropped,
    })
}

/// Appends stored records straight into `queue`, without routing (an aggregate's derived
/// events into its `into` queue), returning once they are as durable as the queue promises.
/// The queue's `when_full` applies as in [`store`]: a full backpressure queue refuses
/// (`StoreError::Full`: retry later), `drop_newest` drops them (counted), `drop_oldest` makes
/// room.
pub(crate) async fn append_to(queue: &Queue, records: &[&[u8]]) -> Result<Accepted, StoreError> {
    if records.is_empty() {
        return Ok(Accepted {
            accepted: 0,
            dropped: 0,
        });
    }
    if !has_room(queue, records)? {
        return Ok(Accepted {
            accepted: 0,
            dropped: records.len(),
        });
    }
    let ticket = queue
        .log
        .append_batch(records)
        .map_err(|e| append_error(&queue.name, e))?;
    ticket.await.map_err(|e| append_error(&queue.name, e))?;
    Ok(Accepted {
        accepted: records.len(),
        dropped: 0,
    })
}

fn unroutable_problem(unroutable: Vec<EventProblem>) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unroutable-events",
        "Unroutable events",
        format!(
            "{} event(s) match no queue's `types`; nothing of this request was accepted (add a catch-all queue with types = [\"*\"] to take every type)",
            unroutable.len()
        ),
    )
    .with_errors(unroutable)
}

/// One queue's share of a request in stored form: every record in one buffer, one after the
/// other, so a request costs a couple of allocations per queue rather than one per event.
#[derive(Debug, Default)]
pub struct QueueRecords {
    buf: Vec<u8>,
    /// Where each record ends in `buf` (the next one starts there).
    ends: Vec<usize>,
}

impl QueueRecords {
    /// How many records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The records, in request order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.buf[start..end])
    }

    /// The records as slices, the form `Log::append_batch` takes.
    pub fn slices(&self) -> Vec<&[u8]> {
        let mut slices = Vec::with_capacity(self.len());
        slices.extend(self.iter());
        slices
    }
}

/// The pure middle of ingest: routes every decoded event and encodes it in stored form
/// (`record::write_event`: prefix, compact JSON, member index) into its queue's records. All or
/// nothing: `Err` names every event no queue takes.
pub(crate) fn store_routed(
    events: &[event::EventRef<'_>],
    router: &config::Router,
    queues: usize,
    accepted_at: u64,
) -> Result<Vec<QueueRecords>, Vec<EventProblem>> {
    let mut routes = Vec::with_capacity(events.len());
    let mut counts = vec![0usize; queues];
    let mut unroutable = Vec::new();
    for (index, event) in events.iter().enumerate() {
        match router.route(event.ty()) {
            Some(queue) => {
                counts[queue.0] += 1;
                routes.push(queue.0);
            }
            None => unroutable.push(EventProblem {
                index,
                message: format!("no queue takes event type `{}`", event.ty()),
            }),
        }
    }
    if !unroutable.is_empty() {
        return Err(unroutable);
    }
    // Stored records are about as long as the events were in the body, plus the prefix and the
    // member index: size each queue's buffer from its share so it is allocated once.
    let per_event = events.iter().map(stored_estimate).sum::<usize>() / events.len().max(1);
    let mut per_queue: Vec<QueueRecords> = counts
        .iter()
        .map(|&n| QueueRecords {
            buf: Vec::with_capacity(n * per_event),
            ends: Vec::with_capacity(n),
        })
        .collect();
    let mut index = Vec::new();
    for (event, queue) in events.iter().zip(routes) {
        let records = &mut per_queue[queue];
        record::write_event(&mut records.buf, accepted_at, event, &mut index);
        records.ends.push(records.buf.len());
    }
    Ok(per_queue)
}

/// About how many bytes `event` takes in stored form (a lower bound plus slack; only sizes
/// buffers).
fn stored_estimate(event: &event::EventRef<'_>) -> usize {
    // Prefix, names and quotes, member index (two or three bytes per member).
    8 + 64 + 24 + event.id().len() + event.source().len() + event.ty().len() + event.data_len()
}

/// Events of one call: how many were stored, and how many a `drop_*` queue discarded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    pub(crate) accepted: usize,
    pub(crate) dropped: usize,
}

/// Checks `batch` fits in `queue`; a `drop_oldest` queue drops whole old segments until it does.
/// Whether `batch` can be appended to `queue` now, applying its `when_full`: `Ok(false)` when a
/// `drop_newest` (or an emptied `drop_oldest`) queue drops the batch (counted), an error when a
/// backpressure queue is full or the log refuses.
fn has_room(queue: &Queue, batch: &[&[u8]]) -> Result<bool, StoreError> {
    let Err(e) = make_room(queue, batch) else {
        return Ok(true);
    };
    if !matches!(e, veltrix_log::Error::Full(_)) || queue.when_full == WhenFull::Backpressure {
        return Err(append_error(&queue.name, e));
    }
    queue
        .counters
        .dropped
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    count_drop(&queue.name, "queue_full", batch.len() as u64, &e);
    Ok(false)
}

fn make_room(queue: &Queue, batch: &[&[u8]]) -> Result<(), veltrix_log::Error> {
    loop {
        match queue.log.check_batch(batch) {
            Err(veltrix_log::Error::Full(reason)) if queue.when_full == WhenFull::DropOldest => {
                let dropped = queue.log.drop_oldest()?;
                if dropped == 0 {
                    return Err(veltrix_log::Error::Full(reason));
                }
                count_drop(
                    &queue.name,
                    "drop_oldest",
                    dropped,
                    &veltrix_log::Error::Full(reason),
                );
            }
            other => return other,
        }
    }
}

/// Counts intentional drops (the queue's `when_full` says so) and logs them, rate-limited.
fn count_drop(queue: &str, reason: &'static str, events: u64, why: &veltrix_log::Error) {
    metrics::counter!("veltrix_events_dropped_total", "queue" => queue.to_owned(), "reason" => reason, "intentional" => "true")
        .increment(events);
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(queue, reason, events, cause = %why, "dropping events as configured by when_full (more in the next second are counted, not logged)");
    }
}

fn append_error(queue: &str, e: veltrix_log::Error) -> StoreError {
    use veltrix_log::Error as E;
    let queue = queue.to_owned();
    match e {
        E::Full(reason) => StoreError::Full {
            queue,
            reason: reason.to_string(),
        },
        E::RecordTooLarge { size, max } => StoreError::TooLarge { queue, size, max },
        E::Closed => StoreError::Closed,
        other => {
            tracing::error!(queue, error = %other, "appending to a queue failed");
            StoreError::Failed {
                queue,
                message: other.to_string(),
            }
        }
    }
}

fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::Unroutable(events) => unroutable_problem(events),
        StoreError::Full { queue, reason } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue-full",
            "Queue full",
            format!("queue `{queue}` is full ({reason}); retry later"),
        )
        .retry_after(1),
        e @ StoreError::TooLarge { .. } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event-too-large",
            "Event too large",
            e.to_string(),
        ),
        StoreError::Closed => unavailable("the engine is shutting down"),
        e @ StoreError::Failed { .. } => unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;
    use veltrix_core::config::Config;
    use veltrix_log::{Log, LogOptions};

    /// One check per boundary: the ingest router's answer to one request.
    async fn check(
        accepting: bool,
        content_type: &str,
        body: String,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let config = Config::default_config("/unused");
        let (log, _) = Log::open(
            "/unused/memory",
            LogOptions {
                durability: veltrix_log::Durability::Memory,
                ..LogOptions::default()
            },
        )
        .unwrap();
        let live = Live::new(crate::live::Routing {
            router: veltrix_core::config::Router::new(&config),
            queues: vec![Queue {
                name: "default".into(),
                priority: 0,
                when_full: WhenFull::Backpressure,
                log,
                counters: Arc::default(),
            }],
        });
        let state = Arc::new(IngestState {
            source: "http".into(),
            counters: Arc::default(),
            received: metrics::Counter::noop(),
            live: Arc::new(live),
            body_bytes_max: 1024,
            body_timeout: std::time::Duration::from_secs(30),
            tokens: Vec::new(),
            accepting: Arc::new(AtomicBool::new(accepting)),
            body_budget: body_budget(1024),
        });
        let request = Request::post("/v1/events")
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    const ONE: &str = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;

    #[tokio::test]
    async fn a_shutting_down_engine_answers_503_with_retry_after() {
        let (status, headers, body) =
            check(false, "application/cloudevents+json", ONE.to_owned()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["status"], 503);
    }

    #[tokio::test]
    async fn an_accepting_engine_answers_202_with_the_count() {
        let (status, _, body) = check(true, "application/cloudevents+json", ONE.to_owned()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["accepted"], 1);
    }

    #[test]
    fn a_request_holds_its_declared_length_of_the_body_budget() {
        let mib = 1024 * 1024;
        assert_eq!(body_permits(Some(300), 10 * mib), 300);
        assert_eq!(
            body_permits(None, 10 * mib),
            10 * mib as u32,
            "chunked: the largest body"
        );
        assert_eq!(body_permits(Some(0), 10 * mib), 1);
        assert_eq!(
            body_permits(None, 512 * mib),
            512 * mib as u32,
            "one largest body always fits"
        );
        assert_eq!(budget_bytes(mib), 64 * mib);
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_answers_413() {
        // No content-length: the limit must hold while reading.
        let (status, _, body) = check(true, "application/x-ndjson", "x".repeat(2048)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["status"], 413);
    }
}
