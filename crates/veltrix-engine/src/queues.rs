//! The queues: one `veltrix-log` log per configured queue, under `<data_dir>/queues/<name>`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use veltrix_core::config::{Config, Durability, QueueConfig, WhenFull};
use veltrix_log::{Log, LogOptions, Observer, RecoveryReport};

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

/// Opens every queue of `config`, in file order (the router's queue indices).
pub(crate) fn open_all(config: &Config) -> Result<Vec<(Queue, RecoveryReport)>, EngineError> {
    let root = config.data_dir.join("queues");
    config
        .queues
        .iter()
        .map(|(name, q)| {
            let dir = root.join(name);
            let (log, report) =
                Log::open(&dir, log_options(name, q)).map_err(|source| EngineError::Queue {
                    queue: name.clone(),
                    dir: dir.clone(),
                    source,
                })?;
            Ok((
                Queue {
                    name: name.clone(),
                    priority: q.priority,
                    when_full: q.when_full,
                    log,
                    counters: Arc::default(),
                },
                report,
            ))
        })
        .collect()
}

pub(crate) fn queue_dir(data_dir: &Path, name: &str) -> std::path::PathBuf {
    data_dir.join("queues").join(name)
}
