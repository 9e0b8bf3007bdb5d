//! `veltrix validate` end to end: `--format json`, `--check-data` on a damaged queue log and
//! `--check-connections` against a closed port, through the real binary.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use veltrix_log::{Log, LogOptions};

const BIN: &str = env!("CARGO_BIN_EXE_veltrix");

/// Runs `veltrix validate --format json ARGS… FILE`: the exit code and the document.
fn validate_json(file: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(BIN)
        .args(["validate", "--format", "json"])
        .args(args)
        .arg(file)
        .output()
        .expect("run veltrix");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc)
}

/// `(code, severity, line, col)` of every diagnostic of the only file.
fn findings(doc: &Value) -> Vec<(String, String, u64, u64)> {
    doc["files"][0]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap_or("-").to_owned(),
                d["severity"].as_str().unwrap().to_owned(),
                d["line"].as_u64().unwrap(),
                d["col"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("veltrix.toml");
    let data = dir.join("data");
    std::fs::write(
        &path,
        format!("data_dir = {:?}\n{body}", data.display().to_string()),
    )
    .unwrap();
    path
}

const TOPOLOGY: &str = r#"
[queues.default]
types = ["*"]
max_bytes = "64MiB"

[pipelines.main]
from = ["default"]
sink = "out"

[sinks.out]
type = "blackhole"
"#;

#[test]
fn json_lists_every_file_with_its_validity_and_coded_diagnostics() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write_config(
        tmp.path(),
        &format!("{TOPOLOGY}[sinks.spare]\ntype = \"stdout\"\n"),
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[queues.q]\ntypes = [\"*\"]\nprority = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--format", "json"])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "one invalid file → 78");
    assert!(out.stderr.is_empty(), "JSON mode keeps stderr quiet");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["file"], good.display().to_string());
    assert_eq!(files[0]["valid"], true);
    let warning = &files[0]["diagnostics"][0];
    assert_eq!(warning["code"], "V030");
    assert_eq!(warning["severity"], "warning");
    assert_eq!(
        (warning["line"].as_u64(), warning["col"].as_u64()),
        (Some(13), Some(8))
    );
    assert_eq!(warning["file"], good.display().to_string());
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("no pipeline writes to sink `spare`")
    );
    assert_eq!(files[1]["valid"], false);
    let error = &files[1]["diagnostics"][0];
    assert_eq!(error["code"], "V004");
    assert_eq!(error["severity"], "error");
    assert_eq!(
        (error["line"].as_u64(), error["col"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(error["hint"], "did you mean `priority`?");

    // Text mode: the code in the header line; a valid file with warnings exits 0.
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let header = format!("{}:13:8: warning[V030]: ", good.display());
    assert!(stderr.contains(&header), "{stderr}");
}

#[tokio::test]
async fn check_data_reports_a_damaged_queue_log_as_an_error_at_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), TOPOLOGY);
    let (code, doc) = validate_json(&config, &["--check-data"]);
    assert_eq!(
        (code, findings(&doc)),
        (Some(0), vec![]),
        "no data yet: {doc:#}"
    );

    // Write the queue's log, then an orphaned queue and a dead-letter queue with an entry.
    let queues = tmp.path().join("data/queues");
    let record = br#"{"specversion":"1.0","id":"1","source":"/t","type":"t"}"#.to_vec();
    for name in ["default", "gone", "main.dlq"] {
        let (log, _) = Log::open(queues.join(name), LogOptions::default()).unwrap();
        let records = vec![record.clone(); 3];
        log.append_batch(&records).unwrap().await.unwrap();
        log.close().unwrap();
    }
    let (code, doc) = validate_json(&config, &["--check-data"]);
    assert_eq!(code, Some(0), "{doc:#}");
    let found = findings(&doc);
    assert_eq!(
        found,
        [
            ("V046".into(), "warning".into(), 1, 12),
            ("V045".into(), "warning".into(), 7, 12),
        ],
        "{doc:#}"
    );

    // Flip a byte inside the second record of `default`.
    let segment = std::fs::read_dir(queues.join("default"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    let frame = 16 + record.len();
    bytes[frame + 20] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let (code, doc) = validate_json(&config, &["--check-data"]);
    assert_eq!(
        code,
        Some(78),
        "damage makes the config check fail: {doc:#}"
    );
    assert_eq!(doc["files"][0]["valid"], false);
    let damaged = &doc["files"][0]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "V043")
        .unwrap_or_else(|| panic!("no V043 in {doc:#}"))
        .clone();
    assert_eq!(damaged["severity"], "error");
    assert_eq!(
        (damaged["line"].as_u64(), damaged["col"].as_u64()),
        (Some(3), Some(9))
    );
    assert!(
        damaged["message"]
            .as_str()
            .unwrap()
            .contains("1 damaged range(s), 1 record(s) lost"),
        "{damaged:#}"
    );

    // Without the flag the data is not looked at.
    let (code, doc) = validate_json(&config, &[]);
    assert_eq!((code, findings(&doc)), (Some(0), vec![]));
}

#[test]
fn check_connections_warns_about_an_http_sink_on_a_closed_port() {
    // A port that was just free: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        &format!(
            r#"
[queues.default]
types = ["*"]
max_bytes = "64MiB"

[pipelines.down]
from = ["default"]
sink = "closed"

[pipelines.up]
from = ["default"]
sink = "listening"

[sinks.closed]
type = "http"
url = "http://127.0.0.1:{port}/events"

[sinks.listening]
type = "http"
url = "http://127.0.0.1:{open_port}/events"
"#
        ),
    );
    let (code, doc) = validate_json(&config, &["--check-connections"]);
    assert_eq!(code, Some(0), "unreachable is a warning: {doc:#}");
    assert_eq!(
        findings(&doc),
        [("V042".into(), "warning".into(), 17, 7)],
        "{doc:#}"
    );
    let message = doc["files"][0]["diagnostics"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("sink `closed` cannot be reached"),
        "{message}"
    );
    let (_, doc) = validate_json(&config, &[]);
    assert_eq!(findings(&doc), vec![], "only with the flag");
    drop(open);
}

#[test]
fn max_bytes_above_the_free_disk_of_a_data_dir_not_created_yet_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("veltrix.toml");
    let data = tmp.path().join("not/yet/there");
    // 1 EiB: more than any test machine's free disk.
    let body = TOPOLOGY.replace("\"64MiB\"", "\"1048576TiB\"");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n{body}", data.display().to_string()),
    )
    .unwrap();
    let (code, doc) = validate_json(&config, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(
        findings(&doc),
        [("V040".into(), "warning".into(), 5, 13)],
        "{doc:#}"
    );
    let message = doc["files"][0]["diagnostics"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains(&tmp.path().display().to_string()),
        "measured at the nearest existing ancestor: {message}"
    );
    assert!(!data.exists(), "validate creates nothing");
}
