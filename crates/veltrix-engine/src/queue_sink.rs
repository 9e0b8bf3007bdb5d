//! The `queue` sink: appends what a pipeline delivers to another configured queue, so pipelines
//! can be chained (`raw` → enrich → `enriched` → store). The events keep their ids; each becomes
//! one stored record (`record::begin` with the time it entered this queue, then its JSON).
//!
//! Guarantee: a batch is confirmed only after the target queue's group commit (with `fsync`
//! durability: on disk), so the upstream pipeline acknowledges its input only once the events
//! are safe in the next stage. A crash in between redelivers the batch, and the next stage sees
//! the events again with the same ids (at-least-once, like every sink).
//!
//! The queue is looked up by name at every write, in the live routing that reloads swap, so a
//! reload that reopens the queue is picked up without restarting the sink. A full backpressure
//! queue is a retryable error with a wait (`QUEUE_FULL_RETRY_AFTER`, like ingest's
//! `Retry-After`); a `drop_*` queue drops as configured (counted) and the batch is confirmed.
//! Cycles between queues are refused at config load (V012).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::handler::{Batch, Retry, Sink, SinkError};
use crate::ingest::{self, StoreError};
use crate::live::Live;
use crate::record;

/// How long the pipeline waits at least before retrying a batch refused by a full queue.
const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct QueueSink {
    queue: String,
    live: Arc<Live>,
}

impl QueueSink {
    pub(crate) fn new(queue: &str, live: Arc<Live>) -> QueueSink {
        QueueSink {
            queue: queue.to_owned(),
            live,
        }
    }

    async fn append(&self, batch: &Batch) -> Result<(), SinkError> {
        let routing = self.live.routing();
        let Some(queue) = routing.queues.iter().find(|q| q.name == self.queue) else {
            // Only between a reload's removal of the queue and the pipeline's stop.
            return Err(SinkError::retryable(format!(
                "queue `{}` is not running",
                self.queue
            )));
        };
        let accepted_at = record::now_micros();
        let mut buf = Vec::with_capacity(batch.ndjson().len() + 8 * batch.len());
        let mut ends = Vec::with_capacity(batch.len());
        for line in batch.lines() {
            record::begin(&mut buf, accepted_at);
            buf.extend_from_slice(line);
            ends.push(buf.len());
        }
        let starts = std::iter::once(0).chain(ends.iter().copied());
        let records: Vec<&[u8]> = starts.zip(&ends).map(|(s, &e)| &buf[s..e]).collect();
        match ingest::append_to(queue, &records).await {
            Ok(_dropped) => Ok(()),
            Err(e @ StoreError::Full { .. }) => Err(SinkError {
                retry: Retry::Retryable {
                    after: Some(QUEUE_FULL_RETRY_AFTER),
                },
                message: e.to_string(),
                status: None,
            }),
            Err(e @ StoreError::TooLarge { .. }) => Err(SinkError::permanent(e.to_string())),
            Err(e) => Err(SinkError::retryable(e.to_string())),
        }
    }
}

impl Sink for QueueSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.append(batch))
    }

    fn describe(&self) -> String {
        format!("queue {}", self.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queues::Queue;
    use bytes::Bytes;
    use veltrix_core::config::{Config, Router, WhenFull};
    use veltrix_log::{Log, LogOptions};

    fn live_with(name: &str, max_records: u64, when_full: WhenFull) -> (Arc<Live>, Log) {
        let options = LogOptions {
            durability: veltrix_log::Durability::Memory,
            max_records,
            ..LogOptions::default()
        };
        let (log, _) = Log::open(format!("/unused/{name}"), options).unwrap();
        let live = Live::new(crate::live::Routing {
            router: Router::new(&Config::default_config("/unused")),
            queues: vec![Queue {
                name: name.into(),
                priority: 0,
                when_full,
                log: log.clone(),
                counters: Arc::default(),
            }],
        });
        (Arc::new(live), log)
    }

    const TWO: &[u8] = b"{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}\n\
                         {\"specversion\":\"1.0\",\"id\":\"2\",\"source\":\"/s\",\"type\":\"t\"}\n";

    #[tokio::test]
    async fn a_batch_becomes_stored_records_of_the_queue() {
        let (live, log) = live_with("next", 100, WhenFull::Backpressure);
        let sink = QueueSink::new("next", live);
        sink.write(&Batch::new(Bytes::from_static(TWO), 2))
            .await
            .unwrap();
        let mut cursor = log.cursor("reader").unwrap();
        let records = cursor.try_read_batch(10, 1 << 20).unwrap();
        let bodies: Vec<&[u8]> = records
            .iter()
            .map(|r| record::split(&r.payload).1)
            .collect();
        let batch = Batch::new(Bytes::from_static(TWO), 2);
        let lines: Vec<&[u8]> = batch.lines().collect();
        assert_eq!(bodies, lines);
        assert!(record::split(&records[0].payload).0 > 0, "accepted-at set");
    }

    #[tokio::test]
    async fn a_full_queue_is_retryable_with_a_wait_and_a_missing_one_retryable() {
        let (live, _log) = live_with("next", 1, WhenFull::Backpressure);
        let sink = QueueSink::new("next", live.clone());
        let error = sink
            .write(&Batch::new(Bytes::from_static(TWO), 2))
            .await
            .unwrap_err();
        assert_eq!(
            error.retry,
            Retry::Retryable {
                after: Some(QUEUE_FULL_RETRY_AFTER)
            },
            "{error}"
        );
        let gone = QueueSink::new("other", live);
        let error = gone
            .write(&Batch::new(Bytes::from_static(TWO), 2))
            .await
            .unwrap_err();
        assert_eq!(error.retry, Retry::Retryable { after: None });
        assert!(error.message.contains("`other` is not running"));
    }

    #[tokio::test]
    async fn a_drop_newest_queue_confirms_and_counts_the_drop() {
        let (live, log) = live_with("next", 1, WhenFull::DropNewest);
        let sink = QueueSink::new("next", live);
        sink.write(&Batch::new(Bytes::from_static(TWO), 2))
            .await
            .unwrap();
        let mut cursor = log.cursor("reader").unwrap();
        assert!(cursor.try_read_batch(10, 1 << 20).unwrap().is_empty());
    }
}
