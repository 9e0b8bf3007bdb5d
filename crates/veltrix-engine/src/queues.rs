//! The queues: one `veltrix-log` log per configured queue, under `<data_dir>/queues/<name>`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use veltrix_core::config::{Durability, QueueConfig, WhenFull};
use veltrix_log::{Log, LogOptions, Observer};

use crate::stats::QueueCounters;

use crate::engine::EngineError;

/// An open queue.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    pub(crate) name: String,
    pub(crate) priority: u8,
    pub(crate) when_full: WhenFull,
    pub(crate) log: Log,
    pub(crate) counters: Arc<QueueCounters>,
}

/// Publishes a queue's log activity as metrics.
struct QueueObserver {
    queue: String,
}

impl Observer for QueueObserver {
    fn on_fsync(&self, elapsed: Duration) {
        metrics::histogram!("veltrix_queue_fsync_duration_seconds", "queue" => self.queue.clone())
            .record(elapsed.as_secs_f64());
    }

    fn on_commit(&self, records: u64, bytes: u64) {
        metrics::counter!("veltrix_queue_appended_events_total", "queue" => self.queue.clone())
            .increment(records);
        metrics::counter!("veltrix_queue_appended_bytes_total", "queue" => self.queue.clone())
            .increment(bytes);
    }

    fn on_quarantine(&self, records: u64) {
        metrics::counter!("veltrix_queue_quarantined_events_total", "queue" => self.queue.clone())
            .increment(records);
    }
}

pub(crate) fn log_options(name: &str, q: &QueueConfig) -> LogOptions {
    let defaults = LogOptions::default();
    // `drop_oldest` makes room a whole segment at a time: keep segments small against the
    // bound so a drop frees room without discarding most of the queue.
    let segment_bytes = match q.when_full {
        WhenFull::DropOldest => q
            .segment_bytes
            .bytes()
            .min((q.max_bytes.bytes() / 8).max(4096)),
        WhenFull::Backpressure | WhenFull::DropNewest => q.segment_bytes.bytes(),
    };
    LogOptions {
        durability: match q.durability {
            Durability::Fsync => veltrix_log::Durability::Fsync,
            Durability::Interval => veltrix_log::Durability::Interval(q.fsync_interval),
            Durability::Memory => veltrix_log::Durability::Memory,
        },
        segment_bytes,
        max_bytes: q.max_bytes.bytes(),
        max_records: q.max_events,
        // A record must fit in a segment; small segments (tests) cap the record size.
        record_bytes_max: defaults
            .record_bytes_max
            .min(u32::try_from(segment_bytes / 2).unwrap_or(u32::MAX)),
        // Bounds redelivery after a crash to about this much work; one small ledger write each.
        cursor_sync_interval: Duration::from_millis(250),
        observer: Some(Arc::new(QueueObserver {
            queue: name.to_owned(),
        })),
        ..defaults
    }
}

/// Opens (recovering) the queue `name` of `data_dir`, logging its recovery report.
pub(crate) fn open(
    data_dir: &Path,
    name: &str,
    q: &QueueConfig,
    counters: Arc<QueueCounters>,
) -> Result<Queue, EngineError> {
    let dir = queue_dir(data_dir, name);
    let (log, report) =
        Log::open(&dir, log_options(name, q)).map_err(|source| EngineError::Queue {
            queue: name.to_owned(),
            dir: dir.clone(),
            source,
        })?;
    tracing::info!(
        queue = %name,
        segments = report.segments,
        next_offset = report.next_offset,
        bytes_truncated = report.bytes_truncated,
        records_quarantined = report.records_quarantined,
        cursors_reset = report.cursors_reset.len(),
        ledger_error = report.ledger_error.as_deref().unwrap_or("none"),
        elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
        "queue recovered"
    );
    // Damage found at open, as counters (registered at 0 so a dashboard sees the series before
    // anything goes wrong). Damaged records are counted as readers skip them
    // (`veltrix_queue_quarantined_events_total`), not here, so nothing counts twice.
    metrics::counter!("veltrix_queue_torn_tail_bytes_total", "queue" => name.to_owned())
        .increment(report.bytes_truncated);
    let resets = report.cursors_reset.len() as u64 + u64::from(report.ledger_error.is_some());
    metrics::counter!("veltrix_queue_cursor_resets_total", "queue" => name.to_owned())
        .increment(resets);
    Ok(Queue {
        name: name.to_owned(),
        priority: q.priority,
        when_full: q.when_full,
        log,
        counters,
    })
}

/// Whether two queue configs give the same log (so a reload can keep it open).
pub(crate) fn same_log(a: &QueueConfig, b: &QueueConfig) -> bool {
    a.durability == b.durability
        && a.fsync_interval == b.fsync_interval
        && a.max_bytes == b.max_bytes
        && a.max_events == b.max_events
        && a.segment_bytes == b.segment_bytes
        && a.when_full == b.when_full
}

pub(crate) fn queue_dir(data_dir: &Path, name: &str) -> std::path::PathBuf {
    data_dir.join("queues").join(name)
}
