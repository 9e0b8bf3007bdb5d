//! Expressions: filter conditions and remap programs in VRL (the Vector Remap Language).
//!
//! Programs are compiled once, when the config is loaded ([`Filter::compile`],
//! [`Remap::compile`]), and run per event over the CloudEvent as `.` (`.type`, `.source`,
//! `.data.amount`, extensions at the top level). VRL is strict: an expression that can fail at
//! run time must be handled (`int!(.data.amount)`, `?? 0`), so most mistakes are compile
//! errors, reported with the config location.
//!
//! Types known at compile time: `.specversion`, `.id`, `.source` and `.type` are strings; the
//! rest is `any`. A filter condition must return a boolean and must not modify the event.
//!
//! Per-event cost: a [`Runtime`] (one per worker) is reused for every run, the event is borrowed
//! (not moved or cloned) as the program's target ([`EventTarget`]), and nothing is allocated by
//! the runtime itself. The pipeline runs programs on a [`StoredEvent`]: the stored record read
//! lazily, one attribute at a time as programs touch them, and written back copying what no
//! program changed. Code that has an [`Event`] converts it once ([`event_to_value`],
//! [`value_to_event`]).

mod direct;
mod stored;

use std::borrow::Cow;
use std::fmt;

use serde_json::value::RawValue;
use vrl::compiler::state::{ExternalEnv, RuntimeState};
use vrl::compiler::{
    CompileConfig, Context, ExpressionError, Program, SecretTarget, Target, TimeZone,
};
use vrl::diagnostic::{Diagnostic as VrlDiagnostic, DiagnosticList, Note, Span};
use vrl::path::{OwnedSegment, OwnedTargetPath, PathPrefix};
/// VRL's value: what filters and remaps run on (an event is an object).
pub use vrl::value::Value;
use vrl::value::kind::Collection;
use vrl::value::{Kind, ObjectMap, Secrets};

use self::direct::Direct;
pub use self::stored::StoredEvent;
use crate::event::{AttrValue, Data, Event, EventRef, ExtensionValue, InvalidEvent};

/// A compile problem of a VRL program, in readable form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprDiagnostic {
    /// One line: code and message, e.g. "VRL error E103: unhandled fallible assignment".
    pub message: String,
    /// Where in the program and why, and VRL's own hints (one line each).
    pub notes: Vec<String>,
    /// How to fix it, when there is a usual fix.
    pub hint: Option<String>,
}

/// Why running a program on an event failed. The engine dead-letters or drops the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// A runtime error (for example `int!` on a value that is not an integer).
    #[error("VRL runtime error: {0}")]
    Failed(String),
    /// The program called `abort`.
    #[error("aborted by the program{}", .0.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Aborted(Option<String>),
}

/// A compiled VRL program of kind `K` ([`FilterKind`] or [`RemapKind`]): its source as written,
/// the program, and its compile warnings.
#[derive(Clone)]
pub struct Expr<K> {
    source: String,
    program: Program,
    /// The program, when VRL's runtime is not needed for it (see [`direct`]); `None` for
    /// programs outside that subset.
    direct: Option<Direct>,
    warnings: Vec<ExprDiagnostic>,
    kind: std::marker::PhantomData<K>,
}

/// Marks a filter condition.
#[derive(Debug, Clone, Copy)]
pub struct FilterKind;

/// Marks a remap program.
#[derive(Debug, Clone, Copy)]
pub struct RemapKind;

/// A compiled filter condition: events for which it returns `false` are dropped.
pub type Filter = Expr<FilterKind>;

/// A compiled remap program: it modifies the event in place.
pub type Remap = Expr<RemapKind>;

/// Marks an expression evaluated for its value (a key, an aggregated field, a mapped column).
#[derive(Debug, Clone, Copy)]
pub struct ValueKind;

/// A compiled read-only expression whose result is used: the key of a dedupe, throttle, sample
/// or aggregate processor (`.data.player`), a field an aggregate sums (`.data.points`), or a
/// postgres sink's mapped column.
pub type ValueExpr = Expr<ValueKind>;

impl<K> Expr<K> {
    fn new(source: &str, program: Program, warnings: Vec<ExprDiagnostic>) -> Self {
        Expr {
            source: source.to_owned(),
            program,
            direct: Direct::of(source),
            warnings,
            kind: std::marker::PhantomData,
        }
    }

    /// The program as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Compile warnings (legal but suspicious code).
    pub fn warnings(&self) -> &[ExprDiagnostic] {
        &self.warnings
    }

    /// Runs the program on `event`: directly when it can be, else through VRL's runtime. Without
    /// `value_wanted` the direct run may answer `null` instead of the program's value.
    fn resolve(
        &self,
        runtime: &mut Runtime,
        event: &mut dyn EventTarget,
        value_wanted: bool,
    ) -> Result<Value, RunError> {
        match &self.direct {
            Some(direct) => {
                let result = direct.run(event, value_wanted);
                finish(result, event)
            }
            None => runtime.resolve(&self.program, event),
        }
    }
}

impl<K> fmt::Debug for Expr<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = std::any::type_name::<K>()
            .rsplit("::")
            .next()
            .unwrap_or("Expr");
        f.debug_tuple(kind.trim_end_matches("Kind"))
            .field(&self.source)
            .finish()
    }
}

/// Programs are equal when their sources are (compilation is deterministic).
impl<K> PartialEq for Expr<K> {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expr<FilterKind> {
    /// Compiles a condition. It must return a boolean and must not modify the event.
    pub fn compile(source: &str) -> Result<Filter, Vec<ExprDiagnostic>> {
        let (program, warnings) = compile(source, true)?;
        let kind = program.final_type_info().result.kind().clone();
        if !kind.is_boolean() {
            return Err(vec![ExprDiagnostic {
                message: format!("a filter condition must return a boolean, but this one can return {kind}"),
                notes: Vec::new(),
                hint: Some(
                    "compare explicitly (`.data.flag == true`) or coerce (`bool(.data.flag) ?? false`)"
                        .to_owned(),
                ),
            }]);
        }
        Ok(Filter::new(source, program, warnings))
    }

    /// Whether `event` passes the condition.
    pub fn run(
        &self,
        runtime: &mut Runtime,
        event: &mut dyn EventTarget,
    ) -> Result<bool, RunError> {
        match self.resolve(runtime, event, true)? {
            Value::Boolean(keep) => Ok(keep),
            // Compile-time checked; a mismatch here is a VRL type-checking bug, not the event's.
            other => Err(RunError::Failed(format!(
                "condition returned {}, not a boolean",
                other.kind_str()
            ))),
        }
    }
}

impl Expr<RemapKind> {
    /// Compiles a remap program.
    pub fn compile(source: &str) -> Result<Remap, Vec<ExprDiagnostic>> {
        let (program, warnings) = compile(source, false)?;
        Ok(Remap::new(source, program, warnings))
    }

    /// Runs the program on `event`, modifying it in place. On error `event` may be partly
    /// modified.
    pub fn run(&self, runtime: &mut Runtime, event: &mut dyn EventTarget) -> Result<(), RunError> {
        self.resolve(runtime, event, false).map(drop)
    }
}

impl Expr<ValueKind> {
    /// Compiles an expression evaluated for its value. It must not modify the event; any result
    /// type is accepted (a missing field gives `null`).
    pub fn compile(source: &str) -> Result<ValueExpr, Vec<ExprDiagnostic>> {
        let (program, warnings) = compile(source, true)?;
        Ok(ValueExpr::new(source, program, warnings))
    }

    /// The expression's value on `event` (which it does not modify).
    pub fn run(
        &self,
        runtime: &mut Runtime,
        event: &mut dyn EventTarget,
    ) -> Result<Value, RunError> {
        self.resolve(runtime, event, true)
    }
}

/// Per-worker scratch state for running programs; reuse one for every event.
pub struct Runtime {
    state: RuntimeState,
    metadata: Value,
    secrets: Secrets,
    timezone: TimeZone,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            state: RuntimeState::default(),
            metadata: Value::Object(ObjectMap::new()),
            secrets: Secrets::default(),
            timezone: TimeZone::default(),
        }
    }
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime::default()
    }

    fn resolve(
        &mut self,
        program: &Program,
        event: &mut dyn EventTarget,
    ) -> Result<Value, RunError> {
        // Nothing of one event may leak into the next: variables and metadata start empty.
        self.state.clear();
        if !matches!(&self.metadata, Value::Object(m) if m.is_empty()) {
            self.metadata = Value::Object(ObjectMap::new());
        }
        let mut target = Subject {
            event: &mut *event,
            metadata: &mut self.metadata,
            secrets: &mut self.secrets,
        };
        let mut ctx = Context::new(&mut target, &mut self.state, &self.timezone);
        let result = program.resolve(&mut ctx);
        finish(result, event)
    }
}

/// A run's result as the engine sees it: a problem the event recorded while the program ran
/// wins over the program's own answer (which read `null` where the event had nothing to give).
fn finish(
    result: Result<Value, ExpressionError>,
    event: &mut dyn EventTarget,
) -> Result<Value, RunError> {
    if let Some(error) = event.take_error() {
        return Err(RunError::Failed(error));
    }
    result.map_err(|e| match e {
        ExpressionError::Abort { message, .. } => RunError::Aborted(message),
        other => RunError::Failed(other.to_string()),
    })
}

/// What a program runs on as `.`: an event as one VRL [`Value`], or a [`StoredEvent`] read
/// lazily. Paths are VRL's (`.data.items[0]`); the semantics are [`Value`]'s `get`, `insert`
/// and `remove`.
pub trait EventTarget: fmt::Debug {
    /// The value at `path`, if any.
    fn get(&self, path: &[OwnedSegment]) -> Option<&Value>;
    /// The top-level attribute `name`, if any (`get` of `.name` without building a path).
    fn attribute(&self, name: &str) -> Option<&Value>;
    /// Whether the value at `path` is the string `text`, when the target can tell without
    /// reading the value (a stored string compared as it is in the record); `None`: ask `get`.
    fn is_text(&self, _path: &[OwnedSegment], _text: &[u8]) -> Option<bool> {
        None
    }
    /// Sets the value at `path`, making the containers on the way.
    fn insert(&mut self, path: &[OwnedSegment], value: Value);
    /// Removes the value at `path`; `compact` also removes containers left empty.
    fn remove(&mut self, path: &[OwnedSegment], compact: bool) -> Option<Value>;
    /// A problem met while the program ran that VRL cannot report (an attribute VRL cannot
    /// represent), taken once the program is done: the run fails with it.
    fn take_error(&mut self) -> Option<String> {
        None
    }
}

impl EventTarget for Value {
    fn get(&self, path: &[OwnedSegment]) -> Option<&Value> {
        Value::get(self, path)
    }

    fn attribute(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(object) => object.get(name),
            _ => None,
        }
    }

    fn insert(&mut self, path: &[OwnedSegment], value: Value) {
        Value::insert(self, path, value);
    }

    fn remove(&mut self, path: &[OwnedSegment], compact: bool) -> Option<Value> {
        Value::remove(self, path, compact)
    }
}

/// VRL's view of a run: the event, the run's metadata (`%name`) and secrets.
#[derive(Debug)]
struct Subject<'t> {
    event: &'t mut dyn EventTarget,
    metadata: &'t mut Value,
    secrets: &'t mut Secrets,
}

impl Target for Subject<'_> {
    fn target_insert(&mut self, path: &OwnedTargetPath, value: Value) -> Result<(), String> {
        match path.prefix {
            PathPrefix::Event => self.event.insert(&path.path.segments, value),
            PathPrefix::Metadata => {
                self.metadata.insert(&path.path, value);
            }
        }
        Ok(())
    }

    fn target_get(&self, path: &OwnedTargetPath) -> Result<Option<&Value>, String> {
        Ok(match path.prefix {
            PathPrefix::Event => self.event.get(&path.path.segments),
            PathPrefix::Metadata => self.metadata.get(&path.path),
        })
    }

    fn target_get_mut(&mut self, path: &OwnedTargetPath) -> Result<Option<&mut Value>, String> {
        // VRL's compiler does not use it; a lazily read event has no value to lend.
        match path.prefix {
            PathPrefix::Event => Err("the event cannot be borrowed mutably".to_owned()),
            PathPrefix::Metadata => Ok(self.metadata.get_mut(&path.path)),
        }
    }

    fn target_remove(
        &mut self,
        path: &OwnedTargetPath,
        compact: bool,
    ) -> Result<Option<Value>, String> {
        Ok(match path.prefix {
            PathPrefix::Event => self.event.remove(&path.path.segments, compact),
            PathPrefix::Metadata => self.metadata.remove(&path.path, compact),
        })
    }
}

impl SecretTarget for Subject<'_> {
    fn get_secret(&self, key: &str) -> Option<&str> {
        self.secrets.get_secret(key)
    }

    fn insert_secret(&mut self, key: &str, value: &str) {
        self.secrets.insert_secret(key, value);
    }

    fn remove_secret(&mut self, key: &str) {
        self.secrets.remove_secret(key);
    }
}

/// The type of `.` the compiler assumes: a CloudEvent whose required attributes are strings.
fn event_kind() -> Kind {
    let mut fields = Collection::any();
    for name in ["specversion", "id", "source", "type"] {
        fields = fields.with_known(name, Kind::bytes());
    }
    Kind::object(fields)
}

fn compile(
    source: &str,
    read_only: bool,
) -> Result<(Program, Vec<ExprDiagnostic>), Vec<ExprDiagnostic>> {
    let functions = vrl::stdlib::all();
    let external = ExternalEnv::new_with_kind(event_kind(), Kind::object(Collection::any()));
    let mut config = CompileConfig::default();
    if read_only {
        config.set_read_only();
    }
    match vrl::compiler::compile_with_external(source, &functions, &external, config) {
        Ok(result) => Ok((result.program, readable(source, result.warnings))),
        Err(diagnostics) => {
            let errors: Vec<VrlDiagnostic> = diagnostics
                .into_iter()
                .filter(VrlDiagnostic::is_problem)
                .collect();
            Err(readable(source, DiagnosticList::from(errors)))
        }
    }
}

/// VRL's diagnostics as one-line messages plus notes (no colours, no boxes).
fn readable(source: &str, diagnostics: DiagnosticList) -> Vec<ExprDiagnostic> {
    diagnostics
        .into_iter()
        .map(|d| {
            let kind = if d.is_problem() { "error" } else { "warning" };
            // Labels on the same code read as one sentence ("or change this to...:" + code).
            let mut labels: Vec<(Span, String)> = Vec::new();
            for label in d.labels.iter().filter(|l| !l.message.trim().is_empty()) {
                match labels.last_mut() {
                    Some((span, text)) if *span == label.span => {
                        text.push(' ');
                        text.push_str(label.message.trim());
                    }
                    _ => labels.push((label.span, label.message.trim().to_owned())),
                }
            }
            let mut notes: Vec<String> = labels
                .into_iter()
                .map(|(span, message)| {
                    let code = source.get(span.start()..span.end()).unwrap_or_default();
                    let column = source[..span.start().min(source.len())]
                        .rsplit('\n')
                        .next()
                        .map_or(0, |line| line.chars().count())
                        + 1;
                    if code.trim().is_empty() {
                        format!("column {column} of the expression: {message}")
                    } else {
                        format!(
                            "column {column} of the expression, `{}`: {message}",
                            one_line(code)
                        )
                    }
                })
                .collect();
            notes.extend(d.notes.iter().filter_map(|note| match note {
                Note::Hint(_)
                | Note::Example(_)
                | Note::CoerceValue
                | Note::UserErrorMessage(_) => Some(note.to_string()),
                Note::Basic(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                _ => None,
            }));
            // Errors about unhandled failures (E100-E110) are the ones newcomers hit; VRL has a
            // page for each.
            let fallibility = (100..=110).contains(&d.code);
            if fallibility {
                notes.push(Note::SeeCodeDocs(d.code).to_string());
            }
            ExprDiagnostic {
                message: format!("VRL {kind} E{:03}: {}", d.code, d.message),
                notes,
                hint: fallibility.then(|| FALLIBILITY_HINT.to_owned()),
            }
        })
        .collect()
}

const FALLIBILITY_HINT: &str = "VRL makes you handle values that may have the wrong type: \
     coerce with `!` to fail the event (`int!(.data.amount) * 2`), give a default \
     (`to_int(.data.amount) ?? 0`), or capture the error (`.x, err = ...`)";

fn one_line(code: &str) -> Cow<'_, str> {
    const MAX: usize = 60;
    let flat: Cow<'_, str> = if code.contains('\n') {
        Cow::Owned(code.split_whitespace().collect::<Vec<_>>().join(" "))
    } else {
        Cow::Borrowed(code)
    };
    if flat.chars().count() > MAX {
        Cow::Owned(format!("{}…", flat.chars().take(MAX).collect::<String>()))
    } else {
        flat
    }
}

/// The event as a VRL value: an object with every attribute at the top level, `data` as a
/// VRL value (from its JSON), `data_base64` as a string.
///
/// Fails only for valid JSON that VRL cannot represent (a number beyond `f64`, like `1e400`).
pub fn event_to_value(event: &Event) -> Result<Value, InvalidEvent> {
    let mut object = ObjectMap::new();
    let mut put = |name: &str, value: Value| {
        object.insert(name.into(), value);
    };
    put("specversion", Value::from(crate::event::SPEC_VERSION));
    put("id", Value::from(event.id()));
    put("source", Value::from(event.source()));
    put("type", Value::from(event.ty()));
    let optional = [
        ("time", event.time()),
        ("subject", event.subject()),
        ("datacontenttype", event.datacontenttype()),
        ("dataschema", event.dataschema()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            put(name, Value::from(value));
        }
    }
    for (name, value) in event.extensions() {
        let value = match value {
            ExtensionValue::String(s) => Value::from(s.as_str()),
            ExtensionValue::Boolean(b) => Value::Boolean(*b),
            ExtensionValue::Integer(i) => Value::Integer(*i),
        };
        put(name, value);
    }
    match event.data() {
        Some(Data::Json(raw)) => match serde_json::from_str(raw.get()) {
            Ok(data) => put("data", data),
            Err(e) => {
                return Err(InvalidEvent {
                    message: format!("`data` cannot be converted for VRL: {e}"),
                });
            }
        },
        Some(Data::Base64(b64)) => put("data_base64", Value::from(b64.as_str())),
        None => {}
    }
    Ok(Value::Object(object))
}

/// The event a VRL value describes, validated like an ingested event (a remap may have broken
/// it). A missing `id` gets a new ULID; timestamps become RFC 3339 strings.
pub fn value_to_event(value: &Value) -> Result<Event, InvalidEvent> {
    value_to_event_ref(value).map(EventRef::into_owned)
}

/// [`value_to_event`], borrowing the value's strings.
fn value_to_event_ref(value: &Value) -> Result<EventRef<'_>, InvalidEvent> {
    let Value::Object(object) = value else {
        return Err(InvalidEvent {
            message: format!("an event must be an object, found {}", value.kind_str()),
        });
    };
    EventRef::from_attributes(
        object
            .iter()
            .map(|(name, value)| (name.as_str(), attr_of_value(name, value))),
    )
}

/// Attribute `name`'s VRL value as it arrives for validation.
fn attr_of_value<'v>(name: &str, value: &'v Value) -> AttrValue<'v> {
    if name == "data" {
        return match value {
            Value::Null => AttrValue::Null,
            other => match serde_json::to_string(other).map(RawValue::from_string) {
                Ok(Ok(raw)) => AttrValue::Json(Cow::Owned(raw)),
                _ => AttrValue::Other("a value that is not JSON"),
            },
        };
    }
    match value {
        Value::Bytes(_) | Value::String(_) => {
            AttrValue::Str(value.to_str_lossy().unwrap_or_default())
        }
        Value::Timestamp(ts) => {
            AttrValue::Str(Cow::Owned(vrl::value::value::timestamp_to_string(ts)))
        }
        Value::Integer(i) => AttrValue::Int(*i),
        Value::Boolean(b) => AttrValue::Bool(*b),
        Value::Null => AttrValue::Null,
        Value::Float(_) => AttrValue::Other("a non-integer number"),
        Value::Regex(_) => AttrValue::Other("a regex"),
        Value::Object(_) => AttrValue::Other("an object"),
        Value::Array(_) => AttrValue::Other("an array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_body;

    fn event(json: &str) -> Event {
        let no_headers: &[(&str, &str)] = &[];
        decode_body("application/cloudevents+json", no_headers, json.as_bytes())
            .unwrap()
            .remove(0)
    }

    const PAYMENT: &str = r#"{"specversion":"1.0","id":"1","source":"/shop","type":"payment.made","traceid":"abc","data":{"amount":"12","qty":3}}"#;

    #[test]
    fn filter_sees_attributes_and_data() {
        let filter = Filter::compile(r#".type != "debug.ping" && .data.qty == 3"#).unwrap();
        let mut rt = Runtime::new();
        let mut value = event_to_value(&event(PAYMENT)).unwrap();
        assert_eq!(filter.run(&mut rt, &mut value), Ok(true));
        let mut ping =
            event_to_value(&event(&PAYMENT.replace("payment.made", "debug.ping"))).unwrap();
        assert_eq!(filter.run(&mut rt, &mut ping), Ok(false));
    }

    #[test]
    fn required_attributes_are_known_strings_at_compile_time() {
        // `starts_with` needs a string: infallible only because `.type` is known to be one.
        assert!(Filter::compile(r#"starts_with(.type, "payment.")"#).is_ok());
        assert!(Filter::compile(r#"starts_with(.subject, "x")"#).is_err());
    }

    #[test]
    fn remap_modifies_the_event_and_converts_back() {
        let remap = Remap::compile(
            ".data.total = to_int!(.data.amount) * int!(.data.qty)\ndel(.traceid)\n.env = \"prod\"",
        )
        .unwrap();
        let mut rt = Runtime::new();
        let mut value = event_to_value(&event(PAYMENT)).unwrap();
        remap.run(&mut rt, &mut value).unwrap();
        let out = value_to_event(&value).unwrap();
        let mut bytes = Vec::new();
        out.to_json_bytes(&mut bytes);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"specversion":"1.0","id":"1","source":"/shop","type":"payment.made","env":"prod","data":{"amount":"12","qty":3,"total":36}}"#
        );
    }

    #[test]
    fn runtime_errors_are_typed_and_the_runtime_is_reusable() {
        let remap = Remap::compile(".data.n = int!(.data.amount)").unwrap();
        let mut rt = Runtime::new();
        let mut value = event_to_value(&event(PAYMENT)).unwrap();
        let err = remap.run(&mut rt, &mut value).unwrap_err();
        assert!(
            matches!(&err, RunError::Failed(m) if m.contains("expected integer")),
            "{err}"
        );
        let abort = Remap::compile(r#"abort "no""#).unwrap();
        assert_eq!(
            abort.run(&mut rt, &mut value),
            Err(RunError::Aborted(Some("no".to_owned())))
        );
        let ok = Remap::compile(".data.n = 1").unwrap();
        assert_eq!(ok.run(&mut rt, &mut value), Ok(()));
    }

    #[test]
    fn metadata_does_not_leak_between_events() {
        let mark = Remap::compile("%seen = true").unwrap();
        let check = Filter::compile("%seen == true").unwrap();
        let mut rt = Runtime::new();
        let mut first = event_to_value(&event(PAYMENT)).unwrap();
        mark.run(&mut rt, &mut first).unwrap();
        let mut second = event_to_value(&event(PAYMENT)).unwrap();
        assert_eq!(check.run(&mut rt, &mut second), Ok(false));
    }

    #[test]
    fn fallible_expressions_are_compile_errors_with_location_notes() {
        let errors = Remap::compile(".data.total = .data.amount * 2").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].message,
            "VRL error E103: unhandled fallible assignment"
        );
        assert!(
            errors[0]
                .notes
                .iter()
                .any(|n| n.contains("column 15 of the expression, `.data.amount * 2`: ")),
            "{:?}",
            errors[0].notes
        );
    }

    #[test]
    fn syntax_errors_are_compile_errors() {
        let errors = Filter::compile(".type == ").unwrap_err();
        assert!(
            errors[0]
                .message
                .starts_with("VRL error E204: syntax error"),
            "{errors:?}"
        );
    }

    #[test]
    fn conditions_must_be_boolean_and_read_only() {
        let not_bool = Filter::compile(".data.flag").unwrap_err();
        assert!(
            not_bool[0].message.contains("must return a boolean"),
            "{not_bool:?}"
        );
        let writes = Filter::compile(".x = 1\ntrue").unwrap_err();
        assert!(writes[0].message.contains("read-only"), "{writes:?}");
    }

    #[test]
    fn value_to_event_revalidates_the_event() {
        let remap = Remap::compile("del(.source)\n.type = 3").unwrap();
        let mut rt = Runtime::new();
        let mut value = event_to_value(&event(PAYMENT)).unwrap();
        remap.run(&mut rt, &mut value).unwrap();
        let err = value_to_event(&value).unwrap_err();
        assert_eq!(
            err.message,
            "attribute `type` must be a string, found an integer; missing required attribute `source`"
        );
    }

    #[test]
    fn event_value_round_trip_preserves_the_event() {
        let original = event(
            r#"{"specversion":"1.0","id":"9","source":"/s","type":"t","time":"2024-01-01T00:00:00Z","subject":"x","flag":true,"n":7,"data_base64":"AA=="}"#,
        );
        assert_eq!(
            value_to_event(&event_to_value(&original).unwrap()).unwrap(),
            original
        );
    }

    #[test]
    fn a_stored_event_reads_as_the_same_value_as_through_event() {
        for json in [
            PAYMENT,
            r#"{"specversion":"1.0","id":"9","source":"/s","type":"t","time":"2024-01-01T00:00:00Z","subject":"x","datacontenttype":"text/plain","dataschema":"https://s/1","flag":true,"n":-7,"data_base64":"AA=="}"#,
            r#"{"specversion":"1.0","id":"2","source":"/s","type":"t","data":[1,2.5,"x",null,{"a":{"b":true}}]}"#,
            r#"{"specversion":"1.0","id":"3","source":"/s","type":"t","data":"\u00e9\n\"q\""}"#,
            r#"{"specversion":"1.0","id":"4","source":"/s","type":"t","data":18446744073709551615}"#,
        ] {
            let original = event(json);
            let mut stored = Vec::new();
            original.to_json_bytes(&mut stored);
            let lazy = StoredEvent::read(&stored).expect(json);
            assert_eq!(
                lazy.to_value(),
                Ok(event_to_value(&original).unwrap()),
                "{json}"
            );
            let mut again = Vec::new();
            lazy.to_json_bytes(&mut again).unwrap();
            assert_eq!(again, stored, "an untouched event is written as stored");
        }
        for not_an_event in [
            &br#"[1]"#[..],
            br#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
            br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            br#"{"specversion":"1.0","id":"1","type":"t"}"#,
            br#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#,
            br#"{"specversion":"1.0","\u0069d":"1","source":"/s","type":"t"}"#,
            b"{",
        ] {
            assert!(StoredEvent::read(not_an_event).is_none());
        }
    }

    #[test]
    fn a_stored_attribute_vrl_cannot_represent_fails_only_the_programs_that_touch_it() {
        let stored =
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x":1e400}}"#;
        let mut rt = Runtime::new();
        let by_type = Filter::compile(r#".type == "t""#).unwrap();
        let mut lazy = StoredEvent::read(stored).unwrap();
        assert_eq!(by_type.run(&mut rt, &mut lazy), Ok(true));
        let mut out = Vec::new();
        lazy.to_json_bytes(&mut out).unwrap();
        assert_eq!(out, stored);
        let by_data = Filter::compile(".data.x == 1").unwrap();
        let err = by_data.run(&mut rt, &mut lazy).unwrap_err();
        assert!(
            err.to_string()
                .contains("`x` cannot be converted for VRL: number out of range"),
            "{err}"
        );
        // Setting a sibling does not read `x`: the record's text of it is kept.
        let remap = Remap::compile(".data.y = 2").unwrap();
        let mut lazy = StoredEvent::read(stored).unwrap();
        assert_eq!(remap.run(&mut rt, &mut lazy), Ok(()));
        out.clear();
        lazy.to_json_bytes(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x":1e400,"y":2}}"#
        );
    }

    #[test]
    fn data_vrl_cannot_represent_is_an_error_not_a_panic() {
        let huge =
            event(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x":1e400}}"#);
        let err = event_to_value(&huge).unwrap_err();
        assert!(
            err.message
                .starts_with("`data` cannot be converted for VRL"),
            "{err}"
        );
        let wide = event(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":18446744073709551615}"#,
        );
        assert!(event_to_value(&wide).is_ok());
    }

    #[test]
    fn compiled_programs_can_be_shared_across_worker_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Filter>();
        assert_send_sync::<Remap>();
        assert_send_sync::<ValueExpr>();
    }

    #[test]
    fn value_expressions_return_any_value_and_are_read_only() {
        let key = ValueExpr::compile(".data.qty").unwrap();
        let mut rt = Runtime::new();
        let mut value = event_to_value(&event(PAYMENT)).unwrap();
        assert_eq!(key.run(&mut rt, &mut value), Ok(Value::Integer(3)));
        let missing = ValueExpr::compile(".data.nothing").unwrap();
        assert_eq!(missing.run(&mut rt, &mut value), Ok(Value::Null));
        let composite = ValueExpr::compile(r#"[.source, .type]"#).unwrap();
        assert_eq!(
            composite.run(&mut rt, &mut value),
            Ok(Value::Array(vec![
                Value::from("/shop"),
                Value::from("payment.made")
            ]))
        );
        let score = ValueExpr::compile("to_int!(.data.amount) * 2").unwrap();
        assert_eq!(score.run(&mut rt, &mut value), Ok(Value::Integer(24)));
        let fails = ValueExpr::compile("int!(.data.amount)").unwrap();
        assert!(matches!(
            fails.run(&mut rt, &mut value),
            Err(RunError::Failed(_))
        ));
        let fallible = ValueExpr::compile("to_int(.data.amount) * 2").unwrap_err();
        assert!(fallible[0].message.contains("E"), "{fallible:?}");
        let writes = ValueExpr::compile(".x = 1").unwrap_err();
        assert!(writes[0].message.contains("read-only"), "{writes:?}");
    }
}
