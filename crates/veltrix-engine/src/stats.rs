//! Live statistics: counters the hot path bumps (per batch, never per event where avoidable),
//! and a sampler that once a second turns them into rates, percentiles and utilisation, keeps
//! the last `HISTORY_MAX` samples for sparklines, publishes gauges to Prometheus, and renders
//! the `GET /api/v1/stats` document (schema: `docs/stats-api.md`).
//!
//! Memory is bounded: one interval histogram per pipeline and per sink (reset every sample) and
//! `HISTORY_MAX` samples per series.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::deadletter::DeadLetters;
use crate::queues::Queue;
use crate::record;

/// One-second samples kept per series (5 minutes).
const HISTORY_MAX: usize = 300;
/// How often the sampler runs.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Histograms cover 1 µs to 1 hour with 2 significant digits.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 2).expect("valid bounds")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters of one HTTP source.
#[derive(Default)]
pub(crate) struct SourceCounters {
    pub(crate) received: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// Counters of one queue that the log does not keep itself.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub(crate) dropped: AtomicU64,
}

/// Counters of one pipeline.
pub(crate) struct PipelineCounters {
    pub(crate) delivered: AtomicU64,
    /// Dropped by a processor (filter, dedupe, throttle, sample, custom).
    pub(crate) filtered: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    /// Consumed by an aggregate.
    pub(crate) aggregated: AtomicU64,
    /// Delivered per sink, in the order of `PipelineConfig::sinks` (empty: not tracked).
    delivered_by_sink: Vec<AtomicU64>,
    pub(crate) retries: AtomicU64,
    /// Worker time spent processing and delivering (not waiting for input or backing off).
    pub(crate) busy_micros: AtomicU64,
    /// End-to-end latencies (µs) since the last sample.
    latency: Mutex<Histogram<u64>>,
}

impl Default for PipelineCounters {
    fn default() -> Self {
        PipelineCounters {
            delivered: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            aggregated: AtomicU64::new(0),
            delivered_by_sink: Vec::new(),
            retries: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        }
    }
}

impl PipelineCounters {
    /// Counters for a pipeline writing to `sinks` sinks.
    pub(crate) fn with_sinks(sinks: usize) -> PipelineCounters {
        PipelineCounters {
            delivered_by_sink: (0..sinks).map(|_| AtomicU64::new(0)).collect(),
            ..PipelineCounters::default()
        }
    }

    /// Counts `n` events delivered to the pipeline's sink number `sink`.
    pub(crate) fn add_sink_delivered(&self, sink: usize, n: u64) {
        if let Some(counter) = self.delivered_by_sink.get(sink) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Records the end-to-end latency of every event of a delivered batch (one lock per batch).
    pub(crate) fn record_latencies(&self, accepted_micros: impl Iterator<Item = u64>) {
        let now = record::now_micros();
        let mut h = lock(&self.latency);
        for accepted in accepted_micros {
            let _ = h.record(now.saturating_sub(accepted).clamp(1, HISTOGRAM_MAX_MICROS));
        }
    }
}

/// Counters of one sink.
pub(crate) struct SinkCounters {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    duration: Mutex<Histogram<u64>>,
}

impl Default for SinkCounters {
    fn default() -> Self {
        SinkCounters {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            duration: Mutex::new(histogram()),
        }
    }
}

impl SinkCounters {
    pub(crate) fn record_request(&self, ok: bool, took: Duration) {
        if ok { &self.ok } else { &self.failed }.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = lock(&self.duration).record(micros.clamp(1, HISTOGRAM_MAX_MICROS));
    }
}

/// What is shown of a source.
pub(crate) struct SourceInfo {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) counters: Arc<SourceCounters>,
}

/// What is shown of a queue.
pub(crate) struct QueueInfo {
    pub(crate) queue: Queue,
    pub(crate) durability: &'static str,
    pub(crate) max_events: u64,
    pub(crate) max_bytes: u64,
    pub(crate) counters: Arc<QueueCounters>,
}

/// What is shown of a pipeline.
pub(crate) struct PipelineInfo {
    pub(crate) name: String,
    pub(crate) from: Vec<String>,
    /// The pipeline's `sink` (what no route takes).
    pub(crate) sink: String,
    /// Every sink it writes to: `sink` first, then the routes' sinks.
    pub(crate) sinks: Vec<String>,
    /// Its routes: (condition, sink), in order.
    pub(crate) routes: Vec<(String, String)>,
    pub(crate) workers: usize,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) counters: Arc<PipelineCounters>,
}

/// What is shown of a sink.
pub(crate) struct SinkInfo {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) target: String,
    pub(crate) counters: Arc<SinkCounters>,
}

/// A bounded series of samples.
#[derive(Default)]
struct Series(VecDeque<Value>);

impl Series {
    fn push(&mut self, v: Value) {
        if self.0.len() == HISTORY_MAX {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }

    fn json(&self) -> Value {
        Value::Array(self.0.iter().cloned().collect())
    }
}

/// The sampler's memory between samples.
#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    counts: Vec<u64>,
}

/// Everything the stats are computed from.
pub(crate) struct Registry {
    pub(crate) started: Instant,
    pub(crate) sources: Vec<SourceInfo>,
    pub(crate) queues: Vec<QueueInfo>,
    pub(crate) pipelines: Vec<PipelineInfo>,
    pub(crate) sinks: Vec<SinkInfo>,
    /// The last rendered document.
    snapshot: RwLock<Value>,
    history: Mutex<Vec<Series>>,
    previous: Mutex<Previous>,
}

impl Registry {
    pub(crate) fn new(
        sources: Vec<SourceInfo>,
        queues: Vec<QueueInfo>,
        pipelines: Vec<PipelineInfo>,
        sinks: Vec<SinkInfo>,
    ) -> Arc<Registry> {
        let registry = Arc::new(Registry {
            started: Instant::now(),
            sources,
            queues,
            pipelines,
            sinks,
            snapshot: RwLock::new(Value::Null),
            history: Mutex::new(Vec::new()),
            previous: Mutex::new(Previous::default()),
        });
        registry.sample();
        registry
    }

    /// The latest `/api/v1/stats` document.
    pub(crate) fn snapshot(&self) -> Value {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes one sample: rates from counter deltas, interval percentiles, gauges, history.
    pub(crate) fn sample(&self) {
        let now = Instant::now();
        // Counters in a fixed order: sources (received, rejected), queues (appended), pipelines
        // (delivered, busy µs).
        let mut counts = Vec::new();
        for s in &self.sources {
            counts.push(s.counters.received.load(Ordering::Relaxed));
        }
        for q in &self.queues {
            counts.push(q.queue.log.stats().appended_records);
        }
        for p in &self.pipelines {
            counts.push(p.counters.delivered.load(Ordering::Relaxed));
            counts.push(p.counters.busy_micros.load(Ordering::Relaxed));
        }
        let (elapsed, deltas) = {
            let mut previous = lock(&self.previous);
            let elapsed = previous.at.map(|at| now - at);
            let deltas: Vec<u64> = if previous.counts.len() == counts.len() {
                counts
                    .iter()
                    .zip(&previous.counts)
                    .map(|(c, p)| c.saturating_sub(*p))
                    .collect()
            } else {
                vec![0; counts.len()]
            };
            previous.at = Some(now);
            previous.counts = counts;
            (elapsed, deltas)
        };
        let seconds = elapsed.map_or(0.0, |e| e.as_secs_f64());
        let rate = |delta: u64| {
            if seconds > 0.0 {
                delta as f64 / seconds
            } else {
                0.0
            }
        };
        let mut deltas = deltas.into_iter();
        let mut history = lock(&self.history);
        let mut series = 0;
        let mut push = |v: Value| -> Value {
            if history.len() <= series {
                history.push(Series::default());
            }
            history[series].push(v);
            let out = history[series].json();
            series += 1;
            out
        };

        let queue_names: Vec<&str> = self.queues.iter().map(|q| q.queue.name.as_str()).collect();
        let sources: Vec<Value> = self
            .sources
            .iter()
            .map(|s| {
                let r = rate(deltas.next().unwrap_or(0));
                json!({
                    "name": s.name, "address": s.address,
                    "received_total": s.counters.received.load(Ordering::Relaxed),
                    "rejected_total": s.counters.rejected.load(Ordering::Relaxed),
                    "rate_per_second": r,
                    "to_queues": queue_names,
                    "history": { "rate_per_second": push(json!(r)) },
                })
            })
            .collect();

        let mut bottleneck: Option<(f64, &'static str, String)> = None;
        let mut consider = |ratio: f64, kind: &'static str, name: &str| {
            if ratio >= 0.01 && bottleneck.as_ref().is_none_or(|(b, ..)| ratio > *b) {
                bottleneck = Some((ratio, kind, name.to_owned()));
            }
        };
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let r = rate(deltas.next().unwrap_or(0));
                let info = q.queue.log.inspect();
                // Unconsumed events: what the slowest consumer has not acknowledged yet (the
                // log's own backlog also counts acknowledged-but-not-yet-persisted positions).
                let depth_events = info
                    .cursors
                    .iter()
                    .map(|c| c.lag_records)
                    .max()
                    .unwrap_or(info.backlog_records);
                let oldest_age = q
                    .queue
                    .log
                    .slowest_position()
                    .and_then(|p| q.queue.log.read_at(p).ok().flatten())
                    .map_or(0.0, |rec| {
                        record::age_seconds(record::split(&rec.payload).0)
                    });
                let fill = (depth_events as f64 / q.max_events as f64)
                    .max(info.backlog_bytes as f64 / q.max_bytes as f64);
                consider(fill, "queue", &q.queue.name);
                let name = q.queue.name.clone();
                metrics::gauge!("veltrix_queue_depth_events", "queue" => name.clone())
                    .set(depth_events as f64);
                metrics::gauge!("veltrix_queue_depth_bytes", "queue" => name.clone())
                    .set(info.backlog_bytes as f64);
                metrics::gauge!("veltrix_queue_oldest_age_seconds", "queue" => name.clone())
                    .set(oldest_age);
                metrics::gauge!("veltrix_queue_capacity_events", "queue" => name.clone())
                    .set(q.max_events as f64);
                metrics::gauge!("veltrix_queue_capacity_bytes", "queue" => name)
                    .set(q.max_bytes as f64);
                json!({
                    "name": q.queue.name, "priority": q.queue.priority, "durability": q.durability,
                    "when_full": format!("{:?}", q.queue.when_full).to_lowercase(),
                    "depth_events": depth_events, "depth_bytes": info.backlog_bytes,
                    "max_events": q.max_events, "max_bytes": q.max_bytes, "fill_ratio": fill,
                    "oldest_age_seconds": oldest_age,
                    "appended_total": q.queue.log.stats().appended_records,
                    "dropped_total": q.counters.dropped.load(Ordering::Relaxed),
                    "rate_in_per_second": r,
                    "history": {
                        "depth_events": push(json!(depth_events)),
                        "rate_in_per_second": push(json!(r)),
                    },
                })
            })
            .collect();

        let pipelines: Vec<Value> = self
            .pipelines
            .iter()
            .map(|p| {
                let r = rate(deltas.next().unwrap_or(0));
                let busy = deltas.next().unwrap_or(0);
                let busy_ratio = if seconds > 0.0 {
                    (busy as f64 / 1e6 / (seconds * p.workers.max(1) as f64)).min(1.0)
                } else {
                    0.0
                };
                consider(busy_ratio, "pipeline", &p.name);
                let (p50, p99) = {
                    let mut h = lock(&p.counters.latency);
                    let out = if h.is_empty() {
                        (Value::Null, Value::Null)
                    } else {
                        (
                            json!(h.value_at_quantile(0.5) as f64 / 1e6),
                            json!(h.value_at_quantile(0.99) as f64 / 1e6),
                        )
                    };
                    h.reset();
                    out
                };
                metrics::gauge!("veltrix_pipeline_busy_ratio", "pipeline" => p.name.clone())
                    .set(busy_ratio);
                let dlq_depth = p.dead_letters.log.inspect().backlog_records;
                metrics::gauge!("veltrix_dlq_depth_events", "pipeline" => p.name.clone())
                    .set(dlq_depth as f64);
                let by_sink: serde_json::Map<String, Value> = p
                    .sinks
                    .iter()
                    .zip(&p.counters.delivered_by_sink)
                    .map(|(s, n)| (s.clone(), json!(n.load(Ordering::Relaxed))))
                    .collect();
                let routes: Vec<Value> = p
                    .routes
                    .iter()
                    .map(|(condition, sink)| json!({"condition": condition, "sink": sink}))
                    .collect();
                json!({
                    "name": p.name, "from": p.from, "sink": p.sink, "workers": p.workers,
                    "sinks": p.sinks, "routes": routes,
                    "delivered_total": p.counters.delivered.load(Ordering::Relaxed),
                    "delivered_by_sink": by_sink,
                    "filtered_total": p.counters.filtered.load(Ordering::Relaxed),
                    "aggregated_total": p.counters.aggregated.load(Ordering::Relaxed),
                    "dead_lettered_total": p.counters.dead_lettered.load(Ordering::Relaxed),
                    "retries_total": p.counters.retries.load(Ordering::Relaxed),
                    "dlq_depth_events": dlq_depth,
                    "rate_per_second": r,
                    "latency_p50_seconds": p50, "latency_p99_seconds": p99,
                    "busy_ratio": busy_ratio,
                    "history": {
                        "rate_per_second": push(json!(r)),
                        "latency_p99_seconds": push(p99.clone()),
                        "busy_ratio": push(json!(busy_ratio)),
                    },
                })
            })
            .collect();

        let sinks: Vec<Value> = self
            .sinks
            .iter()
            .map(|s| {
                let p99 = {
                    let mut h = lock(&s.counters.duration);
                    let out = if h.is_empty() {
                        Value::Null
                    } else {
                        json!(h.value_at_quantile(0.99) as f64 / 1e6)
                    };
                    h.reset();
                    out
                };
                json!({
                    "name": s.name, "type": s.kind, "target": s.target,
                    "requests_ok_total": s.counters.ok.load(Ordering::Relaxed),
                    "requests_failed_total": s.counters.failed.load(Ordering::Relaxed),
                    "request_p99_seconds": p99,
                })
            })
            .collect();
        drop(history);

        let process = process_stats();
        metrics::gauge!("process_resident_memory_bytes").set(process.rss_bytes as f64);
        metrics::counter!("process_cpu_seconds_total").absolute(process.cpu_seconds as u64);
        metrics::gauge!("process_open_fds").set(process.open_fds as f64);
        let document = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "sample_interval_seconds": SAMPLE_INTERVAL.as_secs_f64(),
            "process": {
                "rss_bytes": process.rss_bytes,
                "cpu_seconds_total": process.cpu_seconds,
                "open_fds": process.open_fds,
            },
            "sources": sources,
            "queues": queues,
            "pipelines": pipelines,
            "sinks": sinks,
            "bottleneck": bottleneck.map(|(ratio, kind, name)| {
                let key = if kind == "queue" { "fill_ratio" } else { "busy_ratio" };
                json!({ "kind": kind, "name": name, key: ratio })
            }),
        });
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = document;
    }
}

/// This process's resource use, from /proc (zeros where unavailable).
#[derive(Default)]
struct ProcessStats {
    rss_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
}

fn process_stats() -> ProcessStats {
    let mut stats = ProcessStats::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        stats.rss_bytes = kib * 1024;
    }
    // Fields 14 and 15 of /proc/self/stat (after the parenthesised command name) are user and
    // system time in clock ticks; Linux reports them at USER_HZ = 100.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        stats.cpu_seconds = (ticks(11) + ticks(12)) as f64 / 100.0;
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        stats.open_fds = dir.count() as u64;
    }
    stats
}

/// Every metric the engine exports, with its help text (Prometheus `# HELP`) and unit. Called
/// once, when the recorder is installed.
pub(crate) fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    crate::sources::describe_metrics();
    describe_counter!(
        "veltrix_events_received_total",
        Unit::Count,
        "Events accepted by ingest (202), by source."
    );
    describe_counter!(
        "veltrix_events_rejected_total",
        Unit::Count,
        "Ingest requests (HTTP) or messages (NATS) refused, by source and reason (problem type); for file and stdin sources, lines skipped, by reason."
    );
    describe_counter!(
        "veltrix_events_dropped_total",
        Unit::Count,
        "Events dropped, by queue and reason; intentional=\"true\" when a when_full policy says so."
    );
    describe_counter!(
        "veltrix_queue_appended_events_total",
        Unit::Count,
        "Events made durable in a queue."
    );
    describe_counter!(
        "veltrix_queue_appended_bytes_total",
        Unit::Bytes,
        "Framed bytes made durable in a queue."
    );
    describe_counter!(
        "veltrix_queue_quarantined_events_total",
        Unit::Count,
        "Events skipped by readers because they sat in a damaged range of a queue's log."
    );
    describe_counter!(
        "veltrix_queue_torn_tail_bytes_total",
        Unit::Bytes,
        "Bytes of a torn last write cut off a queue's log when it was opened (after a crash)."
    );
    describe_counter!(
        "veltrix_queue_cursor_resets_total",
        Unit::Count,
        "Times a queue was opened with a damaged cursor ledger or a vanished cursor position: its consumers restart at the oldest retained event (redelivery, not loss)."
    );
    describe_histogram!(
        "veltrix_queue_fsync_duration_seconds",
        Unit::Seconds,
        "Duration of one fdatasync of a queue's log (one per group commit)."
    );
    describe_gauge!(
        "veltrix_queue_depth_events",
        Unit::Count,
        "Events between the slowest consumer and the tail of a queue."
    );
    describe_gauge!(
        "veltrix_queue_depth_bytes",
        Unit::Bytes,
        "Bytes between the slowest consumer and the tail of a queue."
    );
    describe_gauge!(
        "veltrix_queue_oldest_age_seconds",
        Unit::Seconds,
        "How long the oldest unconsumed event of a queue has waited since it was accepted."
    );
    describe_gauge!(
        "veltrix_queue_capacity_events",
        Unit::Count,
        "A queue's max_events bound."
    );
    describe_gauge!(
        "veltrix_queue_capacity_bytes",
        Unit::Bytes,
        "A queue's max_bytes bound."
    );
    describe_counter!(
        "veltrix_pipeline_events_total",
        Unit::Count,
        "Events a pipeline handled, by outcome: delivered, filtered (dropped by any processor), aggregated (consumed by an aggregate), dead_lettered, and retried (each retry of a batch counts its events)."
    );
    describe_counter!(
        "veltrix_pipeline_sink_events_total",
        Unit::Count,
        "Events a pipeline handed each of its sinks (the pipeline's sink and its routes' sinks), by outcome: delivered, dead_lettered."
    );
    describe_counter!(
        "veltrix_processor_events_total",
        Unit::Count,
        "Events each processor of a pipeline handled (processor = index in `processors`), by outcome: passed, failed, or the type's drop (filtered, deduplicated, throttled, sampled_out, aggregated, dropped)."
    );
    describe_counter!(
        "veltrix_processor_keys_evicted_total",
        Unit::Count,
        "Keys a dedupe or throttle processor forgot early to stay within max_keys (an evicted key can pass again within its window)."
    );
    describe_gauge!(
        "veltrix_processor_keys",
        Unit::Count,
        "Keys a dedupe, throttle or aggregate processor holds (bounded by its max_keys)."
    );
    describe_counter!(
        "veltrix_processor_emitted_events_total",
        Unit::Count,
        "Derived events an aggregate processor appended to its `into` queue."
    );
    describe_counter!(
        "veltrix_pipeline_retries_total",
        Unit::Count,
        "Sink attempts a pipeline retried."
    );
    describe_histogram!(
        "veltrix_pipeline_processing_duration_seconds",
        Unit::Seconds,
        "Time a pipeline worker spent running the processors on one batch."
    );
    describe_histogram!(
        "veltrix_e2e_latency_seconds",
        Unit::Seconds,
        "End-to-end latency of delivered events: accepted by ingest to confirmed by the sink."
    );
    describe_gauge!(
        "veltrix_pipeline_busy_ratio",
        Unit::Count,
        "Share of a pipeline's worker time spent processing and delivering over the last second (1 = saturated)."
    );
    describe_gauge!(
        "veltrix_dlq_depth_events",
        Unit::Count,
        "Events in a pipeline's dead-letter queue."
    );
    describe_counter!(
        "veltrix_dlq_replayed_total",
        Unit::Count,
        "Dead-lettered events replayed into their queues."
    );
    describe_counter!(
        "veltrix_dlq_purged_total",
        Unit::Count,
        "Dead-lettered events purged."
    );
    describe_counter!(
        "veltrix_sink_requests_total",
        Unit::Count,
        "Sink writes, by outcome (ok, retryable, permanent) and status (the downstream's HTTP code, ok, or error when it never answered)."
    );
    describe_histogram!(
        "veltrix_sink_request_duration_seconds",
        Unit::Seconds,
        "Duration of one sink write (round trip for http, write + fdatasync for file)."
    );
    describe_histogram!(
        "veltrix_sink_batch_events",
        Unit::Count,
        "Events per sink write."
    );
    describe_gauge!(
        "veltrix_sink_in_flight_requests",
        Unit::Count,
        "Sink writes in progress."
    );
    describe_gauge!(
        "veltrix_source_connected",
        Unit::Count,
        "1 while a pull source's upstream connection (NATS) is up, 0 while it is down or being retried."
    );
    describe_counter!(
        "veltrix_source_redeliveries_total",
        Unit::Count,
        "Messages the upstream (NATS JetStream) delivered more than once, by source."
    );
    describe_gauge!(
        "veltrix_sink_connected",
        Unit::Count,
        "1 while a sink's connection (NATS) is up, 0 before its first write or while it is down."
    );
    describe_counter!(
        "veltrix_sink_duplicates_total",
        Unit::Count,
        "Messages the destination recognised as duplicates of ones it already stored (NATS JetStream Nats-Msg-Id), by sink."
    );
    describe_gauge!(
        "veltrix_http_connections",
        Unit::Count,
        "Connections open on an HTTP listener (sources.NAME or api); at most its connections_max."
    );
    describe_counter!(
        "veltrix_http_read_bytes_total",
        Unit::Bytes,
        "Bytes read from the clients of an HTTP listener."
    );
    describe_counter!(
        "veltrix_sink_batch_splits_total",
        Unit::Count,
        "Sink writes split in two because the sink refused their data for good (isolating poison events), by pipeline and sink."
    );
    describe_gauge!(
        "veltrix_sink_concurrency_limit",
        Unit::Count,
        "Requests an http sink may have in flight now (adaptive: moved by its AIMD controller)."
    );
    describe_gauge!(
        "veltrix_sink_pool_connections",
        Unit::Count,
        "Connections of a postgres sink's pool, by state (in_use, idle)."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the engine process."
    );
    describe_counter!(
        "process_cpu_seconds_total",
        Unit::Seconds,
        "CPU time (user + system) used by the engine process."
    );
    describe_gauge!(
        "process_open_fds",
        Unit::Count,
        "Open file descriptors of the engine process."
    );
    describe_counter!(
        "veltrix_config_reloads_total",
        Unit::Count,
        "Config reloads, by outcome: applied, invalid, refused, failed."
    );
    describe_gauge!(
        "veltrix_config_last_reload_success",
        Unit::Count,
        "1 when the last reload (or the start) applied its config, 0 when it did not."
    );
    describe_gauge!(
        "veltrix_config_last_reload_timestamp_seconds",
        Unit::Seconds,
        "When the last reload was attempted (Unix time)."
    );
}
