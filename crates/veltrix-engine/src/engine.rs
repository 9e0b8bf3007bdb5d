//! The engine's lifecycle: [`Engine::start`] recovers the queues and starts the sinks and
//! pipelines (a reconcile from nothing, see `components.rs`), then the HTTP listeners;
//! [`Engine::reload`] validates a new config and reconciles to it with the same code;
//! [`Engine::shutdown`] stops accepting (503), lets in-flight requests and batches finish within
//! a grace period, persists the cursors and closes the queues.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use veltrix_core::config::{self, Config, Router as TypeRouter, SourceConfig};

use crate::components::{Changes, Running, durability_name};
use crate::handler::Plugins;
use crate::live::{Live, Routing};
use crate::queues;
use crate::sources::{RunningSource, SourceContext};
use crate::stats::{Registry, SAMPLE_INTERVAL, SourceCounters, SourceInfo};
use crate::{api, ingest};

/// Latency buckets (seconds): 100 µs to 30 s, roughly ×2.5 apart.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The process-wide metrics recorder (installed once; several engines in one process share it).
pub(crate) fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (an embedding program's): then ours
            // renders nothing, which is the embedder's choice.
            if metrics::set_global_recorder(recorder).is_ok() {
                crate::stats::describe_metrics();
                spawn_metrics_upkeep(handle.clone());
            }
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The recorder keeps every histogram sample (one per delivered event for
/// `veltrix_e2e_latency_seconds`) until they are folded into buckets, which otherwise happens
/// only when `/metrics` is scraped: without a scraper memory would grow with every event
/// (~8 MiB/s at 500 k events/s). A process-wide thread folds them every second, as long as the
/// process lives (the recorder is process-wide too), so at most one second of samples is held.
fn spawn_metrics_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the metrics upkeep thread: histogram samples are folded only when /metrics is scraped");
    }
}

/// Why the engine could not start, reload or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot create the data directory {dir}: {source}")]
    DataDir { dir: PathBuf, source: io::Error },
    #[error("cannot open queue `{queue}` in {dir}: {source}")]
    Queue {
        queue: String,
        dir: PathBuf,
        source: veltrix_log::Error,
    },
    #[error("pipeline `{pipeline}` cannot build its processors: {message}")]
    Processor { pipeline: String, message: String },
    #[error("cannot start sink `{sink}`: {source}")]
    Sink { sink: String, source: io::Error },
    #[error("pipeline `{pipeline}` cannot read queue `{queue}`: {source}")]
    Cursor {
        pipeline: String,
        queue: String,
        source: veltrix_log::Error,
    },
    #[error("cannot listen on {address} for {what}: {source}")]
    Bind {
        what: String,
        address: SocketAddr,
        source: io::Error,
    },
    #[error("queue `{queue}` did not close cleanly: {source}")]
    Close {
        queue: String,
        source: veltrix_log::Error,
    },
    /// A reload asked for something that cannot be done while running.
    #[error("{0}")]
    Refused(String),
}

/// What is running where (for the startup banner and tests).
#[derive(Debug, Clone)]
pub struct Topology {
    /// HTTP sources: name and bound address.
    pub ingest: Vec<(String, SocketAddr)>,
    /// Pull sources (NATS, generator): name and description.
    pub pull_sources: Vec<(String, String)>,
    /// The admin API's bound address.
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    /// Queues: name, type patterns, durability, directory.
    pub queues: Vec<(String, String, &'static str, PathBuf)>,
    /// Pipelines: name, queues read, sink description.
    pub pipelines: Vec<(String, String, String)>,
}

/// The outcome of a reload.
#[derive(Debug, Clone)]
pub enum Reload {
    /// The new config is running; what changed.
    Applied(Changes),
    /// The new config is invalid (diagnostics, one per line); nothing changed.
    Invalid(String),
    /// The new config asks for something that cannot be done live; nothing changed.
    Refused(String),
    /// Applying failed midway (an I/O error); the log says what is running.
    Failed(String),
}

/// Performs reloads, one at a time; shared by the engine handle, the admin API and signals.
pub(crate) struct Reloader {
    running: Mutex<Running>,
    live: Arc<Live>,
    config_path: Option<PathBuf>,
    cores: usize,
    /// Custom handler types: the config is decoded with them on reload.
    extensions: config::Extensions,
    sources: Vec<(String, String, Arc<SourceCounters>)>,
}

impl Reloader {
    /// Re-reads the config file (the built-in default has none: nothing to reload), validates
    /// it and reconciles to it. `force` allows removing queues that still hold events.
    pub(crate) async fn reload(&self, force: bool) -> Reload {
        let outcome = match &self.config_path {
            None => Reload::Refused(
                "running the built-in default config: there is no file to reload".to_owned(),
            ),
            Some(path) => match config::load_with(path, self.cores, &self.extensions) {
                Err(diagnostics) => Reload::Invalid(
                    diagnostics
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Ok(loaded) => {
                    let mut running = self.running.lock().await;
                    match running.reconcile(&loaded.config, force, &self.live).await {
                        Ok(changes) => {
                            self.rebuild_stats(&running);
                            Reload::Applied(changes)
                        }
                        Err(EngineError::Refused(why)) => Reload::Refused(why),
                        Err(e) => {
                            self.rebuild_stats(&running);
                            Reload::Failed(e.to_string())
                        }
                    }
                }
            },
        };
        let (label, ok) = match &outcome {
            Reload::Applied(changes) => {
                tracing::info!(changes = %changes.to_json(), "config reloaded");
                ("applied", true)
            }
            Reload::Invalid(why) => {
                tracing::warn!(reason = %why, "config reload rejected: the new config is invalid; the running one keeps going");
                ("invalid", false)
            }
            Reload::Refused(why) => {
                tracing::warn!(reason = %why, "config reload refused; the running config keeps going");
                ("refused", false)
            }
            Reload::Failed(why) => {
                tracing::error!(reason = %why, "config reload failed midway");
                ("failed", false)
            }
        };
        metrics::counter!("veltrix_config_reloads_total", "outcome" => label).increment(1);
        metrics::gauge!("veltrix_config_last_reload_success").set(if ok { 1.0 } else { 0.0 });
        metrics::gauge!("veltrix_config_last_reload_timestamp_seconds")
            .set(crate::record::now_micros() as f64 / 1e6);
        outcome
    }

    fn rebuild_stats(&self, running: &Running) {
        let (queues, pipelines, sinks) = running.stats_parts();
        let sources = self
            .sources
            .iter()
            .map(|(name, address, counters)| SourceInfo {
                name: name.clone(),
                address: address.clone(),
                counters: counters.clone(),
            })
            .collect();
        self.live
            .set_stats(Registry::new(sources, queues, pipelines, sinks));
    }
}

/// A running engine.
pub struct Engine {
    topology: Topology,
    accepting: Arc<AtomicBool>,
    stop_http: watch::Sender<bool>,
    stop_sampler: watch::Sender<bool>,
    servers: Vec<JoinHandle<io::Result<()>>>,
    /// Sources that pull (everything but HTTP); stopped with the listeners.
    pull_sources: Vec<RunningSource>,
    /// Set (with the reason) when a source asks the engine to stop: see [`Engine::exit_requested`].
    exit: watch::Receiver<Option<String>>,
    reloader: Arc<Reloader>,
}

/// A pull source in a few words (stats and `veltrix top`).
fn describe_source(source: &SourceConfig) -> String {
    match source {
        SourceConfig::Http(http) => http.address.to_string(),
        SourceConfig::Generator(g) => format!("generator {}/s", g.rate),
        SourceConfig::File(f) => format!("file {}", f.include.join(", ")),
        SourceConfig::Stdin(_) => "stdin".to_owned(),
        SourceConfig::Nats(n) => crate::sources::describe_nats(n),
    }
}

async fn bind(what: String, address: SocketAddr) -> Result<(TcpListener, SocketAddr), EngineError> {
    let err = |source| EngineError::Bind {
        what: what.clone(),
        address,
        source,
    };
    let listener = TcpListener::bind(address).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// Runs one listener's accept loop (see `listener.rs`) until `stop`.
fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: config::ListenerLimits,
    name: String,
    stop: watch::Receiver<bool>,
) -> JoinHandle<io::Result<()>> {
    tokio::spawn(crate::listener::serve(listener, router, limits, name, stop))
}

impl Engine {
    /// Starts everything `config` describes. Queues are recovered before any listener opens.
    /// `config_path` is where reloads re-read the config (`None`: the built-in default).
    pub async fn start(config: Config, config_path: Option<&Path>) -> Result<Engine, EngineError> {
        Engine::start_with_plugins(config, config_path, Plugins::new()).await
    }

    /// [`Engine::start`] with custom handler types (Veltrix as a library). `config` must have
    /// been loaded with `plugins.extensions()` (`config::load_with`).
    pub async fn start_with_plugins(
        config: Config,
        config_path: Option<&Path>,
        plugins: Plugins,
    ) -> Result<Engine, EngineError> {
        // Install the recorder before anything records (the first stats sample included).
        let metrics = metrics_handle();
        std::fs::create_dir_all(&config.data_dir).map_err(|source| EngineError::DataDir {
            dir: config.data_dir.clone(),
            source,
        })?;
        let live = Arc::new(Live::new(Routing {
            router: TypeRouter::new(&config),
            queues: Vec::new(),
        }));
        let extensions = plugins.extensions();
        let mut running = Running::empty(plugins);
        running.reconcile(&config, false, &live).await?;

        let accepting = Arc::new(AtomicBool::new(false));
        let (stop_http, stop_http_rx) = watch::channel(false);
        let mut servers = Vec::new();
        let mut ingest_addrs = Vec::new();
        let mut sources = Vec::new();
        let mut pull_sources = Vec::new();
        let (exit_tx, exit) = watch::channel(None);
        let exit_tx = Arc::new(exit_tx);
        for (name, source) in &config.sources {
            match source {
                SourceConfig::Http(http) => {
                    let counters = Arc::new(SourceCounters::default());
                    let state = Arc::new(ingest::IngestState {
                        source: name.clone(),
                        counters: counters.clone(),
                        received: metrics::counter!("veltrix_events_received_total", "source" => name.clone()),
                        live: live.clone(),
                        body_bytes_max: http.body_bytes_max.bytes(),
                        body_timeout: http.limits.body_timeout,
                        tokens: http.tokens.clone(),
                        accepting: accepting.clone(),
                        body_budget: ingest::body_budget(http.body_bytes_max.bytes()),
                    });
                    let (listener, address) =
                        bind(format!("source `{name}`"), http.address).await?;
                    ingest_addrs.push((name.clone(), address));
                    sources.push((name.clone(), address.to_string(), counters));
                    servers.push(serve(
                        listener,
                        ingest::router(state),
                        http.limits,
                        format!("sources.{name}"),
                        stop_http_rx.clone(),
                    ));
                }
                pull => {
                    let counters = Arc::new(SourceCounters::default());
                    let ctx = SourceContext::new(
                        name,
                        live.clone(),
                        counters.clone(),
                        stop_http_rx.clone(),
                    )
                    .with_exit(exit_tx.clone());
                    sources.push((name.clone(), describe_source(pull), counters));
                    pull_sources.extend(RunningSource::start(pull, ctx));
                }
            }
        }
        let topology = Topology {
            ingest: ingest_addrs,
            pull_sources: config
                .sources
                .iter()
                .filter(|(_, s)| !matches!(s, SourceConfig::Http(_)))
                .map(|(name, s)| (name.clone(), describe_source(s)))
                .collect(),
            api: config.api.address,
            data_dir: config.data_dir.clone(),
            queues: config
                .queues
                .iter()
                .map(|(name, q)| {
                    let types: Vec<&str> = q.types.iter().map(|t| t.as_str()).collect();
                    (
                        name.clone(),
                        types.join(", "),
                        durability_name(q.durability),
                        queues::queue_dir(&config.data_dir, name),
                    )
                })
                .collect(),
            pipelines: running.describe_pipelines(),
        };
        let reloader = Arc::new(Reloader {
            running: Mutex::new(running),
            live: live.clone(),
            config_path: config_path.map(Path::to_path_buf),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            extensions,
            sources,
        });
        reloader.rebuild_stats(&*reloader.running.lock().await);
        let (stop_sampler, mut stop_sampler_rx) = watch::channel(false);
        let sampler_live = live.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the registry sampled when it was built
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(stats) = sampler_live.stats() {
                            stats.sample();
                        }
                    }
                    _ = stop_sampler_rx.changed() => return,
                }
            }
        });
        metrics::gauge!("veltrix_config_last_reload_success").set(1.0);
        metrics::counter!("veltrix_config_reloads_total", "outcome" => "applied").increment(0);

        let (listener, api_addr) = bind("the admin API".to_owned(), config.api.address).await?;
        let api_state = Arc::new(api::ApiState {
            live,
            accepting: accepting.clone(),
            metrics,
            token: config.api.token.clone(),
            body_timeout: config.api.limits.body_timeout,
            reloader: reloader.clone(),
        });
        servers.push(serve(
            listener,
            api::router(api_state),
            config.api.limits,
            "api".to_owned(),
            stop_http_rx,
        ));
        accepting.store(true, Ordering::Release);
        let ingest_list: Vec<String> = topology.ingest.iter().map(|(_, a)| a.to_string()).collect();
        tracing::info!(
            ingest = %ingest_list.join(", "),
            admin = %api_addr,
            queues = config.queues.len(),
            pipelines = config.pipelines.len(),
            "engine started"
        );
        Ok(Engine {
            topology: Topology {
                api: api_addr,
                ..topology
            },
            accepting,
            stop_http,
            stop_sampler,
            servers,
            pull_sources,
            exit,
            reloader,
        })
    }

    /// Resolves, with the reason, when a source asks the engine to stop: a stdin source whose
    /// input ended and was delivered (`exit_on_eof`). The caller then shuts down as for a
    /// signal (`veltrix run` does, and exits 0). Never resolves otherwise.
    pub async fn exit_requested(&self) -> String {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // Every source that could ask is gone.
            Err(_) => std::future::pending().await,
        }
    }

    /// What runs where (as started; reloads may change queues and pipelines).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Re-reads and applies the config file (see [`Reload`]); `force` allows removing queues
    /// that still hold events (their files stay on disk).
    pub async fn reload(&self, force: bool) -> Reload {
        self.reloader.reload(force).await
    }

    /// Stops accepting (ingest answers 503 from now on), waits up to `grace` for in-flight
    /// requests and batches, persists every cursor and closes the queues. Events whose batch did
    /// not finish are redelivered at the next start.
    pub async fn shutdown(self, grace: Duration) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + grace;
        self.accepting.store(false, Ordering::Release);
        let _ = self.stop_http.send(true);
        for source in self.pull_sources {
            source.join(deadline).await;
        }
        for mut server in self.servers {
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "an HTTP listener ended with an error")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "an HTTP listener task failed"),
                Err(_) => {
                    tracing::warn!("HTTP connections still open at the deadline are closed");
                    server.abort();
                }
            }
        }
        let _ = self.stop_sampler.send(true);
        let result = self.reloader.running.lock().await.stop(deadline).await;
        match &result {
            Ok(()) => tracing::info!("engine stopped cleanly"),
            Err(e) => tracing::error!(error = %e, "engine stopped with an error"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    /// Without a scraper, histogram samples must be folded by the process-wide upkeep thread
    /// rather than held until `/metrics` is read (memory would grow with every delivered event):
    /// installing the recorder starts that thread. Nothing else in this crate installs a
    /// recorder, so ours is the one installed.
    #[cfg(target_os = "linux")]
    #[test]
    fn installing_the_recorder_starts_the_metrics_upkeep_thread() {
        let threads = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .expect("the process's threads")
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        };
        super::metrics_handle();
        // A new thread names itself once it runs (until then it has its parent's name), so the
        // name is polled for; the deadline only turns a missing thread into a failure.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !threads().iter().any(|name| name == "metrics-upkeep") {
            assert!(
                std::time::Instant::now() < deadline,
                "threads: {:?}",
                threads()
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
