//! The export sink: one file per run, at a path templated by the run's partition.
//!
//! This is the course's parameterised daily export (`gs://bucket/2021/01/05/daily-trips.parquet`):
//! each execution date owns exactly one object, so a re-run or a backfill overwrites its own file
//! and never adds a second copy. An object store writes an object whole or not at all, so a
//! failed run leaves the previous file in place.

use object_store::path::Path as ObjectPath;
use polars::prelude::*;
use tracing::info;

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::parquet::{ParquetFileWriter, ParquetLayout};
use crate::pipeline::Column as ColumnDef;
use crate::source::FileFormat;
use crate::store::{open_store, put_file};

/// An export sink as compiled.
#[derive(Clone, Copy, Debug)]
pub struct ExportTarget {
    /// The object store's connection role.
    pub connection: &'static str,
    /// The path template as written, for messages.
    pub path: &'static str,
    /// Parquet or CSV.
    pub format: FileFormat,
    /// The columns flowing in.
    pub columns: &'static [ColumnDef],
}

/// Writes `frame` as one file at `path` (the template filled in for this run).
pub async fn write_export(
    ctx: &RunContext,
    target: &ExportTarget,
    path: String,
    frame: DataFrame,
) -> BlockResult<()> {
    let location = open_store(&ctx.connection_url(target.connection)?)?;
    let started = std::time::Instant::now();
    let rows = frame.height();
    let format = target.format;
    let bytes = tokio::task::spawn_blocking(move || encode(&mut { frame }, format))
        .await
        .map_err(|e| BlockError::fatal(format!("encoder panicked: {e}")))??;
    let size = bytes.len();
    let shown = format!("{}/{path}", location.display.trim_end_matches('/'));
    put_file(location.store, ObjectPath::from(path.as_str()), bytes)
        .await
        .map_err(|e| e.context(&shown))?;
    info!(
        file = %shown,
        rows,
        bytes = size,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote export"
    );
    Ok(())
}

/// The frame as the bytes of one Parquet (Snappy) or CSV (with a header) file.
pub fn encode(frame: &mut DataFrame, format: FileFormat) -> BlockResult<Vec<u8>> {
    let mut buffer = Vec::new();
    match format {
        FileFormat::Parquet => {
            let mut writer =
                ParquetFileWriter::new(&mut buffer, frame.schema(), ParquetLayout::Dataset)?;
            writer.write(frame)?;
            writer.finish()?;
        }
        FileFormat::Csv => {
            CsvWriter::new(&mut buffer)
                .include_header(true)
                .finish(frame)?;
        }
    }
    Ok(buffer)
}
