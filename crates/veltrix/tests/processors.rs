//! End-to-end: the built-in processors beyond filter/remap (dedupe, throttle, aggregate, batch)
//! and routes, through the real `veltrix` binary.

use std::collections::BTreeMap;

use serde_json::{Value, json};

mod support;
use support::*;

fn event(id: &str, ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": ty, "data": data})
}

async fn post_events(engine: &Engine, events: &[Value]) {
    let (status, body) = post(&engine.ingest, "application/x-ndjson", ndjson(events), &[]).await;
    assert_eq!(status, 202, "{body}");
}

/// `veltrix_processor_events_total` of one processor and outcome.
async fn processor_events(engine: &Engine, pipeline: &str, outcome: &str) -> f64 {
    metric(
        &engine.api,
        "veltrix_processor_events_total",
        &[
            &format!("pipeline=\"{pipeline}\""),
            &format!("outcome=\"{outcome}\""),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn dedupe_drops_a_reposted_id_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(&config(
        dir.path(),
        r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
sink = "out"
processors = [{ type = "dedupe", key = '.id', window = "10m", max_keys = 1000 }]
[sinks.out]
type = "file"
path = "{dir}/out.ndjson"
"#,
    ));
    post_events(&engine, &[event("a", "t", json!(1))]).await;
    // The producer retries: `a` again, then something new.
    post_events(
        &engine,
        &[event("a", "t", json!(1)), event("b", "t", json!(2))],
    )
    .await;
    let sink = dir.path().join("out.ndjson");
    let lines = wait_for_sink(&sink, |l| l.iter().any(|e| e["id"] == "b"));
    let ids: Vec<&str> = lines.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"], "the re-posted `a` is dropped");
    assert!(
        wait_until(async || processor_events(&engine, "p", "deduplicated").await == 1.0).await,
        "the duplicate is counted"
    );
    assert_eq!(processor_events(&engine, "p", "passed").await, 2.0);
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_processor_keys",
            &["pipeline=\"p\"", "type=\"dedupe\""]
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn throttle_drops_the_excess_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    // Three per hour: no token comes back while the test runs.
    let engine = Engine::start(&config(
        dir.path(),
        r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
sink = "out"
processors = [{ type = "throttle", key = '.source', rate = 3, per = "1h" }]
[sinks.out]
type = "file"
path = "{dir}/out.ndjson"
"#,
    ));
    let events: Vec<Value> = (0..10)
        .map(|i| event(&format!("e{i}"), "t", json!(i)))
        .collect();
    post_events(&engine, &events).await;
    assert!(
        wait_until(async || {
            processor_events(&engine, "p", "passed").await
                + processor_events(&engine, "p", "throttled").await
                == 10.0
        })
        .await
    );
    assert_eq!(processor_events(&engine, "p", "throttled").await, 7.0);
    let sink = dir.path().join("out.ndjson");
    let lines = wait_for_sink(&sink, |l| l.len() >= 3);
    let ids: Vec<&str> = lines.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["e0", "e1", "e2"],
        "the burst passes, the rest is dropped"
    );
    // Dropped events are acknowledged (counted as filtered by the pipeline), not redelivered.
    assert!(
        wait_until(async || {
            metric(
                &engine.api,
                "veltrix_pipeline_events_total",
                &["pipeline=\"p\"", "outcome=\"filtered\""],
            )
            .await
                == 7.0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregate_emits_into_a_queue_that_a_second_pipeline_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let engine = Engine::start(&config(
        dir.path(),
        &format!(
            r#"
[queues.games]
types = ["game.*"]
[queues.leaderboard]
types = ["leaderboard.*"]
[pipelines.scores]
from = ["games"]
sink = "none"
processors = [{{ type = "aggregate", key = '.data.player', window = "1s", fields = {{ score = '.data.points' }}, into = "leaderboard", event_type = "leaderboard.updated" }}]
[pipelines.board]
from = ["leaderboard"]
sink = "hook"
[sinks.none]
type = "blackhole"
[sinks.hook]
type = "http"
url = "{}"
"#,
            receiver.url
        ),
    ));
    let mut events = Vec::new();
    let mut expected: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for i in 0..30 {
        let player = ["alice", "bob", "carol"][i % 3];
        let points = (i as i64) * 10;
        events.push(event(
            &format!("g{i}"),
            "game.scored",
            json!({"player": player, "points": points}),
        ));
        let e = expected.entry(player).or_default();
        e.0 += 1;
        e.1 += points;
    }
    post_events(&engine, &events).await;
    // Windows are by processing time: the events may straddle a window boundary, so sum what
    // every emitted window says per player.
    let totals = |events: &[Value]| {
        let mut totals: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for e in events {
            let t = totals
                .entry(e["data"]["key"].as_str().unwrap().to_owned())
                .or_default();
            t.0 += e["data"]["count"].as_u64().unwrap();
            t.1 += e["data"]["score"]["sum"].as_i64().unwrap();
        }
        totals
    };
    let want: BTreeMap<String, (u64, i64)> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    assert!(
        wait_until(async || totals(&receiver.events()) == want).await,
        "the board's sink received every player's totals: {:?}",
        totals(&receiver.events())
    );
    for e in receiver.events() {
        assert_eq!(e["type"], "leaderboard.updated");
        assert_eq!(e["source"], "/veltrix/pipelines/scores");
        assert_eq!(e["id"].as_str().unwrap().len(), 32);
        let start = chrono_micros(e["data"]["window_start"].as_str().unwrap());
        let end = chrono_micros(e["data"]["window_end"].as_str().unwrap());
        assert_eq!(end - start, 1_000_000, "a 1 s window: {e}");
        assert_eq!(e["time"], e["data"]["window_end"]);
        let score = &e["data"]["score"];
        assert!(score["min"].as_i64().unwrap() <= score["max"].as_i64().unwrap());
    }
    // The aggregated events were consumed (acknowledged once their windows were emitted).
    assert!(
        wait_until(async || {
            metric(
                &engine.api,
                "veltrix_pipeline_events_total",
                &["pipeline=\"scores\"", "outcome=\"aggregated\""],
            )
            .await
                == 30.0
        })
        .await
    );
    let emitted = metric(
        &engine.api,
        "veltrix_processor_emitted_events_total",
        &["pipeline=\"scores\""],
    )
    .await;
    assert_eq!(emitted, receiver.events().len() as f64);
    assert!(
        wait_until(async || {
            let stats = get_json(&format!("{}/api/v1/stats", engine.api)).await;
            stats["queues"]
                .as_array()
                .unwrap()
                .iter()
                .all(|q| q["depth_events"] == 0)
        })
        .await,
        "nothing left unacknowledged in either queue"
    );
}

/// µs since the epoch of an RFC 3339 UTC time with microseconds.
fn chrono_micros(text: &str) -> i64 {
    let t = chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339");
    t.timestamp_micros()
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_groups_events_into_writes_of_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let engine = Engine::start(&config(
        dir.path(),
        &format!(
            r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
sink = "hook"
processors = [{{ type = "batch", max_events = 5, max_wait = "300ms" }}]
[sinks.hook]
type = "http"
url = "{}"
"#,
            receiver.url
        ),
    ));
    let events: Vec<Value> = (0..20)
        .map(|i| event(&format!("e{i:02}"), "t", json!(i)))
        .collect();
    post_events(&engine, &events).await;
    assert!(wait_until(async || receiver.delivered().len() == 20).await);
    assert_eq!(receiver.batch_sizes(), [5, 5, 5, 5]);
    // Fewer than max_events: written once max_wait has passed since the first of them.
    let events: Vec<Value> = (0..3)
        .map(|i| event(&format!("f{i}"), "t", json!(i)))
        .collect();
    post_events(&engine, &events).await;
    assert!(wait_until(async || receiver.delivered().len() == 23).await);
    assert_eq!(receiver.batch_sizes(), [5, 5, 5, 5, 3]);
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_sink_batch_events_count",
            &["sink=\"hook\""]
        )
        .await,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_deliver_by_condition_and_a_failing_route_dead_letters_only_its_part() {
    let dir = tempfile::tempdir().unwrap();
    let billing = Receiver::start().await;
    let archive = Receiver::start().await;
    let engine = Engine::start(&config(
        dir.path(),
        &format!(
            r#"
[queues.orders]
types = ["order.*"]
[pipelines.p]
from = ["orders"]
sink = "archive"
routes = [{{ condition = '.type == "order.paid"', sink = "billing" }}]
retry = {{ attempts_max = 2, backoff_initial = "10ms", backoff_max = "10ms" }}
[sinks.archive]
type = "http"
url = "{}"
[sinks.billing]
type = "http"
url = "{}"
"#,
            archive.url, billing.url
        ),
    ));
    let batch = |prefix: &str| -> Vec<Value> {
        (0..6)
            .map(|i| {
                let ty = if i % 2 == 0 {
                    "order.paid"
                } else {
                    "order.created"
                };
                event(&format!("{prefix}{i}"), ty, json!(i))
            })
            .collect()
    };
    let ids = |events: &[Value], ty: &str| -> std::collections::HashSet<String> {
        events
            .iter()
            .filter(|e| e["type"] == ty)
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = batch("a");
    post_events(&engine, &first).await;
    assert!(
        wait_until(async || {
            billing.delivered_ids() == ids(&first, "order.paid")
                && archive.delivered_ids() == ids(&first, "order.created")
        })
        .await,
        "paid orders go to billing, the rest to archive"
    );

    // Billing now refuses every batch for good: only its part is dead-lettered.
    billing.set_mode(Mode::Refuse);
    let second = batch("b");
    post_events(&engine, &second).await;
    let mut archived = ids(&first, "order.created");
    archived.extend(ids(&second, "order.created"));
    assert!(
        wait_until(async || archive.delivered_ids() == archived).await,
        "archive keeps receiving its part"
    );
    assert!(
        wait_until(async || dlq(&engine.api, "p").await.len() == 3).await,
        "the paid orders of the second batch are dead-lettered"
    );
    let entries = dlq(&engine.api, "p").await;
    let dead: std::collections::HashSet<String> = entries
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dead, ids(&second, "order.paid"));
    for e in &entries {
        assert_eq!(e["sink"], "billing");
        assert_eq!(e["reason"], "permanent sink error");
    }
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_pipeline_sink_events_total",
            &["sink=\"billing\"", "outcome=\"dead_lettered\""]
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &engine.api,
            "veltrix_pipeline_sink_events_total",
            &["sink=\"archive\"", "outcome=\"delivered\""]
        )
        .await,
        6.0
    );
    // The stats show both sinks and the route, and keep `sink` for existing consumers (they
    // are sampled once a second).
    let stats_url = format!("{}/api/v1/stats", engine.api);
    assert!(
        wait_until(async || {
            get_json(&stats_url).await["pipelines"][0]["delivered_by_sink"]["archive"] == 6
        })
        .await
    );
    let stats = get_json(&stats_url).await;
    let p = &stats["pipelines"][0];
    assert_eq!(p["sink"], "archive");
    assert_eq!(p["sinks"], json!(["archive", "billing"]));
    assert_eq!(
        p["routes"],
        json!([{"condition": ".type == \"order.paid\"", "sink": "billing"}])
    );
    assert_eq!(p["delivered_by_sink"]["archive"], 6);
    assert_eq!(p["delivered_by_sink"]["billing"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregated_events_are_held_until_emitted_so_a_kill_9_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let topology = |window: &str| {
        format!(
            r#"
[queues.games]
types = ["game.*"]
[queues.totals]
types = ["total.*"]
[pipelines.scores]
from = ["games"]
sink = "none"
processors = [{{ type = "aggregate", key = '.data.player', window = "{window}", into = "totals", event_type = "total.updated" }}]
[pipelines.board]
from = ["totals"]
sink = "hook"
[sinks.none]
type = "blackhole"
[sinks.hook]
type = "http"
url = "{}"
"#,
            receiver.url
        )
    };
    // An hour-long window: nothing is emitted before the kill.
    let engine = Engine::start(&config(dir.path(), &topology("1h")));
    let events: Vec<Value> = (0..40)
        .map(|i| {
            let player = ["x", "y"][i % 2];
            event(&format!("g{i}"), "game.scored", json!({ "player": player }))
        })
        .collect();
    post_events(&engine, &events).await;
    assert!(
        wait_until(async || {
            metric(
                &engine.api,
                "veltrix_pipeline_events_total",
                &["pipeline=\"scores\"", "outcome=\"aggregated\""],
            )
            .await
                == 40.0
        })
        .await
    );
    engine.kill9();
    // The window's events were never acknowledged: the next start aggregates them again.
    let engine = Engine::start(&config(dir.path(), &topology("1s")));
    let counts = |events: &[Value]| {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for e in events {
            *counts
                .entry(e["data"]["key"].as_str().unwrap().to_owned())
                .or_default() += e["data"]["count"].as_u64().unwrap();
        }
        counts
    };
    let want = BTreeMap::from([("x".to_owned(), 20), ("y".to_owned(), 20)]);
    assert!(
        wait_until(async || counts(&receiver.events()) == want).await,
        "every aggregated event counted once after the crash: {:?}",
        counts(&receiver.events())
    );
    drop(engine);
}
