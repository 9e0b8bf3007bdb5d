//! What keyed processors (dedupe, throttle, sample, aggregate) share: the key of an event as
//! bytes, its stable 128-bit hash, and the clock they read.
//!
//! A key is the JSON text of the key expression's value (`"alice"` with its quotes, `3`,
//! `["a",1]`): values of different types never collide (the string `"1"` is not the number
//! `1`). Without a key expression, the event's CloudEvents identity (`source` and `id`) is the
//! key. Hashes are SipHash-1-3 with fixed keys: the same key gives the same hash on every
//! machine, in every process and release — what makes sampling decisions stable across restarts
//! — and 128 bits make a collision between two keys of one processor practically impossible
//! (about 2^-64 for 2^32 keys), so state stores the hash, never the key itself.

use std::hash::Hasher;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use siphasher::sip128::{Hasher128, SipHasher13};
use veltrix_core::expr::{EventTarget, Runtime, Value, ValueExpr};

/// Fixed SipHash keys ("veltrix-keys-v01" as two little-endian words). Changing them changes
/// every sampling decision: never do.
const SIP_KEY0: u64 = u64::from_le_bytes(*b"veltrix-");
const SIP_KEY1: u64 = u64::from_le_bytes(*b"keys-v01");

/// The stable 128-bit hash of `bytes`.
pub(crate) fn hash128(bytes: &[u8]) -> u128 {
    let mut hasher = SipHasher13::new_with_keys(SIP_KEY0, SIP_KEY1);
    hasher.write(bytes);
    hasher.finish128().as_u128()
}

/// Writes the key of `event` into `buf` (cleared first): the JSON of `expr`'s value, or the
/// event's `source` and `id` when there is no expression. Returns the value for callers that
/// keep it (aggregate), `Value::Null` for the identity key.
pub(crate) fn key_bytes(
    expr: Option<&ValueExpr>,
    runtime: &mut Runtime,
    event: &mut dyn EventTarget,
    buf: &mut Vec<u8>,
) -> Result<Value, String> {
    buf.clear();
    match expr {
        Some(expr) => {
            let value = expr.run(runtime, event).map_err(|e| e.to_string())?;
            serde_json::to_writer(&mut *buf, &value)
                .map_err(|e| format!("the key cannot be written as JSON: {e}"))?;
            Ok(value)
        }
        None => {
            identity(event, buf);
            Ok(Value::Null)
        }
    }
}

/// `source`, a 0 byte, `id`: the CloudEvents identity of an event (unique per the spec).
fn identity(event: &dyn EventTarget, buf: &mut Vec<u8>) {
    for (i, name) in ["source", "id"].into_iter().enumerate() {
        if i > 0 {
            buf.push(0);
        }
        if let Some(s) = event.attribute(name).and_then(Value::to_str_lossy) {
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// Time as keyed processors see it: monotonic for dedupe windows and token buckets, wall-clock
/// (µs since the Unix epoch) for aggregate windows, which are named by their start and end.
pub(crate) trait Clock: Send + Sync {
    /// Time since some fixed origin; never goes backwards.
    fn monotonic(&self) -> Duration;
    /// Microseconds since the Unix epoch.
    fn wall_micros(&self) -> u64;
}

/// The real clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }

    fn wall_micros(&self) -> u64 {
        crate::record::now_micros()
    }
}

/// A clock that never moves (config tests: every input is processed at the same instant, so
/// throttles and windows decide the same way on every run).
pub(crate) struct FrozenClock {
    pub(crate) wall_micros: u64,
}

impl Clock for FrozenClock {
    fn monotonic(&self) -> Duration {
        Duration::ZERO
    }

    fn wall_micros(&self) -> u64 {
        self.wall_micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veltrix_core::expr::event_to_value;

    fn event(json: &str) -> Value {
        let no_headers: &[(&str, &str)] = &[];
        let events = veltrix_core::event::decode_body(
            "application/cloudevents+json",
            no_headers,
            json.as_bytes(),
        )
        .unwrap();
        event_to_value(&events[0]).unwrap()
    }

    #[test]
    fn the_hash_is_a_known_answer() {
        // Pinned: a change here changes every sampling decision users rely on.
        assert_ne!(hash128(b"\"1\""), hash128(b"1"));
        assert_eq!(KNOWN.0, format!("{:032x}", hash128(KNOWN.1.as_bytes())));
    }

    /// The hash of one key as computed when this module was written.
    const KNOWN: (&str, &str) = ("69eb6791d96acbce5b82eb64dd2c4c0b", "\"alice\"");

    #[test]
    fn keys_are_json_so_types_never_collide_and_the_default_is_the_identity() {
        let mut rt = Runtime::new();
        let mut buf = Vec::new();
        let mut e = event(
            r#"{"specversion":"1.0","id":"7","source":"/s","type":"t","data":{"n":1,"s":"1"}}"#,
        );
        let n = ValueExpr::compile(".data.n").unwrap();
        let s = ValueExpr::compile(".data.s").unwrap();
        key_bytes(Some(&n), &mut rt, &mut e, &mut buf).unwrap();
        assert_eq!(buf, b"1");
        key_bytes(Some(&s), &mut rt, &mut e, &mut buf).unwrap();
        assert_eq!(buf, b"\"1\"");
        let missing = ValueExpr::compile(".data.nothing").unwrap();
        assert_eq!(
            key_bytes(Some(&missing), &mut rt, &mut e, &mut buf),
            Ok(Value::Null)
        );
        assert_eq!(buf, b"null");
        key_bytes(None, &mut rt, &mut e, &mut buf).unwrap();
        assert_eq!(buf, b"/s\x007");
    }
}
