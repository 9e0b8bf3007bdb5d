//! Argument parsing and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes (documented in README).
pub(crate) mod exit {
    /// Success.
    pub(crate) const OK: u8 = 0;
    /// A runtime failure: the engine could not start, or the server rejected what `send` sent.
    pub(crate) const FAILURE: u8 = 1;
    /// EX_UNAVAILABLE: `send` could not reach the engine.
    pub(crate) const UNAVAILABLE: u8 = 69;
    /// EX_CONFIG: the configuration is invalid.
    pub(crate) const CONFIG: u8 = 78;
}

#[derive(Parser)]
#[command(
    name = "veltrix",
    version,
    about = "Veltrix: an event-processing engine with bounded, durable, prioritised queues",
    after_help = "Examples:\n  veltrix run                      # built-in default: HTTP on 127.0.0.1:8080, NDJSON to ./veltrix-data/out/events.ndjson\n  veltrix validate veltrix.toml\n  veltrix send --type order.created --source /shop '{\"amount\": 20}'"
)]
struct Cli {
    /// Log filter (e.g. `info`, `veltrix_engine=debug`); also VELTRIX_LOG.
    #[arg(long, global = true, env = "VELTRIX_LOG", default_value = "info")]
    log_level: String,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Export per-event spans to this OpenTelemetry collector (OTLP/HTTP, e.g.
    /// http://127.0.0.1:4318); needs a build with `--features otel`.
    #[arg(long, global = true, env = "VELTRIX_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine (the built-in default config when no file is given).
    #[command(
        after_help = "Examples:\n  veltrix run\n  veltrix run -c examples/orders.toml\n\nStops cleanly on Ctrl-C or SIGTERM: new requests get 503, in-flight work finishes, cursors are persisted."
    )]
    Run {
        /// The config file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Longest wait for in-flight work at shutdown.
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        shutdown_grace: std::time::Duration,
        /// Reload when the config file changes (SIGHUP always reloads).
        #[arg(long, requires = "config")]
        watch: bool,
    },
    /// Reload a running engine's config file (validated first; an invalid one changes nothing).
    #[command(
        after_help = "Examples:\n  veltrix reload\n  veltrix reload -c veltrix.toml\n  veltrix reload --force   # also remove queues that still hold events (files stay on disk)\n\nSIGHUP to the engine, or `veltrix run --watch`, reload too."
    )]
    Reload {
        #[command(flatten)]
        api: ApiArgs,
        /// Allow removing queues that still hold unconsumed events (their files stay on disk).
        #[arg(long)]
        force: bool,
    },
    /// Check a config file: exit 0 when valid (warnings allowed), 78 when not (every problem as
    /// FILE:LINE:COL with a stable code, documented in docs/config-lints.md).
    #[command(
        after_help = "Examples:\n  veltrix validate veltrix.toml\n  veltrix validate examples/*.toml\n  veltrix validate --check-connections --check-data veltrix.toml\n  veltrix validate --format json veltrix.toml | jq '.files[].diagnostics[].code'"
    )]
    Validate {
        /// Config files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// `text` (diagnostics on stderr) or `json` (one document on stdout).
        #[arg(long, value_enum, default_value = "text")]
        format: crate::validate::Format,
        /// Also try a TCP connection to every http and nats sink (unreachable: warning V042) and
        /// every nats source (V047).
        #[arg(long)]
        check_connections: bool,
        /// Also check the integrity of the queues' logs in `data_dir`, read-only (damage: error
        /// V043).
        #[arg(long)]
        check_data: bool,
    },
    /// Run the [[tests]] of config files against the real processors: exit 0 when all pass, 1
    /// when one fails (with a diff), 78 when a config is invalid.
    #[command(
        after_help = "Each test feeds its `input` events through its pipeline's filters and remaps (the sink is
replaced by a capture) and compares the delivered events with `expect` (subset match), or checks
`expect_none` / `expect_dead_letter`. See docs/configuration.md.

Examples:
  veltrix test examples/orders.toml
  veltrix test examples/*.toml --format json"
    )]
    Test {
        /// Config files whose tests to run.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// `json`: one document on stdout, for tools.
        #[arg(long, value_enum, default_value = "text")]
        format: crate::test_cmd::TestFormat,
    },
    /// Print the built-in default config or the configuration reference.
    #[command(
        after_help = "Examples:\n  veltrix config default > veltrix.toml\n  veltrix config reference > docs/configuration.md"
    )]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Send events to a running engine: JSON arguments, or NDJSON on stdin.
    #[command(
        after_help = "Each JSON argument (or stdin line) is a whole CloudEvent, or, with --type, the `data` of a\nnew event (id generated, source from --source).\n\nExamples:\n  veltrix send '{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/shop\",\"type\":\"order.created\"}'\n  veltrix send --type order.created --source /shop '{\"amount\": 20}' '{\"amount\": 35}'\n  cat events.ndjson | veltrix send"
    )]
    Send {
        /// The engine's ingest endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8080/v1/events")]
        url: String,
        /// Wrap each JSON value as the `data` of a new event of this type.
        #[arg(long = "type")]
        ty: Option<String>,
        /// The `source` of wrapped events.
        #[arg(long, default_value = "/veltrix/send", requires = "ty")]
        source: String,
        /// Events (or data values with --type); read NDJSON from stdin when none are given.
        json: Vec<String>,
    },
    /// Look at queues on disk (read-only, safe while an engine runs).
    #[command(
        after_help = "Examples:\n  veltrix queue inspect\n  veltrix queue inspect -c examples/orders.toml critical --json"
    )]
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// List, replay or purge a pipeline's dead-lettered events on a running engine.
    #[command(
        after_help = "Examples:\n  veltrix dlq list archive\n  veltrix dlq replay archive --all\n  veltrix dlq purge archive --id o-1 --api http://127.0.0.1:8081"
    )]
    Dlq {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// A live terminal view of a running engine: queues, pipelines, sinks (`q` quits).
    #[command(
        after_help = "Keys: q/Esc/Ctrl-C quit, Tab switch table, ←/→ (or s) sort column, r reverse.\n\nExamples:\n  veltrix top\n  veltrix top --api http://127.0.0.1:8081 --interval 500ms\n  veltrix top -c examples/orders.toml --once"
    )]
    Top {
        #[command(flatten)]
        api: ApiArgs,
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = humantime_duration)]
        interval: std::time::Duration,
        /// Print one plain-text snapshot to stdout and exit (for scripts).
        #[arg(long)]
        once: bool,
    },
    /// Load-test a running engine (open loop: fixed arrival schedule, latency from the scheduled
    /// send time) and report rate, request and end-to-end latency, engine CPU and RSS.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  veltrix bench --rate 100000 --duration 30s\n  veltrix bench --rate max --batch 1000 --payload-bytes 250 --json\n  veltrix bench --spawn deploy/bench/memory-blackhole.toml --rate max\n  veltrix bench --content-type structured --connections 64 --rate max\n  veltrix bench --rate 10000 --batch 10 --type-mix \"order.created=8,payment.captured=2\"\n  veltrix bench discard-server --address 127.0.0.1:9090   # the HTTP ceiling\n\nE2e latency comes from the engine's /metrics histogram (bucket resolution); CPU and RSS from\n/api/v1/stats. scripts/bench.sh runs the whole suite."
    )]
    Bench {
        #[command(subcommand)]
        command: Option<BenchCommand>,
        #[command(flatten)]
        args: BenchCli,
    },
}

#[derive(clap::Args)]
struct BenchCli {
    /// The ingest endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/events")]
    url: String,
    /// The engine's admin API (for /metrics and /api/v1/stats).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    api: String,
    /// Events per second (open loop), or `max` (closed loop: each connection sends as soon as
    /// its previous request is answered).
    #[arg(long, default_value = "max", value_parser = crate::bench::parse_rate)]
    rate: crate::bench::Rate,
    /// How long to measure.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    duration: std::time::Duration,
    /// Load before measuring (sent, not recorded).
    #[arg(long, default_value = "3s", value_parser = humantime_duration)]
    warmup: std::time::Duration,
    /// Keep-alive connections (one request in flight on each).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per request (ignored by `structured`).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Request body format.
    #[arg(long, value_enum, default_value = "ndjson")]
    content_type: crate::bench::BodyKind,
    /// Event types and their weights.
    #[arg(long, default_value = "order.created=8,payment.captured=2", value_parser = crate::bench::parse_type_mix)]
    type_mix: crate::bench::TypeMix,
    /// Approximate size of one event in bytes.
    #[arg(long, default_value_t = 250)]
    payload_bytes: usize,
    /// Bearer token for ingest and the admin API.
    #[arg(long, env = "VELTRIX_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Start `veltrix run -c CONFIG` for the run (addresses from its banner, so port 0 works),
    /// stop it with SIGTERM afterwards; overrides --url and --api.
    #[arg(long, value_name = "CONFIG")]
    spawn: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// A minimal HTTP server that reads each body fully and answers 202 `{"accepted":N}`
    /// without parsing (N: the body's lines): the HTTP ceiling to compare the engine with.
    /// Prints its URL on stdout.
    #[command(
        after_help = "Examples:\n  veltrix bench discard-server\n  veltrix bench discard-server --address 127.0.0.1:9090 &\n  veltrix bench --url http://127.0.0.1:9090/v1/events --rate max"
    )]
    DiscardServer {
        /// Where to listen (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        address: String,
    },
}

/// How to reach a running engine's admin API.
#[derive(clap::Args)]
struct ApiArgs {
    /// The admin API [default: the `[api] address` of -c FILE, else http://127.0.0.1:8081].
    #[arg(long, global = true)]
    api: Option<String>,
    /// Take the admin address (and token) from this config file.
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Bearer token for the admin API [default: the config's `[api] token`].
    #[arg(long, global = true, env = "VELTRIX_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show dead-lettered events, oldest first: id, type, reason, attempts, last error.
    #[command(
        after_help = "Examples:\n  veltrix dlq list archive\n  veltrix dlq list archive --limit 1000 --json | jq '.entries[].reason'\n  veltrix dlq list archive -c examples/orders.toml"
    )]
    List {
        /// The pipeline.
        pipeline: String,
        /// At most this many entries (1–10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-enqueue dead-lettered events into their original queues (counted; every pipeline
    /// reading that queue sees them again).
    #[command(
        after_help = "Examples:\n  veltrix dlq replay archive --all\n  veltrix dlq replay archive --id o-1 --id o-2"
    )]
    Replay {
        /// The pipeline.
        pipeline: String,
        /// Event ids to replay (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Replay every entry.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Discard dead-lettered events for good.
    #[command(
        after_help = "Examples:\n  veltrix dlq purge archive --all\n  veltrix dlq purge archive --id o-1"
    )]
    Purge {
        /// The pipeline.
        pipeline: String,
        /// Event ids to discard (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Discard every entry.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// The built-in default config (what `veltrix run` uses without -c), as commented TOML.
    #[command(after_help = "Example:\n  veltrix config default > veltrix.toml")]
    Default,
    /// Every config key with its type, default, bound and meaning (Markdown; docs/configuration.md).
    #[command(after_help = "Example:\n  veltrix config reference > docs/configuration.md")]
    Reference,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Show each queue's segments, events, consumers' lag, oldest event age and integrity:
    /// exit 0 when clean, 1 when a queue is missing or damaged, 78 for an invalid config.
    #[command(
        after_help = "Reads <DATA_DIR>/queues/<QUEUE>/ without opening the queue for writing, so it is safe while an\nengine runs (cursor positions are then the last persisted ones: the engine persists every 250 ms).\n\nExamples:\n  veltrix queue inspect\n  veltrix queue inspect -c examples/orders.toml critical\n  veltrix queue inspect --data-dir /var/lib/veltrix --json | jq '.queues[] | {name, cursors}'"
    )]
    Inspect {
        /// The data directory [default: the config's `data_dir`, else ./veltrix-data].
        #[arg(long, conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        /// Take the data directory from this config file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Only this queue [default: every queue in the data directory].
        queue: Option<String>,
        /// Print one JSON document (`{"queues": [...]}`) instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 10s or 500ms"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}`: use ms, s or m")),
    }
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = match crate::telemetry::init(
        &cli.log_level,
        cli.log_format,
        cli.otlp_endpoint.as_deref(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("veltrix: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match cli.command {
        Command::Run {
            config,
            shutdown_grace,
            watch,
        } => crate::run::run(config.as_deref(), shutdown_grace, watch),
        Command::Reload { api, force } => {
            match crate::dlq::Api::resolve(api.api.as_deref(), api.config.as_deref(), api.token) {
                Err(code) => code,
                Ok(target) => crate::dlq::reload(&target, force),
            }
        }
        Command::Validate {
            files,
            format,
            check_connections,
            check_data,
        } => crate::validate::validate(&crate::validate::ValidateArgs {
            files: &files,
            format,
            check_connections,
            check_data,
        }),
        Command::Test { files, format } => crate::test_cmd::test(&files, format),
        Command::Config { command } => match command {
            ConfigCommand::Default => crate::config_cmd::default(),
            ConfigCommand::Reference => crate::config_cmd::reference(),
        },
        Command::Send {
            url,
            ty,
            source,
            json,
        } => crate::send::send(&url, ty.as_deref(), &source, &json),
        Command::Queue {
            command:
                QueueCommand::Inspect {
                    data_dir,
                    config,
                    queue,
                    json,
                },
        } => crate::queue::inspect(&crate::queue::InspectArgs {
            data_dir: data_dir.as_deref(),
            config: config.as_deref(),
            queue: queue.as_deref(),
            json,
        }),
        Command::Dlq { api, command } => {
            match crate::dlq::Api::resolve(api.api.as_deref(), api.config.as_deref(), api.token) {
                Err(code) => code,
                Ok(target) => match command {
                    DlqCommand::List {
                        pipeline,
                        limit,
                        json,
                    } => crate::dlq::list(&target, &pipeline, limit, json),
                    DlqCommand::Replay { pipeline, ids, all } => {
                        crate::dlq::take(&target, &pipeline, &ids, all, false)
                    }
                    DlqCommand::Purge { pipeline, ids, all } => {
                        crate::dlq::take(&target, &pipeline, &ids, all, true)
                    }
                },
            }
        }
        Command::Top {
            api,
            interval,
            once,
        } => match crate::dlq::Api::resolve(api.api.as_deref(), api.config.as_deref(), api.token) {
            Err(code) => code,
            Ok(target) => crate::top::top(&target, interval, once),
        },
        Command::Bench {
            command: Some(BenchCommand::DiscardServer { address }),
            ..
        } => crate::bench::discard_server(&address),
        Command::Bench {
            command: None,
            args,
        } => crate::bench::bench(crate::bench::BenchArgs {
            url: args.url,
            api: args.api,
            rate: args.rate,
            duration: args.duration,
            warmup: args.warmup,
            connections: args.connections,
            batch: args.batch,
            kind: args.content_type,
            type_mix: args.type_mix,
            payload_bytes: args.payload_bytes,
            token: args.token,
            json: args.json,
            spawn: args.spawn,
        }),
    };
    ExitCode::from(code)
}

/// The number of CPU cores (for config warnings).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
