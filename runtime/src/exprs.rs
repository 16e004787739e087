//! Literal helpers the generated expressions use, so generated code stays short and readable.

use chrono::NaiveDate;
use polars::prelude::*;

use crate::error::BlockResult;

/// A date literal; the compiler has already checked that the date exists.
pub fn date_lit(year: i32, month: u32, day: u32) -> Expr {
    // polars turns a chrono date literal into a datetime; cast it back to a date.
    lit(NaiveDate::from_ymd_opt(year, month, day).expect("the compiler only emits valid dates"))
        .cast(DataType::Date)
}

/// An `in (...)` list of integers.
pub fn int_list(values: &[i64]) -> Expr {
    lit(Series::new("list".into(), values)).implode(false)
}

/// An `in (...)` list of floats.
pub fn float_list(values: &[f64]) -> Expr {
    lit(Series::new("list".into(), values)).implode(false)
}

/// An `in (...)` list of strings.
pub fn string_list(values: &[&str]) -> Expr {
    lit(Series::new("list".into(), values)).implode(false)
}

/// An `in (...)` list of booleans.
pub fn bool_list(values: &[bool]) -> Expr {
    lit(Series::new("list".into(), values)).implode(false)
}

/// Evaluates a condition that uses no columns (a `run_if`): once, on a frame of one row. A
/// null result counts as false, as in a SQL `WHERE`.
pub fn evaluate_condition(condition: Expr) -> BlockResult<bool> {
    let frame = DataFrame::empty_with_height(1)
        .lazy()
        .select([condition.alias("condition")])
        .collect()?;
    let column = frame.column("condition")?.cast(&DataType::Boolean)?;
    Ok(column.bool()?.get(0).unwrap_or(false))
}
