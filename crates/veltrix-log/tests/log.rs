//! Behaviour of the log through its public API, on the simulated filesystem (fault injection,
//! power loss) and on the real one (temp dirs).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use veltrix_log::{
    Durability, Error, Faults, FullReason, Log, LogOptions, Record, RecoveryReport, SimFs,
    verify_dir,
};

const DIR: &str = "/data/queue";

fn small() -> LogOptions {
    LogOptions {
        segment_bytes: 1024,
        record_bytes_max: 512,
        write_buffer_bytes_max: 1024 * 1024,
        cursor_sync_interval: Duration::from_secs(3600),
        ..LogOptions::default()
    }
}

fn open(fs: &SimFs, opts: LogOptions) -> (Log, RecoveryReport) {
    Log::open_with_fs(Arc::new(fs.clone()), DIR, opts).expect("open")
}

fn payload(i: u64) -> Vec<u8> {
    format!(
        "{{\"id\":\"{i:08}\",\"type\":\"order.created\",\"pad\":\"{}\"}}",
        "x".repeat((i % 37) as usize)
    )
    .into_bytes()
}

async fn append_range(log: &Log, range: std::ops::Range<u64>) -> std::ops::Range<u64> {
    let payloads: Vec<Vec<u8>> = range.map(payload).collect();
    log.append_batch(&payloads)
        .expect("accepted")
        .await
        .expect("durable")
}

/// Reads everything currently readable.
fn drain(cursor: &mut veltrix_log::Cursor) -> Vec<Record> {
    let mut all = Vec::new();
    loop {
        let batch = cursor.try_read_batch(100, 1 << 20).expect("read");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// One check per boundary: the records read are exactly `expected` offsets with their payloads.
fn check(records: &[Record], expected: impl IntoIterator<Item = u64>) {
    let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
    let want: Vec<u64> = expected.into_iter().collect();
    assert_eq!(offsets, want, "offsets read");
    for r in records {
        assert_eq!(
            r.payload.as_ref(),
            payload(r.offset).as_slice(),
            "payload of {}",
            r.offset
        );
    }
}

fn segment_files(fs: &SimFs, log: &Log) -> Vec<Vec<u8>> {
    log.inspect()
        .segments
        .iter()
        .map(|s| fs.read_file(&s.path).expect("segment exists"))
        .collect()
}

#[tokio::test]
async fn appended_records_are_read_back_in_order_with_their_offsets() {
    let fs = SimFs::new();
    let (log, report) = open(&fs, small());
    assert_eq!(report.next_offset, 0);
    assert_eq!(append_range(&log, 0..10).await, 0..10);
    assert_eq!(append_range(&log, 10..25).await, 10..25);
    let mut cursor = log.cursor("archive").unwrap();
    check(&drain(&mut cursor), 0..25);
}

/// The committer is woken only when it is waiting (a flag set and cleared under the state
/// lock): a wake-up lost to that skip would leave an append waiting for the committer's idle
/// timeout (an hour here) instead of the next round. Many appenders racing the committer's
/// waits must each be committed promptly; the deadline only turns a hang into a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_racing_the_committers_waits_are_each_committed_without_a_timeout() {
    const APPENDERS: u64 = 8;
    const APPENDS_EACH: u64 = 500;
    let fs = SimFs::new();
    let (log, _) = open(
        &fs,
        LogOptions {
            segment_bytes: 64 * 1024,
            ..small()
        },
    );
    let log = Arc::new(log);
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|task| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..APPENDS_EACH {
                    let ticket = log
                        .append(&payload(task * APPENDS_EACH + i))
                        .expect("accepted");
                    tokio::time::timeout(Duration::from_secs(10), ticket)
                        .await
                        .unwrap_or_else(|_| panic!("append {i} of task {task} was never committed"))
                        .expect("durable");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("appender");
    }
    let mut cursor = log.cursor("all").expect("cursor");
    assert_eq!(drain(&mut cursor).len() as u64, APPENDERS * APPENDS_EACH);
}

#[tokio::test]
async fn segments_rotate_and_no_record_spans_two_segments() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    append_range(&log, 0..200).await;
    let info = log.inspect();
    assert!(
        info.segments.len() > 5,
        "1 KiB segments must rotate: {}",
        info.segments.len()
    );
    let mut next = 0;
    for (segment, bytes) in info.segments.iter().zip(segment_files(&fs, &log)) {
        assert_eq!(
            segment.base_offset, next,
            "a segment is named by its first offset"
        );
        assert!(bytes.len() as u64 <= 1024, "segment over its size bound");
        // Walk the frames: they must tile the file exactly.
        let mut pos = 0;
        while pos < bytes.len() {
            let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
            let offset = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
            assert_eq!(offset, next);
            next += 1;
            pos += veltrix_log::frame::HEADER_BYTES + len;
        }
        assert_eq!(pos, bytes.len(), "records end exactly at the segment end");
    }
    assert_eq!(next, 200);
}

#[tokio::test]
async fn out_of_order_acks_commit_the_lowest_unacknowledged_record() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    append_range(&log, 0..10).await;
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 0..10);
    for offset in [3, 1, 2, 9, 8] {
        cursor.ack(offset).unwrap();
    }
    assert_eq!(
        cursor.committed().unwrap().offset,
        0,
        "record 0 is still unacknowledged"
    );
    cursor.ack(0).unwrap();
    assert_eq!(cursor.committed().unwrap().offset, 4, "0..=3 acknowledged");
    for offset in 4..8 {
        cursor.ack(offset).unwrap();
    }
    assert_eq!(cursor.committed().unwrap().offset, 10);
    assert!(matches!(cursor.ack(10), Err(Error::NotInFlight(10))));
}

#[tokio::test]
async fn a_reopened_cursor_redelivers_what_was_not_acknowledged() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    append_range(&log, 0..6).await;
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 0..6);
    cursor.ack(0).unwrap();
    cursor.ack(1).unwrap();
    cursor.ack(4).unwrap();
    assert!(matches!(log.cursor("c"), Err(Error::CursorBusy(_))));
    drop(cursor);
    let mut again = log.cursor("c").unwrap();
    check(&drain(&mut again), 2..6);
}

#[tokio::test]
async fn after_a_crash_a_cursor_resumes_at_its_persisted_position() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    append_range(&log, 0..50).await;
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 0..50);
    cursor
        .acker()
        .ack_many(&(0..20).collect::<Vec<_>>())
        .unwrap();
    cursor.commit().await.unwrap();
    cursor
        .acker()
        .ack_many(&(20..30).collect::<Vec<_>>())
        .unwrap(); // not persisted
    fs.crash(|| 1.0);
    drop((cursor, log));
    fs.restart();
    let (log, report) = open(&fs, small());
    assert_eq!(
        report.next_offset, 50,
        "fsync mode keeps every acknowledged append"
    );
    assert!(report.cursors_reset.is_empty());
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 20..50);
}

#[tokio::test]
async fn reads_wait_for_appends() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    let mut cursor = log.cursor("c").unwrap();
    let reader = tokio::spawn(async move { cursor.read_batch(10, 1 << 20).await });
    append_range(&log, 0..3).await;
    let records = reader.await.unwrap().unwrap();
    check(&records, 0..3);
}

#[tokio::test]
async fn retention_deletes_a_segment_only_when_every_cursor_is_past_it() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    let mut fast = log.cursor("fast").unwrap();
    let mut slow = log.cursor("slow").unwrap();
    append_range(&log, 0..200).await;
    let segments_before = log.inspect().segments.len();
    let read = drain(&mut fast);
    fast.acker()
        .ack_many(&read.iter().map(|r| r.offset).collect::<Vec<_>>())
        .unwrap();
    fast.commit().await.unwrap();
    assert_eq!(
        log.inspect().segments.len(),
        segments_before,
        "slow still needs every segment"
    );
    assert_eq!(log.stats().segments_deleted, 0);
    let read = drain(&mut slow);
    let half: Vec<u64> = read.iter().map(|r| r.offset).filter(|o| *o < 100).collect();
    slow.acker().ack_many(&half).unwrap();
    slow.commit().await.unwrap();
    let info = log.inspect();
    assert!(info.segments.len() < segments_before);
    assert!(
        info.first_offset <= 100 && info.first_offset > 0,
        "kept from {}",
        info.first_offset
    );
    // The ledger was durable before the unlink: a power loss now must not lose a cursor.
    fs.crash(|| 0.0);
    drop((fast, slow, log));
    fs.restart();
    let (log, report) = open(&fs, small());
    assert!(report.cursors_reset.is_empty(), "{report:?}");
    let mut slow = log.cursor("slow").unwrap();
    check(&drain(&mut slow), 100..200);
}

#[tokio::test]
async fn a_full_log_refuses_appends_at_once_and_accepts_again_after_consumption() {
    let fs = SimFs::new();
    let opts = LogOptions {
        max_records: 10,
        ..small()
    };
    let (log, _) = open(&fs, opts);
    let mut cursor = log.cursor("c").unwrap();
    append_range(&log, 0..10).await;
    match log.append(b"one too many") {
        Err(Error::Full(FullReason::Records)) => {}
        other => panic!("expected Full(Records), got {:?}", other.map(|_| ())),
    }
    assert_eq!(log.stats().rejected_full, 1);
    let read = drain(&mut cursor);
    cursor
        .acker()
        .ack_many(&read.iter().map(|r| r.offset).collect::<Vec<_>>())
        .unwrap();
    append_range(&log, 10..15).await;

    let (log, _) = open(
        &SimFs::new(),
        LogOptions {
            max_bytes: 300,
            ..small()
        },
    );
    let _cursor = log.cursor("c").unwrap();
    let mut accepted = 0;
    let err = loop {
        match log.append(&[b'x'; 50]) {
            Ok(ticket) => {
                ticket.await.unwrap();
                accepted += 1;
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Full(FullReason::Bytes)));
    assert_eq!(accepted, 300 / (50 + veltrix_log::frame::HEADER_BYTES));
}

#[tokio::test]
async fn an_oversized_record_is_refused() {
    let (log, _) = open(&SimFs::new(), small());
    assert!(matches!(
        log.append(&[0; 513]),
        Err(Error::RecordTooLarge {
            size: 513,
            max: 512
        })
    ));
}

#[tokio::test]
async fn a_failed_fsync_poisons_the_log_for_every_appender() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    append_range(&log, 0..3).await;
    fs.set_faults(Faults {
        fail_syncs: true,
        ..Faults::default()
    });
    // Whether an append is refused at once or its ticket fails depends on when the committer
    // ran into the fault; either way no appender is told its record is durable.
    let mut outcomes = Vec::new();
    for i in 0..8 {
        match log.append(&payload(i)) {
            Ok(ticket) => outcomes.push(ticket.await.map(|_| ())),
            Err(e) => outcomes.push(Err(e)),
        }
    }
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Err(Error::Poisoned(_)))),
        "{outcomes:?}"
    );
    fs.set_faults(Faults::default());
    assert!(
        matches!(log.append(b"later"), Err(Error::Poisoned(_))),
        "never retried"
    );
}

#[tokio::test]
async fn a_failed_write_is_rolled_back_and_the_log_stays_usable() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    append_range(&log, 0..40).await;
    fs.set_faults(Faults {
        capacity_bytes: Some(fs_used(&fs, &log) + 100),
        ..Faults::default()
    });
    let payloads: Vec<Vec<u8>> = (40..80).map(payload).collect();
    let result = log.append_batch(&payloads).unwrap().await;
    assert!(matches!(result, Err(Error::NoSpace { .. })), "{result:?}");
    fs.set_faults(Faults::default());
    assert_eq!(
        append_range(&log, 40..45).await,
        40..45,
        "offsets continue without a hole"
    );
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 0..45);
    drop((cursor, log));
    let (_, report) = open(&fs, small());
    assert_eq!(report.bytes_truncated, 0);
    assert_eq!(report.next_offset, 45);

    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    fs.set_faults(Faults {
        fail_writes: true,
        ..Faults::default()
    });
    assert!(matches!(
        log.append(b"x").unwrap().await,
        Err(Error::Io { .. })
    ));
    fs.set_faults(Faults::default());
    assert_eq!(log.append(&payload(0)).unwrap().await.unwrap(), 0..1);
}

fn fs_used(fs: &SimFs, log: &Log) -> u64 {
    segment_files(fs, log).iter().map(|f| f.len() as u64).sum()
}

#[tokio::test]
async fn a_torn_tail_is_truncated_on_open() {
    let fs = SimFs::new();
    let opts = LogOptions {
        durability: Durability::Interval(Duration::from_secs(3600)),
        ..small()
    };
    let (log, _) = open(&fs, opts.clone());
    append_range(&log, 0..3).await;
    log.clone().close().unwrap();
    let (log, _) = open(&fs, opts.clone());
    append_range(&log, 3..6).await; // written, never synced
    fs.crash(|| 0.5);
    drop(log);
    fs.restart();
    let (log, report) = open(&fs, opts);
    assert!(report.bytes_truncated > 0, "{report:?}");
    assert!(
        report.next_offset >= 3 && report.next_offset < 6,
        "{report:?}"
    );
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 0..report.next_offset);
    assert!(verify_dir(&fs, Path::new(DIR), 512).unwrap().is_clean());
}

#[tokio::test]
async fn damage_in_a_sealed_segment_is_quarantined_and_never_delivered() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    append_range(&log, 0..100).await;
    let info = log.inspect();
    drop(log);
    let victim = &info.segments[1];
    let mut bytes = fs.read_file(&victim.path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs.write_file(&victim.path, bytes);
    let integrity = verify_dir(&fs, Path::new(DIR), 512).unwrap();
    assert_eq!(integrity.damaged.len(), 1, "{integrity:?}");
    assert_eq!(integrity.damaged[0].records, 1, "one record hit");
    let (log, _) = open(&fs, small());
    let mut cursor = log.cursor("c").unwrap();
    let read = drain(&mut cursor);
    assert_eq!(read.len(), 99);
    assert_eq!(log.stats().quarantined_records, 1);
    for r in &read {
        assert_eq!(r.payload.as_ref(), payload(r.offset).as_slice());
    }
    // The skipped record does not hold the cursor back.
    cursor
        .acker()
        .ack_many(&read.iter().map(|r| r.offset).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(cursor.committed().unwrap().offset, 100);
}

#[tokio::test]
async fn damage_in_the_middle_of_the_tail_segment_is_reported_at_open() {
    let fs = SimFs::new();
    let opts = LogOptions {
        segment_bytes: 64 * 1024,
        ..small()
    };
    let (log, _) = open(&fs, opts.clone());
    append_range(&log, 0..30).await;
    let path = log.inspect().segments[0].path.clone();
    drop(log);
    let mut bytes = fs.read_file(&path).unwrap();
    bytes[200] ^= 0xff;
    fs.write_file(&path, bytes);
    let (log, report) = open(&fs, opts);
    assert_eq!(report.next_offset, 30, "records after the damage survive");
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.records_quarantined, 1);
    let mut cursor = log.cursor("c").unwrap();
    let read = drain(&mut cursor);
    assert_eq!(read.len(), 29);
}

#[tokio::test]
async fn a_corrupt_ledger_restarts_cursors_at_the_oldest_record() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    append_range(&log, 0..10).await;
    let mut cursor = log.cursor("c").unwrap();
    let read = drain(&mut cursor);
    cursor
        .acker()
        .ack_many(&read.iter().map(|r| r.offset).collect::<Vec<_>>())
        .unwrap();
    drop(cursor);
    log.close().unwrap();
    let ledger = Path::new(DIR).join("cursors.ledger");
    let mut bytes = fs.read_file(&ledger).unwrap();
    bytes[10] ^= 1;
    fs.write_file(&ledger, bytes);
    let (log, report) = open(&fs, small());
    assert!(report.ledger_error.is_some());
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 0..10);
}

#[tokio::test]
async fn concurrent_appenders_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                log.append(&payload(task * 100 + i)).unwrap().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.appended_records, 640);
    assert!(
        stats.commits < 640,
        "appenders must share commits: {stats:?}"
    );
    assert_eq!(stats.fsyncs, stats.commits);
}

#[tokio::test]
async fn memory_mode_touches_no_disk_and_interval_mode_answers_before_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem");
    let (log, _) = Log::open(
        &path,
        LogOptions {
            durability: Durability::Memory,
            ..small()
        },
    )
    .unwrap();
    append_range(&log, 0..50).await;
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 0..50);
    assert!(!path.exists(), "memory mode must not create files");
    assert_eq!(log.stats().fsyncs, 0);

    let opts = LogOptions {
        durability: Durability::Interval(Duration::from_secs(3600)),
        ..small()
    };
    let (log, _) = Log::open(dir.path().join("interval"), opts).unwrap();
    append_range(&log, 0..5).await;
    assert_eq!(log.stats().fsyncs, 0, "acknowledged before any fsync");
    log.close().unwrap();
}

#[tokio::test]
async fn the_log_survives_reopen_on_the_real_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_bytes: 4096,
        record_bytes_max: 1024,
        ..LogOptions::default()
    };
    let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    append_range(&log, 0..500).await;
    let mut cursor = log.cursor("c").unwrap();
    let read = drain(&mut cursor);
    cursor
        .acker()
        .ack_many(&read[..250].iter().map(|r| r.offset).collect::<Vec<_>>())
        .unwrap();
    drop(cursor);
    log.close().unwrap();
    let (log, report) = Log::open(dir.path(), opts).unwrap();
    assert_eq!(report.next_offset, 500);
    let mut cursor = log.cursor("c").unwrap();
    check(&drain(&mut cursor), 250..500);
    let integrity = log.verify().unwrap();
    assert!(integrity.is_clean());
    assert!(integrity.records_ok >= 250);
}

#[tokio::test]
async fn drop_oldest_discards_a_whole_segment_and_moves_lagging_cursors() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    let mut cursor = log.cursor("slow").unwrap();
    append_range(&log, 0..100).await;
    let first = drain(&mut cursor); // in flight, never acknowledged
    assert_eq!(first.len(), 100);
    let second_base = log.inspect().segments[1].base_offset;
    assert_eq!(log.drop_oldest().unwrap(), second_base);
    assert_eq!(log.stats().dropped_records, second_base);
    assert_eq!(log.inspect().first_offset, second_base);
    assert!(
        matches!(cursor.ack(0), Err(Error::NotInFlight(0))),
        "dropped records are forgotten"
    );
    cursor.ack(second_base).unwrap();
    assert_eq!(cursor.committed().unwrap().offset, second_base + 1);
    drop(cursor);
    let mut again = log.cursor("slow").unwrap();
    check(&drain(&mut again), second_base + 1..100);
    let (single, _) = open(
        &SimFs::new(),
        LogOptions {
            segment_bytes: 1 << 20,
            ..small()
        },
    );
    append_range(&single, 0..5).await;
    assert_eq!(
        single.drop_oldest().unwrap(),
        0,
        "the active segment is never dropped"
    );
}

#[tokio::test]
async fn the_slowest_cursor_s_next_record_can_be_read_without_consuming_it() {
    let fs = SimFs::new();
    let (log, _) = open(&fs, small());
    let mut fast = log.cursor("fast").unwrap();
    let mut slow = log.cursor("slow").unwrap();
    append_range(&log, 0..30).await;
    let read = drain(&mut fast);
    fast.acker()
        .ack_many(&read.iter().map(|r| r.offset).collect::<Vec<_>>())
        .unwrap();
    let read = drain(&mut slow);
    slow.acker()
        .ack_many(&read[..12].iter().map(|r| r.offset).collect::<Vec<_>>())
        .unwrap();
    let position = log.slowest_position().expect("slow lags");
    assert_eq!(position.offset, 12);
    let record = log.read_at(position).unwrap().expect("a record there");
    check(&[record], [12]);
    slow.acker()
        .ack_many(&read[12..].iter().map(|r| r.offset).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(log.slowest_position(), None, "everyone caught up");
}
