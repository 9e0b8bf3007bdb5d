//! `throttle`: a token bucket per key. Each bucket holds up to `burst` tokens and gains `rate`
//! tokens per `per`; an event takes one token or is over the limit (dropped, or dead-lettered
//! with the reason `throttled`, as configured).
//!
//! Layout: a map from key hash to its bucket (tokens, last refill time, last use), and a queue
//! of (hash, use number) in the order buckets were used, for least-recently-used eviction.
//! Invariants: every bucket has a queue entry with its latest use number; older entries of the
//! same key are stale and skipped; the queue is compacted when stale entries make it twice
//! `max_keys`. Time is monotonic and injected, so the refill arithmetic is testable.
//!
//! Limits: at most `max_keys` buckets. A new key beyond that evicts the least recently used
//! bucket. Evicting a bucket that has refilled to `burst` changes nothing (a new bucket starts
//! full); evicting one that has not lets its key burst again early, and that is counted
//! (`veltrix_processor_keys_evicted_total`). About 80 bytes per key.
//!
//! Loss window: buckets are in memory; after a restart every key starts with a full bucket.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

struct Bucket {
    tokens: f64,
    refilled: Duration,
    used: u64,
}

/// The buckets of one throttle.
pub(crate) struct Buckets {
    /// Tokens gained per second.
    per_second: f64,
    burst: f64,
    max_keys: usize,
    buckets: HashMap<u128, Bucket>,
    order: VecDeque<(u128, u64)>,
    uses: u64,
}

/// What one decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The event took a token.
    pub(crate) allowed: bool,
    /// Buckets evicted before they had refilled (0 or 1).
    pub(crate) evicted: u64,
}

impl Buckets {
    pub(crate) fn new(rate: u64, per: Duration, burst: u64, max_keys: usize) -> Buckets {
        assert!(
            rate > 0 && burst > 0 && max_keys > 0 && !per.is_zero(),
            "validated"
        );
        Buckets {
            per_second: rate as f64 / per.as_secs_f64(),
            burst: burst as f64,
            max_keys,
            buckets: HashMap::new(),
            order: VecDeque::new(),
            uses: 0,
        }
    }

    /// Takes a token from `key`'s bucket at `now`, if it has one.
    pub(crate) fn take(&mut self, key: u128, now: Duration) -> Decision {
        self.uses += 1;
        let mut evicted = 0;
        if !self.buckets.contains_key(&key) {
            while self.buckets.len() >= self.max_keys {
                let (old, used) = self.order.pop_front().expect("every bucket is queued");
                if self.buckets.get(&old).is_some_and(|b| b.used == used) {
                    let bucket = self.buckets.remove(&old).expect("checked");
                    if self.level(&bucket, now) < self.burst {
                        evicted += 1;
                    }
                }
            }
            self.buckets.insert(
                key,
                Bucket {
                    tokens: self.burst,
                    refilled: now,
                    used: 0,
                },
            );
        }
        let (per_second, burst, uses) = (self.per_second, self.burst, self.uses);
        let bucket = self.buckets.get_mut(&key).expect("inserted above");
        let elapsed = now.saturating_sub(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.refilled = now.max(bucket.refilled);
        bucket.used = uses;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        self.order.push_back((key, uses));
        if self.order.len() > 2 * self.max_keys {
            let buckets = &self.buckets;
            self.order
                .retain(|(k, used)| buckets.get(k).is_some_and(|b| b.used == *used));
        }
        Decision { allowed, evicted }
    }

    /// Buckets kept now.
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    fn level(&self, bucket: &Bucket, now: Duration) -> f64 {
        let elapsed = now.saturating_sub(bucket.refilled).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn allowed(buckets: &mut Buckets, key: u128, at: Duration, n: usize) -> usize {
        (0..n).filter(|_| buckets.take(key, at).allowed).count()
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills_tokens() {
        // 10 per second, bursts of 5.
        let mut b = Buckets::new(10, Duration::from_secs(1), 5, 100);
        assert_eq!(allowed(&mut b, 1, ms(0), 8), 5, "the burst");
        assert_eq!(allowed(&mut b, 1, ms(50), 8), 0, "half a token");
        assert_eq!(allowed(&mut b, 1, ms(100), 8), 1, "one token per 100 ms");
        assert_eq!(allowed(&mut b, 1, ms(400), 8), 3);
        // A long quiet spell refills to the burst, not beyond.
        assert_eq!(allowed(&mut b, 1, ms(60_000), 100), 5);
        // Other keys have their own buckets.
        assert_eq!(allowed(&mut b, 2, ms(60_000), 100), 5);
    }

    #[test]
    fn a_rate_per_minute_and_a_burst_default_to_the_rate() {
        let mut b = Buckets::new(2, Duration::from_secs(60), 2, 10);
        assert_eq!(allowed(&mut b, 1, ms(0), 10), 2);
        assert_eq!(allowed(&mut b, 1, ms(29_000), 10), 0);
        assert_eq!(allowed(&mut b, 1, ms(30_000), 10), 1);
    }

    #[test]
    fn beyond_max_keys_the_least_recently_used_bucket_is_evicted() {
        let mut b = Buckets::new(1, Duration::from_secs(10), 1, 2);
        assert!(b.take(1, ms(0)).allowed);
        assert!(b.take(2, ms(1)).allowed);
        assert!(
            !b.take(1, ms(2)).allowed,
            "key 1 is now the most recently used"
        );
        // Key 3 evicts key 2 (least recently used), which had not refilled: counted.
        assert_eq!(
            b.take(3, ms(3)),
            Decision {
                allowed: true,
                evicted: 1
            }
        );
        assert_eq!(b.len(), 2);
        assert!(!b.take(1, ms(4)).allowed, "key 1 kept its empty bucket");
        // Key 2 comes back with a full bucket (it evicts key 3).
        assert!(b.take(2, ms(5)).allowed);
        // Once refilled, evicting a bucket is harmless and not counted.
        assert_eq!(b.take(4, ms(60_000)).evicted, 0);
    }

    #[test]
    fn stale_order_entries_stay_bounded() {
        let mut b = Buckets::new(1000, Duration::from_secs(1), 1000, 3);
        for i in 0..10_000u64 {
            b.take(u128::from(i % 3), ms(i));
        }
        assert!(b.order.len() <= 6, "{}", b.order.len());
    }
}
