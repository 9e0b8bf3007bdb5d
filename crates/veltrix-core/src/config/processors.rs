//! A pipeline's `processors = [...]` and `routes = [...]`: the schema of every built-in
//! processor type and the decoding of each item, with every error at its `file:line:col`.
//!
//! Each item is an inline table with a `type`; every type takes its own keys (an unknown key is
//! reported with "did you mean" among that type's keys). VRL programs and key expressions are
//! compiled here, at load, and their errors point at the string holding them. Rules that span
//! items are checked by [`Decoder::processors`]: `batch` and `aggregate` must come last (a batch
//! shapes deliveries; an aggregate consumes every event that reaches it), and a pipeline that
//! ends in an aggregate delivers nothing, so it takes no `routes`.

use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::units::format_duration;
use super::{
    ByteSize, CustomConfig, Decoder, ExprDiagnostic, Severity, Value, codes, get, reference_hint,
};
use crate::expr::{Expr, Filter, Remap, ValueExpr};

/// One step of a pipeline, compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessorConfig {
    /// `{ type = "filter", condition = '...' }`: keeps events for which the condition is true.
    Filter(Filter),
    /// `{ type = "remap", source = '...' }`: modifies events.
    Remap(Remap),
    /// `{ type = "dedupe", key = '.id', window = "10m", max_keys = 100000 }`.
    Dedupe(DedupeConfig),
    /// `{ type = "throttle", key = '.source', rate = 100, per = "1s" }`.
    Throttle(ThrottleConfig),
    /// `{ type = "sample", rate = 0.1, key = '.id' }`.
    Sample(SampleConfig),
    /// `{ type = "aggregate", key = '.data.player', window = "1m", into = "q", ... }`.
    Aggregate(AggregateConfig),
    /// `{ type = "batch", max_events = 500, max_bytes = "1MiB", max_wait = "1s" }`.
    Batch(BatchConfig),
    /// A processor type registered by the embedding program ([`super::Extensions`]); `options`
    /// are the table's other keys as JSON, already accepted by the type's validator.
    Custom(CustomConfig),
}

impl ProcessorConfig {
    /// The `type` as written in the config.
    pub fn type_name(&self) -> &str {
        match self {
            ProcessorConfig::Filter(_) => "filter",
            ProcessorConfig::Remap(_) => "remap",
            ProcessorConfig::Dedupe(_) => "dedupe",
            ProcessorConfig::Throttle(_) => "throttle",
            ProcessorConfig::Sample(_) => "sample",
            ProcessorConfig::Aggregate(_) => "aggregate",
            ProcessorConfig::Batch(_) => "batch",
            ProcessorConfig::Custom(c) => &c.type_name,
        }
    }
}

/// Drops an event whose key was already seen within `window` (counted from the first sighting:
/// at most one event per key per window passes).
#[derive(Debug, Clone, PartialEq)]
pub struct DedupeConfig {
    /// What identifies an event; `None`: its CloudEvents identity (`source` and `id`).
    pub key: Option<ValueExpr>,
    /// How long a key is remembered; default 10 minutes.
    pub window: Duration,
    /// Most keys remembered; the oldest is forgotten first (counted). Default 100,000.
    pub max_keys: usize,
}

/// A token bucket per key: `rate` events per `per`, bursts up to `burst`.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleConfig {
    /// Which bucket an event draws from; `None`: one bucket for the pipeline.
    pub key: Option<ValueExpr>,
    /// Tokens added per `per` (required).
    pub rate: u64,
    /// Default 1 s.
    pub per: Duration,
    /// Bucket capacity; default `rate`.
    pub burst: u64,
    /// Most buckets kept; the least recently used is forgotten first (counted). Default 100,000.
    pub max_keys: usize,
    /// What happens to an event over the limit; default [`WhenExceeded::Drop`].
    pub when_exceeded: WhenExceeded,
}

/// What a throttle does with an event over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenExceeded {
    /// Dropped (counted as `throttled`).
    Drop,
    /// Sent to the pipeline's dead-letter queue with the reason `throttled`.
    DeadLetter,
}

/// Keeps a deterministic fraction of the events: the decision is a stable hash of the key.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleConfig {
    /// The fraction kept, in (0, 1].
    pub rate: f64,
    /// What the decision hashes; `None`: the event's `source` and `id`.
    pub key: Option<ValueExpr>,
}

/// Tumbling windows per key; each window close emits one derived event per key into `into`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// What groups events; `None`: one group per window (its `key` is `null`).
    pub key: Option<ValueExpr>,
    /// Window length; windows are aligned on multiples of it since the Unix epoch. Default 1 m.
    pub window: Duration,
    /// Numeric fields summarised (sum, min, max, avg), by output name, in file order.
    pub fields: Vec<(String, ValueExpr)>,
    /// The queue the derived events are appended to (names a queue).
    pub into: String,
    /// The derived events' `type`.
    pub event_type: String,
    /// Most keys in one window; an event with a new key beyond it is dead-lettered. Default
    /// 100,000.
    pub max_keys: usize,
}

/// How many events a pipeline hands its sink at once (must be the last processor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Default 500.
    pub max_events: usize,
    /// Default 1 MiB; a write never exceeds it (but for a single larger event).
    pub max_bytes: ByteSize,
    /// Longest wait since the first event of a batch; default 1 s.
    pub max_wait: Duration,
}

/// `routes = [{ condition = '...', sink = "..." }]`: the first route whose condition holds
/// takes the event; events no route takes go to the pipeline's `sink`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub condition: Filter,
    /// Names a sink.
    pub sink: String,
}

/// Every processor key, in documentation order (each type takes `type` and its own subset).
pub(super) const PROCESSOR_KEYS: &[&str] = &[
    "type",
    "condition",
    "source",
    "key",
    "window",
    "max_keys",
    "rate",
    "per",
    "burst",
    "when_exceeded",
    "fields",
    "into",
    "event_type",
    "max_events",
    "max_bytes",
    "max_wait",
];
pub(super) const PROCESSOR_TYPES: &[&str] = &[
    "filter",
    "remap",
    "dedupe",
    "throttle",
    "sample",
    "aggregate",
    "batch",
];
pub(super) const ROUTE_KEYS: &[&str] = &["condition", "sink"];
pub(super) const WHEN_EXCEEDED: &[&str] = &["drop", "dead_letter"];

/// The keys each built-in type takes.
fn type_keys(ty: &str) -> &'static [&'static str] {
    match ty {
        "filter" => &["type", "condition"],
        "remap" => &["type", "source"],
        "dedupe" => &["type", "key", "window", "max_keys"],
        "throttle" => &[
            "type",
            "key",
            "rate",
            "per",
            "burst",
            "max_keys",
            "when_exceeded",
        ],
        "sample" => &["type", "rate", "key"],
        "aggregate" => &[
            "type",
            "key",
            "window",
            "fields",
            "into",
            "event_type",
            "max_keys",
        ],
        "batch" => &["type", "max_events", "max_bytes", "max_wait"],
        other => unreachable!("`{other}` is not a built-in processor type"),
    }
}

pub(super) const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(600);
pub(super) const DEFAULT_MAX_KEYS: usize = 100_000;
pub(super) const DEFAULT_THROTTLE_PER: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_AGGREGATE_WINDOW: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_BATCH_MAX_EVENTS: usize = 500;
pub(super) const DEFAULT_BATCH_MAX_BYTES: u64 = ByteSize::MIB;
pub(super) const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_secs(1);

/// Limits: beyond them a value is a mistake, not a tuning choice.
pub(super) const MAX_KEYS_MAX: i64 = 10_000_000;
pub(super) const THROTTLE_RATE_MAX: i64 = 1_000_000_000;
pub(super) const AGGREGATE_WINDOW_MIN: Duration = Duration::from_secs(1);
pub(super) const AGGREGATE_WINDOW_MAX: Duration = Duration::from_secs(24 * 3600);
pub(super) const AGGREGATE_FIELDS_MAX: usize = 64;
/// A batch's events stay unacknowledged until it is delivered: at most a queue cursor's
/// in-flight bound.
pub(super) const BATCH_MAX_EVENTS_MAX: i64 = 100_000;
pub(super) const BATCH_MAX_BYTES_MIN: u64 = ByteSize::KIB;
pub(super) const BATCH_MAX_BYTES_MAX: u64 = 256 * ByteSize::MIB;
pub(super) const BATCH_MAX_WAIT_MAX: Duration = Duration::from_secs(300);
/// Names an aggregate's output object already uses.
const AGGREGATE_RESERVED: &[&str] = &["key", "window_start", "window_end", "count"];

impl Decoder<'_> {
    /// A pipeline's `processors` array, and the rules between its items.
    pub(super) fn processors(
        &mut self,
        value: &Value<'_>,
        queue_names: &[&str],
    ) -> Vec<ProcessorConfig> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "processors", "an array of tables", None);
            return Vec::new();
        };
        let mut out = Vec::new();
        let last = items.len().saturating_sub(1);
        for (i, item) in items.iter().enumerate() {
            let Some(processor) = self.processor(item, queue_names) else {
                continue;
            };
            let must_be_last = match &processor {
                ProcessorConfig::Batch(_) => Some("a batch shapes what the sink receives"),
                ProcessorConfig::Aggregate(_) => {
                    Some("an aggregate consumes every event that reaches it")
                }
                _ => None,
            };
            if let Some(why) = must_be_last
                && i < last
            {
                self.error_coded(
                    codes::CONFLICT,
                    item.span(),
                    format!(
                        "the `{}` processor must be the last one: {why}",
                        processor.type_name()
                    ),
                    Some("move it to the end of `processors`".to_owned()),
                );
                continue;
            }
            out.push(processor);
        }
        out
    }

    fn processor(&mut self, item: &Value<'_>, queue_names: &[&str]) -> Option<ProcessorConfig> {
        let what = "processor";
        let DeValue::Table(table) = item.get_ref() else {
            self.wrong_type(
                item,
                "processors",
                "an array of tables",
                Some("write `{ type = \"filter\", condition = '...' }`".to_owned()),
            );
            return None;
        };
        let Some(ty) = get(table, "type") else {
            self.check_keys(table, what, PROCESSOR_KEYS);
            let list: Vec<String> = PROCESSOR_TYPES.iter().map(|t| format!("\"{t}\"")).collect();
            let hint = format!("add `type = ` one of {}", list.join(", "));
            self.missing(table, "type", item.span(), what, hint);
            return None;
        };
        let extensions = self.extensions;
        let types: Vec<&str> = PROCESSOR_TYPES
            .iter()
            .copied()
            .chain(extensions.processors.iter().map(|(n, _)| n.as_str()))
            .collect();
        let kind = self.choice(ty, "processor type", &types)?;
        if kind >= PROCESSOR_TYPES.len() {
            let (type_name, validate) = &extensions.processors[kind - PROCESSOR_TYPES.len()];
            let what = format!("processor (type \"{type_name}\")");
            return self
                .custom(table, item.span(), type_name, validate, &what)
                .map(ProcessorConfig::Custom);
        }
        let ty = PROCESSOR_TYPES[kind];
        let what = format!("{ty} processor");
        self.check_keys(table, &what, type_keys(ty));
        let at = Item {
            table,
            span: item.span(),
            what: &what,
        };
        match ty {
            "filter" => self
                .required_program(&at, "condition", Filter::compile)
                .map(ProcessorConfig::Filter),
            "remap" => self
                .required_program(&at, "source", Remap::compile)
                .map(ProcessorConfig::Remap),
            "dedupe" => self.dedupe(&at).map(ProcessorConfig::Dedupe),
            "throttle" => self.throttle(&at).map(ProcessorConfig::Throttle),
            "sample" => self.sample(&at).map(ProcessorConfig::Sample),
            "aggregate" => self
                .aggregate(&at, queue_names)
                .map(ProcessorConfig::Aggregate),
            "batch" => self.batch(&at).map(ProcessorConfig::Batch),
            other => unreachable!("`{other}` is in PROCESSOR_TYPES"),
        }
    }

    fn dedupe(&mut self, at: &Item<'_, '_>) -> Option<DedupeConfig> {
        let mut valid = true;
        let key = self.optional_program(at, "key", ValueExpr::compile, &mut valid);
        let window = self
            .optional(at, "window", &mut valid, |d, v| d.duration(v, "window"))
            .unwrap_or(DEFAULT_DEDUPE_WINDOW);
        let max_keys = self.max_keys(at, &mut valid);
        valid.then_some(DedupeConfig {
            key,
            window,
            max_keys,
        })
    }

    fn throttle(&mut self, at: &Item<'_, '_>) -> Option<ThrottleConfig> {
        let mut valid = true;
        let key = self.optional_program(at, "key", ValueExpr::compile, &mut valid);
        let rate = match get(at.table, "rate") {
            Some(v) => self.count(v, "rate", THROTTLE_RATE_MAX),
            None => {
                let hint = "add `rate = 100` (events per `per`, default per second)";
                self.missing(at.table, "rate", at.span.clone(), at.what, hint.to_owned());
                None
            }
        };
        valid &= rate.is_some();
        let per = self
            .optional(at, "per", &mut valid, |d, v| d.duration(v, "per"))
            .unwrap_or(DEFAULT_THROTTLE_PER);
        let burst = self.optional(at, "burst", &mut valid, |d, v| {
            d.count(v, "burst", THROTTLE_RATE_MAX)
        });
        let max_keys = self.max_keys(at, &mut valid);
        let when_exceeded = self
            .optional(at, "when_exceeded", &mut valid, |d, v| {
                d.choice(v, "when_exceeded", WHEN_EXCEEDED)
            })
            .map_or(WhenExceeded::Drop, |i| {
                [WhenExceeded::Drop, WhenExceeded::DeadLetter][i]
            });
        let rate = rate?;
        valid.then_some(ThrottleConfig {
            key,
            rate,
            per,
            burst: burst.unwrap_or(rate),
            max_keys,
            when_exceeded,
        })
    }

    fn sample(&mut self, at: &Item<'_, '_>) -> Option<SampleConfig> {
        let mut valid = true;
        let key = self.optional_program(at, "key", ValueExpr::compile, &mut valid);
        let rate = match get(at.table, "rate") {
            Some(v) => self.fraction(v, "rate"),
            None => {
                let hint = "add `rate = 0.1` to keep one event in ten";
                self.missing(at.table, "rate", at.span.clone(), at.what, hint.to_owned());
                None
            }
        };
        let rate = rate?;
        valid.then_some(SampleConfig { rate, key })
    }

    fn aggregate(&mut self, at: &Item<'_, '_>, queue_names: &[&str]) -> Option<AggregateConfig> {
        let mut valid = true;
        let key = self.optional_program(at, "key", ValueExpr::compile, &mut valid);
        let window = self
            .optional(at, "window", &mut valid, |d, v| {
                let window = d.duration(v, "window")?;
                if !(AGGREGATE_WINDOW_MIN..=AGGREGATE_WINDOW_MAX).contains(&window) {
                    d.error_coded(
                        codes::INVALID_VALUE,
                        v.span(),
                        format!(
                            "`window` must be between {} and {}",
                            format_duration(AGGREGATE_WINDOW_MIN),
                            format_duration(AGGREGATE_WINDOW_MAX)
                        ),
                        None,
                    );
                    return None;
                }
                Some(window)
            })
            .unwrap_or(DEFAULT_AGGREGATE_WINDOW);
        let mut fields = Vec::new();
        if let Some(v) = get(at.table, "fields") {
            match v.get_ref() {
                DeValue::Table(table) => {
                    if table.len() > AGGREGATE_FIELDS_MAX {
                        valid = false;
                        self.error_coded(
                            codes::INVALID_VALUE,
                            v.span(),
                            format!("`fields` may hold at most {AGGREGATE_FIELDS_MAX} fields"),
                            None,
                        );
                    }
                    for (name, program) in table.iter() {
                        let name_str: &str = name.get_ref();
                        if AGGREGATE_RESERVED.contains(&name_str) {
                            valid = false;
                            self.error_coded(
                                codes::INVALID_VALUE,
                                name.span(),
                                format!(
                                    "field name `{name_str}` is taken by the aggregate's own \
                                     output (`key`, `window_start`, `window_end`, `count`)"
                                ),
                                Some(format!("rename it, e.g. `{name_str}_total`")),
                            );
                            continue;
                        }
                        match self.program(program, name_str, ValueExpr::compile) {
                            Some(expr) => fields.push((name_str.to_owned(), expr)),
                            None => valid = false,
                        }
                    }
                }
                _ => {
                    valid = false;
                    self.wrong_type(
                        v,
                        "fields",
                        "a table of VRL expressions",
                        Some("write `fields = { score = '.data.points' }`".to_owned()),
                    );
                }
            }
        }
        let into = match get(at.table, "into") {
            Some(v) => match self.string(v, "into") {
                Some(q) if queue_names.contains(&q.as_str()) => Some(q),
                Some(q) => {
                    let hint = reference_hint(&q, queue_names, "queues");
                    self.error_coded(
                        codes::UNKNOWN_REFERENCE,
                        v.span(),
                        format!("unknown queue `{q}`"),
                        Some(hint),
                    );
                    None
                }
                None => None,
            },
            None => {
                let hint = "add `into = \"QUEUE\"`: the queue the derived events go to";
                self.missing(at.table, "into", at.span.clone(), at.what, hint.to_owned());
                None
            }
        };
        let event_type = match get(at.table, "event_type") {
            Some(v) => self.non_empty_string(v, "event_type"),
            None => {
                let hint = "add `event_type = \"stats.updated\"`: the derived events' type";
                self.missing(
                    at.table,
                    "event_type",
                    at.span.clone(),
                    at.what,
                    hint.to_owned(),
                );
                None
            }
        };
        let max_keys = self.max_keys(at, &mut valid);
        let (into, event_type) = (into?, event_type?);
        valid.then_some(AggregateConfig {
            key,
            window,
            fields,
            into,
            event_type,
            max_keys,
        })
    }

    fn batch(&mut self, at: &Item<'_, '_>) -> Option<BatchConfig> {
        let mut valid = true;
        let max_events = self
            .optional(at, "max_events", &mut valid, |d, v| {
                d.count(v, "max_events", BATCH_MAX_EVENTS_MAX)
            })
            .map_or(DEFAULT_BATCH_MAX_EVENTS, |n| {
                usize::try_from(n).expect("range-checked")
            });
        let max_bytes = self
            .optional(at, "max_bytes", &mut valid, |d, v| {
                d.size(v, "max_bytes", BATCH_MAX_BYTES_MIN, BATCH_MAX_BYTES_MAX)
            })
            .unwrap_or(ByteSize(DEFAULT_BATCH_MAX_BYTES));
        let max_wait = self
            .optional(at, "max_wait", &mut valid, |d, v| {
                let wait = d.duration(v, "max_wait")?;
                if wait > BATCH_MAX_WAIT_MAX {
                    d.error_coded(
                        codes::INVALID_VALUE,
                        v.span(),
                        format!(
                            "`max_wait` must be at most {}: the batch's events stay \
                             unacknowledged while it waits",
                            format_duration(BATCH_MAX_WAIT_MAX)
                        ),
                        None,
                    );
                    return None;
                }
                Some(wait)
            })
            .unwrap_or(DEFAULT_BATCH_MAX_WAIT);
        valid.then_some(BatchConfig {
            max_events,
            max_bytes,
            max_wait,
        })
    }

    /// A pipeline's `routes`: each `{ condition = '...', sink = "..." }`, sinks checked.
    pub(super) fn routes(&mut self, value: &Value<'_>, sink_names: &[&str]) -> Vec<RouteConfig> {
        let hint =
            "write `routes = [{ condition = '.type == \"order.paid\"', sink = \"billing\" }]`";
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "routes", "an array of tables", Some(hint.to_owned()));
            return Vec::new();
        };
        let mut routes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let DeValue::Table(table) = item.get_ref() else {
                self.wrong_type(
                    item,
                    &format!("routes[{i}]"),
                    "a table",
                    Some(hint.to_owned()),
                );
                continue;
            };
            let what = format!("route {i}");
            self.check_keys(table, &what, ROUTE_KEYS);
            let at = Item {
                table,
                span: item.span(),
                what: &what,
            };
            let condition = self.required_program(&at, "condition", Filter::compile);
            let sink = match get(table, "sink") {
                Some(v) => match self.string(v, "sink") {
                    Some(s) if sink_names.contains(&s.as_str()) => Some(s),
                    Some(s) => {
                        let hint = reference_hint(&s, sink_names, "sinks");
                        self.error_coded(
                            codes::UNKNOWN_REFERENCE,
                            v.span(),
                            format!("unknown sink `{s}`"),
                            Some(hint),
                        );
                        None
                    }
                    None => None,
                },
                None => {
                    let hint = "add `sink = \"NAME\"`: where the events this route takes go";
                    self.missing(table, "sink", item.span(), &what, hint.to_owned());
                    None
                }
            };
            if let (Some(condition), Some(sink)) = (condition, sink) {
                routes.push(RouteConfig { condition, sink });
            }
        }
        routes
    }

    /// `key` (decoded by `decode`) when present; a bad value clears `valid`.
    fn optional<T>(
        &mut self,
        at: &Item<'_, '_>,
        key: &str,
        valid: &mut bool,
        decode: impl FnOnce(&mut Self, &Value<'_>) -> Option<T>,
    ) -> Option<T> {
        let v = get(at.table, key)?;
        let decoded = decode(self, v);
        *valid &= decoded.is_some();
        decoded
    }

    fn max_keys(&mut self, at: &Item<'_, '_>, valid: &mut bool) -> usize {
        self.optional(at, "max_keys", valid, |d, v| {
            d.count(v, "max_keys", MAX_KEYS_MAX)
        })
        .map_or(DEFAULT_MAX_KEYS, |n| {
            usize::try_from(n).expect("range-checked")
        })
    }

    /// An integer from 1 to `max`.
    fn count(&mut self, value: &Value<'_>, name: &str, max: i64) -> Option<u64> {
        self.integer(value, name, 1..max + 1)
            .map(|n| u64::try_from(n).expect("range-checked"))
    }

    /// A number in (0, 1] (a float, or the integer 1).
    fn fraction(&mut self, value: &Value<'_>, name: &str) -> Option<f64> {
        let n = match value.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::String(s) => {
                let hint = s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .map(|n| format!("remove the quotes: `{name} = {n}`"));
                self.wrong_type(value, name, "a number", hint);
                return None;
            }
            _ => {
                self.wrong_type(value, name, "a number", None);
                return None;
            }
        };
        match n {
            Some(n) if n > 0.0 && n <= 1.0 => Some(n),
            _ => {
                self.error_coded(
                    codes::INVALID_VALUE,
                    value.span(),
                    format!("`{name}` must be more than 0 and at most 1"),
                    Some("a fraction of the events: `0.1` keeps one in ten".to_owned()),
                );
                None
            }
        }
    }

    fn required_program<K>(
        &mut self,
        at: &Item<'_, '_>,
        key: &str,
        compile: impl Fn(&str) -> Result<Expr<K>, Vec<ExprDiagnostic>>,
    ) -> Option<Expr<K>> {
        let Some(program) = get(at.table, key) else {
            let hint = format!("add `{key} = '...'` with a VRL expression");
            self.missing(at.table, key, at.span.clone(), at.what, hint);
            return None;
        };
        self.program(program, key, compile)
    }

    fn optional_program<K>(
        &mut self,
        at: &Item<'_, '_>,
        key: &str,
        compile: impl Fn(&str) -> Result<Expr<K>, Vec<ExprDiagnostic>>,
        valid: &mut bool,
    ) -> Option<Expr<K>> {
        self.optional(at, key, valid, |d, v| d.program(v, key, compile))
    }

    /// A VRL program in a string, compiled; its diagnostics are reported at the string.
    fn program<K>(
        &mut self,
        value: &Value<'_>,
        key: &str,
        compile: impl Fn(&str) -> Result<Expr<K>, Vec<ExprDiagnostic>>,
    ) -> Option<Expr<K>> {
        let text = self.string(value, key)?;
        match compile(&text) {
            Ok(expr) => {
                for warning in expr.warnings().to_vec() {
                    self.expr_diagnostic(Severity::Warning, value.span(), key, warning);
                }
                Some(expr)
            }
            Err(errors) => {
                for error in errors {
                    self.expr_diagnostic(Severity::Error, value.span(), key, error);
                }
                None
            }
        }
    }
}

/// The item being decoded: its table, span and name for messages.
struct Item<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    what: &'t str,
}
