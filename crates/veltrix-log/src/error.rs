use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why an append was refused because the log has no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// The backlog would exceed `max_bytes`.
    Bytes,
    /// The backlog would exceed `max_records`.
    Records,
    /// The committer is behind: `write_buffer_bytes_max` bytes already wait to be written.
    WriteBuffer,
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FullReason::Bytes => "max_bytes reached",
            FullReason::Records => "max_records reached",
            FullReason::WriteBuffer => "write buffer full (disk slower than producers)",
        })
    }
}

/// Errors of the log. Cloneable because one commit failure is reported to every appender
/// waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The append would exceed a bound; nothing of it was written. Retry later.
    #[error("log is full: {0}")]
    Full(FullReason),
    /// A single record is larger than `record_bytes_max`.
    #[error("record of {size} bytes exceeds record_bytes_max ({max} bytes)")]
    RecordTooLarge { size: usize, max: u32 },
    /// The disk is full; the failed write was rolled back and the log stays usable.
    #[error("no space left on device while appending to {path}")]
    NoSpace { path: PathBuf },
    /// An I/O error; `op` says what the log was doing.
    #[error("I/O error while {op} ({path}): {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: Arc<io::Error>,
    },
    /// An fsync failed (or a failed write could not be rolled back): the log refuses all further
    /// work, because the kernel may have dropped dirty pages it reported as written.
    #[error("log failed permanently and must be reopened: {0}")]
    Poisoned(Arc<Error>),
    /// The log is closed or closing.
    #[error("log is closed")]
    Closed,
    /// Another handle for this cursor is open.
    #[error("cursor `{0}` is already open")]
    CursorBusy(String),
    /// This cursor handle was replaced by a newer one (or the cursor was removed).
    #[error("cursor handle is stale: the cursor was reopened or removed")]
    StaleCursor,
    /// The acknowledged offset is not one this cursor delivered and has not yet acknowledged.
    #[error("offset {0} is not in flight on this cursor")]
    NotInFlight(u64),
    /// The options are inconsistent.
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(28) {
            return Error::NoSpace { path };
        }
        Error::Io {
            op,
            path,
            source: Arc::new(source),
        }
    }
}
