//! The log handle, its shared state and the committer thread.
//!
//! Appenders frame their records (checksum over `len ‖ payload`) into `State::pending` under the
//! state lock and get an [`AppendTicket`]. One committer thread per log takes the whole pending
//! buffer, assigns offsets (sealing each frame's checksum), writes it with as few `write` calls as
//! segment boundaries allow, fdatasyncs once, and only then publishes the new tail to readers and
//! resolves every ticket of the round: that is group commit. While it syncs, new appends pile up
//! for the next round, so the cost of one fdatasync is shared by everyone who arrived meanwhile.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::cursor::{Cursor, CursorSlot};
use crate::error::{Error, FullReason};
use crate::failpoint::{self, crash_here};
use crate::frame::{self, HEADER_BYTES};
use crate::fs::{FileHandle, Filesystem, OsFs, SimFs};
use crate::inspect::{DamagedRange, RecoveryReport};
use crate::ledger::{self, Position};
use crate::options::{Durability, LogOptions};
use crate::scan::{Next, SegmentReader};

pub(crate) const SEGMENT_SUFFIX: &str = ".seg";

pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment file as the readers may see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    /// Offset of its first record; also its file name.
    pub(crate) base: u64,
    /// Logical byte position of its start (bytes of all retained segments before it).
    pub(crate) start_byte: u64,
    /// Bytes readers may read: written (and in `fsync` mode synced) whole records.
    pub(crate) len: u64,
}

type AppendResult = Result<Range<u64>, Error>;
type LedgerWaiter = oneshot::Sender<Result<(), Error>>;

pub(crate) struct State {
    /// Unsealed frames waiting for the committer.
    pending: Vec<u8>,
    pending_records: u64,
    /// Per waiting append: how many records it holds, and whom to tell.
    pending_waiters: Vec<(u64, oneshot::Sender<AppendResult>)>,
    /// The buffer the committer hands back after a round, reused to avoid reallocating.
    spare: Vec<u8>,
    /// Retained segments, oldest first; the last one is active. Never empty.
    pub(crate) segments: VecDeque<Segment>,
    /// Offset the next committed record gets; records below it are readable.
    pub(crate) next_offset: u64,
    pub(crate) cursors: Vec<Option<CursorSlot>>,
    pub(crate) cursor_names: HashMap<String, usize>,
    /// Cursor positions changed since the ledger was last written.
    pub(crate) ledger_dirty: bool,
    ledger_waiters: Vec<LedgerWaiter>,
    /// Set once an fsync failed: every later operation gets this error.
    pub(crate) failed: Option<Error>,
    pub(crate) closing: bool,
}

impl State {
    pub(crate) fn check_usable(&self) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    pub(crate) fn segment_index(&self, base: u64) -> Option<usize> {
        self.segments.binary_search_by_key(&base, |s| s.base).ok()
    }

    fn tail_byte(&self) -> u64 {
        let last = self.segments.back().expect("segments never empty");
        last.start_byte + last.len
    }

    /// The position retention and bounds must keep: the lowest committed (or persisted) cursor
    /// position, or the start of the log when there are no cursors.
    pub(crate) fn low_water(&self) -> (u64, u64) {
        let first = self.segments.front().expect("segments never empty");
        let mut low: Option<(u64, u64)> = None;
        for slot in self.cursors.iter().flatten() {
            for p in [Some(slot.committed), slot.persisted].into_iter().flatten() {
                let byte = match self.segment_index(p.segment) {
                    Some(i) => self.segments[i].start_byte + p.pos,
                    None => first.start_byte,
                };
                let candidate = (p.offset, byte);
                low = Some(low.map_or(candidate, |l: (u64, u64)| {
                    (l.0.min(p.offset), l.1.min(byte))
                }));
            }
        }
        low.unwrap_or((first.base, first.start_byte))
    }

    /// Records and framed bytes between the slowest cursor and the tail, pending included.
    pub(crate) fn backlog(&self) -> (u64, u64) {
        let (low_offset, low_byte) = self.low_water();
        let records = (self.next_offset + self.pending_records).saturating_sub(low_offset);
        let bytes = (self.tail_byte() + self.pending.len() as u64).saturating_sub(low_byte);
        (records, bytes)
    }

    /// Moves a position sitting at the very end of a sealed segment to the start of the next.
    pub(crate) fn normalize(&self, p: Position) -> Position {
        match self.segment_index(p.segment) {
            Some(i) if i + 1 < self.segments.len() && p.pos >= self.segments[i].len => {
                let next = self.segments[i + 1].base;
                Position {
                    offset: p.offset.max(next),
                    segment: next,
                    pos: 0,
                }
            }
            _ => p,
        }
    }
}

/// Counters kept by the log, readable at any time.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) appended_records: AtomicU64,
    pub(crate) appended_bytes: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) rejected_full: AtomicU64,
    pub(crate) quarantined_records: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
    pub(crate) dropped_records: AtomicU64,
}

/// A point-in-time copy of the log's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records made durable (or visible, outside `fsync` mode) since open.
    pub appended_records: u64,
    /// Framed bytes made durable since open.
    pub appended_bytes: u64,
    /// Group commits (rounds) since open.
    pub commits: u64,
    /// Segment fdatasyncs since open.
    pub fsyncs: u64,
    /// Appends refused with `Full` since open.
    pub rejected_full: u64,
    /// Records skipped by readers because they sat in a damaged range.
    pub quarantined_records: u64,
    /// Segments deleted (by retention or [`Log::drop_oldest`]) since open.
    pub segments_deleted: u64,
    /// Records discarded unconsumed by [`Log::drop_oldest`] since open.
    pub dropped_records: u64,
}

pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) fs: Arc<dyn Filesystem>,
    pub(crate) opts: LogOptions,
    pub(crate) state: Mutex<State>,
    /// Wakes the committer.
    work: Condvar,
    /// Whether the committer is waiting on `work`. Set and cleared under the state lock around
    /// its wait, so a waker that changed the state under the lock and reads `false` afterwards
    /// knows the committer has not started waiting since and will see the change when it checks
    /// for work: notifying is skipped then (a futex syscall per append while it is busy syncing).
    committer_waiting: AtomicBool,
    /// Bumped whenever readers may make progress: new records, acknowledgements, close.
    pub(crate) progress: watch::Sender<u64>,
    pub(crate) stats: Stats,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a broken invariant; the state is still consistent
        // enough to report errors, so keep going rather than cascading panics.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn wake_readers(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Call after changing the state under the lock (and releasing it).
    pub(crate) fn wake_committer(&self) {
        if self.committer_waiting.load(Ordering::SeqCst) {
            self.work.notify_one();
        }
    }

    pub(crate) fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(segment_name(base))
    }
}

/// Resolves when the appended records are durable (or visible, in `interval`/`memory` mode),
/// with the offsets they were given.
#[must_use = "an append is only durable once its ticket resolves"]
pub struct AppendTicket {
    rx: oneshot::Receiver<AppendResult>,
}

impl Future for AppendTicket {
    type Output = Result<Range<u64>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

struct LogInner {
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl LogInner {
    fn shutdown(&self) {
        self.shared.lock().closing = true;
        self.shared.wake_committer();
        self.shared.wake_readers();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            // A panicking committer already failed every waiter; nothing more to report here.
            let _ = handle.join();
        }
    }
}

impl Drop for LogInner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One durable, bounded, append-only log (one per queue). Cheap to clone; the committer stops
/// when the last clone is dropped or [`Log::close`] is called.
#[derive(Clone)]
pub struct Log {
    inner: Arc<LogInner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.inner.shared.dir)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir` on the real filesystem, or in memory for
    /// [`Durability::Memory`], and recovers it.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<(Log, RecoveryReport), Error> {
        let fs: Arc<dyn Filesystem> = match opts.durability {
            Durability::Memory => Arc::new(SimFs::new()),
            Durability::Fsync | Durability::Interval(_) => Arc::new(OsFs),
        };
        Self::open_with_fs(fs, dir, opts)
    }

    /// Opens the log in `dir` on the given filesystem (tests inject faults this way).
    pub fn open_with_fs(
        fs: Arc<dyn Filesystem>,
        dir: impl AsRef<Path>,
        opts: LogOptions,
    ) -> Result<(Log, RecoveryReport), Error> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let recovered = recover(fs.as_ref(), &dir, &opts)?;
        let (progress, _) = watch::channel(0);
        let mut cursors = Vec::new();
        let mut cursor_names = HashMap::new();
        for (name, position) in recovered.cursors {
            cursor_names.insert(name.clone(), cursors.len());
            cursors.push(Some(CursorSlot::new(name, position, Some(position))));
        }
        let shared = Arc::new(Shared {
            dir,
            fs,
            opts,
            state: Mutex::new(State {
                pending: Vec::new(),
                pending_records: 0,
                pending_waiters: Vec::new(),
                spare: Vec::new(),
                segments: recovered.segments,
                next_offset: recovered.next_offset,
                cursors,
                cursor_names,
                ledger_dirty: false,
                ledger_waiters: Vec::new(),
                failed: None,
                closing: false,
            }),
            work: Condvar::new(),
            committer_waiting: AtomicBool::new(false),
            progress,
            stats: Stats::default(),
        });
        let committer = Committer {
            shared: shared.clone(),
            active: recovered.active,
            active_base: recovered.active_base,
            active_len: recovered.active_len,
            next_offset: recovered.next_offset,
            unsynced_since: None,
            last_ledger_write: Instant::now(),
            dead: false,
        };
        let handle = std::thread::Builder::new()
            .name("veltrix-log-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| Error::io("spawning the committer thread", "", e))?;
        let log = Log {
            inner: Arc::new(LogInner {
                shared,
                committer: Mutex::new(Some(handle)),
            }),
        };
        Ok((log, recovered.report))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The directory holding this log's files.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Appends one record. See [`Log::append_batch`].
    pub fn append(&self, payload: &[u8]) -> Result<AppendTicket, Error> {
        self.append_batch(&[payload])
    }

    /// Appends `payloads` as consecutive records, all or nothing. Fails at once with
    /// [`Error::Full`] when the backlog bounds would be exceeded; otherwise the returned ticket
    /// resolves with the records' offsets once they are durable.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<AppendTicket, Error> {
        let shared = &self.inner.shared;
        let framed_bytes = self.framed_bytes(payloads)?;
        let (tx, rx) = oneshot::channel();
        let count = payloads.len() as u64;
        if count == 0 {
            let next = shared.lock().next_offset;
            let _ = tx.send(Ok(next..next));
            return Ok(AppendTicket { rx });
        }
        let mut st = shared.lock();
        self.check_room(&st, count, framed_bytes)?;
        st.pending.reserve(framed_bytes as usize);
        for p in payloads {
            frame::encode_unsealed(&mut st.pending, p.as_ref());
        }
        st.pending_records += count;
        st.pending_waiters.push((count, tx));
        drop(st);
        shared.wake_committer();
        Ok(AppendTicket { rx })
    }

    /// Whether `payloads` would be accepted by [`Log::append_batch`] right now (bounds and record
    /// size), without appending. Lets a caller that appends to several logs refuse a request
    /// before any log took part of it; a concurrent append may still take the room in between.
    pub fn check_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(), Error> {
        let framed_bytes = self.framed_bytes(payloads)?;
        let st = self.inner.shared.lock();
        self.check_room(&st, payloads.len() as u64, framed_bytes)
    }

    fn framed_bytes<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<u64, Error> {
        let max = self.inner.shared.opts.record_bytes_max;
        let mut framed_bytes = 0u64;
        for p in payloads {
            let size = p.as_ref().len();
            if size > max as usize {
                return Err(Error::RecordTooLarge { size, max });
            }
            framed_bytes += (HEADER_BYTES + size) as u64;
        }
        Ok(framed_bytes)
    }

    fn check_room(&self, st: &State, count: u64, framed_bytes: u64) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let opts = &shared.opts;
        st.check_usable()?;
        let full = if st.pending.len() as u64 + framed_bytes > opts.write_buffer_bytes_max {
            Some(FullReason::WriteBuffer)
        } else {
            let (records, bytes) = st.backlog();
            if records + count > opts.max_records {
                Some(FullReason::Records)
            } else if bytes + framed_bytes > opts.max_bytes {
                Some(FullReason::Bytes)
            } else {
                None
            }
        };
        match full {
            Some(reason) => {
                shared.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                Err(Error::Full(reason))
            }
            None => Ok(()),
        }
    }

    /// Makes room by deleting the oldest segment even though cursors have not consumed it (the
    /// `drop_oldest` when-full policy). Cursors behind it jump to the next segment; their records
    /// in flight from it are forgotten (acknowledging them later answers `NotInFlight`). Returns
    /// how many records were dropped: 0 when only the active segment is left (nothing to drop).
    pub fn drop_oldest(&self) -> Result<u64, Error> {
        let shared = &self.inner.shared;
        let (gone, dropped) = {
            let mut st = shared.lock();
            st.check_usable()?;
            if st.segments.len() < 2 {
                return Ok(0);
            }
            let gone = st.segments.pop_front().expect("len >= 2");
            let next = *st.segments.front().expect("len >= 1");
            for slot in st.cursors.iter_mut().flatten() {
                slot.drop_before(next.base);
            }
            st.ledger_dirty = true;
            (gone, next.base - gone.base)
        };
        shared
            .stats
            .dropped_records
            .fetch_add(dropped, Ordering::Relaxed);
        shared
            .stats
            .segments_deleted
            .fetch_add(1, Ordering::Relaxed);
        let path = shared.segment_path(gone.base);
        shared
            .fs
            .remove(&path)
            .map_err(|e| Error::io("deleting the oldest segment to make room", &path, e))?;
        shared.wake_committer();
        shared.wake_readers();
        Ok(dropped)
    }

    /// Opens the named cursor (creating it at the oldest retained record if it is new). Only one
    /// handle per name may be open; reopening resumes at the committed position, so records
    /// delivered but not acknowledged by the previous handle are delivered again.
    pub fn cursor(&self, name: &str) -> Result<Cursor, Error> {
        Cursor::open(self.inner.shared.clone(), name)
    }

    /// Forgets a cursor (a removed pipeline), so retention no longer waits for it. Returns
    /// whether it existed. Fails with `CursorBusy` while a handle is open.
    pub fn remove_cursor(&self, name: &str) -> Result<bool, Error> {
        let shared = &self.inner.shared;
        let mut st = shared.lock();
        st.check_usable()?;
        let Some(&slot) = st.cursor_names.get(name) else {
            return Ok(false);
        };
        if st.cursors[slot].as_ref().is_some_and(|s| s.open) {
            return Err(Error::CursorBusy(name.to_owned()));
        }
        st.cursor_names.remove(name);
        st.cursors[slot] = None;
        st.ledger_dirty = true;
        drop(st);
        shared.wake_committer();
        Ok(true)
    }

    /// Persists every cursor's committed position now (and lets retention delete segments all
    /// cursors are past). Positions are also persisted every `cursor_sync_interval` on their own.
    pub async fn sync_cursors(&self) -> Result<(), Error> {
        sync_cursors(&self.inner.shared).await
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        let s = &self.inner.shared.stats;
        LogStats {
            appended_records: s.appended_records.load(Ordering::Relaxed),
            appended_bytes: s.appended_bytes.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            rejected_full: s.rejected_full.load(Ordering::Relaxed),
            quarantined_records: s.quarantined_records.load(Ordering::Relaxed),
            segments_deleted: s.segments_deleted.load(Ordering::Relaxed),
            dropped_records: s.dropped_records.load(Ordering::Relaxed),
        }
    }

    /// Writes everything pending, persists the cursors and stops the committer. Appends and
    /// reads after this fail with [`Error::Closed`].
    pub fn close(self) -> Result<(), Error> {
        self.inner.shutdown();
        match &self.inner.shared.lock().failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

pub(crate) async fn sync_cursors(shared: &Shared) -> Result<(), Error> {
    let (tx, rx) = oneshot::channel();
    {
        let mut st = shared.lock();
        st.check_usable()?;
        st.ledger_waiters.push(tx);
    }
    shared.wake_committer();
    rx.await.unwrap_or(Err(Error::Closed))
}

struct Recovered {
    segments: VecDeque<Segment>,
    next_offset: u64,
    active: Box<dyn FileHandle>,
    active_base: u64,
    active_len: u64,
    cursors: Vec<(String, Position)>,
    report: RecoveryReport,
}

/// Opens the segments, checks the tail segment record by record (truncating a torn tail,
/// quarantining damage in its middle) and loads the cursor ledger.
fn recover(fs: &dyn Filesystem, dir: &Path, opts: &LogOptions) -> Result<Recovered, Error> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    fs.create_dir_all(dir)
        .map_err(|e| Error::io("creating the log directory", dir, e))?;
    let names = fs
        .list(dir)
        .map_err(|e| Error::io("listing the log directory", dir, e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort_unstable();
    if bases.is_empty() {
        let path = dir.join(segment_name(0));
        fs.open(&path, true)
            .map_err(|e| Error::io("creating the first segment", &path, e))?;
        if opts.durability != Durability::Memory {
            fs.sync_dir(dir)
                .map_err(|e| Error::io("syncing the log directory", dir, e))?;
        }
        bases.push(0);
    }
    let mut segments = VecDeque::with_capacity(bases.len());
    let mut start_byte = 0;
    let (&last_base, sealed) = bases.split_last().expect("at least one segment");
    for &base in sealed {
        let path = dir.join(segment_name(base));
        let len = fs
            .open(&path, false)
            .and_then(|f| f.size())
            .map_err(|e| Error::io("opening a segment", &path, e))?;
        segments.push_back(Segment {
            base,
            start_byte,
            len,
        });
        start_byte += len;
    }
    let path = dir.join(segment_name(last_base));
    let mut active = fs
        .open(&path, false)
        .map_err(|e| Error::io("opening the active segment", &path, e))?;
    let file_len = active
        .size()
        .map_err(|e| Error::io("reading the active segment's length", &path, e))?;
    let mut reader = SegmentReader::new(opts.read_buffer_bytes, opts.record_bytes_max);
    let mut pos = 0;
    let mut expected = last_base;
    loop {
        let next = reader
            .next(active.as_ref(), pos, file_len, expected)
            .map_err(|e| Error::io("scanning the active segment", &path, e))?;
        match next {
            Next::Record { frame_len, .. } => {
                pos += frame_len as u64;
                expected += 1;
                report.tail_records += 1;
            }
            Next::End => break,
            Next::Damaged => {
                let found = reader
                    .resync(active.as_ref(), pos, file_len, expected)
                    .map_err(|e| Error::io("scanning the active segment", &path, e))?;
                match found {
                    Some((good_pos, good_offset)) => {
                        report.damaged.push(DamagedRange {
                            segment: last_base,
                            byte_start: pos,
                            byte_end: good_pos,
                            records: good_offset - expected,
                        });
                        pos = good_pos;
                        expected = good_offset;
                    }
                    None => {
                        report.bytes_truncated = file_len - pos;
                        active
                            .set_len(pos)
                            .and_then(|()| active.sync_data())
                            .map_err(|e| Error::io("truncating a torn tail", &path, e))?;
                        break;
                    }
                }
            }
        }
    }
    segments.push_back(Segment {
        base: last_base,
        start_byte,
        len: pos,
    });
    report.segments = segments.len();
    report.first_offset = segments.front().expect("non-empty").base;
    report.next_offset = expected;
    report.records_quarantined = report.damaged.iter().map(|d| d.records).sum();

    let mut cursors = Vec::new();
    match ledger::read(fs, dir).map_err(|e| Error::io("reading the cursor ledger", dir, e))? {
        None => {}
        Some(Err(corrupt)) => report.ledger_error = Some(corrupt.0.to_owned()),
        Some(Ok(entries)) => {
            for (name, p) in entries {
                match place_cursor(&segments, expected, p) {
                    Some(p) => cursors.push((name, p)),
                    None => {
                        let first = segments.front().expect("non-empty");
                        report.cursors_reset.push(name.clone());
                        cursors.push((
                            name,
                            Position {
                                offset: first.base,
                                segment: first.base,
                                pos: 0,
                            },
                        ));
                    }
                }
            }
        }
    }
    report.cursors = cursors.len();
    report.elapsed = started.elapsed();
    Ok(Recovered {
        segments,
        next_offset: expected,
        active,
        active_base: last_base,
        active_len: pos,
        cursors,
        report,
    })
}

/// Checks a persisted cursor position against the recovered segments. A position past a
/// truncated tail moves back to the tail; one in a segment that no longer exists is `None`.
fn place_cursor(segments: &VecDeque<Segment>, next_offset: u64, p: Position) -> Option<Position> {
    let i = segments.binary_search_by_key(&p.segment, |s| s.base);
    match i {
        Ok(i) => {
            let seg = segments[i];
            let is_last = i + 1 == segments.len();
            if is_last && (p.pos > seg.len || p.offset > next_offset) {
                return Some(Position {
                    offset: next_offset,
                    segment: seg.base,
                    pos: seg.len,
                });
            }
            (p.pos <= seg.len).then_some(p)
        }
        Err(_) => segments
            .iter()
            .find(|s| s.base == p.offset)
            .map(|s| Position {
                offset: s.base,
                segment: s.base,
                pos: 0,
            }),
    }
}

/// The committer thread's own state: the active segment's file handle and where it ends.
struct Committer {
    shared: Arc<Shared>,
    active: Box<dyn FileHandle>,
    active_base: u64,
    active_len: u64,
    /// Offset the next written record gets.
    next_offset: u64,
    /// In `interval` mode: when written-but-unsynced data first appeared.
    unsynced_since: Option<Instant>,
    last_ledger_write: Instant,
    /// Stopped dead at a failpoint (tests only): do nothing more, as a crashed process would.
    dead: bool,
}

/// What one round of the committer takes from the shared state.
struct Round {
    buf: Vec<u8>,
    records: u64,
    waiters: Vec<(u64, oneshot::Sender<AppendResult>)>,
    ledger: Option<(ledger::Entries, Vec<LedgerWaiter>)>,
    closing: bool,
}

impl Committer {
    fn run(mut self) {
        loop {
            let round = self.next_round();
            let closing = round.closing;
            self.commit_round(round);
            if closing || self.dead {
                break;
            }
        }
    }

    fn interval(&self) -> Option<Duration> {
        match self.shared.opts.durability {
            Durability::Interval(d) => Some(d),
            Durability::Fsync | Durability::Memory => None,
        }
    }

    /// Waits until there is work, then takes it.
    fn next_round(&mut self) -> Round {
        let shared = self.shared.clone();
        let ledger_every = shared.opts.cursor_sync_interval;
        let mut st = shared.lock();
        loop {
            let ledger_due = st.ledger_dirty && self.last_ledger_write.elapsed() >= ledger_every;
            let sync_due = match (self.unsynced_since, self.interval()) {
                (Some(since), Some(every)) => since.elapsed() >= every,
                _ => false,
            };
            if st.closing
                || !st.pending.is_empty()
                || !st.ledger_waiters.is_empty()
                || ledger_due
                || sync_due
            {
                break;
            }
            let mut wait = Duration::from_secs(3600);
            if st.ledger_dirty {
                wait = wait.min(ledger_every.saturating_sub(self.last_ledger_write.elapsed()));
            }
            if let (Some(since), Some(every)) = (self.unsynced_since, self.interval()) {
                wait = wait.min(every.saturating_sub(since.elapsed()));
            }
            shared.committer_waiting.store(true, Ordering::SeqCst);
            st = shared
                .work
                .wait_timeout(st, wait.max(Duration::from_micros(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            shared.committer_waiting.store(false, Ordering::SeqCst);
        }
        let spare = std::mem::take(&mut st.spare);
        let buf = std::mem::replace(&mut st.pending, spare);
        let records = std::mem::take(&mut st.pending_records);
        let waiters = std::mem::take(&mut st.pending_waiters);
        let ledger_due = st.ledger_dirty && self.last_ledger_write.elapsed() >= ledger_every;
        let ledger = (st.closing || ledger_due || !st.ledger_waiters.is_empty()).then(|| {
            st.ledger_dirty = false;
            let entries = st
                .cursors
                .iter()
                .flatten()
                .map(|slot| (slot.name.clone(), st.normalize(slot.committed)))
                .collect();
            (entries, std::mem::take(&mut st.ledger_waiters))
        });
        Round {
            buf,
            records,
            waiters,
            ledger,
            closing: st.closing,
        }
    }

    fn commit_round(&mut self, round: Round) {
        let Round {
            mut buf,
            records,
            waiters,
            ledger,
            closing,
        } = round;
        let failed = self.shared.lock().failed.clone();
        if let Some(e) = failed {
            for (_, tx) in waiters {
                let _ = tx.send(Err(e.clone()));
            }
            if let Some((_, ledger_waiters)) = ledger {
                for tx in ledger_waiters {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            return;
        }
        if !buf.is_empty() {
            self.write_records(&mut buf, records, waiters);
        }
        if self.dead {
            return;
        }
        let sync_due = match (self.unsynced_since, self.interval()) {
            (Some(since), Some(every)) => closing || since.elapsed() >= every,
            _ => false,
        };
        if sync_due {
            self.unsynced_since = None;
            if let Err(e) = self.sync_active() {
                self.poison(e);
            }
        }
        if let Some((entries, ledger_waiters)) = ledger {
            let result = self.write_ledger(entries);
            if self.dead {
                return;
            }
            for tx in ledger_waiters {
                let _ = tx.send(result.clone());
            }
        }
        buf.clear();
        let mut st = self.shared.lock();
        if st.spare.capacity() < buf.capacity() {
            st.spare = buf;
        }
    }

    fn sync_active(&mut self) -> Result<(), Error> {
        if self.shared.opts.durability == Durability::Memory {
            return Ok(());
        }
        let started = Instant::now();
        self.active.sync_data().map_err(|e| {
            Error::io(
                "fdatasync of the active segment",
                self.shared.segment_path(self.active_base),
                e,
            )
        })?;
        self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = &self.shared.opts.observer {
            observer.on_fsync(started.elapsed());
        }
        Ok(())
    }

    /// Stops the committer at a failpoint as a process crash would (see [`failpoint`]): the
    /// round's tickets are dropped unresolved by the caller, the log is marked failed so waiting
    /// and later appends get an error, and nothing touches a file again.
    fn die(&mut self, point: &'static str) -> Error {
        self.dead = true;
        let cause = Error::io(
            "stopping at a failpoint (simulated crash)",
            &self.shared.dir,
            std::io::Error::other(point),
        );
        self.poison(cause.clone());
        // No later round will answer them: dropping the senders fails their waits (`Closed`).
        drop(std::mem::take(&mut self.shared.lock().ledger_waiters));
        cause
    }

    fn poison(&mut self, cause: Error) {
        let poisoned = Error::Poisoned(Arc::new(cause));
        let waiters = {
            let mut st = self.shared.lock();
            st.failed = Some(poisoned.clone());
            st.pending.clear();
            st.pending_records = 0;
            std::mem::take(&mut st.pending_waiters)
        };
        for (_, tx) in waiters {
            let _ = tx.send(Err(poisoned.clone()));
        }
        self.shared.wake_readers();
    }

    /// Seals and writes one round of frames, rotating segments so no record spans two, then
    /// syncs and publishes. On failure, undoes everything the round wrote.
    fn write_records(
        &mut self,
        buf: &mut [u8],
        records: u64,
        waiters: Vec<(u64, oneshot::Sender<AppendResult>)>,
    ) {
        let first_offset = self.next_offset;
        let before = (self.active_base, self.active_len);
        let mut sealed: Vec<(u64, u64)> = Vec::new(); // (base, final len) of segments this round filled
        let mut created: Vec<u64> = Vec::new();
        let result = self.write_frames(buf, first_offset, &mut sealed, &mut created);
        let result = result.and_then(|()| {
            if crash_here(failpoint::APPEND_BEFORE_FSYNC) {
                return Err(self.die(failpoint::APPEND_BEFORE_FSYNC));
            }
            match self.shared.opts.durability {
                Durability::Fsync => self.sync_active(),
                Durability::Interval(_) => {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                    Ok(())
                }
                Durability::Memory => Ok(()),
            }
        });
        if result.is_ok() && crash_here(failpoint::APPEND_BEFORE_ACK) {
            self.die(failpoint::APPEND_BEFORE_ACK);
        }
        if self.dead {
            // Dropping the senders leaves every ticket of the round unacknowledged.
            drop(waiters);
            return;
        }
        match result {
            Ok(()) => {
                let end_offset = first_offset + records;
                self.next_offset = end_offset;
                self.publish(
                    &sealed,
                    end_offset,
                    buf.len() as u64,
                    records,
                    waiters,
                    first_offset,
                );
            }
            Err(e) => {
                let fatal = matches!(e, Error::Io { op, .. } if op.starts_with("fdatasync"));
                let rollback = if fatal {
                    Ok(())
                } else {
                    self.roll_back(before, &created)
                };
                match rollback {
                    Ok(()) if !fatal => {
                        for (_, tx) in waiters {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                    Ok(()) => {
                        self.poison(e.clone());
                        for (_, tx) in waiters {
                            let _ = tx.send(Err(Error::Poisoned(Arc::new(e.clone()))));
                        }
                    }
                    Err(rollback_error) => {
                        self.poison(rollback_error.clone());
                        for (_, tx) in waiters {
                            let _ = tx.send(Err(Error::Poisoned(Arc::new(rollback_error.clone()))));
                        }
                    }
                }
            }
        }
    }

    fn write_frames(
        &mut self,
        buf: &mut [u8],
        first_offset: u64,
        sealed: &mut Vec<(u64, u64)>,
        created: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let segment_bytes = self.shared.opts.segment_bytes;
        let mut offset = first_offset;
        let mut chunk_start = 0;
        let mut pos = 0;
        while pos < buf.len() {
            let frame_len = frame::seal(&mut buf[pos..], offset);
            let chunk_len = (pos - chunk_start) as u64;
            let segment_has_data = self.active_len + chunk_len > 0;
            if segment_has_data && self.active_len + chunk_len + frame_len as u64 > segment_bytes {
                self.write_chunk(&buf[chunk_start..pos])?;
                self.rotate(offset, sealed, created)?;
                chunk_start = pos;
            }
            pos += frame_len;
            offset += 1;
        }
        self.write_chunk(&buf[chunk_start..])
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.active.append(chunk).map_err(|e| {
            Error::io(
                "writing a segment",
                self.shared.segment_path(self.active_base),
                e,
            )
        })?;
        self.active_len += chunk.len() as u64;
        Ok(())
    }

    /// Seals the active segment (synced, so only the newest segment can ever have a torn tail)
    /// and starts a new one named `base`.
    fn rotate(
        &mut self,
        base: u64,
        sealed: &mut Vec<(u64, u64)>,
        created: &mut Vec<u64>,
    ) -> Result<(), Error> {
        self.sync_active()?;
        let path = self.shared.segment_path(base);
        let file = self
            .shared
            .fs
            .open(&path, true)
            .map_err(|e| Error::io("creating a segment", &path, e))?;
        created.push(base);
        if crash_here(failpoint::ROTATE_BEFORE_DIR_SYNC) {
            return Err(self.die(failpoint::ROTATE_BEFORE_DIR_SYNC));
        }
        if self.shared.opts.durability != Durability::Memory {
            self.shared
                .fs
                .sync_dir(&self.shared.dir)
                .map_err(|e| Error::io("fdatasync of the log directory", &self.shared.dir, e))?;
        }
        sealed.push((self.active_base, self.active_len));
        self.active = file;
        self.active_base = base;
        self.active_len = 0;
        Ok(())
    }

    /// Restores the files to how they were before a failed round.
    fn roll_back(&mut self, before: (u64, u64), created: &[u64]) -> Result<(), Error> {
        let (base, len) = before;
        let path = self.shared.segment_path(base);
        if self.active_base != base {
            self.active = self
                .shared
                .fs
                .open(&path, false)
                .map_err(|e| Error::io("reopening a segment after a failed write", &path, e))?;
        }
        for &created_base in created {
            let created_path = self.shared.segment_path(created_base);
            self.shared.fs.remove(&created_path).map_err(|e| {
                Error::io("removing a segment after a failed write", &created_path, e)
            })?;
        }
        self.active
            .set_len(len)
            .map_err(|e| Error::io("truncating a failed write", &path, e))?;
        self.active_base = base;
        self.active_len = len;
        if self.shared.opts.durability != Durability::Memory {
            self.active
                .sync_data()
                .map_err(|e| Error::io("fdatasync of a rolled-back segment", &path, e))?;
            if !created.is_empty() {
                self.shared.fs.sync_dir(&self.shared.dir).map_err(|e| {
                    Error::io("fdatasync of the log directory", &self.shared.dir, e)
                })?;
            }
        }
        Ok(())
    }

    /// Makes a successful round visible to readers and resolves its tickets.
    fn publish(
        &mut self,
        sealed: &[(u64, u64)],
        end_offset: u64,
        bytes: u64,
        records: u64,
        waiters: Vec<(u64, oneshot::Sender<AppendResult>)>,
        first_offset: u64,
    ) {
        {
            let mut st = self.shared.lock();
            for &(base, len) in sealed {
                match st.segment_index(base) {
                    Some(i) => st.segments[i].len = len,
                    // Created and filled within this round (a round larger than a segment).
                    None => st.segments.push_back(Segment {
                        base,
                        start_byte: 0,
                        len,
                    }),
                }
            }
            if st.segments.back().expect("non-empty").base != self.active_base {
                st.segments.push_back(Segment {
                    base: self.active_base,
                    start_byte: 0,
                    len: 0,
                });
            }
            let mut start = st.segments.front().expect("non-empty").start_byte;
            for s in st.segments.iter_mut() {
                s.start_byte = start;
                start += s.len;
            }
            let back = st.segments.len() - 1;
            st.segments[back].len = self.active_len;
            st.next_offset = end_offset;
        }
        self.shared.wake_readers();
        let stats = &self.shared.stats;
        stats.appended_records.fetch_add(records, Ordering::Relaxed);
        stats.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = &self.shared.opts.observer {
            observer.on_commit(records, bytes);
        }
        let mut offset = first_offset;
        for (count, tx) in waiters {
            let _ = tx.send(Ok(offset..offset + count));
            offset += count;
        }
    }

    /// Persists cursor positions, then deletes segments every cursor is durably past.
    fn write_ledger(&mut self, entries: Vec<(String, Position)>) -> Result<(), Error> {
        self.last_ledger_write = Instant::now();
        // The ledger must never run ahead of the data: in `interval` mode a cursor may have
        // read records that are written but not yet synced.
        if self.unsynced_since.take().is_some() {
            self.sync_active().inspect_err(|e| self.poison(e.clone()))?;
        }
        if self.shared.opts.durability != Durability::Memory
            && let Err(e) = ledger::write(self.shared.fs.as_ref(), &self.shared.dir, &entries)
        {
            // The segments are untouched; try again at the next interval.
            self.shared.lock().ledger_dirty = true;
            return Err(Error::io("writing the cursor ledger", &self.shared.dir, e));
        }
        let doomed: Vec<u64> = {
            let mut st = self.shared.lock();
            let normalized: Vec<Option<Position>> = st
                .cursors
                .iter()
                .map(|slot| slot.as_ref().map(|s| st.normalize(s.committed)))
                .collect();
            for (slot, p) in st.cursors.iter_mut().zip(normalized) {
                if let (Some(slot), Some(p)) = (slot.as_mut(), p) {
                    slot.committed = p;
                }
            }
            for (name, position) in &entries {
                if let Some(&i) = st.cursor_names.get(name)
                    && let Some(slot) = st.cursors[i].as_mut()
                {
                    slot.persisted = Some(*position);
                }
            }
            let mut doomed = Vec::new();
            if st.cursors.iter().flatten().next().is_some() {
                let (low_offset, _) = st.low_water();
                while st.segments.len() > 1 && st.segments[1].base <= low_offset {
                    let gone = st.segments.pop_front().expect("len > 1");
                    doomed.push(gone.base);
                }
            }
            doomed
        };
        if !doomed.is_empty() && crash_here(failpoint::RETENTION_BEFORE_UNLINK) {
            return Err(self.die(failpoint::RETENTION_BEFORE_UNLINK));
        }
        for base in doomed {
            let path = self.shared.segment_path(base);
            self.shared
                .fs
                .remove(&path)
                .map_err(|e| Error::io("deleting a consumed segment", &path, e))?;
            self.shared
                .stats
                .segments_deleted
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
