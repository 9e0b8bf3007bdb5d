//! `veltrix bench`: against an engine it starts itself (`--spawn`), and the discard server.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::BIN;

#[test]
fn bench_spawns_an_engine_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(
        dir.path(),
        r#"
[queues.scratch]
types = ["*"]
durability = "memory"
[pipelines.discard]
from = ["scratch"]
sink = "nothing"
[sinks.nothing]
type = "blackhole"
"#,
    );
    let output = Command::new(BIN)
        .env("VELTRIX_LOG", "warn")
        .args(["bench", "--spawn"])
        .arg(&config)
        .args([
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--rate",
            "2000",
            "--batch",
            "10",
        ])
        .args(["--connections", "2", "--json"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "exit {:?}", output.status);
    let doc: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert!(doc["accepted_events"].as_u64().unwrap() > 0, "{doc}");
    assert_eq!(doc["batch"], 10);
    assert_eq!(doc["mode"], "open-loop");
    assert_eq!(doc["rejected_requests"], serde_json::json!({}));
    assert!(doc["events_per_second"].as_f64().unwrap() > 0.0);
    assert!(doc["requests_per_second"].as_f64().unwrap() > 0.0);
    for key in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(
            doc["request_latency_seconds"][key].as_f64().unwrap() > 0.0,
            "{key}: {doc}"
        );
    }
    // Delivered events were seen in the engine's e2e histogram.
    let e2e = &doc["e2e_latency_seconds"];
    assert!(e2e["count"].as_u64().unwrap() > 0, "{doc}");
    assert!(e2e["p50"].as_f64().is_some(), "{doc}");
    assert!(
        doc["engine"]["rss_max_bytes"].as_u64().unwrap() > 0,
        "{doc}"
    );
    assert!(doc["engine"]["cpu_cores"].as_f64().is_some(), "{doc}");
    // A run shorter than a minute has one minute of peaks, at most the run's peak.
    let minutes = doc["engine"]["rss_max_bytes_by_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 1, "{doc}");
    assert!(minutes[0].as_u64().unwrap() <= doc["engine"]["rss_max_bytes"].as_u64().unwrap());
}

#[tokio::test]
async fn discard_server_accepts_everything_and_bench_measures_it() {
    let mut server = Command::new(BIN)
        .args(["bench", "discard-server"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/v1/events"),
        "{url}"
    );

    let body = b"{\"a\":1}\n{\"b\":2}\nnot even json\n".to_vec();
    let (status, answer) = support::post(&url, "application/x-ndjson", body, &[]).await;
    assert_eq!(status, 202);
    assert_eq!(answer, serde_json::json!({"accepted": 3}));

    // The same server as a bench target (no admin API: no e2e, no engine figures).
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["bench", "--url", &url, "--api", "http://127.0.0.1:9"])
            .args([
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--rate",
                "max",
                "--batch",
                "100",
            ])
            .args(["--connections", "2", "--json"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(output.status.success(), "exit {:?}", output.status);
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["mode"], "closed-loop");
    assert!(doc["accepted_events"].as_u64().unwrap() >= 100, "{doc}");
    assert!(doc["e2e_latency_seconds"].is_null(), "{doc}");
}

/// The generator's requests carry the token, the host and the content type on every request of
/// every connection, with the target in origin form (`/v1/events`, as to an origin server, not
/// the absolute URL): a server that accepts only such requests accepts them all, and
/// refuses them all (401, counted by status) when the token is left out.
#[tokio::test]
async fn bench_requests_carry_token_host_and_content_type() {
    use axum::http::{HeaderMap, StatusCode, Uri};
    let app = axum::Router::new().route(
        "/v1/events",
        axum::routing::post(|uri: Uri, headers: HeaderMap| async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let host_ok = header("host").is_some_and(|h| h.starts_with("127.0.0.1:"));
            if header("authorization") == Some("Bearer s3cret")
                && header("content-type") == Some("application/cloudevents+json")
                && host_ok
                && uri.scheme().is_none()
                && uri.authority().is_none()
            {
                StatusCode::ACCEPTED
            } else {
                StatusCode::UNAUTHORIZED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let run = |token: Option<&'static str>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(BIN);
            command
                .args(["bench", "--url", &url, "--api", "http://127.0.0.1:9"])
                .args(["--duration", "1s", "--warmup", "0s", "--rate", "max"])
                .args([
                    "--content-type",
                    "structured",
                    "--connections",
                    "3",
                    "--json",
                ]);
            if let Some(token) = token {
                command.args(["--token", token]);
            }
            let output = command.output().unwrap();
            let doc = serde_json::from_slice::<Value>(&output.stdout).unwrap();
            (output.status.code(), doc)
        })
    };
    let (code, with) = run(Some("s3cret")).await.unwrap();
    assert_eq!(code, Some(0), "{with}");
    assert!(with["accepted_events"].as_u64().unwrap() > 0, "{with}");
    assert_eq!(with["rejected_requests"], serde_json::json!({}), "{with}");
    // A run in which nothing was accepted still reports, and fails.
    let (code, without) = run(None).await.unwrap();
    assert_eq!(code, Some(1), "{without}");
    assert_eq!(without["accepted_events"], 0, "{without}");
    assert!(
        without["rejected_requests"]["401"].as_u64().unwrap() > 0,
        "{without}"
    );
}
