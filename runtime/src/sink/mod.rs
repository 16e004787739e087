//! Sinks: SQL tables (SQLite or Postgres) and the Parquet lake.

pub mod lake;
pub mod pgcopy;
pub mod table;
