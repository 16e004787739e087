//! Data checks (data tests) on a block's output.

use polars::prelude::*;
use tracing::warn;

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};

/// Whether a failing check fails the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckSeverity {
    /// The block fails, so nothing downstream (no sink) runs.
    Fail,
    /// A warning is logged.
    Warn,
}

/// A compiled check.
#[derive(Clone, Copy, Debug)]
pub struct CheckDef {
    /// What is checked, as written.
    pub name: &'static str,
    /// `pipelines/x.toml:LINE`.
    pub location: &'static str,
    /// Fail or warn.
    pub severity: CheckSeverity,
}

/// How many failing rows are shown in a check's message.
const SAMPLE_ROWS: usize = 5;

/// Counts the rows of `frame` for which `predicate` is not true (false or null). Returns an error
/// naming the check, the count and a sample of failing rows when the check's severity is `Fail`.
pub fn run_check(
    ctx: &RunContext,
    frame: &DataFrame,
    check: &CheckDef,
    predicate: Expr,
) -> BlockResult<()> {
    let failing = frame
        .clone()
        .lazy()
        .filter(predicate.fill_null(lit(false)).not())
        .collect()?;
    let count = failing.height();
    if count == 0 {
        return Ok(());
    }
    let sample = failing.head(Some(SAMPLE_ROWS));
    let partition = ctx
        .partition_opt()
        .map(|p| format!(" in partition {p}"))
        .unwrap_or_default();
    let message = format!(
        "check `{}` ({}) failed for {count} of {} rows{partition}; first failing rows:\n{sample}",
        check.name,
        check.location,
        frame.height()
    );
    match check.severity {
        CheckSeverity::Fail => Err(BlockError::fatal(message)),
        CheckSeverity::Warn => {
            warn!(check = check.name, failing = count, "{message}");
            ctx.record_check_warning(
                &format!("check `{}` ({})", check.name, check.location),
                count,
                frame.height(),
            );
            Ok(())
        }
    }
}
