//! Syntax: the pipeline TOML read into a typed tree that remembers where everything came from.
//!
//! The TOML parser gives a tree of spanned values. This module walks it the way a strict serde
//! deserializer would, but it does not stop at the first problem: unknown keys (with a
//! suggestion), wrong value types and missing keys are all collected, each with its span.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, Span, did_you_mean};
use crate::types::{ColumnType, Granularity, Literal};

/// A value with the byte range it was written at.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it stands in the file.
    pub span: Span,
}

impl<T> Located<T> {
    fn new(value: T, span: Span) -> Self {
        Located { value, span }
    }
}

/// The whole pipeline file.
#[derive(Clone, Debug)]
pub struct PipelineFile {
    /// The `[pipeline]` table.
    pub pipeline: PipelineMeta,
    /// The `[params]` table, in file order.
    pub params: Vec<Param>,
    /// The `[connections]` table, in file order.
    pub connections: Vec<Connection>,
    /// The `[blocks.*]` tables, in file order.
    pub blocks: Vec<Block>,
}

/// `[pipeline]`: metadata, partitions and defaults.
#[derive(Clone, Debug)]
pub struct PipelineMeta {
    /// The pipeline's name; also the binary's name.
    pub name: Located<String>,
    /// What the pipeline does, for people.
    pub description: Option<String>,
    /// Who to ask about it.
    pub owner: Option<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// How runs are partitioned, if they are.
    pub partitions: Option<Partitions>,
    /// Retry and timeout defaults for every block.
    pub defaults: Defaults,
    /// How long one whole run may take, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `[pipeline.concurrency]`: at most this many blocks of a kind at once in the process.
    pub concurrency: Vec<(Located<String>, Located<u32>)>,
    /// `[pipeline.schedule]`: when `serve` starts runs.
    pub schedule: Option<ScheduleDecl>,
    /// `[pipeline.sensor]`: what `serve` waits for before it runs a partition.
    pub sensor: Option<SensorDecl>,
    /// `require_timeouts = true`: every block must have a timeout set on purpose.
    pub require_timeouts: Option<Located<bool>>,
    /// `deny = ["W0005"]` (or `["warnings"]`): warnings this pipeline treats as errors.
    pub deny: Vec<Located<String>>,
}

/// `[pipeline.schedule]`.
#[derive(Clone, Debug)]
pub struct ScheduleDecl {
    /// A cron pattern: 5 fields, or 6 with seconds first.
    pub cron: Located<String>,
    /// An IANA time zone name; UTC when absent.
    pub timezone: Option<Located<String>>,
    /// Whether a tick that comes while the previous run is still going is skipped or queued.
    pub overlap: Overlap,
    /// A run not finished this long after its tick raises an alert, in milliseconds.
    pub sla_ms: Option<u64>,
    /// The span of the table, for errors about the schedule as a whole.
    pub span: Span,
}

/// `[pipeline.sensor]`.
#[derive(Clone, Debug)]
pub struct SensorDecl {
    /// What it waits for.
    pub kind: Located<SensorKind>,
    /// The connection it looks in.
    pub connection: Located<String>,
    /// The object (globs allowed) or endpoint path, templated with the partition.
    pub path: Located<String>,
    /// How often it looks, in milliseconds.
    pub poke_interval_ms: Option<u64>,
    /// How long a scheduled run waits for it, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// The span of the table.
    pub span: Span,
}

/// What a sensor waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensorKind {
    /// An object (any object matching a glob) in a folder or object store.
    Object,
    /// An HTTP endpoint answering 2xx.
    Http,
}

/// What a scheduler does with a tick while the previous run is still going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlap {
    /// Skip the tick, and say so.
    #[default]
    Skip,
    /// Start the run when the previous one has finished.
    Queue,
}

/// `[pipeline.partitions]`.
#[derive(Clone, Debug)]
pub struct Partitions {
    /// Monthly, daily or hourly.
    pub granularity: Located<Granularity>,
    /// The first partition, as its key (`2019-01`, `2019-01-01`, `2019-01-01T00`).
    pub start: Located<String>,
    /// What a scheduled run (`run` without `--partition`) does about partitions it missed.
    pub catchup: Catchup,
}

/// What a scheduled run does about partitions missed while nothing ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Catchup {
    /// Run only the latest complete partition, and say which ones were missed.
    #[default]
    Latest,
    /// Run every partition after the newest successful one, oldest first.
    All,
}

/// `[pipeline.defaults]`, also the per-block overrides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Defaults {
    /// How many times a failed block is retried (on retryable errors only).
    pub retries: Option<u32>,
    /// The first retry delay in milliseconds; it doubles on each attempt.
    pub retry_delay_ms: Option<u64>,
    /// The longest delay between two attempts, in milliseconds.
    pub max_retry_delay_ms: Option<u64>,
    /// How long one attempt of a block may take, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// One `[params]` entry: a typed value the caller may set with `--param name=value`.
#[derive(Clone, Debug)]
pub struct Param {
    /// The parameter's name, used as `param.NAME` in expressions.
    pub name: Located<String>,
    /// Its type and its default value.
    pub default: Located<Literal>,
}

/// One `[connections]` entry.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The role name blocks refer to (`warehouse`, `lake`, ...).
    pub name: Located<String>,
    /// The URL, with `${VAR:-default}` references.
    pub url: Located<String>,
    /// A password injected into the URL at run time, by reference only.
    pub password: Option<Located<SecretRef>>,
}

/// Where a secret comes from. Secrets are never written in the pipeline file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    /// Read from an environment variable.
    Env(String),
    /// Read from a file (for example a mounted Kubernetes secret); trailing newlines are trimmed.
    File(String),
}

/// One `[blocks.NAME]` table.
#[derive(Clone, Debug)]
pub struct Block {
    /// The block's name, unique in the pipeline.
    pub name: Located<String>,
    /// The span of the whole table, used for the block's line in generated doc comments.
    pub span: Span,
    /// What it is for.
    pub description: Option<String>,
    /// The blocks it reads from.
    pub inputs: Vec<Located<String>>,
    /// Blocks it waits for without reading their rows.
    pub after: Vec<Located<String>>,
    /// When it runs, given how its upstream blocks ended (`all_success` when absent).
    pub trigger: Option<Located<Trigger>>,
    /// A condition over parameters and the partition; the block is skipped when it is false.
    pub run_if: Option<ExprSource>,
    /// Columns of a source that hold personal data.
    pub pii: Vec<Located<String>>,
    /// Whether a sink may receive personal data.
    pub pii_allowed: Option<Located<bool>>,
    /// What the block does.
    pub kind: BlockKind,
    /// Data tests on the block's output.
    pub checks: Vec<Check>,
    /// Retry and timeout overrides.
    pub policy: Defaults,
}

/// File formats a source can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

/// Compression of a source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// gzip (`.gz`).
    Gzip,
}

/// Write modes of a table sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Drop and recreate the table with the new rows, in one transaction.
    Replace,
    /// Insert the rows.
    Append,
    /// Delete the rows of this run's partition, then insert, in one transaction.
    ReplacePartition,
    /// Insert rows, updating those whose key columns match an existing row, in one transaction.
    Upsert,
}

/// Block kinds, as written in `kind = "..."`.
pub const BLOCK_KINDS: [&str; 14] = [
    "http",
    "file",
    "rest",
    "sql",
    "transform",
    "join",
    "union",
    "aggregate",
    "rust",
    "table",
    "lake",
    "export",
    "bigquery",
    "callback",
];

/// Kinds of join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinHow {
    /// Rows whose keys match on both sides.
    Inner,
    /// Every left row, with the matching right columns or nulls.
    Left,
    /// Every row of both sides; keys are merged into the left key columns.
    Full,
    /// The left rows that have a match on the right, once each; only the left columns.
    Semi,
    /// The left rows that have no match on the right; only the left columns.
    Anti,
}

impl JoinHow {
    /// Every kind with its name in pipeline files.
    pub const ALL: [(&'static str, JoinHow); 5] = [
        ("inner", JoinHow::Inner),
        ("left", JoinHow::Left),
        ("full", JoinHow::Full),
        ("semi", JoinHow::Semi),
        ("anti", JoinHow::Anti),
    ];

    /// Its name in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            JoinHow::Inner => "inner",
            JoinHow::Left => "left",
            JoinHow::Full => "full",
            JoinHow::Semi => "semi",
            JoinHow::Anti => "anti",
        }
    }

    /// Whether the output has only the left input's columns (the right side filters).
    pub fn filters_only(self) -> bool {
        matches!(self, JoinHow::Semi | JoinHow::Anti)
    }
}

/// The key columns of a join: pairs of a left and a right column (the same name twice for `on`).
#[derive(Clone, Debug)]
pub struct JoinKeys {
    /// The pairs, in order.
    pub pairs: Vec<(Located<String>, Located<String>)>,
    /// Where the keys are written (`on` or `left_on`).
    pub span: Span,
}

/// Webhook bodies of callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Baton's JSON: pipeline, run, partition, status, message, failed blocks.
    Json,
    /// `{"text": message}`, what Slack-compatible incoming webhooks take.
    Slack,
}

/// Trigger rules: when a block runs, given how its upstream blocks ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Every upstream block succeeded.
    AllSuccess,
    /// Every upstream block ended, however.
    AllDone,
    /// At least one upstream block failed.
    OneFailed,
    /// Every upstream block failed.
    AllFailed,
    /// No upstream block failed.
    NoneFailed,
    /// At least one upstream block succeeded.
    OneSuccess,
}

impl Trigger {
    /// Every rule with its name in pipeline files.
    pub const ALL: [(&'static str, Trigger); 6] = [
        ("all_success", Trigger::AllSuccess),
        ("all_done", Trigger::AllDone),
        ("one_failed", Trigger::OneFailed),
        ("all_failed", Trigger::AllFailed),
        ("none_failed", Trigger::NoneFailed),
        ("one_success", Trigger::OneSuccess),
    ];

    /// The rule's name.
    pub fn name(self) -> &'static str {
        Trigger::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("all_success", |(n, _)| n)
    }
}

/// When a callback block reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOn {
    /// When a block it watches failed.
    Failure,
    /// When every block it watches succeeded.
    Success,
    /// Whenever the blocks it watches have ended.
    Always,
    /// When every block it watches succeeded and the pipeline's previous run had failed: the
    /// incident is over.
    Recovery,
    /// When a data check with `severity = "warn"` found failing rows.
    Warning,
    /// When a scheduled run has not finished within the schedule's `sla`; sent by `serve`,
    /// never part of a run.
    Sla,
}

impl CallbackOn {
    /// Every value, as written in pipeline files.
    pub const NAMES: [&'static str; 6] =
        ["failure", "success", "always", "recovery", "warning", "sla"];

    /// The trigger rule that implements it.
    pub fn trigger(self) -> Trigger {
        match self {
            CallbackOn::Failure => Trigger::OneFailed,
            CallbackOn::Success | CallbackOn::Recovery => Trigger::AllSuccess,
            CallbackOn::Always | CallbackOn::Warning | CallbackOn::Sla => Trigger::AllDone,
        }
    }

    /// Its name as written in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            CallbackOn::Failure => "failure",
            CallbackOn::Success => "success",
            CallbackOn::Always => "always",
            CallbackOn::Recovery => "recovery",
            CallbackOn::Warning => "warning",
            CallbackOn::Sla => "sla",
        }
    }
}

/// The kinds of block.
#[derive(Clone, Debug)]
pub enum BlockKind {
    /// Downloads a file over HTTP(S).
    HttpSource(FileSource),
    /// Reads local files or files of an object store.
    FileSource(FileSource),
    /// Reads a paginated JSON API; the `FileSource` holds its connection, path and schema.
    RestSource(FileSource, RestOptions),
    /// Runs a query on a database; the `FileSource` holds its connection, the query template
    /// (as `path`) and the schema.
    SqlSource(FileSource),
    /// A sequence of column operations.
    Transform {
        /// The steps, applied in order.
        steps: Vec<Step>,
    },
    /// Joins two inputs on key columns.
    Join {
        /// The key columns.
        keys: JoinKeys,
        /// Inner (default), left or full.
        how: Located<JoinHow>,
        /// Appended to right columns whose names the left input has.
        suffix: Option<Located<String>>,
    },
    /// Stacks the rows of inputs with the same columns.
    Union,
    /// Groups rows by key columns and computes aggregates per group.
    Aggregate {
        /// The key columns; none for one row over the whole input.
        group_by: Vec<Located<String>>,
        /// The computed columns, in order.
        aggregates: Vec<(Located<String>, ExprSource)>,
    },
    /// A hand-written Rust function.
    Rust {
        /// The function's path inside the pipeline's Rust module, e.g. `fix_flags`.
        function: Located<String>,
        /// The declared output schema; when absent the output schema equals the input schema.
        output: Option<Vec<ColumnDecl>>,
    },
    /// Writes into a SQL table.
    TableSink(TableSink),
    /// Writes partitioned Parquet files into the lake.
    LakeSink(LakeSink),
    /// Writes one file per run at a templated path.
    ExportSink(ExportSink),
    /// Loads into a BigQuery table (`schema` is the dataset).
    BigQuerySink(TableSink),
    /// Reports the run's outcome when the blocks it watches have ended.
    Callback {
        /// On failure, success or always.
        on: Located<CallbackOn>,
        /// The message template.
        message: Option<Located<String>>,
        /// The connection whose URL receives a POST.
        webhook: Option<Located<String>>,
        /// The webhook's body: Baton's JSON or Slack's `{"text": ...}`.
        webhook_format: WebhookFormat,
        /// The `smtp://` connection that mails the message.
        email: Option<Located<String>>,
        /// Whether a failure alert is held back while the pipeline's previous run also failed
        /// (default: yes for `on = "failure"`).
        dedupe: Option<Located<bool>>,
    },
}

impl BlockKind {
    /// The declared source of a source block: its connection, path template and schema.
    pub fn source(&self) -> Option<&FileSource> {
        match self {
            BlockKind::HttpSource(source)
            | BlockKind::FileSource(source)
            | BlockKind::RestSource(source, _)
            | BlockKind::SqlSource(source) => Some(source),
            _ => None,
        }
    }

    /// Whether the block writes its input somewhere and has no output.
    pub fn is_sink(&self) -> bool {
        matches!(
            self,
            BlockKind::TableSink(_)
                | BlockKind::LakeSink(_)
                | BlockKind::ExportSink(_)
                | BlockKind::BigQuerySink(_)
        )
    }
}

/// A file source: over HTTP, from an object store, or from the local file system.
#[derive(Clone, Debug)]
pub struct FileSource {
    /// The connection whose URL is the base: an HTTP(S) URL for `http` sources, an object store
    /// (`s3://`, `gs://`, `file://`, a folder) for `file` sources; none for a local path.
    pub connection: Option<Located<String>>,
    /// The path template, with `{partition.year}`-style variables.
    pub path: Located<String>,
    /// CSV or Parquet.
    pub format: FileFormat,
    /// Compression of the file.
    pub compression: Compression,
    /// The declared columns, in file order.
    pub schema: Vec<ColumnDecl>,
    /// The span of the `schema` table.
    pub schema_span: Span,
    /// Read one file per item instead of one file, and union them.
    pub for_each: Option<Located<ForEach>>,
    /// A column that records which item each row came from.
    pub item_column: Option<Located<String>>,
    /// How many items are read at the same time.
    pub concurrency: Option<Located<u32>>,
}

impl FileSource {
    /// The declared part of a source that reads no file (a REST API, a query): its connection,
    /// its path or query template and its schema; the file settings keep their defaults.
    fn without_file(
        connection: Located<String>,
        path: Located<String>,
        schema: Vec<ColumnDecl>,
        schema_span: Span,
    ) -> FileSource {
        FileSource {
            connection: Some(connection),
            path,
            format: FileFormat::Csv,
            compression: Compression::None,
            schema,
            schema_span,
            for_each: None,
            item_column: None,
            concurrency: None,
        }
    }
}

/// The items a fanned-out source reads, one file each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForEach {
    /// Every day of the run's (monthly) partition, as `2021-01-15`.
    Days,
    /// Every hour of the run's (daily) partition, as `2021-01-15T07`.
    Hours,
    /// A fixed list.
    Values(Vec<String>),
}

/// A table sink.
#[derive(Clone, Debug)]
pub struct TableSink {
    /// The connection of the database.
    pub connection: Located<String>,
    /// The table's name.
    pub table: Located<String>,
    /// The database schema (namespace) on Postgres; ignored by SQLite.
    pub db_schema: Option<Located<String>>,
    /// How rows are written.
    pub mode: Located<WriteMode>,
    /// The column identifying a run's partition (required by `replace_partition`).
    pub partition_column: Option<Located<String>>,
    /// The columns identifying a row (required by `upsert`).
    pub key: Option<Located<Vec<Located<String>>>>,
    /// The table's declared columns; when present they must match what flows in.
    pub columns: Option<Vec<ColumnDecl>>,
}

/// A lake sink.
#[derive(Clone, Debug)]
pub struct LakeSink {
    /// The connection of the lake.
    pub connection: Located<String>,
    /// The dataset's folder inside the lake.
    pub path: Located<String>,
    /// The columns the files are partitioned by, hive-style, outermost folder first.
    pub partition_by: Vec<Located<String>>,
    /// The most rows one file holds.
    pub max_rows_per_file: Option<Located<u32>>,
    /// Parquet (the default) or CSV.
    pub format: FileFormat,
}

/// How a REST source reads its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestOptions {
    /// The dotted path of the records array in each response (`data`, `result.items`); empty
    /// when the body is the array.
    pub records: String,
    /// How the next page is asked for.
    pub pagination: Pagination,
    /// The secret sent with every request.
    pub auth: Option<SecretRef>,
    /// The header carrying it: `Authorization` (as `Bearer TOKEN`) unless set.
    pub auth_header: Option<String>,
    /// The most pages one run reads; more is an error, not a silent cut.
    pub max_pages: u32,
}

/// Pagination styles of REST sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pagination {
    /// One request.
    None,
    /// `?page=1,2,...`, until a page has fewer than `size` records (or none).
    Page {
        /// The page number parameter.
        param: String,
        /// The page size parameter and value, if the API takes one.
        size: Option<(String, u32)>,
    },
    /// `?offset=0,limit,2*limit,...&limit=N`, until a page has fewer than `limit` records.
    Offset {
        /// The offset parameter.
        param: String,
        /// The limit parameter.
        limit_param: String,
        /// Records per page.
        limit: u32,
    },
    /// `?cursor=VALUE`, with the value taken from each response at `next`, until it is absent.
    Cursor {
        /// The cursor parameter.
        param: String,
        /// The dotted path of the next cursor in a response.
        next: String,
    },
    /// The `Link: <...>; rel="next"` response header (RFC 8288), until there is none.
    Link,
}

/// An export sink: one file per run.
#[derive(Clone, Debug)]
pub struct ExportSink {
    /// The connection of the object store.
    pub connection: Located<String>,
    /// The file's path template, e.g. `trips/{execution_date:%Y/%m/%d}/daily.parquet`.
    pub path: Located<String>,
    /// Parquet or CSV, from `format` or the path's extension.
    pub format: FileFormat,
}

/// A declared column: a name and a type.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnDecl {
    /// The column name.
    pub name: Located<String>,
    /// Its type and nullability.
    pub ty: Located<ColumnType>,
}

/// An expression as written, with where its text starts in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct ExprSource {
    /// The expression text.
    pub text: String,
    /// The span of the whole TOML string.
    pub span: Span,
    /// The byte offset of the expression text's first character, when the TOML string has no
    /// escapes (so offsets inside the text map one-to-one onto the file).
    pub text_offset: Option<usize>,
}

impl ExprSource {
    /// Maps a span inside the expression text to a span in the file.
    pub fn file_span(&self, inner: Span) -> Span {
        match self.text_offset {
            Some(offset) => offset + inner.start..offset + inner.end,
            None => self.span.clone(),
        }
    }
}

/// One transform step.
#[derive(Clone, Debug)]
pub struct Step {
    /// What the step does.
    pub op: StepOp,
    /// Where the step's operation is written: from its key (`filter`) to the end of its value.
    pub span: Span,
}

/// The operations of a transform step.
#[derive(Clone, Debug)]
pub enum StepOp {
    /// Keep the rows where the expression is true.
    Filter(ExprSource),
    /// Add or replace columns computed by expressions.
    Derive(Vec<(Located<String>, ExprSource)>),
    /// Rename columns by an explicit map.
    Rename(Vec<(Located<String>, Located<String>)>),
    /// Rename every column to snake_case.
    RenameSnakeCase,
    /// Keep only these columns, in this order.
    Select(Vec<Located<String>>),
    /// Remove these columns.
    Drop(Vec<Located<String>>),
    /// Change column types.
    Cast(Vec<ColumnDecl>),
}

/// Whether a failed check fails the run or only warns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckSeverity {
    /// The run fails before anything downstream (such as a sink) runs.
    Fail,
    /// A warning is logged and the run goes on.
    Warn,
}

/// A data test on a block's output.
#[derive(Clone, Debug)]
pub struct Check {
    /// A name for logs; defaults to a description of the check.
    pub name: Option<String>,
    /// What is tested.
    pub kind: CheckKind,
    /// Fail or warn.
    pub severity: CheckSeverity,
    /// Where the check is written.
    pub span: Span,
}

/// The kinds of check.
#[derive(Clone, Debug)]
pub enum CheckKind {
    /// Every row satisfies the expression (a null result counts as a failure).
    Assert(ExprSource),
    /// Every value of the column is one of these.
    InSet {
        /// The column tested.
        column: Located<String>,
        /// The allowed values.
        values: Vec<Located<Literal>>,
        /// Whether null passes.
        allow_null: bool,
    },
}

/// Parses a pipeline file. Returns the tree when it could be built (possibly with errors
/// recorded in `diagnostics` for parts that were skipped).
pub fn parse(source: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<PipelineFile> {
    let (root, errors) = DeTable::parse_recoverable(source);
    let mut syntax_failed = false;
    // After a duplicated block, the parser also reports each of its keys as duplicate; those
    // follow from the one mistake and are not repeated.
    let mut duplicate_table_end = 0;
    for error in errors {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim().to_string();
        if let Some(diagnostic) = duplicate_block(source, &span, &message) {
            duplicate_table_end = source[span.end..]
                .find("\n[")
                .map_or(source.len(), |i| span.end + i);
            diagnostics.push(diagnostic);
        } else if message.contains("duplicate") && span.start < duplicate_table_end {
            continue;
        } else {
            syntax_failed = true;
            diagnostics.push(Diagnostic::error("E0001", "invalid TOML", span, message));
        }
    }
    if syntax_failed {
        return None;
    }
    let mut reader = Reader {
        source,
        diagnostics,
    };
    reader.file(root.get_ref(), root.span())
}

/// The TOML parser reports a second `[blocks.x]` table as a duplicate key; say it in our terms,
/// pointing at both definitions.
fn duplicate_block(source: &str, span: &Span, message: &str) -> Option<Diagnostic> {
    if !message.contains("duplicate") {
        return None;
    }
    let line_start = source[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[span.start..]
        .find('\n')
        .map_or(source.len(), |i| span.start + i);
    let header = source[line_start..line_end].trim();
    let name = header
        .strip_prefix("[blocks.")?
        .strip_suffix(']')?
        .trim()
        .trim_matches('"');
    // The first definition is the first header of that block in the file.
    let first = source
        .find(header)
        .filter(|&at| at < line_start)
        .map(|at| at..at + header.len());
    let mut diagnostic = Diagnostic::error(
        "E0005",
        format!("block `{name}` is defined more than once"),
        line_start..line_start + header.len(),
        "defined again here",
    )
    .with_help("rename one of the blocks; block names must be unique in a pipeline");
    if let Some(first) = first {
        diagnostic = diagnostic.with_label(first, "first defined here");
    }
    Some(diagnostic)
}

type Value<'i> = Spanned<DeValue<'i>>;

struct Reader<'s, 'd> {
    source: &'s str,
    diagnostics: &'d mut Vec<Diagnostic>,
}

/// A table being read: remembers which keys were used so the rest can be reported as unknown.
struct TableCursor<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Span,
    what: String,
    used: Vec<&'static str>,
}

impl<'t, 'i> TableCursor<'t, 'i> {
    fn new(table: &'t DeTable<'i>, span: Span, what: impl Into<String>) -> Self {
        TableCursor {
            table,
            span,
            what: what.into(),
            used: Vec::new(),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'t Value<'i>> {
        self.used.push(key);
        self.table.get(key)
    }
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl Reader<'_, '_> {
    fn error(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    fn wrong_type(&mut self, key: &str, value: &Value<'_>, expected: &str) {
        self.error(Diagnostic::error(
            "E0003",
            format!("`{key}` must be {expected}"),
            value.span(),
            format!("found {}", type_name(value.get_ref())),
        ));
    }

    fn invalid_value(&mut self, key: &str, span: Span, found: &str, allowed: &[&str]) {
        let list = allowed
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ");
        self.error(
            Diagnostic::error(
                "E0003",
                format!("invalid value for `{key}`"),
                span,
                format!("`{found}` is not one of {list}"),
            )
            .with_optional_help(did_you_mean(found, allowed.iter().copied())),
        );
    }

    /// Reports keys of `cursor` that were never asked for.
    fn finish(&mut self, cursor: TableCursor<'_, '_>) {
        for (key, _) in cursor.table.iter() {
            let name = key.get_ref().as_ref();
            if !cursor.used.contains(&name) {
                self.error(
                    Diagnostic::error(
                        "E0002",
                        format!("unknown key `{name}` in {}", cursor.what),
                        key.span(),
                        "unknown key",
                    )
                    .with_optional_help(did_you_mean(name, cursor.used.iter().copied()))
                    .with_note(format!(
                        "{} accepts: {}",
                        cursor.what,
                        cursor.used.join(", ")
                    )),
                );
            }
        }
    }

    fn missing(&mut self, cursor: &TableCursor<'_, '_>, key: &str, hint: &str) {
        let header = self.header_span(&cursor.span);
        self.error(
            Diagnostic::error(
                "E0004",
                format!("missing key `{key}` in {}", cursor.what),
                header,
                format!("`{key}` is required here"),
            )
            .with_help(hint.to_string()),
        );
    }

    /// A table's span covers its whole body; point diagnostics at its first line only.
    fn header_span(&self, span: &Span) -> Span {
        let start = span.start.min(self.source.len());
        let end = self.source[start..]
            .find('\n')
            .map_or(self.source.len(), |i| start + i);
        start..end.max(start)
    }

    fn string(&mut self, key: &str, value: &Value<'_>) -> Option<Located<String>> {
        match value.get_ref() {
            DeValue::String(text) => Some(Located::new(text.to_string(), value.span())),
            _ => {
                self.wrong_type(key, value, "a string");
                None
            }
        }
    }

    fn opt_string(
        &mut self,
        cursor: &mut TableCursor<'_, '_>,
        key: &'static str,
    ) -> Option<Located<String>> {
        let value = cursor.get(key)?;
        self.string(key, value)
    }

    fn req_string(
        &mut self,
        cursor: &mut TableCursor<'_, '_>,
        key: &'static str,
        hint: &str,
    ) -> Option<Located<String>> {
        match cursor.get(key) {
            Some(value) => self.string(key, value),
            None => {
                self.missing(cursor, key, hint);
                None
            }
        }
    }

    fn table<'t, 'i>(&mut self, key: &str, value: &'t Value<'i>) -> Option<&'t DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            _ => {
                self.wrong_type(key, value, "a table");
                None
            }
        }
    }

    fn array<'t, 'i>(&mut self, key: &str, value: &'t Value<'i>) -> Option<&'t [Value<'i>]> {
        match value.get_ref() {
            DeValue::Array(array) => Some(&array[..]),
            _ => {
                self.wrong_type(key, value, "an array");
                None
            }
        }
    }

    fn string_list(&mut self, key: &str, value: &Value<'_>) -> Vec<Located<String>> {
        let items = self.array(key, value).unwrap_or_default();
        items
            .iter()
            .filter_map(|item| self.string(key, item))
            .collect()
    }

    fn duration(&mut self, key: &str, value: &Value<'_>) -> Option<u64> {
        let text = self.string(key, value)?;
        match parse_duration_ms(&text.value) {
            Some(ms) => Some(ms),
            None => {
                self.error(
                    Diagnostic::error(
                        "E0003",
                        format!("invalid duration for `{key}`"),
                        text.span,
                        "not a duration",
                    )
                    .with_help("write a number followed by a unit: `500ms`, `30s`, `10m`, `2h`"),
                );
                None
            }
        }
    }

    fn file(&mut self, root: &DeTable<'_>, span: Span) -> Option<PipelineFile> {
        let mut cursor = TableCursor::new(root, span.clone(), "the pipeline file");
        let pipeline = match cursor.get("pipeline") {
            Some(value) => self
                .table("pipeline", value)
                .and_then(|table| self.pipeline(table, value.span())),
            None => {
                self.error(
                    Diagnostic::error(
                        "E0004",
                        "missing `[pipeline]` table",
                        0..0,
                        "expected `[pipeline]` with a `name`",
                    )
                    .with_help("start the file with:\n[pipeline]\nname = \"my_pipeline\""),
                );
                None
            }
        };
        let params = match cursor.get("params") {
            Some(value) => self
                .table("params", value)
                .map(|table| self.params(table))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let connections = match cursor.get("connections") {
            Some(value) => self
                .table("connections", value)
                .map(|table| self.connections(table))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let blocks = match cursor.get("blocks") {
            Some(value) => self
                .table("blocks", value)
                .map(|table| self.blocks(table))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        self.finish(cursor);
        Some(PipelineFile {
            pipeline: pipeline?,
            params,
            connections,
            blocks,
        })
    }

    fn pipeline(&mut self, table: &DeTable<'_>, span: Span) -> Option<PipelineMeta> {
        let mut cursor = TableCursor::new(table, span, "`[pipeline]`");
        let name = self.req_string(
            &mut cursor,
            "name",
            "name the pipeline: `name = \"green_taxi_etl\"`",
        );
        if let Some(name) = &name
            && !is_identifier(&name.value)
        {
            self.error(
                    Diagnostic::error("E0003", "invalid pipeline name", name.span.clone(), "not a lowercase identifier")
                        .with_help("the name becomes the binary's and a Rust module's name: use lowercase letters, digits and `_`"),
                );
        }
        let description = self.opt_string(&mut cursor, "description").map(|d| d.value);
        let owner = self.opt_string(&mut cursor, "owner").map(|d| d.value);
        let tags = cursor
            .get("tags")
            .map(|v| self.string_list("tags", v))
            .unwrap_or_default();
        let partitions = match cursor.get("partitions") {
            Some(value) => self
                .table("partitions", value)
                .and_then(|t| self.partitions(t, value.span())),
            None => None,
        };
        let defaults = match cursor.get("defaults") {
            Some(value) => self
                .table("defaults", value)
                .map(|t| self.defaults(t, value.span(), "`[pipeline.defaults]`"))
                .unwrap_or_default(),
            None => Defaults::default(),
        };
        let timeout_ms = cursor
            .get("timeout")
            .and_then(|v| self.duration("timeout", v));
        let require_timeouts = self.opt_bool(&mut cursor, "require_timeouts");
        let deny = cursor
            .get("deny")
            .map(|v| self.string_list("deny", v))
            .unwrap_or_default();
        let schedule = match cursor.get("schedule") {
            Some(value) => self
                .table("schedule", value)
                .and_then(|t| self.schedule(t, value.span())),
            None => None,
        };
        let sensor = match cursor.get("sensor") {
            Some(value) => self
                .table("sensor", value)
                .and_then(|t| self.sensor(t, value.span())),
            None => None,
        };
        let concurrency = match cursor.get("concurrency") {
            Some(value) => self
                .table("concurrency", value)
                .map(|t| self.concurrency(t))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        self.finish(cursor);
        Some(PipelineMeta {
            name: name?,
            description: description.map(|d| d.to_string()),
            owner,
            tags: tags.into_iter().map(|t| t.value).collect(),
            partitions,
            defaults,
            timeout_ms,
            concurrency,
            schedule,
            sensor,
            require_timeouts,
            deny,
        })
    }

    fn sensor(&mut self, table: &DeTable<'_>, span: Span) -> Option<SensorDecl> {
        let mut cursor = TableCursor::new(table, span.clone(), "`[pipeline.sensor]`");
        let kind = self
            .req_string(
                &mut cursor,
                "kind",
                "what to wait for: `kind = \"object\"` (a file in a folder or bucket) or `\"http\"` (an endpoint)",
            )
            .and_then(|k| {
                let kind = match k.value.as_str() {
                    "object" => SensorKind::Object,
                    "http" => SensorKind::Http,
                    other => {
                        self.invalid_value("kind", k.span.clone(), other, &["object", "http"]);
                        return None;
                    }
                };
                Some(Located::new(kind, k.span))
            });
        let connection = self.req_string(
            &mut cursor,
            "connection",
            "where to look: a connection of `[connections]`",
        );
        let path = self.req_string(
            &mut cursor,
            "path",
            "what to look for, e.g. `path = \"incoming/{partition.key}/_SUCCESS\"`",
        );
        let poke_interval_ms = cursor
            .get("poke_interval")
            .and_then(|v| self.duration("poke_interval", v));
        let timeout_ms = cursor
            .get("timeout")
            .and_then(|v| self.duration("timeout", v));
        self.finish(cursor);
        Some(SensorDecl {
            kind: kind?,
            connection: connection?,
            path: path?,
            poke_interval_ms,
            timeout_ms,
            span,
        })
    }

    fn partitions(&mut self, table: &DeTable<'_>, span: Span) -> Option<Partitions> {
        let mut cursor = TableCursor::new(table, span, "`[pipeline.partitions]`");
        let granularity = self
            .req_string(
                &mut cursor,
                "granularity",
                "one of `monthly`, `daily`, `hourly`",
            )
            .and_then(|g| match Granularity::from_name(&g.value) {
                Some(granularity) => Some(Located::new(granularity, g.span)),
                None => {
                    self.invalid_value(
                        "granularity",
                        g.span,
                        &g.value,
                        &["monthly", "daily", "hourly"],
                    );
                    None
                }
            });
        let start = self.req_string(
            &mut cursor,
            "start",
            "the first partition, such as `start = \"2019-01\"`",
        );
        let catchup = match self.opt_string(&mut cursor, "catchup") {
            None => Catchup::Latest,
            Some(c) => match c.value.as_str() {
                "latest" => Catchup::Latest,
                "all" => Catchup::All,
                other => {
                    self.invalid_value("catchup", c.span, other, &["latest", "all"]);
                    Catchup::Latest
                }
            },
        };
        self.finish(cursor);
        Some(Partitions {
            granularity: granularity?,
            start: start?,
            catchup,
        })
    }

    fn schedule(&mut self, table: &DeTable<'_>, span: Span) -> Option<ScheduleDecl> {
        let mut cursor = TableCursor::new(table, span.clone(), "`[pipeline.schedule]`");
        let cron = self.req_string(
            &mut cursor,
            "cron",
            "when runs start, e.g. `cron = \"0 6 2 * *\"` (06:00 on the 2nd of every month)",
        );
        let timezone = self.opt_string(&mut cursor, "timezone");
        let overlap = match self.opt_string(&mut cursor, "overlap") {
            None => Overlap::Skip,
            Some(o) => match o.value.as_str() {
                "skip" => Overlap::Skip,
                "queue" => Overlap::Queue,
                other => {
                    self.invalid_value("overlap", o.span, other, &["skip", "queue"]);
                    Overlap::Skip
                }
            },
        };
        let sla_ms = cursor.get("sla").and_then(|v| self.duration("sla", v));
        self.finish(cursor);
        Some(ScheduleDecl {
            cron: cron?,
            timezone,
            overlap,
            sla_ms,
            span,
        })
    }

    fn concurrency(&mut self, table: &DeTable<'_>) -> Vec<(Located<String>, Located<u32>)> {
        let mut limits = Vec::new();
        for (key, value) in table.iter() {
            let kind = Located::new(key.get_ref().to_string(), key.span());
            let limit = match value.get_ref() {
                DeValue::Integer(i) => i.as_str().parse::<u32>().ok(),
                _ => None,
            };
            match limit {
                Some(0) => self.error(
                    Diagnostic::error(
                        "E0003",
                        format!("the limit for `{}` must be at least 1", kind.value),
                        value.span(),
                        "0 would never run these blocks",
                    )
                    .with_help("remove the line to leave the kind unlimited"),
                ),
                Some(limit) => limits.push((kind, Located::new(limit, value.span()))),
                None => self.wrong_type(&kind.value, value, "a positive integer"),
            }
        }
        limits
    }

    fn defaults(&mut self, table: &DeTable<'_>, span: Span, what: &str) -> Defaults {
        let mut cursor = TableCursor::new(table, span, what);
        let policy = self.policy(&mut cursor);
        self.finish(cursor);
        policy
    }

    fn policy(&mut self, cursor: &mut TableCursor<'_, '_>) -> Defaults {
        let retries = cursor
            .get("retries")
            .and_then(|value| match value.get_ref() {
                DeValue::Integer(i) => i
                    .as_str()
                    .parse::<u32>()
                    .ok()
                    .filter(|r| *r <= 100)
                    .or_else(|| {
                        self.wrong_type("retries", value, "an integer from 0 to 100");
                        None
                    }),
                _ => {
                    self.wrong_type("retries", value, "an integer from 0 to 100");
                    None
                }
            });
        let retry_delay_ms = cursor
            .get("retry_delay")
            .and_then(|v| self.duration("retry_delay", v));
        let max_retry_delay_ms = cursor
            .get("max_retry_delay")
            .and_then(|v| self.duration("max_retry_delay", v));
        let timeout_ms = cursor
            .get("timeout")
            .and_then(|v| self.duration("timeout", v));
        Defaults {
            retries,
            retry_delay_ms,
            max_retry_delay_ms,
            timeout_ms,
        }
    }

    fn params(&mut self, table: &DeTable<'_>) -> Vec<Param> {
        let mut params = Vec::new();
        for (key, value) in table.iter() {
            let name = Located::new(key.get_ref().to_string(), key.span());
            match literal(value) {
                Some(default) => params.push(Param {
                    name,
                    default: Located::new(default, value.span()),
                }),
                None => self.wrong_type(
                    &name.value,
                    value,
                    "a string, integer, float or boolean default value",
                ),
            }
        }
        params
    }

    fn connections(&mut self, table: &DeTable<'_>) -> Vec<Connection> {
        let mut connections = Vec::new();
        for (key, value) in table.iter() {
            let name = Located::new(key.get_ref().to_string(), key.span());
            match value.get_ref() {
                DeValue::String(url) => connections.push(Connection {
                    name,
                    url: Located::new(url.to_string(), value.span()),
                    password: None,
                }),
                DeValue::Table(inner) => {
                    let what = format!("connection `{}`", name.value);
                    let mut cursor = TableCursor::new(inner, value.span(), what);
                    let url = self.req_string(&mut cursor, "url", "give the connection a `url`");
                    let password = cursor
                        .get("password")
                        .and_then(|v| self.secret("password", v));
                    self.finish(cursor);
                    if let Some(url) = url {
                        connections.push(Connection {
                            name,
                            url,
                            password,
                        });
                    }
                }
                _ => self.wrong_type(&name.value, value, "a URL string or a table with `url`"),
            }
        }
        connections
    }

    fn secret(&mut self, key: &str, value: &Value<'_>) -> Option<Located<SecretRef>> {
        // Examples that fit what the secret is for: a database password or an API token.
        let (variable, secret_file) = if key == "password" {
            ("PGPASSWORD", "pg")
        } else {
            ("API_TOKEN", "api-token")
        };
        match value.get_ref() {
            DeValue::Table(table) => {
                let mut cursor = TableCursor::new(table, value.span(), format!("secret `{key}`"));
                let env = self.opt_string(&mut cursor, "env");
                let file = self.opt_string(&mut cursor, "file");
                self.finish(cursor);
                match (env, file) {
                    (Some(env), None) => {
                        Some(Located::new(SecretRef::Env(env.value), value.span()))
                    }
                    (None, Some(file)) => {
                        Some(Located::new(SecretRef::File(file.value), value.span()))
                    }
                    _ => {
                        self.error(
                            Diagnostic::error("E0013", format!("`{key}` must name exactly one secret source"), value.span(), "expected `env` or `file`")
                                .with_help(format!("write `{key} = {{ env = \"{variable}\" }}` or `{key} = {{ file = \"/run/secrets/{secret_file}\" }}`")),
                        );
                        None
                    }
                }
            }
            DeValue::String(_) => {
                self.error(
                    Diagnostic::error("E0013", format!("`{key}` is a secret and cannot be written in the pipeline file"), value.span(), "a literal secret")
                        .with_help(format!("reference it instead: `{key} = {{ env = \"{variable}\" }}` or `{key} = {{ file = \"/run/secrets/{secret_file}\" }}`")),
                );
                None
            }
            _ => {
                self.wrong_type(
                    key,
                    value,
                    "a table `{ env = \"VAR\" }` or `{ file = \"PATH\" }`",
                );
                None
            }
        }
    }

    fn blocks(&mut self, table: &DeTable<'_>) -> Vec<Block> {
        let mut blocks = Vec::new();
        for (key, value) in table.iter() {
            let name = Located::new(key.get_ref().to_string(), key.span());
            if !is_identifier(&name.value) {
                self.error(
                    Diagnostic::error("E0003", format!("invalid block name `{}`", name.value), name.span.clone(), "not a lowercase identifier")
                        .with_help("block names become Rust function names: use lowercase letters, digits and `_`, starting with a letter"),
                );
                continue;
            }
            let Some(body) = self.table(&name.value, value) else {
                continue;
            };
            if let Some(block) = self.block(name, body, value.span()) {
                blocks.push(block);
            }
        }
        blocks
    }

    fn block(&mut self, name: Located<String>, table: &DeTable<'_>, span: Span) -> Option<Block> {
        // A table written as `[blocks.x]` has the span of its body; start it at its header line
        // so that the block's location is the line a reader looks for.
        let span = self.block_header(&name, span);
        let mut cursor = TableCursor::new(table, span.clone(), format!("block `{}`", name.value));
        let kinds: Vec<String> = BLOCK_KINDS.iter().map(|k| format!("`{k}`")).collect();
        let kind_value =
            self.req_string(&mut cursor, "kind", &format!("one of {}", kinds.join(", ")));
        let description = self.opt_string(&mut cursor, "description").map(|d| d.value);
        let inputs = cursor
            .get("inputs")
            .map(|v| self.string_list("inputs", v))
            .unwrap_or_default();
        let after = cursor
            .get("after")
            .map(|v| self.string_list("after", v))
            .unwrap_or_default();
        let trigger = self.opt_string(&mut cursor, "trigger").and_then(|t| {
            match Trigger::ALL.iter().find(|(name, _)| *name == t.value) {
                Some((_, trigger)) => Some(Located::new(*trigger, t.span)),
                None => {
                    let names: Vec<&str> = Trigger::ALL.iter().map(|(n, _)| *n).collect();
                    self.invalid_value("trigger", t.span, &t.value, &names);
                    None
                }
            }
        });
        let run_if = cursor.get("run_if").and_then(|v| self.expr("run_if", v));
        let pii = cursor
            .get("pii")
            .map(|v| self.string_list("pii", v))
            .unwrap_or_default();
        let pii_allowed = cursor
            .get("pii_allowed")
            .and_then(|value| match value.get_ref() {
                DeValue::Boolean(b) => Some(Located::new(*b, value.span())),
                _ => {
                    self.wrong_type("pii_allowed", value, "true or false");
                    None
                }
            });
        let policy = self.policy(&mut cursor);
        let checks = match cursor.get("checks") {
            Some(value) => self
                .array("checks", value)
                .unwrap_or_default()
                .iter()
                .filter_map(|c| self.check(c))
                .collect(),
            None => Vec::new(),
        };
        let kind = match kind_value {
            Some(kind) => self.block_kind(&kind, &mut cursor),
            None => None,
        };
        self.finish(cursor);
        Some(Block {
            name,
            span,
            description,
            inputs,
            after,
            trigger,
            run_if,
            pii,
            pii_allowed,
            kind: kind?,
            checks,
            policy,
        })
    }

    fn block_header(&self, name: &Located<String>, span: Span) -> Span {
        let line_start = self.source[..name.span.start]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        line_start.min(span.start)..span.end
    }

    fn block_kind(
        &mut self,
        kind: &Located<String>,
        cursor: &mut TableCursor<'_, '_>,
    ) -> Option<BlockKind> {
        match kind.value.as_str() {
            "http" => self.file_source(cursor, true).map(BlockKind::HttpSource),
            "file" => self.file_source(cursor, false).map(BlockKind::FileSource),
            "rest" => self.rest_source(cursor),
            "sql" => {
                let connection = self.req_string(
                    cursor,
                    "connection",
                    "name the database connection, e.g. `connection = \"warehouse\"`",
                );
                let query = self.req_string(
                    cursor,
                    "query",
                    "the query, e.g. `query = \"SELECT * FROM trips WHERE day = {partition.start:%Y-%m-%d}\"`",
                );
                let (schema, schema_span) = self.source_schema(cursor)?;
                Some(BlockKind::SqlSource(FileSource::without_file(
                    connection?,
                    query?,
                    schema,
                    schema_span,
                )))
            }
            "transform" => {
                let steps = match cursor.get("steps") {
                    Some(value) => self
                        .array("steps", value)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|s| self.step(s))
                        .collect(),
                    None => {
                        self.missing(cursor, "steps", "add `[[blocks.NAME.steps]]` tables such as `filter = \"trip_distance > 0\"`");
                        return None;
                    }
                };
                Some(BlockKind::Transform { steps })
            }
            "join" => self.join(cursor),
            "union" => Some(BlockKind::Union),
            "aggregate" => {
                let group_by = cursor
                    .get("group_by")
                    .map(|v| self.string_list("group_by", v))
                    .unwrap_or_default();
                let aggregates = match cursor.get("aggregates") {
                    Some(value) => self.expression_table("aggregates", value)?,
                    None => {
                        self.missing(cursor, "aggregates", "add the columns to compute, e.g. `aggregates = { trips = \"count()\", revenue = \"sum(total_amount)\" }`");
                        return None;
                    }
                };
                Some(BlockKind::Aggregate {
                    group_by,
                    aggregates,
                })
            }
            "rust" => {
                let function = self.req_string(
                    cursor,
                    "function",
                    "name the Rust function, e.g. `function = \"fix_flags\"`",
                )?;
                let output = cursor
                    .get("output")
                    .and_then(|v| self.column_table("output", v));
                Some(BlockKind::Rust { function, output })
            }
            kind @ ("table" | "bigquery") => {
                let bigquery = kind == "bigquery";
                let connection = self.req_string(
                    cursor,
                    "connection",
                    "name a connection from `[connections]`, e.g. `connection = \"warehouse\"`",
                );
                let table = self.req_string(
                    cursor,
                    "table",
                    "name the table, e.g. `table = \"green_taxi\"`",
                );
                // A BigQuery dataset plays the part of a Postgres schema.
                let db_schema =
                    self.opt_string(cursor, if bigquery { "dataset" } else { "schema" });
                let mode = self
                    .req_string(
                        cursor,
                        "mode",
                        "one of `replace`, `append`, `replace_partition`, `upsert`",
                    )
                    .and_then(|m| {
                        let mode = match m.value.as_str() {
                            "replace" => WriteMode::Replace,
                            "append" => WriteMode::Append,
                            "replace_partition" => WriteMode::ReplacePartition,
                            // dlt and dbt call it merge.
                            "upsert" | "merge" => WriteMode::Upsert,
                            other => {
                                self.invalid_value(
                                    "mode",
                                    m.span.clone(),
                                    other,
                                    &["replace", "append", "replace_partition", "upsert"],
                                );
                                return None;
                            }
                        };
                        Some(Located::new(mode, m.span))
                    });
                let partition_column = self.opt_string(cursor, "partition_column");
                let key = cursor
                    .get("key")
                    .map(|v| Located::new(self.string_list("key", v), v.span()));
                let columns = cursor
                    .get("columns")
                    .and_then(|v| self.column_table("columns", v));
                let sink = TableSink {
                    connection: connection?,
                    table: table?,
                    db_schema,
                    mode: mode?,
                    partition_column,
                    key,
                    columns,
                };
                Some(if bigquery {
                    BlockKind::BigQuerySink(sink)
                } else {
                    BlockKind::TableSink(sink)
                })
            }
            "lake" => {
                let connection = self.req_string(
                    cursor,
                    "connection",
                    "name a connection from `[connections]`, e.g. `connection = \"lake\"`",
                );
                let path = self.req_string(
                    cursor,
                    "path",
                    "the dataset's folder in the lake, e.g. `path = \"green_taxi\"`",
                );
                // One column (`"day"`) or several (`["year", "month"]`), outermost first.
                let partition_by = cursor
                    .get("partition_by")
                    .map(|value| self.name_or_names("partition_by", value))
                    .unwrap_or_default();
                let max_rows_per_file = self.opt_integer(cursor, "max_rows_per_file", 1..=u32::MAX);
                // The dataset is a folder, so only `format` says CSV; Parquet by default.
                let (format, _) = self.file_format(cursor, ".parquet", false);
                Some(BlockKind::LakeSink(LakeSink {
                    connection: connection?,
                    path: path?,
                    partition_by,
                    max_rows_per_file,
                    format,
                }))
            }
            "export" => {
                let connection = self.req_string(
                    cursor,
                    "connection",
                    "name a connection from `[connections]`, e.g. `connection = \"lake\"`",
                );
                let path = self.req_string(
                    cursor,
                    "path",
                    "the file's path template, e.g. `path = \"trips/{execution_date:%Y/%m/%d}/daily.parquet\"`",
                )?;
                let (format, _) = self.file_format(cursor, &path.value, false);
                Some(BlockKind::ExportSink(ExportSink {
                    connection: connection?,
                    path,
                    format,
                }))
            }
            "callback" => {
                let on = self
                    .req_string(
                        cursor,
                        "on",
                        "when it reports: `on = \"failure\"`, `\"success\"`, `\"always\"`, `\"recovery\"`, `\"warning\"` or `\"sla\"`",
                    )
                    .and_then(|on| {
                        let value = match on.value.as_str() {
                            "failure" => CallbackOn::Failure,
                            "success" => CallbackOn::Success,
                            "always" => CallbackOn::Always,
                            "recovery" => CallbackOn::Recovery,
                            "warning" => CallbackOn::Warning,
                            "sla" => CallbackOn::Sla,
                            other => {
                                self.invalid_value(
                                    "on",
                                    on.span.clone(),
                                    other,
                                    &CallbackOn::NAMES,
                                );
                                return None;
                            }
                        };
                        Some(Located::new(value, on.span))
                    });
                let message = self.opt_string(cursor, "message");
                let webhook = self.opt_string(cursor, "webhook");
                let webhook_format = match self.opt_string(cursor, "format") {
                    None => WebhookFormat::Json,
                    Some(format) => match format.value.as_str() {
                        "json" => WebhookFormat::Json,
                        "slack" => WebhookFormat::Slack,
                        other => {
                            self.invalid_value("format", format.span, other, &["json", "slack"]);
                            WebhookFormat::Json
                        }
                    },
                };
                let email = self.opt_string(cursor, "email");
                let dedupe = self.opt_bool(cursor, "dedupe");
                Some(BlockKind::Callback {
                    on: on?,
                    message,
                    webhook,
                    webhook_format,
                    email,
                    dedupe,
                })
            }
            other => {
                self.invalid_value("kind", kind.span.clone(), other, &BLOCK_KINDS);
                None
            }
        }
    }

    /// The `format` (and, for sources, `compression`) of a file, inferred from the path's
    /// extension when not written.
    fn file_format(
        &mut self,
        cursor: &mut TableCursor<'_, '_>,
        path: &str,
        with_compression: bool,
    ) -> (FileFormat, Compression) {
        let lower = path.to_ascii_lowercase();
        let inferred_compression = if lower.ends_with(".gz") {
            Compression::Gzip
        } else {
            Compression::None
        };
        let inferred_format = if lower.trim_end_matches(".gz").ends_with(".parquet") {
            FileFormat::Parquet
        } else {
            FileFormat::Csv
        };
        let format = match self.opt_string(cursor, "format") {
            Some(f) => match f.value.as_str() {
                "csv" => FileFormat::Csv,
                "parquet" => FileFormat::Parquet,
                other => {
                    self.invalid_value("format", f.span, other, &["csv", "parquet"]);
                    inferred_format
                }
            },
            None => inferred_format,
        };
        let compression = match with_compression
            .then(|| self.opt_string(cursor, "compression"))
            .flatten()
        {
            Some(c) => match c.value.as_str() {
                "none" => Compression::None,
                "gzip" => Compression::Gzip,
                other => {
                    self.invalid_value("compression", c.span, other, &["none", "gzip"]);
                    inferred_compression
                }
            },
            None => inferred_compression,
        };
        (format, compression)
    }

    fn file_source(&mut self, cursor: &mut TableCursor<'_, '_>, http: bool) -> Option<FileSource> {
        let connection = if http {
            Some(self.req_string(
                cursor,
                "connection",
                "name the connection holding the base URL, e.g. `connection = \"tlc\"`",
            )?)
        } else {
            self.opt_string(cursor, "connection")
        };
        let path = self.req_string(cursor, "path", "the file's path template, e.g. `path = \"green_tripdata_{partition.year}-{partition.month:02}.csv.gz\"`")?;
        let (format, compression) = self.file_format(cursor, &path.value, true);
        let for_each = cursor.get("for_each").and_then(|value| {
            let items = match value.get_ref() {
                DeValue::String(text) if text.as_ref() == "partition.days" => ForEach::Days,
                DeValue::String(text) if text.as_ref() == "partition.hours" => ForEach::Hours,
                DeValue::Array(_) => ForEach::Values(
                    self.string_list("for_each", value)
                        .into_iter()
                        .map(|item| item.value)
                        .collect(),
                ),
                _ => {
                    self.wrong_type(
                        "for_each",
                        value,
                        "`\"partition.days\"`, `\"partition.hours\"` or a list of strings",
                    );
                    return None;
                }
            };
            Some(Located::new(items, value.span()))
        });
        let item_column = self.opt_string(cursor, "item_column");
        let concurrency = self.opt_integer(cursor, "concurrency", 1..=256);
        let (schema, schema_span) = self.source_schema(cursor)?;
        Some(FileSource {
            connection,
            path,
            format,
            compression,
            schema,
            schema_span,
            for_each,
            item_column,
            concurrency,
        })
    }

    /// A source's required `schema` table and its span.
    fn source_schema(
        &mut self,
        cursor: &mut TableCursor<'_, '_>,
    ) -> Option<(Vec<ColumnDecl>, Span)> {
        match cursor.get("schema") {
            Some(value) => Some((self.column_table("schema", value)?, value.span())),
            None => {
                self.missing(cursor, "schema", "declare the source's columns: `[blocks.NAME.schema]` with `column = \"int64?\"` lines");
                None
            }
        }
    }

    /// An optional boolean key.
    fn opt_bool(
        &mut self,
        cursor: &mut TableCursor<'_, '_>,
        key: &'static str,
    ) -> Option<Located<bool>> {
        let value = cursor.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(Located::new(*b, value.span())),
            _ => {
                self.wrong_type(key, value, "true or false");
                None
            }
        }
    }

    /// An optional integer key within `range`.
    fn opt_integer(
        &mut self,
        cursor: &mut TableCursor<'_, '_>,
        key: &'static str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Option<Located<u32>> {
        let value = cursor.get(key)?;
        let parsed = match value.get_ref() {
            DeValue::Integer(i) => i.as_str().parse::<u32>().ok().filter(|n| range.contains(n)),
            _ => None,
        };
        if parsed.is_none() {
            self.wrong_type(
                key,
                value,
                &format!("an integer from {} to {}", range.start(), range.end()),
            );
        }
        parsed.map(|n| Located::new(n, value.span()))
    }

    fn rest_source(&mut self, cursor: &mut TableCursor<'_, '_>) -> Option<BlockKind> {
        let connection = self.req_string(
            cursor,
            "connection",
            "name the connection holding the API's base URL, e.g. `connection = \"api\"`",
        );
        let path = self.req_string(
            cursor,
            "path",
            "the endpoint's path template, e.g. `path = \"/v1/trips?date={partition.key}\"`",
        );
        let records = self
            .opt_string(cursor, "records")
            .map(|r| r.value)
            .unwrap_or_default();
        let auth = cursor
            .get("auth")
            .and_then(|value| self.secret("auth", value))
            .map(|s| s.value);
        let auth_header = self.opt_string(cursor, "auth_header").map(|h| h.value);
        let max_pages = self
            .opt_integer(cursor, "max_pages", 1..=1_000_000)
            .map_or(10_000, |n| n.value);
        let pagination = match cursor.get("pagination") {
            None => Some(Pagination::None),
            Some(value) => self.pagination(value),
        };
        // The schema is read even when a key above is wrong, so that it is not reported as an
        // unknown key too.
        let (schema, schema_span) = self.source_schema(cursor)?;
        let pagination = pagination?;
        let source = FileSource::without_file(connection?, path?, schema, schema_span);
        let options = RestOptions {
            records,
            pagination,
            auth,
            auth_header,
            max_pages,
        };
        Some(BlockKind::RestSource(source, options))
    }

    fn pagination(&mut self, value: &Value<'_>) -> Option<Pagination> {
        let table = self.table("pagination", value)?;
        let mut cursor = TableCursor::new(table, value.span(), "`pagination`");
        let styles = ["page", "offset", "cursor", "link", "none"];
        let style = self.req_string(
            &mut cursor,
            "style",
            "one of `page`, `offset`, `cursor`, `link`, `none`",
        );
        let text = |this: &mut Self,
                    cursor: &mut TableCursor<'_, '_>,
                    key: &'static str,
                    default: &str| {
            this.opt_string(cursor, key)
                .map_or_else(|| default.to_string(), |v| v.value)
        };
        let pagination = match style.as_ref().map(|s| s.value.as_str()) {
            Some("page") => {
                let param = text(self, &mut cursor, "param", "page");
                let size_param = self.opt_string(&mut cursor, "size_param").map(|p| p.value);
                let size = self
                    .opt_integer(&mut cursor, "size", 1..=1_000_000)
                    .map(|n| n.value);
                Some(Pagination::Page {
                    param,
                    size: size.map(|n| (size_param.unwrap_or_else(|| "per_page".to_string()), n)),
                })
            }
            Some("offset") => Some(Pagination::Offset {
                param: text(self, &mut cursor, "param", "offset"),
                limit_param: text(self, &mut cursor, "limit_param", "limit"),
                limit: self
                    .opt_integer(&mut cursor, "limit", 1..=1_000_000)
                    .map_or(100, |n| n.value),
            }),
            Some("cursor") => {
                let param = text(self, &mut cursor, "param", "cursor");
                let next = self.req_string(&mut cursor, "next", "the dotted path of the next cursor in a response, e.g. `next = \"meta.next_cursor\"`");
                next.map(|next| Pagination::Cursor {
                    param,
                    next: next.value,
                })
            }
            Some("link") => Some(Pagination::Link),
            Some("none") => Some(Pagination::None),
            Some(other) => {
                let span = style.as_ref().map(|s| s.span.clone()).unwrap_or_default();
                self.invalid_value("style", span, other, &styles);
                // Which keys belong is unknown without a valid style: report nothing more.
                return None;
            }
            None => return None,
        };
        self.finish(cursor);
        pagination
    }

    fn column_table(&mut self, key: &str, value: &Value<'_>) -> Option<Vec<ColumnDecl>> {
        let table = self.table(key, value)?;
        let mut columns = Vec::new();
        for (name, ty) in table.iter() {
            let name = Located::new(name.get_ref().to_string(), name.span());
            if let Some(ty) = self.column_type(&name.value, ty) {
                columns.push(ColumnDecl { name, ty });
            }
        }
        Some(columns)
    }

    fn column_type(&mut self, column: &str, value: &Value<'_>) -> Option<Located<ColumnType>> {
        let text = self.string(column, value)?;
        match ColumnType::parse(&text.value) {
            Some(ty) => Some(Located::new(ty, text.span)),
            None => {
                let base = text.value.trim_end_matches('?');
                self.error(
                    Diagnostic::error("E0003", format!("unknown type `{}` for column `{column}`", text.value), text.span, "unknown type")
                        .with_optional_help(did_you_mean(base, ColumnType::NAMES.iter().copied()))
                        .with_note("types are int64, float64, string, bool, date, timestamp; add `?` for a nullable column (`int64?`)"),
                );
                None
            }
        }
    }

    fn expr(&mut self, key: &str, value: &Value<'_>) -> Option<ExprSource> {
        let text = self.string(key, value)?;
        let raw = &self.source[value.span()];
        // Offsets inside the expression map onto the file only when the TOML string is written
        // without escapes; otherwise diagnostics point at the whole string.
        let text_offset = ["\"\"\"", "'''", "\"", "'"].iter().find_map(|quote| {
            let inner = raw.strip_prefix(quote)?.strip_suffix(quote)?;
            (inner == text.value).then(|| value.span().start + quote.len())
        });
        Some(ExprSource {
            text: text.value,
            span: text.span,
            text_offset,
        })
    }

    fn step(&mut self, value: &Value<'_>) -> Option<Step> {
        let table = self.table("steps", value)?;
        const OPS: [&str; 6] = ["filter", "derive", "rename", "select", "drop", "cast"];
        let mut cursor = TableCursor::new(table, value.span(), "a transform step");
        let present: Vec<&str> = OPS
            .iter()
            .copied()
            .filter(|op| table.contains_key(*op))
            .collect();
        if present.len() != 1 {
            for op in OPS {
                cursor.used.push(op);
            }
            self.finish(cursor);
            let found = if present.is_empty() {
                "none".to_string()
            } else {
                present.join(", ")
            };
            self.error(
                Diagnostic::error("E0003", "a transform step must do exactly one thing", self.header_span(&value.span()), format!("found: {found}"))
                    .with_help("write one of `filter`, `derive`, `rename`, `select`, `drop`, `cast` per `[[blocks.NAME.steps]]` table"),
            );
            return None;
        }
        let op = present[0];
        let key_start = table
            .get_key_value(op)
            .map_or(value.span().start, |(key, _)| key.span().start);
        let body = cursor.get(op)?;
        let span = key_start..body.span().end;
        let op = match op {
            "filter" => StepOp::Filter(self.expr("filter", body)?),
            "derive" => StepOp::Derive(self.expression_table("derive", body)?),
            "rename" => match body.get_ref() {
                DeValue::String(rule) if rule == "snake_case" => StepOp::RenameSnakeCase,
                DeValue::String(rule) => {
                    self.invalid_value("rename", body.span(), rule, &["snake_case"]);
                    return None;
                }
                DeValue::Table(table) => {
                    let mut pairs = Vec::new();
                    for (from, to) in table.iter() {
                        if let Some(to) = self.string(from.get_ref(), to) {
                            pairs.push((Located::new(from.get_ref().to_string(), from.span()), to));
                        }
                    }
                    StepOp::Rename(pairs)
                }
                _ => {
                    self.wrong_type(
                        "rename",
                        body,
                        "a table `{ old = \"new\" }` or the rule `\"snake_case\"`",
                    );
                    return None;
                }
            },
            "select" => StepOp::Select(self.string_list("select", body)),
            "drop" => StepOp::Drop(self.string_list("drop", body)),
            "cast" => StepOp::Cast(self.column_table("cast", body)?),
            _ => unreachable!("every operation in OPS is handled"),
        };
        self.finish(cursor);
        Some(Step { op, span })
    }

    /// A table of column names and expressions, in the order written: `derive` and
    /// `aggregates`.
    fn expression_table(
        &mut self,
        key: &str,
        value: &Value<'_>,
    ) -> Option<Vec<(Located<String>, ExprSource)>> {
        let table = self.table(key, value)?;
        let mut columns = Vec::new();
        for (name, expr) in table.iter() {
            if let Some(expr) = self.expr(name.get_ref(), expr) {
                columns.push((Located::new(name.get_ref().to_string(), name.span()), expr));
            }
        }
        Some(columns)
    }

    /// A `join` block's keys (`on`, or `left_on` with `right_on`), kind and suffix.
    fn join(&mut self, cursor: &mut TableCursor<'_, '_>) -> Option<BlockKind> {
        let on = cursor
            .get("on")
            .map(|v| (self.name_or_names("on", v), v.span()));
        let left_on = cursor
            .get("left_on")
            .map(|v| (self.name_or_names("left_on", v), v.span()));
        let right_on = cursor
            .get("right_on")
            .map(|v| (self.name_or_names("right_on", v), v.span()));
        let keys = match (on, left_on, right_on) {
            (Some((on, span)), None, None) => JoinKeys {
                pairs: on.iter().map(|c| (c.clone(), c.clone())).collect(),
                span,
            },
            (None, Some((left, span)), Some((right, right_span))) => {
                if left.len() != right.len() {
                    self.error(
                        Diagnostic::error(
                            "E0004",
                            format!(
                                "`left_on` has {} key column{}, `right_on` {}",
                                left.len(),
                                if left.len() == 1 { "" } else { "s" },
                                right.len()
                            ),
                            right_span,
                            "one right key per left key",
                        )
                        .with_help(
                            "pair every left key column with the right column it must equal",
                        ),
                    );
                    return None;
                }
                JoinKeys {
                    pairs: left.into_iter().zip(right).collect(),
                    span,
                }
            }
            (Some((_, span)), Some(_), _) | (Some((_, span)), _, Some(_)) => {
                self.error(
                    Diagnostic::error("E0004", "`on` and `left_on`/`right_on` both name the join keys", span, "keys named twice")
                        .with_help("use `on` when the key columns have the same names on both sides, `left_on` and `right_on` when they differ"),
                );
                return None;
            }
            (None, Some((_, span)), None) | (None, None, Some((_, span))) => {
                self.error(
                    Diagnostic::error("E0004", "`left_on` and `right_on` go together", span, "the other side's keys are missing")
                        .with_help("add both `left_on = [...]` and `right_on = [...]`, or use `on` when the names are the same"),
                );
                return None;
            }
            (None, None, None) => {
                self.missing(cursor, "on", "name the key columns, e.g. `on = [\"location_id\"]`, or `left_on` and `right_on` when their names differ");
                return None;
            }
        };
        let how = match self.opt_string(cursor, "how") {
            None => Located::new(JoinHow::Inner, keys.span.clone()),
            Some(how) => match JoinHow::ALL.iter().find(|(name, _)| *name == how.value) {
                Some((_, value)) => Located::new(*value, how.span),
                None => {
                    let names: Vec<&str> = JoinHow::ALL.iter().map(|(n, _)| *n).collect();
                    self.invalid_value("how", how.span, &how.value, &names);
                    return None;
                }
            },
        };
        let suffix = self.opt_string(cursor, "suffix");
        Some(BlockKind::Join { keys, how, suffix })
    }

    /// A list of column names; one column may be written as a plain string (`"day"` or
    /// `["year", "month"]`).
    fn name_or_names(&mut self, key: &str, value: &Value<'_>) -> Vec<Located<String>> {
        match value.get_ref() {
            DeValue::Array(_) => self.string_list(key, value),
            _ => self.string(key, value).into_iter().collect(),
        }
    }

    fn check(&mut self, value: &Value<'_>) -> Option<Check> {
        let table = self.table("checks", value)?;
        let mut cursor = TableCursor::new(table, value.span(), "a check");
        let name = self.opt_string(&mut cursor, "name").map(|n| n.value);
        let severity = match self.opt_string(&mut cursor, "severity") {
            Some(s) => match s.value.as_str() {
                "fail" => CheckSeverity::Fail,
                "warn" => CheckSeverity::Warn,
                other => {
                    self.invalid_value("severity", s.span, other, &["fail", "warn"]);
                    CheckSeverity::Fail
                }
            },
            None => CheckSeverity::Fail,
        };
        let assert = cursor.get("assert");
        let column = self.opt_string(&mut cursor, "column");
        let values = cursor.get("in");
        let allow_null = match cursor.get("allow_null") {
            Some(value) => match value.get_ref() {
                DeValue::Boolean(b) => *b,
                _ => {
                    self.wrong_type("allow_null", value, "a boolean");
                    false
                }
            },
            None => false,
        };
        let kind = match (assert, column, values) {
            (Some(expr), None, None) => CheckKind::Assert(self.expr("assert", expr)?),
            (None, Some(column), Some(values)) => {
                let items = self.array("in", values)?;
                let mut literals = Vec::new();
                for item in items {
                    match literal(item) {
                        Some(lit) => literals.push(Located::new(lit, item.span())),
                        None => self.wrong_type("in", item, "a string, number or boolean"),
                    }
                }
                CheckKind::InSet {
                    column,
                    values: literals,
                    allow_null,
                }
            }
            _ => {
                self.finish(cursor);
                self.error(
                    Diagnostic::error("E0003", "a check needs `assert`, or `column` with `in`", self.header_span(&value.span()), "incomplete check")
                        .with_help("write `assert = \"trip_distance > 0\"` or `column = \"vendor_id\"` with `in = [1, 2]`"),
                );
                return None;
            }
        };
        self.finish(cursor);
        Some(Check {
            name,
            kind,
            severity,
            span: value.span(),
        })
    }
}

fn literal(value: &Value<'_>) -> Option<Literal> {
    match value.get_ref() {
        DeValue::String(s) => Some(Literal::String(s.to_string())),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(Literal::Int),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .map(Literal::Float),
        DeValue::Boolean(b) => Some(Literal::Bool(*b)),
        _ => None,
    }
}

/// Parses `500ms`, `30s`, `10m`, `2h`, `1d` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// True for names usable as Rust identifiers in generated code: `[a-z][a-z0-9_]*`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
