//! The lake sink: Parquet files partitioned hive-style, through object_store.
//!
//! Files are named after the run's partition (`part-2021-01.parquet`), so a run rewrites
//! exactly its own files: two monthly runs that both have pickups on 2021-02-01 each own one
//! file in `lpep_pickup_date=2021-02-01/`, and re-running a month replaces its files instead of
//! adding copies. Files of this run's partition that the new data no longer produces are
//! deleted after the new files are in place.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use polars::prelude::*;
use tracing::info;

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::pipeline::Column as ColumnDef;

/// A lake sink as compiled.
#[derive(Clone, Copy, Debug)]
pub struct LakeTarget {
    /// The lake connection's role.
    pub connection: &'static str,
    /// The dataset's folder in the lake.
    pub path: &'static str,
    /// The column whose values name the folders, hive-style.
    pub partition_by: Option<&'static str>,
    /// The columns flowing in.
    pub columns: &'static [ColumnDef],
}

/// How many files are uploaded at once.
const UPLOAD_CONCURRENCY: usize = 8;

/// Hive's name for the folder of null partition values.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Opens the lake at `url`: a local folder (`./lake`, `/data/lake`, `file:///data/lake`).
pub fn open_lake(url: &str) -> BlockResult<Arc<dyn ObjectStore>> {
    let local = match url.strip_prefix("file://") {
        Some(path) => path,
        None if url.contains("://") => {
            return Err(BlockError::fatal(format!(
                "lake URL `{url}`: this build writes lakes to local folders (`./lake`, `file:///path`) only"
            )));
        }
        None => url,
    };
    std::fs::create_dir_all(local)
        .map_err(|e| BlockError::fatal(format!("cannot create lake folder {local}: {e}")))?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(local)?))
}

/// Writes `frame` as Parquet files under the dataset folder.
pub async fn write_lake(
    ctx: &RunContext,
    target: &LakeTarget,
    frame: DataFrame,
) -> BlockResult<()> {
    let url = ctx.connection_url(target.connection)?;
    let store = open_lake(&url)?;
    let file_name = match ctx.partition_opt() {
        Some(partition) => format!("part-{partition}.parquet"),
        None => "part-0.parquet".to_string(),
    };
    let started = std::time::Instant::now();
    let rows = frame.height();
    let files = {
        let target = *target;
        let file_name = file_name.clone();
        tokio::task::spawn_blocking(move || encode_files(&frame, &target, &file_name))
            .await
            .map_err(|e| BlockError::fatal(format!("encoder panicked: {e}")))??
    };
    let written: HashSet<String> = files.iter().map(|(path, _)| path.to_string()).collect();
    let count = files.len();
    futures::stream::iter(files)
        .map(|(path, bytes)| {
            let store = store.clone();
            async move {
                store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(|e| BlockError::retryable(format!("writing {path}: {e}")))
            }
        })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    // Files of this run's partition that the new data did not produce again are stale.
    let prefix = ObjectPath::from(target.path);
    let stale: Vec<ObjectPath> = store
        .list(Some(&prefix))
        .try_filter(|meta| {
            std::future::ready(
                meta.location.filename() == Some(file_name.as_str())
                    && !written.contains(&meta.location.to_string()),
            )
        })
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    for path in &stale {
        store.delete(path).await?;
    }
    info!(
        dataset = target.path,
        files = count,
        removed = stale.len(),
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote lake"
    );
    Ok(())
}

/// Splits the frame by the partition column and encodes each part as Parquet.
fn encode_files(
    frame: &DataFrame,
    target: &LakeTarget,
    file_name: &str,
) -> BlockResult<Vec<(ObjectPath, Vec<u8>)>> {
    let Some(column) = target.partition_by else {
        let mut whole = frame.clone();
        return Ok(vec![(
            ObjectPath::from(format!("{}/{file_name}", target.path)),
            parquet_bytes(&mut whole)?,
        )]);
    };
    let mut files = Vec::new();
    for part in frame.partition_by_stable([column], true)? {
        let key = folder_value(part.column(column)?)?;
        // The key lives in the folder name, not inside the file, as pyarrow and Spark do it.
        let mut data = part.drop(column)?;
        let path = ObjectPath::from(format!("{}/{column}={key}/{file_name}", target.path));
        files.push((path, parquet_bytes(&mut data)?));
    }
    Ok(files)
}

fn folder_value(column: &Column) -> BlockResult<String> {
    let value = column.get(0)?;
    Ok(match value {
        AnyValue::Null => NULL_PARTITION.to_string(),
        AnyValue::String(s) => s.replace('/', "%2F"),
        AnyValue::Date(_) => {
            let text = column.head(Some(1)).cast(&DataType::String)?;
            text.str()?.get(0).unwrap_or(NULL_PARTITION).to_string()
        }
        other => other.to_string(),
    })
}

fn parquet_bytes(frame: &mut DataFrame) -> BlockResult<Vec<u8>> {
    let mut buffer = Vec::new();
    ParquetWriter::new(&mut buffer)
        .with_compression(ParquetCompression::Snappy)
        .finish(frame)?;
    Ok(buffer)
}
