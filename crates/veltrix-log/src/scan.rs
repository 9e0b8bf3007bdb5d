//! Sequential reading of one segment through a bounded window, shared by recovery, cursors and
//! the integrity check. The window grows only to fit one record (at most `record_bytes_max`), so
//! memory does not depend on the segment or backlog size.

use std::io;

use crate::frame::{self, Decoded, HEADER_BYTES};
use crate::fs::{FileHandle, read_full};

/// What [`SegmentReader::next`] found.
#[derive(Debug)]
pub(crate) enum Next<'a> {
    /// The record with the expected offset.
    Record {
        offset: u64,
        payload: &'a [u8],
        frame_len: usize,
    },
    /// `pos == limit`: nothing more to read in this range.
    End,
    /// The bytes at `pos` are not the expected record: a checksum failure, an impossible length,
    /// a frame cut short by `limit`, or a valid frame carrying the wrong offset.
    Damaged,
}

pub(crate) struct SegmentReader {
    window: Vec<u8>,
    /// File position of `window[0]`.
    window_pos: u64,
    window_len: usize,
    chunk_bytes: usize,
    record_bytes_max: u32,
}

impl SegmentReader {
    pub(crate) fn new(chunk_bytes: usize, record_bytes_max: u32) -> Self {
        Self {
            window: Vec::new(),
            window_pos: 0,
            window_len: 0,
            chunk_bytes: chunk_bytes.max(HEADER_BYTES),
            record_bytes_max,
        }
    }

    /// Forgets the window (call when switching files).
    pub(crate) fn reset(&mut self) {
        self.window_len = 0;
        self.window_pos = 0;
    }

    /// Returns up to `want` bytes (at least `want` when the file holds them before `limit`) at
    /// `pos`, refilling the window from the file when needed.
    fn bytes_at(
        &mut self,
        file: &dyn FileHandle,
        pos: u64,
        want: usize,
        limit: u64,
    ) -> io::Result<&[u8]> {
        let available = (limit.saturating_sub(pos) as usize).min(want);
        let in_window = pos >= self.window_pos
            && pos + available as u64 <= self.window_pos + self.window_len as u64;
        if !in_window {
            let fill = (limit.saturating_sub(pos) as usize).min(self.chunk_bytes.max(want));
            if self.window.len() < fill {
                self.window.resize(fill, 0);
            }
            let n = read_full(file, &mut self.window[..fill], pos)?;
            self.window_pos = pos;
            self.window_len = n;
        }
        let start = (pos - self.window_pos) as usize;
        let end = (start + available).min(self.window_len);
        Ok(&self.window[start..end])
    }

    /// Reads the record at `pos` (which must carry `expected` as its offset) within `..limit`.
    pub(crate) fn next(
        &mut self,
        file: &dyn FileHandle,
        pos: u64,
        limit: u64,
        expected: u64,
    ) -> io::Result<Next<'_>> {
        if pos >= limit {
            return Ok(Next::End);
        }
        let max = self.record_bytes_max;
        let head = self.bytes_at(file, pos, HEADER_BYTES, limit)?;
        let frame_len = match frame::decode(head, max) {
            Decoded::Incomplete { frame_len: Some(n) } => n,
            Decoded::Incomplete { frame_len: None } | Decoded::Corrupt => return Ok(Next::Damaged),
            Decoded::Record { frame_len, .. } => frame_len,
        };
        if pos + frame_len as u64 > limit {
            return Ok(Next::Damaged);
        }
        let bytes = self.bytes_at(file, pos, frame_len, limit)?;
        match frame::decode(bytes, max) {
            Decoded::Record {
                offset,
                payload,
                frame_len,
            } if offset == expected => Ok(Next::Record {
                offset,
                payload,
                frame_len,
            }),
            _ => Ok(Next::Damaged),
        }
    }

    /// After damage at `from`, finds the next valid record in `from+1..limit` whose offset is
    /// plausible: at least `min_offset` and no further past it than the bytes skipped could
    /// have held. Returns its position and offset.
    pub(crate) fn resync(
        &mut self,
        file: &dyn FileHandle,
        from: u64,
        limit: u64,
        min_offset: u64,
    ) -> io::Result<Option<(u64, u64)>> {
        let max = self.record_bytes_max;
        let mut pos = from + 1;
        while pos + HEADER_BYTES as u64 <= limit {
            let skipped_bytes = pos - from;
            let head = self.bytes_at(file, pos, HEADER_BYTES, limit)?;
            let offset = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
            let plausible = offset >= min_offset
                && offset - min_offset <= skipped_bytes / HEADER_BYTES as u64 + 1
                && len <= max
                && pos + HEADER_BYTES as u64 + u64::from(len) <= limit;
            if plausible {
                let frame_len = HEADER_BYTES + len as usize;
                let bytes = self.bytes_at(file, pos, frame_len, limit)?;
                if let Decoded::Record { offset, .. } = frame::decode(bytes, max) {
                    return Ok(Some((pos, offset)));
                }
            }
            pos += 1;
        }
        Ok(None)
    }
}
