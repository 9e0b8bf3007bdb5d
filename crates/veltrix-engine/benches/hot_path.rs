//! `cargo bench -p veltrix-engine`: the engine's per-event hot path, through the real code
//! (`veltrix_engine::bench_support` wraps it; nothing is reimplemented here).
//!
//! - `decode/*`: `decode_body` of a 1,000 × ~250 B NDJSON body and of one structured event.
//! - `route/*`: first-match routing of 1,000 event types over three queues.
//! - `ingest_encode/*`: what `POST /v1/events` does before appending: decode + route + stored
//!   form into per-queue buffers, per 1,000-event request.
//! - `vrl/*`: one event through the real `Chain` (filter `.type != "debug.ping"` + the remap).
//! - `sink/*`: the http sink's NDJSON → JSON array body for 1,000 lines.
//! - `pipeline/*`: the in-process pipeline: 1,000 pre-built stored records → `Chain` (filter +
//!   remap) → NDJSON buffer handed to a blackhole; events/s. Single-threaded, so per core. The
//!   `passthrough` variant (no processors) is its ceiling.
//!
//! Log append and read are benchmarked in `crates/veltrix-log/benches/log.rs`.

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use veltrix_core::config::Router;
use veltrix_core::event;
use veltrix_engine::bench_support::{self, Pipeline};

use common::{EVENTS_PER_REQUEST, config, event_json, ndjson_body};

const NDJSON: &str = "application/x-ndjson";
const NO_HEADERS: &[(&str, &str)] = &[];

fn decoding(c: &mut Criterion) {
    let body = ndjson_body(EVENTS_PER_REQUEST);
    let one = event_json(1);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(EVENTS_PER_REQUEST as u64));
    g.bench_function("ndjson_1000x250B", |b| {
        b.iter(|| event::decode_body(NDJSON, NO_HEADERS, black_box(&body)).unwrap())
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("structured_single", |b| {
        b.iter(|| {
            event::decode_body(
                "application/cloudevents+json",
                NO_HEADERS,
                black_box(one.as_bytes()),
            )
            .unwrap()
        })
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let config = config();
    let router = Router::new(&config);
    let body = ndjson_body(EVENTS_PER_REQUEST);
    let events = event::decode_body(NDJSON, NO_HEADERS, &body).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.ty()).collect();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(types.len() as u64));
    g.bench_function("1000_types_3_queues", |b| {
        b.iter(|| {
            for ty in &types {
                black_box(router.route(black_box(ty)));
            }
        })
    });
    g.finish();
}

fn ingest_encode(c: &mut Criterion) {
    let config = config();
    let router = Router::new(&config);
    let queues = config.queues.len();
    let body = ndjson_body(EVENTS_PER_REQUEST);
    let mut g = c.benchmark_group("ingest_encode");
    g.throughput(Throughput::Elements(EVENTS_PER_REQUEST as u64));
    g.bench_function("ndjson_1000x250B", |b| {
        b.iter(|| {
            bench_support::encode_request(NDJSON, black_box(&body), &router, queues, 1).unwrap()
        })
    });
    g.finish();
}

/// The stored records of one request as a cursor reads them: slices of one shared buffer.
fn stored_records() -> Vec<bytes::Bytes> {
    let config = config();
    let router = Router::new(&config);
    let body = ndjson_body(EVENTS_PER_REQUEST);
    let per_queue =
        bench_support::encode_request(NDJSON, &body, &router, config.queues.len(), 1).unwrap();
    let mut buf = Vec::new();
    let mut ranges = Vec::new();
    for r in per_queue.iter().flat_map(|q| q.iter()) {
        ranges.push(buf.len()..buf.len() + r.len());
        buf.extend_from_slice(r);
    }
    let shared = bytes::Bytes::from(buf);
    ranges.into_iter().map(|r| shared.slice(r)).collect()
}

fn vrl(c: &mut Criterion) {
    let config = config();
    let mut pipeline = Pipeline::new(&config.pipelines["p"]);
    let records = stored_records();
    let record = &records[0];
    let mut out = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("vrl");
    g.throughput(Throughput::Elements(1));
    g.bench_function("filter_remap_one_event", |b| {
        b.iter(|| {
            out.clear();
            pipeline.apply(black_box(record), &mut out).unwrap()
        })
    });
    g.finish();
}

fn sink(c: &mut Criterion) {
    let config = config();
    let mut pipeline = Pipeline::new(&config.pipelines["p"]);
    let mut ndjson = Vec::new();
    for r in &stored_records() {
        pipeline.apply(r, &mut ndjson).unwrap();
    }
    let lines = ndjson.iter().filter(|&&b| b == b'\n').count();
    let mut g = c.benchmark_group("sink");
    g.throughput(Throughput::Elements(lines as u64));
    g.bench_function("http_json_array_body", |b| {
        b.iter(|| bench_support::http_sink_body(black_box(&ndjson)))
    });
    g.finish();
}

/// Generator (pre-built stored records) → chain → NDJSON buffer → blackhole, as a worker runs a
/// batch: one output buffer per batch, sized from the payloads.
fn run_batch(pipeline: &mut Pipeline, records: &[bytes::Bytes]) -> usize {
    let mut out = Vec::with_capacity(records.iter().map(bytes::Bytes::len).sum());
    let mut emitted = 0;
    for r in records {
        emitted += usize::from(pipeline.apply(r, &mut out).unwrap());
    }
    black_box(bytes::Bytes::from(out)); // the blackhole sink drops it
    emitted
}

fn in_process_pipeline(c: &mut Criterion) {
    let config = config();
    let records = stored_records();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(records.len() as u64));
    let mut pipeline = Pipeline::new(&config.pipelines["p"]);
    g.bench_function("in_process_filter_remap_blackhole", |b| {
        b.iter(|| run_batch(&mut pipeline, black_box(&records)))
    });
    let mut passthrough = config.pipelines["p"].clone();
    passthrough.processors.clear();
    let mut passthrough = Pipeline::new(&passthrough);
    g.bench_function("in_process_passthrough_blackhole", |b| {
        b.iter(|| run_batch(&mut passthrough, black_box(&records)))
    });
    g.finish();
}

criterion_group!(
    benches,
    decoding,
    routing,
    ingest_encode,
    vrl,
    sink,
    in_process_pipeline
);
criterion_main!(benches);
