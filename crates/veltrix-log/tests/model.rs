//! Model-based and damage property tests.
//!
//! The model test drives the log through random sequences of append / read / ack / commit /
//! crash (power loss: everything not fsynced is dropped, the last write sometimes torn) /
//! graceful reopen, and checks it against a plain `Vec` of what was appended: no durable record
//! is ever lost or reordered, nothing is delivered that was never appended, and records whose
//! acknowledgement was persisted are not delivered again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeSet;

use proptest::prelude::*;
use veltrix_log::{Cursor, Durability, Log, LogOptions, SimFs, frame, verify_dir};

const DIR: &str = "/q";

fn opts(durability: Durability) -> LogOptions {
    LogOptions {
        durability,
        segment_bytes: 512,
        record_bytes_max: 200,
        write_buffer_bytes_max: 1 << 20,
        read_buffer_bytes: 128,
        cursor_sync_interval: Duration::from_secs(3600),
        ..LogOptions::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append records of these sizes and wait until the log confirms them.
    Append(Vec<usize>),
    /// Append without waiting: the records may or may not survive a crash.
    AppendNoWait(Vec<usize>),
    Read(usize),
    /// Acknowledge the n-th delivered, unacknowledged record (modulo their count).
    Ack(usize),
    AckAll,
    Commit,
    /// Power loss; the unsynced tail of each file survives with this fraction.
    Crash(f64),
    /// Graceful close and reopen.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let sizes = prop::collection::vec(0usize..200, 1..12);
    prop_oneof![
        4 => sizes.clone().prop_map(Op::Append),
        1 => sizes.prop_map(Op::AppendNoWait),
        4 => (1usize..30).prop_map(Op::Read),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::AckAll),
        2 => Just(Op::Commit),
        1 => prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0].prop_map(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

fn payload(serial: u64, size: usize) -> Vec<u8> {
    let mut p = serial.to_le_bytes().to_vec();
    p.resize(size.max(8), (serial % 251) as u8);
    p
}

struct Model {
    /// Every record the log may hold, by offset.
    all: Vec<Vec<u8>>,
    /// `all[..confirmed]` are confirmed durable (or, in interval mode, written before a sync).
    confirmed: usize,
    /// Records below this count survive any crash.
    crash_floor: usize,
    /// Next offset the consumer expects to read.
    read: u64,
    /// Delivered, not yet acknowledged.
    unacked: Vec<u64>,
    /// Delivered and acknowledged but maybe not committed past (lowest unacked is below).
    persisted: u64,
    serial: u64,
}

impl Model {
    /// New, unique payloads of these sizes.
    fn fresh_payloads(&mut self, sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .map(|&s| {
                self.serial += 1;
                payload(self.serial, s)
            })
            .collect()
    }

    fn committed(&self) -> u64 {
        self.unacked.iter().copied().min().unwrap_or(self.read)
    }
}

struct Harness {
    fs: SimFs,
    durability: Durability,
    log: Option<Log>,
    cursor: Option<Cursor>,
}

impl Harness {
    fn open(&mut self) -> veltrix_log::RecoveryReport {
        let (log, report) =
            Log::open_with_fs(Arc::new(self.fs.clone()), DIR, opts(self.durability))
                .expect("open never fails");
        self.cursor = Some(log.cursor("c").expect("cursor"));
        self.log = Some(log);
        report
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("open")
    }

    fn cursor(&mut self) -> &mut Cursor {
        self.cursor.as_mut().expect("open")
    }
}

fn run(durability: Durability, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut h = Harness {
            fs: SimFs::new(),
            durability,
            log: None,
            cursor: None,
        };
        h.open();
        let mut m = Model {
            all: Vec::new(),
            confirmed: 0,
            crash_floor: 0,
            read: 0,
            unacked: Vec::new(),
            persisted: 0,
            serial: 0,
        };
        for op in ops {
            match op {
                Op::Append(sizes) => {
                    let payloads = m.fresh_payloads(&sizes);
                    let first = m.all.len() as u64;
                    m.all.extend(payloads.iter().cloned());
                    let range = h.log().append_batch(&payloads).unwrap().await.unwrap();
                    prop_assert_eq!(range, first..first + payloads.len() as u64);
                    // Rounds commit in order: everything appended before is durable too.
                    m.confirmed = m.all.len();
                    if durability == Durability::Fsync {
                        m.crash_floor = m.confirmed;
                    }
                }
                Op::AppendNoWait(sizes) => {
                    let payloads = m.fresh_payloads(&sizes);
                    m.all.extend(payloads.iter().cloned());
                    drop(h.log().append_batch(&payloads).unwrap());
                }
                Op::Read(n) => {
                    let records = h.cursor().try_read_batch(n, 1 << 20).unwrap();
                    prop_assert!(records.len() <= n);
                    for r in records {
                        prop_assert_eq!(r.offset, m.read, "records arrive in order, without gaps");
                        prop_assert_eq!(r.payload.as_ref(), m.all[r.offset as usize].as_slice());
                        m.unacked.push(r.offset);
                        m.read += 1;
                    }
                }
                Op::Ack(i) => {
                    if !m.unacked.is_empty() {
                        let offset = m.unacked.swap_remove(i % m.unacked.len());
                        h.cursor().ack(offset).unwrap();
                        prop_assert_eq!(h.cursor().committed().unwrap().offset, m.committed());
                    }
                }
                Op::AckAll => {
                    let offsets = std::mem::take(&mut m.unacked);
                    h.cursor().acker().ack_many(&offsets).unwrap();
                    prop_assert_eq!(h.cursor().committed().unwrap().offset, m.read);
                }
                Op::Commit => {
                    h.cursor().commit().await.unwrap();
                    m.persisted = m.committed();
                    // The ledger never runs ahead of the data: a commit syncs what was written.
                    m.crash_floor = m.crash_floor.max(m.persisted as usize);
                }
                Op::Crash(tear) => {
                    h.fs.crash(|| tear);
                    h.cursor = None;
                    h.log = None;
                    h.fs.restart();
                    let report = h.open();
                    let next = report.next_offset as usize;
                    prop_assert!(
                        next >= m.crash_floor,
                        "lost durable records: {next} < {}",
                        m.crash_floor
                    );
                    prop_assert!(next <= m.all.len(), "records that were never appended");
                    m.all.truncate(next);
                    m.confirmed = next;
                    m.crash_floor = m.crash_floor.min(next);
                    check_contents(&mut h, &m, report.first_offset)?;
                    m.read = m.persisted;
                    m.unacked.clear();
                }
                Op::Reopen => {
                    h.cursor = None;
                    h.log.take().unwrap().close().unwrap();
                    let report = h.open();
                    prop_assert_eq!(
                        report.next_offset as usize,
                        m.all.len(),
                        "close writes everything"
                    );
                    prop_assert_eq!(report.bytes_truncated, 0);
                    m.confirmed = m.all.len();
                    m.crash_floor = m.all.len();
                    m.persisted = m.committed();
                    m.read = m.persisted;
                    m.unacked.clear();
                    check_contents(&mut h, &m, report.first_offset)?;
                }
            }
        }
        Ok(())
    })
}

/// After a restart: the retained records equal the model's, and the cursor resumes exactly at
/// its persisted position (so nothing acknowledged-and-persisted is delivered again).
fn check_contents(h: &mut Harness, m: &Model, first_offset: u64) -> Result<(), TestCaseError> {
    prop_assert!(
        first_offset <= m.persisted,
        "retention deleted unconsumed records"
    );
    let mut verifier = h.log().cursor("verifier").unwrap();
    let mut expected = first_offset;
    loop {
        let batch = verifier.try_read_batch(1000, 1 << 20).unwrap();
        if batch.is_empty() {
            break;
        }
        for r in batch {
            prop_assert_eq!(r.offset, expected);
            prop_assert_eq!(r.payload.as_ref(), m.all[r.offset as usize].as_slice());
            expected += 1;
        }
    }
    prop_assert_eq!(expected as usize, m.all.len());
    drop(verifier);
    h.log().remove_cursor("verifier").unwrap();
    let first = h.cursor().try_read_batch(1, 1 << 20).unwrap();
    if let Some(r) = first.first() {
        prop_assert_eq!(
            r.offset,
            m.persisted,
            "cursor resumes at its persisted position"
        );
    } else {
        prop_assert_eq!(m.persisted as usize, m.all.len());
    }
    // Put the probe back: reopening the cursor redelivers from the committed position.
    h.cursor = None;
    h.cursor = Some(h.log().cursor("c").unwrap());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn fsync_mode_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(Durability::Fsync, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn interval_mode_keeps_a_prefix_of_what_was_appended(ops in prop::collection::vec(op(), 1..60)) {
        run(Durability::Interval(Duration::from_secs(3600)), ops)?;
    }
}

/// Builds a closed log of `n` records across several segments on a fresh `SimFs`.
fn built(n: u64) -> (SimFs, Vec<Vec<u8>>) {
    let fs = SimFs::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| payload(i, 20 + (i as usize * 7) % 60))
        .collect();
    rt.block_on(async {
        let (log, _) =
            Log::open_with_fs(Arc::new(fs.clone()), DIR, opts(Durability::Fsync)).unwrap();
        for chunk in payloads.chunks(7) {
            log.append_batch(chunk).unwrap().await.unwrap();
        }
        let mut cursor = log.cursor("c").unwrap();
        let some = cursor.try_read_batch(5, 1 << 20).unwrap();
        cursor
            .acker()
            .ack_many(&some.iter().map(|r| r.offset).collect::<Vec<_>>())
            .unwrap();
        drop(cursor);
        log.close().unwrap();
    });
    (fs, payloads)
}

fn files(fs: &SimFs) -> Vec<std::path::PathBuf> {
    use veltrix_log::Filesystem;
    let mut names = fs.list(Path::new(DIR)).unwrap();
    names.sort();
    names.into_iter().map(|n| Path::new(DIR).join(n)).collect()
}

/// Where each record of a clean log sits: `(file, offset, byte range in the file)`.
fn frames(fs: &SimFs) -> Vec<(std::path::PathBuf, u64, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    for path in files(fs) {
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let bytes = fs.read_file(&path).unwrap();
        let mut pos = 0;
        while pos < bytes.len() {
            let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
            let offset = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
            let end = pos + frame::HEADER_BYTES + len;
            out.push((path.clone(), offset, pos..end));
            pos = end;
        }
    }
    out
}

/// Offsets of the records with at least one byte in `touched` (byte positions of `path`).
fn records_touching(
    frames: &[(std::path::PathBuf, u64, std::ops::Range<usize>)],
    path: &Path,
    touched: impl Fn(&std::ops::Range<usize>) -> bool,
) -> BTreeSet<u64> {
    frames
        .iter()
        .filter(|(p, _, range)| p == path && touched(range))
        .map(|(_, offset, _)| *offset)
        .collect()
}

/// Opens the damaged log and reads everything: what is delivered is intact and in order, every
/// record outside `damaged` (the records whose bytes were changed or cut) is delivered, and every
/// record is either delivered, quarantined, or cut with a torn tail.
fn recover_and_account(
    fs: &SimFs,
    payloads: &[Vec<u8>],
    damaged: &BTreeSet<u64>,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (log, report) =
            Log::open_with_fs(Arc::new(fs.clone()), DIR, opts(Durability::Fsync)).unwrap();
        let mut cursor = log.cursor("reader").unwrap();
        let mut delivered = 0u64;
        let mut seen = BTreeSet::new();
        let mut last = None;
        loop {
            let batch = cursor.try_read_batch(100, 1 << 20).unwrap();
            if batch.is_empty() {
                break;
            }
            for r in batch {
                prop_assert!(last.is_none_or(|l| r.offset > l), "order");
                prop_assert_eq!(
                    r.payload.as_ref(),
                    payloads[r.offset as usize].as_slice(),
                    "damaged data delivered"
                );
                last = Some(r.offset);
                seen.insert(r.offset);
                delivered += 1;
            }
        }
        let missing: Vec<u64> = (0..payloads.len() as u64)
            .filter(|o| !seen.contains(o) && !damaged.contains(o))
            .collect();
        prop_assert!(
            missing.is_empty(),
            "undamaged records not delivered: {:?} (damaged {:?}, {:?})",
            missing,
            damaged,
            report
        );
        let quarantined = log.stats().quarantined_records;
        let cut = payloads.len() as u64 - report.next_offset;
        prop_assert_eq!(
            delivered + quarantined + cut,
            payloads.len() as u64,
            "{:?}",
            report
        );
        Ok(())
    })
}

/// Cases per damage property: 500, or `VELTRIX_FAULT_DAMAGE_CASES` (the soak script raises it).
fn damage_cases() -> u32 {
    std::env::var("VELTRIX_FAULT_DAMAGE_CASES").map_or(500, |v| {
        v.parse()
            .expect("VELTRIX_FAULT_DAMAGE_CASES is a whole number")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: damage_cases(), ..ProptestConfig::default() })]

    #[test]
    fn bit_flips_anywhere_are_always_detected_and_recovered(
        file_pick in any::<prop::sample::Index>(),
        bits in prop::collection::vec(any::<prop::sample::Index>(), 1..=8),
    ) {
        let (fs, payloads) = built(120);
        let all = files(&fs);
        let path = file_pick.get(&all).clone();
        let mut bytes = fs.read_file(&path).unwrap();
        prop_assume!(!bytes.is_empty());
        let positions: BTreeSet<usize> = bits.iter().map(|b| b.index(bytes.len() * 8)).collect();
        let layout = frames(&fs);
        let damaged = records_touching(&layout, &path, |r| positions.iter().any(|b| r.contains(&(b / 8))));
        for bit in positions {
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        fs.write_file(&path, bytes);
        let integrity = verify_dir(&fs, Path::new(DIR), 200).unwrap();
        prop_assert!(!integrity.is_clean(), "flip in {:?} went undetected", path);
        recover_and_account(&fs, &payloads, &damaged)?;
    }

    #[test]
    fn truncation_at_any_byte_is_detected_or_harmless_and_recovered(
        file_pick in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (fs, payloads) = built(120);
        let all = files(&fs);
        let path = file_pick.get(&all).clone();
        let bytes = fs.read_file(&path).unwrap();
        prop_assume!(!bytes.is_empty());
        let at = cut.index(bytes.len());
        let damaged = records_touching(&frames(&fs), &path, |r| r.end > at);
        fs.write_file(&path, bytes[..at].to_vec());
        let integrity = verify_dir(&fs, Path::new(DIR), 200).unwrap();
        let is_last_segment = path == *all.iter().rfind(|p| p.extension().is_some_and(|e| e == "seg")).unwrap();
        if !is_last_segment {
            prop_assert!(!integrity.is_clean(), "truncation of {:?} at {} went undetected", path, at);
        }
        recover_and_account(&fs, &payloads, &damaged)?;
    }

    #[test]
    fn mixed_damage_in_several_files_spares_every_intact_record(
        hits in prop::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), any::<prop::sample::Index>()),
            1..=4,
        ),
    ) {
        let (fs, payloads) = built(200);
        let all = files(&fs);
        let layout = frames(&fs);
        let mut damaged = BTreeSet::new();
        for (file_pick, truncate, at) in hits {
            let path = file_pick.get(&all).clone();
            let mut bytes = fs.read_file(&path).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let at = at.index(bytes.len());
            if truncate {
                damaged.extend(records_touching(&layout, &path, |r| r.end > at));
                bytes.truncate(at);
            } else {
                damaged.extend(records_touching(&layout, &path, |r| r.contains(&at)));
                bytes[at] ^= 0x5A;
            }
            fs.write_file(&path, bytes);
        }
        recover_and_account(&fs, &payloads, &damaged)?;
    }
}
