//! The configuration reference: every key the decoder accepts, with its type, default, bound
//! and meaning. `veltrix config reference` prints [`reference_markdown`], which is committed as
//! `docs/configuration.md`.
//!
//! It cannot drift from the decoder: defaults and bounds are formatted from the decoder's own
//! constants, and the unit tests check that every section documents exactly the keys its
//! `*_KEYS` constant accepts and that writing each documented default gives the same config as
//! leaving the key out.

use std::fmt::Write as _;

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
                     synthetic events at a fixed rate (demos, benchmarks, tests). Each type \
                     takes the keys marked with its name below (http: `address`, \
                     `body_bytes_max`, `tokens`, `header_timeout`, `body_timeout`, \
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
                    value("100"),
                    format!("1 to {BATCH_EVENTS_MAX_MAX}"),
                    "generator: events stored per append (one group commit each).",
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
                    "not empty",
                    "Glob patterns over the whole CloudEvents `type`: `*` matches any run of \
                     characters (`.` included), `?` exactly one (`order.*`, `*`).",
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
                    "Where the pipeline delivers.",
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
            intro: "Each item of a pipeline's `processors`: `{ type = \"filter\", condition = \
                    '...' }` or `{ type = \"remap\", source = '...' }`. Programs are \
                    [VRL](https://vector.dev/docs/reference/vrl/), compiled at load (errors \
                    point into the config); the event is the CloudEvent as a VRL object (`.type`, \
                    `.data.amount`, …). An event a processor fails on is dead-lettered."
                .to_owned(),
            keys: vec![
                key(
                    "type",
                    one_of(PROCESSOR_TYPES),
                    DefaultDoc::Required,
                    "",
                    "`filter` keeps the events for which `condition` is true (the others are \
                     counted as filtered); `remap` modifies the event with `source`.",
                ),
                key(
                    "condition",
                    "string (VRL)",
                    text("required for `filter`"),
                    "returns a boolean",
                    "The filter's condition.",
                ),
                key(
                    "source",
                    "string (VRL)",
                    text("required for `remap`"),
                    "leaves a valid CloudEvent",
                    "The remap program.",
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
                     permanent).",
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
                    text("required for `http`"),
                    "an `http://` URL",
                    "`http` only: the endpoint.",
                ),
                key(
                    "timeout",
                    DURATION,
                    duration(DEFAULT_HTTP_TIMEOUT),
                    "more than 0",
                    "`http` only: the longest wait for one request's answer.",
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
                     `expect_none = true` or this.",
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
            "[sources.NAME]" => format!("[sources.g]\ntype = \"generator\"\n{line}\n"),
            "[queues.NAME]" => topology(line, "", ""),
            "[pipelines.NAME]" => topology("", line, ""),
            "retry" => topology("", &format!("retry = {{ {line} }}"), ""),
            "[sinks.NAME]" => topology("", "", line),
            "[[tests]]" => {
                // Some expectation is required: one the line does not set.
                let other = if key == "expect_dead_letter" {
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
                if section.title == "processors" {
                    continue;
                }
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
