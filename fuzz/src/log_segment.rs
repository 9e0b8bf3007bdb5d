//! Log recovery and reading over arbitrary segment bytes: the input is the whole content of a
//! queue's first segment file (`00000000000000000000.seg`, see `seeds/log_segment/`), on the
//! in-memory filesystem. `inspect_dir` and `verify_dir` (read-only, what `veltrix queue inspect`
//! and `validate --check-data` run), then `Log::open` (recovery: torn tail cut, damage
//! quarantined), a cursor reading every record, and one append after recovery. Beyond "never
//! panics": recovery and the readers agree on the tail, a cursor's offsets only go forward and
//! stay below it, and the log still takes (durable) appends after recovery.
use std::path::Path;
use std::sync::Arc;

use veltrix_log::{Durability, Filesystem, Log, LogOptions, SimFs, inspect_dir, verify_dir};

/// Small, so lengths in the input reach the bound.
const RECORD_BYTES_MAX: u32 = 4096;

/// One input: panics on any violated property.
pub fn check(data: &[u8]) {
    let fs = Arc::new(SimFs::new());
    let dir = Path::new("/q");
    fs.create_dir_all(dir).expect("in memory");
    fs.write_file(&dir.join("00000000000000000000.seg"), data.to_vec());

    let info = inspect_dir(fs.as_ref(), dir, RECORD_BYTES_MAX).expect("inspect reads memory");
    verify_dir(fs.as_ref(), dir, RECORD_BYTES_MAX).expect("verify reads memory");

    let options = LogOptions {
        durability: Durability::Fsync,
        record_bytes_max: RECORD_BYTES_MAX,
        segment_bytes: 1 << 20,
        ..LogOptions::default()
    };
    let (log, report) = Log::open_with_fs(fs.clone(), dir, options).expect("recovery");
    assert_eq!(
        report.next_offset, info.next_offset,
        "inspect and recovery disagree on the tail"
    );
    let mut cursor = log.cursor("fuzz").expect("a cursor");
    let mut expected = report.first_offset;
    loop {
        let batch = cursor.try_read_batch(64, 1 << 20).expect("reading");
        if batch.is_empty() {
            break;
        }
        let mut offsets = Vec::with_capacity(batch.len());
        for record in &batch {
            assert!(record.offset >= expected, "offsets go back");
            assert!(record.offset < report.next_offset, "a record past the tail");
            expected = record.offset + 1;
            offsets.push(record.offset);
        }
        cursor.acker().ack_many(&offsets).expect("ack");
    }
    let ticket = log
        .append(b"after recovery")
        .expect("the log takes appends");
    block_on(ticket).expect("the append is durable");
    log.close().expect("close");
}

/// Waits for an append ticket without a runtime (the committer thread resolves it).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Thread(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}
