//! End-to-end: the http sink's adaptive concurrency against a receiver that refuses (429) every
//! request beyond a fixed number in flight.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

mod support;
use support::*;

/// The receiver's capacity: requests beyond this many in flight get 429.
const CAPACITY: u64 = 4;
/// Where the first test's limit starts: above capacity, so it must learn to come down.
const INITIAL: u64 = 8;

#[tokio::test(flavor = "multi_thread")]
async fn the_limit_settles_within_the_receivers_capacity_and_everything_arrives() {
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(20));
    receiver.set_concurrent_max(CAPACITY);
    let dir = tempfile::tempdir().unwrap();
    // 16 workers could send 16 requests at once; the sink starts at INITIAL and must learn 4.
    let cfg = config(
        dir.path(),
        &format!(
            r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
workers = 16
batch_events_max = 5
retry = {{ attempts_max = 1000, backoff_initial = "10ms", backoff_max = "50ms" }}
sink = "hook"
[sinks.hook]
type = "http"
url = "{}"
concurrency = {{ initial = {INITIAL}, max = 32 }}
"#,
            receiver.url
        ),
    );
    let engine = Engine::start(&cfg);
    let api = engine.api.clone();
    let limit =
        async || metric(&api, "veltrix_sink_concurrency_limit", &["sink=\"hook\""]).await as u64;
    assert_eq!(limit().await, INITIAL, "starts at `initial`");
    let mut ids = HashSet::new();
    for request in 0..6 {
        let events: Vec<Value> = (0..250)
            .map(|i| {
                let id = format!("c{request}-{i}");
                ids.insert(id.clone());
                json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t"})
            })
            .collect();
        let (status, body) =
            post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
        assert_eq!(status, 202, "{body}");
    }
    // Sample the limit while the backlog drains (300 requests of 5 events, 20 ms each).
    let mut samples = Vec::new();
    let delivered = wait_until(async || {
        samples.push(limit().await);
        receiver.delivered_ids().len() == ids.len()
    })
    .await;
    assert!(
        delivered,
        "{} of {} delivered",
        receiver.delivered_ids().len(),
        ids.len()
    );
    assert_eq!(receiver.delivered_ids(), ids, "everything arrives");
    assert!(
        receiver.too_many() > 0,
        "the limit was above capacity at first"
    );
    // AIMD probes above what the receiver takes, then halves: once the limit has come down to
    // capacity it sits at or below it on average and never climbs back to `initial`. (It may
    // probe beyond capacity + 1 while the backlog's tail leaves requests too few to overlap.)
    let learnt: Vec<u64> = samples
        .iter()
        .copied()
        .skip_while(|&l| l > CAPACITY)
        .collect();
    assert!(
        !learnt.is_empty(),
        "the limit came down to capacity: {samples:?}"
    );
    assert!(
        learnt.iter().all(|&l| (1..INITIAL).contains(&l)),
        "{samples:?}"
    );
    let mean = learnt.iter().sum::<u64>() as f64 / learnt.len() as f64;
    assert!(mean <= CAPACITY as f64, "mean {mean}: {samples:?}");
    assert!(engine.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_503_bring_the_limit_down_and_retries_deliver_everything() {
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(10));
    receiver.set_mode(Mode::Flaky); // 503 on 30 % of requests
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            r#"
[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
workers = 16
batch_events_max = 5
retry = {{ attempts_max = 1000, backoff_initial = "10ms", backoff_max = "50ms" }}
sink = "hook"
[sinks.hook]
type = "http"
url = "{}"
concurrency = {{ initial = 16, max = 32 }}
"#,
            receiver.url
        ),
    );
    let engine = Engine::start(&cfg);
    let api = engine.api.clone();
    let limit =
        async || metric(&api, "veltrix_sink_concurrency_limit", &["sink=\"hook\""]).await as u64;
    assert_eq!(limit().await, 16, "starts at `initial`");
    let events: Vec<Value> = (0..500)
        .map(|i| json!({"specversion": "1.0", "id": format!("f{i}"), "source": "/t", "type": "t"}))
        .collect();
    let (status, body) = post(&engine.ingest, "application/x-ndjson", ndjson(&events), &[]).await;
    assert_eq!(status, 202, "{body}");
    let mut samples = Vec::new();
    let delivered = wait_until(async || {
        samples.push(limit().await);
        receiver.delivered_ids().len() == events.len()
    })
    .await;
    assert!(
        delivered,
        "{} of 500 delivered",
        receiver.delivered_ids().len()
    );
    assert!(
        receiver.attempts().values().any(|&n| n > 1),
        "some batches were refused with 503 and retried"
    );
    // Each round trip with a 503 halves the limit: with 30 % refused it cannot stay up.
    let lowest = samples.iter().copied().min().unwrap();
    assert!(lowest <= 4, "the limit came down from 16: {samples:?}");
    assert!(engine.stop().success());
}
