//! What the log can tell about itself: the recovery report of `open`, a live snapshot of
//! segments and cursors, and a read-only integrity check of every record (what
//! `veltrix queue inspect` shows).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::fs::Filesystem;
use crate::ledger::{self, Position};
use crate::log::{Log, parse_segment_name, segment_name};
use crate::scan::{Next, SegmentReader};

/// A range of a segment that failed its checksum and is skipped, never delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// Base offset of the segment.
    pub segment: u64,
    /// First damaged byte.
    pub byte_start: u64,
    /// First byte after the damage (where a valid record starts again, or the segment's end).
    pub byte_end: u64,
    /// Records lost in the range.
    pub records: u64,
}

/// What `open` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments retained.
    pub segments: usize,
    /// Offset of the oldest retained record.
    pub first_offset: u64,
    /// Offset the next appended record gets.
    pub next_offset: u64,
    /// Valid records found in the active (tail) segment, which is checked record by record.
    pub tail_records: u64,
    /// Bytes of a torn last write cut off the tail.
    pub bytes_truncated: u64,
    /// Damage in the middle of the tail segment, quarantined.
    pub damaged: Vec<DamagedRange>,
    /// Records inside `damaged`.
    pub records_quarantined: u64,
    /// Cursors loaded from the ledger.
    pub cursors: usize,
    /// Cursors whose persisted position no longer existed; they restart at the oldest record.
    pub cursors_reset: Vec<String>,
    /// Why the ledger was unusable (all cursors then restart at the oldest record).
    pub ledger_error: Option<String>,
    /// Time `open` took.
    pub elapsed: Duration,
}

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Readable bytes.
    pub bytes: u64,
    /// File path.
    pub path: PathBuf,
}

/// One cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorInfo {
    /// The consumer's name.
    pub name: String,
    /// Lowest record not yet acknowledged.
    pub committed: Position,
    /// Position in the ledger on disk, if written yet.
    pub persisted: Option<Position>,
    /// Records delivered and not yet committed past.
    pub inflight_records: usize,
    /// Records between the committed position and the tail.
    pub lag_records: u64,
    /// Whether a handle is open.
    pub open: bool,
}

/// A live snapshot of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogInfo {
    /// The log's directory.
    pub dir: PathBuf,
    /// Retained segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Oldest retained offset.
    pub first_offset: u64,
    /// Offset the next record gets.
    pub next_offset: u64,
    /// Records between the slowest cursor and the tail (what the bounds apply to).
    pub backlog_records: u64,
    /// Framed bytes between the slowest cursor and the tail.
    pub backlog_bytes: u64,
    /// Every cursor.
    pub cursors: Vec<CursorInfo>,
}

/// Result of checking every record of every segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Segments checked.
    pub segments: usize,
    /// Records whose checksum and offset are right.
    pub records_ok: u64,
    /// Damaged ranges (a torn tail of the last segment is reported as one, too).
    pub damaged: Vec<DamagedRange>,
    /// Why the cursor ledger is unusable, if it is.
    pub ledger_error: Option<String>,
}

impl IntegrityReport {
    /// No damage anywhere.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.ledger_error.is_none()
    }
}

impl Log {
    /// A snapshot of segments, bounds and cursors.
    pub fn inspect(&self) -> LogInfo {
        let shared = self.shared();
        let st = shared.lock();
        let (backlog_records, backlog_bytes) = st.backlog();
        LogInfo {
            dir: shared.dir.clone(),
            segments: st
                .segments
                .iter()
                .map(|s| SegmentInfo {
                    base_offset: s.base,
                    bytes: s.len,
                    path: shared.segment_path(s.base),
                })
                .collect(),
            first_offset: st.segments.front().expect("never empty").base,
            next_offset: st.next_offset,
            backlog_records,
            backlog_bytes,
            cursors: st
                .cursors
                .iter()
                .flatten()
                .map(|c| CursorInfo {
                    name: c.name.clone(),
                    committed: c.committed,
                    persisted: c.persisted,
                    inflight_records: c.inflight_records,
                    lag_records: st.next_offset.saturating_sub(c.committed.offset),
                    open: c.open,
                })
                .collect(),
        }
    }

    /// Checks every readable record of every segment (read-only).
    pub fn verify(&self) -> Result<IntegrityReport, Error> {
        let shared = self.shared();
        let bounds: Vec<(u64, u64)> = {
            let st = shared.lock();
            st.segments.iter().map(|s| (s.base, s.len)).collect()
        };
        let mut report = verify_segments(
            shared.fs.as_ref(),
            &shared.dir,
            &bounds,
            shared.opts.record_bytes_max,
        )?;
        if let Ok(Some(Err(e))) = ledger::read(shared.fs.as_ref(), &shared.dir) {
            report.ledger_error = Some(e.0.to_owned());
        }
        Ok(report)
    }
}

/// Checks the log in `dir` without opening it for writing (safe on a stopped engine's data; it
/// never modifies a file).
pub fn verify_dir(
    fs: &dyn Filesystem,
    dir: &Path,
    record_bytes_max: u32,
) -> Result<IntegrityReport, Error> {
    let names = fs
        .list(dir)
        .map_err(|e| Error::io("listing the log directory", dir, e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort_unstable();
    let mut bounds = Vec::with_capacity(bases.len());
    for base in bases {
        let path = dir.join(segment_name(base));
        let len = fs
            .open(&path, false)
            .and_then(|f| f.size())
            .map_err(|e| Error::io("opening a segment", &path, e))?;
        bounds.push((base, len));
    }
    let mut report = verify_segments(fs, dir, &bounds, record_bytes_max)?;
    match ledger::read(fs, dir) {
        Ok(Some(Err(e))) => report.ledger_error = Some(e.0.to_owned()),
        Ok(_) => {}
        Err(e) => return Err(Error::io("reading the cursor ledger", dir, e)),
    }
    Ok(report)
}

fn verify_segments(
    fs: &dyn Filesystem,
    dir: &Path,
    bounds: &[(u64, u64)],
    record_bytes_max: u32,
) -> Result<IntegrityReport, Error> {
    let mut report = IntegrityReport {
        segments: bounds.len(),
        ..IntegrityReport::default()
    };
    let mut reader = SegmentReader::new(1024 * 1024, record_bytes_max);
    for (i, &(base, len)) in bounds.iter().enumerate() {
        let path = dir.join(segment_name(base));
        let file = fs
            .open(&path, false)
            .map_err(|e| Error::io("opening a segment", &path, e))?;
        let io_err = |e| Error::io("verifying a segment", &path, e);
        reader.reset();
        let (mut pos, mut expected) = (0, base);
        loop {
            match reader
                .next(file.as_ref(), pos, len, expected)
                .map_err(io_err)?
            {
                Next::Record { frame_len, .. } => {
                    report.records_ok += 1;
                    pos += frame_len as u64;
                    expected += 1;
                }
                Next::End => {
                    // A sealed segment must end where its successor begins.
                    if let Some(&(next_base, _)) = bounds.get(i + 1)
                        && expected < next_base
                    {
                        report.damaged.push(DamagedRange {
                            segment: base,
                            byte_start: len,
                            byte_end: len,
                            records: next_base - expected,
                        });
                    }
                    break;
                }
                Next::Damaged => {
                    let found = reader
                        .resync(file.as_ref(), pos, len, expected)
                        .map_err(io_err)?;
                    let (end, resume_offset) = match found {
                        Some((p, o)) => (p, o),
                        None => (len, bounds.get(i + 1).map_or(expected, |n| n.0)),
                    };
                    report.damaged.push(DamagedRange {
                        segment: base,
                        byte_start: pos,
                        byte_end: end,
                        records: resume_offset.saturating_sub(expected),
                    });
                    pos = end;
                    expected = resume_offset;
                }
            }
        }
    }
    Ok(report)
}
