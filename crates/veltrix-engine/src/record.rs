//! What the engine stores in a queue record:
//!
//! ```text
//! [prefix: u64 LE][JSON body][member index: 0..=2047 bytes]
//! prefix bits 0..=51: accepted_at, µs since the Unix epoch (enough until the year 2112)
//!        bits 52..=62: the member index's length in bytes (0: none)
//!        bit 63: 0
//! ```
//!
//! The body is the compact structured-mode CloudEvent JSON (or, in a dead-letter queue, the
//! dead-letter entry JSON). The timestamp is when ingest accepted the event; it drives the
//! starvation bound and end-to-end latency. The member index ([`veltrix_core::member_index`]) says
//! where the body's top-level members are, so a worker reads an event without scanning for
//! them; ingest writes it ([`write_event`]), other writers leave it out. Records written before
//! the index existed have the top bits clear, so they read as records without one.
//!
//! [`split`] and [`parts`] are the only readers of this layout.

use std::time::{SystemTime, UNIX_EPOCH};

use veltrix_core::event::EventRef;
use veltrix_core::member_index;

const PREFIX_BYTES: usize = 8;
const ACCEPTED_BITS: u32 = 52;
const ACCEPTED_MASK: u64 = (1 << ACCEPTED_BITS) - 1;
const INDEX_LEN_MASK: u64 = 0x7ff;

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Starts a record accepted at `accepted_micros`; the caller appends the JSON body to `out`.
pub fn begin(out: &mut Vec<u8>, accepted_micros: u64) {
    out.extend_from_slice(&(accepted_micros & ACCEPTED_MASK).to_le_bytes());
}

/// Appends the record of `event` accepted at `accepted_micros`, with its member index (`index`
/// is scratch space for it).
pub fn write_event(
    out: &mut Vec<u8>,
    accepted_micros: u64,
    event: &EventRef<'_>,
    index: &mut Vec<u8>,
) {
    let at = out.len();
    begin(out, accepted_micros);
    if let Some(index) = event.to_json_indexed(out, index) {
        debug_assert!(index.len() <= member_index::MAX_BYTES);
        out.extend_from_slice(index);
        let prefix = (accepted_micros & ACCEPTED_MASK) | ((index.len() as u64) << ACCEPTED_BITS);
        out[at..at + PREFIX_BYTES].copy_from_slice(&prefix.to_le_bytes());
    }
}

/// A stored record's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// When the record was accepted, µs since the Unix epoch.
    pub accepted_micros: u64,
    /// The JSON body.
    pub body: &'a [u8],
    /// The body's member index (empty: none).
    pub members: &'a [u8],
}

/// The parts of a stored record. A record too short to hold the prefix (never written by this
/// engine) reads as accepted at 0 with an empty body; one whose index length is longer than
/// what follows the prefix reads as all body.
pub fn parts(stored: &[u8]) -> Parts<'_> {
    let Some((prefix, rest)) = stored.split_first_chunk::<PREFIX_BYTES>() else {
        return Parts {
            accepted_micros: 0,
            body: &[],
            members: &[],
        };
    };
    let prefix = u64::from_le_bytes(*prefix);
    let index_len = ((prefix >> ACCEPTED_BITS) & INDEX_LEN_MASK) as usize;
    let (body, members) = rest.split_at(rest.len().checked_sub(index_len).unwrap_or(rest.len()));
    Parts {
        accepted_micros: prefix & ACCEPTED_MASK,
        body,
        members,
    }
}

/// The accepted-at time and the JSON body of a stored record (see [`parts`]).
pub fn split(stored: &[u8]) -> (u64, &[u8]) {
    let parts = parts(stored);
    (parts.accepted_micros, parts.body)
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
        assert!(parts(&out).members.is_empty());
        assert_eq!(split(b"short"), (0, &b""[..]));
    }

    #[test]
    fn an_event_record_carries_its_member_index_after_the_body() {
        let event = veltrix_core::event::Event::new(
            "/s",
            "t.a",
            serde_json::json!({"amount": 5, "note": "x"}),
        )
        .unwrap();
        let (mut out, mut index) = (b"before".to_vec(), Vec::new());
        write_event(
            &mut out,
            1_700_000_000_123_456,
            &(&event).into(),
            &mut index,
        );
        let parts = parts(&out[6..]);
        assert_eq!(parts.accepted_micros, 1_700_000_000_123_456);
        let mut body = Vec::new();
        event.to_json_bytes(&mut body);
        assert_eq!(parts.body, body);
        assert_eq!(parts.members, &index[..]);
        let members: Vec<_> = member_index::Entries::new(parts.members)
            .map(Result::unwrap)
            .collect();
        let names = [
            "specversion",
            "id",
            "source",
            "type",
            "datacontenttype",
            "data",
        ];
        assert_eq!(members.len(), names.len());
        for ((name_len, _), name) in members.iter().zip(names) {
            assert_eq!(*name_len, name.len());
        }
    }

    #[test]
    fn an_event_the_index_cannot_describe_is_stored_without_one() {
        let name = "e".repeat(256);
        let event = veltrix_core::event::Event::from_json(&serde_json::json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t", name: "long"
        }))
        .unwrap();
        let mut out = Vec::new();
        write_event(&mut out, 7, &(&event).into(), &mut Vec::new());
        let parts = parts(&out);
        let mut body = Vec::new();
        event.to_json_bytes(&mut body);
        assert_eq!((parts.accepted_micros, parts.body), (7, &body[..]));
        assert!(parts.members.is_empty());
    }

    #[test]
    fn an_index_longer_than_the_record_reads_as_body() {
        let mut out = Vec::new();
        begin(&mut out, 7);
        out[7] = 0x7f; // index length bits: 0x7f0 = 2032 bytes, more than follows
        out.extend_from_slice(b"{}");
        let parts = parts(&out);
        assert_eq!((parts.body, parts.members), (&b"{}"[..], &b""[..]));
    }
}
