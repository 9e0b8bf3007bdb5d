//! `sample`: keeps a deterministic fraction of the events. An event is kept when the stable
//! hash of its key (`key.rs`: SipHash-1-3 with fixed keys), read as a number in [0, 1), is below
//! `rate`. The same key always gets the same decision — in every worker, after a restart, on
//! another machine — so sampling by a user or session id keeps or drops all of its events
//! together. No state, nothing to lose.

/// Whether an event whose key hashes to `hash` is kept at `rate` (in (0, 1]).
pub(crate) fn keep(hash: u128, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    // The high 64 bits as a fraction of 2^64; `as` saturates, and rate < 1 stays below 2^64.
    let threshold = (rate * 18_446_744_073_709_551_616.0) as u64;
    ((hash >> 64) as u64) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::key::hash128;

    #[test]
    fn the_same_key_gets_the_same_decision() {
        for i in 0..1000 {
            let key = format!("\"user-{i}\"");
            let first = keep(hash128(key.as_bytes()), 0.3);
            assert_eq!(keep(hash128(key.as_bytes()), 0.3), first);
        }
        assert!(keep(hash128(b"anything"), 1.0));
    }

    #[test]
    fn the_kept_fraction_is_the_rate_within_tolerance() {
        const KEYS: usize = 100_000;
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let kept = (0..KEYS)
                .filter(|i| keep(hash128(format!("\"{i}\"").as_bytes()), rate))
                .count();
            let fraction = kept as f64 / KEYS as f64;
            // Binomial standard deviation at 100,000 keys is at most 0.0016: 5 sigma.
            assert!(
                (fraction - rate).abs() < 0.008,
                "rate {rate}: kept {fraction}"
            );
        }
    }

    #[test]
    fn a_lower_rate_keeps_a_subset_of_a_higher_one() {
        // Thresholds are nested: lowering the rate only ever drops more keys.
        for i in 0..10_000 {
            let hash = hash128(format!("\"{i}\"").as_bytes());
            if keep(hash, 0.2) {
                assert!(keep(hash, 0.5));
            }
        }
    }
}
