//! Power loss at arbitrary crash points: the `SimFs` counts every mutating operation the log
//! performs (write, truncate, fdatasync, directory sync, create, rename, unlink) and loses power
//! at a chosen one, dropping every byte and directory change not yet synced (sometimes keeping a
//! torn prefix of the unsynced tail). After each crash the log is recovered from the filesystem
//! alone and checked by `support::recover_and_check`: no acknowledged append lost (fsync mode),
//! no cursor persisted ahead of the data, no damage besides a torn tail, recovery never fails
//! (even when a second power loss cuts the first recovery short), at-least-once for the consumer.
//!
//! Iterations: `VELTRIX_FAULT_CRASH_POINTS` (default 1,000 in fsync mode, a quarter of it in
//! interval mode), `VELTRIX_FAULT_SEED` (default fixed). `scripts/soak.sh` raises them.

mod support;

use std::time::Duration;

use support::*;
use veltrix_log::{Durability, SimFs};

/// Crash points per seed: each seed's workload is first run to its end to count its mutating
/// operations, then crashed at this many points drawn from that range (plus one past its end,
/// during close).
const POINTS_PER_SEED: u64 = 20;

fn sweep(durability: Durability, crash_points: u64, label: &str) -> Figures {
    let base_seed = env_count("VELTRIX_FAULT_SEED", 0x7E11_7215);
    let seeds = crash_points.div_ceil(POINTS_PER_SEED);
    let mut figures = Figures::default();
    let mut done = 0;
    for s in 0..seeds {
        let seed = base_seed.wrapping_add(s);
        // The dry run: how many mutating operations this workload makes, end to end.
        let fs = SimFs::new();
        let log = open(&fs, durability).expect("open a new log");
        let outcome = run_workload(&log, seed, Shape::default());
        assert_eq!(outcome.failure, None, "seed {seed}: the dry run failed");
        drop(log);
        let total = fs.mutations();
        let mut rng = Rng::new(seed);
        for point in 0..POINTS_PER_SEED.min(crash_points - done) {
            let k = 1 + rng.below(total + 2);
            let tear = Tear::pick(&mut rng);
            let fs = SimFs::new();
            let log = open(&fs, durability).expect("open a new log");
            let created = fs.mutations();
            fs.crash_after(k.saturating_sub(created).max(1), tear.function());
            let outcome = run_workload(&log, seed, Shape::default());
            drop(log); // a crashed log's close fails; a complete one's may hit the crash point
            if fs.is_down() {
                figures.crashed_mid_run += u64::from(outcome.failure.is_some());
            } else {
                fs.disarm();
                fs.crash(tear.function());
            }
            if let Err(broken) =
                recover_and_check(&fs, durability, &outcome, &mut rng, &mut figures)
            {
                panic!(
                    "{label}: seed {seed} point {point} (mutation {k} of {total}, {tear:?}): {broken}\n{}",
                    figures.summary(label)
                );
            }
            done += 1;
            progress(label, done, crash_points);
        }
    }
    eprintln!("{}", figures.summary(label));
    figures
}

#[test]
fn power_loss_at_any_crash_point_loses_no_acknowledged_append_in_fsync_mode() {
    let points = env_count("VELTRIX_FAULT_CRASH_POINTS", 1000);
    let figures = sweep(Durability::Fsync, points, "power loss, fsync");
    assert_eq!(figures.runs, points);
    assert_eq!(figures.lost, 0);
    assert!(
        figures.crashed_mid_run > points / 2,
        "most crash points fall inside the workload: {figures:?}"
    );
    assert!(figures.acked_checked > 0 && figures.crashes_during_recovery > 0);
}

#[test]
fn power_loss_in_interval_mode_never_leaves_a_cursor_ahead_of_the_data() {
    let points = env_count("VELTRIX_FAULT_CRASH_POINTS", 1000) / 4;
    let figures = sweep(
        Durability::Interval(Duration::from_secs(3600)),
        points.max(1),
        "power loss, interval",
    );
    assert_eq!(figures.runs, points.max(1));
}
