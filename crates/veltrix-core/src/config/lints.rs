//! Lints: checks of a decoded, valid [`Config`] that go beyond its schema — topology (what can
//! reach what), settings that contradict each other across sections, and the facts of the machine
//! (free disk) handed in by the caller. Pure: no I/O here; `veltrix validate` measures the disk,
//! tries connections and reads queue directories, and reports through [`Locations`].
//!
//! Every finding has a stable code (see [`codes`]) documented in `docs/config-lints.md`; a test
//! checks that every code in the source is documented there.
//!
//! [`Locations`] keeps the span of every key and value of the file as written, so lints that run
//! after decoding (here, or in the CLI) still point at `file:line:col`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::SourceConfig;
use super::diagnostic::{Source, diagnostic_at};
use super::units::format_duration;
use super::{
    ByteSize, Config, Diagnostic, Durability, PipelineConfig, ProcessorConfig, Severity,
    SinkConfig, TypePattern,
};

/// The stable codes of every finding. Never renumber one; retire it instead.
pub mod codes {
    // Errors found while loading: the config cannot be used.
    /// The file cannot be read or is not UTF-8.
    pub const UNREADABLE: &str = "V001";
    /// TOML syntax error.
    pub const TOML_SYNTAX: &str = "V002";
    /// `${VAR}` interpolation: unset variable or malformed reference.
    pub const INTERPOLATION: &str = "V003";
    /// Unknown key (with "did you mean").
    pub const UNKNOWN_KEY: &str = "V004";
    /// A value of the wrong type.
    pub const WRONG_TYPE: &str = "V005";
    /// A required key is missing.
    pub const MISSING_KEY: &str = "V006";
    /// A value out of range or unparsable (size, duration, address, choice, name, pattern, url).
    pub const INVALID_VALUE: &str = "V007";
    /// A reference to a queue or sink that does not exist.
    pub const UNKNOWN_REFERENCE: &str = "V008";
    /// A VRL program does not compile.
    pub const VRL_ERROR: &str = "V009";
    /// Settings that contradict each other (address clash, segment above bound, ...).
    pub const CONFLICT: &str = "V010";
    /// Two pipelines share one dead-letter queue.
    pub const SHARED_DEAD_LETTER: &str = "V011";
    /// A pipeline's output comes back to it through queues (an aggregate's `into`, a queue
    /// sink).
    pub const CYCLE: &str = "V012";

    // Warnings: legal but suspicious.
    /// The VRL compiler warns about a program.
    pub const VRL_WARNING: &str = "V020";
    /// The admin API listens beyond loopback without a token.
    pub const API_EXPOSED: &str = "V021";
    /// `[sources]` is empty.
    pub const NO_SOURCES: &str = "V022";
    /// `fsync_interval` without `durability = "interval"`.
    pub const FSYNC_INTERVAL_UNUSED: &str = "V023";
    /// `workers` far above the cores.
    pub const WORKERS_ABOVE_CORES: &str = "V024";
    /// No queue takes every type.
    pub const NO_CATCH_ALL: &str = "V025";
    /// Every type pattern of a queue is shadowed by earlier queues.
    pub const QUEUE_UNREACHABLE: &str = "V026";
    /// One type pattern of a queue is shadowed by an earlier queue.
    pub const PATTERN_SHADOWED: &str = "V027";
    /// No pipeline reads a queue.
    pub const QUEUE_UNREAD: &str = "V028";
    /// Every queue a pipeline reads is unreachable.
    pub const PIPELINE_UNREACHABLE: &str = "V029";
    /// No pipeline writes to a sink.
    pub const SINK_UNUSED: &str = "V030";
    /// A retried batch can hold the only worker longer than `starvation_max`.
    pub const RETRY_ABOVE_STARVATION: &str = "V031";
    /// A `memory` queue feeds a sink that promises delivery.
    pub const MEMORY_QUEUE_DELIVERING_SINK: &str = "V032";

    // The machine and the data (`veltrix validate` only).
    /// One queue's `max_bytes` is above the free disk of `data_dir`.
    pub const QUEUE_ABOVE_FREE_DISK: &str = "V040";
    /// All queues' `max_bytes` together are above the free disk of `data_dir`.
    pub const QUEUES_ABOVE_FREE_DISK: &str = "V041";
    /// `--check-connections`: an http or nats sink's host:port does not accept a TCP connection.
    pub const SINK_UNREACHABLE: &str = "V042";
    /// `--check-data`: a queue's log on disk is damaged.
    pub const DATA_DAMAGED: &str = "V043";
    /// `--check-data`: a queue's directory cannot be read as a log.
    pub const DATA_UNREADABLE: &str = "V044";
    /// `--check-data`: a dead-letter queue holds events waiting for an operator.
    pub const DEAD_LETTERS_WAITING: &str = "V045";
    /// `--check-data`: a queue directory on disk belongs to no configured queue.
    pub const DATA_ORPHANED: &str = "V046";
    /// `--check-connections`: no server of a nats source accepts a TCP connection.
    pub const SOURCE_UNREACHABLE: &str = "V047";
}

/// Separates the parts of a key path in [`Locations`] (cannot occur in a bare TOML key, and a
/// quoted key holding it would only ever miss).
const SEP: char = '\u{1f}';

/// Where every key and value of a config file is, in the file as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locations {
    file: String,
    text: String,
    /// Path (`queues␟critical␟types␟0`) → (span of the key, span of the value); array items have
    /// no key.
    spans: HashMap<String, (Option<Range<usize>>, Range<usize>)>,
}

impl Locations {
    pub(crate) fn new(source: &Source<'_>, root: &DeTable<'_>) -> Locations {
        let mut locations = Locations {
            file: source.file.to_owned(),
            text: source.original.to_owned(),
            spans: HashMap::new(),
        };
        locations.walk(source, "", root);
        locations
    }

    fn walk(&mut self, source: &Source<'_>, prefix: &str, table: &DeTable<'_>) {
        let map = |span: Range<usize>| {
            let start = source.expanded.to_original(span.start);
            let end = source.expanded.to_original(span.end.max(span.start));
            start..end.max(start)
        };
        for (key, value) in table.iter() {
            let path = join(prefix, key.get_ref());
            self.spans
                .insert(path.clone(), (Some(map(key.span())), map(value.span())));
            self.walk_value(source, &path, value.get_ref(), &map);
        }
    }

    fn walk_value(
        &mut self,
        source: &Source<'_>,
        path: &str,
        value: &DeValue<'_>,
        map: &dyn Fn(Range<usize>) -> Range<usize>,
    ) {
        match value {
            DeValue::Table(table) => self.walk(source, path, table),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = join(path, &i.to_string());
                    self.spans
                        .insert(item_path.clone(), (None, map(item.span())));
                    self.walk_value(source, &item_path, item.get_ref(), map);
                }
            }
            _ => {}
        }
    }

    /// The file name diagnostics carry.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The span of the value at `path` (`["queues", "critical", "max_bytes"]`), if written.
    pub fn value(&self, path: &[&str]) -> Option<Range<usize>> {
        self.spans
            .get(&path.join(&SEP.to_string()))
            .map(|(_, v)| v.clone())
    }

    /// The span of the key at `path` (a queue's name for `["queues", "critical"]`), if written.
    pub fn key(&self, path: &[&str]) -> Option<Range<usize>> {
        self.spans
            .get(&path.join(&SEP.to_string()))
            .and_then(|(k, _)| k.clone())
    }

    /// A diagnostic at `span` (from [`Locations::value`] or [`Locations::key`]); without one, at
    /// the start of the file.
    pub fn diagnostic(
        &self,
        span: Option<Range<usize>>,
        severity: Severity,
        code: &'static str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        diagnostic_at(
            &self.file,
            &self.text,
            span.unwrap_or(0..0),
            severity,
            message,
            hint,
        )
        .with_code(code)
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}{SEP}{key}")
    }
}

/// Whether every type `pattern` matches is matched by `earlier` (so routing, first match in file
/// order, never lets `pattern` see an event once `earlier` is above it). Exact for the common
/// shapes (`*`, literals, one trailing `*`); other globs count as covered only when identical.
pub fn covers(earlier: &TypePattern, pattern: &TypePattern) -> bool {
    if earlier.is_catch_all() || earlier.as_str() == pattern.as_str() {
        return true;
    }
    if pattern.is_literal() {
        return earlier.matches(pattern.as_str());
    }
    let e = earlier.as_str();
    // `order.*` covers `order.created.*` and `order.?x*`: every match starts with `order.`.
    e.ends_with('*')
        && !e[..e.len() - 1].contains(['*', '?'])
        && pattern.as_str().starts_with(&e[..e.len() - 1])
}

/// The first queue above queue number `index` with a pattern covering `pattern`.
fn shadowed_by<'c>(config: &'c Config, index: usize, pattern: &TypePattern) -> Option<&'c str> {
    config
        .queues
        .iter()
        .take(index)
        .find(|(_, q)| q.types.iter().any(|e| covers(e, pattern)))
        .map(|(name, _)| name.as_str())
}

/// Queues that something inside the engine writes into (an aggregate's `into`, a queue sink,
/// even one no pipeline uses yet): reachable whatever the routing says.
pub fn fed_queues(config: &Config) -> Vec<&str> {
    let sinks = config.sinks.values().filter_map(|s| match s {
        SinkConfig::Queue { queue } => Some(queue.as_str()),
        _ => None,
    });
    pipeline_outputs(config)
        .iter()
        .map(|o| o.queue)
        .chain(sinks)
        .collect()
}

/// Whether no event can ever be routed to queue number `index` (a queue a sink feeds is
/// reachable that way).
pub(crate) fn unreachable(config: &Config, index: usize) -> bool {
    let (name, queue) = config.queues.get_index(index).expect("index of a queue");
    !fed_queues(config).contains(&name.as_str())
        && !queue.types.is_empty()
        && queue
            .types
            .iter()
            .all(|p| shadowed_by(config, index, p).is_some())
}

/// The longest one batch can hold a worker while it is retried: `attempts_max − 1` waits of at
/// most `backoff_max`, plus each attempt's own time where the sink bounds it (http `timeout`).
pub fn retry_hold(pipeline: &PipelineConfig, sink: Option<&SinkConfig>) -> Duration {
    let retry = &pipeline.retry;
    let attempt = match sink {
        Some(SinkConfig::Http { timeout, .. }) => *timeout,
        Some(SinkConfig::Nats(nats)) => nats.timeout,
        Some(SinkConfig::Postgres(p)) => p.timeout,
        _ => Duration::ZERO,
    };
    retry
        .backoff_max
        .saturating_mul(retry.attempts_max.saturating_sub(1))
        .saturating_add(attempt.saturating_mul(retry.attempts_max))
}

/// A pipeline writing into a queue (not through routing): the edges that can close a cycle
/// queue → pipeline → queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOutput<'c> {
    pub pipeline: &'c str,
    pub queue: &'c str,
    /// The config path of the value that makes the edge (for the diagnostic's location).
    pub path: Vec<String>,
}

/// Every pipeline → queue edge of the config, in file order: each aggregate's `into`, then each
/// queue sink the pipeline delivers to. Any other way a pipeline writes into a queue belongs here
/// too, so the cycle check and the reachability lints see it.
pub fn pipeline_outputs(config: &Config) -> Vec<QueueOutput<'_>> {
    let mut out = Vec::new();
    for (name, pipeline) in &config.pipelines {
        for (i, processor) in pipeline.processors.iter().enumerate() {
            if let ProcessorConfig::Aggregate(aggregate) = processor {
                out.push(QueueOutput {
                    pipeline: name,
                    queue: &aggregate.into,
                    path: vec![
                        "pipelines".to_owned(),
                        name.clone(),
                        "processors".to_owned(),
                        i.to_string(),
                        "into".to_owned(),
                    ],
                });
            }
        }
        for sink in pipeline.sinks() {
            if let Some(SinkConfig::Queue { queue }) = config.sinks.get(sink) {
                out.push(QueueOutput {
                    pipeline: name,
                    queue,
                    path: vec!["sinks".to_owned(), sink.to_owned(), "queue".to_owned()],
                });
            }
        }
    }
    out
}

/// The lints of a valid config that need nothing but the config (run by `config::load`).
pub(crate) fn check(config: &Config, at: &Locations) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    cycles(config, at, &mut out);
    shared_dead_letters(config, at, &mut out);
    shadowed_patterns(config, at, &mut out);
    unreachable_pipelines(config, at, &mut out);
    retries_above_starvation(config, at, &mut out);
    memory_queues_feeding_delivery(config, at, &mut out);
    file_sinks_feeding_file_sources(config, at, &mut out);
    out
}

/// A file sink writing a file that a file source reads would read every event back in,
/// forever (compared as written: a path spelt differently is not caught).
fn file_sinks_feeding_file_sources(config: &Config, at: &Locations, out: &mut Vec<Diagnostic>) {
    let patterns = |list: &[String]| -> Vec<glob::Pattern> {
        list.iter()
            .filter_map(|p| glob::Pattern::new(p).ok())
            .collect()
    };
    for (source, config_source) in &config.sources {
        let SourceConfig::File(file) = config_source else {
            continue;
        };
        let (include, exclude) = (patterns(&file.include), patterns(&file.exclude));
        for (sink, sink_config) in &config.sinks {
            let SinkConfig::File { path } = sink_config else {
                continue;
            };
            if include.iter().any(|p| p.matches_path(path))
                && !exclude.iter().any(|p| p.matches_path(path))
            {
                out.push(at.diagnostic(
                    at.value(&["sinks", sink, "path"])
                        .or_else(|| at.key(&["sinks", sink])),
                    Severity::Error,
                    codes::CONFLICT,
                    format!(
                        "sink `{sink}` writes {}, which file source `{source}` reads: every \
                         event would be read back in, forever",
                        path.display()
                    ),
                    Some(format!(
                        "write the sink elsewhere, or add its path to source `{source}`'s `exclude`"
                    )),
                ));
            }
        }
    }
}

/// A pipeline whose output reaches a queue it (or a pipeline downstream of it) reads would feed
/// on its own output forever: an error at the value that closes the loop.
fn cycles(config: &Config, at: &Locations, out: &mut Vec<Diagnostic>) {
    let outputs = pipeline_outputs(config);
    fn readers<'c>(config: &'c Config, queue: &str) -> Vec<&'c str> {
        config
            .pipelines
            .iter()
            .filter(|(_, p)| p.from.iter().any(|q| q == queue))
            .map(|(name, _)| name.as_str())
            .collect()
    }
    for edge in &outputs {
        // Breadth-first from the readers of the edge's queue; `via[p]` is how p was reached.
        let mut via: HashMap<&str, Option<&str>> = HashMap::new();
        let mut frontier: Vec<&str> = Vec::new();
        for reader in readers(config, edge.queue) {
            via.entry(reader).or_insert(None);
            frontier.push(reader);
        }
        while !via.contains_key(edge.pipeline) && !frontier.is_empty() {
            let mut next = Vec::new();
            for pipeline in frontier {
                for o in outputs.iter().filter(|o| o.pipeline == pipeline) {
                    for reader in readers(config, o.queue) {
                        if !via.contains_key(reader) {
                            via.insert(reader, Some(pipeline));
                            next.push(reader);
                        }
                    }
                }
            }
            frontier = next;
        }
        let Some(mut step) = via.get(edge.pipeline).copied() else {
            continue;
        };
        let mut through = Vec::new();
        while let Some(p) = step {
            through.push(format!("`{p}`"));
            step = via[p];
        }
        through.reverse();
        let loop_text = if through.is_empty() {
            format!("which pipeline `{}` itself reads", edge.pipeline)
        } else {
            format!(
                "whose events come back to pipeline `{}` through pipeline(s) {}",
                edge.pipeline,
                through.join(" → ")
            )
        };
        let path: Vec<&str> = edge.path.iter().map(String::as_str).collect();
        out.push(at.diagnostic(
            at.value(&path),
            Severity::Error,
            codes::CYCLE,
            format!(
                "pipeline `{}` writes into queue `{}`, {loop_text}: a cycle, each event would \
                 keep producing more",
                edge.pipeline, edge.queue
            ),
            Some(format!(
                "write into a queue that pipeline `{}` and the pipelines after it do not read",
                edge.pipeline
            )),
        ));
    }
}

fn shared_dead_letters(config: &Config, at: &Locations, out: &mut Vec<Diagnostic>) {
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for (name, pipeline) in &config.pipelines {
        match owners.get(pipeline.dead_letter.as_str()) {
            Some(owner) => out.push(
                at.diagnostic(
                    at.value(&["pipelines", name, "dead_letter"])
                        .or_else(|| at.key(&["pipelines", name])),
                    Severity::Error,
                    codes::SHARED_DEAD_LETTER,
                    format!(
                        "pipeline `{name}` uses dead-letter queue `{}`, which is already pipeline \
                         `{owner}`'s",
                        pipeline.dead_letter
                    ),
                    Some(format!(
                        "give each pipeline its own, e.g. `dead_letter = \"{name}.dlq\"`"
                    )),
                ),
            ),
            None => {
                owners.insert(&pipeline.dead_letter, name);
            }
        }
    }
}

fn shadowed_patterns(config: &Config, at: &Locations, out: &mut Vec<Diagnostic>) {
    for (index, (name, queue)) in config.queues.iter().enumerate() {
        // A queue all of whose patterns are shadowed gets one V026 instead.
        if unreachable(config, index) {
            continue;
        }
        for (i, pattern) in queue.types.iter().enumerate() {
            let Some(earlier) = shadowed_by(config, index, pattern) else {
                continue;
            };
            let i = i.to_string();
            out.push(at.diagnostic(
                at.value(&["queues", name, "types", &i]),
                Severity::Warning,
                codes::PATTERN_SHADOWED,
                format!(
                    "type pattern \"{pattern}\" of queue `{name}` never matches: queue `{earlier}` \
                     comes first and takes every type it matches"
                ),
                Some(format!(
                    "remove \"{pattern}\", or move queue `{name}` above queue `{earlier}`"
                )),
            ));
        }
    }
}

fn unreachable_pipelines(config: &Config, at: &Locations, out: &mut Vec<Diagnostic>) {
    for (name, pipeline) in &config.pipelines {
        // `unreachable` counts a queue a pipeline or a queue sink writes into as reached.
        let all_unreachable = !pipeline.from.is_empty()
            && pipeline.from.iter().all(|q| {
                config
                    .queues
                    .get_index_of(q)
                    .is_some_and(|i| unreachable(config, i))
            });
        if all_unreachable {
            out.push(
                at.diagnostic(
                    at.value(&["pipelines", name, "from"])
                        .or_else(|| at.key(&["pipelines", name])),
                    Severity::Warning,
                    codes::PIPELINE_UNREACHABLE,
                    format!(
                        "pipeline `{name}` will never receive an event: every queue it reads is \
                     shadowed by earlier queues"
                    ),
                    Some(
                        "read a queue events can reach, or move its queues above the ones that \
                     shadow them"
                            .to_owned(),
                    ),
                ),
            );
        }
    }
}

fn retries_above_starvation(config: &Config, at: &Locations, out: &mut Vec<Diagnostic>) {
    for (name, pipeline) in &config.pipelines {
        // The starvation bound only means something across several queues, and with more than
        // one worker the others keep serving while one batch is retried.
        if pipeline.from.len() < 2 || pipeline.workers > 1 {
            continue;
        }
        // The slowest of its sinks bounds how long one batch can be retried.
        let (hold, slowest) = pipeline
            .sinks()
            .into_iter()
            .map(|s| (retry_hold(pipeline, config.sinks.get(s)), s))
            .max()
            .expect("a pipeline has a sink");
        if hold <= pipeline.starvation_max {
            continue;
        }
        let retry = &pipeline.retry;
        let span = at
            .value(&["pipelines", name, "retry", "backoff_max"])
            .or_else(|| at.value(&["pipelines", name, "retry"]))
            .or_else(|| at.value(&["pipelines", name, "starvation_max"]))
            .or_else(|| at.key(&["pipelines", name]));
        out.push(at.diagnostic(
            span,
            Severity::Warning,
            codes::RETRY_ABOVE_STARVATION,
            format!(
                "a batch being retried can hold pipeline `{name}`'s only worker for {} \
                 ({} attempts, waits up to {} each{}), longer than its `starvation_max` of {}: \
                 while a sink fails, events of its less urgent queues wait that long",
                format_duration(hold),
                retry.attempts_max,
                format_duration(retry.backoff_max),
                match config.sinks.get(slowest) {
                    Some(SinkConfig::Http { timeout, .. }) =>
                        format!(", plus a {} timeout per attempt", format_duration(*timeout)),
                    Some(SinkConfig::Nats(nats)) =>
                        format!(", plus a {} timeout per attempt", format_duration(nats.timeout)),
                    Some(SinkConfig::Postgres(p)) =>
                        format!(", plus a {} timeout per attempt", format_duration(p.timeout)),
                    _ => String::new(),
                },
                format_duration(pipeline.starvation_max)
            ),
            Some(
                "lower `retry.attempts_max` or `retry.backoff_max`, raise `starvation_max`, or \
                 set `workers = 2` or more"
                    .to_owned(),
            ),
        ));
    }
}

fn memory_queues_feeding_delivery(config: &Config, at: &Locations, out: &mut Vec<Diagnostic>) {
    for (queue_name, queue) in &config.queues {
        if queue.durability != Durability::Memory {
            continue;
        }
        let delivering: Vec<String> = config
            .pipelines
            .iter()
            .filter(|(_, p)| p.from.contains(queue_name))
            .flat_map(|(p, pipeline)| {
                pipeline.sinks().into_iter().filter_map(move |sink| {
                    match config.sinks.get(sink)? {
                        SinkConfig::File { .. } => Some(format!("`{p}` (file sink `{sink}`)")),
                        SinkConfig::Http { .. } => Some(format!("`{p}` (http sink `{sink}`)")),
                        SinkConfig::Nats(_) => Some(format!("`{p}` (nats sink `{sink}`)")),
                        SinkConfig::Postgres(_) => Some(format!("`{p}` (postgres sink `{sink}`)")),
                        SinkConfig::Queue { .. } => Some(format!("`{p}` (queue sink `{sink}`)")),
                        SinkConfig::Custom(c) => {
                            Some(format!("`{p}` ({} sink `{sink}`)", c.type_name))
                        }
                        SinkConfig::Stdout | SinkConfig::Blackhole => None,
                    }
                })
            })
            .collect();
        if delivering.is_empty() {
            continue;
        }
        out.push(
            at.diagnostic(
                at.value(&["queues", queue_name, "durability"])
                    .or_else(|| at.key(&["queues", queue_name])),
                Severity::Warning,
                codes::MEMORY_QUEUE_DELIVERING_SINK,
                format!(
                    "queue `{queue_name}` keeps events in memory only, but pipeline(s) {} promise \
                 at-least-once delivery: a crash or restart loses every event still queued",
                    delivering.join(", ")
                ),
                Some(
                    "use `durability = \"fsync\"` (or \"interval\") for events that must arrive"
                        .to_owned(),
                ),
            ),
        );
    }
}

/// Free space on the disk of `data_dir`, as measured by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeDisk<'a> {
    /// The directory measured: `data_dir`, or its nearest existing ancestor.
    pub measured: &'a Path,
    /// Bytes available to the engine's user.
    pub available_bytes: u64,
}

/// `max_bytes` against the free disk of `data_dir`: each on-disk queue alone (V040), else all of
/// them together (V041). `memory` queues take no disk.
pub fn disk_space(config: &Config, at: &Locations, disk: FreeDisk<'_>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let free = ByteSize(disk.available_bytes);
    let on_disk = || {
        config
            .queues
            .iter()
            .filter(|(_, q)| q.durability != Durability::Memory)
    };
    for (name, queue) in on_disk() {
        if queue.max_bytes.0 <= disk.available_bytes {
            continue;
        }
        out.push(at.diagnostic(
            at.value(&["queues", name, "max_bytes"])
                .or_else(|| at.key(&["queues", name])),
            Severity::Warning,
            codes::QUEUE_ABOVE_FREE_DISK,
            format!(
                "queue `{name}` may hold {} (`max_bytes`), more than the {free} free on the disk \
                 of `data_dir` ({}): the disk fills before the queue's bound applies",
                queue.max_bytes,
                disk.measured.display()
            ),
            Some(format!(
                "lower `max_bytes` below {free}, or give `data_dir` a disk with more room"
            )),
        ));
    }
    let total: u64 = on_disk().map(|(_, q)| q.max_bytes.0).sum();
    if out.is_empty() && total > disk.available_bytes {
        out.push(at.diagnostic(
            at.value(&["data_dir"]),
            Severity::Warning,
            codes::QUEUES_ABOVE_FREE_DISK,
            format!(
                "the queues may hold {} together (the sum of their `max_bytes`), more than the \
                 {free} free on the disk of `data_dir` ({}): full queues fill the disk",
                ByteSize(total),
                disk.measured.display()
            ),
            Some("lower some queues' `max_bytes`, or give `data_dir` more room".to_owned()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse_str_with_env;
    use super::*;

    const CORES: usize = 2;

    /// `(code, line, col)` of every diagnostic loading `src` reports, errors or warnings.
    fn found(src: &str) -> Vec<(&'static str, usize, usize)> {
        let diagnostics = match parse_str_with_env(src, "veltrix.toml", CORES, &|_| None) {
            Ok(loaded) => loaded.warnings,
            Err(errors) => errors,
        };
        diagnostics
            .iter()
            .map(|d| (d.code.expect("every diagnostic has a code"), d.line, d.col))
            .collect()
    }

    fn config(src: &str) -> (Config, Locations) {
        let loaded = parse_str_with_env(src, "veltrix.toml", CORES, &|_| None).unwrap();
        (loaded.config, loaded.locations)
    }

    const TAIL: &str = "\n[sinks.out]\ntype = \"blackhole\"\n";

    #[test]
    fn a_pattern_shadowed_by_an_earlier_queue_is_reported_at_the_pattern() {
        let src = format!(
            "[queues.orders]\ntypes = [\"order.*\"]\n\
             [queues.special]\ntypes = [\"order.created.eu\", \"refund.*\", \"order.x*\"]\n\
             [queues.rest]\ntypes = [\"*\"]\n\
             [pipelines.p]\nfrom = [\"orders\", \"special\", \"rest\"]\nworkers = 2\nsink = \"out\"\n{TAIL}"
        );
        assert_eq!(
            found(&src),
            vec![
                (codes::PATTERN_SHADOWED, 4, 10),
                (codes::PATTERN_SHADOWED, 4, 42)
            ]
        );
    }

    #[test]
    fn a_pipeline_reading_only_unreachable_queues_is_reported_at_its_from() {
        let src = format!(
            "[queues.all]\ntypes = [\"*\"]\n\
             [queues.never]\ntypes = [\"a.*\"]\n\
             [pipelines.p]\nfrom = [\"all\"]\nsink = \"out\"\n\
             [pipelines.q]\nfrom = [\"never\"]\nsink = \"out\"\n{TAIL}"
        );
        assert_eq!(
            found(&src),
            vec![
                (codes::QUEUE_UNREACHABLE, 4, 9),
                (codes::PIPELINE_UNREACHABLE, 9, 8),
            ]
        );
    }

    #[test]
    fn a_queue_nobody_reads_and_a_sink_nobody_writes_have_codes() {
        let src = "[queues.a]\ntypes = [\"*\"]\n[queues.b]\ntypes = [\"b\"]\n\
                   [pipelines.p]\nfrom = \"a\"\nsink = \"out\"\n\
                   [sinks.out]\ntype = \"blackhole\"\n[sinks.spare]\ntype = \"stdout\"\n";
        assert_eq!(
            found(src),
            vec![
                (codes::QUEUE_UNREAD, 3, 9),
                (codes::QUEUE_UNREACHABLE, 4, 9),
                (codes::SINK_UNUSED, 10, 8),
            ]
        );
    }

    #[test]
    fn retries_longer_than_the_starvation_bound_warn_for_a_single_worker() {
        let src = format!(
            "[queues.urgent]\ntypes = [\"pay.*\"]\npriority = 0\n\
             [queues.rest]\ntypes = [\"*\"]\n\
             [pipelines.p]\nfrom = [\"urgent\", \"rest\"]\nstarvation_max = \"5s\"\n\
             retry = {{ attempts_max = 3, backoff_max = \"10s\" }}\nsink = \"out\"\n{TAIL}"
        );
        assert_eq!(found(&src), vec![(codes::RETRY_ABOVE_STARVATION, 9, 43)]);
        // 2 waits of 2 s fit in 5 s; with two workers, or one queue, no warning either.
        let fits = src.replace("\"10s\"", "\"2s\"");
        assert_eq!(found(&fits), vec![]);
        let two_workers = src.replace("sink = \"out\"\n", "workers = 2\nsink = \"out\"\n");
        assert_eq!(found(&two_workers), vec![]);
        // Defaults: 4 waits of 30 s; reported at the pipeline's name when nothing is written.
        let defaults = format!(
            "[queues.urgent]\ntypes = [\"pay.*\"]\n[queues.rest]\ntypes = [\"*\"]\n\
             [pipelines.p]\nfrom = [\"urgent\", \"rest\"]\nsink = \"out\"\n{TAIL}"
        );
        assert_eq!(
            found(&defaults),
            vec![(codes::RETRY_ABOVE_STARVATION, 5, 12)]
        );
    }

    #[test]
    fn the_http_timeout_counts_in_the_retry_hold() {
        let (config, _) = config(
            "[queues.a]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = \"a\"\nsink = \"h\"\n\
             retry = { attempts_max = 3, backoff_initial = \"1s\", backoff_max = \"2s\" }\n\
             [sinks.h]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\ntimeout = \"1s\"\n",
        );
        let p = &config.pipelines["p"];
        assert_eq!(
            retry_hold(p, config.sinks.get(&p.sink)),
            Duration::from_secs(2 * 2 + 3)
        );
    }

    #[test]
    fn a_memory_queue_feeding_a_file_or_http_sink_warns_at_its_durability() {
        let src = "[queues.a]\ntypes = [\"*\"]\ndurability = \"memory\"\n\
                   [pipelines.p]\nfrom = \"a\"\nsink = \"f\"\n\
                   [pipelines.q]\nfrom = \"a\"\nsink = \"b\"\n\
                   [sinks.f]\ntype = \"file\"\npath = \"/tmp/x\"\n[sinks.b]\ntype = \"blackhole\"\n";
        assert_eq!(
            found(src),
            vec![(codes::MEMORY_QUEUE_DELIVERING_SINK, 3, 14)]
        );
        let lossy_ok = src.replace("sink = \"f\"", "sink = \"b\"");
        assert_eq!(
            found(&lossy_ok),
            vec![(codes::SINK_UNUSED, 10, 8)],
            "a blackhole sink promises nothing"
        );
    }

    #[test]
    fn two_pipelines_sharing_a_dead_letter_queue_is_an_error() {
        let src = format!(
            "[queues.a]\ntypes = [\"*\"]\n\
             [pipelines.p]\nfrom = \"a\"\nsink = \"out\"\n\
             [pipelines.q]\nfrom = \"a\"\nsink = \"out\"\ndead_letter = \"p.dlq\"\n{TAIL}"
        );
        assert_eq!(found(&src), vec![(codes::SHARED_DEAD_LETTER, 9, 15)]);
    }

    #[test]
    fn max_bytes_above_the_free_disk_warns_per_queue_then_in_total() {
        let (config, at) = config(&format!(
            "data_dir = \"/d\"\n[queues.big]\ntypes = [\"b\"]\nmax_bytes = \"2GiB\"\n\
             [queues.mem]\ntypes = [\"m\"]\nmax_bytes = \"8GiB\"\ndurability = \"memory\"\n\
             [queues.rest]\ntypes = [\"*\"]\n\
             [pipelines.p]\nfrom = [\"big\", \"mem\", \"rest\"]\nworkers = 2\nsink = \"out\"\n{TAIL}"
        ));
        let disk = |gib: u64| FreeDisk {
            measured: Path::new("/d"),
            available_bytes: gib * ByteSize::GIB,
        };
        let codes_at = |d: Vec<Diagnostic>| -> Vec<_> {
            d.iter().map(|d| (d.code.unwrap(), d.line, d.col)).collect()
        };
        // `big` alone (2 GiB) and the default 1 GiB of `rest` (at its name) exceed 0.5 GiB.
        let half = FreeDisk {
            available_bytes: ByteSize::GIB / 2,
            ..disk(0)
        };
        assert_eq!(
            codes_at(disk_space(&config, &at, half)),
            vec![
                (codes::QUEUE_ABOVE_FREE_DISK, 4, 13),
                (codes::QUEUE_ABOVE_FREE_DISK, 9, 9)
            ]
        );
        // Each fits in 2 GiB, not both (3 GiB); the memory queue's 8 GiB never count.
        assert_eq!(
            codes_at(disk_space(&config, &at, disk(2))),
            vec![(codes::QUEUES_ABOVE_FREE_DISK, 1, 12)]
        );
        assert!(disk_space(&config, &at, disk(3)).is_empty());
    }

    #[test]
    fn locations_map_interpolated_values_back_to_the_file_as_written() {
        let src = "data_dir = \"${D:-/x}\"\n[queues.q]\ntypes = [\"*\"]\nmax_bytes = \"${M}\"\n\
                   [pipelines.p]\nfrom = \"q\"\nsink = \"out\"\n[sinks.out]\ntype = \"blackhole\"\n";
        let loaded = parse_str_with_env(src, "f.toml", CORES, &|v| {
            (v == "M").then(|| "64MiB".to_owned())
        })
        .unwrap();
        let at = &loaded.locations;
        let d = at.diagnostic(
            at.value(&["queues", "q", "max_bytes"]),
            Severity::Warning,
            codes::QUEUE_ABOVE_FREE_DISK,
            "m",
            None,
        );
        assert_eq!((d.line, d.col), (4, 13));
        let d = at.diagnostic(
            at.key(&["queues", "q"]),
            Severity::Warning,
            codes::DATA_ORPHANED,
            "m",
            None,
        );
        assert_eq!((d.line, d.col), (2, 9));
        let d = at.diagnostic(None, Severity::Warning, codes::DATA_ORPHANED, "m", None);
        assert_eq!((d.line, d.col, d.file.as_str()), (1, 1, "f.toml"));
    }

    #[test]
    fn covering_patterns() {
        let p = |s: &str| TypePattern::new(s).unwrap();
        assert!(covers(&p("*"), &p("a.?")));
        assert!(covers(&p("a.*"), &p("a.b")));
        assert!(covers(&p("a.*"), &p("a.b.*")));
        assert!(covers(&p("a?"), &p("ab")));
        assert!(!covers(&p("a.*"), &p("b.*")));
        assert!(!covers(&p("a.b"), &p("a.*")));
        assert!(
            !covers(&p("a?*"), &p("ab*")),
            "only the simple shapes are compared"
        );
    }
}
