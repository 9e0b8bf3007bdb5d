//! `type = "nats"`: CloudEvents from NATS, as a JetStream durable consumer (at-least-once) or a
//! core subscription (at-most-once).
//!
//! Decoding: each message's payload is decoded like an HTTP ingest body whose content type is
//! the message's `content-type` header (default `application/json`: one structured-mode event,
//! or an array of them) and whose headers are the message's, so binary mode (`ce-*` headers,
//! payload = `data`), `application/cloudevents-batch+json` and NDJSON work too. A message is
//! all or nothing, like a request.
//!
//! JetStream (layout and invariants):
//! - Setup (retried with backoff up to [`SETUP_BACKOFF_MAX`] while it fails): get the stream,
//!   or create it with `subjects` (file storage, the server's defaults otherwise) when
//!   `create_stream`; then create or update the durable pull consumer `consumer` (explicit acks,
//!   `ack_wait`, at most 3 × `batch_events` unacknowledged messages, filtered on `subjects`
//!   unless they are the stream's own). If the server refuses to update an existing consumer,
//!   it is used with its own settings and a warning says so.
//! - Consume: a pull stream of `batch_events` messages per request (one request in flight ahead
//!   of the batch being stored, so the next batch is already here when the store returns). A
//!   batch is the first message plus whatever else has already arrived, up to `batch_events`
//!   (no waiting to fill it: under load batches fill by themselves, idle a message goes at
//!   once), stored with one call.
//! - Ack after durable: a message is acknowledged (`+ACK`) only after the store that holds its
//!   events returned Ok, so every acknowledged message is as durable as its queue promises.
//!   While a full queue makes the store wait, nothing is acknowledged: NATS keeps the backlog,
//!   and every `ack_wait / 2` the held messages are marked in progress (`+WPI`) so they are not
//!   redelivered meanwhile.
//! - Not a CloudEvent, or an event type no queue takes: counted
//!   (`veltrix_events_rejected_total{reason="invalid-event"|"unroutable-events"}`), logged at most
//!   once a second, and terminated (`+TERM`): NATS never redelivers it, so it cannot block the
//!   consumer, and it stays in the stream (per the stream's retention) for inspection; the
//!   server publishes a `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED` advisory for it. An event
//!   larger than its queue's record limit is terminated the same way (`event-too-large`).
//! - Storage failure (disk): the batch is negatively acknowledged with a 5 s delay (redelivered
//!   then). Shutdown while a store waits: the held messages are negatively acknowledged at once
//!   (the next consumer gets them without waiting `ack_wait`); a store in progress completes and
//!   is acknowledged first.
//! - Loss window: none. Duplicates: a crash after a store and before its acks reach NATS
//!   redelivers that batch (with the same ids); so does a store that outlasts `ack_wait` despite
//!   the in-progress marks, for the prefetched messages.
//! - Bounds: at most 3 × `batch_events` unacknowledged messages (`max_ack_pending`); the
//!   client's buffer for the pull subscription holds at most 4 × `batch_events` + 64 messages.
//!
//! Core: a subscription per subject; batches of what has arrived (up to `batch_events`) are
//! stored as they come. At-most-once: messages published while the engine is down or
//! disconnected are never seen, and a message in hand when the engine crashes is lost. The
//! client buffers at most max(8 × `batch_events`, 1024) messages per subscription while a store
//! waits (a full queue); beyond that it drops them, counted as `reason="slow-consumer"`.

use std::ops::Range;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind, stream};
use futures_util::{FutureExt, StreamExt};
use veltrix_core::config::{JetStreamConsumer, NatsSourceConfig, NatsSourceMode};
use veltrix_core::event::{self, Event, Headers};

use super::SourceContext;
use crate::ingest::{Accepted, StoreError};
use crate::nats_client::{self, Every, Owner};

/// A pull request waits this long on the server for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The server sends a heartbeat this often on an idle pull request; two missed in a row are
/// reported (the client reconnects and re-pulls by itself).
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
const SETUP_BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const SETUP_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// When a batch could not be stored for a storage failure, NATS redelivers it after this.
const STORAGE_FAILED_REDELIVERY: Duration = Duration::from_secs(5);
/// Longest wait at shutdown for the last acks to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// A repeated per-message problem is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(1);
/// A repeated setup failure is logged at most this often.
const SETUP_WARN_EVERY: Duration = Duration::from_secs(60);

/// The source in a few words (stats, `veltrix top`, the dashboard).
pub(crate) fn describe(config: &NatsSourceConfig) -> String {
    match &config.mode {
        NatsSourceMode::JetStream(js) => format!("nats stream {} ({})", js.stream, config.url),
        NatsSourceMode::Core => format!("nats {} ({})", config.subjects.join(", "), config.url),
    }
}

/// Runs until the engine stops.
pub(crate) async fn run(config: NatsSourceConfig, mut ctx: SourceContext) {
    let owner = Owner::new("source", &ctx.name);
    let batch = usize::try_from(config.batch_events).unwrap_or(usize::MAX);
    let capacity = match config.mode {
        NatsSourceMode::JetStream(_) => batch * 4 + 64,
        NatsSourceMode::Core => (batch * 8).max(1024),
    };
    let Some(client) =
        nats_client::connect_until_stopped(&config.url, &owner, capacity, &mut ctx.stop).await
    else {
        return;
    };
    let mut source = Source {
        ctx,
        batch,
        warn: Every::new(WARN_EVERY),
        redelivered: metrics::counter!("veltrix_source_redeliveries_total", "source" => owner.name.clone()),
    };
    match &config.mode {
        NatsSourceMode::JetStream(js) => source.jetstream(&client, &config, js).await,
        NatsSourceMode::Core => source.core(&client, &config).await,
    }
    // Acks are sent asynchronously: push the last ones out before the connection closes.
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(source = %source.ctx.name, error = %e, "flushing the last NATS acks failed; those messages will be redelivered")
        }
        Err(_) => {
            tracing::warn!(source = %source.ctx.name, "flushing the last NATS acks timed out; those messages will be redelivered")
        }
    }
    owner.connected.set(0.0);
}

/// How a consume loop ended.
enum Ended {
    Stopped,
    /// The consumer must be set up again (deleted, or the pull stream ended).
    Broken(String),
}

/// Messages taken together: their events in one slice, each message with its events' range.
/// `reply` is the JetStream message to acknowledge (core messages need no answer).
#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    messages: Vec<(Range<usize>, Option<jetstream::Message>)>,
}

struct Source {
    ctx: SourceContext,
    batch: usize,
    warn: Every,
    redelivered: metrics::Counter,
}

impl Source {
    async fn jetstream(
        &mut self,
        client: &async_nats::Client,
        config: &NatsSourceConfig,
        js: &JetStreamConsumer,
    ) {
        let context = jetstream::new(client.clone());
        let setup_warn = Every::new(SETUP_WARN_EVERY);
        let mut backoff = SETUP_BACKOFF_INITIAL;
        loop {
            let setup = tokio::select! {
                setup = setup(&context, &self.ctx.name, config, js, self.batch) => setup,
                _ = self.ctx.stop.wait_for(|s| *s) => return,
            };
            let problem = match setup {
                Ok(consumer) => {
                    backoff = SETUP_BACKOFF_INITIAL;
                    tracing::info!(source = %self.ctx.name, stream = %js.stream, consumer = %js.consumer, "consuming the JetStream stream");
                    match self.consume(&consumer, js.ack_wait).await {
                        Ended::Stopped => return,
                        Ended::Broken(why) => why,
                    }
                }
                Err(why) => why,
            };
            if setup_warn.ready() {
                tracing::warn!(source = %self.ctx.name, stream = %js.stream, consumer = %js.consumer, error = %problem, retry_in = ?backoff, "the JetStream consumer is not available; retrying (repeats are logged once a minute)");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.ctx.stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(SETUP_BACKOFF_MAX);
        }
    }

    async fn consume(&mut self, consumer: &PullConsumer, ack_wait: Duration) -> Ended {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) => return Ended::Broken(format!("cannot pull messages: {e}")),
        };
        loop {
            let first = tokio::select! {
                biased;
                _ = self.ctx.stop.wait_for(|s| *s) => return Ended::Stopped,
                next = messages.next() => next,
            };
            let mut taken = Vec::with_capacity(self.batch);
            let mut problem = None;
            match first {
                None => return Ended::Broken("the pull stream ended".to_owned()),
                Some(Ok(message)) => taken.push(message),
                Some(Err(e)) => problem = Some(e),
            }
            while problem.is_none() && !taken.is_empty() && taken.len() < self.batch {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => taken.push(message),
                    Some(Some(Err(e))) => problem = Some(e),
                    Some(None) | None => break,
                }
            }
            if !taken.is_empty() {
                let batch = self.decode_jetstream(taken).await;
                if let Err(Stopped) = self.deliver(batch, Some(ack_wait)).await {
                    return Ended::Stopped;
                }
            }
            if let Some(e) = problem {
                match e.kind() {
                    // Transient: the client reconnects and pulls again by itself.
                    MessagesErrorKind::MissingHeartbeat | MessagesErrorKind::Pull => {
                        if self.warn.ready() {
                            tracing::warn!(source = %self.ctx.name, error = %e, "pulling from JetStream: no answer yet (more in the next second are not logged)");
                        }
                    }
                    _ => return Ended::Broken(format!("pulling messages: {e}")),
                }
            }
        }
    }

    /// Decodes each message; those that cannot be stored are terminated and counted.
    async fn decode_jetstream(&mut self, messages: Vec<jetstream::Message>) -> Batch {
        let mut batch = Batch::default();
        for message in messages {
            if message.info().is_ok_and(|info| info.delivered > 1) {
                self.redelivered.increment(1);
            }
            match self.decode(&message) {
                Ok(events) => batch.push(events, Some(message)),
                Err(reason) => {
                    if let Err(e) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(source = %self.ctx.name, error = %e, reason, "could not terminate a rejected message; NATS will redeliver it");
                    }
                }
            }
        }
        batch
    }

    async fn core(&mut self, client: &async_nats::Client, config: &NatsSourceConfig) {
        let mut subscriptions = Vec::new();
        for subject in &config.subjects {
            match client.subscribe(subject.clone()).await {
                Ok(subscription) => subscriptions.push(subscription),
                Err(e) => {
                    // Only a closed client fails here: nothing to retry on.
                    tracing::error!(source = %self.ctx.name, subject, error = %e, "cannot subscribe; the source stops");
                    return;
                }
            }
        }
        tracing::info!(source = %self.ctx.name, subjects = %config.subjects.join(", "), "subscribed to NATS (core: at-most-once)");
        let mut messages = futures_util::stream::select_all(subscriptions);
        loop {
            let first = tokio::select! {
                biased;
                _ = self.ctx.stop.wait_for(|s| *s) => return,
                next = messages.next() => next,
            };
            let Some(first) = first else {
                return; // the client closed
            };
            let mut batch = Batch::default();
            let mut next = Some(first);
            while let Some(message) = next {
                if let Ok(events) = self.decode(&message) {
                    batch.push(events, None);
                }
                next = if batch.messages.len() < self.batch {
                    messages.next().now_or_never().flatten()
                } else {
                    None
                };
            }
            if let Err(Stopped) = self.deliver(batch, None).await {
                return;
            }
        }
    }

    /// The events of one message, all or nothing; `Err` is the reason it was rejected
    /// (counted and logged here).
    fn decode(&mut self, message: &async_nats::Message) -> Result<Vec<Event>, &'static str> {
        let headers = MessageHeaders(message.headers.as_ref());
        let content_type =
            header(message.headers.as_ref(), "content-type").unwrap_or("application/json");
        let (reason, detail) = match event::decode_body(content_type, &headers, &message.payload) {
            Ok(events) => match events.iter().find(|e| !self.ctx.routes(e.ty())) {
                None => return Ok(events),
                Some(e) => (
                    "unroutable-events",
                    format!("no queue takes event type `{}`", e.ty()),
                ),
            },
            Err(e) => ("invalid-event", e.to_string()),
        };
        self.ctx.reject(reason, 1);
        if self.warn.ready() {
            tracing::warn!(source = %self.ctx.name, subject = %message.subject, reason, detail, "rejected a NATS message (more in the next second are counted, not logged)");
        }
        Err(reason)
    }

    /// Stores the batch and acknowledges its messages; `ack_wait` is set for JetStream.
    async fn deliver(&mut self, batch: Batch, ack_wait: Option<Duration>) -> Result<(), Stopped> {
        if batch.messages.is_empty() {
            return Ok(());
        }
        let all: Vec<&jetstream::Message> = batch.replies().collect();
        match self.store_holding(&batch.events, &all, ack_wait).await {
            Ok(_) => {
                answer_all(&all, AckKind::Ack).await;
                Ok(())
            }
            Err(StoreError::Closed | StoreError::Full { .. }) => {
                answer_all(&all, AckKind::Nak(None)).await;
                Err(Stopped)
            }
            Err(StoreError::Failed { .. }) => {
                self.storage_failed(&all, batch.events.len()).await;
                Ok(())
            }
            // Which message is at fault? Store them one at a time (rare: routing changed since
            // the check, or an event beyond its queue's record limit).
            Err(StoreError::Unroutable(_) | StoreError::TooLarge { .. }) => {
                for (i, (range, reply)) in batch.messages.iter().enumerate() {
                    let one: Vec<&jetstream::Message> = reply.iter().collect();
                    match self
                        .store_holding(&batch.events[range.clone()], &one, ack_wait)
                        .await
                    {
                        Ok(_) => answer_all(&one, AckKind::Ack).await,
                        Err(StoreError::Closed | StoreError::Full { .. }) => {
                            let rest: Vec<&jetstream::Message> = batch.messages[i..]
                                .iter()
                                .filter_map(|(_, r)| r.as_ref())
                                .collect();
                            answer_all(&rest, AckKind::Nak(None)).await;
                            return Err(Stopped);
                        }
                        Err(StoreError::Failed { .. }) => {
                            self.storage_failed(&one, range.len()).await;
                        }
                        Err(e) => {
                            let reason = match e {
                                StoreError::Unroutable(_) => "unroutable-events",
                                _ => "event-too-large",
                            };
                            self.ctx.reject(reason, 1);
                            if self.warn.ready() {
                                tracing::warn!(source = %self.ctx.name, reason, error = %e, "rejected a NATS message (more in the next second are counted, not logged)");
                            }
                            answer_all(&one, AckKind::Term).await;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn storage_failed(&mut self, replies: &[&jetstream::Message], events: usize) {
        if replies.is_empty() {
            self.ctx.reject("storage-failed", events as u64);
        }
        answer_all(replies, AckKind::Nak(Some(STORAGE_FAILED_REDELIVERY))).await;
        if self.warn.ready() {
            tracing::warn!(source = %self.ctx.name, events, "the queue could not store a batch (see the queue's error); NATS redelivers it in 5s");
        }
    }

    /// Stores `events`, marking `replies` in progress every `ack_wait / 2` while the store
    /// waits (a full queue), so NATS does not redeliver them meanwhile.
    async fn store_holding(
        &mut self,
        events: &[Event],
        replies: &[&jetstream::Message],
        ack_wait: Option<Duration>,
    ) -> Result<Accepted, StoreError> {
        let store = self.ctx.store_waiting(events);
        let Some(ack_wait) = ack_wait.filter(|_| !replies.is_empty()) else {
            return store.await;
        };
        tokio::pin!(store);
        let every = ack_wait / 2;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                result = &mut store => return result,
                _ = tick.tick() => answer_all(replies, AckKind::Progress).await,
            }
        }
    }
}

/// The engine is stopping.
struct Stopped;

impl Batch {
    fn push(&mut self, events: Vec<Event>, reply: Option<jetstream::Message>) {
        let start = self.events.len();
        self.events.extend(events);
        self.messages.push((start..self.events.len(), reply));
    }

    fn replies(&self) -> impl Iterator<Item = &jetstream::Message> {
        self.messages.iter().filter_map(|(_, r)| r.as_ref())
    }
}

/// Sends `kind` for every message. A failure means the connection is gone: NATS redelivers
/// whatever it did not hear about, which at-least-once allows.
async fn answer_all(replies: &[&jetstream::Message], kind: AckKind) {
    for reply in replies {
        if let Err(e) = reply.ack_with(kind).await {
            tracing::debug!(error = %e, "a NATS ack was not sent");
            return;
        }
    }
}

/// A message's headers as the CloudEvents decoder reads them.
struct MessageHeaders<'a>(Option<&'a async_nats::HeaderMap>);

impl Headers for MessageHeaders<'_> {
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &str)) {
        for (name, values) in self.0.into_iter().flat_map(|h| h.iter()) {
            for value in values {
                f(name.as_ref(), value.as_str());
            }
        }
    }
}

/// The first value of header `name` (case-insensitive).
fn header<'h>(headers: Option<&'h async_nats::HeaderMap>, name: &str) -> Option<&'h str> {
    headers?
        .iter()
        .find(|(n, _)| AsRef::<str>::as_ref(*n).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
}

/// What the consumer filters on, given the configured subjects and the stream's.
#[derive(Debug, PartialEq, Eq)]
enum Filter {
    /// The whole stream.
    None,
    One(String),
    /// Several subjects (NATS 2.10+).
    Many(Vec<String>),
}

fn filter_for(subjects: &[String], stream_subjects: &[String]) -> Filter {
    let mut wanted: Vec<&String> = subjects.iter().collect();
    let mut all: Vec<&String> = stream_subjects.iter().collect();
    wanted.sort();
    wanted.dedup();
    all.sort();
    all.dedup();
    match wanted.as_slice() {
        [] => Filter::None,
        _ if wanted == all => Filter::None,
        [one] => Filter::One((*one).clone()),
        many => Filter::Many(many.iter().map(|s| (*s).clone()).collect()),
    }
}

/// Gets (or creates) the stream and creates or updates the durable consumer.
async fn setup(
    context: &jetstream::Context,
    source: &str,
    config: &NatsSourceConfig,
    js: &JetStreamConsumer,
    batch: usize,
) -> Result<PullConsumer, String> {
    let stream = if js.create_stream {
        context
            .get_or_create_stream(stream::Config {
                name: js.stream.clone(),
                subjects: config.subjects.clone(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot get or create stream `{}`: {e}", js.stream))?
    } else {
        context
            .get_stream(&js.stream)
            .await
            .map_err(|e| format!("cannot get stream `{}`: {e}", js.stream))?
    };
    let mut wanted = pull::Config {
        durable_name: Some(js.consumer.clone()),
        description: Some(format!("veltrix source `{source}`")),
        ack_policy: AckPolicy::Explicit,
        ack_wait: js.ack_wait,
        max_ack_pending: i64::try_from(batch.saturating_mul(3)).unwrap_or(i64::MAX),
        ..Default::default()
    };
    match filter_for(&config.subjects, &stream.cached_info().config.subjects) {
        Filter::None => {}
        Filter::One(subject) => wanted.filter_subject = subject,
        Filter::Many(subjects) => wanted.filter_subjects = subjects,
    }
    match stream.create_consumer(wanted.clone()).await {
        Ok(consumer) => Ok(consumer),
        Err(update) => {
            // The server refuses to change some settings of an existing consumer: use it as
            // it is, and say what differs from the config.
            let consumer = stream
                .get_consumer::<pull::Config>(&js.consumer)
                .await
                .map_err(|e| {
                    format!(
                        "cannot create consumer `{}` ({update}), nor get it: {e}",
                        js.consumer
                    )
                })?;
            let have = &consumer.cached_info().config;
            tracing::warn!(
                source,
                consumer = %js.consumer,
                error = %update,
                have_filter = ?(&have.filter_subject, &have.filter_subjects),
                want_filter = ?(&wanted.filter_subject, &wanted.filter_subjects),
                have_ack_wait = ?have.ack_wait,
                want_ack_wait = ?wanted.ack_wait,
                "the existing JetStream consumer keeps its own settings; delete it to apply the config's"
            );
            Ok(consumer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_filter_is_left_out_when_it_is_the_whole_stream() {
        let stream = strings(&["orders.>", "payments.>"]);
        assert_eq!(filter_for(&[], &stream), Filter::None);
        assert_eq!(
            filter_for(&strings(&["payments.>", "orders.>"]), &stream),
            Filter::None
        );
        assert_eq!(
            filter_for(&strings(&["orders.>"]), &stream),
            Filter::One("orders.>".to_owned())
        );
        assert_eq!(
            filter_for(&strings(&["orders.a", "orders.b"]), &stream),
            Filter::Many(strings(&["orders.a", "orders.b"]))
        );
    }

    #[test]
    fn headers_are_read_case_insensitively() {
        let mut map = async_nats::HeaderMap::new();
        map.insert("Content-Type", "application/cloudevents+json");
        map.insert("ce-id", "1");
        assert_eq!(
            header(Some(&map), "content-type"),
            Some("application/cloudevents+json")
        );
        assert_eq!(header(Some(&map), "nope"), None);
        assert_eq!(header(None, "content-type"), None);
        let mut seen = Vec::new();
        MessageHeaders(Some(&map)).for_each_header(&mut |n, v| seen.push(format!("{n}={v}")));
        seen.sort();
        assert_eq!(
            seen,
            ["Content-Type=application/cloudevents+json", "ce-id=1"]
        );
    }
}
