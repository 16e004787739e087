//! Local files that the lake's Parquet and CSV writers write into.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};

/// How much a file buffers before it writes: Parquet writers write many small pieces (page
/// headers, thrift fields), each of which would otherwise be a system call.
pub(crate) const BUFFER_BYTES: usize = 1 << 20;

/// How many bytes the files of one spool keep in memory together before the one that grows
/// past the budget moves to disk: small outputs never touch the disk, large ones use a bounded
/// amount of memory whatever their size.
const SPOOL_MEMORY_BYTES: usize = 16 << 20;

/// A file of a spool: in memory while the spool's memory budget lasts, on disk at `path` after.
#[derive(Clone)]
pub(crate) struct SpoolFile(Arc<Mutex<SpoolState>>);

struct SpoolState {
    /// Where the file goes when it leaves memory.
    path: std::path::PathBuf,
    memory: Option<Vec<u8>>,
    disk: Option<BufWriter<File>>,
    /// Bytes the spool's files hold in memory, shared by them.
    in_memory: Arc<std::sync::atomic::AtomicUsize>,
}

/// A finished spool file.
pub(crate) enum Spooled {
    /// Its bytes.
    Memory(Vec<u8>),
    /// Its path.
    Disk(std::path::PathBuf),
}

impl SpoolFile {
    /// A new, empty file that goes to `path` if it leaves memory; `in_memory` is the budget its
    /// spool shares.
    pub(crate) fn new(
        path: std::path::PathBuf,
        in_memory: Arc<std::sync::atomic::AtomicUsize>,
    ) -> SpoolFile {
        SpoolFile(Arc::new(Mutex::new(SpoolState {
            path,
            memory: Some(Vec::new()),
            disk: None,
            in_memory,
        })))
    }

    /// The file's content as written: its bytes, or its path once flushed.
    pub(crate) fn finish(&self) -> std::io::Result<Spooled> {
        let mut state = self.lock()?;
        if let Some(bytes) = state.memory.take() {
            state.release(bytes.len());
            return Ok(Spooled::Memory(bytes));
        }
        if let Some(disk) = state.disk.as_mut() {
            disk.flush()?;
        }
        Ok(Spooled::Disk(state.path.clone()))
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, SpoolState>> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("a writer of this file panicked"))
    }
}

impl SpoolState {
    fn release(&self, bytes: usize) {
        self.in_memory
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for SpoolState {
    fn drop(&mut self) {
        if let Some(bytes) = &self.memory {
            self.release(bytes.len());
        }
    }
}

impl Write for SpoolFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let mut state = self.lock()?;
        if state.memory.is_some() {
            let before = state.in_memory.fetch_add(bytes.len(), Ordering::Relaxed);
            if before + bytes.len() <= SPOOL_MEMORY_BYTES {
                if let Some(memory) = state.memory.as_mut() {
                    memory.extend_from_slice(bytes);
                }
                return Ok(());
            }
            // Over budget: this file moves to disk with what it has.
            let held = state.memory.take().unwrap_or_default();
            state.release(held.len() + bytes.len());
            let mut disk = BufWriter::with_capacity(BUFFER_BYTES, File::create(&state.path)?);
            disk.write_all(&held)?;
            state.disk = Some(disk);
        }
        match state.disk.as_mut() {
            Some(disk) => disk.write_all(bytes),
            None => Err(std::io::Error::other("the spool file was finished")),
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
        let budget = Arc::new(std::sync::atomic::AtomicUsize::new(0));
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
        assert_eq!(budget.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
