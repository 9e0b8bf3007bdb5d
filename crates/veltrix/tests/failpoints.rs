//! The real binary crashed (abort) between a sink's confirmation and the acknowledgement to the
//! queue — the engine's `veltrix-engine/pipeline/delivered-before-ack` failpoint, armed through
//! `FAILPOINTS` (feature `failpoints`, on under `--all-features`). Each cycle starts the engine,
//! sends events and waits for the crash; a last start without the failpoint drains the queue.
//! Every event must reach the sink at least once, and the batch in flight at each crash is
//! delivered again (at-least-once, never at-most-once).
//!
//! Cycles: `VELTRIX_FAULT_ENGINE_CRASHES` (default 8).
#![cfg(feature = "failpoints")]

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

mod support;
use support::*;

const POINT: &str = "veltrix-engine/pipeline/delivered-before-ack";

/// `veltrix run` with `FAILPOINTS` set.
fn start_armed(config: &Path, failpoints: &str) -> Engine {
    Engine::start_with_env(config, &[("FAILPOINTS", failpoints)])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_sink_confirmation_and_ack_redelivers_and_loses_nothing() {
    let cycles = std::env::var("VELTRIX_FAULT_ENGINE_CRASHES")
        .ok()
        .map_or(8, |v| v.parse::<usize>().expect("a whole number"));
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
batch_events_max = 10
retry = {{ attempts_max = 1000, backoff_initial = "5ms", backoff_max = "50ms" }}
sink = "downstream"
[sinks.downstream]
type = "http"
url = "{}"
timeout = "5s"
"#,
            receiver.url
        ),
    );
    let mut sent = Vec::new();
    for cycle in 0..cycles {
        // The sink is down while the events go in, so the crash comes after they are
        // acknowledged (202) and at a known batch: the (n+1)-th the sink confirms.
        receiver.set_mode(Mode::Fail);
        let n = cycle % 3;
        let mut engine = start_armed(&config, &format!("{POINT}={n}*off->return"));
        let events: Vec<Value> = (0..40)
            .map(|i| {
                let id = format!("c{cycle:02}-{i:02}");
                sent.push(id.clone());
                json!({"specversion": "1.0", "id": id, "source": "/test", "type": "order.created"})
            })
            .collect();
        let (status, body) =
            post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
        assert_eq!(status, 202, "{body}");
        receiver.set_mode(Mode::Accept);
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = engine.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: the failpoint never fired"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(
            status.signal(),
            Some(6),
            "cycle {cycle}: aborted at the failpoint"
        );
    }
    // A clean start delivers what is left.
    let engine = Engine::start(&config);
    assert!(
        wait_until(async || sent.iter().all(|id| receiver.delivered_ids().contains(id))).await,
        "every acknowledged event reaches the sink"
    );
    assert!(engine.stop().success());
    let mut copies: HashMap<String, usize> = HashMap::new();
    for (id, _) in receiver.delivered() {
        *copies.entry(id).or_default() += 1;
    }
    let lost: Vec<&String> = sent.iter().filter(|id| !copies.contains_key(*id)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    let duplicated = copies.values().filter(|&&n| n > 1).count();
    let deliveries: usize = copies.values().sum();
    // Each crash wastes the delivery of the batch it confirmed but never acknowledged.
    assert!(
        deliveries >= sent.len() + cycles,
        "each crash's confirmed batch is delivered again: {deliveries} deliveries of {} events",
        sent.len()
    );
    eprintln!(
        "engine crash between sink confirmation and ack: {cycles} crashes, {} events acknowledged, 0 lost, {duplicated} delivered more than once, {} deliveries",
        sent.len(),
        deliveries
    );
}
