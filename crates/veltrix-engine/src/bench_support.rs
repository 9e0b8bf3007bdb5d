//! Entry points for the benchmarks in `benches/` — for benches, not a stable API.
//!
//! Each function is a thin wrapper over the code the engine runs, so `cargo bench -p
//! veltrix-engine` measures the real hot path: the ingest encoding ([`encode_request`]: decode,
//! route, stored form, exactly as `POST /v1/events` does before appending), a pipeline's
//! processor chain ([`Pipeline`]: what a worker runs per record) and the http sink's body
//! ([`http_sink_body`]). Nothing here is used by the engine itself.

use std::sync::Arc;

use bytes::Bytes;
use veltrix_core::config::{PipelineConfig, Router};
use veltrix_core::event::{self, DecodeError};

pub use crate::ingest::QueueRecords;
use crate::processors::{Chain, Input, Outcome, Output, Scratch, SystemClock};
use crate::record;

/// Ingest's pure part for one request body: `decode_body_ref`, routing, and the stored form of every
/// event, grouped per queue (`queues` is the number of queues the router knows). No headers
/// (structured and batch modes need none). The error is the request's problem in one line.
pub fn encode_request(
    content_type: &str,
    body: &[u8],
    router: &Router,
    queues: usize,
    accepted_at: u64,
) -> Result<Vec<QueueRecords>, String> {
    let no_headers: &[(&str, &str)] = &[];
    let events = event::decode_body_ref(content_type, no_headers, body).map_err(|e| match e {
        DecodeError::Invalid(errors) => format!("{} invalid event(s)", errors.len()),
        other => other.to_string(),
    })?;
    crate::ingest::store_routed(&events, router, queues, accepted_at)
        .map_err(|unroutable| format!("{} unroutable event(s)", unroutable.len()))
}

/// Appends the stored record of `event` accepted at `accepted_at`, as ingest writes it.
pub fn store(event: &event::Event, accepted_at: u64, out: &mut Vec<u8>) {
    record::write_event(out, accepted_at, &event.into(), &mut Vec::new());
}

/// A pipeline's processor chain with a worker's scratch space (VRL runtime included).
pub struct Pipeline {
    chain: Chain,
    scratch: Scratch,
    output: Output,
}

impl Pipeline {
    /// The chain a worker of `pipeline` runs.
    pub fn new(pipeline: &PipelineConfig) -> Pipeline {
        let chain = Chain::new(
            "bench",
            pipeline,
            &crate::handler::Plugins::new(),
            Arc::new(SystemClock),
        )
        .expect("built-in processors always build");
        Pipeline {
            scratch: chain.scratch(),
            output: Output::new(chain.sinks()),
            chain,
        }
    }

    /// Runs the chain on one stored record (prefix + JSON) as a worker does, appending the
    /// delivered NDJSON line to `out` (the first sink's part). `Ok(true)`: emitted;
    /// `Ok(false)`: dropped; `Err`: the event would be dead-lettered, with why.
    pub fn apply(&mut self, stored: &Bytes, out: &mut Vec<u8>) -> Result<bool, String> {
        let parts = record::parts(stored);
        let input = Input {
            owner: Some(stored),
            body: parts.body,
            members: parts.members,
            index: 0,
            ack: None,
        };
        // The caller's buffer is the part for the duration of the call: no copy.
        let part = &mut self.output.parts[0];
        std::mem::swap(&mut part.ndjson, out);
        part.ends.clear();
        part.owners.clear();
        let outcome = self
            .chain
            .apply(&input, &mut self.scratch, &mut self.output);
        std::mem::swap(&mut self.output.parts[0].ndjson, out);
        match outcome {
            Outcome::Emitted(_) => Ok(true),
            Outcome::Filtered { .. } | Outcome::Aggregated => Ok(false),
            Outcome::DeadLetter { error, .. } => Err(error),
        }
    }
}

/// The body the http sink POSTs for a batch of NDJSON lines: one JSON array.
pub fn http_sink_body(ndjson: &[u8]) -> Vec<u8> {
    let lines = ndjson.iter().filter(|b| **b == b'\n').count();
    crate::handler::Batch::new(bytes::Bytes::copy_from_slice(ndjson), lines).to_json_array()
}
