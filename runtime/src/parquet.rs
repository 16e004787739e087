//! Parquet files written with encodings Baton chooses.
//!
//! polars' own writer decides for every float and string column of every row group whether to
//! dictionary-encode it by estimating the column's distinct values with a HyperLogLog sketch of
//! 16,384 registers. Counting that sketch costs the same (tens of microseconds) whatever the
//! column's length, and a pipeline writes many small row groups: on the reference run (91 lake
//! files of about 1,250 rows, plus the checkpoints) it was the largest single item of the
//! profile, 11 % of all CPU. This writer takes the decision itself, through polars' Parquet
//! layer, so the files are the same Parquet that polars writes and reads:
//!
//! - Checkpoints are plain-encoded: only this program reads them, rarely, and a dictionary
//!   would cost time on every run to save space in files that are deleted soon.
//! - Dataset files (the lake, exports) get the encodings polars would choose, without the
//!   sketch: floats are plain (polars cannot build a float dictionary, and found that out only
//!   after estimating); a string column up to a few thousand values has its distinct values
//!   counted exactly, by building the dictionary it needs anyway when one pays (unless more than
//!   three quarters of its values are distinct, polars' rule); longer string columns and
//!   everything else are left to polars.

use std::io::Write;

use polars::prelude::{CompatLevel, DataFrame, PolarsError, PolarsResult, Schema, SchemaExt};
use polars_arrow::array::{ArrayRef, DictionaryArray};
use polars_arrow::datatypes::{ArrowDataType, IntegerType, PhysicalType, PrimitiveType};
use polars_parquet::parquet::error::ParquetError;
use polars_parquet::write::{
    CompressedPage, CompressionOptions, Compressor, DynIter, DynStreamingIterator, Encoding,
    FallibleStreamingIterator, FileWriter, Page, ParquetType, StatisticsOptions, Version,
    WriteOptions, array_to_columns, get_dtype_encoding, to_parquet_schema,
};

/// The most rows of one row group, as polars writes them: readers take a file a row group at
/// a time, so a frame of millions of rows is not one group.
pub const ROW_GROUP_ROWS: usize = 512 * 512;

/// String columns up to this length have their dictionary decided by an exact count. Beyond
/// it, building a dictionary that is then thrown away (mostly distinct values) would cost more
/// than polars' sketch.
const EXACT_DICTIONARY_ROWS: usize = 8_192;

/// polars dictionary-encodes a column unless it is longer than this and mostly distinct.
const ALWAYS_DICTIONARY_ROWS: usize = 128;
/// The share of distinct values above which a dictionary does not pay (polars' threshold).
const MAX_DISTINCT_SHARE: f64 = 0.75;

/// What kind of file is written, which sets its encodings, compression and statistics.
#[derive(Clone, Copy, Debug)]
pub enum ParquetLayout {
    /// A checkpoint: plain-encoded, uncompressed, without column statistics. Checkpoints are
    /// written on every run and read rarely, so they skip what costs CPU and helps only readers
    /// that prune.
    Checkpoint,
    /// A file of a dataset that others read (the lake, an export): dictionaries where they
    /// pay, Snappy compression, min/max and null-count statistics, as polars writes by default.
    Dataset,
}

/// A Parquet file written one frame (one or more row groups) at a time.
pub struct ParquetFileWriter<W: Write> {
    writer: FileWriter<W>,
    fields: Vec<ParquetType>,
    options: WriteOptions,
    layout: ParquetLayout,
}

impl<W: Write> ParquetFileWriter<W> {
    /// A writer into `sink` of frames with `schema`.
    pub fn new(sink: W, schema: &Schema, layout: ParquetLayout) -> PolarsResult<Self> {
        let schema = schema.to_arrow(CompatLevel::newest());
        let parquet_schema = to_parquet_schema(&schema)?;
        let fields = parquet_schema.fields().to_vec();
        let options = match layout {
            ParquetLayout::Checkpoint => WriteOptions {
                statistics: StatisticsOptions::empty(),
                version: Version::V1,
                compression: CompressionOptions::Uncompressed,
                data_page_size: None,
            },
            ParquetLayout::Dataset => WriteOptions {
                statistics: StatisticsOptions::default(),
                version: Version::V1,
                compression: CompressionOptions::Snappy,
                data_page_size: None,
            },
        };
        Ok(ParquetFileWriter {
            writer: FileWriter::new_with_parquet_schema(sink, schema, parquet_schema, options),
            fields,
            options,
            layout,
        })
    }

    /// Appends `frame`, in row groups of at most [`ROW_GROUP_ROWS`] rows.
    pub fn write(&mut self, frame: &DataFrame) -> PolarsResult<()> {
        let mut offset = 0;
        while offset < frame.height() {
            let part = frame.slice(offset as i64, ROW_GROUP_ROWS);
            offset += part.height();
            self.write_row_group(&part)?;
        }
        Ok(())
    }

    /// Appends `frame` as one row group. A frame often comes in several chunks (the CSV
    /// parser's threads each make one); a row group per chunk would add a footer entry per
    /// column and chunk, which on the reference run made hundreds of row groups of a few
    /// hundred rows. Instead each chunk becomes pages of the same column chunk. A dictionary
    /// page must come first in its column chunk and cover all of it, so a column written with
    /// a dictionary is made one array first.
    fn write_row_group(&mut self, frame: &DataFrame) -> PolarsResult<()> {
        if frame.height() == 0 {
            return Ok(());
        }
        let mut columns = Vec::with_capacity(self.fields.len());
        for (column, field) in frame.columns().iter().zip(&self.fields) {
            let series = column.as_materialized_series();
            let whole;
            let series = match self.layout {
                ParquetLayout::Dataset if series.n_chunks() > 1 => {
                    whole = series.rechunk();
                    &whole
                }
                _ => series,
            };
            let mut leaves: Vec<Vec<DynIter<'static, PolarsResult<Page>>>> = Vec::new();
            for chunk in 0..series.n_chunks() {
                let array = series.to_arrow(chunk, CompatLevel::newest());
                if array.is_empty() {
                    continue;
                }
                let (array, encodings) = self.encode(&array);
                let pages = array_to_columns(&array, field.clone(), self.options, &encodings)?;
                leaves.resize_with(pages.len(), Vec::new);
                for (leaf, pages) in leaves.iter_mut().zip(pages) {
                    leaf.push(pages);
                }
            }
            for pages in leaves {
                let pages = DynIter::new(pages.into_iter().flatten());
                columns.push(Ok(compressed(pages, self.options.compression)));
            }
        }
        self.writer
            .write(frame.height() as u64, DynIter::new(columns.into_iter()))
    }

    /// Writes the footer and hands back the sink, for its owner to flush or close: a
    /// buffered file flushed here would report no error.
    pub fn finish(mut self) -> PolarsResult<W> {
        self.writer.end(None)?;
        Ok(self.writer.into_inner())
    }

    /// The array to write for a column and the encoding of each of its Parquet leaves.
    fn encode(&self, array: &ArrayRef) -> (ArrayRef, Vec<Encoding>) {
        let defaults = get_dtype_encoding(array.dtype());
        match self.layout {
            ParquetLayout::Checkpoint => {
                // A column that already is a dictionary is written as one whatever is asked.
                let plain = if matches!(
                    array.dtype().to_physical_type(),
                    PhysicalType::Dictionary(_)
                ) {
                    defaults
                } else {
                    vec![Encoding::Plain; defaults.len()]
                };
                (array.clone(), plain)
            }
            ParquetLayout::Dataset => match exact_dictionary(array) {
                Some(Some(dictionary)) => (dictionary, defaults),
                Some(None) => (array.clone(), vec![Encoding::Plain]),
                None => (array.clone(), defaults),
            },
        }
    }
}

/// The decision polars would take for a float, short string or short timestamp column, taken
/// without its sketch: the column as a dictionary when one pays (`Some(Some(_))`), or
/// `Some(None)` for plain values. `None` leaves the decision to polars (integers, which it
/// decides exactly from their range, long columns and other types).
fn exact_dictionary(array: &ArrayRef) -> Option<Option<ArrayRef>> {
    match array.dtype().to_physical_type() {
        // polars' dictionary builder takes no floats: it would estimate, fail and write plain.
        PhysicalType::Primitive(PrimitiveType::Float32 | PrimitiveType::Float64) => {
            return Some(None);
        }
        PhysicalType::Utf8View | PhysicalType::BinaryView
            if array.len() <= EXACT_DICTIONARY_ROWS && array.null_count() < array.len() => {}
        // polars decides integers exactly from their range when it is narrow; a timestamp's
        // range is never narrow, so polars would estimate, and a count is cheaper here.
        _ if matches!(array.dtype(), ArrowDataType::Timestamp(_, _))
            && array.len() <= EXACT_DICTIONARY_ROWS
            && array.null_count() < array.len() => {}
        _ => return None,
    }
    let to = ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(array.dtype().clone()), false);
    let dictionary = polars_compute::cast::cast(array.as_ref(), &to, Default::default()).ok()?;
    let distinct = dictionary
        .as_any()
        .downcast_ref::<DictionaryArray<u32>>()?
        .values()
        .len();
    let pays = array.len() <= ALWAYS_DICTIONARY_ROWS
        || (distinct as f64) / (array.len() as f64) <= MAX_DISTINCT_SHARE;
    Some(pays.then_some(dictionary))
}

/// A column's encoded pages, compressed as they are written.
fn compressed(
    pages: DynIter<'static, PolarsResult<Page>>,
    compression: CompressionOptions,
) -> DynStreamingIterator<'static, CompressedPage, PolarsError> {
    let pages = pages.map(|page| {
        page.map_err(|e| ParquetError::FeatureNotSupported(format!("reraised in polars: {e}")))
    });
    DynStreamingIterator::new(
        Compressor::new_from_vec(pages, compression, Vec::new()).map_err(PolarsError::from),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    fn frame(rows: usize) -> DataFrame {
        df!(
            "fare" => (0..rows).map(|i| (i % 7) as f64 + 0.5).collect::<Vec<_>>(),
            "distance" => (0..rows).map(|i| i as f64 / 3.0).collect::<Vec<_>>(),
            "flag" => (0..rows).map(|i| if i % 3 == 0 { Some("Y") } else if i % 5 == 0 { None } else { Some("N") }).collect::<Vec<_>>(),
            "zone" => (0..rows).map(|i| format!("zone number {i}")).collect::<Vec<_>>(),
            "id" => (0..rows as i64).collect::<Vec<_>>(),
            "ok" => (0..rows).map(|i| i % 2 == 0).collect::<Vec<_>>(),
        )
        .unwrap()
        .lazy()
        .with_columns([
            col("id").cast(DataType::Datetime(TimeUnit::Microseconds, None)).alias("at"),
            col("id").cast(DataType::Int32).cast(DataType::Date).alias("day"),
            // Four distinct timestamps: a dictionary pays.
            (col("id") % lit(4i64) * lit(3_600_000_000i64))
                .cast(DataType::Datetime(TimeUnit::Microseconds, None))
                .alias("slot"),
        ])
        .collect()
        .unwrap()
    }

    fn written(frames: &[DataFrame], layout: ParquetLayout) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut writer = ParquetFileWriter::new(&mut bytes, frames[0].schema(), layout).unwrap();
        for frame in frames {
            writer.write(frame).unwrap();
        }
        writer.finish().unwrap();
        bytes
    }

    /// Whether each column chunk of the first row group is dictionary-encoded, by column name.
    fn dictionaries(bytes: &[u8]) -> std::collections::HashMap<String, bool> {
        let mut reader = std::io::Cursor::new(bytes);
        let metadata = polars_parquet::read::read_metadata(&mut reader).unwrap();
        metadata.row_groups[0]
            .parquet_columns()
            .iter()
            .map(|column| {
                (
                    column.descriptor().path_in_schema[0].to_string(),
                    column.dictionary_page_offset().is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn every_layout_reads_back_as_written() {
        for layout in [ParquetLayout::Checkpoint, ParquetLayout::Dataset] {
            let parts = [frame(3_000), frame(20_000), frame(0), frame(1)];
            let bytes = written(&parts, layout);
            let read = ParquetReader::new(std::io::Cursor::new(bytes))
                .finish()
                .unwrap();
            let mut expected = parts[0].clone();
            for part in &parts[1..] {
                expected.vstack_mut(part).unwrap();
            }
            assert!(
                read.equals_missing(&expected),
                "{layout:?}: {read} != {expected}"
            );
            assert_eq!(read.schema(), expected.schema(), "{layout:?}");
        }
    }

    #[test]
    fn checkpoints_are_plain_and_datasets_encoded_as_polars_would() {
        let checkpoint = dictionaries(&written(&[frame(3_000)], ParquetLayout::Checkpoint));
        assert!(
            checkpoint.values().all(|dictionary| !dictionary),
            "{checkpoint:?}"
        );
        for rows in [100, 3_000, 20_000] {
            let dataset = dictionaries(&written(&[frame(rows)], ParquetLayout::Dataset));
            // Few distinct strings: a dictionary (counted exactly up to 8,192 values); every
            // value distinct: plain, as for floats, which polars cannot put in a dictionary.
            assert!(
                dataset["flag"] && !dataset["fare"] && !dataset["distance"],
                "{dataset:?}"
            );
            assert_eq!(
                dataset["zone"],
                rows <= ALWAYS_DICTIONARY_ROWS,
                "{dataset:?}"
            );
            // The same decisions as polars' own writer with its estimates.
            let mut bytes = Vec::new();
            ParquetWriter::new(&mut bytes)
                .with_compression(ParquetCompression::Snappy)
                .finish(&mut frame(rows))
                .unwrap();
            assert_eq!(dataset, dictionaries(&bytes), "{rows} rows");
        }
    }

    /// Frames of several chunks, as the CSV parser's threads make them: one with every column
    /// cut at the same rows, one with a column chunked differently from the others.
    fn chunked() -> [DataFrame; 2] {
        let mut aligned = frame(1_000);
        aligned.vstack_mut(&frame(2_500)).unwrap();
        aligned.vstack_mut(&frame(7)).unwrap();
        let mut other = frame(3_507).select(["zone"]).unwrap();
        other.rename("zone", "zone_again".into()).unwrap();
        let mut misaligned = aligned.clone();
        misaligned.hstack_mut(other.columns()).unwrap();
        [aligned, misaligned]
    }

    #[test]
    fn a_chunked_frame_is_one_row_group() {
        for frame in chunked() {
            assert_eq!(frame.max_n_chunks(), 3, "the fixture is chunked");
            for layout in [ParquetLayout::Checkpoint, ParquetLayout::Dataset] {
                let bytes = written(std::slice::from_ref(&frame), layout);
                let mut reader = std::io::Cursor::new(&bytes);
                let metadata = polars_parquet::read::read_metadata(&mut reader).unwrap();
                assert_eq!(metadata.row_groups.len(), 1, "{layout:?}");
                let read = ParquetReader::new(std::io::Cursor::new(bytes))
                    .finish()
                    .unwrap();
                assert!(read.equals_missing(&frame), "{layout:?}");
            }
            // The dataset layout decides its dictionaries on the whole column, as for one chunk.
            let mut whole = frame.clone();
            whole.rechunk_mut();
            assert_eq!(
                dictionaries(&written(&[frame], ParquetLayout::Dataset)),
                dictionaries(&written(&[whole], ParquetLayout::Dataset))
            );
        }
    }

    #[test]
    fn short_timestamp_columns_are_counted_exactly() {
        let frame = frame(3_000);
        let chunk = |name: &str| {
            frame
                .column(name)
                .unwrap()
                .as_materialized_series()
                .to_arrow(0, CompatLevel::newest())
        };
        assert!(matches!(exact_dictionary(&chunk("slot")), Some(Some(_))));
        assert!(matches!(exact_dictionary(&chunk("at")), Some(None)));
    }

    #[test]
    fn a_long_frame_is_cut_into_row_groups() {
        let rows = 2 * ROW_GROUP_ROWS + 10;
        let bytes = written(&[frame(rows)], ParquetLayout::Checkpoint);
        let mut reader = std::io::Cursor::new(&bytes);
        let metadata = polars_parquet::read::read_metadata(&mut reader).unwrap();
        let groups: Vec<usize> = metadata.row_groups.iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 10]);
    }
}
