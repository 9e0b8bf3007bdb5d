//! Connections to NATS, shared by the nats source and sink: one `async_nats::Client` per source
//! or sink, with a `connected` gauge that follows the connection's state.
//!
//! Connecting: [`connect_once`] tries once (the sink connects on its first write and lets the
//! pipeline's retries pace it); [`connect_until_stopped`] retries with backoff (100 ms doubling
//! to [`CONNECT_BACKOFF_MAX`]) until it connects or the engine stops, logging the first failure
//! and then at most one a minute, so an engine started while NATS is down starts anyway and
//! picks NATS up when it comes. Once connected, the client reconnects by itself after a loss
//! (forever, with its own backoff up to 4 s); the gauge drops to 0 meanwhile and every
//! disconnection and reconnection is logged.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::watch;

/// The longest wait between two connection attempts of a source.
pub(crate) const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// How long one connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A repeated connection failure is logged at most this often.
const CONNECT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Who a client belongs to, for logs, metrics and the server's connection list.
#[derive(Clone)]
pub(crate) struct Owner {
    /// `source` or `sink`.
    pub(crate) role: &'static str,
    pub(crate) name: String,
    /// 1 while connected (`veltrix_source_connected` / `veltrix_sink_connected`).
    pub(crate) connected: metrics::Gauge,
}

impl Owner {
    pub(crate) fn new(role: &'static str, name: &str) -> Owner {
        let connected = match role {
            "source" => metrics::gauge!("veltrix_source_connected", "source" => name.to_owned()),
            _ => metrics::gauge!("veltrix_sink_connected", "sink" => name.to_owned()),
        };
        connected.set(0.0);
        Owner {
            role,
            name: name.to_owned(),
            connected,
        }
    }
}

/// One connection attempt to the servers of `url` (comma-separated); `capacity` bounds each
/// subscription's buffer of undelivered messages.
pub(crate) async fn connect_once(
    url: &str,
    owner: &Owner,
    capacity: usize,
) -> Result<Client, async_nats::ConnectError> {
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    let events_owner = owner.clone();
    let client = ConnectOptions::new()
        .name(format!("veltrix {} {}", owner.role, owner.name))
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None)
        .subscription_capacity(capacity)
        .event_callback(move |event| {
            let owner = events_owner.clone();
            async move { on_event(&owner, event) }
        })
        .connect(servers)
        .await?;
    owner.connected.set(1.0);
    Ok(client)
}

/// Connects, retrying with backoff, until it succeeds (`Some`) or `stop` turns true (`None`).
pub(crate) async fn connect_until_stopped(
    url: &str,
    owner: &Owner,
    capacity: usize,
    stop: &mut watch::Receiver<bool>,
) -> Option<Client> {
    let mut backoff = CONNECT_BACKOFF_INITIAL;
    let log = Every::new(CONNECT_LOG_EVERY);
    let mut failures = 0u64;
    loop {
        if *stop.borrow() {
            return None;
        }
        let attempt = tokio::select! {
            attempt = connect_once(url, owner, capacity) => attempt,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match attempt {
            Ok(client) => {
                if failures > 0 {
                    tracing::info!(role = owner.role, name = %owner.name, url, failures, "NATS is reachable after failed attempts");
                }
                return Some(client);
            }
            Err(e) => {
                failures += 1;
                if log.ready() {
                    tracing::warn!(role = owner.role, name = %owner.name, url, error = %e, failures, retry_in = ?backoff, "cannot connect to NATS; retrying (repeats are logged once a minute)");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
    }
}

fn on_event(owner: &Owner, event: Event) {
    match event {
        Event::Connected => {
            owner.connected.set(1.0);
            tracing::info!(role = owner.role, name = %owner.name, "connected to NATS");
        }
        Event::Disconnected => {
            owner.connected.set(0.0);
            tracing::warn!(role = owner.role, name = %owner.name, "lost the NATS connection; reconnecting");
        }
        Event::Closed => owner.connected.set(0.0),
        Event::SlowConsumer(_) => {
            // The subscription's buffer was full: the server's message was dropped by the
            // client (core: lost; JetStream: redelivered after `ack_wait`).
            if owner.role == "source" {
                metrics::counter!("veltrix_events_rejected_total", "source" => owner.name.clone(), "reason" => "slow-consumer")
                    .increment(1);
            }
        }
        Event::LameDuckMode | Event::Draining => {
            tracing::info!(role = owner.role, name = %owner.name, %event, "NATS server event");
        }
        Event::ServerError(e) => {
            tracing::warn!(role = owner.role, name = %owner.name, error = %e, "NATS server error");
        }
        Event::ClientError(e) => {
            tracing::warn!(role = owner.role, name = %owner.name, error = %e, "NATS client error");
        }
    }
}

/// At most one `true` per period: rate-limits a repeated log line.
pub(crate) struct Every {
    period: Duration,
    last: Mutex<Option<Instant>>,
}

impl Every {
    pub(crate) fn new(period: Duration) -> Every {
        Every {
            period,
            last: Mutex::new(None),
        }
    }

    /// Whether the period has passed since the last `true` (always the first time).
    pub(crate) fn ready(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= self.period) {
            *last = Some(Instant::now());
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lets_one_through_per_period() {
        let every = Every::new(Duration::from_secs(3600));
        assert!(every.ready());
        assert!(!every.ready());
        let every = Every::new(Duration::ZERO);
        assert!(every.ready());
        assert!(every.ready());
    }
}
