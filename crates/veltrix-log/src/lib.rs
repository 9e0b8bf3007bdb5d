//! `veltrix-log`: the embedded durable log behind every Veltrix queue.
//!
//! Key design decision: a plain segmented append-only log with per-record checksums and group
//! commit, written by us, because the queue's promise ("an acknowledged event is never lost")
//! rests on it and because it beats general key-value stores on append rate, reopen time and
//! prompt space reclamation (see `shared/reference/dependencies.md`).
//!
//! # On-disk layout (one directory per log)
//!
//! ```text
//! 00000000000000000000.seg   records with offsets 0.., named by the first record's offset
//! 00000000000000120000.seg   the active segment (always the newest)
//! cursors.ledger             every cursor's committed position, checksummed, replaced atomically
//! ```
//!
//! A record is framed as `[crc32c u32][len u32][offset u64][payload]` (see [`frame`]); the
//! checksum covers length, payload and offset. Records never span segments; a segment rotates
//! before it would exceed `segment_bytes` (default 64 MiB).
//!
//! # Invariants
//!
//! 1. Offsets are contiguous: the record after offset `n` in the log has offset `n + 1`, and a
//!    segment's name is its first record's offset.
//! 2. Only the newest segment may end in a torn write: a segment is fdatasynced before its
//!    successor is created, and the directory is fsynced after a segment is created.
//! 3. In `fsync` mode an append resolves only after its bytes are fdatasynced, and readers only
//!    ever see records that are durable.
//! 4. A segment is deleted only when every cursor's committed position is past it *and* the
//!    ledger recording that is durable (the ledger is written before the unlink).
//! 5. A failed fsync poisons the log: it is never retried (the kernel may have dropped the dirty
//!    pages), and every waiting and future append gets the error. A failed write (e.g. ENOSPC) is
//!    rolled back (truncated) and reported to that round's appenders; the log stays usable.
//! 6. Damage is never delivered: a checksum failure is either a torn tail (truncated at open) or
//!    a damaged range that readers skip and count (`quarantined_records`).
//! 7. The ledger never runs ahead of the data: before it is written, written-but-unsynced
//!    records (`interval` mode) are synced, so a persisted cursor never points past what a power
//!    loss can take. A persisted position past the recovered tail is still clamped on open.
//!
//! # Limits
//!
//! Backlog (slowest cursor to tail) ≤ `max_bytes` and ≤ `max_records` — an append past them
//! fails at once with [`Error::Full`]; bytes waiting for the committer ≤
//! `write_buffer_bytes_max`; a record ≤ `record_bytes_max`; per cursor ≤ `inflight_records_max`
//! records delivered but not committed past; each reader holds one window of
//! `read_buffer_bytes` (grown only to fit one record). No in-memory index: memory does not grow
//! with the backlog.
//!
//! # Loss window
//!
//! - `fsync`: none for acknowledged records, across process crashes and power loss.
//! - `interval(d)`: a process crash loses nothing written; a power loss loses up to `d` of
//!   acknowledged records.
//! - `memory`: everything is lost when the process exits.
//!
//! Cursor positions are persisted every `cursor_sync_interval` (and on [`Cursor::commit`] and
//! close); after a crash a consumer resumes at its last persisted position, so records
//! acknowledged since then are delivered again (at-least-once, never at-most-once).

mod cursor;
mod error;
pub mod failpoint;
pub mod frame;
mod fs;
mod inspect;
mod ledger;
mod log;
mod options;
mod scan;

pub use cursor::{Acker, Cursor, Record};
pub use error::{Error, FullReason};
pub use fs::{Faults, FileHandle, Filesystem, OsFs, SimFs};
pub use inspect::{
    CursorInfo, DamagedRange, DirCursor, DirInfo, IntegrityReport, LogInfo, RecoveryReport,
    SegmentInfo, inspect_dir, verify_dir,
};
pub use ledger::Position;
pub use log::{AppendTicket, Log, LogStats};
pub use options::{Durability, LogOptions, Observer};
