//! `cargo bench -p veltrix-engine --bench allocations`: heap allocations per event on the path
//! ingest → queue → pipeline → sink, counted by a global allocator that wraps the system one.
//!
//! Each of `REQUESTS` requests of 1,000 × ~250 B NDJSON events goes through the real code, stage
//! by stage: the ingest encoding (decode + route + stored form), the queue (`Log::append_batch`
//! with `memory` durability, awaiting the ticket), the cursor read (+ acknowledgement), the
//! processor chain (filter + remap, as a worker runs a batch) and the sink (the NDJSON buffer
//! as `Bytes` for a blackhole/file sink, plus the http sink's JSON array body, listed apart).
//! Setup and a warm-up request are not counted. Allocations made by the log's committer thread
//! during a stage are counted with that stage (the counter is global). `realloc` counts as an
//! allocation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use veltrix_core::config::Router;
use veltrix_engine::bench_support::{self, Pipeline};
use veltrix_log::{Durability, Log, LogOptions};

use common::{EVENTS_PER_REQUEST, config, ndjson_body};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter has no effect
// on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`; `ptr` came from this allocator, hence from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUESTS: usize = 200;
const NDJSON: &str = "application/x-ndjson";
const BATCH_BYTES_MAX: usize = 4 << 20;

const STAGES: [&str; 5] = [
    "ingest encode (decode + route + stored form)",
    "queue append (append_batch + await, memory)",
    "cursor read + ack",
    "processors (filter + remap → NDJSON)",
    "sink (NDJSON buffer → Bytes)",
];

#[derive(Default)]
struct Counts {
    stages: [u64; 5],
    http_body: u64,
}

/// Counts the allocations `f` makes (on any thread) into `slot`.
fn counted<T>(slot: &mut u64, f: impl FnOnce() -> T) -> T {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let out = f();
    *slot += ALLOCATIONS.load(Ordering::SeqCst) - before;
    out
}

/// Where the processors' allocations come from: the chain's steps one by one, on the same
/// events (stored records of one request), through `veltrix_core` directly.
fn breakdown(config: &veltrix_core::config::Config, body: &[u8]) {
    use veltrix_core::config::ProcessorConfig;
    use veltrix_core::event::Event;
    use veltrix_core::expr::{self, Runtime};
    let router = Router::new(config);
    let per_queue =
        bench_support::encode_request(NDJSON, body, &router, config.queues.len(), 1).unwrap();
    let records: Vec<&[u8]> = per_queue.iter().flat_map(|q| q.iter()).collect();
    let processors = &config.pipelines["p"].processors;
    let mut runtime = Runtime::new();
    let mut out = Vec::with_capacity(1 << 20);
    let mut steps = [0u64; 6];
    let mut n = 0u64;
    for _ in 0..20 {
        for r in &records {
            let (_, json) = veltrix_engine::record::split(r);
            let mut event = counted(&mut steps[0], || expr::StoredEvent::read(json).unwrap());
            counted(&mut steps[4], || {
                let event = Event::from_stored(json).unwrap();
                black_box(expr::event_to_value(&event).unwrap())
            });
            let mut kept = true;
            for p in processors {
                match p {
                    ProcessorConfig::Filter(f) => {
                        kept &= counted(&mut steps[1], || f.run(&mut runtime, &mut event).unwrap());
                    }
                    ProcessorConfig::Remap(m) if kept => {
                        counted(&mut steps[2], || m.run(&mut runtime, &mut event).unwrap());
                    }
                    // The benchmarked pipeline is a filter and a remap.
                    ProcessorConfig::Remap(_) => {}
                    other => unreachable!("not in the benchmarked pipeline: {other:?}"),
                }
            }
            if kept {
                out.clear();
                counted(&mut steps[3], || event.to_json_bytes(&mut out).unwrap());
            }
            counted(&mut steps[5], || drop(event));
            n += 1;
        }
    }
    let names = [
        "StoredEvent::read (scan of the stored JSON)",
        "filter run",
        "remap run (kept events)",
        "to_json_bytes (kept events: validate + write)",
        "(not on the path: the validating fallback, Event::from_stored + event_to_value)",
        "drop",
    ];
    println!();
    println!("processors, step by step ({n} events):");
    println!("| step | allocations / event |");
    println!("|---|---|");
    for (name, count) in names.iter().zip(steps) {
        println!("| {name} | {:.3} |", count as f64 / n as f64);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once too: both are fine.
    let config = config();
    let router = Router::new(&config);
    let queues = config.queues.len();
    let mut pipeline = Pipeline::new(&config.pipelines["p"]);
    let body = ndjson_body(EVENTS_PER_REQUEST);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let logs: Vec<Log> = (0..queues)
        .map(|q| {
            let (log, _) = Log::open(
                format!("/unused/bench-allocations-{q}"),
                LogOptions {
                    durability: Durability::Memory,
                    ..LogOptions::default()
                },
            )
            .expect("memory log");
            log
        })
        .collect();
    let mut cursors: Vec<_> = logs
        .iter()
        .map(|l| l.cursor("p").expect("cursor"))
        .collect();
    let ackers: Vec<_> = cursors.iter().map(|c| c.acker()).collect();

    let mut one_request = |counts: &mut Counts| -> usize {
        let c = &mut counts.stages;
        let per_queue = counted(&mut c[0], || {
            bench_support::encode_request(NDJSON, black_box(&body), &router, queues, 1)
                .expect("encode")
        });
        counted(&mut c[1], || {
            rt.block_on(async {
                for (log, records) in logs.iter().zip(&per_queue) {
                    if !records.is_empty() {
                        log.append_batch(&records.slices())
                            .expect("append")
                            .await
                            .expect("durable");
                    }
                }
            })
        });
        drop(per_queue);
        let mut emitted = 0;
        for (cursor, acker) in cursors.iter_mut().zip(&ackers) {
            loop {
                let batch = counted(&mut c[2], || {
                    cursor
                        .try_read_batch(EVENTS_PER_REQUEST, BATCH_BYTES_MAX)
                        .expect("read")
                });
                if batch.is_empty() {
                    break;
                }
                let out = counted(&mut c[3], || {
                    let mut out = Vec::with_capacity(batch.iter().map(|r| r.payload.len()).sum());
                    for r in &batch {
                        emitted +=
                            usize::from(pipeline.apply(&r.payload, &mut out).expect("chain"));
                    }
                    out
                });
                let bytes = counted(&mut c[4], || black_box(bytes::Bytes::from(out)));
                counted(&mut counts.http_body, || {
                    black_box(bench_support::http_sink_body(&bytes))
                });
                counted(&mut c[2], || {
                    let offsets: Vec<u64> = batch.iter().map(|r| r.offset).collect();
                    acker.ack_many(&offsets).expect("ack");
                });
            }
        }
        emitted
    };

    let mut warmup = Counts::default();
    for _ in 0..3 {
        one_request(&mut warmup);
    }
    let mut counts = Counts::default();
    let mut emitted = 0;
    for _ in 0..REQUESTS {
        emitted += one_request(&mut counts);
    }
    let events = (REQUESTS * EVENTS_PER_REQUEST) as f64;
    println!(
        "allocations per event: {REQUESTS} requests × {EVENTS_PER_REQUEST} events ({emitted} emitted, the rest filtered)"
    );
    println!("| stage | allocations / event |");
    println!("|---|---|");
    for (name, n) in STAGES.iter().zip(counts.stages) {
        println!("| {name} | {:.3} |", n as f64 / events);
    }
    let total: u64 = counts.stages.iter().sum();
    println!("| **total** | **{:.3}** |", total as f64 / events);
    println!(
        "| (http sink: JSON array body, instead of the Bytes) | {:.3} |",
        counts.http_body as f64 / events
    );
    breakdown(&config, &body);
    drop(ackers);
    drop(cursors);
    for log in logs {
        drop(log.close());
    }
}
