//! The engine's lifecycle: [`Engine::start`] opens the queues (recovering them), starts the sinks,
//! the pipelines and the HTTP listeners; [`Engine::shutdown`] stops accepting (503), lets
//! in-flight requests and batches finish within a grace period, persists the cursors and closes
//! the queues.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use veltrix_core::config::{Config, Durability, Router as TypeRouter, SinkConfig, SourceConfig};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use veltrix_log::{Log, LogOptions};

use crate::deadletter::{DeadLetters, QueueLookup};
use crate::pipeline::{Input, Pipeline, Setup};
use crate::processors::Chain;
use crate::queues::{self, Queue};
use crate::sink::Sink;
use crate::stats::{
    PipelineCounters, PipelineInfo, QueueInfo, Registry, SinkCounters, SinkInfo, SourceCounters,
    SourceInfo,
};
use crate::{api, ingest};

/// Bounds of a pipeline's dead-letter queue.
const DLQ_MAX_BYTES: u64 = 256 * 1024 * 1024;
const DLQ_MAX_EVENTS: u64 = 1_000_000;
const DLQ_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Latency buckets (seconds): 100 µs to 30 s, roughly ×2.5 apart.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The process-wide metrics recorder (installed once; several engines in one process share it).
fn metrics_handle() -> PrometheusHandle {
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
            }
            handle
        })
        .clone()
}

/// Why the engine could not start or stop cleanly.
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
}

/// What is running where (for the startup banner and tests).
#[derive(Debug, Clone)]
pub struct Topology {
    /// HTTP sources: name and bound address.
    pub ingest: Vec<(String, SocketAddr)>,
    /// The admin API's bound address.
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    /// Queues: name, type patterns, durability, directory.
    pub queues: Vec<(String, String, &'static str, PathBuf)>,
    /// Pipelines: name, queues read, sink description.
    pub pipelines: Vec<(String, String, String)>,
}

/// A running engine.
pub struct Engine {
    topology: Topology,
    accepting: Arc<AtomicBool>,
    stop_http: watch::Sender<bool>,
    stop_workers: watch::Sender<bool>,
    servers: Vec<JoinHandle<io::Result<()>>>,
    pipelines: Vec<Pipeline>,
    queues: Vec<Queue>,
    dead_letters: Vec<Arc<DeadLetters>>,
}

async fn bind(what: String, address: SocketAddr) -> Result<TcpListener, EngineError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| EngineError::Bind {
            what,
            address,
            source,
        })
}

fn serve(
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    })
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Fsync => "fsync",
        Durability::Interval => "interval",
        Durability::Memory => "memory",
    }
}

impl Engine {
    /// Starts everything `config` describes. Queues are recovered before any listener opens.
    pub async fn start(config: Config) -> Result<Engine, EngineError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| EngineError::DataDir {
            dir: config.data_dir.clone(),
            source,
        })?;
        let mut queues = Vec::new();
        for (queue, report) in queues::open_all(&config)? {
            tracing::info!(
                queue = %queue.name,
                segments = report.segments,
                next_offset = report.next_offset,
                bytes_truncated = report.bytes_truncated,
                records_quarantined = report.records_quarantined,
                cursors_reset = report.cursors_reset.len(),
                ledger_error = report.ledger_error.as_deref().unwrap_or("none"),
                elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
                "queue recovered"
            );
            queues.push(queue);
        }
        let queue_index: HashMap<&str, usize> = queues
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name.as_str(), i))
            .collect();

        let mut sinks = HashMap::new();
        let mut sink_infos = Vec::new();
        for (name, sink_config) in &config.sinks {
            let sink = Sink::start(name, sink_config).map_err(|source| EngineError::Sink {
                sink: name.clone(),
                source,
            })?;
            let counters = Arc::new(SinkCounters::default());
            let (kind, target) = match sink_config {
                SinkConfig::File { path } => ("file", path.display().to_string()),
                SinkConfig::Http { url, .. } => ("http", url.clone()),
                SinkConfig::Stdout => ("stdout", "<stdout>".to_owned()),
                SinkConfig::Blackhole => ("blackhole", String::new()),
            };
            sink_infos.push(SinkInfo {
                name: name.clone(),
                kind,
                target,
                counters: counters.clone(),
            });
            sinks.insert(name.clone(), (Arc::new(sink), counters));
        }

        let (stop_workers, stop_workers_rx) = watch::channel(false);
        let mut pipelines = Vec::new();
        let mut pipeline_topology = Vec::new();
        let mut dead_letters = HashMap::new();
        let mut pipeline_infos = Vec::new();
        for (name, p) in &config.pipelines {
            let mut inputs = Vec::new();
            for queue_name in &p.from {
                let queue = &queues[queue_index[queue_name.as_str()]];
                let cursor = queue
                    .log
                    .cursor(name)
                    .map_err(|source| EngineError::Cursor {
                        pipeline: name.clone(),
                        queue: queue_name.clone(),
                        source,
                    })?;
                inputs.push(Input {
                    queue: queue_name.clone(),
                    priority: queue.priority,
                    cursor,
                });
            }
            let dlq_dir = queues::queue_dir(&config.data_dir, &p.dead_letter);
            let dlq_options = LogOptions {
                max_bytes: DLQ_MAX_BYTES,
                max_records: DLQ_MAX_EVENTS,
                segment_bytes: DLQ_SEGMENT_BYTES,
                ..LogOptions::default()
            };
            let (dlq_log, _) =
                Log::open(&dlq_dir, dlq_options).map_err(|source| EngineError::Queue {
                    queue: p.dead_letter.clone(),
                    dir: dlq_dir.clone(),
                    source,
                })?;
            let dlq = Arc::new(DeadLetters::new(&p.dead_letter, name, &p.sink, dlq_log));
            dead_letters.insert(name.clone(), dlq.clone());
            let (sink, sink_counters) = sinks[&p.sink].clone();
            let counters = Arc::new(PipelineCounters::default());
            pipeline_infos.push(PipelineInfo {
                name: name.clone(),
                from: p.from.clone(),
                sink: p.sink.clone(),
                workers: p.workers,
                dead_letters: dlq.clone(),
                counters: counters.clone(),
            });
            pipeline_topology.push((name.clone(), p.from.join(", "), sink.describe()));
            pipelines.push(Pipeline::start(
                Setup {
                    name: name.clone(),
                    inputs,
                    chain: Chain::new(p.processors.clone()),
                    sink_name: p.sink.clone(),
                    sink,
                    dead_letters: dlq,
                    workers: p.workers,
                    batch_events_max: p.batch_events_max,
                    starvation_max: p.starvation_max,
                    retry: p.retry,
                    counters,
                    sink_counters,
                },
                &stop_workers_rx,
            ));
        }

        let accepting = Arc::new(AtomicBool::new(false));
        let (stop_http, stop_http_rx) = watch::channel(false);
        let mut servers = Vec::new();
        let mut ingest_addrs = Vec::new();
        let mut source_infos = Vec::new();
        for (name, source) in &config.sources {
            match source {
                SourceConfig::Http(http) => {
                    let counters = Arc::new(SourceCounters::default());
                    let state = Arc::new(ingest::IngestState {
                        source: name.clone(),
                        counters: counters.clone(),
                        router: TypeRouter::new(&config),
                        queues: queues.clone(),
                        body_bytes_max: http.body_bytes_max.bytes(),
                        tokens: http.tokens.clone(),
                        accepting: accepting.clone(),
                    });
                    let listener = bind(format!("source `{name}`"), http.address).await?;
                    let address = listener.local_addr().map_err(|source| EngineError::Bind {
                        what: format!("source `{name}`"),
                        address: http.address,
                        source,
                    })?;
                    ingest_addrs.push((name.clone(), address));
                    source_infos.push(SourceInfo {
                        name: name.clone(),
                        address: address.to_string(),
                        counters,
                    });
                    servers.push(serve(listener, ingest::router(state), stop_http_rx.clone()));
                }
            }
        }
        let listener = bind("the admin API".to_owned(), config.api.address).await?;
        let api_addr = listener.local_addr().map_err(|source| EngineError::Bind {
            what: "the admin API".to_owned(),
            address: config.api.address,
            source,
        })?;
        let lookup_queues = queues.clone();
        let queue_lookup: QueueLookup = Arc::new(move |name: &str| {
            lookup_queues
                .iter()
                .find(|q| q.name == name)
                .map(|q| q.log.clone())
        });
        let queue_infos = queues
            .iter()
            .map(|q| {
                let qc = &config.queues[&q.name];
                QueueInfo {
                    queue: q.clone(),
                    durability: durability_name(qc.durability),
                    max_events: qc.max_events,
                    max_bytes: qc.max_bytes.bytes(),
                    counters: q.counters.clone(),
                }
            })
            .collect();
        let source_addresses: Vec<String> =
            source_infos.iter().map(|s| s.address.clone()).collect();
        let stats = Registry::new(source_infos, queue_infos, pipeline_infos, sink_infos);
        tokio::spawn(stats.clone().run(stop_workers_rx.clone()));
        let api_state = Arc::new(api::ApiState {
            stats,
            accepting: accepting.clone(),
            metrics: metrics_handle(),
            dead_letters: dead_letters.clone(),
            queues: queue_lookup,
            token: config.api.token.clone(),
        });
        servers.push(serve(listener, api::router(api_state), stop_http_rx));
        accepting.store(true, Ordering::Release);
        tracing::info!(
            ingest = %source_addresses.join(", "),
            admin = %api_addr,
            queues = config.queues.len(),
            pipelines = config.pipelines.len(),
            "engine started"
        );

        let topology = Topology {
            ingest: ingest_addrs,
            api: api_addr,
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
            pipelines: pipeline_topology,
        };
        Ok(Engine {
            topology,
            accepting,
            stop_http,
            stop_workers,
            servers,
            pipelines,
            queues,
            dead_letters: dead_letters.into_values().collect(),
        })
    }

    /// What runs where.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Stops accepting (ingest answers 503 from now on), waits up to `grace` for in-flight
    /// requests and batches, persists every cursor and closes the queues. Events whose batch did
    /// not finish are redelivered at the next start.
    pub async fn shutdown(self, grace: Duration) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + grace;
        self.accepting.store(false, Ordering::Release);
        let _ = self.stop_http.send(true);
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
        let _ = self.stop_workers.send(true);
        for pipeline in self.pipelines {
            pipeline.join(deadline).await;
        }
        let mut result = Ok(());
        for dlq in self.dead_letters {
            if let Err(source) = dlq.log.clone().close() {
                result = Err(EngineError::Close {
                    queue: dlq.name.clone(),
                    source,
                });
            }
        }
        for queue in self.queues {
            if let Err(source) = queue.log.close() {
                tracing::error!(queue = %queue.name, error = %source, "closing a queue failed");
                result = Err(EngineError::Close {
                    queue: queue.name,
                    source,
                });
            }
        }
        match &result {
            Ok(()) => tracing::info!("engine stopped cleanly"),
            Err(e) => tracing::error!(error = %e, "engine stopped with an error"),
        }
        result
    }
}
