//! What the engine stores in a queue record: `[accepted_at: u64 LE, µs since the Unix epoch]`
//! followed by the compact structured-mode CloudEvent JSON (or, in a dead-letter queue, the
//! dead-letter entry JSON). The timestamp is when ingest accepted the event; it drives the
//! starvation bound and end-to-end latency.

use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX_BYTES: usize = 8;

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Starts a record accepted at `accepted_micros`; the caller appends the JSON body to `out`.
pub fn begin(out: &mut Vec<u8>, accepted_micros: u64) {
    out.extend_from_slice(&accepted_micros.to_le_bytes());
}

/// The accepted-at time and the JSON body of a stored record. A record too short to hold the
/// prefix (never written by this engine) reads as accepted at 0 with an empty body.
pub fn split(stored: &[u8]) -> (u64, &[u8]) {
    match stored.split_first_chunk::<PREFIX_BYTES>() {
        Some((prefix, body)) => (u64::from_le_bytes(*prefix), body),
        None => (0, &[]),
    }
}

/// Seconds elapsed since `accepted_micros` (0 if the clock went backwards).
pub fn age_seconds(accepted_micros: u64) -> f64 {
    now_micros().saturating_sub(accepted_micros) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_its_time_and_body() {
        let mut out = Vec::new();
        begin(&mut out, 1_700_000_000_123_456);
        out.extend_from_slice(b"{\"id\":\"1\"}");
        assert_eq!(split(&out), (1_700_000_000_123_456, &b"{\"id\":\"1\"}"[..]));
        assert_eq!(split(b"short"), (0, &b""[..]));
    }
}
