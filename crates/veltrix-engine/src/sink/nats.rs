//! `type = "nats"`: publishes each event of a batch to NATS as its compact structured-mode JSON
//! (`content-type: application/cloudevents+json`), on the subject its `subject` template gives.
//!
//! - JetStream (`jetstream = true`, the default): each message carries `Nats-Msg-Id` (the
//!   `msg_id` template, by default `<source>/<id>`), the batch's messages are published
//!   concurrently and the batch is confirmed only once every one has its PubAck, i.e. is stored
//!   in a stream. A redelivered batch (after a retry or a crash) is deduplicated by the stream
//!   within its duplicate window (2 minutes by default); the PubAcks that say "duplicate" are
//!   counted in `veltrix_sink_duplicates_total`. No stream for a subject is a permanent failure
//!   (the batch is dead-lettered with that reason); timeouts, a lost connection and any other
//!   refusal are retryable.
//! - Core (`jetstream = false`): publish + flush. Confirmed once the messages are written to the
//!   server's socket: nothing says a subscriber got them (at-most-once past the server).
//! - Bounds: at most [`IN_FLIGHT_MAX`] messages await their PubAck at once across the sink's
//!   workers (publishing waits for room); a rendered subject is at most [`SUBJECT_BYTES_MAX`]
//!   bytes (a longer one fails its batch for good).
//! - Connection: made on the first write (a failure is retryable, so the pipeline's backoff
//!   paces the attempts), then kept and re-established by the client after a loss;
//!   `veltrix_sink_connected` follows it.

use std::borrow::Cow;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::sync::OnceCell;
use veltrix_core::config::{Field, NatsSinkConfig, Template};

use crate::handler::{Batch, Sink, SinkError};
use crate::nats_client::{self, Owner};

/// Messages of one sink awaiting their PubAck at once.
pub(crate) const IN_FLIGHT_MAX: usize = 256;
/// The longest subject published to (the server's protocol line is 4 KiB with the headers).
pub(crate) const SUBJECT_BYTES_MAX: usize = 1024;
/// The sink subscribes only to its PubAck inboxes.
const SUBSCRIPTION_CAPACITY: usize = 4096;

struct Connection {
    client: Client,
    jetstream: jetstream::Context,
}

pub(crate) struct NatsSink {
    config: NatsSinkConfig,
    owner: Owner,
    connection: OnceCell<Connection>,
    duplicates: metrics::Counter,
}

/// The attributes a template may name, read from a stored event's JSON.
#[derive(Deserialize)]
struct Attributes<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
}

impl Attributes<'_> {
    fn get(&self, field: Field) -> Option<&str> {
        match field {
            Field::Type => Some(&self.ty),
            Field::Source => Some(&self.source),
            Field::Id => Some(&self.id),
            Field::Subject => self.subject.as_deref(),
        }
    }
}

/// One message to publish.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

impl NatsSink {
    /// Connects on the first write.
    pub(crate) fn new(name: &str, config: &NatsSinkConfig) -> NatsSink {
        NatsSink {
            config: config.clone(),
            owner: Owner::new("sink", name),
            connection: OnceCell::new(),
            duplicates: metrics::counter!("veltrix_sink_duplicates_total", "sink" => name.to_owned()),
        }
    }

    async fn connection(&self) -> Result<&Connection, SinkError> {
        self.connection
            .get_or_try_init(|| async {
                let client =
                    nats_client::connect_once(&self.config.url, &self.owner, SUBSCRIPTION_CAPACITY)
                        .await
                        .map_err(|e| {
                            SinkError::retryable(format!(
                                "cannot connect to NATS at {}: {e}",
                                self.config.url
                            ))
                        })?;
                let jetstream = jetstream::ContextBuilder::new()
                    .timeout(self.config.timeout)
                    .ack_timeout(self.config.timeout)
                    .max_ack_inflight(IN_FLIGHT_MAX)
                    .backpressure_on_inflight(true)
                    .build(client.clone());
                Ok(Connection { client, jetstream })
            })
            .await
    }

    async fn publish(&self, batch: &Batch) -> Result<(), SinkError> {
        let outgoing = messages(&self.config, batch)?;
        let connection = self.connection().await?;
        if !self.config.jetstream {
            for m in outgoing {
                connection
                    .client
                    .publish_with_headers(m.subject, m.headers, m.payload)
                    .await
                    .map_err(|e| SinkError::retryable(format!("publishing to NATS: {e}")))?;
            }
            return match tokio::time::timeout(self.config.timeout, connection.client.flush()).await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SinkError::retryable(format!("flushing to NATS: {e}"))),
                Err(_) => Err(SinkError::retryable(format!(
                    "flushing to NATS took longer than {:?}",
                    self.config.timeout
                ))),
            };
        }
        let jetstream = &connection.jetstream;
        let duplicates = futures_util::stream::iter(outgoing)
            .map(|m| async move {
                let subject = m.subject.clone();
                let ack = jetstream
                    .publish_with_headers(m.subject, m.headers, m.payload)
                    .await
                    .map_err(|e| publish_error(&subject, e))?
                    .await
                    .map_err(|e| publish_error(&subject, e))?;
                Ok::<u64, SinkError>(u64::from(ack.duplicate))
            })
            .buffer_unordered(IN_FLIGHT_MAX)
            .try_fold(0u64, |sum, duplicate| async move { Ok(sum + duplicate) })
            .await?;
        self.duplicates.increment(duplicates);
        Ok(())
    }
}

impl Sink for NatsSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.publish(batch))
    }

    fn describe(&self) -> String {
        format!(
            "nats {} ({})",
            self.config.subject.as_str(),
            self.config.url
        )
    }
}

fn publish_error(subject: &str, e: jetstream::context::PublishError) -> SinkError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => SinkError::permanent(format!(
            "no JetStream stream takes subject `{subject}`: create a stream whose subjects \
             include it, or set `jetstream = false` for a core publish"
        )),
        PublishErrorKind::MaxPayloadExceeded => SinkError::permanent(format!(
            "an event for `{subject}` is larger than the NATS server's max_payload: {e}"
        )),
        _ => SinkError::retryable(format!("publishing to `{subject}`: {e}")),
    }
}

/// The batch's messages: subject, headers and payload (each event's line, shared with the batch).
fn messages(config: &NatsSinkConfig, batch: &Batch) -> Result<Vec<Outgoing>, SinkError> {
    let mut out = Vec::with_capacity(batch.len());
    for line in batch.lines() {
        let attributes: Attributes<'_> = serde_json::from_slice(line).map_err(|e| {
            SinkError::permanent(format!("a batch line is not a stored CloudEvent: {e}"))
        })?;
        let subject = subject(&config.subject, &attributes);
        if subject.len() > SUBJECT_BYTES_MAX {
            return Err(SinkError::permanent(format!(
                "event `{}` renders a subject of {} bytes, above the {SUBJECT_BYTES_MAX}-byte limit",
                attributes.id,
                subject.len()
            )));
        }
        let mut msg_id = String::new();
        config.msg_id.render(
            |f| attributes.get(f),
            |value, out| out.extend(value.chars().map(|c| if c.is_control() { '_' } else { c })),
            &mut msg_id,
        );
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/cloudevents+json");
        if !msg_id.is_empty() {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        }
        out.push(Outgoing {
            subject,
            headers,
            payload: batch.ndjson().slice_ref(line),
        });
    }
    Ok(out)
}

/// Renders a publish subject: in values, characters a subject token cannot hold (spaces,
/// control characters, the wildcards `*` and `>`) become `_`, and an empty token (a missing
/// attribute, or `..` in a value) becomes `_`. The template's own text was checked at load.
fn subject(template: &Template, attributes: &Attributes<'_>) -> String {
    let mut subject = String::new();
    template.render(
        |f| attributes.get(f),
        |value, out| {
            out.extend(value.chars().map(|c| {
                if c.is_whitespace() || c.is_control() || c == '*' || c == '>' {
                    '_'
                } else {
                    c
                }
            }))
        },
        &mut subject,
    );
    if subject.split('.').any(str::is_empty) {
        subject = subject
            .split('.')
            .map(|token| if token.is_empty() { "_" } else { token })
            .collect::<Vec<_>>()
            .join(".");
    }
    subject
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(subject: &str, jetstream: bool) -> NatsSinkConfig {
        NatsSinkConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            subject: Template::parse(subject).unwrap(),
            jetstream,
            msg_id: Template::parse("{{ .source }}/{{ .id }}").unwrap(),
            timeout: Duration::from_secs(1),
        }
    }

    fn batch(lines: &[&str]) -> Batch {
        let mut ndjson = String::new();
        for line in lines {
            ndjson.push_str(line);
            ndjson.push('\n');
        }
        Batch::new(Bytes::from(ndjson), lines.len())
    }

    fn render(template: &str, event: &str) -> String {
        let attributes: Attributes<'_> = serde_json::from_str(event).unwrap();
        subject(&Template::parse(template).unwrap(), &attributes)
    }

    #[test]
    fn subjects_are_rendered_from_the_event() {
        let e = r#"{"specversion":"1.0","id":"e-1","source":"/shop","type":"order.created","data":{"x":1}}"#;
        assert_eq!(
            render("processed.{{ .type }}", e),
            "processed.order.created"
        );
        assert_eq!(render("out.fixed", e), "out.fixed");
        assert_eq!(render("{{ .source }}.{{ .id }}", e), "/shop.e-1");
    }

    #[test]
    fn values_that_would_break_a_subject_are_made_safe() {
        let e = r#"{"id":"a b","source":"/s","type":"x.*.>\ty","subject":"..z"}"#;
        assert_eq!(render("t.{{ .type }}", e), "t.x._.__y");
        assert_eq!(render("i.{{ .id }}", e), "i.a_b");
        assert_eq!(render("s.{{ .subject }}", e), "s._._.z");
        // A missing attribute leaves an empty token: `_`.
        let e = r#"{"id":"1","source":"/s","type":"t"}"#;
        assert_eq!(render("s.{{ .subject }}.end", e), "s._.end");
        assert_eq!(render("{{ .subject }}", e), "_");
        for s in [render("t.{{ .type }}", e), render("{{ .subject }}", e)] {
            assert_eq!(
                veltrix_core::config::nats_subject_problem(&s, false),
                None,
                "{s}"
            );
        }
    }

    #[test]
    fn each_event_becomes_one_message_with_its_id_and_content_type() {
        let lines = [
            r#"{"specversion":"1.0","id":"e-1","source":"/shop","type":"order.created"}"#,
            r#"{"specversion":"1.0","id":"e-2","source":"/shop","type":"order.paid","data":{"a":"\n"}}"#,
        ];
        let out = messages(&config("p.{{ .type }}", true), &batch(&lines)).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].subject, "p.order.created");
        assert_eq!(out[1].subject, "p.order.paid");
        assert_eq!(&out[1].payload[..], lines[1].as_bytes());
        assert_eq!(
            out[0].headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some("/shop/e-1")
        );
        assert_eq!(
            out[0].headers.get("content-type").map(|v| v.as_str()),
            Some("application/cloudevents+json")
        );
    }

    #[test]
    fn an_overlong_subject_fails_the_batch_for_good() {
        let id = "x".repeat(SUBJECT_BYTES_MAX);
        let line = format!(r#"{{"id":"{id}","source":"/s","type":"t"}}"#);
        let e = messages(&config("p.{{ .id }}", true), &batch(&[&line]))
            .err()
            .unwrap();
        assert_eq!(e.retry, crate::handler::Retry::Permanent);
        assert!(e.message.contains("1024-byte limit"), "{}", e.message);
    }
}
