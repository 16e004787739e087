//! Checking frames against compiled schemas.

use polars::prelude::*;

use crate::error::{BlockError, BlockResult};
use crate::pipeline::{BaseType, Column};

/// An ISO 8601 date (`2021-01-05`) as days since 1970-01-01, polars' date representation.
pub(crate) fn parse_date(text: &str) -> Option<i32> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let date = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok()?;
    i32::try_from((date - epoch).num_days()).ok()
}

/// An ISO 8601 timestamp: naive (`2021-01-01T00:15:56`, `2021-01-01 00:15:56.5`) or with an
/// offset (`...Z`, `...+01:00`), which is converted to UTC.
pub(crate) fn parse_timestamp(text: &str) -> Option<chrono::NaiveDateTime> {
    let text = text.trim();
    if let Ok(with_offset) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(with_offset.naive_utc());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
}

/// The polars schema of a compiled column list.
pub fn polars_schema(columns: &[Column]) -> Schema {
    columns
        .iter()
        .map(|c| Field::new(c.name.into(), c.ty.dtype()))
        .collect()
}

/// Makes `frame` exactly the compiled schema: same columns in the same order, same types, no
/// nulls where the schema says NOT NULL. Integer widths that polars picks on its own (an `i32`
/// year, a `u32` length) are widened to the declared type; anything else that differs is an
/// error naming the column, so a mismatch is caught at the block that caused it.
pub fn conform(frame: DataFrame, columns: &[Column]) -> BlockResult<DataFrame> {
    let present: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    for column in columns {
        if !present.iter().any(|p| p == column.name) {
            return Err(BlockError::fatal(format!(
                "column `{}` ({}) is missing; the frame has: {}",
                column.name,
                column.type_text(),
                present.join(", ")
            )));
        }
    }
    if let Some(extra) = present
        .iter()
        .find(|p| !columns.iter().any(|c| c.name == p.as_str()))
    {
        return Err(BlockError::fatal(format!(
            "unexpected column `{extra}`; the compiled schema does not have it"
        )));
    }
    let mut out = Vec::with_capacity(columns.len());
    for column in columns {
        let series = frame.column(column.name)?;
        let expected = column.ty.dtype();
        let series = if series.dtype() == &expected {
            series.clone()
        } else if widens(series.dtype(), column.ty) {
            series.strict_cast(&expected)?
        } else {
            return Err(BlockError::fatal(format!(
                "column `{}` is {} but the compiled schema says {}",
                column.name,
                series.dtype(),
                column.type_text()
            )));
        };
        if !column.nullable && series.null_count() > 0 {
            return Err(BlockError::fatal(format!(
                "column `{}` is declared NOT NULL ({}) but has {} null value(s)",
                column.name,
                column.type_text(),
                series.null_count()
            )));
        }
        out.push(series);
    }
    Ok(DataFrame::new_infer_height(out)?)
}

/// Conversions that never lose information: narrower integers, other time units, and the
/// all-null column type (a Parquet column that is null in every row).
fn widens(from: &DataType, to: BaseType) -> bool {
    matches!(from, DataType::Null)
        || match to {
            BaseType::Int64 => from.is_integer(),
            BaseType::Float64 => from.is_float() || from.is_integer(),
            BaseType::Timestamp => matches!(from, DataType::Datetime(_, None)),
            _ => false,
        }
}
