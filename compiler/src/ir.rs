//! The checked pipeline: what `check` proves and `emit` turns into Rust.
//!
//! Everything here is resolved: blocks are in dependency order and refer to each other by index,
//! every edge carries its exact schema, expressions are typed, templates are split into parts.

use crate::expr::BinaryOp;
use crate::syntax::{
    Catchup, CheckSeverity, Compression, FileFormat, ForEach, JoinHow, Overlap, RestOptions,
    SecretRef, Trigger, WebhookFormat, WriteMode,
};
use crate::types::{BaseType, ColumnType, Granularity, Literal};

/// An ordered list of columns with their types.
pub type Schema = Vec<(String, ColumnType)>;

/// A checked pipeline, ready to emit.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The pipeline's name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// Who owns it.
    pub owner: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// How the file is named in messages and doc comments (`pipelines/x.toml`).
    pub source_path: String,
    /// A hash of the pipeline file and of the compiler's version, recorded with each run.
    pub source_hash: String,
    /// How long one whole run may take, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// At most this many blocks of a kind (`table`, `http`, ...) at once in one process.
    pub limits: Vec<(String, u32)>,
    /// When `serve` starts runs.
    pub schedule: Option<Schedule>,
    /// What `serve` waits for before it runs a partition.
    pub sensor: Option<Sensor>,
    /// Partitioning, if any: granularity and first partition key.
    pub partitions: Option<(Granularity, String, Catchup)>,
    /// Parameters and their defaults.
    pub params: Vec<(String, Literal)>,
    /// Connections by role.
    pub connections: Vec<Connection>,
    /// Blocks in dependency order.
    pub blocks: Vec<Block>,
    /// The Rust module with hand-written blocks, relative to the workspace root, if any block
    /// uses one.
    pub rust_module: Option<String>,
}

/// A connection: a role and a URL template.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The role name.
    pub name: String,
    /// The URL template with `${VAR:-default}` references.
    pub url: String,
    /// The password reference, if any.
    pub password: Option<SecretRef>,
}

/// Retry and timeout policy of a block, with the pipeline defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Retries after the first attempt, on retryable errors.
    pub retries: u32,
    /// The first retry delay in milliseconds.
    pub retry_delay_ms: u64,
    /// The longest delay between two attempts in milliseconds.
    pub max_retry_delay_ms: u64,
    /// The timeout of one attempt in milliseconds.
    pub timeout_ms: u64,
}

/// A checked block.
#[derive(Clone, Debug)]
pub struct Block {
    /// The block's name (a Rust identifier).
    pub name: String,
    /// The line of its table header in the pipeline file.
    pub line: usize,
    /// What it is for.
    pub description: Option<String>,
    /// Indices of the blocks it reads, in `Pipeline::blocks`.
    pub inputs: Vec<usize>,
    /// Indices of the blocks it waits for without reading them.
    pub after: Vec<usize>,
    /// When it runs, given how its upstream blocks ended.
    pub trigger: Trigger,
    /// Its `run_if` condition: the text as written and the typed expression.
    pub run_if: Option<(String, TypedExpr)>,
    /// The columns a source tags as personal data.
    pub pii: Vec<String>,
    /// Whether a sink may store personal data.
    pub pii_allowed: bool,
    /// What it does.
    pub op: BlockOp,
    /// Its output schema; `None` for sinks.
    pub output: Option<Schema>,
    /// Data tests on its output.
    pub checks: Vec<Check>,
    /// Retry and timeout policy.
    pub policy: Policy,
}

/// One piece of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text copied as it is.
    Text(String),
    /// The current item of a fanned-out source (`{item}`).
    Item,
    /// An instant of the partition formatted with a strftime pattern
    /// (`{execution_date:%Y/%m/%d}`).
    Date {
        /// `Start` (the execution date) or `End`.
        field: PartitionField,
        /// The strftime pattern, checked to be valid.
        format: String,
    },
    /// A partition field, zero-padded to `width` digits.
    Field {
        /// The field.
        field: PartitionField,
        /// The minimum width.
        width: usize,
    },
}

/// Fields of a partition available to templates and expressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionField {
    /// The year, e.g. 2021.
    Year,
    /// The month, 1 to 12.
    Month,
    /// The day of month.
    Day,
    /// The hour.
    Hour,
    /// The partition key, e.g. `2021-01`.
    Key,
    /// The first instant of the partition.
    Start,
    /// The first instant after the partition.
    End,
}

impl PartitionField {
    /// The field's name, as in `partition.NAME` and the runtime's `Partition::NAME()`.
    pub fn name(self) -> &'static str {
        match self {
            PartitionField::Year => "year",
            PartitionField::Month => "month",
            PartitionField::Day => "day",
            PartitionField::Hour => "hour",
            PartitionField::Key => "key",
            PartitionField::Start => "start",
            PartitionField::End => "end",
        }
    }
}

/// What a block does.
#[derive(Clone, Debug)]
pub enum BlockOp {
    /// Reads a file over HTTP, from an object store or from the local file system.
    Source {
        /// Where the path is resolved.
        origin: SourceOrigin,
        /// The path, relative to the connection's URL; object-store paths may hold globs.
        path: Vec<TemplatePart>,
        /// CSV or Parquet.
        format: FileFormat,
        /// Compression.
        compression: Compression,
        /// One file per item, unioned.
        fan_out: Option<FanOut>,
    },
    /// Reads the records of a paginated JSON API.
    RestSource {
        /// The connection holding the API's base URL.
        connection: String,
        /// The endpoint's path (and query) after the base URL.
        path: Vec<TemplatePart>,
        /// Records, pagination, authentication.
        options: RestOptions,
    },
    /// Runs a query on a SQLite or Postgres database; partition values in the template are
    /// inserted as SQL literals.
    SqlSource {
        /// The database connection.
        connection: String,
        /// The query template.
        query: Vec<TemplatePart>,
    },
    /// Column operations.
    Transform {
        /// The steps in order.
        steps: Vec<Step>,
    },
    /// A hand-written function.
    Rust {
        /// The function's name in the pipeline's Rust module.
        function: String,
    },
    /// Joins its two inputs (left, right) on key columns.
    Join {
        /// Inner, left or full.
        how: JoinHow,
        /// The key columns of the left input.
        left_on: Vec<String>,
        /// The key columns of the right input, paired with `left_on`.
        right_on: Vec<String>,
        /// Appended to a right column whose name the left input already has.
        suffix: Option<String>,
    },
    /// Stacks the rows of its inputs, which have the same columns (matched by name).
    Union,
    /// One row per group of equal key values, with aggregates of the group's rows.
    Aggregate {
        /// The key columns, in output order.
        group_by: Vec<String>,
        /// The aggregate columns: name and expression (built of aggregate calls).
        aggregates: Vec<(String, TypedExpr)>,
    },
    /// Writes one file per run at a templated path of an object store.
    ExportSink {
        /// The object store's connection.
        connection: String,
        /// The path template.
        path: Vec<TemplatePart>,
        /// Parquet or CSV.
        format: FileFormat,
    },
    /// Loads into a BigQuery table.
    BigQuerySink {
        /// The `bigquery://PROJECT/DATASET` connection.
        connection: String,
        /// The table.
        table: String,
        /// The dataset, when not the connection's.
        dataset: Option<String>,
        /// Replace, append, replace_partition or upsert.
        mode: WriteMode,
        /// The column holding the partition key, for `replace_partition`.
        partition_column: Option<String>,
        /// The columns identifying a row, for `upsert`.
        key: Vec<String>,
    },
    /// A SQL table sink.
    TableSink {
        /// The database connection.
        connection: String,
        /// The table.
        table: String,
        /// The Postgres schema.
        db_schema: Option<String>,
        /// The write mode.
        mode: WriteMode,
        /// The column holding the partition key, for `replace_partition`.
        partition_column: Option<String>,
        /// The columns identifying a row, for `upsert`.
        key: Vec<String>,
    },
    /// Reports the run's outcome.
    Callback {
        /// What it reports on.
        on: crate::syntax::CallbackOn,
        /// The message template (placeholders checked).
        message: String,
        /// The webhook connection, if any.
        webhook: Option<String>,
        /// The webhook's body format.
        webhook_format: WebhookFormat,
        /// The `smtp://` connection, if any.
        email: Option<String>,
        /// Hold back a failure alert while the previous run also failed.
        dedupe: bool,
    },
    /// A Parquet lake sink.
    LakeSink {
        /// The lake connection.
        connection: String,
        /// The dataset folder's template.
        path: Vec<TemplatePart>,
        /// The hive partition columns, outermost folder first.
        partition_by: Vec<String>,
        /// The most rows one file holds.
        max_rows_per_file: Option<u32>,
        /// Parquet or CSV.
        format: FileFormat,
    },
}

impl BlockOp {
    /// Whether the block writes its input somewhere and has no output.
    pub fn is_sink(&self) -> bool {
        matches!(
            self,
            BlockOp::TableSink { .. }
                | BlockOp::LakeSink { .. }
                | BlockOp::ExportSink { .. }
                | BlockOp::BigQuerySink { .. }
        )
    }
}

/// Where a source's path is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceOrigin {
    /// Under the HTTP(S) base URL of this connection.
    Http(String),
    /// In the object store this connection names; the path may hold globs.
    Store(String),
    /// On the local file system, relative to the working directory.
    Local,
}

/// A checked schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The cron pattern (it parses and fires).
    pub cron: String,
    /// The IANA time zone (it exists).
    pub timezone: String,
    /// Skip or queue a tick while the previous run is going.
    pub overlap: Overlap,
    /// The SLA in milliseconds, if any.
    pub sla_ms: Option<u64>,
}

/// A checked sensor.
#[derive(Clone, Debug)]
pub struct Sensor {
    /// What it waits for.
    pub kind: crate::syntax::SensorKind,
    /// The connection it looks in (it exists).
    pub connection: String,
    /// The path template (its variables exist).
    pub path: Vec<TemplatePart>,
    /// The line of `[pipeline.sensor]`.
    pub line: usize,
    /// How often it looks, in milliseconds.
    pub poke_interval_ms: u64,
    /// How long a scheduled run waits for it, in milliseconds.
    pub timeout_ms: u64,
}

/// A checked fan-out of a source.
#[derive(Clone, Debug)]
pub struct FanOut {
    /// The items.
    pub items: ForEach,
    /// How many items are read at once.
    pub concurrency: u32,
    /// The column recording each row's item, if any (the last column of the output).
    pub item_column: Option<String>,
}

/// A checked transform step.
#[derive(Clone, Debug)]
pub struct Step {
    /// Its line in the pipeline file.
    pub line: usize,
    /// The step as a reader would summarise it, for the generated comment.
    pub summary: String,
    /// The operation.
    pub op: StepOp,
}

/// Checked transform operations.
#[derive(Clone, Debug)]
pub enum StepOp {
    /// Keep rows where the predicate is true.
    Filter(TypedExpr),
    /// Add or replace columns.
    Derive(Vec<(String, TypedExpr)>),
    /// Rename columns (snake_case rules are already expanded to pairs).
    Rename(Vec<(String, String)>),
    /// Keep these columns in this order.
    Select(Vec<String>),
    /// Remove these columns.
    Drop(Vec<String>),
    /// Change types.
    Cast(Vec<(String, ColumnType)>),
}

/// A checked data test.
#[derive(Clone, Debug)]
pub struct Check {
    /// The name shown in logs and errors.
    pub name: String,
    /// Its line in the pipeline file.
    pub line: usize,
    /// The predicate every row must satisfy.
    pub predicate: TypedExpr,
    /// Fail or warn.
    pub severity: CheckSeverity,
}

/// The type of an expression: `None` as base for a bare `null`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExprType {
    /// The value type, unknown for `null`.
    pub base: Option<BaseType>,
    /// Whether the value may be null.
    pub nullable: bool,
}

/// Functions of the expression language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// The date of a timestamp.
    Date,
    /// The year of a date or timestamp.
    Year,
    /// The month of a date or timestamp.
    Month,
    /// The day of month of a date or timestamp.
    Day,
    /// The hour of a timestamp.
    Hour,
    /// Absolute value.
    Abs,
    /// Lowercase text.
    Lower,
    /// Uppercase text.
    Upper,
    /// Length of text in characters.
    Length,
    /// The first non-null argument.
    Coalesce,
    /// Round a float to N decimals.
    Round,
}

/// A typed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum TypedExpr {
    /// A column.
    Column(String),
    /// A constant.
    Literal(Literal),
    /// A date constant: year, month, day.
    DateLiteral(i32, u32, u32),
    /// A null of a type.
    Null(Option<BaseType>),
    /// A parameter with its type.
    Param(String, BaseType),
    /// A field of the run's partition.
    Partition(PartitionField),
    /// Boolean negation.
    Not(Box<TypedExpr>),
    /// Arithmetic negation.
    Neg(Box<TypedExpr>),
    /// A binary operation.
    Binary(BinaryOp, Box<TypedExpr>, Box<TypedExpr>),
    /// A null test.
    IsNull(Box<TypedExpr>, bool),
    /// A membership test against constants.
    InList(Box<TypedExpr>, Vec<Literal>, bool),
    /// A function call.
    Call(Function, Vec<TypedExpr>),
    /// An aggregate over the rows of a group: `count()` has no argument.
    Aggregate(Aggregate, Option<Box<TypedExpr>>),
    /// An aggregate per group of rows with equal values in these columns, repeated on every
    /// row (`sum(x) over (k)`); no columns means the whole frame.
    Window(Box<TypedExpr>, Vec<String>),
}

impl TypedExpr {
    /// Whether each row's value depends on that row alone: no aggregate, no window. Such an
    /// expression gives the same values on a batch of rows as on all rows at once.
    pub fn is_row_wise(&self) -> bool {
        match self {
            TypedExpr::Column(_)
            | TypedExpr::Literal(_)
            | TypedExpr::DateLiteral(..)
            | TypedExpr::Null(_)
            | TypedExpr::Param(..)
            | TypedExpr::Partition(_) => true,
            TypedExpr::Not(inner)
            | TypedExpr::Neg(inner)
            | TypedExpr::IsNull(inner, _)
            | TypedExpr::InList(inner, _, _) => inner.is_row_wise(),
            TypedExpr::Binary(_, left, right) => left.is_row_wise() && right.is_row_wise(),
            TypedExpr::Call(_, args) => args.iter().all(TypedExpr::is_row_wise),
            TypedExpr::Aggregate(..) | TypedExpr::Window(..) => false,
        }
    }
}

impl Block {
    /// Whether the block can work on its input batch by batch, as it arrives, with the same
    /// result as on all rows at once: a transform whose steps and checks are all row-wise.
    pub fn works_per_batch(&self) -> bool {
        let BlockOp::Transform { steps } = &self.op else {
            return false;
        };
        let steps_row_wise = steps.iter().all(|step| match &step.op {
            StepOp::Filter(predicate) => predicate.is_row_wise(),
            StepOp::Derive(columns) => columns.iter().all(|(_, expr)| expr.is_row_wise()),
            StepOp::Rename(_) | StepOp::Select(_) | StepOp::Drop(_) | StepOp::Cast(_) => true,
        });
        steps_row_wise
            && self
                .checks
                .iter()
                .all(|check| check.predicate.is_row_wise())
    }

    /// Whether the block is a source that hands on its rows in batches as it parses them: one
    /// CSV file over HTTP or from the local file system, without checks of its own (which see
    /// every row at once).
    pub fn streams_its_source(&self) -> bool {
        matches!(
            &self.op,
            BlockOp::Source {
                origin: SourceOrigin::Http(_) | SourceOrigin::Local,
                format: FileFormat::Csv,
                fan_out: None,
                ..
            }
        ) && self.checks.is_empty()
    }
}

/// Aggregate functions: in an `aggregate` block, or with `over (...)` anywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// `count()`: the rows; `count(x)`: the non-null values.
    Count,
    /// `count_distinct(x)`: the distinct non-null values.
    CountDistinct,
    /// `sum(x)` of numbers; 0 for no values.
    Sum,
    /// `mean(x)` (or `avg(x)`) of numbers; null for no values.
    Mean,
    /// `min(x)` of numbers, dates, timestamps or strings.
    Min,
    /// `max(x)`.
    Max,
}

impl Aggregate {
    /// The functions by name, as written in expressions.
    pub const ALL: [(&'static str, Aggregate); 7] = [
        ("count", Aggregate::Count),
        ("count_distinct", Aggregate::CountDistinct),
        ("sum", Aggregate::Sum),
        ("mean", Aggregate::Mean),
        ("avg", Aggregate::Mean),
        ("min", Aggregate::Min),
        ("max", Aggregate::Max),
    ];

    /// The function called `name`, if it is an aggregate.
    pub fn named(name: &str) -> Option<Aggregate> {
        Aggregate::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }
}

/// The names of the typed rows a hand-written function takes and returns: `flag_expensive`
/// takes `FlagExpensiveInput` and returns `FlagExpensiveOutput`. The checker names them in its
/// messages and the emitter generates them.
pub fn row_type_names(function: &str) -> (String, String) {
    let stem: String = function
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    (format!("{stem}Input"), format!("{stem}Output"))
}
