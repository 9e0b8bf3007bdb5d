//! A pipeline's dead-letter queue: a durable, bounded log of its own (under
//! `<data_dir>/queues/<dead_letter>`, not routable) holding events whose delivery failed for good,
//! each wrapped in an entry with the reason, the attempt count, the last error and the first and
//! last attempt times.
//!
//! Entries are read through one cursor (`dlq`), whose committed position is "everything before
//! this was replayed or purged". Listing reads from there without acknowledging. Replaying by id
//! re-enqueues the chosen events into their original queues and moves the other entries read on
//! the way to the tail of the DLQ (order kept), so the cursor can pass them: entries are never
//! lost and the log stays append-only.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use veltrix_log::{Log, Record};

use crate::record;

/// Entries read per step of a replay or purge.
const STEP_ENTRIES: usize = 1000;
const STEP_BYTES: usize = 4 * 1024 * 1024;
/// Most entries one listing returns.
pub(crate) const LIST_MAX: usize = 10_000;
const CURSOR: &str = "dlq";

/// Why an event was dead-lettered, and what was tried.
pub(crate) struct Failure<'a> {
    pub(crate) reason: &'a str,
    pub(crate) attempts: u32,
    pub(crate) last_error: &'a str,
    pub(crate) first_attempt_micros: u64,
    pub(crate) last_attempt_micros: u64,
    /// The sink that failed (a pipeline with routes has several); `None`: the pipeline's
    /// `sink` (a processing failure never reached one).
    pub(crate) sink: Option<&'a str>,
}

/// One pipeline's dead-letter queue.
pub(crate) struct DeadLetters {
    pub(crate) name: String,
    pipeline: String,
    sink: String,
    pub(crate) log: Log,
    /// Serialises list/replay/purge: they share the one cursor.
    admin: Mutex<()>,
}

/// What a replay or purge did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) replayed: u64,
    pub(crate) purged: u64,
    pub(crate) kept: u64,
}

/// Where replayed events go: the original queue's log, by name.
pub(crate) type QueueLookup = Arc<dyn Fn(&str) -> Option<Log> + Send + Sync>;

impl DeadLetters {
    pub(crate) fn new(name: &str, pipeline: &str, sink: &str, log: Log) -> DeadLetters {
        DeadLetters {
            name: name.to_owned(),
            pipeline: pipeline.to_owned(),
            sink: sink.to_owned(),
            log,
            admin: Mutex::new(()),
        }
    }

    /// Builds the stored entry for one original stored record from `queue`.
    pub(crate) fn entry(&self, queue: &str, stored: &[u8], failure: &Failure<'_>) -> Vec<u8> {
        let (accepted, body) = record::split(stored);
        let event: Value =
            serde_json::from_slice(body).unwrap_or_else(|_| json!(String::from_utf8_lossy(body)));
        let entry = json!({
            "id": event.get("id").cloned().unwrap_or(Value::Null),
            "event": event,
            "queue": queue,
            "pipeline": self.pipeline,
            "sink": failure.sink.unwrap_or(&self.sink),
            "reason": failure.reason,
            "attempts": failure.attempts,
            "last_error": failure.last_error,
            "first_attempt_at": rfc3339(failure.first_attempt_micros),
            "last_attempt_at": rfc3339(failure.last_attempt_micros),
            "accepted_at": rfc3339(accepted),
        });
        let mut out = Vec::with_capacity(body.len() + 256);
        record::begin(&mut out, accepted);
        serde_json::to_writer(&mut out, &entry).expect("a JSON value serialises");
        out
    }

    /// Up to `limit` entries, oldest first.
    pub(crate) async fn list(&self, limit: usize) -> Result<Vec<Value>, veltrix_log::Error> {
        let _guard = self.admin.lock().await;
        let mut cursor = self.log.cursor(CURSOR)?;
        let end = self.log.inspect().next_offset;
        let mut out = Vec::new();
        while out.len() < limit.min(LIST_MAX) {
            let batch = cursor.try_read_batch((limit - out.len()).min(STEP_ENTRIES), STEP_BYTES)?;
            if batch.is_empty() {
                break;
            }
            out.extend(batch.iter().filter(|r| r.offset < end).map(parse_entry));
        }
        // Dropping the cursor unacknowledged: the next reader starts at the same place.
        Ok(out)
    }

    /// Re-enqueues the entries whose event id is in `ids` (all entries when `ids` is `None`) into
    /// their original queues. With `purge`, chosen entries are discarded instead.
    pub(crate) async fn take(
        &self,
        ids: Option<&HashSet<String>>,
        purge: bool,
        queues: &QueueLookup,
    ) -> Result<Outcome, String> {
        let _guard = self.admin.lock().await;
        let mut cursor = self.log.cursor(CURSOR).map_err(|e| e.to_string())?;
        let acker = cursor.acker();
        let end = self.log.inspect().next_offset;
        let mut outcome = Outcome::default();
        loop {
            let batch = cursor
                .try_read_batch(STEP_ENTRIES, STEP_BYTES)
                .map_err(|e| e.to_string())?;
            let batch: Vec<Record> = batch.into_iter().filter(|r| r.offset < end).collect();
            if batch.is_empty() {
                break;
            }
            let mut keep = Vec::new();
            for r in &batch {
                let entry = parse_entry(r);
                let chosen =
                    ids.is_none_or(|ids| entry["id"].as_str().is_some_and(|id| ids.contains(id)));
                if !chosen {
                    keep.push(r.payload.clone());
                } else if purge {
                    outcome.purged += 1;
                } else {
                    replay_one(&entry, queues).await?;
                    outcome.replayed += 1;
                }
            }
            if !keep.is_empty() {
                outcome.kept += keep.len() as u64;
                let ticket = self
                    .log
                    .append_batch(&keep)
                    .map_err(|e| format!("keeping entries: {e}"))?;
                ticket.await.map_err(|e| format!("keeping entries: {e}"))?;
            }
            let offsets: Vec<u64> = batch.iter().map(|r| r.offset).collect();
            acker.ack_many(&offsets).map_err(|e| e.to_string())?;
            if batch.last().is_some_and(|r| r.offset + 1 >= end) {
                break;
            }
        }
        cursor.commit().await.map_err(|e| e.to_string())?;
        metrics::counter!("veltrix_dlq_replayed_total", "pipeline" => self.pipeline.clone())
            .increment(outcome.replayed);
        metrics::counter!("veltrix_dlq_purged_total", "pipeline" => self.pipeline.clone())
            .increment(outcome.purged);
        Ok(outcome)
    }
}

async fn replay_one(entry: &Value, queues: &QueueLookup) -> Result<(), String> {
    let queue = entry["queue"].as_str().unwrap_or_default();
    let log =
        queues(queue).ok_or_else(|| format!("the original queue `{queue}` no longer exists"))?;
    let mut stored = Vec::new();
    record::begin(&mut stored, record::now_micros());
    serde_json::to_writer(&mut stored, &entry["event"]).map_err(|e| e.to_string())?;
    let ticket = log
        .append(&stored)
        .map_err(|e| format!("queue `{queue}`: {e}"))?;
    ticket.await.map_err(|e| format!("queue `{queue}`: {e}"))?;
    Ok(())
}

fn parse_entry(r: &Record) -> Value {
    let (_, body) = record::split(&r.payload);
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// RFC 3339 UTC with microseconds, from µs since the Unix epoch.
pub(crate) fn rfc3339(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        micros % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            rfc3339(1_795_437_296_123_456),
            "2026-11-23T12:34:56.123456Z"
        );
    }
}
