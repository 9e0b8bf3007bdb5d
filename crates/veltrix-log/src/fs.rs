//! The `Filesystem` seam: every byte the log reads or writes goes through these traits, so tests
//! can inject failed writes, failed fsyncs, ENOSPC and power loss (through [`SimFs`]) while the
//! production path uses the real filesystem ([`OsFs`]) through the same code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A directory-structured store of files. Paths are absolute or relative to the process.
pub trait Filesystem: Send + Sync + fmt::Debug + 'static {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) directly inside `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for reading and appending, creating it (empty) when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FileHandle>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. Writes always go to the end (the log is append-only).
pub trait FileHandle: Send + Sync {
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads at `pos`; returns how many bytes were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Appends all of `buf` at the end of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Truncates (or extends) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
}

/// Reads `buf.len()` bytes at `pos`, or fewer at end of file; returns how many were read.
pub(crate) fn read_full(file: &dyn FileHandle, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl Filesystem for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FileHandle>> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

struct OsFile(File);

impl FileHandle for OsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Faults a [`SimFs`] injects into the operations that follow.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Every write fails with EIO (nothing is written).
    pub fail_writes: bool,
    /// Every `sync_data` and `sync_dir` fails with EIO.
    pub fail_syncs: bool,
    /// Total bytes all files may hold; a write past it writes what fits, then fails with ENOSPC.
    pub capacity_bytes: Option<u64>,
}

/// An in-memory filesystem that models power loss: data not yet `sync_data`ed and directory
/// entries not yet `sync_dir`ed disappear at [`SimFs::crash`]. It also backs the log's `memory`
/// durability mode (which never syncs and never crashes on purpose).
///
/// Crash points: every mutating operation (append, truncate, fdatasync, directory sync, file
/// creation, rename, removal) is counted ([`SimFs::mutations`]); [`SimFs::crash_after`] arms a
/// power loss at the n-th one from now, so a test can crash a log between any two of its
/// writes. [`SimFs::kill`] models a process crash instead (everything written survives).
#[derive(Clone, Default)]
pub struct SimFs {
    inner: Arc<Mutex<SimInner>>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFs").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct SimInner {
    files: HashMap<u64, SimFile>,
    /// The namespace as the running process sees it.
    names: BTreeMap<PathBuf, u64>,
    /// The namespace as it would be found after a power loss.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    next_id: u64,
    /// Bumped by every crash; handles from an older epoch fail.
    epoch: u64,
    /// Between `crash` and `restart` every operation fails, as if the machine were off.
    down: bool,
    faults: Faults,
    /// Mutating operations since the filesystem was created.
    mutations: u64,
    /// An armed power loss: mutating operations left before it, and how to tear unsynced tails.
    armed: Option<(u64, Tear)>,
}

/// Chooses, per file with unsynced bytes, the fraction of them that survives a power loss.
type Tear = Box<dyn FnMut() -> f64 + Send>;

#[derive(Default)]
struct SimFile {
    data: Vec<u8>,
    synced_len: usize,
}

impl SimInner {
    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.data.len() as u64).sum()
    }

    /// Counts one mutating operation; when it is the armed crash point, the machine loses power
    /// instead of doing it (`before` runs first: an append puts its bytes in unsynced, so the
    /// tear can cut through them) and the operation fails.
    fn mutation(&mut self, before: impl FnOnce(&mut SimInner)) -> io::Result<()> {
        self.mutations += 1;
        let Some((left, _)) = self.armed.as_mut() else {
            return Ok(());
        };
        *left = left.saturating_sub(1);
        if *left > 0 {
            return Ok(());
        }
        let (_, mut tear) = self.armed.take().expect("checked above");
        before(self);
        self.power_loss(&mut tear);
        Err(eio("power lost at an armed crash point"))
    }

    fn power_loss(&mut self, tear: &mut dyn FnMut() -> f64) {
        self.epoch += 1;
        self.down = true;
        self.names = self.durable_names.clone();
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        self.files.retain(|id, _| live.contains(id));
        for file in self.files.values_mut() {
            let unsynced = file.data.len() - file.synced_len;
            let keep = if unsynced > 0 {
                let fraction = tear().clamp(0.0, 1.0);
                file.synced_len + (unsynced as f64 * fraction) as usize
            } else {
                file.synced_len
            };
            file.data.truncate(keep);
            file.synced_len = file.data.len();
        }
        self.faults = Faults::default();
        self.armed = None;
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

impl SimFs {
    /// An empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the active faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Simulates a power loss: open handles die, unsynced directory changes are undone, and each
    /// file keeps its synced bytes plus, when `tear` yields a fraction, that fraction of its
    /// unsynced tail (a torn write). `tear` is called once per file with unsynced bytes and
    /// returns a value in `0.0..=1.0`. Every operation then fails until [`SimFs::restart`], so
    /// whatever the crashed process still does cannot reach the "disk".
    pub fn crash(&self, mut tear: impl FnMut() -> f64) {
        self.lock().power_loss(&mut tear);
    }

    /// Arms a power loss at the `n`-th mutating operation from now (`n` ≥ 1): that operation
    /// does not complete — an append's bytes reach the unsynced tail first, so `tear` can keep
    /// part of them (a torn write) — and the filesystem crashes as with [`SimFs::crash`].
    /// Re-arming replaces the previous arming; a crash disarms.
    pub fn crash_after(&self, n: u64, tear: impl FnMut() -> f64 + Send + 'static) {
        self.lock().armed = Some((n.max(1), Box::new(tear)));
    }

    /// Forgets an armed crash point that has not fired.
    pub fn disarm(&self) {
        self.lock().armed = None;
    }

    /// Mutating operations so far (appends, truncations, fdatasyncs, directory syncs, file
    /// creations, renames, removals), counting the one an armed crash interrupted.
    pub fn mutations(&self) -> u64 {
        self.lock().mutations
    }

    /// Whether the filesystem is down (crashed and not restarted).
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Simulates a process crash (kill -9): open handles die and every operation fails until
    /// [`SimFs::restart`], but everything written and every directory change survives (the
    /// kernel still has them), synced or not.
    pub fn kill(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.down = true;
        inner.durable_names = inner.names.clone();
        for file in inner.files.values_mut() {
            file.synced_len = file.data.len();
        }
        inner.faults = Faults::default();
        inner.armed = None;
    }

    /// Powers the filesystem back on after [`SimFs::crash`].
    pub fn restart(&self) {
        self.lock().down = false;
    }

    fn lock_up(&self) -> io::Result<MutexGuard<'_, SimInner>> {
        let inner = self.lock();
        if inner.down {
            return Err(eio("filesystem is down (simulated power loss)"));
        }
        Ok(inner)
    }

    /// Reads a whole file, bypassing handles (for tests and damage injection).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let inner = self.lock();
        let id = inner.names.get(path)?;
        Some(inner.files[id].data.clone())
    }

    /// Overwrites a whole file durably (for damage injection in tests).
    pub fn write_file(&self, path: &Path, data: Vec<u8>) {
        let mut inner = self.lock();
        let id = match inner.names.get(path) {
            Some(id) => *id,
            None => {
                let id = inner.next_id;
                inner.next_id += 1;
                inner.names.insert(path.to_path_buf(), id);
                inner.durable_names.insert(path.to_path_buf(), id);
                id
            }
        };
        let synced_len = data.len();
        inner.files.insert(id, SimFile { data, synced_len });
    }
}

impl Filesystem for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.lock_up()?;
        for ancestor in dir.ancestors() {
            inner.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let inner = self.lock_up()?;
        if !inner.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(inner
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FileHandle>> {
        let mut inner = self.lock_up()?;
        let id = match inner.names.get(path) {
            Some(id) => *id,
            None if create => {
                inner.mutation(|_| {})?;
                let id = inner.next_id;
                inner.next_id += 1;
                inner.names.insert(path.to_path_buf(), id);
                inner.files.insert(id, SimFile::default());
                id
            }
            None => return Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
        };
        Ok(Box::new(SimHandle {
            fs: self.clone(),
            id,
            epoch: inner.epoch,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.lock_up()?;
        inner.mutation(|_| {})?;
        let id = inner
            .names
            .remove(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        if !inner.durable_names.values().any(|d| *d == id) {
            inner.files.remove(&id);
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.lock_up()?;
        inner.mutation(|_| {})?;
        let id = inner
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        inner.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.lock_up()?;
        inner.mutation(|_| {})?;
        if inner.faults.fail_syncs {
            return Err(eio("sync_dir"));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        inner.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, u64)> = inner
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        inner.durable_names.extend(current);
        let live: BTreeSet<u64> = inner
            .names
            .values()
            .chain(inner.durable_names.values())
            .copied()
            .collect();
        inner.files.retain(|id, _| live.contains(id));
        Ok(())
    }
}

struct SimHandle {
    fs: SimFs,
    id: u64,
    epoch: u64,
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut SimInner, u64) -> io::Result<T>) -> io::Result<T> {
        let mut inner = self.fs.lock_up()?;
        if inner.epoch != self.epoch || !inner.files.contains_key(&self.id) {
            return Err(eio("handle outlived a simulated crash"));
        }
        f(&mut inner, self.id)
    }
}

impl FileHandle for SimHandle {
    fn size(&self) -> io::Result<u64> {
        self.with(|inner, id| Ok(inner.files[&id].data.len() as u64))
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.with(|inner, id| {
            let data = &inner.files[&id].data;
            let start = (pos as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        })
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with(|inner, id| {
            inner.mutation(|inner| {
                if let Some(file) = inner.files.get_mut(&id) {
                    file.data.extend_from_slice(buf);
                }
            })?;
            if inner.faults.fail_writes {
                return Err(eio("write"));
            }
            let room = match inner.faults.capacity_bytes {
                Some(cap) => cap.saturating_sub(inner.used_bytes()) as usize,
                None => usize::MAX,
            };
            let file = inner.files.get_mut(&id).expect("checked by with()");
            if buf.len() > room {
                file.data.extend_from_slice(&buf[..room]);
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            file.data.extend_from_slice(buf);
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|inner, id| {
            inner.mutation(|_| {})?;
            let file = inner.files.get_mut(&id).expect("checked by with()");
            file.data.resize(len as usize, 0);
            file.synced_len = file.synced_len.min(file.data.len());
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|inner, id| {
            inner.mutation(|_| {})?;
            if inner.faults.fail_syncs {
                return Err(eio("fsync"));
            }
            let file = inner.files.get_mut(&id).expect("checked by with()");
            file.synced_len = file.data.len();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_bytes_and_synced_names() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut a = fs.open(&dir.join("a"), true).unwrap();
        a.append(b"durable").unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        a.append(b"-volatile").unwrap();
        let mut b = fs.open(&dir.join("b"), true).unwrap();
        b.append(b"never named durably").unwrap();
        b.sync_data().unwrap();
        fs.crash(|| 0.0);
        fs.restart();
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"durable");
        assert!(fs.read_file(&dir.join("b")).is_none());
        assert!(a.size().is_err(), "handles die with the crash");
    }

    #[test]
    fn an_armed_crash_point_interrupts_exactly_the_nth_mutation() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut a = fs.open(&dir.join("a"), true).unwrap(); // mutation 1
        fs.sync_dir(dir).unwrap(); // 2
        a.append(b"0123").unwrap(); // 3
        a.sync_data().unwrap(); // 4
        assert_eq!(fs.mutations(), 4);
        fs.crash_after(2, || 0.5);
        a.append(b"4567").unwrap(); // the 1st from now: done
        let err = a.append(b"89ab").unwrap_err(); // the 2nd: power lost, half the tail kept
        assert!(err.to_string().contains("power lost"), "{err}");
        assert!(fs.is_down());
        assert!(a.size().is_err());
        fs.restart();
        // Unsynced were "4567" + "89ab"; half of those 8 bytes survive.
        assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"01234567");
        assert_eq!(fs.mutations(), 6);
    }

    #[test]
    fn kill_keeps_everything_written_even_unsynced() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut a = fs.open(&dir.join("a"), true).unwrap();
        a.append(b"written, never synced").unwrap();
        fs.kill();
        assert!(
            a.append(b"x").is_err(),
            "the dead process writes nothing more"
        );
        fs.restart();
        assert_eq!(
            fs.read_file(&dir.join("a")).unwrap(),
            b"written, never synced"
        );
        fs.crash(|| 0.0);
        fs.restart();
        assert_eq!(
            fs.read_file(&dir.join("a")).unwrap(),
            b"written, never synced",
            "after a kill the kernel has it: a later power loss keeps it too"
        );
    }

    #[test]
    fn capacity_fault_answers_enospc_after_a_partial_write() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut f = fs.open(Path::new("/d/f"), true).unwrap();
        fs.set_faults(Faults {
            capacity_bytes: Some(4),
            ..Faults::default()
        });
        let err = f.append(b"123456").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        assert_eq!(f.size().unwrap(), 4);
    }
}
