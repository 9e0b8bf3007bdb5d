//! What the log can tell about itself: the recovery report of `open`, a live snapshot of
//! segments and cursors, a read-only integrity check of every record, and [`inspect_dir`], the
//! read-only look at a log directory that `veltrix queue inspect` shows (safe while an engine
//! has the log open: it never writes, truncates or creates anything).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::cursor::Record;
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
        )?
        .report;
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
    let bounds = list_segments(fs, dir)?;
    let mut report = verify_segments(fs, dir, &bounds, record_bytes_max)?.report;
    match ledger::read(fs, dir) {
        Ok(Some(Err(e))) => report.ledger_error = Some(e.0.to_owned()),
        Ok(_) => {}
        Err(e) => return Err(Error::io("reading the cursor ledger", dir, e)),
    }
    Ok(report)
}

/// A cursor as persisted in the ledger of a log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirCursor {
    /// The consumer's name (a pipeline's cursor is named after the pipeline).
    pub name: String,
    /// Lowest record not yet acknowledged, as last persisted (a running engine persists
    /// positions periodically, so this may trail the live position by that interval).
    pub committed: Position,
    /// Records from `committed` to [`DirInfo::next_offset`].
    pub lag_records: u64,
}

/// What [`inspect_dir`] read from a log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirInfo {
    /// The log's directory.
    pub dir: PathBuf,
    /// Segment files, oldest first; `bytes` is the file size when it was listed.
    pub segments: Vec<SegmentInfo>,
    /// Offset of the oldest retained record (the oldest segment's base; 0 when there is none).
    pub first_offset: u64,
    /// Offset after the last valid record of the newest segment (what the next append gets once
    /// a torn tail is cut off).
    pub next_offset: u64,
    /// The oldest readable record (offset and payload as appended), if any.
    pub oldest: Option<Record>,
    /// Every cursor of the ledger, in ledger order (none when the ledger is missing or damaged).
    pub cursors: Vec<DirCursor>,
    /// Bytes after the last valid record of the newest segment that hold no valid record: a
    /// write cut short by a crash, or one in progress while an engine is running. `open` cuts
    /// them off. `records` is 0 (how many records they held is unknown). Not part of
    /// `integrity.damaged`.
    pub torn_tail: Option<DamagedRange>,
    /// Every record checked; damaged ranges and the ledger's state.
    pub integrity: IntegrityReport,
}

/// Reads a log directory without opening the log: segments and their sizes, first and next
/// offsets, the oldest record, the cursors of the ledger and an integrity check of every
/// record. It only opens files for reading and never creates, truncates or renames anything, so
/// it is safe while an engine has the log open; what it reports is then a snapshot that may
/// trail the engine by a few records (the ledger is read first, so no cursor appears ahead of
/// the data read after it). When reading fails while the segment files change under it (an
/// engine's retention deleting a segment), it starts over, up to five times.
pub fn inspect_dir(
    fs: &dyn Filesystem,
    dir: &Path,
    record_bytes_max: u32,
) -> Result<DirInfo, Error> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        let before = segment_bases(fs, dir).ok();
        match inspect_once(fs, dir, record_bytes_max) {
            Err(_)
                if attempt < ATTEMPTS
                    && before.is_some()
                    && segment_bases(fs, dir).ok() != before =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn inspect_once(fs: &dyn Filesystem, dir: &Path, record_bytes_max: u32) -> Result<DirInfo, Error> {
    let (entries, ledger_error) =
        match ledger::read(fs, dir).map_err(|e| Error::io("reading the cursor ledger", dir, e))? {
            None => (Vec::new(), None),
            Some(Ok(entries)) => (entries, None),
            Some(Err(corrupt)) => (Vec::new(), Some(corrupt.0.to_owned())),
        };
    let bounds = list_segments(fs, dir)?;
    let Scan {
        mut report,
        next_offset,
        oldest,
        torn_tail,
    } = verify_segments(fs, dir, &bounds, record_bytes_max)?;
    report.ledger_error = ledger_error;
    if torn_tail.is_some() {
        // The scan reports the torn tail as the last damaged range; here it is told apart.
        report.damaged.pop();
    }
    Ok(DirInfo {
        dir: dir.to_path_buf(),
        segments: bounds
            .iter()
            .map(|&(base, bytes)| SegmentInfo {
                base_offset: base,
                bytes,
                path: dir.join(segment_name(base)),
            })
            .collect(),
        first_offset: bounds.first().map_or(0, |&(base, _)| base),
        next_offset,
        oldest,
        cursors: entries
            .into_iter()
            .map(|(name, committed)| DirCursor {
                lag_records: next_offset.saturating_sub(committed.offset),
                name,
                committed,
            })
            .collect(),
        torn_tail,
        integrity: report,
    })
}

/// Segment base offsets in `dir`, oldest first.
fn segment_bases(fs: &dyn Filesystem, dir: &Path) -> Result<Vec<u64>, Error> {
    let names = fs
        .list(dir)
        .map_err(|e| Error::io("listing the log directory", dir, e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort_unstable();
    Ok(bases)
}

/// Segment base offsets and file sizes in `dir`, oldest first.
fn list_segments(fs: &dyn Filesystem, dir: &Path) -> Result<Vec<(u64, u64)>, Error> {
    let bases = segment_bases(fs, dir)?;
    let mut bounds = Vec::with_capacity(bases.len());
    for base in bases {
        let path = dir.join(segment_name(base));
        let len = fs
            .open(&path, false)
            .and_then(|f| f.size())
            .map_err(|e| Error::io("opening a segment", &path, e))?;
        bounds.push((base, len));
    }
    Ok(bounds)
}

/// What one pass over the segments found.
struct Scan {
    report: IntegrityReport,
    /// The offset after the last valid record of the last segment.
    next_offset: u64,
    /// The first valid record found.
    oldest: Option<Record>,
    /// Bytes at the end of the last segment with no valid record in them (also the last entry
    /// of `report.damaged`).
    torn_tail: Option<DamagedRange>,
}

fn verify_segments(
    fs: &dyn Filesystem,
    dir: &Path,
    bounds: &[(u64, u64)],
    record_bytes_max: u32,
) -> Result<Scan, Error> {
    let mut report = IntegrityReport {
        segments: bounds.len(),
        ..IntegrityReport::default()
    };
    let (mut oldest, mut torn_tail, mut next_offset) = (None, None, 0);
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
                Next::Record {
                    offset,
                    payload,
                    frame_len,
                } => {
                    if oldest.is_none() {
                        oldest = Some(Record {
                            offset,
                            payload: Bytes::copy_from_slice(payload),
                        });
                    }
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
                    let range = DamagedRange {
                        segment: base,
                        byte_start: pos,
                        byte_end: end,
                        records: resume_offset.saturating_sub(expected),
                    };
                    if found.is_none() && i + 1 == bounds.len() {
                        torn_tail = Some(range.clone());
                    }
                    report.damaged.push(range);
                    pos = end;
                    expected = resume_offset;
                }
            }
        }
        next_offset = expected;
    }
    Ok(Scan {
        report,
        next_offset,
        oldest,
        torn_tail,
    })
}

impl Log {
    /// The committed position of the slowest cursor, when it has records still to consume
    /// (`None` with no cursors or when every cursor is caught up).
    pub fn slowest_position(&self) -> Option<Position> {
        let st = self.shared().lock();
        st.cursors
            .iter()
            .flatten()
            .map(|c| st.normalize(c.committed))
            .min_by_key(|p| p.offset)
            .filter(|p| p.offset < st.next_offset)
    }

    /// Reads the one record at `position` (e.g. to learn how long the oldest unconsumed event
    /// has waited). `None` if it is not a valid record there (damaged, or gone).
    pub fn read_at(&self, position: Position) -> Result<Option<Record>, Error> {
        let shared = self.shared();
        let limit = {
            let st = shared.lock();
            match st.segment_index(position.segment) {
                Some(i) => st.segments[i].len,
                None => return Ok(None),
            }
        };
        let path = shared.segment_path(position.segment);
        let file = match shared.fs.open(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening a segment", &path, e)),
        };
        let mut reader = SegmentReader::new(4096, shared.opts.record_bytes_max);
        match reader
            .next(file.as_ref(), position.pos, limit, position.offset)
            .map_err(|e| Error::io("reading a segment", &path, e))?
        {
            Next::Record {
                offset, payload, ..
            } => Ok(Some(Record {
                offset,
                payload: Bytes::copy_from_slice(payload),
            })),
            Next::End | Next::Damaged => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::frame::{self, HEADER_BYTES};
    use crate::fs::SimFs;
    use crate::log::Log;
    use crate::options::LogOptions;

    const DIR: &str = "/data/queues/default";
    const MAX: u32 = 1024;

    fn payload(offset: u64) -> Vec<u8> {
        format!("{{\"id\":\"{offset}\"}}").into_bytes()
    }

    /// Writes one segment holding `offsets`; returns its bytes.
    fn write_segment(fs: &SimFs, offsets: std::ops::Range<u64>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for offset in offsets.clone() {
            frame::encode(&mut bytes, offset, &payload(offset));
        }
        fs.write_file(
            &Path::new(DIR).join(segment_name(offsets.start)),
            bytes.clone(),
        );
        bytes
    }

    fn position(offset: u64, segment: u64, pos: u64) -> Position {
        Position {
            offset,
            segment,
            pos,
        }
    }

    /// Three segments with records 0..4, 4..7 and 7..10, and a ledger with two cursors.
    fn three_segments() -> SimFs {
        let fs = SimFs::new();
        let dir = Path::new(DIR);
        fs.create_dir_all(dir).unwrap();
        write_segment(&fs, 0..4);
        write_segment(&fs, 4..7);
        write_segment(&fs, 7..10);
        let entries = vec![
            ("archive".to_owned(), position(5, 4, frame_len(4))),
            ("audit".to_owned(), position(10, 7, 3 * frame_len(7))),
        ];
        ledger::write(&fs, dir, &entries).unwrap();
        fs
    }

    /// Every file and its bytes, to show that inspection changes nothing.
    fn snapshot(fs: &SimFs) -> BTreeMap<String, Vec<u8>> {
        let dir = Path::new(DIR);
        fs.list(dir)
            .unwrap()
            .into_iter()
            .map(|name| {
                let bytes = fs.read_file(&dir.join(&name)).unwrap();
                (name, bytes)
            })
            .collect()
    }

    fn frame_len(offset: u64) -> u64 {
        (HEADER_BYTES + payload(offset).len()) as u64
    }

    #[test]
    fn reports_segments_offsets_cursors_and_the_oldest_record() {
        let fs = three_segments();
        let info = inspect_dir(&fs, Path::new(DIR), MAX).unwrap();
        let bases: Vec<u64> = info.segments.iter().map(|s| s.base_offset).collect();
        assert_eq!(bases, [0, 4, 7]);
        for s in &info.segments {
            assert_eq!(s.bytes, fs.read_file(&s.path).unwrap().len() as u64);
        }
        assert_eq!(info.segments[2].path, Path::new(DIR).join(segment_name(7)));
        assert_eq!((info.first_offset, info.next_offset), (0, 10));
        let oldest = info.oldest.as_ref().unwrap();
        assert_eq!(oldest.offset, 0);
        assert_eq!(oldest.payload.as_ref(), payload(0));
        let cursors: Vec<(&str, u64, u64)> = info
            .cursors
            .iter()
            .map(|c| (c.name.as_str(), c.committed.offset, c.lag_records))
            .collect();
        assert_eq!(cursors, [("archive", 5, 5), ("audit", 10, 0)]);
        assert_eq!(info.integrity.records_ok, 10);
        assert_eq!(info.integrity.segments, 3);
        assert!(info.integrity.is_clean());
        assert_eq!(info.torn_tail, None);
    }

    #[test]
    fn a_torn_tail_is_reported_apart_from_damage_and_nothing_is_written() {
        let fs = three_segments();
        let last = Path::new(DIR).join(segment_name(7));
        let mut bytes = fs.read_file(&last).unwrap();
        let valid = bytes.len() as u64;
        let mut next = Vec::new();
        frame::encode(&mut next, 10, &payload(10));
        bytes.extend_from_slice(&next[..next.len() - 3]); // a write cut short
        fs.write_file(&last, bytes);
        let before = snapshot(&fs);

        let info = inspect_dir(&fs, Path::new(DIR), MAX).unwrap();
        assert_eq!(info.next_offset, 10, "only valid records count");
        assert_eq!(
            info.torn_tail,
            Some(DamagedRange {
                segment: 7,
                byte_start: valid,
                byte_end: valid + next.len() as u64 - 3,
                records: 0,
            })
        );
        assert!(info.integrity.is_clean(), "{:?}", info.integrity);
        assert_eq!(info.integrity.records_ok, 10);
        assert_eq!(
            snapshot(&fs),
            before,
            "inspection must not truncate the tail"
        );
        // verify_dir keeps counting a torn tail as a damaged range.
        let report = verify_dir(&fs, Path::new(DIR), MAX).unwrap();
        assert_eq!(report.damaged.len(), 1);
    }

    #[test]
    fn damage_is_reported_with_its_range_and_the_oldest_readable_record() {
        let fs = three_segments();
        let first = Path::new(DIR).join(segment_name(0));
        let mut bytes = fs.read_file(&first).unwrap();
        bytes[HEADER_BYTES + 2] ^= 0x20; // inside record 0's payload
        fs.write_file(&first, bytes);

        let info = inspect_dir(&fs, Path::new(DIR), MAX).unwrap();
        assert_eq!(
            info.integrity.damaged,
            [DamagedRange {
                segment: 0,
                byte_start: 0,
                byte_end: frame_len(0),
                records: 1,
            }]
        );
        assert_eq!(info.integrity.records_ok, 9);
        assert!(!info.integrity.is_clean());
        assert_eq!(info.torn_tail, None);
        assert_eq!((info.first_offset, info.next_offset), (0, 10));
        assert_eq!(info.oldest.unwrap().offset, 1, "the oldest readable record");
    }

    #[test]
    fn a_damaged_end_of_a_sealed_segment_is_damage_not_a_torn_tail() {
        let fs = three_segments();
        let second = Path::new(DIR).join(segment_name(4));
        let mut bytes = fs.read_file(&second).unwrap();
        let len = bytes.len();
        bytes[len - 1] ^= 0x01; // the last record of a sealed segment (offset 6)
        fs.write_file(&second, bytes);

        let info = inspect_dir(&fs, Path::new(DIR), MAX).unwrap();
        assert_eq!(info.torn_tail, None);
        assert_eq!(info.integrity.damaged.len(), 1);
        let range = &info.integrity.damaged[0];
        assert_eq!((range.segment, range.records), (4, 1));
        assert_eq!(range.byte_end, len as u64);
        assert_eq!(info.next_offset, 10);
    }

    #[test]
    fn a_damaged_ledger_is_reported_and_lists_no_cursors() {
        let fs = three_segments();
        let path = Path::new(DIR).join(ledger::LEDGER_FILE);
        let mut bytes = fs.read_file(&path).unwrap();
        bytes[10] ^= 0xff;
        fs.write_file(&path, bytes);

        let info = inspect_dir(&fs, Path::new(DIR), MAX).unwrap();
        assert_eq!(
            info.integrity.ledger_error.as_deref(),
            Some("checksum mismatch")
        );
        assert!(info.cursors.is_empty());
        assert!(!info.integrity.is_clean());
        assert!(info.integrity.damaged.is_empty());
    }

    #[test]
    fn an_empty_directory_has_no_records_and_a_missing_one_is_an_error() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new(DIR)).unwrap();
        let info = inspect_dir(&fs, Path::new(DIR), MAX).unwrap();
        assert!(info.segments.is_empty() && info.cursors.is_empty());
        assert_eq!((info.first_offset, info.next_offset), (0, 0));
        assert_eq!(info.oldest, None);
        assert!(info.integrity.is_clean());
        assert!(snapshot(&fs).is_empty(), "nothing is created");

        let err = inspect_dir(&fs, Path::new("/data/queues/nope"), MAX).unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
    }

    fn small() -> LogOptions {
        LogOptions {
            segment_bytes: 1024,
            record_bytes_max: 256,
            write_buffer_bytes_max: 1024 * 1024,
            cursor_sync_interval: Duration::from_millis(5),
            ..LogOptions::default()
        }
    }

    #[tokio::test]
    async fn agrees_with_the_open_logs_own_view() {
        let fs = SimFs::new();
        let (log, _) = Log::open_with_fs(Arc::new(fs.clone()), DIR, small()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..100).map(payload).collect();
        log.append_batch(&payloads).unwrap().await.unwrap();
        let mut fast = log.cursor("fast").unwrap();
        let _slow = log.cursor("slow").unwrap();
        let mut acked = 0;
        while acked < 40 {
            let read = fast.try_read_batch(40 - acked, 1 << 20).unwrap();
            let offsets: Vec<u64> = read.iter().map(|r| r.offset).collect();
            fast.acker().ack_many(&offsets).unwrap();
            acked += offsets.len();
        }
        fast.commit().await.unwrap();
        let live = log.inspect();
        drop(fast);
        drop(_slow);
        log.close().unwrap();

        let info = inspect_dir(&fs, Path::new(DIR), 256).unwrap();
        assert!(info.segments.len() > 2, "several segments");
        assert_eq!(info.segments, live.segments);
        assert_eq!(
            (info.first_offset, info.next_offset),
            (live.first_offset, live.next_offset)
        );
        let lags: Vec<(String, u64, u64)> = info
            .cursors
            .iter()
            .map(|c| (c.name.clone(), c.committed.offset, c.lag_records))
            .collect();
        let mut want: Vec<(String, u64, u64)> = live
            .cursors
            .iter()
            .map(|c| (c.name.clone(), c.committed.offset, c.lag_records))
            .collect();
        want.sort();
        let mut got = lags;
        got.sort();
        assert_eq!(got, want);
        assert_eq!(got, [("fast".into(), 40, 60), ("slow".into(), 0, 100)]);
        assert_eq!(info.oldest.unwrap().payload.as_ref(), payload(0));
        assert!(info.integrity.is_clean() && info.torn_tail.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn is_safe_while_the_log_appends_rotates_and_deletes_segments() {
        let fs = SimFs::new();
        let (log, _) = Log::open_with_fs(Arc::new(fs.clone()), DIR, small()).unwrap();
        let mut cursor = log.cursor("only").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let inspector = {
            let (fs, stop) = (fs.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) || rounds == 0 {
                    let info = inspect_dir(&fs, Path::new(DIR), 256).expect("inspect");
                    assert!(info.integrity.is_clean(), "{:?}", info.integrity);
                    assert!(info.first_offset <= info.next_offset);
                    for c in &info.cursors {
                        assert!(c.committed.offset <= info.next_offset, "{c:?} {info:?}");
                    }
                    rounds += 1;
                }
                rounds
            })
        };
        for round in 0..200u64 {
            let payloads: Vec<Vec<u8>> = (round * 10..round * 10 + 10).map(payload).collect();
            log.append_batch(&payloads).unwrap().await.unwrap();
            let read = cursor.try_read_batch(10, 1 << 20).unwrap();
            let offsets: Vec<u64> = read.iter().map(|r| r.offset).collect();
            cursor.acker().ack_many(&offsets).unwrap();
            if round % 20 == 0 {
                cursor.commit().await.unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let rounds = inspector.join().unwrap();
        assert!(rounds > 0);
        assert!(log.stats().segments_deleted > 0, "retention ran meanwhile");
        drop(cursor);
        log.close().unwrap();
    }
}
