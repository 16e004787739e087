//! Callback blocks: report how a run went, as a log line and optionally a webhook (Baton's JSON
//! or Slack's format) and an email, when their trigger rule fires (on failure, on success,
//! always).
//!
//! Failure alerts are de-duplicated per incident: while the pipeline's previous finished run
//! failed too, the log line is written but no webhook or email is sent, so a broken source does
//! not page someone once per scheduled run or per partition of a backfill. The first failure
//! after a success alerts again.

use std::time::Duration;

use polars::prelude::DataFrame;
use tracing::{error, info, warn};

use crate::context::{RunContext, redact};
use crate::error::{BlockError, BlockResult};
use crate::executor::BlockStatus;

/// What a callback block does.
#[derive(Clone, Copy, Debug)]
pub struct CallbackTarget {
    /// The message, with `{pipeline}`, `{partition}`, `{run_id}`, `{status}`,
    /// `{failed_blocks}` and `{error}` filled in.
    pub message: &'static str,
    /// The connection whose URL receives a POST, if any.
    pub webhook: Option<&'static str>,
    /// The webhook's body.
    pub format: WebhookFormat,
    /// The `smtp://` or `smtps://` connection that mails the message, if any.
    pub email: Option<&'static str>,
    /// Whether failure alerts are held back while the previous finished run failed too.
    pub dedupe: bool,
}

/// Webhook bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Baton's JSON: pipeline, version, run, partition, status, message, failed blocks.
    Json,
    /// `{"text": message}`, what Slack-compatible incoming webhooks take.
    Slack,
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
    if target.dedupe && !failed.is_empty() && incident_open(&ctx).await {
        return Ok(None);
    }
    // One key per callback block and channel: a retry after one channel failed sends only the
    // channels that have not delivered yet.
    let channel = |kind: &str| format!("{:p}/{kind}", target);
    if let Some(connection) = target.webhook
        && !ctx.delivered(&channel("webhook"))
    {
        let body = match target.format {
            WebhookFormat::Slack => serde_json::json!({ "text": message }),
            WebhookFormat::Json => serde_json::json!({
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
            }),
        };
        post_webhook(&ctx.connection_url(connection)?, &body).await?;
        ctx.mark_delivered(channel("webhook"));
    }
    if let Some(connection) = target.email
        && !ctx.delivered(&channel("email"))
    {
        let subject = format!(
            "[baton] {} {status}{}",
            ctx.pipeline().name,
            if partition.is_empty() {
                String::new()
            } else {
                format!(" for {partition}")
            }
        );
        send_email(&ctx.connection_url(connection)?, &subject, &message).await?;
        ctx.mark_delivered(channel("email"));
    }
    Ok(None)
}

/// Whether the pipeline's previous finished run failed too, so this failure belongs to an
/// incident already reported. Without a ledger, or when it cannot be read, the alert goes out:
/// a duplicate is better than silence.
async fn incident_open(ctx: &RunContext) -> bool {
    let Some(ledger) = ctx.ledger() else {
        return false;
    };
    match ledger
        .previous_finished_run(ctx.pipeline().name, ctx.run_id())
        .await
    {
        Ok(Some(previous)) if previous.status == "failed" => {
            info!(
                previous_run = %previous.run_id,
                "alert held back: the previous run failed too, so this incident was reported already"
            );
            true
        }
        Ok(_) => false,
        Err(error) => {
            warn!(%error, "cannot read the previous run; alerting anyway");
            false
        }
    }
}

/// POSTs a JSON body. A URL that resolves to nothing (`${ALERT_WEBHOOK_URL:-}` unset) switches
/// the webhook off, so one pipeline file serves both a laptop and production. A webhook answering
/// 5xx or 429, or not answering, is retryable; another non-2xx is not.
async fn post_webhook(url: &str, body: &serde_json::Value) -> BlockResult<()> {
    if url.trim().is_empty() {
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BlockError::fatal(format!("cannot build an HTTP client: {e}")))?;
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| {
            BlockError::retryable(format!("webhook {} did not answer: {e}", redact(url)))
        })?;
    let code = response.status();
    if code.is_success() {
        return Ok(());
    }
    Err(crate::http::status_error(
        code,
        format!("webhook {} answered {code}", redact(url)),
    ))
}

/// Mails `text` through the SMTP server of `url`:
/// `smtp://USER@HOST:PORT?from=baton@example.com&to=a@example.com,b@example.com`. `smtp://`
/// uses STARTTLS unless `tls=none`; `smtps://` is TLS from the start. The password comes from
/// the connection's `password` secret. An empty URL switches email off.
async fn send_email(url: &str, subject: &str, text: &str) -> BlockResult<()> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    if url.trim().is_empty() {
        return Ok(());
    }
    let shown = redact(url);
    let bad = |what: String| BlockError::fatal(format!("email connection {shown}: {what}"));
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| bad("no host".to_string()))?
        .to_string();
    let query = |key: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let tls = query("tls").unwrap_or_else(|| {
        if parsed.scheme() == "smtps" {
            "tls".to_string()
        } else {
            "starttls".to_string()
        }
    });
    let mut builder = match (parsed.scheme(), tls.as_str()) {
        ("smtp", "none") => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
        ("smtp", "starttls") => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
            .map_err(|e| bad(e.to_string()))?,
        ("smtps", _) | ("smtp", "tls") => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&host).map_err(|e| bad(e.to_string()))?
        }
        (scheme, tls) => {
            return Err(bad(format!(
                "use smtp:// or smtps:// with tls=none, starttls or tls (found {scheme}:// and tls={tls})"
            )));
        }
    };
    if let Some(port) = parsed.port() {
        builder = builder.port(port);
    }
    if !parsed.username().is_empty() {
        builder = builder.credentials(Credentials::new(
            parsed.username().to_string(),
            parsed.password().unwrap_or_default().to_string(),
        ));
    }
    let mailer = builder.timeout(Some(Duration::from_secs(30))).build();
    let from = query("from").ok_or_else(|| bad("no `from=` address".to_string()))?;
    let to = query("to").ok_or_else(|| bad("no `to=` addresses".to_string()))?;
    let mut message = Message::builder()
        .from(from.parse().map_err(|e| bad(format!("from: {e}")))?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for address in to.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        message = message.to(address.parse().map_err(|e| bad(format!("to: {e}")))?);
    }
    let message = message
        .body(text.to_string())
        .map_err(|e| bad(e.to_string()))?;
    mailer.send(message).await.map_err(|e| {
        let text = format!("email through {shown} failed: {e}");
        if e.is_permanent() {
            BlockError::fatal(text)
        } else {
            BlockError::retryable(text)
        }
    })?;
    Ok(())
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
