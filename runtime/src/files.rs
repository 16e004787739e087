//! Local files that the lake's Parquet and CSV writers write into.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};

/// How much a file buffers before it writes: Parquet writers write many small pieces (page
/// headers, thrift fields), each of which would otherwise be a system call.
pub(crate) const BUFFER_BYTES: usize = 1 << 20;

/// How many bytes the files of one spool writing to an object store keep in memory together
/// before the one that grows past the budget moves to disk: small outputs never touch the disk,
/// large ones use a bounded amount of memory whatever their size.
pub(crate) const SPOOL_MEMORY_BYTES: usize = 16 << 20;

/// The write buffer of a spool file on disk. A spool holds one open file per partition folder,
/// so this is memory times the folders being written; Parquet's large pieces (pages) pass
/// through it unbuffered anyway.
const SPOOL_BUFFER_BYTES: usize = 64 << 10;

/// The memory that the files of one spool may hold together, shared by them.
pub(crate) struct SpoolBudget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl SpoolBudget {
    /// A budget of `limit` bytes; 0 puts every file on disk from its first byte.
    pub(crate) fn new(limit: usize) -> Arc<SpoolBudget> {
        Arc::new(SpoolBudget {
            limit,
            used: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Whether its holders together use more than the budget allows.
    pub(crate) fn exceeded(&self) -> bool {
        self.used.load(std::sync::atomic::Ordering::Relaxed) > self.limit
    }

    /// Bytes held in memory now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One holder's share of a [`SpoolBudget`]: what it counts is counted in the budget too, and
/// given back when released or when the share is dropped (a write that failed).
pub(crate) struct BudgetShare {
    budget: Arc<SpoolBudget>,
    bytes: usize,
}

impl BudgetShare {
    /// An empty share of `budget`.
    pub(crate) fn new(budget: Arc<SpoolBudget>) -> BudgetShare {
        BudgetShare { budget, bytes: 0 }
    }

    /// Counts `bytes` more.
    pub(crate) fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.budget
            .used
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gives `bytes` of the share back.
    pub(crate) fn release(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budget
            .used
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bytes this share counts.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the holders of the budget together use more than it allows.
    pub(crate) fn budget_exceeded(&self) -> bool {
        self.budget.exceeded()
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

/// A file of a spool: in memory while the spool's memory budget lasts, on disk at `path` after.
#[derive(Clone)]
pub(crate) struct SpoolFile(Arc<Mutex<SpoolState>>);

struct SpoolState {
    /// Where the file goes when it leaves memory.
    path: std::path::PathBuf,
    memory: Option<Vec<u8>>,
    disk: Option<BufWriter<File>>,
    /// Whether the file is complete: on disk and closed, or still in memory.
    closed: bool,
    /// The bytes in `memory`, counted in the memory budget the spool's files share.
    in_memory: BudgetShare,
}

/// A finished spool file.
pub(crate) enum Spooled {
    /// Its bytes.
    Memory(Vec<u8>),
    /// Its path.
    Disk(std::path::PathBuf),
}

impl SpoolFile {
    /// A new, empty file that goes to `path` if it leaves memory; `budget` is the memory its
    /// spool shares.
    pub(crate) fn new(path: std::path::PathBuf, budget: Arc<SpoolBudget>) -> SpoolFile {
        SpoolFile(Arc::new(Mutex::new(SpoolState {
            path,
            memory: Some(Vec::new()),
            disk: None,
            closed: false,
            in_memory: BudgetShare::new(budget),
        })))
    }

    /// Ends a file that is complete: a file on disk is flushed and its write buffer freed at
    /// once, rather than when the whole spool finishes, so a spool holds buffers only for the
    /// files still being written. A file in memory stays as it is.
    pub(crate) fn close(&self) -> std::io::Result<()> {
        let mut state = self.lock()?;
        if let Some(mut disk) = state.disk.take() {
            disk.flush()?;
        }
        state.closed = true;
        Ok(())
    }

    /// The file's content as written: its bytes, or its path once flushed.
    pub(crate) fn finish(&self) -> std::io::Result<Spooled> {
        let mut state = self.lock()?;
        if let Some(bytes) = state.memory.take() {
            state.in_memory.release(bytes.len());
            return Ok(Spooled::Memory(bytes));
        }
        if let Some(mut disk) = state.disk.take() {
            disk.flush()?;
        }
        state.closed = true;
        Ok(Spooled::Disk(state.path.clone()))
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, SpoolState>> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("a writer of this file panicked"))
    }
}

impl Write for SpoolFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.lock()?;
        if state.memory.is_some() && !state.closed {
            state.in_memory.add(bytes.len());
            if !state.in_memory.budget_exceeded() {
                if let Some(memory) = state.memory.as_mut() {
                    memory.extend_from_slice(bytes);
                }
                return Ok(());
            }
            // Over budget: this file moves to disk with what it has, and its share is freed.
            let held = state.memory.take().unwrap_or_default();
            let share = state.in_memory.bytes();
            state.in_memory.release(share);
            let mut disk = BufWriter::with_capacity(SPOOL_BUFFER_BYTES, File::create(&state.path)?);
            disk.write_all(&held)?;
            state.disk = Some(disk);
        }
        match state.disk.as_mut() {
            Some(disk) => disk.write_all(bytes),
            None => Err(std::io::Error::other("the spool file was closed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.lock()?.disk.as_mut() {
            Some(disk) => disk.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_files_stay_in_memory_until_the_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpoolBudget::new(SPOOL_MEMORY_BYTES);
        let mut small = SpoolFile::new(dir.path().join("small"), budget.clone());
        let mut large = SpoolFile::new(dir.path().join("large"), budget.clone());
        let ten_mib = vec![7u8; 10 << 20];
        small.write_all(&ten_mib).unwrap();
        // 10 MiB more would pass the 16 MiB budget: this file moves to disk, whole.
        large.write_all(&ten_mib[..1 << 20]).unwrap();
        large.write_all(&ten_mib).unwrap();
        large.write_all(b"end").unwrap();
        assert!(!dir.path().join("small").exists());
        match large.finish().unwrap() {
            Spooled::Disk(path) => {
                let bytes = std::fs::read(path).unwrap();
                assert_eq!(bytes.len(), (11 << 20) + 3);
                assert!(bytes.ends_with(b"end"));
            }
            Spooled::Memory(_) => panic!("the large file should be on disk"),
        }
        match small.finish().unwrap() {
            Spooled::Memory(bytes) => assert_eq!(bytes, ten_mib),
            Spooled::Disk(_) => panic!("the small file fits the budget"),
        }
        // Finished files give their memory back to the budget.
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn without_a_budget_files_go_to_disk_and_close_early() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpoolBudget::new(0);
        let mut file = SpoolFile::new(dir.path().join("file"), budget.clone());
        file.write_all(b"PAR1").unwrap();
        file.write_all(b" and the rest").unwrap();
        file.close().unwrap();
        // Closed means flushed: the bytes are on disk before the spool finishes.
        assert_eq!(
            std::fs::read(dir.path().join("file")).unwrap(),
            b"PAR1 and the rest"
        );
        assert!(
            file.write_all(b"more").is_err(),
            "a closed file takes no more"
        );
        match file.finish().unwrap() {
            Spooled::Disk(path) => assert_eq!(path, dir.path().join("file")),
            Spooled::Memory(_) => panic!("without a budget nothing stays in memory"),
        }
        assert_eq!(budget.used(), 0);
    }
}
