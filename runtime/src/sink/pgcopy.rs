//! PostgreSQL's binary COPY format, written straight from polars columns.
//!
//! Binary COPY spares both sides the text round trip: no float or timestamp is formatted here
//! and parsed again by the server. The format is documented with the COPY command: an 11-byte
//! signature, two 32-bit header fields, then per row a 16-bit field count and per field a 32-bit
//! length (-1 for NULL) and the value in the type's binary send format, big-endian; a 16-bit -1
//! ends the stream.

use polars::prelude::*;

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

/// One column's values, read in row order.
enum Cells<'a> {
    Int(Box<dyn Iterator<Item = Option<i64>> + 'a>),
    Float(Box<dyn Iterator<Item = Option<f64>> + 'a>),
    Text(Box<dyn Iterator<Item = Option<&'a str>> + 'a>),
    Bool(Box<dyn Iterator<Item = Option<bool>> + 'a>),
    Date(Box<dyn Iterator<Item = Option<i32>> + 'a>),
    Timestamp(Box<dyn Iterator<Item = Option<i64>> + 'a>),
}

/// Appends the rows of `frame` (columns in `columns` order, with the compiled types) to `out`.
pub fn encode_rows(frame: &DataFrame, columns: &[ColumnDef], out: &mut Vec<u8>) -> BlockResult<()> {
    let field_count = i16::try_from(columns.len())
        .map_err(|_| BlockError::fatal("binary COPY takes at most 32767 columns"))?
        .to_be_bytes();
    // Dates and timestamps are read as their physical integers, so they are cast first and
    // must outlive the iterators that borrow them.
    let physical: Vec<Option<Series>> = columns
        .iter()
        .map(|definition| {
            let column = frame.column(definition.name)?.as_materialized_series();
            Ok(match definition.ty {
                BaseType::Date => Some(column.cast(&DataType::Int32)?),
                BaseType::Timestamp => Some(
                    column
                        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
                        .cast(&DataType::Int64)?,
                ),
                _ => None,
            })
        })
        .collect::<PolarsResult<_>>()?;
    let mut cells: Vec<Cells<'_>> = columns
        .iter()
        .zip(&physical)
        .map(|(definition, physical)| {
            let column = frame.column(definition.name)?.as_materialized_series();
            Ok(match (definition.ty, physical) {
                (BaseType::Int64, _) => Cells::Int(Box::new(column.i64()?.iter())),
                (BaseType::Float64, _) => Cells::Float(Box::new(column.f64()?.iter())),
                (BaseType::String, _) => Cells::Text(Box::new(column.str()?.iter())),
                (BaseType::Bool, _) => Cells::Bool(Box::new(column.bool()?.iter())),
                (BaseType::Date, Some(days)) => Cells::Date(Box::new(days.i32()?.iter())),
                (BaseType::Timestamp, Some(micros)) => {
                    Cells::Timestamp(Box::new(micros.i64()?.iter()))
                }
                (BaseType::Date | BaseType::Timestamp, None) => {
                    unreachable!("dates and timestamps were cast above")
                }
            })
        })
        .collect::<PolarsResult<_>>()?;
    out.reserve(frame.height() * (2 + columns.len() * 12));
    for _ in 0..frame.height() {
        out.extend_from_slice(&field_count);
        for column in &mut cells {
            match column {
                Cells::Int(values) => fixed(out, values.next().flatten().map(i64::to_be_bytes)),
                Cells::Float(values) => fixed(out, values.next().flatten().map(f64::to_be_bytes)),
                Cells::Bool(values) => fixed(out, values.next().flatten().map(|b| [u8::from(b)])),
                Cells::Date(values) => fixed(
                    out,
                    values
                        .next()
                        .flatten()
                        .map(|d| (d - DATE_OFFSET_DAYS).to_be_bytes()),
                ),
                Cells::Timestamp(values) => fixed(
                    out,
                    values
                        .next()
                        .flatten()
                        .map(|t| (t - TIMESTAMP_OFFSET_MICROS).to_be_bytes()),
                ),
                Cells::Text(values) => match values.next().flatten() {
                    Some(text) => {
                        let length = i32::try_from(text.len()).map_err(|_| {
                            BlockError::fatal("a text value is larger than COPY allows (2 GiB)")
                        })?;
                        out.extend_from_slice(&length.to_be_bytes());
                        out.extend_from_slice(text.as_bytes());
                    }
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                },
            }
        }
    }
    Ok(())
}

/// A fixed-size value with its length, or the NULL marker.
fn fixed<const N: usize>(out: &mut Vec<u8>, value: Option<[u8; N]>) {
    match value {
        Some(bytes) => {
            out.extend_from_slice(&(N as i32).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
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
}
