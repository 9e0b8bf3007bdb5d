use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::frame::HEADER_BYTES;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The append resolves after its bytes are fdatasynced (group commit). Nothing acknowledged
    /// is lost on a crash or power loss.
    Fsync,
    /// The append resolves after `write()`; the log fdatasyncs at most this long afterwards.
    /// Loss window: a power loss (not a process crash) loses up to this much acknowledged data.
    Interval(Duration),
    /// No disk at all: records live in memory and are lost when the process exits.
    Memory,
}

/// Observes the log's work, for metrics. Called from the committer thread; keep it cheap.
pub trait Observer: Send + Sync {
    /// One fdatasync of a segment took `elapsed`.
    fn on_fsync(&self, _elapsed: Duration) {}
    /// One group commit made `records` records (`bytes` framed bytes) durable or visible.
    fn on_commit(&self, _records: u64, _bytes: u64) {}
    /// A reader skipped `records` records in a damaged range.
    fn on_quarantine(&self, _records: u64) {}
}

/// Limits and behaviour of one log. `Default` is safe on a laptop.
#[derive(Clone)]
pub struct LogOptions {
    /// When appends resolve; see [`Durability`].
    pub durability: Durability,
    /// A segment rotates before it would exceed this size. Default 64 MiB; at most 4 GiB.
    pub segment_bytes: u64,
    /// Backlog bound in framed bytes (from the slowest cursor to the tail). Default 1 GiB.
    pub max_bytes: u64,
    /// Backlog bound in records. Default 10,000,000.
    pub max_records: u64,
    /// Largest payload accepted. Default 8 MiB; must fit in a segment.
    pub record_bytes_max: u32,
    /// Bytes appended but not yet written that the log buffers before refusing appends
    /// (`Full(WriteBuffer)`). Default 64 MiB.
    pub write_buffer_bytes_max: u64,
    /// Size of each reader's window onto a segment. Default 256 KiB.
    pub read_buffer_bytes: usize,
    /// Records a cursor may have delivered but not acknowledged. Default 100,000.
    pub inflight_records_max: usize,
    /// How often changed cursor positions are persisted without being asked. Default 1 s.
    pub cursor_sync_interval: Duration,
    /// Metrics hooks.
    pub observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for LogOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogOptions")
            .field("durability", &self.durability)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("max_records", &self.max_records)
            .field("record_bytes_max", &self.record_bytes_max)
            .field("write_buffer_bytes_max", &self.write_buffer_bytes_max)
            .field("read_buffer_bytes", &self.read_buffer_bytes)
            .field("inflight_records_max", &self.inflight_records_max)
            .field("cursor_sync_interval", &self.cursor_sync_interval)
            .finish_non_exhaustive()
    }
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            max_records: 10_000_000,
            record_bytes_max: 8 * 1024 * 1024,
            write_buffer_bytes_max: 64 * 1024 * 1024,
            read_buffer_bytes: 256 * 1024,
            inflight_records_max: 100_000,
            cursor_sync_interval: Duration::from_secs(1),
            observer: None,
        }
    }
}

impl LogOptions {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::InvalidOptions(msg));
        if self.segment_bytes > u64::from(u32::MAX) {
            return bad(format!(
                "segment_bytes {} exceeds 4 GiB",
                self.segment_bytes
            ));
        }
        if u64::from(self.record_bytes_max) + HEADER_BYTES as u64 > self.segment_bytes {
            return bad(format!(
                "record_bytes_max {} plus a {HEADER_BYTES}-byte header does not fit in segment_bytes {}",
                self.record_bytes_max, self.segment_bytes
            ));
        }
        if self.max_bytes == 0 || self.max_records == 0 {
            return bad("max_bytes and max_records must be above zero".into());
        }
        if self.inflight_records_max == 0 {
            return bad("inflight_records_max must be above zero".into());
        }
        if self.write_buffer_bytes_max < u64::from(self.record_bytes_max) + HEADER_BYTES as u64 {
            return bad("write_buffer_bytes_max must hold at least one largest record".into());
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return bad("the fsync interval must be above zero".into());
        }
        Ok(())
    }
}
