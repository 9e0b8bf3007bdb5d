//! The CloudEvents 1.0 event model and the decoding of HTTP ingest bodies.
//!
//! Design:
//! - [`Event`] holds a *validated* CloudEvent as typed fields. `data` is kept as compact, validated
//!   JSON text ([`RawValue`]) rather than a tree: ingest never looks inside it, so decoding an
//!   event builds no generic JSON value per event (the bulk NDJSON path parses straight into
//!   [`Event`] with borrowed strings where the input has no escapes).
//! - Decoding is all or nothing and exhaustive: [`decode_body`] either returns every event of the
//!   body or a [`DecodeError::Invalid`] naming *every* bad event (its index; for NDJSON the line
//!   index) and everything wrong with it. Only a JSON syntax error stops a structured body early.
//! - An event that arrives without `id` gets a generated [ULID](https://github.com/ulid/spec)
//!   (monotonic within one body), so sinks can deduplicate redeliveries. Events read back from the
//!   log ([`Event::from_stored`]) must carry their id.
//! - Attributes that are `null` in JSON count as absent, except the required ones, which are
//!   errors. Extension values are strings, booleans or integers (the CloudEvents JSON types);
//!   extension names are lowercase ASCII letters and digits.
//!
//! Stored form ([`Event::to_json_bytes`]): compact structured-mode JSON, attributes in a fixed
//! order (`specversion`, `id`, `source`, `type`, optional attributes, extensions, then `data` or
//! `data_base64`). [`Event::from_stored`] reads it back to an equal [`Event`].

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::member_index;

/// The only CloudEvents `specversion` Veltrix accepts.
pub const SPEC_VERSION: &str = "1.0";

/// A validated CloudEvents 1.0 event.
///
/// Invariants: `id`, `source` and `type` are non-empty; `time`, if present, is RFC 3339;
/// optional string attributes, if present, are non-empty; extension names are valid, unique and
/// distinct from the context attributes; `data` is compact JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    id: String,
    source: String,
    ty: String,
    time: Option<String>,
    subject: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    extensions: Vec<(String, ExtensionValue)>,
    data: Option<Data>,
}

/// The value of a CloudEvents extension attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    String(String),
    Boolean(bool),
    Integer(i64),
}

/// An event's payload: JSON (`data`) or binary (`data_base64`), never both.
#[derive(Debug, Clone)]
pub enum Data {
    /// Compact, validated JSON text.
    Json(Box<RawValue>),
    /// Valid base64 (standard alphabet, padded).
    Base64(String),
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Data::Json(a), Data::Json(b)) => a.get() == b.get(),
            (Data::Base64(a), Data::Base64(b)) => a == b,
            _ => false,
        }
    }
}

/// Why a single event is not a valid CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidEvent {
    pub message: String,
}

/// One bad event of a body: its index (NDJSON: its 0-based line index) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index}: {message}")]
pub struct EventError {
    pub index: usize,
    pub message: String,
}

/// Why a body was rejected. Nothing of a rejected body is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The content type is not one Veltrix ingests (HTTP 415).
    #[error(
        "unsupported content type `{0}`: send application/cloudevents+json, \
         application/cloudevents-batch+json, application/json, application/x-ndjson, \
         or binary mode (any content type with `ce-*` headers)"
    )]
    UnsupportedMediaType(String),
    /// At least one event is invalid (HTTP 400); every bad one is listed, in index order.
    #[error("{} invalid event(s): {}", .0.len(), join_errors(.0))]
    Invalid(Vec<EventError>),
}

fn join_errors(errors: &[EventError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// The HTTP headers of an ingest request, as the decoder sees them.
///
/// Implemented for slices and vectors of `(name, value)` pairs; the engine implements it for its
/// HTTP header map. Header names are compared case-insensitively.
pub trait Headers {
    /// Calls `f` with each header's name and value (values that are not text may be skipped).
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str));
}

impl<N: AsRef<str>, V: AsRef<str>> Headers for [(N, V)] {
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str)) {
        for (name, value) in self {
            f(name.as_ref(), value.as_ref());
        }
    }
}

impl<N: AsRef<str>, V: AsRef<str>> Headers for Vec<(N, V)> {
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str)) {
        self.as_slice().for_each_header(f);
    }
}

fn header_value<H: Headers + ?Sized>(headers: &H, name: &str) -> Option<String> {
    let mut found = None;
    headers.for_each_header(&mut |n, v| {
        if found.is_none() && n.eq_ignore_ascii_case(name) {
            found = Some(v.to_owned());
        }
    });
    found
}

impl Event {
    /// The `id` attribute.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `source` attribute.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `type` attribute (`ty` because `type` is a keyword).
    pub fn ty(&self) -> &str {
        &self.ty
    }

    /// The `time` attribute (RFC 3339), if present.
    pub fn time(&self) -> Option<&str> {
        self.time.as_deref()
    }

    /// The `subject` attribute, if present.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The `datacontenttype` attribute, if present.
    pub fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }

    /// The `dataschema` attribute, if present.
    pub fn dataschema(&self) -> Option<&str> {
        self.dataschema.as_deref()
    }

    /// The payload, if present.
    pub fn data(&self) -> Option<&Data> {
        self.data.as_ref()
    }

    /// Extension attributes in arrival order.
    pub fn extensions(&self) -> &[(String, ExtensionValue)] {
        &self.extensions
    }

    /// The extension attribute `name`, if present.
    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Appends this event as compact structured-mode JSON (the form stored in the log).
    pub fn to_json_bytes(&self, out: &mut Vec<u8>) {
        EventRef::from(self).to_json_bytes(out);
    }

    /// Reads back an event written by [`Event::to_json_bytes`] (or any structured-mode JSON
    /// CloudEvent that carries an `id`).
    pub fn from_stored(bytes: &[u8]) -> Result<Event, InvalidEvent> {
        let mut ids = IdSource::Require;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = de
            .deserialize_any(EventVisitor { ids: &mut ids })
            .and_then(|event| de.end().map(|()| event));
        match parsed {
            Ok(event) => event
                .map(EventRef::into_owned)
                .map_err(|message| InvalidEvent { message }),
            Err(e) => Err(InvalidEvent {
                message: json_error_message(&e, e.line()),
            }),
        }
    }

    /// Reads a structured-mode CloudEvent from a JSON value (the API for code that builds
    /// events: custom processors, generators, aggregates). Validated like an ingested event; a
    /// missing `id` is generated (a ULID).
    pub fn from_json(value: &serde_json::Value) -> Result<Event, InvalidEvent> {
        let bytes = serde_json::to_vec(value).map_err(|e| InvalidEvent {
            message: e.to_string(),
        })?;
        let mut ids = IdSource::Generate(ulid::Generator::new());
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match de.deserialize_any(EventVisitor { ids: &mut ids }) {
            Ok(event) => event
                .map(EventRef::into_owned)
                .map_err(|message| InvalidEvent { message }),
            Err(e) => Err(InvalidEvent {
                message: json_error_message(&e, e.line()),
            }),
        }
    }

    /// A new event of `source` and `ty` with JSON `data` and a generated id.
    pub fn new(source: &str, ty: &str, data: serde_json::Value) -> Result<Event, InvalidEvent> {
        Event::from_json(&serde_json::json!({
            "specversion": SPEC_VERSION,
            "source": source,
            "type": ty,
            "datacontenttype": "application/json",
            "data": data,
        }))
    }

    /// The event in structured-mode JSON (what [`Event::to_json_bytes`] writes, as a value).
    pub fn to_json(&self) -> serde_json::Value {
        let mut bytes = Vec::new();
        self.to_json_bytes(&mut bytes);
        serde_json::from_slice(&bytes).expect("to_json_bytes writes valid JSON")
    }

    /// `data` parsed as JSON (`None` without data or for binary data).
    pub fn data_json(&self) -> Option<serde_json::Value> {
        match &self.data {
            Some(Data::Json(raw)) => serde_json::from_str(raw.get()).ok(),
            _ => None,
        }
    }
}

/// A validated event whose attributes may borrow from what it was read from (a request body, a
/// stored record, a VRL value): the pipeline and ingest write it without copying its strings
/// first. Same invariants as [`Event`]; [`EventRef::into_owned`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef<'a> {
    /// `id`, `source`, `type`.
    required: [Cow<'a, str>; 3],
    /// `time`, `subject`, `datacontenttype`, `dataschema`.
    optional: [Option<Cow<'a, str>>; 4],
    extensions: Vec<(Cow<'a, str>, ExtensionRef<'a>)>,
    data: Option<DataRef<'a>>,
}

/// An extension attribute's value, borrowed where it can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionRef<'a> {
    String(Cow<'a, str>),
    Boolean(bool),
    Integer(i64),
}

/// An event's payload, borrowed where it can be.
#[derive(Debug, Clone)]
pub enum DataRef<'a> {
    /// Compact, validated JSON text.
    Json(Cow<'a, RawValue>),
    /// Valid base64.
    Base64(Cow<'a, str>),
}

impl PartialEq for DataRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DataRef::Json(a), DataRef::Json(b)) => a.get() == b.get(),
            (DataRef::Base64(a), DataRef::Base64(b)) => a == b,
            _ => false,
        }
    }
}

impl<'a> EventRef<'a> {
    /// Builds an event from `(name, value)` attributes, validating it like an ingested one
    /// (`data` must be a JSON [`AttrValue::Json`]). A missing `id` is generated.
    pub(crate) fn from_attributes(
        attributes: impl IntoIterator<Item = (&'a str, AttrValue<'a>)>,
    ) -> Result<EventRef<'a>, InvalidEvent> {
        let mut ids = IdSource::Generate(ulid::Generator::new());
        let mut builder = Builder::default();
        for (name, value) in attributes {
            builder.attr(Cow::Borrowed(name), value);
        }
        builder
            .finish(&mut ids)
            .map_err(|message| InvalidEvent { message })
    }

    /// The `id` attribute.
    pub fn id(&self) -> &str {
        &self.required[0]
    }

    /// The `source` attribute.
    pub fn source(&self) -> &str {
        &self.required[1]
    }

    /// The `type` attribute.
    pub fn ty(&self) -> &str {
        &self.required[2]
    }

    /// The length of `data` or `data_base64` as JSON text (0 without data).
    pub fn data_len(&self) -> usize {
        match &self.data {
            Some(DataRef::Json(raw)) => raw.get().len(),
            Some(DataRef::Base64(b64)) => b64.len(),
            None => 0,
        }
    }

    /// Appends this event as compact structured-mode JSON: the same bytes as
    /// [`Event::to_json_bytes`] of [`EventRef::into_owned`].
    pub fn to_json_bytes(&self, out: &mut Vec<u8>) {
        self.write_json(&mut Members { out, index: None });
    }

    /// [`EventRef::to_json_bytes`], also writing the object's member index into `index` (see
    /// [`crate::member_index`]): the index, or `None` for an event beyond the index's limits.
    pub fn to_json_indexed<'i>(
        &self,
        out: &mut Vec<u8>,
        index: &'i mut Vec<u8>,
    ) -> Option<&'i [u8]> {
        let mut builder = member_index::Builder::new(index);
        self.write_json(&mut Members {
            out,
            index: Some(&mut builder),
        });
        builder.finish()
    }

    fn write_json(&self, m: &mut Members<'_, '_, '_>) {
        let [id, source, ty] = &self.required;
        m.out.extend_from_slice(b"{\"specversion\":\"1.0\"");
        if let Some(index) = &mut m.index {
            index.member("specversion".len(), "\"1.0\"".len());
        }
        m.member("id", |out| write_json_str(out, id));
        m.member("source", |out| write_json_str(out, source));
        m.member("type", |out| write_json_str(out, ty));
        let names = ["time", "subject", "datacontenttype", "dataschema"];
        for (name, value) in names.into_iter().zip(&self.optional) {
            if let Some(value) = value {
                m.member(name, |out| write_json_str(out, value));
            }
        }
        for (name, value) in &self.extensions {
            m.member(name, |out| match value {
                ExtensionRef::String(s) => write_json_str(out, s),
                ExtensionRef::Boolean(b) => {
                    out.extend_from_slice(if *b { b"true" } else { b"false" })
                }
                ExtensionRef::Integer(i) => {
                    out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes())
                }
            });
        }
        match &self.data {
            Some(DataRef::Json(raw)) => {
                m.member("data", |out| out.extend_from_slice(raw.get().as_bytes()));
            }
            Some(DataRef::Base64(b64)) => m.member("data_base64", |out| write_json_str(out, b64)),
            None => {}
        }
        m.out.push(b'}');
    }

    /// The owned [`Event`].
    pub fn into_owned(self) -> Event {
        let [id, source, ty] = self.required;
        let [time, subject, datacontenttype, dataschema] =
            self.optional.map(|o| o.map(Cow::into_owned));
        Event {
            id: id.into_owned(),
            source: source.into_owned(),
            ty: ty.into_owned(),
            time,
            subject,
            datacontenttype,
            dataschema,
            extensions: self
                .extensions
                .into_iter()
                .map(|(name, value)| {
                    let value = match value {
                        ExtensionRef::String(s) => ExtensionValue::String(s.into_owned()),
                        ExtensionRef::Boolean(b) => ExtensionValue::Boolean(b),
                        ExtensionRef::Integer(i) => ExtensionValue::Integer(i),
                    };
                    (name.into_owned(), value)
                })
                .collect(),
            data: self.data.map(|data| match data {
                DataRef::Json(raw) => Data::Json(raw.into_owned()),
                DataRef::Base64(b64) => Data::Base64(b64.into_owned()),
            }),
        }
    }
}

impl<'a> From<&'a Event> for EventRef<'a> {
    /// The event's view, borrowing every string (what ingest stores from).
    fn from(event: &'a Event) -> EventRef<'a> {
        let borrow = |s: &'a Option<String>| s.as_deref().map(Cow::Borrowed);
        EventRef {
            required: [&event.id, &event.source, &event.ty].map(|s| Cow::Borrowed(s.as_str())),
            optional: [
                borrow(&event.time),
                borrow(&event.subject),
                borrow(&event.datacontenttype),
                borrow(&event.dataschema),
            ],
            extensions: event
                .extensions
                .iter()
                .map(|(name, value)| {
                    let value = match value {
                        ExtensionValue::String(s) => ExtensionRef::String(Cow::Borrowed(s)),
                        ExtensionValue::Boolean(b) => ExtensionRef::Boolean(*b),
                        ExtensionValue::Integer(i) => ExtensionRef::Integer(*i),
                    };
                    (Cow::Borrowed(name.as_str()), value)
                })
                .collect(),
            data: event.data.as_ref().map(|data| match data {
                Data::Json(raw) => DataRef::Json(Cow::Borrowed(&**raw)),
                Data::Base64(b64) => DataRef::Base64(Cow::Borrowed(b64.as_str())),
            }),
        }
    }
}

/// The canonical writer's members after the first: each written as `,"name":value`, with its
/// lengths recorded in the member index when one is being built.
struct Members<'o, 'b, 'i> {
    out: &'o mut Vec<u8>,
    index: Option<&'b mut member_index::Builder<'i>>,
}

impl Members<'_, '_, '_> {
    /// Writes member `name` (a name that needs no escape: attribute and extension names never
    /// do) with the value `value` writes.
    fn member(&mut self, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
        write_key(self.out, name);
        let start = self.out.len();
        value(self.out);
        if let Some(index) = &mut self.index {
            index.member(name.len(), self.out.len() - start);
        }
    }
}

fn write_key(out: &mut Vec<u8>, name: &str) {
    out.push(b',');
    write_json_str(out, name);
    out.push(b':');
}

/// Writes `s` as a JSON string literal.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Most attribute values need no escape: one pass to check, one copy.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Decodes an HTTP ingest body into events, all or nothing.
///
/// `content_type` is the request's `Content-Type` (parameters such as `; charset=utf-8` are
/// ignored, matching is case-insensitive):
/// - `application/cloudevents+json`: one structured-mode event;
/// - `application/cloudevents-batch+json`: a JSON array of events;
/// - any other content type with a `ce-specversion` header: binary mode (attributes from `ce-*`
///   headers, percent-decoded; the body is `data` for JSON content types, else `data_base64`);
/// - `application/json`: one event object or an array of them;
/// - `application/x-ndjson` (or `application/ndjson`): one event per non-empty line; error
///   indices are 0-based line indices.
///
/// Events without an `id` get a generated ULID (monotonic within the body).
///
/// Anything else is [`DecodeError::UnsupportedMediaType`].
pub fn decode_body<H: Headers + ?Sized>(
    content_type: &str,
    headers: &H,
    body: &[u8],
) -> Result<Vec<Event>, DecodeError> {
    decode_body_ref(content_type, headers, body)
        .map(|events| events.into_iter().map(EventRef::into_owned).collect())
}

/// [`decode_body`] without copying: each event borrows what it can from `body` (strings
/// without escapes, compact `data`). What ingest stores from.
pub fn decode_body_ref<'b, H: Headers + ?Sized>(
    content_type: &str,
    headers: &H,
    body: &'b [u8],
) -> Result<Vec<EventRef<'b>>, DecodeError> {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut ids = IdSource::Generate(ulid::Generator::new());
    match media_type.as_str() {
        "application/cloudevents+json" => decode_structured(body, Shape::One, &mut ids),
        "application/cloudevents-batch+json" => decode_structured(body, Shape::Batch, &mut ids),
        _ if header_value(headers, "ce-specversion").is_some() => {
            decode_binary(content_type, &media_type, headers, body, &mut ids).map(|e| vec![e])
        }
        "application/json" => decode_structured(body, Shape::OneOrBatch, &mut ids),
        "application/x-ndjson" | "application/ndjson" => decode_ndjson(body, &mut ids),
        _ => Err(DecodeError::UnsupportedMediaType(content_type.to_owned())),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    One,
    Batch,
    OneOrBatch,
}

fn decode_structured<'b>(
    body: &'b [u8],
    shape: Shape,
    ids: &mut IdSource,
) -> Result<Vec<EventRef<'b>>, DecodeError> {
    let index = Cell::new(0);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de
        .deserialize_any(BodyVisitor {
            shape,
            ids,
            index: &index,
        })
        .and_then(|body| de.end().map(|()| body));
    let results = match parsed {
        Ok(Ok(results)) => results,
        Ok(Err(message)) => {
            return Err(DecodeError::Invalid(vec![EventError { index: 0, message }]));
        }
        Err(e) => {
            return Err(DecodeError::Invalid(vec![EventError {
                index: index.get(),
                message: json_error_message(&e, e.line()),
            }]));
        }
    };
    let expected = results.len();
    collect_all_or_nothing(results.into_iter().enumerate(), expected)
}

/// At most this many events' room is reserved up front: enough for common batches to decode
/// without reallocating, little enough that a body of blank lines cannot reserve much more memory
/// than it weighs.
const PRESIZE_EVENTS_MAX: usize = 4096;

/// The smallest valid event, `{"specversion":"1.0","source":"s","type":"t"}`, plus its newline.
const EVENT_BYTES_MIN: usize = 46;

fn collect_all_or_nothing<'b>(
    results: impl Iterator<Item = (usize, Result<EventRef<'b>, String>)>,
    expected: usize,
) -> Result<Vec<EventRef<'b>>, DecodeError> {
    let mut events = Vec::with_capacity(expected.min(PRESIZE_EVENTS_MAX));
    let mut errors = Vec::new();
    for (index, result) in results {
        match result {
            Ok(event) if errors.is_empty() => events.push(event),
            Ok(_) => {}
            Err(message) => errors.push(EventError { index, message }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(DecodeError::Invalid(errors))
    }
}

fn decode_ndjson<'b>(body: &'b [u8], ids: &mut IdSource) -> Result<Vec<EventRef<'b>>, DecodeError> {
    let expected = body.len().div_ceil(EVENT_BYTES_MIN);
    let blank = |line: &[u8]| line.iter().all(u8::is_ascii_whitespace);
    // One UTF-8 check of the whole body instead of one per string; a body that is not UTF-8
    // is read line by line so the error names the line.
    if let Ok(text) = std::str::from_utf8(body) {
        let lines = text
            .split('\n')
            .enumerate()
            .filter(|(_, line)| !blank(line.as_bytes()))
            .map(|(index, line)| {
                let de = serde_json::Deserializer::from_str(line);
                (index, parse_event(de, ids, index))
            });
        return collect_all_or_nothing(lines, expected);
    }
    let lines = body
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !blank(line))
        .map(|(index, line)| {
            let de = serde_json::Deserializer::from_slice(line);
            (index, parse_event(de, ids, index))
        });
    collect_all_or_nothing(lines, expected)
}

/// One NDJSON line (0-based `index`) as an event, or what is wrong with it.
fn parse_event<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    ids: &mut IdSource,
    index: usize,
) -> Result<EventRef<'de>, String> {
    let parsed = de
        .deserialize_any(EventVisitor { ids })
        .and_then(|event| de.end().map(|()| event));
    match parsed {
        Ok(event) => event,
        Err(e) => Err(json_error_message(&e, index + 1)),
    }
}

fn decode_binary<'b, H: Headers + ?Sized>(
    content_type: &str,
    media_type: &str,
    headers: &H,
    body: &'b [u8],
    ids: &mut IdSource,
) -> Result<EventRef<'b>, DecodeError> {
    let invalid = |message: String| DecodeError::Invalid(vec![EventError { index: 0, message }]);
    let mut builder = Builder::default();
    let mut problems = Vec::new();
    headers.for_each_header(&mut |name, value| {
        let Some(attr) = name
            .get(..3)
            .filter(|p| p.eq_ignore_ascii_case("ce-"))
            .map(|_| name[3..].to_ascii_lowercase())
        else {
            return;
        };
        if attr == "data" || attr == "data_base64" {
            problems.push(format!(
                "header `{name}` is not allowed in binary mode: the body is the data"
            ));
            return;
        }
        match percent_decode(value) {
            Some(value) => builder.attr(Cow::Owned(attr), AttrValue::Str(Cow::Owned(value))),
            None => problems.push(format!(
                "header `{name}` is not valid percent-encoded UTF-8"
            )),
        }
    });
    let content_type = content_type.trim();
    if !content_type.is_empty() {
        builder.attr(
            Cow::Borrowed("datacontenttype"),
            AttrValue::Str(Cow::Owned(content_type.to_owned())),
        );
    }
    if is_json_media_type(media_type) {
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<&RawValue>(body) {
                Ok(raw) => builder.data_json(Cow::Borrowed(raw)),
                Err(e) => problems.push(format!(
                    "body is not valid JSON: {}",
                    json_error_message(&e, e.line())
                )),
            }
        }
    } else if !body.is_empty() {
        builder.data = Some(DataRef::Base64(Cow::Owned(base64_encode(body))));
    }
    match builder.finish(ids) {
        Ok(event) if problems.is_empty() => Ok(event),
        Ok(_) => Err(invalid(problems.join("; "))),
        Err(message) => {
            problems.push(message);
            Err(invalid(problems.join("; ")))
        }
    }
}

fn is_json_media_type(media_type: &str) -> bool {
    media_type == "application/json" || media_type == "text/json" || media_type.ends_with("+json")
}

fn percent_decode(value: &str) -> Option<String> {
    if !value.contains('%') {
        return Some(value.to_owned());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// "invalid JSON at line L column C: what", with `line` overriding serde's (NDJSON lines).
fn json_error_message(e: &serde_json::Error, line: usize) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = full.strip_suffix(&suffix).unwrap_or(&full);
    format!("invalid JSON at line {line} column {}: {what}", e.column())
}

/// Where ids of events without one come from.
enum IdSource {
    /// Generate a ULID (monotonic within one body).
    Generate(ulid::Generator),
    /// A missing id is an error (stored events always have one).
    Require,
}

impl IdSource {
    fn next(&mut self) -> Option<String> {
        match self {
            IdSource::Generate(generator) => Some(
                generator
                    .generate()
                    .unwrap_or_else(|_| ulid::Ulid::generate())
                    .to_string(),
            ),
            IdSource::Require => None,
        }
    }
}

/// One attribute value as it arrives, before validation.
pub(crate) enum AttrValue<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    Int(i64),
    Null,
    /// Compact or non-compact JSON text, for `data`.
    Json(Cow<'a, RawValue>),
    /// A value of a type no attribute has; the text describes it ("an object").
    Other(&'static str),
}

impl AttrValue<'_> {
    fn describe(&self) -> &'static str {
        match self {
            AttrValue::Str(_) => "a string",
            AttrValue::Bool(_) => "a boolean",
            AttrValue::Int(_) => "an integer",
            AttrValue::Null => "null",
            AttrValue::Json(_) => "JSON",
            AttrValue::Other(what) => what,
        }
    }
}

/// Accumulates and validates attributes; collects every problem instead of stopping.
#[derive(Default)]
struct Builder<'a> {
    specversion: bool,
    id: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
    ty: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    subject: Option<Cow<'a, str>>,
    datacontenttype: Option<Cow<'a, str>>,
    dataschema: Option<Cow<'a, str>>,
    extensions: Vec<(Cow<'a, str>, ExtensionRef<'a>)>,
    data: Option<DataRef<'a>>,
    problems: Vec<String>,
    /// `specversion`, `id`, `source`, `type` seen (valid or not): only unseen ones are missing.
    seen_required: [bool; 4],
}

const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];

impl<'a> Builder<'a> {
    fn attr(&mut self, name: Cow<'a, str>, value: AttrValue<'a>) {
        if let Some(i) = REQUIRED.iter().position(|r| *r == name) {
            self.seen_required[i] = true;
        }
        match &*name {
            "specversion" => {
                if self.specversion {
                    self.duplicate(&name);
                    return;
                }
                match value {
                    AttrValue::Str(v) if v == SPEC_VERSION => self.specversion = true,
                    AttrValue::Str(v) => self.problems.push(format!(
                        "unsupported `specversion` {v:?}: Veltrix accepts \"1.0\""
                    )),
                    other => self.problems.push(format!(
                        "attribute `specversion` must be the string \"1.0\", found {}",
                        other.describe()
                    )),
                }
            }
            "id" | "source" | "type" => {
                let slot = match &*name {
                    "id" => &mut self.id,
                    "source" => &mut self.source,
                    _ => &mut self.ty,
                };
                if slot.is_some() {
                    self.duplicate(&name);
                    return;
                }
                match value {
                    AttrValue::Str(v) if !v.is_empty() => *slot = Some(v),
                    AttrValue::Str(_) => self
                        .problems
                        .push(format!("attribute `{name}` must be a non-empty string")),
                    other => self.problems.push(format!(
                        "attribute `{name}` must be a string, found {}",
                        other.describe()
                    )),
                }
            }
            "time" | "subject" | "datacontenttype" | "dataschema" => {
                let is_time = name == "time";
                let slot = match &*name {
                    "time" => &mut self.time,
                    "subject" => &mut self.subject,
                    "datacontenttype" => &mut self.datacontenttype,
                    _ => &mut self.dataschema,
                };
                if slot.is_some() {
                    self.duplicate(&name);
                    return;
                }
                match value {
                    AttrValue::Null => {}
                    AttrValue::Str(v) if v.is_empty() => self
                        .problems
                        .push(format!("attribute `{name}` must be a non-empty string")),
                    AttrValue::Str(v) if is_time && !is_rfc3339(&v) => self.problems.push(format!(
                        "attribute `time` must be an RFC 3339 timestamp \
                         (e.g. \"2024-05-01T12:00:00Z\"), found {v:?}"
                    )),
                    AttrValue::Str(v) => *slot = Some(v),
                    other => self.problems.push(format!(
                        "attribute `{name}` must be a string, found {}",
                        other.describe()
                    )),
                }
            }
            "data" => match value {
                AttrValue::Json(raw) => self.data_json(raw),
                AttrValue::Null => {}
                other => self.problems.push(format!(
                    "attribute `data` must be JSON, found {}",
                    other.describe()
                )),
            },
            "data_base64" => {
                if self.data.is_some() {
                    self.data_conflict();
                    return;
                }
                match value {
                    AttrValue::Null => {}
                    AttrValue::Str(v) if is_base64(&v) => self.data = Some(DataRef::Base64(v)),
                    AttrValue::Str(_) => self
                        .problems
                        .push("attribute `data_base64` is not valid base64".to_owned()),
                    other => self.problems.push(format!(
                        "attribute `data_base64` must be a base64 string, found {}",
                        other.describe()
                    )),
                }
            }
            _ => self.extension(name, value),
        }
    }

    fn extension(&mut self, name: Cow<'a, str>, value: AttrValue<'a>) {
        if !is_extension_name(&name) {
            self.problems.push(format!(
                "invalid attribute name `{name}`: extension attribute names are lowercase \
                 ASCII letters and digits"
            ));
            return;
        }
        if self.extensions.iter().any(|(n, _)| *n == name) {
            self.duplicate(&name);
            return;
        }
        let value = match value {
            AttrValue::Null => return,
            AttrValue::Str(v) => ExtensionRef::String(v),
            AttrValue::Bool(b) => ExtensionRef::Boolean(b),
            AttrValue::Int(i) => ExtensionRef::Integer(i),
            other => {
                self.problems.push(format!(
                    "extension attribute `{name}` must be a string, boolean or integer, found {}",
                    other.describe()
                ));
                return;
            }
        };
        self.extensions.push((name, value));
    }

    fn data_json(&mut self, raw: Cow<'a, RawValue>) {
        if self.data.is_some() {
            self.data_conflict();
            return;
        }
        if raw.get() == "null" {
            return;
        }
        let compacted = match compact_json(raw.get()) {
            Cow::Borrowed(_) => None,
            Cow::Owned(compact) => Some(compact),
        };
        let data = match compacted {
            None => raw,
            Some(compact) => Cow::Owned(
                RawValue::from_string(compact).expect("compacting valid JSON yields valid JSON"),
            ),
        };
        self.data = Some(DataRef::Json(data));
    }

    fn duplicate(&mut self, name: &str) {
        self.problems
            .push(format!("attribute `{name}` appears more than once"));
    }

    fn data_conflict(&mut self) {
        self.problems.push(
            "`data` and `data_base64` are mutually exclusive: an event has at most one".to_owned(),
        );
    }

    fn finish(mut self, ids: &mut IdSource) -> Result<EventRef<'a>, String> {
        for (name, seen) in REQUIRED.into_iter().zip(self.seen_required) {
            if seen {
                continue;
            }
            if name == "id"
                && let Some(id) = ids.next()
            {
                self.id = Some(Cow::Owned(id));
                continue;
            }
            self.problems
                .push(format!("missing required attribute `{name}`"));
        }
        if !self.problems.is_empty() {
            return Err(self.problems.join("; "));
        }
        let (Some(id), Some(source), Some(ty)) = (self.id, self.source, self.ty) else {
            unreachable!("required attributes are present when there is no problem");
        };
        Ok(EventRef {
            required: [id, source, ty],
            optional: [
                self.time,
                self.subject,
                self.datacontenttype,
                self.dataschema,
            ],
            extensions: self.extensions,
            data: self.data,
        })
    }
}

/// Extension attribute names: lowercase ASCII letters and digits (CloudEvents 1.0 §"Attribute
/// Naming Convention"); the context attribute names are handled before this check.
fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Removes insignificant whitespace from valid JSON text; borrows when there is none.
fn compact_json(json: &str) -> Cow<'_, str> {
    let bytes = json.as_bytes();
    // Most JSON arrives compact: no whitespace byte at all, in strings or out (one quick pass).
    if !bytes
        .iter()
        .any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Cow::Borrowed(json);
    }
    let mut in_string = false;
    let mut escaped = false;
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in bytes.iter().enumerate() {
        let keep = if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            true
        } else if b == b'"' {
            in_string = true;
            true
        } else {
            !matches!(b, b' ' | b'\t' | b'\n' | b'\r')
        };
        match (&mut out, keep) {
            (Some(out), true) => out.push(b),
            (None, false) => out = Some(bytes[..i].to_vec()),
            _ => {}
        }
    }
    match out {
        None => Cow::Borrowed(json),
        Some(out) => Cow::Owned(String::from_utf8(out).expect("only ASCII whitespace removed")),
    }
}

/// RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`, `T`/`Z` in either case.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut i = 19;
    if sep(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            b.len() == i + 6
                && sep(i + 3, b":")
                && digits(i + 1..i + 3).is_some_and(|h| h <= 23)
                && digits(i + 4..i + 6).is_some_and(|m| m <= 59)
        }
        _ => false,
    }
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard, padded base64.
fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (n >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(BASE64_ALPHABET[index as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `s` is standard, padded base64 (the encoding CloudEvents' `data_base64` uses).
fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let padding = b.iter().rev().take_while(|&&c| c == b'=').count();
    padding <= 2
        && b[..b.len() - padding]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

// ---------------------------------------------------------------------------------------------
// serde visitors: one pass over the input, semantic problems collected (not fatal), only JSON
// syntax errors abort.

/// The whole body: one event, an array of events, or either (by `shape`).
struct BodyVisitor<'a> {
    shape: Shape,
    ids: &'a mut IdSource,
    /// Index of the element being parsed, so a syntax error names the event it is in.
    index: &'a Cell<usize>,
}

type BodyResult<'de> = Result<Vec<Result<EventRef<'de>, String>>, String>;

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = BodyResult<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvent object or an array of them")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BodyResult<'de>, A::Error> {
        if self.shape == Shape::Batch {
            IgnoredAny.visit_map(map)?;
            return Ok(Err(
                "expected a JSON array of CloudEvents, found an object \
                 (send one event as application/cloudevents+json)"
                    .to_owned(),
            ));
        }
        let event = EventVisitor { ids: self.ids }.visit_map(map)?;
        Ok(Ok(vec![event]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BodyResult<'de>, A::Error> {
        if self.shape == Shape::One {
            IgnoredAny.visit_seq(seq)?;
            return Ok(Err("expected one CloudEvent object, found an array \
                 (send arrays as application/cloudevents-batch+json)"
                .to_owned()));
        }
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(event) = seq.next_element_seed(EventSeed {
            ids: &mut *self.ids,
        })? {
            events.push(event);
            self.index.set(events.len());
        }
        Ok(Ok(events))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<BodyResult<'de>, E> {
        Ok(Err(self.wrong_top_level("a boolean")))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<BodyResult<'de>, E> {
        Ok(Err(self.wrong_top_level("a number")))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<BodyResult<'de>, E> {
        Ok(Err(self.wrong_top_level("a number")))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<BodyResult<'de>, E> {
        Ok(Err(self.wrong_top_level("a number")))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<BodyResult<'de>, E> {
        Ok(Err(self.wrong_top_level("a string")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<BodyResult<'de>, E> {
        Ok(Err(self.wrong_top_level("null")))
    }
}

impl BodyVisitor<'_> {
    fn wrong_top_level(&self, found: &str) -> String {
        let expected = match self.shape {
            Shape::One => "a CloudEvent object",
            Shape::Batch => "a JSON array of CloudEvents",
            Shape::OneOrBatch => "a CloudEvent object or an array of them",
        };
        format!("expected {expected}, found {found}")
    }
}

struct EventSeed<'a> {
    ids: &'a mut IdSource,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Result<EventRef<'de>, String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(EventVisitor { ids: self.ids })
    }
}

/// One event object. Non-objects are a (non-fatal) problem of that event.
struct EventVisitor<'a> {
    ids: &'a mut IdSource,
}

impl<'de> Visitor<'de> for EventVisitor<'_> {
    type Value = Result<EventRef<'de>, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvent object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut builder = Builder::default();
        while let Some(Key(key)) = map.next_key()? {
            if key == "data" {
                let raw: &'de RawValue = map.next_value()?;
                builder.data_json(Cow::Borrowed(raw));
            } else {
                let value: AttrValue<'de> = map.next_value()?;
                builder.attr(key, value);
            }
        }
        Ok(builder.finish(self.ids))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Err(not_an_object("an array")))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(not_an_object("a boolean")))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(not_an_object("a number")))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(not_an_object("a number")))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(not_an_object("a number")))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(not_an_object("a string")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err(not_an_object("null")))
    }
}

fn not_an_object(found: &str) -> String {
    format!("expected a CloudEvent JSON object, found {found}")
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attribute name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> de::Deserialize<'de> for AttrValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AttrVisitor;
        impl<'de> Visitor<'de> for AttrVisitor {
            type Value = AttrValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attribute value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(AttrValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(AttrValue::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(AttrValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(AttrValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v)
                    .map(AttrValue::Int)
                    .unwrap_or(AttrValue::Other("an integer out of range")))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(AttrValue::Other("a non-integer number"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(AttrValue::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq)?;
                Ok(AttrValue::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_map(map)?;
                Ok(AttrValue::Other("an object"))
            }
        }
        d.deserialize_any(AttrVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_HEADERS: &[(&str, &str)] = &[];

    fn decode(content_type: &str, body: &str) -> Result<Vec<Event>, DecodeError> {
        decode_body(content_type, NO_HEADERS, body.as_bytes())
    }

    fn invalid(result: Result<Vec<Event>, DecodeError>) -> Vec<EventError> {
        match result {
            Err(DecodeError::Invalid(errors)) => errors,
            other => panic!("expected DecodeError::Invalid, got {other:?}"),
        }
    }

    fn stored(event: &Event) -> String {
        let mut out = Vec::new();
        event.to_json_bytes(&mut out);
        String::from_utf8(out).unwrap()
    }

    const ONE: &str =
        r#"{"specversion":"1.0","id":"e1","source":"/shop","type":"order.created","data":{"n":1}}"#;

    #[test]
    fn structured_mode_decodes_one_event() {
        let events = decode("application/cloudevents+json", ONE).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.id(), e.source(), e.ty()),
            ("e1", "/shop", "order.created")
        );
        assert_eq!(stored(e), ONE);
    }

    #[test]
    fn structured_mode_rejects_an_array() {
        let errors = invalid(decode("application/cloudevents+json", &format!("[{ONE}]")));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("found an array"), "{errors:?}");
    }

    #[test]
    fn batch_mode_decodes_an_array() {
        let body = format!("[{ONE},{}]", ONE.replace("e1", "e2"));
        let events = decode("application/cloudevents-batch+json", &body).unwrap();
        let ids: Vec<&str> = events.iter().map(Event::id).collect();
        assert_eq!(ids, ["e1", "e2"]);
    }

    #[test]
    fn batch_mode_accepts_an_empty_array() {
        assert_eq!(
            decode("application/cloudevents-batch+json", "[]").unwrap(),
            []
        );
    }

    #[test]
    fn plain_json_accepts_an_object_or_an_array() {
        assert_eq!(decode("application/json", ONE).unwrap().len(), 1);
        let body = format!("[{ONE}, {ONE}]");
        assert_eq!(decode("application/json", &body).unwrap().len(), 2);
    }

    #[test]
    fn ndjson_decodes_one_event_per_non_empty_line() {
        let body = format!("{ONE}\n\n  \r\n{}\r\n", ONE.replace("e1", "e2"));
        let events = decode("application/x-ndjson", &body).unwrap();
        let ids: Vec<&str> = events.iter().map(Event::id).collect();
        assert_eq!(ids, ["e1", "e2"]);
    }

    #[test]
    fn content_type_parameters_and_case_are_ignored() {
        let events = decode("Application/CloudEvents+JSON; charset=utf-8", ONE).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(decode("application/ndjson", ONE).unwrap().len(), 1);
    }

    #[test]
    fn binary_mode_rejects_data_in_headers() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("ce-data", "x"),
        ];
        let errors = invalid(decode_body("text/plain", &headers[..], b"hi"));
        assert_eq!(
            errors[0].message,
            "header `ce-data` is not allowed in binary mode: the body is the data"
        );
    }

    #[test]
    fn the_smallest_valid_event_is_event_bytes_min_long() {
        let smallest = r#"{"specversion":"1.0","source":"s","type":"t"}"#;
        assert_eq!(smallest.len() + 1, EVENT_BYTES_MIN);
        assert!(decode("application/x-ndjson", smallest).is_ok());
    }

    #[test]
    fn other_content_types_without_ce_headers_are_unsupported() {
        assert_eq!(
            decode("text/plain", ONE),
            Err(DecodeError::UnsupportedMediaType("text/plain".to_owned()))
        );
        assert!(matches!(
            decode("", ONE),
            Err(DecodeError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn every_bad_event_is_named_and_nothing_is_accepted() {
        let body = [
            ONE,
            r#"{"specversion":"1.0","id":"x","source":"/s"}"#,
            ONE,
            r#"{"specversion":"0.3","source":"","type":"t","Bad":1}"#,
            r#"{"specversion":"1.0","id":"y","source":"/s","type":"t","time":"yesterday"}"#,
        ]
        .join(",");
        let errors = invalid(decode(
            "application/cloudevents-batch+json",
            &format!("[{body}]"),
        ));
        let indices: Vec<usize> = errors.iter().map(|e| e.index).collect();
        assert_eq!(indices, [1, 3, 4]);
        assert_eq!(errors[0].message, "missing required attribute `type`");
        let third = &errors[1].message;
        assert!(
            third.contains("unsupported `specversion` \"0.3\""),
            "{third}"
        );
        assert!(
            third.contains("`source` must be a non-empty string"),
            "{third}"
        );
        assert!(third.contains("invalid attribute name `Bad`"), "{third}");
        assert!(
            errors[2].message.contains("RFC 3339"),
            "{}",
            errors[2].message
        );
    }

    #[test]
    fn ndjson_errors_name_line_indices_and_json_positions() {
        let body = format!("{ONE}\n\n{{\"specversion\": 1.0,\n{ONE}\n[]\n");
        let errors = invalid(decode("application/x-ndjson", &body));
        let indices: Vec<usize> = errors.iter().map(|e| e.index).collect();
        assert_eq!(indices, [2, 4]);
        assert_eq!(
            errors[0].message,
            "invalid JSON at line 3 column 20: EOF while parsing a value"
        );
        assert_eq!(
            errors[1].message,
            "expected a CloudEvent JSON object, found an array"
        );
    }

    #[test]
    fn ndjson_that_is_not_utf8_names_the_line_and_decodes_nothing() {
        let mut body = format!("{ONE}\n").into_bytes();
        body.extend_from_slice(
            b"{\"specversion\":\"1.0\",\"id\":\"x\xff\",\"source\":\"/s\",\"type\":\"t\"}\n",
        );
        let errors = invalid(decode_body("application/x-ndjson", NO_HEADERS, &body));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].index, 1);
        assert!(
            errors[0].message.starts_with("invalid JSON at line 2"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn data_with_whitespace_is_compacted_outside_strings_only() {
        let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{ "a" : "x y",
            "b": [1, 2] }}"#
            .replace('\n', " ");
        let events = decode("application/cloudevents+json", &body).unwrap();
        assert_eq!(
            stored(&events[0]),
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":"x y","b":[1,2]}}"#
        );
    }

    #[test]
    fn malformed_top_level_json_is_one_error_with_its_position() {
        let errors = invalid(decode("application/json", "{\"specversion\": }"));
        assert_eq!(
            errors,
            [EventError {
                index: 0,
                message: "invalid JSON at line 1 column 17: expected value".to_owned()
            }]
        );
    }

    #[test]
    fn a_syntax_error_inside_a_batch_names_the_element_it_is_in() {
        let body = format!("[{ONE},\n{ONE},\n{{\"id\" 1}}]");
        let errors = invalid(decode("application/cloudevents-batch+json", &body));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].index, 2);
        assert!(
            errors[0]
                .message
                .starts_with("invalid JSON at line 3 column 7")
        );
    }

    #[test]
    fn missing_ids_are_generated_ulids_unique_and_increasing() {
        let line = r#"{"specversion":"1.0","source":"/s","type":"t"}"#;
        let body = [line; 3].join("\n");
        let events = decode("application/x-ndjson", &body).unwrap();
        let ids: Vec<&str> = events.iter().map(Event::id).collect();
        for id in &ids {
            assert_eq!(id.len(), 26);
            assert!(ulid::Ulid::from_string(id).is_ok(), "{id}");
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    #[test]
    fn an_empty_id_is_an_error_not_replaced() {
        let errors = invalid(decode(
            "application/json",
            r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
        ));
        assert_eq!(
            errors[0].message,
            "attribute `id` must be a non-empty string"
        );
    }

    #[test]
    fn binary_mode_takes_attributes_from_ce_headers_and_json_body_as_data() {
        let headers = [
            ("CE-SpecVersion", "1.0"),
            ("ce-id", "b1"),
            ("ce-source", "/bin"),
            ("ce-type", "payment.made"),
            ("ce-time", "2024-05-01T12:00:00.5+02:00"),
            ("ce-traceparent", "00%2Dabc"),
            ("x-other", "ignored"),
        ];
        let events = decode_body(
            "application/json; charset=utf-8",
            &headers[..],
            b"{ \"amount\": 12 }",
        )
        .unwrap();
        assert_eq!(
            stored(&events[0]),
            r#"{"specversion":"1.0","id":"b1","source":"/bin","type":"payment.made","time":"2024-05-01T12:00:00.5+02:00","datacontenttype":"application/json; charset=utf-8","traceparent":"00-abc","data":{"amount":12}}"#
        );
    }

    #[test]
    fn binary_mode_stores_a_non_json_body_as_base64() {
        let headers = vec![
            ("ce-specversion".to_owned(), "1.0".to_owned()),
            ("ce-source".to_owned(), "/bin".to_owned()),
            ("ce-type".to_owned(), "blob".to_owned()),
        ];
        let events = decode_body("application/octet-stream", &headers, b"\x00\xffhi").unwrap();
        assert_eq!(events[0].data(), Some(&Data::Base64("AP9oaQ==".to_owned())));
        assert_eq!(
            events[0].datacontenttype(),
            Some("application/octet-stream")
        );
        assert_eq!(events[0].id().len(), 26);
    }

    #[test]
    fn binary_mode_reports_missing_attributes_and_bad_json() {
        let headers = [("ce-specversion", "1.0"), ("ce-source", "/s")];
        let errors = invalid(decode_body("application/json", &headers[..], b"{"));
        assert_eq!(errors.len(), 1);
        let message = &errors[0].message;
        assert!(message.contains("body is not valid JSON"), "{message}");
        assert!(
            message.contains("missing required attribute `type`"),
            "{message}"
        );
    }

    #[test]
    fn stored_form_round_trips_every_attribute() {
        let input = r#"{"type":"t","source":"/s","id":"1","specversion":"1.0",
            "time":"2024-02-29T23:59:60Z","subject":"sub","datacontenttype":"application/json",
            "dataschema":"https://x/s","flag":true,"count":-3,"note":"a \"q\"\n\u0001",
            "data":{ "a" : [1, 2, {"s": "x y"}] }}"#;
        let event = decode("application/cloudevents+json", input)
            .unwrap()
            .remove(0);
        let bytes = stored(&event);
        assert_eq!(
            bytes,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2024-02-29T23:59:60Z","subject":"sub","datacontenttype":"application/json","dataschema":"https://x/s","flag":true,"count":-3,"note":"a \"q\"\n\u0001","data":{"a":[1,2,{"s":"x y"}]}}"#
        );
        assert_eq!(Event::from_stored(bytes.as_bytes()).unwrap(), event);
        assert_eq!(event.extension("count"), Some(&ExtensionValue::Integer(-3)));
    }

    #[test]
    fn stored_events_must_carry_an_id() {
        let err = Event::from_stored(br#"{"specversion":"1.0","source":"/s","type":"t"}"#);
        assert_eq!(err.unwrap_err().message, "missing required attribute `id`");
    }

    #[test]
    fn data_and_data_base64_are_mutually_exclusive() {
        let errors = invalid(decode(
            "application/json",
            r#"{"specversion":"1.0","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
        ));
        assert!(errors[0].message.contains("mutually exclusive"));
    }

    #[test]
    fn null_optional_attributes_are_absent_and_null_required_ones_are_errors() {
        let events = decode(
            "application/json",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":null,"ext":null,"data":null}"#,
        )
        .unwrap();
        assert_eq!(
            stored(&events[0]),
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#
        );
        let errors = invalid(decode(
            "application/json",
            r#"{"specversion":"1.0","source":null,"type":"t"}"#,
        ));
        assert_eq!(
            errors[0].message,
            "attribute `source` must be a string, found null"
        );
    }

    #[test]
    fn duplicate_attributes_are_errors() {
        let errors = invalid(decode(
            "application/json",
            r#"{"specversion":"1.0","source":"/s","type":"t","type":"u"}"#,
        ));
        assert_eq!(errors[0].message, "attribute `type` appears more than once");
    }

    #[test]
    fn extension_values_must_be_strings_booleans_or_integers() {
        let errors = invalid(decode(
            "application/json",
            r#"{"specversion":"1.0","source":"/s","type":"t","ratio":0.5,"obj":{}}"#,
        ));
        let message = &errors[0].message;
        assert!(
            message.contains(
                "`ratio` must be a string, boolean or integer, found a non-integer number"
            ),
            "{message}"
        );
        assert!(message.contains("`obj`"), "{message}");
    }

    #[test]
    fn rfc3339_validation_accepts_valid_and_rejects_invalid_timestamps() {
        for ok in [
            "2024-05-01T12:00:00Z",
            "2024-05-01t12:00:00.123456789z",
            "2024-02-29T00:00:00-05:30",
            "1999-12-31T23:59:60+00:00",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-13-01T12:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00Zjunk",
            "2024-5-1T12:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn base64_encoding_matches_the_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert!(is_base64(encoded));
        }
        assert!(!is_base64("Zm9"));
        assert!(!is_base64("Zm9v!A=="));
    }

    #[test]
    fn json_strings_are_escaped_like_serde_json() {
        let s = "q\" b\\ \n\r\t\u{8}\u{c}\u{1f} é ✓";
        let mut out = Vec::new();
        write_json_str(&mut out, s);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, s);
    }
}
