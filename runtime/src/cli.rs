//! The command line of every pipeline binary.
//!
//! ```text
//! green_taxi_etl run --partition 2021-01        # one partition
//! green_taxi_etl backfill --from 2021-01 --to 2021-03
//! green_taxi_etl graph --format dot             # or mermaid (default)
//! green_taxi_etl explain                        # blocks and the schema on every edge
//! green_taxi_etl validate                       # connections reachable, tables compatible
//! ```
//!
//! Exit codes: 0 success; 1 a run failed or validation found problems; 2 invalid arguments.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::context::{Resources, RunContext, Value, redact};
use crate::executor::{BlockStatus, RunReport, humanize};
use crate::partition::Partition;
use crate::pipeline::{BlockKind, Pipeline, SinkDef};
use crate::sink::lake::open_lake;
use crate::sink::table::{Warehouse, validate_table};

#[derive(Parser)]
#[command(version, about = None, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    json_logs: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline for one partition (default: the latest complete one).
    Run {
        /// The partition key, e.g. 2021-01 (monthly), 2021-01-15 (daily), 2021-01-15T07 (hourly).
        #[arg(long)]
        partition: Option<String>,
        /// Override a parameter: --param name=value (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Run every partition from --from to --to (both included), oldest first.
    Backfill {
        /// The first partition.
        #[arg(long)]
        from: String,
        /// The last partition.
        #[arg(long)]
        to: String,
        /// Override a parameter: --param name=value (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Print the block graph.
    Graph {
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print every block with its input and output schema.
    Explain,
    /// Check that connections are reachable and target tables are compatible.
    Validate,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    /// A Mermaid flowchart (renders in GitHub and GitLab Markdown).
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// Parses the command line and runs the pipeline binary. Called by the generated `main`.
pub fn main(pipeline: &'static Pipeline) -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.json_logs);
    match cli.command {
        Command::Graph { format } => {
            print!("{}", graph(pipeline, format));
            ExitCode::SUCCESS
        }
        Command::Explain => {
            print!("{}", explain(pipeline));
            ExitCode::SUCCESS
        }
        Command::Validate => block_on(validate(pipeline)),
        Command::Run { partition, params } => {
            let (partitions, params) = match (
                run_partitions(pipeline, partition.as_deref()),
                parse_params(pipeline, &params),
            ) {
                (Ok(partitions), Ok(params)) => (partitions, params),
                (Err(error), _) | (_, Err(error)) => return usage_error(&error),
            };
            block_on(run_all(pipeline, partitions, params))
        }
        Command::Backfill { from, to, params } => {
            let (partitions, params) = match (
                backfill_partitions(pipeline, &from, &to),
                parse_params(pipeline, &params),
            ) {
                (Ok(partitions), Ok(params)) => (partitions, params),
                (Err(error), _) | (_, Err(error)) => return usage_error(&error),
            };
            block_on(run_all(pipeline, partitions, params))
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

fn block_on(future: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse_params(pipeline: &Pipeline, raw: &[String]) -> Result<HashMap<String, Value>, String> {
    let mut params = HashMap::new();
    for item in raw {
        let (name, text) = item
            .split_once('=')
            .ok_or_else(|| format!("--param `{item}`: write NAME=VALUE"))?;
        let definition = pipeline
            .params
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = pipeline.params.iter().map(|p| p.name).collect();
                format!(
                    "unknown parameter `{name}`; this pipeline has: {}",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            })?;
        let value = Value::parse_like(&definition.default, text)
            .map_err(|e| format!("--param {name}: {e}"))?;
        params.insert(name.to_string(), value);
    }
    Ok(params)
}

fn run_partitions(
    pipeline: &Pipeline,
    key: Option<&str>,
) -> Result<Vec<Option<Partition>>, String> {
    let Some(spec) = pipeline.partitions else {
        return match key {
            Some(_) => Err(format!(
                "pipeline {} has no partitions; run it without --partition",
                pipeline.name
            )),
            None => Ok(vec![None]),
        };
    };
    let partition = match key {
        Some(key) => Partition::parse(spec.granularity, key)?,
        // Scheduled runs process the latest partition that is complete.
        None => {
            let current = Partition::containing(spec.granularity, chrono::Utc::now().naive_utc());
            let mut previous = Partition::parse(spec.granularity, spec.start)?;
            while previous.next() < current {
                previous = previous.next();
            }
            previous
        }
    };
    check_not_before_start(pipeline, &partition)?;
    Ok(vec![Some(partition)])
}

fn check_not_before_start(pipeline: &Pipeline, partition: &Partition) -> Result<(), String> {
    if let Some(spec) = pipeline.partitions {
        let start = Partition::parse(spec.granularity, spec.start)?;
        if *partition < start {
            return Err(format!(
                "partition {partition} is before the pipeline's first partition {start}"
            ));
        }
    }
    Ok(())
}

fn backfill_partitions(
    pipeline: &Pipeline,
    from: &str,
    to: &str,
) -> Result<Vec<Option<Partition>>, String> {
    let spec = pipeline
        .partitions
        .ok_or_else(|| format!("pipeline {} has no partitions to backfill", pipeline.name))?;
    let first = Partition::parse(spec.granularity, from)?;
    let last = Partition::parse(spec.granularity, to)?;
    if last < first {
        return Err(format!("--to {to} is before --from {from}"));
    }
    check_not_before_start(pipeline, &first)?;
    Ok(first.range_to(&last).into_iter().map(Some).collect())
}

async fn run_all(
    pipeline: &'static Pipeline,
    partitions: Vec<Option<Partition>>,
    params: HashMap<String, Value>,
) -> ExitCode {
    let resources = Arc::new(Resources::default());
    let mut reports = Vec::new();
    for partition in partitions {
        reports.push(crate::executor::run(pipeline, partition, &params, resources.clone()).await);
    }
    eprint!("{}", summary(&reports));
    if reports.iter().all(RunReport::succeeded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The table printed after runs: one line per partition, then the failures in full.
pub fn summary(reports: &[RunReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<14} {:<9} {:>9}  blocks",
        "partition", "status", "time"
    );
    for report in reports {
        let partition = report
            .partition
            .map_or_else(|| "-".to_string(), |p| p.key());
        let status = if report.succeeded() { "ok" } else { "FAILED" };
        let blocks: Vec<String> = report
            .blocks
            .iter()
            .map(|b| match &b.status {
                BlockStatus::Succeeded { rows } => format!("{} {rows} rows", b.name),
                BlockStatus::Failed { .. } => format!("{} failed", b.name),
                BlockStatus::Skipped { .. } => format!("{} skipped", b.name),
            })
            .collect();
        let _ = writeln!(
            out,
            "{partition:<14} {status:<9} {:>9}  {}",
            humanize(report.elapsed),
            blocks.join(", ")
        );
    }
    for report in reports {
        for block in &report.blocks {
            if let BlockStatus::Failed { error } = &block.status {
                let partition = report
                    .partition
                    .map_or_else(String::new, |p| format!(" [{p}]"));
                let _ = writeln!(out, "\nerror{partition}: {error}");
            }
        }
    }
    let failed = reports.iter().filter(|r| !r.succeeded()).count();
    let _ = writeln!(
        out,
        "\n{} run(s): {} succeeded, {failed} failed",
        reports.len(),
        reports.len() - failed
    );
    out
}

fn node_label(kind: BlockKind) -> &'static str {
    kind.name()
}

/// The block graph as Mermaid or DOT.
fn graph(pipeline: &Pipeline, format: GraphFormat) -> String {
    let mut out = String::new();
    match format {
        GraphFormat::Mermaid => {
            let _ = writeln!(out, "flowchart LR");
            for block in pipeline.blocks {
                let _ = writeln!(
                    out,
                    "  {}[\"{}<br/><small>{}</small>\"]",
                    block.name,
                    block.name,
                    node_label(block.kind)
                );
            }
            for block in pipeline.blocks {
                for &input in block.inputs {
                    let _ = writeln!(out, "  {} --> {}", pipeline.blocks[input].name, block.name);
                }
            }
        }
        GraphFormat::Dot => {
            let _ = writeln!(
                out,
                "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];",
                pipeline.name
            );
            for block in pipeline.blocks {
                let _ = writeln!(
                    out,
                    "  \"{}\" [label=\"{}\\n{}\"];",
                    block.name,
                    block.name,
                    node_label(block.kind)
                );
            }
            for block in pipeline.blocks {
                for &input in block.inputs {
                    let _ = writeln!(
                        out,
                        "  \"{}\" -> \"{}\";",
                        pipeline.blocks[input].name, block.name
                    );
                }
            }
            let _ = writeln!(out, "}}");
        }
    }
    out
}

/// Every block with what it does and the schema on each of its edges.
fn explain(pipeline: &Pipeline) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", pipeline.name, pipeline.description);
    let _ = writeln!(
        out,
        "  compiled from {} (version {})",
        pipeline.source_path, pipeline.source_hash
    );
    if !pipeline.owner.is_empty() {
        let _ = writeln!(out, "  owner: {}", pipeline.owner);
    }
    if let Some(spec) = pipeline.partitions {
        let _ = writeln!(
            out,
            "  partitions: {} from {}",
            spec.granularity.name(),
            spec.start
        );
    }
    for connection in pipeline.connections {
        let _ = writeln!(out, "  connection {} = {}", connection.name, connection.url);
    }
    for (index, block) in pipeline.blocks.iter().enumerate() {
        let _ = writeln!(
            out,
            "\n[{index}] {} ({}, {}:{})",
            block.name,
            block.kind.name(),
            pipeline.source_path,
            block.line
        );
        if !block.description.is_empty() {
            let _ = writeln!(out, "    {}", block.description);
        }
        let _ = writeln!(out, "    does: {}", block.summary);
        if !block.inputs.is_empty() {
            let names: Vec<&str> = block
                .inputs
                .iter()
                .map(|&i| pipeline.blocks[i].name)
                .collect();
            let _ = writeln!(out, "    inputs: {}", names.join(", "));
        }
        let policy = block.policy;
        let _ = writeln!(
            out,
            "    retries: {} (first delay {}), timeout: {}",
            policy.retries,
            humanize(Duration::from_millis(policy.retry_delay_ms)),
            humanize(Duration::from_millis(policy.timeout_ms))
        );
        if let Some(columns) = block.output {
            let _ = writeln!(out, "    output:");
            let width = columns.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for column in columns {
                let _ = writeln!(out, "      {:<width$}  {}", column.name, column.type_text());
            }
        }
    }
    out
}

async fn validate(pipeline: &'static Pipeline) -> ExitCode {
    let ctx = RunContext::new(
        pipeline,
        "validate".into(),
        None,
        &HashMap::new(),
        Arc::new(Resources::default()),
    );
    let mut problems = 0;
    let mut report = |ok: bool, line: String| {
        if !ok {
            problems += 1;
        }
        println!("{} {line}", if ok { "ok  " } else { "FAIL" });
    };
    for block in pipeline.blocks {
        match (block.kind, block.sink) {
            (BlockKind::HttpSource, _) => {}
            (_, Some(SinkDef::Table(target))) => {
                let checked = async {
                    let warehouse: Warehouse = ctx.warehouse(target.connection).await?;
                    validate_table(&warehouse, &target).await
                }
                .await;
                match checked {
                    Ok(differences) if differences.is_empty() => report(
                        true,
                        format!(
                            "{}: table {} is reachable and compatible",
                            block.name, target.table
                        ),
                    ),
                    Ok(differences) => report(
                        false,
                        format!(
                            "{}: table {} differs:\n       - {}",
                            block.name,
                            target.table,
                            differences.join("\n       - ")
                        ),
                    ),
                    Err(error) => report(false, format!("{}: {error}", block.name)),
                }
            }
            (_, Some(SinkDef::Lake(target))) => {
                let checked = async {
                    let store = open_lake(&ctx.connection_url(target.connection)?)?;
                    let probe =
                        object_store::path::Path::from(format!("{}/.baton-validate", target.path));
                    object_store::ObjectStoreExt::put(
                        store.as_ref(),
                        &probe,
                        object_store::PutPayload::from_static(b"ok"),
                    )
                    .await?;
                    object_store::ObjectStoreExt::delete(store.as_ref(), &probe).await?;
                    Ok::<_, crate::error::BlockError>(())
                }
                .await;
                match checked {
                    Ok(()) => report(
                        true,
                        format!("{}: lake dataset {} is writable", block.name, target.path),
                    ),
                    Err(error) => report(false, format!("{}: {error}", block.name)),
                }
            }
            _ => {}
        }
    }
    // HTTP sources: the base URL's server must answer (any HTTP status means it is reachable).
    for connection in pipeline.connections {
        let Ok(url) = ctx.connection_url(connection.name) else {
            report(
                false,
                format!(
                    "connection {}: cannot resolve {}",
                    connection.name, connection.url
                ),
            );
            continue;
        };
        if url.starts_with("http://") || url.starts_with("https://") {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build();
            let answered = match client {
                Ok(client) => client
                    .head(&url)
                    .send()
                    .await
                    .map(|r| r.status().to_string())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match answered {
                Ok(status) => report(
                    true,
                    format!(
                        "connection {}: {} answers ({status})",
                        connection.name,
                        redact(&url)
                    ),
                ),
                Err(error) => report(
                    false,
                    format!(
                        "connection {}: {} is unreachable: {error}",
                        connection.name,
                        redact(&url)
                    ),
                ),
            }
        }
    }
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
