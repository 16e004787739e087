//! Sinks: SQL tables (SQLite or Postgres), the Parquet lake, one-file exports and BigQuery.

pub mod bigquery;
pub mod export;
pub mod lake;
pub mod pgcopy;
pub mod table;
