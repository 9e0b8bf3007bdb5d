//! Consumers. A cursor reads records in offset order and takes acknowledgements in any order; its
//! committed position is the lowest record not yet acknowledged. Reads come straight from the
//! segment files through one bounded window per cursor; the only per-record memory is the
//! in-flight bookkeeping (5 bytes a record), bounded by `inflight_records_max`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::error::Error;
use crate::fs::FileHandle;
use crate::ledger::Position;
use crate::log::{Shared, State, sync_cursors};
use crate::scan::{Next, SegmentReader};

/// One record as delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the log (contiguous, starting at 0 for a new log).
    pub offset: u64,
    /// The bytes that were appended.
    pub payload: Bytes,
}

/// Records delivered together from one segment.
struct InflightBatch {
    segment: u64,
    first_offset: u64,
    /// Byte position of each record in the segment.
    starts: Vec<u32>,
    acked: Vec<bool>,
    /// Index of the first record not yet acknowledged (only moves forward).
    next_unacked: usize,
    /// Where reading continued after this batch (past any damaged range it ran into).
    end: Position,
}

/// A cursor's state inside the log.
pub(crate) struct CursorSlot {
    pub(crate) name: String,
    /// Bumped by every reopen; stale handles and ackers are refused.
    generation: u64,
    /// A `Cursor` handle exists.
    pub(crate) open: bool,
    /// The lowest record not yet acknowledged.
    pub(crate) committed: Position,
    /// The position last written to the ledger, if any.
    pub(crate) persisted: Option<Position>,
    inflight: VecDeque<InflightBatch>,
    /// Records in `inflight`, acknowledged or not.
    pub(crate) inflight_records: usize,
}

impl CursorSlot {
    pub(crate) fn new(name: String, committed: Position, persisted: Option<Position>) -> Self {
        Self {
            name,
            generation: 0,
            open: false,
            committed,
            persisted,
            inflight: VecDeque::new(),
            inflight_records: 0,
        }
    }

    /// Marks `offset` acknowledged. Acknowledging twice is harmless.
    fn ack(&mut self, offset: u64) -> Result<(), Error> {
        let i = self.inflight.partition_point(|b| b.first_offset <= offset);
        let batch = i
            .checked_sub(1)
            .and_then(|i| self.inflight.get_mut(i))
            .ok_or(Error::NotInFlight(offset))?;
        let index = (offset - batch.first_offset) as usize;
        let flag = batch
            .acked
            .get_mut(index)
            .ok_or(Error::NotInFlight(offset))?;
        *flag = true;
        Ok(())
    }

    /// Forgets everything before `offset` (the segment holding it was dropped): the committed
    /// position and the persisted one jump there, in-flight batches from before are discarded.
    pub(crate) fn drop_before(&mut self, offset: u64) {
        let target = Position {
            offset,
            segment: offset,
            pos: 0,
        };
        while self
            .inflight
            .front()
            .is_some_and(|b| b.first_offset < offset)
        {
            let batch = self.inflight.pop_front().expect("checked");
            self.inflight_records -= batch.acked.len();
        }
        if self.committed.offset < offset {
            self.committed = target;
        }
        if self.persisted.is_some_and(|p| p.offset < offset) {
            self.persisted = Some(target);
        }
    }

    /// Moves `committed` to the lowest unacknowledged record. Returns whether it moved.
    fn advance(&mut self) -> bool {
        let before = self.committed;
        while let Some(front) = self.inflight.front_mut() {
            while front.next_unacked < front.acked.len() && front.acked[front.next_unacked] {
                front.next_unacked += 1;
            }
            if front.next_unacked == front.acked.len() {
                self.committed = front.end;
                self.inflight_records -= front.acked.len();
                self.inflight.pop_front();
                continue;
            }
            let i = front.next_unacked;
            self.committed = Position {
                offset: front.first_offset + i as u64,
                segment: front.segment,
                pos: u64::from(front.starts[i]),
            };
            break;
        }
        self.committed != before
    }
}

fn slot_mut(st: &mut State, slot: usize, generation: u64) -> Result<&mut CursorSlot, Error> {
    match st.cursors.get_mut(slot) {
        Some(Some(s)) if s.generation == generation => Ok(s),
        _ => Err(Error::StaleCursor),
    }
}

/// Acknowledges records delivered by a cursor; cloneable so workers can acknowledge in parallel.
#[derive(Clone)]
pub struct Acker {
    shared: Arc<Shared>,
    slot: usize,
    generation: u64,
}

impl Acker {
    /// Acknowledges one record.
    pub fn ack(&self, offset: u64) -> Result<(), Error> {
        self.ack_many(&[offset])
    }

    /// Acknowledges several records under one lock.
    pub fn ack_many(&self, offsets: &[u64]) -> Result<(), Error> {
        let moved = {
            let mut st = self.shared.lock();
            let slot = slot_mut(&mut st, self.slot, self.generation)?;
            let mut result = Ok(());
            for &offset in offsets {
                if let Err(e) = slot.ack(offset) {
                    result = Err(e);
                }
            }
            let moved = slot.advance();
            if moved {
                st.ledger_dirty = true;
            }
            result.map(|()| moved)?
        };
        if moved {
            self.shared.wake_readers();
            self.shared.wake_committer();
        }
        Ok(())
    }
}

/// A consumer's handle: reads in order, acknowledges in any order. See [`crate::Log::cursor`].
pub struct Cursor {
    shared: Arc<Shared>,
    name: String,
    acker: Acker,
    /// Where the next read starts.
    read: Position,
    reader: SegmentReader,
    file: Option<(u64, Box<dyn FileHandle>)>,
    progress: watch::Receiver<u64>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("name", &self.name)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Ok(slot) = slot_mut(&mut st, self.acker.slot, self.acker.generation) {
            slot.open = false;
        }
    }
}

impl Cursor {
    pub(crate) fn open(shared: Arc<Shared>, name: &str) -> Result<Cursor, Error> {
        let (slot_index, generation, read) = {
            let mut st = shared.lock();
            st.check_usable()?;
            let slot_index = match st.cursor_names.get(name) {
                Some(&i) => i,
                None => {
                    let first = *st.segments.front().expect("segments never empty");
                    let start = Position {
                        offset: first.base,
                        segment: first.base,
                        pos: 0,
                    };
                    st.cursors
                        .push(Some(CursorSlot::new(name.to_owned(), start, None)));
                    let i = st.cursors.len() - 1;
                    st.cursor_names.insert(name.to_owned(), i);
                    st.ledger_dirty = true;
                    i
                }
            };
            let slot = st.cursors[slot_index].as_mut().expect("named slots exist");
            if slot.open {
                return Err(Error::CursorBusy(name.to_owned()));
            }
            slot.open = true;
            slot.generation += 1;
            slot.inflight.clear();
            slot.inflight_records = 0;
            let (generation, committed) = (slot.generation, slot.committed);
            // Not normalized: if the rest of our segment is missing, reading counts the loss.
            (slot_index, generation, committed)
        };
        let opts = &shared.opts;
        Ok(Cursor {
            reader: SegmentReader::new(opts.read_buffer_bytes, opts.record_bytes_max),
            progress: shared.progress.subscribe(),
            acker: Acker {
                shared: shared.clone(),
                slot: slot_index,
                generation,
            },
            shared,
            name: name.to_owned(),
            read,
            file: None,
        })
    }

    /// The cursor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle for acknowledging from other tasks.
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// Acknowledges one record this cursor delivered.
    pub fn ack(&self, offset: u64) -> Result<(), Error> {
        self.acker.ack(offset)
    }

    /// The lowest record not yet acknowledged.
    pub fn committed(&self) -> Result<Position, Error> {
        let mut st = self.shared.lock();
        Ok(slot_mut(&mut st, self.acker.slot, self.acker.generation)?.committed)
    }

    /// Persists the committed positions of all cursors now.
    pub async fn commit(&self) -> Result<(), Error> {
        sync_cursors(&self.shared).await
    }

    /// Waits for records and returns up to `max_records` of them (and about `max_bytes` of
    /// payload, always at least one record), in offset order.
    pub async fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, Error> {
        loop {
            let records = self.try_read_batch(max_records, max_bytes)?;
            if !records.is_empty() {
                return Ok(records);
            }
            self.wait().await?;
        }
    }

    /// Waits until records may have arrived (or acknowledgements made room) since the last
    /// [`Cursor::try_read_batch`]. Cancel-safe, so a consumer can wait on several cursors at once.
    pub async fn wait(&mut self) -> Result<(), Error> {
        self.progress.changed().await.map_err(|_| Error::Closed)
    }

    /// Like [`Cursor::read_batch`] but returns an empty batch instead of waiting.
    pub fn try_read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, Error> {
        self.progress.borrow_and_update();
        loop {
            let step = self.read_step(max_records.max(1), max_bytes)?;
            match step {
                Step::Records(records) => return Ok(records),
                Step::Moved => continue,
                Step::Nothing => return Ok(Vec::new()),
            }
        }
    }

    fn read_step(&mut self, max_records: usize, max_bytes: usize) -> Result<Step, Error> {
        let (seg_len, next_base, visible_end, room) = {
            let mut st = self.shared.lock();
            st.check_usable()?;
            let inflight_max = self.shared.opts.inflight_records_max;
            let inflight =
                slot_mut(&mut st, self.acker.slot, self.acker.generation)?.inflight_records;
            let index = match st.segment_index(self.read.segment) {
                Some(i) => i,
                None => {
                    // Our segment was deleted: every cursor, this one included, had committed
                    // past it, so continue at the segment that starts where we are.
                    let i = st
                        .segments
                        .iter()
                        .position(|s| s.base >= self.read.offset)
                        .unwrap_or(st.segments.len() - 1);
                    let base = st.segments[i].base;
                    self.read = Position {
                        offset: base.max(self.read.offset),
                        segment: base,
                        pos: 0,
                    };
                    i
                }
            };
            let seg = st.segments[index];
            let next_base = st.segments.get(index + 1).map(|s| s.base);
            (
                seg.len,
                next_base,
                st.next_offset,
                inflight_max.saturating_sub(inflight),
            )
        };
        if self.read.pos >= seg_len {
            return match next_base {
                Some(next) => {
                    self.skip_to(Position {
                        offset: next,
                        segment: next,
                        pos: 0,
                    });
                    Ok(Step::Moved)
                }
                None => Ok(Step::Nothing),
            };
        }
        if room == 0 {
            return Ok(Step::Nothing);
        }
        let segment = self.read.segment;
        if self.file.as_ref().map(|(s, _)| *s) != Some(segment) {
            let path = self.shared.segment_path(segment);
            let file = self
                .shared
                .fs
                .open(&path, false)
                .map_err(|e| Error::io("opening a segment for reading", &path, e))?;
            self.file = Some((segment, file));
            self.reader.reset();
        }
        let (_, file) = self.file.as_ref().expect("opened above");
        let limit_records = max_records.min(room);
        let mut payloads = BytesMut::new();
        let mut spans: Vec<(u64, usize, usize)> = Vec::new();
        let mut starts: Vec<u32> = Vec::new();
        let mut skipped = 0;
        while spans.len() < limit_records && (spans.is_empty() || payloads.len() < max_bytes) {
            let pos = self.read.pos;
            let next = self
                .reader
                .next(file.as_ref(), pos, seg_len, self.read.offset)
                .map_err(|e| {
                    Error::io("reading a segment", self.shared.segment_path(segment), e)
                })?;
            match next {
                Next::Record {
                    offset,
                    payload,
                    frame_len,
                } => {
                    spans.push((offset, payloads.len(), payload.len()));
                    starts.push(u32::try_from(pos).expect("segments are at most 4 GiB"));
                    payloads.extend_from_slice(payload);
                    self.read = Position {
                        offset: offset + 1,
                        segment,
                        pos: pos + frame_len as u64,
                    };
                }
                Next::End => break,
                Next::Damaged => {
                    let found = self
                        .reader
                        .resync(file.as_ref(), pos, seg_len, self.read.offset)
                        .map_err(|e| {
                            Error::io("reading a segment", self.shared.segment_path(segment), e)
                        })?;
                    let resume = match found {
                        Some((good_pos, good_offset)) => Position {
                            offset: good_offset,
                            segment,
                            pos: good_pos,
                        },
                        None => Position {
                            offset: next_base.unwrap_or(visible_end),
                            segment,
                            pos: seg_len,
                        },
                    };
                    skipped = resume.offset.saturating_sub(self.read.offset);
                    self.read = resume;
                    break;
                }
            }
        }
        self.count_quarantined(skipped);
        let first_offset = spans.first().map_or(self.read.offset, |s| s.0);
        self.register(InflightBatch {
            segment,
            first_offset,
            acked: vec![false; starts.len()],
            starts,
            next_unacked: 0,
            end: self.read,
        })?;
        if spans.is_empty() {
            return Ok(Step::Moved);
        }
        let payloads = payloads.freeze();
        Ok(Step::Records(
            spans
                .into_iter()
                .map(|(offset, start, len)| Record {
                    offset,
                    payload: payloads.slice(start..start + len),
                })
                .collect(),
        ))
    }

    /// Counts records skipped in a damaged range (stats and observer).
    fn count_quarantined(&self, records: u64) {
        if records == 0 {
            return;
        }
        self.shared
            .stats
            .quarantined_records
            .fetch_add(records, Ordering::Relaxed);
        if let Some(observer) = &self.shared.opts.observer {
            observer.on_quarantine(records);
        }
    }

    /// Moves reading to `to`, counting any records in between as quarantined (damage at the end
    /// of a sealed segment).
    fn skip_to(&mut self, to: Position) {
        let skipped = to.offset.saturating_sub(self.read.offset);
        if skipped > 0 {
            self.count_quarantined(skipped);
            // Nothing is in flight for the skipped range: record it as an empty, acknowledged
            // batch so the committed position can pass it.
            let _ = self.register(InflightBatch {
                segment: to.segment,
                first_offset: to.offset,
                starts: Vec::new(),
                acked: Vec::new(),
                next_unacked: 0,
                end: to,
            });
        }
        self.read = to;
    }

    fn register(&mut self, batch: InflightBatch) -> Result<(), Error> {
        let moved = {
            let mut st = self.shared.lock();
            let slot = slot_mut(&mut st, self.acker.slot, self.acker.generation)?;
            slot.inflight_records += batch.acked.len();
            slot.inflight.push_back(batch);
            let moved = slot.advance();
            if moved {
                st.ledger_dirty = true;
            }
            moved
        };
        if moved {
            self.shared.wake_committer();
        }
        Ok(())
    }
}

enum Step {
    Records(Vec<Record>),
    /// The read position moved (to a new segment or past damage) without records; read again.
    Moved,
    /// Nothing to read now (or no room for more records in flight).
    Nothing,
}
