//! `type = "file"`: tails NDJSON files matching globs, one structured CloudEvent per line.
//!
//! Layout: one thread per source (file reads and glob walks are blocking calls; a thread of its
//! own keeps them off the async workers and never delays the runtime's shutdown), storing
//! through the engine's async store with `Handle::block_on`. Per open file it keeps the handle,
//! the identity (device + inode), a fingerprint of its first bytes, the offset of the first
//! byte not yet stored, the line number there and whether that offset is inside an overlong
//! line. No file bytes are kept between reads: a partial last line (no newline yet) is read
//! again from the file once more bytes arrive.
//!
//! Loop: every `poll_interval` (or sooner while files have unread lines) the globs are walked
//! ([`Tailer::scan`]); then each open file gets one batch read and stored in turn (round robin,
//! so one big file does not starve the others); then the checkpoint is saved if due. A batch is
//! lines of one file, stored with [`ndjson::store_lines`]; only after the store returned is the
//! file's offset advanced.
//!
//! Rotations:
//! - rename and recreate: the open handle keeps reading the old file (whatever its new name)
//!   to its end; the new file at the path is a new identity, read from its beginning. A file
//!   whose path no longer leads to it (renamed out of the globs, deleted) is closed and
//!   forgotten once it has had no new bytes for [`GONE_IDLE`] (writers that still hold it get
//!   that long to finish); a last line without its newline is then dropped (logged).
//! - copytruncate: the file is shorter than the offset, or its first bytes changed (rewritten
//!   past the old offset before this poll): read it again from 0. Lines written between the
//!   last read and the copy are only in the copy: include the copy's name in the globs to read
//!   them (it is then a new file, read from its beginning: duplicates, not loss).
//! - a file renamed to another matching name keeps its identity: it is not read twice.
//!
//! Checkpoints (`checkpoint.rs`): saved at most every [`SAVE_INTERVAL`] while offsets move, and
//! on shutdown. Duplicate window: after a crash, lines stored after the last saved checkpoint
//! (at most [`SAVE_INTERVAL`] of reading plus the batch being stored) are stored again, with the
//! same ids when the lines carry ids (lines without `id` get a new generated one each time).
//! After a graceful stop there are none. Lines written to a rotated file while the engine was
//! stopped are read only if the rotated name matches the globs.
//!
//! Limits: at most `open_files_max` files open (more wait for a slot:
//! `veltrix_source_files_waiting`); lines over `line_bytes_max` are skipped and counted; a batch
//! is at most `batch_events` lines and 4 MiB; one read holds at most `line_bytes_max` + 64 KiB;
//! one file gets at most [`READ_BYTES_PER_TURN`] read per turn.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use veltrix_core::config::{FileSourceConfig, ReadFrom};

use super::SourceContext;
use super::checkpoint::{self, Entry, FileId, Fingerprint, Loaded};
use super::lines::{Line, Splitter};
use super::ndjson::{self, LineBatch, Origin, Rejects, Stopped};

/// How often, at most, the checkpoint is saved while offsets move (the duplicate window).
pub(crate) const SAVE_INTERVAL: Duration = Duration::from_millis(250);
/// A file no longer at a matching path is closed after this long without new bytes.
pub(crate) const GONE_IDLE: Duration = Duration::from_secs(1);
const SAVE_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Bytes read from a file per call.
const CHUNK_BYTES: usize = 64 * 1024;
/// Most bytes one file reads in its turn (bounds the time others wait when lines are skipped).
const READ_BYTES_PER_TURN: u64 = 16 * 1024 * 1024;
/// Bytes looked at from the end for the last complete line (`read_from = "end"`).
const END_SCAN_BYTES: u64 = 64 * 1024;

/// Starts the source's thread; the returned task ends when the thread has saved its checkpoint.
pub(crate) fn start(config: FileSourceConfig, ctx: SourceContext) -> JoinHandle<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let name = ctx.name.clone();
    let mut out = EngineOutput {
        rejects: Rejects::new(&name),
        ctx,
        rt: Handle::current(),
    };
    let spawned = std::thread::Builder::new()
        .name(format!("file-{name}"))
        .spawn(move || {
            Tailer::new(&name, config).run(&mut out);
            drop(done_tx);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the file source's thread; it does not run");
    }
    tokio::spawn(async move {
        let _ = done_rx.await;
    })
}

/// Where a tailer's batches go: the engine (below) or a test's recorder.
pub(crate) trait Output {
    /// Stores the batch read from `path` (bad lines rejected and skipped); `Err` when the
    /// engine stops first.
    fn store(&mut self, batch: &LineBatch, path: &Path) -> Result<(), Stopped>;
    /// Counts and logs a line rejected before decoding.
    fn reject(&mut self, reason: &'static str, location: &str, message: &str);
    fn stopping(&self) -> bool;
    /// Waits `duration`, or less when the engine stops.
    fn wait(&mut self, duration: Duration);
}

struct EngineOutput {
    ctx: SourceContext,
    rt: Handle,
    rejects: Rejects,
}

impl Output for EngineOutput {
    fn store(&mut self, batch: &LineBatch, path: &Path) -> Result<(), Stopped> {
        let locate = |origin: Origin| location(path, origin);
        self.rt.block_on(ndjson::store_lines(
            &mut self.ctx,
            batch,
            &mut self.rejects,
            &locate,
            None,
        ))
    }

    fn reject(&mut self, reason: &'static str, location: &str, message: &str) {
        self.rejects.reject(&self.ctx, reason, location, message);
    }

    fn stopping(&self) -> bool {
        self.ctx.stopping()
    }

    fn wait(&mut self, duration: Duration) {
        let stop = &mut self.ctx.stop;
        self.rt.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
        });
    }
}

/// `path:line`, or `path (byte N)` when line numbers are not known.
pub(crate) fn location(path: &Path, origin: Origin) -> String {
    match origin.line {
        Some(line) => format!("{}:{line}", path.display()),
        None => format!("{} (byte {})", path.display(), origin.byte),
    }
}

/// An open file being tailed.
struct Tracked {
    id: FileId,
    /// Where it was last seen matching the globs.
    path: PathBuf,
    file: File,
    fingerprint: Fingerprint,
    /// First byte not yet stored.
    offset: u64,
    /// Number of the line starting at `offset`.
    line: u64,
    lines_known: bool,
    /// `offset` is inside an overlong line.
    skipping: bool,
    /// When the globs stopped leading to it (renamed away or deleted).
    gone_since: Option<Instant>,
    /// Counted as a rename rotation (a new file took its path).
    rotated: bool,
    /// When bytes were last consumed.
    last_data: Instant,
    /// The last read found nothing to consume.
    at_eof: bool,
    /// Bytes after `offset` at the last look.
    lag_bytes: u64,
}

impl Tracked {
    fn entry(&self) -> Entry {
        Entry {
            id: self.id,
            fingerprint_bytes: self.fingerprint.bytes,
            fingerprint_crc32c: self.fingerprint.crc,
            path: self.path.to_string_lossy().into_owned(),
            offset: self.offset,
            line: self.line,
            lines_known: self.lines_known,
            skipping: self.skipping,
        }
    }

    /// Reading starts over at byte 0 (after a truncation).
    fn restart(&mut self) {
        self.offset = 0;
        self.line = 1;
        self.lines_known = true;
        self.skipping = false;
        self.fingerprint = Fingerprint::default();
    }

    /// Extends the fingerprint over bytes now consumed (they no longer change).
    fn refresh_fingerprint(&mut self) {
        let want = self.offset.min(checkpoint::FINGERPRINT_BYTES);
        if self.fingerprint.bytes < want
            && let Ok(fp) = Fingerprint::of(&self.file, want)
        {
            self.fingerprint = fp;
        }
    }
}

/// What a scan found out about the tracked files (pure: see [`plan`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Tracked files now found at another matching path.
    pub(crate) renamed: Vec<(usize, PathBuf)>,
    /// Tracked files no matching path leads to any more; `true` when another file now sits at
    /// their path (rename-and-recreate rotation).
    pub(crate) gone: Vec<(usize, bool)>,
    /// Tracked files found again after being gone.
    pub(crate) back: Vec<usize>,
    /// Matching files not tracked, in the order found.
    pub(crate) new: Vec<(PathBuf, FileId)>,
}

/// Matches tracked files `(identity, path, gone)` with the files `found` by the globs
/// `(path, identity)`, by identity.
pub(crate) fn plan(tracked: &[(FileId, &Path, bool)], found: &[(PathBuf, FileId)]) -> Plan {
    let mut plan = Plan::default();
    let tracked_ids: HashSet<FileId> = tracked.iter().map(|(id, _, _)| *id).collect();
    for (i, (id, path, gone)) in tracked.iter().enumerate() {
        match found.iter().find(|(_, f)| f == id) {
            Some((now, _)) => {
                if now.as_path() != *path {
                    plan.renamed.push((i, now.clone()));
                }
                if *gone {
                    plan.back.push(i);
                }
            }
            None if !gone => {
                let replaced = found.iter().any(|(p, _)| p.as_path() == *path);
                plan.gone.push((i, replaced));
            }
            None => {}
        }
    }
    plan.new = found
        .iter()
        .filter(|(_, id)| !tracked_ids.contains(id))
        .cloned()
        .collect();
    plan
}

/// Where reading a newly opened file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// At its checkpoint.
    Resume,
    Beginning,
    /// After its last complete line.
    End,
}

/// Where to start a file just found: at its checkpoint `entry` when it is still the same file
/// (`fingerprint_matches`) and not shorter than the checkpoint; else at the beginning, or at the
/// end for a file that exists `at_startup` with `read_from = "end"` (unless the checkpoint file
/// was lost: then everything is read again rather than risk skipping lines).
pub(crate) fn start_position(
    entry: Option<&Entry>,
    fingerprint_matches: bool,
    size: u64,
    at_startup: bool,
    read_from: ReadFrom,
    checkpoint_lost: bool,
) -> Start {
    match entry {
        Some(e) if fingerprint_matches && size >= e.offset => Start::Resume,
        Some(_) => Start::Beginning,
        None if at_startup && read_from == ReadFrom::End && !checkpoint_lost => Start::End,
        None => Start::Beginning,
    }
}

/// Whether a tracked file must be read again from 0: it is shorter than what was read, or its
/// first bytes are no longer the ones read (truncated and rewritten past the old offset).
pub(crate) fn truncated(offset: u64, size: u64, first_bytes_same: bool) -> bool {
    size < offset || (size > offset && !first_bytes_same)
}

/// Where reading starts for `read_from = "end"`: after the last newline in the last
/// [`END_SCAN_BYTES`] of the `size` bytes; `(offset, skipping)`.
fn end_position(file: &File, size: u64) -> io::Result<(u64, bool)> {
    let from = size.saturating_sub(END_SCAN_BYTES);
    let mut tail = vec![0u8; (size - from) as usize];
    file.read_exact_at(&mut tail, from)?;
    Ok(match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => (from + i as u64 + 1, false),
        // No newline in reach: inside one long line (skip it), or a short file of one line
        // in progress (read it once complete).
        None if from > 0 => (size, true),
        None => (0, false),
    })
}

struct Metrics {
    open: metrics::Gauge,
    waiting: metrics::Gauge,
    lag: metrics::Gauge,
    renames: metrics::Counter,
    truncations: metrics::Counter,
}

pub(crate) struct Tailer {
    name: String,
    config: FileSourceConfig,
    exclude: Vec<glob::Pattern>,
    files: Vec<Tracked>,
    /// Checkpoint entries of files not open yet (at startup, or waiting for a slot).
    restored: HashMap<FileId, Entry>,
    /// The checkpoint file existed but was unreadable: read every file from its beginning.
    checkpoint_lost: bool,
    scanned_once: bool,
    last_scan: Option<Instant>,
    /// Offsets moved since the last save.
    dirty: bool,
    last_save: Option<Instant>,
    /// When a failed save was last logged.
    save_error_logged: Option<Instant>,
    /// Paths already warned about (cannot open), so each is logged once.
    warned: HashSet<PathBuf>,
    /// Files waiting for a slot at the last scan (warned about when it changes).
    last_waiting: usize,
    buf: Vec<u8>,
    batch: LineBatch,
    metrics: Metrics,
}

impl Tailer {
    pub(crate) fn new(name: &str, config: FileSourceConfig) -> Tailer {
        let exclude = config
            .exclude
            .iter()
            .filter_map(|p| glob::Pattern::new(p).ok()) // validated at load
            .collect();
        let label = || name.to_owned();
        Tailer {
            name: name.to_owned(),
            exclude,
            files: Vec::new(),
            restored: HashMap::new(),
            checkpoint_lost: false,
            scanned_once: false,
            last_scan: None,
            dirty: false,
            last_save: None,
            save_error_logged: None,
            warned: HashSet::new(),
            last_waiting: 0,
            buf: Vec::new(),
            batch: LineBatch::default(),
            metrics: Metrics {
                open: metrics::gauge!("veltrix_source_files_open", "source" => label()),
                waiting: metrics::gauge!("veltrix_source_files_waiting", "source" => label()),
                lag: metrics::gauge!("veltrix_source_lag_bytes", "source" => label()),
                renames: metrics::counter!("veltrix_source_file_rotations_total", "source" => label(), "kind" => "rename"),
                truncations: metrics::counter!("veltrix_source_file_rotations_total", "source" => label(), "kind" => "truncate"),
            },
            config,
        }
    }

    /// Runs until the engine stops, then saves the checkpoint.
    pub(crate) fn run(&mut self, out: &mut impl Output) {
        self.load_checkpoint();
        tracing::info!(
            source = %self.name,
            include = ?self.config.include,
            checkpoint_dir = %self.config.checkpoint_dir.display(),
            "file source started"
        );
        while !out.stopping() {
            match self.round(out) {
                Ok(true) => {}
                Ok(false) => out.wait(self.config.poll_interval),
                Err(Stopped) => break,
            }
        }
        self.save(true);
        tracing::info!(source = %self.name, files = self.files.len(), "file source stopped; checkpoint saved");
    }

    fn load_checkpoint(&mut self) {
        match checkpoint::load(&self.config.checkpoint_dir) {
            Loaded::None => {}
            Loaded::Entries(entries) => {
                self.restored = entries.into_iter().map(|e| (e.id, e)).collect();
            }
            Loaded::Unreadable(why) => {
                tracing::warn!(
                    source = %self.name,
                    file = %checkpoint::path(&self.config.checkpoint_dir).display(),
                    "the checkpoint file cannot be used ({why}): every file is read again from \
                     its beginning (events already stored will be stored again)"
                );
                self.checkpoint_lost = true;
            }
        }
    }

    /// One round: scan if due, one batch from each file, retire finished files, save the
    /// checkpoint if due. `Ok(true)` when some file had lines (go again without waiting).
    pub(crate) fn round(&mut self, out: &mut impl Output) -> Result<bool, Stopped> {
        if self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.config.poll_interval)
        {
            self.scan();
        }
        let mut progress = false;
        for i in 0..self.files.len() {
            if out.stopping() {
                return Err(Stopped);
            }
            progress |= self.read_one(i, out)?;
        }
        self.metrics
            .lag
            .set(self.files.iter().map(|t| t.lag_bytes).sum::<u64>() as f64);
        self.retire();
        self.save(false);
        Ok(progress)
    }

    /// The matching files: `(path, identity)` in glob order, each identity once.
    fn find(&mut self) -> Vec<(PathBuf, FileId)> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        for pattern in &self.config.include {
            let Ok(paths) = glob::glob(pattern) else {
                continue; // validated at load
            };
            for path in paths.filter_map(Result::ok) {
                if self.exclude.iter().any(|p| p.matches_path(&path)) {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue; // gone since the directory was listed
                };
                if meta.is_file() && seen.insert(FileId::of(&meta)) {
                    found.push((path, FileId::of(&meta)));
                }
            }
        }
        found
    }

    /// Walks the globs: follows renames, marks files whose path is gone, opens new files.
    pub(crate) fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let found = self.find();
        let tracked: Vec<(FileId, &Path, bool)> = self
            .files
            .iter()
            .map(|t| (t.id, t.path.as_path(), t.gone_since.is_some()))
            .collect();
        let plan = plan(&tracked, &found);
        for (i, path) in plan.renamed {
            let t = &mut self.files[i];
            tracing::info!(source = %self.name, from = %t.path.display(), to = %path.display(), "file renamed; reading on");
            t.path = path;
            self.dirty = true;
        }
        for i in plan.back {
            self.files[i].gone_since = None;
            self.files[i].rotated = false;
        }
        for (i, replaced) in plan.gone {
            let t = &mut self.files[i];
            t.gone_since = Some(Instant::now());
            tracing::info!(
                source = %self.name,
                path = %t.path.display(),
                rotated = replaced,
                "file no longer at a matching path (rotated or deleted); reading it to its end"
            );
        }
        // A rename rotation: another file took the path of one no longer there (counted once,
        // whether the new file appeared in the same scan or a later one).
        for t in &mut self.files {
            if t.gone_since.is_some()
                && !t.rotated
                && found.iter().any(|(p, id)| *p == t.path && *id != t.id)
            {
                t.rotated = true;
                self.metrics.renames.increment(1);
            }
        }
        let at_startup = !self.scanned_once;
        let mut waiting = 0;
        for (path, id) in &plan.new {
            if self.files.len() as u64 >= self.config.open_files_max {
                waiting += 1;
                continue;
            }
            match self.open(path, *id, at_startup) {
                Ok(Some(t)) => {
                    self.warned.remove(path);
                    self.files.push(t);
                    self.dirty = true;
                }
                Ok(None) => {} // replaced between listing and opening: the next scan sees it
                Err(e) => {
                    if self.warned.len() > 10_000 {
                        self.warned.clear();
                    }
                    if self.warned.insert(path.clone()) {
                        tracing::warn!(source = %self.name, path = %path.display(), error = %e, "cannot open a matching file; retrying at every scan");
                    }
                }
            }
        }
        if waiting > 0 && waiting != self.last_waiting {
            tracing::warn!(
                source = %self.name,
                waiting,
                open_files_max = self.config.open_files_max,
                "more matching files than open_files_max: the others wait until open ones are finished"
            );
        }
        // Checkpoints of files that no longer exist are dropped; those waiting are kept.
        let present: HashSet<FileId> = found.iter().map(|(_, id)| *id).collect();
        self.restored.retain(|id, _| present.contains(id));
        self.scanned_once = true;
        self.metrics.open.set(self.files.len() as f64);
        self.metrics.waiting.set(waiting as f64);
        self.last_waiting = waiting;
    }

    /// Opens `path` (expected to be `id`) and decides where reading starts.
    fn open(&mut self, path: &Path, id: FileId, at_startup: bool) -> io::Result<Option<Tracked>> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if FileId::of(&meta) != id {
            return Ok(None);
        }
        let size = meta.len();
        let entry = self.restored.remove(&id);
        let same = match &entry {
            Some(e) => e.fingerprint().matches(&file)?,
            None => false,
        };
        let start = start_position(
            entry.as_ref(),
            same,
            size,
            at_startup,
            self.config.read_from,
            self.checkpoint_lost,
        );
        let now = Instant::now();
        let mut t = Tracked {
            id,
            path: path.to_owned(),
            file,
            fingerprint: Fingerprint::default(),
            offset: 0,
            line: 1,
            lines_known: true,
            skipping: false,
            gone_since: None,
            rotated: false,
            last_data: now,
            at_eof: false,
            lag_bytes: size,
        };
        match (start, entry) {
            (Start::Resume, Some(e)) => {
                t.fingerprint = e.fingerprint();
                t.offset = e.offset;
                t.line = e.line;
                t.lines_known = e.lines_known;
                t.skipping = e.skipping;
            }
            (Start::End, _) => {
                let (offset, skipping) = end_position(&t.file, size)?;
                t.offset = offset;
                t.skipping = skipping;
                t.lines_known = offset == 0;
            }
            (_, Some(e)) => {
                tracing::info!(source = %self.name, path = %path.display(), checkpoint_offset = e.offset, size, "a checkpointed file was replaced or truncated while stopped; reading it from the beginning");
            }
            (_, None) => {}
        }
        t.refresh_fingerprint();
        tracing::info!(source = %self.name, path = %path.display(), offset = t.offset, "tailing file");
        Ok(Some(t))
    }

    /// Reads one batch from file `i` and stores it. `Ok(true)` when bytes were consumed.
    fn read_one(&mut self, i: usize, out: &mut impl Output) -> Result<bool, Stopped> {
        let t = &mut self.files[i];
        let size = match t.file.metadata() {
            Ok(meta) => meta.len(),
            Err(e) => {
                tracing::warn!(source = %self.name, path = %t.path.display(), error = %e, "cannot stat an open file");
                return Ok(false);
            }
        };
        let first_bytes_same = size <= t.offset
            || t.fingerprint.bytes == 0
            || t.fingerprint.matches(&t.file).unwrap_or(true);
        if truncated(t.offset, size, first_bytes_same) {
            tracing::info!(source = %self.name, path = %t.path.display(), offset = t.offset, size, "file truncated (copytruncate?); reading it again from the start");
            self.metrics.truncations.increment(1);
            t.restart();
            self.dirty = true;
        }
        t.lag_bytes = size.saturating_sub(t.offset);
        if size == t.offset {
            t.at_eof = true;
            return Ok(false);
        }

        let batch_events = usize::try_from(self.config.batch_events).unwrap_or(usize::MAX);
        let line_bytes_max =
            usize::try_from(self.config.line_bytes_max.bytes()).unwrap_or(usize::MAX);
        let mut splitter = Splitter::resume(line_bytes_max, t.line, t.skipping);
        let (buf, batch) = (&mut self.buf, &mut self.batch);
        buf.clear();
        batch.clear();
        let mut too_long = Vec::new();
        // File offset of buf[0]: everything before it is consumed.
        let mut pos = t.offset;
        let mut full = false;
        let mut eof = false;
        while !full && pos - t.offset < READ_BYTES_PER_TURN {
            let old = buf.len();
            buf.resize(old + CHUNK_BYTES, 0);
            let n = loop {
                match t.file.read_at(&mut buf[old..], pos + old as u64) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(source = %self.name, path = %t.path.display(), error = %e, "reading a file failed; retrying at the next round");
                        break 0;
                    }
                }
            };
            buf.truncate(old + n);
            if n == 0 {
                eof = true;
                break;
            }
            let lines_known = t.lines_known;
            let consumed = splitter.split(buf, |at, line| {
                let origin = Origin {
                    line: lines_known.then_some(at.line),
                    byte: pos + at.start as u64,
                };
                match line {
                    Line::Kept(bytes) => {
                        full = !batch.push(bytes, origin, batch_events);
                        !full
                    }
                    Line::TooLong => {
                        too_long.push(origin);
                        true
                    }
                }
            });
            buf.drain(..consumed);
            pos += consumed as u64;
        }
        if pos == t.offset {
            // Only a line in progress: wait for its newline.
            t.at_eof = eof;
            return Ok(false);
        }
        if !batch.is_empty() {
            out.store(batch, &t.path)?;
        }
        for origin in too_long {
            let message =
                format!("the line is longer than line_bytes_max ({line_bytes_max} bytes)");
            out.reject("line-too-long", &location(&t.path, origin), &message);
        }
        t.offset = pos;
        t.line = splitter.line;
        t.skipping = splitter.skipping;
        t.last_data = Instant::now();
        t.at_eof = eof && !full;
        t.lag_bytes = size.saturating_sub(pos);
        t.refresh_fingerprint();
        self.dirty = true;
        Ok(true)
    }

    /// Closes files no matching path leads to once they have been read to their end and idle
    /// for [`GONE_IDLE`].
    fn retire(&mut self) {
        let before = self.files.len();
        let name = &self.name;
        self.files.retain(|t| {
            let Some(gone_since) = t.gone_since else {
                return true;
            };
            let idle = gone_since.max(t.last_data).elapsed() >= GONE_IDLE;
            if !(t.at_eof && idle) {
                return true;
            }
            let unread = t.file.metadata().map_or(0, |m| m.len().saturating_sub(t.offset));
            if unread > 0 {
                tracing::warn!(source = %name, path = %t.path.display(), bytes = unread, "a finished file ends with a line without its newline; it is not read");
            }
            tracing::info!(source = %name, path = %t.path.display(), "finished a rotated or deleted file");
            false
        });
        if self.files.len() != before {
            self.dirty = true;
            self.metrics.open.set(self.files.len() as f64);
        }
    }

    /// Saves the checkpoint when offsets moved, at most every [`SAVE_INTERVAL`] unless `now`.
    fn save(&mut self, now: bool) {
        if !self.dirty || (!now && self.last_save.is_some_and(|t| t.elapsed() < SAVE_INTERVAL)) {
            return;
        }
        let mut entries: Vec<Entry> = self.files.iter().map(Tracked::entry).collect();
        entries.extend(self.restored.values().cloned());
        match checkpoint::save(&self.config.checkpoint_dir, &entries) {
            Ok(()) => {
                self.dirty = false;
                self.checkpoint_lost = false;
            }
            Err(e) => {
                // Reading goes on; a restart would re-read more (duplicates, not loss). Logged
                // at most once a minute: a broken directory would otherwise log 4 times a second.
                if self
                    .save_error_logged
                    .is_none_or(|t| t.elapsed() >= SAVE_ERROR_LOG_INTERVAL)
                {
                    self.save_error_logged = Some(Instant::now());
                    tracing::error!(source = %self.name, dir = %self.config.checkpoint_dir.display(), error = %e, "cannot save the checkpoint; retrying (a restart re-reads everything since the last save)");
                }
            }
        }
        self.last_save = Some(Instant::now());
    }

    #[cfg(test)]
    fn offsets(&self) -> Vec<(PathBuf, u64)> {
        self.files
            .iter()
            .map(|t| (t.path.clone(), t.offset))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use veltrix_core::config::ByteSize;

    /// Records stored lines as text; stops when told.
    #[derive(Default)]
    struct Recorder {
        lines: Vec<String>,
        rejected: Vec<(String, String)>,
        stopping: bool,
        /// Refuse stores (as when the engine stops mid-store).
        refuse: bool,
    }

    impl Output for Recorder {
        fn store(&mut self, batch: &LineBatch, _path: &Path) -> Result<(), Stopped> {
            if self.refuse {
                return Err(Stopped);
            }
            self.lines.extend(
                batch
                    .lines()
                    .map(|(l, _)| String::from_utf8(l.to_vec()).unwrap()),
            );
            Ok(())
        }
        fn reject(&mut self, reason: &'static str, location: &str, _message: &str) {
            self.rejected.push((reason.to_owned(), location.to_owned()));
        }
        fn stopping(&self) -> bool {
            self.stopping
        }
        fn wait(&mut self, _duration: Duration) {}
    }

    fn config(dir: &Path) -> FileSourceConfig {
        FileSourceConfig {
            include: vec![format!("{}/*.ndjson", dir.display())],
            exclude: vec![format!("{}/skip-*", dir.display())],
            read_from: ReadFrom::Beginning,
            poll_interval: Duration::from_millis(1),
            line_bytes_max: ByteSize(64),
            batch_events: 3,
            open_files_max: 16,
            checkpoint_dir: dir.join("checkpoints"),
        }
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    /// Rounds until nothing is left to read (scanning every round).
    fn drain(tailer: &mut Tailer, out: &mut Recorder) {
        tailer.last_scan = None;
        while tailer.round(out).unwrap() {
            tailer.last_scan = None;
        }
    }

    fn id(path: &Path) -> FileId {
        FileId::of(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn plan_follows_identities_not_paths() {
        let (a, b, c) = (
            FileId { dev: 1, ino: 10 },
            FileId { dev: 1, ino: 11 },
            FileId { dev: 1, ino: 12 },
        );
        let p = |s: &str| PathBuf::from(s);
        let tracked = [
            (a, Path::new("/l/app.log"), false),
            (b, Path::new("/l/old.log"), false),
            (c, Path::new("/l/x.log"), true),
        ];
        // app.log was renamed to app.1.log (still matching) and a new app.log appeared; old.log
        // was deleted; x.log came back.
        let d = FileId { dev: 1, ino: 13 };
        let found = [
            (p("/l/app.1.log"), a),
            (p("/l/app.log"), d),
            (p("/l/x.log"), c),
        ];
        assert_eq!(
            plan(&tracked, &found),
            Plan {
                renamed: vec![(0, p("/l/app.1.log"))],
                gone: vec![(1, false)],
                back: vec![2],
                new: vec![(p("/l/app.log"), d)],
            }
        );
        // Renamed out of the globs and recreated: gone, replaced.
        let found = [(p("/l/app.log"), d)];
        let plan = plan(&tracked[..1], &found);
        assert_eq!(plan.gone, vec![(0, true)]);
        assert_eq!(plan.new, vec![(p("/l/app.log"), d)]);
    }

    #[test]
    fn start_positions() {
        let entry = Entry {
            id: FileId { dev: 1, ino: 1 },
            fingerprint_bytes: 10,
            fingerprint_crc32c: 0,
            path: "/l/a".to_owned(),
            offset: 100,
            line: 5,
            lines_known: true,
            skipping: false,
        };
        use ReadFrom::{Beginning, End};
        let s = |entry, same, size, startup, read_from, lost| {
            start_position(entry, same, size, startup, read_from, lost)
        };
        assert_eq!(s(Some(&entry), true, 100, true, End, false), Start::Resume);
        assert_eq!(
            s(Some(&entry), true, 99, true, End, false),
            Start::Beginning,
            "truncated while stopped"
        );
        assert_eq!(
            s(Some(&entry), false, 500, true, End, false),
            Start::Beginning,
            "inode reused"
        );
        assert_eq!(s(None, false, 500, true, End, false), Start::End);
        assert_eq!(
            s(None, false, 500, false, End, false),
            Start::Beginning,
            "appeared later"
        );
        assert_eq!(
            s(None, false, 500, true, End, true),
            Start::Beginning,
            "checkpoint lost"
        );
        assert_eq!(
            s(None, false, 500, true, Beginning, false),
            Start::Beginning
        );
    }

    #[test]
    fn truncation_is_a_shorter_file_or_changed_first_bytes() {
        assert!(!truncated(100, 100, true));
        assert!(!truncated(100, 150, true));
        assert!(truncated(100, 50, true));
        assert!(truncated(100, 150, false), "rewritten past the old offset");
        assert!(!truncated(100, 100, false), "nothing new to read yet");
    }

    #[test]
    fn new_lines_are_read_and_a_partial_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let mut tailer = Tailer::new("t", config(dir.path()));
        let mut out = Recorder::default();
        let app = dir.path().join("app.ndjson");
        append(&app, "1\n2\n3\n4\n5");
        append(&dir.path().join("skip-me.ndjson"), "excluded\n");
        append(&dir.path().join("other.txt"), "not matching\n");
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["1", "2", "3", "4"]);
        append(&app, "5\n6\n");
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["1", "2", "3", "4", "55", "6"]);
        assert_eq!(tailer.offsets(), [(app, 13)]);
    }

    #[test]
    fn overlong_and_blank_lines_are_skipped_with_their_location() {
        let dir = tempfile::tempdir().unwrap();
        let mut tailer = Tailer::new("t", config(dir.path()));
        let mut out = Recorder::default();
        let app = dir.path().join("app.ndjson");
        append(&app, &format!("a\n{}\n\nb\n", "x".repeat(65)));
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["a", "b"]);
        assert_eq!(
            out.rejected,
            [("line-too-long".to_owned(), format!("{}:2", app.display()))]
        );
    }

    #[test]
    fn rename_and_recreate_finishes_the_old_file_then_reads_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut tailer = Tailer::new("t", config(dir.path()));
        let mut out = Recorder::default();
        let app = dir.path().join("app.ndjson");
        append(&app, "old1\n");
        drain(&mut tailer, &mut out);
        // Rotated out of the globs; the writer still appends to it, then moves on.
        let rotated = dir.path().join("app.ndjson.1");
        std::fs::rename(&app, &rotated).unwrap();
        append(&rotated, "old2\n");
        append(&app, "new1\n");
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["old1", "old2", "new1"]);
        assert_eq!(tailer.files.len(), 2, "the old file is kept for GONE_IDLE");
        tailer.files[0].last_data -= GONE_IDLE;
        tailer.files[0].gone_since = Some(tailer.files[0].last_data);
        tailer.round(&mut out).unwrap();
        assert_eq!(tailer.offsets(), [(app, 5)]);
    }

    #[test]
    fn a_file_renamed_to_another_matching_name_is_not_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut tailer = Tailer::new("t", config(dir.path()));
        let mut out = Recorder::default();
        let app = dir.path().join("app.ndjson");
        append(&app, "1\n");
        drain(&mut tailer, &mut out);
        let renamed = dir.path().join("app-1.ndjson");
        std::fs::rename(&app, &renamed).unwrap();
        append(&renamed, "2\n");
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["1", "2"]);
        assert_eq!(tailer.offsets(), [(renamed, 4)]);
    }

    #[test]
    fn copytruncate_reads_the_file_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut tailer = Tailer::new("t", config(dir.path()));
        let mut out = Recorder::default();
        let app = dir.path().join("app.ndjson");
        append(&app, "first-1\nfirst-2\n");
        drain(&mut tailer, &mut out);
        // Truncated to nothing, then a shorter line: the file is shorter than the offset.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&app)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&app, "short\n");
        drain(&mut tailer, &mut out);
        // Truncated and rewritten past the old offset before the next look: the first bytes
        // changed.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&app)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&app, "longer-1\nlonger-2\n");
        drain(&mut tailer, &mut out);
        assert_eq!(
            out.lines,
            ["first-1", "first-2", "short", "longer-1", "longer-2"]
        );
    }

    #[test]
    fn a_restart_resumes_at_the_checkpoint_and_a_replaced_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app.ndjson");
        let other = dir.path().join("other.ndjson");
        append(&app, "1\n2\n");
        append(&other, "a\n");
        {
            let mut tailer = Tailer::new("t", config(dir.path()));
            let mut out = Recorder::default();
            drain(&mut tailer, &mut out);
            out.stopping = true;
            tailer.run(&mut out); // stops at once, saving the checkpoint
        }
        append(&app, "3\n");
        // `other` is replaced by a new file (new inode) with different first bytes.
        std::fs::remove_file(&other).unwrap();
        append(&other, "b\n");
        let mut tailer = Tailer::new("t", config(dir.path()));
        tailer.load_checkpoint();
        let mut out = Recorder::default();
        drain(&mut tailer, &mut out);
        out.lines.sort();
        assert_eq!(out.lines, ["3", "b"]);
    }

    #[test]
    fn nothing_is_marked_read_when_the_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app.ndjson");
        append(&app, "1\n2\n");
        let mut tailer = Tailer::new("t", config(dir.path()));
        let mut out = Recorder {
            refuse: true,
            ..Recorder::default()
        };
        tailer.scan();
        assert!(tailer.round(&mut out).is_err());
        assert_eq!(tailer.offsets(), [(app, 0)]);
    }

    #[test]
    fn a_corrupt_checkpoint_reads_everything_again_even_with_read_from_end() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app.ndjson");
        append(&app, "1\n2\n");
        std::fs::create_dir_all(dir.path().join("checkpoints")).unwrap();
        std::fs::write(checkpoint::path(&dir.path().join("checkpoints")), "garbage").unwrap();
        let mut tailer = Tailer::new(
            "t",
            FileSourceConfig {
                read_from: ReadFrom::End,
                ..config(dir.path())
            },
        );
        tailer.load_checkpoint();
        let mut out = Recorder::default();
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["1", "2"]);
        // And the checkpoint is good again.
        assert!(matches!(
            checkpoint::load(&dir.path().join("checkpoints")),
            Loaded::Entries(_)
        ));
    }

    #[test]
    fn read_from_end_starts_after_the_last_complete_line_of_files_present_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app.ndjson");
        append(&app, "old\npartial");
        let mut tailer = Tailer::new(
            "t",
            FileSourceConfig {
                read_from: ReadFrom::End,
                ..config(dir.path())
            },
        );
        let mut out = Recorder::default();
        drain(&mut tailer, &mut out);
        append(&app, "-done\nnew\n");
        append(&dir.path().join("later.ndjson"), "from-start\n");
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["partial-done", "new", "from-start"]);
        assert_eq!(id(&app), tailer.files[0].id);
    }

    #[test]
    fn reading_goes_on_when_the_checkpoint_cannot_be_saved() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "").unwrap();
        let mut tailer = Tailer::new(
            "t",
            FileSourceConfig {
                checkpoint_dir: blocker.join("checkpoints"),
                ..config(dir.path())
            },
        );
        let mut out = Recorder::default();
        append(&dir.path().join("app.ndjson"), "1\n2\n");
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["1", "2"]);
        assert!(tailer.dirty, "still to be saved");
        assert!(tailer.save_error_logged.is_some());
    }

    #[test]
    fn files_beyond_open_files_max_wait_for_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut tailer = Tailer::new(
            "t",
            FileSourceConfig {
                open_files_max: 1,
                ..config(dir.path())
            },
        );
        let mut out = Recorder::default();
        let a = dir.path().join("a.ndjson");
        append(&a, "a\n");
        append(&dir.path().join("b.ndjson"), "b\n");
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["a"]);
        std::fs::remove_file(&a).unwrap();
        drain(&mut tailer, &mut out);
        tailer.files[0].last_data -= GONE_IDLE;
        tailer.files[0].gone_since = Some(tailer.files[0].last_data);
        drain(&mut tailer, &mut out);
        drain(&mut tailer, &mut out);
        assert_eq!(out.lines, ["a", "b"]);
    }
}
