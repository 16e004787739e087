//! Runs one partition of a pipeline: blocks in dependency order, independent blocks at the same
//! time, with retries (retryable errors only), exponential backoff and a timeout per attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use polars::prelude::DataFrame;
use tracing::{Instrument, error, info, info_span, warn};

use crate::context::{Resources, RunContext, Value};
use crate::error::{BlockError, ErrorKind};
use crate::partition::Partition;
use crate::pipeline::Pipeline;

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
    /// It did not run because an input failed or was skipped.
    Skipped {
        /// Which input.
        because: String,
    },
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
}

impl RunReport {
    /// Whether every block succeeded.
    pub fn succeeded(&self) -> bool {
        self.blocks
            .iter()
            .all(|b| matches!(b.status, BlockStatus::Succeeded { .. }))
    }
}

enum State {
    Pending,
    Running,
    Done(Option<DataFrame>),
    Failed,
    Skipped,
}

/// Runs every block of `pipeline` for one partition.
pub async fn run(
    pipeline: &'static Pipeline,
    partition: Option<Partition>,
    params: &HashMap<String, Value>,
    resources: Arc<Resources>,
) -> RunReport {
    let started = Instant::now();
    let run_id = format!(
        "{}-{}-{}",
        pipeline.name,
        partition.map_or_else(|| "all".to_string(), |p| p.key()),
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    );
    let ctx = RunContext::new(pipeline, run_id.clone(), partition, params, resources);
    let blocks = pipeline.blocks;
    let mut state: Vec<State> = blocks.iter().map(|_| State::Pending).collect();
    let mut outcomes: Vec<Option<BlockOutcome>> = vec![None; blocks.len()];
    // A frame is dropped as soon as its last consumer has started, so memory holds only what
    // is still needed.
    let mut consumers_left: Vec<usize> = (0..blocks.len())
        .map(|b| {
            blocks
                .iter()
                .filter(|other| other.inputs.contains(&b))
                .count()
        })
        .collect();
    let mut running = FuturesUnordered::new();
    let span = info_span!("run", pipeline = pipeline.name, partition = %partition.map(|p| p.key()).unwrap_or_default());
    async {
        info!(run_id = %run_id, version = pipeline.source_hash, "run started");
        loop {
            for (index, block) in blocks.iter().enumerate() {
                if !matches!(state[index], State::Pending) {
                    continue;
                }
                if let Some(&bad) = block
                    .inputs
                    .iter()
                    .find(|&&i| matches!(state[i], State::Failed | State::Skipped))
                {
                    state[index] = State::Skipped;
                    outcomes[index] = Some(BlockOutcome {
                        name: block.name,
                        status: BlockStatus::Skipped {
                            because: format!("input `{}` did not succeed", blocks[bad].name),
                        },
                        attempts: 0,
                        elapsed: Duration::ZERO,
                    });
                    continue;
                }
                if !block
                    .inputs
                    .iter()
                    .all(|&i| matches!(state[i], State::Done(_)))
                {
                    continue;
                }
                let mut inputs = Vec::with_capacity(block.inputs.len());
                for &input in block.inputs {
                    consumers_left[input] -= 1;
                    let frame = match &mut state[input] {
                        State::Done(frame) if consumers_left[input] == 0 => frame.take(),
                        State::Done(frame) => frame.clone(),
                        _ => None,
                    };
                    inputs.push(
                        frame.expect("a finished non-sink block has an output for each consumer"),
                    );
                }
                state[index] = State::Running;
                running.push(run_block_with_retries(pipeline, index, ctx.clone(), inputs));
            }
            let Some((index, result, attempts, elapsed)) = running.next().await else {
                break;
            };
            let block = &blocks[index];
            let status = match result {
                Ok((output, rows)) => {
                    state[index] = State::Done(output);
                    BlockStatus::Succeeded { rows }
                }
                Err(error) => {
                    error!(block = block.name, attempts, "block failed: {error}");
                    state[index] = State::Failed;
                    BlockStatus::Failed {
                        error: error.message,
                    }
                }
            };
            outcomes[index] = Some(BlockOutcome {
                name: block.name,
                status,
                attempts,
                elapsed,
            });
        }
    }
    .instrument(span)
    .await;
    let report = RunReport {
        run_id,
        partition,
        blocks: outcomes
            .into_iter()
            .map(|o| o.expect("every block ends succeeded, failed or skipped"))
            .collect(),
        elapsed: started.elapsed(),
    };
    if report.succeeded() {
        info!(run_id = %report.run_id, elapsed_ms = report.elapsed.as_millis() as u64, "run succeeded");
    } else {
        error!(run_id = %report.run_id, "run failed");
    }
    report
}

/// Runs one block until it succeeds, fails with a non-retryable error or runs out of retries.
async fn run_block_with_retries(
    pipeline: &'static Pipeline,
    index: usize,
    ctx: RunContext,
    inputs: Vec<DataFrame>,
) -> (
    usize,
    Result<(Option<DataFrame>, usize), BlockError>,
    u32,
    Duration,
) {
    let block = &pipeline.blocks[index];
    let policy = block.policy;
    let rows_in: usize = inputs.iter().map(DataFrame::height).sum();
    let started = Instant::now();
    let span = info_span!("block", block = block.name);
    async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let attempt_started = Instant::now();
            let future = (pipeline.run_block)(index, ctx.clone(), inputs.clone());
            let result = match tokio::time::timeout(
                Duration::from_millis(policy.timeout_ms),
                future,
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(BlockError::retryable(format!(
                    "timed out after {}",
                    humanize(Duration::from_millis(policy.timeout_ms))
                ))),
            };
            match result {
                Ok(output) => {
                    let rows_out = output.as_ref().map(DataFrame::height);
                    info!(
                        attempt,
                        rows_in,
                        rows_out = rows_out.unwrap_or(rows_in),
                        elapsed_ms = attempt_started.elapsed().as_millis() as u64,
                        "block succeeded"
                    );
                    // A sink has no output; its row count is what it wrote.
                    return (
                        index,
                        Ok((output, rows_out.unwrap_or(rows_in))),
                        attempt,
                        started.elapsed(),
                    );
                }
                Err(error) if error.kind == ErrorKind::Retryable && attempt <= policy.retries => {
                    let delay = backoff(policy.retry_delay_ms, attempt);
                    warn!(attempt, retry_in = %humanize(delay), "retryable error: {error}");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    let error = if attempt > 1 {
                        error.context(format!("after {attempt} attempts"))
                    } else {
                        error
                    };
                    return (
                        index,
                        Err(error.context(format!(
                            "block `{}` ({}:{})",
                            block.name, pipeline.source_path, block.line
                        ))),
                        attempt,
                        started.elapsed(),
                    );
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Exponential backoff: the first delay, doubled per attempt, capped at five minutes, with up to
/// a quarter of random-looking jitter so replicas retrying together spread out.
fn backoff(first_ms: u64, attempt: u32) -> Duration {
    const MAX_MS: u64 = 300_000;
    let base = first_ms
        .saturating_mul(1u64 << (attempt - 1).min(20))
        .min(MAX_MS);
    let jitter_source = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let jitter = if base >= 4 {
        jitter_source % (base / 4)
    } else {
        0
    };
    Duration::from_millis(base + jitter)
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
    fn backoff_doubles_and_is_capped() {
        for attempt in 1..=4 {
            let delay = backoff(1_000, attempt).as_millis() as u64;
            let base = 1_000 * (1 << (attempt - 1));
            assert!(
                delay >= base && delay < base + base / 4 + 1,
                "attempt {attempt}: {delay}"
            );
        }
        assert!(backoff(1_000, 40).as_millis() as u64 <= 300_000 + 75_000);
    }
}
