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
            timeout: Duration::from_secs(10)
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
