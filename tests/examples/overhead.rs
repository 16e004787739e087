//! Orchestration overhead (issue 7): how long the executor takes to plan and run a pipeline of
//! N trivial blocks (each passes its input on), without a ledger and with the default SQLite
//! ledger, so that what Baton itself costs per block is measured apart from any data work.
//!
//!     cargo run --release -p baton-tests --example overhead -- 1000 5
//!
//! prints one JSON line: the block count and the median milliseconds of each setting. The
//! pipeline is built in memory (the runtime's own `Pipeline` type, as generated code declares
//! it), so no code generation or compile step is part of the measurement. bench/bench.py runs it
//! and reports the numbers in BENCHMARKS.md.

use std::collections::HashMap;
use std::time::Instant;

use baton_runtime::executor::{RunRequest, Services, run};
use baton_runtime::ledger::{Ledger, TriggerKind};
use baton_runtime::pipeline::{BlockDef, BlockFuture, BlockKind, Pipeline, Policy, Trigger};
use baton_runtime::prelude::{Column, DataFrame, Rows};

/// A block that passes its input on (the first block makes an empty frame).
fn pass_on(
    _index: usize,
    _ctx: baton_runtime::context::RunContext,
    inputs: Vec<Rows>,
) -> BlockFuture {
    Box::pin(async move {
        Ok(Some(
            inputs
                .into_iter()
                .next()
                .unwrap_or_else(|| Rows::from(DataFrame::default())),
        ))
    })
}

/// A chain of `blocks` trivial blocks, leaked to live as long as generated pipelines do.
fn chain(blocks: usize) -> &'static Pipeline {
    static SCHEMA: [Column; 0] = [];
    let definitions: Vec<BlockDef> = (0..blocks)
        .map(|index| BlockDef {
            name: Box::leak(format!("block_{index:04}").into_boxed_str()),
            kind: BlockKind::Transform,
            line: 0,
            description: "",
            summary: "passes its input on",
            inputs: if index == 0 {
                &[]
            } else {
                Box::leak(vec![index - 1].into_boxed_slice())
            },
            after: &[],
            trigger: Trigger::AllSuccess,
            run_if: None,
            input: (index > 0).then_some(&SCHEMA[..]),
            output: Some(&SCHEMA[..]),
            policy: Policy {
                retries: 0,
                retry_delay_ms: 1000,
                max_retry_delay_ms: 1000,
                timeout_ms: 60_000,
            },
            sink: None,
            callback: None,
            lineage: &[],
        })
        .collect();
    Box::leak(Box::new(Pipeline {
        name: "overhead",
        description: "trivial blocks",
        owner: "",
        tags: &[],
        source_path: "bench",
        source_hash: "overhead",
        git_commit: None,
        timeout_ms: None,
        limits: &[],
        schedule: None,
        sensor: None,
        partitions: None,
        params: &[],
        connections: &[],
        blocks: Box::leak(definitions.into_boxed_slice()),
        run_block: pass_on,
    }))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn time_runs(pipeline: &'static Pipeline, services: &Services, rounds: usize) -> f64 {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let report = run(
            pipeline,
            RunRequest::full(None, HashMap::new(), TriggerKind::Run),
            services,
        )
        .await
        .expect("the run starts");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(report.succeeded(), "{:?}", report.root_cause);
    }
    median(times)
}

/// `overhead once LEDGER`: a no-op pipeline as a process would run it: one trivial block,
/// recorded in the SQLite ledger at LEDGER, then exit. The benchmark times the whole process.
async fn once(ledger: &str) {
    let ledger = Ledger::open(&format!("sqlite://{ledger}"))
        .await
        .expect("a SQLite ledger");
    let services = Services {
        ledger: Some(ledger),
        ..Services::default()
    };
    time_runs(chain(1), &services, 1).await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("once") {
        once(args.get(2).expect("overhead once LEDGER_FILE")).await;
        return;
    }
    let blocks: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let pipeline = chain(blocks);
    let single = chain(1);
    let folder = tempfile::tempdir().expect("a temporary folder");
    let ledger = Ledger::open(&format!(
        "sqlite://{}",
        folder.path().join("ledger.db").display()
    ))
    .await
    .expect("a SQLite ledger");
    let bare = Services::default();
    let recorded = Services {
        ledger: Some(ledger),
        ..Services::default()
    };
    // One warm-up of each, so that first-use costs (migrations, allocations) are not counted.
    time_runs(pipeline, &bare, 1).await;
    time_runs(pipeline, &recorded, 1).await;
    let no_ledger = time_runs(pipeline, &bare, rounds).await;
    let sqlite_ledger = time_runs(pipeline, &recorded, rounds).await;
    let one_block = time_runs(single, &recorded, rounds).await;
    println!(
        "{{\"blocks\": {blocks}, \"rounds\": {rounds}, \"no_ledger_ms\": {no_ledger:.2}, \"sqlite_ledger_ms\": {sqlite_ledger:.2}, \"one_block_sqlite_ms\": {one_block:.2}}}"
    );
}
