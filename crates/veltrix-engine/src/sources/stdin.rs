//! `type = "stdin"`: NDJSON on standard input, one structured CloudEvent per line
//! (`cat events.ndjson | veltrix run -c cfg.toml`).
//!
//! Layout: a reader thread does the blocking reads (64 KiB chunks) and hands them over a
//! channel of [`CHUNKS_IN_FLIGHT`] chunks to the source task, which splits lines, stores them in
//! batches with [`ndjson::store_lines`] (bad lines counted and skipped like the file source),
//! and stores a partial batch as soon as no more input is ready, so slow input is not held back.
//! The reader thread is detached: a read blocked on a terminal never delays shutdown.
//!
//! End of input: the last line needs no newline. Then, with `exit_on_eof` (the default), the
//! source waits until every pipeline reading a queue its events went to has acknowledged
//! everything that queue held when input ended (delivered, filtered or dead-lettered: a
//! pipeline acknowledges only then), and asks the engine to shut down gracefully; `veltrix
//! run` then exits 0 as after SIGTERM. Events other sources put in those queues before that
//! point are waited for too. With `exit_on_eof = false` the source just ends and the engine
//! keeps running.
//!
//! Loss window: none for what was stored (acknowledged means durable); input read but not yet
//! stored when the engine is stopped by a signal is lost (a pipe cannot be re-read).
//!
//! Bounds: chunks in flight, one line in progress (`line_bytes_max`), one batch
//! (`batch_events`, 4 MiB).

use std::collections::HashSet;
use std::io::{self, Read};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use veltrix_core::config::StdinSourceConfig;

use super::SourceContext;
use super::lines::{Line, Splitter};
use super::ndjson::{self, LineBatch, Origin, Rejects, Stopped};

/// Chunks read ahead of the source task.
const CHUNKS_IN_FLIGHT: usize = 4;
const CHUNK_BYTES: usize = 64 * 1024;
/// How often the end-of-input drain looks at the consumers' positions.
const DRAIN_POLL: Duration = Duration::from_millis(20);

pub(crate) fn start(config: StdinSourceConfig, ctx: SourceContext) -> JoinHandle<()> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let spawned = std::thread::Builder::new()
        .name("stdin".to_owned())
        .spawn(move || read_all(io::stdin().lock(), &tx));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the stdin reader thread");
    }
    tokio::spawn(run(config, ctx, rx))
}

/// Sends `input` in chunks until its end (or a read error, sent last).
fn read_all(mut input: impl Read, tx: &mpsc::Sender<io::Result<Vec<u8>>>) {
    loop {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        match input.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                chunk.truncate(n);
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return; // the source stopped
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

fn locate(origin: Origin) -> String {
    match origin.line {
        Some(line) => format!("stdin:{line}"),
        None => format!("stdin (byte {})", origin.byte),
    }
}

async fn run(
    config: StdinSourceConfig,
    mut ctx: SourceContext,
    mut rx: mpsc::Receiver<io::Result<Vec<u8>>>,
) {
    let line_bytes_max = usize::try_from(config.line_bytes_max.bytes()).unwrap_or(usize::MAX);
    let batch_events = usize::try_from(config.batch_events).unwrap_or(usize::MAX);
    let mut splitter = Splitter::new(line_bytes_max);
    let mut rejects = Rejects::new(&ctx.name);
    let mut batch = LineBatch::default();
    // Bytes of the line in progress, and the stream offset of their first byte.
    let mut pending: Vec<u8> = Vec::new();
    let mut pos = 0u64;
    let mut touched = HashSet::new();
    tracing::info!(source = %ctx.name, "reading events from standard input");
    loop {
        let next = {
            let stop = &mut ctx.stop;
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopping| *stopping) => return,
                next = rx.recv() => next,
            }
        };
        let end = match next {
            Some(Ok(bytes)) => {
                pending.extend_from_slice(&bytes);
                false
            }
            Some(Err(e)) => {
                tracing::error!(source = %ctx.name, error = %e, "reading standard input failed; treating it as its end");
                true
            }
            None => true,
        };
        if end && !pending.is_empty() && !splitter.skipping {
            pending.push(b'\n'); // the last line needs no newline
        }
        loop {
            let mut full = false;
            let mut too_long = Vec::new();
            let consumed = splitter.split(&pending, |at, line| {
                let origin = Origin {
                    line: Some(at.line),
                    byte: pos + at.start as u64,
                };
                match line {
                    Line::Kept(bytes) => {
                        full = !batch.push(bytes, origin, batch_events);
                        !full
                    }
                    Line::TooLong => {
                        too_long.push(origin);
                        true
                    }
                }
            });
            pending.drain(..consumed);
            pos += consumed as u64;
            for origin in too_long {
                let message =
                    format!("the line is longer than line_bytes_max ({line_bytes_max} bytes)");
                rejects.reject(&ctx, "line-too-long", &locate(origin), &message);
            }
            // Store a full batch, and whatever is batched once no more input is ready.
            if full || (!batch.is_empty() && (end || rx.is_empty())) {
                if ndjson::store_lines(&mut ctx, &batch, &mut rejects, &locate, Some(&mut touched))
                    .await
                    .is_err()
                {
                    return;
                }
                batch.clear();
            }
            if !full {
                break;
            }
        }
        if end {
            break;
        }
    }
    tracing::info!(source = %ctx.name, lines = splitter.line - 1, bytes = pos, "standard input ended");
    if !config.exit_on_eof {
        tracing::info!(source = %ctx.name, "exit_on_eof = false: the engine keeps running");
        return;
    }
    if wait_delivered(&mut ctx, &touched).await.is_ok() {
        ctx.request_exit(format!(
            "standard input ended and every event read from it was delivered (source `{}`)",
            ctx.name
        ));
    }
}

/// Waits until every open consumer of each queue in `queues` has acknowledged everything the
/// queue holds now. `Err` when the engine stops first.
async fn wait_delivered(ctx: &mut SourceContext, queues: &HashSet<String>) -> Result<(), Stopped> {
    let targets: Vec<(String, u64)> = queues
        .iter()
        .filter_map(|q| Some((q.clone(), ctx.live.queue_log(q)?.inspect().next_offset)))
        .collect();
    loop {
        // Looked up each time: a reload may have reopened a queue.
        let waiting = targets.iter().any(|(queue, end)| {
            ctx.live.queue_log(queue).is_some_and(|log| {
                log.inspect()
                    .cursors
                    .iter()
                    .any(|c| c.open && c.committed.offset < *end)
            })
        });
        if !waiting {
            return Ok(());
        }
        let stop = &mut ctx.stop;
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            _ = stop.wait_for(|stopping| *stopping) => return Err(Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_sends_everything_in_bounded_chunks_then_closes() {
        let input = vec![b'x'; CHUNK_BYTES * 2 + 10];
        let (tx, mut rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let reader = std::thread::spawn(move || read_all(&input[..], &tx));
        let mut total = 0;
        while let Some(chunk) = rx.blocking_recv() {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK_BYTES);
            total += chunk.len();
        }
        reader.join().unwrap();
        assert_eq!(total, CHUNK_BYTES * 2 + 10);
    }
}
