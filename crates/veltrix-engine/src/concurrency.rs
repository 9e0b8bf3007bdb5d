//! Adaptive request concurrency for the http sink: how many requests may be in flight at once,
//! learnt from the receiver's answers (AIMD, as in TCP congestion control and Vector's adaptive
//! request concurrency).
//!
//! [`Controller`] is the pure state machine (time comes in as an argument, so tests drive it
//! deterministically); [`Limiter`] wraps it for the sink: a request takes a slot before it is
//! sent, waits while `in flight == limit`, and reports its round trip and outcome when done.
//!
//! The rules, per sink:
//! - The limit starts at `initial` and stays within `1..=max`.
//! - Responses are grouped in windows of about one round trip (the baseline, at least
//!   [`WINDOW_MIN`]). A window that ends with no overload, a mean round trip at most
//!   [`RTT_RISE`] × the baseline, and the limit reached at least once ("saturated": the limit was
//!   what held requests back) adds 1 to the limit. A window whose mean round trip is above that
//!   multiplies the limit by [`RTT_DECREASE`].
//! - An overload answer (429, 503, a timeout or a connection error) halves the limit at once
//!   ([`OVERLOAD_DECREASE`]) — once per round trip: answers to requests sent before the last
//!   decrease say nothing new and are ignored.
//! - The baseline is an exponentially weighted mean of window means ([`BASELINE_WEIGHT`] for
//!   the newest); overload answers (fast refusals) are not round-trip samples.
//!
//! Bounds: the limiter holds no queue of its own: waiting requests are the pipelines' workers
//! (one request each), so at most `workers` requests wait per sink. State is a few numbers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use veltrix_core::config::Concurrency;

/// A window lasts about one baseline round trip, but at least this long, so sub-millisecond
/// receivers still see a few answers per window.
pub(crate) const WINDOW_MIN: Duration = Duration::from_millis(10);
/// "Well above the baseline": a window's mean round trip above this multiple of it.
pub(crate) const RTT_RISE: f64 = 1.5;
/// The limit's factor on a slow window.
pub(crate) const RTT_DECREASE: f64 = 0.9;
/// The limit's factor on an overload answer.
pub(crate) const OVERLOAD_DECREASE: f64 = 0.5;
/// Weight of the newest window mean in the baseline.
pub(crate) const BASELINE_WEIGHT: f64 = 0.4;

/// What one request's answer says about the receiver's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered (any status but the overload ones): its round trip counts.
    Answered,
    /// 429, 503, a timeout, a connection error: back off.
    Overloaded,
}

/// The AIMD state machine. Times are offsets from any fixed origin.
#[derive(Debug, Clone)]
pub(crate) struct Controller {
    limit: usize,
    max: usize,
    /// Mean round trip in seconds; `None` until the first window ends.
    baseline: Option<f64>,
    window_start: Duration,
    rtt_sum: f64,
    rtt_count: u32,
    saturated: bool,
    /// When the limit last went down: answers to requests sent before it are ignored for
    /// further decreases.
    last_decrease: Option<Duration>,
}

impl Controller {
    pub(crate) fn new(initial: usize, max: usize) -> Controller {
        let max = max.max(1);
        Controller {
            limit: initial.clamp(1, max),
            max,
            baseline: None,
            window_start: Duration::ZERO,
            rtt_sum: 0.0,
            rtt_count: 0,
            saturated: false,
            last_decrease: None,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A request was sent with `in_flight` requests in flight, itself included.
    pub(crate) fn on_send(&mut self, in_flight: usize) {
        if in_flight >= self.limit {
            self.saturated = true;
        }
    }

    /// The answer to a request sent at `now - rtt` arrived at `now`.
    pub(crate) fn on_answer(&mut self, now: Duration, rtt: Duration, outcome: Outcome) {
        let sent = now.saturating_sub(rtt);
        let stale = self.last_decrease.is_some_and(|at| sent < at);
        match outcome {
            Outcome::Overloaded => {
                if !stale {
                    self.decrease(now, OVERLOAD_DECREASE);
                }
                return;
            }
            Outcome::Answered => {
                self.rtt_sum += rtt.as_secs_f64();
                self.rtt_count += 1;
            }
        }
        let window = self
            .baseline
            .map_or(WINDOW_MIN, Duration::from_secs_f64)
            .max(WINDOW_MIN);
        if now.saturating_sub(self.window_start) < window || self.rtt_count == 0 {
            return;
        }
        let mean = self.rtt_sum / f64::from(self.rtt_count);
        // A slow window never raises the limit, even when it is too stale to lower it.
        let slow = self.baseline.is_some_and(|b| mean > b * RTT_RISE);
        if slow {
            if !stale {
                self.decrease(now, RTT_DECREASE);
            }
        } else if self.saturated {
            self.limit = (self.limit + 1).min(self.max);
        }
        self.baseline = Some(match self.baseline {
            None => mean,
            Some(b) => b + BASELINE_WEIGHT * (mean - b),
        });
        self.start_window(now);
    }

    fn decrease(&mut self, now: Duration, factor: f64) {
        self.limit = ((self.limit as f64 * factor).floor() as usize).max(1);
        self.last_decrease = Some(now);
        self.start_window(now);
    }

    fn start_window(&mut self, now: Duration) {
        self.window_start = now;
        self.rtt_sum = 0.0;
        self.rtt_count = 0;
        self.saturated = false;
    }
}

struct State {
    /// `None`: a fixed limit.
    controller: Option<Controller>,
    limit: usize,
    in_flight: usize,
}

/// A sink's concurrency limit, shared by every worker writing to it.
pub(crate) struct Limiter {
    state: Mutex<State>,
    freed: Notify,
    origin: Instant,
    gauge: metrics::Gauge,
}

/// One request's slot; [`Permit::done`] reports how it went. Dropped without `done` (the request
/// was cancelled), the slot is freed and nothing is learnt.
pub(crate) struct Permit<'a> {
    limiter: &'a Limiter,
    sent: Instant,
    open: bool,
}

impl Limiter {
    pub(crate) fn new(sink: &str, concurrency: Concurrency) -> Limiter {
        let (controller, limit) = match concurrency {
            Concurrency::Fixed(n) => (None, n.max(1)),
            Concurrency::Adaptive { initial, max } => {
                let c = Controller::new(initial, max);
                let limit = c.limit();
                (Some(c), limit)
            }
        };
        let gauge = metrics::gauge!("veltrix_sink_concurrency_limit", "sink" => sink.to_owned());
        gauge.set(limit as f64);
        Limiter {
            state: Mutex::new(State {
                controller,
                limit,
                in_flight: 0,
            }),
            freed: Notify::new(),
            origin: Instant::now(),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current limit.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Waits for a free slot.
    pub(crate) async fn acquire(&self) -> Permit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            {
                let mut state = self.lock();
                if state.in_flight < state.limit {
                    state.in_flight += 1;
                    let in_flight = state.in_flight;
                    if let Some(c) = &mut state.controller {
                        c.on_send(in_flight);
                    }
                    return Permit {
                        limiter: self,
                        sent: Instant::now(),
                        open: true,
                    };
                }
                // Registered before the lock is released: a slot freed from now on wakes us.
                freed.as_mut().enable();
            }
            freed.await;
        }
    }

    fn release(&self, learn: Option<(Instant, Outcome)>) {
        let mut state = self.lock();
        state.in_flight -= 1;
        if let (Some((sent, outcome)), Some(c)) = (learn, &mut state.controller) {
            let now = self.origin.elapsed();
            c.on_answer(now, sent.elapsed(), outcome);
            let limit = c.limit();
            if limit != state.limit {
                state.limit = limit;
                self.gauge.set(limit as f64);
            }
        }
        drop(state);
        self.freed.notify_waiters();
    }
}

impl Permit<'_> {
    /// The request is over: `outcome` says how the receiver coped.
    pub(crate) fn done(mut self, outcome: Outcome) {
        self.open = false;
        self.limiter.release(Some((self.sent, outcome)));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.open {
            self.limiter.release(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives `c` with `rounds` rounds: each sends `limit` requests at once (as many as allowed)
    /// that are all answered `rtt` later with what `answer(in_flight)` says; returns the limit
    /// after each round.
    fn rounds(
        c: &mut Controller,
        now: &mut Duration,
        rounds: usize,
        rtt: Duration,
        answer: impl Fn(usize) -> Outcome,
    ) -> Vec<usize> {
        let mut trajectory = Vec::new();
        for _ in 0..rounds {
            let n = c.limit();
            for i in 1..=n {
                c.on_send(i);
            }
            *now += rtt;
            for _ in 0..n {
                c.on_answer(*now, rtt, answer(n));
            }
            trajectory.push(c.limit());
        }
        trajectory
    }

    #[test]
    fn steady_round_trips_add_one_per_window_up_to_max() {
        let mut c = Controller::new(1, 5);
        let mut now = Duration::ZERO;
        // 10 ms round trips: each round is one window.
        let t = rounds(&mut c, &mut now, 7, 10 * MS, |_| Outcome::Answered);
        assert_eq!(t, [2, 3, 4, 5, 5, 5, 5]);
    }

    #[test]
    fn overload_halves_once_per_round_trip_then_probes_again() {
        let mut c = Controller::new(8, 64);
        let mut now = Duration::ZERO;
        // The receiver refuses whenever more than 4 requests are in flight.
        let capacity = |n: usize| {
            if n > 4 {
                Outcome::Overloaded
            } else {
                Outcome::Answered
            }
        };
        let t = rounds(&mut c, &mut now, 8, 10 * MS, capacity);
        // 8 refused: halved once (not once per refusal) to 4; then 4 → 5 → refused → 2 ...
        assert_eq!(t, [4, 5, 2, 3, 4, 5, 2, 3]);
        assert!(
            t.iter().all(|&l| l <= 5),
            "never more than one above capacity"
        );
        let mean = t.iter().sum::<usize>() as f64 / t.len() as f64;
        assert!(mean <= 4.0, "on average within capacity: {mean}");
    }

    #[test]
    fn unsaturated_windows_do_not_raise_the_limit() {
        let mut c = Controller::new(4, 64);
        let mut now = Duration::ZERO;
        for _ in 0..10 {
            c.on_send(1); // one request at a time: the limit of 4 is never what holds us back
            now += 10 * MS;
            c.on_answer(now, 10 * MS, Outcome::Answered);
        }
        assert_eq!(c.limit(), 4);
    }

    #[test]
    fn round_trips_well_above_the_baseline_decrease_by_a_tenth() {
        // One request per window, sent when the limit is reached (saturated).
        let mut c = Controller::new(10, 64);
        let mut now = Duration::ZERO;
        let mut trip = |c: &mut Controller, rtt_ms: u32| {
            let limit = c.limit();
            c.on_send(limit);
            now += MS * rtt_ms;
            c.on_answer(now, MS * rtt_ms, Outcome::Answered);
            c.limit()
        };
        let t: Vec<usize> = [10, 10, 30, 30, 30, 30].map(|rtt| trip(&mut c, rtt)).into();
        // Baseline 10 ms; 30 ms is above 1.5 × 10: 12 × 0.9 → 10; the baseline moves to 18 ms,
        // 30 ms is still above 27: → 9; then 22.8 ms × 1.5 > 30: growth resumes.
        assert_eq!(t, [11, 12, 10, 9, 10, 11]);
    }

    #[test]
    fn answers_to_requests_sent_before_a_decrease_are_ignored() {
        let mut c = Controller::new(16, 64);
        let now = 100 * MS;
        c.on_answer(now, 10 * MS, Outcome::Overloaded);
        assert_eq!(c.limit(), 8);
        // Sent at 95 ms, before the decrease at 100 ms: no second halving.
        c.on_answer(now + 5 * MS, 10 * MS, Outcome::Overloaded);
        assert_eq!(c.limit(), 8);
        // Sent after the decrease: news.
        c.on_answer(now + 20 * MS, 10 * MS, Outcome::Overloaded);
        assert_eq!(c.limit(), 4);
        for i in 0..10 {
            c.on_answer(now + (30 + i) * MS, 5 * MS, Outcome::Overloaded);
        }
        assert_eq!(c.limit(), 1, "never below one");
    }

    #[tokio::test]
    async fn the_limiter_holds_requests_beyond_the_limit_until_one_finishes() {
        let limiter = Limiter::new("t", Concurrency::Fixed(2));
        let a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        let third = limiter.acquire();
        tokio::pin!(third);
        assert!(
            futures_util::poll!(third.as_mut()).is_pending(),
            "a third request waits"
        );
        a.done(Outcome::Answered);
        let _c = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("a freed slot wakes the waiter");
        assert_eq!(limiter.limit(), 2, "fixed");
    }
}
