//! Text views of the ledger for the command line: the runs table, one run in detail, a
//! backfill plan and a checkpoint's rows.

use std::fmt::Write as _;
use std::time::Duration;

use polars::prelude::DataFrame;

use crate::cli::PlannedPartition;
use crate::executor::humanize;
use crate::ledger::{AttemptRecord, BlockRecord, RunRecord, format_ms};
use crate::pipeline::Pipeline;

fn duration_between(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(start), Some(end)) if end >= start => {
            humanize(Duration::from_millis((end - start) as u64))
        }
        _ => "-".into(),
    }
}

/// Shortens a message to one line of at most `width` characters.
fn one_line(text: &str, width: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= width && !text.contains('\n') {
        line.to_string()
    } else {
        let cut: String = line.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// `runs`: one line per run, newest first.
pub fn runs_table(runs: &[RunRecord]) -> String {
    let mut out = String::new();
    if runs.is_empty() {
        let _ = writeln!(out, "no runs recorded yet");
        return out;
    }
    let id_width = runs.iter().map(|r| r.run_id.len()).max().unwrap_or(6);
    let _ = writeln!(
        out,
        "{:<id_width$}  {:<13}  {:<9}  {:<8}  {:<23}  {:>8}  error",
        "run", "partition", "status", "trigger", "started", "time"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "{:<id_width$}  {:<13}  {:<9}  {:<8}  {:<23}  {:>8}  {}",
            run.run_id,
            run.partition.as_deref().unwrap_or("-"),
            run.status,
            run.trigger,
            format_ms(run.started_at),
            duration_between(Some(run.started_at), run.ended_at),
            one_line(run.error.as_deref().unwrap_or_default(), 80)
        );
    }
    out
}

/// `run-info`: the run, its blocks and every attempt.
pub fn run_info(
    pipeline: &Pipeline,
    run: &RunRecord,
    blocks: &[BlockRecord],
    attempts: &[AttemptRecord],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run        {}", run.run_id);
    let _ = writeln!(out, "pipeline   {}", run.pipeline);
    let _ = writeln!(
        out,
        "partition  {}",
        run.partition.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "status     {}", run.status);
    let _ = writeln!(out, "trigger    {}", run.trigger);
    if let Some(from) = &run.resumed_from {
        let _ = writeln!(out, "resumes    {from}");
    }
    let current = if run.version == pipeline.source_hash {
        " (this binary)"
    } else {
        " (not this binary's version)"
    };
    let _ = writeln!(out, "version    {}{current}", run.version);
    if let Some(commit) = &run.git_commit {
        let _ = writeln!(out, "commit     {commit}");
    }
    let _ = writeln!(out, "host       {} (pid {})", run.host, run.pid);
    let _ = writeln!(out, "started    {}", format_ms(run.started_at));
    if let Some(ended) = run.ended_at {
        let _ = writeln!(
            out,
            "ended      {} ({})",
            format_ms(ended),
            duration_between(Some(run.started_at), Some(ended))
        );
    }
    if run.params != "{}" {
        let _ = writeln!(out, "params     {}", run.params);
    }
    if let Some(error) = &run.error {
        let _ = writeln!(out, "error      {error}");
    }
    let width = blocks
        .iter()
        .map(|b| b.block.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "\n{:<width$}  {:<10}  {:>8}  {:>10}  {:>10}  {:>8}  note",
        "block", "status", "attempts", "rows in", "rows out", "time"
    );
    let count = |rows: Option<i64>| rows.map_or_else(|| "-".to_string(), |r| r.to_string());
    for block in blocks {
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {:>8}  {:>10}  {:>10}  {:>8}  {}",
            block.block,
            block.status,
            block.attempts,
            count(block.rows_in),
            count(block.rows_out),
            duration_between(block.started_at, block.ended_at),
            one_line(block.error.as_deref().unwrap_or_default(), 100)
        );
    }
    if !attempts.is_empty() {
        let _ = writeln!(out, "\nattempts");
        for attempt in attempts {
            let kind = match (attempt.status.as_str(), attempt.retryable) {
                ("succeeded", _) => String::new(),
                (_, true) => " (retryable)".into(),
                (_, false) => " (not retryable)".into(),
            };
            let _ = writeln!(
                out,
                "  {:<width$} #{:<2} {:<9} {:>8}  {}{kind}",
                attempt.block,
                attempt.attempt,
                attempt.status,
                duration_between(Some(attempt.started_at), Some(attempt.ended_at)),
                attempt.error.as_deref().unwrap_or_default()
            );
        }
    }
    out
}

/// `backfill --dry-run`: each partition, whether it would run and why.
pub(crate) fn backfill_plan_table(plan: &[PlannedPartition]) -> String {
    let mut out = String::new();
    for planned in plan {
        let _ = writeln!(
            out,
            "{:<14} {:<5} {}",
            planned.partition.key(),
            if planned.run { "run" } else { "skip" },
            planned.reason
        );
    }
    let runs = plan.iter().filter(|p| p.run).count();
    let _ = writeln!(
        out,
        "\n{runs} partition(s) would run, {} would be skipped",
        plan.len() - runs
    );
    out
}

/// `inspect`: where a checkpoint comes from, its schema and first rows.
pub fn inspect_view(
    block: &str,
    run_id: &str,
    path: &str,
    frame: &DataFrame,
    rows: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "block      {block}");
    let _ = writeln!(out, "run        {run_id}");
    let _ = writeln!(out, "checkpoint {path}");
    let _ = writeln!(out, "rows       {}", frame.height());
    let _ = writeln!(out, "\nschema");
    let schema = frame.schema();
    let width = schema.iter_names().map(|n| n.len()).max().unwrap_or(0);
    for (name, dtype) in schema.iter() {
        let nulls = frame
            .column(name)
            .map(|c| c.null_count())
            .unwrap_or_default();
        let _ = writeln!(out, "  {name:<width$}  {dtype}  ({nulls} nulls)");
    }
    let _ = writeln!(out, "\n{}", frame.head(Some(rows)));
    out
}
