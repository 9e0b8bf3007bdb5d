//! OpenTelemetry export (the `otel` feature): one event can be followed from ingest to sink by
//! its id. A tiny OTLP/HTTP collector in the test receives the spans.
#![cfg(feature = "otel")]

use std::sync::{Arc, Mutex};

use serde_json::json;

mod support;
use support::*;

/// Collects the raw OTLP/HTTP protobuf bodies posted to `/v1/traces`.
async fn collector() -> (String, Arc<Mutex<Vec<u8>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().extend_from_slice(&body);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_carry_the_event_id_from_ingest_to_delivery() {
    let (endpoint, received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let topology = "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"file\"\n[sinks.file]\ntype = \"file\"\npath = \"{dir}/out/events.ndjson\"\n";
    let engine = Engine::start_with(
        &config(dir.path(), topology),
        &["--otlp-endpoint", &endpoint],
        None,
    );
    let event = json!({"specversion": "1.0", "id": "follow-me-4711", "source": "/t", "type": "order.created"});
    let (status, _) = post(
        &engine.ingest,
        "application/x-ndjson",
        ndjson(&[event]),
        &[],
    )
    .await;
    assert_eq!(status, 202);
    wait_for_sink(&dir.path().join("out/events.ndjson"), |l| !l.is_empty());
    // A clean stop flushes the batch exporter.
    assert!(engine.stop().success());
    let bytes = received.lock().unwrap().clone();
    assert!(
        contains(&bytes, "follow-me-4711"),
        "the event id is a span attribute"
    );
    assert!(
        contains(&bytes, "veltrix.ingest") && contains(&bytes, "veltrix.deliver"),
        "both ends are spans"
    );
    assert!(contains(&bytes, "event.id"));
}
