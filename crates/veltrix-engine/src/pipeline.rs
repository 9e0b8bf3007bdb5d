//! A running pipeline: `workers` tasks sharing one reader over the pipeline's cursors (one per
//! queue it reads, each named after the pipeline, so pipelines on the same queue never share a
//! position). A worker takes a batch from the most urgent queue that has events, runs the chain,
//! hands the result to the sink, and acknowledges the batch to its queue only once the sink
//! confirmed it. Sink failures are retried with capped exponential backoff; the batch stays
//! unacknowledged meanwhile, so a crash redelivers it.
//!
//! Shutdown: the stop signal ends waiting for input at once; a worker in the middle of a batch
//! finishes (or, if its sink keeps failing, gives up without acknowledging) and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::select_all;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use veltrix_core::expr::Runtime;
use veltrix_log::{Acker, Cursor, Record};

use crate::processors::{Chain, Outcome};
use crate::sink::Sink;

/// Payload bytes one worker takes at once, besides `batch_events_max`.
const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// At most one warning line per this period per pipeline for per-event problems.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// One queue read by a pipeline.
pub(crate) struct Input {
    pub(crate) queue: String,
    pub(crate) priority: u8,
    pub(crate) cursor: Cursor,
}

/// The cursors of a pipeline, most urgent first.
struct Reader {
    inputs: Vec<Input>,
}

impl Reader {
    /// The next batch from the most urgent queue with events, or `None` on stop (or when a queue
    /// failed: the error is logged).
    async fn next(
        &mut self,
        max: usize,
        stop: &mut watch::Receiver<bool>,
        pipeline: &str,
    ) -> Option<(usize, Vec<Record>)> {
        loop {
            if *stop.borrow() {
                return None;
            }
            for (i, input) in self.inputs.iter_mut().enumerate() {
                match input.cursor.try_read_batch(max, BATCH_BYTES_MAX) {
                    Ok(records) if !records.is_empty() => return Some((i, records)),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(pipeline, queue = %input.queue, error = %e, "reading the queue failed; pipeline stops");
                        return None;
                    }
                }
            }
            let waits = self.inputs.iter_mut().map(|i| Box::pin(i.cursor.wait()));
            tokio::select! {
                _ = select_all(waits) => {}
                _ = stop.changed() => return None,
            }
        }
    }
}

/// Counters of one pipeline.
#[derive(Debug, Default)]
pub(crate) struct PipelineStats {
    pub(crate) delivered: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) sink_errors: AtomicU64,
}

/// Everything a worker shares with its siblings.
struct Shared {
    name: String,
    reader: Mutex<Reader>,
    ackers: Vec<Acker>,
    chain: Chain,
    sink: Arc<Sink>,
    batch_events_max: usize,
    stats: Arc<PipelineStats>,
    last_warning: std::sync::Mutex<Option<Instant>>,
}

impl Shared {
    /// Logs a per-event problem, at most once per `WARN_EVERY`.
    fn warn_rate_limited(&self, what: &str, detail: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(pipeline = %self.name, detail, "{what} (further ones this second are counted, not logged)");
        }
    }
}

/// A started pipeline; dropping it does not stop it, [`Pipeline::join`] does after the stop
/// signal.
pub(crate) struct Pipeline {
    pub(crate) name: String,
    workers: Vec<JoinHandle<()>>,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)] // one call site, each argument a distinct part
    pub(crate) fn start(
        name: &str,
        mut inputs: Vec<Input>,
        chain: Chain,
        sink: Arc<Sink>,
        workers: usize,
        batch_events_max: usize,
        stats: Arc<PipelineStats>,
        stop: &watch::Receiver<bool>,
    ) -> Pipeline {
        inputs.sort_by_key(|i| i.priority);
        let ackers = inputs.iter().map(|i| i.cursor.acker()).collect();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            reader: Mutex::new(Reader { inputs }),
            ackers,
            chain,
            sink,
            batch_events_max,
            stats,
            last_warning: std::sync::Mutex::new(None),
        });
        let workers = (0..workers.max(1))
            .map(|_| tokio::spawn(work(shared.clone(), stop.clone())))
            .collect();
        Pipeline {
            name: name.to_owned(),
            workers,
        }
    }

    /// Waits for the workers to finish after the stop signal, at most until `deadline`; workers
    /// still busy then are aborted (their batch is not acknowledged and will be redelivered).
    pub(crate) async fn join(self, deadline: tokio::time::Instant) {
        for mut worker in self.workers {
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                tracing::warn!(pipeline = %self.name, "a worker did not finish in time; its batch will be redelivered");
                worker.abort();
            }
        }
    }
}

async fn work(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut runtime = Runtime::new();
    let mut offsets = Vec::with_capacity(shared.batch_events_max);
    loop {
        let next = {
            let mut reader = shared.reader.lock().await;
            reader
                .next(shared.batch_events_max, &mut stop, &shared.name)
                .await
        };
        let Some((input, records)) = next else {
            return;
        };
        let mut out = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 1).sum());
        let (mut emitted, mut filtered, mut failed) = (0u64, 0u64, 0u64);
        for record in &records {
            match shared.chain.apply(&record.payload, &mut runtime, &mut out) {
                Outcome::Emitted => emitted += 1,
                Outcome::Filtered => filtered += 1,
                Outcome::Failed(why) => {
                    failed += 1;
                    shared.warn_rate_limited("an event failed processing and was dropped", &why);
                }
            }
        }
        if emitted > 0 && !deliver(&shared, out.into(), emitted, &mut stop).await {
            return; // stopped while the sink was failing: leave the batch unacknowledged
        }
        let stats = &shared.stats;
        stats.delivered.fetch_add(emitted, Ordering::Relaxed);
        stats.filtered.fetch_add(filtered, Ordering::Relaxed);
        stats.failed.fetch_add(failed, Ordering::Relaxed);
        offsets.clear();
        offsets.extend(records.iter().map(|r| r.offset));
        if let Err(e) = shared.ackers[input].ack_many(&offsets) {
            tracing::error!(pipeline = %shared.name, error = %e, "acknowledging a delivered batch failed");
            return;
        }
    }
}

/// Writes one batch to the sink, retrying failures with capped exponential backoff. Returns
/// `false` if the stop signal came before the sink confirmed.
async fn deliver(
    shared: &Shared,
    out: bytes::Bytes,
    events: u64,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut backoff = RETRY_BACKOFF_INITIAL;
    loop {
        match shared.sink.write(out.clone(), events).await {
            Ok(()) => return true,
            Err(e) => {
                shared.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                shared.warn_rate_limited("the sink failed; retrying", &e.to_string());
            }
        }
        if *stop.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return false,
        }
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}
