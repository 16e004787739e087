//! The static description of a compiled pipeline, as the generated code declares it.

use std::future::Future;
use std::pin::Pin;

use polars::prelude::{DataType, TimeUnit};

use crate::context::RunContext;
use crate::error::BlockError;
use crate::partition::Granularity;
use crate::rows::Rows;
use crate::sink::bigquery::BigQueryTarget;
use crate::sink::export::ExportTarget;
use crate::sink::lake::LakeTarget;
use crate::sink::table::TableTarget;

/// The future a block returns: its output rows, or `None` for sinks.
pub type BlockFuture =
    Pin<Box<dyn Future<Output = Result<Option<Rows>, BlockError>> + Send + 'static>>;

/// A compiled pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// The pipeline's name (also the binary's).
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Who owns it.
    pub owner: &'static str,
    /// Tags.
    pub tags: &'static [&'static str],
    /// The TOML it was compiled from, relative to the workspace.
    pub source_path: &'static str,
    /// A hash of that TOML and of the compiler that compiled it: the pipeline version recorded
    /// with each run.
    pub source_hash: &'static str,
    /// The git commit the binary was built from, when the build knew it.
    pub git_commit: Option<&'static str>,
    /// How long one whole run may take, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// At most this many blocks of a kind run at once in one process (across the partitions of
    /// a concurrent backfill too).
    pub limits: &'static [(BlockKind, usize)],
    /// When `serve` starts runs, if the pipeline has a schedule.
    pub schedule: Option<ScheduleDef>,
    /// What `serve` waits for before it runs a partition, if anything.
    pub sensor: Option<SensorDef>,
    /// How runs are partitioned, if they are.
    pub partitions: Option<PartitionSpec>,
    /// Parameters with their defaults.
    pub params: &'static [ParamDef],
    /// Connections by role.
    pub connections: &'static [ConnectionDef],
    /// Blocks in dependency order.
    pub blocks: &'static [BlockDef],
    /// Runs one block: the index into `blocks`, the run's context and the input rows.
    pub run_block: fn(usize, RunContext, Vec<Rows>) -> BlockFuture,
}

/// `[pipeline.schedule]` as compiled: the pattern parses and fires, the zone exists.
#[derive(Clone, Copy, Debug)]
pub struct ScheduleDef {
    /// A cron pattern (5 fields, or 6 with seconds first).
    pub cron: &'static str,
    /// The IANA time zone the pattern is read in.
    pub timezone: &'static str,
    /// What a tick does while the previous run is still going.
    pub overlap: Overlap,
    /// A run not finished this long after its tick raises an alert.
    pub sla_ms: Option<u64>,
}

/// `[pipeline.sensor]` as compiled.
#[derive(Clone, Copy, Debug)]
pub struct SensorDef {
    /// What it waits for.
    pub kind: SensorKind,
    /// The connection it looks in.
    pub connection: &'static str,
    /// The path template as written, for messages.
    pub path: &'static str,
    /// The path for one partition's run.
    pub target: fn(&RunContext) -> Result<String, BlockError>,
    /// How often it looks, in milliseconds.
    pub poke_interval_ms: u64,
    /// How long a scheduled run waits for it, in milliseconds.
    pub timeout_ms: u64,
}

/// What a sensor waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensorKind {
    /// An object (any object matching a glob) in a folder or object store.
    Object,
    /// An HTTP endpoint answering 2xx to a HEAD request.
    Http,
}

/// What a scheduler does with a tick while the previous run is still going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// Skip the tick (logged and counted).
    Skip,
    /// Run it when the previous run has finished.
    Queue,
}

/// Partitioning of a pipeline.
#[derive(Clone, Copy, Debug)]
pub struct PartitionSpec {
    /// Monthly, daily or hourly.
    pub granularity: Granularity,
    /// The first partition's key.
    pub start: &'static str,
    /// What a scheduled run does about partitions it missed.
    pub catchup: Catchup,
}

/// What a scheduled run (`run` without `--partition`) does about partitions missed while
/// nothing ran: after an outage, a cron job that was down for three days either loads the
/// three days (`All`) or only today's (`Latest`), but never piles up runs without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Catchup {
    /// Only the latest complete partition; the missed ones are named in a warning.
    Latest,
    /// Every partition after the newest successful one, up to the latest complete one.
    All,
}

/// A declared parameter.
#[derive(Clone, Copy, Debug)]
pub struct ParamDef {
    /// Its name.
    pub name: &'static str,
    /// Its default, which also fixes its type.
    pub default: ParamValue,
}

/// A parameter value as declared in the pipeline (defaults are static).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    String(&'static str),
    /// A boolean.
    Bool(bool),
}

/// A connection role and its URL template (`${VAR:-default}` references allowed).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionDef {
    /// The role name.
    pub name: &'static str,
    /// The URL template.
    pub url: &'static str,
    /// A password to inject into the URL, by reference.
    pub password: Option<Secret>,
}

/// Where a secret is read from.
#[derive(Clone, Copy, Debug)]
pub enum Secret {
    /// An environment variable.
    Env(&'static str),
    /// A file; trailing whitespace is trimmed.
    File(&'static str),
}

/// Kinds of block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Reads a file over HTTP.
    HttpSource,
    /// Reads local files or files of an object store.
    FileSource,
    /// Reads the records of a paginated JSON API.
    RestSource,
    /// Runs a query on a database.
    SqlSource,
    /// Column operations compiled from TOML.
    Transform,
    /// Joins two inputs on key columns.
    Join,
    /// Stacks the rows of its inputs.
    Union,
    /// One row per group, with aggregates.
    Aggregate,
    /// A hand-written Rust function.
    Rust,
    /// Writes a SQL table.
    TableSink,
    /// Writes Parquet files to the lake.
    LakeSink,
    /// Writes one file per run at a templated path.
    ExportSink,
    /// Loads a BigQuery table.
    BigQuerySink,
    /// Reports the run's outcome (log line, webhook) when its trigger rule fires.
    Callback,
}

impl BlockKind {
    /// Whether blocks of this kind read data from outside (files, APIs, databases).
    pub fn is_source(self) -> bool {
        matches!(
            self,
            BlockKind::HttpSource
                | BlockKind::FileSource
                | BlockKind::RestSource
                | BlockKind::SqlSource
        )
    }

    /// The kind's name as written in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::HttpSource => "http",
            BlockKind::FileSource => "file",
            BlockKind::RestSource => "rest",
            BlockKind::SqlSource => "sql",
            BlockKind::Transform => "transform",
            BlockKind::Join => "join",
            BlockKind::Union => "union",
            BlockKind::Aggregate => "aggregate",
            BlockKind::Rust => "rust",
            BlockKind::TableSink => "table",
            BlockKind::LakeSink => "lake",
            BlockKind::ExportSink => "export",
            BlockKind::BigQuerySink => "bigquery",
            BlockKind::Callback => "callback",
        }
    }
}

/// A block of the compiled graph.
#[derive(Clone, Copy, Debug)]
pub struct BlockDef {
    /// Its name.
    pub name: &'static str,
    /// What it is.
    pub kind: BlockKind,
    /// The line of its table in the pipeline file.
    pub line: usize,
    /// What it is for.
    pub description: &'static str,
    /// One line saying what it does.
    pub summary: &'static str,
    /// Indices of its inputs in `Pipeline::blocks`: the blocks whose rows it reads.
    pub inputs: &'static [usize],
    /// Indices of blocks it waits for without reading their rows (`after = [...]`).
    pub after: &'static [usize],
    /// When it runs, given how its upstream blocks (inputs and `after`) ended.
    pub trigger: Trigger,
    /// A condition over parameters and the partition; when false the block is skipped.
    pub run_if: Option<Condition>,
    /// The schema flowing in, if it has an input.
    pub input: Option<&'static [Column]>,
    /// The schema flowing out; `None` for sinks.
    pub output: Option<&'static [Column]>,
    /// Retries and timeout.
    pub policy: Policy,
    /// Where a sink writes, for `validate` and `explain`; `None` for other blocks.
    pub sink: Option<SinkDef>,
    /// What a callback reports and where; `None` for other blocks.
    pub callback: Option<&'static crate::callback::CallbackTarget>,
    /// Column lineage of its output (of its input, for a sink): each column with the source
    /// columns it comes from in words, as the compiler traced them through renames and
    /// derivations.
    pub lineage: &'static [(&'static str, &'static str)],
}

impl BlockDef {
    /// What the block reports when it is an `on = "sla"` callback: `serve` sends it when a
    /// scheduled run is late, and no run executes it.
    pub fn sla_alert(&self) -> Option<&'static crate::callback::CallbackTarget> {
        self.callback
            .filter(|c| c.event == crate::callback::CallbackEvent::Sla)
    }
}

/// When a block runs, given the outcomes of its upstream blocks (like Airflow's trigger rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Every upstream block succeeded (the default).
    AllSuccess,
    /// Every upstream block finished, however it ended: cleanup.
    AllDone,
    /// At least one upstream block failed: failure handling and alerts.
    OneFailed,
    /// Every upstream block failed.
    AllFailed,
    /// No upstream block failed (succeeded or skipped).
    NoneFailed,
    /// At least one upstream block succeeded.
    OneSuccess,
}

impl Trigger {
    /// The rule's name as written in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::AllSuccess => "all_success",
            Trigger::AllDone => "all_done",
            Trigger::OneFailed => "one_failed",
            Trigger::AllFailed => "all_failed",
            Trigger::NoneFailed => "none_failed",
            Trigger::OneSuccess => "one_success",
        }
    }

    /// Whether a block with this rule runs, given how many upstream blocks succeeded, failed
    /// and were skipped. Only called once every upstream block has ended.
    pub fn fires(self, succeeded: usize, failed: usize, skipped: usize) -> bool {
        let total = succeeded + failed + skipped;
        match self {
            Trigger::AllSuccess => succeeded == total,
            Trigger::AllDone => true,
            Trigger::OneFailed => failed > 0,
            Trigger::AllFailed => total > 0 && failed == total,
            Trigger::NoneFailed => failed == 0,
            Trigger::OneSuccess => succeeded > 0,
        }
    }
}

/// A compiled `run_if` condition.
#[derive(Clone, Copy, Debug)]
pub struct Condition {
    /// The expression as written, for messages.
    pub text: &'static str,
    /// Evaluates it for a run.
    pub eval: fn(&RunContext) -> Result<bool, BlockError>,
}

/// A sink's target.
#[derive(Clone, Copy, Debug)]
pub enum SinkDef {
    /// A SQL table.
    Table(TableTarget),
    /// A Parquet dataset in the lake.
    Lake(LakeTarget),
    /// One file per run in an object store.
    Export(ExportTarget),
    /// A BigQuery table.
    BigQuery(BigQueryTarget),
}

/// Retry and timeout policy of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Retries after the first attempt, for retryable errors only.
    pub retries: u32,
    /// The first retry delay in milliseconds; it doubles each time.
    pub retry_delay_ms: u64,
    /// The longest delay between two attempts in milliseconds.
    pub max_retry_delay_ms: u64,
    /// The timeout of one attempt in milliseconds.
    pub timeout_ms: u64,
}

/// Column value types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BaseType {
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// UTF-8 text.
    String,
    /// Boolean.
    Bool,
    /// Calendar date.
    Date,
    /// Date and time without zone, microseconds.
    Timestamp,
}

impl BaseType {
    /// The polars data type of this column type.
    pub fn dtype(self) -> DataType {
        match self {
            BaseType::Int64 => DataType::Int64,
            BaseType::Float64 => DataType::Float64,
            BaseType::String => DataType::String,
            BaseType::Bool => DataType::Boolean,
            BaseType::Date => DataType::Date,
            BaseType::Timestamp => DataType::Datetime(TimeUnit::Microseconds, None),
        }
    }

    /// The name used in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            BaseType::Int64 => "int64",
            BaseType::Float64 => "float64",
            BaseType::String => "string",
            BaseType::Bool => "bool",
            BaseType::Date => "date",
            BaseType::Timestamp => "timestamp",
        }
    }
}

/// A column of a compiled schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// The column name.
    pub name: &'static str,
    /// The value type.
    pub ty: BaseType,
    /// Whether nulls are allowed.
    pub nullable: bool,
}

impl Column {
    /// A column that may hold nulls.
    pub const fn nullable(name: &'static str, ty: BaseType) -> Column {
        Column {
            name,
            ty,
            nullable: true,
        }
    }

    /// A column that never holds nulls.
    pub const fn required(name: &'static str, ty: BaseType) -> Column {
        Column {
            name,
            ty,
            nullable: false,
        }
    }

    /// `int64?`-style type text.
    pub fn type_text(&self) -> String {
        format!("{}{}", self.ty.name(), if self.nullable { "?" } else { "" })
    }
}
