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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use veltrix_core::config::SinkConfig;

/// Batches that may wait for the file sink's writer thread.
const FILE_SINK_QUEUE_MAX: usize = 64;
/// Idle keep-alive connections an http sink keeps.
const HTTP_SINK_IDLE_CONNECTIONS_MAX: usize = 16;

/// Whether trying again may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Timeouts, connection errors, 5xx, 408, 429, local I/O errors: try again, not before
    /// `after` when the sink said so (`Retry-After`).
    Retryable { after: Option<Duration> },
    /// The sink refused this batch for good (other 4xx): dead-letter it at once.
    Permanent,
}

/// Why a sink did not confirm a batch.
#[derive(Debug, Clone)]
pub(crate) struct SinkError {
    pub(crate) retry: Retry,
    pub(crate) message: String,
    /// The downstream's status code, when it answered (metrics label).
    pub(crate) status: Option<u16>,
}

impl SinkError {
    fn retryable(message: impl Into<String>) -> SinkError {
        SinkError {
            retry: Retry::Retryable { after: None },
            message: message.into(),
            status: None,
        }
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A running sink.
pub(crate) enum Sink {
    File(FileSink),
    Http(HttpSink),
    Stdout,
    Blackhole { events: AtomicU64 },
}

impl Sink {
    pub(crate) fn start(name: &str, config: &SinkConfig) -> io::Result<Sink> {
        Ok(match config {
            SinkConfig::File { path } => Sink::File(FileSink::start(name, path)?),
            SinkConfig::Http { url, timeout } => Sink::Http(HttpSink::new(url, *timeout)?),
            SinkConfig::Stdout => Sink::Stdout,
            SinkConfig::Blackhole => Sink::Blackhole {
                events: AtomicU64::new(0),
            },
        })
    }

    /// Delivers `ndjson` (`events` lines); returns once the sink confirms it.
    pub(crate) async fn write(&self, ndjson: Bytes, events: u64) -> Result<(), SinkError> {
        match self {
            Sink::File(file) => file.write(ndjson).await,
            Sink::Http(http) => http.write(&ndjson).await,
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&ndjson)
                    .and_then(|()| out.flush())
                    .map_err(|e| SinkError::retryable(format!("writing to stdout: {e}")))
            }
            Sink::Blackhole { events: count } => {
                count.fetch_add(events, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Where the sink writes, for the startup banner.
    pub(crate) fn describe(&self) -> String {
        match self {
            Sink::File(f) => format!("file {}", f.path.display()),
            Sink::Http(h) => format!("http {}", h.url),
            Sink::Stdout => "stdout".to_owned(),
            Sink::Blackhole { .. } => "blackhole".to_owned(),
        }
    }
}

/// POSTs each batch as `application/cloudevents-batch+json` and classifies the answer.
pub(crate) struct HttpSink {
    url: String,
    client: reqwest::Client,
}

impl HttpSink {
    fn new(url: &str, timeout: Duration) -> io::Result<HttpSink> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(HTTP_SINK_IDLE_CONNECTIONS_MAX)
            .build()
            .map_err(io::Error::other)?;
        Ok(HttpSink {
            url: url.to_owned(),
            client,
        })
    }

    async fn write(&self, ndjson: &[u8]) -> Result<(), SinkError> {
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(ndjson_to_array(ndjson))
            .send()
            .await
            .map_err(|e| SinkError::retryable(format!("POST {}: {e}", self.url)))?;
        let status = response.status();
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

/// NDJSON lines (compact JSON, so no raw newline inside one) as a JSON array.
pub(crate) fn ndjson_to_array(ndjson: &[u8]) -> Vec<u8> {
    let body = ndjson.strip_suffix(b"\n").unwrap_or(ndjson);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(b'[');
    out.extend(body.iter().map(|&b| if b == b'\n' { b',' } else { b }));
    out.push(b']');
    out
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

    async fn write(&self, ndjson: Bytes) -> Result<(), SinkError> {
        let (tx, rx) = oneshot::channel();
        let closed = || SinkError::retryable("the file sink's writer stopped");
        self.jobs.send((ndjson, tx)).await.map_err(|_| closed())?;
        rx.await
            .map_err(|_| closed())?
            .map_err(|e| SinkError::retryable(format!("writing {}: {e}", self.path.display())))
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

    #[test]
    fn ndjson_becomes_a_json_array() {
        assert_eq!(
            ndjson_to_array(b"{\"a\":1}\n{\"b\":\"x\\ny\"}\n"),
            b"[{\"a\":1},{\"b\":\"x\\ny\"}]"
        );
        assert_eq!(ndjson_to_array(b""), b"[]");
    }

    #[tokio::test]
    async fn file_sink_cuts_a_torn_last_line_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out").join("events.ndjson");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"id\":\"1\"}\n{\"id\":\"2\",\"da").unwrap();
        let sink = Sink::start("t", &SinkConfig::File { path: path.clone() }).unwrap();
        sink.write(Bytes::from_static(b"{\"id\":\"3\"}\n"), 1)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":\"1\"}\n{\"id\":\"3\"}\n"
        );
    }
}
