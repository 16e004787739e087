//! Sources: files over HTTP(S) or from the local file system, CSV or Parquet, gzip or not.
//!
//! What arrives is checked against the compiled schema at the boundary: a missing column, a
//! value that does not parse as its declared type or a null in a NOT NULL column is reported
//! naming the column, the URL and the partition, before any block downstream runs.

use std::borrow::Cow;
use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use polars::prelude::*;
use tracing::{info, warn};

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::pipeline::{BaseType, Column};
use crate::rows::Rows;
use crate::schema::{conform, polars_schema};
use crate::store::{matching_files, open_store};

/// Where a source file is.
#[derive(Clone, Debug)]
pub enum Location {
    /// `path` under the base URL of connection `connection`.
    Http {
        /// The connection whose URL is the base.
        connection: &'static str,
        /// The path after the base URL.
        path: String,
    },
    /// Files of the object store that connection `connection` names (`s3://`, `gs://`,
    /// `file://`, a folder). The path may hold globs; every matching file is read, and columns
    /// the files lack are filled from hive folder names (`lpep_pickup_date=2021-01-05/`).
    Store {
        /// The connection naming the store.
        connection: &'static str,
        /// The path or glob under the store's prefix.
        path: String,
    },
    /// A local path, relative to the working directory.
    File {
        /// The path.
        path: String,
    },
}

/// File formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// CSV with a header row.
    Csv,
    /// Parquet.
    Parquet,
}

/// Compression of the file as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
}

/// How long one HTTP request may take, connection included.
const HTTP_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads a source file into a frame that has exactly the compiled schema `columns`.
pub async fn read_source(
    ctx: &RunContext,
    location: Location,
    format: FileFormat,
    compression: Compression,
    columns: &'static [Column],
) -> BlockResult<DataFrame> {
    if let Location::Store { connection, path } = &location {
        return read_store(ctx, connection, path, format, compression, columns).await;
    }
    let (origin, bytes) = fetch(ctx, &location).await?;
    let downloaded = bytes.len();
    crate::audit::note_input(ctx, &crate::context::redact(&origin), &bytes);
    // `prepare` also records the file's own columns, from the same decompressed bytes.
    let observing = ctx.resources().observing();
    let (observed, frame) = tokio::task::spawn_blocking({
        let origin = origin.clone();
        move || {
            decode(&bytes, compression, format, observing, |data| {
                parse_plain(data, format, columns)
            })
            .map_err(|e| e.context(&origin))
        }
    })
    .await
    .map_err(|e| BlockError::fatal(format!("parser panicked: {e}")))?
    .map_err(|e| e.context(partition_text(ctx)))?;
    // The file's own columns are recorded even when the declared schema cannot read it.
    if let Some(columns) = observed {
        ctx.resources().observe(crate::prepare::Observation {
            location: crate::context::redact(&origin),
            columns,
        });
    }
    let frame = frame
        .map_err(|e| e.context(&origin))
        .map_err(|e| e.context(partition_text(ctx)))?;
    info!(source = %origin, bytes = downloaded, rows = frame.height(), "read source");
    Ok(frame)
}

/// How much CSV text makes one batch of a streamed source: small enough that the blocks after
/// it start on the first rows while the rest is still being parsed and that memory holds only
/// a few batches, large enough that polars parses each batch on every core and the per-batch
/// work of the blocks after it stays small. 2 MiB against 8 MiB measured the same time at 1x
/// and 10x, with peaks of 101 against 110 MB at 1x and 151 against 193 MB at 10x (1 MiB cost
/// 7 % more CPU). `BATON_BATCH_BYTES` overrides it.
const STREAM_BATCH_BYTES: usize = 2 << 20;

pub(crate) fn stream_batch_bytes() -> usize {
    std::env::var("BATON_BATCH_BYTES")
        .ok()
        .and_then(|bytes| bytes.parse().ok())
        .filter(|&bytes| bytes > 0)
        .unwrap_or(STREAM_BATCH_BYTES)
}

/// Reads one CSV file (gzip or not) over HTTP or from the local file system as batches of
/// rows, each with exactly the compiled schema `columns`, parsed while the blocks downstream
/// work on the batches before. A download goes to a temporary file first, so a dropped
/// connection is retried before any row is handed on and the file's bytes never sit in memory;
/// once batches flow, only bad data can fail. `prepare`, which observes whole files, and object
/// store sources read the file whole.
pub async fn stream_source(
    ctx: &RunContext,
    location: Location,
    compression: Compression,
    columns: &'static [Column],
) -> BlockResult<Rows> {
    if ctx.resources().observing() || matches!(location, Location::Store { .. }) {
        return read_source(ctx, location, FileFormat::Csv, compression, columns)
            .await
            .map(Rows::from);
    }
    let (origin, file) = open_file(ctx, &location).await?;
    let file = Arc::new(file);
    let source_file = crate::rows::SourceFile {
        file: file.clone(),
        compression,
    };
    let context = describe(ctx, &origin);
    let block = crate::audit::current_block();
    let ctx = ctx.clone();
    let batch_bytes = stream_batch_bytes();
    let (sender, receiver) = tokio::sync::mpsc::channel::<BlockResult<DataFrame>>(1);
    tokio::task::spawn_blocking(move || {
        let mut batches = 0usize;
        let mut emit = |batch: DataFrame| {
            batches += 1;
            hand_on(&sender, batch)
        };
        let mut stored =
            HashingReader::new(std::io::BufReader::with_capacity(FILE_READ_BYTES, &*file));
        let outcome = csv_batches(&mut stored, compression, batch_bytes, columns, &mut emit)
            .map_err(|e| match compression {
                Compression::Gzip => corrupt_gzip(e, stored.bytes as usize),
                Compression::None => BlockError::fatal(format!("cannot read the file: {e}")),
            });
        match outcome.and_then(|parsed| parsed) {
            Ok(()) => {
                // The bytes as stored identify the file for the audit trail (see `note_input`).
                if let Some(block) = block {
                    let checksum = stored.hasher.finalize().to_hex().to_string();
                    ctx.record_input(block, &crate::context::redact(&origin), checksum);
                }
                info!(source = %context, bytes = stored.bytes, batches, "read source");
            }
            Err(error) => {
                let _ = sender.blocking_send(Err(error.context(&context)));
            }
        }
    });
    Ok(Rows::received(columns, receiver).with_source_file(source_file))
}

/// Parses a CSV file that a streamed source read, kept as its checkpoint, into the rows the
/// source produced from it: the same parser with the same compiled columns.
pub(crate) fn parse_source_file(
    path: &Path,
    compression: Compression,
    columns: &[Column],
) -> BlockResult<DataFrame> {
    let bytes = std::fs::read(path)
        .map_err(|e| BlockError::fatal(format!("cannot read {}: {e}", path.display())))?;
    let parse = |data: &[u8]| parse_plain(data, FileFormat::Csv, columns);
    decode(&bytes, compression, FileFormat::Csv, false, parse).and_then(|(_, frame)| frame)
}

/// The first `rows` rows of a source's kept file, parsing no more of it than they need (the
/// web UI's data preview).
pub(crate) fn head_of_source_file(
    path: &Path,
    compression: Compression,
    columns: &[Column],
    rows: usize,
) -> BlockResult<DataFrame> {
    let failed = |e: &dyn std::fmt::Display| {
        BlockError::fatal(format!("cannot read {}: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|e| failed(&e))?;
    let mut head: Option<DataFrame> = None;
    let mut stacked = Ok(());
    let mut emit = |batch: DataFrame| {
        stacked = match &mut head {
            None => {
                head = Some(batch);
                Ok(())
            }
            Some(frame) => frame
                .vstack_mut_owned(batch)
                .map(drop)
                .map_err(|e| failed(&e)),
        };
        stacked.is_ok() && head.as_ref().is_some_and(|frame| frame.height() < rows)
    };
    let reader = std::io::BufReader::with_capacity(FILE_READ_BYTES, file);
    csv_batches(reader, compression, HEAD_BATCH_BYTES, columns, &mut emit)
        .map_err(|e| failed(&e))??;
    stacked?;
    Ok(head
        .expect("csv_in_chunks hands over at least one chunk")
        .head(Some(rows)))
}

/// The read buffer of a CSV file that is parsed batch by batch (a source's download, or its
/// kept checkpoint): the gzip decoder and the parser ask for small pieces.
const FILE_READ_BYTES: usize = 256 << 10;

/// How much text a preview parses at a time: a few thousand rows of a typical file.
const HEAD_BATCH_BYTES: usize = 1 << 20;

/// Parses a source's kept file (see [`parse_source_file`]) as the source did, batch by batch,
/// for a block that reads it again on a retry: memory holds a few batches, not the file's rows.
pub(crate) fn stream_source_file(
    path: std::path::PathBuf,
    compression: Compression,
    columns: &'static [Column],
    batch_bytes: usize,
) -> Rows {
    let (sender, receiver) = tokio::sync::mpsc::channel::<BlockResult<DataFrame>>(1);
    tokio::task::spawn_blocking(move || {
        let failed = |e: &dyn std::fmt::Display| {
            BlockError::fatal(format!("cannot read checkpoint {}: {e}", path.display()))
        };
        let mut emit = |batch: DataFrame| hand_on(&sender, batch);
        let parsed = std::fs::File::open(&path)
            .map_err(|e| failed(&e))
            .and_then(|file| {
                let reader = std::io::BufReader::with_capacity(FILE_READ_BYTES, file);
                csv_batches(reader, compression, batch_bytes, columns, &mut emit)
                    .map_err(|e| failed(&e))?
            });
        if let Err(error) = parsed {
            let _ = sender.blocking_send(Err(error));
        }
    });
    Rows::received(columns, receiver)
}

/// Hands a parsed batch to the reader of a streamed source, from the thread that parses it, and
/// returns once the reader has taken it out of the channel: the next chunk is read and parsed
/// only then, so a source waiting on slow blocks holds no parsed batch of its own beside the
/// one in the channel. `false` when the reader is gone (its block failed or was cancelled).
fn hand_on(sender: &tokio::sync::mpsc::Sender<BlockResult<DataFrame>>, batch: DataFrame) -> bool {
    sender.blocking_send(Ok(batch)).is_ok()
        // The channel has one place: a place free again means the batch was taken. The permit
        // is given back at once; this thread is the channel's only sender.
        && futures::executor::block_on(sender.reserve()).is_ok()
}

/// Parses CSV text from `reader` (gzip when `compression` says so) in batches of about
/// `batch_bytes` with the compiled `columns`, handing each to `emit` until it returns `false`.
/// The outer error is one of reading; the inner one is the first parse error, or a panic of the
/// parser: a reader of the batches must never take a panic for the end of the rows.
fn csv_batches(
    reader: impl Read,
    compression: Compression,
    batch_bytes: usize,
    columns: &[Column],
    emit: &mut dyn FnMut(DataFrame) -> bool,
) -> std::io::Result<BlockResult<()>> {
    let parse = |data: &[u8]| parse_plain(data, FileFormat::Csv, columns);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match compression {
        Compression::Gzip => csv_in_chunks(MultiGzDecoder::new(reader), batch_bytes, &parse, emit),
        Compression::None => csv_in_chunks(reader, batch_bytes, &parse, emit),
    }))
    .unwrap_or_else(|panic| {
        Ok(Err(BlockError::fatal(format!(
            "the parser panicked: {}",
            crate::error::panic_text(&panic)
        ))))
    })
}

/// Parses CSV text as a streamed source does, for tests that compare with a kept file.
#[cfg(test)]
pub(crate) fn parse_source_file_bytes(text: &[u8], columns: &[Column]) -> BlockResult<DataFrame> {
    parse_plain(text, FileFormat::Csv, columns)
}

/// Reads through, hashing the bytes (BLAKE3) and counting them.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        self.bytes += read as u64;
        Ok(read)
    }
}

/// The URL of `path` under an HTTP connection's base URL.
fn http_url(ctx: &RunContext, connection: &str, path: &str) -> BlockResult<String> {
    let base = ctx.connection_url(connection)?;
    Ok(format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    ))
}

/// Downloads or reads a single source file whole, for a reader that needs all its bytes at
/// once: its origin (URL or path) and its bytes as stored.
async fn fetch(ctx: &RunContext, location: &Location) -> BlockResult<(String, bytes::Bytes)> {
    match location {
        Location::Http { connection, path } => {
            let url = http_url(ctx, connection, path)?;
            let response = get(&url)
                .await
                .map_err(|e| e.context(describe(ctx, &url)))?;
            let bytes = response.bytes().await.map_err(|e| {
                BlockError::retryable(format!("download interrupted: {}", error_chain(&e)))
                    .context(describe(ctx, &url))
            })?;
            Ok((url, bytes))
        }
        Location::File { path } => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| BlockError::fatal(format!("{}: {e}", describe(ctx, path))))?;
            Ok((path.clone(), bytes.into()))
        }
        Location::Store { .. } => Err(BlockError::fatal(
            "an object store source is read by read_store, file by file",
        )),
    }
}

/// Downloads (to an anonymous temporary file) or opens a single source file, for a reader that
/// streams it: its origin (URL or path) and the file, ready to read from its start.
async fn open_file(ctx: &RunContext, location: &Location) -> BlockResult<(String, std::fs::File)> {
    match location {
        Location::Http { connection, path } => {
            let url = http_url(ctx, connection, path)?;
            let file = download_to_file(&url)
                .await
                .map_err(|e| e.context(describe(ctx, &url)))?;
            Ok((url, file))
        }
        Location::File { path } => {
            let file = std::fs::File::open(path)
                .map_err(|e| BlockError::fatal(format!("{}: {e}", describe(ctx, path))))?;
            Ok((path.clone(), file))
        }
        Location::Store { .. } => Err(BlockError::fatal(
            "an object store source is read by read_store, file by file",
        )),
    }
}

/// How many files of an object store source are read at once.
const STORE_READ_CONCURRENCY: usize = 8;

/// Reads every file of a store that matches `pattern`, in path order, into one frame.
async fn read_store(
    ctx: &RunContext,
    connection: &str,
    pattern: &str,
    format: FileFormat,
    compression: Compression,
    columns: &[Column],
) -> BlockResult<DataFrame> {
    let location = open_store(&ctx.connection_url(connection)?)?;
    let shown = format!("{}/{pattern}", location.display.trim_end_matches('/'));
    let files = matching_files(location.store.as_ref(), pattern)
        .await
        .map_err(|e| e.context(describe(ctx, &shown)))?;
    if files.is_empty() {
        return Err(BlockError::fatal(format!(
            "{}: no file matches",
            describe(ctx, &shown)
        )));
    }
    let count = files.len();
    // `prepare` records the columns of the first file, and those its folder names add.
    let observing = ctx.resources().observing();
    let reads = files.into_iter().enumerate().map(|(index, path)| {
        let store = location.store.clone();
        let origin = format!("{}/{path}", location.display.trim_end_matches('/'));
        let columns = columns.to_vec();
        let observe_this = observing && index == 0;
        async move {
            let bytes = async { Ok::<_, BlockError>(store.get(&path).await?.bytes().await?) }
                .await
                .map_err(|e| e.context(&origin))?;
            crate::audit::note_input(ctx, &crate::context::redact(&origin), &bytes);
            let shown = origin.clone();
            tokio::task::spawn_blocking(move || {
                let (observed, frame) =
                    decode(&bytes, compression, format, observe_this, |data| {
                        parse_with_hive_columns(data, format, &columns, &path)
                    })?;
                let observation = observed.map(|mut columns| {
                    columns.extend(
                        hive_folders(&path)
                            .into_iter()
                            .map(|(name, value)| (name, folder_type(&value).to_string())),
                    );
                    crate::prepare::Observation {
                        location: crate::context::redact(&shown),
                        columns,
                    }
                });
                Ok((observation, frame.map_err(|e| e.context(&shown))))
            })
            .await
            .map_err(|e| BlockError::fatal(format!("parser panicked: {e}")))?
            .map_err(|e: BlockError| e.context(&origin))
        }
    });
    let read: Vec<(Option<crate::prepare::Observation>, BlockResult<DataFrame>)> =
        futures::stream::iter(reads)
            .buffered(STORE_READ_CONCURRENCY)
            .try_collect()
            .await
            .map_err(|e: BlockError| e.context(partition_text(ctx)))?;
    // The first file's own columns are recorded even when the declared schema cannot read it,
    // as for single files.
    let mut frames = Vec::with_capacity(read.len());
    for (observed, frame) in read {
        if let Some(observation) = observed {
            ctx.resources().observe(observation);
        }
        frames.push(frame);
    }
    let frames: Vec<DataFrame> = frames
        .into_iter()
        .collect::<BlockResult<_>>()
        .map_err(|e| e.context(partition_text(ctx)))?;
    let mut frames = frames.into_iter();
    let mut frame = frames.next().unwrap_or_default();
    for next in frames {
        frame.vstack_mut_owned(next)?;
    }
    frame.rechunk_mut();
    info!(source = %shown, files = count, rows = frame.height(), "read source");
    Ok(frame)
}

/// A file's own columns as `prepare` records them: name and `type?` text.
type FileColumns = Vec<(String, String)>;

/// Decompresses file bytes, observes their columns when `observing` (for `prepare`), and parses
/// them. A file that cannot be read fails; a parse failure is returned beside the observation,
/// so that `prepare` records the file's columns even when the declared schema cannot read it.
fn decode(
    bytes: &[u8],
    compression: Compression,
    format: FileFormat,
    observing: bool,
    parse: impl Fn(&[u8]) -> BlockResult<DataFrame>,
) -> BlockResult<(Option<FileColumns>, BlockResult<DataFrame>)> {
    // `prepare` observes whole files; runs parse a gzip CSV as it inflates.
    if !observing && compression == Compression::Gzip && format == FileFormat::Csv {
        return Ok((None, gzip_csv_in_chunks(bytes, CSV_CHUNK_BYTES, &parse)?));
    }
    let data = decompress(bytes, compression)?;
    let observed = observing.then(|| observe(&data, format)).transpose()?;
    Ok((observed, parse(&data)))
}

/// The `name=value` folders of a path, outermost first.
fn hive_folders(path: &object_store::path::Path) -> Vec<(String, String)> {
    path.parts()
        .filter_map(|part| {
            let (name, value) = part.as_ref().split_once('=')?;
            Some((name.to_string(), value.replace("%2F", "/")))
        })
        .collect()
}

/// The type `prepare` records for a folder value: what it parses as.
fn folder_type(value: &str) -> &'static str {
    if value == crate::sink::lake::NULL_PARTITION {
        "null"
    } else if crate::schema::parse_date(value).is_some() {
        "date"
    } else if value.parse::<i64>().is_ok() {
        "int64"
    } else {
        "string"
    }
}

/// Parses one file of a hive-partitioned dataset. A declared column that appears as a
/// `name=value` folder in the file's path is taken from there, as Spark and pyarrow do: the
/// lake sink writes the partition column into folder names, not into the files.
fn parse_with_hive_columns(
    data: &[u8],
    format: FileFormat,
    columns: &[Column],
    path: &object_store::path::Path,
) -> BlockResult<DataFrame> {
    let folders = hive_folders(path);
    let from_folder = |column: &Column| folders.iter().find(|(name, _)| name == column.name);
    let in_file: Vec<Column> = columns
        .iter()
        .filter(|c| from_folder(c).is_none())
        .copied()
        .collect();
    let frame = parse_plain(data, format, &in_file)?;
    let added: Vec<Expr> = columns
        .iter()
        .filter_map(|column| {
            let (_, value) = from_folder(column)?;
            // Dates and timestamps are parsed here: polars' string-to-date cast is deprecated.
            // A value that does not parse becomes null, which `conform` reports for a NOT NULL
            // column.
            let value = match column.ty {
                _ if value == crate::sink::lake::NULL_PARTITION => lit(NULL),
                BaseType::Date => crate::schema::parse_date(value).map_or(lit(NULL), lit),
                BaseType::Timestamp => crate::schema::parse_timestamp(value)
                    .map_or(lit(NULL), |t| lit(t.and_utc().timestamp_micros())),
                _ => lit(value.clone()),
            };
            Some(value.cast(column.ty.dtype()).alias(column.name))
        })
        .collect();
    if added.is_empty() {
        return Ok(frame);
    }
    conform(frame.lazy().with_columns(added).collect()?, columns)
}

fn partition_text(ctx: &RunContext) -> String {
    match ctx.partition_opt() {
        Some(partition) => format!("partition {partition}"),
        None => "source".to_string(),
    }
}

fn describe(ctx: &RunContext, origin: &str) -> String {
    format!("{} ({origin})", partition_text(ctx))
}

/// Downloads a URL into an anonymous temporary file (gone when closed), rewound for reading.
/// Server errors, rate limits and network failures are retryable; a 4xx is not.
async fn download_to_file(url: &str) -> BlockResult<std::fs::File> {
    use std::io::{Seek, Write};
    let mut response = get(url).await?;
    let mut file = tempfile::tempfile()
        .map_err(|e| BlockError::fatal(format!("cannot create a temporary file: {e}")))?;
    let write_error =
        |e: std::io::Error| BlockError::fatal(format!("cannot spool the download: {e}"));
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            BlockError::retryable(format!("download interrupted: {}", error_chain(&e)))
        })?;
        let Some(chunk) = chunk else { break };
        file.write_all(&chunk).map_err(write_error)?;
    }
    file.rewind().map_err(write_error)?;
    Ok(file)
}

/// Sends a GET and checks its status.
async fn get(url: &str) -> BlockResult<reqwest::Response> {
    let client = crate::http::client(HTTP_TIMEOUT, Default::default())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| BlockError::retryable(format!("GET failed: {}", error_chain(&e))))?;
    let status = response.status();
    if !status.is_success() {
        let message = format!("GET returned HTTP {status}");
        return Err(
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                BlockError::retryable(message)
            } else {
                BlockError::fatal(message)
            },
        );
    }
    Ok(response)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Decompresses and parses file bytes, then conforms the frame to the compiled schema.
pub fn parse(
    bytes: &[u8],
    format: FileFormat,
    compression: Compression,
    columns: &[Column],
) -> BlockResult<DataFrame> {
    parse_plain(&decompress(bytes, compression)?, format, columns)
}

/// How much inflated CSV text is parsed at a time. A gzip month of trips inflates to five to ten
/// times its size; parsed chunk by chunk, the whole text never sits in memory beside the rows
/// parsed from it.
const CSV_CHUNK_BYTES: usize = 32 << 20;

/// Inflates a gzip CSV file and parses it in chunks of about `chunk_bytes` of text, each cut at
/// the end of a record and given the header row, into one frame (one polars chunk per text
/// chunk, not copied together). The outer error is a file that cannot be inflated; the inner
/// one is a parse error, as `decode` reports them.
fn gzip_csv_in_chunks(
    bytes: &[u8],
    chunk_bytes: usize,
    parse: &dyn Fn(&[u8]) -> BlockResult<DataFrame>,
) -> BlockResult<BlockResult<DataFrame>> {
    let corrupt = |e| corrupt_gzip(e, bytes.len());
    let mut frame: Option<DataFrame> = None;
    let mut stacked = Ok(());
    let parsed = csv_in_chunks(
        MultiGzDecoder::new(bytes),
        chunk_bytes,
        parse,
        &mut |batch| {
            stacked = match &mut frame {
                None => {
                    frame = Some(batch);
                    Ok(())
                }
                Some(frame) => frame.vstack_mut(&batch).map(|_| ()).map_err(Into::into),
            };
            stacked.is_ok()
        },
    )
    .map_err(corrupt)?;
    if let Err(error) = parsed.and(stacked) {
        return Ok(Err(error));
    }
    Ok(Ok(
        frame.expect("csv_in_chunks hands over at least one chunk")
    ))
}

/// Reads CSV text from `reader` and parses it in chunks of about `chunk_bytes`, each cut at the
/// end of a record and given the header row, handing each parsed chunk to `emit` in order until
/// it returns `false`. At least one chunk is handed over, an empty one for an empty file. The
/// outer error is one of reading; the inner one, the first parse error.
fn csv_in_chunks(
    mut reader: impl Read,
    chunk_bytes: usize,
    parse: &dyn Fn(&[u8]) -> BlockResult<DataFrame>,
    emit: &mut dyn FnMut(DataFrame) -> bool,
) -> std::io::Result<BlockResult<()>> {
    // Between turns a source keeps only `carry`: the header row (once it is known) and the
    // partial record after the last cut. In its turn the text is read into the process's one
    // text buffer after them and parsed where it lies, so sources side by side (the months of a
    // backfill) hold one chunk of text between them, not one each, and the buffer's memory is
    // touched once.
    let mut carry: Vec<u8> = Vec::new();
    let mut header: Option<usize> = None;
    let mut finished = false;
    let mut emitted = false;
    loop {
        // The text is read in the parse turn too: the other sources wait before reading theirs.
        let mut turn = ParseTurn::take();
        let mut own_text = Vec::new();
        let text = turn.text().unwrap_or(&mut own_text);
        text.clear();
        text.extend_from_slice(&carry);
        let body_start = header.unwrap_or(0);
        let mut want = chunk_bytes.max(1);
        // A chunk holds at least one record after the header: one record longer than a chunk
        // is read on until it ends.
        let cut = loop {
            while !finished && text.len() < body_start + want {
                let missing = body_start + want - text.len();
                text.reserve_exact(missing);
                let read = (&mut reader).take(missing as u64).read_to_end(text)?;
                finished = read < missing;
            }
            if finished {
                break text.len();
            }
            let records_start = header.unwrap_or_else(|| {
                text.iter()
                    .position(|b| *b == b'\n')
                    .map_or(text.len(), |i| i + 1)
            });
            match last_record_end(text).filter(|&end| end > records_start) {
                Some(end) => break end,
                None => want = text.len() * 2,
            }
        };
        if finished && header.map_or(text.is_empty(), |end| text.len() <= end) {
            break;
        }
        let header_end = *header.get_or_insert_with(|| {
            text[..cut]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(cut, |i| i + 1)
        });
        let parsed = match parse(&text[..cut]) {
            Ok(parsed) => parsed,
            Err(error) => return Ok(Err(error)),
        };
        carry.clear();
        carry.extend_from_slice(&text[..header_end]);
        carry.extend_from_slice(&text[cut..]);
        drop(turn);
        emitted = true;
        if !emit(parsed) {
            return Ok(Ok(()));
        }
    }
    if !emitted {
        match parse(&[]) {
            Ok(empty) => {
                emit(empty);
            }
            Err(error) => return Ok(Err(error)),
        }
    }
    Ok(Ok(()))
}

/// The position just after the last complete record of CSV text: after its last newline that
/// is outside quotes. Quotes toggle and a doubled quote toggles twice, so a newline is outside
/// quotes when the text before it holds an even number of them (text starts at a record).
fn last_record_end(text: &[u8]) -> Option<usize> {
    // memchr's vectorised search: the byte-by-byte count it replaced was 4 % of a run's CPU,
    // every byte of every batch being looked at once here before the parser reads it again.
    let quotes = |part: &[u8]| memchr::memchr_iter(b'"', part).count();
    let mut end = memchr::memrchr(b'\n', text)?;
    let mut before = quotes(&text[..end]);
    while before % 2 == 1 {
        let previous = memchr::memrchr(b'\n', &text[..end])?;
        before -= quotes(&text[previous..end]);
        end = previous;
    }
    Some(end + 1)
}

/// A gzip file that does not inflate: cut short in transfer, or not gzip at all.
fn corrupt_gzip(error: std::io::Error, compressed: usize) -> BlockError {
    BlockError::fatal(format!(
        "the gzip data is truncated or corrupt ({error}); {compressed} compressed bytes received"
    ))
}

/// The file's bytes as stored, decompressed when they are compressed.
fn decompress(bytes: &[u8], compression: Compression) -> BlockResult<Cow<'_, [u8]>> {
    match compression {
        Compression::None => Ok(Cow::Borrowed(bytes)),
        Compression::Gzip => {
            let mut out = Vec::with_capacity(bytes.len() * 5);
            MultiGzDecoder::new(bytes)
                .read_to_end(&mut out)
                .map_err(|e| corrupt_gzip(e, bytes.len()))?;
            Ok(Cow::Owned(out))
        }
    }
}

/// Parses decompressed file bytes, then conforms the frame to the compiled schema.
fn parse_plain(data: &[u8], format: FileFormat, columns: &[Column]) -> BlockResult<DataFrame> {
    let frame = match format {
        FileFormat::Csv => read_csv(data, columns)?,
        FileFormat::Parquet => {
            // One reader: the footer read for the column check is reused for the data.
            let mut reader = ParquetReader::new(Cursor::new(data));
            let header: Vec<String> = reader
                .schema()?
                .iter_names()
                .map(|n| n.to_string())
                .collect();
            check_present(&header, columns)?;
            reader
                .with_columns(Some(columns.iter().map(|c| c.name.to_string()).collect()))
                .finish()?
        }
    };
    conform(frame, columns)
}

/// The columns of a file as they are, whatever the pipeline declares: name and `type?` text
/// (`?` when the file has a null). Every row is read: real files are often complete at the top
/// and sparse at the bottom (the green-taxi months are), so a sample of the first rows would
/// lock a nullable column as never null. Used by `prepare`, which runs rarely.
fn observe(data: &[u8], format: FileFormat) -> BlockResult<FileColumns> {
    let frame = match format {
        FileFormat::Csv => CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(None)
            .with_parse_options(CsvParseOptions::default().with_try_parse_dates(true))
            .into_reader_with_file_handle(Cursor::new(data))
            .finish()?,
        FileFormat::Parquet => ParquetReader::new(Cursor::new(data)).finish()?,
    };
    Ok(frame
        .columns()
        .iter()
        .map(|column| {
            // A column empty in every row has no type to tell (CSV inference calls it text).
            if !column.is_empty() && column.null_count() == column.len() {
                return (column.name().to_string(), "null".to_string());
            }
            let ty = match column.dtype() {
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "int64",
                DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "int64",
                DataType::Float32 | DataType::Float64 => "float64",
                DataType::Boolean => "bool",
                DataType::Date => "date",
                DataType::Datetime(_, _) => "timestamp",
                DataType::Null => "null",
                _ => "string",
            };
            let nullable = if column.null_count() > 0 { "?" } else { "" };
            (column.name().to_string(), format!("{ty}{nullable}"))
        })
        .collect())
}

/// Every declared column must be in the file; extra columns are dropped with a warning, so an
/// upstream addition does not break the pipeline but is still visible.
fn check_present(header: &[String], columns: &[Column]) -> BlockResult<()> {
    let missing: Vec<&str> = columns
        .iter()
        .map(|c| c.name)
        .filter(|name| !header.iter().any(|h| h == name))
        .collect();
    if !missing.is_empty() {
        return Err(BlockError::fatal(format!(
            "the file has no column{} {} (declared in the source's schema); its columns are: {}",
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            header.join(", ")
        )));
    }
    let extra: Vec<&String> = header
        .iter()
        .filter(|h| !columns.iter().any(|c| c.name == h.as_str()))
        .collect();
    if !extra.is_empty() {
        warn!(columns = ?extra, "the file has columns the pipeline does not declare; they are ignored");
    }
    Ok(())
}

/// Taken for every CSV parse of the process (see [`ParseTurn`]), so that one runs at a time:
/// a parse already spreads over every core (the typed parser's pieces and polars' reader both
/// run on polars' pool), so parses side by side (the months of a backfill) end no sooner, but
/// each holds its text and its column builders at once. It guards the process's one buffer of
/// CSV text waiting to be parsed.
static PARSE_TURN: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    static HOLDS_PARSE_TURN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The process's turn to parse CSV text. A thread that holds it may take it again for free, so
/// a streamed source holds it while it reads a chunk's text and while the parser (which takes it
/// too) parses it. It is never held while waiting for anything but the CPU: not while a batch
/// waits for room downstream, nor across a network read (downloads finish before parsing).
struct ParseTurn(Option<std::sync::MutexGuard<'static, Vec<u8>>>);

impl ParseTurn {
    /// The process's text buffer, for the outermost holder of the turn (`None` for a thread
    /// that took the turn again).
    fn text(&mut self) -> Option<&mut Vec<u8>> {
        self.0.as_deref_mut()
    }

    fn take() -> ParseTurn {
        if HOLDS_PARSE_TURN.get() {
            return ParseTurn(None);
        }
        // A parse that panicked left at worst text in the buffer, which every holder clears
        // before use.
        let guard = PARSE_TURN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        HOLDS_PARSE_TURN.set(true);
        ParseTurn(Some(guard))
    }
}

impl Drop for ParseTurn {
    fn drop(&mut self) {
        if self.0.is_some() {
            HOLDS_PARSE_TURN.set(false);
        }
    }
}

fn read_csv(data: &[u8], columns: &[Column]) -> BlockResult<DataFrame> {
    let _turn = ParseTurn::take();
    let header_line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let header: Vec<String> = String::from_utf8_lossy(header_line)
        .trim_end_matches('\r')
        .split(',')
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect();
    if data.is_empty() {
        return Err(BlockError::fatal("the file is empty (no header row)"));
    }
    check_present(&header, columns)?;
    // The plain layout (every file the reference pipelines read) goes straight into typed
    // arrays; anything else through polars' general reader.
    match crate::typed_csv::parse(data, &header, columns) {
        Some(frame) => Ok(frame),
        None => read_csv_with_polars(data, &header, columns),
    }
}

/// Parses CSV text of any layout with polars' reader: `header` is its header row, split.
pub(crate) fn read_csv_with_polars(
    data: &[u8],
    header: &[String],
    columns: &[Column],
) -> BlockResult<DataFrame> {
    let declared = polars_schema(columns);
    // Columns the pipeline does not declare are read as text and dropped right after; so are
    // timestamps and dates at first, which `parse_temporal` then converts much faster than the
    // CSV reader's per-value format inference would.
    let full: Schema = header
        .iter()
        .map(|name| {
            let dtype = match declared.get(name.as_str()) {
                Some(DataType::Datetime(_, _) | DataType::Date) | None => DataType::String,
                Some(dtype) => dtype.clone(),
            };
            Field::new(name.as_str().into(), dtype)
        })
        .collect();
    let frame = CsvReadOptions::default()
        .with_has_header(true)
        .with_schema(Some(Arc::new(full)))
        .into_reader_with_file_handle(Cursor::new(data))
        .finish()
        .map_err(|e| {
            BlockError::fatal(format!("cannot parse the CSV with the declared types: {e}"))
        })?;
    parse_temporal(frame.select(columns.iter().map(|c| c.name))?, columns)
}

/// Converts the timestamp and date columns, read as text, to their declared types. The usual
/// layouts (`2021-01-01 00:15:56`, `2021-01-01`) go through polars' fixed-format parser; a
/// column with any value in another layout is parsed again with polars' format inference,
/// which accepts ISO-8601 variants and fractions of a second. A value that is not a timestamp
/// at all fails the block, naming the column and the value.
fn parse_temporal(frame: DataFrame, columns: &[Column]) -> BlockResult<DataFrame> {
    let temporal: Vec<&Column> = columns
        .iter()
        .filter(|c| matches!(c.ty, BaseType::Timestamp | BaseType::Date))
        .collect();
    if temporal.is_empty() {
        return Ok(frame);
    }
    let convert = |column: &Column, format: Option<&str>| {
        let options = StrptimeOptions {
            format: format.map(Into::into),
            strict: false,
            exact: true,
            cache: false,
        };
        let text = col(column.name).str();
        match column.ty {
            BaseType::Date => text.to_date(options),
            _ => text.to_datetime(Some(TimeUnit::Microseconds), None, options, lit("raise")),
        }
    };
    let fast = frame
        .clone()
        .lazy()
        .with_columns(
            temporal
                .iter()
                .map(|c| {
                    let format = if c.ty == BaseType::Date {
                        "%Y-%m-%d"
                    } else {
                        "%Y-%m-%d %H:%M:%S"
                    };
                    convert(c, Some(format))
                })
                .collect::<Vec<_>>(),
        )
        .collect()?;
    let mut parsed = fast;
    for column in temporal {
        let before = frame.column(column.name)?.null_count();
        if parsed.column(column.name)?.null_count() == before {
            continue;
        }
        let inferred = frame
            .clone()
            .lazy()
            .select([convert(column, None)])
            .collect()
            .map_err(|e| BlockError::fatal(format!("column `{}`: {e}", column.name)))?;
        let inferred = inferred.column(column.name)?;
        if inferred.null_count() > before {
            let text = frame.column(column.name)?.str()?;
            let bad = text
                .iter()
                .zip(inferred.is_null().iter())
                .find_map(|(value, null)| (null == Some(true)).then_some(value).flatten())
                .unwrap_or_default();
            return Err(BlockError::fatal(format!(
                "column `{}` is declared {} but `{bad}` is not one",
                column.name,
                column.type_text()
            )));
        }
        parsed.with_column(inferred.clone())?;
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[Column] = &[
        Column::required("id", BaseType::Int64),
        Column::nullable("at", BaseType::Timestamp),
        Column::nullable("day", BaseType::Date),
    ];

    fn parse_csv(text: &str) -> BlockResult<DataFrame> {
        parse(text.as_bytes(), FileFormat::Csv, Compression::None, COLUMNS)
    }

    #[test]
    fn the_usual_layout_and_nulls() {
        let frame = parse_csv("id,at,day\n1,2021-01-01 00:15:56,2021-01-01\n2,,\n").unwrap();
        assert_eq!(frame.column("at").unwrap().null_count(), 1);
        assert_eq!(frame.column("day").unwrap().null_count(), 1);
        let at = frame.column("at").unwrap().cast(&DataType::String).unwrap();
        assert_eq!(at.str().unwrap().get(0), Some("2021-01-01 00:15:56.000000"));
        assert_eq!(
            frame.column("day").unwrap().dtype(),
            &DataType::Date,
            "{frame}"
        );
    }

    /// Parses take turns; a parser that panicked while it had the turn (the panic is caught
    /// and reported as the block's error) must not stop every later parse of the process.
    #[test]
    fn a_panic_during_a_parse_does_not_stop_later_parses() {
        let _ = std::thread::spawn(|| {
            let _turn = PARSE_TURN.lock().unwrap();
            panic!("a parser panicked");
        })
        .join();
        assert!(PARSE_TURN.is_poisoned());
        let frame = parse_csv("id,at,day\n1,2021-01-01 00:15:56,2021-01-01\n").unwrap();
        assert_eq!(frame.height(), 1);
    }

    #[test]
    fn other_layouts_fall_back_to_inference() {
        let frame = parse_csv(
            "id,at,day\n1,2021-01-01T00:15:56.250,2021-01-01\n2,2021-01-02T01:00:00,2021-01-02\n",
        )
        .unwrap();
        let at = frame.column("at").unwrap().cast(&DataType::String).unwrap();
        assert_eq!(at.str().unwrap().get(0), Some("2021-01-01 00:15:56.250000"));
        assert_eq!(at.str().unwrap().get(1), Some("2021-01-02 01:00:00.000000"));
    }

    proptest::proptest! {
        /// The cut is after the last newline preceded by an even number of quotes: the
        /// definition, checked byte by byte, on text made of the bytes that matter.
        #[test]
        fn a_cut_is_after_the_last_newline_outside_quotes(
            text in proptest::collection::vec(proptest::sample::select(&b"a,\"\n\r"[..]), 0..200)
        ) {
            let mut quotes = 0;
            let mut expected = None;
            for (i, byte) in text.iter().enumerate() {
                match byte {
                    b'"' => quotes += 1,
                    b'\n' if quotes % 2 == 0 => expected = Some(i + 1),
                    _ => {}
                }
            }
            proptest::prop_assert_eq!(last_record_end(&text), expected);
        }
    }

    #[test]
    fn gzip_csv_parsed_in_chunks_equals_the_whole_file() {
        use std::io::Write as _;
        // Quoted fields with commas, doubled quotes and newlines, so that cuts must respect
        // quotes; CRLF line ends as in the TLC's files.
        const QUOTED: &[Column] = &[
            Column::required("id", BaseType::Int64),
            Column::nullable("note", BaseType::String),
            Column::nullable("at", BaseType::Timestamp),
        ];
        let mut text = String::from("id,note,at\r\n");
        for i in 0..40 {
            let note = match i % 4 {
                0 => "\"two\nlines\"".to_string(),
                1 => "\"say \"\"hi\"\", then\"".to_string(),
                2 => String::new(),
                _ => format!("plain{i}"),
            };
            text.push_str(&format!("{i},{note},2021-01-01 00:00:{:02}\r\n", i % 60));
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        let whole = parse_plain(text.as_bytes(), FileFormat::Csv, QUOTED).unwrap();
        let parse = |data: &[u8]| parse_plain(data, FileFormat::Csv, QUOTED);
        for chunk in [1, 2, 7, 16, 33, 64, 100, 1_000, 1 << 20] {
            let chunked = gzip_csv_in_chunks(&bytes, chunk, &parse).unwrap().unwrap();
            assert!(
                chunked.equals_missing(&whole),
                "chunks of {chunk} bytes:\n{chunked}\n{whole}"
            );
            // Every chunk holds at least one record.
            let mut heights = Vec::new();
            csv_in_chunks(text.as_bytes(), chunk, &parse, &mut |batch| {
                heights.push(batch.height());
                true
            })
            .unwrap()
            .unwrap();
            assert!(heights.iter().all(|&rows| rows > 0), "{chunk}: {heights:?}");
        }
        // A file with only its header is one empty batch with the columns.
        let mut batches = Vec::new();
        csv_in_chunks(&b"id,note,at\r\n"[..], 4, &parse, &mut |batch| {
            batches.push(batch);
            true
        })
        .unwrap()
        .unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].height(), 0);
        assert_eq!(batches[0].width(), 3);
    }

    #[test]
    fn the_head_of_a_kept_file_parses_no_more_than_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extract.csv");
        let mut text = String::from("id,at,day\n");
        for i in 0..100_000 {
            text.push_str(&format!("{i},2021-01-01 00:15:56,2021-01-01\n"));
        }
        // Several megabytes in, a row the whole file's parse rejects.
        text.push_str("7,soon,2021-01-02\n");
        std::fs::write(&path, &text).unwrap();
        let head = head_of_source_file(&path, Compression::None, COLUMNS, 3).unwrap();
        assert_eq!(head.height(), 3);
        assert_eq!(
            head.column("id")
                .unwrap()
                .i64()
                .unwrap()
                .into_no_null_iter()
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let whole = parse_source_file(&path, Compression::None, COLUMNS).unwrap_err();
        assert!(whole.message.contains("`soon`"), "{whole}");
    }

    #[test]
    fn truncated_gzip_is_a_read_error_and_bad_rows_a_parse_error() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"id,at,day\n1,2021-01-01 00:15:56,2021-01-01\n2,soon,2021-01-02\n")
            .unwrap();
        let bytes = gz.finish().unwrap();
        let parse = |data: &[u8]| parse_plain(data, FileFormat::Csv, COLUMNS);
        let truncated = gzip_csv_in_chunks(&bytes[..bytes.len() - 10], 8, &parse);
        assert!(truncated.is_err());
        let bad = gzip_csv_in_chunks(&bytes, 8, &parse).unwrap().unwrap_err();
        assert!(bad.message.contains("`soon`"), "{bad}");
    }

    #[test]
    fn a_value_that_is_no_timestamp_is_named() {
        let error = parse_csv("id,at,day\n1,2021-01-01 00:15:56,2021-01-01\n2,soon,2021-01-02\n")
            .unwrap_err();
        assert!(
            error.message.contains("column `at`") && error.message.contains("`soon`"),
            "{error}"
        );
    }
}
