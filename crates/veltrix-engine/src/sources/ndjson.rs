//! NDJSON lines to stored events for the line sources (file, stdin): one batch of lines is
//! decoded in one pass by the HTTP ingest decoder (`decode_body("application/x-ndjson")`), and a
//! bad line never blocks the lines around it: it is counted in
//! `veltrix_events_rejected_total{source, reason}`, logged with its location (rate-limited) and
//! skipped, and the rest of the batch is stored.
//!
//! Reasons: `invalid-event` (not JSON, or not a valid structured CloudEvent), `line-too-long`
//! (over `line_bytes_max`, counted by the caller through [`Rejects::reject`]),
//! `unroutable-events` (no queue takes its type), `event-too-large` (over its queue's record
//! limit). A storage failure is not a bad line: the batch is retried (with a capped backoff)
//! until it is stored or the engine stops, so nothing after it is stored first.
//!
//! Bounds: a batch holds at most `batch_events` lines and [`BATCH_BYTES_MAX`] bytes of them (or
//! one line when a single line is larger).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use veltrix_core::event::{self, DecodeError, Event};

use super::SourceContext;
use crate::ingest::StoreError;

/// Most bytes of lines in one batch (one line more may start it when it alone is larger).
pub(crate) const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// First wait before storing again after a storage failure; doubles up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where a line came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// 1-based line number, when known (a file read from its end does not know it).
    pub(crate) line: Option<u64>,
    /// Byte offset of the line's first byte in its stream.
    pub(crate) byte: u64,
}

/// Lines waiting to be stored: an NDJSON body (lines joined by `\n`) and where each came from.
/// Blank lines are not kept (the decoder would skip them anyway).
#[derive(Debug, Default)]
pub(crate) struct LineBatch {
    body: Vec<u8>,
    /// Where each line ends in `body` (its `\n` follows).
    ends: Vec<usize>,
    origins: Vec<Origin>,
}

impl LineBatch {
    pub(crate) fn clear(&mut self) {
        self.body.clear();
        self.ends.clear();
        self.origins.clear();
    }

    /// Lines in the batch.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Adds `line` (without its newline); blank lines are dropped. Returns whether the batch
    /// has room for more after it (`batch_events` lines, [`BATCH_BYTES_MAX`] bytes).
    pub(crate) fn push(&mut self, line: &[u8], origin: Origin, batch_events: usize) -> bool {
        if !line.iter().all(u8::is_ascii_whitespace) {
            self.body.extend_from_slice(line);
            self.ends.push(self.body.len());
            self.body.push(b'\n');
            self.origins.push(origin);
        }
        self.ends.len() < batch_events && self.body.len() < BATCH_BYTES_MAX
    }

    /// The lines with their origins, in order.
    #[cfg(test)]
    pub(crate) fn lines(&self) -> impl Iterator<Item = (&[u8], Origin)> {
        (0..self.len()).map(|i| (self.line(i), self.origins[i]))
    }

    fn line(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.body[start..self.ends[i]]
    }
}

/// A batch decoded.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// The events, each with its line's origin.
    pub(crate) events: Vec<(Event, Origin)>,
    /// The lines that are not valid CloudEvents: origin and what is wrong.
    pub(crate) bad: Vec<(Origin, String)>,
}

/// Decodes every line of `batch`. Pure.
pub(crate) fn decode(batch: &LineBatch) -> Decoded {
    let no_headers: &[(&str, &str)] = &[];
    let mut bad = Vec::new();
    // Indices into `batch` of the lines in `body` (all of them until some line is bad).
    let mut kept: Vec<usize> = (0..batch.len()).collect();
    let mut rebuilt = Vec::new();
    let mut body: &[u8] = &batch.body;
    loop {
        match event::decode_body("application/x-ndjson", no_headers, body) {
            Ok(events) => {
                debug_assert_eq!(events.len(), kept.len(), "one event per non-blank line");
                let origins = kept.iter().map(|&i| batch.origins[i]);
                return Decoded {
                    events: events.into_iter().zip(origins).collect(),
                    bad,
                };
            }
            Err(DecodeError::Invalid(errors)) => {
                // Each error names its line's index in `body`: drop those lines and decode the
                // rest again (every round drops at least one line, so this ends).
                let bad_indices: HashSet<usize> = errors.iter().map(|e| e.index).collect();
                for e in errors {
                    let origin = kept.get(e.index).map(|&i| batch.origins[i]);
                    if let Some(origin) = origin {
                        bad.push((origin, line_relative(&e.message)));
                    }
                }
                kept = kept
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| !bad_indices.contains(index))
                    .map(|(_, &i)| i)
                    .collect();
                rebuilt.clear();
                for &i in &kept {
                    rebuilt.extend_from_slice(batch.line(i));
                    rebuilt.push(b'\n');
                }
                body = &rebuilt;
                if kept.is_empty() {
                    return Decoded {
                        events: Vec::new(),
                        bad,
                    };
                }
            }
            Err(e @ DecodeError::UnsupportedMediaType(_)) => {
                unreachable!("NDJSON is a supported media type: {e}")
            }
        }
    }
}

/// The decoder's message names the line within the batch body; the caller names the real one.
fn line_relative(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid JSON at line ")
        && let Some(column) = rest.find(" column ")
    {
        return format!("invalid JSON at{}", &rest[column..]);
    }
    message.to_owned()
}

/// Counts and logs a source's rejected lines (at most [`LOGS_PER_WINDOW`] log lines per
/// [`LOG_WINDOW`], then one line saying how many were not logged).
pub(crate) struct Rejects {
    source: String,
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

const LOG_WINDOW: Duration = Duration::from_secs(10);
const LOGS_PER_WINDOW: u32 = 10;

impl Rejects {
    pub(crate) fn new(source: &str) -> Rejects {
        Rejects {
            source: source.to_owned(),
            window_start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Counts one rejected line (`reason` is the metric label) and logs it unless the rate
    /// limit is reached. `location` says where it was, e.g. `/var/log/app.ndjson:12`.
    pub(crate) fn reject(
        &mut self,
        ctx: &SourceContext,
        reason: &'static str,
        location: &str,
        message: &str,
    ) {
        ctx.reject(reason, 1);
        if self.window_start.elapsed() >= LOG_WINDOW {
            if self.suppressed > 0 {
                tracing::warn!(source = %self.source, lines = self.suppressed, "more rejected lines were not logged (at most {LOGS_PER_WINDOW} every {LOG_WINDOW:?})");
            }
            self.window_start = Instant::now();
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < LOGS_PER_WINDOW {
            self.logged += 1;
            tracing::warn!(source = %self.source, at = %location, reason, "line skipped: {message}");
        } else {
            self.suppressed += 1;
        }
    }
}

/// The engine stopped before the batch was stored.
#[derive(Debug)]
pub(crate) struct Stopped;

/// Decodes and stores `batch`: bad lines are rejected (counted, logged with `locate(origin)`,
/// skipped) and everything else is stored. Returns once the events are stored (as durable as
/// their queues promise), or `Err(Stopped)` when the engine stops first (then nothing of what
/// was not yet stored must count as read). `touched` collects the names of the queues events
/// went to.
pub(crate) async fn store_lines(
    ctx: &mut SourceContext,
    batch: &LineBatch,
    rejects: &mut Rejects,
    locate: &(dyn Fn(Origin) -> String + Sync),
    mut touched: Option<&mut HashSet<String>>,
) -> Result<(), Stopped> {
    let Decoded { events, bad } = decode(batch);
    for (origin, message) in bad {
        rejects.reject(ctx, "invalid-event", &locate(origin), &message);
    }
    // Work list of event runs (events, their origins), stored in order from the end; a run
    // refused as too large is split in two until the offending events stand alone.
    let (events, origins): (Vec<Event>, Vec<Origin>) = events.into_iter().unzip();
    let mut runs = vec![(events, origins)];
    let mut retry = RETRY_INITIAL;
    while let Some((mut events, mut origins)) = runs.pop() {
        if events.is_empty() {
            continue;
        }
        match ctx.store_waiting(&events).await {
            Ok(_) => {
                retry = RETRY_INITIAL;
                if let Some(touched) = touched.as_deref_mut() {
                    let routing = ctx.live.routing();
                    for event in &events {
                        if let Some(q) = routing.router.route(event.ty()) {
                            touched.insert(routing.router.queue_name(q).to_owned());
                        }
                    }
                }
            }
            // `Full` comes back only once the engine is stopping.
            Err(StoreError::Closed | StoreError::Full { .. }) => return Err(Stopped),
            Err(StoreError::Unroutable(problems)) => {
                let unroutable: HashSet<usize> = problems.iter().map(|p| p.index).collect();
                for p in &problems {
                    if let Some(origin) = origins.get(p.index) {
                        rejects.reject(ctx, "unroutable-events", &locate(*origin), &p.message);
                    }
                }
                let keep = |i: &usize| !unroutable.contains(i);
                let events = events
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| keep(i))
                    .map(|(_, e)| e)
                    .collect();
                let origins = origins
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| keep(i))
                    .map(|(_, o)| o)
                    .collect();
                runs.push((events, origins));
            }
            Err(StoreError::TooLarge { queue, size, max }) => {
                if events.len() == 1 {
                    let message = format!(
                        "the event takes {size} bytes, over queue `{queue}`'s record limit of {max} bytes"
                    );
                    rejects.reject(ctx, "event-too-large", &locate(origins[0]), &message);
                } else {
                    let half = events.len() / 2;
                    let second = (events.split_off(half), origins.split_off(half));
                    runs.push(second);
                    runs.push((events, origins));
                }
            }
            Err(e @ StoreError::Failed { .. }) => {
                tracing::error!(source = %ctx.name, error = %e, retry_in = ?retry, "storing lines failed; retrying the same lines");
                runs.push((events, origins));
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = ctx.stop.changed() => return Err(Stopped),
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(line: u64) -> Origin {
        Origin {
            line: Some(line),
            byte: line * 100,
        }
    }

    fn event_line(id: &str) -> String {
        format!(r#"{{"specversion":"1.0","id":"{id}","source":"/t","type":"t.x"}}"#)
    }

    #[test]
    fn good_lines_decode_with_their_origins() {
        let mut batch = LineBatch::default();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            batch.push(event_line(id).as_bytes(), origin(i as u64 + 1), 100);
        }
        let Decoded { events, bad } = decode(&batch);
        assert!(bad.is_empty());
        let ids: Vec<(&str, Option<u64>)> = events.iter().map(|(e, o)| (e.id(), o.line)).collect();
        assert_eq!(ids, [("a", Some(1)), ("b", Some(2)), ("c", Some(3))]);
    }

    #[test]
    fn bad_lines_are_named_by_their_own_origin_and_the_rest_still_decodes() {
        let mut batch = LineBatch::default();
        batch.push(event_line("a").as_bytes(), origin(10), 100);
        batch.push(b"{not json", origin(11), 100);
        batch.push(b"   ", origin(12), 100); // blank: dropped, not an error
        batch.push(br#"{"specversion":"1.0","source":"/t"}"#, origin(13), 100);
        batch.push(event_line("d").as_bytes(), origin(14), 100);
        assert_eq!(batch.len(), 4);
        let Decoded { events, bad } = decode(&batch);
        let ids: Vec<(&str, Option<u64>)> = events.iter().map(|(e, o)| (e.id(), o.line)).collect();
        assert_eq!(ids, [("a", Some(10)), ("d", Some(14))]);
        let bad_lines: Vec<Option<u64>> = bad.iter().map(|(o, _)| o.line).collect();
        assert_eq!(bad_lines, [Some(11), Some(13)]);
        assert!(
            bad[0].1.starts_with("invalid JSON at column"),
            "the batch-relative line number is removed: {}",
            bad[0].1
        );
        assert!(bad[1].1.contains("type"), "{}", bad[1].1);
    }

    #[test]
    fn a_batch_of_only_bad_lines_decodes_to_nothing() {
        let mut batch = LineBatch::default();
        batch.push(b"[1,2]", origin(1), 100);
        batch.push(b"nope", origin(2), 100);
        let Decoded { events, bad } = decode(&batch);
        assert!(events.is_empty());
        assert_eq!(bad.len(), 2);
    }

    #[test]
    fn a_batch_is_full_at_its_event_count_or_its_byte_bound() {
        let mut batch = LineBatch::default();
        assert!(batch.push(b"{}", origin(1), 2));
        assert!(!batch.push(b"{}", origin(2), 2));
        batch.clear();
        let big = vec![b'x'; BATCH_BYTES_MAX];
        assert!(
            !batch.push(&big, origin(1), 1000),
            "one line over the byte bound fills it"
        );
        assert_eq!(batch.len(), 1);
    }
}
