//! Checkpoints: each block's output saved as a Parquet file, keyed by pipeline, run and block,
//! so that `resume` and `run --only` can start from the middle of the graph.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::io::parquet::write::BatchedWriter;
use polars::prelude::{
    DataFrame, ParquetCompression, ParquetReader, ParquetWriter, SerReader, StatisticsOptions,
};

use crate::error::{BlockError, BlockResult};

/// Where checkpoints live when nothing is configured.
pub const DEFAULT_DIR: &str = ".baton/checkpoints";

/// A folder of checkpoints.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    root: PathBuf,
}

impl Checkpoints {
    /// Checkpoints under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Checkpoints {
        Checkpoints { root: root.into() }
    }

    /// The file holding one block's output in one run.
    pub fn path(&self, pipeline: &str, run_id: &str, block: &str) -> PathBuf {
        self.root
            .join(pipeline)
            .join(run_id)
            .join(format!("{block}.parquet"))
    }

    /// Writes a frame to `path` on the blocking pool and returns the file's size.
    ///
    /// The file is written under a temporary name and renamed into place, so a crash never
    /// leaves a truncated checkpoint that a later `resume` would trust.
    pub async fn write(path: PathBuf, mut frame: DataFrame) -> BlockResult<u64> {
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    BlockError::fatal(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            let partial = path.with_extension("parquet.partial");
            let file = File::create(&partial).map_err(|e| {
                BlockError::fatal(format!("cannot create {}: {e}", partial.display()))
            })?;
            // Checkpoints are written on every run and read rarely, so they skip what costs CPU
            // and helps only readers that prune: compression and column statistics.
            ParquetWriter::new(file)
                .with_compression(ParquetCompression::Uncompressed)
                .with_statistics(StatisticsOptions::empty())
                .finish(&mut frame)
                .map_err(|e| {
                    BlockError::fatal(format!("cannot write checkpoint {}: {e}", path.display()))
                })?;
            std::fs::rename(&partial, &path).map_err(|e| {
                BlockError::fatal(format!("cannot publish checkpoint {}: {e}", path.display()))
            })?;
            Ok(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
        })
        .await
        .map_err(|e| BlockError::fatal(format!("checkpoint writer panicked: {e}")))?
    }

    /// A checkpoint at `path` written batch by batch, for a block whose rows stream past.
    pub fn writer(path: PathBuf) -> CheckpointWriter {
        CheckpointWriter {
            partial: path.with_extension("parquet.partial"),
            path,
            writer: None,
        }
    }

    /// Reads a checkpoint back.
    pub async fn read(path: PathBuf) -> BlockResult<DataFrame> {
        tokio::task::spawn_blocking(move || read_now(&path))
            .await
            .map_err(|e| BlockError::fatal(format!("checkpoint reader panicked: {e}")))?
    }

    /// Deletes a checkpoint and its run folder when that becomes empty. A file that is already
    /// gone is not an error.
    pub fn remove(path: &Path) {
        let _ = std::fs::remove_file(path);
        if let Some(parent) = path.parent() {
            // Fails, harmlessly, while other blocks' checkpoints remain in the folder.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// How many rows a checkpoint holds, from its footer only (0 when it cannot be read; the run
/// that reads the rows reports the error).
pub fn row_count(path: &Path) -> usize {
    File::open(path)
        .ok()
        .and_then(|file| ParquetReader::new(file).num_rows().ok())
        .unwrap_or(0)
}

/// Reads a checkpoint on the current thread.
pub fn read_now(path: &Path) -> BlockResult<DataFrame> {
    let file = File::open(path).map_err(|e| {
        BlockError::fatal(format!("cannot open checkpoint {}: {e}", path.display()))
    })?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| BlockError::fatal(format!("cannot read checkpoint {}: {e}", path.display())))
}

/// The first `rows` rows of a checkpoint, reading no more of the file than they need (the web
/// UI's data preview).
pub fn preview(path: &Path, rows: usize) -> BlockResult<DataFrame> {
    let file = File::open(path).map_err(|e| {
        BlockError::fatal(format!("cannot open checkpoint {}: {e}", path.display()))
    })?;
    ParquetReader::new(file)
        .with_slice(Some((0, rows)))
        .finish()
        .map_err(|e| BlockError::fatal(format!("cannot read checkpoint {}: {e}", path.display())))
}

/// A checkpoint being written one batch at a time. It is published under its name only by
/// [`CheckpointWriter::finish`]; dropped before that, it leaves nothing behind.
pub struct CheckpointWriter {
    path: PathBuf,
    partial: PathBuf,
    writer: Option<BatchedWriter<File>>,
}

impl CheckpointWriter {
    /// Appends a batch (the first one also fixes the file's schema).
    pub fn write(&mut self, batch: &DataFrame) -> BlockResult<()> {
        let failed = |e: &dyn std::fmt::Display| {
            BlockError::fatal(format!(
                "cannot write checkpoint {}: {e}",
                self.path.display()
            ))
        };
        if self.writer.is_none() {
            if let Some(parent) = self.partial.parent() {
                std::fs::create_dir_all(parent).map_err(|e| failed(&e))?;
            }
            let file = File::create(&self.partial).map_err(|e| failed(&e))?;
            // As for whole checkpoints: no compression, no statistics (see `write`).
            let writer = ParquetWriter::new(file)
                .with_compression(ParquetCompression::Uncompressed)
                .with_statistics(StatisticsOptions::empty())
                .batched(batch.schema())
                .map_err(|e| failed(&e))?;
            self.writer = Some(writer);
        }
        let writer = self.writer.as_mut().expect("opened just above");
        // The writer needs the columns' chunks aligned; a batch is usually one chunk already.
        let result = if batch.should_rechunk() {
            let mut aligned = batch.clone();
            aligned.rechunk_mut();
            writer.write_batch(&aligned)
        } else {
            writer.write_batch(batch)
        };
        result.map_err(|e| failed(&e))
    }

    /// Closes the file and publishes it; returns its path.
    pub fn finish(mut self) -> BlockResult<PathBuf> {
        let Some(writer) = self.writer.take() else {
            return Err(BlockError::fatal(
                "no rows passed, so no checkpoint was written",
            ));
        };
        let published = writer
            .finish()
            .map_err(|e| e.to_string())
            .and_then(|_| std::fs::rename(&self.partial, &self.path).map_err(|e| e.to_string()));
        published.map_err(|e| {
            BlockError::fatal(format!(
                "cannot write checkpoint {}: {e}",
                self.path.display()
            ))
        })?;
        Ok(self.path.clone())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[tokio::test]
    async fn round_trip_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(dir.path());
        let path = checkpoints.path("p", "run-1", "clean");
        let frame = df!("a" => [1i64, 2, 3], "b" => ["x", "y", "z"]).unwrap();
        let size = Checkpoints::write(path.clone(), frame.clone())
            .await
            .unwrap();
        assert!(size > 0);
        assert!(!path.with_extension("parquet.partial").exists());
        let back = Checkpoints::read(path.clone()).await.unwrap();
        assert!(back.equals(&frame));
        assert_eq!(row_count(&path), 3);
        assert!(preview(&path, 2).unwrap().equals(&frame.head(Some(2))));
        Checkpoints::remove(&path);
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }
}
