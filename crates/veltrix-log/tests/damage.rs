//! Damage to a stopped log on the real filesystem, at a size where recovery time means
//! something: a torn tail, a flipped byte in the middle of the tail segment and one in a sealed
//! segment. Recovery must detect all three (checksums), cut the torn tail, skip and count the
//! damaged records, deliver every other record, and stay bounded: `open` scans only the tail
//! segment, so its time depends on `segment_bytes`, not on the backlog. The time is printed (the
//! figure in GUARANTEES.md), not asserted.
//!
//! Size: `VELTRIX_FAULT_RECOVERY_MIB` (default 48) in segments of `VELTRIX_FAULT_SEGMENT_MIB`
//! (default 16; the engine's default is 64); the soak script uses more.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use support::env_count;
use veltrix_log::{Log, LogOptions, frame};

const RECORD_BYTES: usize = 1000;

fn payload(i: u64) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.resize(RECORD_BYTES, (i % 251) as u8);
    p
}

/// Flips one byte of `path` at `at`; returns the offset of the record holding it.
fn flip(path: &Path, at: u64) -> u64 {
    let mut bytes = std::fs::read(path).unwrap();
    let frame_bytes = (frame::HEADER_BYTES + RECORD_BYTES) as u64;
    let at = at - at % frame_bytes + frame::HEADER_BYTES as u64 + 100; // inside a payload
    bytes[at as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
    let base: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    base + at / frame_bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_log_recovers_in_bounded_time_delivering_every_intact_record() {
    let mib = env_count("VELTRIX_FAULT_RECOVERY_MIB", 48);
    let opts = LogOptions {
        segment_bytes: env_count("VELTRIX_FAULT_SEGMENT_MIB", 16) * 1024 * 1024,
        max_bytes: u64::MAX / 2,
        ..LogOptions::default()
    };
    let opts_segment_mib = opts.segment_bytes >> 20;
    let dir = tempfile::tempdir().unwrap();
    // Plus half a segment, so the tail segment holds many records whatever the size.
    let records =
        (mib * 1024 * 1024 + opts.segment_bytes / 2) / (frame::HEADER_BYTES + RECORD_BYTES) as u64;
    {
        let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
        let all: Vec<u64> = (0..records).collect();
        for chunk in all.chunks(2000) {
            let batch: Vec<Vec<u8>> = chunk.iter().map(|&i| payload(i)).collect();
            log.append_batch(&batch).unwrap().await.unwrap();
        }
        log.close().unwrap();
    }
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let tail = segments.last().unwrap().clone();
    let tail_len = std::fs::metadata(&tail).unwrap().len();
    let sealed_len = std::fs::metadata(&segments[0]).unwrap().len();
    let mut damaged = BTreeSet::new();
    damaged.insert(flip(&segments[0], sealed_len / 2));
    damaged.insert(flip(&tail, tail_len / 3));
    // A torn last write: the final record cut in half.
    let torn_from = tail_len - (RECORD_BYTES / 2) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tail)
        .unwrap()
        .set_len(torn_from)
        .unwrap();
    let torn = records - 1;

    let started = Instant::now();
    let (log, report) = Log::open(dir.path(), opts.clone()).unwrap();
    let recovery = started.elapsed();
    assert!(report.bytes_truncated > 0, "torn tail cut: {report:?}");
    assert_eq!(report.next_offset, torn, "{report:?}");
    assert_eq!(report.records_quarantined, 1, "tail damage found at open");

    let started = Instant::now();
    let mut cursor = log.cursor("reader").unwrap();
    let mut delivered = 0u64;
    let mut expected = 0u64;
    loop {
        let batch = cursor.try_read_batch(5000, 8 << 20).unwrap();
        if batch.is_empty() {
            break;
        }
        let offsets: Vec<u64> = batch.iter().map(|r| r.offset).collect();
        cursor.acker().ack_many(&offsets).unwrap();
        for r in batch {
            while damaged.contains(&expected) {
                expected += 1;
            }
            assert_eq!(r.offset, expected, "every intact record, in order");
            assert_eq!(r.payload.as_ref(), payload(r.offset).as_slice());
            expected += 1;
            delivered += 1;
        }
    }
    let read_back = started.elapsed();
    assert_eq!(delivered, torn - damaged.len() as u64);
    assert_eq!(log.stats().quarantined_records, damaged.len() as u64);
    eprintln!(
        "recovery of a damaged log: {mib} MiB in {} segments of {} MiB ({records} records of {RECORD_BYTES} B), \
         1 torn tail + 2 flipped bytes: open took {:.1} ms (report {:.1} ms), reading every record back {:.0} ms; \
         {delivered} delivered, {} quarantined, 1 cut",
        segments.len(),
        opts_segment_mib,
        recovery.as_secs_f64() * 1e3,
        report.elapsed.as_secs_f64() * 1e3,
        read_back.as_secs_f64() * 1e3,
        damaged.len(),
    );
}
