//! `dedupe`: drops an event whose key passed within the window.
//!
//! Layout: a map from key hash (128-bit, see `key.rs`) to the time the key last passed, and a
//! queue of (hash, time) in the order keys passed. Time is monotonic, so the queue is ordered by
//! time and the oldest entries are at its front.
//!
//! Invariants: every map entry has its queue entry; a queue entry whose time differs from its
//! map entry's (the key was forgotten, then passed again) is stale and skipped. Expired entries
//! (older than the window) are removed from the front before every decision, so a key found in
//! the map is within the window.
//!
//! Limits: at most `max_keys` keys; a new key beyond that evicts the oldest (counted in
//! `veltrix_processor_keys_evicted_total`: an evicted key can pass again within its window, so a
//! steady eviction count says `max_keys` is too small for the key rate × window). Memory is
//! about 64 bytes per key; the queue is compacted when stale entries make it twice `max_keys`.
//!
//! Loss window: the state is in memory only. After a restart (or a reload that changes the
//! pipeline) every key is forgotten, so a duplicate arriving then passes. An event that passed
//! and then failed (a later processor, or a delivery that failed for good) is forgotten again,
//! so replaying it from the dead-letter queue is not taken for a duplicate.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// The keys seen within the window.
pub(crate) struct Seen {
    window: Duration,
    max_keys: usize,
    last: HashMap<u128, Duration>,
    order: VecDeque<(u128, Duration)>,
}

/// What one decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The key passed within the window: drop the event.
    pub(crate) duplicate: bool,
    /// Keys evicted to make room (0 or 1).
    pub(crate) evicted: u64,
}

impl Seen {
    pub(crate) fn new(window: Duration, max_keys: usize) -> Seen {
        assert!(max_keys > 0, "validated: max_keys >= 1");
        Seen {
            window,
            max_keys,
            last: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Decides on an event with key hash `key` at `now`; a key that is not a duplicate is
    /// remembered as passing at `now`.
    pub(crate) fn check(&mut self, key: u128, now: Duration) -> Decision {
        self.expire(now);
        if self.last.contains_key(&key) {
            return Decision {
                duplicate: true,
                evicted: 0,
            };
        }
        let mut evicted = 0;
        while self.last.len() >= self.max_keys {
            let (old, at) = self.order.pop_front().expect("every key is queued");
            if self.last.get(&old) == Some(&at) {
                self.last.remove(&old);
                evicted += 1;
            }
        }
        self.last.insert(key, now);
        self.order.push_back((key, now));
        if self.order.len() > 2 * self.max_keys {
            let last = &self.last;
            self.order.retain(|(k, at)| last.get(k) == Some(at));
        }
        Decision {
            duplicate: false,
            evicted,
        }
    }

    /// Forgets `key` if it is still remembered as passing at `at` (its event was dead-lettered
    /// after passing: a replay must not count as a duplicate).
    pub(crate) fn forget(&mut self, key: u128, at: Duration) {
        if self.last.get(&key) == Some(&at) {
            self.last.remove(&key);
        }
    }

    /// Keys remembered now.
    pub(crate) fn len(&self) -> usize {
        self.last.len()
    }

    fn expire(&mut self, now: Duration) {
        while let Some(&(key, at)) = self.order.front() {
            if now.saturating_sub(at) < self.window {
                break;
            }
            self.order.pop_front();
            if self.last.get(&key) == Some(&at) {
                self.last.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_key_seen_within_the_window_is_a_duplicate_and_passes_again_after_it() {
        let mut seen = Seen::new(s(10), 100);
        assert!(!seen.check(1, s(0)).duplicate);
        assert!(seen.check(1, s(5)).duplicate);
        assert!(!seen.check(2, s(5)).duplicate, "other keys are independent");
        // A duplicate does not extend the window: it counts from the event that passed.
        assert!(seen.check(1, s(9)).duplicate);
        assert!(!seen.check(1, s(10)).duplicate);
        assert!(seen.check(2, s(14)).duplicate);
        assert!(!seen.check(2, s(15)).duplicate);
        assert!(seen.check(1, s(19)).duplicate);
    }

    #[test]
    fn beyond_max_keys_the_oldest_key_is_evicted_and_counted() {
        let mut seen = Seen::new(s(60), 3);
        for key in 1..=3 {
            assert_eq!(seen.check(key, s(key as u64)).evicted, 0);
        }
        let decision = seen.check(4, s(4));
        assert_eq!(
            decision,
            Decision {
                duplicate: false,
                evicted: 1
            }
        );
        assert_eq!(seen.len(), 3);
        assert!(!seen.check(1, s(5)).duplicate, "key 1 was evicted");
        // Evicting key 1 again made room by evicting key 2, the oldest now.
        assert!(!seen.check(2, s(6)).duplicate);
        assert!(seen.check(4, s(6)).duplicate);
    }

    #[test]
    fn expired_keys_leave_room_without_evictions() {
        let mut seen = Seen::new(s(10), 2);
        seen.check(1, s(0));
        seen.check(2, s(1));
        assert_eq!(seen.check(3, s(11)).evicted, 0);
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_forgotten_key_passes_again_and_stale_entries_stay_bounded() {
        let mut seen = Seen::new(s(10_000), 4);
        seen.check(7, s(1));
        seen.forget(7, s(1));
        assert!(!seen.check(7, s(2)).duplicate);
        // Forgetting with another time (an older pass) leaves the newer one alone.
        seen.forget(7, s(1));
        assert!(seen.check(7, s(3)).duplicate);
        for i in 0..1000u32 {
            let at = s(10 + u64::from(i));
            seen.check(100 + u128::from(i), at);
            seen.forget(100 + u128::from(i), at);
        }
        assert!(seen.order.len() <= 8, "{}", seen.order.len());
        assert_eq!(seen.len(), 1, "only key 7 is remembered");
        assert!(seen.check(7, s(2000)).duplicate);
    }
}
