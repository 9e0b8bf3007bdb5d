//! Config unit tests (`[[tests]]`, `veltrix test`): a pipeline's real processors run on the
//! test's input events, with the sink replaced by a capture.
//!
//! Nothing here re-implements processing: each input is decoded and validated as ingest decodes
//! a structured-mode body, routed by the config's [`Router`] (an event the pipeline would never
//! read fails the test; a pipeline reading a queue that a queue sink or an aggregate feeds takes
//! every input, as it would from the stage before it), stored as ingest stores it (record prefix + compact JSON), and run
//! through the pipeline's [`Chain`] built exactly as the engine builds it. What the chain appends
//! is what the sink would receive (one NDJSON line per delivered event); an event the chain
//! fails on is what the pipeline would dead-letter.
//!
//! Every outcome is compared: the delivered events with `expect` (in order and in number, each
//! a subset match: objects recursively, arrays and scalars exactly, `1` equal to `1.0`) and
//! their sinks with `expect_sinks`, the dead-lettered events with `expect_dead_letter`, and the
//! derived events of an aggregate with `expect_emitted`.
//!
//! Determinism: a test runs on a frozen clock ([`TEST_CLOCK_MICROS`], 2000-01-01T00:00:00Z) with
//! fresh processor state, so a throttle lets exactly its `burst` through, a dedupe drops every
//! repeat, samples hash as they do in production, and every input falls in one aggregate
//! window; when the inputs are done every open window closes, and what it emits is compared
//! with `expect_emitted`.

use std::fmt;

use std::sync::Arc;

use serde_json::Value as Json;
use veltrix_core::config::{
    Config, ConfigTest, DeadLetterExpectation, Location, PipelineConfig, ProcessorConfig, Router,
};
use veltrix_core::event::{self, DecodeError, Event};

use crate::handler::Plugins;
use crate::processors::{Chain, FrozenClock, Input, Outcome, Output, Scratch};
use crate::record;

/// The instant config tests run at: 2000-01-01T00:00:00Z, in µs since the Unix epoch.
pub const TEST_CLOCK_MICROS: u64 = 946_684_800_000_000;

/// What became of one input event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventOutcome {
    /// `sink` received this event (the NDJSON line, parsed).
    Delivered { event: Json, sink: String },
    /// A filter (or a custom processor) dropped it.
    Filtered,
    /// A dedupe, throttle or sample processor dropped it: which one ("processor 1 (dedupe)").
    Dropped(String),
    /// An aggregate consumed it (what the aggregate emits is in [`TestOutcome::emitted`]).
    Aggregated,
    /// A processor failed on it: the pipeline would dead-letter it with this reason.
    DeadLettered(String),
    /// It never reaches the pipeline: no queue the pipeline reads takes its type, or ingest
    /// would refuse it.
    NotReceived(String),
}

/// One input event and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputResult {
    /// Index in the test's `input`.
    pub index: usize,
    /// The event's id (generated when the input has none).
    pub id: String,
    pub outcome: EventOutcome,
}

/// One way a test failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// What is wrong, e.g. "delivered event 0 does not match expect[0]".
    pub message: String,
    /// For a mismatching event: every differing path.
    pub mismatches: Vec<Mismatch>,
}

/// One differing value in a subset match.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Where, e.g. `data.total` or `data.tags` (empty: the whole event).
    pub path: String,
    /// The expected value.
    pub expected: Json,
    /// The actual value; `None` when the key is missing.
    pub actual: Option<Json>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "the event"
        } else {
            &self.path
        };
        match &self.actual {
            Some(actual) => write!(f, "{path}: expected {}, actual {actual}", self.expected),
            None => write!(f, "{path}: expected {}, actual: missing", self.expected),
        }
    }
}

/// The result of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub name: String,
    pub pipeline: String,
    /// Where the test is declared.
    pub location: Location,
    /// Per input event, in order.
    pub results: Vec<InputResult>,
    /// The derived events the pipeline's aggregate emitted when the test ended, in order.
    pub emitted: Vec<Json>,
    /// Empty when the test passed.
    pub failures: Vec<Failure>,
}

impl TestOutcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The delivered events, in order.
    pub fn delivered(&self) -> impl Iterator<Item = &Json> {
        self.results.iter().filter_map(|r| match &r.outcome {
            EventOutcome::Delivered { event, .. } => Some(event),
            _ => None,
        })
    }
}

/// Runs every test of `config`, in file order.
/// Custom processor types come from `plugins`.
pub fn run_config_tests(config: &Config, plugins: &Plugins) -> Vec<TestOutcome> {
    config
        .tests
        .iter()
        .map(|test| run_pipeline_test(config, test, plugins))
        .collect()
}

/// Runs one test against the real processor chain of its pipeline.
///
/// # Panics
/// If `test.pipeline` is not a pipeline of `config` (a loaded config's tests always name one).
pub fn run_pipeline_test(config: &Config, test: &ConfigTest, plugins: &Plugins) -> TestOutcome {
    let pipeline = &config.pipelines[test.pipeline.as_str()];
    let clock = Arc::new(FrozenClock {
        wall_micros: TEST_CLOCK_MICROS,
    });
    let chain = match Chain::new(&test.pipeline, pipeline, plugins, clock) {
        Ok(chain) => chain,
        Err(why) => {
            return TestOutcome {
                name: test.name.clone(),
                pipeline: test.pipeline.clone(),
                location: test.location.clone(),
                results: Vec::new(),
                emitted: Vec::new(),
                failures: vec![Failure {
                    message: format!("the pipeline cannot start: {why}"),
                    mismatches: Vec::new(),
                }],
            };
        }
    };
    let router = Router::new(config);
    // A later stage (reading a queue a queue sink or an aggregate feeds) gets its events from
    // the stage before it, whatever their type: they are not routed.
    let fed = veltrix_core::config::lints::fed_queues(config);
    let staged = pipeline.from.iter().any(|q| fed.contains(&q.as_str()));
    let mut scratch = chain.scratch();
    let mut results = Vec::with_capacity(test.input.len());
    for (index, input) in test.input.iter().enumerate() {
        let event = match decode(input) {
            Ok(event) => event,
            Err(why) => {
                results.push(InputResult {
                    index,
                    id: input["id"].as_str().unwrap_or_default().to_owned(),
                    outcome: EventOutcome::NotReceived(why),
                });
                continue;
            }
        };
        let id = event.id().to_owned();
        let routed = router.route(event.ty()).map(|q| router.queue_name(q));
        let outcomes = match routed {
            _ if staged => process(&chain, pipeline, &mut scratch, &event),
            None => vec![EventOutcome::NotReceived(format!(
                "no queue takes type `{}`: ingest answers 422",
                event.ty()
            ))],
            Some(queue) if !pipeline.from.iter().any(|q| q == queue) => {
                vec![EventOutcome::NotReceived(format!(
                    "type `{}` is routed to queue `{queue}`, which pipeline `{}` does not read",
                    event.ty(),
                    test.pipeline
                ))]
            }
            Some(_) => process(&chain, pipeline, &mut scratch, &event),
        };
        // A processor that splits an event delivers several: one result each.
        results.extend(outcomes.into_iter().map(|outcome| InputResult {
            index,
            id: id.clone(),
            outcome,
        }));
    }
    // The test is over: every open window closes.
    let emitted: Vec<Json> = chain
        .aggregate()
        .map(|a| a.take_closed(u64::MAX))
        .unwrap_or_default()
        .into_iter()
        .flat_map(|window| window.events)
        .map(|e| serde_json::from_slice(&e).expect("a derived event is JSON"))
        .collect();
    let failures = compare(test, &results, &emitted);
    TestOutcome {
        name: test.name.clone(),
        pipeline: test.pipeline.clone(),
        location: test.location.clone(),
        results,
        emitted,
        failures,
    }
}

/// The input as ingest decodes a structured-mode body (`id` generated when absent).
fn decode(input: &Json) -> Result<Event, String> {
    let body = serde_json::to_vec(input).expect("JSON values always serialise");
    let no_headers: &[(&str, &str)] = &[];
    match event::decode_body("application/cloudevents+json", no_headers, &body) {
        Ok(mut events) if events.len() == 1 => Ok(events.remove(0)),
        Ok(events) => Err(format!("decoded to {} events, not one", events.len())),
        Err(DecodeError::Invalid(errors)) => Err(errors
            .into_iter()
            .map(|e| e.message)
            .collect::<Vec<_>>()
            .join("; ")),
        Err(e) => Err(e.to_string()),
    }
}

/// Stores the event as ingest does and runs the chain on the record's body as a worker does.
fn process(
    chain: &Chain,
    pipeline: &PipelineConfig,
    scratch: &mut Scratch,
    event: &Event,
) -> Vec<EventOutcome> {
    let mut stored = Vec::new();
    record::write_event(
        &mut stored,
        record::now_micros(),
        &event.into(),
        &mut Vec::new(),
    );
    let parts = record::parts(&stored);
    let mut output = Output::new(chain.sinks());
    let input = Input {
        owner: None,
        body: parts.body,
        members: parts.members,
        index: 0,
        ack: None,
    };
    let outcome = chain.apply(&input, scratch, &mut output);
    // Nothing is delivered for real: no dedupe key is forgotten after a delivery failure.
    chain.settle(scratch, |_| false);
    match outcome {
        Outcome::Emitted(_) => {
            let sinks = pipeline.sinks();
            output
                .parts
                .iter()
                .zip(sinks)
                .flat_map(|(part, sink)| {
                    part.ndjson
                        .split(|b| *b == b'\n')
                        .filter(|line| !line.is_empty())
                        .map(move |line| match serde_json::from_slice(line) {
                            Ok(event) => EventOutcome::Delivered {
                                event,
                                sink: sink.to_owned(),
                            },
                            Err(e) => EventOutcome::DeadLettered(format!(
                                "the sink line is not JSON: {e}"
                            )),
                        })
                })
                .collect()
        }
        Outcome::Filtered { by } => {
            let dropping = by.and_then(|i| pipeline.processors.get(i));
            match dropping {
                Some(
                    ProcessorConfig::Dedupe(_)
                    | ProcessorConfig::Throttle(_)
                    | ProcessorConfig::Sample(_),
                ) => vec![EventOutcome::Dropped(chain.describe(by.expect("some")))],
                _ => vec![EventOutcome::Filtered],
            }
        }
        Outcome::Aggregated => vec![EventOutcome::Aggregated],
        Outcome::DeadLetter { error, .. } => vec![EventOutcome::DeadLettered(error)],
    }
}

fn compare(test: &ConfigTest, results: &[InputResult], emitted: &[Json]) -> Vec<Failure> {
    let mut failures = Vec::new();
    let failure = |message: String| Failure {
        message,
        mismatches: Vec::new(),
    };
    for r in results {
        if let EventOutcome::NotReceived(why) = &r.outcome {
            failures.push(failure(format!(
                "input[{}] (id {}) never reaches the pipeline: {why}",
                r.index, r.id
            )));
        }
    }

    let delivered: Vec<(&InputResult, &Json)> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            EventOutcome::Delivered { event, .. } => Some((r, event)),
            _ => None,
        })
        .collect();
    if let Some(expected) = &test.expect_sinks {
        let sinks = results.iter().filter_map(|r| match &r.outcome {
            EventOutcome::Delivered { sink, .. } => Some((r, sink)),
            _ => None,
        });
        for (i, ((r, actual), expected)) in sinks.zip(expected).enumerate() {
            if actual != expected {
                failures.push(Failure {
                    message: format!(
                        "delivered event {i} (from input[{}], id {}) went to another sink",
                        r.index, r.id
                    ),
                    mismatches: vec![Mismatch {
                        path: "sink".to_owned(),
                        expected: Json::String(expected.clone()),
                        actual: Some(Json::String(actual.clone())),
                    }],
                });
            }
        }
    }
    if emitted.len() != test.expect_emitted.len() {
        failures.push(failure(format!(
            "expected {} emitted event(s), the pipeline's aggregate emitted {}",
            test.expect_emitted.len(),
            emitted.len()
        )));
    }
    for (i, (expected, actual)) in test.expect_emitted.iter().zip(emitted).enumerate() {
        let mismatches = subset_mismatches(expected, actual);
        if !mismatches.is_empty() {
            failures.push(Failure {
                message: format!("emitted event {i} does not match expect_emitted[{i}]"),
                mismatches,
            });
        }
    }
    if delivered.len() != test.expect.len() {
        failures.push(failure(format!(
            "expected {} delivered event(s), the sink received {}",
            test.expect.len(),
            delivered.len()
        )));
    }
    for (i, (r, actual)) in delivered.iter().enumerate() {
        match test.expect.get(i) {
            Some(expected) => {
                let mismatches = subset_mismatches(expected, actual);
                if !mismatches.is_empty() {
                    failures.push(Failure {
                        message: format!(
                            "delivered event {i} (from input[{}], id {}) does not match \
                             expect[{i}]",
                            r.index, r.id
                        ),
                        mismatches,
                    });
                }
            }
            None => failures.push(failure(format!(
                "unexpected delivered event {i} (from input[{}]): {actual}",
                r.index
            ))),
        }
    }
    for (i, expected) in test.expect.iter().enumerate().skip(delivered.len()) {
        failures.push(failure(format!(
            "expect[{i}] {expected}: no such event was delivered"
        )));
    }

    let dead: Vec<(&InputResult, &str)> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            EventOutcome::DeadLettered(why) => Some((r, why.as_str())),
            _ => None,
        })
        .collect();
    match &test.expect_dead_letter {
        None => {
            for (r, why) in &dead {
                failures.push(failure(format!(
                    "input[{}] (id {}) was dead-lettered: {why}",
                    r.index, r.id
                )));
            }
        }
        Some(expectation) => {
            if dead.is_empty() {
                failures.push(failure(
                    "expected a dead-lettered event, but no processor failed".to_owned(),
                ));
            }
            if let DeadLetterExpectation::ReasonContains(text) = expectation {
                for (r, why) in &dead {
                    if !why.contains(text.as_str()) {
                        failures.push(Failure {
                            message: format!(
                                "input[{}] (id {}) was dead-lettered for another reason",
                                r.index, r.id
                            ),
                            mismatches: vec![Mismatch {
                                path: "reason".to_owned(),
                                expected: Json::String(format!("… {text} …")),
                                actual: Some(Json::String((*why).to_owned())),
                            }],
                        });
                    }
                }
            }
        }
    }
    failures
}

/// Every path where `actual` does not contain `expected`: objects match when each expected key
/// is present with a matching value (recursively); arrays and scalars must be equal (numbers by
/// value: `1` equals `1.0`).
pub fn subset_mismatches(expected: &Json, actual: &Json) -> Vec<Mismatch> {
    let mut out = Vec::new();
    subset(expected, actual, &mut String::new(), &mut out);
    out
}

fn subset(expected: &Json, actual: &Json, path: &mut String, out: &mut Vec<Mismatch>) {
    match (expected, actual) {
        (Json::Object(e), Json::Object(a)) => {
            for (key, e_value) in e {
                let len = path.len();
                push_key(path, key);
                match a.get(key) {
                    Some(a_value) => subset(e_value, a_value, path, out),
                    None => out.push(Mismatch {
                        path: path.clone(),
                        expected: e_value.clone(),
                        actual: None,
                    }),
                }
                path.truncate(len);
            }
        }
        _ if equal(expected, actual) => {}
        _ => out.push(Mismatch {
            path: path.clone(),
            expected: expected.clone(),
            actual: Some(actual.clone()),
        }),
    }
}

fn equal(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            x == y || (x.is_f64() || y.is_f64()) && x.as_f64() == y.as_f64()
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| equal(x, y))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Json::String(key.to_owned()).to_string());
        path.push(']');
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use veltrix_core::config::parse_str_with_env;

    use super::*;

    const CONFIG: &str = r#"
[queues.orders]
types = ["order.*"]

[queues.other]
types = ["*"]

[pipelines.archive]
from = ["orders"]
sink = "out"
processors = [
  { type = "filter", condition = '.type != "order.ping"' },
  { type = "remap", source = '.data.total = int!(.data.amount) * int!(.data.qty)' },
]

[pipelines.rest]
from = ["other"]
sink = "out"

[sinks.out]
type = "blackhole"
"#;

    fn config(tests: &str) -> Config {
        let src = format!("{CONFIG}{tests}");
        match parse_str_with_env(&src, "t.toml", 2, &|_| None) {
            Ok(loaded) => loaded.config,
            Err(d) => panic!("{}", d.iter().map(ToString::to_string).collect::<String>()),
        }
    }

    fn run(tests: &str) -> TestOutcome {
        let config = config(tests);
        run_pipeline_test(&config, &config.tests[0], &Plugins::new())
    }

    const ORDER: &str = r#"{ type = "order.created", source = "/shop", id = "o-1", data = { amount = 200, qty = 2 } }"#;

    #[test]
    fn a_matching_subset_passes() {
        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{ORDER}]\nexpect = [{{ id = \"o-1\", data = {{ total = 400.0 }} }}]\n"
        ));
        assert_eq!(outcome.failures, []);
        assert!(outcome.passed());
        let delivered: Vec<&Json> = outcome.delivered().collect();
        assert_eq!(
            delivered,
            [
                &json!({"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "order.created",
                "data": {"amount": 200, "qty": 2, "total": 400}})
            ]
        );
    }

    #[test]
    fn a_mismatch_names_every_differing_path() {
        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{ORDER}]\nexpect = [{{ type = \"order.created\", data = {{ total = 40, currency = \"EUR\" }} }}]\n"
        ));
        assert!(!outcome.passed());
        assert_eq!(outcome.failures.len(), 1, "{:?}", outcome.failures);
        let failure = &outcome.failures[0];
        assert_eq!(
            failure.message,
            "delivered event 0 (from input[0], id o-1) does not match expect[0]"
        );
        let lines: Vec<String> = failure.mismatches.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "data.currency: expected \"EUR\", actual: missing",
                "data.total: expected 40, actual 400",
            ]
        );
    }

    #[test]
    fn arrays_must_be_equal_and_counts_must_match() {
        let m = subset_mismatches(&json!({"a": [1, 2]}), &json!({"a": [1, 2, 3], "b": 1}));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, "a");
        assert!(
            subset_mismatches(&json!({"a": [{"x": 1.0}]}), &json!({"a": [{"x": 1}]})).is_empty()
        );
        assert_eq!(
            subset_mismatches(&json!({"a.b": 1}), &json!({}))[0].path,
            "[\"a.b\"]"
        );

        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{ORDER}, {ORDER}]\nexpect = [{{}}]\n"
        ));
        let messages: Vec<&str> = outcome
            .failures
            .iter()
            .map(|f| f.message.as_str())
            .collect();
        assert_eq!(
            messages[0],
            "expected 1 delivered event(s), the sink received 2"
        );
        assert!(messages[1].starts_with("unexpected delivered event 1 (from input[1])"));
    }

    #[test]
    fn expect_none_passes_when_everything_is_filtered() {
        let ping = r#"{ type = "order.ping", source = "/shop" }"#;
        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{ping}]\nexpect_none = true\n"
        ));
        assert_eq!(outcome.failures, []);
        assert_eq!(outcome.results[0].outcome, EventOutcome::Filtered);
        assert_eq!(outcome.results[0].id.len(), 26, "a generated ULID");

        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{ORDER}]\nexpect_none = true\n"
        ));
        assert_eq!(
            outcome.failures[0].message,
            "expected 0 delivered event(s), the sink received 1"
        );
    }

    #[test]
    fn expect_dead_letter_matches_processing_failures() {
        let bad = r#"{ type = "order.created", source = "/shop", id = "bad", data = { amount = "lots", qty = 1 } }"#;
        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{bad}]\nexpect_dead_letter = \"remap\"\n"
        ));
        assert_eq!(outcome.failures, []);
        let EventOutcome::DeadLettered(reason) = &outcome.results[0].outcome else {
            panic!("{:?}", outcome.results);
        };
        assert!(reason.starts_with("processor 1 (remap)"), "{reason}");

        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{bad}]\nexpect_dead_letter = \"filter\"\n"
        ));
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].mismatches[0].path, "reason");

        // Unexpected dead letters fail a test that expects deliveries.
        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{bad}]\nexpect_none = true\n"
        ));
        assert!(
            outcome.failures[0]
                .message
                .starts_with("input[0] (id bad) was dead-lettered: processor 1")
        );

        let outcome = run(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{ORDER}]\nexpect = [{{}}]\nexpect_dead_letter = true\n"
        ));
        assert_eq!(
            outcome.failures[0].message,
            "expected a dead-lettered event, but no processor failed"
        );
    }

    #[test]
    fn events_routed_elsewhere_never_reach_the_pipeline() {
        let outcome = run(
            "[[tests]]\nname = \"t\"\npipeline = \"archive\"\ninput = [{ type = \"user.created\", source = \"/u\", id = \"u\" }]\nexpect_none = true\n",
        );
        assert_eq!(
            outcome.failures[0].message,
            "input[0] (id u) never reaches the pipeline: type `user.created` is routed to queue \
             `other`, which pipeline `archive` does not read"
        );
    }

    #[test]
    fn a_pipeline_without_processors_delivers_the_stored_event() {
        let outcome = run(
            "[[tests]]\nname = \"t\"\npipeline = \"rest\"\ninput = [{ type = \"user.created\", source = \"/u\", id = \"u\", data = { n = 1 } }]\nexpect = [{ data = { n = 1 } }]\n",
        );
        assert_eq!(outcome.failures, []);
    }

    const KEYED: &str = r#"
[queues.games]
types = ["game.*"]
[queues.orders]
types = ["order.*"]
[queues.stats]
types = ["*"]

[pipelines.unique]
from = ["games"]
sink = "out"
processors = [
  { type = "dedupe", key = '.data.round' },
  { type = "throttle", key = '.source', rate = 2, when_exceeded = "dead_letter" },
]

[pipelines.scores]
from = ["games"]
sink = "out"
processors = [
  { type = "sample", rate = 0.5, key = '.data.player' },
  { type = "aggregate", key = '.data.player', window = "1m", fields = { points = '.data.points' }, into = "stats", event_type = "score.summed" },
]

[pipelines.orders]
from = ["orders"]
sink = "out"
routes = [{ condition = '.type == "order.paid"', sink = "billing" }]

[sinks.out]
type = "blackhole"
[sinks.billing]
type = "blackhole"
"#;

    fn run_keyed(test: &str) -> TestOutcome {
        let src = format!("{KEYED}{test}");
        let config = match parse_str_with_env(&src, "t.toml", 2, &|_| None) {
            Ok(loaded) => loaded.config,
            Err(d) => panic!("{}", d.iter().map(ToString::to_string).collect::<String>()),
        };
        run_pipeline_test(&config, &config.tests[0], &Plugins::new())
    }

    fn game(id: &str, source: &str, round: u32, player: &str, points: i64) -> String {
        format!(
            "{{ type = \"game.scored\", source = \"{source}\", id = \"{id}\", data = {{ round = {round}, player = \"{player}\", points = {points} }} }}"
        )
    }

    #[test]
    fn dedupe_and_throttle_decide_the_same_way_on_every_run() {
        let inputs = [
            game("1", "/a", 1, "x", 0),
            game("2", "/a", 1, "x", 0), // round 1 again: deduplicated
            game("3", "/a", 2, "x", 0),
            game("4", "/a", 3, "x", 0), // a third from /a on a frozen clock: throttled
            game("5", "/b", 4, "x", 0),
        ]
        .join(", ");
        let test = format!(
            "[[tests]]\nname = \"t\"\npipeline = \"unique\"\ninput = [{inputs}]\nexpect = [{{ id = \"1\" }}, {{ id = \"3\" }}, {{ id = \"5\" }}]\nexpect_dead_letter = \"throttle\"\n"
        );
        for _ in 0..3 {
            let outcome = run_keyed(&test);
            assert_eq!(outcome.failures, []);
            let outcomes: Vec<&EventOutcome> = outcome.results.iter().map(|r| &r.outcome).collect();
            assert_eq!(
                outcomes[1],
                &EventOutcome::Dropped("processor 0 (dedupe)".to_owned())
            );
            let EventOutcome::DeadLettered(why) = outcomes[3] else {
                panic!("{outcomes:?}");
            };
            assert!(
                why.starts_with("processor 1 (throttle): over 2 per 1s for key"),
                "{why}"
            );
        }
    }

    #[test]
    fn a_dead_lettered_event_does_not_make_its_key_a_duplicate() {
        // Event 4 is throttled to the dead-letter queue after passing dedupe: its round (3)
        // is forgotten, so a replay (here event 6 with the same round) is no duplicate.
        let inputs = [
            game("1", "/a", 1, "x", 0),
            game("2", "/a", 2, "x", 0),
            game("4", "/a", 3, "x", 0),
            game("6", "/c", 3, "x", 0),
        ]
        .join(", ");
        let outcome = run_keyed(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"unique\"\ninput = [{inputs}]\nexpect = [{{ id = \"1\" }}, {{ id = \"2\" }}, {{ id = \"6\" }}]\nexpect_dead_letter = true\n"
        ));
        assert_eq!(outcome.failures, []);
    }

    #[test]
    fn aggregates_emit_when_the_test_ends_and_expect_emitted_checks_them() {
        // Players are sampled by a stable hash: find which of a few are kept, the same way the
        // engine would.
        let players = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];
        let inputs: Vec<String> = players
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                [
                    game(&format!("{p}a"), "/g", 0, p, i as i64),
                    game(&format!("{p}b"), "/g", 0, p, 10),
                ]
            })
            .collect();
        let outcome = run_keyed(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"scores\"\ninput = [{}]\nexpect_emitted = []\n",
            inputs.join(", ")
        ));
        let kept: Vec<&str> = outcome
            .emitted
            .iter()
            .map(|e| e["data"]["key"].as_str().unwrap())
            .collect();
        assert!(
            !kept.is_empty() && kept.len() < players.len(),
            "half the players, give or take: {kept:?}"
        );
        assert_eq!(
            outcome.failures[0].message,
            format!(
                "expected 0 emitted event(s), the pipeline's aggregate emitted {}",
                kept.len()
            )
        );
        for r in &outcome.results {
            assert!(
                r.outcome == EventOutcome::Aggregated
                    || r.outcome == EventOutcome::Dropped("processor 0 (sample)".to_owned()),
                "{r:?}"
            );
        }
        let first = kept[0];
        let i = players.iter().position(|p| *p == first).unwrap();
        let outcome = run_keyed(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"scores\"\ninput = [{}]\nexpect_emitted = [{}]\n",
            inputs.join(", "),
            kept.iter()
                .map(|k| format!(
                    "{{ type = \"score.summed\", data = {{ key = \"{k}\", count = 2 }} }}"
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        assert_eq!(outcome.failures, []);
        assert_eq!(
            outcome.emitted[0]["data"],
            json!({"key": first, "window_start": "2000-01-01T00:00:00.000000Z",
                   "window_end": "2000-01-01T00:01:00.000000Z", "count": 2,
                   "points": {"count": 2, "sum": i as i64 + 10, "min": i as i64, "max": 10,
                              "avg": (i as f64 + 10.0) / 2.0}})
        );
    }

    #[test]
    fn routes_are_reported_and_expect_sinks_checks_them() {
        let inputs = r#"{ type = "order.created", source = "/s", id = "c" }, { type = "order.paid", source = "/s", id = "p" }"#;
        let outcome = run_keyed(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"orders\"\ninput = [{inputs}]\nexpect = [{{ id = \"c\" }}, {{ id = \"p\" }}]\nexpect_sinks = [\"out\", \"billing\"]\n"
        ));
        assert_eq!(outcome.failures, []);
        let outcome = run_keyed(&format!(
            "[[tests]]\nname = \"t\"\npipeline = \"orders\"\ninput = [{inputs}]\nexpect = [{{ id = \"c\" }}, {{ id = \"p\" }}]\nexpect_sinks = [\"out\", \"out\"]\n"
        ));
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(
            outcome.failures[0].message,
            "delivered event 1 (from input[1], id p) went to another sink"
        );
        assert_eq!(
            outcome.failures[0].mismatches[0].to_string(),
            "sink: expected \"out\", actual \"billing\""
        );
    }
}
