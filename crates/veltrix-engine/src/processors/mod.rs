//! A pipeline's processor chain, run by each worker on every event of a batch, and its routes.
//!
//! Events are stored in the queue as compact structured-mode CloudEvent JSON. With no
//! processors and no routes the stored bytes are delivered as they are (no decode at all);
//! otherwise the record is read lazily as a VRL target (`expr::StoredEvent`: an attribute
//! becomes a VRL value only when a step touches it), run through every step, routed (the first
//! route whose condition holds picks the sink, else the pipeline's `sink`), validated as a
//! CloudEvent and encoded into that sink's part of the batch ([`Output`]), copying every
//! attribute no step changed straight from the record.
//!
//! One `Chain` is shared by the pipeline's workers, so the stateful steps (dedupe, throttle,
//! aggregate) keep one state per pipeline behind a lock held for one decision. Each step's
//! module states its layout, limits and loss window: `dedupe.rs`, `throttle.rs`, `sample.rs`,
//! `aggregate.rs`; keys and hashing are `key.rs`.
//!
//! A record is all or nothing: when any step fails on it (or on one of the events a custom
//! step split it into), whatever it had appended is taken back, the dedupe keys it set are
//! forgotten and its aggregate contributions are discarded (they are staged until the record
//! is done), and the record is dead-lettered whole.
//!
//! Metrics are counted per worker in [`Scratch`] and published once per batch
//! ([`Chain::publish`]): `veltrix_processor_events_total{pipeline, processor, type, outcome}`
//! (`processor` is the index in `processors`; outcomes `passed`, the type's own drop —
//! `filtered`, `deduplicated`, `throttled`, `sampled_out`, `aggregated`, `dropped` — and
//! `failed`), `veltrix_processor_keys_evicted_total` and the `veltrix_processor_keys` gauge.

mod aggregate;
mod dedupe;
pub(crate) mod key;
mod sample;
mod throttle;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use veltrix_core::config::{PipelineConfig, ProcessorConfig, WhenExceeded};
use veltrix_core::event::Event;
use veltrix_core::expr::{EventTarget, Filter, Remap, Runtime, StoredEvent, ValueExpr};

pub(crate) use aggregate::{Closed, HeldAck};
use aggregate::{Contribution, Emission, KEY_BYTES_MAX, Num, Windows};
use dedupe::Seen;
pub(crate) use key::{Clock, FrozenClock, SystemClock};
use key::{hash128, key_bytes};
use throttle::Buckets;

use crate::handler::{Plugins, Processor};

/// What became of one record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Appended to the output as this many lines (more than one when a step split it).
    Emitted(usize),
    /// Dropped by a step (configured: counted, not an error); `by` is the processor index of
    /// the last step that dropped a part of it.
    Filtered { by: Option<usize> },
    /// Consumed by an aggregate; its window holds the record's acknowledgement.
    Aggregated,
    /// Dead-letter it: `reason` is the dead-letter entry's reason, `error` says which step and
    /// why. Nothing was appended.
    DeadLetter { reason: &'static str, error: String },
}

/// A record as the chain sees it.
pub(crate) struct Input<'a> {
    /// The record `body` is a slice of, when it is shared (read from the log): strings the steps
    /// read are slices of it, not copies.
    pub(crate) owner: Option<&'a bytes::Bytes>,
    /// The stored CloudEvent JSON (without the record prefix).
    pub(crate) body: &'a [u8],
    /// `body`'s member index ([`veltrix_core::member_index`]; empty: none).
    pub(crate) members: &'a [u8],
    /// The record's index in the worker's pending batch (owner of the lines it produces).
    pub(crate) index: u32,
    /// How to acknowledge the record when an aggregate consumes it (`None`: nothing to hold).
    pub(crate) ack: Option<HeldAck>,
}

/// What the chain produced for a batch: one part per sink of the pipeline (index 0 is the
/// pipeline's `sink`, then the routes' sinks in order of [`PipelineConfig::sinks`]).
pub(crate) struct Output {
    pub(crate) parts: Vec<Part>,
}

/// One sink's share of a batch: NDJSON lines and, per line, the record it came from.
#[derive(Default)]
pub(crate) struct Part {
    pub(crate) ndjson: Vec<u8>,
    /// Where each line ends (after its newline).
    pub(crate) ends: Vec<usize>,
    /// Per line, the index of the record it came from.
    pub(crate) owners: Vec<u32>,
}

impl Part {
    pub(crate) fn lines(&self) -> usize {
        self.ends.len()
    }

    fn end_line(&mut self, owner: u32) {
        self.ndjson.push(b'\n');
        self.ends.push(self.ndjson.len());
        self.owners.push(owner);
    }

    /// Where the part is now, to take back what is appended after.
    fn mark(&self) -> (usize, usize) {
        (self.ends.len(), self.ndjson.len())
    }

    fn truncate(&mut self, (lines, bytes): (usize, usize)) {
        self.ndjson.truncate(bytes);
        self.ends.truncate(lines);
        self.owners.truncate(lines);
    }

    pub(crate) fn clear(&mut self) {
        self.ndjson.clear();
        self.ends.clear();
        self.owners.clear();
    }
}

impl Output {
    pub(crate) fn new(sinks: usize) -> Output {
        Output {
            parts: (0..sinks).map(|_| Part::default()).collect(),
        }
    }

    /// Bytes in all parts.
    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.ndjson.len()).sum()
    }

    pub(crate) fn clear(&mut self) {
        self.parts.iter_mut().for_each(Part::clear);
    }
}

/// Per-step counters, by slot.
const PASSED: usize = 0;
const DROPPED: usize = 1;
const FAILED: usize = 2;
const EVICTED: usize = 3;

/// A worker's scratch space for running the chain: reused for every record.
pub(crate) struct Scratch {
    pub(crate) runtime: Runtime,
    key: Vec<u8>,
    /// Per step: passed, dropped, failed, evicted since the last [`Chain::publish`].
    counts: Vec<[u64; 4]>,
    /// The current record's aggregate contributions, added once it is done.
    staged: Vec<Contribution>,
    /// Where each output part was before the current record (to take back a failed one).
    marks: Vec<(usize, usize)>,
    /// Dedupe keys set by the records of the pending batch: (record, step, key hash, time), to
    /// forget those of records that end up dead-lettered.
    remembered: Vec<(u32, usize, u128, Duration)>,
}

/// One compiled step.
enum Step {
    Filter(Filter),
    Remap(Remap),
    Dedupe {
        key: Option<ValueExpr>,
        seen: Mutex<Seen>,
    },
    Throttle {
        key: Option<ValueExpr>,
        buckets: Mutex<Buckets>,
        when_exceeded: WhenExceeded,
        limit: String,
    },
    Sample {
        key: Option<ValueExpr>,
        rate: f64,
    },
    Aggregate(Box<AggregateStep>),
    /// A registered custom processor, and its type name for messages.
    Custom(String, Arc<dyn Processor>),
}

/// A step with what labels and messages need.
struct Slot {
    /// Index in the config's `processors`.
    index: usize,
    type_name: String,
    step: Step,
    metrics: StepMetrics,
}

/// An aggregate's compiled expressions, open windows and what names its derived events.
pub(crate) struct AggregateStep {
    key: Option<ValueExpr>,
    fields: Vec<ValueExpr>,
    field_names: Vec<String>,
    pipeline: String,
    event_type: String,
    into: String,
    windows: Mutex<Windows>,
    emitted: metrics::Counter,
}

impl AggregateStep {
    /// The queue the derived events go to.
    pub(crate) fn into(&self) -> &str {
        &self.into
    }

    /// Takes the windows closed by `now` (µs since the epoch; `u64::MAX`: all).
    pub(crate) fn take_closed(&self, now_micros: u64) -> Vec<Closed> {
        let emission = Emission {
            pipeline: &self.pipeline,
            event_type: &self.event_type,
            fields: &self.field_names,
        };
        lock(&self.windows).take_closed(now_micros, &emission)
    }

    /// When the window open at `now` closes.
    pub(crate) fn next_close(&self, now_micros: u64) -> u64 {
        lock(&self.windows).next_close(now_micros)
    }

    /// Counts derived events appended to `into`.
    pub(crate) fn count_emitted(&self, n: u64) {
        self.emitted.increment(n);
    }
}

/// A step's metric handles, resolved once.
struct StepMetrics {
    events: [metrics::Counter; 3],
    evicted: metrics::Counter,
    keys: metrics::Gauge,
}

impl StepMetrics {
    fn new(pipeline: &str, index: usize, type_name: &str, dropped: &'static str) -> StepMetrics {
        let labels = |outcome: &'static str| {
            [
                ("pipeline", pipeline.to_owned()),
                ("processor", index.to_string()),
                ("type", type_name.to_owned()),
                ("outcome", outcome.to_owned()),
            ]
        };
        let base = [
            ("pipeline", pipeline.to_owned()),
            ("processor", index.to_string()),
            ("type", type_name.to_owned()),
        ];
        StepMetrics {
            events: ["passed", dropped, "failed"]
                .map(|o| metrics::counter!("veltrix_processor_events_total", &labels(o))),
            evicted: metrics::counter!("veltrix_processor_keys_evicted_total", &base),
            keys: metrics::gauge!("veltrix_processor_keys", &base),
        }
    }
}

/// Why a record is dead-lettered.
struct Failed {
    reason: &'static str,
    error: String,
}

fn failed(error: String) -> Failed {
    Failed {
        reason: "processing failed",
        error,
    }
}

/// What the steps did with one record so far.
#[derive(Default)]
struct Run {
    emitted: usize,
    aggregated: usize,
    dropped_by: Option<usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The compiled processors and routes of one pipeline.
pub(crate) struct Chain {
    slots: Vec<Slot>,
    /// Route conditions with the part (sink) each sends to.
    routes: Vec<(Filter, usize)>,
    sinks: usize,
    clock: Arc<dyn Clock>,
}

impl Chain {
    /// Builds the steps of pipeline `name`; custom types come from `plugins` (`Err` names the
    /// failing type). `batch` is no step: the pipeline reads its settings itself.
    pub(crate) fn new(
        name: &str,
        pipeline: &PipelineConfig,
        plugins: &Plugins,
        clock: Arc<dyn Clock>,
    ) -> Result<Chain, String> {
        let mut slots = Vec::new();
        for (index, p) in pipeline.processors.iter().enumerate() {
            let (step, dropped) = match p {
                ProcessorConfig::Filter(f) => (Step::Filter(f.clone()), "filtered"),
                ProcessorConfig::Remap(r) => (Step::Remap(r.clone()), "dropped"),
                ProcessorConfig::Dedupe(d) => (
                    Step::Dedupe {
                        key: d.key.clone(),
                        seen: Mutex::new(Seen::new(d.window, d.max_keys)),
                    },
                    "deduplicated",
                ),
                ProcessorConfig::Throttle(t) => (
                    Step::Throttle {
                        key: t.key.clone(),
                        buckets: Mutex::new(Buckets::new(t.rate, t.per, t.burst, t.max_keys)),
                        when_exceeded: t.when_exceeded,
                        limit: format!("{} per {:?}", t.rate, t.per),
                    },
                    "throttled",
                ),
                ProcessorConfig::Sample(s) => (
                    Step::Sample {
                        key: s.key.clone(),
                        rate: s.rate,
                    },
                    "sampled_out",
                ),
                ProcessorConfig::Aggregate(a) => {
                    let window_micros = u64::try_from(a.window.as_micros())
                        .map_err(|_| "aggregate window too long".to_owned())?;
                    let base = [
                        ("pipeline", name.to_owned()),
                        ("processor", index.to_string()),
                        ("type", "aggregate".to_owned()),
                    ];
                    (
                        Step::Aggregate(Box::new(AggregateStep {
                            key: a.key.clone(),
                            fields: a.fields.iter().map(|(_, e)| e.clone()).collect(),
                            field_names: a.fields.iter().map(|(n, _)| n.clone()).collect(),
                            pipeline: name.to_owned(),
                            event_type: a.event_type.clone(),
                            into: a.into.clone(),
                            windows: Mutex::new(Windows::new(
                                window_micros,
                                a.max_keys,
                                a.fields.len(),
                            )),
                            emitted: metrics::counter!(
                                "veltrix_processor_emitted_events_total",
                                &base
                            ),
                        })),
                        "aggregated",
                    )
                }
                ProcessorConfig::Batch(_) => continue,
                ProcessorConfig::Custom(c) => (
                    Step::Custom(
                        c.type_name.clone(),
                        plugins
                            .build_processor(&c.type_name, &c.options)
                            .map_err(|e| format!("processor `{}`: {e}", c.type_name))?,
                    ),
                    "dropped",
                ),
            };
            let type_name = p.type_name().to_owned();
            slots.push(Slot {
                index,
                metrics: StepMetrics::new(name, index, &type_name, dropped),
                type_name,
                step,
            });
        }
        let sinks = pipeline.sinks();
        let routes = pipeline
            .routes
            .iter()
            .map(|r| {
                let part = sinks
                    .iter()
                    .position(|s| *s == r.sink)
                    .expect("sinks() lists every route's sink");
                (r.condition.clone(), part)
            })
            .collect();
        Ok(Chain {
            slots,
            routes,
            sinks: sinks.len(),
            clock,
        })
    }

    /// How many sinks (output parts) the pipeline has.
    pub(crate) fn sinks(&self) -> usize {
        self.sinks
    }

    /// A fresh scratch space for one worker.
    pub(crate) fn scratch(&self) -> Scratch {
        Scratch {
            runtime: Runtime::new(),
            key: Vec::new(),
            counts: vec![[0; 4]; self.slots.len()],
            staged: Vec::new(),
            marks: Vec::with_capacity(self.sinks),
            remembered: Vec::new(),
        }
    }

    /// The pipeline's aggregate, if it has one (at most one: it is the last step).
    pub(crate) fn aggregate(&self) -> Option<&AggregateStep> {
        self.slots.iter().find_map(|s| match &s.step {
            Step::Aggregate(a) => Some(&**a),
            _ => None,
        })
    }

    /// "processor 2 (dedupe)" for the step at processor index `index`.
    pub(crate) fn describe(&self, index: usize) -> String {
        let type_name = self
            .slots
            .iter()
            .find(|s| s.index == index)
            .map_or("?", |s| s.type_name.as_str());
        format!("processor {index} ({type_name})")
    }

    /// Runs the chain on one stored event and appends what comes out to `out` (nothing when it
    /// is dropped, consumed or fails).
    pub(crate) fn apply(
        &self,
        input: &Input<'_>,
        scratch: &mut Scratch,
        out: &mut Output,
    ) -> Outcome {
        if self.slots.is_empty() && self.routes.is_empty() {
            let part = &mut out.parts[0];
            part.ndjson.extend_from_slice(input.body);
            part.end_line(input.index);
            return Outcome::Emitted(1);
        }
        // A record that does not read lazily (an escaped or repeated name) is validated; a valid
        // one is read in its canonical form, an invalid one dead-lettered with what is wrong.
        let mut canonical = Vec::new();
        let read = match input.owner {
            Some(owner) => StoredEvent::read_shared(owner, input.body, input.members),
            None => StoredEvent::read_indexed(input.body, input.members),
        };
        let event = match read {
            Some(event) => event,
            None => match Event::from_stored(input.body) {
                Ok(event) => StoredEvent::from_event(&event, &mut canonical),
                Err(e) => {
                    return Outcome::DeadLetter {
                        reason: "processing failed",
                        error: format!("stored event is unreadable: {e}"),
                    };
                }
            },
        };
        scratch.marks.clear();
        scratch.marks.extend(out.parts.iter().map(Part::mark));
        let remembered = scratch.remembered.len();
        scratch.staged.clear();
        let mut run = Run::default();
        match self.run_from(0, event, input, scratch, out, &mut run) {
            Err(Failed { reason, error }) => {
                for (part, mark) in out.parts.iter_mut().zip(&scratch.marks) {
                    part.truncate(*mark);
                }
                let set_here: Vec<_> = scratch.remembered.drain(remembered..).collect();
                self.forget_keys(&set_here);
                scratch.staged.clear();
                Outcome::DeadLetter { reason, error }
            }
            Ok(()) if run.aggregated > 0 => {
                debug_assert_eq!(run.emitted, 0, "an aggregate is the last step");
                let aggregate = self.aggregate().expect("an event was aggregated");
                let now = self.clock.wall_micros();
                lock(&aggregate.windows).add(scratch.staged.drain(..), input.ack, now);
                Outcome::Aggregated
            }
            Ok(()) if run.emitted > 0 => Outcome::Emitted(run.emitted),
            Ok(()) => Outcome::Filtered { by: run.dropped_by },
        }
    }

    /// Runs steps `first..` on `event` and appends every resulting event.
    fn run_from(
        &self,
        first: usize,
        mut event: StoredEvent<'_>,
        input: &Input<'_>,
        scratch: &mut Scratch,
        out: &mut Output,
        run: &mut Run,
    ) -> Result<(), Failed> {
        for (i, slot) in self.slots.iter().enumerate().skip(first) {
            let what = || format!("processor {} ({})", slot.index, slot.type_name);
            let passed = match &slot.step {
                Step::Filter(filter) => match filter.run(&mut scratch.runtime, &mut event) {
                    Ok(keep) => keep,
                    Err(e) => {
                        scratch.counts[i][FAILED] += 1;
                        return Err(failed(format!("{}: {e}", what())));
                    }
                },
                Step::Remap(remap) => match remap.run(&mut scratch.runtime, &mut event) {
                    Ok(()) => true,
                    Err(e) => {
                        scratch.counts[i][FAILED] += 1;
                        return Err(failed(format!("{}: {e}", what())));
                    }
                },
                Step::Dedupe { key, seen } => {
                    let hash = self.hash_key(key.as_ref(), &mut event, scratch, i, &what)?;
                    let now = self.clock.monotonic();
                    let decision = lock(seen).check(hash, now);
                    scratch.counts[i][EVICTED] += decision.evicted;
                    if !decision.duplicate {
                        scratch.remembered.push((input.index, i, hash, now));
                    }
                    !decision.duplicate
                }
                Step::Throttle {
                    key,
                    buckets,
                    when_exceeded,
                    limit,
                } => {
                    // Without a key, one bucket for the whole pipeline.
                    let hash = match key {
                        Some(_) => self.hash_key(key.as_ref(), &mut event, scratch, i, &what)?,
                        None => {
                            scratch.key.clear();
                            0
                        }
                    };
                    let decision = lock(buckets).take(hash, self.clock.monotonic());
                    scratch.counts[i][EVICTED] += decision.evicted;
                    if !decision.allowed && *when_exceeded == WhenExceeded::DeadLetter {
                        scratch.counts[i][DROPPED] += 1;
                        let key = match key {
                            Some(_) => {
                                format!(" for key {}", String::from_utf8_lossy(&scratch.key))
                            }
                            None => String::new(),
                        };
                        return Err(Failed {
                            reason: "throttled",
                            error: format!("{}: over {limit}{key}", what()),
                        });
                    }
                    decision.allowed
                }
                Step::Sample { key, rate } => {
                    let hash = self.hash_key(key.as_ref(), &mut event, scratch, i, &what)?;
                    sample::keep(hash, *rate)
                }
                Step::Aggregate(aggregate) => {
                    let contribution =
                        self.contribution(aggregate, &mut event, scratch)
                            .map_err(|e| {
                                scratch.counts[i][FAILED] += 1;
                                failed(format!("{}: {e}", what()))
                            })?;
                    scratch.counts[i][DROPPED] += 1;
                    scratch.staged.push(contribution);
                    run.aggregated += 1;
                    return Ok(());
                }
                Step::Custom(name, processor) => {
                    let owned = event.to_event().map_err(|e| {
                        scratch.counts[i][FAILED] += 1;
                        failed(format!(
                            "{}: the event is not a valid CloudEvent: {e}",
                            what()
                        ))
                    })?;
                    let mut next = Vec::with_capacity(1);
                    if let Err(e) = processor.process(owned, &mut next) {
                        scratch.counts[i][FAILED] += 1;
                        return Err(failed(format!("processor {} ({name}): {e}", slot.index)));
                    }
                    if next.is_empty() {
                        scratch.counts[i][DROPPED] += 1;
                        run.dropped_by = Some(slot.index);
                        return Ok(());
                    }
                    scratch.counts[i][PASSED] += next.len() as u64;
                    let mut bytes = Vec::new();
                    for produced in next {
                        let produced = StoredEvent::from_event(&produced, &mut bytes);
                        self.run_from(i + 1, produced, input, scratch, out, run)?;
                    }
                    return Ok(());
                }
            };
            if passed {
                scratch.counts[i][PASSED] += 1;
            } else {
                scratch.counts[i][DROPPED] += 1;
                run.dropped_by = Some(slot.index);
                return Ok(());
            }
        }
        let part = &mut out.parts[self.route(&mut event, &mut scratch.runtime)?];
        event.to_json_bytes(&mut part.ndjson).map_err(|e| {
            failed(format!(
                "the remapped event is no longer a valid CloudEvent: {e}"
            ))
        })?;
        part.end_line(input.index);
        run.emitted += 1;
        Ok(())
    }

    /// The part (sink) of a processed event: the first route whose condition holds, else 0.
    fn route(&self, value: &mut dyn EventTarget, runtime: &mut Runtime) -> Result<usize, Failed> {
        for (j, (condition, part)) in self.routes.iter().enumerate() {
            match condition.run(runtime, value) {
                Ok(true) => return Ok(*part),
                Ok(false) => {}
                Err(e) => return Err(failed(format!("route {j}: {e}"))),
            }
        }
        Ok(0)
    }

    /// The stable hash of an event's key, left in `scratch.key` as bytes too.
    fn hash_key(
        &self,
        key: Option<&ValueExpr>,
        value: &mut dyn EventTarget,
        scratch: &mut Scratch,
        step: usize,
        what: &dyn Fn() -> String,
    ) -> Result<u128, Failed> {
        match key_bytes(key, &mut scratch.runtime, value, &mut scratch.key) {
            Ok(_) => Ok(hash128(&scratch.key)),
            Err(e) => {
                scratch.counts[step][FAILED] += 1;
                Err(failed(format!("{}: key: {e}", what())))
            }
        }
    }

    /// One event's share of the aggregate's current window, checked.
    fn contribution(
        &self,
        aggregate: &AggregateStep,
        value: &mut dyn EventTarget,
        scratch: &mut Scratch,
    ) -> Result<Contribution, String> {
        match &aggregate.key {
            Some(expr) => {
                key_bytes(Some(expr), &mut scratch.runtime, value, &mut scratch.key)
                    .map_err(|e| format!("key: {e}"))?;
            }
            None => {
                scratch.key.clear();
                scratch.key.extend_from_slice(b"null");
            }
        }
        if scratch.key.len() > KEY_BYTES_MAX {
            return Err(format!(
                "the key is {} bytes of JSON, more than {KEY_BYTES_MAX}",
                scratch.key.len()
            ));
        }
        let mut values = Vec::with_capacity(aggregate.fields.len());
        for (name, expr) in aggregate.field_names.iter().zip(&aggregate.fields) {
            let v = expr
                .run(&mut scratch.runtime, value)
                .map_err(|e| format!("field `{name}`: {e}"))?;
            values.push(Num::from_value(name, &v)?);
        }
        let key_hash = hash128(&scratch.key);
        let now = self.clock.wall_micros();
        let windows = lock(&aggregate.windows);
        let staged_here = scratch.staged.iter().any(|c| c.key_hash == key_hash);
        if !staged_here && !windows.has_room(key_hash, now) {
            return Err(format!(
                "the window already holds max_keys keys; key {} is new",
                String::from_utf8_lossy(&scratch.key)
            ));
        }
        drop(windows);
        let key = String::from_utf8_lossy(&scratch.key).into();
        Ok(Contribution {
            key_hash,
            key,
            values,
        })
    }

    /// Forgets the dedupe keys the given (record, step, hash, time) entries set.
    fn forget_keys(&self, entries: &[(u32, usize, u128, Duration)]) {
        for (_, step, hash, at) in entries {
            if let Step::Dedupe { seen, .. } = &self.slots[*step].step {
                lock(seen).forget(*hash, *at);
            }
        }
    }

    /// The pending batch is done: forget the dedupe keys of its records that were
    /// dead-lettered after passing (`dead(record)`), and start afresh.
    pub(crate) fn settle(&self, scratch: &mut Scratch, dead: impl Fn(u32) -> bool) {
        let forget: Vec<_> = scratch
            .remembered
            .drain(..)
            .filter(|(record, ..)| dead(*record))
            .collect();
        self.forget_keys(&forget);
    }

    /// Publishes the counts since the last call (once per batch) and the state sizes.
    pub(crate) fn publish(&self, scratch: &mut Scratch) {
        for (slot, counts) in self.slots.iter().zip(&mut scratch.counts) {
            for (counter, n) in slot.metrics.events.iter().zip(&counts[..3]) {
                if *n > 0 {
                    counter.increment(*n);
                }
            }
            if counts[EVICTED] > 0 {
                slot.metrics.evicted.increment(counts[EVICTED]);
            }
            *counts = [0; 4];
            let keys = match &slot.step {
                Step::Dedupe { seen, .. } => lock(seen).len(),
                Step::Throttle { buckets, .. } => lock(buckets).len(),
                Step::Aggregate(a) => lock(&a.windows).keys(),
                _ => continue,
            };
            slot.metrics.keys.set(keys as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use veltrix_core::config::parse_str_with_env;

    use super::*;

    /// The chain of pipeline `p` whose processors and routes are `lines`, on a frozen clock.
    fn chain(lines: &str) -> (Chain, Scratch, Output) {
        let src = format!(
            "[queues.q]\ntypes = [\"*\"]\n[queues.r]\ntypes = [\"r\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"a\"\n{lines}\n[sinks.a]\ntype = \"blackhole\"\n[sinks.b]\ntype = \"blackhole\"\n"
        );
        let config = match parse_str_with_env(&src, "t.toml", 2, &|_| None) {
            Ok(loaded) => loaded.config,
            Err(d) => panic!("{}", d.iter().map(ToString::to_string).collect::<String>()),
        };
        let clock = Arc::new(FrozenClock {
            wall_micros: 1_000_000_000,
        });
        let chain = Chain::new("p", &config.pipelines["p"], &Plugins::new(), clock).unwrap();
        let scratch = chain.scratch();
        let output = Output::new(chain.sinks());
        (chain, scratch, output)
    }

    fn apply(
        chain: &Chain,
        scratch: &mut Scratch,
        out: &mut Output,
        index: u32,
        json: &str,
    ) -> Outcome {
        let input = Input {
            owner: None,
            body: json.as_bytes(),
            members: &[],
            index,
            ack: Some(HeldAck {
                input: 0,
                offset: u64::from(index),
            }),
        };
        chain.apply(&input, scratch, out)
    }

    fn event(id: &str, ty: &str, data: &str) -> String {
        format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"{ty}","data":{data}}}"#)
    }

    #[test]
    fn routes_put_each_event_in_its_sinks_part_with_its_owner() {
        let (chain, mut scratch, mut out) =
            chain("routes = [{ condition = '.type == \"paid\"', sink = \"b\" }]");
        assert_eq!(chain.sinks(), 2);
        for (i, ty) in ["created", "paid", "created"].into_iter().enumerate() {
            let outcome = apply(
                &chain,
                &mut scratch,
                &mut out,
                i as u32,
                &event("x", ty, "1"),
            );
            assert_eq!(outcome, Outcome::Emitted(1));
        }
        assert_eq!(out.parts[0].owners, [0, 2]);
        assert_eq!(out.parts[1].owners, [1]);
        assert_eq!(out.parts[1].lines(), 1);
        assert!(
            out.parts[1]
                .ndjson
                .ends_with(b"\"type\":\"paid\",\"data\":1}\n")
        );
    }

    #[test]
    fn a_failing_event_takes_back_its_output_and_forgets_its_dedupe_key() {
        let (chain, mut scratch, mut out) = chain(
            "processors = [{ type = \"dedupe\", key = '.id' }, { type = \"remap\", source = '.data.n = int!(.data.n)' }]",
        );
        let ok = apply(
            &chain,
            &mut scratch,
            &mut out,
            0,
            &event("1", "t", r#"{"n":1}"#),
        );
        assert_eq!(ok, Outcome::Emitted(1));
        let bytes = out.bytes();
        let bad = apply(
            &chain,
            &mut scratch,
            &mut out,
            1,
            &event("2", "t", r#"{"n":"x"}"#),
        );
        assert!(
            matches!(&bad, Outcome::DeadLetter { reason: "processing failed", error } if error.starts_with("processor 1 (remap)")),
            "{bad:?}"
        );
        assert_eq!(out.bytes(), bytes, "nothing of the failed event stays");
        // Its key was forgotten: the replay is no duplicate; the delivered one's key is kept.
        let replay = apply(
            &chain,
            &mut scratch,
            &mut out,
            2,
            &event("2", "t", r#"{"n":2}"#),
        );
        assert_eq!(replay, Outcome::Emitted(1));
        let repeat = apply(
            &chain,
            &mut scratch,
            &mut out,
            3,
            &event("1", "t", r#"{"n":1}"#),
        );
        assert_eq!(repeat, Outcome::Filtered { by: Some(0) });
        // A delivery that failed for good forgets the keys of its records too.
        chain.settle(&mut scratch, |record| record == 2);
        let again = apply(
            &chain,
            &mut scratch,
            &mut out,
            4,
            &event("2", "t", r#"{"n":2}"#),
        );
        assert_eq!(again, Outcome::Emitted(1));
    }

    #[test]
    fn an_aggregate_dead_letters_what_it_cannot_count() {
        let (chain, mut scratch, mut out) = chain(
            "processors = [{ type = \"aggregate\", key = '.data.k', fields = { n = '.data.n' }, into = \"r\", event_type = \"t\", max_keys = 2 }]",
        );
        let mut at = 0;
        let mut run = |data: &str| {
            at += 1;
            apply(&chain, &mut scratch, &mut out, at, &event("e", "t", data))
        };
        assert_eq!(run(r#"{"k":"a","n":1}"#), Outcome::Aggregated);
        assert_eq!(
            run(r#"{"k":"b"}"#),
            Outcome::Aggregated,
            "a missing field is skipped"
        );
        let dead = |o: Outcome| match o {
            Outcome::DeadLetter { error, .. } => error,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            dead(run(r#"{"k":"a","n":"many"}"#)),
            "processor 0 (aggregate): aggregate field `n` must be a number, found string"
        );
        assert_eq!(
            dead(run(r#"{"k":"c","n":1}"#)),
            "processor 0 (aggregate): the window already holds max_keys keys; key \"c\" is new"
        );
        let long = format!(r#"{{"k":"{}"}}"#, "x".repeat(2000));
        assert!(dead(run(&long)).contains("more than 1024"));
        assert_eq!(run(r#"{"k":"a","n":2}"#), Outcome::Aggregated);
        let closed = chain.aggregate().unwrap().take_closed(u64::MAX);
        assert_eq!(closed.len(), 1);
        let offsets: Vec<u64> = closed[0].held.iter().map(|h| h.offset).collect();
        assert_eq!(offsets, [1, 2, 6], "only what was counted is held");
        let a: serde_json::Value = serde_json::from_slice(&closed[0].events[0]).unwrap();
        assert_eq!(a["data"]["count"], 2);
        assert_eq!(a["data"]["n"]["sum"], 3);
    }
}
