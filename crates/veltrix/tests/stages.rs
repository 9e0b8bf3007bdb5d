//! End-to-end: multi-stage pipelines through the `queue` sink, and the config check that
//! refuses a queue cycle.

use std::collections::HashSet;
use std::process::Command;

use serde_json::{Value, json};

mod support;
use support::*;

/// http → `raw` → pipeline `enrich` (remap) → queue sink → `enriched` → pipeline `store` → file.
const TWO_STAGES: &str = r#"
[queues.raw]
types = ["*"]
[queues.enriched]
types = []
[pipelines.enrich]
from = ["raw"]
workers = 2
processors = [{ type = "remap", source = '.data.stage = "enriched"' }]
sink = "stage2"
[pipelines.store]
from = ["enriched"]
sink = "out"
[sinks.stage2]
type = "queue"
queue = "enriched"
[sinks.out]
type = "file"
path = "{dir}/out/final.ndjson"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn events_go_through_two_stages_into_the_file_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(&config(dir.path(), TWO_STAGES));
    let mut ids = HashSet::new();
    for request in 0..10 {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                let id = format!("e{request}-{i}");
                ids.insert(id.clone());
                json!({"specversion": "1.0", "id": id, "source": "/t", "type": "order.created", "data": {"n": i}})
            })
            .collect();
        let (status, body) =
            post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
        assert_eq!(status, 202, "{body}");
    }
    let sink = dir.path().join("out/final.ndjson");
    let lines = wait_for_sink(&sink, |l| l.len() >= ids.len());
    assert_eq!(lines.len(), ids.len(), "every event arrives, once");
    let arrived: HashSet<String> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["data"]["stage"], "enriched", "the first stage ran: {l}");
            l["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(arrived, ids);
    // Both stages delivered through their own pipelines (the queue sink confirms each batch).
    // The counters move after the sink confirmed, so a line can be in the file first: poll.
    let api = engine.api.clone();
    for pipeline in ["enrich", "store"] {
        let label = format!("pipeline=\"{pipeline}\"");
        let delivered = async || {
            metric(
                &api,
                "veltrix_pipeline_events_total",
                &[&label, "outcome=\"delivered\""],
            )
            .await
        };
        assert!(
            wait_until(async || delivered().await >= 1000.0).await,
            "{pipeline}: {} delivered",
            delivered().await
        );
        assert_eq!(delivered().await, 1000.0, "{pipeline}: each event once");
    }
    // Nothing dead-lettered on the way.
    assert_eq!(
        metric(
            &api,
            "veltrix_pipeline_events_total",
            &["outcome=\"dead_lettered\""]
        )
        .await,
        0.0
    );
    assert!(engine.stop().success());
}

#[test]
fn a_queue_cycle_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    // `store` writes back into `raw`: raw → enrich → enriched → store → raw.
    let cyclic = TWO_STAGES
        .replace("sink = \"out\"", "sink = \"back\"")
        .replace(
            "[sinks.out]",
            "[sinks.back]\ntype = \"queue\"\nqueue = \"raw\"\n[sinks.out]",
        );
    let cfg = config(dir.path(), &cyclic);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let line = text
        .lines()
        .position(|l| l == "queue = \"enriched\"")
        .unwrap()
        + 1;
    for command in [&["validate"][..], &["run", "-c"][..]] {
        let out = Command::new(BIN).args(command).arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{command:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = format!("{stdout}{stderr}");
        let at = format!(
            "{}:{line}:9: error[V012]: pipeline `enrich` writes into queue `enriched`, whose events come back to pipeline `enrich` through pipeline(s) `store`: a cycle",
            cfg.display()
        );
        assert!(report.contains(&at), "{command:?}:\n{report}");
    }
}
