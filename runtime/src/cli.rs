//! The command line of every pipeline binary.
//!
//! ```text
//! green_taxi_etl run --partition 2021-01        # one partition
//! green_taxi_etl run --partition 2021-01 --only clean_green_taxi   # one block, cached inputs
//! green_taxi_etl backfill --from 2021-01 --to 2021-03   # skips months already loaded
//! green_taxi_etl resume RUN_ID                  # re-run only what failed or did not run
//! green_taxi_etl runs                           # run history from the ledger
//! green_taxi_etl run-info RUN_ID                # blocks, attempts, timings, errors
//! green_taxi_etl inspect clean_green_taxi --partition 2021-01   # a checkpoint's rows
//! green_taxi_etl graph --format dot             # or mermaid (default)
//! green_taxi_etl explain                        # blocks and the schema on every edge
//! green_taxi_etl validate                       # connections reachable, tables compatible
//! green_taxi_etl serve --listen 127.0.0.1:8080  # scheduler + HTTP API + /metrics
//! ```
//!
//! Exit codes: 0 success; 1 a run failed or validation found problems; 2 invalid arguments.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use tracing::warn;
use tracing_subscriber::EnvFilter;

use crate::checkpoint::{self, Checkpoints};
use crate::context::{Resources, RunContext, Value, redact};
use crate::executor::{
    BlockStatus, Directive, RunReport, RunRequest, Services, humanize,
    remove_unrecorded_checkpoints,
};
use crate::history;
use crate::ledger::{Ledger, TriggerKind};
use crate::partition::Partition;
use crate::pipeline::{BlockKind, Catchup, PartitionSpec, Pipeline, SinkDef};
use crate::sink::table::{Warehouse, validate_table};
use crate::store::open_store;

#[derive(Parser)]
#[command(version, about = None, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    json_logs: bool,
    /// The run ledger: sqlite://PATH or postgres://... (shared by replicas).
    #[arg(long, global = true, env = "BATON_LEDGER_URL", default_value = crate::ledger::DEFAULT_URL)]
    ledger: String,
    /// Where block outputs are checkpointed.
    #[arg(long, global = true, env = "BATON_CHECKPOINT_DIR", default_value = checkpoint::DEFAULT_DIR)]
    checkpoint_dir: PathBuf,
    /// Keep no checkpoints after a run (`resume` then re-runs every block it needs); rows that
    /// stream are still spooled there during the run, for a block that retries.
    #[arg(long, global = true)]
    no_checkpoints: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ParamArgs {
    /// Override a parameter: --param name=value (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline for one partition (default: the latest complete one).
    Run {
        /// The partition key, e.g. 2021-01 (monthly), 2021-01-15 (daily), 2021-01-15T07 (hourly).
        #[arg(long)]
        partition: Option<String>,
        /// Run only this block, on the checkpointed outputs of its inputs from the latest run
        /// of the partition.
        #[arg(long, value_name = "BLOCK", conflicts_with = "until")]
        only: Option<String>,
        /// Run this block and everything upstream of it, nothing downstream.
        #[arg(long, value_name = "BLOCK")]
        until: Option<String>,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Run every partition from --from to --to (both included), oldest first, skipping
    /// partitions that already succeeded with this pipeline version.
    Backfill {
        /// The first partition.
        #[arg(long)]
        from: String,
        /// The last partition.
        #[arg(long)]
        to: String,
        /// Skip partitions the ledger shows as succeeded with this version (the default).
        #[arg(long, conflicts_with = "rerun_all")]
        missing_only: bool,
        /// Run every partition, even those that already succeeded.
        #[arg(long)]
        rerun_all: bool,
        /// How many partitions run at the same time.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// List what would run, and why, without running anything.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Re-run a failed or abandoned run: only blocks that failed or did not run, reusing the
    /// checkpointed outputs of those that succeeded.
    Resume {
        /// The run to resume (see `runs`).
        run_id: String,
    },
    /// List recent runs, newest first.
    Runs {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Show one run: its blocks, every attempt, timings and errors.
    RunInfo {
        /// The run (see `runs`).
        run_id: String,
    },
    /// Show a block's checkpointed output: schema, row count and first rows.
    Inspect {
        /// The block.
        block: String,
        /// The partition (default: the newest checkpoint of any partition).
        #[arg(long)]
        partition: Option<String>,
        /// A specific run instead of the newest.
        #[arg(long)]
        run: Option<String>,
        /// How many rows to print.
        #[arg(long, default_value_t = 10)]
        rows: usize,
    },
    /// Run as a service: start runs on the pipeline's schedule and answer an HTTP API
    /// (runs, run detail, trigger, backfill, Prometheus metrics) until SIGTERM.
    Serve {
        /// The address of the HTTP API.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The bearer token that triggering runs needs; without one the API is read-only.
        #[arg(long, env = "BATON_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Require the token for reads too.
        #[arg(long)]
        private: bool,
        /// Replace the compiled cron schedule (5 fields, or 6 with seconds first).
        #[arg(long)]
        cron: Option<String>,
        /// Replace the compiled schedule's SLA: how long after its tick a scheduled run must be
        /// finished before `on = "sla"` callbacks are sent, e.g. 30m.
        #[arg(long, value_parser = parse_duration)]
        sla: Option<Duration>,
        /// Replace the sensor's poke interval, e.g. 10s.
        #[arg(long, value_parser = parse_duration)]
        poke: Option<Duration>,
        /// Serve the API only: start no scheduled runs and run no sensor.
        #[arg(long, conflicts_with_all = ["cron", "sla"])]
        no_schedule: bool,
        /// How long runs in flight may take to finish after SIGTERM, e.g. 30s or 5m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        grace: Duration,
    },
    /// Read every source once and every target table's columns, and write the lock file that
    /// `cargo build` checks the pipeline against; with --check, compare instead and fail on drift.
    Prepare {
        /// The partition whose files are read (default: the latest complete one).
        #[arg(long)]
        partition: Option<String>,
        /// The lock file (default: pipelines/NAME.lock.json under the working directory).
        #[arg(long)]
        lock: Option<PathBuf>,
        /// Compare the sources and tables with the lock; exit 1 and list the differences on drift.
        #[arg(long)]
        check: bool,
    },
    /// The audit trail: who started each run, which version ran, what each block read and
    /// wrote (row counts and checksums), hash-chained so that tampering shows.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
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

#[derive(Subcommand)]
enum AuditAction {
    /// Recompute the hash chain and compare the trail with the run records; exit 1 on any
    /// break, naming the entries.
    Verify,
    /// Print the newest entries, oldest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only the entries of this run.
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    /// A Mermaid flowchart (renders in GitHub and GitLab Markdown).
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// A command's failure: bad arguments (exit 2) or a failure to do the work (exit 1).
pub(crate) enum Failure {
    Usage(String),
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(message) | Failure::Failed(message) => f.write_str(message),
        }
    }
}

impl From<crate::ledger::LedgerError> for Failure {
    fn from(error: crate::ledger::LedgerError) -> Self {
        Failure::Failed(error.to_string())
    }
}

/// Parses the command line and runs the pipeline binary. Called by the generated `main`.
pub fn main(pipeline: &'static Pipeline) -> ExitCode {
    limit_allocator_arenas();
    let cli = Cli::parse();
    init_logging(cli.json_logs);
    let result = match &cli.command {
        Command::Graph { format } => {
            print!("{}", graph(pipeline, *format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain => {
            print!("{}", explain(pipeline));
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate => Ok(block_on(validate(pipeline))),
        _ => block_on(async { dispatch(pipeline, &cli).await }),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `command` runs blocks, some of them (of these kinds) downloads: then the HTTP
/// client is built while the ledger opens, not when the first download asks for it.
fn downloads(command: &Command, mut kinds: impl Iterator<Item = BlockKind>) -> bool {
    matches!(
        command,
        Command::Run { .. } | Command::Backfill { .. } | Command::Resume { .. }
    ) && kinds.any(|kind| kind == BlockKind::HttpSource)
}

/// The commands that use the ledger.
async fn dispatch(pipeline: &'static Pipeline, cli: &Cli) -> Result<ExitCode, Failure> {
    if downloads(&cli.command, pipeline.blocks.iter().map(|block| block.kind)) {
        crate::http::warm_up();
    }
    let services = open_services(pipeline, cli).await?;
    let ledger = services
        .ledger
        .as_ref()
        .expect("the CLI always opens the ledger");
    match &cli.command {
        Command::Run {
            partition,
            only,
            until,
            params,
        } => {
            let mut partitions =
                run_partitions(pipeline, partition.as_deref()).map_err(Failure::Usage)?;
            let params = parse_params(pipeline, &params.params).map_err(Failure::Usage)?;
            // A scheduled run (no --partition) follows the pipeline's catch-up policy.
            if let (None, None, None, Some(spec), Some(latest)) =
                (partition, only, until, pipeline.partitions, partitions[0])
            {
                let newest = newest_succeeded(pipeline, ledger).await?;
                let (run, missed) = scheduled_partitions(spec.catchup, latest, newest);
                if let (Some(first), Some(last)) = (missed.first(), missed.last()) {
                    warn!(
                        missed = missed.len(),
                        "partitions {first} to {last} were missed and are not caught up \
                         (catchup = \"latest\"); run `backfill --from {first} --to {last}` to load them"
                    );
                }
                partitions = run.into_iter().map(Some).collect();
            }
            if partitions.len() > 1 {
                let mut reports = Vec::new();
                for partition in partitions {
                    let request = RunRequest::full(partition, params.clone(), TriggerKind::Run);
                    reports.push(crate::executor::run(pipeline, request, &services).await?);
                }
                return Ok(finish(&reports));
            }
            let partition = partitions[0];
            let (trigger, plan) = match (only, until) {
                (Some(block), _) => (
                    TriggerKind::Only,
                    only_plan(pipeline, ledger, partition, block).await?,
                ),
                (None, Some(block)) => (TriggerKind::Until, until_plan(pipeline, block)?),
                (None, None) => (TriggerKind::Run, Vec::new()),
            };
            let request = RunRequest {
                partition,
                params,
                trigger,
                plan,
                resumed_from: None,
                run_id: None,
                actor: None,
                cancel: None,
            };
            let report = crate::executor::run(pipeline, request, &services).await?;
            Ok(finish(&[report]))
        }
        Command::Backfill {
            from,
            to,
            missing_only: _,
            rerun_all,
            concurrency,
            dry_run,
            params,
        } => {
            let partitions = backfill_partitions(pipeline, from, to).map_err(Failure::Usage)?;
            let params = parse_params(pipeline, &params.params).map_err(Failure::Usage)?;
            let plan = backfill_plan(pipeline, ledger, &partitions, *rerun_all).await?;
            if *dry_run {
                print!("{}", history::backfill_plan_table(&plan));
                return Ok(ExitCode::SUCCESS);
            }
            let todo: Vec<Partition> = plan.iter().filter(|p| p.run).map(|p| p.partition).collect();
            let skipped = plan.len() - todo.len();
            if skipped > 0 {
                eprintln!(
                    "{skipped} partition(s) already succeeded with this pipeline version and are skipped (--rerun-all runs them)"
                );
            }
            let mut reports: Vec<RunReport> = futures::stream::iter(todo)
                .map(|partition| {
                    let request =
                        RunRequest::full(Some(partition), params.clone(), TriggerKind::Backfill);
                    let services = services.clone();
                    async move { crate::executor::run(pipeline, request, &services).await }
                })
                .buffer_unordered(usize::from(*concurrency))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            reports.sort_by_key(|r| r.partition);
            Ok(finish(&reports))
        }
        Command::Resume { run_id } => {
            let (request, reused) = resume_request(pipeline, ledger, run_id).await?;
            let Some(request) = request else {
                println!("run {run_id} succeeded; there is nothing to resume");
                return Ok(ExitCode::SUCCESS);
            };
            eprintln!("resuming {run_id}: {reused} block(s) reused from earlier runs");
            let report = crate::executor::run(pipeline, request, &services).await?;
            Ok(finish(&[report]))
        }
        Command::Audit { action } => audit(ledger, action).await,
        Command::Runs { limit } => {
            let runs = ledger.runs(pipeline.name, (*limit).max(1), None).await?;
            print!("{}", history::runs_table(&runs));
            Ok(ExitCode::SUCCESS)
        }
        Command::RunInfo { run_id } => {
            let run = find_run(pipeline, ledger, run_id).await?;
            let blocks = ledger.blocks(run_id).await?;
            let attempts = ledger.attempts(run_id).await?;
            print!("{}", history::run_info(pipeline, &run, &blocks, &attempts));
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            block,
            partition,
            run,
            rows,
        } => {
            inspect(
                pipeline,
                ledger,
                block,
                partition.as_deref(),
                run.as_deref(),
                *rows,
            )
            .await
        }
        Command::Serve {
            listen,
            token,
            private,
            cron,
            no_schedule,
            sla,
            poke,
            grace,
        } => {
            let options = crate::serve::ServeOptions {
                listen: *listen,
                token: token.clone().filter(|t| !t.is_empty()),
                private: *private,
                cron: cron.clone(),
                sla: *sla,
                poke: *poke,
                grace: *grace,
                no_schedule: *no_schedule,
            };
            crate::serve::serve(pipeline, services, options)
                .await
                .map_err(Failure::Usage)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Prepare {
            partition,
            lock,
            check,
        } => {
            let partition =
                run_partitions(pipeline, partition.as_deref()).map_err(Failure::Usage)?[0];
            let path = lock
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("pipelines/{}.lock.json", pipeline.name)));
            let now = crate::prepare::observe(pipeline, &services, partition)
                .await
                .map_err(Failure::Failed)?;
            if *check {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Failure::Usage(format!(
                        "cannot read {}: {e}; run `prepare` first",
                        path.display()
                    ))
                })?;
                let locked: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    Failure::Failed(format!("{} is not valid JSON: {e}", path.display()))
                })?;
                let drift = crate::prepare::drift(&locked, &now);
                if drift.is_empty() {
                    println!("{} matches the sources and tables", path.display());
                    return Ok(ExitCode::SUCCESS);
                }
                println!("the world has drifted from {}:", path.display());
                for line in &drift {
                    println!("  - {line}");
                }
                println!("review the changes, then run `prepare` again and rebuild");
                return Ok(ExitCode::FAILURE);
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    Failure::Failed(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            std::fs::write(&path, crate::prepare::render(&now))
                .map_err(|e| Failure::Failed(format!("cannot write {}: {e}", path.display())))?;
            println!(
                "wrote {}; commit it and rebuild to check the pipeline against it",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph { .. } | Command::Explain | Command::Validate => {
            unreachable!("handled without the ledger")
        }
    }
}

async fn open_services(pipeline: &'static Pipeline, cli: &Cli) -> Result<Services, Failure> {
    let ledger = Ledger::open(&cli.ledger).await?;
    let checkpoints = if cli.no_checkpoints {
        Checkpoints::for_the_run_only(&cli.checkpoint_dir)
    } else {
        Checkpoints::new(&cli.checkpoint_dir)
    };
    for run in ledger.recover_abandoned(pipeline.name).await? {
        warn!(
            run_id = %run.run_id,
            partition = run.partition.as_deref().unwrap_or("-"),
            "{}",
            run.error.as_deref().unwrap_or("abandoned")
        );
        remove_unrecorded_checkpoints(&ledger, &checkpoints, pipeline.name, &run.run_id).await;
    }
    Ok(Services {
        resources: Arc::new(Resources::default()),
        ledger: Some(ledger),
        checkpoints: Some(checkpoints),
    })
}

/// Prints the summary and turns the reports into the exit code.
fn finish(reports: &[RunReport]) -> ExitCode {
    eprint!("{}", summary(reports));
    if reports.iter().all(RunReport::succeeded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn block_index(pipeline: &Pipeline, name: &str) -> Result<usize, Failure> {
    pipeline
        .blocks
        .iter()
        .position(|b| b.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = pipeline.blocks.iter().map(|b| b.name).collect();
            Failure::Usage(format!(
                "no block `{name}` in {}; its blocks are: {}",
                pipeline.name,
                names.join(", ")
            ))
        })
}

/// A run of this pipeline by id; a usage error when the ledger has none.
async fn find_run(
    pipeline: &Pipeline,
    ledger: &Ledger,
    run_id: &str,
) -> Result<crate::ledger::RunRecord, Failure> {
    ledger
        .run(run_id)
        .await?
        .filter(|r| r.pipeline == pipeline.name)
        .ok_or_else(|| {
            Failure::Usage(format!(
                "no run `{run_id}` of {} in the ledger (see `runs`)",
                pipeline.name
            ))
        })
}

/// `--only BLOCK`: the block runs; its inputs come from their newest checkpoints for the
/// partition, made by this pipeline version; nothing else runs.
async fn only_plan(
    pipeline: &Pipeline,
    ledger: &Ledger,
    partition: Option<Partition>,
    block: &str,
) -> Result<Vec<Directive>, Failure> {
    let target = block_index(pipeline, block)?;
    let key = partition.map(|p| p.key());
    let mut plan = vec![Directive::NotSelected; pipeline.blocks.len()];
    plan[target] = Directive::Run;
    for &input in pipeline.blocks[target].inputs {
        let name = pipeline.blocks[input].name;
        let found = ledger
            .latest_checkpoint(pipeline.name, pipeline.source_hash, key.as_deref(), name)
            .await?
            .filter(|(_, path)| std::path::Path::new(path).exists());
        let Some((from_run, path)) = found else {
            return Err(Failure::Usage(format!(
                "no checkpoint of `{name}` for partition {} made by this pipeline version; run the pipeline for that partition first (or use --until {block})",
                key.as_deref().unwrap_or("-")
            )));
        };
        let rows = checkpoint::row_count(
            std::path::Path::new(&path),
            pipeline.blocks[input].output.unwrap_or_default(),
        );
        plan[input] = Directive::Reuse {
            checkpoint: Some(path.into()),
            rows,
            from_run,
        };
    }
    Ok(plan)
}

/// `--until BLOCK`: the block and everything upstream of it run; nothing else does.
fn until_plan(pipeline: &Pipeline, block: &str) -> Result<Vec<Directive>, Failure> {
    let target = block_index(pipeline, block)?;
    let mut plan = vec![Directive::NotSelected; pipeline.blocks.len()];
    plan[target] = Directive::Run;
    // Blocks are in dependency order, so one backward pass reaches every ancestor.
    for index in (0..=target).rev() {
        if plan[index] == Directive::Run {
            let block = &pipeline.blocks[index];
            for &upstream in block.inputs.iter().chain(block.after) {
                plan[upstream] = Directive::Run;
            }
        }
    }
    Ok(plan)
}

/// One partition of a backfill and whether it runs.
pub(crate) struct PlannedPartition {
    pub partition: Partition,
    pub run: bool,
    pub reason: String,
}

/// Each partition of a backfill, whether it runs (not yet loaded by this pipeline version, or
/// `rerun_all`) and why.
pub(crate) async fn backfill_plan(
    pipeline: &Pipeline,
    ledger: &Ledger,
    partitions: &[Partition],
    rerun_all: bool,
) -> Result<Vec<PlannedPartition>, crate::ledger::LedgerError> {
    let done = ledger
        .succeeded_partitions(pipeline.name, pipeline.source_hash)
        .await?;
    let mut plan = Vec::new();
    for &partition in partitions {
        let key = partition.key();
        let (run, reason) = if done.contains(&key) {
            if rerun_all {
                (true, "succeeded before; --rerun-all".to_string())
            } else {
                (false, "succeeded with this pipeline version".to_string())
            }
        } else {
            let reason = match ledger.latest_run(pipeline.name, Some(&key)).await? {
                None => "never ran".to_string(),
                Some(run) if run.status == "succeeded" && run.version != pipeline.source_hash => {
                    format!("succeeded with another pipeline version ({})", run.version)
                }
                Some(run) => format!("last run {} {}", run.run_id, run.status),
            };
            (true, reason)
        };
        plan.push(PlannedPartition {
            partition,
            run,
            reason,
        });
    }
    Ok(plan)
}

/// `audit verify` and `audit list`.
async fn audit(ledger: &Ledger, action: &AuditAction) -> Result<ExitCode, Failure> {
    match action {
        AuditAction::Verify => {
            let report = crate::audit::verify(ledger).await?;
            if report.problems.is_empty() {
                println!(
                    "audit trail intact: {} entries, head {}",
                    report.entries,
                    report.head.as_deref().unwrap_or("(empty)")
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "audit trail BROKEN: {} problem(s) in {} entries",
                    report.problems.len(),
                    report.entries
                );
                for problem in &report.problems {
                    println!("  - {problem}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        AuditAction::List { limit, run } => {
            for entry in &ledger.audit_tail(*limit, run.as_deref()).await? {
                println!(
                    "#{} {} {} {} {} by {}\n    {}\n    hash {}",
                    entry.seq,
                    crate::ledger::format_ms(entry.at),
                    entry.pipeline,
                    entry.event,
                    entry.run_id,
                    entry.actor,
                    entry.detail,
                    entry.hash
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `resume RUN_ID` runs: `None` when the run succeeded. Also returns how many blocks are
/// reused.
pub(crate) async fn resume_request(
    pipeline: &Pipeline,
    ledger: &Ledger,
    run_id: &str,
) -> Result<(Option<RunRequest>, usize), Failure> {
    let run = find_run(pipeline, ledger, run_id).await?;
    match run.status.as_str() {
        "succeeded" => return Ok((None, 0)),
        "running" => {
            return Err(Failure::Usage(format!(
                "run {run_id} is still running (process {} on {}); wait for it or stop it first",
                run.pid, run.host
            )));
        }
        _ => {}
    }
    if run.version != pipeline.source_hash {
        return Err(Failure::Usage(format!(
            "run {run_id} was made by pipeline version {}, this binary is version {}; its checkpoints may not fit, so start a fresh run instead (`run` or `backfill`)",
            run.version, pipeline.source_hash
        )));
    }
    let partition = match (&run.partition, pipeline.partitions) {
        (Some(key), Some(spec)) => {
            Some(Partition::parse(spec.granularity, key).map_err(Failure::Failed)?)
        }
        _ => None,
    };
    let params = params_from_json(pipeline, &run.params).map_err(Failure::Failed)?;
    let previous = ledger.blocks(run_id).await?;
    let blocks = pipeline.blocks;
    // Every block that succeeded is reusable; its rows come from its checkpoint when the file
    // is still on disk.
    let reusable: Vec<Option<Directive>> = blocks
        .iter()
        .map(|block| {
            let record = previous.iter().find(|r| r.block == block.name)?;
            if !matches!(record.status.as_str(), "succeeded" | "reused") {
                return None;
            }
            let from_run = match record.status.as_str() {
                "reused" => record
                    .error
                    .as_deref()
                    .and_then(|note| note.strip_prefix("reused from "))
                    .unwrap_or(run_id)
                    .to_string(),
                _ => run_id.to_string(),
            };
            let checkpoint = record
                .checkpoint
                .as_ref()
                .filter(|path| std::path::Path::new(path).exists())
                .map(PathBuf::from);
            Some(Directive::Reuse {
                checkpoint,
                rows: record.rows_out.unwrap_or(0).max(0) as usize,
                from_run,
            })
        })
        .collect();
    let mut run_set: Vec<bool> = reusable.iter().map(Option::is_none).collect();
    // A block that runs needs its inputs' rows: an input without a checkpoint runs again too.
    // Blocks are in dependency order, so one backward pass settles every chain.
    for index in (0..blocks.len()).rev() {
        if run_set[index] {
            for &input in blocks[index].inputs {
                if !matches!(
                    &reusable[input],
                    Some(Directive::Reuse {
                        checkpoint: Some(_),
                        ..
                    })
                ) {
                    run_set[input] = true;
                }
            }
        }
    }
    let plan: Vec<Directive> = reusable
        .into_iter()
        .zip(&run_set)
        .map(|(reuse, &runs)| match reuse {
            Some(directive) if !runs => directive,
            _ => Directive::Run,
        })
        .collect();
    let reused = run_set.iter().filter(|r| !**r).count();
    Ok((
        Some(RunRequest {
            partition,
            params,
            trigger: TriggerKind::Resume,
            plan,
            resumed_from: Some(run_id.to_string()),
            run_id: None,
            actor: None,
            cancel: None,
        }),
        reused,
    ))
}

fn params_from_json(pipeline: &Pipeline, json: &str) -> Result<HashMap<String, Value>, String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|e| format!("the run's parameters are unreadable: {e}"))?;
    let mut params = HashMap::new();
    for (name, value) in object {
        let Some(definition) = pipeline.params.iter().find(|p| p.name == name) else {
            continue;
        };
        let text = match value {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        params.insert(name, Value::parse_like(&definition.default, &text)?);
    }
    Ok(params)
}

async fn inspect(
    pipeline: &Pipeline,
    ledger: &Ledger,
    block: &str,
    partition: Option<&str>,
    run: Option<&str>,
    rows: usize,
) -> Result<ExitCode, Failure> {
    let index = block_index(pipeline, block)?;
    let definition = &pipeline.blocks[index];
    if definition.output.is_none() {
        let inputs: Vec<&str> = definition
            .inputs
            .iter()
            .map(|&i| pipeline.blocks[i].name)
            .collect();
        return Err(Failure::Usage(format!(
            "`{block}` is a {} block and has no output; inspect its input instead: {}",
            definition.kind.name(),
            inputs.join(", ")
        )));
    }
    let partition = match (partition, pipeline.partitions) {
        (Some(key), Some(spec)) => Some(
            Partition::parse(spec.granularity, key)
                .map_err(Failure::Usage)?
                .key(),
        ),
        (Some(_), None) => {
            return Err(Failure::Usage(format!(
                "pipeline {} has no partitions",
                pipeline.name
            )));
        }
        (None, _) => None,
    };
    let found = match run {
        Some(run_id) => ledger
            .blocks(run_id)
            .await?
            .into_iter()
            .find(|b| b.block == block)
            .and_then(|b| b.checkpoint.map(|c| (run_id.to_string(), c))),
        None => match &partition {
            Some(key) => {
                ledger
                    .latest_checkpoint(pipeline.name, pipeline.source_hash, Some(key), block)
                    .await?
            }
            None if pipeline.partitions.is_none() => {
                ledger
                    .latest_checkpoint(pipeline.name, pipeline.source_hash, None, block)
                    .await?
            }
            None => {
                // The newest run that checkpointed this block, whatever its partition.
                let mut newest = None;
                for candidate in ledger.runs(pipeline.name, 50, None).await? {
                    if let Some(b) = ledger
                        .blocks(&candidate.run_id)
                        .await?
                        .into_iter()
                        .find(|b| b.block == block && b.checkpoint.is_some())
                    {
                        newest = b.checkpoint.map(|c| (candidate.run_id, c));
                        break;
                    }
                }
                newest
            }
        },
    };
    let Some((run_id, path)) = found else {
        return Err(Failure::Failed(format!(
            "no checkpoint of `{block}`{} in the ledger; run the pipeline first",
            partition
                .map(|p| format!(" for partition {p}"))
                .unwrap_or_default()
        )));
    };
    let columns = definition.output.unwrap_or_default();
    let frame = checkpoint::read_now(std::path::Path::new(&path), columns)
        .map_err(|e| Failure::Failed(e.message))?;
    print!(
        "{}",
        history::inspect_view(block, &run_id, &path, &frame, rows)
    );
    Ok(ExitCode::SUCCESS)
}

/// `90s`, `5m`, `1h` or milliseconds (`1500ms`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 5m or 1h"))?;
    let ms = match unit {
        "ms" => value,
        "s" => value * 1000,
        "m" => value * 60_000,
        "h" => value * 3_600_000,
        _ => return Err(format!("`{text}`: use ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
}

/// Logs go to stderr (as text or JSON lines) and, through the capture layer, into each run's
/// record, where the API and the web UI find them.
fn init_logging(json: bool) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(crate::logs::CaptureLayer);
    if json {
        let _ = registry.with(stderr.json()).try_init();
    } else {
        let _ = registry.with(stderr).try_init();
    }
}

/// Gives glibc's allocator one arena per core rather than its default of eight per core, before
/// any thread starts. Batches are made on one thread (a parser's, a pool's) and freed on another
/// (a sink's), and with many arenas each keeps the memory freed into it for its own threads: the
/// reference run peaked at 119 MB rather than 108 MB at 1x, and 248 MB rather than 217 MB at
/// 10x, and ran no faster. A `MALLOC_ARENA_MAX` in the environment still decides.
fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Some(arenas) = arena_limit(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ) {
        // SAFETY: mallopt only sets a parameter of the allocator; no thread allocates yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// The arena limit to set: none when the environment sets one, else one per core.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn arena_limit(set_by_environment: bool, cores: usize) -> Option<i32> {
    (!set_by_environment).then(|| i32::try_from(cores).unwrap_or(i32::MAX).max(1))
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime")
        .block_on(future)
}

/// `NAME=VALUE` parameter overrides, typed like the declared defaults.
pub(crate) fn parse_params(
    pipeline: &Pipeline,
    raw: &[String],
) -> Result<HashMap<String, Value>, String> {
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
        None => latest_complete(spec)?,
    };
    check_not_before_start(pipeline, &partition)?;
    Ok(vec![Some(partition)])
}

/// The newest complete partition (the one before the partition containing now), or the
/// pipeline's first partition when that is later.
pub(crate) fn latest_complete(spec: PartitionSpec) -> Result<Partition, String> {
    let current = Partition::containing(spec.granularity, chrono::Utc::now().naive_utc());
    let mut previous = Partition::parse(spec.granularity, spec.start)?;
    while previous.next() < current {
        previous = previous.next();
    }
    Ok(previous)
}

/// The newest partition with a successful complete run, of any pipeline version.
pub(crate) async fn newest_succeeded(
    pipeline: &Pipeline,
    ledger: &Ledger,
) -> Result<Option<Partition>, crate::ledger::LedgerError> {
    let Some(spec) = pipeline.partitions else {
        return Ok(None);
    };
    Ok(ledger
        .newest_succeeded_partition(pipeline.name)
        .await?
        .and_then(|key| Partition::parse(spec.granularity, &key).ok()))
}

/// The partitions a scheduled run processes, oldest first, and the ones it leaves missed,
/// given the latest complete partition and the newest one that succeeded. A pipeline that never
/// succeeded runs only the latest partition: loading history is what `backfill` is for.
pub fn scheduled_partitions(
    catchup: Catchup,
    latest: Partition,
    newest_succeeded: Option<Partition>,
) -> (Vec<Partition>, Vec<Partition>) {
    let between: Vec<Partition> = match newest_succeeded {
        Some(done) if done.next() < latest => done
            .next()
            .range_to(&latest)
            .into_iter()
            .filter(|p| *p < latest)
            .collect(),
        _ => Vec::new(),
    };
    match catchup {
        Catchup::All => {
            let mut run = between;
            run.push(latest);
            (run, Vec::new())
        }
        Catchup::Latest => (vec![latest], between),
    }
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

/// The partitions from `from` to `to`, both included, checked against the pipeline's start.
pub(crate) fn backfill_partitions(
    pipeline: &Pipeline,
    from: &str,
    to: &str,
) -> Result<Vec<Partition>, String> {
    let spec = pipeline
        .partitions
        .ok_or_else(|| format!("pipeline {} has no partitions to backfill", pipeline.name))?;
    let first = Partition::parse(spec.granularity, from)?;
    let last = Partition::parse(spec.granularity, to)?;
    if last < first {
        return Err(format!("--to {to} is before --from {from}"));
    }
    check_not_before_start(pipeline, &first)?;
    Ok(first.range_to(&last))
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
                BlockStatus::Reused { .. } => format!("{} reused", b.name),
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
        let partition = report
            .partition
            .map_or_else(String::new, |p| format!(" [{p}]"));
        if let Some(cause) = &report.root_cause {
            let _ = writeln!(out, "\nerror{partition}: {cause}");
            let _ = writeln!(
                out,
                "  run {} (details: run-info {0}; retry: resume {0})",
                report.run_id
            );
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

/// Writes and deletes a small object under `folder` of a connection's store.
async fn probe_writable(
    ctx: &RunContext,
    connection: &str,
    folder: &str,
) -> Result<(), crate::error::BlockError> {
    let store = open_store(&ctx.connection_url(connection)?)?.store;
    let probe = object_store::path::Path::from(format!("{folder}/.baton-validate"));
    object_store::ObjectStoreExt::put(
        store.as_ref(),
        &probe,
        object_store::PutPayload::from_static(b"ok"),
    )
    .await?;
    object_store::ObjectStoreExt::delete(store.as_ref(), &probe).await?;
    Ok(())
}

async fn validate(pipeline: &'static Pipeline) -> ExitCode {
    let ctx = RunContext::new(
        pipeline,
        "validate".into(),
        None,
        &HashMap::new(),
        Arc::new(Resources::default()),
        None,
    );
    let mut problems = 0;
    let mut report = |ok: bool, line: String| {
        if !ok {
            problems += 1;
        }
        println!("{} {line}", if ok { "ok  " } else { "FAIL" });
    };
    for block in pipeline.blocks {
        // Each sink's check: what it checked, what success means, and the differences it found
        // (none for a write probe).
        let (what, ok_text, checked) = match (block.kind, block.sink) {
            (BlockKind::HttpSource, _) | (_, None) => continue,
            (_, Some(SinkDef::Table(target))) => {
                let checked = async {
                    let warehouse: Warehouse = ctx.warehouse(target.connection).await?;
                    validate_table(&warehouse, &target).await
                }
                .await;
                let what = format!("table {}", target.table);
                (what, "is reachable and compatible", checked)
            }
            (_, Some(SinkDef::Lake(target))) => {
                // A templated dataset path is probed at its fixed part.
                let folder = target.path.split('{').next().unwrap_or_default();
                let checked = probe_writable(&ctx, target.connection, folder).await;
                let what = format!("lake dataset {}", target.path);
                (what, "is writable", checked.map(|()| Vec::new()))
            }
            (_, Some(SinkDef::Export(target))) => {
                let checked = probe_writable(&ctx, target.connection, "").await;
                let what = format!("export store {}", target.connection);
                (what, "is writable", checked.map(|()| Vec::new()))
            }
            (_, Some(SinkDef::BigQuery(target))) => {
                let checked = crate::sink::bigquery::validate_bigquery(&ctx, &target).await;
                let what = format!("BigQuery table {}", target.table);
                let ok_text = "is reachable and compatible (or will be created)";
                (what, ok_text, checked)
            }
        };
        match checked {
            Ok(differences) if differences.is_empty() => {
                report(true, format!("{}: {what} {ok_text}", block.name))
            }
            Ok(differences) => report(
                false,
                format!(
                    "{}: {what} differs:\n       - {}",
                    block.name,
                    differences.join("\n       - ")
                ),
            ),
            Err(error) => report(false, format!("{}: {error}", block.name)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Granularity;

    fn day(key: &str) -> Partition {
        Partition::parse(Granularity::Daily, key).unwrap()
    }

    #[test]
    fn the_allocator_gets_an_arena_per_core_unless_the_environment_says() {
        assert_eq!(arena_limit(false, 2), Some(2));
        assert_eq!(arena_limit(false, 64), Some(64));
        assert_eq!(arena_limit(false, 0), Some(1));
        assert_eq!(arena_limit(true, 2), None);
    }

    #[test]
    fn the_http_client_is_built_early_only_for_runs_that_download() {
        let command = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("pipeline").chain(args.iter().copied()))
                .expect("valid arguments")
                .command
        };
        let with_download = [BlockKind::HttpSource, BlockKind::Transform];
        let without = [BlockKind::Transform];
        for running in [
            command(&["run"]),
            command(&["backfill", "--from", "2021-01", "--to", "2021-03"]),
            command(&["resume", "some-run"]),
        ] {
            assert!(downloads(&running, with_download.into_iter()));
            assert!(!downloads(&running, without.into_iter()));
        }
        for other in [command(&["runs"]), command(&["run-info", "some-run"])] {
            assert!(!downloads(&other, with_download.into_iter()));
        }
    }

    #[test]
    fn catch_up_after_an_outage() {
        let latest = day("2024-01-10");
        // Down for three days: 07, 08 and 09 were missed.
        let (run, missed) = scheduled_partitions(Catchup::All, latest, Some(day("2024-01-06")));
        assert_eq!(
            run,
            ["2024-01-07", "2024-01-08", "2024-01-09", "2024-01-10"].map(day)
        );
        assert!(missed.is_empty());
        let (run, missed) = scheduled_partitions(Catchup::Latest, latest, Some(day("2024-01-06")));
        assert_eq!(run, [latest]);
        assert_eq!(missed, ["2024-01-07", "2024-01-08", "2024-01-09"].map(day));
    }

    #[test]
    fn no_outage_and_no_history() {
        let latest = day("2024-01-10");
        for catchup in [Catchup::All, Catchup::Latest] {
            // Up to date, or even ahead (a backfill loaded later partitions).
            for done in ["2024-01-09", "2024-01-10", "2024-01-12"] {
                assert_eq!(
                    scheduled_partitions(catchup, latest, Some(day(done))),
                    (vec![latest], vec![])
                );
            }
            // Never succeeded: only the latest; history is for `backfill`.
            assert_eq!(
                scheduled_partitions(catchup, latest, None),
                (vec![latest], vec![])
            );
        }
    }
}
