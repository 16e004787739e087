//! The run ledger: every run, every block of a run and every attempt of a block, recorded in
//! SQLite (the default, a local file) or PostgreSQL (shared by several replicas).
//!
//! Both databases get the same schema through sqlx migrations embedded in the binary. A running
//! run writes a heartbeat every few seconds; a run whose process died without finishing is
//! detected by the next process that opens the ledger and marked `abandoned`, so no run stays
//! "running" forever.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};

use crate::logs::LogLine;

/// How often a running run proves it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How long a run may go without a heartbeat before another process declares it abandoned.
pub const LEASE: Duration = Duration::from_secs(30);

/// The ledger used when nothing is configured: a SQLite file next to the warehouse's default.
pub const DEFAULT_URL: &str = "sqlite://.baton/ledger.db";

/// An error reading or writing the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerError(pub String);

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run ledger: {}", self.0)
    }
}

impl std::error::Error for LedgerError {}

impl From<sqlx::Error> for LedgerError {
    fn from(error: sqlx::Error) -> Self {
        LedgerError(error.to_string())
    }
}

/// What a run is doing or how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// Its process is working on it.
    Running,
    /// No block failed.
    Succeeded,
    /// At least one block failed.
    Failed,
    /// Its process stopped (crash, `kill -9`, lost machine) without finishing it.
    Abandoned,
    /// Someone cancelled it (`POST /runs/{id}/cancel`).
    Cancelled,
}

impl RunStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Abandoned => "abandoned",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// Why a run was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerKind {
    /// `run`: one partition, every block.
    Run,
    /// `backfill`: one partition of a range, every block.
    Backfill,
    /// `resume RUN_ID`: only what failed or did not run.
    Resume,
    /// `run --only BLOCK`: one block on checkpointed inputs.
    Only,
    /// `run --until BLOCK`: a block and everything upstream of it.
    Until,
    /// A tick of `serve`'s scheduler.
    Schedule,
    /// `POST /runs` or `POST /backfills` on `serve`'s API.
    Api,
    /// `serve`'s sensor found what the pipeline waits for.
    Sensor,
}

impl TriggerKind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Run => "run",
            TriggerKind::Backfill => "backfill",
            TriggerKind::Resume => "resume",
            TriggerKind::Only => "only",
            TriggerKind::Until => "until",
            TriggerKind::Schedule => "schedule",
            TriggerKind::Api => "api",
            TriggerKind::Sensor => "sensor",
        }
    }

    /// Whether a successful run of this kind completed its whole partition, so that a backfill
    /// may skip the partition.
    pub fn completes_partition(self) -> bool {
        !matches!(self, TriggerKind::Only | TriggerKind::Until)
    }
}

/// A run as recorded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RunRecord {
    /// Unique id.
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The partition key; `None` for a pipeline without partitions.
    pub partition: Option<String>,
    /// `running`, `succeeded`, `failed`, `abandoned` or `cancelled`.
    pub status: String,
    /// `run`, `backfill`, `resume`, `only`, `until`, `schedule`, `api` or `sensor`.
    pub trigger: String,
    /// The compiled pipeline's version.
    pub version: String,
    /// The git commit the binary was built from, when known.
    pub git_commit: Option<String>,
    /// Parameter values as a JSON object.
    pub params: String,
    /// The run this one resumed, if any.
    pub resumed_from: Option<String>,
    /// The machine that ran it.
    pub host: String,
    /// Its process id there.
    pub pid: i64,
    /// Start, milliseconds since the Unix epoch.
    pub started_at: i64,
    /// Last sign of life, milliseconds since the Unix epoch.
    pub heartbeat_at: i64,
    /// End, milliseconds since the Unix epoch.
    pub ended_at: Option<i64>,
    /// The root cause of a failure.
    pub error: Option<String>,
}

/// One block's final outcome in a run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlockRecord {
    /// The run.
    pub run_id: String,
    /// The block's name.
    pub block: String,
    /// The block's position in the pipeline, for display order.
    pub position: i64,
    /// `succeeded`, `failed`, `skipped` or `reused`.
    pub status: String,
    /// Attempts made (0 when skipped or reused).
    pub attempts: i64,
    /// Rows read.
    pub rows_in: Option<i64>,
    /// Rows produced (for sinks: rows written).
    pub rows_out: Option<i64>,
    /// In-memory size of the block's output (for sinks: of its input), in bytes.
    pub bytes: Option<i64>,
    /// Start of the first attempt.
    pub started_at: Option<i64>,
    /// End of the last attempt.
    pub ended_at: Option<i64>,
    /// The error of a failed block, why it was skipped, or which run it was reused from.
    pub error: Option<String>,
    /// Where its output was checkpointed, if it was.
    pub checkpoint: Option<String>,
    /// A checksum of its output's content ([`crate::audit::frame_checksum`]), if it has one.
    pub checksum: Option<String>,
}

/// One attempt of a block.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRecord {
    /// The run.
    pub run_id: String,
    /// The block.
    pub block: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    /// `succeeded`, `failed` or `timed_out`.
    pub status: String,
    /// Whether the error was classified retryable.
    pub retryable: bool,
    /// Start, milliseconds since the Unix epoch.
    pub started_at: i64,
    /// End, milliseconds since the Unix epoch.
    pub ended_at: i64,
    /// The error, if it failed.
    pub error: Option<String>,
}

/// A connection to the run ledger.
#[derive(Clone, Debug)]
pub struct Ledger {
    pool: AnyPool,
    host: String,
    postgres: bool,
    /// Block and attempt rows go through a writer task that commits whatever is queued in one
    /// transaction: one commit per row made the ledger, not the blocks, the cost of a run with
    /// many small blocks.
    writes: tokio::sync::mpsc::UnboundedSender<Write>,
    /// Taken by [`Ledger::append_audit`] for its read of the last entry and its insert of the
    /// next: the runs of one backfill start together, and without it all but one of them lost
    /// the race for the next entry and slept before trying again (up to 20 ms at each start).
    /// Other processes still take turns through the insert's conflict check.
    audit_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A row for the writer task, or a request to say when everything before it is written.
#[derive(Debug)]
enum Write {
    Attempt(AttemptRecord),
    Block(BlockRecord),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The most rows committed in one transaction.
const WRITE_BATCH: usize = 1000;

/// Commits queued rows in batches until every `Ledger` clone is gone. A batch that fails is
/// written again row by row, so one bad row costs only itself, and each failure is logged.
async fn write_behind(pool: AnyPool, mut queue: tokio::sync::mpsc::UnboundedReceiver<Write>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut rows = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for write in batch {
            match write {
                Write::Flush(done) => flushes.push(done),
                row => rows.push(row),
            }
        }
        if !rows.is_empty() && write_batch(&pool, &rows).await.is_err() {
            for row in &rows {
                if let Err(error) = write_row(&pool, row).await {
                    tracing::warn!("the run ledger did not take a row: {error}");
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn write_batch(pool: &AnyPool, rows: &[Write]) -> Result<(), sqlx::Error> {
    // A block's row is queued more than once in a run (started, then finished); within one
    // transaction only the last of them is ever seen, so only it is written.
    let mut last_of_block = HashMap::new();
    for (index, row) in rows.iter().enumerate() {
        if let Write::Block(block) = row {
            last_of_block.insert((block.run_id.as_str(), block.block.as_str()), index);
        }
    }
    let mut attempts = Vec::new();
    let mut blocks = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        match row {
            Write::Attempt(attempt) => attempts.push(attempt),
            Write::Block(block)
                if last_of_block.get(&(block.run_id.as_str(), block.block.as_str()))
                    == Some(&index) =>
            {
                blocks.push(block);
            }
            Write::Block(_) | Write::Flush(_) => {}
        }
    }
    let mut transaction = pool.begin().await?;
    for chunk in statement_chunks(&attempts) {
        insert_attempts(&mut *transaction, chunk).await?;
    }
    for chunk in statement_chunks(&blocks) {
        upsert_blocks(&mut *transaction, chunk).await?;
    }
    transaction.commit().await
}

/// Rows per INSERT statement, largest first. A batch is written in statements of these sizes
/// only: each statement costs two hand-offs to SQLite's thread whatever its size, and with
/// few sizes the connection's statement cache keeps every shape prepared (a statement sized to
/// each batch was prepared afresh every time, which measured five times slower). Larger
/// statements lose again: sqlx binds each parameter by asking SQLite its name, which SQLite
/// finds by a linear scan, so binding grows with the square of a statement's parameters.
const ROWS_PER_STATEMENT: [usize; 3] = [16, 4, 1];

/// `rows` cut into consecutive chunks whose lengths are all in [`ROWS_PER_STATEMENT`].
fn statement_chunks<T>(rows: &[T]) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = rows;
    for size in ROWS_PER_STATEMENT {
        while rest.len() >= size {
            let (chunk, after) = rest.split_at(size);
            chunks.push(chunk);
            rest = after;
        }
    }
    chunks
}

/// `INSERT INTO {table} ({columns}) VALUES ($1, ..), .. {tail}` for `rows` rows, with a
/// parameter for each of the comma-separated `columns`.
fn insert_statement(table: &str, columns: &str, rows: usize, tail: &str) -> String {
    use std::fmt::Write as _;
    let columns_count = columns.split(',').count();
    let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns_count {
            let separator = if column == 0 { "" } else { ", " };
            let _ = write!(sql, "{separator}${}", row * columns_count + column + 1);
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

async fn insert_attempts<'e, E>(executor: E, attempts: &[&AttemptRecord]) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = insert_statement(
        "baton_attempts",
        "run_id, block, attempt, status, retryable, started_at, ended_at, error",
        attempts.len(),
        "",
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for attempt in attempts {
        query = query
            .bind(&attempt.run_id)
            .bind(&attempt.block)
            .bind(attempt.attempt)
            .bind(&attempt.status)
            .bind(i64::from(attempt.retryable))
            .bind(attempt.started_at)
            .bind(attempt.ended_at)
            .bind(&attempt.error);
    }
    query.execute(executor).await?;
    Ok(())
}

async fn upsert_blocks<'e, E>(executor: E, blocks: &[&BlockRecord]) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = insert_statement(
        "baton_block_runs",
        "run_id, block, position, status, attempts, rows_in, rows_out, bytes, started_at, \
         ended_at, error, checkpoint, checksum",
        blocks.len(),
        " ON CONFLICT (run_id, block) DO UPDATE SET status = excluded.status, \
         attempts = excluded.attempts, rows_in = excluded.rows_in, \
         rows_out = excluded.rows_out, bytes = excluded.bytes, \
         started_at = excluded.started_at, ended_at = excluded.ended_at, \
         error = excluded.error, checkpoint = excluded.checkpoint, \
         checksum = excluded.checksum",
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for block in blocks {
        query = query
            .bind(&block.run_id)
            .bind(&block.block)
            .bind(block.position)
            .bind(&block.status)
            .bind(block.attempts)
            .bind(block.rows_in)
            .bind(block.rows_out)
            .bind(block.bytes)
            .bind(block.started_at)
            .bind(block.ended_at)
            .bind(&block.error)
            .bind(&block.checkpoint)
            .bind(&block.checksum);
    }
    query.execute(executor).await?;
    Ok(())
}

/// Writes one row on its own (when its batch failed, or the writer task is gone).
async fn write_row<'e, E>(executor: E, row: &Write) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    match row {
        Write::Attempt(attempt) => insert_attempts(executor, &[attempt]).await,
        Write::Block(block) => upsert_blocks(executor, &[block]).await,
        Write::Flush(_) => Ok(()),
    }
}

/// The condition under which a scheduler may start a run of a partition, so that replicas
/// sharing one ledger run each partition once: whichever records its run first has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A schedule tick at this time (milliseconds since the epoch): nobody may be running the
    /// partition, nor have started it since the tick.
    Tick(i64),
    /// Catching up a missed partition: nobody may be running it, nor have loaded it already.
    Missing,
    /// Resuming an abandoned run: nobody may be running the partition.
    Idle,
    /// A sensor found the partition's data: nobody may be running it, nor have loaded it, nor
    /// have started it on a sensor's word before (a failed sensor run is left to `resume` or
    /// `backfill`, not retried at every poke).
    Sensor,
}

/// The columns a run's start writes, in the order [`insert_run`] binds them.
const RUN_COLUMNS: &str = "run_id, pipeline, partition_key, status, trigger_kind, version, \
     git_commit, params, resumed_from, host, pid, started_at, heartbeat_at";

/// The parameters of [`RUN_COLUMNS`].
const RUN_VALUES: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13";

/// The statement `sql` with a run's start bound to `$1`..`$13`, as [`RUN_COLUMNS`] lists them.
fn insert_run(
    sql: String,
    run: &RunRecord,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&run.run_id)
        .bind(&run.pipeline)
        .bind(&run.partition)
        .bind(&run.status)
        .bind(&run.trigger)
        .bind(&run.version)
        .bind(&run.git_commit)
        .bind(&run.params)
        .bind(&run.resumed_from)
        .bind(&run.host)
        .bind(run.pid)
        .bind(run.started_at)
        .bind(run.heartbeat_at)
}

fn migrator() -> Migrator {
    let migration = |version, description: &str, sql: &'static str| {
        Migration::new(
            version,
            description.to_string().into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(
            1,
            "runs, blocks and attempts",
            include_str!("../migrations/ledger/0001_runs.sql"),
        ),
        migration(
            2,
            "log lines of runs",
            include_str!("../migrations/ledger/0002_logs.sql"),
        ),
        migration(
            3,
            "audit trail and block checksums",
            include_str!("../migrations/ledger/0003_audit.sql"),
        ),
        migration(
            4,
            "cancel requests between replicas",
            include_str!("../migrations/ledger/0004_cancel_requests.sql"),
        ),
    ])
}

impl Ledger {
    /// Opens (and creates or migrates) the ledger at `url`: `sqlite://PATH` or `postgres://...`.
    pub async fn open(url: &str) -> Result<Ledger, LedgerError> {
        install_default_drivers();
        let url = if url.starts_with("sqlite:") {
            crate::env::create_sqlite_folder(url).map_err(LedgerError)?;
            if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.to_string()
        } else {
            return Err(LedgerError(format!(
                "unsupported ledger URL `{}`; use sqlite://PATH or postgres://...",
                crate::context::redact(url)
            )));
        };
        if !url.starts_with("sqlite:") {
            crate::env::reach_postgres(&url).await.map_err(|e| {
                LedgerError(format!("cannot open {}: {e}", crate::context::redact(&url)))
            })?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|connection, _| {
                Box::pin(async move {
                    if connection.backend_name().eq_ignore_ascii_case("sqlite") {
                        // Several processes (a backfill and an `inspect`, say) share the file:
                        // WAL lets readers proceed during writes, and writers wait their turn.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 30000")
                            .execute(&mut *connection)
                            .await?;
                        // In WAL mode, NORMAL syncs at checkpoints rather than at every commit:
                        // a crashed process loses nothing, a power cut at most the last
                        // records, and a run no longer waits for a dozen fsyncs.
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                LedgerError(format!("cannot open {}: {e}", crate::context::redact(&url)))
            })?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| LedgerError(format!("cannot migrate the ledger schema: {e}")))?;
        let (writes, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_behind(pool.clone(), queue));
        Ok(Ledger {
            pool,
            host: hostname(),
            postgres: !url.starts_with("sqlite:"),
            writes,
            audit_turn: Default::default(),
        })
    }

    /// This machine's name, as recorded with each run.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Records the start of a run.
    pub async fn start_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        insert_run(
            format!("INSERT INTO baton_runs ({RUN_COLUMNS}) VALUES ({RUN_VALUES})"),
            run,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the start of a run if `claim` allows it; returns whether it did. Two processes
    /// claiming the same partition at once cannot both succeed: on PostgreSQL a transaction-level
    /// advisory lock on the partition orders them, and SQLite runs the one statement under its
    /// single writer lock.
    pub async fn claim_run(&self, run: &RunRecord, claim: Claim) -> Result<bool, LedgerError> {
        let (condition, since) = match claim {
            Claim::Tick(at) => ("status = 'running' OR started_at >= $15", at),
            Claim::Missing => ("status IN ('running', 'succeeded') OR $15 < 0", 0),
            Claim::Idle => ("status = 'running' OR $15 < 0", 0),
            Claim::Sensor => (
                "status IN ('running', 'succeeded') OR trigger_kind = 'sensor' OR $15 < 0",
                0,
            ),
        };
        let sql = format!(
            "INSERT INTO baton_runs ({RUN_COLUMNS}) SELECT {RUN_VALUES} WHERE NOT EXISTS \
             (SELECT 1 FROM baton_runs WHERE pipeline = $2 AND COALESCE(partition_key, '') = $14 \
             AND ({condition}))"
        );
        let mut transaction = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::text")
                .bind(format!(
                    "baton/{}/{}",
                    run.pipeline,
                    run.partition.as_deref().unwrap_or_default()
                ))
                .fetch_one(&mut *transaction)
                .await?;
        }
        let inserted = insert_run(sql, run)
            .bind(run.partition.as_deref().unwrap_or_default())
            .bind(since)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Asks whichever process runs `run_id` to cancel it (the first request's reason stands).
    pub async fn request_cancel(&self, run_id: &str, reason: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO baton_cancel_requests (run_id, reason, requested_at) \
             VALUES ($1, $2, $3) ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(run_id)
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Why someone asked to cancel `run_id`, if anyone did.
    pub async fn cancel_request(&self, run_id: &str) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query("SELECT reason FROM baton_cancel_requests WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    /// Proves that a run is still alive.
    pub async fn heartbeat(&self, run_id: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE baton_runs SET heartbeat_at = $1 WHERE run_id = $2 AND status = 'running'",
        )
        .bind(now_ms())
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records one attempt of a block (written with the next batch; [`Ledger::flush`] waits).
    pub async fn record_attempt(&self, attempt: &AttemptRecord) -> Result<(), LedgerError> {
        self.queue(Write::Attempt(attempt.clone())).await
    }

    /// Records (or updates) a block's outcome in a run (written with the next batch).
    pub async fn record_block(&self, block: &BlockRecord) -> Result<(), LedgerError> {
        self.queue(Write::Block(block.clone())).await
    }

    /// Queues a row for the writer task; writes it directly if the task is gone.
    async fn queue(&self, row: Write) -> Result<(), LedgerError> {
        match self.writes.send(row) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::SendError(row)) => {
                write_row(&self.pool, &row).await?;
                Ok(())
            }
        }
    }

    /// Waits until every block and attempt row queued so far is committed.
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.writes.send(Write::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }

    /// Records how a run ended.
    pub async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        // A run is recorded as ended only once all its block and attempt rows are.
        self.flush().await;
        let now = now_ms();
        sqlx::query(
            "UPDATE baton_runs SET status = $1, ended_at = $2, heartbeat_at = $2, error = $3 \
             WHERE run_id = $4",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(error)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the pipeline's runs whose process is gone as abandoned, and returns them.
    ///
    /// A run is gone when its process id no longer exists on this machine, or when it has not
    /// sent a heartbeat for longer than [`LEASE`] (a run on another machine, or a reused pid).
    pub async fn recover_abandoned(&self, pipeline: &str) -> Result<Vec<RunRecord>, LedgerError> {
        let running = self
            .select_runs(
                "WHERE pipeline = $1 AND status = 'running' ORDER BY started_at",
                &[pipeline],
            )
            .await?;
        let now = now_ms();
        let lease = LEASE.as_millis() as i64;
        let mut abandoned = Vec::new();
        for run in running {
            let dead_here = run.host == self.host
                && i32::try_from(run.pid).is_ok_and(|pid| !process_alive(pid as u32))
                && run.pid != i64::from(std::process::id());
            let lease_expired = now - run.heartbeat_at > lease;
            if !(dead_here || lease_expired) {
                continue;
            }
            let reason = format!(
                "abandoned: process {} on {} stopped without finishing the run (last heartbeat {})",
                run.pid,
                run.host,
                format_ms(run.heartbeat_at)
            );
            // The status guard makes this safe when two processes recover at the same time.
            let updated = sqlx::query(
                "UPDATE baton_runs SET status = 'abandoned', ended_at = heartbeat_at, error = $1 \
                 WHERE run_id = $2 AND status = 'running'",
            )
            .bind(&reason)
            .bind(&run.run_id)
            .execute(&self.pool)
            .await?;
            if updated.rows_affected() == 1 {
                sqlx::query(
                    "UPDATE baton_block_runs SET status = 'abandoned', error = $1 \
                     WHERE run_id = $2 AND status = 'running'",
                )
                .bind("its process stopped while the block was running")
                .bind(&run.run_id)
                .execute(&self.pool)
                .await?;
                abandoned.push(RunRecord {
                    status: RunStatus::Abandoned.as_str().into(),
                    error: Some(reason),
                    ..run
                });
            }
        }
        Ok(abandoned)
    }

    /// Partitions with a successful complete run of this pipeline version.
    pub async fn succeeded_partitions(
        &self,
        pipeline: &str,
        version: &str,
    ) -> Result<HashSet<String>, LedgerError> {
        let rows = sqlx::query(
            "SELECT DISTINCT partition_key FROM baton_runs WHERE pipeline = $1 AND version = $2 \
             AND status = 'succeeded' AND trigger_kind NOT IN ('only', 'until') \
             AND partition_key IS NOT NULL",
        )
        .bind(pipeline)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0).map_err(LedgerError::from))
            .collect()
    }

    /// The newest partition with a successful complete run of any version (what a scheduled
    /// run catches up from).
    pub async fn newest_succeeded_partition(
        &self,
        pipeline: &str,
    ) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query(
            "SELECT max(partition_key) FROM baton_runs WHERE pipeline = $1 \
             AND status = 'succeeded' AND trigger_kind NOT IN ('only', 'until')",
        )
        .bind(pipeline)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<String>, _>(0)?)
    }

    /// The pipeline's most recent runs, newest first; with `before`, only runs started
    /// before that time (milliseconds since the epoch), for paging through a long history.
    pub async fn runs(
        &self,
        pipeline: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        // Both numbers are integers, so formatting them into the statement is safe; the
        // (pipeline, started_at) index serves the query however long the history is.
        let before = before.map_or(String::new(), |ms| format!("AND started_at < {ms} "));
        self.select_runs(
            &format!(
                "WHERE pipeline = $1 {before}ORDER BY started_at DESC, run_id DESC LIMIT {limit}"
            ),
            &[pipeline],
        )
        .await
    }

    /// Every run of every pipeline started at or after `at` (ms since the epoch), oldest first.
    pub async fn runs_since(&self, at: i64) -> Result<Vec<RunRecord>, LedgerError> {
        // An integer, so formatting it into the statement is safe.
        self.select_runs(
            &format!("WHERE started_at >= {at} ORDER BY started_at, run_id"),
            &[],
        )
        .await
    }

    /// Appends an entry to the audit trail, chained to the current last entry. Two writers
    /// appending at once both read the same last entry; the second insert then collides on the
    /// sequence number and is retried on the new last entry, so the chain never forks.
    pub async fn append_audit(
        &self,
        pipeline: &str,
        actor: &str,
        event: &str,
        run_id: &str,
        detail: &str,
    ) -> Result<crate::audit::AuditEntry, LedgerError> {
        let _turn = self.audit_turn.lock().await;
        let mut last_error = None;
        for _ in 0..50 {
            let last = sqlx::query("SELECT seq, hash FROM baton_audit ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
            let (prev_seq, prev_hash) = match last {
                Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
                None => (0, crate::audit::GENESIS.to_string()),
            };
            let mut entry = crate::audit::AuditEntry {
                seq: prev_seq + 1,
                at: now_ms(),
                pipeline: pipeline.into(),
                actor: actor.into(),
                event: event.into(),
                run_id: run_id.into(),
                detail: detail.into(),
                prev_hash,
                hash: String::new(),
            };
            entry.hash = entry.compute_hash();
            let inserted = sqlx::query(
                "INSERT INTO baton_audit (seq, at, pipeline, actor, event, run_id, detail, \
                 prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (seq) DO NOTHING",
            )
            .bind(entry.seq)
            .bind(entry.at)
            .bind(&entry.pipeline)
            .bind(&entry.actor)
            .bind(&entry.event)
            .bind(&entry.run_id)
            .bind(&entry.detail)
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(done) if done.rows_affected() == 1 => return Ok(entry),
                Ok(_) => {}
                Err(error) => last_error = Some(error.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(1..20))).await;
        }
        Err(LedgerError(format!(
            "cannot append to the audit trail after 50 tries (other writers kept taking the next entry){}",
            last_error.map(|e| format!(": {e}")).unwrap_or_default()
        )))
    }

    /// The whole audit trail in order.
    pub async fn audit_entries(&self) -> Result<Vec<crate::audit::AuditEntry>, LedgerError> {
        self.select_audit("ORDER BY seq", "").await
    }

    /// The newest `limit` entries (of one run, or of all), oldest first.
    pub async fn audit_tail(
        &self,
        limit: usize,
        run_id: Option<&str>,
    ) -> Result<Vec<crate::audit::AuditEntry>, LedgerError> {
        // The limit is an integer, so formatting it into the statement is safe.
        let mut entries = self
            .select_audit(
                &format!("WHERE ($1 = '' OR run_id = $1) ORDER BY seq DESC LIMIT {limit}"),
                run_id.unwrap_or_default(),
            )
            .await?;
        entries.reverse();
        Ok(entries)
    }

    async fn select_audit(
        &self,
        clause: &str,
        run_id: &str,
    ) -> Result<Vec<crate::audit::AuditEntry>, LedgerError> {
        let sql = format!(
            "SELECT seq, at, pipeline, actor, event, run_id, detail, prev_hash, hash \
             FROM baton_audit {clause}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if clause.contains("$1") {
            query = query.bind(run_id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(crate::audit::AuditEntry {
                    seq: row.try_get(0)?,
                    at: row.try_get(1)?,
                    pipeline: row.try_get(2)?,
                    actor: row.try_get(3)?,
                    event: row.try_get(4)?,
                    run_id: row.try_get(5)?,
                    detail: row.try_get(6)?,
                    prev_hash: row.try_get(7)?,
                    hash: row.try_get(8)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(LedgerError::from)
    }

    /// Stores a finished run's log lines.
    pub async fn record_logs(&self, run_id: &str, lines: &[LogLine]) -> Result<(), LedgerError> {
        // A few hundred rows per statement: far fewer round trips than one insert per line,
        // and well under both databases' limits on bound parameters.
        for chunk in lines.chunks(500) {
            let mut sql = String::from(
                "INSERT INTO baton_logs (run_id, seq, at, level, block, message) VALUES ",
            );
            for (i, _) in chunk.iter().enumerate() {
                let base = i * 6;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    base + 1,
                    base + 2,
                    base + 3,
                    base + 4,
                    base + 5,
                    base + 6
                ));
            }
            sql.push_str(" ON CONFLICT (run_id, seq) DO NOTHING");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for line in chunk {
                query = query
                    .bind(run_id)
                    .bind(line.seq)
                    .bind(line.at)
                    .bind(&line.level)
                    .bind(&line.block)
                    .bind(&line.message);
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// A run's stored log lines in order, of one block or of all.
    pub async fn logs(
        &self,
        run_id: &str,
        block: Option<&str>,
    ) -> Result<Vec<LogLine>, LedgerError> {
        let rows = sqlx::query(
            "SELECT seq, at, level, block, message FROM baton_logs \
             WHERE run_id = $1 AND ($2 = '' OR block = $2) ORDER BY seq",
        )
        .bind(run_id)
        .bind(block.unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LogLine {
                    seq: row.try_get(0)?,
                    at: row.try_get(1)?,
                    level: row.try_get(2)?,
                    block: row.try_get(3)?,
                    message: row.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(LedgerError::from)
    }

    /// One run, by id.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, LedgerError> {
        Ok(self
            .select_runs("WHERE run_id = $1", &[run_id])
            .await?
            .into_iter()
            .next())
    }

    /// The newest run of a partition (`None`: the pipeline has no partitions).
    pub async fn latest_run(
        &self,
        pipeline: &str,
        partition: Option<&str>,
    ) -> Result<Option<RunRecord>, LedgerError> {
        Ok(self
            .select_runs(
                "WHERE pipeline = $1 AND COALESCE(partition_key, '') = $2 \
                 ORDER BY started_at DESC, run_id DESC LIMIT 1",
                &[pipeline, partition.unwrap_or_default()],
            )
            .await?
            .into_iter()
            .next())
    }

    /// The pipeline's most recently ended run other than `run_id` that succeeded or failed.
    pub async fn previous_finished_run(
        &self,
        pipeline: &str,
        run_id: &str,
    ) -> Result<Option<RunRecord>, LedgerError> {
        Ok(self
            .select_runs(
                "WHERE pipeline = $1 AND run_id <> $2 AND status IN ('succeeded', 'failed') \
                 ORDER BY ended_at DESC, run_id DESC LIMIT 1",
                &[pipeline, run_id],
            )
            .await?
            .into_iter()
            .next())
    }

    async fn select_runs(
        &self,
        clause: &str,
        binds: &[&str],
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let sql = format!(
            "SELECT run_id, pipeline, partition_key, status, trigger_kind, version, git_commit, \
             params, resumed_from, host, pid, started_at, heartbeat_at, ended_at, error \
             FROM baton_runs {clause}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(*bind);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(RunRecord {
                    run_id: row.try_get(0)?,
                    pipeline: row.try_get(1)?,
                    partition: row.try_get(2)?,
                    status: row.try_get(3)?,
                    trigger: row.try_get(4)?,
                    version: row.try_get(5)?,
                    git_commit: row.try_get(6)?,
                    params: row.try_get(7)?,
                    resumed_from: row.try_get(8)?,
                    host: row.try_get(9)?,
                    pid: row.try_get(10)?,
                    started_at: row.try_get(11)?,
                    heartbeat_at: row.try_get(12)?,
                    ended_at: row.try_get(13)?,
                    error: row.try_get(14)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(LedgerError::from)
    }

    /// A run's blocks in pipeline order.
    pub async fn blocks(&self, run_id: &str) -> Result<Vec<BlockRecord>, LedgerError> {
        self.flush().await;
        let rows = sqlx::query(
            "SELECT run_id, block, position, status, attempts, rows_in, rows_out, bytes, \
             started_at, ended_at, error, checkpoint, checksum FROM baton_block_runs \
             WHERE run_id = $1 \
             ORDER BY position",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BlockRecord {
                    run_id: row.try_get(0)?,
                    block: row.try_get(1)?,
                    position: row.try_get(2)?,
                    status: row.try_get(3)?,
                    attempts: row.try_get(4)?,
                    rows_in: row.try_get(5)?,
                    rows_out: row.try_get(6)?,
                    bytes: row.try_get(7)?,
                    started_at: row.try_get(8)?,
                    ended_at: row.try_get(9)?,
                    error: row.try_get(10)?,
                    checkpoint: row.try_get(11)?,
                    checksum: row.try_get(12)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(LedgerError::from)
    }

    /// A run's attempts, in the order they started.
    pub async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, LedgerError> {
        self.flush().await;
        let rows = sqlx::query(
            "SELECT run_id, block, attempt, status, retryable, started_at, ended_at, error \
             FROM baton_attempts WHERE run_id = $1 ORDER BY started_at, block, attempt",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AttemptRecord {
                    run_id: row.try_get(0)?,
                    block: row.try_get(1)?,
                    attempt: row.try_get(2)?,
                    status: row.try_get(3)?,
                    retryable: row.try_get::<i64, _>(4)? != 0,
                    started_at: row.try_get(5)?,
                    ended_at: row.try_get(6)?,
                    error: row.try_get(7)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(LedgerError::from)
    }

    /// The newest checkpoint of a block's output for a partition, from any run of `version`:
    /// `(run id, path)`.
    pub async fn latest_checkpoint(
        &self,
        pipeline: &str,
        version: &str,
        partition: Option<&str>,
        block: &str,
    ) -> Result<Option<(String, String)>, LedgerError> {
        let row = sqlx::query(
            "SELECT b.run_id, b.checkpoint FROM baton_block_runs b \
             JOIN baton_runs r ON r.run_id = b.run_id \
             WHERE r.pipeline = $1 AND r.version = $2 AND COALESCE(r.partition_key, '') = $3 \
             AND b.block = $4 AND b.status IN ('succeeded', 'reused') \
             AND b.checkpoint IS NOT NULL \
             ORDER BY b.ended_at DESC, r.started_at DESC LIMIT 1",
        )
        .bind(pipeline)
        .bind(version)
        .bind(partition.unwrap_or_default())
        .bind(block)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
            .map_err(LedgerError::from)
    }

    /// Checkpoints of a block and partition held by runs other than `keep_run`, whose files
    /// differ from `keep_path`: what a newer checkpoint has superseded.
    pub async fn superseded_checkpoints(
        &self,
        pipeline: &str,
        partition: Option<&str>,
        block: &str,
        keep_run: &str,
    ) -> Result<Vec<(String, String)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT b.run_id, b.checkpoint FROM baton_block_runs b \
             JOIN baton_runs r ON r.run_id = b.run_id \
             WHERE r.pipeline = $1 AND COALESCE(r.partition_key, '') = $2 AND b.block = $3 \
             AND b.run_id <> $4 AND b.checkpoint IS NOT NULL AND r.status <> 'running'",
        )
        .bind(pipeline)
        .bind(partition.unwrap_or_default())
        .bind(block)
        .bind(keep_run)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(LedgerError::from)
    }

    /// Forgets a block's checkpoint (after its file was deleted).
    pub async fn clear_checkpoint(&self, run_id: &str, block: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE baton_block_runs SET checkpoint = NULL WHERE run_id = $1 AND block = $2",
        )
        .bind(run_id)
        .bind(block)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// What `/metrics` reports, read from the ledger so that it is right across restarts and
/// replicas.
#[derive(Clone, Debug, Default)]
pub struct LedgerMetrics {
    /// Runs by status.
    pub runs: Vec<(String, i64)>,
    /// Per block: bucket counts (cumulative, one per bound), count and sum of durations in ms.
    pub durations: Vec<(String, Vec<i64>, i64, i64)>,
    /// Per block: rows written or produced by successful blocks.
    pub rows: Vec<(String, i64)>,
    /// Per block: attempts after the first.
    pub retries: Vec<(String, i64)>,
    /// Per block: bytes of the frames successful blocks produced (sinks: received).
    pub bytes: Vec<(String, i64)>,
    /// The end of the newest successful run.
    pub last_success_ms: Option<i64>,
    /// The oldest heartbeat among runs recorded as running: how far the ledger lags behind a
    /// live run (beyond the lease, the run's process is likely gone).
    pub oldest_heartbeat_ms: Option<i64>,
}

impl Ledger {
    /// The metrics of a pipeline; `bounds_ms` are the duration histogram's bucket bounds.
    pub async fn metrics(
        &self,
        pipeline: &str,
        bounds_ms: &[i64],
    ) -> Result<LedgerMetrics, LedgerError> {
        self.flush().await;
        let pairs = |rows: Vec<sqlx::any::AnyRow>| -> Result<Vec<(String, i64)>, LedgerError> {
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(LedgerError::from)
        };
        let runs = pairs(
            sqlx::query(
                "SELECT status, count(*) FROM baton_runs WHERE pipeline = $1 GROUP BY status \
                 ORDER BY status",
            )
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await?,
        )?;
        // The bounds are integers, so writing them into the statement is safe.
        let buckets: Vec<String> = bounds_ms
            .iter()
            .map(|b| {
                format!("CAST(sum(CASE WHEN b.ended_at - b.started_at <= {b} THEN 1 ELSE 0 END) AS BIGINT)")
            })
            .collect();
        let sql = format!(
            "SELECT b.block, count(*), CAST(sum(b.ended_at - b.started_at) AS BIGINT), {} \
             FROM baton_block_runs b JOIN baton_runs r ON r.run_id = b.run_id \
             WHERE r.pipeline = $1 AND b.status IN ('succeeded', 'failed') \
             AND b.started_at IS NOT NULL AND b.ended_at IS NOT NULL \
             GROUP BY b.block ORDER BY b.block",
            buckets.join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await?;
        let mut durations = Vec::new();
        for row in &rows {
            let counts = (0..bounds_ms.len())
                .map(|i| row.try_get::<i64, _>(3 + i))
                .collect::<Result<Vec<_>, _>>()?;
            durations.push((row.try_get(0)?, counts, row.try_get(1)?, row.try_get(2)?));
        }
        let rows_moved = pairs(
            sqlx::query(
                "SELECT b.block, CAST(sum(b.rows_out) AS BIGINT) FROM baton_block_runs b \
                 JOIN baton_runs r ON r.run_id = b.run_id WHERE r.pipeline = $1 \
                 AND b.status = 'succeeded' AND b.rows_out IS NOT NULL \
                 GROUP BY b.block ORDER BY b.block",
            )
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await?,
        )?;
        let bytes = pairs(
            sqlx::query(
                "SELECT b.block, CAST(sum(b.bytes) AS BIGINT) FROM baton_block_runs b \
                 JOIN baton_runs r ON r.run_id = b.run_id WHERE r.pipeline = $1 \
                 AND b.status = 'succeeded' AND b.bytes IS NOT NULL \
                 GROUP BY b.block ORDER BY b.block",
            )
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await?,
        )?;
        let oldest_heartbeat: Option<i64> = sqlx::query(
            "SELECT min(heartbeat_at) FROM baton_runs WHERE pipeline = $1 AND status = 'running'",
        )
        .bind(pipeline)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let retries = pairs(
            sqlx::query(
                "SELECT a.block, count(*) FROM baton_attempts a \
                 JOIN baton_runs r ON r.run_id = a.run_id WHERE r.pipeline = $1 \
                 AND a.attempt > 1 GROUP BY a.block ORDER BY a.block",
            )
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await?,
        )?;
        let last: Option<i64> = sqlx::query(
            "SELECT max(ended_at) FROM baton_runs WHERE pipeline = $1 AND status = 'succeeded'",
        )
        .bind(pipeline)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(LedgerMetrics {
            runs,
            durations,
            rows: rows_moved,
            retries,
            bytes,
            last_success_ms: last,
            oldest_heartbeat_ms: oldest_heartbeat,
        })
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `2021-01-31 12:00:00 UTC` for a ledger timestamp.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether a process exists on this machine. Without `/proc` the answer is "yes", so that only
/// the heartbeat lease decides.
fn process_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.exists() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Postgres ledger whose server is down fails to open at once, naming the cause.
    #[tokio::test]
    async fn a_ledger_database_that_is_down_is_reported_at_once() {
        let error = crate::test_support::fails_fast_against_a_closed_port(async |url: String| {
            Ledger::open(&url).await
        })
        .await;
        assert!(error.0.contains("refused"), "{}", error.0);
    }

    fn run(run_id: &str, partition: &str, pid: i64, heartbeat_at: i64) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            pipeline: "p".into(),
            partition: Some(partition.into()),
            status: "running".into(),
            trigger: "backfill".into(),
            version: "v1".into(),
            git_commit: None,
            params: "{}".into(),
            resumed_from: None,
            host: hostname(),
            pid,
            started_at: heartbeat_at,
            heartbeat_at,
            ended_at: None,
            error: None,
        }
    }

    /// Appends made at once, by clones of one ledger (the runs of one backfill) and by a second
    /// ledger on the same file (another process), form one unbroken chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_appends_made_at_once_form_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let this_process = Ledger::open(&url).await.unwrap();
        let other_process = Ledger::open(&url).await.unwrap();
        let appends = (0..24).map(|i| {
            let ledger = if i % 3 == 0 {
                other_process.clone()
            } else {
                this_process.clone()
            };
            tokio::spawn(async move {
                ledger
                    .append_audit("p", "tester", "note", &format!("run-{i}"), "{}")
                    .await
            })
        });
        for appended in futures::future::join_all(appends).await {
            appended.unwrap().unwrap();
        }
        let entries = this_process.audit_entries().await.unwrap();
        let mut previous = crate::audit::GENESIS.to_string();
        for (index, entry) in entries.iter().enumerate() {
            assert_eq!(entry.seq, index as i64 + 1);
            assert_eq!(entry.prev_hash, previous, "entry {}", entry.seq);
            assert_eq!(entry.compute_hash(), entry.hash, "entry {}", entry.seq);
            previous = entry.hash.clone();
        }
        let mut runs: Vec<&str> = entries.iter().map(|e| e.run_id.as_str()).collect();
        runs.sort_unstable();
        runs.dedup();
        assert_eq!(runs.len(), 24, "every append exactly once");
    }

    #[tokio::test]
    async fn queued_rows_are_all_written_and_one_bad_row_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let ledger = Ledger::open(&url).await.unwrap();
        let attempt = |block: &str, attempt: i64| AttemptRecord {
            run_id: "r".into(),
            block: block.into(),
            attempt,
            status: "succeeded".into(),
            retryable: false,
            started_at: 1,
            ended_at: 2,
            error: None,
        };
        for i in 0..2_500 {
            ledger
                .record_attempt(&attempt(&format!("b{i}"), 1))
                .await
                .unwrap();
        }
        // The same attempt twice breaks the primary key: its batch is written row by row, and
        // every other row still lands.
        ledger.record_attempt(&attempt("b7", 1)).await.unwrap();
        ledger.record_attempt(&attempt("after", 1)).await.unwrap();
        // A second handle sees everything once the first has flushed.
        ledger.flush().await;
        let other = Ledger::open(&url).await.unwrap();
        let attempts = other.attempts("r").await.unwrap();
        assert_eq!(attempts.len(), 2_501);
        assert!(attempts.iter().any(|a| a.block == "after"));
    }

    #[tokio::test]
    async fn records_runs_and_recovers_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let ledger = Ledger::open(&url).await.unwrap();
        // Opening twice runs the migrations once.
        let ledger_again = Ledger::open(&url).await.unwrap();

        // Alive: this very process, heartbeat now.
        let mine = run("mine", "2021-01", i64::from(std::process::id()), now_ms());
        // Dead: a pid that cannot exist on Linux (above pid_max).
        let dead = run("dead", "2021-02", 4_194_400, now_ms());
        // Silent: another host's run whose lease expired.
        let mut silent = run("silent", "2021-03", 1, now_ms() - 60_000);
        silent.host = "elsewhere".into();
        for record in [&mine, &dead, &silent] {
            ledger.start_run(record).await.unwrap();
        }
        let mut recovered: Vec<String> = ledger_again
            .recover_abandoned("p")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        recovered.sort();
        assert_eq!(recovered, ["dead", "silent"]);
        assert_eq!(ledger.run("mine").await.unwrap().unwrap().status, "running");
        assert_eq!(
            ledger.run("dead").await.unwrap().unwrap().status,
            "abandoned"
        );

        ledger
            .finish_run("mine", RunStatus::Succeeded, None)
            .await
            .unwrap();
        assert_eq!(
            ledger.newest_succeeded_partition("p").await.unwrap(),
            Some("2021-01".to_string())
        );
        let done = ledger.succeeded_partitions("p", "v1").await.unwrap();
        assert_eq!(done, HashSet::from(["2021-01".to_string()]));
        assert!(
            ledger
                .succeeded_partitions("p", "v2")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(ledger.runs("p", 2, None).await.unwrap().len(), 2);
    }

    /// A block's start and end queued together are written as its end: the batch keeps only
    /// the last row of each block, and that row is what the ledger then holds.
    #[tokio::test]
    async fn a_block_recorded_twice_in_one_batch_keeps_its_last_row() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let ledger = Ledger::open(&url).await.unwrap();
        let record = |block: usize, status: &str, rows_out: Option<i64>| BlockRecord {
            run_id: "r".into(),
            block: format!("b{block}"),
            position: block as i64,
            status: status.into(),
            attempts: 1,
            rows_in: None,
            rows_out,
            bytes: None,
            started_at: Some(1),
            ended_at: rows_out.map(|_| 2),
            error: None,
            checkpoint: None,
            checksum: None,
        };
        for block in 0..300 {
            ledger
                .record_block(&record(block, "running", None))
                .await
                .unwrap();
            ledger
                .record_block(&record(block, "succeeded", Some(block as i64)))
                .await
                .unwrap();
        }
        // A later row of a block whose rows are still queued wins over both.
        ledger
            .record_block(&record(7, "failed", None))
            .await
            .unwrap();
        ledger.flush().await;
        let blocks = ledger.blocks("r").await.unwrap();
        assert_eq!(blocks.len(), 300);
        for block in blocks {
            if block.block == "b7" {
                assert_eq!((block.status.as_str(), block.rows_out), ("failed", None));
            } else {
                assert_eq!(block.status, "succeeded", "{}", block.block);
                assert_eq!(block.rows_out, Some(block.position));
            }
        }
    }

    #[tokio::test]
    async fn attempts_queued_together_are_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let ledger = Ledger::open(&url).await.unwrap();
        // 37 rows take statements of every size: 16, 16, 4 and 1 rows.
        let attempts: Vec<AttemptRecord> = (0..37)
            .map(|attempt| AttemptRecord {
                run_id: "r".into(),
                block: format!("b{}", attempt % 3),
                attempt,
                status: if attempt % 2 == 0 {
                    "failed"
                } else {
                    "succeeded"
                }
                .into(),
                retryable: attempt % 5 == 0,
                started_at: 100 + attempt,
                ended_at: 200 + attempt,
                error: (attempt % 2 == 0).then(|| format!("it's attempt {attempt}; $1 ?")),
            })
            .collect();
        for attempt in &attempts {
            ledger.record_attempt(attempt).await.unwrap();
        }
        ledger.flush().await;
        assert_eq!(ledger.attempts("r").await.unwrap(), attempts);
    }

    #[test]
    fn an_insert_statement_numbers_a_parameter_per_column_and_row() {
        assert_eq!(
            insert_statement("t", "a, b, c", 2, " ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b, c) VALUES ($1, $2, $3), ($4, $5, $6) ON CONFLICT DO NOTHING"
        );
    }

    proptest::proptest! {
        #[test]
        fn statement_chunks_cover_every_row_once_in_order(len in 0usize..200) {
            let rows: Vec<usize> = (0..len).collect();
            let chunks = statement_chunks(&rows);
            proptest::prop_assert_eq!(chunks.concat(), rows.clone());
            proptest::prop_assert!(chunks.iter().all(|c| ROWS_PER_STATEMENT.contains(&c.len())));
            // Largest first, and a smaller size only for what the larger one cannot take.
            proptest::prop_assert!(chunks.windows(2).all(|w| w[0].len() >= w[1].len()));
            for pair in ROWS_PER_STATEMENT.windows(2) {
                let smaller = chunks.iter().filter(|c| c.len() == pair[1]).count();
                proptest::prop_assert!(smaller * pair[1] < pair[0]);
            }
        }
    }

    #[tokio::test]
    async fn blocks_attempts_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let ledger = Ledger::open(&url).await.unwrap();
        for (id, at) in [("old", 1_000), ("new", 2_000)] {
            let mut record = run(id, "2021-01", i64::from(std::process::id()), at);
            record.started_at = at;
            ledger.start_run(&record).await.unwrap();
            let block = BlockRecord {
                run_id: id.into(),
                block: "extract".into(),
                position: 0,
                status: "succeeded".into(),
                attempts: 3,
                rows_in: Some(0),
                rows_out: Some(10),
                bytes: Some(80),
                started_at: Some(at),
                ended_at: Some(at + 5),
                error: None,
                checkpoint: Some(format!("/cp/{id}.parquet")),
                checksum: Some("sha256:00".into()),
            };
            ledger.record_block(&block).await.unwrap();
            // Recording again updates rather than duplicates.
            ledger.record_block(&block).await.unwrap();
            ledger
                .finish_run(id, RunStatus::Succeeded, None)
                .await
                .unwrap();
        }
        for attempt in 1..=3 {
            ledger
                .record_attempt(&AttemptRecord {
                    run_id: "new".into(),
                    block: "extract".into(),
                    attempt,
                    status: if attempt < 3 { "failed" } else { "succeeded" }.into(),
                    retryable: attempt < 3,
                    started_at: 2_000 + attempt,
                    ended_at: 2_001 + attempt,
                    error: (attempt < 3).then(|| "HTTP 503".to_string()),
                })
                .await
                .unwrap();
        }
        let attempts = ledger.attempts("new").await.unwrap();
        assert_eq!(attempts.len(), 3);
        assert!(attempts[0].retryable && !attempts[2].retryable);
        assert_eq!(ledger.blocks("new").await.unwrap().len(), 1);
        let latest = ledger
            .latest_checkpoint("p", "v1", Some("2021-01"), "extract")
            .await
            .unwrap();
        assert_eq!(
            latest,
            Some(("new".to_string(), "/cp/new.parquet".to_string()))
        );
        let superseded = ledger
            .superseded_checkpoints("p", Some("2021-01"), "extract", "new")
            .await
            .unwrap();
        assert_eq!(
            superseded,
            [("old".to_string(), "/cp/old.parquet".to_string())]
        );
        ledger.clear_checkpoint("old", "extract").await.unwrap();
        assert!(
            ledger
                .superseded_checkpoints("p", Some("2021-01"), "extract", "new")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
