//! A stored event as a VRL target, read lazily ([`StoredEvent`]).
//!
//! Layout: a JSON object of the record is a [`Lazy`] object: its members as `(name, raw JSON)`
//! slices of the record (one scan, no copies), each with a state (stored, changed, removed) and,
//! once a program touches it, either a VRL value or — when the program reaches *into* a member
//! object (`.data.total`) — a nested lazy object of its own; members a program adds live in
//! `added`. A program that reads or replaces an object as a whole (`. = merge(., …)`,
//! `encode_json(.data)`) turns that object into one VRL value (`whole`), from then on the truth.
//!
//! Invariants: every name appears once (a record with a repeated or escaped name is not read
//! this way); `added` holds no name of a member that is not removed; a member has a value or a
//! nested object, never both; once `whole` is set, members and `added` are not consulted again.
//!
//! Why: a filter on `.type` reads one string instead of the whole event; a remap that sets
//! `.data.total` from `.data.amount` parses those two members, and the event is written back by
//! copying every member no program changed straight from the record with `total` appended.
//! Events are validated on the way out ([`StoredEvent::to_json_bytes`]) exactly like
//! [`super::value_to_event`] validates a VRL value.

use std::borrow::Cow;
use std::cell::OnceCell;

use bytes::Bytes;
use serde_json::value::RawValue;
use vrl::path::OwnedSegment;
use vrl::value::{ObjectMap, Value};

use super::{EventTarget, attr_of_value, value_to_event_ref};
use crate::event::{AttrValue, Event, EventRef, InvalidEvent, SPEC_VERSION};

/// A stored CloudEvent as VRL's `.`: see the module documentation.
#[derive(Debug)]
pub struct StoredEvent<'a> {
    record: &'a [u8],
    root: Lazy<'a>,
    cx: Cx<'a>,
}

/// What every object of one event shares.
#[derive(Debug)]
struct Cx<'a> {
    /// The shared buffer the record is a slice of, if any: strings without escapes become
    /// slices of it (no copy) instead of new buffers.
    owner: Option<&'a Bytes>,
    /// The first member that could not be read as a VRL value (a number beyond `f64`).
    error: OnceCell<String>,
}

/// A JSON object of the record, read lazily.
#[derive(Debug)]
struct Lazy<'a> {
    members: Vec<Member<'a>>,
    added: ObjectMap,
    whole: OnceCell<Value>,
    /// Whether anything was written or removed (reads do not count).
    changed: bool,
}

/// One member of a stored object.
#[derive(Debug)]
struct Member<'a> {
    name: &'a str,
    /// The member's JSON text in the record.
    raw: &'a str,
    /// The member as a VRL value, once a program read or wrote it as a whole.
    value: OnceCell<Value>,
    /// The member object, once a program reached into it.
    nested: OnceCell<Box<Lazy<'a>>>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// As in the record (it may have been read).
    Stored,
    /// Written by a program: `value` or `nested` is the truth.
    Changed,
    /// Deleted by a program.
    Removed,
}

impl<'a> StoredEvent<'a> {
    /// Reads a stored event: `None` unless `record` is a JSON object whose names are unique
    /// and unescaped, with `specversion` "1.0" and non-empty string `id`, `source` and `type`
    /// (the caller then takes the validating path, which says what is wrong).
    pub fn read(record: &'a [u8]) -> Option<StoredEvent<'a>> {
        StoredEvent::read_in(record, None)
    }

    /// [`StoredEvent::read`] of a record that is a slice of `owner` (a batch read from the
    /// log): strings a program reads are slices of `owner`, not copies.
    pub fn read_shared(owner: &'a Bytes, record: &'a [u8]) -> Option<StoredEvent<'a>> {
        StoredEvent::read_in(record, Some(owner))
    }

    fn read_in(record: &'a [u8], owner: Option<&'a Bytes>) -> Option<StoredEvent<'a>> {
        let root = Lazy::read(record)?;
        let unquoted = |s: &'a str| s.strip_prefix('"')?.strip_suffix('"');
        let raw = |name: &str| root.position(name).map(|i| root.members[i].raw);
        let valid = raw("specversion").and_then(unquoted) == Some(SPEC_VERSION)
            && ["id", "source", "type"]
                .iter()
                .all(|name| raw(name).and_then(unquoted).is_some_and(|s| !s.is_empty()));
        valid.then(|| StoredEvent {
            record,
            root,
            cx: Cx {
                owner,
                error: OnceCell::new(),
            },
        })
    }

    /// `event` as a stored event: its canonical form, written into `buf` (cleared first).
    pub fn from_event(event: &Event, buf: &'a mut Vec<u8>) -> StoredEvent<'a> {
        buf.clear();
        event.to_json_bytes(buf);
        StoredEvent::read(buf).expect(
            "an event's canonical form has unique, unescaped names and its required attributes",
        )
    }

    /// The event as one VRL value (what `.` is to a program).
    pub fn to_value(&self) -> Result<Value, String> {
        match self.root.whole.get() {
            Some(whole) => Ok(whole.clone()),
            None => self
                .root
                .build_whole(&self.cx)
                .ok_or_else(|| self.problem()),
        }
    }

    fn problem(&self) -> String {
        self.cx
            .error
            .get()
            .cloned()
            .unwrap_or_else(|| "the event cannot be read".to_owned())
    }

    /// Appends the event as compact structured-mode JSON, validated like any remapped event:
    /// nothing is appended when it is no longer a valid CloudEvent.
    pub fn to_json_bytes(&self, out: &mut Vec<u8>) -> Result<(), InvalidEvent> {
        let root = &self.root;
        if root.whole.get().is_none() {
            if !root.changed {
                // The record is what the log stored: a validated event in its canonical form.
                out.extend_from_slice(self.record);
                return Ok(());
            }
            if root.only_data_changed() {
                // `data` is last in the canonical form and any JSON but null is valid data.
                root.write_json(out);
                return Ok(());
            }
        }
        self.with_event(|event| event.to_json_bytes(out))
    }

    /// The event as an owned [`Event`] (for custom processors), validated.
    pub fn to_event(&self) -> Result<Event, InvalidEvent> {
        if self.root.whole.get().is_none() && !self.root.changed {
            return Event::from_stored(self.record);
        }
        self.with_event(|event| event.into_owned())
    }

    fn with_event<R>(&self, f: impl FnOnce(EventRef<'_>) -> R) -> Result<R, InvalidEvent> {
        let root = &self.root;
        if let Some(whole) = root.whole.get() {
            return value_to_event_ref(whole).map(f);
        }
        let mut problem = None;
        let stored = root
            .members
            .iter()
            .enumerate()
            .filter(|(_, member)| member.state != State::Removed)
            .map(|(i, member)| {
                let attr = match member.state {
                    State::Changed => match root.member_value(i, &self.cx) {
                        Some(value) => attr_of_value(member.name, value),
                        None => {
                            problem = Some(self.problem());
                            AttrValue::Null
                        }
                    },
                    _ => attr_of_raw(member.name, member.raw),
                };
                (member.name, attr)
            });
        let added = root
            .added
            .iter()
            .map(|(name, value)| (name.as_str(), attr_of_value(name, value)));
        let event = EventRef::from_attributes(stored.chain(added));
        match problem {
            Some(message) => Err(InvalidEvent { message }),
            None => event.map(f),
        }
    }
}

impl EventTarget for StoredEvent<'_> {
    fn get(&self, path: &[OwnedSegment]) -> Option<&Value> {
        self.root.get(path, &self.cx)
    }

    fn attribute(&self, name: &str) -> Option<&Value> {
        self.root.attribute(name, &self.cx)
    }

    fn insert(&mut self, path: &[OwnedSegment], value: Value) {
        self.root.insert(path, value, &self.cx);
    }

    fn remove(&mut self, path: &[OwnedSegment], compact: bool) -> Option<Value> {
        self.root.remove(path, compact, &self.cx)
    }

    fn take_error(&mut self) -> Option<String> {
        self.cx.error.take()
    }
}

impl<'a> Lazy<'a> {
    /// The members of the JSON object `raw`; `None` if it is not one (see [`scan_members`]).
    fn read(raw: &'a [u8]) -> Option<Lazy<'a>> {
        // One UTF-8 check of the whole text instead of one per string.
        let members = scan_members(std::str::from_utf8(raw).ok()?)?;
        Some(Lazy {
            members,
            added: ObjectMap::new(),
            whole: OnceCell::new(),
            changed: false,
        })
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.name == name && m.state != State::Removed)
    }

    /// The object as one VRL value, made once (`None`: a member VRL cannot represent, recorded
    /// in `error`).
    fn whole(&self, cx: &Cx<'a>) -> Option<&Value> {
        if let Some(whole) = self.whole.get() {
            return Some(whole);
        }
        let whole = self.build_whole(cx)?;
        Some(self.whole.get_or_init(|| whole))
    }

    fn build_whole(&self, cx: &Cx<'a>) -> Option<Value> {
        let mut object = self.added.clone();
        for (i, member) in self.members.iter().enumerate() {
            if member.state != State::Removed {
                object.insert(member.name.into(), self.member_value(i, cx)?.clone());
            }
        }
        Some(Value::Object(object))
    }

    /// Member `i` as one VRL value, read from the record the first time.
    fn member_value(&self, i: usize, cx: &Cx<'a>) -> Option<&Value> {
        let member = &self.members[i];
        if let Some(value) = member.value.get() {
            return Some(value);
        }
        if let Some(nested) = member.nested.get() {
            return nested.whole(cx);
        }
        let raw = member.raw;
        let shared = cx.owner.and_then(|owner| {
            let text = raw.strip_prefix('"')?.strip_suffix('"')?;
            (!text.contains('\\')).then(|| Value::Bytes(owner.slice_ref(text.as_bytes())))
        });
        if let Some(value) = shared {
            return Some(member.value.get_or_init(|| value));
        }
        match serde_json::from_str::<Value>(raw) {
            Ok(value) => Some(member.value.get_or_init(|| value)),
            Err(e) => {
                let _ = cx.error.set(format!(
                    "`{}` cannot be converted for VRL: {e}",
                    member.name
                ));
                None
            }
        }
    }

    /// Member `i` as a lazy object, if it is a stored object not yet read as a whole.
    fn member_nested(&self, i: usize) -> Option<&Lazy<'a>> {
        let member = &self.members[i];
        if member.value.get().is_some() {
            return None;
        }
        if let Some(nested) = member.nested.get() {
            return Some(nested);
        }
        if !member.raw.starts_with('{') {
            return None;
        }
        let nested = Lazy::read(member.raw.as_bytes())?;
        Some(member.nested.get_or_init(|| Box::new(nested)))
    }

    fn attribute(&self, name: &str, cx: &Cx<'a>) -> Option<&Value> {
        if let Some(whole) = self.whole.get() {
            return whole.attribute(name);
        }
        match self.position(name) {
            Some(i) => self.member_value(i, cx),
            None => self.added.get(name),
        }
    }

    fn get(&self, path: &[OwnedSegment], cx: &Cx<'a>) -> Option<&Value> {
        if self.whole.get().is_none()
            && let Some(OwnedSegment::Field(name)) = path.first()
        {
            let rest = &path[1..];
            return match self.position(name) {
                Some(i) if !rest.is_empty() => match self.member_nested(i) {
                    Some(nested) => nested.get(rest, cx),
                    None => self.member_value(i, cx)?.get(rest),
                },
                Some(i) => self.member_value(i, cx),
                None => self.added.get(name.as_str())?.get(rest),
            };
        }
        // The object itself, or an index into it (which an object does not have).
        self.whole(cx)?.get(path)
    }

    /// Member `i`, readied to be written inside: its nested object if it has one (or is a
    /// stored object not yet read whole), else its value.
    fn member_mut(&mut self, i: usize, cx: &Cx<'a>) -> Option<Inside<'_, 'a>> {
        let use_nested = self.member_nested(i).is_some();
        if !use_nested {
            self.member_value(i, cx)?;
        }
        self.changed = true;
        let member = &mut self.members[i];
        member.state = State::Changed;
        if use_nested {
            member.nested.get_mut().map(|n| Inside::Nested(n))
        } else {
            member.value.get_mut().map(Inside::Value)
        }
    }

    fn whole_mut(&mut self, cx: &Cx<'a>) -> Option<&mut Value> {
        self.whole(cx)?;
        self.changed = true;
        self.whole.get_mut()
    }

    fn insert(&mut self, path: &[OwnedSegment], value: Value, cx: &Cx<'a>) {
        if self.whole.get().is_none()
            && let Some(OwnedSegment::Field(name)) = path.first()
        {
            let rest = &path[1..];
            match self.position(name) {
                Some(i) if rest.is_empty() => {
                    self.changed = true;
                    let member = &mut self.members[i];
                    member.state = State::Changed;
                    member.nested = OnceCell::new();
                    member.value = OnceCell::from(value);
                }
                Some(i) => match self.member_mut(i, cx) {
                    Some(Inside::Nested(nested)) => nested.insert(rest, value, cx),
                    Some(Inside::Value(member)) => {
                        member.insert(rest, value);
                    }
                    None => {}
                },
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
        if let Some(whole) = self.whole_mut(cx) {
            whole.insert(path, value);
        }
    }

    fn remove(&mut self, path: &[OwnedSegment], compact: bool, cx: &Cx<'a>) -> Option<Value> {
        if self.whole.get().is_none()
            && let Some(OwnedSegment::Field(name)) = path.first()
        {
            let rest = &path[1..];
            let Some(i) = self.position(name) else {
                let mut added = Value::Object(std::mem::take(&mut self.added));
                let removed = added.remove(path, compact);
                if let Value::Object(map) = added {
                    self.added = map;
                }
                if removed.is_some() {
                    self.changed = true;
                }
                return removed;
            };
            if rest.is_empty() {
                let removed = self.member_value(i, cx)?.clone();
                self.changed = true;
                self.members[i].state = State::Removed;
                return Some(removed);
            }
            let (removed, emptied) = match self.member_mut(i, cx)? {
                Inside::Nested(nested) => {
                    let removed = nested.remove(rest, compact, cx)?;
                    (removed, nested.is_empty())
                }
                Inside::Value(member) => {
                    let removed = member.remove(rest, compact)?;
                    let emptied = match member {
                        Value::Object(map) => map.is_empty(),
                        Value::Array(array) => array.is_empty(),
                        _ => false,
                    };
                    (removed, emptied)
                }
            };
            if compact && emptied {
                self.members[i].state = State::Removed;
            }
            return Some(removed);
        }
        self.whole_mut(cx)?.remove(path, compact)
    }

    fn is_empty(&self) -> bool {
        match self.whole.get() {
            Some(Value::Object(map)) => map.is_empty(),
            Some(Value::Array(array)) => array.is_empty(),
            Some(_) => false,
            None => self.added.is_empty() && self.members.iter().all(|m| m.state == State::Removed),
        }
    }

    /// Whether `data` is the only member written (and is not null now) and nothing was added
    /// or removed: the event stays valid without being validated again.
    fn only_data_changed(&self) -> bool {
        self.added.is_empty()
            && self.members.iter().all(|m| match m.state {
                State::Stored => true,
                State::Changed => m.name == "data" && !matches!(m.value.get(), Some(Value::Null)),
                State::Removed => false,
            })
    }

    /// Writes the object as compact JSON: stored members as they are, the rest serialized.
    fn write_json(&self, out: &mut Vec<u8>) {
        if let Some(whole) = self.whole.get() {
            write_value(out, whole);
            return;
        }
        out.push(b'{');
        let mut first = true;
        let mut separate = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        for member in &self.members {
            if member.state == State::Removed {
                continue;
            }
            separate(out);
            // Names are unescaped in the record, so they are written as they are.
            out.push(b'"');
            out.extend_from_slice(member.name.as_bytes());
            out.extend_from_slice(b"\":");
            match (member.state, member.nested.get(), member.value.get()) {
                (State::Changed, Some(nested), _) => nested.write_json(out),
                (State::Changed, None, Some(value)) => write_value(out, value),
                _ => out.extend_from_slice(member.raw.as_bytes()),
            }
        }
        for (name, value) in &self.added {
            separate(out);
            serde_json::to_writer(&mut *out, name.as_str()).expect("a string serializes to JSON");
            out.push(b':');
            write_value(out, value);
        }
        out.push(b'}');
    }
}

/// What a member is written through.
enum Inside<'m, 'a> {
    Nested(&'m mut Lazy<'a>),
    Value(&'m mut Value),
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    serde_json::to_writer(out, value).expect("a VRL value serializes to JSON");
}

/// A stored attribute as it arrives for validation (strings borrowed from the record).
fn attr_of_raw<'a>(name: &str, raw: &'a str) -> AttrValue<'a> {
    const NOT_JSON: AttrValue<'static> = AttrValue::Other("a value that is not JSON");
    if name == "data" {
        return serde_json::from_str::<&RawValue>(raw)
            .map_or(NOT_JSON, |raw| AttrValue::Json(Cow::Borrowed(raw)));
    }
    serde_json::from_str(raw).unwrap_or(NOT_JSON)
}

/// The `(name, raw value)` members of the JSON object `text`, found by its structure alone:
/// strings (with their escapes), nesting and separators are followed; scalars are taken as they
/// are, not parsed — the record was validated when it was stored, and a member is parsed (and
/// so checked) when a program reads it. `None` when `text` is not one object, the structure is
/// broken, or a name is escaped or repeated (the caller then validates the record instead).
fn scan_members(text: &str) -> Option<Vec<Member<'_>>> {
    let b = text.as_bytes();
    let mut i = skip_whitespace(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_whitespace(b, i + 1);
    // Room for a typical event's attributes (extensions grow it).
    let mut members: Vec<Member<'_>> = Vec::with_capacity(8);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let name_end = i
                + 1
                + b.get(i + 1..)?
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\')?;
            if b[name_end] != b'"' {
                return None;
            }
            let name = &text[i + 1..name_end];
            i = skip_whitespace(b, name_end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let start = skip_whitespace(b, i + 1);
            let end = skip_value(b, start)?;
            if members.iter().any(|m| m.name == name) {
                return None;
            }
            members.push(Member {
                name,
                raw: &text[start..end],
                value: OnceCell::new(),
                nested: OnceCell::new(),
                state: State::Stored,
            });
            i = skip_whitespace(b, end);
            match b.get(i) {
                Some(b',') => i = skip_whitespace(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_whitespace(b, i) == b.len()).then_some(members)
}

fn skip_whitespace(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// Where the JSON value starting at `i` ends.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            // Brackets are matched by kind (a bit per level: 1 for an object), strings skipped
            // whole; deeper than 128 levels the caller validates instead.
            let (mut kinds, mut depth) = (0u128, 0u32);
            let mut j = i;
            while let Some(&c) = b.get(j) {
                match c {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' if depth < 128 => {
                        kinds = (kinds << 1) | u128::from(c == b'{');
                        depth += 1;
                    }
                    b'}' | b']' if depth > 0 && (kinds & 1 == 1) == (c == b'}') => {
                        kinds >>= 1;
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    b'{' | b'[' | b'}' | b']' => return None,
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let len = b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(b.len() - i);
            (len > 0).then_some(i + len)
        }
    }
}

/// Where the JSON string starting at `i` (its opening quote) ends, after its closing quote.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + b.get(j..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
        if b[k] == b'"' {
            return Some(k + 1);
        }
        j = k + 2;
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
        // The names of the records' nesting are likelier, so deep paths hit something.
        prop_oneof![
            3 => Just(OwnedSegment::field("data")),
            3 => proptest::sample::select(&["x", "y"][..]).prop_map(OwnedSegment::field),
            3 => proptest::sample::select(&NAMES[..]).prop_map(OwnedSegment::field),
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
            Just(r#","data":{"y":{"x":"s"}}"#.to_owned()),
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
                let mut problems: Vec<String> = e.message.split("; ").map(str::to_owned).collect();
                problems.sort();
                Err(problems)
            }
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,4}", inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The structural scan finds the same members, with the same text, as a JSON parser,
        /// compact or pretty; an escaped name makes it give up rather than guess.
        #[test]
        fn the_member_scan_agrees_with_a_json_parser(
            members in proptest::collection::btree_map("[a-z\"\\\\]{1,4}", json(), 0..6),
            pretty in any::<bool>(),
        ) {
            let object = serde_json::Value::Object(members.clone().into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            let scanned = scan_members(&text);
            if members.keys().any(|k| k.contains(['"', '\\'])) {
                prop_assert!(scanned.is_none());
            } else {
                let scanned = scanned.expect("an object with plain names scans");
                // Compared through the same parser (floats do not round-trip exactly).
                let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(scanned.len(), members.len());
                for (member, name) in scanned.iter().zip(members.keys()) {
                    prop_assert_eq!(member.name, name.as_str());
                    let raw: serde_json::Value = serde_json::from_str(member.raw).unwrap();
                    prop_assert_eq!(&raw, &parsed[name]);
                }
            }
        }

        /// Arbitrary text never panics the scan, and what it accepts is followed to its end.
        #[test]
        fn the_member_scan_never_panics(text in "[{}\\[\\]\",:a-c0-9\\\\ ]{0,40}") {
            if let Some(members) = scan_members(&text) {
                for m in members {
                    prop_assert!(!m.raw.is_empty());
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

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
            // As the pipeline reads it: a slice of a shared batch buffer.
            let owner = Bytes::from(format!("prefix{record}"));
            let mut lazy = StoredEvent::read_shared(&owner, &owner[6..]).unwrap();
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
