//! Sinks: where a pipeline delivers. A sink confirms a batch only once it is as durable as the
//! sink can make it (the file sink: after fdatasync), because confirming is what lets the
//! pipeline acknowledge the events to their queue.
//!
//! The file sink owns one writer thread: workers hand it NDJSON batches, it writes everything
//! waiting with one `write` and one `fdatasync` (group commit) and answers each batch. Its queue
//! of waiting batches is bounded (`FILE_SINK_QUEUE_MAX`), so a slow disk pushes back on workers.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use veltrix_core::config::{Concurrency, SinkConfig};

use crate::concurrency::{Limiter, Outcome};
use crate::handler::{Batch, Plugins, Retry, Sink, SinkError};
use crate::live::Live;
use crate::postgres::PostgresSink;
use crate::queue_sink::QueueSink;

mod nats;

/// Batches that may wait for the file sink's writer thread.
const FILE_SINK_QUEUE_MAX: usize = 64;
/// Idle keep-alive connections an http sink keeps.
const HTTP_SINK_IDLE_CONNECTIONS_MAX: usize = 16;

/// Starts the sink `name` of `config`: a built-in one, or a custom type from `plugins`. `live`
/// gives the queue sink the running queues (looked up at each write, so reloads are seen).
/// Nothing here connects anywhere: network sinks connect on first use and retry.
pub(crate) fn start(
    name: &str,
    config: &SinkConfig,
    plugins: &Plugins,
    live: &Arc<Live>,
) -> io::Result<Arc<dyn Sink>> {
    Ok(match config {
        SinkConfig::File { path } => Arc::new(FileSink::start(name, path)?),
        SinkConfig::Http {
            url,
            timeout,
            concurrency,
        } => Arc::new(HttpSink::new(name, url, *timeout, *concurrency)?),
        SinkConfig::Nats(nats) => Arc::new(nats::NatsSink::new(name, nats)),
        SinkConfig::Postgres(pg) => Arc::new(PostgresSink::new(name, pg)?),
        SinkConfig::Queue { queue } => Arc::new(QueueSink::new(queue, live.clone())),
        SinkConfig::Stdout => Arc::new(StdoutSink),
        SinkConfig::Blackhole => Arc::new(BlackholeSink),
        SinkConfig::Custom(custom) => plugins
            .build_sink(&custom.type_name, &custom.options)
            .map_err(io::Error::other)?,
    })
}

/// NDJSON on standard output.
struct StdoutSink;

impl Sink for StdoutSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut out = io::stdout().lock();
            out.write_all(batch.ndjson())
                .and_then(|()| out.flush())
                .map_err(|e| SinkError::retryable(format!("writing to stdout: {e}")))
        })
    }

    fn describe(&self) -> String {
        "stdout".to_owned()
    }
}

/// Discards (benchmarks; the pipeline's metrics still count what it delivered).
struct BlackholeSink;

impl Sink for BlackholeSink {
    fn write<'a>(&'a self, _: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn describe(&self) -> String {
        "blackhole".to_owned()
    }
}

/// POSTs each batch as `application/cloudevents-batch+json` and classifies the answer. At most
/// the limiter's limit of requests are in flight at once (see `concurrency.rs`); the others wait
/// for a slot.
pub(crate) struct HttpSink {
    url: String,
    client: reqwest::Client,
    limiter: Limiter,
}

impl HttpSink {
    fn new(
        name: &str,
        url: &str,
        timeout: Duration,
        concurrency: Concurrency,
    ) -> io::Result<HttpSink> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(HTTP_SINK_IDLE_CONNECTIONS_MAX)
            .build()
            .map_err(io::Error::other)?;
        Ok(HttpSink {
            url: url.to_owned(),
            client,
            limiter: Limiter::new(name, concurrency),
        })
    }

    async fn post(&self, batch: &Batch) -> Result<(), SinkError> {
        let body = batch.to_json_array();
        let permit = self.limiter.acquire().await;
        let sent = self
            .client
            .post(&self.url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                permit.done(Outcome::Overloaded);
                return Err(SinkError::retryable(format!("POST {}: {e}", self.url)));
            }
        };
        let status = response.status();
        let overloaded = matches!(status.as_u16(), 429 | 503);
        permit.done(if overloaded {
            Outcome::Overloaded
        } else {
            Outcome::Answered
        });
        if status.is_success() {
            return Ok(());
        }
        let after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let retryable =
            status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
        Err(SinkError {
            retry: if retryable {
                Retry::Retryable { after }
            } else {
                Retry::Permanent
            },
            message: format!("POST {} answered {status}", self.url),
            status: Some(status.as_u16()),
        })
    }
}

impl Sink for HttpSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.post(batch))
    }

    fn describe(&self) -> String {
        format!("http {}", self.url)
    }
}

type Job = (Bytes, oneshot::Sender<io::Result<()>>);

/// NDJSON appended to a file; a batch is confirmed after fdatasync.
pub(crate) struct FileSink {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
}

impl FileSink {
    fn start(name: &str, path: &Path) -> io::Result<FileSink> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        cut_torn_line(&file)?;
        let (jobs, rx) = mpsc::channel(FILE_SINK_QUEUE_MAX);
        std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || file_writer(file, rx))?;
        Ok(FileSink {
            path: path.to_path_buf(),
            jobs,
        })
    }

    async fn append(&self, ndjson: Bytes) -> Result<(), SinkError> {
        let (tx, rx) = oneshot::channel();
        let closed = || SinkError::retryable("the file sink's writer stopped");
        self.jobs.send((ndjson, tx)).await.map_err(|_| closed())?;
        rx.await
            .map_err(|_| closed())?
            .map_err(|e| SinkError::retryable(format!("writing {}: {e}", self.path.display())))
    }
}

impl Sink for FileSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.append(batch.ndjson().clone()))
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// A crash in the middle of a write can leave a last line without its newline. Those bytes were
/// never confirmed (their events will be delivered again), and appending after them would glue
/// the next event onto a broken line, so they are cut off before writing.
fn cut_torn_line(file: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(end - start) as usize];
        file.read_exact_at(buf, start)?;
        if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        tracing::warn!(
            cut_bytes = len - end,
            "file sink: cutting off a torn last line left by a crash"
        );
        file.set_len(end)?;
        file.sync_data()?;
    }
    Ok(())
}

/// The writer thread: takes every waiting batch, writes them at once, syncs once, answers all.
/// A failed write is cut off again (the file keeps only whole, confirmed lines) and reported, so
/// the pipeline retries it. Stops when every `FileSink` handle is gone.
fn file_writer(mut file: File, mut jobs: mpsc::Receiver<Job>) {
    let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    let mut waiting: Vec<oneshot::Sender<io::Result<()>>> = Vec::new();
    while let Some((first, tx)) = jobs.blocking_recv() {
        buf.clear();
        buf.extend_from_slice(&first);
        waiting.push(tx);
        while let Ok((more, tx)) = jobs.try_recv() {
            buf.extend_from_slice(&more);
            waiting.push(tx);
        }
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        match &result {
            Ok(()) => len += buf.len() as u64,
            Err(_) => {
                if let Err(e) = file.set_len(len) {
                    tracing::error!(error = %e, "file sink could not cut off a failed write");
                }
            }
        }
        for tx in waiting.drain(..) {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let _ = tx.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_sink_cuts_a_torn_last_line_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out").join("events.ndjson");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"id\":\"1\"}\n{\"id\":\"2\",\"da").unwrap();
        let live = Arc::new(Live::new(crate::live::Routing {
            router: veltrix_core::config::Router::new(
                &veltrix_core::config::Config::default_config("/unused"),
            ),
            queues: Vec::new(),
        }));
        let sink = start(
            "t",
            &SinkConfig::File { path: path.clone() },
            &Plugins::new(),
            &live,
        )
        .unwrap();
        sink.write(&Batch::new(Bytes::from_static(b"{\"id\":\"3\"}\n"), 1))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":\"1\"}\n{\"id\":\"3\"}\n"
        );
    }
}
