//! A stored event as a VRL target, read lazily ([`StoredEvent`]).
//!
//! Layout: the stored record's top-level attributes as `(name, raw JSON)` slices of the record
//! (one scan, no copies), each with a VRL value made the first time a program reads or writes
//! it, and a state (stored, changed, removed); attributes a program adds live in `added`. A
//! program that reads or replaces `.` as a whole (`. = merge(., …)`, `encode_json(.)`) turns the
//! event into one VRL value (`whole`) which from then on is the event.
//!
//! Invariants: every name appears once (a record with a repeated or escaped name is not read
//! this way); `added` holds no name of `fields` that is not removed; once `whole` is set,
//! `fields` and `added` are not consulted again.
//!
//! Why: a filter on `.type` then reads one string instead of the whole event, a remap of
//! `.data.total` reads `data` only, and writing the event back copies every attribute no program
//! changed straight from the record. Events are validated on the way out
//! ([`StoredEvent::to_json_bytes`]) exactly like [`super::value_to_event`] validates a VRL value.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use vrl::path::OwnedSegment;
use vrl::value::{ObjectMap, Value};

use super::{EventTarget, attr_of_value, value_to_event_ref};
use crate::event::{AttrValue, Event, EventRef, InvalidEvent, SPEC_VERSION};

/// One stored top-level attribute.
#[derive(Debug)]
struct Field<'a> {
    name: &'a str,
    raw: &'a RawValue,
    /// The attribute as a VRL value, once a program touched it.
    value: OnceCell<Value>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// As in the record (it may have been read).
    Stored,
    /// Written by a program: `value` is the truth.
    Changed,
    /// Deleted by a program.
    Removed,
}

/// A stored CloudEvent as VRL's `.`: see the module documentation.
#[derive(Debug)]
pub struct StoredEvent<'a> {
    record: &'a [u8],
    fields: Vec<Field<'a>>,
    added: ObjectMap,
    whole: OnceCell<Value>,
    changed: bool,
    /// The first attribute that could not be read as a VRL value (a number beyond `f64`).
    error: OnceCell<String>,
}

impl<'a> StoredEvent<'a> {
    /// Reads a stored event: `None` unless `record` is a JSON object whose names are unique
    /// and unescaped, with `specversion` "1.0" and non-empty string `id`, `source` and `type`
    /// (the caller then takes the validating path, which says what is wrong).
    pub fn read(record: &'a [u8]) -> Option<StoredEvent<'a>> {
        let mut de = serde_json::Deserializer::from_slice(record);
        let fields = de.deserialize_map(FieldsVisitor).ok()??;
        de.end().ok()?;
        let raw = |name: &str| {
            fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.raw.get())
        };
        let unquoted = |s: &'a str| s.strip_prefix('"')?.strip_suffix('"');
        let valid = raw("specversion").and_then(unquoted) == Some(SPEC_VERSION)
            && ["id", "source", "type"]
                .iter()
                .all(|name| raw(name).and_then(unquoted).is_some_and(|s| !s.is_empty()));
        valid.then(|| StoredEvent {
            record,
            fields,
            added: ObjectMap::new(),
            whole: OnceCell::new(),
            changed: false,
            error: OnceCell::new(),
        })
    }

    /// `event` as a stored event: its canonical form, written into `buf` (cleared first).
    pub fn from_event(event: &Event, buf: &'a mut Vec<u8>) -> StoredEvent<'a> {
        buf.clear();
        event.to_json_bytes(buf);
        StoredEvent::read(buf)
            .expect("an event's canonical form has unique, unescaped names and its required attributes")
    }

    /// The event as one VRL value (what `.` is to a program).
    pub fn to_value(&self) -> Result<Value, String> {
        if let Some(whole) = self.whole.get() {
            return Ok(whole.clone());
        }
        let mut object = self.added.clone();
        for (i, field) in self.fields.iter().enumerate() {
            if field.state != State::Removed {
                object.insert(field.name.into(), self.field_value(i)?.clone());
            }
        }
        Ok(Value::Object(object))
    }

    /// Appends the event as compact structured-mode JSON, validated like any remapped event:
    /// nothing is appended when it is no longer a valid CloudEvent.
    pub fn to_json_bytes(&self, out: &mut Vec<u8>) -> Result<(), InvalidEvent> {
        if self.whole.get().is_none() && !self.changed {
            // The record is what the log stored: a validated event in its canonical form.
            out.extend_from_slice(self.record);
            return Ok(());
        }
        self.with_event(|event| event.to_json_bytes(out))
    }

    /// The event as an owned [`Event`] (for custom processors), validated.
    pub fn to_event(&self) -> Result<Event, InvalidEvent> {
        if self.whole.get().is_none() && !self.changed {
            return Event::from_stored(self.record);
        }
        self.with_event(|event| event.into_owned())
    }

    fn with_event<R>(&self, f: impl FnOnce(EventRef<'_>) -> R) -> Result<R, InvalidEvent> {
        if let Some(whole) = self.whole.get() {
            return value_to_event_ref(whole).map(f);
        }
        let stored = self
            .fields
            .iter()
            .filter(|field| field.state != State::Removed)
            .map(|field| {
                let attr = match (field.state, field.value.get()) {
                    (State::Changed, Some(value)) => attr_of_value(field.name, value),
                    _ => attr_of_raw(field.name, field.raw),
                };
                (field.name, attr)
            });
        let added = self
            .added
            .iter()
            .map(|(name, value)| (name.as_str(), attr_of_value(name, value)));
        EventRef::from_attributes(stored.chain(added)).map(f)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|f| f.name == name && f.state != State::Removed)
    }

    /// Field `i` as a VRL value, read from the record the first time.
    fn field_value(&self, i: usize) -> Result<&Value, String> {
        let field = &self.fields[i];
        if let Some(value) = field.value.get() {
            return Ok(value);
        }
        let value: Value = serde_json::from_str(field.raw.get()).map_err(|e| {
            format!(
                "attribute `{}` cannot be converted for VRL: {e}",
                field.name
            )
        })?;
        Ok(field.value.get_or_init(|| value))
    }

    /// Field `i`, readied to be written.
    fn field_mut(&mut self, i: usize) -> Option<&mut Value> {
        if let Err(e) = self.field_value(i) {
            let _ = self.error.set(e);
            return None;
        }
        self.changed = true;
        let field = &mut self.fields[i];
        field.state = State::Changed;
        field.value.get_mut()
    }

    /// Makes the whole event one value, from now on the event itself.
    fn whole_mut(&mut self) -> Option<&mut Value> {
        if self.whole.get().is_none() {
            match self.to_value() {
                Ok(value) => {
                    let _ = self.whole.set(value);
                }
                Err(e) => {
                    let _ = self.error.set(e);
                    return None;
                }
            }
        }
        self.whole.get_mut()
    }
}

impl EventTarget for StoredEvent<'_> {
    fn get(&self, path: &[OwnedSegment]) -> Option<&Value> {
        if let Some(whole) = self.whole.get() {
            return whole.get(path);
        }
        match path.first() {
            Some(OwnedSegment::Field(name)) => self.attribute(name)?.get(&path[1..]),
            // `.` itself (or an index into it, which an object does not have).
            _ => match self.to_value() {
                Ok(value) => self.whole.get_or_init(|| value).get(path),
                Err(e) => {
                    let _ = self.error.set(e);
                    None
                }
            },
        }
    }

    fn attribute(&self, name: &str) -> Option<&Value> {
        if let Some(whole) = self.whole.get() {
            return whole.attribute(name);
        }
        match self.position(name) {
            Some(i) => match self.field_value(i) {
                Ok(value) => Some(value),
                Err(e) => {
                    let _ = self.error.set(e);
                    None
                }
            },
            None => self.added.get(name),
        }
    }

    fn insert(&mut self, path: &[OwnedSegment], value: Value) {
        if self.whole.get().is_none()
            && let Some(OwnedSegment::Field(name)) = path.first()
        {
            match self.position(name) {
                Some(i) => {
                    if let Some(field) = self.field_mut(i) {
                        field.insert(&path[1..], value);
                    }
                }
                None => {
                    self.changed = true;
                    let mut added = Value::Object(std::mem::take(&mut self.added));
                    added.insert(path, value);
                    if let Value::Object(map) = added {
                        self.added = map;
                    }
                }
            }
            return;
        }
        if let Some(whole) = self.whole_mut() {
            whole.insert(path, value);
        }
    }

    fn remove(&mut self, path: &[OwnedSegment], compact: bool) -> Option<Value> {
        if self.whole.get().is_none()
            && let Some(OwnedSegment::Field(name)) = path.first()
        {
            let Some(i) = self.position(name) else {
                let mut added = Value::Object(std::mem::take(&mut self.added));
                let removed = added.remove(path, compact);
                if let Value::Object(map) = added {
                    self.added = map;
                }
                return removed;
            };
            let field = self.field_mut(i)?;
            if path.len() == 1 {
                let removed = std::mem::replace(field, Value::Null);
                self.fields[i].state = State::Removed;
                return Some(removed);
            }
            let removed = field.remove(&path[1..], compact)?;
            let emptied = match field {
                Value::Object(map) => map.is_empty(),
                Value::Array(array) => array.is_empty(),
                _ => false,
            };
            if compact && emptied {
                self.fields[i].state = State::Removed;
            }
            return Some(removed);
        }
        self.whole_mut()?.remove(path, compact)
    }

    fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }
}

/// A stored attribute as it arrives for validation (strings borrowed from the record).
fn attr_of_raw<'a>(name: &str, raw: &'a RawValue) -> AttrValue<'a> {
    if name == "data" {
        return AttrValue::Json(Cow::Borrowed(raw));
    }
    serde_json::from_str(raw.get()).unwrap_or(AttrValue::Other("a value that is not JSON"))
}

/// The top-level `(name, raw value)` pairs of a record; `None` for an escaped or repeated name.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Option<Vec<Field<'de>>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a CloudEvent object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields: Vec<Field<'de>> = Vec::with_capacity(map.size_hint().unwrap_or(12));
        let mut usable = true;
        // An escaped name does not borrow: the scan fails and the caller validates instead.
        while let Some(name) = map.next_key::<&'de str>()? {
            let raw: &'de RawValue = map.next_value()?;
            match name {
                name if usable && fields.iter().all(|f| f.name != name) => {
                    fields.push(Field {
                        name,
                        raw,
                        value: OnceCell::new(),
                        state: State::Stored,
                    });
                }
                _ => usable = false,
            }
        }
        Ok(usable.then_some(fields))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::expr::{event_to_value, value_to_event};

    #[derive(Debug, Clone)]
    enum Op {
        Get(Vec<OwnedSegment>),
        Attribute(&'static str),
        Insert(Vec<OwnedSegment>, Value),
        Remove(Vec<OwnedSegment>, bool),
    }

    // `id` is left out: removing it makes both sides generate different ULIDs.
    const NAMES: [&str; 9] = [
        "data", "x", "y", "subject", "time", "ext", "new", "type", "source",
    ];

    fn segment() -> impl Strategy<Value = OwnedSegment> {
        prop_oneof![
            4 => proptest::sample::select(&NAMES[..]).prop_map(OwnedSegment::field),
            1 => (-2isize..3).prop_map(OwnedSegment::Index),
        ]
    }

    fn path() -> impl Strategy<Value = Vec<OwnedSegment>> {
        prop_oneof![
            1 => Just(Vec::new()),
            12 => proptest::collection::vec(segment(), 1..4),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            (-5i64..5).prop_map(Value::Integer),
            "[a-c]{0,2}".prop_map(|s| Value::from(s.as_str())),
            Just(Value::Object(ObjectMap::new())),
            Just(Value::Array(vec![Value::Integer(1)])),
            Just(Value::from("2024-05-01T12:00:00Z")),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            path().prop_map(Op::Get),
            proptest::sample::select(&NAMES[..]).prop_map(Op::Attribute),
            (path(), value()).prop_map(|(p, v)| Op::Insert(p, v)),
            (path(), any::<bool>()).prop_map(|(p, c)| Op::Remove(p, c)),
        ]
    }

    fn record() -> impl Strategy<Value = String> {
        let data = prop_oneof![
            Just(String::new()),
            Just(r#","data":{"x":1,"y":{"x":"s"},"z":[1,{"y":2}]}"#.to_owned()),
            Just(r#","data":[1,2]"#.to_owned()),
            Just(r#","data":"text""#.to_owned()),
            Just(r#","data_base64":"AA==""#.to_owned()),
        ];
        (any::<bool>(), any::<bool>(), any::<bool>(), data).prop_map(
            |(time, subject, ext, data)| {
                let mut s = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t""#.to_owned();
                if time {
                    s.push_str(r#","time":"2024-01-01T00:00:00Z""#);
                }
                if subject {
                    s.push_str(r#","subject":"x""#);
                }
                if ext {
                    s.push_str(r#","ext":7"#);
                }
                s.push_str(&data);
                s.push('}');
                s
            },
        )
    }

    /// An event's JSON as a value, `Err` with its problems sorted (the two sides list them in
    /// different orders).
    fn written(result: Result<Vec<u8>, InvalidEvent>) -> Result<serde_json::Value, Vec<String>> {
        match result {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap()),
            Err(e) => {
                let mut problems: Vec<String> =
                    e.message.split("; ").map(str::to_owned).collect();
                problems.sort();
                Err(problems)
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The lazy target behaves exactly like the whole event as one VRL value: the same
        /// reads, the same results of writes and deletes, the same event written out (or the
        /// same problems).
        #[test]
        fn a_stored_event_behaves_like_the_event_as_one_value(
            record in record(),
            ops in proptest::collection::vec(op(), 0..7),
        ) {
            let event = Event::from_stored(record.as_bytes()).unwrap();
            let mut model = event_to_value(&event).unwrap();
            let mut lazy = StoredEvent::read(record.as_bytes()).unwrap();
            for op in &ops {
                match op {
                    Op::Get(path) => prop_assert_eq!(lazy.get(path), EventTarget::get(&model, path)),
                    Op::Attribute(name) => {
                        prop_assert_eq!(lazy.attribute(name), model.attribute(name));
                    }
                    Op::Insert(path, value) => {
                        lazy.insert(path, value.clone());
                        EventTarget::insert(&mut model, path, value.clone());
                    }
                    Op::Remove(path, compact) => prop_assert_eq!(
                        lazy.remove(path, *compact),
                        EventTarget::remove(&mut model, path, *compact)
                    ),
                }
                prop_assert_eq!(lazy.take_error(), None);
            }
            match lazy.to_value() {
                Ok(value) => prop_assert_eq!(&value, &model),
                Err(e) => prop_assert!(false, "{e}"),
            }
            let mut out = Vec::new();
            let lazy_written = lazy.to_json_bytes(&mut out).map(|()| out.clone());
            let model_written = value_to_event(&model).map(|e| {
                let mut bytes = Vec::new();
                e.to_json_bytes(&mut bytes);
                bytes
            });
            prop_assert_eq!(written(lazy_written), written(model_written));
            if lazy.to_json_bytes(&mut Vec::new()).is_err() {
                prop_assert!(out.is_empty(), "nothing is appended for an invalid event");
            }
        }
    }
}
