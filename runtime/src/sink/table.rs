//! The table sink: SQLite by default, Postgres when the connection URL says so.
//!
//! Every write is one transaction. `replace_partition` deletes the run's partition and inserts
//! the new rows in that transaction, so a failure at any point leaves the old rows, never a
//! mix and never duplicates. `upsert` inserts rows and updates those whose key already exists,
//! through a unique index on the key. Postgres is loaded with binary `COPY ... FROM STDIN` (into
//! a staging table for `upsert`), not INSERTs.

use std::str::FromStr;
use std::time::Duration;

use polars::prelude::*;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite};
use tracing::{info, warn};

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::pipeline::{BaseType, Column as ColumnDef};
use crate::rows::Rows;
use crate::sink::pgcopy;

/// How rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Drop and recreate the table with the new rows.
    Replace,
    /// Add the rows.
    Append,
    /// Delete the rows whose `column` holds this run's partition, then add the rows.
    ReplacePartition {
        /// The column holding the partition (a date holds `partition.start`, a string `partition.key`).
        column: &'static str,
    },
    /// Insert rows; a row whose `key` columns match an existing row replaces it.
    Upsert {
        /// The columns identifying a row (never null; the compiler checked).
        key: &'static [&'static str],
    },
}

/// A table sink as compiled.
#[derive(Clone, Copy, Debug)]
pub struct TableTarget {
    /// The database connection's role.
    pub connection: &'static str,
    /// The Postgres schema; SQLite has none and ignores it.
    pub schema: Option<&'static str>,
    /// The table.
    pub table: &'static str,
    /// The write mode.
    pub mode: WriteMode,
    /// The columns flowing in, which are the table's columns.
    pub columns: &'static [ColumnDef],
}

/// A connected warehouse.
#[derive(Clone, Debug)]
pub enum Warehouse {
    /// A SQLite file.
    Sqlite(SqlitePool),
    /// A Postgres database.
    Postgres(PgPool),
}

/// Rows per COPY message sent to Postgres: about 370 KB for a table of 20 columns. Small
/// messages keep the encoding buffer (and the connection's write buffer, which copies it)
/// small and reused; a batch's whole encoding at once cost a third of the reference run's
/// page faults, and messages of 8,192 rows held 3 MB per table write.
const COPY_CHUNK_ROWS: usize = 2_048;
/// SQLite allows 32766 bound parameters per statement.
const SQLITE_MAX_PARAMETERS: usize = 32_766;

impl Warehouse {
    /// Connects to `sqlite:PATH` (creating the file and its folder) or `postgres://...`.
    pub async fn connect(url: &str) -> BlockResult<Warehouse> {
        if url.starts_with("sqlite:") {
            crate::env::create_sqlite_folder(url).map_err(BlockError::fatal)?;
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            Ok(Warehouse::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            crate::env::reach_postgres(url).await?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            Ok(Warehouse::Postgres(pool))
        } else {
            Err(BlockError::fatal(
                "unsupported warehouse URL; use sqlite:PATH or postgres://...",
            ))
        }
    }

    /// Runs `SELECT 1`.
    pub async fn ping(&self) -> BlockResult<()> {
        match self {
            Warehouse::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Warehouse::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// The columns of an existing table with their database types, or `None` when it does not exist.
    pub async fn existing_columns(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> BlockResult<Option<Vec<(String, String)>>> {
        let columns: Vec<(String, String)> = match self {
            Warehouse::Sqlite(pool) => {
                sqlx::query_as("SELECT name, type FROM pragma_table_info(?) ORDER BY cid")
                    .bind(table)
                    .fetch_all(pool)
                    .await?
            }
            Warehouse::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                )
                .bind(schema.unwrap_or("public"))
                .bind(table)
                .fetch_all(pool)
                .await?
            }
        };
        Ok((!columns.is_empty()).then_some(columns))
    }

    fn dialect(&self) -> Dialect {
        match self {
            Warehouse::Sqlite(_) => Dialect::Sqlite,
            Warehouse::Postgres(_) => Dialect::Postgres,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn column_type(self, ty: BaseType) -> &'static str {
        match (self, ty) {
            (Dialect::Postgres, BaseType::Int64) => "BIGINT",
            (Dialect::Postgres, BaseType::Float64) => "DOUBLE PRECISION",
            (Dialect::Postgres, BaseType::String) => "TEXT",
            (Dialect::Postgres, BaseType::Bool) => "BOOLEAN",
            (Dialect::Postgres, BaseType::Date) => "DATE",
            (Dialect::Postgres, BaseType::Timestamp) => "TIMESTAMP",
            (Dialect::Sqlite, BaseType::Int64) => "INTEGER",
            (Dialect::Sqlite, BaseType::Float64) => "REAL",
            (Dialect::Sqlite, BaseType::String) => "TEXT",
            (Dialect::Sqlite, BaseType::Bool) => "BOOLEAN",
            (Dialect::Sqlite, BaseType::Date) => "DATE",
            (Dialect::Sqlite, BaseType::Timestamp) => "TIMESTAMP",
        }
    }

    /// The type name the database reports back for a column created as `column_type`.
    fn reported_type(self, ty: BaseType) -> &'static str {
        match (self, ty) {
            (Dialect::Postgres, BaseType::Int64) => "bigint",
            (Dialect::Postgres, BaseType::Float64) => "double precision",
            (Dialect::Postgres, BaseType::String) => "text",
            (Dialect::Postgres, BaseType::Bool) => "boolean",
            (Dialect::Postgres, BaseType::Date) => "date",
            (Dialect::Postgres, BaseType::Timestamp) => "timestamp without time zone",
            (Dialect::Sqlite, ty) => self.column_type(ty),
        }
    }
}

/// A quoted SQL identifier (`"name"`, with inner quotes doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified(dialect: Dialect, target: &TableTarget) -> String {
    match (dialect, target.schema) {
        (Dialect::Postgres, Some(schema)) => {
            format!("{}.{}", quote_ident(schema), quote_ident(target.table))
        }
        _ => quote_ident(target.table),
    }
}

fn display_name(dialect: Dialect, target: &TableTarget) -> String {
    match (dialect, target.schema) {
        (Dialect::Postgres, Some(schema)) => format!("{schema}.{}", target.table),
        _ => target.table.to_string(),
    }
}

/// `"a", "b", "c"`: the quoted column names in schema order.
fn column_list(columns: &[ColumnDef]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn create_table_sql(dialect: Dialect, target: &TableTarget) -> String {
    let columns: Vec<String> = target
        .columns
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                quote_ident(c.name),
                dialect.column_type(c.ty),
                if c.nullable { "" } else { " NOT NULL" }
            )
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        qualified(dialect, target),
        columns.join(", ")
    )
}

/// Compares an existing table with the compiled columns; describes every difference.
pub fn table_differences(
    warehouse_is_postgres: bool,
    existing: &[(String, String)],
    columns: &[ColumnDef],
) -> Vec<String> {
    let dialect = if warehouse_is_postgres {
        Dialect::Postgres
    } else {
        Dialect::Sqlite
    };
    let mut problems = Vec::new();
    for column in columns {
        match existing.iter().find(|(name, _)| name == column.name) {
            None => problems.push(format!(
                "column `{}` ({}) is missing from the table",
                column.name,
                column.type_text()
            )),
            Some((_, actual)) if !actual.eq_ignore_ascii_case(dialect.reported_type(column.ty)) => {
                problems.push(format!(
                    "column `{}` is {actual} in the table but the pipeline writes {} ({})",
                    column.name,
                    dialect.reported_type(column.ty),
                    column.type_text()
                ))
            }
            Some(_) => {}
        }
    }
    for (name, _) in existing {
        if !columns.iter().any(|c| c.name == name) {
            problems.push(format!(
                "column `{name}` of the table is not written by the pipeline"
            ));
        }
    }
    problems
}

/// The value identifying this run's partition in the partition column, as text the database
/// compares with the stored values.
fn partition_value(ctx: &RunContext, column: &ColumnDef) -> BlockResult<(Expr, String)> {
    let partition = ctx.partition()?;
    let (literal, text) = match column.ty {
        BaseType::Date => (
            lit(partition.start_time().date()).cast(DataType::Date),
            partition.start_time().date().format("%Y-%m-%d").to_string(),
        ),
        BaseType::Timestamp => (
            lit(partition.start_time()),
            partition
                .start_time()
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
        ),
        BaseType::String => (lit(partition.key()), partition.key()),
        other => {
            return Err(BlockError::fatal(format!(
                "partition column `{}` is {}; it must be a date (partition.start), timestamp or string (partition.key)",
                column.name,
                other.name()
            )));
        }
    };
    Ok((literal, text))
}

/// In `replace_partition` mode: the partition column and the text of this run's value in it,
/// after checking that every row holds that value. A row of another partition would survive
/// that partition's next replacement as a duplicate, so it is refused.
pub fn own_partition(
    ctx: &RunContext,
    mode: WriteMode,
    columns: &[ColumnDef],
    frame: &DataFrame,
) -> BlockResult<Option<(ColumnDef, String)>> {
    let Some(guard) = PartitionGuard::new(ctx, mode, columns)? else {
        return Ok(None);
    };
    guard.check(frame)?;
    Ok(Some((guard.column, guard.text)))
}

/// In `replace_partition` mode, what every row written must hold: this run's partition in the
/// partition column.
struct PartitionGuard {
    column: ColumnDef,
    value: Expr,
    text: String,
}

impl PartitionGuard {
    fn new(
        ctx: &RunContext,
        mode: WriteMode,
        columns: &[ColumnDef],
    ) -> BlockResult<Option<PartitionGuard>> {
        let WriteMode::ReplacePartition { column } = mode else {
            return Ok(None);
        };
        let definition = *columns.iter().find(|c| c.name == column).ok_or_else(|| {
            BlockError::fatal(format!(
                "partition column `{column}` is not among the columns"
            ))
        })?;
        let (value, text) = partition_value(ctx, &definition)?;
        Ok(Some(PartitionGuard {
            column: definition,
            value,
            text,
        }))
    }

    /// Refuses rows of other partitions.
    fn check(&self, frame: &DataFrame) -> BlockResult<()> {
        let column = self.column.name;
        let stray = frame
            .clone()
            .lazy()
            .filter(col(column).neq(self.value.clone()).fill_null(lit(true)))
            .collect()?
            .height();
        if stray > 0 {
            return Err(BlockError::fatal(format!(
                "{stray} rows have `{column}` different from this run's partition ({}); replace_partition can only write the run's own partition",
                self.text
            )));
        }
        Ok(())
    }
}

/// The rows a table sink writes, batch by batch, each checked as it arrives.
struct Incoming {
    rows: Rows,
    guard: Option<PartitionGuard>,
    /// Rows handed out so far.
    count: usize,
}

impl Incoming {
    async fn next(&mut self) -> Option<BlockResult<DataFrame>> {
        let batch = self.rows.next_batch().await?;
        Some(batch.and_then(|batch| {
            if let Some(guard) = &self.guard {
                guard.check(&batch)?;
            }
            self.count += batch.height();
            Ok(batch)
        }))
    }
}

/// In `upsert` mode, the frame with one row per key. Two rows with one key in a batch would
/// make the upsert ambiguous (Postgres and BigQuery refuse it): the last one wins, as it would
/// had they arrived one after the other.
pub fn last_row_per_key(frame: DataFrame, mode: WriteMode, table: &str) -> BlockResult<DataFrame> {
    let WriteMode::Upsert { key } = mode else {
        return Ok(frame);
    };
    let before = frame.height();
    let unique = frame
        .lazy()
        .unique_stable_generic(
            Some(key.iter().map(|k| col(*k)).collect()),
            UniqueKeepStrategy::Last,
        )
        .collect()?;
    if unique.height() < before {
        warn!(
            table,
            duplicates = before - unique.height(),
            "rows with the same key in one load: the last of each is kept"
        );
    }
    Ok(unique)
}

/// Writes the rows into the target table in one transaction, batch by batch as they arrive
/// (an upsert first gathers them all, to keep one row per key).
pub async fn write_table(ctx: &RunContext, target: &TableTarget, rows: Rows) -> BlockResult<()> {
    let warehouse = ctx.warehouse(target.connection).await?;
    let dialect = warehouse.dialect();
    let name = display_name(dialect, target);
    let guard = PartitionGuard::new(ctx, target.mode, target.columns)?;
    let partition_filter = guard
        .as_ref()
        .map(|guard| (guard.column.name, guard.text.clone()));
    if target.mode != WriteMode::Replace
        && let Some(existing) = warehouse
            .existing_columns(target.schema, target.table)
            .await?
    {
        let problems = table_differences(dialect == Dialect::Postgres, &existing, target.columns);
        if !problems.is_empty() {
            return Err(BlockError::fatal(format!(
                "table {name} does not match the pipeline:\n  - {}\nmigrate the table, or write it once with mode = \"replace\"",
                problems.join("\n  - ")
            )));
        }
    }
    let rows = if matches!(target.mode, WriteMode::Upsert { .. }) {
        Rows::from(last_row_per_key(rows.collect().await?, target.mode, &name)?)
    } else {
        rows
    };
    let mut incoming = Incoming {
        rows,
        guard,
        count: 0,
    };
    let started = std::time::Instant::now();
    match &warehouse {
        Warehouse::Postgres(pool) => {
            write_postgres(pool, target, &mut incoming, partition_filter).await
        }
        Warehouse::Sqlite(pool) => {
            write_sqlite(pool, target, &mut incoming, partition_filter).await
        }
    }
    .map_err(|e| e.context(format!("writing table {name}")))?;
    info!(table = %name, rows = incoming.count, elapsed_ms = started.elapsed().as_millis() as u64, "wrote table");
    Ok(())
}

/// A statement of the preamble every write starts with, and its one bound value if any.
struct Statement {
    sql: String,
    bind: Option<String>,
}

/// What runs before the rows go in, in the write's transaction: the schema and table created,
/// the table dropped first for `replace`, the unique key index for `upsert`, the partition's
/// rows deleted for `replace_partition`.
fn preamble(
    dialect: Dialect,
    target: &TableTarget,
    partition: Option<&(&str, String)>,
) -> Vec<Statement> {
    let table = qualified(dialect, target);
    let plain = |sql: String| Statement { sql, bind: None };
    let mut statements = Vec::new();
    if let (Dialect::Postgres, Some(schema)) = (dialect, target.schema) {
        statements.push(plain(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(schema)
        )));
    }
    if target.mode == WriteMode::Replace {
        statements.push(plain(format!("DROP TABLE IF EXISTS {table}")));
    }
    statements.push(plain(create_table_sql(dialect, target)));
    if let WriteMode::Upsert { key } = target.mode {
        statements.push(plain(format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({})",
            quote_ident(&format!("{}_baton_key", target.table)),
            key.iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some((column, value)) = partition {
        let placeholder = match dialect {
            Dialect::Sqlite => "?",
            Dialect::Postgres => {
                match target
                    .columns
                    .iter()
                    .find(|c| c.name == *column)
                    .map(|c| c.ty)
                {
                    Some(BaseType::Date) => "$1::date",
                    Some(BaseType::Timestamp) => "$1::timestamp",
                    _ => "$1",
                }
            }
        };
        statements.push(Statement {
            sql: format!(
                "DELETE FROM {table} WHERE {} = {placeholder}",
                quote_ident(column)
            ),
            bind: Some(value.clone()),
        });
    }
    statements
}

/// ` ON CONFLICT (key) DO UPDATE SET ...` for `upsert` (the same in SQLite and Postgres);
/// empty in other modes.
fn conflict_clause(target: &TableTarget) -> String {
    let WriteMode::Upsert { key } = target.mode else {
        return String::new();
    };
    let keys: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    let updates: Vec<String> = target
        .columns
        .iter()
        .filter(|c| !key.contains(&c.name))
        .map(|c| format!("{0} = excluded.{0}", quote_ident(c.name)))
        .collect();
    if updates.is_empty() {
        format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", "))
    } else {
        format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            keys.join(", "),
            updates.join(", ")
        )
    }
}

async fn execute_postgres(
    connection: &mut sqlx::PgConnection,
    statements: impl IntoIterator<Item = Statement>,
) -> Result<(), sqlx::Error> {
    for statement in statements {
        let mut query = sqlx::query(AssertSqlSafe(statement.sql));
        if let Some(value) = statement.bind {
            query = query.bind(value);
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

async fn write_postgres(
    pool: &PgPool,
    target: &TableTarget,
    incoming: &mut Incoming,
    partition: Option<(&str, String)>,
) -> BlockResult<()> {
    let table = qualified(Dialect::Postgres, target);
    // Partitions loading one table at the same time (`backfill --concurrency`) would race on
    // `CREATE ... IF NOT EXISTS`, which is not safe against a concurrent creator. The table's
    // DDL runs under a transaction-scoped advisory lock on the table's name: for `replace` the
    // lock covers the whole write (the drop and the new rows are one change); in the other
    // modes a short transaction creates what is missing, so that partitions still load side by
    // side.
    let lock = Statement {
        sql: "SELECT pg_advisory_xact_lock(hashtext($1))".into(),
        bind: Some(format!("baton:{table}")),
    };
    let mut statements = preamble(Dialect::Postgres, target, partition.as_ref());
    let data_statements = statements.split_off(
        statements
            .iter()
            .position(|s| s.sql.starts_with("DELETE"))
            .unwrap_or(statements.len()),
    );
    // The DDL commits before the data's transaction begins, so it runs on the connection the
    // data then uses: a write holds one connection of the pool at a time, not two (partitions
    // loading at once would otherwise wait for each other's, and each connection is a server
    // process to start).
    if target.mode == WriteMode::Replace {
        statements.insert(0, lock);
    } else {
        let mut ddl = pool.begin().await?;
        execute_postgres(&mut ddl, std::iter::once(lock).chain(statements.drain(..))).await?;
        ddl.commit().await?;
    }
    let mut tx = pool.begin().await?;
    execute_postgres(&mut tx, statements.into_iter().chain(data_statements)).await?;
    let column_list = column_list(target.columns);
    // An upsert is COPYed into a staging table that disappears at commit, then merged.
    let copy_into = if matches!(target.mode, WriteMode::Upsert { .. }) {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TEMP TABLE baton_stage (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
        )))
        .execute(&mut *tx)
        .await?;
        "baton_stage".to_string()
    } else {
        table.clone()
    };
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY {copy_into} ({column_list}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(pgcopy::header()).await?;
    // Each chunk is encoded into the one buffer and sent before the next is encoded, so
    // neither a batch's encoding nor its copy in the connection's write buffer is ever whole
    // in memory.
    let mut buffer = Vec::new();
    let failure = 'batches: loop {
        let batch = match incoming.next().await {
            None => break None,
            Some(Ok(batch)) => batch,
            Some(Err(error)) => break Some(error),
        };
        let mut offset = 0;
        while offset < batch.height() {
            let chunk = batch.slice(offset as i64, COPY_CHUNK_ROWS);
            offset += chunk.height();
            buffer.clear();
            if let Err(error) = pgcopy::encode_rows(&chunk, target.columns, &mut buffer) {
                break 'batches Some(error);
            }
            copy.send(buffer.as_slice()).await?;
        }
    };
    if let Some(error) = failure {
        // Nothing of this write stays: the COPY is aborted and the transaction rolls back
        // when it is dropped.
        copy.abort(error.to_string()).await?;
        return Err(error);
    }
    copy.send(pgcopy::trailer().to_vec()).await?;
    copy.finish().await?;
    if copy_into != table {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} ({column_list}) SELECT {column_list} FROM {copy_into}{}",
            conflict_clause(target)
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A column converted to values SQLite can bind.
enum SqliteColumn {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
}

fn sqlite_columns(frame: &DataFrame, columns: &[ColumnDef]) -> BlockResult<Vec<SqliteColumn>> {
    columns
        .iter()
        .map(|definition| {
            let column = frame
                .column(definition.name)?
                .as_materialized_series()
                .clone();
            Ok(match definition.ty {
                BaseType::Int64 => SqliteColumn::Int(column.i64()?.iter().collect()),
                BaseType::Float64 => SqliteColumn::Float(column.f64()?.iter().collect()),
                BaseType::Bool => SqliteColumn::Bool(column.bool()?.iter().collect()),
                BaseType::String => SqliteColumn::Text(
                    column
                        .str()?
                        .iter()
                        .map(|v| v.map(str::to_string))
                        .collect(),
                ),
                BaseType::Date | BaseType::Timestamp => {
                    // Dates and timestamps are stored as ISO-8601 text, SQLite's convention.
                    let format = if definition.ty == BaseType::Date {
                        "%Y-%m-%d"
                    } else {
                        "%Y-%m-%d %H:%M:%S%.f"
                    };
                    let text = column
                        .into_frame()
                        .lazy()
                        .select([col(definition.name).dt().to_string(format)])
                        .collect()?;
                    SqliteColumn::Text(
                        text.column(definition.name)?
                            .str()?
                            .iter()
                            .map(|v| v.map(str::to_string))
                            .collect(),
                    )
                }
            })
        })
        .collect()
}

async fn write_sqlite(
    pool: &SqlitePool,
    target: &TableTarget,
    incoming: &mut Incoming,
    partition: Option<(&str, String)>,
) -> BlockResult<()> {
    let table = qualified(Dialect::Sqlite, target);
    // The write lock is taken at the start: a deferred transaction that read first would fail
    // at once with "database is locked" when another sink of the run wrote to the same file in
    // the meantime, instead of waiting its turn (the busy timeout applies only to IMMEDIATE).
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for statement in preamble(Dialect::Sqlite, target, partition.as_ref()) {
        let mut query = sqlx::query(AssertSqlSafe(statement.sql));
        if let Some(value) = statement.bind {
            query = query.bind(value);
        }
        query.execute(&mut *tx).await?;
    }
    let column_list = column_list(target.columns);
    let conflict = conflict_clause(target);
    let rows_per_statement = (SQLITE_MAX_PARAMETERS / target.columns.len().max(1)).clamp(1, 1000);
    // An error drops the transaction, which rolls back everything this write did.
    while let Some(batch) = incoming.next().await {
        let batch = batch?;
        let values = sqlite_columns(&batch, target.columns)?;
        let mut start = 0;
        while start < batch.height() {
            let end = (start + rows_per_statement).min(batch.height());
            let mut builder: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("INSERT INTO {table} ({column_list}) "));
            builder.push_values(start..end, |mut row, i| {
                for column in &values {
                    match column {
                        SqliteColumn::Int(v) => row.push_bind(v[i]),
                        SqliteColumn::Float(v) => row.push_bind(v[i]),
                        SqliteColumn::Text(v) => row.push_bind(v[i].clone()),
                        SqliteColumn::Bool(v) => row.push_bind(v[i]),
                    };
                }
            });
            builder.push(&conflict);
            builder.build().execute(&mut *tx).await?;
            start = end;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Used by `validate`: whether the target table can take the compiled columns.
pub async fn validate_table(
    warehouse: &Warehouse,
    target: &TableTarget,
) -> BlockResult<Vec<String>> {
    warehouse.ping().await?;
    let Some(existing) = warehouse
        .existing_columns(target.schema, target.table)
        .await?
    else {
        return Ok(Vec::new());
    };
    Ok(table_differences(
        matches!(warehouse, Warehouse::Postgres(_)),
        &existing,
        target.columns,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Postgres server that is down fails the connection at once, naming the cause, and the
    /// error is retryable (the server may come back), rather than after the pool's 30-second
    /// acquire timeout as "pool timed out".
    #[tokio::test]
    async fn a_database_that_is_down_is_reported_at_once_with_its_cause() {
        let error = crate::test_support::fails_fast_against_a_closed_port(async |url: String| {
            Warehouse::connect(&url).await
        })
        .await;
        assert!(error.message.contains("refused"), "{}", error.message);
        assert_eq!(
            error.kind,
            crate::error::ErrorKind::Retryable,
            "{}",
            error.message
        );
    }
}
