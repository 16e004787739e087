//! PostgreSQL's binary COPY format, written straight from polars columns.
//!
//! Binary COPY spares both sides the text round trip: no float or timestamp is formatted here
//! and parsed again by the server. The format is documented with the COPY command: an 11-byte
//! signature, two 32-bit header fields, then per row a 16-bit field count and per field a 32-bit
//! length (-1 for NULL) and the value in the type's binary send format, big-endian; a 16-bit -1
//! ends the stream.

use polars::prelude::*;
use polars_arrow::array::{BooleanArray, PrimitiveArray, Utf8ViewArray};
use polars_arrow::bitmap::Bitmap;

use crate::error::{BlockError, BlockResult};
use crate::pipeline::{BaseType, Column as ColumnDef};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Days from 1970-01-01 (polars dates) to 2000-01-01 (Postgres dates).
const DATE_OFFSET_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 (polars timestamps) to 2000-01-01 (Postgres timestamps).
const TIMESTAMP_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// The header that starts a binary COPY stream.
pub fn header() -> Vec<u8> {
    let mut out = Vec::with_capacity(19);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    out.extend_from_slice(&0i32.to_be_bytes()); // no header extension
    out
}

/// The trailer that ends a binary COPY stream.
pub fn trailer() -> [u8; 2] {
    (-1i16).to_be_bytes()
}

/// Appends the rows of `frame` (columns in `columns` order, with the compiled types) to `out`.
pub fn encode_rows(frame: &DataFrame, columns: &[ColumnDef], out: &mut Vec<u8>) -> BlockResult<()> {
    let field_count = i16::try_from(columns.len())
        .map_err(|_| BlockError::fatal("binary COPY takes at most 32767 columns"))?
        .to_be_bytes();
    // Dates and timestamps are written as their physical integers; these series own them and
    // must outlive the cursors that borrow them.
    let physical: Vec<Series> = columns
        .iter()
        .map(|definition| {
            let column = frame.column(definition.name)?.as_materialized_series();
            Ok(match definition.ty {
                BaseType::Timestamp => column
                    .cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
                    .to_physical_repr()
                    .into_owned(),
                _ => column.to_physical_repr().into_owned(),
            })
        })
        .collect::<PolarsResult<_>>()?;
    let mut cursors: Vec<Cursor<'_>> = columns
        .iter()
        .zip(&physical)
        .map(|(definition, series)| Cursor::new(definition, series))
        .collect();
    out.reserve(frame.height() * (2 + columns.len() * 12));
    for _ in 0..frame.height() {
        out.extend_from_slice(&field_count);
        for cursor in &mut cursors {
            cursor.write_next(out)?;
        }
    }
    Ok(())
}

/// One column's values in row order, read chunk by chunk straight from its arrays: the rows
/// are written field by field across columns, and a boxed iterator per column cost a virtual
/// call and an `Option` per value (5 % of the reference run's CPU).
struct Cursor<'a> {
    ty: BaseType,
    name: &'a str,
    chunks: &'a [ArrayRef],
    /// The next chunk to load.
    next_chunk: usize,
    values: Chunk<'a>,
    validity: Option<&'a Bitmap>,
    /// The next row of the loaded chunk, and its length.
    row: usize,
    len: usize,
}

/// The values of one chunk, as the COPY format needs them.
enum Chunk<'a> {
    None,
    Int64(&'a [i64]),
    Float64(&'a [f64]),
    Bool(&'a Bitmap),
    Date(&'a [i32]),
    Timestamp(&'a [i64]),
    Text(&'a Utf8ViewArray),
}

impl<'a> Cursor<'a> {
    fn new(definition: &'a ColumnDef, series: &'a Series) -> Cursor<'a> {
        Cursor {
            ty: definition.ty,
            name: definition.name,
            chunks: series.chunks(),
            next_chunk: 0,
            values: Chunk::None,
            validity: None,
            row: 0,
            len: 0,
        }
    }

    /// Writes the next value with its length, or the NULL marker.
    #[inline]
    fn write_next(&mut self, out: &mut Vec<u8>) -> BlockResult<()> {
        while self.row == self.len {
            self.load_next_chunk()?;
        }
        let row = self.row;
        self.row += 1;
        if self.validity.is_some_and(|validity| !validity.get_bit(row)) {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return Ok(());
        }
        match self.values {
            Chunk::Int64(values) => fixed(out, values[row].to_be_bytes()),
            Chunk::Float64(values) => fixed(out, values[row].to_be_bytes()),
            Chunk::Bool(values) => fixed(out, [u8::from(values.get_bit(row))]),
            Chunk::Date(values) => fixed(out, (values[row] - DATE_OFFSET_DAYS).to_be_bytes()),
            Chunk::Timestamp(values) => {
                fixed(out, (values[row] - TIMESTAMP_OFFSET_MICROS).to_be_bytes())
            }
            Chunk::Text(values) => {
                let text = values.value(row);
                let length = i32::try_from(text.len()).map_err(|_| {
                    BlockError::fatal("a text value is larger than COPY allows (2 GiB)")
                })?;
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            Chunk::None => unreachable!("a chunk is loaded before its rows are read"),
        }
        Ok(())
    }

    fn load_next_chunk(&mut self) -> BlockResult<()> {
        let array = self.chunks.get(self.next_chunk).ok_or_else(|| {
            BlockError::fatal(format!(
                "column `{}` has fewer rows than the frame",
                self.name
            ))
        })?;
        self.next_chunk += 1;
        let wrong_type = || {
            BlockError::fatal(format!(
                "column `{}` holds {:?}, not {}",
                self.name,
                array.dtype(),
                self.ty.name()
            ))
        };
        fn primitive<T: polars_arrow::types::NativeType>(array: &ArrayRef) -> Option<&[T]> {
            array
                .as_any()
                .downcast_ref::<PrimitiveArray<T>>()
                .map(|values| values.values().as_slice())
        }
        self.values = match self.ty {
            BaseType::Int64 => Chunk::Int64(primitive(array).ok_or_else(wrong_type)?),
            BaseType::Float64 => Chunk::Float64(primitive(array).ok_or_else(wrong_type)?),
            BaseType::Date => Chunk::Date(primitive(array).ok_or_else(wrong_type)?),
            BaseType::Timestamp => Chunk::Timestamp(primitive(array).ok_or_else(wrong_type)?),
            BaseType::Bool => Chunk::Bool(
                array
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(wrong_type)?
                    .values(),
            ),
            BaseType::String => Chunk::Text(
                array
                    .as_any()
                    .downcast_ref::<Utf8ViewArray>()
                    .ok_or_else(wrong_type)?,
            ),
        };
        self.validity = array.validity();
        self.row = 0;
        self.len = array.len();
        Ok(())
    }
}

/// A fixed-size value with its length.
#[inline]
fn fixed<const N: usize>(out: &mut Vec<u8>, bytes: [u8; N]) {
    out.extend_from_slice(&(N as i32).to_be_bytes());
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_layout() {
        let frame = df!(
            "id" => [Some(1i64), None],
            "fare" => [Some(2.5f64), None],
            "zone" => [Some("Qu"), None],
        )
        .unwrap();
        let columns = [
            ColumnDef::nullable("id", BaseType::Int64),
            ColumnDef::nullable("fare", BaseType::Float64),
            ColumnDef::nullable("zone", BaseType::String),
        ];
        let mut out = header();
        encode_rows(&frame, &columns, &mut out).unwrap();
        out.extend_from_slice(&trailer());
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        // Row 1: 3 fields; 8-byte 1; 8-byte 2.5; 2-byte "Qu".
        expected.extend_from_slice(&[0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0, 0, 0, 8]);
        expected.extend_from_slice(&2.5f64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 2, b'Q', b'u']);
        // Row 2: three NULLs.
        expected.extend_from_slice(&[0, 3]);
        for _ in 0..3 {
            expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        }
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(out, expected);
    }

    /// The layout written value by value through polars' `AnyValue`: slow and plain, to check
    /// the cursors against.
    fn encode_by_value(frame: &DataFrame, columns: &[ColumnDef]) -> Vec<u8> {
        let mut out = Vec::new();
        for row in 0..frame.height() {
            out.extend_from_slice(&(columns.len() as i16).to_be_bytes());
            for column in columns {
                match frame.column(column.name).unwrap().get(row).unwrap() {
                    AnyValue::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    AnyValue::Int64(value) => fixed(&mut out, value.to_be_bytes()),
                    AnyValue::Float64(value) => fixed(&mut out, value.to_be_bytes()),
                    AnyValue::Boolean(value) => fixed(&mut out, [u8::from(value)]),
                    AnyValue::Date(days) => {
                        fixed(&mut out, (days - DATE_OFFSET_DAYS).to_be_bytes())
                    }
                    AnyValue::Datetime(micros, TimeUnit::Microseconds, _)
                    | AnyValue::DatetimeOwned(micros, TimeUnit::Microseconds, _) => {
                        fixed(&mut out, (micros - TIMESTAMP_OFFSET_MICROS).to_be_bytes())
                    }
                    value @ (AnyValue::String(_) | AnyValue::StringOwned(_)) => {
                        let text = value.get_str().expect("a string value");
                        out.extend_from_slice(&(text.len() as i32).to_be_bytes());
                        out.extend_from_slice(text.as_bytes());
                    }
                    other => panic!("unexpected value {other:?}"),
                }
            }
        }
        out
    }

    type Row = (
        Option<i64>,
        Option<f64>,
        Option<bool>,
        Option<i32>,
        Option<i64>,
        Option<String>,
    );

    fn frame_of(rows: &[Row]) -> DataFrame {
        let column = |name: &str, values: Series| values.with_name(name.into()).into_column();
        DataFrame::new(
            rows.len(),
            vec![
                column("id", Series::from_iter(rows.iter().map(|r| r.0))),
                column("fare", Series::from_iter(rows.iter().map(|r| r.1))),
                column("paid", Series::from_iter(rows.iter().map(|r| r.2))),
                column(
                    "day",
                    Series::from_iter(rows.iter().map(|r| r.3))
                        .cast(&DataType::Date)
                        .unwrap(),
                ),
                column(
                    "at",
                    Series::from_iter(rows.iter().map(|r| r.4))
                        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))
                        .unwrap(),
                ),
                column(
                    "zone",
                    Series::from_iter(rows.iter().map(|r| r.5.as_deref())),
                ),
            ],
        )
        .unwrap()
    }

    proptest::proptest! {
        /// Frames of several chunks, with nulls and a constant column, encode exactly as
        /// value by value.
        #[test]
        fn chunked_frames_encode_as_value_by_value(
            pieces in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        proptest::option::of(proptest::num::i64::ANY),
                        proptest::option::of(proptest::num::f64::ANY),
                        proptest::option::of(proptest::bool::ANY),
                        proptest::option::of(-100_000..100_000i32),
                        proptest::option::of(-1_000_000_000_000_000..1_000_000_000_000_000i64),
                        proptest::option::of("[a-zé]{0,20}"),
                    ),
                    0..20,
                ),
                1..4,
            ),
        ) {
            let mut frame = frame_of(&pieces[0]);
            for piece in &pieces[1..] {
                frame.vstack_mut_owned(frame_of(piece)).unwrap();
            }
            let frame = frame
                .lazy()
                .with_column(lit(7i64).cast(DataType::Int64).alias("constant"))
                .collect()
                .unwrap();
            let columns = [
                ColumnDef::nullable("id", BaseType::Int64),
                ColumnDef::nullable("fare", BaseType::Float64),
                ColumnDef::nullable("paid", BaseType::Bool),
                ColumnDef::nullable("day", BaseType::Date),
                ColumnDef::nullable("at", BaseType::Timestamp),
                ColumnDef::nullable("zone", BaseType::String),
                ColumnDef::required("constant", BaseType::Int64),
            ];
            let mut out = Vec::new();
            encode_rows(&frame, &columns, &mut out).unwrap();
            proptest::prop_assert_eq!(out, encode_by_value(&frame, &columns));
        }
    }
}
