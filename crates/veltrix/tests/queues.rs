//! The queue promises, end to end with the real binary: retries and dead letters, fan-out
//! isolation, priorities with a starvation bound, when-full policies, bounded memory.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::*;

/// The tests that report timings or memory run one at a time, so a flood in one does not
/// distort the figures of another on a 2-core machine.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn order(id: &str, ty: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": ty, "data": {"n": 1}})
}

/// Posts `events` as one NDJSON request and expects 202.
async fn post_ok(engine: &Engine, events: &[Value]) -> Value {
    let (status, body) = post(&engine.ingest, "application/x-ndjson", ndjson(events), &[]).await;
    assert_eq!(status, 202, "{body}");
    body
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn http_pipeline(url: &str, retry: &str) -> String {
    format!(
        r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
batch_events_max = 10
retry = {retry}
sink = "downstream"
[sinks.downstream]
type = "http"
url = "{url}"
timeout = "5s"
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_that_always_fails_dead_letters_every_event_after_exactly_attempts_max() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let retry = r#"{ attempts_max = 3, backoff_initial = "5ms", backoff_max = "20ms" }"#;
    let engine = Engine::start(&config(dir.path(), &http_pipeline(&receiver.url, retry)));
    let sent = ids("doomed", 50);
    let events: Vec<Value> = sent.iter().map(|id| order(id, "order.created")).collect();
    post_ok(&engine, &events).await;
    let api = engine.api.clone();
    assert!(
        wait_until(async || dlq(&api, "p").await.len() == 50).await,
        "all 50 dead-lettered"
    );
    let entries = dlq(&api, "p").await;
    let attempts = receiver.attempts();
    for entry in &entries {
        let id = entry["id"].as_str().unwrap();
        assert_eq!(entry["reason"], "retries exhausted");
        assert_eq!(entry["attempts"], 3);
        assert_eq!(
            attempts[id], 3,
            "the sink saw {id} exactly attempts_max times"
        );
        assert!(
            entry["last_error"].as_str().unwrap().contains("500"),
            "{entry}"
        );
        assert_eq!(
            entry["event"]["type"], "order.created",
            "the original event, untouched"
        );
        assert_eq!(entry["pipeline"], "p");
        assert_eq!(entry["sink"], "downstream");
        assert!(
            entry["first_attempt_at"].as_str().unwrap()
                <= entry["last_attempt_at"].as_str().unwrap()
        );
    }
    let listed: HashSet<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(listed, sent.iter().map(String::as_str).collect());
    assert_eq!(receiver.delivered().len(), 0);

    // The sink heals; replaying through the CLI delivers every event once more.
    receiver.set_mode(Mode::Accept);
    let first_two = [sent[0].as_str(), sent[1].as_str()];
    let output = Command::new(BIN)
        .args([
            "dlq",
            "replay",
            "p",
            "--api",
            &api,
            "--id",
            first_two[0],
            "--id",
            first_two[1],
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(wait_until(async || receiver.delivered_ids().len() == 2).await);
    assert_eq!(
        dlq(&api, "p").await.len(),
        48,
        "the others stay dead-lettered"
    );
    let output = Command::new(BIN)
        .args(["dlq", "replay", "p", "--api", &api, "--all"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        wait_until(async || receiver.delivered_ids().len() == 50).await,
        "replay delivers all"
    );
    assert!(dlq(&api, "p").await.is_empty());
    let listing = Command::new(BIN)
        .args(["dlq", "list", "p", "--api", &api])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("0 dead-lettered event(s)"));
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flaky_sink_ends_with_every_event_delivered_or_dead_lettered_never_both() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Flaky);
    let dir = tempfile::tempdir().unwrap();
    let retry = r#"{ attempts_max = 2, backoff_initial = "1ms", backoff_max = "5ms" }"#;
    let engine = Engine::start(&config(dir.path(), &http_pipeline(&receiver.url, retry)));
    let sent = ids("flaky", 1000);
    for chunk in sent.chunks(100) {
        let events: Vec<Value> = chunk.iter().map(|id| order(id, "order.created")).collect();
        post_ok(&engine, &events).await;
    }
    let api = engine.api.clone();
    let all: HashSet<String> = sent.iter().cloned().collect();
    let settled = wait_until(async || {
        let dead = dlq(&api, "p").await.len();
        receiver.delivered_ids().len() + dead >= all.len()
    })
    .await;
    assert!(settled);
    let delivered = receiver.delivered_ids();
    let dead: HashSet<String> = dlq(&api, "p")
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        delivered.is_disjoint(&dead),
        "an event was both delivered and dead-lettered"
    );
    let union: HashSet<String> = delivered.union(&dead).cloned().collect();
    assert_eq!(union, all, "no event lost");
    assert!(
        !dead.is_empty() && !delivered.is_empty(),
        "30 % failures with 2 attempts leave some of each"
    );
    assert_eq!(
        receiver.delivered().len(),
        delivered.len(),
        "each delivered event arrived once"
    );
    println!(
        "flaky sink: {} delivered, {} dead-lettered",
        delivered.len(),
        dead.len()
    );

    // A permanent refusal skips the remaining attempts.
    receiver.set_mode(Mode::Refuse);
    post_ok(&engine, &[order("refused-1", "order.created")]).await;
    assert!(wait_until(async || dlq(&api, "p").await.iter().any(|e| e["id"] == "refused-1")).await);
    let entry = dlq(&api, "p")
        .await
        .into_iter()
        .find(|e| e["id"] == "refused-1")
        .unwrap();
    assert_eq!(entry["reason"], "permanent sink error");
    assert_eq!(entry["attempts"], 1);
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_failing_sink_does_not_slow_the_other_pipeline_on_the_same_queue() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let topology = format!(
        r#"
[queues.q]
types = ["*"]
[pipelines.archive]
from = ["q"]
sink = "file"
[pipelines.forward]
from = ["q"]
batch_events_max = 50
retry = {{ attempts_max = 1000, backoff_initial = "10ms", backoff_max = "50ms" }}
sink = "downstream"
[sinks.file]
type = "file"
path = "{{dir}}/out/archive.ndjson"
[sinks.downstream]
type = "http"
url = "{}"
"#,
        receiver.url
    );
    let engine = Engine::start(&config(dir.path(), &topology));
    let sent = ids("fan", 2000);
    let file = dir.path().join("out/archive.ndjson");
    let started = Instant::now();
    for chunk in sent.chunks(100) {
        let events: Vec<Value> = chunk.iter().map(|id| order(id, "order.created")).collect();
        post_ok(&engine, &events).await;
    }
    let lines = wait_for_sink(&file, |l| l.len() >= sent.len());
    let archive_took = started.elapsed();
    assert_eq!(
        lines.len(),
        sent.len(),
        "the healthy pipeline delivered everything"
    );
    assert!(
        receiver.delivered().is_empty(),
        "the other sink is still failing"
    );
    let retries = metric(
        &engine.api,
        "veltrix_pipeline_retries_total",
        &["pipeline=\"forward\""],
    )
    .await;
    assert!(retries > 0.0);
    // The failing sink recovers: its backlog drains and nothing was lost.
    receiver.set_mode(Mode::Accept);
    assert!(wait_until(async || receiver.delivered_ids().len() == sent.len()).await);
    assert_eq!(
        receiver.delivered_ids(),
        sent.iter().cloned().collect::<HashSet<_>>()
    );
    println!(
        "fan-out: archive delivered {} events in {archive_took:?} while forward retried {retries} times",
        sent.len()
    );
    assert!(engine.stop().success());
}

/// p99 (nearest rank) of durations in milliseconds.
fn p99_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    let rank = ((samples.len() as f64) * 0.99).ceil() as usize;
    samples[rank.max(1) - 1].as_secs_f64() * 1e3
}

/// Sends `ids` of `ty` one per `every`, recording when each was sent.
async fn trickle(
    engine: &Engine,
    prefix: &str,
    ty: &str,
    n: usize,
    every: Duration,
) -> HashMap<String, Instant> {
    let mut sent = HashMap::new();
    for id in ids(prefix, n) {
        sent.insert(id.clone(), Instant::now());
        post_ok(engine, &[order(&id, ty)]).await;
        tokio::time::sleep(every).await;
    }
    sent
}

/// Floods `ty` at about `per_second` events/s until `until`.
async fn flood(
    ingest: String,
    prefix: &'static str,
    ty: &'static str,
    per_second: usize,
    until: Instant,
) -> usize {
    let mut n = 0;
    let tick = Duration::from_millis(20);
    let per_tick = per_second / 50;
    while Instant::now() < until {
        let events: Vec<Value> = (0..per_tick)
            .map(|i| order(&format!("{prefix}-{}", n + i), ty))
            .collect();
        n += per_tick;
        let (status, _) = post(&ingest, "application/x-ndjson", ndjson(&events), &[]).await;
        assert_eq!(status, 202);
        tokio::time::sleep(tick).await;
    }
    n
}

fn latencies(receiver: &Receiver, sent: &HashMap<String, Instant>) -> Vec<Duration> {
    receiver
        .delivered()
        .into_iter()
        .filter_map(|(id, at)| sent.get(&id).map(|s| at - *s))
        .collect()
}

// `memory` durability: these tests pin the scheduler, and a disk's fdatasync tail (hundreds of
// milliseconds now and then on a busy virtual disk) would be measured with it.
const PRIORITIES: &str = r#"
[queues.critical]
types = ["payment.*"]
priority = 0
durability = "memory"
[queues.bulk]
types = ["*"]
priority = 10
durability = "memory"
[pipelines.p]
from = ["critical", "bulk"]
workers = 1
batch_events_max = 20
starvation_max = "{starvation}"
sink = "downstream"
[sinks.downstream]
type = "http"
url = "{url}"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn critical_events_stay_fast_while_a_low_priority_queue_floods() {
    let _alone = TIMED.lock().await;
    let receiver = Receiver::start().await;
    // 20 ms per batch of at most 20: the pipeline's capacity is about 1,000 events/s.
    receiver.set_delay(Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    let topology = PRIORITIES
        .replace("{url}", &receiver.url)
        .replace("{starvation}", "10s");
    let engine = Engine::start(&config(dir.path(), &topology));
    let unloaded_sent = trickle(
        &engine,
        "calm",
        "payment.captured",
        20,
        Duration::from_millis(30),
    )
    .await;
    assert!(wait_until(async || latencies(&receiver, &unloaded_sent).len() == 20).await);
    let unloaded = p99_ms(latencies(&receiver, &unloaded_sent));

    let until = Instant::now() + Duration::from_secs(3);
    let flooding = tokio::spawn(flood(
        engine.ingest.clone(),
        "bulk",
        "order.created",
        3000,
        until,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await; // let a backlog build
    let loaded_sent = trickle(
        &engine,
        "storm",
        "payment.captured",
        20,
        Duration::from_millis(100),
    )
    .await;
    let flooded = flooding.await.unwrap();
    assert!(wait_until(async || latencies(&receiver, &loaded_sent).len() == 20).await);
    let loaded = p99_ms(latencies(&receiver, &loaded_sent));
    let bulk_delivered = receiver
        .delivered()
        .iter()
        .filter(|(id, _)| id.starts_with("bulk"))
        .count();
    println!(
        "priorities: critical p99 unloaded {unloaded:.1} ms, under a {flooded}-event flood at ~3× capacity {loaded:.1} ms ({bulk_delivered} bulk delivered meanwhile)"
    );
    assert!(
        flooded > bulk_delivered + 1000,
        "the flood outran the pipeline: {flooded} sent, {bulk_delivered} delivered"
    );
    assert!(
        loaded <= 4.0 * unloaded + 50.0,
        "critical p99 {loaded:.1} ms vs unloaded {unloaded:.1} ms"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_low_priority_event_waits_no_longer_than_starvation_max() {
    let _alone = TIMED.lock().await;
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    let topology = PRIORITIES
        .replace("{url}", &receiver.url)
        .replace("{starvation}", "300ms");
    let engine = Engine::start(&config(dir.path(), &topology));
    let until = Instant::now() + Duration::from_secs(3);
    let flooding = tokio::spawn(flood(
        engine.ingest.clone(),
        "urgent",
        "payment.captured",
        3000,
        until,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = trickle(
        &engine,
        "patient",
        "order.created",
        10,
        Duration::from_millis(150),
    )
    .await;
    assert!(wait_until(async || latencies(&receiver, &sent).len() == 10).await);
    let waits = latencies(&receiver, &sent);
    let worst = waits.iter().max().unwrap().as_secs_f64() * 1e3;
    let flooded = flooding.await.unwrap();
    let urgent_delivered = receiver
        .delivered()
        .iter()
        .filter(|(id, _)| id.starts_with("urgent"))
        .count();
    println!(
        "starvation: worst low-priority wait {worst:.0} ms with starvation_max 300 ms, under a {flooded}-event critical flood ({urgent_delivered} delivered)"
    );
    assert!(
        flooded > urgent_delivered + 1000,
        "the critical queue had a backlog throughout"
    );
    // The bound plus one batch in flight (20 ms) and scheduling slack.
    assert!(
        worst <= 300.0 + 400.0,
        "a low-priority event waited {worst:.0} ms"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_full_drop_newest_accepts_and_counts_what_it_drops() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let topology = stuck_behind(
        &receiver.url,
        "max_events = 50\nwhen_full = \"drop_newest\"\n",
        "50ms",
        "100ms",
    );
    let engine = Engine::start(&config(dir.path(), &topology));
    let mut dropped = 0;
    for chunk in ids("d", 100).chunks(10) {
        let events: Vec<Value> = chunk.iter().map(|id| order(id, "order.created")).collect();
        let body = post_ok(&engine, &events).await;
        dropped += body["dropped"].as_u64().unwrap_or(0);
    }
    assert_eq!(
        dropped, 50,
        "the 50 that did not fit were dropped, the request still accepted"
    );
    let counted = metric(
        &engine.api,
        "veltrix_events_dropped_total",
        &[
            "queue=\"q\"",
            "reason=\"queue_full\"",
            "intentional=\"true\"",
        ],
    )
    .await;
    assert_eq!(counted, 50.0);
    receiver.set_mode(Mode::Accept);
    assert!(wait_until(async || receiver.delivered_ids().len() == 50).await);
    let delivered = receiver.delivered_ids();
    assert!(
        delivered.contains("d-00000") && !delivered.contains("d-00099"),
        "the newest were dropped"
    );
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn when_full_drop_oldest_makes_room_for_new_events() {
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let topology = stuck_behind(
        &receiver.url,
        "max_bytes = \"64KiB\"\nwhen_full = \"drop_oldest\"\n",
        "50ms",
        "100ms",
    );
    let engine = Engine::start(&config(dir.path(), &topology));
    let sent = ids("o", 1000);
    for chunk in sent.chunks(20) {
        let events: Vec<Value> = chunk.iter().map(|id| order(id, "order.created")).collect();
        let body = post_ok(&engine, &events).await;
        assert!(
            body.get("dropped").is_none(),
            "new events are never the ones dropped: {body}"
        );
    }
    let counted = metric(
        &engine.api,
        "veltrix_events_dropped_total",
        &["queue=\"q\"", "reason=\"drop_oldest\""],
    )
    .await;
    assert!(
        counted > 300.0,
        "1,000 × ~130 B do not fit in 64 KiB: {counted} dropped"
    );
    receiver.set_mode(Mode::Accept);
    assert!(
        wait_until(async || receiver.delivered_ids().contains("o-00999")).await,
        "the newest survive"
    );
    let delivered = receiver.delivered_ids();
    assert!(!delivered.contains("o-00100"), "old events were dropped");
    assert!(engine.stop().success());
}

/// One queue `q` (with extra `queue_settings` lines) read by pipeline `p` into an http sink at
/// `url` that is retried (almost) forever with the given backoff: events stay queued while the
/// receiver fails.
fn stuck_behind(
    url: &str,
    queue_settings: &str,
    backoff_initial: &str,
    backoff_max: &str,
) -> String {
    format!(
        "[queues.q]\ntypes = [\"*\"]\n{queue_settings}[pipelines.p]\nfrom = [\"q\"]\n\
         retry = {{ attempts_max = 1000, backoff_initial = \"{backoff_initial}\", backoff_max = \"{backoff_max}\" }}\n\
         sink = \"downstream\"\n[sinks.downstream]\ntype = \"http\"\nurl = \"{url}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_while_the_backlog_grows_far_past_it() {
    let _alone = TIMED.lock().await;
    const RSS_BOUND: u64 = 96 << 20;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let topology = stuck_behind(&receiver.url, "max_bytes = \"2GiB\"\n", "100ms", "200ms");
    let engine = Engine::start(&config(dir.path(), &topology));
    let pid = engine.child.id();
    // ~1 MiB requests of ~1 KiB events until the backlog is 3× the memory bound.
    let pad = "x".repeat(900);
    let mut n = 0;
    let mut peak = 0;
    let mut backlog = 0u64;
    while backlog < 3 * RSS_BOUND {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"specversion": "1.0", "id": format!("m-{}", n + i), "source": "/t", "type": "bulk", "data": {"pad": pad}}))
            .collect();
        n += 1000;
        let body = ndjson(&events);
        backlog += body.len() as u64;
        let (status, answer) = post(&engine.ingest, "application/x-ndjson", body, &[]).await;
        assert_eq!(status, 202, "{answer}");
        peak = peak.max(proc_memory_bytes(pid, "VmRSS"));
    }
    println!(
        "memory: backlog {} MiB, engine peak RSS {} MiB (bound {} MiB)",
        backlog >> 20,
        peak >> 20,
        RSS_BOUND >> 20
    );
    assert!(peak < RSS_BOUND, "RSS {} MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_holds_up_the_events_behind_it_at_most_attempts_max_times_backoff_max() {
    let _alone = TIMED.lock().await;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::FailPoison);
    let dir = tempfile::tempdir().unwrap();
    let topology = format!(
        r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
workers = 1
batch_events_max = 1
retry = {{ attempts_max = 4, backoff_initial = "100ms", backoff_max = "200ms" }}
sink = "downstream"
[sinks.downstream]
type = "http"
url = "{}"
"#,
        receiver.url
    );
    let engine = Engine::start(&config(dir.path(), &topology));
    let started = Instant::now();
    post_ok(
        &engine,
        &[
            order("poison-1", "order.created"),
            order("behind-1", "order.created"),
        ],
    )
    .await;
    assert!(wait_until(async || receiver.delivered_ids().contains("behind-1")).await);
    let held = started.elapsed();
    println!("poison: the event behind it was delivered after {held:?} (bound 4 × 200 ms)");
    // Three waits of at most 200 ms each between four attempts, plus request time and slack.
    assert!(
        held < Duration::from_millis(4 * 200 + 500),
        "held up {held:?}"
    );
    let api = engine.api.clone();
    assert!(wait_until(async || dlq(&api, "p").await.len() == 1).await);
    assert_eq!(receiver.attempts()["poison-1"], 4);
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_worker_delivers_a_queue_in_order() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let topology = http_pipeline(&receiver.url, "{ attempts_max = 3 }")
        .replace("batch_events_max = 10", "batch_events_max = 7\nworkers = 1");
    let engine = Engine::start(&config(dir.path(), &topology));
    let sent = ids("ordered", 500);
    for chunk in sent.chunks(50) {
        let events: Vec<Value> = chunk.iter().map(|id| order(id, "order.created")).collect();
        post_ok(&engine, &events).await;
    }
    assert!(wait_until(async || receiver.delivered().len() == sent.len()).await);
    let arrived: Vec<String> = receiver.delivered().into_iter().map(|(id, _)| id).collect();
    assert_eq!(arrived, sent, "queue order kept with one worker");
    assert!(engine.stop().success());
}
