//! End-to-end: the real `veltrix` binary, started on port 0 in a temp dir, driven over HTTP.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::*;

const ORDERS: &str = r#"
[queues.critical]
types = ["payment.*"]
priority = 0
[queues.default]
types = ["*"]
[pipelines.archive]
from = ["critical", "default"]
workers = 2
processors = [
  { type = "filter", condition = '.type != "debug.ping"' },
  { type = "remap", source = '.data.total = int!(.data.amount) * int!(.data.qty)' },
]
sink = "archive"
[sinks.archive]
type = "file"
path = "{dir}/out/archive.ndjson"
"#;

fn event(id: &str, ty: &str, amount: i64) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": ty, "data": {"amount": amount, "qty": 3}})
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_in_mixed_content_types_arrive_once_remapped_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(&config(dir.path(), ORDERS));
    let mut expected = HashMap::new();
    let mut pings = HashSet::new();
    let mut n = 0;
    let mut next = |ty_cycle: usize| {
        n += 1;
        let id = format!("e{n:05}");
        let ty = match ty_cycle % 10 {
            0 => "debug.ping",
            1 | 2 => "payment.captured",
            _ => "order.created",
        };
        (id, ty, n as i64)
    };
    let mut sent = 0;
    let mut request = 0;
    while sent < 10_000 {
        request += 1;
        let kind = request % 5;
        let size = if kind >= 3 { 1 } else { 100 };
        let events: Vec<Value> = (0..size)
            .map(|i| {
                let (id, ty, amount) = next(i + request);
                if ty == "debug.ping" {
                    pings.insert(id.clone());
                } else {
                    expected.insert(id.clone(), amount * 3);
                }
                event(&id, ty, amount)
            })
            .collect();
        sent += events.len();
        let (status, body) = match kind {
            0..=3 => {
                let (content_type, body) = match kind {
                    0 => ("application/x-ndjson", ndjson(&events)),
                    1 => (
                        "application/cloudevents-batch+json",
                        serde_json::to_vec(&events).unwrap(),
                    ),
                    2 => ("application/json", serde_json::to_vec(&events).unwrap()),
                    _ => (
                        "application/cloudevents+json; charset=utf-8",
                        serde_json::to_vec(&events[0]).unwrap(),
                    ),
                };
                post(&engine.ingest, content_type, body, &[]).await
            }
            _ => {
                let e = &events[0];
                let headers = [
                    ("ce-specversion", "1.0"),
                    ("ce-id", e["id"].as_str().unwrap()),
                    ("ce-source", "/test"),
                    ("ce-type", e["type"].as_str().unwrap()),
                ];
                post(
                    &engine.ingest,
                    "application/json",
                    serde_json::to_vec(&e["data"]).unwrap(),
                    &headers,
                )
                .await
            }
        };
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], events.len());
    }
    let sink = dir.path().join("out/archive.ndjson");
    let lines = wait_for_sink(&sink, |l| l.len() >= expected.len());
    let mut seen = HashSet::new();
    for line in &lines {
        let id = line["id"].as_str().unwrap().to_owned();
        assert!(!pings.contains(&id), "filtered event {id} reached the sink");
        assert_eq!(
            line["data"]["total"], expected[&id],
            "remap applied to {id}"
        );
        assert!(seen.insert(id.clone()), "{id} delivered twice");
    }
    assert_eq!(seen.len(), expected.len(), "every event exactly once");
    assert!(engine.stop().success(), "clean shutdown exits 0");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_posting_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ORDERS);
    let sink = dir.path().join("out/archive.ndjson");
    let mut acknowledged = HashSet::new();
    let mut rejected = HashSet::new();
    let mut serial = 0u64;
    for round in 0..3 {
        let engine = Engine::start(&cfg);
        let url = engine.ingest.clone();
        // Posters run until the engine dies under them.
        let mut posters = Vec::new();
        let progress = Arc::new(AtomicUsize::new(0));
        for poster in 0..4 {
            let url = url.clone();
            let first = serial + poster * 1_000_000;
            let progress = progress.clone();
            posters.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut refused = Vec::new();
                for batch in 0u64.. {
                    let ids: Vec<String> = (0..50)
                        .map(|i| format!("r{round}-{}", first + batch * 50 + i))
                        .collect();
                    let bad = batch % 7 == 3; // one invalid event makes the whole request a 400
                    let events: Vec<Value> = ids
                        .iter()
                        .enumerate()
                        .map(|(i, id)| {
                            if bad && i == 25 {
                                json!({"specversion": "1.0", "id": id, "source": "/t"})
                            } else {
                                event(id, "order.created", 1)
                            }
                        })
                        .collect();
                    let response = client()
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(ndjson(&events))
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status() == 202 => {
                            progress.fetch_add(ids.len(), Ordering::Relaxed);
                            acked.extend(ids);
                        }
                        Ok(r) => {
                            assert_eq!(r.status(), 400);
                            refused.extend(ids);
                        }
                        Err(_) => break, // the engine was killed mid-request: outcome unknown
                    }
                }
                (acked, refused)
            }));
        }
        // Let the posters get going (1,000 events acknowledged this round), then kill at a
        // moment no one chose precisely: requests are in flight on four connections.
        let deadline = Instant::now() + PATIENCE;
        while progress.load(Ordering::Relaxed) < 1000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        engine.kill9();
        for p in posters {
            let (acked, refused) = p.await.unwrap();
            acknowledged.extend(acked);
            rejected.extend(refused);
        }
        serial += 10_000_000;
    }
    let engine = Engine::start(&cfg);
    let lines = wait_for_sink(&sink, |lines| {
        let ids: HashSet<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
        acknowledged.iter().all(|id| ids.contains(id.as_str()))
    });
    let ids: HashSet<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(
        acknowledged.len() > 1000,
        "the test posted enough: {}",
        acknowledged.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let leaked: Vec<&String> = rejected
        .iter()
        .filter(|id| ids.contains(id.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "events of rejected requests reached the sink: {leaked:?}"
    );
    println!(
        "kill -9 ×3: {} acknowledged, 0 lost, {} sink lines ({} duplicates from redelivery)",
        acknowledged.len(),
        lines.len(),
        lines.len() - ids.len()
    );
    assert!(engine.stop().success());
}

/// One check per boundary: a request answered with `status` and a problem+json body whose
/// `errors` name exactly `indices`.
async fn check_problem(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    status: u16,
    indices: &[usize],
) -> Value {
    let response = client()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(problem["status"], status);
    assert!(
        problem["title"].is_string()
            && problem["detail"].is_string()
            && problem["type"].is_string()
    );
    let got: Vec<u64> = problem["errors"]
        .as_array()
        .map(|a| a.iter().map(|e| e["index"].as_u64().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(
        got,
        indices.iter().map(|i| *i as u64).collect::<Vec<_>>(),
        "{problem}"
    );
    problem
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_its_status_and_problem_details_and_reaches_no_sink() {
    let dir = tempfile::tempdir().unwrap();
    let topology = r#"
[queues.audit]
types = ["audit.*"]
[queues.orders]
types = ["order.*"]
max_events = 20
[pipelines.archive]
from = ["audit", "orders"]
sink = "archive"
[sinks.archive]
type = "file"
path = "{dir}/out/archive.ndjson"
"#;
    let engine = Engine::start(&config(dir.path(), topology));
    let url = &engine.ingest;
    // 400: two bad events among good ones; the good ones are not enqueued either.
    let batch = vec![
        event("good-1", "order.created", 1),
        json!({"specversion": "1.0", "id": "bad-1", "source": "/t"}),
        event("good-2", "order.created", 1),
        json!({"specversion": "0.3", "id": "bad-2", "source": "/t", "type": "order.created"}),
    ];
    let problem = check_problem(url, "application/x-ndjson", ndjson(&batch), 400, &[1, 3]).await;
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("type"),
        "{problem}"
    );
    check_problem(url, "application/json", b"{not json".to_vec(), 400, &[0]).await;
    // 415
    check_problem(url, "text/plain", b"hello".to_vec(), 415, &[]).await;
    // 413: over body_bytes_max (1 MiB), rejected without reading it all
    let huge = ndjson(&[event("huge", "order.created", 1)]).repeat(20_000);
    assert!(huge.len() > 1 << 20);
    check_problem(url, "application/x-ndjson", huge, 413, &[]).await;
    // 422: a type no queue takes, in a batch with a routable one
    let batch = vec![
        event("good-3", "order.created", 1),
        event("stray", "user.signup", 1),
    ];
    check_problem(
        url,
        "application/cloudevents-batch+json",
        serde_json::to_vec(&batch).unwrap(),
        422,
        &[1],
    )
    .await;
    // 429: the queue holds 20 events; one request of more than that is refused whole, and its
    // event for the (roomy) audit queue, which is appended first, is not enqueued either.
    let mut many: Vec<Value> = vec![event("audit-1", "audit.logged", 1)];
    many.extend((0..25).map(|i| event(&format!("over-{i}"), "order.created", 1)));
    let response = client()
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&many))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // A good request still goes through, and only it reaches the sink.
    let (status, _) = post(
        url,
        "application/x-ndjson",
        ndjson(&[event("good-4", "order.created", 1)]),
        &[],
    )
    .await;
    assert_eq!(status, 202);
    let sink = dir.path().join("out/archive.ndjson");
    wait_for_sink(&sink, |l| !l.is_empty());
    assert!(engine.stop().success());
    let lines = sink_lines(&sink);
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec!["good-4"],
        "nothing of a rejected request was delivered"
    );
}

#[test]
fn validate_reports_every_broken_config_at_its_line_and_column_and_exits_78() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../veltrix-core/tests/fixtures");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // `# expect-error[V004]: 7:1: fragment` → ("error[V004]", "7:1: fragment").
        let expected: Vec<(String, &str)> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("# expect-")?;
                let (kind, rest) = rest.split_once(": ")?;
                (kind.starts_with("error") || kind.starts_with("warning"))
                    .then(|| (kind.to_owned(), rest))
            })
            .collect();
        let output = Command::new(BIN)
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let has_errors = expected.iter().any(|(kind, _)| kind.starts_with("error"));
        assert_eq!(
            output.status.code(),
            Some(if has_errors { 78 } else { 0 }),
            "{}: {stderr}",
            path.display()
        );
        for (kind, rest) in expected {
            let (position, fragment) = rest.split_once(": ").unwrap();
            let header = format!("{}:{position}: {kind}: ", path.display());
            let line = stderr
                .lines()
                .find(|l| l.starts_with(&header))
                .unwrap_or_else(|| panic!("no `{header}` in:\n{stderr}"));
            assert!(line.contains(fragment), "{line} lacks {fragment}");
        }
        checked += 1;
    }
    assert!(checked >= 8, "fixtures checked: {checked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_posts_events_and_reports_what_was_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(&config(dir.path(), ORDERS));
    let output = Command::new(BIN)
        .args([
            "send",
            "--url",
            &engine.ingest,
            "--type",
            "order.created",
            "--source",
            "/cli",
        ])
        .args([r#"{"amount": 2, "qty": 3}"#, r#"{"amount": 5, "qty": 1}"#])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("accepted 2 event(s)"));
    let lines = wait_for_sink(&dir.path().join("out/archive.ndjson"), |l| l.len() >= 2);
    let totals: HashSet<i64> = lines
        .iter()
        .map(|l| l["data"]["total"].as_i64().unwrap())
        .collect();
    assert_eq!(totals, HashSet::from([6, 5]));
    // A refused request: exit 1 with the server's problem.
    let output = Command::new(BIN)
        .args([
            "send",
            "--url",
            &engine.ingest,
            r#"{"id": "x", "source": "/s"}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("400"));
    let api = engine.api.clone();
    assert!(engine.stop().success());
    // Nobody listening: EX_UNAVAILABLE.
    let output = Command::new(BIN)
        .args([
            "send",
            "--url",
            &format!("{api}/v1/events"),
            "--type",
            "t",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
}

#[test]
fn every_example_config_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let output = Command::new(BIN)
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 2, "examples checked: {checked}");
}
