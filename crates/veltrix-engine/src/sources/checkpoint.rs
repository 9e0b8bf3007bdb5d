//! The file source's checkpoint file: where reading resumes after a restart.
//!
//! Layout: `<checkpoint_dir>/checkpoints.json`, two parts: a header line
//! `veltrix-file-checkpoints v1 crc32c=<8 hex digits>` and then a JSON array with one object
//! per file: `{dev, ino, fingerprint_bytes, fingerprint_crc32c, path, offset, line,
//! lines_known, skipping}`. The checksum covers the JSON. `offset` is the first byte not yet
//! stored (so everything before it is durable in a queue); `line` is the number of the line
//! starting there.
//!
//! A file is known by its identity (device + inode), not by its path (rotations rename files).
//! Because an inode number is reused once a file is deleted, the entry also keeps a
//! fingerprint: the CRC32C of the file's first `fingerprint_bytes` bytes (at most
//! [`FINGERPRINT_BYTES`], all before `offset`, so they no longer change). A file whose
//! identity matches but whose first bytes do not is a different file: read from the start.
//!
//! Invariants: the file is replaced atomically (write `checkpoints.json.tmp`, fsync it, rename
//! it over the old one, fsync the directory), so a crash leaves the old or the new version,
//! never a mix. A file that still cannot be read (damaged disk, edited by hand) is reported and
//! treated as no checkpoint at all, from the beginning of every file: duplicates, never loss.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes at the start of a file that identify it beyond its inode.
pub(crate) const FINGERPRINT_BYTES: u64 = 1024;

const FILE_NAME: &str = "checkpoints.json";
const HEADER: &str = "veltrix-file-checkpoints v1 crc32c=";

/// A file's identity while it exists: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl FileId {
    pub(crate) fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The CRC32C of a file's first `bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Fingerprint {
    pub(crate) bytes: u64,
    pub(crate) crc: u32,
}

impl Fingerprint {
    /// The fingerprint of the first `min(upto, FINGERPRINT_BYTES)` bytes of `file` (fewer when
    /// the file is shorter).
    pub(crate) fn of(file: &File, upto: u64) -> io::Result<Fingerprint> {
        let want = upto.min(FINGERPRINT_BYTES) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Fingerprint {
            bytes: got as u64,
            crc: crc32c::crc32c(&buf[..got]),
        })
    }

    /// Whether `file` still starts with the bytes this fingerprint was taken of.
    pub(crate) fn matches(&self, file: &File) -> io::Result<bool> {
        if self.bytes == 0 {
            return Ok(true);
        }
        Ok(Fingerprint::of(file, self.bytes)? == *self)
    }
}

/// Where reading a file resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    #[serde(flatten)]
    pub(crate) id: FileId,
    pub(crate) fingerprint_bytes: u64,
    pub(crate) fingerprint_crc32c: u32,
    /// Where the file was last seen (for people reading the file and for logs).
    pub(crate) path: String,
    /// The first byte not yet stored.
    pub(crate) offset: u64,
    /// The number of the line starting at `offset` (meaningful when `lines_known`).
    pub(crate) line: u64,
    /// False when reading started at the file's end (line numbers count from there).
    pub(crate) lines_known: bool,
    /// `offset` is inside a line too long to keep: skip to its newline.
    pub(crate) skipping: bool,
}

impl Entry {
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            bytes: self.fingerprint_bytes,
            crc: self.fingerprint_crc32c,
        }
    }
}

/// What loading found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// No checkpoint file: the source never ran with this directory.
    None,
    Entries(Vec<Entry>),
    /// A checkpoint file exists but cannot be used (why): start every file from the beginning.
    Unreadable(String),
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Reads the checkpoint file of `dir`.
pub(crate) fn load(dir: &Path) -> Loaded {
    let mut bytes = Vec::new();
    match File::open(path(dir)).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => match decode(&bytes) {
            Ok(entries) => Loaded::Entries(entries),
            Err(why) => Loaded::Unreadable(why),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::None,
        Err(e) => Loaded::Unreadable(format!("cannot read it: {e}")),
    }
}

/// Replaces the checkpoint file of `dir` (created if needed) atomically and durably.
pub(crate) fn save(dir: &Path, entries: &[Entry]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(entries))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path(dir))?;
    // The rename is durable once the directory is.
    File::open(dir)?.sync_all()
}

pub(crate) fn encode(entries: &[Entry]) -> Vec<u8> {
    let json = serde_json::to_vec(entries).expect("entries serialize");
    let mut out = format!("{HEADER}{:08x}\n", crc32c::crc32c(&json)).into_bytes();
    out.extend_from_slice(&json);
    out.push(b'\n');
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line (a torn or foreign file)")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "the header is not text")?;
    // Exactly as written (lowercase, 8 digits): any other spelling is damage.
    let crc = header
        .strip_prefix(HEADER)
        .and_then(|hex| {
            let crc = u32::from_str_radix(hex, 16).ok()?;
            (format!("{crc:08x}") == hex).then_some(crc)
        })
        .ok_or_else(|| format!("unknown header {header:?}"))?;
    let json = bytes[newline + 1..]
        .strip_suffix(b"\n")
        .ok_or("the file is cut short")?;
    if crc32c::crc32c(json) != crc {
        return Err("checksum mismatch (the file is damaged)".to_owned());
    }
    serde_json::from_slice(json).map_err(|e| format!("invalid content: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ino: u64, offset: u64) -> Entry {
        Entry {
            id: FileId { dev: 2049, ino },
            fingerprint_bytes: 37,
            fingerprint_crc32c: 0xDEAD_BEEF,
            path: format!("/var/log/app-{ino}.ndjson"),
            offset,
            line: 12,
            lines_known: true,
            skipping: false,
        }
    }

    #[test]
    fn entries_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Loaded::None);
        let entries = vec![entry(1, 100), entry(2, u64::MAX)];
        save(dir.path(), &entries).unwrap();
        assert_eq!(load(dir.path()), Loaded::Entries(entries.clone()));
        // Replacing keeps only the new version, and no temporary file.
        save(dir.path(), &entries[..1]).unwrap();
        assert_eq!(load(dir.path()), Loaded::Entries(entries[..1].to_vec()));
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn the_checkpoint_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("sources").join("logs");
        save(&nested, &[entry(1, 5)]).unwrap();
        assert_eq!(load(&nested), Loaded::Entries(vec![entry(1, 5)]));
    }

    #[test]
    fn every_torn_prefix_and_every_flipped_bit_is_reported_never_misread() {
        let good = encode(&[entry(1, 100), entry(2, 200)]);
        for len in 0..good.len() {
            assert!(
                decode(&good[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip of bit {bit} of byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn a_damaged_file_loads_as_unreadable_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(path(dir.path()), b"{\"half\": ").unwrap();
        match load(dir.path()) {
            Loaded::Unreadable(why) => assert!(why.contains("header"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut good = encode(&[entry(1, 100)]);
        let last = good.len() - 3;
        good[last] = b'9';
        fs::write(path(dir.path()), &good).unwrap();
        match load(dir.path()) {
            Loaded::Unreadable(why) => assert!(why.contains("checksum"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fingerprint_recognises_the_same_first_bytes_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"first line\nsecond line\n").unwrap();
        let f = File::open(&p).unwrap();
        let fp = Fingerprint::of(&f, 11).unwrap();
        assert_eq!(fp.bytes, 11);
        assert!(fp.matches(&f).unwrap());
        // Growing the file keeps the first bytes.
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"third\n")
            .unwrap();
        assert!(fp.matches(&f).unwrap());
        // Rewritten (copytruncate, or another file on a reused inode): not the same.
        fs::write(&p, b"other line\n").unwrap();
        assert!(!fp.matches(&f).unwrap());
        // Shorter than the fingerprint: not the same.
        fs::write(&p, b"first").unwrap();
        assert!(!fp.matches(&f).unwrap());
        // Nothing fingerprinted matches anything.
        assert!(Fingerprint::default().matches(&f).unwrap());
        // Capped at FINGERPRINT_BYTES.
        fs::write(&p, vec![b'x'; 5000]).unwrap();
        assert_eq!(Fingerprint::of(&f, 4000).unwrap().bytes, FINGERPRINT_BYTES);
    }
}
