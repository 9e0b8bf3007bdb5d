//! The running components (queues, sinks, pipelines with their dead-letter queues) and
//! [`Running::reconcile`], which moves them from one config to the next. Startup is a reconcile
//! from nothing; a reload is a reconcile from the running config: one code path.
//!
//! Reconcile order, chosen so no event is lost: (1) refuse what cannot be done live (another
//! `data_dir` or sources; removing a queue that still holds unconsumed events unless forced);
//! (2) stop the pipelines that are removed or changed — their workers finish the batch in hand,
//! and whatever they had not acknowledged is redelivered to their successor through the same
//! named cursor; (3) replace changed sinks; (4) open, reopen or close queues (a closed queue's
//! files stay on disk); (5) swap the routing; (6) start new and changed pipelines.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use veltrix_core::config::{
    Config, PipelineConfig, ProcessorConfig, Router as TypeRouter, SinkConfig,
};
use veltrix_log::{Log, LogOptions};

use crate::deadletter::DeadLetters;
use crate::engine::EngineError;
use crate::handler::{Plugins, Sink};
use crate::live::{Live, Routing};
use crate::pipeline::{Input, Pipeline, Setup, SinkTarget};
use crate::processors::{Chain, SystemClock};
use crate::queues::{self, Queue};
use crate::sink;
use crate::stats::{PipelineCounters, PipelineInfo, QueueInfo, SinkCounters, SinkInfo};

/// Bounds of a pipeline's dead-letter queue.
const DLQ_MAX_BYTES: u64 = 256 * 1024 * 1024;
const DLQ_MAX_EVENTS: u64 = 1_000_000;
const DLQ_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// How long a reload waits for a stopping pipeline's batch in hand.
const PIPELINE_DRAIN_MAX: Duration = Duration::from_secs(30);

struct RunningSink {
    sink: Arc<dyn Sink>,
    counters: Arc<SinkCounters>,
}

struct RunningPipeline {
    pipeline: Pipeline,
    stop: watch::Sender<bool>,
    dead_letters: Arc<DeadLetters>,
    counters: Arc<PipelineCounters>,
}

/// What a reconcile did, by component kind.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Per kind ("queues", "pipelines", "sinks"): names added, changed, removed, unchanged.
    pub kinds: BTreeMap<&'static str, Delta>,
}

/// Names per outcome.
#[derive(Debug, Default, Clone)]
pub struct Delta {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

impl Changes {
    /// Whether anything was added, changed or removed.
    pub fn is_empty(&self) -> bool {
        self.kinds
            .values()
            .all(|d| d.added.is_empty() && d.changed.is_empty() && d.removed.is_empty())
    }

    /// The report as JSON (API response and log).
    pub fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = self
            .kinds
            .iter()
            .map(|(kind, d)| {
                (
                    (*kind).to_owned(),
                    json!({"added": d.added, "changed": d.changed, "removed": d.removed, "unchanged": d.unchanged}),
                )
            })
            .collect();
        Value::Object(kinds)
    }
}

/// Compares two ordered maps of named settings.
fn delta<T: PartialEq>(old: &[(&String, &T)], new: &[(&String, &T)]) -> Delta {
    let mut d = Delta::default();
    for (name, value) in new {
        match old.iter().find(|(n, _)| n == name) {
            None => d.added.push((*name).clone()),
            Some((_, before)) if before != value => d.changed.push((*name).clone()),
            Some(_) => d.unchanged.push((*name).clone()),
        }
    }
    for (name, _) in old {
        if !new.iter().any(|(n, _)| n == name) {
            d.removed.push((*name).clone());
        }
    }
    d
}

/// The components running now, and the config they implement.
pub(crate) struct Running {
    config: Option<Config>,
    queues: Vec<Queue>,
    sinks: HashMap<String, RunningSink>,
    pipelines: HashMap<String, RunningPipeline>,
    /// Custom handler types (Veltrix as a library).
    plugins: Plugins,
}

impl Running {
    pub(crate) fn empty(plugins: Plugins) -> Running {
        Running {
            plugins,
            config: None,
            queues: Vec::new(),
            sinks: HashMap::new(),
            pipelines: HashMap::new(),
        }
    }

    /// Moves the running components to `new` (see the module comment). On `Err` nothing was
    /// changed when the error is a refusal; an I/O failure midway leaves what was done so far
    /// running (and reported in the log).
    pub(crate) async fn reconcile(
        &mut self,
        new: &Config,
        force: bool,
        live: &Arc<Live>,
    ) -> Result<Changes, EngineError> {
        let empty = Config {
            queues: Default::default(),
            pipelines: Default::default(),
            sinks: Default::default(),
            ..new.clone()
        };
        let old = self.config.clone().unwrap_or(empty);
        if old.data_dir != new.data_dir {
            return Err(EngineError::Refused(format!(
                "data_dir cannot change while running ({} → {}); restart the engine",
                old.data_dir.display(),
                new.data_dir.display()
            )));
        }
        if old.sources != new.sources || old.api != new.api {
            return Err(EngineError::Refused(
                "[sources] and [api] cannot change while running (listeners and tokens are bound at start); restart the engine".to_owned(),
            ));
        }
        let queue_delta = delta(
            &old.queues.iter().collect::<Vec<_>>(),
            &new.queues.iter().collect::<Vec<_>>(),
        );
        let sink_delta = delta(
            &old.sinks.iter().collect::<Vec<_>>(),
            &new.sinks.iter().collect::<Vec<_>>(),
        );
        for name in &queue_delta.removed {
            let queue = self.queue(name).expect("running queues match the config");
            let unconsumed = queue
                .log
                .inspect()
                .cursors
                .iter()
                .map(|c| c.lag_records)
                .max()
                .unwrap_or(0);
            if unconsumed > 0 && !force {
                return Err(EngineError::Refused(format!(
                    "queue `{name}` still holds {unconsumed} unconsumed event(s); drain it first, or reload with force to remove it (its files stay in {})",
                    queues::queue_dir(&new.data_dir, name).display()
                )));
            }
        }
        // A pipeline restarts when its own settings, a queue it reads, or one of its sinks
        // changed.
        let restarts = |name: &str, p: &PipelineConfig| {
            old.pipelines.get(name) != Some(p)
                || p.from.iter().any(|q| queue_delta.changed.contains(q))
                || p.sinks()
                    .iter()
                    .any(|s| sink_delta.changed.iter().any(|c| c == s))
        };
        let mut pipeline_delta = Delta::default();
        for (name, p) in &new.pipelines {
            if !old.pipelines.contains_key(name) {
                pipeline_delta.added.push(name.clone());
            } else if restarts(name, p) {
                pipeline_delta.changed.push(name.clone());
            } else {
                pipeline_delta.unchanged.push(name.clone());
            }
        }
        pipeline_delta.removed = old
            .pipelines
            .keys()
            .filter(|n| !new.pipelines.contains_key(*n))
            .cloned()
            .collect();

        // (2) Stop removed and changed pipelines; forget cursors on queues they stop reading.
        for name in pipeline_delta.removed.iter().chain(&pipeline_delta.changed) {
            if let Some(running) = self.pipelines.remove(name) {
                let _ = running.stop.send(true);
                running
                    .pipeline
                    .join(tokio::time::Instant::now() + PIPELINE_DRAIN_MAX)
                    .await;
                let still_reads: Vec<&String> = new
                    .pipelines
                    .get(name)
                    .map(|p| p.from.iter().collect())
                    .unwrap_or_default();
                for queue in &old.pipelines[name].from {
                    if !still_reads.contains(&queue)
                        && let Some(q) = self.queue(queue)
                        && let Err(e) = q.log.remove_cursor(name)
                    {
                        tracing::warn!(pipeline = %name, queue = %queue, error = %e, "could not remove the pipeline's cursor");
                    }
                }
                if !new.pipelines.contains_key(name) {
                    let _ = running.dead_letters.log.clone().close();
                }
            }
        }
        // (3) Sinks.
        for name in sink_delta.removed.iter().chain(&sink_delta.changed) {
            self.sinks.remove(name);
        }
        for name in sink_delta.added.iter().chain(&sink_delta.changed) {
            let config = &new.sinks[name];
            let sink = sink::start(name, config, &self.plugins, live).map_err(|source| {
                EngineError::Sink {
                    sink: name.clone(),
                    source,
                }
            })?;
            self.sinks.insert(
                name.clone(),
                RunningSink {
                    sink,
                    counters: Arc::default(),
                },
            );
        }
        // (4) Queues: close removed ones, reopen those whose log options changed, open new ones.
        let mut next_queues = Vec::with_capacity(new.queues.len());
        for name in &queue_delta.removed {
            if let Some(q) = self.queue(name) {
                q.log.clone().close().map_err(|source| EngineError::Close {
                    queue: name.clone(),
                    source,
                })?;
            }
        }
        for (name, qc) in &new.queues {
            let existing = self.queue(name).cloned();
            let queue = match existing {
                Some(q) if queues::same_log(qc, &old.queues[name]) => Queue {
                    priority: qc.priority,
                    when_full: qc.when_full,
                    ..q
                },
                Some(q) => {
                    q.log.clone().close().map_err(|source| EngineError::Close {
                        queue: name.clone(),
                        source,
                    })?;
                    queues::open(&new.data_dir, name, qc, q.counters.clone())?
                }
                None => queues::open(&new.data_dir, name, qc, Arc::default())?,
            };
            next_queues.push(queue);
        }
        self.queues = next_queues;
        // (5) Routing.
        live.set_routing(Routing {
            router: TypeRouter::new(new),
            queues: self.queues.clone(),
        });
        // (6) Start new and changed pipelines.
        let previous_dlqs = live.dead_letters();
        for name in pipeline_delta.added.iter().chain(&pipeline_delta.changed) {
            let p = &new.pipelines[name];
            let reused = previous_dlqs
                .get(name)
                .filter(|d| d.name == p.dead_letter)
                .map(|d| d.log.clone());
            let running = self.start_pipeline(new, name, p, reused, live)?;
            self.pipelines.insert(name.clone(), running);
        }
        live.set_dead_letters(
            self.pipelines
                .iter()
                .map(|(n, r)| (n.clone(), r.dead_letters.clone()))
                .collect(),
        );
        self.config = Some(new.clone());
        let mut changes = Changes::default();
        changes.kinds.insert("queues", queue_delta);
        changes.kinds.insert("sinks", sink_delta);
        changes.kinds.insert("pipelines", pipeline_delta);
        Ok(changes)
    }

    fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.iter().find(|q| q.name == name)
    }

    fn start_pipeline(
        &self,
        config: &Config,
        name: &str,
        p: &PipelineConfig,
        dlq_log: Option<Log>,
        live: &Arc<Live>,
    ) -> Result<RunningPipeline, EngineError> {
        let mut inputs = Vec::new();
        for queue_name in &p.from {
            let queue = self
                .queue(queue_name)
                .expect("validated: pipelines read configured queues");
            let cursor = queue
                .log
                .cursor(name)
                .map_err(|source| EngineError::Cursor {
                    pipeline: name.to_owned(),
                    queue: queue_name.clone(),
                    source,
                })?;
            inputs.push(Input {
                queue: queue_name.clone(),
                priority: queue.priority,
                cursor,
            });
        }
        let dlq_log = match dlq_log {
            Some(log) => log,
            None => {
                let dir = queues::queue_dir(&config.data_dir, &p.dead_letter);
                let options = LogOptions {
                    max_bytes: DLQ_MAX_BYTES,
                    max_records: DLQ_MAX_EVENTS,
                    segment_bytes: DLQ_SEGMENT_BYTES,
                    ..LogOptions::default()
                };
                Log::open(&dir, options)
                    .map_err(|source| EngineError::Queue {
                        queue: p.dead_letter.clone(),
                        dir,
                        source,
                    })?
                    .0
            }
        };
        let chain =
            Chain::new(name, p, &self.plugins, Arc::new(SystemClock)).map_err(|message| {
                EngineError::Processor {
                    pipeline: name.to_owned(),
                    message,
                }
            })?;
        let dead_letters = Arc::new(DeadLetters::new(&p.dead_letter, name, &p.sink, dlq_log));
        let sinks: Vec<SinkTarget> = p
            .sinks()
            .into_iter()
            .map(|s| {
                let running = &self.sinks[s];
                SinkTarget {
                    name: s.to_owned(),
                    sink: running.sink.clone(),
                    counters: running.counters.clone(),
                }
            })
            .collect();
        let counters = Arc::new(PipelineCounters::with_sinks(sinks.len()));
        let batch = p.processors.iter().find_map(|p| match p {
            ProcessorConfig::Batch(b) => Some(*b),
            _ => None,
        });
        let (stop, stop_rx) = watch::channel(false);
        let pipeline = Pipeline::start(
            Setup {
                name: name.to_owned(),
                inputs,
                chain,
                sinks,
                dead_letters: dead_letters.clone(),
                workers: p.workers,
                batch_events_max: p.batch_events_max,
                batch,
                starvation_max: p.starvation_max,
                retry: p.retry,
                counters: counters.clone(),
                live: live.clone(),
            },
            &stop_rx,
        );
        Ok(RunningPipeline {
            pipeline,
            stop,
            dead_letters,
            counters,
        })
    }

    /// The stats view of the running components.
    pub(crate) fn stats_parts(&self) -> (Vec<QueueInfo>, Vec<PipelineInfo>, Vec<SinkInfo>) {
        let config = self.config.as_ref().expect("reconciled at least once");
        let queues = self
            .queues
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
        let pipelines = config
            .pipelines
            .iter()
            .filter_map(|(name, p)| {
                let running = self.pipelines.get(name)?;
                Some(PipelineInfo {
                    name: name.clone(),
                    from: p.from.clone(),
                    sink: p.sink.clone(),
                    sinks: p.sinks().into_iter().map(str::to_owned).collect(),
                    routes: p
                        .routes
                        .iter()
                        .map(|r| (r.condition.source().to_owned(), r.sink.clone()))
                        .collect(),
                    workers: p.workers,
                    dead_letters: running.dead_letters.clone(),
                    counters: running.counters.clone(),
                })
            })
            .collect();
        let sinks = config
            .sinks
            .iter()
            .filter_map(|(name, s)| {
                let running = self.sinks.get(name)?;
                let (kind, target) = match s {
                    SinkConfig::File { path } => ("file".to_owned(), path.display().to_string()),
                    SinkConfig::Http { url, .. } => ("http".to_owned(), url.clone()),
                    SinkConfig::Nats(n) => (
                        "nats".to_owned(),
                        format!("{} {}", n.url, n.subject.as_str()),
                    ),
                    SinkConfig::Postgres(_) => ("postgres".to_owned(), running.sink.describe()),
                    SinkConfig::Queue { queue } => ("queue".to_owned(), queue.clone()),
                    SinkConfig::Stdout => ("stdout".to_owned(), "<stdout>".to_owned()),
                    SinkConfig::Blackhole => ("blackhole".to_owned(), String::new()),
                    SinkConfig::Custom(c) => (c.type_name.clone(), running.sink.describe()),
                };
                Some(SinkInfo {
                    name: name.clone(),
                    kind,
                    target,
                    counters: running.counters.clone(),
                })
            })
            .collect();
        (queues, pipelines, sinks)
    }

    /// For the startup banner: each pipeline's queues and where its events go (with routes:
    /// each route's sink and condition, then the pipeline's sink for the rest; with an
    /// aggregate: its `into` queue).
    pub(crate) fn describe_pipelines(&self) -> Vec<(String, String, String)> {
        let Some(config) = &self.config else {
            return Vec::new();
        };
        config
            .pipelines
            .iter()
            .map(|(name, p)| {
                let sink = self.sinks[&p.sink].sink.describe();
                let sinks = if let Some(ProcessorConfig::Aggregate(a)) = p.processors.last() {
                    // Every event is consumed: what comes out goes to a queue, not the sink.
                    format!("aggregate `{}` into queue {}", a.event_type, a.into)
                } else if p.routes.is_empty() {
                    sink
                } else {
                    let mut parts: Vec<String> = p
                        .routes
                        .iter()
                        .map(|r| {
                            format!(
                                "{} if `{}`",
                                self.sinks[&r.sink].sink.describe(),
                                r.condition.source()
                            )
                        })
                        .collect();
                    parts.push(format!("else {sink}"));
                    parts.join("; ")
                };
                (name.clone(), p.from.join(", "), sinks)
            })
            .collect()
    }

    /// Stops every pipeline (at most until `deadline`) and closes every queue and dead-letter
    /// queue, persisting cursors.
    pub(crate) async fn stop(&mut self, deadline: tokio::time::Instant) -> Result<(), EngineError> {
        for running in self.pipelines.values() {
            let _ = running.stop.send(true);
        }
        let mut result = Ok(());
        for (_, running) in self.pipelines.drain() {
            running.pipeline.join(deadline).await;
            if let Err(source) = running.dead_letters.log.clone().close() {
                result = Err(EngineError::Close {
                    queue: running.dead_letters.name.clone(),
                    source,
                });
            }
        }
        self.sinks.clear();
        for q in self.queues.drain(..) {
            if let Err(source) = q.log.close() {
                tracing::error!(queue = %q.name, error = %source, "closing a queue failed");
                result = Err(EngineError::Close {
                    queue: q.name,
                    source,
                });
            }
        }
        result
    }
}

pub(crate) fn durability_name(d: veltrix_core::config::Durability) -> &'static str {
    use veltrix_core::config::Durability;
    match d {
        Durability::Fsync => "fsync",
        Durability::Interval => "interval",
        Durability::Memory => "memory",
    }
}
