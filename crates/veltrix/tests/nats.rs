//! End-to-end: the nats source and sink, the real `veltrix` binary against a real `nats-server`
//! (a private one per test, on its own port and store: see `support/nats.rs`). Without
//! `nats-server` installed each test prints `SKIPPED` (and fails under
//! `VELTRIX_REQUIRE_SERVICES=1`).

use std::collections::HashSet;
use std::process::Command;

use futures_util::StreamExt;
use serde_json::{Value, json};

#[path = "support/nats.rs"]
mod nats_server;
mod support;
use nats_server::*;
use support::*;

fn event(id: &str, ty: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": ty, "data": {"n": 1}})
}

fn ids_of(lines: &[Value]) -> HashSet<String> {
    lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_messages_are_acknowledged_only_once_stored_and_wait_in_nats_while_the_queue_is_full()
 {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let js = nats.jetstream().await;
    let id = unique();
    let (stream, root) = (format!("ORDERS_{id}"), format!("orders.{id}"));
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            r#"
[sources.orders]
type = "nats"
url = "{url}"
stream = "{stream}"
subjects = ["{root}.>"]
consumer = "veltrix"
batch_events = 5
[queues.q]
types = ["*"]
max_events = 5
[pipelines.p]
from = ["q"]
batch_events_max = 5
retry = {{ attempts_max = 1000, backoff_initial = "10ms", backoff_max = "20ms" }}
sink = "hook"
[sinks.hook]
type = "http"
url = "{hook}"
"#,
            url = nats.url,
            hook = receiver.url,
        ),
    );
    let engine = Engine::start(&config);
    let api = engine.api.clone();
    assert!(
        wait_until(async || js.get_stream(&stream).await.is_ok()).await,
        "the source creates its stream"
    );

    // 20 messages: 17 structured events, one in binary mode, one batch of two, one invalid.
    let mut expected = HashSet::new();
    let structured: Vec<Value> = (0..17)
        .map(|i| {
            expected.insert(format!("s-{i}"));
            event(&format!("s-{i}"), "order.created")
        })
        .collect();
    publish_events(&js, &format!("{root}.created"), &structured).await;
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("ce-specversion", "1.0"),
        ("ce-id", "binary-1"),
        ("ce-source", "/test"),
        ("ce-type", "order.paid"),
    ] {
        headers.insert(k, v);
    }
    expected.insert("binary-1".to_owned());
    js.publish_with_headers(format!("{root}.paid"), headers, r#"{"amount":3}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("content-type", "application/cloudevents-batch+json");
    let pair = json!([
        event("batch-1", "order.created"),
        event("batch-2", "order.created")
    ]);
    expected.extend(["batch-1".to_owned(), "batch-2".to_owned()]);
    js.publish_with_headers(
        format!("{root}.batch"),
        headers,
        serde_json::to_vec(&pair).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    js.publish(format!("{root}.junk"), "not a CloudEvent".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // The queue fills (the sink fails), the source pauses: the rest must still be in NATS,
    // unacknowledged — nothing is acknowledged before it is stored.
    assert!(
        wait_until(async || {
            metric(&api, "veltrix_source_pauses_total", &["source=\"orders\""]).await > 0.0
        })
        .await,
        "the source paused on the full queue"
    );
    let (pending, ack_pending) = consumer_pending(&js, &stream, "veltrix").await;
    let stored = metric(
        &api,
        "veltrix_events_received_total",
        &["source=\"orders\""],
    )
    .await;
    let rejected = metric(
        &api,
        "veltrix_events_rejected_total",
        &["source=\"orders\""],
    )
    .await;
    let settled = 20 - pending - ack_pending; // acknowledged or terminated
    assert!(stored <= 5.0, "the queue holds 5 events, {stored} stored");
    assert!(
        settled as f64 <= stored + rejected,
        "{settled} messages settled in NATS but only {stored} events stored and {rejected} rejected"
    );
    assert!(
        pending + ack_pending >= 14,
        "NATS keeps the backlog: {pending} + {ack_pending}"
    );

    receiver.set_mode(Mode::Accept);
    assert!(
        wait_until(async || receiver.delivered_ids().is_superset(&expected)).await,
        "every event is delivered; missing: {:?}",
        expected
            .difference(&receiver.delivered_ids())
            .collect::<Vec<_>>()
    );
    assert!(
        wait_until(async || consumer_pending(&js, &stream, "veltrix").await == (0, 0)).await,
        "every message is acknowledged (or terminated): {:?}",
        consumer_pending(&js, &stream, "veltrix").await
    );
    assert_eq!(
        metric(
            &api,
            "veltrix_events_rejected_total",
            &["source=\"orders\"", "reason=\"invalid-event\""]
        )
        .await,
        1.0,
        "the invalid message is counted"
    );
    assert_eq!(
        metric(
            &api,
            "veltrix_events_received_total",
            &["source=\"orders\""]
        )
        .await,
        20.0
    );
    assert_eq!(
        metric(&api, "veltrix_source_connected", &["source=\"orders\""]).await,
        1.0
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_published_event_is_delivered_at_least_once_across_a_kill_9() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let js = nats.jetstream().await;
    let id = unique();
    let (stream, root) = (format!("CRASH_{id}"), format!("crash.{id}"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            r#"
[sources.orders]
type = "nats"
url = "{url}"
stream = "{stream}"
subjects = ["{root}.>"]
batch_events = 50
ack_wait = "2s"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
sink = "out"
[sinks.out]
type = "file"
path = "{{dir}}/out/events.ndjson"
"#,
            url = nats.url,
        ),
    );
    let sink = dir.path().join("out/events.ndjson");
    let engine = Engine::start(&config);
    assert!(wait_until(async || js.get_stream(&stream).await.is_ok()).await);

    const TOTAL: usize = 3000;
    let publisher = {
        let js = js.clone();
        let subject = format!("{root}.created");
        tokio::spawn(async move {
            for chunk in 0..TOTAL / 100 {
                let events: Vec<Value> = (chunk * 100..(chunk + 1) * 100)
                    .map(|i| event(&format!("e-{i:05}"), "order.created"))
                    .collect();
                publish_events(&js, &subject, &events).await;
            }
        })
    };
    let lines = wait_for_sink(&sink, |l| l.len() >= 300);
    assert!(lines.len() >= 300, "events flowed before the kill");
    engine.kill9();
    let engine = Engine::start(&config);
    publisher.await.unwrap();
    let all: HashSet<String> = (0..TOTAL).map(|i| format!("e-{i:05}")).collect();
    let lines = wait_for_sink(&sink, |l| ids_of(l).is_superset(&all));
    let seen = ids_of(&lines);
    let missing: Vec<_> = all.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} events lost: {missing:?}",
        missing.len()
    );
    eprintln!(
        "{} lines for {TOTAL} events: {} duplicates after kill -9 ({} messages redelivered by NATS)",
        lines.len(),
        lines.len() - TOTAL,
        metric(&engine.api, "veltrix_source_redeliveries_total", &[]).await
    );
    assert!(
        wait_until(async || consumer_pending(&js, &stream, "orders").await == (0, 0)).await,
        "every message is acknowledged after the restart"
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sink_publishes_with_message_ids_so_a_redelivered_batch_is_not_stored_twice() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let js = nats.jetstream().await;
    let id = unique();
    let stream = format!("OUT_{id}");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("processed.{id}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            r#"
[queues.q]
types = ["order.*"]
[queues.lost]
types = ["lost.*"]
[pipelines.p]
from = ["q"]
sink = "bus"
[pipelines.nowhere]
from = ["lost"]
sink = "nowhere"
[sinks.bus]
type = "nats"
url = "{url}"
subject = "processed.{id}.{{{{ .type }}}}"
[sinks.nowhere]
type = "nats"
url = "{url}"
subject = "nowhere.{id}"
"#,
            url = nats.url,
        ),
    );
    let engine = Engine::start(&config);
    let api = engine.api.clone();
    let events: Vec<Value> = (0..50)
        .map(|i| {
            let ty = if i % 2 == 0 {
                "order.created"
            } else {
                "order.paid"
            };
            event(&format!("o-{i:02}"), ty)
        })
        .collect();
    let (status, body) = post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
    assert_eq!(status, 202, "{body}");
    assert!(wait_until(async || stream_messages(&js, &stream).await == 50).await);

    // The same events again, as after a crash before the queue heard of the confirmation.
    let (status, body) = post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
    assert_eq!(status, 202, "{body}");
    let delivered = ["pipeline=\"p\"", "outcome=\"delivered\""];
    assert!(
        wait_until(
            async || metric(&api, "veltrix_pipeline_events_total", &delivered).await == 100.0
        )
        .await
    );
    assert_eq!(
        stream_messages(&js, &stream).await,
        50,
        "no duplicate stored"
    );
    assert_eq!(
        metric(&api, "veltrix_sink_duplicates_total", &["sink=\"bus\""]).await,
        50.0
    );

    let mut info = js.get_stream(&stream).await.unwrap();
    let per_subject = info
        .info_with_subjects(format!("processed.{id}.>"))
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    let per_subject: std::collections::HashMap<String, usize> =
        per_subject.into_iter().map(Result::unwrap).collect();
    assert_eq!(per_subject[&format!("processed.{id}.order.created")], 25);
    assert_eq!(per_subject[&format!("processed.{id}.order.paid")], 25);
    let first = info.get_raw_message(1).await.unwrap();
    assert_eq!(
        first.subject.as_str(),
        format!("processed.{id}.order.created")
    );
    let payload: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(payload["id"], "o-00");
    assert_eq!(payload["data"], json!({"n": 1}));
    let headers = first.headers;
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("/test/o-00")
    );
    assert_eq!(
        headers.get("content-type").map(|v| v.as_str()),
        Some("application/cloudevents+json")
    );
    let _ = info.info().await.unwrap();

    // No stream takes the subject: dead-lettered at once, with a reason that says so.
    let (status, _) = post(
        &engine.ingest,
        "application/cloudevents+json",
        serde_json::to_vec(&event("l-1", "lost.event")).unwrap(),
        &[],
    )
    .await;
    assert_eq!(status, 202);
    assert!(wait_until(async || dlq(&api, "nowhere").await.len() == 1).await);
    let entry = dlq(&api, "nowhere").await.remove(0);
    assert_eq!(
        entry["attempts"], 1,
        "a permanent failure is not retried: {entry}"
    );
    assert!(
        entry
            .to_string()
            .contains(&format!("no JetStream stream takes subject `nowhere.{id}`")),
        "{entry}"
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn core_mode_subscribes_and_publishes_without_jetstream() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let client = nats.client().await;
    let id = unique();
    let mut out = client.subscribe(format!("out.{id}.>")).await.unwrap();
    client.flush().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            r#"
[sources.bus]
type = "nats"
url = "{url}"
mode = "core"
subjects = ["in.{id}.>"]
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
sink = "out"
[sinks.out]
type = "nats"
url = "{url}"
jetstream = false
subject = "out.{id}.{{{{ .type }}}}"
"#,
            url = nats.url,
        ),
    );
    let engine = Engine::start(&config);
    // Core NATS keeps nothing for a subscriber that is not there yet: probe until the round
    // trip works.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut probe = 0;
    loop {
        probe += 1;
        let body = serde_json::to_vec(&event(&format!("probe-{probe}"), "probe")).unwrap();
        client
            .publish(format!("in.{id}.probe"), body.into())
            .await
            .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_millis(200), out.next()).await;
        if let Ok(Some(message)) = got {
            assert_eq!(message.subject.as_str(), format!("out.{id}.probe"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the core round trip never worked"
        );
    }

    let mut expected = HashSet::new();
    for i in 0..100 {
        let e = event(&format!("c-{i}"), "order.created");
        expected.insert(format!("c-{i}"));
        client
            .publish(
                format!("in.{id}.orders"),
                serde_json::to_vec(&e).unwrap().into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let mut seen = HashSet::new();
    while !seen.is_superset(&expected) {
        let message = tokio::time::timeout(PATIENCE, out.next())
            .await
            .expect("events keep arriving")
            .unwrap();
        let payload: Value = serde_json::from_slice(&message.payload).unwrap();
        let event_id = payload["id"].as_str().unwrap().to_owned();
        if event_id.starts_with("probe-") {
            continue;
        }
        assert_eq!(message.subject.as_str(), format!("out.{id}.order.created"));
        assert_eq!(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get("content-type"))
                .map(|v| v.as_str()),
            Some("application/cloudevents+json")
        );
        seen.insert(event_id);
    }
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_starts_while_nats_is_down_and_consumes_once_it_is_up_and_after_a_restart() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let id = unique();
    let (stream, root) = (format!("LATE_{id}"), format!("late.{id}"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            r#"
[sources.orders]
type = "nats"
url = "{url}"
stream = "{stream}"
subjects = ["{root}.>"]
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
sink = "out"
[sinks.out]
type = "file"
path = "{{dir}}/out/events.ndjson"
"#
        ),
    );
    // `validate --check-connections` sees that NATS is down (a warning: still valid).
    let validate = || {
        Command::new(BIN)
            .args(["validate", "--check-connections"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let down = validate();
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning[V047]: source `orders` cannot be reached at nats://127.0.0.1:"),
        "{stderr}"
    );

    let log = dir.path().join("engine.log");
    let engine = Engine::start_with(&config, &[], Some(&log));
    let api = engine.api.clone();
    assert!(
        wait_until(async || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("cannot connect to NATS; retrying")))
        .await,
        "the connection error is logged"
    );
    assert_eq!(
        metric(&api, "veltrix_source_connected", &["source=\"orders\""]).await,
        0.0
    );

    let Some(mut nats) = NatsServer::start_on(port).await else {
        return;
    };
    let up = validate();
    assert!(
        !String::from_utf8_lossy(&up.stderr).contains("V047"),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let js = nats.jetstream().await;
    assert!(
        wait_until(async || js.get_stream(&stream).await.is_ok()).await,
        "the source connects and creates its stream"
    );
    let first: Vec<Value> = (0..10).map(|i| event(&format!("a-{i}"), "t")).collect();
    publish_events(&js, &format!("{root}.x"), &first).await;
    let sink = dir.path().join("out/events.ndjson");
    assert_eq!(wait_for_sink(&sink, |l| l.len() >= 10).len(), 10);
    assert_eq!(
        metric(&api, "veltrix_source_connected", &["source=\"orders\""]).await,
        1.0
    );

    // NATS restarts (same store): the source reconnects by itself and goes on.
    nats.restart().await;
    let js = nats.jetstream().await;
    let second: Vec<Value> = (0..10).map(|i| event(&format!("b-{i}"), "t")).collect();
    publish_events(&js, &format!("{root}.x"), &second).await;
    // Waits for every id, not for 20 lines: delivery is at least once, and a message the restart
    // caught between storing and its acknowledgement comes again.
    let expected: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let lines = wait_for_sink(&sink, |l| {
        let ids = ids_of(l);
        expected.iter().all(|id| ids.contains(*id))
    });
    let ids = ids_of(&lines);
    for e in first.iter().chain(&second) {
        assert!(ids.contains(e["id"].as_str().unwrap()), "{e} missing");
    }
    assert!(
        wait_until(
            async || metric(&api, "veltrix_source_connected", &["source=\"orders\""]).await == 1.0
        )
        .await
    );
    assert!(engine.stop().success());
}
