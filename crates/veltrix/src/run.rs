//! `veltrix run`: load the config, start the engine, print where everything is, stop cleanly on
//! SIGINT/SIGTERM.

use std::path::Path;
use std::time::{Duration, Instant};

use veltrix_core::config::{Config, DEFAULT_DATA_DIR};
use veltrix_engine::{Engine, Reload};

use crate::cli::exit;

/// Prints a status line on stdout. Losing stdout (a closed pipe) must never stop the engine, so
/// write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub(crate) fn run(config_path: Option<&Path>, grace: Duration, watch: bool) -> u8 {
    let config = match config_path {
        Some(path) => match crate::load_config(path) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    eprintln!("{warning}");
                }
                loaded.config
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    eprintln!("{d}");
                }
                eprintln!(
                    "veltrix: {} is invalid; nothing was started",
                    path.display()
                );
                return exit::CONFIG;
            }
        },
        None => Config::default_config(DEFAULT_DATA_DIR),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veltrix: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(serve(config, config_path, grace, watch))
}

async fn serve(config: Config, config_path: Option<&Path>, grace: Duration, watch: bool) -> u8 {
    let started = Instant::now();
    // What `--watch` compares against: the file as it was when the config was loaded (read
    // before the banner, so an edit made as soon as the engine is up is not missed).
    let watched = config_path
        .filter(|_| watch)
        .map(|p| (p, std::fs::read(p).ok()));
    let engine = match Engine::start_with_plugins(config, config_path, crate::plugins()).await {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("veltrix: cannot start: {e}");
            return exit::FAILURE;
        }
    };
    print_banner(&engine, config_path, started.elapsed());
    if let Err(e) = serve_until_stopped(&engine, watched).await {
        eprintln!("veltrix: cannot listen for signals: {e}");
    }
    say!("veltrix: stopping (new requests get 503; waiting up to {grace:?} for in-flight work)");
    let stopping = Instant::now();
    match engine.shutdown(grace).await {
        Ok(()) => {
            say!(
                "veltrix: stopped cleanly in {:.0} ms",
                stopping.elapsed().as_secs_f64() * 1e3
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("veltrix: stopped with an error: {e}");
            exit::FAILURE
        }
    }
}

fn print_banner(engine: &Engine, config_path: Option<&Path>, took: Duration) {
    let t = engine.topology();
    let config = config_path.map_or_else(
        || "built-in default".to_owned(),
        |p| p.display().to_string(),
    );
    say!(
        "veltrix {} started in {:.0} ms (config: {config})",
        env!("CARGO_PKG_VERSION"),
        took.as_secs_f64() * 1e3
    );
    for (name, address) in &t.ingest {
        say!("  ingest    http://{address}/v1/events  (source `{name}`: POST CloudEvents)");
    }
    for (name, description) in &t.pull_sources {
        say!("  source    {name}: {description}");
    }
    say!(
        "  admin     http://{}  (dashboard at /, /healthz, /readyz, /metrics, /api/v1/stats)",
        t.api
    );
    say!("  data      {}", t.data_dir.display());
    for (name, types, durability, dir) in &t.queues {
        say!(
            "  queue     {name}: types [{types}], durability {durability}, {}",
            dir.display()
        );
    }
    for (name, from, sink) in &t.pipelines {
        say!("  pipeline  {name}: {from} -> {sink}");
    }
    say!("press Ctrl-C to stop");
}

/// Serves until SIGINT or SIGTERM, or until a source asks to stop (stdin at its end with
/// `exit_on_eof`). SIGHUP reloads the config file; with `watched`, so does a
/// change of the file's contents (read every second: config files are small, and contents catch
/// edits that timestamps with coarse granularity miss).
async fn serve_until_stopped(
    engine: &Engine,
    watched: Option<(&Path, Option<Vec<u8>>)>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (watched, mut last_seen) = match watched {
        Some((path, seen)) => (Some(path), seen),
        None => (None, None),
    };
    let mut poll = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => report(engine.reload(false).await, "SIGHUP"),
            why = engine.exit_requested() => {
                say!("veltrix: {why}");
                return Ok(());
            }
            _ = poll.tick(), if watched.is_some() => {
                let now = watched.and_then(|path| std::fs::read(path).ok());
                if now != last_seen {
                    last_seen = now;
                    report(engine.reload(false).await, "the config file changed");
                }
            }
        }
    }
}

/// How often `--watch` looks at the config file.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Prints a reload's outcome (the log has the details too).
fn report(outcome: Reload, cause: &str) {
    match outcome {
        Reload::Applied(changes) if changes.is_empty() => {
            say!("veltrix: reloaded ({cause}): no changes")
        }
        Reload::Applied(changes) => say!("veltrix: reloaded ({cause}): {}", changes.to_json()),
        Reload::Invalid(why) => {
            eprintln!("veltrix: reload ({cause}) rejected, the running config keeps going:\n{why}")
        }
        Reload::Refused(why) => {
            eprintln!("veltrix: reload ({cause}) refused, the running config keeps going: {why}")
        }
        Reload::Failed(why) => eprintln!("veltrix: reload ({cause}) failed midway: {why}"),
    }
}
