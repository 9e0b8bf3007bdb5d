//! The configuration reference: every key the decoder accepts, with its type, default, bound
//! and meaning. `veltrix config reference` prints [`reference_markdown`], which is committed as
//! `docs/configuration.md`.
//!
//! It cannot drift from the decoder: defaults and bounds are formatted from the decoder's own
//! constants, and the unit tests check that every section documents exactly the keys its
//! `*_KEYS` constant accepts and that writing each documented default gives the same config as
//! leaving the key out.

use std::fmt::Write as _;

use super::nats::{
    DEFAULT_NATS_ACK_WAIT, DEFAULT_NATS_MSG_ID, NATS_BATCH_EVENTS_MAX, NATS_MODES,
    NATS_NAME_LEN_MAX,
};
use super::processors::*;
use super::units::format_duration;
use super::*;

/// One section of the reference: a table of the config and its keys.
#[derive(Debug, Clone)]
pub struct SectionDoc {
    /// How the table is written, e.g. `[queues.NAME]`.
    pub title: &'static str,
    /// What the section is for (Markdown).
    pub intro: String,
    pub keys: Vec<KeyDoc>,
}

/// One key of a section.
#[derive(Debug, Clone)]
pub struct KeyDoc {
    pub key: &'static str,
    /// The TOML type(s) accepted, and the choices for enumerations.
    pub ty: String,
    pub default: DefaultDoc,
    /// The accepted range, empty when any value of the type goes.
    pub bound: String,
    /// What it does (Markdown).
    pub meaning: String,
}

/// A key's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultDoc {
    /// The key must be given.
    Required,
    /// A TOML literal; writing it gives the same config as leaving the key out (tested).
    Value(String),
    /// A default that is not one literal (e.g. derived from the table's name).
    Text(String),
}

fn key(
    key: &'static str,
    ty: impl Into<String>,
    default: DefaultDoc,
    bound: impl Into<String>,
    meaning: impl Into<String>,
) -> KeyDoc {
    KeyDoc {
        key,
        ty: ty.into(),
        default,
        bound: bound.into(),
        meaning: meaning.into(),
    }
}

fn value(literal: impl Into<String>) -> DefaultDoc {
    DefaultDoc::Value(literal.into())
}

fn text(text: impl Into<String>) -> DefaultDoc {
    DefaultDoc::Text(text.into())
}

fn one_of(choices: &[&str]) -> String {
    let list: Vec<String> = choices.iter().map(|c| format!("`\"{c}\"`")).collect();
    format!("string: {}", list.join(", "))
}

fn size(bytes: u64) -> DefaultDoc {
    value(format!("\"{}\"", ByteSize(bytes)))
}

fn duration(d: Duration) -> DefaultDoc {
    value(format!("\"{}\"", format_duration(d)))
}

const SIZE: &str = "size: `\"64MiB\"`, `\"10MB\"` or bytes";
const DURATION: &str = "duration: `\"200ms\"`, `\"5s\"`, `\"1m\"`";

/// The slow-client and connection limits every HTTP listener takes (`[api]` and http sources);
/// `which` ends each meaning (e.g. " (http)").
fn listener_limit_keys(which: &str) -> Vec<KeyDoc> {
    vec![
        key(
            "header_timeout",
            DURATION,
            duration(DEFAULT_HEADER_TIMEOUT),
            format!("up to {}", format_duration(HEADER_TIMEOUT_MAX)),
            format!(
                "A request's line and headers must arrive within this, or the connection is \
                 closed (slowloris); it is also how long an idle keep-alive connection stays \
                 open{which}."
            ),
        ),
        key(
            "body_timeout",
            DURATION,
            duration(DEFAULT_BODY_TIMEOUT),
            format!("up to {}", format_duration(BODY_TIMEOUT_MAX)),
            format!(
                "A request's body must arrive within this once reading it starts, or the \
                 request gets `408` and the connection is closed{which}."
            ),
        ),
        key(
            "connections_max",
            "integer",
            value(DEFAULT_CONNECTIONS_MAX.to_string()),
            format!("1 to {CONNECTIONS_MAX_MAX}"),
            format!(
                "Connections open at once; further ones wait in the kernel's accept backlog \
                 until one closes (gauge `veltrix_http_connections`){which}."
            ),
        ),
    ]
}

/// Every section of the configuration, in the order of a config file.
pub fn reference() -> Vec<SectionDoc> {
    let names = format!(
        "`NAME` is 1 to {NAME_LEN_MAX} ASCII letters, digits, `_` or `-`; tables keep file order."
    );
    vec![
        SectionDoc {
            title: "top level",
            intro: "Keys outside any table. A file that defines none of `queues`, `pipelines` \
                    and `sinks` gets the built-in topology (one catch-all queue `default`, one \
                    pipeline `default` writing NDJSON to `<data_dir>/out/events.ndjson`); \
                    `veltrix config default` prints it. Any string may use `${VAR}` or \
                    `${VAR:-default}` (environment variables)."
                .to_owned(),
            keys: vec![
                key(
                    "data_dir",
                    "string (path)",
                    value(format!("\"{DEFAULT_DATA_DIR}\"")),
                    "not empty",
                    "Root of the queues' logs (`<data_dir>/queues/<queue>/`) and of the \
                     default sink's output.",
                ),
                key(
                    "api",
                    "table",
                    text("the `[api]` defaults"),
                    "",
                    "The admin API: see `[api]`.",
                ),
                key(
                    "sources",
                    "table of tables",
                    text("one HTTP source `http` on 127.0.0.1:8080"),
                    "",
                    "Ingest listeners: see `[sources.NAME]`.",
                ),
                key(
                    "queues",
                    "table of tables",
                    text("the built-in topology"),
                    "",
                    "Durable queues, in routing order: see `[queues.NAME]`.",
                ),
                key(
                    "pipelines",
                    "table of tables",
                    text("the built-in topology"),
                    "",
                    "Consumers of queues: see `[pipelines.NAME]`.",
                ),
                key(
                    "sinks",
                    "table of tables",
                    text("the built-in topology"),
                    "",
                    "Destinations: see `[sinks.NAME]`.",
                ),
                key(
                    "tests",
                    "array of tables",
                    value("[]"),
                    "",
                    "Unit tests of the pipelines, run by `veltrix test`: see `[[tests]]`.",
                ),
                key(
                    "include",
                    "array of strings (paths)",
                    value("[]"),
                    "only the file name may hold `*`/`?`",
                    "Files holding more `[[tests]]` (and nothing else), relative to this config's \
                     directory, e.g. `[\"tests/*.toml\"]`; a pattern matching no file is an error.",
                ),
            ],
        },
        SectionDoc {
            title: "[api]",
            intro: "The admin API: `/healthz`, `/readyz`, `/metrics`, the dashboard, the \
                    dead-letter and stats routes."
                .to_owned(),
            keys: vec![
                key(
                    "address",
                    "string: `\"IP:PORT\"`",
                    value(format!("\"{DEFAULT_API_ADDRESS}\"")),
                    "not the address of a source",
                    "Where the admin API listens (loopback by default; `validate` warns when \
                     it is exposed without a token).",
                ),
                key(
                    "token",
                    "string",
                    text("none: no token needed"),
                    "not empty",
                    "When set, every admin route except `/healthz` and the dashboard page needs \
                     `Authorization: Bearer <token>` (compared in constant time).",
                ),
            ]
            .into_iter()
            .chain(listener_limit_keys(""))
            .collect(),
        },
        SectionDoc {
            title: "[sources.NAME]",
            intro: format!(
                "Where events come from: an HTTP listener (`POST /v1/events`) or a source Veltrix pulls from. {names}"
            ),
            keys: vec![
                key(
                    "type",
                    one_of(SOURCE_TYPES),
                    DefaultDoc::Required,
                    "",
                    "`\"http\"`: CloudEvents over HTTP (`POST /v1/events`); `\"generator\"`: \
                     synthetic events at a fixed rate (demos, benchmarks, tests); `\"file\"`: \
                     tails NDJSON files (one structured CloudEvent per line) with checkpoints; \
                     `\"stdin\"`: NDJSON on standard input; `\"nats\"`: CloudEvents from NATS, \
                     a JetStream durable consumer (at-least-once) or a core subscription \
                     (at-most-once). Each type takes the keys marked with its name below (http: \
                     `address`, `body_bytes_max`, `tokens`, `header_timeout`, `body_timeout`, \
                     `connections_max`).",
                ),
                key(
                    "address",
                    "string: `\"IP:PORT\"`",
                    value(format!("\"{DEFAULT_HTTP_ADDRESS}\"")),
                    "unique among listeners (port 0: any free port)",
                    "Where the source listens.",
                ),
                key(
                    "body_bytes_max",
                    SIZE,
                    size(DEFAULT_BODY_BYTES_MAX),
                    format!("1B to {}", ByteSize(BODY_BYTES_MAX_MAX)),
                    "Largest request body; a larger one is refused with `413` without being \
                     read.",
                ),
                key(
                    "tokens",
                    "array of strings",
                    value("[]"),
                    "no empty token",
                    "When non-empty, a request needs `Authorization: Bearer <one of these>` \
                     (http).",
                ),
            ]
            .into_iter()
            .chain(listener_limit_keys(" (http)"))
            .chain([
                key(
                    "rate",
                    "integer (events per second)",
                    value("1000"),
                    format!("1 to {GENERATOR_RATE_MAX}"),
                    "generator: events per second, on a fixed schedule (open loop).",
                ),
                key(
                    "count",
                    "integer",
                    text("none: runs until stopped"),
                    "at least 1",
                    "generator: stop after this many events.",
                ),
                key(
                    "types",
                    "array of strings, or table of type = weight",
                    value("[\"veltrix.generated\"]"),
                    "not empty; weights 1 to 1,000,000",
                    "generator: the event types to send, equally often (array) or by weight \
                     (`{ \"order.created\" = 3, \"order.paid\" = 1 }`), in a fixed cycle.",
                ),
                key(
                    "payload_bytes",
                    "integer (bytes)",
                    value("200"),
                    format!("0 to {GENERATOR_PAYLOAD_MAX}"),
                    "generator: about how many bytes of `data` per event: `{\"seq\", \"key\", \
                     \"value\", \"pad\"}`.",
                ),
                key(
                    "keys",
                    "integer",
                    value("100"),
                    "at least 1",
                    "generator: distinct values of `data.key` (`\"k0\"`, `\"k1\"`, ...), cycling.",
                ),
                key(
                    "source",
                    "string",
                    text("`/veltrix/generator/NAME`"),
                    "not empty",
                    "generator: the CloudEvents `source` attribute of its events.",
                ),
                key(
                    "batch_events",
                    "integer",
                    text(format!(
                        "100 (generator, nats); {DEFAULT_LINE_BATCH_EVENTS} (file, stdin)"
                    )),
                    format!("1 to {BATCH_EVENTS_MAX_MAX} (nats: to {NATS_BATCH_EVENTS_MAX})"),
                    "generator, file, stdin: most events stored per append (one group commit \
                     each); file and stdin also cap a batch at 4 MiB of lines. nats: most \
                     messages stored per append, and per JetStream pull request; at most about \
                     2.5 × this many messages are held in memory.",
                ),
                key(
                    "include",
                    "array of strings (path globs)",
                    DefaultDoc::Required,
                    "not empty; valid patterns",
                    "file: the files to tail: `*`, `?`, `[abc]`, `**` (any directories). \
                     Relative patterns are relative to the working directory. Each line is one \
                     CloudEvent in structured JSON. A file is known by its device and inode, so \
                     a file renamed to another matching name is not read twice.",
                ),
                key(
                    "exclude",
                    "array of strings (path globs)",
                    value("[]"),
                    "valid patterns",
                    "file: matching files to leave alone (e.g. `[\"*.gz\"]`).",
                ),
                key(
                    "read_from",
                    one_of(READ_FROM),
                    value("\"beginning\""),
                    "",
                    "file: where to start in a file with no checkpoint that exists at startup; \
                     `\"end\"` starts after its last complete line. Files that appear later \
                     (new files, rotations) are always read from the beginning, and so is \
                     every file when the checkpoint file is unreadable.",
                ),
                key(
                    "poll_interval",
                    DURATION,
                    duration(DEFAULT_POLL_INTERVAL),
                    "more than 0",
                    "file: how often to look for new files, rotations and new lines when every \
                     file is read to its end.",
                ),
                key(
                    "line_bytes_max",
                    SIZE,
                    size(DEFAULT_LINE_BYTES_MAX),
                    format!("1B to {}", ByteSize(LINE_BYTES_MAX_MAX)),
                    "file, stdin: longest line kept; a longer line is skipped and counted \
                     (`veltrix_events_rejected_total{reason=\"line-too-long\"}`).",
                ),
                key(
                    "open_files_max",
                    "integer",
                    value(DEFAULT_OPEN_FILES_MAX.to_string()),
                    format!("1 to {OPEN_FILES_MAX_MAX}"),
                    "file: most files open at once; further matching files wait for a slot \
                     (`veltrix_source_files_waiting`).",
                ),
                key(
                    "checkpoint_dir",
                    "string (path)",
                    text("`<data_dir>/sources/NAME`"),
                    "not empty; one per file source",
                    "file: where the read position of every file is kept (`checkpoints.json`, \
                     replaced atomically at most every 250 ms and at shutdown).",
                ),
                key(
                    "exit_on_eof",
                    "boolean",
                    value("true"),
                    "",
                    "stdin: at the end of input, stop the engine (exit 0) once every pipeline \
                     reading a queue the input went to has delivered (or dead-lettered) \
                     everything read; `false` keeps the engine running.",
                ),
                key(
                    "url",
                    "string",
                    text("required for `nats`"),
                    "`nats://HOST[:PORT]`, comma-separated for several servers",
                    "nats: the servers (port 4222 by default). The engine starts even when they \
                     are down, and keeps reconnecting.",
                ),
                key(
                    "mode",
                    one_of(NATS_MODES),
                    value("\"jetstream\""),
                    "",
                    "nats: `jetstream` consumes `stream` through a durable pull consumer and \
                     acknowledges each message only once it is stored (at-least-once); `core` \
                     subscribes to `subjects` (at-most-once: what arrives while the engine is \
                     down or disconnected is lost).",
                ),
                key(
                    "stream",
                    "string",
                    text("required for `jetstream`"),
                    format!(
                        "1 to {NATS_NAME_LEN_MAX} characters, no spaces, `.`, `*`, `>`, `/`, `\\`"
                    ),
                    "nats: the JetStream stream consumed.",
                ),
                key(
                    "subjects",
                    "string or array of strings",
                    text("required for `core`, and for `jetstream` with `create_stream`"),
                    "valid subjects (`*`, `>` as whole tokens)",
                    "nats: core: the subjects subscribed. JetStream: the stream's subjects when \
                     it is created, and the consumer's filter (several subjects need NATS \
                     2.10+); without it an existing stream is consumed whole.",
                ),
                key(
                    "consumer",
                    "string",
                    text("the source's name"),
                    "like `stream`",
                    "nats: the durable consumer's name; created when missing (an existing one \
                     keeps its settings).",
                ),
                key(
                    "create_stream",
                    "boolean",
                    value("true"),
                    "",
                    "nats: create `stream` with `subjects` (file storage) when it does not \
                     exist; `false` waits (retrying) for someone else to create it.",
                ),
                key(
                    "ack_wait",
                    DURATION,
                    duration(DEFAULT_NATS_ACK_WAIT),
                    "at least 1s",
                    "nats (jetstream): a message not acknowledged this long after delivery is \
                     delivered again. While a full queue holds a batch back, the source tells \
                     NATS it is still in progress every half `ack_wait`.",
                ),
            ])
            .collect(),
        },
        SectionDoc {
            title: "[queues.NAME]",
            intro: format!(
                "A bounded, durable queue. An event goes to the first queue, in file order, one \
                 of whose `types` patterns matches its `type`. {names}"
            ),
            keys: vec![
                key(
                    "types",
                    "array of strings (glob patterns)",
                    DefaultDoc::Required,
                    "not empty, unless a queue sink feeds the queue",
                    "Glob patterns over the whole CloudEvents `type`: `*` matches any run of \
                     characters (`.` included), `?` exactly one (`order.*`, `*`). `[]`: no event \
                     is routed here from sources; only a sink with `type = \"queue\"` feeds \
                     it (a stage of a multi-stage pipeline).",
                ),
                key(
                    "priority",
                    "integer",
                    value(DEFAULT_PRIORITY.to_string()),
                    "0 to 255",
                    "0 is the most urgent: pipelines reading several queues serve the most \
                     urgent first (see `starvation_max`).",
                ),
                key(
                    "max_bytes",
                    SIZE,
                    size(DEFAULT_MAX_BYTES),
                    format!("at least {}", ByteSize(SEGMENT_BYTES_MIN)),
                    "Backlog bound in bytes; what happens at the bound is `when_full`.",
                ),
                key(
                    "max_events",
                    "integer",
                    value(DEFAULT_MAX_EVENTS.to_string()),
                    "at least 1",
                    "Backlog bound in events.",
                ),
                key(
                    "durability",
                    one_of(DURABILITIES),
                    value("\"fsync\""),
                    "",
                    "When an event counts as stored: `fsync` on disk before `202` \
                     (group-committed); `interval` written, flushed every `fsync_interval`; \
                     `memory` lost on a crash.",
                ),
                key(
                    "fsync_interval",
                    DURATION,
                    duration(DEFAULT_FSYNC_INTERVAL),
                    "more than 0",
                    "The flush period (the loss window) of `durability = \"interval\"`.",
                ),
                key(
                    "segment_bytes",
                    SIZE,
                    size(DEFAULT_SEGMENT_BYTES),
                    format!(
                        "{} to {}, at most `max_bytes`",
                        ByteSize(SEGMENT_BYTES_MIN),
                        ByteSize(SEGMENT_BYTES_MAX)
                    ),
                    "Size of one log segment file; space is reclaimed a whole segment at a \
                     time.",
                ),
                key(
                    "when_full",
                    one_of(WHEN_FULL),
                    value("\"backpressure\""),
                    "",
                    "At a bound: `backpressure` refuses (`429` + `Retry-After`, nothing lost); \
                     `drop_newest` drops the new events that do not fit; `drop_oldest` drops \
                     the oldest segments. Every drop is counted.",
                ),
            ],
        },
        SectionDoc {
            title: "[pipelines.NAME]",
            intro: format!(
                "Reads queues (each pipeline has its own cursor on each queue), runs the \
                 processors on every event and delivers batches to a sink; an event is \
                 acknowledged only after the sink confirms it. {names}"
            ),
            keys: vec![
                key(
                    "from",
                    "string or array of strings",
                    DefaultDoc::Required,
                    "at least one queue, each once",
                    "The queues read, by name.",
                ),
                key(
                    "workers",
                    "integer",
                    value(DEFAULT_WORKERS.to_string()),
                    format!("1 to {WORKERS_MAX}"),
                    format!(
                        "Worker threads sharing the pipeline's reader (`validate` warns above \
                         {WORKERS_PER_CORE_WARN} per core)."
                    ),
                ),
                key(
                    "processors",
                    "array of tables",
                    value("[]"),
                    "",
                    "Run in order on every event: see `processors`.",
                ),
                key(
                    "sink",
                    "string",
                    DefaultDoc::Required,
                    "names a sink",
                    "Where the pipeline delivers (the events no route takes).",
                ),
                key(
                    "routes",
                    "array of tables",
                    value("[]"),
                    "",
                    "Send events to other sinks by condition, first match wins: see `routes`.",
                ),
                key(
                    "batch_events_max",
                    "integer",
                    value(DEFAULT_BATCH_EVENTS_MAX.to_string()),
                    format!("1 to {BATCH_EVENTS_MAX_MAX}"),
                    "Most events handed to the sink in one write.",
                ),
                key(
                    "starvation_max",
                    DURATION,
                    duration(DEFAULT_STARVATION_MAX),
                    "more than 0",
                    "An event waiting this long in a less urgent queue is served next \
                     regardless of priorities.",
                ),
                key(
                    "retry",
                    "inline table",
                    text("the `retry` defaults"),
                    "",
                    "How failed deliveries are retried: see `retry`.",
                ),
                key(
                    "dead_letter",
                    "string",
                    text("`\"<pipeline>.dlq\"`"),
                    "not empty, not a routable queue",
                    "The pipeline's own dead-letter queue: events a processor fails on, and \
                     deliveries that failed for good (`veltrix dlq`).",
                ),
            ],
        },
        SectionDoc {
            title: "retry",
            intro: "`retry = { attempts_max = 5, backoff_initial = \"200ms\", backoff_max = \
                    \"30s\" }` in a pipeline: exponential backoff with full jitter between \
                    delivery attempts; retryable failures only (a permanent one is \
                    dead-lettered at once)."
                .to_owned(),
            keys: vec![
                key(
                    "attempts_max",
                    "integer",
                    value(DEFAULT_ATTEMPTS_MAX.to_string()),
                    format!("1 to {ATTEMPTS_MAX_MAX}"),
                    "Delivery attempts in all, the first included; then the batch is \
                     dead-lettered.",
                ),
                key(
                    "backoff_initial",
                    DURATION,
                    duration(DEFAULT_BACKOFF_INITIAL),
                    "more than 0",
                    "Upper bound of the first wait.",
                ),
                key(
                    "backoff_max",
                    DURATION,
                    duration(DEFAULT_BACKOFF_MAX),
                    "at least `backoff_initial`",
                    "Upper bound of any wait (each wait's bound doubles up to this).",
                ),
            ],
        },
        SectionDoc {
            title: "processors",
            intro: "Each item of a pipeline's `processors`, run in order on every event: \
                    `{ type = \"filter\", condition = '...' }` and so on; each type takes \
                    `type` and its own keys. Programs and key expressions are \
                    [VRL](https://vector.dev/docs/reference/vrl/), compiled at load (errors \
                    point into the config); the event is the CloudEvent as a VRL object (`.type`, \
                    `.data.amount`, …). An event a processor fails on is dead-lettered. Keys \
                    (`key`) are hashed (SipHash-1-3, fixed keys: the same key gives the same \
                    result across restarts and machines). `batch` and `aggregate` must be last."
                .to_owned(),
            keys: vec![
                key(
                    "type",
                    one_of(PROCESSOR_TYPES),
                    DefaultDoc::Required,
                    "",
                    "`filter` keeps the events for which `condition` is true; `remap` modifies \
                     the event with `source`; `dedupe` drops an event whose `key` passed within \
                     `window`; `throttle` lets `rate` events per `per` through per `key`; \
                     `sample` keeps a deterministic fraction; `aggregate` summarises tumbling \
                     windows per `key` into derived events appended to the queue `into` (the \
                     events it takes are consumed); `batch` sets how many events a sink write \
                     carries.",
                ),
                key(
                    "condition",
                    "string (VRL)",
                    text("required for `filter`"),
                    "returns a boolean",
                    "`filter`: the condition.",
                ),
                key(
                    "source",
                    "string (VRL)",
                    text("required for `remap`"),
                    "leaves a valid CloudEvent",
                    "`remap`: the program.",
                ),
                key(
                    "key",
                    "string (VRL expression)",
                    text(
                        "`dedupe`, `sample`: the event's `source` and `id`; `throttle`: one \
                         bucket; `aggregate`: one group",
                    ),
                    "read-only",
                    "`dedupe`, `throttle`, `sample`, `aggregate`: what identifies or groups \
                     an event, e.g. `'.data.player'` (any value; a missing field is `null`).",
                ),
                key(
                    "window",
                    DURATION,
                    text(format!(
                        "`dedupe`: `\"{}\"`; `aggregate`: `\"{}\"`",
                        format_duration(DEFAULT_DEDUPE_WINDOW),
                        format_duration(DEFAULT_AGGREGATE_WINDOW)
                    )),
                    format!(
                        "more than 0; `aggregate`: {} to {}",
                        format_duration(AGGREGATE_WINDOW_MIN),
                        format_duration(AGGREGATE_WINDOW_MAX)
                    ),
                    "`dedupe`: how long a key is remembered after the event that passed with \
                     it; `aggregate`: the tumbling window's length (windows start at multiples \
                     of it since the Unix epoch, by processing time).",
                ),
                key(
                    "max_keys",
                    "integer",
                    value(DEFAULT_MAX_KEYS.to_string()),
                    format!("1 to {MAX_KEYS_MAX}"),
                    "`dedupe`, `throttle`: most keys remembered (the oldest is evicted, \
                     counted); `aggregate`: most keys in one window (an event with a new key \
                     beyond it is dead-lettered).",
                ),
                key(
                    "rate",
                    "integer (`throttle`), number (`sample`)",
                    DefaultDoc::Required,
                    format!(
                        "`throttle`: 1 to {THROTTLE_RATE_MAX}; `sample`: more than 0, at most 1"
                    ),
                    "`throttle`: events let through per `per`, per key; `sample`: the fraction \
                     kept.",
                ),
                key(
                    "per",
                    DURATION,
                    duration(DEFAULT_THROTTLE_PER),
                    "more than 0",
                    "`throttle`: the period of `rate`.",
                ),
                key(
                    "burst",
                    "integer",
                    text("`throttle`: `rate`"),
                    format!("1 to {THROTTLE_RATE_MAX}"),
                    "`throttle`: the bucket's capacity (events let through at once after a \
                     quiet spell).",
                ),
                key(
                    "when_exceeded",
                    one_of(WHEN_EXCEEDED),
                    value("\"drop\""),
                    "",
                    "`throttle`: what happens to an event over the limit: dropped (counted) or \
                     dead-lettered with the reason `throttled`.",
                ),
                key(
                    "fields",
                    "table of strings (VRL expressions)",
                    value("{}"),
                    format!(
                        "at most {AGGREGATE_FIELDS_MAX}; not `key`, `window_start`, \
                         `window_end`, `count`"
                    ),
                    "`aggregate`: numbers summarised per window and key, by output name: \
                     `{ score = '.data.points' }` gives `score = {sum, min, max, avg, count}` \
                     (a missing value is skipped; a non-number dead-letters the event).",
                ),
                key(
                    "into",
                    "string",
                    text("required for `aggregate`"),
                    "names a queue; no cycle",
                    "`aggregate`: the queue the derived events are appended to (durably); a \
                     queue whose readers feed back into this pipeline is a cycle (V012).",
                ),
                key(
                    "event_type",
                    "string",
                    text("required for `aggregate`"),
                    "not empty",
                    "`aggregate`: the derived events' `type`.",
                ),
                key(
                    "max_events",
                    "integer",
                    value(DEFAULT_BATCH_MAX_EVENTS.to_string()),
                    format!("1 to {BATCH_MAX_EVENTS_MAX}"),
                    "`batch`: most events per sink write (they stay unacknowledged until it is \
                     written, so at most a queue cursor's in-flight bound).",
                ),
                key(
                    "max_bytes",
                    SIZE,
                    size(DEFAULT_BATCH_MAX_BYTES),
                    format!(
                        "{} to {}",
                        ByteSize(BATCH_MAX_BYTES_MIN),
                        ByteSize(BATCH_MAX_BYTES_MAX)
                    ),
                    "`batch`: most bytes per sink write (a single larger event goes alone).",
                ),
                key(
                    "max_wait",
                    DURATION,
                    duration(DEFAULT_BATCH_MAX_WAIT),
                    format!(
                        "more than 0, at most {}",
                        format_duration(BATCH_MAX_WAIT_MAX)
                    ),
                    "`batch`: longest wait since a batch's first event before it is written \
                     however small (its events stay unacknowledged meanwhile).",
                ),
            ],
        },
        SectionDoc {
            title: "routes",
            intro: "`routes = [{ condition = '.type == \"order.paid\"', sink = \"billing\" }]` \
                    in a pipeline: after the processors, each event goes to the sink of the \
                    first route whose condition holds, else to the pipeline's `sink`. Each \
                    sink gets its own part of a batch, written concurrently with its own \
                    retries; a part that fails for good is dead-lettered alone."
                .to_owned(),
            keys: vec![
                key(
                    "condition",
                    "string (VRL)",
                    DefaultDoc::Required,
                    "returns a boolean",
                    "Whether this route takes the event.",
                ),
                key(
                    "sink",
                    "string",
                    DefaultDoc::Required,
                    "names a sink",
                    "Where the events this route takes go.",
                ),
            ],
        },
        SectionDoc {
            title: "[sinks.NAME]",
            intro: format!(
                "Where pipelines deliver. Each type takes `type` and its own keys. {names}"
            ),
            keys: vec![
                key(
                    "type",
                    one_of(SINK_TYPES),
                    DefaultDoc::Required,
                    "",
                    "`file`: NDJSON appended to `path` (fdatasync per write); `stdout`: \
                     NDJSON on standard output; `blackhole`: discards; `http`: POSTs each \
                     batch to `url` as `application/cloudevents-batch+json` (timeouts, \
                     connection errors, 5xx, 408 and 429 are retried; other answers are \
                     permanent); `nats`: publishes each event to `subject` (JetStream: waits \
                     for every PubAck); `postgres`: inserts each batch into `table` in one \
                     transaction, once per (`source`, `id`); `queue`: appends each batch to \
                     the configured queue `queue`, durably.",
                ),
                key(
                    "path",
                    "string (path)",
                    text("required for `file`"),
                    "not empty",
                    "`file` only: the NDJSON file (its directory is created).",
                ),
                key(
                    "url",
                    "string",
                    text("required for `http`, `nats` and `postgres`"),
                    "`http`: an `http://` URL; `nats`: `nats://HOST[:PORT]`, comma-separated; \
                     `postgres`: a `postgres://` URL",
                    "`http`: the endpoint; `nats`: the servers (the engine starts even when \
                     they are down). `postgres`: the server, \
                     `postgres://user:password@host:port/database` (libpq URL parameters \
                     allowed; no TLS yet). The engine starts without connecting; batches are \
                     retried until the server answers.",
                ),
                key(
                    "timeout",
                    DURATION,
                    duration(DEFAULT_HTTP_TIMEOUT),
                    "more than 0",
                    "`http`: the longest wait for one request's answer; `nats`: for a batch's \
                     PubAcks (JetStream) or flush (core). `postgres`: the longest one batch \
                     may take, waiting for a connection included (a batch over it is rolled \
                     back and retried).",
                ),
                key(
                    "subject",
                    "string (template)",
                    text("required for `nats`"),
                    "a valid subject to publish to once rendered",
                    "`nats` only: where each event goes; may use `{{ .type }}`, `{{ .source }}`, \
                     `{{ .id }}`, `{{ .subject }}` (in values, spaces, `*` and `>` become `_`, \
                     empty tokens `_`).",
                ),
                key(
                    "jetstream",
                    "boolean",
                    value("true"),
                    "",
                    "`nats` only: `true` publishes through JetStream and confirms a batch once \
                     every message has its PubAck (no stream for the subject is a permanent \
                     failure); `false` is a core publish + flush (no confirmation from a \
                     subscriber).",
                ),
                key(
                    "msg_id",
                    "string (template)",
                    value(format!("\"{DEFAULT_NATS_MSG_ID}\"")),
                    "",
                    "`nats` only: the `Nats-Msg-Id` header, the key JetStream deduplicates on \
                     within the stream's duplicate window (so redelivered batches are not \
                     stored twice).",
                ),
                key(
                    "concurrency",
                    "`\"adaptive\"`, integer, or table `{ initial, max }`",
                    value("\"adaptive\""),
                    format!("1 to {CONCURRENCY_MAX_MAX}; `initial` ≤ `max`"),
                    format!(
                        "`http` only: requests in flight at once (across the workers of every \
                         pipeline writing to the sink; each worker sends one at a time, so raise \
                         `workers` to use more). A number is a fixed limit; `\"adaptive\"` \
                         (`{{ initial = {DEFAULT_CONCURRENCY_INITIAL}, max = \
                         {DEFAULT_CONCURRENCY_MAX} }}`) starts at `initial`, adds 1 per round \
                         trip while answers come back as fast as usual, and halves on 429, 503, \
                         timeouts or connection errors (×0.9 when round trips grow well above \
                         their average). Metric: `veltrix_sink_concurrency_limit`."
                    ),
                ),
                key(
                    "queue",
                    "string",
                    text("required for `queue`"),
                    "names a queue; no cycle",
                    "`queue` only: the queue the events are appended to, with that queue's \
                     durability and `when_full` (a full backpressure queue is retried). A \
                     pipeline reading it must not lead back to a queue upstream (V012).",
                ),
                key(
                    "schema",
                    "string",
                    value(format!("\"{DEFAULT_POSTGRES_SCHEMA}\"")),
                    format!("1 to {SQL_IDENTIFIER_BYTES_MAX} bytes"),
                    "`postgres` only: the table's schema.",
                ),
                key(
                    "table",
                    "string",
                    text("required for `postgres`"),
                    format!("1 to {SQL_IDENTIFIER_BYTES_MAX} bytes"),
                    "`postgres` only: the table (`id text, source text, type text, time \
                     timestamptz, subject text, data jsonb`, the mapped `columns`, primary key \
                     (`source`, `id`)).",
                ),
                key(
                    "create_table",
                    "boolean",
                    value("true"),
                    "",
                    "`postgres` only: create the table (and nothing else) if it is missing, \
                     before the first insert. `false`: a missing table dead-letters batches \
                     (SQLSTATE 42P01).",
                ),
                key(
                    "pool_size",
                    "integer",
                    value(DEFAULT_POSTGRES_POOL_SIZE.to_string()),
                    format!("1 to {POSTGRES_POOL_SIZE_MAX}"),
                    "`postgres` only: most connections open at once (a batch waits for one \
                     within `timeout`). Metric: `veltrix_sink_pool_connections`.",
                ),
                key(
                    "columns",
                    "table of column = VRL string or `{ expr, type }`",
                    value("{}"),
                    format!(
                        "plain identifiers, not a fixed column; `type` one of {}",
                        ColumnType::ALL
                            .iter()
                            .map(|(n, _)| format!("`\"{n}\"`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "`postgres` only: extra columns, each filled by a read-only VRL expression \
                     over the event (`player = '.data.player'`, `score = { expr = \
                     'to_int!(.data.score)', type = \"bigint\" }`). Without `type` a column is \
                     `text`: strings as they are, other values as JSON text. `null` stores \
                     NULL; an expression failing at run time, or a value the column type \
                     refuses (SQLSTATE 22xxx), dead-letters the batch.",
                ),
            ],
        },
        SectionDoc {
            title: "[[tests]]",
            intro: "Unit tests of the pipelines, run by `veltrix test FILE` against the real \
                    processors with the sink replaced by a capture. Every outcome is checked: \
                    the delivered events must match `expect` (none when absent) and the \
                    dead-lettered ones `expect_dead_letter` (none when absent); filtered \
                    events are neither. TOML values are compared as JSON (datetimes as \
                    RFC 3339 strings)."
                .to_owned(),
            keys: vec![
                key(
                    "name",
                    "string",
                    DefaultDoc::Required,
                    "not empty, unique",
                    "What the test checks; named in the report.",
                ),
                key(
                    "pipeline",
                    "string",
                    DefaultDoc::Required,
                    "names a pipeline",
                    "The pipeline whose processors run.",
                ),
                key(
                    "input",
                    "array of tables (CloudEvents)",
                    DefaultDoc::Required,
                    "at least one; each a valid CloudEvent",
                    "Events in structured mode (`type`, `source`, `id`, `data`, …; \
                     `specversion` may be left out), run in order. An event whose type is \
                     not routed to one of the pipeline's queues fails the test.",
                ),
                key(
                    "expect",
                    "array of tables",
                    value("[]"),
                    "",
                    "The delivered events, in order and in number; each a *subset*: every key \
                     given must be there with an equal value (tables recursively, arrays \
                     exactly, `1` equals `1.0`).",
                ),
                key(
                    "expect_none",
                    "boolean",
                    value("false"),
                    "not with a non-empty `expect`",
                    "`true`: no event is delivered (all filtered or dead-lettered).",
                ),
                key(
                    "expect_dead_letter",
                    "boolean or string",
                    value("false"),
                    "",
                    "`true`: at least one event is dead-lettered; a string: also every \
                     dead-letter reason contains it. A test needs at least one of `expect`, \
                     `expect_none = true`, `expect_emitted` or this.",
                ),
                key(
                    "expect_sinks",
                    "array of strings",
                    text("not checked"),
                    "one per `expect` item",
                    "The sink each delivered event goes to, in order (pipelines with `routes`).",
                ),
                key(
                    "expect_emitted",
                    "array of tables",
                    value("[]"),
                    "",
                    "The derived events the pipeline's aggregates emit, in order, each a subset \
                     like `expect`. Tests run on a frozen clock (2000-01-01T00:00:00Z): all \
                     inputs fall in one window, and every window closes when the test ends.",
                ),
            ],
        },
    ]
}

/// The reference as Markdown: `docs/configuration.md` and `veltrix config reference`.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\n\
         <!-- Generated by `veltrix config reference` from crates/veltrix-core/src/config/reference.rs;\n     \
         regenerate with `cargo run -- config reference > docs/configuration.md`. -->\n\n\
         A Veltrix config is one TOML file (`veltrix run -c FILE`), checked by `veltrix validate \
         FILE` (every problem as `FILE:LINE:COL` with a hint) and tested by `veltrix test FILE`. \
         `veltrix config default` prints the built-in default config. Sizes are `\"64MiB\"`, \
         `\"10MB\"` (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB) or a number of bytes; \
         durations are `\"200ms\"`, `\"5s\"`, `\"1m\"`, `\"1h 30m\"`.\n",
    );
    for section in reference() {
        let title = if section.title.contains(' ') {
            // Prose ("top level"), not something written in a file.
            let mut chars = section.title.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        } else {
            format!("`{}`", section.title)
        };
        let _ = write!(
            out,
            "\n## {title}\n\n{}\n\n| key | type | default | bound | meaning |\n|---|---|---|---|---|\n",
            section.intro
        );
        for k in &section.keys {
            let default = match &k.default {
                DefaultDoc::Required => "**required**".to_owned(),
                DefaultDoc::Value(v) => format!("`{v}`"),
                DefaultDoc::Text(t) => t.clone(),
            };
            let bound = if k.bound.is_empty() { "—" } else { &k.bound };
            let _ = writeln!(
                out,
                "| `{}` | {} | {default} | {bound} | {} |",
                k.key,
                k.ty,
                k.meaning.replace('|', "\\|")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::nats::NATS_SINK_KEYS;
    use super::super::tests_section::TEST_KEYS;
    use super::*;

    /// The decoder's accepted keys per documented section.
    fn accepted(title: &str) -> &'static [&'static str] {
        match title {
            "top level" => ROOT_KEYS,
            "[api]" => API_KEYS,
            "[sources.NAME]" => SOURCE_KEYS,
            "[queues.NAME]" => QUEUE_KEYS,
            "[pipelines.NAME]" => PIPELINE_KEYS,
            "retry" => RETRY_KEYS,
            "processors" => PROCESSOR_KEYS,
            "routes" => ROUTE_KEYS,
            "[sinks.NAME]" => SINK_KEYS,
            "[[tests]]" => TEST_KEYS,
            other => panic!("section {other} maps to no key list"),
        }
    }

    #[test]
    fn every_accepted_key_is_documented_and_nothing_else() {
        let sections = reference();
        let all_key_lists = [
            ROOT_KEYS,
            API_KEYS,
            SOURCE_KEYS,
            QUEUE_KEYS,
            PIPELINE_KEYS,
            RETRY_KEYS,
            PROCESSOR_KEYS,
            ROUTE_KEYS,
            SINK_KEYS,
            TEST_KEYS,
        ];
        assert_eq!(
            sections.len(),
            all_key_lists.len(),
            "a key list is undocumented"
        );
        for section in &sections {
            let documented: Vec<&str> = section.keys.iter().map(|k| k.key).collect();
            assert_eq!(
                documented,
                accepted(section.title),
                "section {} documents other keys than the decoder accepts (same order)",
                section.title
            );
            for k in &section.keys {
                assert!(!k.ty.is_empty() && !k.meaning.is_empty(), "{}", k.key);
            }
        }
    }

    /// A config with `line` in the table the section describes.
    fn config_with(title: &str, key: &str, line: &str) -> String {
        let topology = |queue: &str, pipeline: &str, sink: &str| {
            format!(
                "[queues.q]\ntypes = [\"*\"]\n{queue}\n[pipelines.p]\nfrom = [\"q\"]\nsink = \
                 \"s\"\n{pipeline}\n[sinks.s]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\n{sink}\n"
            )
        };
        match title {
            "top level" => format!("{line}\n"),
            "[api]" => format!("[api]\n{line}\n"),
            "[sources.NAME]" if HTTP_SOURCE_KEYS.contains(&key) => {
                format!("[sources.http]\ntype = \"http\"\n{line}\n")
            }
            "[sources.NAME]" if key == "exit_on_eof" => {
                format!("[sources.in]\ntype = \"stdin\"\n{line}\n")
            }
            "[sources.NAME]" if FILE_SOURCE_KEYS.contains(&key) => format!(
                "[sources.f]\ntype = \"file\"\n{}\n",
                if key == "include" {
                    line.to_owned()
                } else {
                    format!("include = [\"/tmp/*.ndjson\"]\n{line}")
                }
            ),
            "[sources.NAME]" if !GENERATOR_SOURCE_KEYS.contains(&key) => format!(
                "[sources.n]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"S\"\n\
                 subjects = [\"s.>\"]\n{line}\n"
            ),
            "[sources.NAME]" => format!("[sources.g]\ntype = \"generator\"\n{line}\n"),
            "[queues.NAME]" => topology(line, "", ""),
            "[pipelines.NAME]" => topology("", line, ""),
            "retry" => topology("", &format!("retry = {{ {line} }}"), ""),
            "[sinks.NAME]" if NATS_SINK_KEYS.contains(&key) && key != "url" => format!(
                "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\n\
                 [sinks.s]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"x\"\n{line}\n"
            ),
            "[sinks.NAME]" if POSTGRES_SINK_KEYS.contains(&key) && key != "timeout" => format!(
                "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\n\
                 [sinks.s]\ntype = \"postgres\"\nurl = \"postgres://h/d\"\ntable = \"t\"\n{line}\n"
            ),
            "[sinks.NAME]" => topology("", "", line),
            "processors" => {
                let (item, extra_queue) = match key {
                    "max_keys" => ("type = \"dedupe\"", ""),
                    "per" | "when_exceeded" => ("type = \"throttle\", rate = 10", ""),
                    "fields" => (
                        "type = \"aggregate\", into = \"r\", event_type = \"t\"",
                        "[queues.r]\ntypes = [\"r\"]\n",
                    ),
                    "max_events" | "max_bytes" | "max_wait" => ("type = \"batch\"", ""),
                    other => panic!("no processor template for `{other}`"),
                };
                let sep = if line.is_empty() { "" } else { ", " };
                format!(
                    "{extra_queue}{}",
                    topology("", &format!("processors = [{{ {item}{sep}{line} }}]"), "")
                )
            }
            "[[tests]]" => {
                // Some expectation is required: one the line does not set.
                let other = if key == "expect_dead_letter" || key == "expect_emitted" {
                    "expect = []"
                } else {
                    "expect_dead_letter = true"
                };
                format!(
                    "{}[[tests]]\nname = \"t\"\npipeline = \"p\"\ninput = [{{ type = \"t\", \
                     source = \"/s\", id = \"1\" }}]\n{other}\n{line}\n",
                    topology("", "", "")
                )
            }
            other => panic!("no template for {other}"),
        }
    }

    #[test]
    fn every_documented_default_is_the_decoders_default() {
        let env = |_: &str| None;
        let mut checked = 0;
        for section in reference() {
            for k in &section.keys {
                let DefaultDoc::Value(literal) = &k.default else {
                    continue;
                };
                let without = config_with(section.title, k.key, "");
                let with = config_with(section.title, k.key, &format!("{} = {literal}", k.key));
                let parse = |src: &str| match parse_str_with_env(src, "t.toml", 2, &env) {
                    Ok(loaded) => loaded.config,
                    Err(d) => panic!(
                        "{src}\n{}",
                        d.iter().map(|d| d.to_string()).collect::<String>()
                    ),
                };
                assert_eq!(
                    parse(&with),
                    parse(&without),
                    "{} `{}`: the documented default {literal} is not the default",
                    section.title,
                    k.key
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} defaults checked");
    }

    #[test]
    fn the_markdown_has_one_row_per_key() {
        let markdown = reference_markdown();
        let rows = markdown.lines().filter(|l| l.starts_with("| `")).count();
        let keys: usize = reference().iter().map(|s| s.keys.len()).sum();
        assert_eq!(rows, keys);
        assert!(markdown.contains("| `max_bytes` | size"));
    }
}
