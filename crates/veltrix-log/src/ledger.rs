//! The cursor ledger: every consumer's committed position, in one small checksummed file that is
//! replaced atomically (write `cursors.ledger.tmp`, fdatasync, rename over `cursors.ledger`,
//! fsync the directory).
//!
//! Layout, little-endian: `"VXLEDG01"`, `count: u32`, then per cursor `name_len: u16`, `name`,
//! `offset: u64`, `segment: u64`, `pos: u64`; then `crc32c: u32` over everything before it.

use std::io;
use std::path::Path;

use crate::fs::{Filesystem, read_full};

pub(crate) const LEDGER_FILE: &str = "cursors.ledger";
pub(crate) const LEDGER_TMP_FILE: &str = "cursors.ledger.tmp";
const MAGIC: &[u8; 8] = b"VXLEDG01";
/// Upper bound on a ledger we are willing to read (a ledger holds one entry per pipeline).
const LEDGER_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A position in the log: the record `offset`, found at byte `pos` of segment `segment`
/// (named by its base offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Offset of the record at this position.
    pub offset: u64,
    /// Base offset of the segment holding it.
    pub segment: u64,
    /// Byte position inside that segment.
    pub pos: u64,
}

pub(crate) fn encode(entries: &[(String, Position)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 48);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (name, p) in entries {
        let name = name.as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&p.offset.to_le_bytes());
        out.extend_from_slice(&p.segment.to_le_bytes());
        out.extend_from_slice(&p.pos.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Why a ledger could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LedgerCorrupt(pub(crate) &'static str);

pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<(String, Position)>, LedgerCorrupt> {
    if bytes.len() < MAGIC.len() + 8 {
        return Err(LedgerCorrupt("shorter than its header"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(LedgerCorrupt("checksum mismatch"));
    }
    if &body[..8] != MAGIC {
        return Err(LedgerCorrupt("bad magic"));
    }
    let mut rest = &body[8..];
    let mut take = |n: usize| -> Result<&[u8], LedgerCorrupt> {
        if rest.len() < n {
            return Err(LedgerCorrupt("truncated entry"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    let mut entries = Vec::new();
    for _ in 0..count {
        let name_len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let name = String::from_utf8(take(name_len)?.to_vec())
            .map_err(|_| LedgerCorrupt("cursor name is not UTF-8"))?;
        let mut u64_field = || -> Result<u64, LedgerCorrupt> {
            Ok(u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")))
        };
        let offset = u64_field()?;
        let segment = u64_field()?;
        let pos = u64_field()?;
        entries.push((
            name,
            Position {
                offset,
                segment,
                pos,
            },
        ));
    }
    Ok(entries)
}

/// Every cursor's name and position, as stored.
pub(crate) type Entries = Vec<(String, Position)>;

/// Reads the ledger in `dir`. `Ok(None)` when there is none yet.
pub(crate) fn read(
    fs: &dyn Filesystem,
    dir: &Path,
) -> io::Result<Option<Result<Entries, LedgerCorrupt>>> {
    let file = match fs.open(&dir.join(LEDGER_FILE), false) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.size()?;
    if len > LEDGER_BYTES_MAX {
        return Ok(Some(Err(LedgerCorrupt("larger than any ledger we write"))));
    }
    let mut bytes = vec![0; len as usize];
    let n = read_full(file.as_ref(), &mut bytes, 0)?;
    bytes.truncate(n);
    Ok(Some(decode(&bytes)))
}

/// Durably replaces the ledger in `dir` with `entries`.
pub(crate) fn write(
    fs: &dyn Filesystem,
    dir: &Path,
    entries: &[(String, Position)],
) -> io::Result<()> {
    let tmp = dir.join(LEDGER_TMP_FILE);
    match fs.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = fs.open(&tmp, true)?;
    file.append(&encode(entries))?;
    file.sync_data()?;
    drop(file);
    fs.rename(&tmp, &dir.join(LEDGER_FILE))?;
    fs.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Position)> {
        vec![
            (
                "archive".to_owned(),
                Position {
                    offset: 10,
                    segment: 0,
                    pos: 160,
                },
            ),
            (
                "audit".to_owned(),
                Position {
                    offset: 3,
                    segment: 0,
                    pos: 48,
                },
            ),
        ]
    }

    #[test]
    fn ledger_round_trips() {
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
    }

    #[test]
    fn any_damage_to_the_ledger_is_detected() {
        let clean = encode(&sample());
        for cut in 0..clean.len() {
            assert!(decode(&clean[..cut]).is_err(), "truncation at {cut}");
        }
        for bit in 0..clean.len() * 8 {
            let mut bytes = clean.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bytes).is_err(), "flip of bit {bit}");
        }
    }
}
