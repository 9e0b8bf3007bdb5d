//! End to end: the `file` and `stdin` sources of the real binary. Files are written by the test
//! the way applications write logs (appends, partial writes, rotations); what arrives is read
//! from a file sink or the mock HTTP receiver.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::*;

fn line(id: &str) -> String {
    let event = json!({"specversion": "1.0", "id": id, "source": "/app", "type": "app.log", "data": {"msg": format!("hello from {id}")}});
    format!("{event}\n")
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| line(&format!("{prefix}-{i:05}"))).collect()
}

fn append(path: &Path, text: &str) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// A file source over `{dir}/logs/*.ndjson` into a file sink at `{dir}/out/events.ndjson`;
/// `source_extra` is added to the source's table.
fn file_config(dir: &Path, source_extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    config(
        dir,
        &format!(
            r#"
[sources.logs]
type = "file"
include = ["{{dir}}/logs/*.ndjson"]
poll_interval = "50ms"
{source_extra}
[queues.q]
types = ["app.*"]
[pipelines.p]
from = ["q"]
sink = "out"
[sinks.out]
type = "file"
path = "{{dir}}/out/events.ndjson"
"#
        ),
    )
}

/// How many times each id arrived.
fn counts(lines: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for l in lines {
        *counts
            .entry(l["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

fn distinct(lines: &[Value]) -> usize {
    counts(lines).len()
}

fn duplicates(lines: &[Value]) -> usize {
    counts(lines).values().map(|n| n - 1).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_appended_to_a_matching_file_arrive_at_an_http_sink() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            r#"
[sources.logs]
type = "file"
include = ["{{dir}}/logs/**/*.ndjson"]
poll_interval = "50ms"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
sink = "out"
[sinks.out]
type = "http"
url = "{}"
"#,
            receiver.url
        ),
    );
    let engine = Engine::start(&cfg);
    // The directory and the file appear after the engine started.
    let app = dir.path().join("logs/api/app.ndjson");
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();
    append(&app, &lines("a", 0..50));
    // A line written in two parts: nothing of it is read until its newline arrives, and the
    // lines before it flow meanwhile.
    let partial = line("a-partial");
    let (head, tail) = partial.split_at(partial.len() / 2);
    append(&app, head);
    assert!(
        wait_until(async || receiver.delivered_ids().len() >= 50).await,
        "got {}",
        receiver.delivered_ids().len()
    );
    append(&app, tail);
    append(&app, &lines("a", 50..100));
    // A second file interleaves.
    append(&dir.path().join("logs/other.ndjson"), &lines("b", 0..100));
    assert!(
        wait_until(async || receiver.delivered_ids().len() >= 201).await,
        "got {}",
        receiver.delivered_ids().len()
    );
    let ids = receiver.delivered_ids();
    assert!(ids.contains("a-partial") && ids.contains("a-00099") && ids.contains("b-00099"));
    assert!(
        receiver.attempts().values().all(|&n| n == 1),
        "each event delivered once"
    );
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_events_received_total",
            &["source=\"logs\""]
        )
        .await,
        201.0
    );
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_source_files_open",
            &["source=\"logs\""]
        )
        .await,
        2.0
    );
    // The partial line was read whole: `head` + `tail` made one valid event (a torn read
    // would have been rejected).
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_events_rejected_total",
            &["source=\"logs\""]
        )
        .await,
        0.0
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_a_graceful_stop_resumes_without_reading_anything_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path(), "");
    let sink = dir.path().join("out/events.ndjson");
    let (a, b) = (
        dir.path().join("logs/a.ndjson"),
        dir.path().join("logs/b.ndjson"),
    );
    append(&a, &lines("a", 0..1000));
    append(&b, &lines("b", 0..500));
    let engine = Engine::start(&cfg);
    let got = wait_for_sink(&sink, |l| l.len() >= 1500);
    assert_eq!(got.len(), 1500);
    assert!(engine.stop().success(), "clean shutdown exits 0");
    // While stopped: more lines, and a new file.
    append(&a, &lines("a", 1000..1300));
    append(&dir.path().join("logs/c.ndjson"), &lines("c", 0..200));
    let engine = Engine::start(&cfg);
    let got = wait_for_sink(&sink, |l| distinct(l) >= 2000);
    assert_eq!(distinct(&got), 2000);
    // Only the new lines were stored by the restarted engine: nothing was read twice.
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_events_received_total",
            &["source=\"logs\""]
        )
        .await,
        500.0
    );
    assert_eq!(duplicates(&got), 0);
    assert!(engine.stop().success());
    // The checkpoint names every file with its read position.
    let checkpoint =
        std::fs::read_to_string(dir.path().join("data/sources/logs/checkpoints.json")).unwrap();
    for f in ["a.ndjson", "b.ndjson", "c.ndjson"] {
        assert!(checkpoint.contains(f), "{checkpoint}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_delivers_every_line_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path(), "batch_events = 50");
    let sink = dir.path().join("out/events.ndjson");
    let app = dir.path().join("logs/app.ndjson");
    let engine = Engine::start(&cfg);
    // An application writing steadily while the engine is killed under it.
    let writer = {
        let app = app.clone();
        std::thread::spawn(move || {
            for chunk in 0..60 {
                append(&app, &lines("k", chunk * 50..(chunk + 1) * 50));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let got = wait_for_sink(&sink, |l| l.len() >= 1000);
    assert!(got.len() >= 1000);
    engine.kill9();
    writer.join().unwrap();
    let engine = Engine::start(&cfg);
    let got = wait_for_sink(&sink, |l| distinct(l) >= 3000);
    let ids = counts(&got);
    let missing: Vec<String> = (0..3000)
        .map(|i| format!("k-{i:05}"))
        .filter(|id| !ids.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "lost after kill -9: {missing:?}");
    eprintln!(
        "kill -9: {} duplicates among {} lines (the checkpoint's window)",
        duplicates(&got),
        got.len()
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn rename_rotation_and_copytruncate_rotation_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path(), "");
    let sink = dir.path().join("out/events.ndjson");
    let app = dir.path().join("logs/app.ndjson");
    let engine = Engine::start(&cfg);

    // Rename and recreate: the writer still appends to the old file after the rename (its
    // handle), then opens a new one at the path.
    append(&app, &lines("r", 0..500));
    wait_for_sink(&sink, |l| !l.is_empty());
    let rotated = dir.path().join("logs/app.ndjson.1"); // out of the globs
    std::fs::rename(&app, &rotated).unwrap();
    append(&rotated, &lines("r", 500..600));
    append(&app, &lines("r", 600..1100));
    let got = wait_for_sink(&sink, |l| distinct(l) >= 1100);
    assert_eq!(distinct(&got), 1100, "rename rotation lost lines");

    // copytruncate: copy, truncate in place, write on. Once with less than was read (the file
    // is shorter than the read position), once with more (rewritten past it: the first bytes
    // tell).
    let copytruncate = |n: usize| {
        std::fs::copy(&app, dir.path().join(format!("logs/app.ndjson.{n}"))).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&app)
            .unwrap()
            .set_len(0)
            .unwrap();
    };
    copytruncate(2);
    append(&app, &lines("t", 0..100));
    let got = wait_for_sink(&sink, |l| distinct(l) >= 1200);
    assert_eq!(distinct(&got), 1200, "copytruncate lost lines");
    copytruncate(3);
    append(&app, &lines("u", 0..1000));
    let got = wait_for_sink(&sink, |l| distinct(l) >= 2200);
    assert_eq!(distinct(&got), 2200, "copytruncate lost lines");
    assert_eq!(duplicates(&got), 0);
    assert!(
        metric(
            &engine.api,
            "veltrix_source_file_rotations_total",
            &["kind=\"truncate\""]
        )
        .await
            >= 2.0
    );
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_source_file_rotations_total",
            &["kind=\"rename\""]
        )
        .await,
        1.0
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_line_is_skipped_and_counted_and_the_next_lines_flow() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path(), "line_bytes_max = \"1KiB\"");
    let sink = dir.path().join("out/events.ndjson");
    let app = dir.path().join("logs/app.ndjson");
    let log = dir.path().join("engine.log");
    let engine = Engine::start_with(&cfg, &[], Some(&log));
    let unroutable =
        json!({"specversion": "1.0", "id": "x", "source": "/app", "type": "other.thing"});
    let long = line(&format!("long-{}", "x".repeat(2000)));
    append(
        &app,
        &format!(
            "{}{{not json\n{}{{\"specversion\":\"1.0\",\"id\":\"no-type\",\"source\":\"/a\"}}\n{unroutable}\n{long}{}",
            line("g-1"),
            line("g-2"),
            lines("g", 3..100),
        ),
    );
    let got = wait_for_sink(&sink, |l| l.len() >= 99);
    let ids = counts(&got);
    assert_eq!(ids.len(), 99);
    assert!(ids.contains_key("g-1") && ids.contains_key("g-2") && ids.contains_key("g-00099"));
    let rejected = async |reason: &str| {
        metric(
            &engine.api,
            "veltrix_events_rejected_total",
            &["source=\"logs\"", &format!("reason=\"{reason}\"")],
        )
        .await
    };
    assert_eq!(rejected("invalid-event").await, 2.0);
    assert_eq!(rejected("unroutable-events").await, 1.0);
    assert_eq!(rejected("line-too-long").await, 1.0);
    assert!(engine.stop().success());
    // Each skipped line is logged with file:line.
    let text = std::fs::read_to_string(&log).unwrap();
    for n in [2, 4, 5, 6] {
        let at = format!("{}:{n}", app.display());
        assert!(text.contains(&at), "{at} not in the log:\n{text}");
    }
}

/// Runs `veltrix run -c cfg` with `stdin` as its standard input; returns the child, with its
/// stdout and stderr (log at info) in files of `dir`.
fn run_with_stdin(cfg: &Path, dir: &Path, stdin: Stdio) -> std::process::Child {
    Command::new(BIN)
        .args(["run", "-c"])
        .arg(cfg)
        .env("VELTRIX_LOG", "info")
        .stdin(stdin)
        .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .spawn()
        .expect("spawn veltrix")
}

fn wait_exit(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

const STDIN_TOPOLOGY: &str = r#"
[queues.q]
types = ["app.*"]
[pipelines.p]
from = ["q"]
sink = "out"
batch_events_max = 100
[sinks.out]
type = "file"
path = "{dir}/out/events.ndjson"
"#;

#[test]
fn cat_file_into_veltrix_run_delivers_every_event_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("[sources.in]\ntype = \"stdin\"\nbatch_events = 200\n{STDIN_TOPOLOGY}"),
    );
    // 5,000 events, one bad line among them, and a last line without its newline.
    let mut input = lines("s", 0..2);
    input.push_str("{oops\n");
    input.push_str(&lines("s", 2..5000));
    input.push_str(line("s-last").trim_end());
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, &input).unwrap();
    let mut child = run_with_stdin(
        &cfg,
        dir.path(),
        Stdio::from(std::fs::File::open(&events).unwrap()),
    );
    let status = wait_exit(&mut child).expect("veltrix exits by itself at the end of input");
    let stderr = std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap();
    assert!(status.success(), "{status}\n{stderr}");
    // Everything was delivered before the exit: the sink is complete now, no waiting.
    let got = sink_lines(&dir.path().join("out/events.ndjson"));
    assert_eq!(distinct(&got), 5001, "{stderr}");
    assert_eq!(duplicates(&got), 0);
    assert!(counts(&got).contains_key("s-last"));
    assert!(
        stderr.contains("stdin:3"),
        "the bad line is logged:\n{stderr}"
    );
    let stdout = std::fs::read_to_string(dir.path().join("stdout.txt")).unwrap();
    assert!(
        stdout.contains("standard input ended and every event read from it was delivered"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_exit_on_eof_false_the_engine_keeps_running_after_the_end_of_input() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("[sources.in]\ntype = \"stdin\"\nexit_on_eof = false\n{STDIN_TOPOLOGY}"),
    );
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, lines("s", 0..100)).unwrap();
    let mut child = run_with_stdin(
        &cfg,
        dir.path(),
        Stdio::from(std::fs::File::open(&events).unwrap()),
    );
    let got = wait_for_sink(&dir.path().join("out/events.ndjson"), |l| l.len() >= 100);
    assert_eq!(distinct(&got), 100);
    // Still serving after the input ended and was delivered: its HTTP source answers.
    let stdout_path = dir.path().join("stdout.txt");
    let deadline = Instant::now() + PATIENCE;
    let ingest = loop {
        let stdout = std::fs::read_to_string(&stdout_path).unwrap();
        if let Some(url) = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("ingest"))
            .and_then(|l| l.split_whitespace().nth(1))
        {
            break url.to_owned();
        }
        assert!(Instant::now() < deadline, "no banner: {stdout}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let one = json!([{"specversion": "1.0", "id": "after-eof", "source": "/t", "type": "app.x"}]);
    let (status, _) = post(
        &ingest,
        "application/json",
        serde_json::to_vec(&one).unwrap(),
        &[],
    )
    .await;
    assert_eq!(status, 202);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the engine kept running"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_exit(&mut child).expect("stops on SIGTERM").success());
}
