//! Bit rot and truncation in a stopped engine's queue files, end to end with the real binary:
//! fill a queue while its sink is down, stop the engine, damage the segment files and the cursor
//! ledger, restart with the sink up. Every damaged record is detected (checksums) and never
//! delivered, the torn tail is cut, mid-log damage is skipped and counted in the metrics, and
//! every intact event is still delivered.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use veltrix_log::frame::HEADER_BYTES;

mod support;
use support::*;

/// 11 full segments of 136 records and a tail of 64.
const EVENTS: usize = 1560;

/// One stored record: which file, where, and the id of the event in it.
struct Stored {
    file: PathBuf,
    range: std::ops::Range<usize>,
    id: String,
}

/// Every record of the queue's segment files, by offset (the files are intact here).
fn layout(queue_dir: &Path) -> BTreeMap<u64, Stored> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(queue_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let mut pos = 0;
        while pos < bytes.len() {
            let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
            let offset = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
            let end = pos + HEADER_BYTES + len;
            let (_, body) = veltrix_engine::record::split(&bytes[pos + HEADER_BYTES..end]);
            let event: Value = serde_json::from_slice(body).unwrap();
            out.insert(
                offset,
                Stored {
                    file: file.clone(),
                    range: pos..end,
                    id: event["id"].as_str().unwrap().to_owned(),
                },
            );
            pos = end;
        }
    }
    out
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: usize) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len as u64)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_queue_files_are_detected_counted_and_every_intact_event_still_delivered() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let topology = format!(
        r#"
[queues.q]
types = ["*"]
segment_bytes = "32KiB"
[pipelines.p]
from = ["q"]
batch_events_max = 50
retry = {{ attempts_max = 1000, backoff_initial = "20ms", backoff_max = "200ms" }}
sink = "downstream"
[sinks.downstream]
type = "http"
url = "{}"
timeout = "5s"
"#,
        receiver.url
    );
    let config = config(dir.path(), &topology);
    let engine = Engine::start(&config);
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("rot-{i:05}")).collect();
    for chunk in ids.chunks(250) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"specversion": "1.0", "id": id, "source": "/test", "type": "order.created", "data": {"pad": "x".repeat(120)}}))
            .collect();
        let (status, body) =
            post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
        assert_eq!(status, 202, "{body}");
    }
    // The sink refuses everything, so nothing is acknowledged before the stop.
    assert!(engine.stop().success());
    assert!(receiver.delivered().is_empty());

    let queue_dir = dir.path().join("data/queues/q");
    let records = layout(&queue_dir);
    assert_eq!(records.len(), EVENTS);
    let segments: Vec<PathBuf> = {
        let mut s: Vec<PathBuf> = records.values().map(|r| r.file.clone()).collect();
        s.dedup();
        s
    };
    assert!(segments.len() >= 5, "{segments:?}");
    let in_segment = |file: &Path| -> Vec<u64> {
        records
            .iter()
            .filter(|(_, r)| r.file == file)
            .map(|(o, _)| *o)
            .collect()
    };
    let mut damaged: HashSet<u64> = HashSet::new();
    // Bit rot in a sealed segment: one byte in the payload of a record in its middle.
    let first = in_segment(&segments[1]);
    let victim = first[first.len() / 2];
    flip(
        &segments[1],
        records[&victim].range.start + HEADER_BYTES + 20,
    );
    damaged.insert(victim);
    // A header byte (the length) of another sealed segment's record.
    let second = in_segment(&segments[2]);
    let victim = second[second.len() / 3];
    flip(&segments[2], records[&victim].range.start + 5);
    damaged.insert(victim);
    // A sealed segment cut short: its last records are gone.
    let third = in_segment(&segments[3]);
    let cut_from = third[third.len() - 3];
    truncate(&segments[3], records[&cut_from].range.start + 7);
    damaged.extend(third[third.len() - 3..].iter().copied());
    // Bit rot in the middle of the tail segment, and its last write torn.
    let tail = segments.last().unwrap();
    let last = in_segment(tail);
    // Damage with no valid record after it would be a torn tail: keep intact records between.
    assert!(last.len() >= 8, "the tail holds {} records", last.len());
    let victim = last[last.len() / 2];
    flip(tail, records[&victim].range.start + HEADER_BYTES + 3);
    damaged.insert(victim);
    let torn = *last.last().unwrap();
    truncate(tail, records[&torn].range.end - 10);
    damaged.insert(torn);
    // And the cursor ledger: the pipeline must restart at the oldest event.
    let ledger = queue_dir.join("cursors.ledger");
    flip(
        &ledger,
        std::fs::metadata(&ledger).unwrap().len() as usize / 2,
    );

    let damaged_ids: HashSet<String> = damaged.iter().map(|o| records[o].id.clone()).collect();
    let intact: HashSet<String> = ids
        .iter()
        .filter(|id| !damaged_ids.contains(*id))
        .cloned()
        .collect();
    receiver.set_mode(Mode::Accept);
    let log_file = dir.path().join("engine.log");
    let engine = Engine::start_with(&config, &[], Some(&log_file));
    assert!(
        wait_until(async || receiver.delivered_ids().len() >= intact.len()).await,
        "every intact event delivered: {} of {}",
        receiver.delivered_ids().len(),
        intact.len()
    );
    let api = engine.api.clone();
    // Skipped records are counted once the reader has passed them: all of it but the torn one.
    let skipped = (damaged.len() - 1) as f64;
    assert!(
        wait_until(async || metric(
            &api,
            "veltrix_queue_quarantined_events_total",
            &["queue=\"q\""]
        )
        .await
            == skipped)
        .await,
        "quarantined: {}",
        metric(
            &api,
            "veltrix_queue_quarantined_events_total",
            &["queue=\"q\""]
        )
        .await
    );
    let delivered = receiver.delivered_ids();
    assert_eq!(delivered, intact, "exactly the intact events, none damaged");
    assert!(
        metric(
            &api,
            "veltrix_queue_torn_tail_bytes_total",
            &["queue=\"q\""]
        )
        .await
            > 0.0
    );
    assert_eq!(
        metric(&api, "veltrix_queue_cursor_resets_total", &["queue=\"q\""]).await,
        1.0
    );
    assert!(engine.stop().success());
    let log = std::fs::read_to_string(&log_file).unwrap();
    let recovered = log
        .lines()
        .find(|l| l.contains("queue recovered") && l.contains("queue=q"))
        .unwrap_or_else(|| panic!("a recovery line in {log}"));
    assert!(recovered.contains("checksum mismatch"), "{recovered}");
    eprintln!("{recovered}");
}
