//! The configuration: TOML schema, validation and diagnostics.
//!
//! Loading runs in three steps, each reporting every problem it finds:
//! 1. `${VAR}` / `${VAR:-default}` interpolation of the text as written (rules in
//!    `interpolate.rs`);
//! 2. TOML parsing into a spanned tree (`toml::de::DeTable`: every key and value keeps its byte
//!    range);
//! 3. decoding that tree by hand into [`Config`]: types, units, ranges, unknown keys (with "did
//!    you mean"), references between sections, glob patterns, VRL compilation; then warnings for
//!    legal but suspicious settings.
//!
//! Invariant: every [`Diagnostic`] points at the offending key or value in the file as written
//! (interpolation is mapped back), so `veltrix validate` can always print `file:line:col`.
//!
//! Decoding by hand rather than with serde derive is deliberate: it keeps exact spans for
//! semantic errors, reports all problems in one pass instead of the first, and gives every
//! message our wording.
//!
//! Defaults are safe: bounded queues with `fsync` durability, loopback addresses, one worker.
//! When a file defines none of `queues`, `pipelines` and `sinks`, the built-in topology of
//! [`Config::default_config`] is used (one catch-all queue into an NDJSON file).

mod diagnostic;
mod include;
mod interpolate;
pub mod lints;
mod nats;
mod processors;
mod reference;
mod route;
mod template;
mod tests_section;
mod units;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde_spanned::Spanned;
use toml::de::{DeString, DeTable, DeValue};

pub use diagnostic::{Diagnostic, Severity};
pub use nats::{
    JetStreamConsumer, NatsSinkConfig, NatsSourceConfig, NatsSourceMode, nats_servers,
    nats_subject_problem,
};
pub use processors::{
    AggregateConfig, BatchConfig, DedupeConfig, ProcessorConfig, RouteConfig, SampleConfig,
    ThrottleConfig, WhenExceeded,
};
pub use reference::{KeyDoc, SectionDoc, reference, reference_markdown};
pub use route::{QueueIndex, Router, TypePattern};
pub use template::{Field, Template, TemplateError};
pub use tests_section::{ConfigTest, DeadLetterExpectation, Location};
pub use units::ByteSize;

use crate::expr::{ExprDiagnostic, ValueExpr};
use diagnostic::{Source, did_you_mean};
use lints::{Locations, codes};
use units::{format_duration, parse_duration};

/// Where data lives when the config does not say.
pub const DEFAULT_DATA_DIR: &str = "./veltrix-data";

/// The built-in default configuration, written out. Parsing it gives
/// `Config::default_config(DEFAULT_DATA_DIR)`; it doubles as a commented starting point.
pub const DEFAULT_CONFIG_TOML: &str = r#"# Veltrix's built-in default configuration (`veltrix run` without `-c`).
data_dir = "./veltrix-data"

[api]                        # admin API: health, readiness, metrics
address = "127.0.0.1:8081"

[sources.http]               # CloudEvents over HTTP: POST /v1/events
type = "http"
address = "127.0.0.1:8080"
body_bytes_max = "10MiB"

[queues.default]             # takes every event type
types = ["*"]
priority = 100               # 0 = most urgent
max_bytes = "1GiB"
max_events = 1000000
durability = "fsync"         # fsync | interval | memory
# fsync_interval = "100ms"   # the flush period of durability = "interval"
segment_bytes = "64MiB"

[pipelines.default]
from = ["default"]
workers = 1
processors = []
batch_events_max = 1000
sink = "default"

[sinks.default]
type = "file"
path = "./veltrix-data/out/events.ndjson"
"#;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Root of the queues' logs and the default sink's output.
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    /// Ingest sources, in file order.
    pub sources: IndexMap<String, SourceConfig>,
    /// Queues in file order: routing takes the first whose patterns match.
    pub queues: IndexMap<String, QueueConfig>,
    /// Pipelines in file order.
    pub pipelines: IndexMap<String, PipelineConfig>,
    /// Sinks in file order.
    pub sinks: IndexMap<String, SinkConfig>,
    /// `[[tests]]`: unit tests of the pipelines (`veltrix test`), in file order.
    pub tests: Vec<ConfigTest>,
}

/// `[api]`: the admin API (health, readiness, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Default `127.0.0.1:8081` (loopback).
    pub address: SocketAddr,
    /// When set, admin routes require `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Timeouts and the connection cap of the admin listener.
    pub limits: ListenerLimits,
}

/// What one HTTP listener (an http source or the admin API) allows a client: how long it may
/// take to send a request's head and body, and how many connections may be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// The request line and headers must arrive within this (also the idle keep-alive limit);
    /// default 10 s.
    pub header_timeout: Duration,
    /// A request body must arrive within this once its handler starts reading it (408 after);
    /// default 30 s.
    pub body_timeout: Duration,
    /// Connections open at once; more wait in the accept backlog. Default 1024.
    pub connections_max: usize,
}

/// `[sources.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// `type = "http"`: CloudEvents over HTTP.
    Http(HttpSourceConfig),
    /// `type = "generator"`: synthetic CloudEvents at a fixed rate (demos, benchmarks, tests).
    Generator(GeneratorSourceConfig),
    /// `type = "file"`: tails NDJSON files matching globs, with checkpoints.
    File(FileSourceConfig),
    /// `type = "stdin"`: NDJSON on standard input.
    Stdin(StdinSourceConfig),
    /// `type = "nats"`: a JetStream durable consumer (at-least-once) or a core subscription.
    Nats(NatsSourceConfig),
}

/// `[sources.NAME]` with `type = "file"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSourceConfig {
    /// Path globs of the files to tail (required, non-empty; validated patterns).
    pub include: Vec<String>,
    /// Path globs of matching files to leave alone; default none.
    pub exclude: Vec<String>,
    /// Where to start in files seen for the first time at startup; default the beginning.
    pub read_from: ReadFrom,
    /// How often to look for new files, rotations and new lines; default 250 ms.
    pub poll_interval: Duration,
    /// Longest line kept; longer lines are skipped and counted. Default 1 MiB.
    pub line_bytes_max: ByteSize,
    /// Most lines stored per append; default 500.
    pub batch_events: u64,
    /// Most files open at once; further matching files wait. Default 1024.
    pub open_files_max: u64,
    /// Where the read positions are kept; default `<data_dir>/sources/NAME`.
    pub checkpoint_dir: PathBuf,
}

/// Where a file source starts in a file it has no checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Beginning,
    /// After the last complete line, for files that exist at startup; files that appear later
    /// are always read from the beginning (they are new, e.g. after a rotation).
    End,
}

/// `[sources.NAME]` with `type = "stdin"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdinSourceConfig {
    /// Longest line kept; longer lines are skipped and counted. Default 1 MiB.
    pub line_bytes_max: ByteSize,
    /// Most lines stored per append; default 500.
    pub batch_events: u64,
    /// At the end of input, stop the engine once every pipeline delivered what was read;
    /// default true.
    pub exit_on_eof: bool,
}

/// `[sources.NAME]` with `type = "generator"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorSourceConfig {
    /// Events per second; default 1000.
    pub rate: u64,
    /// Stop after this many events; default: never.
    pub count: Option<u64>,
    /// Event types with their weights, in file order (`types = ["a", "b"]` weighs them equally;
    /// `types = { a = 3, b = 1 }` sends three `a` for one `b`). Default `["veltrix.generated"]`.
    pub types: Vec<(String, u32)>,
    /// Bytes of `data` per event (padded with a `pad` string); default 200.
    pub payload_bytes: u64,
    /// Distinct values of `data.key` (`"k0"` to `"k<keys-1>"`, cycling); default 100.
    pub keys: u64,
    /// The CloudEvents `source` attribute; default `/veltrix/generator/NAME`.
    pub source: String,
    /// Events stored per call (one append per queue); default 100.
    pub batch_events: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSourceConfig {
    /// Default `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// Largest accepted request body; default 10 MiB.
    pub body_bytes_max: ByteSize,
    /// When non-empty, a request needs `Authorization: Bearer <one of these>`.
    pub tokens: Vec<String>,
    /// Timeouts and the connection cap of the source's listener.
    pub limits: ListenerLimits,
}

/// `[queues.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Glob patterns over the event `type` (required, non-empty).
    pub types: Vec<TypePattern>,
    /// 0 is the most urgent; default 100.
    pub priority: u8,
    /// Backlog bound in bytes; default 1 GiB.
    pub max_bytes: ByteSize,
    /// Backlog bound in events; default 1,000,000.
    pub max_events: u64,
    /// Default [`Durability::Fsync`].
    pub durability: Durability,
    /// Flush period for [`Durability::Interval`]; default 100 ms.
    pub fsync_interval: Duration,
    /// Log segment size; default 64 MiB.
    pub segment_bytes: ByteSize,
    /// What a full queue does with new events; default [`WhenFull::Backpressure`].
    pub when_full: WhenFull,
}

/// What happens when a queue is at `max_bytes` or `max_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse: HTTP producers get 429 with `Retry-After`; nothing is lost.
    Backpressure,
    /// Accept the request but drop its events that do not fit (counted, logged).
    DropNewest,
    /// Make room by dropping the oldest events, whole segments at a time (counted, logged).
    DropOldest,
}

/// When an event counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged only once on disk (fsync, group-committed).
    Fsync,
    /// Acknowledged when written; flushed every `fsync_interval` (that is the loss window).
    Interval,
    /// Kept in memory only; lost on a crash.
    Memory,
}

/// `[pipelines.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Queues read, by name (each names a queue of [`Config::queues`]).
    pub from: Vec<String>,
    /// Worker count; default 1.
    pub workers: usize,
    /// Run in order on every event.
    pub processors: Vec<ProcessorConfig>,
    /// The sink written to (names a sink of [`Config::sinks`]): every event no route takes.
    pub sink: String,
    /// Tried in order on every processed event; the first whose condition holds sends the
    /// event to its sink instead of `sink`.
    pub routes: Vec<RouteConfig>,
    /// Most events handed to the sink at once; default 1000.
    pub batch_events_max: usize,
    /// An event waiting this long in a less urgent queue is served next regardless of
    /// priorities; default 5 s.
    pub starvation_max: Duration,
    /// How failed deliveries are retried.
    pub retry: RetryConfig,
    /// The queue that takes events whose delivery failed for good; default `<pipeline>.dlq`.
    /// It is internal to the pipeline (not routable) and durable.
    pub dead_letter: String,
}

/// `retry = { attempts_max = 5, backoff_initial = "200ms", backoff_max = "30s" }`: exponential
/// backoff with full jitter between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Delivery attempts in all (the first one included); default 5.
    pub attempts_max: u32,
    /// Upper bound of the first wait; default 200 ms.
    pub backoff_initial: Duration,
    /// Upper bound of any wait; default 30 s.
    pub backoff_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts_max: DEFAULT_ATTEMPTS_MAX,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl PipelineConfig {
    /// Every sink the pipeline writes to, each once: `sink` first, then the routes' sinks in
    /// file order.
    pub fn sinks(&self) -> Vec<&str> {
        let mut sinks = vec![self.sink.as_str()];
        for route in &self.routes {
            if !sinks.contains(&route.sink.as_str()) {
                sinks.push(&route.sink);
            }
        }
        sinks
    }

    /// A pipeline with every setting at its default.
    pub fn new(name: &str, from: Vec<String>, sink: String) -> PipelineConfig {
        PipelineConfig {
            from,
            workers: DEFAULT_WORKERS,
            processors: Vec::new(),
            sink,
            routes: Vec::new(),
            batch_events_max: DEFAULT_BATCH_EVENTS_MAX,
            starvation_max: DEFAULT_STARVATION_MAX,
            retry: RetryConfig::default(),
            dead_letter: format!("{name}.dlq"),
        }
    }
}

/// A handler of a type registered through [`Extensions`] (a custom processor or sink).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomConfig {
    /// The registered `type` name.
    pub type_name: String,
    /// Every key of the table but `type`, as a JSON object.
    pub options: serde_json::Value,
}

/// Checks a custom handler's options; `Err` says what is wrong (reported at the table).
pub type OptionsValidator =
    std::sync::Arc<dyn Fn(&serde_json::Value) -> Result<(), String> + Send + Sync>;

/// Handler types an embedding program registered (Veltrix as a library): the decoder accepts
/// them as `type = "..."` of a processor or a sink and validates their options with the
/// registered validator, so `veltrix validate` reports their mistakes like any other.
#[derive(Clone, Default)]
pub struct Extensions {
    pub processors: Vec<(String, OptionsValidator)>,
    pub sinks: Vec<(String, OptionsValidator)>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names =
            |v: &[(String, OptionsValidator)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        f.debug_struct("Extensions")
            .field("processors", &names(&self.processors))
            .field("sinks", &names(&self.sinks))
            .finish()
    }
}

/// `[sinks.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// `type = "file"`: NDJSON, one CloudEvent per line.
    File { path: PathBuf },
    /// `type = "stdout"`: NDJSON on standard output.
    Stdout,
    /// `type = "blackhole"`: discards (for benchmarks).
    Blackhole,
    /// `type = "http"`: POSTs each batch as `application/cloudevents-batch+json`, with at most
    /// `concurrency` requests in flight.
    Http {
        url: String,
        timeout: Duration,
        concurrency: Concurrency,
    },
    /// `type = "nats"`: publishes each event to a subject (JetStream with PubAcks, or core).
    Nats(NatsSinkConfig),
    /// `type = "postgres"`: inserts each batch into a table, one transaction per batch.
    Postgres(PostgresSinkConfig),
    /// `type = "queue"`: appends each batch to another configured queue (multi-stage
    /// pipelines).
    Queue { queue: String },
    /// A sink type registered by the embedding program ([`Extensions`]).
    Custom(CustomConfig),
}

/// How many requests an http sink keeps in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Exactly this many (`concurrency = 8`).
    Fixed(usize),
    /// A limit that adapts to the receiver (AIMD), starting at `initial`, never above `max`
    /// (`concurrency = "adaptive"` or `{ initial = 1, max = 64 }`).
    Adaptive { initial: usize, max: usize },
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency::Adaptive {
            initial: DEFAULT_CONCURRENCY_INITIAL,
            max: DEFAULT_CONCURRENCY_MAX,
        }
    }
}

/// `[sinks.NAME]` with `type = "postgres"`.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresSinkConfig {
    /// `postgres://user:password@host:port/database?...` (libpq URL; no TLS).
    pub url: String,
    /// Default `public`.
    pub schema: String,
    pub table: String,
    /// Create the table (if missing) before the first insert; default true.
    pub create_table: bool,
    /// Most connections open at once; default 4.
    pub pool_size: usize,
    /// The longest one batch may take, connecting included; default 10 s.
    pub timeout: Duration,
    /// Extra columns, each filled by a VRL expression, in file order.
    pub columns: Vec<PostgresColumn>,
}

/// One mapped column of a PostgreSQL sink.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresColumn {
    /// A plain SQL identifier (letters, digits, `_`; not one of the fixed columns).
    pub name: String,
    pub sql_type: ColumnType,
    /// Evaluated on each event; `null` stores NULL.
    pub expr: ValueExpr,
}

/// The SQL type of a mapped column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Jsonb,
    Bigint,
    DoublePrecision,
    Numeric,
    Boolean,
    Timestamptz,
}

impl ColumnType {
    /// Every type, as written in the config and in SQL.
    pub const ALL: [(&'static str, ColumnType); 7] = [
        ("text", ColumnType::Text),
        ("jsonb", ColumnType::Jsonb),
        ("bigint", ColumnType::Bigint),
        ("double precision", ColumnType::DoublePrecision),
        ("numeric", ColumnType::Numeric),
        ("boolean", ColumnType::Boolean),
        ("timestamptz", ColumnType::Timestamptz),
    ];

    /// The type's SQL name.
    pub fn sql(self) -> &'static str {
        ColumnType::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("text", |(name, _)| name)
    }
}

/// A successfully loaded config and its warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
    /// Where every key and value is in the file, for checks that run after loading.
    pub locations: Locations,
}

const DEFAULT_API_ADDRESS: &str = "127.0.0.1:8081";
const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:8080";
const DEFAULT_BODY_BYTES_MAX: u64 = 10 * ByteSize::MIB;
const DEFAULT_PRIORITY: u8 = 100;
const DEFAULT_MAX_BYTES: u64 = ByteSize::GIB;
const DEFAULT_MAX_EVENTS: u64 = 1_000_000;
const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_SEGMENT_BYTES: u64 = 64 * ByteSize::MIB;
const DEFAULT_WORKERS: usize = 1;
const DEFAULT_BATCH_EVENTS_MAX: usize = 1000;
const DEFAULT_STARVATION_MAX: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS_MAX: u32 = 5;
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONCURRENCY_INITIAL: usize = 1;
const DEFAULT_CONCURRENCY_MAX: usize = 64;
const CONCURRENCY_MAX_MAX: i64 = 1024;
const DEFAULT_POSTGRES_SCHEMA: &str = "public";
const DEFAULT_POSTGRES_POOL_SIZE: usize = 4;
const POSTGRES_POOL_SIZE_MAX: i64 = 256;
const DEFAULT_POSTGRES_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL's identifier limit (NAMEDATALEN − 1).
const SQL_IDENTIFIER_BYTES_MAX: usize = 63;
/// The columns every PostgreSQL sink table has (mapped columns take other names).
pub const POSTGRES_FIXED_COLUMNS: [&str; 6] = ["id", "source", "type", "time", "subject", "data"];
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECTIONS_MAX: usize = 1024;
/// Beyond these a listener limit is a mistake (a slow client could hold a slot for longer).
const HEADER_TIMEOUT_MAX: Duration = Duration::from_secs(5 * 60);
const BODY_TIMEOUT_MAX: Duration = Duration::from_secs(60 * 60);
const CONNECTIONS_MAX_MAX: i64 = 65_536;
const ATTEMPTS_MAX_MAX: i64 = 1000;

/// Limits on settings: beyond them a value is a mistake, not a tuning choice.
const WORKERS_MAX: i64 = 1024;
const BATCH_EVENTS_MAX_MAX: i64 = 1_000_000;
const BODY_BYTES_MAX_MAX: u64 = ByteSize::GIB;
const SEGMENT_BYTES_MIN: u64 = 4 * ByteSize::KIB;
const SEGMENT_BYTES_MAX: u64 = ByteSize::GIB;
const NAME_LEN_MAX: usize = 64;
const GENERATOR_RATE_MAX: i64 = 100_000_000;
const GENERATOR_PAYLOAD_MAX: i64 = 1024 * 1024;
const DEFAULT_LINE_BYTES_MAX: u64 = ByteSize::MIB;
/// The queues' record limit: a longer line could never be stored.
const LINE_BYTES_MAX_MAX: u64 = 8 * ByteSize::MIB;
const DEFAULT_LINE_BATCH_EVENTS: u64 = 500;
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
const DEFAULT_OPEN_FILES_MAX: u64 = 1024;
const OPEN_FILES_MAX_MAX: i64 = 65_536;
/// Warn when a pipeline has more than this many workers per core.
const WORKERS_PER_CORE_WARN: usize = 4;

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            types: Vec::new(),
            priority: DEFAULT_PRIORITY,
            max_bytes: ByteSize(DEFAULT_MAX_BYTES),
            max_events: DEFAULT_MAX_EVENTS,
            durability: Durability::Fsync,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
            segment_bytes: ByteSize(DEFAULT_SEGMENT_BYTES),
            when_full: WhenFull::Backpressure,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            address: DEFAULT_API_ADDRESS.parse().expect("valid default address"),
            token: None,
            limits: ListenerLimits::default(),
        }
    }
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            connections_max: DEFAULT_CONNECTIONS_MAX,
        }
    }
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        HttpSourceConfig {
            address: DEFAULT_HTTP_ADDRESS.parse().expect("valid default address"),
            body_bytes_max: ByteSize(DEFAULT_BODY_BYTES_MAX),
            tokens: Vec::new(),
            limits: ListenerLimits::default(),
        }
    }
}

impl Config {
    /// The built-in default: HTTP ingest on 127.0.0.1:8080, admin API on 127.0.0.1:8081, one
    /// catch-all queue `default`, one pipeline `default` writing NDJSON to
    /// `<data_dir>/out/events.ndjson` through the file sink `default`.
    pub fn default_config(data_dir: impl Into<PathBuf>) -> Config {
        let data_dir = data_dir.into();
        let mut config = Config {
            data_dir,
            api: ApiConfig::default(),
            sources: IndexMap::from([(
                "http".to_owned(),
                SourceConfig::Http(HttpSourceConfig::default()),
            )]),
            queues: IndexMap::new(),
            pipelines: IndexMap::new(),
            sinks: IndexMap::new(),
            tests: Vec::new(),
        };
        config.add_default_topology();
        config
    }

    fn add_default_topology(&mut self) {
        let name = "default".to_owned();
        self.queues.insert(
            name.clone(),
            QueueConfig {
                types: vec![TypePattern::new("*").expect("valid pattern")],
                ..QueueConfig::default()
            },
        );
        self.pipelines.insert(
            name.clone(),
            PipelineConfig::new(&name, vec![name.clone()], name.clone()),
        );
        self.sinks.insert(
            name,
            SinkConfig::File {
                path: self.data_dir.join("out").join("events.ndjson"),
            },
        );
    }
}

/// Loads and validates the config file at `path`. `cores` is the number of CPU cores available
/// (used only for warnings).
pub fn load(path: &Path, cores: usize) -> Result<Loaded, Vec<Diagnostic>> {
    load_with(path, cores, &Extensions::default())
}

/// [`load`] accepting the custom handler types of `extensions`.
pub fn load_with(
    path: &Path,
    cores: usize,
    extensions: &Extensions,
) -> Result<Loaded, Vec<Diagnostic>> {
    let file = path.display().to_string();
    let whole_file = |message: String| {
        vec![
            diagnostic::diagnostic_at(&file, "", 0..0, Severity::Error, message, None)
                .with_code(codes::UNREADABLE),
        ]
    };
    let bytes =
        std::fs::read(path).map_err(|e| whole_file(format!("cannot read the config file: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(text) => parse_str_with(&text, &file, cores, extensions, &|name| {
            std::env::var(name).ok()
        }),
        Err(e) => {
            // The text before the first bad byte is intact in the lossy copy.
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes());
            Err(vec![
                diagnostic::diagnostic_at(
                    &file,
                    &text,
                    at..at + 1,
                    Severity::Error,
                    "the config file is not valid UTF-8",
                    None,
                )
                .with_code(codes::UNREADABLE),
            ])
        }
    }
}

/// Parses and validates config text; `file_name` is used in diagnostics. Variables are read
/// from the process environment.
pub fn parse_str(src: &str, file_name: &str, cores: usize) -> Result<Loaded, Vec<Diagnostic>> {
    parse_str_with_env(src, file_name, cores, &|name| std::env::var(name).ok())
}

/// [`parse_str`] with variables looked up by `env` (tests, or callers with their own
/// environment).
pub fn parse_str_with_env(
    src: &str,
    file_name: &str,
    cores: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Vec<Diagnostic>> {
    parse_str_with(src, file_name, cores, &Extensions::default(), env)
}

/// [`parse_str_with_env`] accepting the custom handler types of `extensions`.
pub fn parse_str_with(
    src: &str,
    file_name: &str,
    cores: usize,
    extensions: &Extensions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Vec<Diagnostic>> {
    let expanded = interpolate::interpolate(src, env).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                diagnostic::diagnostic_at(
                    file_name,
                    src,
                    e.span,
                    Severity::Error,
                    e.message,
                    e.hint,
                )
                .with_code(codes::INTERPOLATION)
            })
            .collect::<Vec<_>>()
    })?;
    let source = Source {
        file: file_name,
        original: src,
        expanded,
    };
    let root = DeTable::parse(&source.expanded.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        vec![
            source
                .diagnostic(
                    Severity::Error,
                    span,
                    format!("invalid TOML: {}", e.message().trim_end()),
                    None,
                )
                .with_code(codes::TOML_SYNTAX),
        ]
    })?;
    let mut decoder = Decoder {
        source: &source,
        cores: cores.max(1),
        extensions,
        diagnostics: Vec::new(),
    };
    let mut config = decoder.root(&root);
    if !decoder.diagnostics.iter().any(Diagnostic::is_error) {
        let pipelines: Vec<&str> = config.pipelines.keys().map(String::as_str).collect();
        let mut tests = std::mem::take(&mut config.tests);
        decoder.include(root.get_ref(), &pipelines, &mut tests, env);
        config.tests = tests;
    }
    let mut diagnostics = decoder.diagnostics;
    let locations = Locations::new(&source, root.get_ref());
    if !diagnostics.iter().any(Diagnostic::is_error) {
        diagnostics.extend(lints::check(&config, &locations));
    }
    diagnostics.sort_by_key(|d| (d.line, d.col, d.severity));
    if diagnostics.iter().any(Diagnostic::is_error) {
        Err(diagnostics)
    } else {
        Ok(Loaded {
            config,
            warnings: diagnostics,
            locations,
        })
    }
}

type Value<'i> = Spanned<DeValue<'i>>;
type Key<'i> = Spanned<DeString<'i>>;

const ROOT_KEYS: &[&str] = &[
    "data_dir",
    "api",
    "sources",
    "queues",
    "pipelines",
    "sinks",
    "tests",
    "include",
];
const API_KEYS: &[&str] = &[
    "address",
    "token",
    "header_timeout",
    "body_timeout",
    "connections_max",
];
const HTTP_SOURCE_KEYS: &[&str] = &[
    "type",
    "address",
    "body_bytes_max",
    "tokens",
    "header_timeout",
    "body_timeout",
    "connections_max",
];
const GENERATOR_SOURCE_KEYS: &[&str] = &[
    "type",
    "rate",
    "count",
    "types",
    "payload_bytes",
    "keys",
    "source",
    "batch_events",
];
const FILE_SOURCE_KEYS: &[&str] = &[
    "type",
    "include",
    "exclude",
    "read_from",
    "poll_interval",
    "line_bytes_max",
    "batch_events",
    "open_files_max",
    "checkpoint_dir",
];
const STDIN_SOURCE_KEYS: &[&str] = &["type", "line_bytes_max", "batch_events", "exit_on_eof"];
/// Every source key (each source type takes `type` and its own subset).
const SOURCE_KEYS: &[&str] = &[
    "type",
    "address",
    "body_bytes_max",
    "tokens",
    "header_timeout",
    "body_timeout",
    "connections_max",
    "rate",
    "count",
    "types",
    "payload_bytes",
    "keys",
    "source",
    "batch_events",
    "include",
    "exclude",
    "read_from",
    "poll_interval",
    "line_bytes_max",
    "open_files_max",
    "checkpoint_dir",
    "exit_on_eof",
    "url",
    "mode",
    "stream",
    "subjects",
    "consumer",
    "create_stream",
    "ack_wait",
];
const QUEUE_KEYS: &[&str] = &[
    "types",
    "priority",
    "max_bytes",
    "max_events",
    "durability",
    "fsync_interval",
    "segment_bytes",
    "when_full",
];
const PIPELINE_KEYS: &[&str] = &[
    "from",
    "workers",
    "processors",
    "sink",
    "routes",
    "batch_events_max",
    "starvation_max",
    "retry",
    "dead_letter",
];
const RETRY_KEYS: &[&str] = &["attempts_max", "backoff_initial", "backoff_max"];
/// Every sink key (each sink type takes `type` and its own subset).
const SINK_KEYS: &[&str] = &[
    "type",
    "path",
    "url",
    "timeout",
    "subject",
    "jetstream",
    "msg_id",
    "concurrency",
    "queue",
    "schema",
    "table",
    "create_table",
    "pool_size",
    "columns",
];
const HTTP_SINK_KEYS: &[&str] = &["type", "url", "timeout", "concurrency"];
const POSTGRES_SINK_KEYS: &[&str] = &[
    "type",
    "url",
    "timeout",
    "schema",
    "table",
    "create_table",
    "pool_size",
    "columns",
];
const CONCURRENCY_KEYS: &[&str] = &["initial", "max"];
const COLUMN_KEYS: &[&str] = &["expr", "type"];
const WHEN_FULL: &[&str] = &["backpressure", "drop_newest", "drop_oldest"];
const SOURCE_TYPES: &[&str] = &["http", "generator", "file", "stdin", "nats"];
const READ_FROM: &[&str] = &["beginning", "end"];
const SINK_TYPES: &[&str] = &[
    "file",
    "stdout",
    "blackhole",
    "http",
    "nats",
    "postgres",
    "queue",
];
const DURABILITIES: &[&str] = &["fsync", "interval", "memory"];

/// Where things were declared, for checks that run after decoding.
#[derive(Default)]
struct Spans {
    /// Per queue (file order): its name's span and its `types` value's span.
    queues: Vec<(Range<usize>, Range<usize>)>,
    /// Per sink (file order): its name's span.
    sinks: Vec<Range<usize>>,
}

struct Decoder<'a> {
    source: &'a Source<'a>,
    cores: usize,
    extensions: &'a Extensions,
    diagnostics: Vec<Diagnostic>,
}

fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t Value<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

fn with_article(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {type_name}")
}

impl Decoder<'_> {
    fn report(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> &mut Diagnostic {
        let diagnostic = self.source.diagnostic(severity, span, message, hint);
        self.diagnostics.push(diagnostic);
        self.diagnostics.last_mut().expect("just pushed")
    }

    /// An error with its stable code (`lints::codes`).
    fn error_coded(
        &mut self,
        code: &'static str,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.report(Severity::Error, span, message, hint).code = Some(code);
    }

    /// A warning with its stable code (`lints::codes`).
    fn warning_coded(
        &mut self,
        code: &'static str,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.report(Severity::Warning, span, message, hint).code = Some(code);
    }

    fn wrong_type(&mut self, value: &Value<'_>, name: &str, expected: &str, hint: Option<String>) {
        let found = with_article(value.get_ref().type_str());
        self.error_coded(
            codes::WRONG_TYPE,
            value.span(),
            format!("`{name}` must be {expected}, found {found}"),
            hint,
        );
    }

    /// `value` as a table whose keys are all in `allowed` (unknown keys are reported).
    fn table<'t, 'i>(
        &mut self,
        value: &'t Value<'i>,
        name: &str,
        what: &str,
        allowed: &[&str],
    ) -> Option<&'t DeTable<'i>> {
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(value, name, "a table", None);
            return None;
        };
        self.check_keys(table, what, allowed);
        Some(table)
    }

    fn check_keys(&mut self, table: &DeTable<'_>, what: &str, allowed: &[&str]) {
        for (key, _) in table.iter() {
            let key_str: &str = key.get_ref();
            if allowed.contains(&key_str) {
                continue;
            }
            let hint = did_you_mean(key_str, allowed.iter().copied()).or_else(|| {
                let list: Vec<String> = allowed.iter().map(|k| format!("`{k}`")).collect();
                Some(format!("allowed keys: {}", list.join(", ")))
            });
            let message = if what.is_empty() {
                format!("unknown top-level key `{key_str}`")
            } else {
                format!("unknown key `{key_str}` in {what}")
            };
            self.error_coded(codes::UNKNOWN_KEY, key.span(), message, hint);
        }
    }

    /// Reports that `table` lacks `key`, unless a misspelling of it is there (already reported
    /// as an unknown key with "did you mean", which says more).
    fn missing(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        span: Range<usize>,
        what: &str,
        hint: String,
    ) {
        let misspelt = table
            .iter()
            .any(|(k, _)| k.get_ref() != key && did_you_mean(k.get_ref(), [key]).is_some());
        if !misspelt {
            self.error_coded(
                codes::MISSING_KEY,
                span,
                format!("{what} is missing `{key}`"),
                Some(hint),
            );
        }
    }

    /// The named tables of a section (`[queues.NAME]`), with valid names.
    fn section<'t, 'i>(
        &mut self,
        root: &'t DeTable<'i>,
        section: &str,
    ) -> Option<Vec<(&'t Key<'i>, &'t Value<'i>)>> {
        let value = get(root, section)?;
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(value, section, "a table", None);
            return Some(Vec::new());
        };
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            let valid = !name.is_empty()
                && name.len() <= NAME_LEN_MAX
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                self.error_coded(
                    codes::INVALID_VALUE,
                    key.span(),
                    format!("invalid name `{name}` in `{section}`"),
                    Some(format!(
                        "names are 1 to {NAME_LEN_MAX} ASCII letters, digits, `_` or `-`"
                    )),
                );
            }
        }
        Some(table.iter().collect())
    }

    fn string(&mut self, value: &Value<'_>, name: &str) -> Option<String> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(value, name, "a string", None);
                None
            }
        }
    }

    fn non_empty_string(&mut self, value: &Value<'_>, name: &str) -> Option<String> {
        let s = self.string(value, name)?;
        if s.is_empty() {
            self.error_coded(
                codes::INVALID_VALUE,
                value.span(),
                format!("`{name}` must not be empty"),
                None,
            );
            return None;
        }
        Some(s)
    }

    fn integer(&mut self, value: &Value<'_>, name: &str, range: Range<i64>) -> Option<i64> {
        let (min, max) = (range.start, range.end - 1);
        let n = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            DeValue::String(s) => {
                let hint = s
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .map(|n| format!("remove the quotes: `{name} = {n}`"));
                self.wrong_type(value, name, "an integer", hint);
                return None;
            }
            _ => {
                self.wrong_type(value, name, "an integer", None);
                return None;
            }
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let message = if range.end == i64::MAX {
                    format!("`{name}` must be at least {min}")
                } else {
                    format!("`{name}` must be between {min} and {max}")
                };
                self.error_coded(codes::INVALID_VALUE, value.span(), message, None);
                None
            }
        }
    }

    fn size(&mut self, value: &Value<'_>, name: &str, min: u64, max: u64) -> Option<ByteSize> {
        let size = match value.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .map(ByteSize)
                .map_err(|_| format!("`{name}` must not be negative")),
            DeValue::String(s) => s.parse::<ByteSize>(),
            _ => {
                self.wrong_type(
                    value,
                    name,
                    "a size like \"64MiB\" or a number of bytes",
                    None,
                );
                return None;
            }
        };
        match size {
            Ok(size) if (min..=max).contains(&size.0) => Some(size),
            Ok(_) => {
                let message = if max == u64::MAX {
                    format!("`{name}` must be at least {}", ByteSize(min))
                } else {
                    format!(
                        "`{name}` must be between {} and {}",
                        ByteSize(min),
                        ByteSize(max)
                    )
                };
                self.error_coded(codes::INVALID_VALUE, value.span(), message, None);
                None
            }
            Err(message) => {
                self.error_coded(
                    codes::INVALID_VALUE,
                    value.span(),
                    message,
                    Some("write a size like \"64MiB\", \"10MB\" or a number of bytes".to_owned()),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &Value<'_>, name: &str) -> Option<Duration> {
        let parsed = match value.get_ref() {
            DeValue::String(s) => parse_duration(s),
            DeValue::Integer(i) => {
                let hint = format!("add a unit: `{name} = \"{}ms\"`", i.as_str());
                self.wrong_type(value, name, "a duration like \"200ms\"", Some(hint));
                return None;
            }
            _ => {
                self.wrong_type(value, name, "a duration like \"200ms\"", None);
                return None;
            }
        };
        match parsed {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error_coded(
                    codes::INVALID_VALUE,
                    value.span(),
                    format!("`{name}` must be more than zero"),
                    None,
                );
                None
            }
            Err(message) => {
                self.error_coded(
                    codes::INVALID_VALUE,
                    value.span(),
                    message,
                    Some("write a duration like \"200ms\", \"5s\" or \"1m\"".to_owned()),
                );
                None
            }
        }
    }

    fn address(&mut self, value: &Value<'_>, name: &str) -> Option<SocketAddr> {
        let text = self.string(value, name)?;
        match text.parse() {
            Ok(address) => Some(address),
            Err(_) => {
                self.error_coded(
                    codes::INVALID_VALUE,
                    value.span(),
                    format!("`{name}` must be an IP address and port, found {text:?}"),
                    Some("for example \"127.0.0.1:8080\" or \"[::1]:8080\"".to_owned()),
                );
                None
            }
        }
    }

    /// Index into `choices` of a string value; unknown values get "did you mean".
    fn choice(&mut self, value: &Value<'_>, name: &str, choices: &[&str]) -> Option<usize> {
        let text = self.string(value, name)?;
        if let Some(i) = choices.iter().position(|c| *c == text) {
            return Some(i);
        }
        let list: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
        let hint = did_you_mean(&text, choices.iter().copied())
            .unwrap_or_else(|| format!("use one of {}", list.join(", ")));
        self.error_coded(
            codes::INVALID_VALUE,
            value.span(),
            format!("unknown {name} \"{text}\""),
            Some(hint),
        );
        None
    }

    /// An array of strings (or, with `single`, one string), each with its span.
    fn strings(
        &mut self,
        value: &Value<'_>,
        name: &str,
        single: bool,
    ) -> Option<Vec<(String, Range<usize>)>> {
        match value.get_ref() {
            DeValue::String(s) if single => Some(vec![(s.to_string(), value.span())]),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push((s.to_string(), item.span())),
                        _ => self.wrong_type(
                            item,
                            &format!("{name}[{}]", out.len()),
                            "a string",
                            None,
                        ),
                    }
                }
                Some(out)
            }
            _ => {
                let expected = if single {
                    "a string or an array of strings"
                } else {
                    "an array of strings"
                };
                self.wrong_type(value, name, expected, None);
                None
            }
        }
    }

    fn root(&mut self, root: &Spanned<DeTable<'_>>) -> Config {
        let root = root.get_ref();
        self.check_keys(root, "", ROOT_KEYS);
        let data_dir = get(root, "data_dir")
            .and_then(|v| self.non_empty_string(v, "data_dir"))
            .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from);
        let mut config = Config {
            data_dir,
            api: ApiConfig::default(),
            sources: IndexMap::new(),
            queues: IndexMap::new(),
            pipelines: IndexMap::new(),
            sinks: IndexMap::new(),
            tests: Vec::new(),
        };
        if let Some(api) = get(root, "api") {
            self.api(api, &mut config.api);
        }
        match self.section(root, "sources") {
            None => {
                let http = HttpSourceConfig::default();
                if config.api.address == http.address {
                    let span = get(root, "api")
                        .and_then(|api| api.get_ref().as_table())
                        .and_then(|api| get(api, "address"))
                        .map_or(0..0, Spanned::span);
                    self.error_coded(
                        codes::CONFLICT,
                        span,
                        format!(
                            "address {} is already used by the default HTTP source",
                            http.address
                        ),
                        Some("use another port, or configure [sources.http]".to_owned()),
                    );
                }
                config
                    .sources
                    .insert("http".to_owned(), SourceConfig::Http(http));
            }
            Some(sources) => {
                for (name, value) in &sources {
                    if let Some(source) = self.source_config(name, value) {
                        config.sources.insert(name.get_ref().to_string(), source);
                    }
                }
                if sources.is_empty() {
                    let span = root
                        .iter()
                        .find(|(k, _)| k.get_ref() == "sources")
                        .map_or(0..0, |(k, _)| k.span());
                    self.warning_coded(
                        codes::NO_SOURCES,
                        span,
                        "no sources: nothing can send events to this engine",
                        Some("add [sources.http] with type = \"http\"".to_owned()),
                    );
                }
                self.check_addresses(&sources, &config);
                self.line_sources(&sources, &mut config);
            }
        }

        let queues = self.section(root, "queues");
        let pipelines = self.section(root, "pipelines");
        let sinks = self.section(root, "sinks");
        if queues.is_none() && pipelines.is_none() && sinks.is_none() {
            config.add_default_topology();
            let names: Vec<&str> = config.pipelines.keys().map(String::as_str).collect();
            config.tests = self.tests(root, &names);
            return config;
        }
        let (queues, pipelines, sinks) = (
            queues.unwrap_or_default(),
            pipelines.unwrap_or_default(),
            sinks.unwrap_or_default(),
        );
        let mut spans = Spans::default();
        for (name, value) in &queues {
            if let Some((queue, types_span)) = self.queue(name, value) {
                spans.queues.push((name.span(), types_span));
                config.queues.insert(name.get_ref().to_string(), queue);
            }
        }
        let queue_names: Vec<&str> = queues.iter().map(|(k, _)| k.get_ref().as_ref()).collect();
        for (name, value) in &sinks {
            if let Some(sink) = self.sink(name, value, &queue_names) {
                spans.sinks.push(name.span());
                config.sinks.insert(name.get_ref().to_string(), sink);
            }
        }
        let sink_names: Vec<&str> = sinks.iter().map(|(k, _)| k.get_ref().as_ref()).collect();
        for (name, value) in &pipelines {
            if let Some(pipeline) = self.pipeline(name, value, &queue_names, &sink_names) {
                config
                    .pipelines
                    .insert(name.get_ref().to_string(), pipeline);
            }
        }
        let pipeline_names: Vec<&str> = pipelines
            .iter()
            .map(|(k, _)| k.get_ref().as_ref())
            .collect();
        self.check_empty_types(&queues, &config);
        config.tests = self.tests(root, &pipeline_names);
        // Warnings about the topology would mostly echo the errors (an invalid pipeline reads
        // nothing): give them once the errors are fixed.
        if !self.diagnostics.iter().any(Diagnostic::is_error) {
            self.topology_warnings(&config, &spans);
        }
        config
    }

    fn api(&mut self, value: &Value<'_>, api: &mut ApiConfig) {
        let Some(table) = self.table(value, "api", "[api]", API_KEYS) else {
            return;
        };
        if let Some(address) = get(table, "address").and_then(|v| self.address(v, "address")) {
            api.address = address;
        }
        if let Some(token) = get(table, "token") {
            api.token = self.non_empty_string(token, "token");
        }
        self.listener_limits(table, &mut api.limits);
        if !api.address.ip().is_loopback() && api.token.is_none() {
            let span = get(table, "address").map_or(value.span(), Spanned::span);
            self.warning_coded(
                codes::API_EXPOSED,
                span,
                format!(
                    "the admin API listens on {} without a token: anyone who can reach it can \
                     administer this engine",
                    api.address
                ),
                Some("set `token`, or bind to 127.0.0.1".to_owned()),
            );
        }
    }

    fn source_config(&mut self, name: &Key<'_>, value: &Value<'_>) -> Option<SourceConfig> {
        let what = format!("source `{}`", name.get_ref());
        let table = self.typed_table(name, value, &what, SOURCE_TYPES, SOURCE_KEYS)?;
        let ty = get(table, "type")
            .and_then(|v| v.get_ref().as_str())
            .unwrap_or_default();
        let what = format!("{what} (type \"{ty}\")");
        if ty == "generator" {
            self.check_keys(table, &what, GENERATOR_SOURCE_KEYS);
            return self.generator(name.get_ref(), table);
        }
        if ty == "file" {
            self.check_keys(table, &what, FILE_SOURCE_KEYS);
            return self.file_source(name, table, &what);
        }
        if ty == "stdin" {
            self.check_keys(table, &what, STDIN_SOURCE_KEYS);
            return self.stdin_source(table);
        }
        if ty == "nats" {
            return self.nats_source(name, table, &what);
        }
        self.check_keys(table, &what, HTTP_SOURCE_KEYS);
        let mut http = HttpSourceConfig::default();
        if let Some(address) = get(table, "address").and_then(|v| self.address(v, "address")) {
            http.address = address;
        }
        if let Some(size) = get(table, "body_bytes_max")
            .and_then(|v| self.size(v, "body_bytes_max", 1, BODY_BYTES_MAX_MAX))
        {
            http.body_bytes_max = size;
        }
        if let Some(v) = get(table, "tokens")
            && let Some(tokens) = self.strings(v, "tokens", false)
        {
            for (token, span) in tokens {
                if token.is_empty() {
                    self.error_coded(
                        codes::INVALID_VALUE,
                        span,
                        "an empty token would let anyone in",
                        Some("remove it".to_owned()),
                    );
                } else {
                    http.tokens.push(token);
                }
            }
        }
        self.listener_limits(table, &mut http.limits);
        Some(SourceConfig::Http(http))
    }

    /// `header_timeout`, `body_timeout` and `connections_max` of a listener's table.
    fn listener_limits(&mut self, table: &DeTable<'_>, limits: &mut ListenerLimits) {
        for (key, max, slot) in [
            (
                "header_timeout",
                HEADER_TIMEOUT_MAX,
                &mut limits.header_timeout,
            ),
            ("body_timeout", BODY_TIMEOUT_MAX, &mut limits.body_timeout),
        ] {
            let Some(value) = get(table, key) else {
                continue;
            };
            match self.duration(value, key) {
                Some(d) if d > max => self.error_coded(
                    codes::INVALID_VALUE,
                    value.span(),
                    format!(
                        "`{key}` must be at most {}: a slow client would hold a connection \
                         that long",
                        format_duration(max)
                    ),
                    Some(format!("use a value up to \"{}\"", format_duration(max))),
                ),
                Some(d) => *slot = d,
                None => {}
            }
        }
        if let Some(n) = get(table, "connections_max")
            .and_then(|v| self.integer(v, "connections_max", 1..CONNECTIONS_MAX_MAX + 1))
        {
            limits.connections_max = usize::try_from(n).expect("range-checked");
        }
    }

    fn generator(&mut self, name: &str, table: &DeTable<'_>) -> Option<SourceConfig> {
        let mut g = GeneratorSourceConfig {
            rate: 1000,
            count: None,
            types: vec![("veltrix.generated".to_owned(), 1)],
            payload_bytes: 200,
            keys: 100,
            source: format!("/veltrix/generator/{name}"),
            batch_events: 100,
        };
        let mut valid = true;
        let mut int = |d: &mut Self, key: &str, range: Range<i64>| -> Option<u64> {
            let v = get(table, key)?;
            match d.integer(v, key, range) {
                Some(n) => Some(u64::try_from(n).expect("range-checked")),
                None => {
                    valid = false;
                    None
                }
            }
        };
        if let Some(n) = int(self, "rate", 1..GENERATOR_RATE_MAX + 1) {
            g.rate = n;
        }
        g.count = int(self, "count", 1..i64::MAX);
        if let Some(n) = int(self, "payload_bytes", 0..GENERATOR_PAYLOAD_MAX + 1) {
            g.payload_bytes = n;
        }
        if let Some(n) = int(self, "keys", 1..i64::MAX) {
            g.keys = n;
        }
        if let Some(n) = int(self, "batch_events", 1..BATCH_EVENTS_MAX_MAX + 1) {
            g.batch_events = n;
        }
        if let Some(v) = get(table, "source") {
            match self.non_empty_string(v, "source") {
                Some(s) => g.source = s,
                None => valid = false,
            }
        }
        if let Some(v) = get(table, "types") {
            let mut types = Vec::new();
            match v.get_ref() {
                DeValue::Table(t) => {
                    for (ty, weight) in t.iter() {
                        if let Some(w) = self.integer(weight, ty.get_ref(), 1..1_000_001) {
                            types.push((
                                ty.get_ref().to_string(),
                                u32::try_from(w).expect("range-checked"),
                            ));
                        }
                    }
                }
                _ => {
                    for (ty, _) in self.strings(v, "types", false).unwrap_or_default() {
                        types.push((ty, 1));
                    }
                }
            }
            for (ty, _) in &types {
                if ty.is_empty() {
                    self.error_coded(
                        codes::INVALID_VALUE,
                        v.span(),
                        "an event type must not be empty",
                        None,
                    );
                    valid = false;
                }
            }
            if types.is_empty() {
                self.error_coded(
                    codes::INVALID_VALUE,
                    v.span(),
                    "`types` must name at least one event type",
                    Some(
                        "for example `types = { \"order.created\" = 3, \"order.paid\" = 1 }`"
                            .to_owned(),
                    ),
                );
                valid = false;
            }
            g.types = types;
        }
        valid.then_some(SourceConfig::Generator(g))
    }

    /// `type = "file"`. `checkpoint_dir` stays empty when not given: [`Self::line_sources`]
    /// puts it under `data_dir` once the whole source section is decoded.
    fn file_source(
        &mut self,
        name: &Key<'_>,
        table: &DeTable<'_>,
        what: &str,
    ) -> Option<SourceConfig> {
        let mut f = FileSourceConfig {
            include: Vec::new(),
            exclude: Vec::new(),
            read_from: ReadFrom::Beginning,
            poll_interval: DEFAULT_POLL_INTERVAL,
            line_bytes_max: ByteSize(DEFAULT_LINE_BYTES_MAX),
            batch_events: DEFAULT_LINE_BATCH_EVENTS,
            open_files_max: DEFAULT_OPEN_FILES_MAX,
            checkpoint_dir: PathBuf::new(),
        };
        let errors_before = self.diagnostics.iter().filter(|d| d.is_error()).count();
        match get(table, "include") {
            None => {
                let hint = "add `include = [\"/var/log/app/*.ndjson\"]`";
                self.missing(table, "include", name.span(), what, hint.to_owned());
            }
            Some(v) => {
                f.include = self.path_globs(v, "include");
                if f.include.is_empty()
                    && self.diagnostics.iter().filter(|d| d.is_error()).count() == errors_before
                {
                    self.error_coded(
                        codes::INVALID_VALUE,
                        v.span(),
                        "`include` must name at least one path pattern",
                        Some("for example `include = [\"/var/log/app/*.ndjson\"]`".to_owned()),
                    );
                }
            }
        }
        if let Some(v) = get(table, "exclude") {
            f.exclude = self.path_globs(v, "exclude");
        }
        if let Some(i) =
            get(table, "read_from").and_then(|v| self.choice(v, "read_from", READ_FROM))
        {
            f.read_from = [ReadFrom::Beginning, ReadFrom::End][i];
        }
        if let Some(d) = get(table, "poll_interval").and_then(|v| self.duration(v, "poll_interval"))
        {
            f.poll_interval = d;
        }
        if let Some(size) = get(table, "line_bytes_max")
            .and_then(|v| self.size(v, "line_bytes_max", 1, LINE_BYTES_MAX_MAX))
        {
            f.line_bytes_max = size;
        }
        if let Some(n) = get(table, "batch_events")
            .and_then(|v| self.integer(v, "batch_events", 1..BATCH_EVENTS_MAX_MAX + 1))
        {
            f.batch_events = u64::try_from(n).expect("range-checked");
        }
        if let Some(n) = get(table, "open_files_max")
            .and_then(|v| self.integer(v, "open_files_max", 1..OPEN_FILES_MAX_MAX + 1))
        {
            f.open_files_max = u64::try_from(n).expect("range-checked");
        }
        if let Some(dir) =
            get(table, "checkpoint_dir").and_then(|v| self.non_empty_string(v, "checkpoint_dir"))
        {
            f.checkpoint_dir = PathBuf::from(dir);
        }
        let errors_after = self.diagnostics.iter().filter(|d| d.is_error()).count();
        (errors_after == errors_before).then_some(SourceConfig::File(f))
    }

    /// An array of path glob patterns (`*`, `?`, `[...]`, `**`), each checked.
    fn path_globs(&mut self, value: &Value<'_>, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (pattern, span) in self.strings(value, name, false).unwrap_or_default() {
            if pattern.is_empty() {
                self.error_coded(
                    codes::INVALID_VALUE,
                    span,
                    format!("a pattern of `{name}` is empty"),
                    None,
                );
                continue;
            }
            match glob::Pattern::new(&pattern) {
                Ok(_) => out.push(pattern),
                Err(e) => self.error_coded(
                    codes::INVALID_VALUE,
                    span,
                    format!(
                        "invalid path pattern {pattern:?}: {} (at character {})",
                        e.msg,
                        e.pos + 1
                    ),
                    Some("patterns use `*`, `?`, `[abc]` and `**` for any directories".to_owned()),
                ),
            }
        }
        out
    }

    /// `type = "stdin"`.
    fn stdin_source(&mut self, table: &DeTable<'_>) -> Option<SourceConfig> {
        let mut s = StdinSourceConfig {
            line_bytes_max: ByteSize(DEFAULT_LINE_BYTES_MAX),
            batch_events: DEFAULT_LINE_BATCH_EVENTS,
            exit_on_eof: true,
        };
        let mut valid = true;
        if let Some(v) = get(table, "line_bytes_max") {
            match self.size(v, "line_bytes_max", 1, LINE_BYTES_MAX_MAX) {
                Some(size) => s.line_bytes_max = size,
                None => valid = false,
            }
        }
        if let Some(v) = get(table, "batch_events") {
            match self.integer(v, "batch_events", 1..BATCH_EVENTS_MAX_MAX + 1) {
                Some(n) => s.batch_events = u64::try_from(n).expect("range-checked"),
                None => valid = false,
            }
        }
        if let Some(v) = get(table, "exit_on_eof") {
            match v.get_ref() {
                DeValue::Boolean(b) => s.exit_on_eof = *b,
                _ => {
                    self.wrong_type(v, "exit_on_eof", "a boolean (true or false)", None);
                    valid = false;
                }
            }
        }
        valid.then_some(SourceConfig::Stdin(s))
    }

    /// Once every source is decoded: file sources get their default `checkpoint_dir` under
    /// `data_dir`; two file sources sharing one checkpoint directory, or two stdin sources
    /// (there is one standard input), are errors at the second one.
    fn line_sources(&mut self, sources: &[(&Key<'_>, &Value<'_>)], config: &mut Config) {
        let mut dirs: Vec<(PathBuf, String)> = Vec::new();
        let mut stdin: Option<String> = None;
        for (name, value) in sources {
            let name_str: &str = name.get_ref();
            let span_of = |key: &str| match value.get_ref() {
                DeValue::Table(t) => get(t, key).map_or(name.span(), Spanned::span),
                _ => name.span(),
            };
            match config.sources.get_mut(name_str) {
                Some(SourceConfig::File(f)) => {
                    if f.checkpoint_dir.as_os_str().is_empty() {
                        f.checkpoint_dir = config.data_dir.join("sources").join(name_str);
                    }
                    if let Some((_, owner)) = dirs.iter().find(|(d, _)| *d == f.checkpoint_dir) {
                        let message = format!(
                            "checkpoint directory {} is already used by source `{owner}`",
                            f.checkpoint_dir.display()
                        );
                        self.error_coded(
                            codes::CONFLICT,
                            span_of("checkpoint_dir"),
                            message,
                            Some("give each file source its own `checkpoint_dir`".to_owned()),
                        );
                    }
                    dirs.push((f.checkpoint_dir.clone(), name_str.to_owned()));
                }
                Some(SourceConfig::Stdin(_)) => match &stdin {
                    Some(owner) => {
                        let message = format!(
                            "standard input is already read by source `{owner}`: there is only one"
                        );
                        self.error_coded(
                            codes::CONFLICT,
                            span_of("type"),
                            message,
                            Some("keep one stdin source".to_owned()),
                        );
                    }
                    None => stdin = Some(name_str.to_owned()),
                },
                _ => {}
            }
        }
    }

    /// Two listeners on one address cannot both start: say so now, at the second one.
    fn check_addresses(&mut self, sources: &[(&Key<'_>, &Value<'_>)], config: &Config) {
        let mut taken = vec![("the admin API".to_owned(), config.api.address)];
        for (name, value) in sources {
            let Some(SourceConfig::Http(http)) = config.sources.get(name.get_ref().as_ref()) else {
                continue;
            };
            // Port 0 asks the OS for any free port: never a clash.
            let clash = taken
                .iter()
                .find(|(_, a)| *a == http.address && http.address.port() != 0);
            if let Some((owner, _)) = clash {
                let span = match value.get_ref() {
                    DeValue::Table(t) => get(t, "address").map_or(name.span(), Spanned::span),
                    _ => name.span(),
                };
                let message = format!("address {} is already used by {owner}", http.address);
                self.error_coded(
                    codes::CONFLICT,
                    span,
                    message,
                    Some("give each listener its own port".to_owned()),
                );
            }
            taken.push((format!("source `{}`", name.get_ref()), http.address));
        }
    }

    /// `types = []` is for queues only a queue sink or an aggregate feeds (stage queues of
    /// multi-stage pipelines); on any other queue it is an error: it would never receive an event.
    fn check_empty_types(&mut self, queues: &[(&Key<'_>, &Value<'_>)], config: &Config) {
        let fed = lints::fed_queues(config);
        for (name, value) in queues {
            let Some(types) = value.get_ref().as_table().and_then(|t| get(t, "types")) else {
                continue;
            };
            let empty = matches!(types.get_ref(), DeValue::Array(items) if items.is_empty());
            if empty && !fed.contains(&name.get_ref().as_ref()) {
                self.error_coded(
                    codes::INVALID_VALUE,
                    types.span(),
                    "`types` must not be empty: the queue would never receive an event",
                    Some(
                        "list event type patterns, e.g. `types = [\"order.*\"]`, or feed the \
                         queue from a sink with `type = \"queue\"`"
                            .to_owned(),
                    ),
                );
            }
        }
    }

    /// A table with a required `type` among `types`; returns it once the type is known good.
    /// Which type it is can be read back with `get(table, "type")`. `all_keys` are the keys of
    /// every type, checked when `type` is missing.
    fn typed_table<'t, 'i>(
        &mut self,
        name: &Key<'_>,
        value: &'t Value<'i>,
        what: &str,
        types: &[&str],
        all_keys: &[&str],
    ) -> Option<&'t DeTable<'i>> {
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(value, name.get_ref(), "a table", None);
            return None;
        };
        let Some(ty) = get(table, "type") else {
            self.check_keys(table, what, all_keys);
            let list: Vec<String> = types.iter().map(|t| format!("\"{t}\"")).collect();
            let hint = format!("add `type = ` one of {}", list.join(", "));
            self.missing(table, "type", name.span(), what, hint);
            return None;
        };
        self.choice(ty, "type", types)?;
        Some(table)
    }

    /// The queue and the span of its `types` value.
    fn queue(&mut self, name: &Key<'_>, value: &Value<'_>) -> Option<(QueueConfig, Range<usize>)> {
        let what = format!("queue `{}`", name.get_ref());
        let table = self.table(value, name.get_ref(), &what, QUEUE_KEYS)?;
        let mut queue = QueueConfig::default();
        let Some(types) = get(table, "types") else {
            let hint =
                "add the event types it takes, e.g. `types = [\"order.*\"]`, or `[\"*\"]` for all";
            self.missing(table, "types", name.span(), &what, hint.to_owned());
            return None;
        };
        // `types = []` is checked once the sinks are known: a queue sink may feed the queue.
        if let Some(patterns) = self.strings(types, "types", false) {
            for (text, span) in patterns {
                match TypePattern::new(&text) {
                    Ok(pattern) => queue.types.push(pattern),
                    Err(message) => self.error_coded(codes::INVALID_VALUE, span, message, None),
                }
            }
        }
        if let Some(n) = get(table, "priority").and_then(|v| self.integer(v, "priority", 0..256)) {
            queue.priority = u8::try_from(n).expect("range-checked");
        }
        if let Some(size) = get(table, "max_bytes")
            .and_then(|v| self.size(v, "max_bytes", SEGMENT_BYTES_MIN, u64::MAX))
        {
            queue.max_bytes = size;
        }
        if let Some(n) =
            get(table, "max_events").and_then(|v| self.integer(v, "max_events", 1..i64::MAX))
        {
            queue.max_events = u64::try_from(n).expect("range-checked");
        }
        if let Some(i) =
            get(table, "durability").and_then(|v| self.choice(v, "durability", DURABILITIES))
        {
            queue.durability = [Durability::Fsync, Durability::Interval, Durability::Memory][i];
        }
        if let Some(interval) = get(table, "fsync_interval")
            && let Some(d) = self.duration(interval, "fsync_interval")
        {
            queue.fsync_interval = d;
            if queue.durability != Durability::Interval {
                self.warning_coded(
                    codes::FSYNC_INTERVAL_UNUSED,
                    interval.span(),
                    format!(
                        "`fsync_interval = \"{}\"` has no effect: {what} does not use \
                         durability = \"interval\"",
                        format_duration(d)
                    ),
                    Some("remove it, or set `durability = \"interval\"`".to_owned()),
                );
            }
        }
        if let Some(segment) = get(table, "segment_bytes")
            && let Some(size) = self.size(
                segment,
                "segment_bytes",
                SEGMENT_BYTES_MIN,
                SEGMENT_BYTES_MAX,
            )
        {
            queue.segment_bytes = size;
            if size > queue.max_bytes {
                self.error_coded(
                    codes::CONFLICT,
                    segment.span(),
                    format!(
                        "`segment_bytes` ({size}) is larger than `max_bytes` ({}): the queue \
                         could never hold one full segment",
                        queue.max_bytes
                    ),
                    Some("make `segment_bytes` at most `max_bytes`".to_owned()),
                );
            }
        }
        if let Some(i) =
            get(table, "when_full").and_then(|v| self.choice(v, "when_full", WHEN_FULL))
        {
            queue.when_full = [
                WhenFull::Backpressure,
                WhenFull::DropNewest,
                WhenFull::DropOldest,
            ][i];
        }
        Some((queue, types.span()))
    }

    fn sink(
        &mut self,
        name: &Key<'_>,
        value: &Value<'_>,
        queue_names: &[&str],
    ) -> Option<SinkConfig> {
        let what = format!("sink `{}`", name.get_ref());
        let extensions = self.extensions;
        let types: Vec<&str> = SINK_TYPES
            .iter()
            .copied()
            .chain(extensions.sinks.iter().map(|(n, _)| n.as_str()))
            .collect();
        let table = self.typed_table(name, value, &what, &types, SINK_KEYS)?;
        let ty = get(table, "type")
            .and_then(|v| v.get_ref().as_str())
            .unwrap_or_default();
        let what = format!("{what} (type \"{ty}\")");
        if let Some((_, validate)) = extensions.sinks.iter().find(|(n, _)| n == ty) {
            return self
                .custom(table, value.span(), ty, validate, &what)
                .map(SinkConfig::Custom);
        }
        match ty {
            "file" => {
                self.check_keys(table, &what, &["type", "path"]);
                let Some(path) = get(table, "path") else {
                    let hint = "add `path = \"./veltrix-data/out/events.ndjson\"`";
                    self.missing(table, "path", name.span(), &what, hint.to_owned());
                    return None;
                };
                let path = self.non_empty_string(path, "path")?;
                Some(SinkConfig::File { path: path.into() })
            }
            "stdout" => {
                self.check_keys(table, &what, &["type"]);
                Some(SinkConfig::Stdout)
            }
            "http" => {
                self.check_keys(table, &what, HTTP_SINK_KEYS);
                let Some(url) = get(table, "url") else {
                    let hint = "add `url = \"http://127.0.0.1:9000/events\"`";
                    self.missing(table, "url", name.span(), &what, hint.to_owned());
                    return None;
                };
                let text = self.non_empty_string(url, "url")?;
                if !text.starts_with("http://") {
                    self.error_coded(
                        codes::INVALID_VALUE,
                        url.span(),
                        format!("`url` must be an http:// URL, found {text:?}"),
                        Some(
                            "https is not supported yet: put a TLS-terminating proxy in front"
                                .to_owned(),
                        ),
                    );
                    return None;
                }
                let timeout = match get(table, "timeout") {
                    Some(v) => self.duration(v, "timeout")?,
                    None => DEFAULT_HTTP_TIMEOUT,
                };
                let concurrency = match get(table, "concurrency") {
                    Some(v) => self.concurrency(v)?,
                    None => Concurrency::default(),
                };
                Some(SinkConfig::Http {
                    url: text,
                    timeout,
                    concurrency,
                })
            }
            "postgres" => {
                self.check_keys(table, &what, POSTGRES_SINK_KEYS);
                self.postgres(name, table, &what).map(SinkConfig::Postgres)
            }
            "queue" => {
                self.check_keys(table, &what, &["type", "queue"]);
                let Some(queue) = get(table, "queue") else {
                    let hint = "add the queue it appends to, e.g. `queue = \"enriched\"`";
                    self.missing(table, "queue", name.span(), &what, hint.to_owned());
                    return None;
                };
                let target = self.string(queue, "queue")?;
                if !queue_names.contains(&target.as_str()) {
                    let hint = reference_hint(&target, queue_names, "queues");
                    self.error_coded(
                        codes::UNKNOWN_REFERENCE,
                        queue.span(),
                        format!("unknown queue `{target}`"),
                        Some(hint),
                    );
                    return None;
                }
                Some(SinkConfig::Queue { queue: target })
            }
            "nats" => self.nats_sink(name, table, &what),
            _ => {
                self.check_keys(table, &what, &["type"]);
                Some(SinkConfig::Blackhole)
            }
        }
    }

    /// `concurrency = "adaptive" | N | { initial = N, max = M }` of an http sink.
    fn concurrency(&mut self, value: &Value<'_>) -> Option<Concurrency> {
        let hint = "write `concurrency = \"adaptive\"`, a fixed number like `concurrency = 8`, \
                    or `concurrency = { initial = 1, max = 64 }`";
        match value.get_ref() {
            DeValue::String(_) => {
                self.choice(value, "concurrency", &["adaptive"])?;
                Some(Concurrency::default())
            }
            DeValue::Integer(_) => {
                let n = self.integer(value, "concurrency", 1..CONCURRENCY_MAX_MAX + 1)?;
                Some(Concurrency::Fixed(
                    usize::try_from(n).expect("range-checked"),
                ))
            }
            DeValue::Table(table) => {
                self.check_keys(table, "`concurrency`", CONCURRENCY_KEYS);
                let mut initial = DEFAULT_CONCURRENCY_INITIAL;
                let mut max = DEFAULT_CONCURRENCY_MAX;
                if let Some(v) = get(table, "initial") {
                    initial =
                        usize::try_from(self.integer(v, "initial", 1..CONCURRENCY_MAX_MAX + 1)?)
                            .expect("range-checked");
                }
                if let Some(v) = get(table, "max") {
                    max = usize::try_from(self.integer(v, "max", 1..CONCURRENCY_MAX_MAX + 1)?)
                        .expect("range-checked");
                }
                if initial > max {
                    let span = get(table, "initial").map_or(value.span(), Spanned::span);
                    self.error_coded(
                        codes::CONFLICT,
                        span,
                        format!("`initial` ({initial}) is above `max` ({max})"),
                        Some("make `initial` at most `max`".to_owned()),
                    );
                    return None;
                }
                Some(Concurrency::Adaptive { initial, max })
            }
            _ => {
                self.wrong_type(
                    value,
                    "concurrency",
                    "\"adaptive\", an integer or a table",
                    Some(hint.to_owned()),
                );
                None
            }
        }
    }

    /// A SQL identifier the sink quotes: non-empty, at most 63 bytes.
    fn sql_name(&mut self, value: &Value<'_>, name: &str) -> Option<String> {
        let text = self.non_empty_string(value, name)?;
        if text.len() > SQL_IDENTIFIER_BYTES_MAX || text.contains('\0') {
            self.error_coded(
                codes::INVALID_VALUE,
                value.span(),
                format!("`{name}` must be at most {SQL_IDENTIFIER_BYTES_MAX} bytes, without NUL"),
                Some("PostgreSQL truncates longer identifiers".to_owned()),
            );
            return None;
        }
        Some(text)
    }

    fn postgres(
        &mut self,
        name: &Key<'_>,
        table: &DeTable<'_>,
        what: &str,
    ) -> Option<PostgresSinkConfig> {
        let url = match get(table, "url") {
            None => {
                let hint = "add `url = \"postgres://postgres@127.0.0.1:5432/mydb\"`";
                self.missing(table, "url", name.span(), what, hint.to_owned());
                None
            }
            Some(v) => {
                let text = self.non_empty_string(v, "url");
                match text {
                    Some(t) if t.starts_with("postgres://") || t.starts_with("postgresql://") => {
                        Some(t)
                    }
                    Some(t) => {
                        self.error_coded(
                            codes::INVALID_VALUE,
                            v.span(),
                            format!("`url` must be a postgres:// URL, found {t:?}"),
                            Some(
                                "for example \"postgres://user:password@127.0.0.1:5432/mydb\""
                                    .to_owned(),
                            ),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let table_name = match get(table, "table") {
            None => {
                let hint = "add the table it inserts into, e.g. `table = \"events\"`";
                self.missing(table, "table", name.span(), what, hint.to_owned());
                None
            }
            Some(v) => self.sql_name(v, "table"),
        };
        let schema = match get(table, "schema") {
            Some(v) => self.sql_name(v, "schema"),
            None => Some(DEFAULT_POSTGRES_SCHEMA.to_owned()),
        };
        let create_table = match get(table, "create_table") {
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => Some(*b),
                _ => {
                    self.wrong_type(v, "create_table", "a boolean", None);
                    None
                }
            },
            None => Some(true),
        };
        let pool_size = match get(table, "pool_size") {
            Some(v) => self
                .integer(v, "pool_size", 1..POSTGRES_POOL_SIZE_MAX + 1)
                .map(|n| usize::try_from(n).expect("range-checked")),
            None => Some(DEFAULT_POSTGRES_POOL_SIZE),
        };
        let timeout = match get(table, "timeout") {
            Some(v) => self.duration(v, "timeout"),
            None => Some(DEFAULT_POSTGRES_TIMEOUT),
        };
        let columns = match get(table, "columns") {
            Some(v) => self.columns(v),
            None => Some(Vec::new()),
        };
        Some(PostgresSinkConfig {
            url: url?,
            schema: schema?,
            table: table_name?,
            create_table: create_table?,
            pool_size: pool_size?,
            timeout: timeout?,
            columns: columns?,
        })
    }

    /// `columns = { name = 'expr', other = { expr = '...', type = "bigint" } }`.
    fn columns(&mut self, value: &Value<'_>) -> Option<Vec<PostgresColumn>> {
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(
                value,
                "columns",
                "a table",
                Some("write `columns = { player = '.data.player' }`".to_owned()),
            );
            return None;
        };
        let types: Vec<&str> = ColumnType::ALL.iter().map(|(n, _)| *n).collect();
        let mut columns = Vec::new();
        let mut valid = true;
        for (key, spec) in table.iter() {
            let column: &str = key.get_ref();
            let plain = column.len() <= SQL_IDENTIFIER_BYTES_MAX
                && column
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && column
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                valid = false;
                self.error_coded(
                    codes::INVALID_VALUE,
                    key.span(),
                    format!("invalid column name `{column}`"),
                    Some(format!(
                        "a column name is 1 to {SQL_IDENTIFIER_BYTES_MAX} ASCII letters, digits or \
                         `_`, not starting with a digit"
                    )),
                );
                continue;
            }
            if POSTGRES_FIXED_COLUMNS.contains(&column.to_ascii_lowercase().as_str()) {
                valid = false;
                self.error_coded(
                    codes::CONFLICT,
                    key.span(),
                    format!("column `{column}` is one of the columns every event fills"),
                    Some(format!(
                        "the table always has {}; pick another name",
                        POSTGRES_FIXED_COLUMNS.join(", ")
                    )),
                );
                continue;
            }
            let key_name = format!("columns.{column}");
            let (program, sql_type) = match spec.get_ref() {
                DeValue::String(_) => (spec, ColumnType::Text),
                DeValue::Table(spec_table) => {
                    self.check_keys(spec_table, &format!("column `{column}`"), COLUMN_KEYS);
                    let sql_type = match get(spec_table, "type") {
                        Some(t) => match self.choice(t, "column type", &types) {
                            Some(i) => ColumnType::ALL[i].1,
                            None => {
                                valid = false;
                                continue;
                            }
                        },
                        None => ColumnType::Text,
                    };
                    let Some(program) = get(spec_table, "expr") else {
                        valid = false;
                        let hint = "add `expr = '...'` with a VRL expression";
                        self.missing(
                            spec_table,
                            "expr",
                            key.span(),
                            &format!("column `{column}`"),
                            hint.to_owned(),
                        );
                        continue;
                    };
                    (program, sql_type)
                }
                _ => {
                    valid = false;
                    self.wrong_type(
                        spec,
                        &key_name,
                        "a string (VRL) or a table",
                        Some(format!(
                            "write `{column} = '.data.{column}'` or `{column} = {{ expr = \
                             '.data.{column}', type = \"bigint\" }}`"
                        )),
                    );
                    continue;
                }
            };
            let Some(text) = self.string(program, &key_name) else {
                valid = false;
                continue;
            };
            match ValueExpr::compile(&text) {
                Ok(expr) => {
                    for warning in expr.warnings().to_vec() {
                        self.expr_diagnostic(Severity::Warning, program.span(), &key_name, warning);
                    }
                    columns.push(PostgresColumn {
                        name: column.to_owned(),
                        sql_type,
                        expr,
                    });
                }
                Err(errors) => {
                    valid = false;
                    for error in errors {
                        self.expr_diagnostic(Severity::Error, program.span(), &key_name, error);
                    }
                }
            }
        }
        valid.then_some(columns)
    }

    fn pipeline(
        &mut self,
        name: &Key<'_>,
        value: &Value<'_>,
        queue_names: &[&str],
        sink_names: &[&str],
    ) -> Option<PipelineConfig> {
        let what = format!("pipeline `{}`", name.get_ref());
        let table = self.table(value, name.get_ref(), &what, PIPELINE_KEYS)?;
        let mut pipeline = PipelineConfig::new(name.get_ref(), Vec::new(), String::new());
        let mut valid = true;
        match get(table, "from") {
            None => {
                valid = false;
                let hint = "add the queues it reads, e.g. `from = [\"default\"]`";
                self.missing(table, "from", name.span(), &what, hint.to_owned());
            }
            Some(from) => match self.strings(from, "from", true) {
                Some(queues) if queues.is_empty() => {
                    valid = false;
                    self.error_coded(
                        codes::INVALID_VALUE,
                        from.span(),
                        "`from` must name at least one queue",
                        None,
                    );
                }
                Some(queues) => {
                    for (queue, span) in queues {
                        if pipeline.from.contains(&queue) {
                            self.error_coded(
                                codes::CONFLICT,
                                span,
                                format!("{what} reads queue `{queue}` twice"),
                                None,
                            );
                        } else if !queue_names.contains(&queue.as_str()) {
                            let hint = reference_hint(&queue, queue_names, "queues");
                            self.error_coded(
                                codes::UNKNOWN_REFERENCE,
                                span,
                                format!("unknown queue `{queue}`"),
                                Some(hint),
                            );
                        }
                        pipeline.from.push(queue);
                    }
                }
                None => valid = false,
            },
        }
        match get(table, "sink") {
            None => {
                valid = false;
                let hint = "add the sink it writes to, e.g. `sink = \"default\"`";
                self.missing(table, "sink", name.span(), &what, hint.to_owned());
            }
            Some(sink) => match self.string(sink, "sink") {
                Some(s) if sink_names.contains(&s.as_str()) => pipeline.sink = s,
                Some(s) => {
                    valid = false;
                    let hint = reference_hint(&s, sink_names, "sinks");
                    self.error_coded(
                        codes::UNKNOWN_REFERENCE,
                        sink.span(),
                        format!("unknown sink `{s}`"),
                        Some(hint),
                    );
                }
                None => valid = false,
            },
        }
        if let Some(workers) = get(table, "workers")
            && let Some(n) = self.integer(workers, "workers", 1..WORKERS_MAX + 1)
        {
            pipeline.workers = usize::try_from(n).expect("range-checked");
            if pipeline.workers > WORKERS_PER_CORE_WARN * self.cores {
                self.warning_coded(
                    codes::WORKERS_ABOVE_CORES,
                    workers.span(),
                    format!(
                        "`workers = {n}` is far above the {} available core(s): extra \
                         workers add contention, not throughput",
                        self.cores
                    ),
                    Some(format!(
                        "use at most {} unless the sink waits on the network",
                        WORKERS_PER_CORE_WARN * self.cores
                    )),
                );
            }
        }
        if let Some(n) = get(table, "batch_events_max")
            .and_then(|v| self.integer(v, "batch_events_max", 1..BATCH_EVENTS_MAX_MAX + 1))
        {
            pipeline.batch_events_max = usize::try_from(n).expect("range-checked");
        }
        if let Some(v) = get(table, "starvation_max")
            && let Some(d) = self.duration(v, "starvation_max")
        {
            pipeline.starvation_max = d;
        }
        if let Some(v) = get(table, "retry") {
            self.retry(v, &mut pipeline.retry);
        }
        if let Some(v) = get(table, "dead_letter")
            && let Some(dlq) = self.non_empty_string(v, "dead_letter")
        {
            if queue_names.contains(&dlq.as_str()) {
                self.error_coded(
                    codes::CONFLICT,
                    v.span(),
                    format!("`dead_letter = \"{dlq}\"` names a routable queue"),
                    Some(
                        "a dead-letter queue is the pipeline's own: pick a name no queue has"
                            .to_owned(),
                    ),
                );
            }
            pipeline.dead_letter = dlq;
        }
        if let Some(processors) = get(table, "processors") {
            pipeline.processors = self.processors(processors, queue_names);
        }
        if let Some(routes) = get(table, "routes") {
            pipeline.routes = self.routes(routes, sink_names);
            if let Some(ProcessorConfig::Aggregate(_)) = pipeline.processors.last()
                && !pipeline.routes.is_empty()
            {
                self.error_coded(
                    codes::CONFLICT,
                    routes.span(),
                    format!(
                        "{what} ends with an aggregate, which consumes every event: no event \
                         would ever reach a route"
                    ),
                    Some("remove `routes`, or route in the pipeline that reads `into`".to_owned()),
                );
            }
        }
        valid.then_some(pipeline)
    }

    fn retry(&mut self, value: &Value<'_>, retry: &mut RetryConfig) {
        let Some(table) = self.table(value, "retry", "`retry`", RETRY_KEYS) else {
            return;
        };
        if let Some(n) = get(table, "attempts_max")
            .and_then(|v| self.integer(v, "attempts_max", 1..ATTEMPTS_MAX_MAX + 1))
        {
            retry.attempts_max = u32::try_from(n).expect("range-checked");
        }
        if let Some(d) =
            get(table, "backoff_initial").and_then(|v| self.duration(v, "backoff_initial"))
        {
            retry.backoff_initial = d;
        }
        if let Some(v) = get(table, "backoff_max")
            && let Some(d) = self.duration(v, "backoff_max")
        {
            retry.backoff_max = d;
            if d < retry.backoff_initial {
                self.error_coded(
                    codes::CONFLICT,
                    v.span(),
                    format!(
                        "`backoff_max` ({}) is below `backoff_initial` ({})",
                        format_duration(d),
                        format_duration(retry.backoff_initial)
                    ),
                    Some("make `backoff_max` at least `backoff_initial`".to_owned()),
                );
            }
        }
    }

    /// A custom handler's table: every key but `type` as JSON options, checked by the
    /// registered validator (its complaint is reported at the table).
    fn custom(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        type_name: &str,
        validate: &OptionsValidator,
        what: &str,
    ) -> Option<CustomConfig> {
        let mut options = serde_json::Map::new();
        for (key, value) in table.iter() {
            if key.get_ref() != "type" {
                options.insert(key.get_ref().to_string(), toml_to_json(value.get_ref()));
            }
        }
        let options = serde_json::Value::Object(options);
        match validate(&options) {
            Ok(()) => Some(CustomConfig {
                type_name: type_name.to_owned(),
                options,
            }),
            Err(message) => {
                self.error_coded(
                    codes::INVALID_VALUE,
                    span,
                    format!("{what}: {message}"),
                    None,
                );
                None
            }
        }
    }

    /// A VRL diagnostic, located at the start of the string holding the program (VRL's own
    /// positions, relative to the program, are in the notes).
    fn expr_diagnostic(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        key: &str,
        diagnostic: ExprDiagnostic,
    ) {
        let d = self.report(
            severity,
            span,
            format!("in `{key}`: {}", diagnostic.message),
            diagnostic.hint,
        );
        d.notes = diagnostic.notes;
        d.code = Some(match severity {
            Severity::Error => codes::VRL_ERROR,
            Severity::Warning => codes::VRL_WARNING,
        });
    }

    fn topology_warnings(&mut self, config: &Config, spans: &Spans) {
        let queues: Vec<(&String, &QueueConfig)> = config.queues.iter().collect();
        if let Some((first_span, _)) = spans.queues.first()
            && !queues
                .iter()
                .any(|(_, q)| q.types.iter().any(TypePattern::is_catch_all))
        {
            self.warning_coded(
                codes::NO_CATCH_ALL,
                first_span.clone(),
                "no queue takes every event type: events whose type matches no queue will be \
                 rejected (HTTP 422)",
                Some("add a catch-all queue last: `types = [\"*\"]`".to_owned()),
            );
        }
        for (i, ((name, _), (name_span, types_span))) in
            queues.iter().zip(&spans.queues).enumerate()
        {
            if lints::unreachable(config, i) {
                self.warning_coded(
                    codes::QUEUE_UNREACHABLE,
                    types_span.clone(),
                    format!(
                        "queue `{name}` can never receive an event: earlier queues match all of \
                         its types first (routing takes the first match in file order)"
                    ),
                    Some("move this queue above the queue that matches its types".to_owned()),
                );
            }
            if !config.pipelines.values().any(|p| p.from.contains(name)) {
                self.warning_coded(
                    codes::QUEUE_UNREAD,
                    name_span.clone(),
                    format!(
                        "no pipeline reads queue `{name}`: its events will pile up until it is full"
                    ),
                    Some(format!("add `\"{name}\"` to some pipeline's `from`")),
                );
            }
        }
        for ((name, _), span) in config.sinks.iter().zip(&spans.sinks) {
            if !config
                .pipelines
                .values()
                .any(|p| p.sinks().contains(&name.as_str()))
            {
                self.warning_coded(
                    codes::SINK_UNUSED,
                    span.clone(),
                    format!("no pipeline writes to sink `{name}`"),
                    None,
                );
            }
        }
    }
}

/// A TOML value as JSON (dates become their RFC 3339 text).
fn toml_to_json(value: &DeValue<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Integer(i) => {
            i64::from_str_radix(i.as_str(), i.radix()).map_or(J::Null, |n| J::Number(n.into()))
        }
        DeValue::Float(f) => f
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(J::Null, J::Number),
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(d) => J::String(d.to_string()),
        DeValue::Array(items) => {
            J::Array(items.iter().map(|v| toml_to_json(v.get_ref())).collect())
        }
        DeValue::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), toml_to_json(v.get_ref())))
                .collect(),
        ),
    }
}

/// "did you mean" for a dangling reference, else the list of what exists.
fn reference_hint(name: &str, defined: &[&str], section: &str) -> String {
    did_you_mean(name, defined.iter().copied()).unwrap_or_else(|| {
        if defined.is_empty() {
            format!("no {section} are defined: add a [{section}.{name}] table")
        } else {
            let list: Vec<String> = defined.iter().map(|n| format!("`{n}`")).collect();
            format!("defined {section}: {}", list.join(", "))
        }
    })
}

#[cfg(test)]
mod tests;
