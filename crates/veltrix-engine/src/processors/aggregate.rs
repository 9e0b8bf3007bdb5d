//! `aggregate`: tumbling windows per key. Every event that reaches an aggregate is consumed:
//! it adds to its key's count and field statistics (sum, min, max, avg) in the window open at
//! the time it is processed; when the window closes, one derived CloudEvent per key is appended
//! to the `into` queue, where another pipeline reads it like any event.
//!
//! Layout: open windows by start time (µs since the Unix epoch, a multiple of the window
//! length); in each, the groups in the order their keys first came (hash → index), and the
//! acknowledgements of the events it holds.
//!
//! Acknowledgements are held, not lost: an aggregated event is acknowledged to its queue only
//! once its window's derived events are durably in `into` (the pipeline's emitter does that).
//! So a crash loses nothing: the events of windows not yet emitted are delivered again at the
//! next start and aggregated into the window open then. The duplicates that remain are those
//! of every at-least-once delivery: a crash after a window was emitted but before its events'
//! acknowledgements were persisted (the log persists cursor positions about once a second)
//! counts those events again in a later window. A graceful stop emits the windows that have
//! closed and leaves the open one unacknowledged (its events come back at the next start), so a
//! window is never emitted half-full.
//!
//! Derived event ids are a stable hash of pipeline, event type, key and window start: the same
//! window of the same key always has the same id, so a downstream dedupe (or a sink keyed on the
//! id) drops a window emitted twice.
//!
//! Limits: at most `max_keys` keys per window (an event with a new key beyond it is
//! dead-lettered; concurrent workers may overshoot by one key each); keys at most
//! [`KEY_BYTES_MAX`] bytes of JSON (longer: dead-lettered); at most 64 fields. Held
//! acknowledgements count against the cursor's in-flight bound (100,000 events per queue): a
//! window holding that many events pauses the pipeline's reading until it is emitted.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Number, Value as Json, json};
use veltrix_core::event::Event;
use veltrix_core::expr::Value;

use crate::deadletter::rfc3339;
use crate::processors::key::hash128;

/// Longest key, as JSON text.
pub(crate) const KEY_BYTES_MAX: usize = 1024;

/// Where an aggregated event came from, to acknowledge it once its window is emitted: the
/// pipeline's input index and the record's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldAck {
    pub(crate) input: usize,
    pub(crate) offset: u64,
}

/// One event's share of a window, checked before it is added.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Contribution {
    pub(crate) key_hash: u128,
    /// The key's JSON text.
    pub(crate) key: Box<str>,
    /// Per configured field: its number, or `None` when the event has none (`null`).
    pub(crate) values: Vec<Option<Num>>,
}

/// A field's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    /// The number of a field value: `Ok(None)` for `null`, `Err` for anything but a number.
    pub(crate) fn from_value(field: &str, value: &Value) -> Result<Option<Num>, String> {
        match value {
            Value::Integer(i) => Ok(Some(Num::Int(*i))),
            Value::Float(f) => Ok(Some(Num::Float(f.into_inner()))),
            Value::Null => Ok(None),
            other => Err(format!(
                "aggregate field `{field}` must be a number, found {}",
                other.kind_str()
            )),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Count, sum, min and max of one field in one group.
#[derive(Debug, Clone, Copy)]
struct Stats {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Every value so far was an integer: sums and extremes are written as integers.
    integers: bool,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            integers: true,
        }
    }
}

impl Stats {
    fn add(&mut self, n: Num) {
        let x = n.as_f64();
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.integers &= matches!(n, Num::Int(_));
    }

    fn to_json(self) -> Json {
        if self.count == 0 {
            return json!({"count": 0, "sum": 0, "min": null, "max": null, "avg": null});
        }
        let number = |x: f64| {
            // Integers stay integers while f64 holds them exactly (|x| < 2^53).
            if self.integers && x.abs() < 9_007_199_254_740_992.0 {
                Json::Number(Number::from(x as i64))
            } else {
                Number::from_f64(x).map_or(Json::Null, Json::Number)
            }
        };
        json!({
            "count": self.count,
            "sum": number(self.sum),
            "min": number(self.min),
            "max": number(self.max),
            "avg": Number::from_f64(self.sum / self.count as f64).map_or(Json::Null, Json::Number),
        })
    }
}

struct Group {
    key: Box<str>,
    count: u64,
    fields: Vec<Stats>,
}

#[derive(Default)]
struct Window {
    index: HashMap<u128, usize>,
    groups: Vec<Group>,
    held: Vec<HeldAck>,
}

/// A window that has closed: its derived events (compact CloudEvent JSON, one per key, in the
/// order keys first came) and the acknowledgements it held.
#[derive(Debug)]
pub(crate) struct Closed {
    pub(crate) start_micros: u64,
    pub(crate) events: Vec<Vec<u8>>,
    pub(crate) held: Vec<HeldAck>,
}

/// Names the derived events.
pub(crate) struct Emission<'a> {
    pub(crate) pipeline: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) fields: &'a [String],
}

/// The open windows of one aggregate.
pub(crate) struct Windows {
    window_micros: u64,
    max_keys: usize,
    fields: usize,
    open: BTreeMap<u64, Window>,
    /// Windows before this were emitted: an event that comes after its window was taken (a
    /// worker read the clock just before the close) joins the next one instead.
    emitted_until: u64,
}

impl Windows {
    pub(crate) fn new(window_micros: u64, max_keys: usize, fields: usize) -> Windows {
        assert!(window_micros > 0 && max_keys > 0, "validated");
        Windows {
            window_micros,
            max_keys,
            fields,
            open: BTreeMap::new(),
            emitted_until: 0,
        }
    }

    /// The start of the window open at `now`.
    pub(crate) fn start_at(&self, now_micros: u64) -> u64 {
        now_micros - now_micros % self.window_micros
    }

    /// When the window open at `now` closes.
    pub(crate) fn next_close(&self, now_micros: u64) -> u64 {
        self.start_at(now_micros) + self.window_micros
    }

    /// The window an event processed at `now` joins.
    fn target(&self, now_micros: u64) -> u64 {
        self.start_at(now_micros).max(self.emitted_until)
    }

    /// Whether the window open at `now` can take `key_hash` (it has it, or room for a key).
    pub(crate) fn has_room(&self, key_hash: u128, now_micros: u64) -> bool {
        self.open
            .get(&self.target(now_micros))
            .is_none_or(|w| w.index.contains_key(&key_hash) || w.groups.len() < self.max_keys)
    }

    /// Adds one event's contributions to the window open at `now`; the window holds `ack`
    /// until it is emitted.
    pub(crate) fn add(
        &mut self,
        contributions: impl IntoIterator<Item = Contribution>,
        ack: Option<HeldAck>,
        now_micros: u64,
    ) {
        let fields = self.fields;
        let window = self.open.entry(self.target(now_micros)).or_default();
        for c in contributions {
            debug_assert_eq!(c.values.len(), fields);
            let i = *window.index.entry(c.key_hash).or_insert_with(|| {
                window.groups.push(Group {
                    key: c.key,
                    count: 0,
                    fields: vec![Stats::default(); fields],
                });
                window.groups.len() - 1
            });
            let group = &mut window.groups[i];
            group.count += 1;
            for (stats, value) in group.fields.iter_mut().zip(c.values) {
                if let Some(n) = value {
                    stats.add(n);
                }
            }
        }
        window.held.extend(ack);
    }

    /// Takes every window that has closed by `now` (all of them with `u64::MAX`), oldest
    /// first, with its derived events.
    pub(crate) fn take_closed(&mut self, now_micros: u64, emission: &Emission<'_>) -> Vec<Closed> {
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            if start.saturating_add(self.window_micros) > now_micros {
                break;
            }
            let window = entry.remove();
            let end = start + self.window_micros;
            self.emitted_until = end;
            let events = window
                .groups
                .iter()
                .map(|g| derived_event(emission, g, start, end))
                .collect();
            closed.push(Closed {
                start_micros: start,
                events,
                held: window.held,
            });
        }
        closed
    }

    /// Keys held in all open windows.
    pub(crate) fn keys(&self) -> usize {
        self.open.values().map(|w| w.groups.len()).sum()
    }
}

/// The derived event of one group, in stored form (compact structured-mode JSON).
fn derived_event(emission: &Emission<'_>, group: &Group, start: u64, end: u64) -> Vec<u8> {
    let key: Json = serde_json::from_str(&group.key).unwrap_or(Json::Null);
    let mut data = Map::new();
    data.insert("key".to_owned(), key);
    data.insert("window_start".to_owned(), Json::from(rfc3339(start)));
    data.insert("window_end".to_owned(), Json::from(rfc3339(end)));
    data.insert("count".to_owned(), Json::from(group.count));
    for (name, stats) in emission.fields.iter().zip(&group.fields) {
        data.insert(name.clone(), stats.to_json());
    }
    let mut identity = Vec::new();
    for part in [
        emission.pipeline.as_bytes(),
        emission.event_type.as_bytes(),
        group.key.as_bytes(),
        &start.to_le_bytes(),
    ] {
        identity.extend_from_slice(part);
        identity.push(0);
    }
    let event = json!({
        "specversion": "1.0",
        "id": format!("{:032x}", hash128(&identity)),
        "source": format!("/veltrix/pipelines/{}", emission.pipeline),
        "type": emission.event_type,
        "time": rfc3339(end),
        "datacontenttype": "application/json",
        "data": data,
    });
    let text = serde_json::to_vec(&event).expect("JSON values serialise");
    let event = Event::from_stored(&text).expect("a derived event is a valid CloudEvent");
    let mut out = Vec::with_capacity(text.len());
    event.to_json_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000_000;
    /// 2024-01-01T00:00:00Z in µs.
    const T0: u64 = 1_704_067_200_000_000;

    fn contribution(key: &str, values: &[Option<Num>]) -> Contribution {
        let key = format!("\"{key}\"");
        Contribution {
            key_hash: hash128(key.as_bytes()),
            key: key.into(),
            values: values.to_vec(),
        }
    }

    fn emission() -> Emission<'static> {
        static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        Emission {
            pipeline: "scores",
            event_type: "score.summed",
            fields: FIELDS.get_or_init(|| vec!["points".to_owned()]),
        }
    }

    fn data(event: &[u8]) -> Json {
        let json: Json = serde_json::from_slice(event).unwrap();
        json["data"].clone()
    }

    fn ack(offset: u64) -> Option<HeldAck> {
        Some(HeldAck { input: 0, offset })
    }

    #[test]
    fn a_window_emits_one_event_per_key_with_count_and_field_statistics_when_it_closes() {
        let mut w = Windows::new(MINUTE, 100, 1);
        let at = T0 + 5_000_000;
        w.add([contribution("alice", &[Some(Num::Int(10))])], ack(0), at);
        w.add([contribution("bob", &[Some(Num::Int(3))])], ack(1), at + 1);
        w.add(
            [contribution("alice", &[Some(Num::Int(4))])],
            ack(2),
            at + 2,
        );
        w.add([contribution("alice", &[None])], ack(3), at + 3);
        assert_eq!(w.keys(), 2);
        assert!(
            w.take_closed(T0 + MINUTE - 1, &emission()).is_empty(),
            "still open"
        );
        let closed = w.take_closed(T0 + MINUTE, &emission());
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].start_micros, T0);
        assert_eq!(
            closed[0].held.iter().map(|h| h.offset).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(
            data(&closed[0].events[0]),
            json!({"key": "alice", "window_start": "2024-01-01T00:00:00.000000Z",
                   "window_end": "2024-01-01T00:01:00.000000Z", "count": 3,
                   "points": {"count": 2, "sum": 14, "min": 4, "max": 10, "avg": 7.0}})
        );
        assert_eq!(data(&closed[0].events[1])["points"]["sum"], 3);
        assert_eq!(w.keys(), 0);
    }

    #[test]
    fn windows_are_aligned_tumbling_and_close_in_order() {
        let mut w = Windows::new(MINUTE, 100, 1);
        w.add(
            [contribution("a", &[Some(Num::Float(1.5))])],
            None,
            T0 + 59_999_999,
        );
        w.add([contribution("a", &[Some(Num::Int(2))])], None, T0 + MINUTE);
        w.add(
            [contribution("a", &[Some(Num::Int(2))])],
            None,
            T0 + 2 * MINUTE + 1,
        );
        assert_eq!(w.next_close(T0 + 30_000_000), T0 + MINUTE);
        let closed = w.take_closed(T0 + 2 * MINUTE, &emission());
        assert_eq!(
            closed.iter().map(|c| c.start_micros).collect::<Vec<_>>(),
            [T0, T0 + MINUTE]
        );
        // A float anywhere makes the statistics floats.
        assert_eq!(
            data(&closed[0].events[0])["points"],
            json!({"count": 1, "sum": 1.5, "min": 1.5, "max": 1.5, "avg": 1.5})
        );
        assert_eq!(
            w.take_closed(u64::MAX, &emission()).len(),
            1,
            "all the rest"
        );
    }

    #[test]
    fn derived_events_are_cloudevents_with_ids_stable_per_pipeline_key_and_window() {
        let event_at = |key: &str, at: u64, pipeline: &'static str| {
            let mut w = Windows::new(MINUTE, 100, 1);
            w.add([contribution(key, &[None])], None, at);
            let e = Emission {
                pipeline,
                ..emission()
            };
            let closed = w.take_closed(u64::MAX, &e);
            serde_json::from_slice::<Json>(&closed[0].events[0]).unwrap()
        };
        let a = event_at("alice", T0 + 1, "scores");
        assert_eq!(a["type"], "score.summed");
        assert_eq!(a["source"], "/veltrix/pipelines/scores");
        assert_eq!(a["time"], "2024-01-01T00:01:00.000000Z");
        assert_eq!(a["data"]["points"]["avg"], Json::Null);
        assert_eq!(a["id"].as_str().unwrap().len(), 32);
        assert_eq!(a["id"], event_at("alice", T0 + 59_000_000, "scores")["id"]);
        assert_ne!(a["id"], event_at("bob", T0 + 1, "scores")["id"]);
        assert_ne!(a["id"], event_at("alice", T0 + MINUTE, "scores")["id"]);
        assert_ne!(a["id"], event_at("alice", T0 + 1, "other")["id"]);
    }

    #[test]
    fn an_event_late_for_an_emitted_window_joins_the_next_one() {
        let mut w = Windows::new(MINUTE, 100, 1);
        w.add([contribution("a", &[None])], None, T0 + 1);
        assert_eq!(w.take_closed(T0 + MINUTE, &emission()).len(), 1);
        // Its worker read the clock just before the close, and adds after it.
        w.add([contribution("a", &[None])], ack(9), T0 + MINUTE - 1);
        assert!(w.take_closed(T0 + MINUTE, &emission()).is_empty());
        let next = w.take_closed(T0 + 2 * MINUTE, &emission());
        assert_eq!(next[0].start_micros, T0 + MINUTE);
        assert_eq!(
            next[0].held,
            [HeldAck {
                input: 0,
                offset: 9
            }]
        );
    }

    #[test]
    fn a_window_has_room_for_max_keys_keys() {
        let mut w = Windows::new(MINUTE, 2, 0);
        w.add([contribution("a", &[])], None, T0);
        w.add([contribution("b", &[])], None, T0);
        let c = contribution("c", &[]);
        assert!(!w.has_room(c.key_hash, T0 + 1));
        assert!(w.has_room(contribution("a", &[]).key_hash, T0 + 1));
        assert!(
            w.has_room(c.key_hash, T0 + MINUTE),
            "the next window is empty"
        );
    }

    #[test]
    fn only_numbers_are_field_values() {
        assert_eq!(
            Num::from_value("n", &Value::Integer(3)),
            Ok(Some(Num::Int(3)))
        );
        assert_eq!(Num::from_value("n", &Value::Null), Ok(None));
        assert_eq!(
            Num::from_value("n", &Value::from("3")),
            Err("aggregate field `n` must be a number, found string".to_owned())
        );
    }
}
