//! Crashes at the log's named failpoints (`veltrix_log::failpoint`; needs the `failpoints`
//! feature, on under `cargo test --workspace --all-features`). At each point the committer stops
//! dead as a crashed process would; the test then applies the crash to the disk — a process crash
//! (`SimFs::kill`: everything written survives) or a power loss (`SimFs::crash`: unsynced bytes
//! gone or torn) — and recovers from the filesystem alone with the same checks as `crash.rs`.
//!
//! Runs per point: `VELTRIX_FAULT_RUNS` (default 50); seed `VELTRIX_FAULT_SEED`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use support::*;
use veltrix_log::{Durability, SimFs, failpoint};

/// More batches and commits than the default, so every point is reached several times a run.
const SHAPE: Shape = Shape {
    appenders: 3,
    batches_per_appender: 20,
    commit_every: 2,
};

/// How often a workload of `seed` passes `point` (one uncrashed run with a counting callback).
fn hits(point: &str, seed: u64) -> u64 {
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    fail::cfg_callback(point, move || {
        counter.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    let fs = SimFs::new();
    let log = open(&fs, Durability::Fsync).unwrap();
    let outcome = run_workload(&log, seed, SHAPE);
    assert_eq!(outcome.failure, None);
    drop(log);
    fail::remove(point);
    count.load(Ordering::Relaxed)
}

fn crash_at(point: &'static str) {
    let _scenario = fail::FailScenario::setup();
    let runs = env_count("VELTRIX_FAULT_RUNS", 50);
    let base_seed = env_count("VELTRIX_FAULT_SEED", 0xFA11_0000);
    let mut figures = Figures::default();
    let (mut triggered, mut killed) = (0, 0);
    for run in 0..runs {
        let seed = base_seed.wrapping_add(run);
        let passes = hits(point, seed);
        assert!(
            passes > 0,
            "seed {seed}: the workload never reaches {point}"
        );
        let mut rng = Rng::new(seed);
        // The n-th pass (0-based), within the first half so a run's timing cannot skip it.
        let n = rng.below(passes.div_ceil(2));
        fail::cfg(point, &format!("{n}*off->return")).unwrap();
        let fs = SimFs::new();
        let log = open(&fs, Durability::Fsync).unwrap();
        let outcome = run_workload(&log, seed, SHAPE);
        // A log stopped at the point stays failed, naming it.
        let stopped_there = log.close().is_err_and(|e| e.to_string().contains(point));
        fail::remove(point);
        triggered += u64::from(stopped_there);
        figures.crashed_mid_run += u64::from(stopped_there);
        if rng.below(2) == 0 {
            killed += 1;
            fs.kill();
        } else {
            fs.crash(Tear::pick(&mut rng).function());
        }
        if let Err(broken) =
            recover_and_check(&fs, Durability::Fsync, &outcome, &mut rng, &mut figures)
        {
            panic!("{point}: seed {seed} (pass {n} of {passes}): {broken}");
        }
        progress(point, run + 1, runs);
    }
    let label = format!("crash at {point} ({killed} as kill -9, the rest as power loss)");
    eprintln!("{}", figures.summary(&label));
    assert_eq!(figures.lost, 0);
    assert!(
        triggered * 10 >= runs * 9,
        "{point} stopped only {triggered} of {runs} runs"
    );
}

#[test]
fn a_crash_between_write_and_fsync_loses_no_acknowledged_append() {
    crash_at(failpoint::APPEND_BEFORE_FSYNC);
}

#[test]
fn a_crash_between_fsync_and_ack_loses_nothing_and_recovers() {
    crash_at(failpoint::APPEND_BEFORE_ACK);
}

#[test]
fn a_crash_between_segment_creation_and_directory_sync_recovers() {
    crash_at(failpoint::ROTATE_BEFORE_DIR_SYNC);
}

#[test]
fn a_crash_between_ledger_write_and_segment_unlink_recovers() {
    crash_at(failpoint::RETENTION_BEFORE_UNLINK);
}
