//! Rows streaming between blocks: a source's batches reach a row-wise transform and two sinks
//! while the source still produces them; a sink's retry reads them back from the checkpoint;
//! a failure in the middle of the stream stops the sinks before they commit anything.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use baton_runtime::checkpoint::Checkpoints;
use baton_runtime::context::RunContext;
use baton_runtime::executor::{BlockStatus, RunReport, RunRequest, Services, run};
use baton_runtime::ledger::TriggerKind;
use baton_runtime::pipeline::{BlockDef, BlockFuture, BlockKind, Pipeline, Policy, Trigger};
use baton_runtime::prelude::*;
use futures::StreamExt;

const BATCHES: usize = 20;
const ROWS_PER_BATCH: usize = 1_000;

const NUMBERS: &[Column] = &[Column::required("n", BaseType::Int64)];

/// What one test asks of the blocks and what the sinks saw.
struct Scenario {
    /// The source fails after this many batches.
    fail_source_after: Option<usize>,
    /// The first attempt of `sink_a` fails (retryably) after its first batch.
    fail_sink_once: bool,
    /// `double` fails on the batch holding this value of `n`.
    fail_transform_on: Option<i64>,
    /// Batches the source has produced so far.
    produced: AtomicUsize,
    /// How many batches the source had produced when `sink_b` received its first one.
    produced_at_first_delivery: AtomicUsize,
    sink_a_attempts: AtomicUsize,
    /// Rows and sum of `n` each sink committed (after its input ended without error).
    committed: Mutex<HashMap<&'static str, (usize, i64)>>,
    sink_b_started: AtomicBool,
}

static SCENARIO: Mutex<Option<&'static Scenario>> = Mutex::new(None);
/// The tests share the one pipeline below, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn scenario() -> &'static Scenario {
    SCENARIO.lock().unwrap().expect("a test set the scenario")
}

fn numbers(ctx: RunContext) -> BlockFuture {
    let _ = ctx;
    Box::pin(async move {
        let scenario = scenario();
        let batches = futures::stream::iter(0..BATCHES).then(move |index| async move {
            // Yield, so that consumers get to run between batches as with a real parser.
            tokio::task::yield_now().await;
            if scenario.fail_source_after == Some(index) {
                return Err(BlockError::fatal(format!("bad row in batch {index}")));
            }
            scenario.produced.fetch_add(1, Ordering::SeqCst);
            let start = (index * ROWS_PER_BATCH) as i64;
            Ok(df!["n" => (start..start + ROWS_PER_BATCH as i64).collect::<Vec<i64>>()]?)
        });
        Ok(Some(Rows::batches(NUMBERS, batches)))
    })
}

fn double(_ctx: &RunContext, input: DataFrame) -> BlockResult<DataFrame> {
    if let Some(bad) = scenario().fail_transform_on
        && input
            .column("n")?
            .i64()?
            .into_no_null_iter()
            .any(|n| n == bad)
    {
        return Err(BlockError::fatal(format!(
            "check `n != {bad}` failed for 1 row"
        )));
    }
    Ok(input
        .lazy()
        .select([(col("n") * lit(2i64)).alias("n")])
        .collect()?)
}

/// A sink that commits what it read only once its input has ended without error, as the
/// table sink's transaction does.
async fn sink(name: &'static str, mut input: Rows) -> BlockResult<Option<Rows>> {
    let scenario = scenario();
    let first_attempt_of_a =
        name == "sink_a" && scenario.sink_a_attempts.fetch_add(1, Ordering::SeqCst) == 0;
    let (mut rows, mut sum) = (0usize, 0i64);
    while let Some(batch) = input.next_batch().await {
        let batch = batch?;
        if name == "sink_b" && !scenario.sink_b_started.swap(true, Ordering::SeqCst) {
            scenario
                .produced_at_first_delivery
                .store(scenario.produced.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        rows += batch.height();
        sum += batch.column("n")?.i64()?.sum().unwrap_or(0);
        if first_attempt_of_a && scenario.fail_sink_once {
            return Err(BlockError::retryable("the connection dropped"));
        }
    }
    scenario.committed.lock().unwrap().insert(name, (rows, sum));
    Ok(None)
}

fn run_block(index: usize, ctx: RunContext, mut inputs: Vec<Rows>) -> BlockFuture {
    match index {
        0 => numbers(ctx),
        1 => ctx.per_batch(inputs.remove(0), NUMBERS, double),
        2 => Box::pin(sink("sink_a", inputs.remove(0))),
        3 => Box::pin(sink("sink_b", inputs.remove(0))),
        _ => unreachable!(),
    }
}

const POLICY: Policy = Policy {
    retries: 2,
    retry_delay_ms: 10,
    max_retry_delay_ms: 10,
    timeout_ms: 60_000,
};

const fn block(
    name: &'static str,
    kind: BlockKind,
    inputs: &'static [usize],
    output: Option<&'static [Column]>,
) -> BlockDef {
    BlockDef {
        name,
        kind,
        line: 1,
        description: "",
        summary: "",
        inputs,
        after: &[],
        trigger: Trigger::AllSuccess,
        run_if: None,
        input: None,
        output,
        policy: POLICY,
        sink: None,
        callback: None,
        lineage: &[],
    }
}

static BLOCKS: [BlockDef; 4] = [
    block("numbers", BlockKind::HttpSource, &[], Some(NUMBERS)),
    block("double", BlockKind::Transform, &[0], Some(NUMBERS)),
    block("sink_a", BlockKind::TableSink, &[1], None),
    block("sink_b", BlockKind::LakeSink, &[1], None),
];

static PIPELINE: Pipeline = Pipeline {
    name: "streaming",
    description: "",
    owner: "",
    tags: &[],
    source_path: "runtime/tests/streaming.rs",
    source_hash: "test",
    git_commit: None,
    timeout_ms: None,
    limits: &[],
    schedule: None,
    sensor: None,
    partitions: None,
    params: &[],
    connections: &[],
    blocks: &BLOCKS,
    run_block,
};

/// How a test run checkpoints block outputs.
#[derive(Clone, Copy, PartialEq)]
enum Checkpointing {
    Kept,
    ForTheRunOnly,
    Off,
}

/// Runs the pipeline once under `scenario`, checkpointing as `checkpointing` says.
async fn run_with(
    scenario: Scenario,
    checkpointing: Checkpointing,
) -> (RunReport, &'static Scenario) {
    run_and_list_checkpoints(scenario, checkpointing).await.0
}

/// [`run_with`], and the files left in the checkpoint folder after the run.
async fn run_and_list_checkpoints(
    scenario: Scenario,
    checkpointing: Checkpointing,
) -> ((RunReport, &'static Scenario), Vec<std::path::PathBuf>) {
    let scenario: &'static Scenario = Box::leak(Box::new(scenario));
    *SCENARIO.lock().unwrap() = Some(scenario);
    let folder = tempfile::tempdir().unwrap();
    let services = Services {
        checkpoints: match checkpointing {
            Checkpointing::Kept => Some(Checkpoints::new(folder.path())),
            Checkpointing::ForTheRunOnly => Some(Checkpoints::for_the_run_only(folder.path())),
            Checkpointing::Off => None,
        },
        ..Services::default()
    };
    let report = run(
        &PIPELINE,
        RunRequest::full(None, HashMap::new(), TriggerKind::Run),
        &services,
    )
    .await
    .unwrap();
    let mut left = Vec::new();
    let mut folders = vec![folder.path().to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                left.push(path);
            }
        }
    }
    ((report, scenario), left)
}

fn plain() -> Scenario {
    Scenario {
        fail_source_after: None,
        fail_sink_once: false,
        fail_transform_on: None,
        produced: AtomicUsize::new(0),
        produced_at_first_delivery: AtomicUsize::new(0),
        sink_a_attempts: AtomicUsize::new(0),
        committed: Mutex::new(HashMap::new()),
        sink_b_started: AtomicBool::new(false),
    }
}

/// Rows and sum of `n` after `double`, for every batch.
fn expected() -> (usize, i64) {
    let rows = BATCHES * ROWS_PER_BATCH;
    (rows, 2 * (rows as i64 - 1) * rows as i64 / 2)
}

fn rows_of(report: &RunReport, block: &str) -> Option<usize> {
    report.block(block).and_then(|b| match b.status {
        BlockStatus::Succeeded { rows } => Some(rows),
        _ => None,
    })
}

/// Asserts that only a few batches were ahead of `sink_b` when it got its first: the rows
/// streamed, and the stream is bounded.
fn assert_streamed(scenario: &Scenario) {
    let ahead = scenario.produced_at_first_delivery.load(Ordering::SeqCst);
    assert!(
        ahead < BATCHES / 2,
        "{ahead} of {BATCHES} batches made first"
    );
}

/// Asserts that the run succeeded with `sink_a` on its second attempt (its first failed
/// mid-stream) and that both sinks committed every row.
fn assert_sink_a_retried_and_both_committed(report: &RunReport, scenario: &Scenario) {
    assert!(report.succeeded(), "{:?}", report.root_cause);
    assert_eq!(report.block("sink_a").unwrap().attempts, 2);
    let committed = scenario.committed.lock().unwrap().clone();
    assert_eq!(committed.get("sink_a"), Some(&expected()));
    assert_eq!(committed.get("sink_b"), Some(&expected()));
}

/// Asserts that the run failed at block `failed` with an error containing the given text, that
/// each block of `skipped` was skipped because the named input failed, and that no sink
/// committed anything.
fn assert_stopped(
    report: &RunReport,
    scenario: &Scenario,
    (failed, error_text): (&str, &str),
    skipped: &[(&str, &str)],
) {
    assert!(!report.succeeded());
    let status = |name: &str| report.block(name).unwrap().status.clone();
    assert!(
        matches!(&status(failed), BlockStatus::Failed { error } if error.contains(error_text)),
        "{failed}: {:?}",
        status(failed)
    );
    for (block, input) in skipped {
        let reason = format!("input `{input}` failed");
        assert!(
            matches!(&status(block), BlockStatus::Skipped { because } if *because == reason),
            "{block}: {:?}",
            status(block)
        );
    }
    assert!(scenario.committed.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_both_sinks_while_the_source_still_produces() {
    let _serial = SERIAL.lock().await;
    let (report, scenario) = run_with(plain(), Checkpointing::Kept).await;
    assert!(report.succeeded(), "{:?}", report.root_cause);
    let committed = scenario.committed.lock().unwrap().clone();
    assert_eq!(committed.get("sink_a"), Some(&expected()));
    assert_eq!(committed.get("sink_b"), Some(&expected()));
    for block in ["numbers", "double", "sink_a", "sink_b"] {
        assert_eq!(rows_of(&report, block), Some(expected().0), "{block}");
    }
    assert_streamed(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_retry_reads_the_rows_again_from_the_checkpoint() {
    let _serial = SERIAL.lock().await;
    let (report, scenario) = run_with(
        Scenario {
            fail_sink_once: true,
            ..plain()
        },
        Checkpointing::Kept,
    )
    .await;
    assert_sink_a_retried_and_both_committed(&report, scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_stream_stops_the_sinks_before_they_commit() {
    let _serial = SERIAL.lock().await;
    let (report, scenario) = run_with(
        Scenario {
            fail_source_after: Some(7),
            ..plain()
        },
        Checkpointing::Kept,
    )
    .await;
    assert_stopped(
        &report,
        scenario,
        ("numbers", "bad row in batch 7"),
        &[
            ("double", "numbers"),
            ("sink_a", "double"),
            ("sink_b", "double"),
        ],
    );
    assert!(
        report.root_cause.as_deref().unwrap().contains("bad row"),
        "{:?}",
        report.root_cause
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_checkpoints_the_rows_are_passed_whole() {
    let _serial = SERIAL.lock().await;
    let (report, scenario) = run_with(
        Scenario {
            fail_sink_once: true,
            ..plain()
        },
        Checkpointing::Off,
    )
    .await;
    assert!(report.succeeded(), "{:?}", report.root_cause);
    let committed = scenario.committed.lock().unwrap().clone();
    assert_eq!(committed.get("sink_a"), Some(&expected()));
    // Whole frames: every batch was made before a sink saw the first.
    assert_eq!(
        scenario.produced_at_first_delivery.load(Ordering::SeqCst),
        BATCHES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_for_the_run_only_let_rows_stream_and_retry_and_are_gone_after_it() {
    let _serial = SERIAL.lock().await;
    let ((report, scenario), left) = run_and_list_checkpoints(
        Scenario {
            fail_sink_once: true,
            ..plain()
        },
        Checkpointing::ForTheRunOnly,
    )
    .await;
    assert_sink_a_retried_and_both_committed(&report, scenario);
    assert_streamed(scenario);
    assert_eq!(left, Vec::<std::path::PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_checkpoints_outlive_the_run() {
    let _serial = SERIAL.lock().await;
    let ((report, _), left) = run_and_list_checkpoints(plain(), Checkpointing::Kept).await;
    assert!(report.succeeded(), "{:?}", report.root_cause);
    assert!(!left.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_of_a_transform_is_named_by_its_input_rows() {
    let _serial = SERIAL.lock().await;
    let (report, scenario) = run_with(
        Scenario {
            fail_transform_on: Some(7_500),
            ..plain()
        },
        Checkpointing::Kept,
    )
    .await;
    assert_stopped(
        &report,
        scenario,
        (
            "double",
            "input rows 7001 to 8000: check `n != 7500` failed",
        ),
        &[("sink_a", "double"), ("sink_b", "double")],
    );
}
