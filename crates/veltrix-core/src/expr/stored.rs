//! A stored event as a VRL target, read lazily ([`StoredEvent`]).
//!
//! Layout: a JSON object of the record is a [`Lazy`] object: its members as `(name, raw JSON)`
//! spans of the object's text (one scan, no copies; the top level placed from the record's
//! member index instead when it has one, [`crate::member_index`]), each with a state (stored,
//! changed, removed) and either a VRL value (once a program reads or writes it whole) or a nested lazy
//! object of its own (a member object: scanned in the same pass one level deep — `data` — or
//! deeper ones when a program reaches into them, `.data.items.x`); members a program adds live
//! in `added`, a list sorted by name. A program that reads or replaces an object as a whole
//! (`. = merge(., …)`, `encode_json(.data)`) turns that object into one VRL value (`whole`),
//! from then on the truth. Spans are offsets, not references, so member lists hold no borrow;
//! they and the added lists are recycled through small per-thread pools instead of being
//! allocated per event.
//!
//! Invariants: every name appears once and is valid UTF-8 (a record with a repeated or escaped
//! name is not read this way); `added` is sorted by name, holds each name once and no name of a
//! member that is not removed; a member
//! has a value or a nested object, never both; once `whole` is set, members and `added` are not
//! consulted again; a nested object's spans are relative to its member's raw text.
//!
//! Limits: objects up to `u32::MAX` bytes (larger records take the validating path); each pool
//! keeps at most [`SPARE_LISTS_MAX`] lists per thread of at most [`SPARE_LIST_CAPACITY_MAX`]
//! items each.
//!
//! Why: a filter on `.type` reads one string instead of the whole event; a remap that sets
//! `.data.total` from `.data.amount` parses those two members, and the event is written back by
//! copying the record around what changed, with `total` appended to `data`.
//! Events are validated on the way out ([`StoredEvent::to_json_bytes`]) exactly like
//! [`super::value_to_event`] validates a VRL value.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::thread::LocalKey;

use bytes::Bytes;
use serde_json::value::RawValue;
use vrl::path::OwnedSegment;
use vrl::value::{KeyString, ObjectMap, Value};

use super::{EventTarget, attr_of_value, value_to_event_ref};
use crate::event::{AttrValue, Event, EventRef, InvalidEvent, SPEC_VERSION};
use crate::member_index;

/// A stored CloudEvent as VRL's `.`: see the module documentation.
#[derive(Debug)]
pub struct StoredEvent<'a> {
    record: &'a [u8],
    root: Lazy,
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

/// A JSON object of the record, read lazily. Its text is not kept: every method that needs it
/// is given it (the record for the root, a member's raw text for a nested object).
#[derive(Debug)]
struct Lazy {
    members: Vec<Member>,
    /// Where the object's closing brace is in its text.
    close: u32,
    /// Whether the text has no whitespace between its tokens (outside member values): then
    /// unchanged stretches can be copied as they are.
    compact: bool,
    added: Added,
    whole: OnceCell<Box<Value>>,
    /// Whether anything was written or removed (reads do not count).
    changed: bool,
}

/// A byte range of an object's text.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(self, text: &[u8]) -> &[u8] {
        &text[self.start as usize..self.end as usize]
    }
}

/// One member of a stored object.
#[derive(Debug)]
struct Member {
    name: Span,
    /// The member's JSON text.
    raw: Span,
    /// What the member became: nothing yet, or its VRL value (once a program read or wrote it
    /// as a whole), or a nested lazy object (a member object scanned with the record, or reached
    /// into). One cell, so a member is never both.
    touched: OnceCell<Touched>,
    state: State,
}

#[derive(Debug)]
enum Touched {
    Value(Value),
    Nested(Lazy),
}

impl Member {
    /// What [`scan_object`] pushes before it fills in the member's spans.
    #[allow(
        clippy::declare_interior_mutable_const,
        reason = "used only as a fresh value to push: each use is a new, empty cell"
    )]
    const UNSCANNED: Member = Member {
        name: Span { start: 0, end: 0 },
        raw: Span { start: 0, end: 0 },
        touched: OnceCell::new(),
        state: State::Stored,
    };

    fn value(&self) -> Option<&Value> {
        match self.touched.get()? {
            Touched::Value(value) => Some(value),
            Touched::Nested(_) => None,
        }
    }

    fn nested(&self) -> Option<&Lazy> {
        match self.touched.get()? {
            Touched::Nested(nested) => Some(nested),
            Touched::Value(_) => None,
        }
    }

    /// Sets the value of an untouched member.
    fn init_value(&self, value: Value) -> &Value {
        match self.touched.get_or_init(|| Touched::Value(value)) {
            Touched::Value(value) => value,
            Touched::Nested(_) => unreachable!("only an untouched member gets a value"),
        }
    }

    fn name<'t>(&self, text: &'t [u8]) -> &'t str {
        std::str::from_utf8(self.name.of(text)).expect("names are checked when scanned")
    }
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

/// Lists kept per thread for the next event, per kind (an event's lists go back when it drops).
const SPARE_LISTS_MAX: usize = 32;
/// Longer lists (events with many extensions) are freed rather than kept.
const SPARE_LIST_CAPACITY_MAX: usize = 64;

thread_local! {
    static SPARE_MEMBERS: RefCell<Vec<Vec<Member>>> = const { RefCell::new(Vec::new()) };
    static SPARE_ADDED: RefCell<Vec<Vec<(KeyString, Value)>>> = const { RefCell::new(Vec::new()) };
}

type Spare<T> = LocalKey<RefCell<Vec<Vec<T>>>>;

/// A list from `spare`, or a new one with room for `capacity` items.
fn spare_list<T>(spare: &'static Spare<T>, capacity: usize) -> Vec<T> {
    spare
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Gives `list` back to `spare` (emptied), unless that is full or the list is too long.
fn recycle<T>(spare: &'static Spare<T>, mut list: Vec<T>) {
    // Cleared before the pool is borrowed: dropping members recycles their nested lists.
    list.clear();
    if list.capacity() == 0 || list.capacity() > SPARE_LIST_CAPACITY_MAX {
        return;
    }
    // A thread being torn down has no pool left: the list is freed.
    let _ = spare.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_LISTS_MAX {
            spare.push(list);
        }
    });
}

fn member_list() -> Vec<Member> {
    // Room for a typical event's attributes (extensions grow it).
    spare_list(&SPARE_MEMBERS, 8)
}

/// The members a program added to an object, sorted by name as VRL's object map keeps them (so
/// an event is written alike either way); a list from the per-thread pool once it has one.
#[derive(Debug, Default)]
struct Added(Vec<(KeyString, Value)>);

impl Added {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(key, _)| key.as_str().cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    fn to_object(&self) -> ObjectMap {
        self.0.iter().cloned().collect()
    }

    /// Sets the value at `rest` inside member `name`, adding the member (as VRL's `insert` on
    /// the object would: a new member starts as `null` and gets the containers `rest` needs).
    fn insert(&mut self, name: &str, rest: &[OwnedSegment], value: Value) {
        let i = match self.find(name) {
            Ok(i) => i,
            Err(i) => {
                if self.0.capacity() == 0 {
                    self.0 = spare_list(&SPARE_ADDED, 4);
                }
                self.0.insert(i, (name.into(), Value::Null));
                i
            }
        };
        match rest {
            [] => self.0[i].1 = value,
            _ => {
                self.0[i].1.insert(rest, value);
            }
        }
    }

    /// Removes the value at `rest` inside member `name` (the member itself when `rest` is
    /// empty); `compact` also removes the member if that leaves it an empty container.
    fn remove(&mut self, name: &str, rest: &[OwnedSegment], compact: bool) -> Option<Value> {
        let i = self.find(name).ok()?;
        if rest.is_empty() {
            return Some(self.0.remove(i).1);
        }
        let (removed, emptied) = remove_inside(&mut self.0[i].1, rest, compact)?;
        if compact && emptied {
            self.0.remove(i);
        }
        Some(removed)
    }
}

impl Drop for Added {
    fn drop(&mut self) {
        recycle(&SPARE_ADDED, std::mem::take(&mut self.0));
    }
}

/// Removes the value at `path` (not empty) inside `value`; with whether `value` is left an
/// empty container.
fn remove_inside(value: &mut Value, path: &[OwnedSegment], compact: bool) -> Option<(Value, bool)> {
    let removed = value.remove(path, compact)?;
    let emptied = match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(array) => array.is_empty(),
        _ => false,
    };
    Some((removed, emptied))
}

impl Drop for Lazy {
    fn drop(&mut self) {
        recycle(&SPARE_MEMBERS, std::mem::take(&mut self.members));
    }
}

impl<'a> StoredEvent<'a> {
    /// Reads a stored event: `None` unless `record` is a JSON object whose names are unique
    /// and unescaped, with `specversion` "1.0" and non-empty string `id`, `source` and `type`
    /// (the caller then takes the validating path, which says what is wrong).
    pub fn read(record: &'a [u8]) -> Option<StoredEvent<'a>> {
        StoredEvent::read_in(record, None, &[])
    }

    /// [`StoredEvent::read`] of a record that is a slice of `owner` (a batch read from the
    /// log): strings a program reads are slices of `owner`, not copies.
    ///
    /// `index` is the record's member index ([`crate::member_index`]; empty when it has none):
    /// the top-level members are placed from it instead of scanned for. An index that does not
    /// fit the record is ignored.
    pub fn read_shared(
        owner: &'a Bytes,
        record: &'a [u8],
        index: &[u8],
    ) -> Option<StoredEvent<'a>> {
        StoredEvent::read_in(record, Some(owner), index)
    }

    /// [`StoredEvent::read`] with the record's member index (see [`StoredEvent::read_shared`]).
    pub fn read_indexed(record: &'a [u8], index: &[u8]) -> Option<StoredEvent<'a>> {
        StoredEvent::read_in(record, None, index)
    }

    fn read_in(
        record: &'a [u8],
        owner: Option<&'a Bytes>,
        index: &[u8],
    ) -> Option<StoredEvent<'a>> {
        let root = match index {
            [] => Lazy::read(record)?,
            index => Lazy::read_indexed(record, index).or_else(|| Lazy::read(record))?,
        };
        let unquoted = |s: &'a [u8]| s.strip_prefix(b"\"")?.strip_suffix(b"\"");
        let raw = |name: &str| {
            root.position(record, name)
                .map(|i| root.members[i].raw.of(record))
        };
        let valid = canonical_required(record, &root.members)
            || raw("specversion").and_then(unquoted) == Some(SPEC_VERSION.as_bytes())
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
            Some(whole) => Ok((**whole).clone()),
            None => self
                .root
                .build_whole(self.record, &self.cx)
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
            if root.only_data_changed(self.record) {
                // `data` is last in the canonical form and any JSON but null is valid data.
                root.write_json(self.record, out);
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
        let text = self.record;
        let mut problem = None;
        let stored = root
            .members
            .iter()
            .enumerate()
            .filter(|(_, member)| member.state != State::Removed)
            .map(|(i, member)| {
                let name = member.name(text);
                let attr = match member.state {
                    State::Changed => match root.member_value(text, i, &self.cx) {
                        Some(value) => attr_of_value(name, value),
                        None => {
                            problem = Some(self.problem());
                            AttrValue::Null
                        }
                    },
                    _ => attr_of_raw(name, member.raw.of(text)),
                };
                (name, attr)
            });
        let added = root
            .added
            .iter()
            .map(|(name, value)| (name, attr_of_value(name, value)));
        let event = EventRef::from_attributes(stored.chain(added));
        match problem {
            Some(message) => Err(InvalidEvent { message }),
            None => event.map(f),
        }
    }
}

impl EventTarget for StoredEvent<'_> {
    fn get(&self, path: &[OwnedSegment]) -> Option<&Value> {
        self.root.get(self.record, path, &self.cx)
    }

    fn attribute(&self, name: &str) -> Option<&Value> {
        self.root.attribute(self.record, name, &self.cx)
    }

    fn is_text(&self, path: &[OwnedSegment], text: &[u8]) -> Option<bool> {
        self.root.is_text(self.record, path, text)
    }

    fn insert(&mut self, path: &[OwnedSegment], value: Value) {
        self.root.insert(self.record, path, value, &self.cx);
    }

    fn remove(&mut self, path: &[OwnedSegment], compact: bool) -> Option<Value> {
        self.root.remove(self.record, path, compact, &self.cx)
    }

    fn take_error(&mut self) -> Option<String> {
        self.cx.error.take()
    }
}

impl Lazy {
    /// The members of the JSON object `text`; `None` if it is not one (see [`scan_members`]).
    fn read(text: &[u8]) -> Option<Lazy> {
        let ((), lazy) = Lazy::scan(|members| Some(((), scan_members(text, members)?)))?;
        Some(lazy)
    }

    /// The members of the compact JSON object `text` as its member `index` places them; `None`
    /// if the index does not fit the text (see [`index_members`]).
    fn read_indexed(text: &[u8], index: &[u8]) -> Option<Lazy> {
        let ((), lazy) = Lazy::scan(|members| Some(((), index_members(text, index, members)?)))?;
        Some(lazy)
    }

    /// The object of the members `scan` finds, in a list from the pool (given back when the
    /// scan fails), with what else the scan returns.
    fn scan<R>(scan: impl FnOnce(&mut Vec<Member>) -> Option<(R, Scanned)>) -> Option<(R, Lazy)> {
        let mut members = member_list();
        match scan(&mut members) {
            Some((found, Scanned { close, compact })) => Some((
                found,
                Lazy {
                    members,
                    close,
                    compact,
                    added: Added::default(),
                    whole: OnceCell::new(),
                    changed: false,
                },
            )),
            None => {
                recycle(&SPARE_MEMBERS, members);
                None
            }
        }
    }

    fn position(&self, text: &[u8], name: &str) -> Option<usize> {
        // Lengths first: most names differ in length, and a span's length needs no slicing.
        self.members.iter().position(|m| {
            (m.name.end - m.name.start) as usize == name.len()
                && same(m.name.of(text), name.as_bytes())
                && m.state != State::Removed
        })
    }

    /// The object as one VRL value, made once (`None`: a member VRL cannot represent, recorded
    /// in `error`).
    fn whole(&self, text: &[u8], cx: &Cx<'_>) -> Option<&Value> {
        if let Some(whole) = self.whole.get() {
            return Some(whole);
        }
        let whole = self.build_whole(text, cx)?;
        Some(self.whole.get_or_init(|| Box::new(whole)))
    }

    fn build_whole(&self, text: &[u8], cx: &Cx<'_>) -> Option<Value> {
        let mut object = self.added.to_object();
        for (i, member) in self.members.iter().enumerate() {
            if member.state != State::Removed {
                let value = self.member_value(text, i, cx)?.clone();
                object.insert(member.name(text).into(), value);
            }
        }
        Some(Value::Object(object))
    }

    /// Member `i` as one VRL value, read from the record the first time.
    fn member_value(&self, text: &[u8], i: usize, cx: &Cx<'_>) -> Option<&Value> {
        let member = &self.members[i];
        if let Some(value) = member.value() {
            return Some(value);
        }
        let raw = member.raw.of(text);
        if let Some(nested) = member.nested() {
            return nested.whole(raw, cx);
        }
        // A string without escapes is its own text: a slice of the batch, once it is known
        // to be UTF-8 (as a parse would check).
        let shared = cx.owner.and_then(|owner| {
            let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
            (!inner.contains(&b'\\') && std::str::from_utf8(inner).is_ok())
                .then(|| Value::Bytes(owner.slice_ref(inner)))
        });
        if let Some(value) = shared.or_else(|| plain_integer(raw)) {
            return Some(member.init_value(value));
        }
        match serde_json::from_slice::<Value>(raw) {
            Ok(value) => Some(member.init_value(value)),
            Err(e) => {
                let _ = cx.error.set(format!(
                    "`{}` cannot be converted for VRL: {e}",
                    member.name(text)
                ));
                None
            }
        }
    }

    /// Member `i` as a lazy object, if it is a stored object not yet read as a whole.
    fn member_nested(&self, text: &[u8], i: usize) -> Option<&Lazy> {
        let member = &self.members[i];
        match member.touched.get() {
            Some(Touched::Nested(nested)) => return Some(nested),
            Some(Touched::Value(_)) => return None,
            None => {}
        }
        let raw = member.raw.of(text);
        if !raw.starts_with(b"{") {
            return None;
        }
        let nested = Lazy::read(raw)?;
        match member.touched.get_or_init(|| Touched::Nested(nested)) {
            Touched::Nested(nested) => Some(nested),
            Touched::Value(_) => unreachable!("checked untouched above"),
        }
    }

    fn attribute(&self, text: &[u8], name: &str, cx: &Cx<'_>) -> Option<&Value> {
        if let Some(whole) = self.whole.get() {
            return whole.attribute(name);
        }
        match self.position(text, name) {
            Some(i) => self.member_value(text, i, cx),
            None => self.added.get(name),
        }
    }

    fn get(&self, text: &[u8], path: &[OwnedSegment], cx: &Cx<'_>) -> Option<&Value> {
        if self.whole.get().is_none()
            && let Some(OwnedSegment::Field(name)) = path.first()
        {
            let rest = &path[1..];
            return match self.position(text, name) {
                Some(i) if !rest.is_empty() => match self.member_nested(text, i) {
                    Some(nested) => nested.get(self.members[i].raw.of(text), rest, cx),
                    None => self.member_value(text, i, cx)?.get(rest),
                },
                Some(i) => self.member_value(text, i, cx),
                None => self.added.get(name.as_str())?.get(rest),
            };
        }
        // The object itself, or an index into it (which an object does not have).
        self.whole(text, cx)?.get(path)
    }

    /// Whether the stored, unread string at `path` is `s`, compared as it is in the record; `None`
    /// when that cannot tell (not a stored member, already read, not a string, or a string with
    /// escapes or bytes that are not ASCII, which only reading decodes and checks).
    fn is_text(&self, text: &[u8], path: &[OwnedSegment], s: &[u8]) -> Option<bool> {
        let (OwnedSegment::Field(name), rest) = path.split_first()? else {
            return None;
        };
        if self.whole.get().is_some() {
            return None;
        }
        let member = &self.members[self.position(text, name)?];
        if member.state != State::Stored {
            return None;
        }
        let raw = member.raw.of(text);
        match member.touched.get() {
            Some(Touched::Nested(nested)) if !rest.is_empty() => nested.is_text(raw, rest, s),
            None if rest.is_empty() => {
                let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
                (inner.is_ascii() && !inner.contains(&b'\\')).then(|| inner == s)
            }
            _ => None,
        }
    }

    /// Member `i`, readied to be written inside: its nested object (with its text) if it has
    /// one (or is a stored object not yet read whole), else its value.
    fn member_mut<'t>(&mut self, text: &'t [u8], i: usize, cx: &Cx<'_>) -> Option<Inside<'_, 't>> {
        if self.member_nested(text, i).is_none() {
            self.member_value(text, i, cx)?;
        }
        self.changed = true;
        let member = &mut self.members[i];
        member.state = State::Changed;
        let raw = member.raw.of(text);
        member.touched.get_mut().map(|touched| match touched {
            Touched::Nested(nested) => Inside::Nested(nested, raw),
            Touched::Value(value) => Inside::Value(value),
        })
    }

    fn whole_mut(&mut self, text: &[u8], cx: &Cx<'_>) -> Option<&mut Value> {
        self.whole(text, cx)?;
        self.changed = true;
        self.whole.get_mut().map(|whole| &mut **whole)
    }

    fn insert(&mut self, text: &[u8], path: &[OwnedSegment], value: Value, cx: &Cx<'_>) {
        if self.whole.get().is_none()
            && let Some(OwnedSegment::Field(name)) = path.first()
        {
            let rest = &path[1..];
            match self.position(text, name) {
                Some(i) if rest.is_empty() => {
                    self.changed = true;
                    let member = &mut self.members[i];
                    member.state = State::Changed;
                    member.touched = OnceCell::from(Touched::Value(value));
                }
                Some(i) => match self.member_mut(text, i, cx) {
                    Some(Inside::Nested(nested, raw)) => nested.insert(raw, rest, value, cx),
                    Some(Inside::Value(member)) => {
                        member.insert(rest, value);
                    }
                    None => {}
                },
                None => {
                    self.changed = true;
                    self.added.insert(name, rest, value);
                }
            }
            return;
        }
        if let Some(whole) = self.whole_mut(text, cx) {
            whole.insert(path, value);
        }
    }

    fn remove(
        &mut self,
        text: &[u8],
        path: &[OwnedSegment],
        compact: bool,
        cx: &Cx<'_>,
    ) -> Option<Value> {
        if self.whole.get().is_none()
            && let Some(OwnedSegment::Field(name)) = path.first()
        {
            let rest = &path[1..];
            let Some(i) = self.position(text, name) else {
                let removed = self.added.remove(name, rest, compact);
                if removed.is_some() {
                    self.changed = true;
                }
                return removed;
            };
            if rest.is_empty() {
                let removed = self.member_value(text, i, cx)?.clone();
                self.changed = true;
                self.members[i].state = State::Removed;
                return Some(removed);
            }
            let (removed, emptied) = match self.member_mut(text, i, cx)? {
                Inside::Nested(nested, raw) => {
                    let removed = nested.remove(raw, rest, compact, cx)?;
                    (removed, nested.is_empty())
                }
                Inside::Value(member) => remove_inside(member, rest, compact)?,
            };
            if compact && emptied {
                self.members[i].state = State::Removed;
            }
            return Some(removed);
        }
        self.whole_mut(text, cx)?.remove(path, compact)
    }

    fn is_empty(&self) -> bool {
        match self.whole.get().map(|whole| &**whole) {
            Some(Value::Object(map)) => map.is_empty(),
            Some(Value::Array(array)) => array.is_empty(),
            Some(_) => false,
            None => self.added.is_empty() && self.members.iter().all(|m| m.state == State::Removed),
        }
    }

    /// Whether `data` is the only member written (and is not null now) and nothing was added
    /// or removed: the event stays valid without being validated again.
    fn only_data_changed(&self, text: &[u8]) -> bool {
        self.added.is_empty()
            && self.members.iter().all(|m| match m.state {
                State::Stored => true,
                State::Changed => {
                    m.name.of(text) == b"data" && !matches!(m.value(), Some(Value::Null))
                }
                State::Removed => false,
            })
    }

    /// Writes the object (whose text is `text`) as compact JSON: stored members as they are,
    /// the rest serialized.
    fn write_json(&self, text: &[u8], out: &mut Vec<u8>) {
        if let Some(whole) = self.whole.get() {
            write_value(out, whole);
            return;
        }
        if self.compact && self.members.iter().all(|m| m.state != State::Removed) {
            // Copy the text around the changed members; added ones go before the brace.
            let mut copied = 0;
            for member in self.members.iter().filter(|m| m.state == State::Changed) {
                out.extend_from_slice(&text[copied..member.raw.start as usize]);
                member.write_changed(text, out);
                copied = member.raw.end as usize;
            }
            let close = self.close as usize;
            out.extend_from_slice(&text[copied..close]);
            let mut first = self.members.is_empty();
            for (name, value) in self.added.iter() {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                write_member(out, name, value);
            }
            out.extend_from_slice(&text[close..]);
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
            out.extend_from_slice(member.name.of(text));
            out.extend_from_slice(b"\":");
            match member.state {
                State::Changed => member.write_changed(text, out),
                _ => out.extend_from_slice(member.raw.of(text)),
            }
        }
        for (name, value) in self.added.iter() {
            separate(out);
            write_member(out, name, value);
        }
        out.push(b'}');
    }
}

impl Member {
    /// Writes a changed member's value: its nested object or its VRL value.
    fn write_changed(&self, text: &[u8], out: &mut Vec<u8>) {
        match self.touched.get() {
            Some(Touched::Nested(nested)) => nested.write_json(self.raw.of(text), out),
            Some(Touched::Value(value)) => write_value(out, value),
            None => unreachable!("a changed member has a value or a nested object"),
        }
    }
}

/// `raw` as a VRL integer when it is a plain JSON integer that fits an `i64` (the common case,
/// read without a JSON parser); anything else (fractions, exponents, big numbers) is parsed.
fn plain_integer(raw: &[u8]) -> Option<Value> {
    let (negative, digits) = match raw.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, raw),
    };
    // JSON's `-0` is a float to serde_json (and so to VRL): left to it.
    let plain = match digits {
        [b'0'] => !negative,
        [b'1'..=b'9', ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !plain {
        return None;
    }
    // Up to 18 digits cannot overflow an `i64`: folded here. Longer ones are plain ASCII digits,
    // so the text is UTF-8 and `i64`'s parser has the last word on range.
    let n = if digits.len() <= 18 {
        let n = digits
            .iter()
            .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
        if negative { -n } else { n }
    } else {
        std::str::from_utf8(raw).ok()?.parse::<i64>().ok()?
    };
    Some(Value::Integer(n))
}

/// What a member is written through: its nested object with the object's text, or its value.
enum Inside<'m, 't> {
    Nested(&'m mut Lazy, &'t [u8]),
    Value(&'m mut Value),
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        // What remaps compute most: written as serde_json writes it (with `itoa`), without
        // going through the serializer.
        Value::Integer(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
        _ => serde_json::to_writer(out, value).expect("a VRL value serializes to JSON"),
    }
}

fn write_member(out: &mut Vec<u8>, name: &str, value: &Value) {
    // Names rarely need escapes (a quote, a backslash or a control character): then they are
    // written as they are, without a serializer.
    if name.bytes().all(|c| c >= b' ' && c != b'"' && c != b'\\') {
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    } else {
        serde_json::to_writer(&mut *out, name).expect("a string serializes to JSON");
        out.push(b':');
    }
    write_value(out, value);
}

/// A stored attribute as it arrives for validation (strings borrowed from the record).
fn attr_of_raw<'a>(name: &str, raw: &'a [u8]) -> AttrValue<'a> {
    const NOT_JSON: AttrValue<'static> = AttrValue::Other("a value that is not JSON");
    if name == "data" {
        return serde_json::from_slice::<&RawValue>(raw)
            .map_or(NOT_JSON, |raw| AttrValue::Json(Cow::Borrowed(raw)));
    }
    serde_json::from_slice(raw).unwrap_or(NOT_JSON)
}

/// What a successful [`scan_members`] found besides the members.
struct Scanned {
    close: u32,
    compact: bool,
}

/// Scans the JSON object `text` into `members` (`(name, raw value)` spans), found by its
/// structure alone: strings (with their escapes), nesting and separators are followed; scalars
/// are taken as they are, not parsed — the record was validated when it was stored, and a
/// member is parsed (and so checked) when a program reads it. Members that are objects are
/// scanned in the same pass (one level deep: `data`), so a program reaching into them does not
/// walk their text again. `None` when `text` is not one object, the structure is broken, a
/// name is escaped, repeated or not UTF-8, or the text is longer than a span can say (the
/// caller then validates the record instead).
fn scan_members(text: &[u8], members: &mut Vec<Member>) -> Option<Scanned> {
    if u32::try_from(text.len()).is_err() {
        return None;
    }
    let start = skip_whitespace(text, 0);
    let (end, scanned) = scan_object(text, 0, start, members, true)?;
    let last = skip_whitespace(text, end);
    (last == text.len()).then_some(Scanned {
        close: scanned.close,
        compact: scanned.compact && start == 0 && last == end,
    })
}

/// The members of the compact object `text` from its member index (layout in
/// [`crate::member_index`]), with member objects scanned as [`scan_members`] does. The value
/// extents are trusted; everything else the reader relies on is checked: every name's quotes
/// and colon, that names are ASCII without escapes and unique, the comma or closing brace after
/// every value, and that the index ends with the object. `None` when anything does not fit.
fn index_members(text: &[u8], index: &[u8], members: &mut Vec<Member>) -> Option<Scanned> {
    u32::try_from(text.len()).ok()?;
    if text.first() != Some(&b'{') {
        return None;
    }
    let mut entries = member_index::Entries::new(index);
    let mut seen = 0u64;
    // Where the next member's opening quote is.
    let mut i: usize = 1;
    loop {
        let (name_len, value_len) = entries.next()?.ok()?;
        let name_end = (i + 1).checked_add(name_len)?;
        let start = name_end + 2;
        let end = start.checked_add(value_len)?;
        if value_len == 0
            || text.get(i) != Some(&b'"')
            || text.get(name_end..start) != Some(b"\":")
            || end >= text.len()
        {
            return None;
        }
        // The name's closing quote (checked above) is its first stop only if the name is plain
        // ASCII without escapes.
        if find_stop(text, i + 1, true) != Some(name_end)
            || repeats(&mut seen, members, text, &text[i + 1..name_end])
        {
            return None;
        }
        members.push(Member::UNSCANNED);
        let member = members.last_mut().expect("pushed above");
        // A member object that does not read lazily (an escaped name) is left to be parsed
        // when reached, as the scan leaves it.
        if text[start] == b'{'
            && let Some((nested_end, lazy)) = scan_nested(text, start)
        {
            if nested_end != end {
                return None;
            }
            let _ = member.touched.set(Touched::Nested(lazy));
        }
        member.name = Span {
            start: (i + 1) as u32,
            end: name_end as u32,
        };
        member.raw = Span {
            start: start as u32,
            end: end as u32,
        };
        match text[end] {
            b',' => i = end + 1,
            b'}' if end + 1 == text.len() && entries.next().is_none() => {
                return Some(Scanned {
                    close: end as u32,
                    compact: true,
                });
            }
            _ => return None,
        }
    }
}

/// Whether `record` starts as the canonical writer starts an event, with the required
/// attributes valid: `specversion` "1.0", then non-empty string `id`, `source` and `type`, in
/// this order (a quick yes for most records; `false` leaves it to the search by name).
fn canonical_required(record: &[u8], members: &[Member]) -> bool {
    const START: &[u8] = br#"{"specversion":"1.0","id":""#;
    let non_empty_string = |m: &Member| {
        let raw = m.raw.of(record);
        raw.len() > 2 && raw.first() == Some(&b'"') && raw.last() == Some(&b'"')
    };
    let [specversion, id, source, ty, ..] = members else {
        return false;
    };
    record.starts_with(START)
        && specversion.raw.end as usize == START.len() - ",\"id\":\"".len()
        && id.raw.start as usize == START.len() - 1
        && non_empty_string(id)
        && source.name.of(record) == b"source"
        && non_empty_string(source)
        && ty.name.of(record) == b"type"
        && non_empty_string(ty)
}

/// Whether `name` repeats the name of one of `members` (spans of `text`), remembering it in
/// `seen`: a 6-bit fingerprint per name seen, so a name whose bit is clear is new for sure and
/// the members are compared only on a possible repeat.
fn repeats(seen: &mut u64, members: &[Member], text: &[u8], name: &[u8]) -> bool {
    let bit = 1u64 << fingerprint(name);
    let possible = *seen & bit != 0;
    *seen |= bit;
    possible && members.iter().any(|m| same(m.name.of(text), name))
}

/// Scans the object whose `{` is at `i` in `b` into `members`, with spans relative to
/// `origin`; returns where the object ends. With `nest`, member objects are scanned too.
fn scan_object(
    b: &[u8],
    origin: usize,
    i: usize,
    members: &mut Vec<Member>,
    nest: bool,
) -> Option<(usize, Scanned)> {
    let span = |start: usize, end: usize| Span {
        start: (start - origin) as u32,
        end: (end - origin) as u32,
    };
    let mut compact = true;
    let mut ws = |i: usize| {
        // Every JSON whitespace byte is at most a space: one compare for compact text.
        if b.get(i).is_some_and(|&c| c > b' ') {
            return i;
        }
        let j = skip_whitespace(b, i);
        compact &= j == i;
        j
    };
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut i = ws(i + 1);
    let mut seen = 0u64;
    let close;
    if b.get(i) == Some(&b'}') {
        close = i;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let name_end = find_stop(b, i + 1, true)?;
            let name_end = match b[name_end] {
                b'"' => name_end,
                b'\\' => return None,
                // Not ASCII: checked as UTF-8 once its end is found.
                _ => {
                    let end = name_end
                        + b[name_end..]
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\')?;
                    if b[end] != b'"' || std::str::from_utf8(&b[i + 1..end]).is_err() {
                        return None;
                    }
                    end
                }
            };
            let name = &b[i + 1..name_end];
            if repeats(&mut seen, members, &b[origin..], name) {
                return None;
            }
            let name = span(i + 1, name_end);
            i = ws(name_end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let start = ws(i + 1);
            // A constant pushed and its fields written in place: a member assembled on the stack
            // from narrow stores and then copied into the list with wide loads stalls
            // store-to-load forwarding (`perf annotate`: a quarter of this function's samples
            // were on that copy).
            members.push(Member::UNSCANNED);
            // Checked here, not in the call: most members are not objects.
            let object = nest && b.get(start) == Some(&b'{');
            let end = match object.then(|| scan_nested(b, start)).flatten() {
                Some((end, lazy)) => {
                    let member = members.last_mut().expect("pushed above");
                    let _ = member.touched.set(Touched::Nested(lazy));
                    end
                }
                None => skip_value(b, start)?,
            };
            let member = members.last_mut().expect("pushed above");
            member.name = name;
            member.raw = span(start, end);
            i = ws(end);
            match b.get(i) {
                Some(b',') => i = ws(i + 1),
                Some(b'}') => {
                    close = i;
                    break;
                }
                _ => return None,
            }
        }
    }
    Some((
        close + 1,
        Scanned {
            close: (close - origin) as u32,
            compact,
        },
    ))
}

/// The member object at `i` scanned as a lazy object of its own, and where it ends; `None`
/// leaves it to [`skip_value`] (and to be scanned when reached).
fn scan_nested(b: &[u8], i: usize) -> Option<(usize, Lazy)> {
    Lazy::scan(|members| scan_object(b, i, i, members, false))
}

/// Name equality, cheapest test first (most names differ in length or first byte). Names are
/// short: compared a word at a time in line, not through a `memcmp` call (a profile put 2.5 % of
/// the in-process pipeline's samples in `memcmp` from here).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a.first() != b.first() {
        return false;
    }
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    while i + 8 <= a.len() {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    a[i..].iter().zip(&b[i..]).all(|(x, y)| x == y)
}

/// Six bits of a name (its length and last byte) for the repeat check of [`repeats`].
fn fingerprint(name: &[u8]) -> u32 {
    let last = name.last().copied().unwrap_or(0);
    (name.len() as u32)
        .wrapping_mul(7)
        .wrapping_add(u32::from(last))
        & 63
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

/// The first quote or backslash at or after `i` (with `non_ascii`, also the first byte that is
/// not ASCII), eight bytes at a time while it can: names and most string bytes need no look.
fn find_stop(b: &[u8], mut i: usize, non_ascii: bool) -> Option<usize> {
    let highs = if non_ascii { HIGHS } else { 0 };
    while let Some(chunk) = b.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // Exact in its lowest set byte (a borrow only ever flags a byte above a true match).
        let stops = has_byte(word, b'"') | has_byte(word, b'\\') | (word & highs);
        if stops != 0 {
            return Some(i + stops.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || (non_ascii && !c.is_ascii()))
        .map(|k| i + k)
}

/// Where the JSON string starting at `i` (its opening quote) ends, after its closing quote.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = find_stop(b, j, false)?;
        if b[k] == b'"' {
            return Some(k + 1);
        }
        j = k + 2;
    }
}

/// Bytes with their high bit set: the ones that are not ASCII.
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Non-zero when one of `word`'s bytes is `byte` (the classic zero-byte test on `word ^ byte`).
const fn has_byte(word: u64, byte: u8) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    let x = word ^ (ONES * byte as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
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
            // Long enough that quotes and escapes fall past the first eight bytes (the scan skips
            // strings a word at a time).
            ".{0,24}".prop_map(serde_json::Value::from),
            "[a-c\"\\\\]{0,24}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,4}", inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn field(name: &str) -> OwnedSegment {
        OwnedSegment::field(name)
    }

    fn spare_lists() -> usize {
        SPARE_MEMBERS.with(|spare| spare.borrow().len())
    }

    #[test]
    fn required_attributes_are_checked_in_the_canonical_order_and_in_any_other() {
        let reads = |record: &str| StoredEvent::read(record.as_bytes()).is_some();
        let canonical = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        assert!(reads(canonical));
        assert!(reads(
            r#"{"type":"t","source":"/s","id":"1","specversion":"1.0"}"#
        ));
        assert!(reads(
            r#"{ "specversion":"1.0","id":"1","source":"/s","type":"t"}"#
        ));
        for (from, to) in [
            (r#""1.0""#, r#""1.1""#),
            (r#""1.0""#, r#""1.00""#),
            (r#""id":"1""#, r#""id":"""#),
            (r#""id":"1""#, r#""id":1"#),
            (r#""source":"/s""#, r#""source":"""#),
            (r#""source":"/s""#, r#""sourcf":"/s""#),
            (r#""type":"t""#, r#""type":"""#),
            (r#""type":"t""#, r#""type":true"#),
        ] {
            let record = canonical.replace(from, to);
            assert!(!reads(&record), "{record}");
            let mut shuffled: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&record).unwrap();
            let ty = shuffled.remove("type");
            shuffled.insert("type".to_owned(), ty.unwrap_or_default());
            let shuffled = serde_json::to_string(&shuffled).unwrap();
            assert!(!reads(&shuffled), "{shuffled}");
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_past_its_first_word_is_not_read_lazily() {
        let mut members = Vec::new();
        // `\xff` as the ninth byte of a name: the second word of the name scan finds it.
        let text = b"{\"abcdefgh\xffi\":1}";
        assert!(scan_members(text, &mut members).is_none());
        let text = "{\"abcdefgh\u{e9}i\":1}".as_bytes();
        let mut members = Vec::new();
        assert!(scan_members(text, &mut members).is_some());
        assert_eq!(members[0].name(text), "abcdefgh\u{e9}i");
    }

    #[test]
    fn a_change_is_written_by_copying_the_record_around_it() {
        let record = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":true,"data":{"amount":21,"note":"a\"b"}}"#;
        let mut event = StoredEvent::read(record).unwrap();
        let amount = event
            .get(&[field("data"), field("amount")])
            .cloned()
            .unwrap();
        event.insert(&[field("data"), field("total")], amount);
        let mut out = Vec::new();
        event.to_json_bytes(&mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":true,"data":{"amount":21,"note":"a\"b","total":21}}"#
        );
    }

    #[test]
    fn added_names_are_escaped_when_they_need_it() {
        let record = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{}}"#;
        let mut event = StoredEvent::read(record).unwrap();
        let names = ["q\"uote", "back\\slash", "tab\t", "plain", "é"];
        for (i, name) in names.iter().enumerate() {
            event.insert(&[field("data"), field(name)], Value::Integer(i as i64));
        }
        let mut out = Vec::new();
        event.to_json_bytes(&mut out).unwrap();
        let written: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(written["data"][*name], i, "{name} in {written}");
        }
        assert_eq!(written["data"].as_object().unwrap().len(), names.len());
    }

    #[test]
    fn plain_integers_are_read_without_a_parser_and_agree_with_it() {
        for raw in [
            "0",
            "7",
            "-12",
            "999999999999999999",
            "-999999999999999999",
            "1000000000000000000",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            let parsed: Value = serde_json::from_str(raw).unwrap();
            assert_eq!(plain_integer(raw.as_bytes()), Some(parsed), "{raw}");
        }
        // Left to the parser: not plain, or beyond i64.
        for raw in [
            "-0",
            "01",
            "-",
            "",
            "1.5",
            "1e3",
            "-0.0",
            "9223372036854775808",
            "+1",
            " 1",
        ] {
            assert_eq!(plain_integer(raw.as_bytes()), None, "{raw}");
        }
    }

    #[test]
    fn a_pretty_record_is_written_compact() {
        let record = b"{ \"specversion\": \"1.0\", \"id\": \"1\", \"source\": \"/s\",\n \"type\": \"t\",\n \"data\": {\"a\": 1} }\n";
        let mut event = StoredEvent::read(record).unwrap();
        event.insert(&[field("data"), field("b")], Value::Integer(2));
        let mut out = Vec::new();
        event.to_json_bytes(&mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1,"b":2}}"#
        );
    }

    #[test]
    fn member_lists_are_reused_by_the_next_event_on_the_thread() {
        let record = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1}}"#;
        let before = spare_lists();
        let event = StoredEvent::read(record).unwrap();
        assert!(event.get(&[field("data"), field("a")]).is_some());
        drop(event);
        // The event's list and its data's list went back.
        assert_eq!(spare_lists(), before + 2);
        // The next event takes both (its data object is scanned with it).
        let event = StoredEvent::read(record).unwrap();
        assert_eq!(spare_lists(), before);
        drop(event);
        // A record that does not scan gives its list back too.
        assert!(StoredEvent::read(br#"{"a":1,"a":2}"#).is_none());
        assert_eq!(spare_lists(), before + 2);
    }

    #[test]
    fn the_spare_lists_are_bounded() {
        let record = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let events: Vec<_> = (0..SPARE_LISTS_MAX + 10)
            .map(|_| StoredEvent::read(record).unwrap())
            .collect();
        drop(events);
        assert_eq!(spare_lists(), SPARE_LISTS_MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The word-at-a-time name comparison is slice equality, across word boundaries.
        #[test]
        fn names_are_the_same_exactly_when_their_bytes_are(
            a in proptest::collection::vec(97u8..100, 0..20),
            other in proptest::collection::vec(97u8..100, 0..20),
            flip in any::<Option<usize>>(),
        ) {
            // A copy with at most one byte changed (anywhere), or an unrelated name.
            let mut b = a.clone();
            if let (Some(i), false) = (flip, a.is_empty()) {
                b[i % a.len()] ^= 1;
            }
            prop_assert_eq!(same(&a, &b), a == b);
            prop_assert_eq!(same(&a, &other), a == other);
        }

        /// The structural scan finds the same members, with the same text, as a JSON parser,
        /// compact or pretty; an escaped name makes it give up rather than guess.
        #[test]
        fn the_member_scan_agrees_with_a_json_parser(
            // Names long enough to need a second word of the name scan, some not ASCII.
            members in proptest::collection::btree_map("[a-c\u{e9}\"\\\\]{1,20}", json(), 0..6),
            pretty in any::<bool>(),
        ) {
            let object = serde_json::Value::Object(members.clone().into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            let mut scanned = Vec::new();
            let found = scan_members(text.as_bytes(), &mut scanned);
            if members.keys().any(|k| k.contains(['"', '\\'])) {
                prop_assert!(found.is_none());
            } else {
                let found = found.expect("an object with plain names scans");
                prop_assert_eq!(found.compact, !pretty || members.is_empty());
                prop_assert_eq!(text.as_bytes()[found.close as usize], b'}');
                // Compared through the same parser (floats do not round-trip exactly).
                let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(scanned.len(), members.len());
                for (member, name) in scanned.iter().zip(members.keys()) {
                    prop_assert_eq!(member.name(text.as_bytes()), name.as_str());
                    let raw: serde_json::Value =
                        serde_json::from_slice(member.raw.of(text.as_bytes())).unwrap();
                    prop_assert_eq!(&raw, &parsed[name]);
                }
            }
        }

        /// A member index places exactly the members the scan finds. A changed one never
        /// panics the reader, and what it accepts has every name between its quotes and every
        /// value followed by a comma or the closing brace (its extents are trusted, not checked).
        #[test]
        fn the_member_index_places_what_the_scan_finds(
            data in json(),
            extension in proptest::option::of(any::<i64>()),
            flip in any::<(usize, u8)>(),
        ) {
            let mut json = serde_json::json!({
                "specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": data
            });
            if let Some(n) = extension {
                json["ext"] = n.into();
            }
            let event = Event::from_json(&json).unwrap();
            let (mut text, mut index) = (Vec::new(), Vec::new());
            EventRef::from(&event).to_json_indexed(&mut text, &mut index).unwrap();
            let spans = |members: &[Member]| {
                members
                    .iter()
                    .map(|m| (m.name.start, m.name.end, m.raw.start, m.raw.end))
                    .collect::<Vec<_>>()
            };
            let mut scanned = Vec::new();
            scan_members(&text, &mut scanned).unwrap();
            let mut placed = Vec::new();
            index_members(&text, &index, &mut placed).unwrap();
            prop_assert_eq!(spans(&placed), spans(&scanned));
            let (at, bit) = flip;
            let at = at % index.len();
            index[at] ^= bit.max(1);
            let mut placed = Vec::new();
            if index_members(&text, &index, &mut placed).is_some() {
                for (name_start, name_end, raw_start, raw_end) in spans(&placed) {
                    let [name_start, name_end, raw_start, raw_end] =
                        [name_start, name_end, raw_start, raw_end].map(|at| at as usize);
                    prop_assert_eq!(text[name_start - 1], b'"');
                    prop_assert_eq!(&text[name_end..raw_start], b"\":");
                    prop_assert!(raw_start < raw_end);
                    let after = text[raw_end];
                    prop_assert!(after == b',' || after == b'}', "value followed by {after}");
                }
            }
        }

        /// The index's name check (the name's closing quote is the first stop found a word at a
        /// time) agrees with a byte-at-a-time one, wherever the name ends in the text.
        #[test]
        fn plain_names_are_found_a_word_at_a_time(
            text in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), Just(0xc3u8), b'a'..=b'z'], 0..40),
            start in 0usize..40,
            len in 0usize..20,
        ) {
            let start = start.min(text.len());
            let end = (start + len).min(text.len());
            let expected = text[start..end]
                .iter()
                .all(|&c| c.is_ascii() && c != b'"' && c != b'\\');
            let quoted = [&text[..end], b"\"", &text[end..]].concat();
            prop_assert_eq!(find_stop(&quoted, start, true) == Some(end), expected);
        }

        /// Arbitrary text never panics the scan, and what it accepts is followed to its end.
        #[test]
        fn the_member_scan_never_panics(text in "[{}\\[\\]\",:a-c0-9\\\\ ]{0,40}") {
            let mut members = Vec::new();
            if scan_members(text.as_bytes(), &mut members).is_some() {
                for m in members {
                    prop_assert!(!m.raw.of(text.as_bytes()).is_empty());
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
            indexed in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..7),
        ) {
            let event = Event::from_stored(record.as_bytes()).unwrap();
            let mut model = event_to_value(&event).unwrap();
            // As the pipeline reads it: a slice of a shared batch buffer, placed from the member
            // index ingest writes, or scanned.
            let mut index = Vec::new();
            if indexed {
                let mut canonical = Vec::new();
                EventRef::from(&event).to_json_indexed(&mut canonical, &mut index).unwrap();
                prop_assert_eq!(canonical, record.as_bytes(), "the records are canonical");
            }
            let owner = Bytes::from(format!("prefix{record}"));
            let mut lazy = StoredEvent::read_shared(&owner, &owner[6..], &index).unwrap();
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
