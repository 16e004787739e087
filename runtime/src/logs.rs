//! Run logs: the log lines a run writes, kept per run so that `serve`'s API and web UI can show
//! a block's logs next to its attempts.
//!
//! A `tracing` layer picks up every event inside a `run` span (which carries the run id) and
//! files it under that run, with the block whose span it was in. The executor takes a run's
//! lines when the run ends and stores them in the ledger; while a run goes, the API reads them
//! from memory. A run keeps at most [`MAX_LINES_PER_RUN`] lines, so a block that logs in a loop
//! cannot exhaust memory or the ledger.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber, span};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Lines kept per run; later lines are counted, not kept.
pub const MAX_LINES_PER_RUN: usize = 5_000;

/// One log line of a run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// Its order within the run, from 0.
    pub seq: i64,
    /// When it was written, milliseconds since the Unix epoch.
    pub at: i64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The block it was written in, if any.
    pub block: Option<String>,
    /// The message followed by its fields (`key=value`).
    pub message: String,
}

#[derive(Default)]
struct RunLines {
    lines: Vec<LogLine>,
    dropped: usize,
}

static LINES: LazyLock<Mutex<HashMap<String, RunLines>>> = LazyLock::new(Default::default);

/// The lines a run has written so far (a running run's, read by the API).
pub fn snapshot(run_id: &str) -> Vec<LogLine> {
    let lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
    lines
        .get(run_id)
        .map(|r| r.lines.clone())
        .unwrap_or_default()
}

/// Removes and returns a run's lines; when some were dropped over the limit, a last line
/// says how many.
pub fn take(run_id: &str) -> Vec<LogLine> {
    let taken = LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(run_id);
    let Some(RunLines { mut lines, dropped }) = taken else {
        return Vec::new();
    };
    if dropped > 0 {
        lines.push(LogLine {
            seq: lines.len() as i64,
            at: crate::ledger::now_ms(),
            level: "WARN".into(),
            block: None,
            message: format!(
                "{dropped} more lines were not kept (at most {MAX_LINES_PER_RUN} per run)"
            ),
        });
    }
    lines
}

/// The run id and block name a span carries, kept in the span's extensions.
#[derive(Default)]
struct SpanFields {
    run_id: Option<String>,
    block: Option<String>,
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "run_id" => self.run_id = Some(value.to_string()),
            "block" => self.block = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "run_id" => self.run_id = Some(format!("{value:?}").trim_matches('"').to_string()),
            "block" => self.block = Some(format!("{value:?}").trim_matches('"').to_string()),
            _ => {}
        }
    }
}

/// Formats an event as `message key=value ...`.
#[derive(Default)]
struct Message {
    text: String,
    fields: String,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// The layer that files events under their run. Install it with the process's subscriber.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureLayer;

impl<S> tracing_subscriber::Layer<S> for CaptureLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        if (fields.run_id.is_some() || fields.block.is_some())
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let mut run_id = None;
        let mut block = None;
        for span in scope {
            if let Some(fields) = span.extensions().get::<SpanFields>() {
                if block.is_none() {
                    block.clone_from(&fields.block);
                }
                if fields.run_id.is_some() {
                    run_id.clone_from(&fields.run_id);
                    break;
                }
            }
        }
        let Some(run_id) = run_id else {
            return;
        };
        let mut message = Message::default();
        event.record(&mut message);
        let mut lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
        let run = lines.entry(run_id).or_default();
        if run.lines.len() >= MAX_LINES_PER_RUN {
            run.dropped += 1;
            return;
        }
        run.lines.push(LogLine {
            seq: run.lines.len() as i64,
            at: crate::ledger::now_ms(),
            level: event.metadata().level().to_string(),
            block,
            message: format!("{}{}", message.text, message.fields),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::{info, info_span, warn};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_are_filed_under_their_run_and_block() {
        let subscriber = tracing_subscriber::registry().with(CaptureLayer);
        tracing::subscriber::with_default(subscriber, || {
            let run = info_span!("run", run_id = "logs-test-run");
            let _run = run.enter();
            info!("run started");
            let block = info_span!("block", block = "extract");
            let _block = block.enter();
            warn!(rows = 3, "short file");
        });
        info!("outside any run: not kept");
        let lines = take("logs-test-run");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].block, None);
        assert_eq!(lines[0].message, "run started");
        assert_eq!(lines[1].block.as_deref(), Some("extract"));
        assert_eq!(lines[1].level, "WARN");
        assert_eq!(lines[1].message, "short file rows=3");
        assert!(take("logs-test-run").is_empty(), "taking empties the run");
    }

    #[test]
    fn a_run_keeps_at_most_the_limit_and_says_how_many_it_dropped() {
        let subscriber = tracing_subscriber::registry().with(CaptureLayer);
        tracing::subscriber::with_default(subscriber, || {
            let run = info_span!("run", run_id = "logs-test-flood");
            let _run = run.enter();
            for i in 0..MAX_LINES_PER_RUN + 7 {
                info!(i, "line");
            }
        });
        let lines = take("logs-test-flood");
        assert_eq!(lines.len(), MAX_LINES_PER_RUN + 1);
        assert!(lines.last().unwrap().message.starts_with("7 more lines"));
    }
}
