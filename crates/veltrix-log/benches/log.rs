//! `cargo bench -p veltrix-log`: the log's hot paths on the real filesystem, each next to a raw
//! baseline measured in the same run.
//!
//! - `append_batched`: 1,000,000 records of ~200 B, 1,000 per append (one group commit each),
//!   `fsync` durability — vs `raw_write_fdatasync`: the same framed bytes written with one
//!   `write` + `fdatasync` per 1,000 records (the disk ceiling).
//! - `append_concurrent_64`: 64 tasks each appending single records in `fsync` mode — vs
//!   `raw_fdatasync_per_record`: one write + fdatasync per record (no group commit).
//! - `read_sequential`: 1,000,000 records read back through a cursor.
//! - `reopen_1gib`: open (with tail recovery) of a 1 GiB log.
//!
//! Data goes to `$VELTRIX_BENCH_DIR` (default: the system temp dir).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use veltrix_log::{Log, LogOptions};

const RECORDS: u64 = 1_000_000;
const PER_COMMIT: usize = 1_000;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("VELTRIX_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    // scripts/bench.sh removes the directory after each engine run.
    std::fs::create_dir_all(&base).expect("bench dir's parent");
    tempfile::tempdir_in(base).expect("bench dir")
}

/// A ~200-byte CloudEvent-like payload.
fn event(i: u64) -> Vec<u8> {
    let mut e = format!(
        r#"{{"specversion":"1.0","id":"{i:012}","source":"/bench","type":"order.created","data":{{"amount":{},"qty":3,"note":"#,
        i % 1000
    )
    .into_bytes();
    e.resize(196, b'x');
    e.extend_from_slice(br#""}}"#);
    e
}

fn batches() -> Vec<Vec<Vec<u8>>> {
    (0..RECORDS / PER_COMMIT as u64)
        .map(|b| {
            (0..PER_COMMIT as u64)
                .map(|i| event(b * PER_COMMIT as u64 + i))
                .collect()
        })
        .collect()
}

/// The disk ceiling: each buffer appended with one `write` and one `fdatasync` to a fresh file.
fn raw_writes(iters: u64, buffers: &[Vec<u8>]) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let dir = bench_dir();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("raw"))
            .expect("open");
        let start = Instant::now();
        for buf in buffers {
            f.write_all(buf).expect("write");
            f.sync_data().expect("fdatasync");
        }
        total += start.elapsed();
    }
    total
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn append_all(rt: &tokio::runtime::Runtime, log: &Log, batches: &[Vec<Vec<u8>>]) {
    rt.block_on(async {
        for batch in batches {
            log.append_batch(batch)
                .expect("room")
                .await
                .expect("durable");
        }
    });
}

fn big_log_options() -> LogOptions {
    LogOptions {
        max_bytes: 4 << 30,
        max_records: 100_000_000,
        ..LogOptions::default()
    }
}

fn appends(c: &mut Criterion) {
    let rt = runtime();
    let batches = batches();
    let mut group = c.benchmark_group("log");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(RECORDS));

    group.bench_function("raw_write_fdatasync", |b| {
        // The same bytes a log round writes: 16-byte header + payload, one write and one
        // fdatasync per 1,000 records, O_APPEND.
        let framed: Vec<Vec<u8>> = batches
            .iter()
            .map(|batch| {
                let mut buf = Vec::new();
                for p in batch {
                    buf.extend_from_slice(&[0u8; 16]);
                    buf.extend_from_slice(p);
                }
                buf
            })
            .collect();
        b.iter_custom(|iters| raw_writes(iters, &framed));
    });

    group.bench_function("append_batched", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = bench_dir();
                let (log, _) = Log::open(dir.path(), big_log_options()).expect("open");
                let start = Instant::now();
                append_all(&rt, &log, &batches);
                total += start.elapsed();
                log.close().expect("close");
            }
            total
        });
    });

    // Baseline for group commit: what 64 appenders would get if every record paid its own
    // fdatasync (a plain write + fdatasync per 200-byte record).
    const SINGLE: u64 = 5_000;
    group.throughput(Throughput::Elements(SINGLE));
    group.bench_function("raw_fdatasync_per_record", |b| {
        let mut record = vec![0u8; 16];
        record.extend_from_slice(&event(7));
        let records = vec![record; SINGLE as usize];
        b.iter_custom(|iters| raw_writes(iters, &records));
    });

    const TASKS: u64 = 64;
    const PER_TASK: u64 = 1_000;
    group.throughput(Throughput::Elements(TASKS * PER_TASK));
    group.bench_function("append_concurrent_64", |b| {
        let payload = event(7);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = bench_dir();
                let (log, _) = Log::open(dir.path(), big_log_options()).expect("open");
                let start = Instant::now();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|_| {
                            let log = log.clone();
                            let payload = payload.clone();
                            tokio::spawn(async move {
                                for _ in 0..PER_TASK {
                                    log.append(&payload).expect("room").await.expect("durable");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                });
                total += start.elapsed();
                log.close().expect("close");
            }
            total
        });
    });

    group.throughput(Throughput::Elements(RECORDS));
    let dir = bench_dir();
    let (log, _) = Log::open(dir.path(), big_log_options()).expect("open");
    // A cursor that never acknowledges keeps every segment retained for each measured reader.
    let _retain_all = log.cursor("retain-all").expect("cursor");
    append_all(&rt, &log, &batches);
    let mut n = 0u64;
    group.bench_function("read_sequential", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let mut cursor = log.cursor(&format!("reader-{n}")).expect("cursor");
                let start = Instant::now();
                let mut read = 0;
                let mut offsets = Vec::with_capacity(1_000);
                while read < RECORDS {
                    let batch = cursor.try_read_batch(1_000, 1 << 20).expect("read");
                    assert!(!batch.is_empty(), "log holds {RECORDS} records");
                    read += batch.len() as u64;
                    offsets.clear();
                    offsets.extend(batch.iter().map(|r| r.offset));
                    cursor.acker().ack_many(&offsets).expect("ack");
                    std::hint::black_box(batch);
                }
                total += start.elapsed();
                drop(cursor);
                log.remove_cursor(&format!("reader-{n}")).expect("remove");
            }
            total
        });
    });
    group.finish();
}

fn reopen(c: &mut Criterion) {
    let rt = runtime();
    let dir = bench_dir();
    let (log, _) = Log::open(dir.path(), big_log_options()).expect("open");
    // Over 1 GiB of framed records: 5,270,000 × (16 + 200) bytes ≈ 1.14 GB, sized so the tail
    // segment (the one open checks record by record) is nearly full: the worst case.
    let batch: Vec<Vec<u8>> = (0..PER_COMMIT as u64).map(event).collect();
    rt.block_on(async {
        for _ in 0..5_270 {
            log.append_batch(&batch)
                .expect("room")
                .await
                .expect("durable");
        }
    });
    let bytes: u64 = log.inspect().segments.iter().map(|s| s.bytes).sum();
    assert!(bytes >= 1 << 30, "log is {bytes} bytes");
    log.close().expect("close");
    let mut group = c.benchmark_group("log");
    group.sample_size(10);
    group.bench_function("reopen_1gib", |b| {
        b.iter_with_large_drop(|| {
            let (log, report) = Log::open(dir.path(), big_log_options()).expect("open");
            assert_eq!(report.next_offset, 5_270_000);
            assert!(report.tail_records > 250_000, "tail segment nearly full");
            log
        });
    });
    group.finish();
}

criterion_group!(benches, appends, reopen);
criterion_main!(benches);
