//! `veltrix queue inspect` end to end: a queue written through `veltrix-log` on the real
//! filesystem, inspected by the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use veltrix_log::{Log, LogOptions};

const BIN: &str = env!("CARGO_BIN_EXE_veltrix");

/// A stored CloudEvent (the compact structured form the engine writes); `time` when given.
fn event(i: u64, time: Option<&str>) -> Vec<u8> {
    let time = time.map_or(String::new(), |t| format!(",\"time\":\"{t}\""));
    format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{i}\",\"source\":\"/test\",\"type\":\"order.created\"{time},\"data\":{{\"n\":{i}}}}}"
    )
    .into_bytes()
}

/// How the test stores its records.
#[derive(Clone, Copy)]
enum Stored<'a> {
    /// The JSON alone; the oldest event has this `time` attribute, if any.
    Json { first_time: Option<&'a str> },
    /// The engine's form: `[accepted_at: u64 LE µs]` then the JSON.
    AcceptedAt { micros: u64 },
}

/// Writes `<data>/queues/default` with 50 events over several segments and two cursors:
/// `archive` acknowledged the first 20, `audit` nothing.
async fn write_queue(data: &Path, stored: Stored<'_>) -> PathBuf {
    let dir = data.join("queues").join("default");
    let opts = LogOptions {
        segment_bytes: 2048,
        record_bytes_max: 1024,
        ..LogOptions::default()
    };
    let (log, _) = Log::open(&dir, opts).expect("open");
    let events: Vec<Vec<u8>> = (0..50)
        .map(|i| match stored {
            Stored::Json { first_time } => event(i, if i == 0 { first_time } else { None }),
            Stored::AcceptedAt { micros } => {
                let mut record = micros.to_le_bytes().to_vec();
                record.extend(event(i, None));
                record
            }
        })
        .collect();
    log.append_batch(&events)
        .expect("accepted")
        .await
        .expect("durable");
    let mut archive = log.cursor("archive").expect("cursor");
    let audit = log.cursor("audit").expect("cursor");
    let mut acked = Vec::new();
    while acked.len() < 20 {
        // A batch never spans segments, so this takes a few reads.
        let read = archive
            .try_read_batch(20 - acked.len(), 1 << 20)
            .expect("read");
        let offsets: Vec<u64> = read.iter().map(|r| r.offset).collect();
        archive.acker().ack_many(&offsets).expect("ack");
        acked.extend(offsets);
    }
    assert_eq!(acked, (0..20).collect::<Vec<_>>());
    drop((archive, audit));
    log.close().expect("close");
    dir
}

fn inspect(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["queue", "inspect"])
        .args(args)
        .output()
        .expect("run veltrix")
}

fn inspect_json(data: &Path) -> (Option<i32>, Value) {
    let out = inspect(&["--data-dir", data.to_str().unwrap(), "--json"]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

#[tokio::test]
async fn inspect_reports_segments_lag_and_integrity_then_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_queue(
        tmp.path(),
        Stored::Json {
            first_time: Some("2020-01-01T00:00:00Z"),
        },
    )
    .await;

    let (code, doc) = inspect_json(tmp.path());
    assert_eq!(code, Some(0), "{doc:#}");
    let queues = doc["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 1);
    let q = &queues[0];
    assert_eq!(q["name"], "default");
    assert_eq!(q["clean"], true);

    let segments = q["segments"].as_array().unwrap();
    assert!(segments.len() >= 2, "several segments: {segments:?}");
    assert_eq!(segments[0]["base_offset"], 0);
    let mut total = 0;
    for s in segments {
        let path = PathBuf::from(s["path"].as_str().unwrap());
        assert_eq!(path.parent().unwrap(), dir);
        let bytes = std::fs::metadata(&path).unwrap().len();
        assert_eq!(s["bytes"], bytes);
        total += bytes;
    }
    assert_eq!(q["bytes"], total);

    assert_eq!(q["events"]["first_offset"], 0);
    assert_eq!(q["events"]["next_offset"], 50);
    assert_eq!(q["events"]["retained"], 50);

    let mut cursors: Vec<(String, u64, u64)> = q["cursors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["committed_offset"].as_u64().unwrap(),
                c["lag"].as_u64().unwrap(),
            )
        })
        .collect();
    cursors.sort();
    assert_eq!(
        cursors,
        [("archive".into(), 20, 30), ("audit".into(), 0, 50)]
    );

    let age = &q["oldest_event_age"];
    assert_eq!(age["source"], "event_time");
    assert_eq!(age["lower_bound"], false);
    assert_eq!(age["offset"], 0);
    assert!(
        age["seconds"].as_f64().unwrap() > 4.0 * 365.0 * 86400.0,
        "{age}"
    );

    let integrity = &q["integrity"];
    assert_eq!(integrity["records_ok"], 50);
    assert_eq!(integrity["damaged"], Value::Array(vec![]));
    assert_eq!(integrity["ledger_error"], Value::Null);
    assert_eq!(integrity["torn_tail"], Value::Null);

    // The human form: a table per queue, same exit code.
    let out = inspect(&["--data-dir", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("queue default"), "{text}");
    assert!(text.contains("50 retained (offsets 0..50)"), "{text}");
    assert!(
        text.contains("integrity    ok: 50 record(s) checked"),
        "{text}"
    );
    let archive = text.lines().find(|l| l.contains("archive")).unwrap();
    assert_eq!(
        archive.split_whitespace().collect::<Vec<_>>(),
        ["archive", "20", "30"]
    );

    // Flip a byte inside the second record of the first segment.
    let first = PathBuf::from(segments[0]["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&first).unwrap();
    let frame0 = 16 + event(0, Some("2020-01-01T00:00:00Z")).len();
    let frame1 = 16 + event(1, None).len();
    bytes[frame0 + 20] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();

    let (code, doc) = inspect_json(tmp.path());
    assert_eq!(code, Some(1), "damage → exit 1: {doc:#}");
    let q = &doc["queues"][0];
    assert_eq!(q["clean"], false);
    assert_eq!(q["integrity"]["records_ok"], 49);
    let damaged = q["integrity"]["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(damaged[0]["segment"], 0);
    assert_eq!(damaged[0]["byte_start"], frame0);
    assert_eq!(damaged[0]["byte_end"], frame0 + frame1);
    assert_eq!(damaged[0]["records"], 1);
    assert_eq!(q["events"]["next_offset"], 50);

    let out = inspect(&["--data-dir", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "damaged: segment 0 bytes {frame0}..{} (1 record(s) lost)",
            frame0 + frame1
        )),
        "{text}"
    );
}

#[tokio::test]
async fn without_an_event_time_the_age_is_a_lower_bound_from_the_segment() {
    let tmp = tempfile::tempdir().unwrap();
    write_queue(tmp.path(), Stored::Json { first_time: None }).await;
    let (code, doc) = inspect_json(tmp.path());
    assert_eq!(code, Some(0));
    let age = &doc["queues"][0]["oldest_event_age"];
    assert_eq!(age["source"], "segment_mtime");
    assert_eq!(age["lower_bound"], true);
    let seconds = age["seconds"].as_f64().unwrap();
    assert!((0.0..3600.0).contains(&seconds), "{age}");
}

#[tokio::test]
async fn the_age_comes_from_the_accepted_at_prefix_when_records_have_one() {
    let tmp = tempfile::tempdir().unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let micros = hour_ago.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    write_queue(tmp.path(), Stored::AcceptedAt { micros }).await;
    let (code, doc) = inspect_json(tmp.path());
    assert_eq!(code, Some(0), "{doc:#}");
    let age = &doc["queues"][0]["oldest_event_age"];
    assert_eq!(age["source"], "accepted_at");
    assert_eq!(age["lower_bound"], false);
    let seconds = age["seconds"].as_f64().unwrap();
    assert!((3600.0..3700.0).contains(&seconds), "{age}");
}

#[test]
fn a_missing_queue_exits_1_and_an_invalid_config_exits_78() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("queues")).unwrap();
    let out = inspect(&["--data-dir", tmp.path().to_str().unwrap(), "nope", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["queues"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no queue `nope`"),
        "{doc}"
    );

    let out = inspect(&["--data-dir", tmp.path().join("absent").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));

    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "data_dir = 42\n").unwrap();
    let out = inspect(&["-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
}

#[tokio::test]
async fn the_data_dir_comes_from_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_queue(&data, Stored::Json { first_time: None }).await;
    let config = tmp.path().join("veltrix.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n", data.to_str().unwrap()),
    )
    .unwrap();
    let out = inspect(&["-c", config.to_str().unwrap(), "default", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["queues"][0]["events"]["next_offset"], 50);
}
