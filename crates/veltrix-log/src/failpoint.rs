//! Named crash points in the committer, for fault-injection tests (cargo feature `failpoints`,
//! off by default; without it [`crash_here`] is a constant `false` and compiles away).
//!
//! A test arms a point with the `fail` crate's `return` action (e.g.
//! `fail::cfg(failpoint::APPEND_BEFORE_FSYNC, "3*off->return")`: the fourth time). There the
//! committer stops dead, as if the process had crashed at that instant: it resolves no ticket,
//! touches no file again and exits; the log reports itself failed (`Poisoned`, naming the point)
//! so the test notices. The test then drops the log, simulates the crash's effect on the disk
//! (`SimFs::kill` for a process crash, `SimFs::crash` for a power loss) and reopens from the
//! filesystem. Other `fail` actions (`panic`, `sleep`, `pause`, callbacks) behave as the crate
//! defines them.

/// After a round's records are written, before they are fdatasynced.
pub const APPEND_BEFORE_FSYNC: &str = "veltrix-log/append/before-fsync";
/// After a round's records are fdatasynced, before any of its tickets resolves (the ack).
pub const APPEND_BEFORE_ACK: &str = "veltrix-log/append/before-ack";
/// After rotation created the next segment, before the directory is fsynced.
pub const ROTATE_BEFORE_DIR_SYNC: &str = "veltrix-log/rotate/before-dir-sync";
/// After the cursor ledger is durably replaced, before retention unlinks the segments every
/// cursor is past (only reached when there is a segment to unlink).
pub const RETENTION_BEFORE_UNLINK: &str = "veltrix-log/retention/before-unlink";

/// Every crash point, for tests that sweep them all.
pub const ALL: [&str; 4] = [
    APPEND_BEFORE_FSYNC,
    APPEND_BEFORE_ACK,
    ROTATE_BEFORE_DIR_SYNC,
    RETENTION_BEFORE_UNLINK,
];

/// Whether a test armed `point` with `return`: the caller must then die on the spot.
#[cfg(feature = "failpoints")]
pub(crate) fn crash_here(point: &str) -> bool {
    (|| {
        fail::fail_point!(point, |_| true);
        false
    })()
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn crash_here(_point: &str) -> bool {
    false
}
