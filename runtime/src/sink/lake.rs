//! The lake sink: Parquet (or CSV) files partitioned hive-style, through object_store.
//!
//! Files are named after the run's partition (`part-2021-01.parquet`), so a run rewrites
//! exactly its own files: two monthly runs that both have pickups on 2021-02-01 each own one
//! file in `lpep_pickup_date=2021-02-01/`, and re-running a month replaces its files instead of
//! adding copies. Files of this run's partition that the new data no longer produces are
//! deleted after the new files are in place.
//!
//! Publishing is staged: every file is first uploaded under `_baton_staging/RUN_ID-N/` (one
//! folder per write, so that two lake sinks of one run never clear each other's), and only
//! when all uploads have succeeded are they copied into place (a server-side copy on S3 and GCS,
//! a rename in a local lake). A run that fails halfway through its uploads therefore leaves the
//! published dataset as it was, instead of half old and half new. Large files go up as multipart
//! uploads.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use polars::prelude::*;
use tracing::{info, warn};

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::files::{BudgetShare, SPOOL_MEMORY_BYTES, SpoolBudget, SpoolFile, Spooled};
use crate::parquet::{ParquetFileWriter, ParquetLayout};
use crate::pipeline::Column as ColumnDef;
use crate::rows::Rows;
use crate::source::FileFormat;
use crate::store::{StoreLocation, open_store, put_file, put_local_file};

/// A lake sink as compiled.
#[derive(Clone, Copy, Debug)]
pub struct LakeTarget {
    /// The lake connection's role.
    pub connection: &'static str,
    /// The dataset's folder in the lake, as written (it may be a template).
    pub path: &'static str,
    /// The columns whose values name the folders, hive-style, outermost first.
    pub partition_by: &'static [&'static str],
    /// The most rows one file holds; a larger partition is written as several files.
    pub max_rows_per_file: Option<usize>,
    /// Parquet (Snappy) or CSV with a header.
    pub format: FileFormat,
    /// The columns flowing in.
    pub columns: &'static [ColumnDef],
}

/// How many files are uploaded at once.
const UPLOAD_CONCURRENCY: usize = 8;

/// Hive's name for the folder of null partition values.
pub(crate) const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The folder, at the root of the lake, under which a run uploads its files before publishing.
pub const STAGING_FOLDER: &str = "_baton_staging";

/// How much data (in memory, as polars counts it) the lake writes of the process hold back
/// together, across all their partition folders, before the write that goes over the budget
/// takes its largest folder's rows out of memory: memory stays bounded by this, whatever the
/// size of the data, the width of its rows or the number of partitions written side by side
/// (`backfill --concurrency`). Rows that leave memory in runs smaller than a row group wait in
/// a spill file (see [`ROW_GROUP_BYTES`]), so files keep few, large row groups whatever the
/// budget: 16 MiB against 32 MiB peaked at 101 against 106 MB at 1x, 129 against 154 MB at 10x
/// and 164 against 198 MB at 100x, in the same time.
const SPOOL_BYTES: usize = 16 << 20;

/// The size (in memory, as polars counts it) from which a folder's rows make a Parquet row
/// group worth writing as it is. When many folders share the budget, each one's rows leave
/// memory in small runs; written as row groups they would make files of many small row groups,
/// and polars' Parquet writer keeps every page's header and statistics in memory until its file
/// ends, so memory would grow with the data after all. Smaller runs are therefore spilled to a
/// local file, plainly encoded, and read back into row groups of about this size when the
/// folder is written.
const ROW_GROUP_BYTES: usize = 8 << 20;

/// The write buffer of the spill file, used only while one run of rows is written.
const SPILL_BUFFER_BYTES: usize = 64 << 10;

/// The rows held back by every lake write of the process (see [`SPOOL_BYTES`]).
static HELD_ROWS: std::sync::LazyLock<Arc<SpoolBudget>> =
    std::sync::LazyLock::new(|| SpoolBudget::new(SPOOL_BYTES));

/// Writes the rows as Parquet (or CSV) files under the dataset folder `path` (the target's
/// template filled in for this run), batch by batch: each partition folder's rows go into a
/// local spool file as they fill, and the files are published together at the end.
pub async fn write_lake(
    ctx: &RunContext,
    target: &LakeTarget,
    path: &str,
    mut rows: Rows,
) -> BlockResult<()> {
    let url = ctx.connection_url(target.connection)?;
    let lake = open_store(&url)?;
    let store = lake.store.clone();
    let stem = match ctx.partition_opt() {
        Some(partition) => format!("part-{partition}"),
        None => "part-0".to_string(),
    };
    let started = std::time::Instant::now();
    let staging = staging_folder(ctx.run_id());
    let local_staging = lake.local_root.as_ref().map(|root| root.join(&staging));
    let spooling = async {
        let mut spool = Spool::new(
            *target,
            path,
            &stem,
            local_staging.as_deref(),
            HELD_ROWS.clone(),
        )?;
        while let Some(batch) = rows.next_batch().await {
            let batch = batch?;
            spool = tokio::task::spawn_blocking(move || spool.add(batch).map(|()| spool))
                .await
                .map_err(|e| BlockError::fatal(format!("encoder panicked: {e}")))??;
        }
        let row_count = spool.rows;
        tokio::task::spawn_blocking(move || spool.finish())
            .await
            .map_err(|e| BlockError::fatal(format!("encoder panicked: {e}")))?
            .map(|(spooled, files)| (row_count, spooled, files))
    };
    let (row_count, spooled, files) = match spooling.await {
        Ok(spooled) => spooled,
        Err(error) => {
            // A write that fails before publishing leaves no staging folder behind either.
            remove_staging(&lake, &staging).await;
            return Err(error);
        }
    };
    let written: HashSet<String> = files.iter().map(|(path, _)| path.to_string()).collect();
    let count = files.len();
    let published = match &lake.local_root {
        Some(root) => {
            let (root, staging) = (root.clone(), staging.clone());
            tokio::task::spawn_blocking(move || publish_local(&root, &staging, files))
                .await
                .unwrap_or_else(|e| Err(BlockError::fatal(format!("publisher panicked: {e}"))))
        }
        None => publish_to_store(&store, &staging, files).await,
    };
    drop(spooled);
    // Whether or not every file made it, nothing of this run stays in the staging area.
    remove_staging(&lake, &staging).await;
    published.map_err(|e| e.context(&lake.display))?;
    // Files of this run's partition that the new data did not produce again are stale.
    let prefix = ObjectPath::from(path);
    let stale: Vec<ObjectPath> = store
        .list(Some(&prefix))
        .try_filter(|meta| {
            std::future::ready(
                meta.location
                    .filename()
                    .is_some_and(|name| owned_by(name, &stem, target.format))
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
        dataset = path,
        files = count,
        removed = stale.len(),
        rows = row_count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote lake"
    );
    Ok(())
}

/// Publishes spooled files to an object store: every file is uploaded under `staging` first,
/// and only when all uploads have succeeded are they copied into place.
async fn publish_to_store(
    store: &Arc<dyn ObjectStore>,
    staging: &str,
    files: Vec<(ObjectPath, Spooled)>,
) -> BlockResult<()> {
    // (staged path, published path) of every file.
    let moves: Vec<(ObjectPath, ObjectPath)> = files
        .iter()
        .map(|(path, _)| (ObjectPath::from(format!("{staging}/{path}")), path.clone()))
        .collect();
    // Collected first: a lazy iterator borrowing `moves` would make the future not `Send`.
    let uploads: Vec<_> = files
        .into_iter()
        .zip(moves.iter())
        .map(|((_, spooled), (staged, _))| {
            let store = store.clone();
            let staged = staged.clone();
            async move {
                match spooled {
                    Spooled::Memory(bytes) => put_file(store, staged, bytes).await,
                    Spooled::Disk(local) => put_local_file(store, staged, &local).await,
                }
            }
        })
        .collect();
    futures::stream::iter(uploads)
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
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
    futures::stream::iter(publishes)
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Publishes spooled files into a local lake, with the same guarantee as for an object store:
/// every file is written under `staging` first, and only when all are written are they renamed
/// into place. A rename within one file system is one directory update, where the object-store
/// path (an upload staged under a temporary name and renamed, a copy by hard link and rename,
/// a delete) took four times the file-system operations: 8 % of the reference run's CPU for
/// its 91 files.
fn publish_local(
    root: &std::path::Path,
    staging: &str,
    files: Vec<(ObjectPath, Spooled)>,
) -> BlockResult<()> {
    // The object store's own mapping of object paths to files, so both paths agree on names.
    let local = object_store::local::LocalFileSystem::new_with_prefix(root)?;
    let file_of = |path: &ObjectPath| {
        local
            .path_to_filesystem(path)
            .map_err(|e| BlockError::fatal(format!("{path}: {e}")))
    };
    let mut folders = HashSet::new();
    let mut create_folder = |file: &std::path::Path| -> BlockResult<()> {
        if let Some(folder) = file.parent()
            && folders.insert(folder.to_path_buf())
        {
            std::fs::create_dir_all(folder).map_err(|e| {
                BlockError::retryable(format!("cannot create {}: {e}", folder.display()))
            })?;
        }
        Ok(())
    };
    // A spool file of a local lake is already complete in the staging folder (the spool's
    // folder is under `root.join(staging)`, see `write_lake`); only files that were in memory,
    // or spooled elsewhere, are written there first. Moving spool files into a copy of the
    // lake's folder tree under staging would cost a folder and a rename per file for no
    // further guarantee.
    let staging_folder = root.join(staging);
    let mut moves = Vec::with_capacity(files.len());
    for (path, spooled) in files {
        let staged = match spooled {
            Spooled::Disk(local) if local.starts_with(&staging_folder) => local,
            spooled => {
                let staged = file_of(&ObjectPath::from(format!("{staging}/{path}")))?;
                create_folder(&staged)?;
                let written = match spooled {
                    Spooled::Memory(bytes) => std::fs::write(&staged, bytes),
                    Spooled::Disk(local) => std::fs::copy(&local, &staged).map(drop),
                };
                written.map_err(|e| {
                    BlockError::retryable(format!("cannot write {}: {e}", staged.display()))
                })?;
                staged
            }
        };
        moves.push((staged, file_of(&path)?));
    }
    for (staged, published) in moves {
        create_folder(&published)?;
        std::fs::rename(&staged, &published).map_err(|e| {
            BlockError::retryable(format!("publishing {}: {e}", published.display()))
        })?;
    }
    Ok(())
}

/// The files of one lake write while its rows arrive: one file per partition folder (several
/// when `max_rows_per_file` splits it), written a row group at a time. For an object store they
/// are in memory while they are small and on local disk once they are not; for a local lake
/// they are on disk from the start, in the write's staging folder, to be renamed into place.
/// Rows wait in memory only until the lake writes of the process hold [`SPOOL_BYTES`] together;
/// runs of rows too small for a row group wait in the spool's spill file (see
/// [`ROW_GROUP_BYTES`]).
struct Spool {
    target: LakeTarget,
    dataset: String,
    stem: String,
    /// The local folder of the files that leave memory; deleted with the spool.
    dir: tempfile::TempDir,
    /// The memory the spool's files may hold.
    budget: Arc<SpoolBudget>,
    folders: Vec<SpoolFolder>,
    /// Bytes held back, not yet written, across all folders: a share of [`HELD_ROWS`].
    held: BudgetShare,
    /// The size of a run of rows written as a row group rather than spilled
    /// ([`ROW_GROUP_BYTES`]; smaller in tests).
    row_group_bytes: usize,
    /// The file every folder's spilled runs go into, one after the other, created with the
    /// first run spilled (see [`Spool::spill`]).
    spill: Option<std::fs::File>,
    /// Rows received.
    rows: usize,
}

/// One partition folder of a spool.
struct SpoolFolder {
    folder: ObjectPath,
    held: Vec<DataFrame>,
    /// Bytes of the rows held back.
    held_bytes: usize,
    /// Where in the spool's spill file each run of this folder's rows lies, in the order they
    /// came.
    spilled: Vec<std::ops::Range<u64>>,
    /// Its files, in order.
    files: Vec<SpoolFile>,
    /// The file being written, its writer and the rows in it.
    open: Option<(FileWriter, SpoolFile, usize)>,
}

/// A file being written a batch at a time.
enum FileWriter {
    Parquet(Box<ParquetFileWriter<BufWriter<SpoolFile>>>),
    Csv(polars::io::csv::write::BatchedWriter<SpoolFile>),
}

impl Spool {
    /// A spool for a lake on this machine's file system, whose files go into `local_staging`
    /// (the write's staging folder in the lake), or for an object store (`None`). The rows it
    /// holds back count in `held_rows`, a budget it may share with other spools.
    fn new(
        target: LakeTarget,
        dataset: &str,
        stem: &str,
        local_staging: Option<&std::path::Path>,
        held_rows: Arc<SpoolBudget>,
    ) -> BlockResult<Spool> {
        let cannot =
            |e: std::io::Error| BlockError::retryable(format!("cannot create a spool folder: {e}"));
        let mut folder = tempfile::Builder::new();
        folder.prefix("baton-lake-");
        let (dir, budget) = match local_staging {
            // In the lake, under the folder readers skip, so that publishing is a rename within
            // one file system: a local file written into memory first would only be copied to
            // disk at the end, and held in memory until then.
            Some(staging) => {
                // Another write finishing may remove `_baton_staging`, empty, between the
                // creation of this folder and the spool's: then it is created again.
                let mut attempts = 0;
                let dir = loop {
                    std::fs::create_dir_all(staging).map_err(cannot)?;
                    match folder.tempdir_in(staging) {
                        Ok(dir) => break dir,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {
                            attempts += 1;
                        }
                        Err(e) => return Err(cannot(e)),
                    }
                };
                (dir, SpoolBudget::new(0))
            }
            None => (
                folder.tempdir().map_err(cannot)?,
                SpoolBudget::new(SPOOL_MEMORY_BYTES),
            ),
        };
        Ok(Spool {
            target,
            dataset: dataset.to_string(),
            stem: stem.to_string(),
            dir,
            budget,
            folders: Vec::new(),
            held: BudgetShare::new(held_rows),
            row_group_bytes: ROW_GROUP_BYTES,
            spill: None,
            rows: 0,
        })
    }

    /// Takes one batch: its rows join their folders, and the largest folders' rows leave
    /// memory while too many rows are held back.
    fn add(&mut self, batch: DataFrame) -> BlockResult<()> {
        self.rows += batch.height();
        let keys = self.target.partition_by;
        let parts = if keys.is_empty() {
            vec![batch]
        } else {
            batch.partition_by_stable(keys.iter().copied(), true)?
        };
        for part in parts {
            // One path part per folder: object_store escapes a `/` inside a value as `%2F`.
            let mut folder = ObjectPath::from(self.dataset.as_str());
            for column in keys {
                let value = folder_value(part.column(column)?)?;
                folder = folder.join(format!("{column}={value}"));
            }
            // The keys live in the folder names, not inside the file, as pyarrow and Spark do.
            let data = part.drop_many(keys.iter().copied());
            let index = match self.folders.iter().position(|f| f.folder == folder) {
                Some(index) => index,
                None => {
                    self.folders.push(SpoolFolder {
                        folder,
                        held: Vec::new(),
                        held_bytes: 0,
                        spilled: Vec::new(),
                        files: Vec::new(),
                        open: None,
                    });
                    self.folders.len() - 1
                }
            };
            let bytes = data.estimated_size();
            self.held.add(bytes);
            self.folders[index].held_bytes += bytes;
            self.folders[index].held.push(data);
        }
        // The spool that takes the process over the budget writes out its own rows, largest
        // folder first; another write's rows are not its to write. Writing out all its folders
        // at once peaked 7 to 10 MB lower at 10x and 100x, but at 1x those spills land in the
        // lake write's tail at the end of the run, which then took 6 to 9 % longer.
        while self.held.bytes() > 0 && self.held.budget_exceeded() {
            let largest = (0..self.folders.len())
                .max_by_key(|&i| self.folders[i].held_bytes)
                .expect("rows are held, so a folder holds them");
            self.flush(largest)?;
        }
        Ok(())
    }

    /// Takes a folder's held rows out of memory: CSV rows, and Parquet rows enough for a row
    /// group, are written into the folder's file (after its spilled rows, to keep their
    /// order); a smaller run of Parquet rows is spilled.
    fn flush(&mut self, index: usize) -> BlockResult<()> {
        let Some((data, bytes)) = self.take_held(index)? else {
            return Ok(());
        };
        if self.target.format == FileFormat::Parquet && bytes < self.row_group_bytes {
            self.spill(index, &data)
        } else {
            self.drain(index, Some(data))
        }
    }

    /// The rows a folder holds back, as one frame, and their size; they no longer count as
    /// held.
    fn take_held(&mut self, index: usize) -> BlockResult<Option<(DataFrame, usize)>> {
        let folder = &mut self.folders[index];
        let held = std::mem::take(&mut folder.held);
        let bytes = std::mem::take(&mut folder.held_bytes);
        self.held.release(bytes);
        let mut data: Option<DataFrame> = None;
        for part in held {
            append(&mut data, part)?;
        }
        Ok(data.map(|data| (data, bytes)))
    }

    /// The local file where the folders' small runs of rows wait.
    fn spill_path(&self) -> std::path::PathBuf {
        self.dir.path().join("rows.spill")
    }

    /// Appends a run of a folder's rows to the spool's spill file as a Parquet file of its own,
    /// plain and uncompressed, which is cheap to write and to read back. All folders share the
    /// one file: a file each made a new inode for every folder that spilled, and creating
    /// inodes right after a run's files were deleted is slow on ext4 (it skips every inode freed
    /// in the last seconds). A run's place in the file is all a folder keeps, so thousands of
    /// folders wait without a buffer or a file handle each.
    fn spill(&mut self, index: usize, data: &DataFrame) -> BlockResult<()> {
        let path = self.spill_path();
        let cannot = |e: std::io::Error| {
            BlockError::retryable(format!("cannot spill rows to {}: {e}", path.display()))
        };
        if self.spill.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(cannot)?;
            self.spill = Some(file);
        }
        let file = self.spill.as_ref().expect("opened just above");
        let start = file.metadata().map_err(cannot)?.len();
        let mut writer = ParquetFileWriter::new(
            BufWriter::with_capacity(SPILL_BUFFER_BYTES, file),
            data.schema(),
            ParquetLayout::Checkpoint,
        )?;
        writer.write(data)?;
        writer
            .finish()?
            .into_inner()
            .map_err(|e| cannot(e.into_error()))?;
        let end = file.metadata().map_err(cannot)?.len();
        self.folders[index].spilled.push(start..end);
        Ok(())
    }

    /// Reads a spilled run of rows back.
    fn read_spilled(&self, run: std::ops::Range<u64>) -> BlockResult<DataFrame> {
        let cannot = |e: std::io::Error| {
            BlockError::retryable(format!(
                "cannot read spilled rows {}: {e}",
                self.spill_path().display()
            ))
        };
        let file = self
            .spill
            .as_ref()
            .expect("rows were spilled, so the file is open");
        let mut bytes = vec![0; (run.end - run.start) as usize];
        file.read_exact_at(&mut bytes, run.start).map_err(cannot)?;
        Ok(ParquetReader::new(std::io::Cursor::new(bytes)).finish()?)
    }

    /// Writes a folder's spilled rows, read back run by run, and then `tail` into its files,
    /// in row groups of about [`ROW_GROUP_BYTES`]. The runs' place in the spill file is freed
    /// only with the file, when the spool finishes: most folders are drained only then.
    fn drain(&mut self, index: usize, tail: Option<DataFrame>) -> BlockResult<()> {
        let runs = std::mem::take(&mut self.folders[index].spilled);
        let mut group: Option<DataFrame> = None;
        for run in runs {
            append(&mut group, self.read_spilled(run)?)?;
            if group
                .as_ref()
                .is_some_and(|g| g.estimated_size() >= self.row_group_bytes)
            {
                let full = group.take().expect("checked just above");
                self.write_rows(index, full)?;
            }
        }
        if let Some(tail) = tail {
            append(&mut group, tail)?;
        }
        match group {
            Some(group) => self.write_rows(index, group),
            None => Ok(()),
        }
    }

    /// Writes rows of a folder into its files as row groups, starting a new file whenever one
    /// reaches `max_rows_per_file`. The rows stay in the chunks they came in (a folder's held
    /// pieces, its spilled runs read back): the Parquet writer joins them one column at a time,
    /// while the whole frame made one chunk first held a second copy of up to a row group
    /// (8 MiB) per write, and three months drain their folders at about the same time (100x:
    /// `RssAnon` peaked at 110 to 112 MB rather than 118 to 126 MB, in the same time).
    fn write_rows(&mut self, index: usize, data: DataFrame) -> BlockResult<()> {
        let limit = self.target.max_rows_per_file.unwrap_or(usize::MAX).max(1);
        let mut offset = 0;
        loop {
            let folder = &mut self.folders[index];
            if folder
                .open
                .as_ref()
                .is_some_and(|(_, _, rows)| *rows >= limit)
            {
                let (writer, file, _) = folder.open.take().expect("checked just above");
                writer.finish()?;
                file.close()?;
            }
            if folder.open.is_none() {
                let local = self
                    .dir
                    .path()
                    .join(format!("{index}.{}", folder.files.len()));
                let file = SpoolFile::new(local, self.budget.clone());
                folder.files.push(file.clone());
                let writer = FileWriter::new(file.clone(), self.target.format, &data)?;
                folder.open = Some((writer, file, 0));
            }
            let (writer, _, rows) = folder.open.as_mut().expect("opened just above");
            let take = (limit - *rows).min(data.height() - offset);
            writer.write(&data.slice(offset as i64, take))?;
            *rows += take;
            offset += take;
            if offset >= data.height() {
                return Ok(());
            }
        }
    }

    /// Writes what is held back or spilled, closes every file and names them: the spool folder
    /// (which deletes the files on disk when dropped) and each file's lake path with its
    /// content.
    fn finish(mut self) -> BlockResult<(tempfile::TempDir, Vec<(ObjectPath, Spooled)>)> {
        // Folder by folder, so that each file's buffer is freed before the next is written.
        for index in 0..self.folders.len() {
            let tail = self.take_held(index)?.map(|(data, _)| data);
            self.drain(index, tail)?;
            if let Some((writer, file, _)) = self.folders[index].open.take() {
                writer.finish()?;
                file.close()?;
            }
        }
        if self.spill.take().is_some() {
            std::fs::remove_file(self.spill_path())
                .map_err(|e| BlockError::retryable(format!("cannot remove the spill file: {e}")))?;
        }
        let mut files = Vec::new();
        for folder in self.folders {
            let count = folder.files.len();
            for (number, file) in folder.files.into_iter().enumerate() {
                let spooled = file
                    .finish()
                    .map_err(|e| BlockError::fatal(format!("cannot write a spooled file: {e}")))?;
                let name = if count == 1 {
                    format!("{}{}", self.stem, extension(self.target.format))
                } else {
                    format!(
                        "{}.{:04}{}",
                        self.stem,
                        number + 1,
                        extension(self.target.format)
                    )
                };
                files.push((folder.folder.clone().join(name), spooled));
            }
        }
        Ok((self.dir, files))
    }
}

impl FileWriter {
    /// A writer of `format` into `file`, for batches shaped like `like`. Parquet files are
    /// Snappy-compressed, CSV files have a header, as the export sink writes them.
    fn new(file: SpoolFile, format: FileFormat, like: &DataFrame) -> BlockResult<FileWriter> {
        let schema = like.schema();
        Ok(match format {
            // Parquet's writer makes many small writes (page headers, thrift fields); each would
            // take the spool file's lock and check its budget (2 % of the reference run's CPU).
            // polars' CSV writer writes whole serialized batches.
            FileFormat::Parquet => FileWriter::Parquet(Box::new(ParquetFileWriter::new(
                BufWriter::with_capacity(WRITER_BUFFER_BYTES, file),
                schema,
                ParquetLayout::Dataset,
            )?)),
            FileFormat::Csv => {
                FileWriter::Csv(CsvWriter::new(file).include_header(true).batched(schema)?)
            }
        })
    }

    fn write(&mut self, batch: &DataFrame) -> BlockResult<()> {
        match self {
            FileWriter::Parquet(writer) => writer.write(batch)?,
            FileWriter::Csv(writer) => writer.write_batch(batch)?,
        }
        Ok(())
    }

    /// Ends the file (its footer, for Parquet).
    fn finish(self) -> BlockResult<()> {
        match self {
            FileWriter::Parquet(writer) => writer.finish()?.flush()?,
            FileWriter::Csv(mut writer) => writer.finish()?,
        }
        Ok(())
    }
}

/// The buffer in front of each lake file's writer, for its many small writes.
const WRITER_BUFFER_BYTES: usize = 8 << 10;

/// The staging folder of one lake write: named after the run, and unique, because a run with
/// two lake sinks writes twice, and each write removes its staging folder when it is done.
fn staging_folder(run_id: &str) -> String {
    format!("{STAGING_FOLDER}/{run_id}-{:08x}", fastrand::u32(..))
}

/// Deletes a write's staging folder. A leftover wastes space but is harmless, because readers
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

/// The file name extension of a format, with its dot.
fn extension(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Parquet => ".parquet",
        FileFormat::Csv => ".csv",
    }
}

/// Whether a file name is one of the files a run writes with this stem: `STEM.parquet`, or
/// `STEM.0001.parquet` and so on when a partition is split (`.csv` for CSV datasets).
fn owned_by(file_name: &str, stem: &str, format: FileFormat) -> bool {
    let Some(rest) = file_name.strip_prefix(stem) else {
        return false;
    };
    match rest.strip_suffix(extension(format)) {
        Some("") => true,
        Some(number) => number
            .strip_prefix('.')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Appends `part` to the rows gathered in `data`.
fn append(data: &mut Option<DataFrame>, part: DataFrame) -> BlockResult<()> {
    match data {
        None => *data = Some(part),
        Some(data) => {
            data.vstack_mut_owned(part)?;
        }
    }
    Ok(())
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

    /// The files a write of `frame` produces, with their bytes, through the spool. Both kinds
    /// of spool (in memory for an object store, on disk beside a local lake) must give the same.
    fn encode_files(
        frame: &DataFrame,
        target: &LakeTarget,
        dataset: &str,
        stem: &str,
    ) -> BlockResult<Vec<(ObjectPath, Vec<u8>)>> {
        let local_lake = tempfile::tempdir().unwrap();
        let budget = || SpoolBudget::new(SPOOL_BYTES);
        let in_memory = spool_files(frame, Spool::new(*target, dataset, stem, None, budget())?)?;
        let on_disk = spool_files(
            frame,
            Spool::new(*target, dataset, stem, Some(local_lake.path()), budget())?,
        )?;
        assert_eq!(in_memory, on_disk);
        Ok(in_memory)
    }

    /// A dataset `trips` in the lake connection `lake`.
    fn trips_target(
        partition_by: &'static [&'static str],
        max_rows_per_file: Option<usize>,
        format: FileFormat,
        columns: &'static [ColumnDef],
    ) -> LakeTarget {
        LakeTarget {
            connection: "lake",
            path: "trips",
            partition_by,
            max_rows_per_file,
            format,
            columns,
        }
    }

    fn spool_files(frame: &DataFrame, mut spool: Spool) -> BlockResult<Vec<(ObjectPath, Vec<u8>)>> {
        // Two batches, so that a folder's rows arrive in parts as they do from a stream.
        let half = frame.height() / 2;
        spool.add(frame.slice(0, half))?;
        spool.add(frame.slice(half as i64, frame.height() - half))?;
        let (_dir, files) = spool.finish()?;
        Ok(contents(files))
    }

    /// Each spooled file's lake path and bytes, wherever the spool kept them.
    fn contents(files: Vec<(ObjectPath, Spooled)>) -> Vec<(ObjectPath, Vec<u8>)> {
        files
            .into_iter()
            .map(|(path, spooled)| match spooled {
                Spooled::Memory(bytes) => (path, bytes),
                Spooled::Disk(local) => (path, std::fs::read(local).unwrap()),
            })
            .collect()
    }

    #[test]
    fn each_write_of_a_run_stages_in_a_folder_of_its_own() {
        let (first, second) = (staging_folder("run-1"), staging_folder("run-1"));
        assert!(first.starts_with("_baton_staging/run-1-"), "{first}");
        assert_ne!(
            first, second,
            "two lake sinks of one run would clear each other's files"
        );
    }

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
        let target = trips_target(&["year", "borough"], None, FileFormat::Parquet, COLUMNS);
        let files = encode_files(&frame, &target, "trips", "part-2021").unwrap();
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

    /// Writes side by side share one budget of held rows: the write that takes them over it
    /// writes out its own rows, the other keeps holding its own, and whatever a write holds is
    /// given back when it is written or dropped.
    #[test]
    fn writes_side_by_side_share_one_budget_of_held_rows() {
        let batch = |day: i64| {
            df![
                "day" => vec![day; 1_000],
                "fare" => (0..1_000).map(f64::from).collect::<Vec<_>>(),
            ]
            .unwrap()
        };
        let target = trips_target(&["day"], None, FileFormat::Parquet, DAY_AND_FARE);
        // Room for one day's held rows (8,000 bytes of fares) but not for two.
        let budget = SpoolBudget::new(12_000);
        let spool = || Spool::new(target, "trips", "part-0", None, budget.clone()).unwrap();
        let (mut first, mut second) = (spool(), spool());
        first.add(batch(1)).unwrap();
        assert_eq!(first.held.bytes(), 8_000);
        second.add(batch(2)).unwrap();
        assert_eq!(first.held.bytes(), 8_000, "the first write keeps its rows");
        assert_eq!(second.held.bytes(), 0, "the second wrote its rows out");
        assert_eq!(budget.used(), 8_000);
        let (_dir, files) = first.finish().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(budget.used(), 0);
        second.add(batch(3)).unwrap();
        assert_eq!(second.held.bytes(), 8_000);
        drop(second);
        assert_eq!(budget.used(), 0, "a dropped write gives its share back");
    }

    /// The rows of each folder in the files a spool wrote, file after file, and each file's
    /// row group count.
    fn folders_read_back(files: &[(ObjectPath, Vec<u8>)]) -> Vec<(String, DataFrame, usize)> {
        let mut folders: Vec<(String, DataFrame, usize)> = Vec::new();
        for (path, bytes) in files {
            let folder = path
                .prefix_match(&ObjectPath::from("trips"))
                .and_then(|mut parts| parts.next())
                .unwrap()
                .as_ref()
                .to_string();
            let mut reader = std::io::Cursor::new(bytes);
            let groups = polars_parquet::read::read_metadata(&mut reader)
                .unwrap()
                .row_groups
                .len();
            let rows = ParquetReader::new(reader).finish().unwrap();
            match folders.iter_mut().find(|(name, _, _)| *name == folder) {
                Some((_, frame, count)) => {
                    frame.vstack_mut_owned(rows).unwrap();
                    *count += groups;
                }
                None => folders.push((folder, rows, groups)),
            }
        }
        folders
    }

    /// Batches of trips on a few days: `(day, fare)` pairs in arrival order.
    fn trip_batches(batches: &[Vec<(i64, f64)>]) -> Vec<DataFrame> {
        batches
            .iter()
            .map(|rows| {
                df![
                    "day" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                    "fare" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                ]
                .unwrap()
            })
            .collect()
    }

    const DAY_AND_FARE: &[ColumnDef] = &[
        ColumnDef::required("day", BaseType::Int64),
        ColumnDef::required("fare", BaseType::Float64),
    ];

    /// Feeds `batches` to a spool (local when `local_lake` is given) that holds back at most
    /// `budget` bytes and writes runs of `row_group_bytes` as they are, and checks what every
    /// spool must do: each folder's file holds exactly its rows in the order they came, no
    /// spill file is left behind and the budget is given back. Returns the folders' rows and
    /// row group counts.
    fn spool_and_check(
        batches: &[DataFrame],
        budget: usize,
        row_group_bytes: usize,
        local_lake: Option<&std::path::Path>,
    ) -> Vec<(String, DataFrame, usize)> {
        let target = trips_target(&["day"], None, FileFormat::Parquet, DAY_AND_FARE);
        let budget = SpoolBudget::new(budget);
        let mut spool = Spool::new(target, "trips", "part-0", local_lake, budget.clone()).unwrap();
        spool.row_group_bytes = row_group_bytes;
        for batch in batches {
            spool.add(batch.clone()).unwrap();
        }
        let (dir, files) = spool.finish().unwrap();
        let spilled: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".spill"))
            .collect();
        assert!(spilled.is_empty(), "spill files left: {spilled:?}");
        assert_eq!(budget.used(), 0);
        let folders = folders_read_back(&contents(files));
        let mut all = None;
        for batch in batches {
            append(&mut all, batch.clone()).unwrap();
        }
        let all = all.expect("at least one batch");
        for (folder, rows, _) in &folders {
            let day: i64 = folder.strip_prefix("day=").unwrap().parse().unwrap();
            let expected = all
                .clone()
                .lazy()
                .filter(col("day").eq(lit(day)))
                .select([col("fare")])
                .collect()
                .unwrap();
            assert!(
                rows.equals(&expected),
                "{folder}: {rows} against {expected}"
            );
        }
        let days = all.column("day").unwrap().n_unique().unwrap();
        assert_eq!(folders.len(), days, "one folder per day");
        folders
    }

    /// With many folders on a small budget each folder's rows leave memory in runs far too
    /// small for a row group; they are spilled and come back as one row group per file, in
    /// the order they came.
    #[test]
    fn small_runs_are_spilled_and_written_back_as_one_row_group() {
        let batches: Vec<Vec<(i64, f64)>> = (0..20)
            .map(|batch| {
                (0..500)
                    .map(|i| (i % 10, f64::from(batch * 500 + i as i32)))
                    .collect()
            })
            .collect();
        let batches = trip_batches(&batches);
        // Room for about one batch: every batch after the first pushes folders out.
        let budget = 6_000;
        let lake = tempfile::tempdir().unwrap();
        for local_lake in [None, Some(lake.path())] {
            let folders = spool_and_check(&batches, budget, ROW_GROUP_BYTES, local_lake);
            for (folder, rows, groups) in folders {
                assert_eq!(rows.height(), 1_000, "{folder}");
                assert_eq!(groups, 1, "{folder} has {groups} row groups");
            }
        }
    }

    /// A folder whose held rows make a row group on their own writes them at once, after
    /// the runs it spilled before, so that its rows keep their order.
    #[test]
    fn a_run_large_enough_is_written_after_the_spilled_runs_before_it() {
        // Day 1 gets a few rows per batch, day 2 most of them.
        let batches: Vec<Vec<(i64, f64)>> = (0..10)
            .map(|batch| {
                (0..1_000)
                    .map(|i| (if i < 100 { 1 } else { 2 }, f64::from(batch * 1_000 + i)))
                    .collect()
            })
            .collect();
        let batches = trip_batches(&batches);
        // Day 2's 900 rows per batch (7,200 bytes of fares) make a row group each time; day 1's
        // runs (1,600 bytes) are spilled, and its 8,000 bytes come back as two row groups of
        // at least 4,000 and the rest.
        let folders = spool_and_check(&batches, 1_000, 4_000, None);
        let groups: Vec<(String, usize)> = folders.into_iter().map(|(f, _, g)| (f, g)).collect();
        assert_eq!(
            groups,
            [("day=1".to_string(), 2), ("day=2".to_string(), 10)]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever the batches, the budget and the size of a row group, every folder's file
        /// holds its rows in order, and nothing spilled is left over.
        #[test]
        fn any_budget_writes_every_row_once_in_order(
            batches in proptest::collection::vec(
                proptest::collection::vec((0i64..6, -1e6f64..1e6), 1..120),
                1..12,
            ),
            budget in 0usize..4_000,
            row_group_bytes in 1usize..3_000,
        ) {
            spool_and_check(&trip_batches(&batches), budget, row_group_bytes, None);
        }
    }

    #[test]
    fn large_partitions_are_split_into_numbered_files() {
        let frame = df!["fare" => (0..10).map(f64::from).collect::<Vec<_>>()].unwrap();
        const COLUMNS: &[ColumnDef] = &[ColumnDef::required("fare", BaseType::Float64)];
        let target = trips_target(&[], Some(4), FileFormat::Parquet, COLUMNS);
        let files = encode_files(&frame, &target, "trips", "part-2021-01").unwrap();
        let names: Vec<String> = files.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            names,
            [
                "trips/part-2021-01.0001.parquet",
                "trips/part-2021-01.0002.parquet",
                "trips/part-2021-01.0003.parquet",
            ]
        );
        let rows: Vec<usize> = files
            .iter()
            .map(|(_, bytes)| {
                ParquetReader::new(std::io::Cursor::new(bytes))
                    .finish()
                    .unwrap()
                    .height()
            })
            .collect();
        assert_eq!(rows, [4, 4, 2]);
    }

    #[test]
    fn csv_datasets_write_csv_files_with_a_header() {
        let frame = df!["day" => ["2021-01-01", "2021-01-02"], "fare" => [1.5, 2.0]].unwrap();
        const COLUMNS: &[ColumnDef] = &[
            ColumnDef::required("day", BaseType::String),
            ColumnDef::required("fare", BaseType::Float64),
        ];
        let target = trips_target(&["day"], None, FileFormat::Csv, COLUMNS);
        let files = encode_files(&frame, &target, "trips", "part-2021-01").unwrap();
        let (path, bytes) = &files[0];
        assert_eq!(path.to_string(), "trips/day=2021-01-01/part-2021-01.csv");
        assert_eq!(String::from_utf8_lossy(bytes), "fare\n1.5\n");
    }

    #[test]
    fn a_run_owns_only_its_own_files() {
        assert!(owned_by(
            "part-2021-01.parquet",
            "part-2021-01",
            FileFormat::Parquet
        ));
        assert!(owned_by(
            "part-2021-01.0002.parquet",
            "part-2021-01",
            FileFormat::Parquet
        ));
        assert!(!owned_by(
            "part-2021-01-01.parquet",
            "part-2021-01",
            FileFormat::Parquet
        ));
        assert!(!owned_by(
            "part-2021-01.x.parquet",
            "part-2021-01",
            FileFormat::Parquet
        ));
        assert!(!owned_by(
            "part-2021-02.parquet",
            "part-2021-01",
            FileFormat::Parquet
        ));
        assert!(owned_by(
            "part-2021-01.csv",
            "part-2021-01",
            FileFormat::Csv
        ));
        assert!(!owned_by(
            "part-2021-01.parquet",
            "part-2021-01",
            FileFormat::Csv
        ));
    }

    #[test]
    fn a_local_lake_sees_every_file_or_none() {
        let root = tempfile::tempdir().unwrap();
        let spooled_on_disk = root.path().join("spooled");
        std::fs::write(&spooled_on_disk, b"from disk").unwrap();
        let files = || {
            vec![
                (
                    ObjectPath::from("trips/day=2021-01-01/part-2021-01.parquet"),
                    Spooled::Memory(b"in memory".to_vec()),
                ),
                (
                    ObjectPath::from("trips/day=2021-01-02/part-2021-01.parquet"),
                    Spooled::Disk(spooled_on_disk.clone()),
                ),
            ]
        };
        let staging = format!("{STAGING_FOLDER}/run-1");
        publish_local(root.path(), &staging, files()).unwrap();
        let read = |day: &str| {
            std::fs::read(
                root.path()
                    .join(format!("trips/day={day}/part-2021-01.parquet")),
            )
        };
        assert_eq!(read("2021-01-01").unwrap(), b"in memory");
        assert_eq!(read("2021-01-02").unwrap(), b"from disk");

        // A file that cannot be written stops the publish before any file is renamed into place.
        let other = tempfile::tempdir().unwrap();
        let mut failing = files();
        failing[1].1 = Spooled::Disk(root.path().join("gone"));
        let error = publish_local(other.path(), &staging, failing).unwrap_err();
        assert!(error.to_string().contains("cannot write"), "{error}");
        assert!(!other.path().join("trips").exists(), "nothing is published");
    }
}
