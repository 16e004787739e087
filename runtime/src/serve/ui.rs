//! What the web UI reads beyond runs: the compiled pipeline (blocks, edges, schemas and column
//! lineage), a run's log lines, a preview of a block's checkpointed output, and the page itself.
//!
//! The page is one HTML file compiled into the binary: no Node at build or run time, no files
//! to deploy next to the binary, and it works offline.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use polars::prelude::{AnyValue, DataFrame};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use super::{ApiError, AppState, api_error, authorize, ledger, ledger_unavailable};
use crate::pipeline::{BlockDef, Column, Pipeline};

/// The single-page UI.
const PAGE: &str = include_str!("ui.html");

/// `GET /`: the UI.
pub(super) async fn root() -> Redirect {
    Redirect::temporary("/ui")
}

/// `GET /ui`: the page. It reads everything else through the API, with the token the user
/// gives it (kept in the browser's local storage) when the API is private or for triggers.
pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page loads nothing from elsewhere; say so, so that an injected script or
            // image could not phone home either.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /pipeline`: the compiled pipeline as the UI draws it.
pub(super) async fn pipeline(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers, false)?;
    Ok(Json(describe(state.pipeline)))
}

/// The pipeline's blocks, edges, schemas with lineage, schedule and partitioning.
pub fn describe(pipeline: &Pipeline) -> Json_ {
    let blocks: Vec<Json_> = pipeline.blocks.iter().map(block_json).collect();
    json!({
        "name": pipeline.name,
        "description": pipeline.description,
        "owner": pipeline.owner,
        "tags": pipeline.tags,
        "source_path": pipeline.source_path,
        "version": pipeline.source_hash,
        "git_commit": pipeline.git_commit,
        "schedule": pipeline.schedule.map(|s| json!({
            "cron": s.cron,
            "timezone": s.timezone,
            "sla_ms": s.sla_ms,
        })),
        "partitions": pipeline.partitions.map(|p| json!({
            "granularity": p.granularity.name(),
            "start": p.start,
        })),
        "blocks": blocks,
    })
}

fn block_json(block: &BlockDef) -> Json_ {
    let schema = |columns: Option<&'static [Column]>| {
        columns.map(|columns| {
            columns
                .iter()
                .map(|column| {
                    let from = block
                        .lineage
                        .iter()
                        .find(|(name, _)| *name == column.name)
                        .map(|(_, from)| *from);
                    json!({
                        "name": column.name,
                        "type": column.type_text(),
                        "from": from,
                    })
                })
                .collect::<Vec<_>>()
        })
    };
    json!({
        "name": block.name,
        "kind": block.kind.name(),
        "line": block.line,
        "description": block.description,
        "summary": block.summary,
        "inputs": block.inputs,
        "after": block.after,
        "trigger": block.trigger.name(),
        "output": schema(block.output),
        "input": schema(block.input),
        "retries": block.policy.retries,
        "timeout_ms": block.policy.timeout_ms,
    })
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    block: Option<String>,
}

/// `GET /runs/{run_id}/logs?block=NAME`: the run's log lines (of one block), from the ledger
/// once the run has ended, from memory while it goes.
pub(super) async fn logs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers, false)?;
    let ledger = ledger(&state)?;
    let stored = ledger
        .logs(&run_id, query.block.as_deref())
        .await
        .map_err(ledger_unavailable)?;
    let lines = if stored.is_empty() {
        crate::logs::snapshot(&run_id)
            .into_iter()
            .filter(|line| query.block.is_none() || line.block == query.block)
            .collect()
    } else {
        stored
    };
    Ok(Json(json!({ "run_id": run_id, "lines": lines })))
}

#[derive(Deserialize)]
pub(super) struct PreviewQuery {
    limit: Option<usize>,
}

/// `GET /runs/{run_id}/blocks/{block}/preview?limit=20`: the first rows of the block's
/// checkpointed output.
pub(super) async fn preview(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((run_id, block)): Path<(String, String)>,
    Query(query): Query<PreviewQuery>,
) -> Result<Json<Json_>, ApiError> {
    authorize(&state, &headers, false)?;
    let record = ledger(&state)?
        .blocks(&run_id)
        .await
        .map_err(ledger_unavailable)?
        .into_iter()
        .find(|b| b.block == block)
        .ok_or_else(|| {
            api_error(
                StatusCode::NOT_FOUND,
                format!("no block `{block}` in run `{run_id}`"),
            )
        })?;
    let Some(path) = record.checkpoint else {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            format!(
                "block `{block}` of run `{run_id}` has no checkpoint (sinks and failed blocks have none, and old ones are pruned)"
            ),
        ));
    };
    let limit = query.limit.unwrap_or(20).clamp(1, 500);
    // A source's checkpoint is its file, parsed with the block's compiled output columns.
    let columns = state
        .pipeline
        .blocks
        .iter()
        .find(|b| b.name == block)
        .and_then(|b| b.output)
        .unwrap_or_default();
    let frame = tokio::task::spawn_blocking(move || {
        crate::checkpoint::preview(std::path::Path::new(&path), limit, columns)
    })
    .await
    .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| api_error(StatusCode::NOT_FOUND, e.message))?;
    Ok(Json(frame_json(&frame)))
}

/// A frame as `{"columns": [...], "rows": [[...], ...]}`, values as JSON numbers, booleans,
/// strings (dates and times as text) or null.
pub fn frame_json(frame: &DataFrame) -> Json_ {
    let columns: Vec<&str> = frame
        .get_column_names()
        .iter()
        .map(|name| name.as_str())
        .collect();
    let rows: Vec<Vec<Json_>> = (0..frame.height())
        .map(|row| {
            frame
                .columns()
                .iter()
                .map(|column| match column.get(row) {
                    Ok(AnyValue::Null) | Err(_) => Json_::Null,
                    Ok(AnyValue::Boolean(b)) => json!(b),
                    Ok(AnyValue::Int64(v)) => json!(v),
                    Ok(AnyValue::Int32(v)) => json!(v),
                    Ok(AnyValue::Float64(v)) => json!(v),
                    Ok(AnyValue::Float32(v)) => json!(v),
                    Ok(AnyValue::String(s)) => json!(s),
                    Ok(AnyValue::StringOwned(s)) => json!(s.as_str()),
                    Ok(other) => json!(other.to_string()),
                })
                .collect()
        })
        .collect();
    json!({ "columns": columns, "rows": rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn frames_become_rows_of_json_values() {
        let frame = df!(
            "id" => [Some(1i64), None],
            "name" => ["a", "b\"c"],
            "fare" => [1.5f64, 2.0],
            "paid" => [true, false],
        )
        .unwrap();
        assert_eq!(
            frame_json(&frame),
            json!({
                "columns": ["id", "name", "fare", "paid"],
                "rows": [[1, "a", 1.5, true], [null, "b\"c", 2.0, false]],
            })
        );
    }
}
