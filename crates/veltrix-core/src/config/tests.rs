use super::*;

const CORES: usize = 2;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(src: &str) -> Result<Loaded, Vec<Diagnostic>> {
    parse_str_with_env(src, "veltrix.toml", CORES, &no_env)
}

fn valid(src: &str) -> Loaded {
    match parse(src) {
        Ok(loaded) => loaded,
        Err(diagnostics) => panic!("expected a valid config, got:\n{}", render(&diagnostics)),
    }
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match parse(src) {
        Ok(loaded) => panic!("expected errors, got {:?}", loaded.config),
        Err(diagnostics) => diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .collect(),
    }
}

/// The single error of `src`, checked to be at `line:col` and to contain `message`.
#[track_caller]
fn check_error(src: &str, line: usize, col: usize, message: &str) -> Diagnostic {
    let errors = errors(src);
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}",
        render(&errors)
    );
    let error = errors.into_iter().next().expect("one error");
    assert_eq!(
        (error.line, error.col),
        (line, col),
        "wrong location:\n{error}"
    );
    assert!(
        error.message.contains(message),
        "{:?} does not contain {message:?}",
        error.message
    );
    error
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(ToString::to_string).collect()
}

fn warning_messages(loaded: &Loaded) -> Vec<&str> {
    loaded.warnings.iter().map(|w| w.message.as_str()).collect()
}

/// A small valid topology to build broken variants from.
const BASE: &str = r#"
[queues.default]
types = ["*"]

[pipelines.main]
from = ["default"]
sink = "out"

[sinks.out]
type = "blackhole"
"#;

const ISSUE_EXAMPLE: &str = r#"
data_dir = "./veltrix-data"
[api]                      # admin, health, metrics; loopback by default
address = "127.0.0.1:8081"
[sources.http]
type = "http"
address = "127.0.0.1:8080"
body_bytes_max = "10MiB"
[queues.critical]
types = ["payment.*", "treasure.claimed"]   # glob patterns on the CloudEvents `type`
priority = 0                                # 0 = most urgent
[queues.default]
types = ["*"]
max_bytes = "1GiB"
durability = "fsync"                        # fsync | interval | memory
[pipelines.archive]
from = ["critical", "default"]
workers = 4
processors = [
  { type = "filter", condition = '.type != "debug.ping"' },
  { type = "remap", source = '.data.total = int!(.data.amount) * int!(.data.qty)' },
]
sink = "archive_file"
[sinks.archive_file]
type = "file"
path = "./veltrix-data/out/archive.ndjson"
"#;

#[test]
fn the_default_config_validates_and_matches_its_written_form() {
    let loaded = valid(DEFAULT_CONFIG_TOML);
    assert_eq!(loaded.warnings, []);
    assert_eq!(loaded.config, Config::default_config(DEFAULT_DATA_DIR));
    let config = Config::default_config("/var/lib/veltrix");
    assert_eq!(
        config.sinks["default"],
        SinkConfig::File {
            path: PathBuf::from("/var/lib/veltrix/out/events.ndjson")
        }
    );
    assert_eq!(config.api.address.to_string(), "127.0.0.1:8081");
    let SourceConfig::Http(http) = &config.sources["http"] else {
        panic!("an http source")
    };
    assert_eq!(http.address.to_string(), "127.0.0.1:8080");
}

#[test]
fn an_empty_file_is_the_default_config() {
    assert_eq!(valid("").config, Config::default_config(DEFAULT_DATA_DIR));
    let custom = valid("data_dir = \"/data\"\n").config;
    assert_eq!(custom, Config::default_config("/data"));
}

#[test]
fn the_issue_example_parses_with_every_value() {
    let loaded = valid(ISSUE_EXAMPLE);
    assert_eq!(loaded.warnings, []);
    let config = loaded.config;
    let names: Vec<&str> = config.queues.keys().map(String::as_str).collect();
    assert_eq!(names, ["critical", "default"]);
    let critical = &config.queues["critical"];
    assert_eq!(critical.priority, 0);
    assert_eq!(critical.types.len(), 2);
    assert_eq!(config.queues["default"].priority, DEFAULT_PRIORITY);
    assert_eq!(config.queues["default"].max_bytes, ByteSize(1 << 30));
    let archive = &config.pipelines["archive"];
    assert_eq!(archive.from, ["critical", "default"]);
    assert_eq!(archive.workers, 4);
    assert_eq!(archive.sink, "archive_file");
    assert!(
        matches!(&archive.processors[0], ProcessorConfig::Filter(f) if f.source() == ".type != \"debug.ping\"")
    );
    assert!(matches!(&archive.processors[1], ProcessorConfig::Remap(_)));
    let SourceConfig::Http(http) = &config.sources["http"] else {
        panic!("an http source")
    };
    assert_eq!(http.body_bytes_max, ByteSize(10 << 20));
}

#[test]
fn every_queue_setting_is_read() {
    let config = valid(
        r#"
[queues.q]
types = ["a.*"]
priority = 7
max_bytes = 1048576
max_events = 5000
durability = "interval"
fsync_interval = "250ms"
segment_bytes = "512KiB"
when_full = "drop_oldest"
[queues.rest]
types = ["*"]
durability = "memory"
[pipelines.p]
from = "q"
workers = 2
batch_events_max = 10
processors = []
sink = "s"
starvation_max = "2s"
retry = { attempts_max = 3, backoff_initial = "10ms", backoff_max = "1s" }
dead_letter = "p-failures"
[pipelines.r]
from = ["rest"]
sink = "s"
[sinks.s]
type = "stdout"
"#,
    )
    .config;
    assert_eq!(
        config.queues["q"],
        QueueConfig {
            types: vec![TypePattern::new("a.*").unwrap()],
            priority: 7,
            max_bytes: ByteSize(1 << 20),
            max_events: 5000,
            durability: Durability::Interval,
            fsync_interval: Duration::from_millis(250),
            segment_bytes: ByteSize(512 << 10),
            when_full: WhenFull::DropOldest,
        }
    );
    assert_eq!(config.queues["rest"].durability, Durability::Memory);
    assert_eq!(config.queues["rest"].when_full, WhenFull::Backpressure);
    let p = &config.pipelines["p"];
    assert_eq!(p.starvation_max, Duration::from_secs(2));
    assert_eq!(
        p.retry,
        RetryConfig {
            attempts_max: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        }
    );
    assert_eq!(p.dead_letter, "p-failures");
    assert_eq!(config.pipelines["r"].dead_letter, "r.dlq");
    assert_eq!(config.pipelines["r"].retry, RetryConfig::default());
    assert_eq!(config.pipelines["p"].from, ["q"]);
    assert_eq!(config.pipelines["p"].batch_events_max, 10);
    assert_eq!(config.sinks["s"], SinkConfig::Stdout);
}

#[test]
fn unknown_keys_are_errors_with_did_you_mean_at_the_key() {
    let src = "[sources.http]\ntype = \"http\"\n  adress = \"127.0.0.1:9000\"\n";
    let error = check_error(
        src,
        3,
        3,
        "unknown key `adress` in source `http` (type \"http\")",
    );
    assert_eq!(error.hint.as_deref(), Some("did you mean `address`?"));
    assert_eq!(error.width, 6);
    assert_eq!(
        error.to_string(),
        "veltrix.toml:3:3: error[V004]: unknown key `adress` in source `http` (type \"http\")\n  \
         |\n\
         3 |   adress = \"127.0.0.1:9000\"\n  \
         |   ^^^^^^\n  \
         = hint: did you mean `address`?\n"
    );
}

#[test]
fn unknown_keys_without_a_close_match_list_the_allowed_keys() {
    let src = format!("{BASE}zzz = 1\n");
    let error = check_error(
        &src,
        11,
        1,
        "unknown key `zzz` in sink `out` (type \"blackhole\")",
    );
    assert_eq!(error.hint.as_deref(), Some("allowed keys: `type`"));
    let error = check_error("verbose = true\n", 1, 1, "unknown top-level key `verbose`");
    assert!(error.hint.unwrap().contains("`data_dir`"));
}

#[test]
fn unknown_keys_in_inline_processor_tables_are_located() {
    let src = BASE.replace(
        "sink = \"out\"",
        "sink = \"out\"\nprocessors = [{ type = \"filter\", conditon = 'true' }]",
    );
    let error = check_error(&src, 8, 34, "unknown key `conditon` in filter processor");
    assert_eq!(error.hint.as_deref(), Some("did you mean `condition`?"));
}

#[test]
fn a_misspelt_required_key_is_reported_once_as_unknown() {
    let src = BASE.replace("type = \"blackhole\"", "typ = \"blackhole\"");
    let error = check_error(&src, 10, 1, "unknown key `typ` in sink `out`");
    assert_eq!(error.hint.as_deref(), Some("did you mean `type`?"));
}

#[test]
fn wrong_types_are_errors_at_the_value() {
    let src = BASE.replace("sink = \"out\"", "sink = \"out\"\nworkers = \"four\"");
    check_error(&src, 8, 11, "`workers` must be an integer, found a string");
    let src = BASE.replace("sink = \"out\"", "sink = \"out\"\nworkers = \"4\"");
    let error = check_error(&src, 8, 11, "`workers` must be an integer");
    assert_eq!(
        error.hint.as_deref(),
        Some("remove the quotes: `workers = 4`")
    );
    check_error(
        "[api]\naddress = 8081\n",
        2,
        11,
        "`address` must be a string, found an integer",
    );
    check_error(
        "queues = 3\n",
        1,
        10,
        "`queues` must be a table, found an integer",
    );
}

#[test]
fn out_of_range_integers_are_errors() {
    let src = BASE.replace("sink = \"out\"", "sink = \"out\"\nworkers = 0");
    check_error(&src, 8, 11, "`workers` must be between 1 and 1024");
    let src = BASE.replace("types = [\"*\"]", "types = [\"*\"]\npriority = 300");
    check_error(&src, 4, 12, "`priority` must be between 0 and 255");
}

#[test]
fn bad_durations_are_errors_at_the_value() {
    let src = BASE.replace(
        "types = [\"*\"]",
        "types = [\"*\"]\ndurability = \"interval\"\nfsync_interval = \"5 parsecs\"",
    );
    let error = check_error(&src, 5, 18, "invalid duration \"5 parsecs\"");
    assert!(error.hint.unwrap().contains("\"200ms\""));
    let src = BASE.replace("types = [\"*\"]", "types = [\"*\"]\nfsync_interval = 200");
    let error = check_error(&src, 4, 18, "`fsync_interval` must be a duration");
    assert_eq!(
        error.hint.as_deref(),
        Some("add a unit: `fsync_interval = \"200ms\"`")
    );
}

// --- NATS sources and sinks ---

/// `BASE` with a NATS source whose table body is `body`; its `[sources.orders]` is on line 2.
fn nats_source(body: &str) -> String {
    format!("\n[sources.orders]\ntype = \"nats\"\n{body}\n{BASE}")
}

/// `BASE` with its sink replaced by a NATS sink (`[sinks.out]` on line 9) whose body starts on
/// line 12.
fn nats_sink(body: &str) -> String {
    BASE.replace(
        "type = \"blackhole\"",
        &format!("type = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n{body}"),
    )
}

#[test]
fn a_jetstream_source_gets_its_defaults() {
    let loaded = valid(&nats_source(
        "url = \"nats://127.0.0.1:4222\"\nstream = \"ORDERS\"\nsubjects = [\"orders.>\"]",
    ));
    let SourceConfig::Nats(nats) = &loaded.config.sources["orders"] else {
        panic!("not a nats source: {:?}", loaded.config.sources);
    };
    assert_eq!(nats.subjects, ["orders.>"]);
    assert_eq!(nats.batch_events, 100);
    assert_eq!(
        nats.mode,
        NatsSourceMode::JetStream(JetStreamConsumer {
            stream: "ORDERS".to_owned(),
            consumer: "orders".to_owned(),
            create_stream: true,
            ack_wait: Duration::from_secs(30),
        })
    );
}

#[test]
fn a_core_source_needs_subjects_and_refuses_jetstream_keys() {
    let loaded = valid(&nats_source(
        "url = \"nats://a:1,nats://b\"\nmode = \"core\"\nsubjects = \"orders.*.created\"",
    ));
    let SourceConfig::Nats(nats) = &loaded.config.sources["orders"] else {
        panic!("not a nats source");
    };
    assert_eq!(nats.mode, NatsSourceMode::Core);
    assert_eq!(nats.subjects, ["orders.*.created"]);

    let src =
        nats_source("url = \"nats://a\"\nmode = \"core\"\nsubjects = [\"x\"]\nack_wait = \"5s\"");
    let error = check_error(&src, 7, 1, "`ack_wait` is for JetStream");
    assert!(error.hint.unwrap().contains("remove it"));

    let src = nats_source("url = \"nats://a\"\nmode = \"core\"");
    check_error(&src, 2, 10, "is missing `subjects`");
}

#[test]
fn a_jetstream_source_without_a_stream_points_to_core_mode() {
    let src = nats_source("url = \"nats://127.0.0.1:4222\"\nsubjects = [\"orders.>\"]");
    let error = check_error(
        &src,
        2,
        10,
        "source `orders` (type \"nats\") is missing `stream`",
    );
    assert!(error.hint.unwrap().contains("mode = \"core\""));
    // Without subjects, a stream it may create would have none.
    let src = nats_source("url = \"nats://127.0.0.1:4222\"\nstream = \"S\"");
    let error = check_error(&src, 2, 10, "is missing `subjects`");
    assert!(error.hint.unwrap().contains("create_stream = false"));
    valid(&nats_source(
        "url = \"nats://127.0.0.1:4222\"\nstream = \"S\"\ncreate_stream = false",
    ));
}

#[test]
fn bad_nats_source_values_are_errors_at_the_value() {
    let src =
        nats_source("url = \"nats://a\"\nstream = \"S\"\nsubjects = [\"ok.>\", \"orders..x\"]");
    check_error(
        &src,
        6,
        21,
        "invalid subject \"orders..x\": a subject must not have an empty token",
    );
    let src = nats_source("url = \"nats://a\"\nstream = \"S\"\nsubjects = [\"a.>.b\"]");
    check_error(&src, 6, 13, "`>` must be the last token");
    let src = nats_source("url = \"http://127.0.0.1:4222\"\nstream = \"S\"\nsubjects = [\"a\"]");
    let error = check_error(
        &src,
        4,
        7,
        "`url`: \"http://127.0.0.1:4222\" is not a nats:// URL",
    );
    assert!(error.hint.unwrap().contains("nats://127.0.0.1:4222"));
    let src = nats_source("url = \"nats://a:99999\"\nstream = \"S\"\nsubjects = [\"a\"]");
    check_error(&src, 4, 7, "invalid port `99999`");
    let src = nats_source("url = \"nats://a\"\nstream = \"OR.DERS\"\nsubjects = [\"a\"]");
    check_error(&src, 5, 10, "`stream` must not contain '.'");
    let src =
        nats_source("url = \"nats://a\"\nstream = \"S\"\nsubjects = [\"a\"]\nack_wait = \"10ms\"");
    check_error(&src, 7, 12, "`ack_wait` must be at least 1s");
    let src =
        nats_source("url = \"nats://a\"\nstream = \"S\"\nsubjects = [\"a\"]\nbatch_events = 20000");
    check_error(&src, 7, 16, "`batch_events` must be between 1 and 10000");
    let src = nats_source(
        "url = \"nats://a\"\nstream = \"S\"\nsubjects = [\"a\"]\ncreate_stream = \"true\"",
    );
    let error = check_error(&src, 7, 17, "`create_stream` must be a boolean");
    assert_eq!(
        error.hint.as_deref(),
        Some("remove the quotes: `create_stream = true`")
    );
    let src =
        nats_source("url = \"nats://a\"\nstream = \"S\"\nsubjects = [\"a\"]\nmode = \"jetstraem\"");
    let error = check_error(&src, 7, 8, "unknown mode \"jetstraem\"");
    assert_eq!(error.hint.as_deref(), Some("did you mean `jetstream`?"));
}

#[test]
fn a_nats_sink_gets_its_defaults() {
    let loaded = valid(&nats_sink("subject = \"processed.{{ .type }}\""));
    let SinkConfig::Nats(nats) = &loaded.config.sinks["out"] else {
        panic!("not a nats sink");
    };
    assert_eq!(nats.url, "nats://127.0.0.1:4222");
    assert_eq!(nats.subject.as_str(), "processed.{{ .type }}");
    assert!(nats.jetstream);
    assert_eq!(nats.msg_id.as_str(), "{{ .source }}/{{ .id }}");
    assert_eq!(nats.timeout, Duration::from_secs(10));
}

#[test]
fn an_unknown_template_field_is_an_error_at_the_placeholder() {
    let src = nats_sink("subject = \"processed.{{ .typ }}\"");
    let error = check_error(&src, 12, 22, "`subject`: unknown template field `.typ`");
    assert_eq!(
        error.hint.as_deref(),
        Some("did you mean `.type`? (fields: `.type`, `.source`, `.id`, `.subject`)")
    );
    // With an escape in the string, the bytes differ from the text: the whole value.
    let src = nats_sink("subject = \"p\\u002e{{ .nope }}\"");
    let error = check_error(&src, 12, 11, "unknown template field `.nope`");
    assert!(error.hint.unwrap().starts_with("template fields are"));
    let src = nats_sink("subject = \"a\"\nmsg_id = \"{{ .id }\"");
    check_error(&src, 13, 11, "`msg_id`: `{{` is never closed");
}

#[test]
fn a_nats_sink_subject_must_be_publishable() {
    let src = nats_sink("subject = \"processed.>\"");
    check_error(&src, 12, 11, "cannot hold the wildcards");
    let src = nats_sink("subject = \"processed..{{ .type }}\"");
    check_error(&src, 12, 11, "empty token");
    let src = nats_sink("jetstream = true");
    check_error(
        &src,
        9,
        8,
        "sink `out` (type \"nats\") is missing `subject`",
    );
    let src = nats_sink("subject = \"a\"\njetstream = 1");
    check_error(&src, 13, 13, "`jetstream` must be a boolean");
}

#[test]
fn bad_sizes_are_errors_at_the_value() {
    let src = BASE.replace("types = [\"*\"]", "types = [\"*\"]\nmax_bytes = \"1.5GiB\"");
    check_error(&src, 4, 13, "invalid size \"1.5GiB\"");
    let src = BASE.replace(
        "types = [\"*\"]",
        "types = [\"*\"]\nmax_bytes = \"1MiB\"\nsegment_bytes = \"8MiB\"",
    );
    check_error(
        &src,
        5,
        17,
        "`segment_bytes` (8MiB) is larger than `max_bytes` (1MiB)",
    );
}

#[test]
fn unknown_enum_values_suggest_the_closest() {
    let src = BASE.replace("types = [\"*\"]", "types = [\"*\"]\ndurability = \"fsycn\"");
    let error = check_error(&src, 4, 14, "unknown durability \"fsycn\"");
    assert_eq!(error.hint.as_deref(), Some("did you mean `fsync`?"));
    let src = BASE.replace("type = \"blackhole\"", "type = \"fiel\"");
    let error = check_error(&src, 10, 8, "unknown type \"fiel\"");
    assert_eq!(error.hint.as_deref(), Some("did you mean `file`?"));
}

#[test]
fn dangling_references_are_errors_at_the_reference() {
    let src = BASE.replace("from = [\"default\"]", "from = [\"default\", \"defualt\"]");
    let error = check_error(&src, 6, 20, "unknown queue `defualt`");
    assert_eq!(error.hint.as_deref(), Some("did you mean `default`?"));
    let src = BASE.replace("sink = \"out\"", "sink = \"archive\"");
    let error = check_error(&src, 7, 8, "unknown sink `archive`");
    assert_eq!(error.hint.as_deref(), Some("defined sinks: `out`"));
}

#[test]
fn missing_required_keys_are_errors_at_the_table_name() {
    let src = BASE.replace("from = [\"default\"]\n", "");
    check_error(&src, 5, 12, "pipeline `main` is missing `from`");
    let src = BASE.replace("type = \"blackhole\"", "type = \"file\"");
    check_error(&src, 9, 8, "sink `out` (type \"file\") is missing `path`");
    let src = BASE.replace("types = [\"*\"]\n", "");
    check_error(&src, 2, 9, "queue `default` is missing `types`");
}

#[test]
fn empty_types_and_invalid_globs_are_errors() {
    let src = BASE.replace("types = [\"*\"]", "types = []");
    check_error(&src, 3, 9, "`types` must not be empty");
    let src = BASE.replace("types = [\"*\"]", "types = [\"*\", \"order.[ab]\"]");
    check_error(&src, 3, 15, "invalid type pattern \"order.[ab]\"");
}

#[test]
fn vrl_syntax_errors_are_located_at_the_program_string() {
    let src = BASE.replace(
        "sink = \"out\"",
        "sink = \"out\"\nprocessors = [\n  { type = \"filter\", condition = '.type == ' },\n]",
    );
    let error = check_error(&src, 9, 34, "in `condition`: VRL error E204: syntax error");
    assert!(!error.notes.is_empty(), "{error}");
}

#[test]
fn vrl_type_errors_are_located_at_the_program_string() {
    let src = BASE.replace(
        "sink = \"out\"",
        "sink = \"out\"\n\n[[pipelines.main.processors]]\ntype = \"remap\"\nsource = \"\"\"\n.data.total = .data.amount * 2\n\"\"\"",
    );
    let error = check_error(
        &src,
        11,
        10,
        "in `source`: VRL error E103: unhandled fallible assignment",
    );
    assert!(
        error
            .hint
            .as_deref()
            .unwrap()
            .contains("`int!(.data.amount) * 2`")
    );
    let rendered = error.to_string();
    assert!(
        rendered.contains(
            "= note: column 15 of the expression, `.data.amount * 2`: this expression is fallible"
        ),
        "{rendered}"
    );
}

#[test]
fn conditions_must_return_booleans() {
    let src = BASE.replace(
        "sink = \"out\"",
        "sink = \"out\"\nprocessors = [{ type = \"filter\", condition = '.data.flag' }]",
    );
    check_error(&src, 8, 46, "must return a boolean");
}

#[test]
fn toml_syntax_errors_carry_their_position() {
    let error = check_error("[queues.default\ntypes = [\"*\"]\n", 1, 16, "invalid TOML");
    assert!(error.message.len() > "invalid TOML: ".len(), "{error}");
    check_error("a = 1\na = 2\n", 2, 1, "invalid TOML");
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let src = r#"
[queues.q]
types = ["*"]
priority = "high"
[pipelines.p]
from = ["nope"]
workers = -1
sink = "s"
[sinks.s]
type = "blackhole"
colour = "red"
"#;
    let errors = errors(src);
    let locations: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.col)).collect();
    assert_eq!(
        locations,
        [(4, 12), (6, 9), (7, 11), (11, 1)],
        "{}",
        render(&errors)
    );
}

#[test]
fn env_interpolation_substitutes_values_and_defaults() {
    let env = |name: &str| (name == "HTTP_PORT").then(|| "9090".to_owned());
    let src = "data_dir = \"${DATA:-/srv/veltrix}\"\n[sources.http]\ntype = \"http\"\naddress = \"127.0.0.1:${HTTP_PORT}\"\n";
    let config = parse_str_with_env(src, "f.toml", CORES, &env)
        .unwrap()
        .config;
    assert_eq!(config.data_dir, PathBuf::from("/srv/veltrix"));
    let SourceConfig::Http(http) = &config.sources["http"] else {
        panic!("an http source")
    };
    assert_eq!(http.address.port(), 9090);
}

#[test]
fn an_unset_variable_without_default_is_an_error_at_its_location() {
    let src = "data_dir = \"/x\"\n[api]\naddress = \"${API_ADDR}\"\n";
    let error = check_error(src, 3, 12, "environment variable `API_ADDR` is not set");
    assert_eq!(
        error.hint.as_deref(),
        Some("set it, or give a default: `${API_ADDR:-value}`")
    );
}

#[test]
fn errors_after_interpolation_point_into_the_file_as_written() {
    let env = |name: &str| (name == "W").then(|| "\"many\"".to_owned());
    let src = "data_dir = \"${LONG_DEFAULTED:-/a/very/long/default/path}\"\n[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = \"q\"\nworkers = ${W}\nsink = \"s\"\n[sinks.s]\ntype = \"stdout\"\nbogus = 1";
    let errors = parse_str_with_env(src, "f.toml", CORES, &env).unwrap_err();
    let found: Vec<(usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.col, e.snippet.as_str()))
        .collect();
    assert_eq!(
        found,
        [(6, 11, "workers = ${W}"), (10, 1, "bogus = 1")],
        "{}",
        render(&errors)
    );
}

#[test]
fn environment_variables_are_read_by_parse_str() {
    // PATH is set in every test environment; its value is not a valid size.
    let src = "[sources.http]\ntype = \"http\"\nbody_bytes_max = \"${PATH}\"\n";
    check_error_with(parse_str(src, "f.toml", CORES), 3, 18, "invalid size");
}

fn check_error_with(
    result: Result<Loaded, Vec<Diagnostic>>,
    line: usize,
    col: usize,
    message: &str,
) {
    let errors = result.expect_err("expected errors");
    assert_eq!(
        (errors[0].line, errors[0].col),
        (line, col),
        "{}",
        render(&errors)
    );
    assert!(errors[0].message.contains(message), "{}", render(&errors));
}

#[test]
fn a_missing_catch_all_queue_is_a_warning() {
    let loaded = valid(&BASE.replace("types = [\"*\"]", "types = [\"order.*\"]"));
    assert_eq!(loaded.warnings.len(), 1);
    let warning = &loaded.warnings[0];
    assert_eq!(
        (warning.severity, warning.line, warning.col),
        (Severity::Warning, 2, 9)
    );
    assert!(warning.message.contains("no queue takes every event type"));
}

#[test]
fn a_queue_no_pipeline_reads_is_a_warning() {
    let src = BASE.replace(
        "[pipelines.main]",
        "[queues.orphan]\ntypes = [\"x\"]\n\n[pipelines.main]",
    );
    let loaded = valid(
        &src.replace("types = [\"*\"]", "types = [\"a\"]")
            .replace("types = [\"x\"]", "types = [\"*\"]"),
    );
    assert_eq!(
        warning_messages(&loaded),
        ["no pipeline reads queue `orphan`: its events will pile up until it is full"]
    );
    assert_eq!((loaded.warnings[0].line, loaded.warnings[0].col), (5, 9));
}

#[test]
fn a_queue_shadowed_by_earlier_queues_is_a_warning() {
    let src = r#"
[queues.all]
types = ["*"]
[queues.payments]
types = ["payment.made"]
[pipelines.p]
from = ["all", "payments"]
sink = "s"
[sinks.s]
type = "blackhole"
"#;
    let loaded = valid(src);
    // The second: one worker reading two queues with the default retries (V031).
    let codes: Vec<_> = loaded.warnings.iter().map(|w| w.code).collect();
    assert_eq!(codes, [Some("V026"), Some("V031")]);
    assert!(
        loaded.warnings[0]
            .message
            .contains("queue `payments` can never receive an event")
    );
    assert_eq!((loaded.warnings[0].line, loaded.warnings[0].col), (5, 9));
}

#[test]
fn workers_far_above_the_cores_are_a_warning() {
    let src = BASE.replace("sink = \"out\"", "sink = \"out\"\nworkers = 64");
    let loaded = valid(&src);
    assert_eq!(
        warning_messages(&loaded),
        [
            "`workers = 64` is far above the 2 available core(s): extra workers add contention, not throughput"
        ]
    );
    let many_cores = parse_str_with_env(&src, "f", 64, &no_env).unwrap();
    assert_eq!(many_cores.warnings, []);
}

#[test]
fn an_unused_fsync_interval_and_an_open_admin_api_are_warnings() {
    let src = BASE.replace(
        "types = [\"*\"]",
        "types = [\"*\"]\nfsync_interval = \"1s\"",
    );
    let src = format!("[api]\naddress = \"0.0.0.0:8081\"\n{src}");
    let loaded = valid(&src);
    let messages = warning_messages(&loaded);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("without a token"));
    assert!(messages[1].contains("`fsync_interval = \"1s\"` has no effect"));
    let with_token = src.replace("[api]", "[api]\ntoken = \"secret\"");
    assert_eq!(valid(&with_token).warnings.len(), 1);
}

#[test]
fn listeners_on_the_same_address_are_errors() {
    let src = "[sources.a]\ntype = \"http\"\n[sources.b]\ntype = \"http\"\n[sources.c]\ntype = \"http\"\naddress = \"127.0.0.1:8081\"\n";
    let errors = errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_eq!((errors[0].line, errors[0].col), (3, 10));
    assert!(errors[0].message.contains("already used by source `a`"));
    assert_eq!((errors[1].line, errors[1].col), (7, 11));
    assert!(errors[1].message.contains("already used by the admin API"));
}

#[test]
fn listeners_on_port_zero_never_clash() {
    let src = "[api]\naddress = \"127.0.0.1:0\"\n[sources.a]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\n";
    valid(src);
}

#[test]
fn the_admin_api_cannot_take_the_default_ingest_address() {
    check_error(
        "[api]\naddress = \"127.0.0.1:8080\"\n",
        2,
        11,
        "address 127.0.0.1:8080 is already used by the default HTTP source",
    );
}

#[test]
fn lower_bounds_without_upper_bounds_say_at_least() {
    let src = BASE.replace(
        "types = [\"*\"]",
        "types = [\"*\"]\nmax_events = 0\nmax_bytes = 10",
    );
    let errors = errors(&src);
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "`max_events` must be at least 1",
            "`max_bytes` must be at least 4KiB"
        ]
    );
}

#[test]
fn names_must_be_safe_identifiers() {
    check_error(
        "[queues.\"../etc\"]\ntypes = [\"*\"]\n",
        1,
        9,
        "invalid name `../etc` in `queues`",
    );
}

#[test]
fn routing_takes_the_first_matching_queue_in_file_order() {
    let config = valid(ISSUE_EXAMPLE).config;
    let router = Router::new(&config);
    let route = |ty: &str| router.route(ty).map(|q| router.queue_name(q).to_owned());
    assert_eq!(route("payment.card").as_deref(), Some("critical"));
    assert_eq!(route("treasure.claimed").as_deref(), Some("critical"));
    assert_eq!(route("treasure.found").as_deref(), Some("default"));
    assert_eq!(router.route("payment.card"), Some(QueueIndex(0)));

    let reversed = valid(
        r#"
[queues.default]
types = ["*"]
[queues.critical]
types = ["payment.*"]
[pipelines.p]
from = ["default", "critical"]
sink = "s"
[sinks.s]
type = "blackhole"
"#,
    )
    .config;
    let router = Router::new(&reversed);
    assert_eq!(router.route("payment.card"), Some(QueueIndex(0)));
}

#[test]
fn routing_without_a_catch_all_rejects_unmatched_types() {
    let config =
        valid(&BASE.replace("types = [\"*\"]", "types = [\"order.?\", \"order.*.v2\"]")).config;
    let router = Router::new(&config);
    assert_eq!(router.route("order.a"), Some(QueueIndex(0)));
    assert_eq!(router.route("order.x.v2"), Some(QueueIndex(0)));
    assert_eq!(router.route("order.ab"), None);
    assert_eq!(router.route("payment"), None);
}

#[test]
fn an_http_sink_needs_an_http_url() {
    let src = "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"h\"\n[sinks.h]\ntype = \"http\"\nurl = \"https://example.com\"\n";
    check_error(src, 8, 7, "`url` must be an http:// URL");
    let ok = src.replace("https://example.com", "http://127.0.0.1:9/x");
    assert_eq!(
        valid(&ok).config.sinks["h"],
        SinkConfig::Http {
            url: "http://127.0.0.1:9/x".into(),
            timeout: Duration::from_secs(10),
            concurrency: Concurrency::Adaptive {
                initial: 1,
                max: 64
            },
        }
    );
}

#[test]
fn backoff_max_below_backoff_initial_is_an_error() {
    let src = "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\nretry = { backoff_initial = \"2s\", backoff_max = \"1s\" }\n[sinks.s]\ntype = \"stdout\"\n";
    check_error(
        src,
        6,
        49,
        "`backoff_max` (1s) is below `backoff_initial` (2s)",
    );
}

#[test]
fn a_dead_letter_queue_may_not_be_a_routable_queue() {
    let src = "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\ndead_letter = \"q\"\n[sinks.s]\ntype = \"stdout\"\n";
    check_error(src, 6, 15, "names a routable queue");
}

#[test]
fn an_http_source_may_require_tokens() {
    let src = "[sources.http]\ntype = \"http\"\ntokens = [\"a\", \"b\"]\n";
    let config = valid(src).config;
    let SourceConfig::Http(http) = &config.sources["http"] else {
        panic!("an http source")
    };
    assert_eq!(http.tokens, ["a", "b"]);
    check_error(
        "[sources.http]\ntype = \"http\"\ntokens = [\"\"]\n",
        3,
        11,
        "an empty token",
    );
}

#[test]
fn included_test_files_add_tests_and_report_their_own_locations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("t")).unwrap();
    let main = "include = [\"t/*.toml\"]\n[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"s\"\n[sinks.s]\ntype = \"stdout\"\n";
    let good = "[[tests]]\nname = \"a\"\npipeline = \"p\"\ninput = [{ type = \"t\", source = \"/s\" }]\nexpect_none = true\n";
    std::fs::write(dir.path().join("t/a.toml"), good).unwrap();
    std::fs::write(dir.path().join("t/b.toml"), good.replace("\"a\"", "\"b\"")).unwrap();
    std::fs::write(dir.path().join("t/ignored.txt"), "not toml").unwrap();
    let path = dir.path().join("veltrix.toml");
    std::fs::write(&path, main).unwrap();
    let loaded = load(&path, 2).expect("valid");
    let names: Vec<&str> = loaded
        .config
        .tests
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);

    std::fs::write(
        dir.path().join("t/b.toml"),
        "[[tests]]\nname = \"b\"\npipline = \"p\"\n",
    )
    .unwrap();
    let errors = load(&path, 2).unwrap_err();
    let bad = errors
        .iter()
        .find(|d| d.message.contains("pipline"))
        .expect("the typo is reported");
    assert!(bad.file.ends_with("t/b.toml"), "{bad}");
    assert_eq!((bad.line, bad.col), (3, 1));

    std::fs::write(&path, main.replace("t/*.toml", "none/*.toml")).unwrap();
    let errors = load(&path, 2).unwrap_err();
    assert_eq!((errors[0].line, errors[0].col), (1, 12), "{}", errors[0]);
    assert!(errors[0].message.contains("none/*.toml"));
}

#[test]
fn file_and_stdin_sources_decode_with_their_defaults() {
    let src = format!(
        "data_dir = \"/srv/v\"\n[sources.logs]\ntype = \"file\"\ninclude = [\"/var/log/app/*.ndjson\"]\n\
         [sources.in]\ntype = \"stdin\"\n{BASE}"
    );
    let config = valid(&src).config;
    let SourceConfig::File(f) = &config.sources["logs"] else {
        panic!("{:?}", config.sources["logs"]);
    };
    assert_eq!(
        *f,
        FileSourceConfig {
            include: vec!["/var/log/app/*.ndjson".to_owned()],
            exclude: vec![],
            read_from: ReadFrom::Beginning,
            poll_interval: Duration::from_millis(250),
            line_bytes_max: ByteSize(ByteSize::MIB),
            batch_events: 500,
            open_files_max: 1024,
            checkpoint_dir: PathBuf::from("/srv/v/sources/logs"),
        }
    );
    assert_eq!(
        config.sources["in"],
        SourceConfig::Stdin(StdinSourceConfig {
            line_bytes_max: ByteSize(ByteSize::MIB),
            batch_events: 500,
            exit_on_eof: true,
        })
    );
}

#[test]
fn file_source_settings_decode() {
    let src = format!(
        "[sources.logs]\ntype = \"file\"\ninclude = [\"/a/**/*.ndjson\", \"/b/x-?.log\"]\n\
         exclude = [\"*.gz\"]\nread_from = \"end\"\npoll_interval = \"1s\"\nline_bytes_max = \"4KiB\"\n\
         batch_events = 7\nopen_files_max = 3\ncheckpoint_dir = \"/ck\"\n\
         [sources.in]\ntype = \"stdin\"\nexit_on_eof = false\nline_bytes_max = 100\nbatch_events = 2\n{BASE}"
    );
    let config = valid(&src).config;
    let SourceConfig::File(f) = &config.sources["logs"] else {
        panic!()
    };
    assert_eq!(f.include.len(), 2);
    assert_eq!(f.exclude, ["*.gz"]);
    assert_eq!(f.read_from, ReadFrom::End);
    assert_eq!(f.poll_interval, Duration::from_secs(1));
    assert_eq!(f.line_bytes_max, ByteSize(4096));
    assert_eq!((f.batch_events, f.open_files_max), (7, 3));
    assert_eq!(f.checkpoint_dir, PathBuf::from("/ck"));
    let SourceConfig::Stdin(s) = &config.sources["in"] else {
        panic!()
    };
    assert_eq!(
        (s.exit_on_eof, s.line_bytes_max, s.batch_events),
        (false, ByteSize(100), 2)
    );
}

#[test]
fn a_file_source_needs_include() {
    let src = format!("[sources.logs]\ntype = \"file\"\n{BASE}");
    let e = check_error(
        &src,
        1,
        10,
        "source `logs` (type \"file\") is missing `include`",
    );
    assert!(
        e.hint
            .as_deref()
            .unwrap_or_default()
            .contains("include = [")
    );
    let src = format!("[sources.logs]\ntype = \"file\"\ninclude = []\n{BASE}");
    check_error(&src, 3, 11, "`include` must name at least one path pattern");
}

#[test]
fn a_bad_path_pattern_is_reported_at_the_pattern() {
    let src =
        format!("[sources.logs]\ntype = \"file\"\ninclude = [\"/ok/*\", \"/bad/[a\"]\n{BASE}");
    let e = check_error(&src, 3, 21, "invalid path pattern \"/bad/[a\"");
    assert!(e.message.contains("at character"), "{}", e.message);
    let src =
        format!("[sources.logs]\ntype = \"file\"\ninclude = [\"/ok/*\"]\nexclude = [\"\"]\n{BASE}");
    check_error(&src, 4, 12, "a pattern of `exclude` is empty");
}

#[test]
fn file_source_keys_are_checked_per_type() {
    let src = format!(
        "[sources.logs]\ntype = \"file\"\ninclude = [\"/l/*\"]\nread_form = \"end\"\n{BASE}"
    );
    let e = check_error(
        &src,
        4,
        1,
        "unknown key `read_form` in source `logs` (type \"file\")",
    );
    assert!(e.hint.as_deref().unwrap_or_default().contains("read_from"));
    // A key of another source type.
    let src = format!(
        "[sources.logs]\ntype = \"file\"\ninclude = [\"/l/*\"]\nexit_on_eof = true\n{BASE}"
    );
    check_error(&src, 4, 1, "unknown key `exit_on_eof`");
    let src = format!(
        "[sources.logs]\ntype = \"file\"\ninclude = [\"/l/*\"]\nread_from = \"start\"\n{BASE}"
    );
    check_error(&src, 4, 13, "unknown read_from \"start\"");
    let src = format!(
        "[sources.logs]\ntype = \"file\"\ninclude = [\"/l/*\"]\nline_bytes_max = \"9MiB\"\n{BASE}"
    );
    check_error(&src, 4, 18, "`line_bytes_max` must be between 1B and 8MiB");
    let src = format!(
        "[sources.logs]\ntype = \"file\"\ninclude = [\"/l/*\"]\npoll_interval = 250\n{BASE}"
    );
    check_error(&src, 4, 17, "`poll_interval` must be a duration");
}

#[test]
fn stdin_can_be_read_by_one_source_only() {
    let src = format!("[sources.a]\ntype = \"stdin\"\n[sources.b]\ntype = \"stdin\"\n{BASE}");
    let e = check_error(&src, 4, 8, "standard input is already read by source `a`");
    assert_eq!(e.code, Some(codes::CONFLICT));
    let src = format!("[sources.a]\ntype = \"stdin\"\nexit_on_eof = \"yes\"\n{BASE}");
    check_error(&src, 3, 15, "`exit_on_eof` must be a boolean");
}

#[test]
fn two_file_sources_cannot_share_a_checkpoint_directory() {
    let src = format!(
        "data_dir = \"/d\"\n[sources.a]\ntype = \"file\"\ninclude = [\"/x/*\"]\n\
         [sources.b]\ntype = \"file\"\ninclude = [\"/y/*\"]\ncheckpoint_dir = \"/d/sources/a\"\n{BASE}"
    );
    let e = check_error(
        &src,
        8,
        18,
        "checkpoint directory /d/sources/a is already used by source `a`",
    );
    assert_eq!(e.code, Some(codes::CONFLICT));
}

#[test]
fn a_file_sink_writing_into_a_file_source_is_an_error_at_its_path() {
    let src = r#"
[sources.logs]
type = "file"
include = ["/var/log/*.ndjson"]
[queues.default]
types = ["*"]
[pipelines.main]
from = ["default"]
sink = "out"
[sinks.out]
type = "file"
path = "/var/log/events.ndjson"
"#;
    let e = check_error(
        src,
        12,
        8,
        "sink `out` writes /var/log/events.ndjson, which file source `logs` reads",
    );
    assert_eq!(e.code, Some(codes::CONFLICT));
    // Excluded: fine.
    let fixed = src.replace(
        "include = [\"/var/log/*.ndjson\"]",
        "include = [\"/var/log/*.ndjson\"]\nexclude = [\"/var/log/events.ndjson\"]",
    );
    valid(&fixed);
}

/// BASE with `items` as the pipeline's processors, written on line 8 from column 15.
fn with_processors(items: &str) -> String {
    BASE.replace(
        "sink = \"out\"",
        &format!("sink = \"out\"\nprocessors = [{items}]"),
    )
}

/// Two queues (`games` read by `scores`, `stats` read by `board`) for aggregates.
const AGGREGATING: &str = r#"
[queues.games]
types = ["game.*"]
[queues.stats]
types = ["*"]
[pipelines.scores]
from = ["games"]
sink = "none"
processors = [AGGREGATE]
[pipelines.board]
from = ["stats"]
sink = "none"
[sinks.none]
type = "blackhole"
"#;

#[test]
fn every_built_in_processor_decodes_with_its_defaults() {
    let loaded = valid(&with_processors(
        "{ type = \"dedupe\" }, { type = \"throttle\", rate = 5 }, { type = \"sample\", rate = 0.25 }, { type = \"batch\" }",
    ));
    let processors = &loaded.config.pipelines["main"].processors;
    let ProcessorConfig::Dedupe(dedupe) = &processors[0] else {
        panic!("{processors:?}")
    };
    assert_eq!(
        (dedupe.key.is_none(), dedupe.window, dedupe.max_keys),
        (true, Duration::from_secs(600), 100_000)
    );
    assert_eq!(
        processors[1],
        ProcessorConfig::Throttle(ThrottleConfig {
            key: None,
            rate: 5,
            per: Duration::from_secs(1),
            burst: 5,
            max_keys: 100_000,
            when_exceeded: WhenExceeded::Drop,
        })
    );
    assert_eq!(
        processors[2],
        ProcessorConfig::Sample(SampleConfig {
            rate: 0.25,
            key: None
        })
    );
    assert_eq!(
        processors[3],
        ProcessorConfig::Batch(BatchConfig {
            max_events: 500,
            max_bytes: ByteSize(ByteSize::MIB),
            max_wait: Duration::from_secs(1),
        })
    );

    let loaded = valid(&AGGREGATING.replace(
        "AGGREGATE",
        "{ type = \"aggregate\", key = '.data.player', window = \"5m\", fields = { score = '.data.points', time = '.data.ms' }, into = \"stats\", event_type = \"score.summed\", max_keys = 10 }",
    ));
    let ProcessorConfig::Aggregate(aggregate) = &loaded.config.pipelines["scores"].processors[0]
    else {
        panic!()
    };
    assert_eq!(aggregate.key.as_ref().unwrap().source(), ".data.player");
    assert_eq!(aggregate.window, Duration::from_secs(300));
    let fields: Vec<(&str, &str)> = aggregate
        .fields
        .iter()
        .map(|(n, e)| (n.as_str(), e.source()))
        .collect();
    assert_eq!(fields, [("score", ".data.points"), ("time", ".data.ms")]);
    assert_eq!(
        (
            aggregate.into.as_str(),
            aggregate.event_type.as_str(),
            aggregate.max_keys
        ),
        ("stats", "score.summed", 10)
    );
}

#[test]
fn processor_mistakes_are_errors_at_their_value() {
    let cases: &[(&str, usize, &str)] = &[
        // (items, column on line 8, message)
        (
            "{ type = \"dedupe\", windw = \"1m\" }",
            34,
            "unknown key `windw` in dedupe processor",
        ),
        (
            "{ type = \"dedupe\", window = \"soon\" }",
            43,
            "invalid duration",
        ),
        (
            "{ type = \"dedupe\", max_keys = 0 }",
            45,
            "`max_keys` must be between 1 and",
        ),
        (
            "{ type = \"throttle\", per = \"1s\" }",
            15,
            "throttle processor is missing `rate`",
        ),
        (
            "{ type = \"throttle\", rate = 10, when_exceeded = \"dead-letter\" }",
            63,
            "unknown when_exceeded \"dead-letter\"",
        ),
        (
            "{ type = \"sample\", rate = 1.5 }",
            41,
            "`rate` must be more than 0 and at most 1",
        ),
        (
            "{ type = \"sample\", rate = \"0.5\" }",
            41,
            "`rate` must be a number, found a string",
        ),
        (
            "{ type = \"dedupe\", key = '.id +' }",
            40,
            "in `key`: VRL error",
        ),
        (
            "{ type = \"batch\" }, { type = \"filter\", condition = 'true' }",
            15,
            "the `batch` processor must be the last one",
        ),
        (
            "{ type = \"batch\", max_wait = \"1h\" }",
            44,
            "`max_wait` must be at most 5m",
        ),
        (
            "{ type = \"batch\", max_bytes = \"10B\" }",
            45,
            "`max_bytes` must be between 1KiB and 256MiB",
        ),
        (
            "{ type = \"dedup\" }",
            24,
            "unknown processor type \"dedup\"",
        ),
    ];
    for (items, col, message) in cases {
        check_error(&with_processors(items), 8, *col, message);
    }
    let error = check_error(
        &with_processors("{ type = \"throttle\", rate = 10, when_exceeded = \"dead-letter\" }"),
        8,
        63,
        "",
    );
    assert_eq!(error.hint.as_deref(), Some("did you mean `dead_letter`?"));
    let error = check_error(
        &with_processors("{ type = \"sample\", rate = \"0.5\" }"),
        8,
        41,
        "",
    );
    assert_eq!(
        error.hint.as_deref(),
        Some("remove the quotes: `rate = 0.5`")
    );
}

#[test]
fn aggregate_mistakes_are_errors_at_their_value() {
    let at = |item: &str, col: usize, message: &str| {
        // The processors are on line 9, from column 15.
        check_error(&AGGREGATING.replace("AGGREGATE", item), 9, col, message)
    };
    let error = at(
        "{ type = \"aggregate\", into = \"stat\", event_type = \"t\" }",
        44,
        "unknown queue `stat`",
    );
    assert_eq!(error.hint.as_deref(), Some("did you mean `stats`?"));
    at(
        "{ type = \"aggregate\", event_type = \"t\" }",
        15,
        "aggregate processor is missing `into`",
    );
    at(
        "{ type = \"aggregate\", into = \"stats\", event_type = \"t\", fields = { count = '.data.n' } }",
        82,
        "field name `count` is taken",
    );
    at(
        "{ type = \"aggregate\", into = \"stats\", event_type = \"t\", fields = { n = '.data.n +' } }",
        86,
        "in `n`: VRL error",
    );
    at(
        "{ type = \"aggregate\", into = \"stats\", event_type = \"t\", window = \"100ms\" }",
        80,
        "`window` must be between 1s and 1day",
    );
    at(
        "{ type = \"aggregate\", into = \"stats\", event_type = \"t\" }, { type = \"batch\" }",
        15,
        "the `aggregate` processor must be the last one",
    );
}

#[test]
fn an_aggregate_into_a_queue_its_own_pipeline_reads_is_a_cycle() {
    let found = errors(&AGGREGATING.replace(
        "AGGREGATE",
        "{ type = \"aggregate\", into = \"games\", event_type = \"t\" }",
    ));
    assert_eq!(found.len(), 1, "{}", render(&found));
    assert_eq!(found[0].code, Some(codes::CYCLE));
    assert_eq!((found[0].line, found[0].col), (9, 44));
    assert!(
        found[0]
            .message
            .contains("writes into queue `games`, which pipeline `scores` itself reads"),
        "{}",
        found[0].message
    );

    // scores → stats → board → games → scores.
    let src = AGGREGATING
        .replace(
            "AGGREGATE",
            "{ type = \"aggregate\", into = \"stats\", event_type = \"t\" }",
        )
        .replace(
            "from = [\"stats\"]\nsink = \"none\"",
            "from = [\"stats\"]\nsink = \"none\"\nprocessors = [{ type = \"aggregate\", into = \"games\", event_type = \"u\" }]",
        );
    let found = errors(&src);
    assert_eq!(found.len(), 2, "{}", render(&found));
    assert!(
        found[0].message.contains(
            "pipeline `scores` writes into queue `stats`, whose events come back to pipeline \
             `scores` through pipeline(s) `board`"
        ),
        "{}",
        found[0].message
    );
}

#[test]
fn routes_name_sinks_and_take_conditions() {
    let src = r#"
[queues.orders]
types = ["*"]
[pipelines.p]
from = ["orders"]
sink = "archive"
routes = [{ condition = '.type == "order.paid"', sink = "billing" }, { condition = 'true', sink = "archive" }]
[sinks.archive]
type = "blackhole"
[sinks.billing]
type = "blackhole"
"#;
    let loaded = valid(src);
    let p = &loaded.config.pipelines["p"];
    assert_eq!(p.routes.len(), 2);
    assert_eq!(p.routes[0].condition.source(), ".type == \"order.paid\"");
    assert_eq!(p.sinks(), ["archive", "billing"]);
    assert!(loaded.warnings.is_empty(), "billing is used by a route");

    let error = check_error(
        &src.replace("sink = \"billing\"", "sink = \"biling\""),
        7,
        57,
        "unknown sink `biling`",
    );
    assert_eq!(error.hint.as_deref(), Some("did you mean `billing`?"));
    check_error(
        &src.replace("condition = 'true', ", ""),
        7,
        70,
        "route 1 is missing `condition`",
    );
    check_error(
        &src.replace("condition = 'true'", "condition = '.data'"),
        7,
        84,
        "must return a boolean",
    );
    check_error(
        &src.replace("{ condition = 'true', sink = \"archive\" }", "\"archive\""),
        7,
        70,
        "`routes[1]` must be a table",
    );
}

#[test]
fn a_pipeline_ending_in_an_aggregate_takes_no_routes() {
    let src = AGGREGATING
        .replace(
            "AGGREGATE",
            "{ type = \"aggregate\", into = \"stats\", event_type = \"t\" }",
        )
        .replace(
            "sink = \"none\"\nprocessors",
            "sink = \"none\"\nroutes = [{ condition = 'true', sink = \"none\" }]\nprocessors",
        );
    check_error(&src, 9, 10, "ends with an aggregate");
}

#[test]
fn a_queue_fed_by_an_aggregate_is_not_unreachable() {
    // `stats` comes after the catch-all `games`: no ingested event reaches it, but the
    // aggregate does, and so does pipeline `board`.
    let src = AGGREGATING
        .replace("types = [\"game.*\"]", "types = [\"*\"]")
        .replace(
            "AGGREGATE",
            "{ type = \"aggregate\", into = \"stats\", event_type = \"t\" }",
        );
    let loaded = valid(&src);
    let codes: Vec<_> = loaded.warnings.iter().map(|w| w.code).collect();
    assert!(
        !codes.contains(&Some(codes::QUEUE_UNREACHABLE))
            && !codes.contains(&Some(codes::PIPELINE_UNREACHABLE)),
        "{}",
        render(&loaded.warnings)
    );
    // Without the aggregate, both warnings are there.
    let src = src.replace(
        "processors = [{ type = \"aggregate\", into = \"stats\", event_type = \"t\" }]",
        "",
    );
    let loaded = valid(&src);
    let codes: Vec<_> = loaded.warnings.iter().map(|w| w.code).collect();
    assert!(codes.contains(&Some(codes::QUEUE_UNREACHABLE)), "{codes:?}");
    assert!(
        codes.contains(&Some(codes::PIPELINE_UNREACHABLE)),
        "{codes:?}"
    );
}

/// Two stages: `raw` → pipeline `enrich` → queue sink `stage2` → `enriched` → pipeline `store`.
const TWO_STAGES: &str = r#"[queues.raw]
types = ["*"]
[queues.enriched]
types = []
[pipelines.enrich]
from = ["raw"]
sink = "stage2"
[pipelines.store]
from = ["enriched"]
sink = "out"
[sinks.stage2]
type = "queue"
queue = "enriched"
[sinks.out]
type = "blackhole"
"#;

#[test]
fn a_queue_sink_feeds_a_queue_with_no_types() {
    let loaded = valid(TWO_STAGES);
    assert_eq!(
        loaded.config.sinks["stage2"],
        SinkConfig::Queue {
            queue: "enriched".into()
        }
    );
    assert!(
        loaded.warnings.is_empty(),
        "{:?}",
        warning_messages(&loaded)
    );
}

#[test]
fn empty_types_without_a_queue_sink_feeding_the_queue_is_an_error() {
    let src = TWO_STAGES.replace(
        "type = \"queue\"\nqueue = \"enriched\"",
        "type = \"stdout\"",
    );
    let error = check_error(&src, 4, 9, "`types` must not be empty");
    assert!(error.hint.unwrap().contains("type = \"queue\""));
}

#[test]
fn a_queue_sink_must_name_a_configured_queue() {
    let src = TWO_STAGES.replace("queue = \"enriched\"", "queue = \"enriched2\"");
    // `enriched` is then fed by nobody: its `types = []` is an error too.
    let errors = errors(&src);
    let error = errors
        .iter()
        .find(|e| e.code == Some(codes::UNKNOWN_REFERENCE))
        .expect("an unknown reference")
        .clone();
    assert_eq!((error.line, error.col), (13, 9));
    assert_eq!(error.message, "unknown queue `enriched2`");
    assert_eq!(error.hint.as_deref(), Some("did you mean `enriched`?"));
}

#[test]
fn a_queue_cycle_is_an_error_naming_the_cycle() {
    // `store` now writes back into `raw`: raw → enrich → enriched → store → raw.
    let src = format!("{TWO_STAGES}[sinks.back]\ntype = \"queue\"\nqueue = \"raw\"\n").replace(
        "from = [\"enriched\"]\nsink = \"out\"",
        "from = [\"enriched\"]\nsink = \"back\"",
    );
    let found = errors(&src);
    assert_eq!(found.len(), 2, "{}", render(&found));
    assert_eq!(found[0].code, Some(codes::CYCLE));
    assert_eq!((found[0].line, found[0].col), (13, 9));
    assert_eq!(
        found[0].message,
        "pipeline `enrich` writes into queue `enriched`, whose events come back to pipeline \
         `enrich` through pipeline(s) `store`: a cycle, each event would keep producing more"
    );
}

#[test]
fn a_queue_sink_into_its_own_input_is_a_cycle() {
    let src = TWO_STAGES.replace("queue = \"enriched\"", "queue = \"raw\"");
    let src = src.replace("types = []", "types = [\"never.*\"]");
    let error = check_error(
        &src,
        13,
        9,
        "pipeline `enrich` writes into queue `raw`, which pipeline `enrich` itself reads",
    );
    assert_eq!(error.code, Some(codes::CYCLE));
}

const POSTGRES: &str = r#"[queues.q]
types = ["*"]
[pipelines.p]
from = ["q"]
sink = "db"
[sinks.db]
type = "postgres"
url = "postgres://postgres@127.0.0.1:5432/test"
table = "events"
columns = { player = '.data.player', score = { expr = 'to_int!(.data.score)', type = "bigint" } }
"#;

#[test]
fn a_postgres_sink_decodes_with_its_defaults_and_mapped_columns() {
    let SinkConfig::Postgres(pg) = valid(POSTGRES).config.sinks["db"].clone() else {
        panic!("a postgres sink");
    };
    assert_eq!(pg.url, "postgres://postgres@127.0.0.1:5432/test");
    assert_eq!(
        (pg.schema.as_str(), pg.table.as_str()),
        ("public", "events")
    );
    assert!(pg.create_table);
    assert_eq!(pg.pool_size, 4);
    assert_eq!(pg.timeout, Duration::from_secs(10));
    let columns: Vec<(&str, ColumnType, &str)> = pg
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.sql_type, c.expr.source()))
        .collect();
    assert_eq!(
        columns,
        vec![
            ("player", ColumnType::Text, ".data.player"),
            ("score", ColumnType::Bigint, "to_int!(.data.score)")
        ]
    );
}

#[test]
fn postgres_sink_mistakes_are_reported_at_their_values() {
    let vrl = POSTGRES.replace("'.data.player'", "'.data.player +'");
    let error = check_error(&vrl, 10, 22, "in `columns.player`: VRL error");
    assert_eq!(error.code, Some(codes::VRL_ERROR));
    let fallible = POSTGRES.replace("to_int!(", "to_int(");
    check_error(&fallible, 10, 55, "in `columns.score`: VRL error E");
    let fixed = POSTGRES.replace("player =", "time =");
    check_error(
        &fixed,
        10,
        13,
        "column `time` is one of the columns every event fills",
    );
    let bad_type = POSTGRES.replace("\"bigint\"", "\"bigint2\"");
    check_error(&bad_type, 10, 86, "unknown column type \"bigint2\"");
    let url = POSTGRES.replace("postgres://postgres@", "mysql://root@");
    check_error(&url, 8, 7, "`url` must be a postgres:// URL");
    let no_table = POSTGRES.replace("table = \"events\"\n", "");
    check_error(&no_table, 6, 8, "is missing `table`");
    let pool = POSTGRES.replace("table = \"events\"", "table = \"events\"\npool_size = 0");
    check_error(&pool, 10, 13, "`pool_size` must be between 1 and 256");
    let http_key = POSTGRES.replace("table = \"events\"", "table = \"events\"\nconcurrency = 2");
    check_error(&http_key, 10, 1, "unknown key `concurrency`");
}

#[test]
fn http_concurrency_takes_adaptive_a_number_or_bounds() {
    let http = |line: &str| {
        format!(
            "[queues.q]\ntypes = [\"*\"]\n[pipelines.p]\nfrom = [\"q\"]\nsink = \"h\"\n\
             [sinks.h]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\n{line}\n"
        )
    };
    let concurrency = |line: &str| match valid(&http(line)).config.sinks["h"] {
        SinkConfig::Http { concurrency, .. } => concurrency,
        _ => panic!("an http sink"),
    };
    let adaptive = Concurrency::Adaptive {
        initial: 1,
        max: 64,
    };
    assert_eq!(concurrency(""), adaptive);
    assert_eq!(concurrency("concurrency = \"adaptive\""), adaptive);
    assert_eq!(concurrency("concurrency = 8"), Concurrency::Fixed(8));
    assert_eq!(
        concurrency("concurrency = { initial = 2, max = 16 }"),
        Concurrency::Adaptive {
            initial: 2,
            max: 16
        }
    );
    check_error(
        &http("concurrency = 0"),
        9,
        15,
        "`concurrency` must be between 1 and 1024",
    );
    check_error(
        &http("concurrency = \"adaptve\""),
        9,
        15,
        "unknown concurrency \"adaptve\"",
    );
    check_error(
        &http("concurrency = { initial = 8, max = 4 }"),
        9,
        27,
        "`initial` (8) is above `max` (4)",
    );
    check_error(
        &http("concurrency = { min = 1 }"),
        9,
        17,
        "unknown key `min`",
    );
}

#[test]
fn listener_limits_are_read_for_sources_and_the_api() {
    let src = format!(
        "[api]\nheader_timeout = \"2s\"\nconnections_max = 8\n[sources.http]\ntype = \"http\"\n\
         header_timeout = \"3s\"\nbody_timeout = \"1m\"\nconnections_max = 100\n{BASE}"
    );
    let config = valid(&src).config;
    assert_eq!(
        config.api.limits,
        ListenerLimits {
            header_timeout: Duration::from_secs(2),
            connections_max: 8,
            ..ListenerLimits::default()
        }
    );
    let SourceConfig::Http(http) = &config.sources["http"] else {
        panic!("an http source");
    };
    assert_eq!(
        http.limits,
        ListenerLimits {
            header_timeout: Duration::from_secs(3),
            body_timeout: Duration::from_secs(60),
            connections_max: 100,
        }
    );
}

#[test]
fn listener_limits_out_of_bounds_are_errors_at_the_value() {
    let source = |line: &str| format!("[sources.http]\ntype = \"http\"\n{line}\n{BASE}");
    let error = check_error(
        &source("header_timeout = \"10m\""),
        3,
        18,
        "`header_timeout` must be at most 5m",
    );
    assert_eq!(error.hint.as_deref(), Some("use a value up to \"5m\""));
    check_error(
        &source("body_timeout = \"2h\""),
        3,
        16,
        "`body_timeout` must be at most 1h",
    );
    check_error(
        &source("body_timeout = \"0s\""),
        3,
        16,
        "`body_timeout` must be more than zero",
    );
    check_error(
        &source("connections_max = 0"),
        3,
        19,
        "`connections_max` must be between 1 and 65536",
    );
    check_error(
        &format!("[api]\nconnections_max = 100000\n{BASE}"),
        2,
        19,
        "`connections_max` must be between 1 and 65536",
    );
    check_error(
        &source("header_timeout = 10"),
        3,
        18,
        "`header_timeout` must be a duration",
    );
}

/// A source table is checked against every source key before its type is known, then against
/// its type's own keys: the first list must be exactly the union of the others.
#[test]
fn the_source_key_list_is_the_union_of_every_source_types_keys() {
    let mut union: Vec<&str> = Vec::new();
    for list in [
        HTTP_SOURCE_KEYS,
        GENERATOR_SOURCE_KEYS,
        FILE_SOURCE_KEYS,
        STDIN_SOURCE_KEYS,
        nats::NATS_SOURCE_KEYS,
    ] {
        for key in list {
            if !union.contains(key) {
                union.push(key);
            }
        }
    }
    assert_eq!(SOURCE_KEYS, union.as_slice());
}
