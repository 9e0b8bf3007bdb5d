//! Shared by the fault tests (`crash.rs`, `failpoints.rs`): a seeded workload that drives a log
//! on a [`SimFs`] until it completes or a crash stops it, and the checks run after restarting
//! from the filesystem alone. Everything is deterministic for a seed except where the committer
//! thread's timing groups appends into rounds; the checks hold for every grouping.
#![allow(dead_code)] // each test file uses a different part

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use veltrix_log::{Durability, Log, LogOptions, SimFs, inspect_dir};

pub const DIR: &str = "/data/queues/faults";
pub const RECORD_BYTES_MAX: u32 = 256;
/// The consumer's cursor.
pub const CONSUMER: &str = "consumer";

/// Small segments so a short workload rotates and deletes segments many times; positions are
/// persisted only when the consumer commits (no timer), which keeps crash points repeatable.
pub fn opts(durability: Durability) -> LogOptions {
    LogOptions {
        durability,
        segment_bytes: 2048,
        record_bytes_max: RECORD_BYTES_MAX,
        write_buffer_bytes_max: 1 << 20,
        read_buffer_bytes: 512,
        cursor_sync_interval: Duration::from_secs(3600),
        ..LogOptions::default()
    }
}

/// An integer from the environment (the soak script raises iteration counts this way).
pub fn env_count(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// Prints `label: done/total` to stderr about every tenth of the way when `VELTRIX_SOAK` is set
/// (the soak script's progress lines; CI stays quiet).
pub fn progress(label: &str, done: u64, total: u64) {
    if std::env::var_os("VELTRIX_SOAK").is_some()
        && total >= 10
        && (done.is_multiple_of(total / 10) || done == total)
    {
        eprintln!("[soak] {label}: {done}/{total}");
    }
}

/// SplitMix64: a tiny seeded generator, so a failing case is reproduced from its seed alone.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `0.0..1.0`.
    pub fn fraction(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How much of the unsynced data a power loss keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tear {
    /// Every unsynced byte is gone.
    Nothing,
    /// Every written byte survives (the page cache happened to be flushed).
    Everything,
    /// A random prefix of each file's unsynced tail survives: a torn write, possibly mid-record.
    Torn(u64),
}

impl Tear {
    pub fn pick(rng: &mut Rng) -> Tear {
        match rng.below(3) {
            0 => Tear::Nothing,
            1 => Tear::Everything,
            _ => Tear::Torn(rng.next_u64()),
        }
    }

    /// The fraction-per-file function `SimFs::crash`/`crash_after` take.
    pub fn function(self) -> impl FnMut() -> f64 + Send + 'static {
        let mut rng = Rng::new(match self {
            Tear::Torn(seed) => seed,
            _ => 0,
        });
        move || match self {
            Tear::Nothing => 0.0,
            Tear::Everything => 1.0,
            Tear::Torn(_) => rng.fraction(),
        }
    }
}

/// A payload that carries its own identity: 8 bytes of serial, then filler derived from it, so
/// any record read back can be checked without a table.
pub fn payload(serial: u64, size: usize) -> Vec<u8> {
    let mut p = serial.to_le_bytes().to_vec();
    let size = size.max(8);
    p.extend((8..size).map(|i| (serial as usize).wrapping_mul(31).wrapping_add(i) as u8));
    p
}

/// Whether `bytes` is a payload this workload could have produced.
pub fn well_formed(bytes: &[u8]) -> bool {
    bytes.len() >= 8
        && bytes
            == payload(
                u64::from_le_bytes(bytes[..8].try_into().unwrap()),
                bytes.len(),
            )
}

/// Shape of one workload.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub appenders: usize,
    pub batches_per_appender: usize,
    /// The consumer persists its position after every this many batches it acknowledged.
    pub commit_every: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            appenders: 3,
            batches_per_appender: 12,
            commit_every: 3,
        }
    }
}

/// What the workload saw before it completed or the log failed under it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Records whose append ticket resolved `Ok` (acknowledged), by offset.
    pub acked: BTreeMap<u64, Vec<u8>>,
    /// Offsets the consumer acknowledged to its cursor (delivered and processed).
    pub consumed: BTreeSet<u64>,
    /// The first error any participant got (a crash shows up here).
    pub failure: Option<String>,
}

/// Runs `shape` against `log`: concurrent appenders (each waits for its batch before sending the
/// next, so a group commit holds at most `appenders` batches) and one consumer reading,
/// acknowledging (sometimes out of order) and committing. Returns when every appender is done
/// and the consumer has drained, or when errors stopped them all.
pub fn run_workload(log: &Log, seed: u64, shape: Shape) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcome = RefCell::new(Outcome::default());
    let serial = Cell::new(0u64);
    let (done_tx, done_rx) = watch::channel(0usize);
    let fail = |e: String| {
        outcome.borrow_mut().failure.get_or_insert(e);
    };
    let appender = |index: usize| {
        let (fail, outcome, serial, done_tx) = (&fail, &outcome, &serial, &done_tx);
        let mut rng = Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        async move {
            for _ in 0..shape.batches_per_appender {
                let count = 1 + rng.below(6) as usize;
                let batch: Vec<Vec<u8>> = (0..count)
                    .map(|_| {
                        serial.set(serial.get() + 1);
                        payload(serial.get(), rng.below(121) as usize)
                    })
                    .collect();
                let ticket = match log.append_batch(&batch) {
                    Ok(t) => t,
                    Err(e) => {
                        fail(format!("append: {e}"));
                        break;
                    }
                };
                match ticket.await {
                    Ok(range) => {
                        assert_eq!(range.end - range.start, count as u64);
                        outcome.borrow_mut().acked.extend(range.zip(batch));
                    }
                    Err(e) => {
                        fail(format!("append ticket: {e}"));
                        break;
                    }
                }
            }
            done_tx.send_modify(|n| *n += 1);
        }
    };
    let consumer = async {
        let mut rng = Rng::new(seed ^ 0x5851_F42D_4C95_7F2D);
        let mut cursor = match log.cursor(CONSUMER) {
            Ok(c) => c,
            Err(e) => return fail(format!("cursor: {e}")),
        };
        let mut done = done_rx.clone();
        let mut held: Vec<u64> = Vec::new();
        let mut since_commit = 0;
        loop {
            let batch = match cursor.try_read_batch(1 + rng.below(16) as usize, 1 << 20) {
                Ok(b) => b,
                Err(e) => return fail(format!("read: {e}")),
            };
            if batch.is_empty() {
                if *done.borrow_and_update() == shape.appenders {
                    break;
                }
                tokio::select! {
                    r = cursor.wait() => if let Err(e) = r { return fail(format!("wait: {e}")) },
                    _ = done.changed() => {}
                }
                continue;
            }
            for r in &batch {
                assert!(
                    well_formed(&r.payload),
                    "a delivered record is one appended"
                );
            }
            let mut offsets: Vec<u64> = batch.iter().map(|r| r.offset).collect();
            // Sometimes hold a batch back and acknowledge it after the next: out-of-order acks.
            if held.is_empty() && rng.below(4) == 0 {
                held = offsets;
                continue;
            }
            offsets.append(&mut held);
            if let Err(e) = cursor.acker().ack_many(&offsets) {
                return fail(format!("ack: {e}"));
            }
            outcome.borrow_mut().consumed.extend(offsets);
            since_commit += 1;
            if since_commit >= shape.commit_every {
                since_commit = 0;
                if let Err(e) = cursor.commit().await {
                    return fail(format!("commit: {e}"));
                }
            }
        }
        if !held.is_empty() {
            match cursor.acker().ack_many(&held) {
                Ok(()) => outcome.borrow_mut().consumed.extend(held),
                Err(e) => fail(format!("ack: {e}")),
            }
        }
    };
    rt.block_on(async {
        let appenders = futures_join_all((0..shape.appenders).map(appender).collect());
        tokio::join!(appenders, consumer);
    });
    outcome.into_inner()
}

/// Polls futures concurrently on the current task (no `Send` needed, no extra crate).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in futures.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_pending() {
                    pending = true;
                } else {
                    *slot = None;
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}

/// Opens the log in [`DIR`] on `fs`.
pub fn open(fs: &SimFs, durability: Durability) -> Result<Log, veltrix_log::Error> {
    Log::open_with_fs(Arc::new(fs.clone()), DIR, opts(durability)).map(|(log, _)| log)
}

/// Totals over many crash-and-recover runs, for the figures in GUARANTEES.md.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub runs: u64,
    /// Runs in which the crash interrupted the workload (rather than hitting after it ended).
    pub crashed_mid_run: u64,
    /// Runs whose first recovery was itself cut by a second power loss.
    pub crashes_during_recovery: u64,
    /// Acknowledged records checked after recovery (present with their bytes, or consumed and
    /// legitimately deleted by retention).
    pub acked_checked: u64,
    /// Acknowledged records missing after recovery (asserted to be 0).
    pub lost: u64,
    /// Records the consumer had acknowledged that are delivered again after the restart
    /// (at-least-once: its last persisted position trails its acknowledgements).
    pub redelivered: u64,
    /// Records still in the log after recovery, summed over runs.
    pub recovered_records: u64,
    /// Longest `open` (recovery) of any run.
    pub recovery_max: Duration,
}

impl Figures {
    pub fn summary(&self, what: &str) -> String {
        format!(
            "{what}: {} runs ({} crashed mid-run, {} also crashed during recovery), {} acknowledged records checked, {} lost, {} redelivered to the consumer, {} records recovered, slowest recovery {:.2} ms",
            self.runs,
            self.crashed_mid_run,
            self.crashes_during_recovery,
            self.acked_checked,
            self.lost,
            self.redelivered,
            self.recovered_records,
            self.recovery_max.as_secs_f64() * 1e3
        )
    }
}

/// After a crash (the filesystem is down or the log's files are as the crash left them):
/// restarts, optionally cuts the first recovery short with another power loss, then recovers
/// and checks every promise. Returns an error naming the broken promise.
pub fn recover_and_check(
    fs: &SimFs,
    durability: Durability,
    outcome: &Outcome,
    rng: &mut Rng,
    figures: &mut Figures,
) -> Result<(), String> {
    figures.runs += 1;
    fs.restart();
    if rng.below(4) == 0 {
        // A power loss during recovery itself (truncating a torn tail, creating the first
        // segment, ...): the next start must still recover.
        fs.crash_after(1 + rng.below(3), Tear::pick(rng).function());
        let attempt = open(fs, durability);
        drop(attempt);
        fs.disarm();
        if fs.is_down() {
            figures.crashes_during_recovery += 1;
            fs.restart();
        }
    }

    // Read-only first: what the crash left, before `open` clamps or truncates anything.
    let info = inspect_dir(fs, Path::new(DIR), RECORD_BYTES_MAX)
        .map_err(|e| format!("inspecting the crashed log: {e}"))?;
    if let Some(e) = &info.integrity.ledger_error {
        return Err(format!("a crash damaged the ledger: {e}"));
    }
    if !info.integrity.damaged.is_empty() {
        return Err(format!(
            "a crash left damage other than a torn tail: {:?}",
            info.integrity.damaged
        ));
    }
    for c in &info.cursors {
        if c.committed.offset > info.next_offset {
            return Err(format!(
                "cursor {} persisted at {} ahead of the data (tail {})",
                c.name, c.committed.offset, info.next_offset
            ));
        }
    }
    let persisted = info
        .cursors
        .iter()
        .find(|c| c.name == CONSUMER)
        .map(|c| c.committed.offset);

    let (log, report) = Log::open_with_fs(Arc::new(fs.clone()), DIR, opts(durability))
        .map_err(|e| format!("recovery failed: {e}"))?;
    figures.recovery_max = figures.recovery_max.max(report.elapsed);
    if report.records_quarantined != 0 || !report.cursors_reset.is_empty() {
        return Err(format!("recovery found damage after a crash: {report:?}"));
    }
    let (first, next) = (report.first_offset, report.next_offset);

    // Every record still in the log, in order, as appended.
    let mut audit = log.cursor("audit").map_err(|e| e.to_string())?;
    let mut present = BTreeMap::new();
    let mut expected = first;
    loop {
        let batch = audit
            .try_read_batch(1000, 1 << 20)
            .map_err(|e| format!("reading after recovery: {e}"))?;
        if batch.is_empty() {
            break;
        }
        for r in batch {
            if r.offset != expected {
                return Err(format!("gap: read {} where {expected} was due", r.offset));
            }
            if !well_formed(&r.payload) {
                return Err(format!("record {} is not one that was appended", r.offset));
            }
            if let Some(acked) = outcome.acked.get(&r.offset)
                && acked.as_slice() != r.payload.as_ref()
            {
                return Err(format!("record {} changed", r.offset));
            }
            present.insert(r.offset, ());
            expected += 1;
        }
    }
    if expected != next {
        return Err(format!("read up to {expected}, recovery said {next}"));
    }
    figures.recovered_records += next - first;
    drop(audit);
    log.remove_cursor("audit").map_err(|e| e.to_string())?;

    // Acknowledged appends: present, or consumed and deleted by retention behind the consumer's
    // persisted position. In `interval` mode a power loss may take acknowledged records (the
    // documented window), so only `fsync` is held to this.
    if durability == Durability::Fsync {
        for &offset in outcome.acked.keys() {
            let ok = present.contains_key(&offset)
                || (offset < first
                    && outcome.consumed.contains(&offset)
                    && persisted.is_some_and(|p| offset < p));
            if ok {
                figures.acked_checked += 1;
            } else {
                figures.lost += 1;
            }
        }
        if figures.lost > 0 {
            return Err(format!(
                "{} acknowledged records lost (log {first}..{next}, consumer persisted at {persisted:?})",
                figures.lost
            ));
        }
    }

    // The consumer resumes at or before every record it has not acknowledged: at-least-once.
    let mut cursor = log.cursor(CONSUMER).map_err(|e| e.to_string())?;
    let resume = match cursor
        .try_read_batch(1, 1 << 20)
        .map_err(|e| e.to_string())?
        .first()
    {
        Some(r) => r.offset,
        None => next,
    };
    if let Some(skipped) = (first..next).find(|o| *o < resume && !outcome.consumed.contains(o)) {
        return Err(format!(
            "the consumer resumes at {resume}, past record {skipped} it never acknowledged"
        ));
    }
    figures.redelivered += outcome.consumed.range(resume..).count() as u64;
    drop(cursor);

    // The recovered log takes appends again and closes cleanly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let range = log
            .append(&payload(u64::MAX, 16))
            .map_err(|e| format!("append after recovery: {e}"))?
            .await
            .map_err(|e| format!("append after recovery: {e}"))?;
        if range.start != next {
            return Err(format!("appended at {}, expected {next}", range.start));
        }
        Ok(())
    })?;
    log.close()
        .map_err(|e| format!("close after recovery: {e}"))
}
