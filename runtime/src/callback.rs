//! Callback blocks: report how a run went, as a log line and optionally a JSON webhook, when
//! their trigger rule fires (on failure, on success, always). Alerting channels build on this.

use std::time::Duration;

use polars::prelude::DataFrame;
use tracing::{error, info};

use crate::context::{RunContext, redact};
use crate::error::{BlockError, BlockResult};
use crate::executor::BlockStatus;

/// What a callback block does.
#[derive(Clone, Copy, Debug)]
pub struct CallbackTarget {
    /// The message, with `{pipeline}`, `{partition}`, `{run_id}`, `{status}`,
    /// `{failed_blocks}` and `{error}` filled in.
    pub message: &'static str,
    /// The connection whose URL receives a JSON POST, if any.
    pub webhook: Option<&'static str>,
}

/// The placeholders a callback message may use.
pub const PLACEHOLDERS: [&str; 6] = [
    "pipeline",
    "partition",
    "run_id",
    "status",
    "failed_blocks",
    "error",
];

/// Sends the run's report: always a log line, and a webhook POST when one is configured.
/// A webhook answering 5xx or 429, or not answering, is retryable; another non-2xx is not.
pub async fn notify(
    ctx: RunContext,
    target: &'static CallbackTarget,
) -> BlockResult<Option<DataFrame>> {
    let outcomes = ctx.outcomes();
    let failed: Vec<(&str, &str)> = outcomes
        .iter()
        .filter_map(|o| match &o.status {
            BlockStatus::Failed { error } => Some((o.name, error.as_str())),
            _ => None,
        })
        .collect();
    let status = if failed.is_empty() {
        "succeeded"
    } else {
        "failed"
    };
    let partition = ctx.partition_opt().map(|p| p.key()).unwrap_or_default();
    let failed_names: Vec<&str> = failed.iter().map(|(name, _)| *name).collect();
    let first_error = failed.first().map(|(_, e)| *e).unwrap_or_default();
    let message = fill(target.message, |name| match name {
        "pipeline" => Some(ctx.pipeline().name.to_string()),
        "partition" => Some(partition.clone()),
        "run_id" => Some(ctx.run_id().to_string()),
        "status" => Some(status.to_string()),
        "failed_blocks" => Some(failed_names.join(", ")),
        "error" => Some(first_error.to_string()),
        _ => None,
    });
    if failed.is_empty() {
        info!(callback = %message, "callback");
    } else {
        error!(callback = %message, "callback");
    }
    let Some(connection) = target.webhook else {
        return Ok(None);
    };
    let url = ctx.connection_url(connection)?;
    // A webhook whose URL resolves to nothing (`${ALERT_WEBHOOK_URL:-}` unset) is switched off,
    // so one pipeline file serves both a laptop and production.
    if url.trim().is_empty() {
        return Ok(None);
    }
    let body = serde_json::json!({
        "pipeline": ctx.pipeline().name,
        "version": ctx.pipeline().source_hash,
        "run_id": ctx.run_id(),
        "partition": ctx.partition_opt().map(|p| p.key()),
        "status": status,
        "message": message,
        "failed_blocks": failed
            .iter()
            .map(|(block, error)| serde_json::json!({ "block": block, "error": error }))
            .collect::<Vec<_>>(),
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BlockError::fatal(format!("cannot build an HTTP client: {e}")))?;
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| {
            BlockError::retryable(format!("webhook {} did not answer: {e}", redact(&url)))
        })?;
    let code = response.status();
    if code.is_success() {
        Ok(None)
    } else {
        let message = format!("webhook {} answered {code}", redact(&url));
        if code.is_server_error() || code.as_u16() == 429 {
            Err(BlockError::retryable(message))
        } else {
            Err(BlockError::fatal(message))
        }
    }
}

/// Replaces `{name}` placeholders; unknown names are left as written.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| Some((close, value(&after[..close])?)))
        {
            Some((close, text)) => {
                out.push_str(&text);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::fill;

    #[test]
    fn fills_known_placeholders_only() {
        let text = fill("{pipeline} [{partition}] {unknown} {", |name| match name {
            "pipeline" => Some("p".into()),
            "partition" => Some("2021-01".into()),
            _ => None,
        });
        assert_eq!(text, "p [2021-01] {unknown} {");
    }
}
