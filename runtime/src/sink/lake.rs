//! The lake sink: Parquet files partitioned hive-style, through object_store.
//!
//! Files are named after the run's partition (`part-2021-01.parquet`), so a run rewrites
//! exactly its own files: two monthly runs that both have pickups on 2021-02-01 each own one
//! file in `lpep_pickup_date=2021-02-01/`, and re-running a month replaces its files instead of
//! adding copies. Files of this run's partition that the new data no longer produces are
//! deleted after the new files are in place.
//!
//! Publishing is staged: every file is first uploaded under `_baton_staging/RUN_ID/`, and only
//! when all uploads have succeeded are they copied into place (a server-side copy on S3 and GCS,
//! a rename-like copy locally). A run that fails halfway through its uploads therefore leaves the
//! published dataset as it was, instead of half old and half new. Large files go up as multipart
//! uploads.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use polars::prelude::*;
use tracing::{info, warn};

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::pipeline::Column as ColumnDef;
use crate::sink::export::encode;
use crate::source::FileFormat;
use crate::store::{StoreLocation, open_store, put_file};

/// A lake sink as compiled.
#[derive(Clone, Copy, Debug)]
pub struct LakeTarget {
    /// The lake connection's role.
    pub connection: &'static str,
    /// The dataset's folder in the lake.
    pub path: &'static str,
    /// The columns whose values name the folders, hive-style, outermost first.
    pub partition_by: &'static [&'static str],
    /// The columns flowing in.
    pub columns: &'static [ColumnDef],
}

/// How many files are uploaded at once.
const UPLOAD_CONCURRENCY: usize = 8;

/// Hive's name for the folder of null partition values.
pub(crate) const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The folder, at the root of the lake, under which a run uploads its files before publishing.
pub const STAGING_FOLDER: &str = "_baton_staging";

/// Writes `frame` as Parquet files under the dataset folder.
pub async fn write_lake(
    ctx: &RunContext,
    target: &LakeTarget,
    frame: DataFrame,
) -> BlockResult<()> {
    let url = ctx.connection_url(target.connection)?;
    let lake = open_store(&url)?;
    let store = lake.store.clone();
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
    let staging = format!("{STAGING_FOLDER}/{}", ctx.run_id());
    // (staged path, published path) of every file.
    let moves: Vec<(ObjectPath, ObjectPath)> = files
        .iter()
        .map(|(path, _)| (ObjectPath::from(format!("{staging}/{path}")), path.clone()))
        .collect();
    let uploads: Vec<_> = files
        .into_iter()
        .zip(moves.iter())
        .map(|((_, bytes), (staged, _))| put_file(store.clone(), staged.clone(), bytes))
        .collect();
    let uploaded = futures::stream::iter(uploads)
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await;
    if let Err(error) = uploaded {
        remove_staging(&lake, &staging).await;
        return Err(error.context(&lake.display));
    }
    // Every file is uploaded: now make them visible. A copy within one store is cheap.
    let publishes = moves.into_iter().map(|(from, to)| {
        let store = store.clone();
        async move {
            store
                .copy(&from, &to)
                .await
                .map_err(|e| BlockError::retryable(format!("publishing {to}: {e}")))
        }
    });
    let published = futures::stream::iter(publishes)
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await;
    remove_staging(&lake, &staging).await;
    published.map_err(|e| e.context(&lake.display))?;
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
        lake = %lake.display,
        dataset = target.path,
        files = count,
        removed = stale.len(),
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote lake"
    );
    Ok(())
}

/// Deletes a run's staging folder. A leftover wastes space but is harmless, because readers
/// (Baton, Spark, pyarrow) skip folders whose names start with `_`; so a failure is only logged.
async fn remove_staging(lake: &StoreLocation, staging: &str) {
    let store = &lake.store;
    let prefix = ObjectPath::from(staging);
    let leftovers: Vec<ObjectPath> = match store
        .list(Some(&prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
    {
        Ok(paths) => paths,
        Err(error) => {
            warn!(%error, staging, "cannot list the staging folder");
            return;
        }
    };
    for path in leftovers {
        if let Err(error) = store.delete(&path).await {
            warn!(%error, %path, "cannot delete a staged file");
        }
    }
    // A local lake keeps the emptied folders; remove them so the lake shows only datasets.
    if let Some(root) = &lake.local_root {
        let _ = std::fs::remove_dir_all(root.join(staging));
        let _ = std::fs::remove_dir(root.join(STAGING_FOLDER));
    }
}

/// Splits the frame by the partition columns and encodes each part as Parquet.
fn encode_files(
    frame: &DataFrame,
    target: &LakeTarget,
    file_name: &str,
) -> BlockResult<Vec<(ObjectPath, Vec<u8>)>> {
    if target.partition_by.is_empty() {
        let mut whole = frame.clone();
        return Ok(vec![(
            ObjectPath::from(format!("{}/{file_name}", target.path)),
            encode(&mut whole, FileFormat::Parquet)?,
        )]);
    }
    let mut files = Vec::new();
    for part in frame.partition_by_stable(target.partition_by.iter().copied(), true)? {
        // One path part per folder: object_store escapes a `/` inside a value as `%2F`.
        let mut path = ObjectPath::from(target.path);
        for column in target.partition_by {
            let value = folder_value(part.column(column)?)?;
            path = path.join(format!("{column}={value}"));
        }
        let path = path.join(file_name);
        // The keys live in the folder names, not inside the file, as pyarrow and Spark do it.
        let mut data = part.drop_many(target.partition_by.iter().copied());
        files.push((path, encode(&mut data, FileFormat::Parquet)?));
    }
    Ok(files)
}

/// The folder value of a partition: its text, or Hive's name for null.
fn folder_value(column: &Column) -> BlockResult<String> {
    let text = column.head(Some(1)).cast(&DataType::String)?;
    Ok(text.str()?.get(0).unwrap_or(NULL_PARTITION).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::BaseType;

    #[test]
    fn several_partition_columns_nest_folders_outermost_first() {
        let frame = df![
            "year" => [2021i64, 2021, 2022],
            "borough" => [Some("Queens"), None, Some("a/b")],
            "fare" => [1.0, 2.0, 3.0],
        ]
        .unwrap();
        const COLUMNS: &[ColumnDef] = &[
            ColumnDef::required("year", BaseType::Int64),
            ColumnDef::nullable("borough", BaseType::String),
            ColumnDef::required("fare", BaseType::Float64),
        ];
        let target = LakeTarget {
            connection: "lake",
            path: "trips",
            partition_by: &["year", "borough"],
            columns: COLUMNS,
        };
        let files = encode_files(&frame, &target, "part-2021.parquet").unwrap();
        let mut paths: Vec<String> = files.iter().map(|(p, _)| p.to_string()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "trips/year=2021/borough=Queens/part-2021.parquet",
                "trips/year=2021/borough=__HIVE_DEFAULT_PARTITION__/part-2021.parquet",
                "trips/year=2022/borough=a%2Fb/part-2021.parquet",
            ]
        );
        // The files hold only the other columns.
        let (_, bytes) = &files[0];
        let read = ParquetReader::new(std::io::Cursor::new(bytes))
            .finish()
            .unwrap();
        assert_eq!(read.get_column_names(), ["fare"]);
    }
}
