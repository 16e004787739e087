//! Runs one partition of a pipeline: blocks in dependency order, independent blocks at the same
//! time, each started when its trigger rule fires, with retries (retryable errors only),
//! exponential backoff with jitter, a timeout per attempt and per run. Every run, block and
//! attempt is recorded in the ledger; block outputs are checkpointed so that a later run can
//! start from the middle of the graph.
//!
//! A block whose output is a stream of batches ([`Rows`]) is "streaming": its consumers start at
//! once and a pump hands them each batch as it comes, writing the checkpoint on the way; the
//! block ends with its last batch. `Execution::can_stream` says when rows stream.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use polars::prelude::DataFrame;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, info_span, warn};

use crate::checkpoint::Checkpoints;
use crate::context::{Resources, RunContext, Value};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::ledger::{
    AttemptRecord, BlockRecord, Claim, HEARTBEAT_EVERY, Ledger, LedgerError, RunRecord, RunStatus,
    TriggerKind, now_ms,
};
use crate::partition::Partition;
use crate::pipeline::{BlockDef, BlockKind, Pipeline, Trigger};
use crate::rows::Rows;

/// What happened to one block.
#[derive(Clone, Debug, PartialEq)]
pub enum BlockStatus {
    /// It finished.
    Succeeded {
        /// Rows in its output (sinks: rows written).
        rows: usize,
    },
    /// Its last attempt failed.
    Failed {
        /// The error.
        error: String,
    },
    /// It did not run: an input did not succeed, its trigger rule or condition said no, or it
    /// was not selected.
    Skipped {
        /// Why.
        because: String,
    },
    /// It was not run again: its output (or, for a sink, its write) comes from an earlier run.
    Reused {
        /// Rows of the reused output.
        rows: usize,
        /// The run that produced it.
        from_run: String,
    },
}

impl BlockStatus {
    /// The status as the ledger stores it.
    pub fn name(&self) -> &'static str {
        match self {
            BlockStatus::Succeeded { .. } => "succeeded",
            BlockStatus::Failed { .. } => "failed",
            BlockStatus::Skipped { .. } => "skipped",
            BlockStatus::Reused { .. } => "reused",
        }
    }
}

/// One block's outcome in a run.
#[derive(Clone, Debug)]
pub struct BlockOutcome {
    /// The block's name.
    pub name: &'static str,
    /// What happened.
    pub status: BlockStatus,
    /// How many attempts were made.
    pub attempts: u32,
    /// Time from the first attempt's start to the last attempt's end.
    pub elapsed: Duration,
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The run's id.
    pub run_id: String,
    /// The partition it processed.
    pub partition: Option<Partition>,
    /// Each block's outcome, in pipeline order.
    pub blocks: Vec<BlockOutcome>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// The first failure, when the run failed.
    pub root_cause: Option<String>,
}

impl RunReport {
    /// The outcome of the block named `name`, if the pipeline has it.
    pub fn block(&self, name: &str) -> Option<&BlockOutcome> {
        self.blocks.iter().find(|b| b.name == name)
    }

    /// Whether no block failed.
    pub fn succeeded(&self) -> bool {
        !self
            .blocks
            .iter()
            .any(|b| matches!(b.status, BlockStatus::Failed { .. }))
    }
}

/// What to do with one block in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Run it.
    Run,
    /// Do not run it; take its output from a checkpoint (`None` for a sink, whose write
    /// already happened).
    Reuse {
        /// The checkpoint file.
        checkpoint: Option<PathBuf>,
        /// Rows it held.
        rows: usize,
        /// The run that produced it.
        from_run: String,
    },
    /// Leave it out of this run.
    NotSelected,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// The partition, for a partitioned pipeline.
    pub partition: Option<Partition>,
    /// Parameter overrides.
    pub params: HashMap<String, Value>,
    /// Why the run happens, as recorded in the ledger.
    pub trigger: TriggerKind,
    /// One directive per block; empty means run every block.
    pub plan: Vec<Directive>,
    /// The run this one resumes.
    pub resumed_from: Option<String>,
    /// The run's id, when the caller needs it before the run starts (the API answers with
    /// it); a new one otherwise.
    pub run_id: Option<String>,
    /// Who or what asked for the run, as the audit trail records it; by default the scheduler
    /// for scheduled runs and the operating-system user otherwise.
    pub actor: Option<String>,
    /// Cancels the run when it carries a reason: running blocks are stopped and fail with it,
    /// blocks not started are skipped, and the run ends `cancelled`.
    pub cancel: Option<watch::Receiver<Option<String>>>,
}

impl RunRequest {
    /// Every block of one partition.
    pub fn full(
        partition: Option<Partition>,
        params: HashMap<String, Value>,
        trigger: TriggerKind,
    ) -> RunRequest {
        RunRequest {
            partition,
            params,
            trigger,
            plan: Vec::new(),
            resumed_from: None,
            run_id: None,
            actor: None,
            cancel: None,
        }
    }
}

/// What runs share within one process.
#[derive(Clone, Default)]
pub struct Services {
    /// Connection pools.
    pub resources: Arc<Resources>,
    /// Where runs are recorded; `None` records nothing (tests, `validate`).
    pub ledger: Option<Ledger>,
    /// Where block outputs are checkpointed; `None` checkpoints nothing.
    pub checkpoints: Option<Checkpoints>,
}

enum State {
    Pending,
    Running,
    /// Its rows are flowing to its consumers, which are running; it ends with the last batch.
    Streaming,
    Done(Option<DataFrame>),
    Failed,
    Skipped,
    /// Left out of this run (`run --only`, `--until`): it neither blocks nor counts for the
    /// trigger rules of the blocks that do run.
    NotSelected,
}

impl State {
    fn ended(&self) -> bool {
        !matches!(self, State::Pending | State::Running | State::Streaming)
    }
}

/// Runs one partition of `pipeline` as `request` says, recording it in the ledger.
///
/// Fails only when the ledger cannot record the run's start: a run that cannot be recorded is
/// not started. Block failures are in the report.
pub async fn run(
    pipeline: &'static Pipeline,
    request: RunRequest,
    services: &Services,
) -> Result<RunReport, LedgerError> {
    let report = start_and_run(pipeline, request, services, None).await?;
    Ok(report.expect("a run without a claim always starts"))
}

/// Runs one partition like [`run`], but only if the ledger grants `claim`: `Ok(None)` when
/// another process (a replica sharing the ledger) is running the partition or has already done
/// what the claim is for. Without a ledger, the run always starts.
pub async fn run_claimed(
    pipeline: &'static Pipeline,
    request: RunRequest,
    services: &Services,
    claim: Claim,
) -> Result<Option<RunReport>, LedgerError> {
    start_and_run(pipeline, request, services, Some(claim)).await
}

async fn start_and_run(
    pipeline: &'static Pipeline,
    request: RunRequest,
    services: &Services,
    claim: Option<Claim>,
) -> Result<Option<RunReport>, LedgerError> {
    let started = Instant::now();
    let run_id = request
        .run_id
        .clone()
        .unwrap_or_else(|| new_run_id(pipeline, request.partition));
    let blocks = pipeline.blocks;
    let mut plan: Vec<Directive> = if request.plan.is_empty() {
        vec![Directive::Run; blocks.len()]
    } else {
        request.plan.clone()
    };
    // SLA callbacks report on a run from outside it (`serve` sends them when a run is late).
    for (directive, block) in plan.iter_mut().zip(blocks) {
        if block.sla_alert().is_some() {
            *directive = Directive::NotSelected;
        }
    }
    assert_eq!(plan.len(), blocks.len(), "one directive per block");

    let mut audit = None;
    if let Some(ledger) = &services.ledger {
        let record = RunRecord {
            run_id: run_id.clone(),
            pipeline: pipeline.name.into(),
            partition: request.partition.map(|p| p.key()),
            status: RunStatus::Running.as_str().into(),
            trigger: request.trigger.as_str().into(),
            version: pipeline.source_hash.into(),
            git_commit: pipeline.git_commit.map(Into::into),
            params: params_json(&request.params),
            resumed_from: request.resumed_from.clone(),
            host: ledger.host().into(),
            pid: i64::from(std::process::id()),
            started_at: now_ms(),
            heartbeat_at: now_ms(),
            ended_at: None,
            error: None,
        };
        let actor = request
            .actor
            .clone()
            .unwrap_or_else(|| match request.trigger {
                TriggerKind::Schedule => format!("scheduler@{}", ledger.host()),
                _ => crate::audit::local_actor(ledger.host()),
            });
        match claim {
            None => ledger.start_run(&record).await?,
            Some(claim) => {
                if !ledger.claim_run(&record, claim).await? {
                    info!(
                        partition = record.partition.as_deref().unwrap_or_default(),
                        "not started: another process is running this partition or has already done it ({claim:?})"
                    );
                    return Ok(None);
                }
            }
        }
        let detail = crate::audit::run_started(&record).to_string();
        if let Err(error) = ledger
            .append_audit(pipeline.name, &actor, "run_started", &run_id, &detail)
            .await
        {
            error!("the audit trail did not take the run's start: {error}");
        }
        audit = Some((ledger.clone(), actor));
    }
    let heartbeat = services.ledger.clone().map(|ledger| {
        let run_id = run_id.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                if let Err(error) = ledger.heartbeat(&run_id).await {
                    warn!("cannot record the heartbeat: {error}");
                }
            }
        })
    });

    let ctx = RunContext::new(
        pipeline,
        run_id.clone(),
        request.partition,
        &request.params,
        services.resources.clone(),
        services.ledger.clone(),
    );
    let span = info_span!("run", run_id = %run_id, pipeline = pipeline.name, partition = %request.partition.map(|p| p.key()).unwrap_or_default());
    let mut execution = Execution::new(pipeline, &run_id, request.partition, services, ctx);
    async {
        info!(run_id = %run_id, version = pipeline.source_hash, trigger = request.trigger.as_str(), "run started");
        execution.apply_plan(&plan).await;
        execution.schedule(request.cancel.clone()).await;
    }
    .instrument(span)
    .await;
    if let Some(heartbeat) = heartbeat {
        heartbeat.abort();
    }
    let report = execution.finish(started).await;
    if report.succeeded() {
        info!(run_id = %report.run_id, elapsed_ms = report.elapsed.as_millis() as u64, "run succeeded");
    } else {
        error!(run_id = %report.run_id, "run failed: {}", report.root_cause.as_deref().unwrap_or("unknown"));
    }
    if let Some((ledger, actor)) = &audit {
        let appended = match crate::audit::run_finished(ledger, &run_id).await {
            Ok(detail) => {
                ledger
                    .append_audit(
                        pipeline.name,
                        actor,
                        "run_finished",
                        &run_id,
                        &detail.to_string(),
                    )
                    .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = appended {
            error!("the audit trail did not take the run's end: {error}");
        }
    }
    // The run's log lines go into the ledger with it; a ledger that cannot take them costs
    // the lines, not the run.
    let lines = crate::logs::take(&run_id);
    if let Some(ledger) = &services.ledger
        && let Err(error) = ledger.record_logs(&run_id, &lines).await
    {
        warn!("cannot record the run's log lines: {error}");
    }
    Ok(Some(report))
}

/// `green_taxi_etl-2021-01-20261123T174512.123Z-3f9a`: readable, sortable, unique across
/// replicas thanks to the random suffix.
pub fn new_run_id(pipeline: &Pipeline, partition: Option<Partition>) -> String {
    format!(
        "{}-{}-{}-{:04x}",
        pipeline.name,
        partition.map_or_else(|| "all".to_string(), |p| p.key().replace(':', "")),
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        fastrand::u16(..)
    )
}

fn params_json(params: &HashMap<String, Value>) -> String {
    let object: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::Int(i) => serde_json::Value::from(*i),
                Value::Float(x) => serde_json::Value::from(*x),
                Value::String(s) => serde_json::Value::from(s.as_str()),
                Value::Bool(b) => serde_json::Value::from(*b),
            };
            (name.clone(), value)
        })
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// How a block ended: its index, what it produced with its rows out and a counter of the
/// rows it read, the attempts made, the time taken and its start.
type Finished = (
    usize,
    Result<(Produced, usize, Arc<AtomicUsize>), BlockError>,
    u32,
    Duration,
    i64,
);

/// A future the scheduler waits on: a block's attempts, or the pump of a streaming block.
type Running = futures::future::BoxFuture<'static, Finished>;

/// What a block produced.
enum Produced {
    /// Its output rows (`None` for sinks and callbacks).
    Output(Option<Rows>),
    /// Its rows have streamed to its consumers; what is left to record of them.
    Streamed {
        /// The checkpoint written while they passed.
        checkpoint: Option<PathBuf>,
        /// Their content checksum, when the audit trail wants it.
        checksum: Option<String>,
        /// Their estimated size in memory, summed over the batches.
        bytes: usize,
    },
}

/// An input of a block that is about to run.
enum Input {
    /// A whole frame; every attempt gets it again.
    Frame(DataFrame),
    /// Batches from a block that is streaming them: the first attempt reads them as they come,
    /// a retry reads them back from that block's checkpoint once it is complete.
    Streamed {
        live: Option<Rows>,
        replay: watch::Receiver<Option<Result<PathBuf, String>>>,
        columns: &'static [crate::pipeline::Column],
    },
}

/// How many batches wait in the channel between a streaming block and each consumer: enough
/// to keep both sides busy, few enough that memory holds only a handful of batches.
const STREAM_BUFFER: usize = 1;

/// The state of one run while it executes.
struct Execution<'s> {
    pipeline: &'static Pipeline,
    run_id: String,
    partition: Option<Partition>,
    services: &'s Services,
    ctx: RunContext,
    state: Vec<State>,
    outcomes: Vec<Option<BlockOutcome>>,
    /// Consumers of each block's frame that have not started yet: a frame is dropped as soon
    /// as its last consumer has it, so memory holds only what is still needed.
    consumers_left: Vec<usize>,
    /// Checkpoint writes in flight; each records its block in the ledger when done.
    background: Vec<JoinHandle<()>>,
    /// Blocks reused from earlier runs keep their checkpoint path in this run's ledger rows.
    reused_checkpoints: HashMap<usize, PathBuf>,
    /// Rows each started block received, for the ledger.
    rows_in: Vec<Option<usize>>,
    /// The streamed inputs of blocks about to start, by (consumer, producer).
    streamed_inputs: HashMap<(usize, usize), Input>,
    /// The blocks that read or run after each block.
    dependents: Vec<Vec<usize>>,
    /// Blocks whose readiness may have changed since the scheduler last looked: every block at
    /// first, then those that depend on a block whose state changed. Looking at these alone,
    /// not at every pending block after each event, makes a run of n blocks cost O(n)
    /// readiness checks rather than O(n²).
    unsettled: BTreeSet<usize>,
    first_failure: Option<(i64, String)>,
    /// Why the run was cancelled, if it was.
    cancelled: Option<String>,
}

impl<'s> Execution<'s> {
    fn new(
        pipeline: &'static Pipeline,
        run_id: &str,
        partition: Option<Partition>,
        services: &'s Services,
        ctx: RunContext,
    ) -> Self {
        let blocks = pipeline.blocks;
        Execution {
            pipeline,
            run_id: run_id.into(),
            partition,
            services,
            ctx,
            state: blocks.iter().map(|_| State::Pending).collect(),
            outcomes: vec![None; blocks.len()],
            consumers_left: blocks
                .iter()
                .fold(vec![0; blocks.len()], |mut counts, block| {
                    for &input in block.inputs {
                        counts[input] += 1;
                    }
                    counts
                }),
            background: Vec::new(),
            reused_checkpoints: HashMap::new(),
            rows_in: vec![None; blocks.len()],
            streamed_inputs: HashMap::new(),
            dependents: dependents(blocks),
            unsettled: (0..blocks.len()).collect(),
            first_failure: None,
            cancelled: None,
        }
    }

    /// Settles reused and unselected blocks before anything runs. Checkpoints are read only
    /// for reused blocks that a block which will run reads.
    async fn apply_plan(&mut self, plan: &[Directive]) {
        let blocks = self.pipeline.blocks;
        for (index, directive) in plan.iter().enumerate() {
            match directive {
                Directive::Run => {}
                Directive::NotSelected => {
                    self.set_state(index, State::NotSelected);
                    let because = if self.pipeline.blocks[index].sla_alert().is_some() {
                        "an SLA alert: `serve` sends it when a scheduled run is late"
                    } else {
                        "not selected for this run"
                    };
                    self.settle(
                        index,
                        BlockStatus::Skipped {
                            because: because.into(),
                        },
                        0,
                        Duration::ZERO,
                        None,
                    )
                    .await;
                }
                Directive::Reuse {
                    checkpoint,
                    rows,
                    from_run,
                } => {
                    let needed = blocks
                        .iter()
                        .enumerate()
                        .any(|(c, b)| b.inputs.contains(&index) && plan[c] == Directive::Run);
                    let frame = match (needed, checkpoint) {
                        (true, Some(path)) => {
                            let columns = blocks[index].output.unwrap_or_default();
                            Checkpoints::read(path.clone(), columns).await.map(Some)
                        }
                        (true, None) => Err(BlockError::fatal("its output was not checkpointed")),
                        (false, _) => Ok(None),
                    };
                    let frame = match frame {
                        Ok(frame) => frame,
                        Err(error) => {
                            let error = error.context(format!(
                                "block `{}` cannot reuse the output of run {from_run}",
                                blocks[index].name
                            ));
                            self.fail(index, error.message, 0, Duration::ZERO).await;
                            continue;
                        }
                    };
                    if let Some(path) = checkpoint {
                        self.reused_checkpoints.insert(index, path.clone());
                    }
                    self.set_state(index, State::Done(frame));
                    self.settle(
                        index,
                        BlockStatus::Reused {
                            rows: *rows,
                            from_run: from_run.clone(),
                        },
                        0,
                        Duration::ZERO,
                        None,
                    )
                    .await;
                }
            }
        }
    }

    /// Starts blocks as their trigger rules fire, until every block has ended or the run's
    /// timeout passes.
    async fn schedule(&mut self, mut cancel: Option<watch::Receiver<Option<String>>>) {
        let pipeline = self.pipeline;
        let blocks = pipeline.blocks;
        let mut deadline = pipeline
            .timeout_ms
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        loop {
            while let Some(index) = self.unsettled.pop_first() {
                let block = &blocks[index];
                if !matches!(self.state[index], State::Pending) {
                    continue;
                }
                match self.readiness(index) {
                    Readiness::Wait => continue,
                    Readiness::Skip(because) => {
                        self.skip(index, because).await;
                    }
                    Readiness::Run => {
                        if let Some(condition) = block.run_if {
                            match (condition.eval)(&self.ctx) {
                                Ok(true) => {}
                                Ok(false) => {
                                    self.skip(
                                        index,
                                        format!("run_if `{}` is false", condition.text),
                                    )
                                    .await;
                                    continue;
                                }
                                Err(error) => {
                                    self.fail(
                                        index,
                                        format!("run_if `{}`: {error}", condition.text),
                                        0,
                                        Duration::ZERO,
                                    )
                                    .await;
                                    continue;
                                }
                            }
                        }
                        let inputs = self.take_inputs(index);
                        // Rows still streaming in are counted when the block ends.
                        self.rows_in[index] = inputs
                            .iter()
                            .map(|input| match input {
                                Input::Frame(frame) => Some(frame.height()),
                                Input::Streamed { .. } => None,
                            })
                            .sum();
                        self.state[index] = State::Running;
                        if let Some(ledger) = &self.services.ledger {
                            let record = self.block_record(index, "running", 0, None, None);
                            if let Err(error) = ledger.record_block(&record).await {
                                warn!("cannot record block start: {error}");
                            }
                        }
                        running.push(Box::pin(run_block_with_retries(
                            pipeline,
                            index,
                            self.ctx.clone(),
                            inputs,
                            self.services.ledger.clone(),
                        )));
                    }
                }
            }
            let timed_out = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let cancelled = async {
                match cancel.as_mut() {
                    Some(cancel) => {
                        // The guard `wait_for` returns must not live across an await.
                        let reason = cancel
                            .wait_for(Option::is_some)
                            .await
                            .map(|reason| reason.clone().unwrap_or_default());
                        match reason {
                            Ok(reason) => reason,
                            // The canceller is gone without cancelling: nobody can cancel now.
                            Err(_) => std::future::pending().await,
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                next = running.next() => next,
                () = timed_out => {
                    // Dropping the futures stops the running blocks. Callbacks still to run are
                    // kept: a run that timed out is a failure its alerts must report, so the
                    // loop goes on, without the deadline, for them alone.
                    running = FuturesUnordered::new();
                    deadline = None;
                    let timeout = Duration::from_millis(pipeline.timeout_ms.unwrap_or_default());
                    self.stop_all(
                        &format!("the run timed out after {}", humanize(timeout)),
                        timeout,
                        true,
                    )
                    .await;
                    continue;
                }
                reason = cancelled => {
                    drop(running);
                    warn!(run_id = %self.run_id, "run cancelled: {reason}");
                    // A deliberate cancel is no incident: callbacks are skipped too.
                    self.stop_all(&reason, Duration::ZERO, false).await;
                    self.cancelled = Some(reason);
                    return;
                }
            };
            let Some((index, result, attempts, elapsed, started_at)) = next else {
                break;
            };
            match result {
                Ok((Produced::Output(Some(rows)), _, taken)) if rows.is_streamed() => {
                    let finished = (attempts, elapsed, started_at);
                    if self.can_stream(index) {
                        running.push(self.stream(index, rows, taken, finished));
                    } else {
                        running.push(Box::pin(collected(index, rows, taken, finished)));
                    }
                }
                Ok((produced, rows, taken)) => {
                    if self.rows_in[index].is_none() {
                        self.rows_in[index] = Some(taken.load(Ordering::Relaxed));
                    }
                    self.succeed(index, produced, rows, attempts, elapsed, started_at)
                }
                Err(error) if error.kind == ErrorKind::InputFailed => {
                    info!(block = blocks[index].name, "stopped: {error}");
                    self.skip(index, error.message).await;
                }
                Err(error) => {
                    error!(
                        block = blocks[index].name,
                        attempts, "block failed: {error}"
                    );
                    self.fail(index, error.message, attempts, elapsed).await;
                }
            }
        }
    }

    fn readiness(&self, index: usize) -> Readiness {
        let blocks = self.pipeline.blocks;
        let block = &blocks[index];
        let upstream = || {
            block
                .inputs
                .iter()
                .chain(block.after.iter())
                .copied()
                .filter(|&i| !matches!(self.state[i], State::NotSelected))
        };
        // A block cannot run without the rows it reads.
        if let Some(&bad) = block
            .inputs
            .iter()
            .find(|&&i| matches!(self.state[i], State::Failed | State::Skipped))
        {
            let how = if matches!(self.state[bad], State::Failed) {
                "failed"
            } else {
                "was skipped"
            };
            return Readiness::Skip(format!("input `{}` {how}", blocks[bad].name));
        }
        if block.trigger == Trigger::AllSuccess
            && let Some(bad) =
                upstream().find(|&i| matches!(self.state[i], State::Failed | State::Skipped))
        {
            let how = if matches!(self.state[bad], State::Failed) {
                "failed"
            } else {
                "was skipped"
            };
            return Readiness::Skip(format!("upstream `{}` {how}", blocks[bad].name));
        }
        // An input streaming its rows to this block is as good as done; a block that only
        // runs after another waits for its end.
        let streaming_to_me =
            |i: usize| self.streamed_inputs.contains_key(&(index, i)) && block.inputs.contains(&i);
        if !upstream().all(|i| self.state[i].ended() || streaming_to_me(i)) {
            return Readiness::Wait;
        }
        let (mut succeeded, mut failed, mut skipped) = (0, 0, 0);
        for i in upstream() {
            match self.state[i] {
                State::Done(_) | State::Streaming => succeeded += 1,
                State::Failed => failed += 1,
                _ => skipped += 1,
            }
        }
        if block.trigger.fires(succeeded, failed, skipped) {
            Readiness::Run
        } else {
            Readiness::Skip(format!(
                "trigger `{}` did not fire ({succeeded} upstream succeeded, {failed} failed, {skipped} skipped)",
                block.trigger.name()
            ))
        }
    }

    /// Whether this run's checkpoints outlive it, recorded in the ledger (not the spool of
    /// `--no-checkpoints`, nor no checkpoints at all).
    fn keeps_checkpoints(&self) -> bool {
        self.services
            .checkpoints
            .as_ref()
            .is_some_and(Checkpoints::kept)
    }

    /// Moves block `index` to `state` and has the scheduler look again at its dependents.
    fn set_state(&mut self, index: usize, state: State) {
        self.state[index] = state;
        self.unsettled.extend(&self.dependents[index]);
    }

    fn take_inputs(&mut self, index: usize) -> Vec<Input> {
        let block = &self.pipeline.blocks[index];
        let mut inputs = Vec::with_capacity(block.inputs.len());
        for &input in block.inputs {
            self.consumers_left[input] -= 1;
            if let Some(streamed) = self.streamed_inputs.remove(&(index, input)) {
                inputs.push(streamed);
                continue;
            }
            let frame = match &mut self.state[input] {
                State::Done(frame) if self.consumers_left[input] == 0 => frame.take(),
                State::Done(frame) => frame.clone(),
                _ => None,
            };
            inputs.push(Input::Frame(frame.expect(
                "a finished non-sink block has an output for each consumer",
            )));
        }
        inputs
    }

    /// Whether block `index`, which has just started streaming its rows, can hand them to its
    /// consumers batch by batch: each consumer must be able to start right now. A consumer
    /// that would wait (for another input, for a slot under `[pipeline.concurrency]`) could
    /// stall the stream and, through it, a block it waits for; such rows are collected whole.
    /// Streaming also needs checkpoints, from which a consumer's retry reads the rows again.
    fn can_stream(&mut self, index: usize) -> bool {
        if self.services.checkpoints.is_none() || !self.pipeline.limits.is_empty() {
            return false;
        }
        let consumers: Vec<usize> = self.consumers(index);
        // A block reading these rows twice (a join of a block with itself) reads them whole.
        let blocks = self.pipeline.blocks;
        if consumers
            .iter()
            .any(|&c| blocks[c].inputs.iter().filter(|&&i| i == index).count() > 1)
        {
            return false;
        }
        let before = std::mem::replace(&mut self.state[index], State::Done(None));
        let all_start = consumers
            .iter()
            .all(|&c| matches!(self.readiness(c), Readiness::Run));
        self.state[index] = before;
        all_start && consumers.len() == self.consumers_left[index]
    }

    /// The blocks still to run that read block `index`'s rows.
    fn consumers(&self, index: usize) -> Vec<usize> {
        (0..self.pipeline.blocks.len())
            .filter(|&c| {
                self.pipeline.blocks[c].inputs.contains(&index)
                    && matches!(self.state[c], State::Pending)
            })
            .collect()
    }

    /// Starts handing block `index`'s batches to its consumers (which the scheduler starts
    /// next); the returned pump ends when the last batch has passed.
    fn stream(
        &mut self,
        index: usize,
        rows: Rows,
        taken: Arc<AtomicUsize>,
        finished: (u32, Duration, i64),
    ) -> Running {
        let block = &self.pipeline.blocks[index];
        self.set_state(index, State::Streaming);
        let (replay_sender, replay) = watch::channel(None);
        let columns = block.output.unwrap_or(&[]);
        let mut senders = Vec::new();
        for consumer in self.consumers(index) {
            let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_BUFFER);
            senders.push(sender);
            self.streamed_inputs.insert(
                (consumer, index),
                Input::Streamed {
                    live: Some(Rows::received(columns, receiver)),
                    replay: replay.clone(),
                    columns,
                },
            );
        }
        let checkpoint = self.services.checkpoints.as_ref().map(|c| {
            let path = c.path(self.pipeline.name, &self.run_id, block.name);
            match rows.source_file() {
                Some(file) => Checkpoints::source_writer(path, file.clone()),
                None => Checkpoints::writer(path),
            }
        });
        let checksum = (self.services.ledger.is_some() && self.audits_rows(index))
            .then(crate::audit::RowsChecksum::default);
        let label = format!(
            "block `{}` ({}:{})",
            block.name, self.pipeline.source_path, block.line
        );
        // The pump's log lines belong to the block, as its attempts' do.
        let span = info_span!("block", block = block.name);
        Box::pin(
            pump(
                block.name,
                label,
                index,
                Pump {
                    rows,
                    senders,
                    checkpoint,
                    checksum,
                    replay: replay_sender,
                },
                taken,
                finished,
            )
            .instrument(span),
        )
    }

    /// Whether the audit trail checksums block `index`'s rows, while they stream. Only a CSV
    /// source streams of the sources, and it notes the checksum of its file when it has read it.
    fn audits_rows(&self, index: usize) -> bool {
        let block = &self.pipeline.blocks[index];
        let reads_files = matches!(block.kind, BlockKind::HttpSource | BlockKind::FileSource);
        let feeds_sink = self.feeds_sink(index);
        feeds_sink || (block.kind.is_source() && !reads_files)
    }

    /// Whether a sink reads block `index`'s rows.
    fn feeds_sink(&self, index: usize) -> bool {
        self.pipeline
            .blocks
            .iter()
            .any(|b| b.sink.is_some() && b.inputs.contains(&index))
    }

    /// Whether the audit trail checksums block `index`'s rows, given the files it read: the
    /// rows that reach a sink, and the output of a source that read no file.
    fn audits_rows_after(&self, index: usize, files: &[(String, String)]) -> bool {
        let block = &self.pipeline.blocks[index];
        self.feeds_sink(index) || (files.is_empty() && block.kind.is_source())
    }

    /// A block that will not run releases its claim on its inputs' frames.
    fn release_inputs(&mut self, index: usize) {
        for &input in self.pipeline.blocks[index].inputs {
            // Its receiver of a streamed input goes: the stream goes on for the others.
            self.streamed_inputs.remove(&(index, input));
            self.consumers_left[input] = self.consumers_left[input].saturating_sub(1);
            if self.consumers_left[input] == 0
                && let State::Done(frame) = &mut self.state[input]
            {
                frame.take();
            }
        }
    }

    async fn skip(&mut self, index: usize, because: String) {
        self.set_state(index, State::Skipped);
        self.release_inputs(index);
        self.settle(
            index,
            BlockStatus::Skipped { because },
            0,
            Duration::ZERO,
            None,
        )
        .await;
    }

    async fn fail(&mut self, index: usize, error: String, attempts: u32, elapsed: Duration) {
        self.set_state(index, State::Failed);
        self.release_inputs(index);
        let now = now_ms();
        if self.first_failure.is_none() {
            self.first_failure = Some((now, error.clone()));
        }
        self.settle(
            index,
            BlockStatus::Failed { error },
            attempts,
            elapsed,
            Some(now - elapsed.as_millis() as i64),
        )
        .await;
    }

    fn succeed(
        &mut self,
        index: usize,
        produced: Produced,
        rows: usize,
        attempts: u32,
        elapsed: Duration,
        started_at: i64,
    ) {
        let block = &self.pipeline.blocks[index];
        let status = BlockStatus::Succeeded { rows };
        self.remember(index, status.clone(), attempts, elapsed);
        let mut record = self.block_record(index, status.name(), attempts, None, Some(started_at));
        record.rows_out = Some(rows as i64);
        let ledger = self.services.ledger.clone();
        // The audit trail records a run's inputs and outputs: the files each source read, by
        // their bytes, and the rows that reach a sink, by their content. Frames in between are
        // not checksummed (the pass costs time on every run).
        let files = self.ctx.take_inputs(block.name);
        if ledger.is_some() && !files.is_empty() {
            record.checksum = Some(crate::audit::files_checksum(&files));
        }
        let output = match produced {
            Produced::Streamed {
                checkpoint,
                checksum,
                bytes,
            } => {
                // The consumers have every batch already; the pump wrote the checkpoint and
                // the checksum as the rows passed.
                self.set_state(index, State::Done(None));
                record.bytes = Some(bytes as i64);
                record.checkpoint = checkpoint
                    .filter(|_| self.keeps_checkpoints())
                    .map(|path| path.display().to_string());
                record.checksum = join_checksums(record.checksum.take(), checksum);
                if let Some(ledger) = ledger {
                    self.background.push(tokio::spawn(async move {
                        if let Err(error) = ledger.record_block(&record).await {
                            warn!(block = record.block, "cannot record the block: {error}");
                        }
                    }));
                }
                return;
            }
            // A block that returns rows returns them whole here (streams are pumped first).
            Produced::Output(output) => output.and_then(Rows::into_frame),
        };
        // The ledger row, and the checkpoint it points to, are written in the background so
        // that downstream blocks start at once.
        record.bytes = output.as_ref().map(|f| f.estimated_size() as i64);
        let checkpoint = match (&self.services.checkpoints, &output) {
            (Some(checkpoints), Some(frame)) if self.keeps_checkpoints() => Some((
                checkpoints.path(self.pipeline.name, &self.run_id, block.name),
                frame.clone(),
            )),
            _ => None,
        };
        let to_checksum = if ledger.is_some() && self.audits_rows_after(index, &files) {
            output.clone()
        } else {
            None
        };
        let has_consumers = self.consumers_left[index] > 0;
        self.set_state(
            index,
            State::Done(if has_consumers { output } else { None }),
        );
        if ledger.is_none() && checkpoint.is_none() {
            return;
        }
        self.background.push(tokio::spawn(async move {
            if let Some(frame) = to_checksum {
                let rows =
                    tokio::task::spawn_blocking(move || crate::audit::frame_checksum(&frame))
                        .await
                        .ok();
                record.checksum = join_checksums(record.checksum.take(), rows);
            }
            if let Some((path, frame)) = checkpoint {
                match Checkpoints::write(path.clone(), frame).await {
                    Ok(_) => record.checkpoint = Some(path.display().to_string()),
                    Err(error) => warn!(block = record.block, "no checkpoint: {error}"),
                }
            }
            if let Some(ledger) = ledger
                && let Err(error) = ledger.record_block(&record).await
            {
                warn!(block = record.block, "cannot record the block: {error}");
            }
        }));
    }

    /// Keeps a block's outcome for the report and for callbacks of this run.
    fn remember(&mut self, index: usize, status: BlockStatus, attempts: u32, elapsed: Duration) {
        let outcome = BlockOutcome {
            name: self.pipeline.blocks[index].name,
            status,
            attempts,
            elapsed,
        };
        self.ctx.record_outcome(outcome.clone());
        self.outcomes[index] = Some(outcome);
    }

    /// Records a block's final outcome (except successes, see `succeed`).
    async fn settle(
        &mut self,
        index: usize,
        status: BlockStatus,
        attempts: u32,
        elapsed: Duration,
        started_at: Option<i64>,
    ) {
        let block = &self.pipeline.blocks[index];
        if let BlockStatus::Skipped { because } = &status {
            info!(block = block.name, "skipped: {because}");
        }
        self.remember(index, status.clone(), attempts, elapsed);
        if let Some(ledger) = &self.services.ledger {
            let error = match &status {
                BlockStatus::Failed { error } => Some(error.clone()),
                BlockStatus::Skipped { because } => Some(because.clone()),
                BlockStatus::Reused { from_run, .. } => Some(format!("reused from {from_run}")),
                BlockStatus::Succeeded { .. } => None,
            };
            let mut record = self.block_record(index, status.name(), attempts, error, started_at);
            if let BlockStatus::Reused { rows, .. } = status {
                record.rows_out = Some(rows as i64);
                record.checkpoint = self
                    .reused_checkpoints
                    .get(&index)
                    .map(|p| p.display().to_string());
            }
            if let Err(error) = ledger.record_block(&record).await {
                warn!(block = block.name, "cannot record the block: {error}");
            }
        }
    }

    fn block_record(
        &self,
        index: usize,
        status: &str,
        attempts: u32,
        error: Option<String>,
        started_at: Option<i64>,
    ) -> BlockRecord {
        let block: &BlockDef = &self.pipeline.blocks[index];
        let ended = (status != "running").then(now_ms);
        BlockRecord {
            run_id: self.run_id.clone(),
            block: block.name.into(),
            position: index as i64,
            status: status.into(),
            attempts: i64::from(attempts),
            rows_in: self.rows_in[index].map(|rows| rows as i64),
            rows_out: None,
            bytes: None,
            started_at: started_at.or(if status == "running" {
                Some(now_ms())
            } else {
                ended
            }),
            ended_at: ended,
            error,
            checkpoint: None,
            checksum: None,
        }
    }

    /// The run stops early (its timeout passed, or it was cancelled): running blocks fail with
    /// `reason`, pending ones are skipped, except callbacks when `keep_callbacks`.
    async fn stop_all(&mut self, reason: &str, elapsed: Duration, keep_callbacks: bool) {
        for index in 0..self.state.len() {
            let block = &self.pipeline.blocks[index];
            match self.state[index] {
                State::Running | State::Streaming => {
                    let name = block.name;
                    self.fail(index, format!("block `{name}`: {reason}"), 1, elapsed)
                        .await;
                }
                State::Pending if keep_callbacks && block.kind == BlockKind::Callback => {}
                State::Pending => self.skip(index, reason.to_string()).await,
                _ => {}
            }
        }
    }

    /// Waits for checkpoints and ledger rows, records the run's end and prunes checkpoints
    /// that this run superseded.
    async fn finish(self, started: Instant) -> RunReport {
        let keeps_checkpoints = self.keeps_checkpoints();
        for task in self.background {
            let _ = task.await;
        }
        let report = RunReport {
            run_id: self.run_id,
            partition: self.partition,
            blocks: self
                .outcomes
                .into_iter()
                .map(|o| o.expect("every block ends succeeded, failed, skipped or reused"))
                .collect(),
            elapsed: started.elapsed(),
            root_cause: self.first_failure.map(|(_, error)| error),
        };
        if let Some(ledger) = &self.services.ledger {
            let status = if self.cancelled.is_some() {
                RunStatus::Cancelled
            } else if report.succeeded() {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            };
            if let Err(error) = ledger
                .finish_run(&report.run_id, status, report.root_cause.as_deref())
                .await
            {
                warn!("cannot record the end of the run: {error}");
            }
            if keeps_checkpoints {
                prune_checkpoints(ledger, self.pipeline, &report).await;
            }
        }
        if let Some(checkpoints) = &self.services.checkpoints
            && !keeps_checkpoints
        {
            checkpoints
                .remove_run_folder(self.pipeline.name, &report.run_id)
                .await;
        }
        report
    }
}

enum Readiness {
    Wait,
    Run,
    Skip(String),
}

/// Deletes the checkpoint folder of an abandoned run when the ledger records no checkpoint of
/// it: `resume` reads only recorded checkpoints, so nothing there can be reused, and nothing
/// else would ever delete it. A process killed mid-run leaves such a folder with
/// `--no-checkpoints` (whose spool is deleted only when a run ends) or before any of its
/// blocks' checkpoints was recorded.
pub async fn remove_unrecorded_checkpoints(
    ledger: &Ledger,
    checkpoints: &Checkpoints,
    pipeline: &str,
    run_id: &str,
) {
    match ledger.blocks(run_id).await {
        Ok(blocks) if blocks.iter().all(|b| b.checkpoint.is_none()) => {
            checkpoints.remove_run_folder(pipeline, run_id).await;
        }
        Ok(_) => {}
        Err(error) => warn!(run_id, "cannot read the run's blocks: {error}"),
    }
}

/// Deletes checkpoints of older runs of the same partition that this run replaced, keeping
/// the files this run itself points to (a resumed run reuses its predecessor's files).
async fn prune_checkpoints(ledger: &Ledger, pipeline: &Pipeline, report: &RunReport) {
    let partition = report.partition.map(|p| p.key());
    let Ok(current) = ledger.blocks(&report.run_id).await else {
        return;
    };
    for block in current.iter().filter(|b| b.checkpoint.is_some()) {
        let Ok(older) = ledger
            .superseded_checkpoints(
                pipeline.name,
                partition.as_deref(),
                &block.block,
                &report.run_id,
            )
            .await
        else {
            continue;
        };
        for (run_id, path) in older {
            if Some(&path) != block.checkpoint.as_ref() {
                Checkpoints::remove(std::path::Path::new(&path));
            }
            if let Err(error) = ledger.clear_checkpoint(&run_id, &block.block).await {
                warn!("cannot forget checkpoint {path}: {error}");
            }
        }
    }
}

/// For each block, the blocks that read its rows or run after it, each listed once.
fn dependents(blocks: &[BlockDef]) -> Vec<Vec<usize>> {
    let mut dependents = vec![Vec::new(); blocks.len()];
    for (index, block) in blocks.iter().enumerate() {
        for &upstream in block.inputs.iter().chain(block.after) {
            if dependents[upstream].last() != Some(&index) {
                dependents[upstream].push(index);
            }
        }
    }
    dependents
}

/// A source's file checksum and its rows' checksum, as one ledger value.
fn join_checksums(files: Option<String>, rows: Option<String>) -> Option<String> {
    // A source that read files and feeds a sink directly keeps both.
    match (files, rows) {
        (Some(files), Some(rows)) => Some(format!("{files} {rows}")),
        (files, rows) => rows.or(files),
    }
}

/// What a streaming block's pump moves and keeps.
struct Pump {
    /// The block's output batches.
    rows: Rows,
    /// One channel per consumer.
    senders: Vec<tokio::sync::mpsc::Sender<BlockResult<DataFrame>>>,
    checkpoint: Option<crate::checkpoint::CheckpointWriter>,
    checksum: Option<crate::audit::RowsChecksum>,
    /// Tells retrying consumers where to read the rows again, or why they cannot.
    replay: watch::Sender<Option<Result<PathBuf, String>>>,
}

/// Moves a streaming block's batches to its consumers, writing its checkpoint and checksum on
/// the way; ends as the block ends. A failure reaches every consumer as `InputFailed`, so they
/// stop and roll back instead of committing part of the rows.
async fn pump(
    name: &'static str,
    label: String,
    index: usize,
    mut pump: Pump,
    taken: Arc<AtomicUsize>,
    (attempts, elapsed, started_at): (u32, Duration, i64),
) -> Finished {
    let started = Instant::now();
    let (mut rows, mut bytes) = (0usize, 0usize);
    let mut side_work: Option<JoinHandle<BlockResult<SideWork>>> = None;
    let mut side = SideWork {
        checkpoint: pump.checkpoint.take(),
        checksum: pump.checksum.take(),
    };
    let outcome: BlockResult<()> = async {
        loop {
            // Room in every consumer's channel first, then the next batch: a pump waiting on a
            // slow consumer holds no batch, so only the channels hold batches between blocks. A
            // consumer that stopped reading (it failed or was skipped) is left behind; the
            // others go on.
            let mut permits = Vec::with_capacity(pump.senders.len());
            for sender in &pump.senders {
                if let Ok(permit) = sender.reserve().await {
                    permits.push(permit);
                }
            }
            let Some(batch) = pump.rows.next_batch().await else {
                break;
            };
            let batch = batch?;
            rows += batch.height();
            bytes += batch.estimated_size();
            for permit in permits {
                permit.send(Ok(batch.clone()));
            }
            // The checkpoint and checksum of this batch are made while the consumers work on
            // it, one batch behind at most.
            if let Some(previous) = side_work.take() {
                side = join_side_work(previous).await?;
            }
            if side.checkpoint.is_some() || side.checksum.is_some() {
                let mut work = std::mem::take(&mut side);
                side_work = Some(tokio::task::spawn_blocking(move || {
                    work.add(&batch)?;
                    Ok(work)
                }));
            }
        }
        if let Some(previous) = side_work.take() {
            side = join_side_work(previous).await?;
        }
        Ok(())
    }
    .await;
    let elapsed = elapsed + started.elapsed();
    match outcome {
        Ok(()) => {
            let checkpoint = match side.checkpoint.take().map(|c| c.finish()) {
                Some(Ok(path)) => {
                    pump.replay.send_replace(Some(Ok(path.clone())));
                    Some(path)
                }
                Some(Err(error)) => {
                    warn!(block = name, "no checkpoint: {error}");
                    pump.replay.send_replace(Some(Err(format!(
                        "its input `{name}` streamed past and has no checkpoint to read again: {error}"
                    ))));
                    None
                }
                // A checkpoint write failed on the way (and was logged).
                None => {
                    pump.replay.send_replace(Some(Err(format!(
                        "its input `{name}` streamed past and its checkpoint could not be written"
                    ))));
                    None
                }
            };
            let checksum = side.checksum.take().map(crate::audit::RowsChecksum::finish);
            // The attempt logged nothing when it handed over its stream; the block ends here.
            info!(
                attempt = attempts,
                rows_in = taken.load(Ordering::Relaxed),
                rows_out = rows,
                elapsed_ms = elapsed.as_millis() as u64,
                "block succeeded"
            );
            let produced = Produced::Streamed {
                checkpoint,
                checksum,
                bytes,
            };
            (
                index,
                Ok((produced, rows, taken)),
                attempts,
                elapsed,
                started_at,
            )
        }
        Err(error) => {
            for sender in &pump.senders {
                let _ = sender.send(Err(BlockError::input_failed(name))).await;
            }
            pump.replay
                .send_replace(Some(Err(format!("its input `{name}` failed"))));
            (
                index,
                Err(error.context(label)),
                attempts,
                elapsed,
                started_at,
            )
        }
    }
}

/// The checkpoint and checksum a pump keeps up to date, worked on off the async threads.
#[derive(Default)]
struct SideWork {
    checkpoint: Option<crate::checkpoint::CheckpointWriter>,
    checksum: Option<crate::audit::RowsChecksum>,
}

impl SideWork {
    fn add(&mut self, batch: &DataFrame) -> BlockResult<()> {
        if let Some(checksum) = &mut self.checksum {
            checksum.update(batch);
        }
        if let Some(checkpoint) = &mut self.checkpoint
            && let Err(error) = checkpoint.write(batch)
        {
            // A checkpoint is a convenience for `resume`; the run goes on without it.
            warn!("no checkpoint: {error}");
            self.checkpoint = None;
        }
        Ok(())
    }
}

async fn join_side_work(work: JoinHandle<BlockResult<SideWork>>) -> BlockResult<SideWork> {
    work.await
        .map_err(|e| BlockError::fatal(format!("checkpoint writer panicked: {e}")))?
}

/// A streaming block whose consumers cannot take its rows batch by batch: its rows gathered
/// into one frame, and it ends as a block with a whole output.
async fn collected(
    index: usize,
    rows: Rows,
    taken: Arc<AtomicUsize>,
    (attempts, elapsed, started_at): (u32, Duration, i64),
) -> Finished {
    let started = Instant::now();
    let result = rows.collect().await.map(|frame| {
        let height = frame.height();
        (Produced::Output(Some(Rows::from(frame))), height, taken)
    });
    (
        index,
        result,
        attempts,
        elapsed + started.elapsed(),
        started_at,
    )
}

/// The rows of one attempt, from the block's inputs: a frame again, the live stream the first
/// time, a streamed input read back from its checkpoint on a retry.
async fn attempt_inputs(inputs: &mut [Input], taken: &Arc<AtomicUsize>) -> BlockResult<Vec<Rows>> {
    let mut rows = Vec::with_capacity(inputs.len());
    for input in inputs.iter_mut() {
        let next = match input {
            Input::Frame(frame) => Rows::from(frame.clone()),
            Input::Streamed {
                live,
                replay,
                columns,
            } => match live.take() {
                Some(live) => live,
                None => {
                    let ready = replay
                        .wait_for(Option::is_some)
                        .await
                        .map(|ready| ready.clone())
                        .map_err(|_| BlockError::fatal("its streamed input ended unfinished"))?;
                    match ready {
                        Some(Ok(path)) => Checkpoints::stream(path, columns),
                        Some(Err(why)) => return Err(BlockError::fatal(why)),
                        None => unreachable!("waited for a value"),
                    }
                }
            },
        };
        rows.push(next.counted(taken.clone()));
    }
    Ok(rows)
}

/// Runs one block until it succeeds, fails with a non-retryable error or runs out of retries.
/// Returns the block's index, its result, the attempts made, the time taken and its start.
async fn run_block_with_retries(
    pipeline: &'static Pipeline,
    index: usize,
    ctx: RunContext,
    mut inputs: Vec<Input>,
    ledger: Option<Ledger>,
) -> Finished {
    let block = &pipeline.blocks[index];
    let policy = block.policy;
    let started = Instant::now();
    let started_at = now_ms();
    let span = info_span!("block", block = block.name);
    async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let taken = Arc::new(AtomicUsize::new(0));
            // Waiting for a slot under `[pipeline.concurrency]` is not part of the attempt, so
            // it does not count against the block's timeout.
            let slot = ctx.resources().slot(pipeline, block.kind).await;
            let attempt_started = Instant::now();
            let attempt_started_at = now_ms();
            let rows = attempt_inputs(&mut inputs, &taken).await;
            let future = async {
                crate::audit::in_block(block.name, (pipeline.run_block)(index, ctx.clone(), rows?))
                    .await
            };
            let timeout = Duration::from_millis(policy.timeout_ms);
            let (result, timed_out) = match tokio::time::timeout(timeout, future).await {
                Ok(result) => (result, false),
                Err(_) => (
                    Err(BlockError::retryable(format!(
                        "timed out after {}",
                        humanize(timeout)
                    ))),
                    true,
                ),
            };
            drop(slot);
            if let Some(ledger) = &ledger {
                let record = AttemptRecord {
                    run_id: ctx.run_id().into(),
                    block: block.name.into(),
                    attempt: i64::from(attempt),
                    status: match (&result, timed_out) {
                        (Ok(_), _) => "succeeded",
                        (Err(_), true) => "timed_out",
                        (Err(_), false) => "failed",
                    }
                    .into(),
                    retryable: result
                        .as_ref()
                        .is_err_and(|e| e.kind == ErrorKind::Retryable),
                    started_at: attempt_started_at,
                    ended_at: now_ms(),
                    error: result.as_ref().err().map(|e| e.message.clone()),
                };
                if let Err(error) = ledger.record_attempt(&record).await {
                    warn!("cannot record the attempt: {error}");
                }
            }
            match result {
                Ok(output) => {
                    let rows_in = taken.load(Ordering::Relaxed);
                    let rows_out = output.as_ref().and_then(Rows::height);
                    if output.as_ref().is_none_or(|rows| !rows.is_streamed()) {
                        info!(
                            attempt,
                            rows_in,
                            rows_out = rows_out.unwrap_or(rows_in),
                            elapsed_ms = attempt_started.elapsed().as_millis() as u64,
                            "block succeeded"
                        );
                    }
                    // A sink has no output; its row count is what it wrote.
                    return (
                        index,
                        Ok((Produced::Output(output), rows_out.unwrap_or(rows_in), taken)),
                        attempt,
                        started.elapsed(),
                        started_at,
                    );
                }
                Err(error) if error.kind == ErrorKind::Retryable && attempt <= policy.retries => {
                    let delay = backoff(
                        policy.retry_delay_ms,
                        policy.max_retry_delay_ms,
                        attempt,
                        fastrand::f64(),
                    );
                    warn!(attempt, retry_in = %humanize(delay), "retryable error: {error}");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    let error = if attempt > 1 {
                        error.context(format!("after {attempt} attempts"))
                    } else {
                        error
                    };
                    let error = error.context(format!(
                        "block `{}` ({}:{})",
                        block.name, pipeline.source_path, block.line
                    ));
                    return (index, Err(error), attempt, started.elapsed(), started_at);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Exponential backoff: the first delay doubled per attempt, capped at `max_ms`, plus up to a
/// quarter of random jitter (`unit` in [0, 1)) so that replicas retrying together spread out.
/// The jitter never lifts the delay above the cap.
fn backoff(first_ms: u64, max_ms: u64, attempt: u32, unit: f64) -> Duration {
    let base = first_ms
        .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(30))
        .min(max_ms);
    let jitter = (base as f64 / 4.0 * unit.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(base.saturating_add(jitter).min(max_ms.max(first_ms)))
}

/// `1m30s`-style text for a duration.
pub fn humanize(duration: Duration) -> String {
    let ms = duration.as_millis() as u64;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_cap() {
        for attempt in 1..=4 {
            let base = 1_000u64 * (1 << (attempt - 1));
            assert_eq!(
                backoff(1_000, 60_000, attempt, 0.0).as_millis() as u64,
                base
            );
            let high = backoff(1_000, 60_000, attempt, 0.999).as_millis() as u64;
            assert!(high >= base && high <= base + base / 4, "{attempt}: {high}");
        }
        // The cap holds for huge attempt numbers and with full jitter.
        assert_eq!(backoff(1_000, 30_000, 40, 0.999).as_millis(), 30_000);
        assert_eq!(backoff(1_000, 30_000, u32::MAX, 0.5).as_millis(), 30_000);
    }

    #[tokio::test]
    async fn an_abandoned_run_loses_its_checkpoint_folder_only_when_nothing_in_it_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&format!("sqlite://{}/ledger.db", dir.path().display()))
            .await
            .unwrap();
        let checkpoints = Checkpoints::new(dir.path().join("checkpoints"));
        let block = |run_id: &str, checkpoint: Option<String>| BlockRecord {
            run_id: run_id.into(),
            block: "extract".into(),
            position: 0,
            status: "succeeded".into(),
            attempts: 1,
            rows_in: None,
            rows_out: Some(1),
            bytes: None,
            started_at: Some(1),
            ended_at: Some(2),
            error: None,
            checkpoint,
            checksum: None,
        };
        for (run_id, recorded) in [("spooled", false), ("resumable", true)] {
            let path = checkpoints.path("p", run_id, "extract");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"rows").unwrap();
            let checkpoint = recorded.then(|| path.display().to_string());
            ledger
                .record_block(&block(run_id, checkpoint))
                .await
                .unwrap();
        }
        ledger.flush().await;
        for run_id in ["spooled", "resumable", "unknown"] {
            remove_unrecorded_checkpoints(&ledger, &checkpoints, "p", run_id).await;
        }
        assert!(!checkpoints.run_folder("p", "spooled").exists());
        assert!(checkpoints.path("p", "resumable", "extract").exists());
    }

    #[test]
    fn trigger_rules() {
        use Trigger::*;
        // (succeeded, failed, skipped)
        let cases = [
            (AllSuccess, (2, 0, 0), true),
            (AllSuccess, (1, 1, 0), false),
            (AllSuccess, (1, 0, 1), false),
            (AllDone, (0, 2, 1), true),
            (OneFailed, (1, 1, 0), true),
            (OneFailed, (2, 0, 1), false),
            (AllFailed, (0, 2, 0), true),
            (AllFailed, (1, 1, 0), false),
            (NoneFailed, (1, 0, 1), true),
            (NoneFailed, (1, 1, 0), false),
            (OneSuccess, (1, 1, 1), true),
            (OneSuccess, (0, 1, 1), false),
        ];
        for (rule, (s, f, k), expected) in cases {
            assert_eq!(rule.fires(s, f, k), expected, "{rule:?} {s} {f} {k}");
        }
    }
}
