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
    },
    /// Check a config file: exit 0 when valid, 78 when not (every problem as FILE:LINE:COL).
    #[command(
        after_help = "Examples:\n  veltrix validate veltrix.toml\n  veltrix validate examples/*.toml"
    )]
    Validate {
        /// Config files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
    init_logging(&cli.log_level, cli.log_format);
    let code = match cli.command {
        Command::Run {
            config,
            shutdown_grace,
        } => crate::run::run(config.as_deref(), shutdown_grace),
        Command::Validate { files } => crate::validate::validate(&files),
        Command::Send {
            url,
            ty,
            source,
            json,
        } => crate::send::send(&url, ty.as_deref(), &source, &json),
    };
    ExitCode::from(code)
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The number of CPU cores (for config warnings).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
