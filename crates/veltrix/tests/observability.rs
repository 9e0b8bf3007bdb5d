//! Observability end to end: the Prometheus exposition passes promtool, the shipped Grafana
//! dashboard only queries metrics the engine exports, every admin route needs the token, ingest
//! tokens work, and JSON logs are one object per line with the lifecycle events.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

mod support;
use support::*;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Whether a tool is on PATH; when it is not, the test says SKIPPED loudly, or fails when CI
/// requires every tool (`VELTRIX_REQUIRE_SERVICES=1`).
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("VELTRIX_REQUIRE_SERVICES").is_err(),
            "{tool} is required (VELTRIX_REQUIRE_SERVICES is set): apt-get install prometheus"
        );
        eprintln!(
            "SKIPPED: {tool} not found; install Debian's `prometheus` package to run this check"
        );
    }
    found
}

/// Every metric name a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = expr[i..].starts_with("veltrix_") || expr[i..].starts_with("process_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            names.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_pass_promtool_and_the_dashboard_queries_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // Traffic that exercises every series: deliveries, a processing failure (dead letter),
    // retries against a sink that is down, drops from a tiny drop_newest queue, a rejection.
    let topology = r#"
[queues.tiny]
types = ["tiny.*"]
max_events = 2
when_full = "drop_newest"
[queues.main]
types = ["*"]
[pipelines.archive]
from = ["main"]
processors = [{ type = "remap", source = '.data.total = int!(.data.amount) * 2' }]
sink = "file"
[pipelines.forward]
from = ["tiny"]
retry = { attempts_max = 1000, backoff_initial = "10ms", backoff_max = "50ms" }
sink = "down"
[sinks.file]
type = "file"
path = "{dir}/out/archive.ndjson"
[sinks.down]
type = "http"
url = "http://127.0.0.1:9/never"
timeout = "1s"
"#;
    let engine = Engine::start(&config(dir.path(), topology));
    let events = vec![
        json!({"specversion": "1.0", "id": "ok-1", "source": "/t", "type": "order.created", "data": {"amount": 2}}),
        json!({"specversion": "1.0", "id": "bad-1", "source": "/t", "type": "order.created", "data": {"amount": "x"}}),
    ];
    let (status, _) = post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
    assert_eq!(status, 202);
    // One at a time: two fit in the tiny queue (and stay there, retried against the dead sink);
    // the rest drop.
    let mut dropped = 0;
    for i in 0..5 {
        let one = json!({"specversion": "1.0", "id": format!("t-{i}"), "source": "/t", "type": "tiny.thing"});
        let (status, body) =
            post(&engine.ingest, "application/x-ndjson", ndjson(&[one]), &[]).await;
        assert_eq!(status, 202);
        dropped += body["dropped"].as_u64().unwrap_or(0);
    }
    assert!(dropped > 0);
    let (status, _) = post(&engine.ingest, "text/plain", b"nope".to_vec(), &[]).await;
    assert_eq!(status, 415);
    let api = engine.api.clone();
    assert!(
        wait_until(async || metric(&api, "veltrix_pipeline_retries_total", &[]).await > 0.0).await
    );
    assert!(
        wait_until(async || metric(
            &api,
            "veltrix_pipeline_events_total",
            &["outcome=\"dead_lettered\""]
        )
        .await
            > 0.0)
        .await
    );
    assert!(
        wait_until(async || metric(
            &api,
            "veltrix_pipeline_events_total",
            &["outcome=\"delivered\""]
        )
        .await
            > 0.0)
        .await
    );

    let exposition = client()
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for required in [
        "veltrix_events_received_total",
        "veltrix_events_rejected_total",
        "veltrix_events_dropped_total",
        "veltrix_queue_depth_events",
        "veltrix_queue_depth_bytes",
        "veltrix_queue_oldest_age_seconds",
        "veltrix_queue_appended_events_total",
        "veltrix_queue_fsync_duration_seconds",
        "veltrix_pipeline_events_total",
        "veltrix_pipeline_processing_duration_seconds",
        "veltrix_e2e_latency_seconds",
        "veltrix_sink_requests_total",
        "veltrix_sink_batch_events",
        "veltrix_sink_in_flight_requests",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(
            exported.contains(required),
            "{required} missing from /metrics"
        );
    }
    assert!(
        exposition.contains("le=\"0.0001\"") && exposition.contains("le=\"30\""),
        "buckets from 100 µs to 30 s"
    );

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/veltrix.json")).unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            for name in metric_names(target["expr"].as_str().unwrap()) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| exported.contains(b))
                    .unwrap_or(&name);
                assert!(
                    exported.contains(base),
                    "panel {:?} queries {name}, which the engine does not export",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 15, "the dashboard queries {queried} metrics");

    if have("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut check.stdin.take().unwrap(), exposition.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let config = Command::new("promtool")
            .args(["check", "config"])
            .arg(repo().join("deploy/prometheus.yml"))
            .output()
            .unwrap();
        assert!(
            config.status.success(),
            "{}",
            String::from_utf8_lossy(&config.stdout)
        );
    }
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_route_but_healthz_needs_the_token_and_ingest_tokens_guard_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\n[sinks.s]\ntype = \"blackhole\"\n",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[api]\n", "[api]\ntoken = \"admin-secret\"\n")
        .replace(
            "body_bytes_max = \"1MiB\"\n",
            "body_bytes_max = \"1MiB\"\ntokens = [\"producer-a\", \"producer-b\"]\n",
        );
    std::fs::write(&path, text).unwrap();
    let engine = Engine::start(&path);
    // Every guarded route: the router is built from this list, so none can be missed here.
    let routes = veltrix_engine::ADMIN_GUARDED_ROUTES;
    assert!(routes.contains(&("POST", "/api/v1/reload")) && routes.len() >= 7);
    for &(method, route) in routes {
        let url = format!("{}{}", engine.api, route.replace("{pipeline}", "p"));
        let request = |token: Option<&str>| {
            let r = client()
                .request(method.parse().unwrap(), &url)
                .header("content-type", "application/json")
                .body("{\"all\": true}");
            match token {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
        };
        for token in [
            None,
            Some("wrong"),
            Some("admin-secret-but-longer"),
            Some(""),
        ] {
            let response = request(token).send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {route} with {token:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        let status = request(Some("admin-secret")).send().await.unwrap().status();
        assert!(
            status.is_success(),
            "{method} {route} with the token: {status}"
        );
    }
    let health = client()
        .get(format!("{}/healthz", engine.api))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health stays open for probes");

    let one = ndjson(&[json!({"specversion": "1.0", "id": "1", "source": "/t", "type": "t"})]);
    let (status, problem) = post(&engine.ingest, "application/x-ndjson", one.clone(), &[]).await;
    assert_eq!(status, 401, "{problem}");
    let (status, _) = post(
        &engine.ingest,
        "application/x-ndjson",
        one.clone(),
        &[("authorization", "Bearer producer-c")],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        &engine.ingest,
        "application/x-ndjson",
        one,
        &[("authorization", "Bearer producer-b")],
    )
    .await;
    assert_eq!(status, 202);
    // The CLI takes the token from the config (the address too, unless it is port 0 as here).
    let output = Command::new(BIN)
        .args(["dlq", "list", "p", "--api", &engine.api, "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(BIN)
        .args(["dlq", "list", "p", "--api", &engine.api])
        .env_remove("VELTRIX_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "no token, refused");
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_the_lifecycle_events() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("engine.log");
    let path = config(
        dir.path(),
        "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\n[sinks.s]\ntype = \"blackhole\"\n",
    );
    let engine = Engine::start_with(&path, &["--log-format", "json"], Some(&log));
    let (status, _) = post(
        &engine.ingest,
        "application/x-ndjson",
        ndjson(&[json!({"specversion": "1.0", "id": "1", "source": "/t", "type": "t"})]),
        &[],
    )
    .await;
    assert_eq!(status, 202);
    assert!(engine.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    for lifecycle in [
        "queue recovered",
        "engine started",
        "engine stopped cleanly",
    ] {
        assert!(
            messages.contains(&lifecycle),
            "no {lifecycle:?} in {messages:?}"
        );
    }
    assert!(
        lines.len() < 20,
        "no line per healthy event: {}",
        lines.len()
    );
}
