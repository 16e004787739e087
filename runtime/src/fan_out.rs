//! Fan-out: a source that reads one file per item (the days of a month, the hours of a day, a
//! fixed list), several at a time, and unions them into one frame.
//!
//! Items are read concurrently up to a limit. When some items fail, the block fails with every
//! failed item named; when the executor retries it, the items that were already read in this
//! run are taken from a per-run cache, so a retry fetches only what failed.

use std::future::Future;

use chrono::Duration;
use futures::StreamExt;
use polars::prelude::*;

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult, ErrorKind};

/// The items of a fan-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanOut {
    /// Every day of the run's monthly partition: `2021-01-01` ... `2021-01-31`.
    Days,
    /// Every hour of the run's daily partition: `2021-01-15T00` ... `2021-01-15T23`.
    Hours,
    /// A fixed list.
    Values(&'static [&'static str]),
}

/// The items for this run, in order.
pub fn fan_out_items(ctx: &RunContext, fan_out: FanOut) -> BlockResult<Vec<String>> {
    let (step, format) = match fan_out {
        FanOut::Values(values) => return Ok(values.iter().map(|v| (*v).to_string()).collect()),
        FanOut::Days => (Duration::days(1), "%Y-%m-%d"),
        FanOut::Hours => (Duration::hours(1), "%Y-%m-%dT%H"),
    };
    let partition = ctx.partition()?;
    let mut items = Vec::new();
    let mut at = partition.start_time();
    while at < partition.end_time() {
        items.push(at.format(format).to_string());
        at += step;
    }
    Ok(items)
}

/// Reads every item with `read`, at most `concurrency` at a time, and unions the frames in item
/// order, adding `item_column` (the item of each row) when given.
pub async fn read_each<F, Fut>(
    ctx: &RunContext,
    block: &'static str,
    items: Vec<String>,
    concurrency: usize,
    item_column: Option<&'static str>,
    read: F,
) -> BlockResult<DataFrame>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = BlockResult<DataFrame>>,
{
    let total = items.len();
    let results: Vec<(String, BlockResult<DataFrame>)> = futures::stream::iter(items)
        .map(|item| {
            let cached = ctx.cached_item(block, &item);
            let read = &read;
            async move {
                let result = match cached {
                    Some(frame) => Ok(frame),
                    None => read(item.clone()).await,
                };
                (item, result)
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let mut frames = Vec::with_capacity(total);
    let mut failures = Vec::new();
    for (item, result) in results {
        match result {
            Ok(frame) => {
                ctx.cache_item(block, &item, frame.clone());
                frames.push((item, frame));
            }
            Err(error) => failures.push((item, error)),
        }
    }
    if !failures.is_empty() {
        // Retrying helps only if every failure may go away; one fatal failure is final.
        let kind = if failures.iter().all(|(_, e)| e.kind == ErrorKind::Retryable) {
            ErrorKind::Retryable
        } else {
            ErrorKind::Fatal
        };
        let details: Vec<String> = failures
            .iter()
            .map(|(item, error)| format!("item {item}: {error}"))
            .collect();
        return Err(BlockError {
            kind,
            message: format!(
                "{} of {total} items failed ({} read)\n  {}",
                failures.len(),
                frames.len(),
                details.join("\n  ")
            ),
        });
    }
    ctx.forget_items(block);
    let mut union: Option<DataFrame> = None;
    for (item, mut frame) in frames {
        if let Some(column) = item_column {
            let values = Series::new(column.into(), vec![item.as_str(); frame.height()]);
            frame.with_column(values.into_column())?;
        }
        match &mut union {
            None => union = Some(frame),
            Some(union) => {
                union.vstack_mut(&frame)?;
            }
        }
    }
    let mut union = union.ok_or_else(|| BlockError::fatal("the fan-out has no items"))?;
    union.rechunk_mut();
    Ok(union)
}
