//! Callback blocks: report how a run went, as a log line and optionally a webhook (Baton's JSON
//! or Slack's format) and an email, on the event they are for: a failure, a success, any end,
//! a recovery (success after a failure), data-check warnings, or, sent by `serve` outside any
//! run, a scheduled run that missed its SLA.
//!
//! Failure alerts are de-duplicated per incident: while the pipeline's previous finished run
//! failed too, the log line is written but no webhook or email is sent, so a broken source does
//! not page someone once per scheduled run or per partition of a backfill. The first failure
//! after a success alerts again, and a `recovery` callback says when the incident is over.

use std::time::Duration;

use polars::prelude::DataFrame;
use tracing::{error, info, warn};

use crate::context::{RunContext, redact};
use crate::error::{BlockError, BlockResult};
use crate::executor::BlockStatus;

/// What a callback reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackEvent {
    /// A block it watches failed (retries exhausted or a fatal error).
    Failure,
    /// Every block it watches succeeded.
    Success,
    /// The blocks it watches ended, however.
    Always,
    /// Every block it watches succeeded and the pipeline's previous finished run had failed.
    Recovery,
    /// A data check with `severity = "warn"` found failing rows.
    Warning,
    /// A scheduled run missed the schedule's SLA: sent by `serve`, never run within a run.
    Sla,
}

/// What a callback block does.
#[derive(Clone, Copy, Debug)]
pub struct CallbackTarget {
    /// What it reports on.
    pub event: CallbackEvent,
    /// The message, with the [`PLACEHOLDERS`] filled in.
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
pub const PLACEHOLDERS: [&str; 8] = [
    "pipeline",
    "partition",
    "run_id",
    "status",
    "failed_blocks",
    "error",
    "warnings",
    "run_url",
];

/// The page of a run in `serve`'s web UI, when `BATON_UI_URL` says where the UI is (for
/// example `https://baton.example.com`); empty otherwise.
pub fn run_url(run_id: &str) -> String {
    match std::env::var("BATON_UI_URL") {
        Ok(base) if !base.trim().is_empty() => {
            format!("{}/ui#run={run_id}", base.trim().trim_end_matches('/'))
        }
        _ => String::new(),
    }
}

/// What one report says.
struct Report<'a> {
    status: &'a str,
    failed: Vec<(&'a str, &'a str)>,
    error: String,
    warnings: Vec<String>,
}

/// Sends the run's report on the callback's event: always a log line, and a webhook POST or an
/// email when configured. A recovery callback stays silent unless the previous finished run
/// failed, a warning callback unless a data check warned. A webhook answering 5xx or 429, or
/// not answering, is retryable; another non-2xx is not.
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
    let warnings = ctx.warnings();
    let status = match target.event {
        CallbackEvent::Recovery => {
            if !previous_run_failed(&ctx).await {
                return Ok(None);
            }
            "recovered"
        }
        CallbackEvent::Warning => {
            if warnings.is_empty() {
                return Ok(None);
            }
            "warned"
        }
        _ if failed.is_empty() => "succeeded",
        _ => "failed",
    };
    let error = failed
        .first()
        .map(|(_, e)| e.to_string())
        .unwrap_or_default();
    let report = Report {
        status,
        failed,
        error,
        warnings,
    };
    deliver(&ctx, target, &report).await?;
    Ok(None)
}

/// Reports that the scheduled run `ctx` stands for has not finished `late_by` after its tick.
/// `serve` calls it for each `on = "sla"` callback.
pub async fn notify_sla(
    ctx: RunContext,
    target: &'static CallbackTarget,
    late_by: Duration,
) -> BlockResult<()> {
    let report = Report {
        status: "missed its SLA",
        failed: Vec::new(),
        error: format!(
            "not finished {} after its scheduled time",
            crate::executor::humanize(late_by)
        ),
        warnings: Vec::new(),
    };
    deliver(&ctx, target, &report).await
}

/// Logs the message and sends it on the callback's channels.
async fn deliver(
    ctx: &RunContext,
    target: &'static CallbackTarget,
    report: &Report<'_>,
) -> BlockResult<()> {
    let Report {
        status,
        failed,
        error,
        warnings,
    } = report;
    let partition = ctx.partition_opt().map(|p| p.key()).unwrap_or_default();
    let failed_names: Vec<&str> = failed.iter().map(|(name, _)| *name).collect();
    let link = run_url(ctx.run_id());
    let message = fill(target.message, |name| match name {
        "pipeline" => Some(ctx.pipeline().name.to_string()),
        "partition" => Some(partition.clone()),
        "run_id" => Some(ctx.run_id().to_string()),
        "status" => Some(status.to_string()),
        "failed_blocks" => Some(failed_names.join(", ")),
        "error" => Some(error.clone()),
        "warnings" => Some(warnings.join("; ")),
        "run_url" => Some(link.clone()),
        _ => None,
    });
    if failed.is_empty() && target.event != CallbackEvent::Sla {
        info!(callback = %message, "callback");
    } else {
        error!(callback = %message, "callback");
    }
    let status = *status;
    if target.dedupe && !failed.is_empty() && incident_open(ctx).await {
        return Ok(());
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
                "event": format!("{:?}", target.event).to_lowercase(),
                "message": message,
                "run_url": (!link.is_empty()).then_some(link.as_str()),
                "warnings": warnings,
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
    Ok(())
}

/// Whether the pipeline's previous finished run failed: what makes this success a recovery.
/// When the ledger cannot tell, no recovery is announced.
async fn previous_run_failed(ctx: &RunContext) -> bool {
    let Some(ledger) = ctx.ledger() else {
        return false;
    };
    match ledger
        .previous_finished_run(ctx.pipeline().name, ctx.run_id())
        .await
    {
        Ok(previous) => previous.is_some_and(|run| run.status == "failed"),
        Err(error) => {
            warn!(%error, "cannot read the previous run; no recovery message");
            false
        }
    }
}

/// Whether the pipeline's previous finished run failed too, so this failure belongs to an
/// incident already reported. Without a ledger, or when it cannot be read, the alert goes out:
/// a duplicate is better than silence.
async fn incident_open(ctx: &RunContext) -> bool {
    let open = previous_run_failed(ctx).await;
    if open {
        info!(
            "alert held back: the previous run failed too, so this incident was reported already"
        );
    }
    open
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
