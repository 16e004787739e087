//! SQL sources: a query on a Postgres or SQLite database, streamed into the declared schema.
//!
//! The query is wrapped so that the database itself casts every declared column to its declared
//! type (`SELECT "fare"::double precision AS "fare", ... FROM (QUERY) AS baton_source`): a
//! missing column or a value that does not convert fails the block with the database's message,
//! and what arrives always decodes. Rows are streamed from the database into column builders,
//! never held as rows. Partition values in the query are SQL literals made by Baton itself
//! ([`sql_text`]), never text a caller typed.

use futures::TryStreamExt;
use polars::prelude::*;
use sqlx::{AssertSqlSafe, Column as _, Row};
use tracing::info;

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::pipeline::{BaseType, Column};
use crate::schema::{conform, parse_date, parse_timestamp};
use crate::sink::table::{Warehouse, quote_ident};

/// `text` as a quoted SQL string literal.
pub fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One column's values as they stream in.
enum Builder {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<String>>),
}

/// Runs `query` on the connection's database and returns its rows in the compiled schema.
pub async fn read_query(
    ctx: &RunContext,
    connection: &str,
    query: String,
    columns: &'static [Column],
) -> BlockResult<DataFrame> {
    let warehouse = ctx.warehouse(connection).await?;
    let postgres = matches!(warehouse, Warehouse::Postgres(_));
    let selected: Vec<String> = columns
        .iter()
        .map(|column| {
            let name = quote_ident(column.name);
            let cast = if postgres {
                match column.ty {
                    BaseType::Int64 => format!("{name}::bigint"),
                    BaseType::Float64 => format!("{name}::double precision"),
                    BaseType::Bool => format!("{name}::boolean"),
                    BaseType::String => format!("{name}::text"),
                    // Dates and timestamps travel as ISO text: the driver's chrono support is
                    // not compiled in, and both databases print them the same way.
                    BaseType::Date => format!("{name}::date::text"),
                    BaseType::Timestamp => format!("{name}::timestamp::text"),
                }
            } else {
                match column.ty {
                    BaseType::Int64 | BaseType::Bool => format!("CAST({name} AS INTEGER)"),
                    BaseType::Float64 => format!("CAST({name} AS REAL)"),
                    _ => format!("CAST({name} AS TEXT)"),
                }
            };
            format!("{cast} AS {name}")
        })
        .collect();
    let wrapped = format!(
        "SELECT {} FROM ({}) AS baton_source",
        selected.join(", "),
        query.trim().trim_end_matches(';')
    );
    let mut builders: Vec<Builder> = columns
        .iter()
        .map(|column| match column.ty {
            BaseType::Int64 => Builder::Int(Vec::new()),
            BaseType::Float64 => Builder::Float(Vec::new()),
            BaseType::Bool => Builder::Bool(Vec::new()),
            _ => Builder::Text(Vec::new()),
        })
        .collect();
    let failed = |e: sqlx::Error| BlockError::from(e).context(format!("query on `{connection}`"));
    let rows = match &warehouse {
        Warehouse::Postgres(pool) => {
            let mut stream = sqlx::query(AssertSqlSafe(wrapped)).fetch(pool);
            let mut rows = 0;
            while let Some(row) = stream.try_next().await.map_err(failed)? {
                push_row(&mut builders, |i| decode_pg(&row, i), postgres)?;
                rows += 1;
            }
            rows
        }
        Warehouse::Sqlite(pool) => {
            let mut stream = sqlx::query(AssertSqlSafe(wrapped)).fetch(pool);
            let mut rows = 0;
            while let Some(row) = stream.try_next().await.map_err(failed)? {
                push_row(&mut builders, |i| decode_sqlite(&row, i), postgres)?;
                rows += 1;
            }
            rows
        }
    };
    let frame = tokio::task::spawn_blocking(move || finish(builders, columns, rows))
        .await
        .map_err(|e| BlockError::fatal(format!("frame building panicked: {e}")))??;
    info!(connection, rows, "read query");
    Ok(frame)
}

/// One decoded value: what the wrapped query's casts make of a column.
enum Cell {
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
}

fn decode_pg(row: &sqlx::postgres::PgRow, index: usize) -> Result<Cell, sqlx::Error> {
    let kind = row.column(index).type_info().to_string();
    Ok(match kind.as_str() {
        "INT8" => Cell::Int(row.try_get(index)?),
        "FLOAT8" => Cell::Float(row.try_get(index)?),
        "BOOL" => Cell::Int(row.try_get::<Option<bool>, _>(index)?.map(i64::from)),
        _ => Cell::Text(row.try_get(index)?),
    })
}

fn decode_sqlite(row: &sqlx::sqlite::SqliteRow, index: usize) -> Result<Cell, sqlx::Error> {
    use sqlx::ValueRef;
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(Cell::Text(None));
    }
    let kind = raw.type_info().to_string();
    Ok(match kind.as_str() {
        "INTEGER" => Cell::Int(row.try_get(index)?),
        "REAL" => Cell::Float(row.try_get(index)?),
        _ => Cell::Text(row.try_get(index)?),
    })
}

fn push_row(
    builders: &mut [Builder],
    decode: impl Fn(usize) -> Result<Cell, sqlx::Error>,
    postgres: bool,
) -> BlockResult<()> {
    for (index, builder) in builders.iter_mut().enumerate() {
        let cell = decode(index)?;
        let is_null = matches!(cell, Cell::Int(None) | Cell::Float(None) | Cell::Text(None));
        match (builder, cell) {
            (Builder::Int(values), Cell::Int(v)) => values.push(v),
            (Builder::Float(values), Cell::Float(v)) => values.push(v),
            (Builder::Float(values), Cell::Int(v)) => values.push(v.map(|v| v as f64)),
            (Builder::Bool(values), Cell::Int(v)) => values.push(v.map(|v| v != 0)),
            (Builder::Text(values), Cell::Text(v)) => values.push(v),
            (Builder::Int(values), _) if is_null => values.push(None),
            (Builder::Float(values), _) if is_null => values.push(None),
            (Builder::Bool(values), _) if is_null => values.push(None),
            (Builder::Text(values), _) if is_null => values.push(None),
            _ => {
                // SQLite's CAST leaves text that is not a number as text.
                let database = if postgres { "Postgres" } else { "SQLite" };
                return Err(BlockError::fatal(format!(
                    "column {index} of the query's result has a value {database} could not convert to the declared type"
                )));
            }
        }
    }
    Ok(())
}

/// The builders as a frame in the compiled schema.
fn finish(builders: Vec<Builder>, columns: &[Column], rows: usize) -> BlockResult<DataFrame> {
    let mut series = Vec::with_capacity(columns.len());
    for (builder, column) in builders.into_iter().zip(columns) {
        let name = PlSmallStr::from_static(column.name);
        let built = match (builder, column.ty) {
            (Builder::Int(values), _) => Series::new(name, values),
            (Builder::Float(values), _) => Series::new(name, values),
            (Builder::Bool(values), _) => Series::new(name, values),
            (Builder::Text(values), BaseType::Date) => {
                let days = parse_all(&values, column, parse_date)?;
                Series::new(name, days).cast(&DataType::Date)?
            }
            (Builder::Text(values), BaseType::Timestamp) => {
                let micros = parse_all(&values, column, |text| {
                    parse_timestamp(text).map(|t| t.and_utc().timestamp_micros())
                })?;
                Series::new(name, micros).cast(&BaseType::Timestamp.dtype())?
            }
            (Builder::Text(values), _) => Series::new(name, values),
        };
        series.push(built.into_column());
    }
    conform(DataFrame::new(rows, series)?, columns)
}

fn parse_all<T>(
    values: &[Option<String>],
    column: &Column,
    parse: impl Fn(&str) -> Option<T>,
) -> BlockResult<Vec<Option<T>>> {
    values
        .iter()
        .enumerate()
        .map(|(row, value)| match value {
            None => Ok(None),
            Some(text) => parse(text).map(Some).ok_or_else(|| {
                BlockError::fatal(format!(
                    "row {row}: column `{}` holds `{text}`, not a {}",
                    column.name,
                    column.ty.name()
                ))
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted() {
        assert_eq!(sql_text("2021-01"), "'2021-01'");
        assert_eq!(sql_text("it's"), "'it''s'");
    }
}
