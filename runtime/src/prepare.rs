//! `prepare`: what the pipeline's sources and target tables really look like, written to a
//! committed lock file (`pipelines/NAME.lock.json`), like `cargo sqlx prepare`. Builds stay
//! offline and check the pipeline against the lock; `prepare --check` (in CI, or on a schedule)
//! fails when the world has drifted from the lock, and says how.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value as Json, json};

use crate::executor::{BlockStatus, Directive, RunRequest, Services};
use crate::ledger::TriggerKind;
use crate::partition::Partition;
use crate::pipeline::{BlockKind, Pipeline, SinkDef};

/// What a source saw of one file.
#[derive(Clone, Debug)]
pub struct Observation {
    /// Where the file was read (passwords redacted).
    pub location: String,
    /// The file's columns as they are: name and `type?` text.
    pub columns: Vec<(String, String)>,
}

/// Reads every source once (for `partition`) and every target table's columns, and returns
/// the lock as JSON. Fails when a source cannot be fetched at all.
pub async fn observe(
    pipeline: &'static Pipeline,
    services: &Services,
    partition: Option<Partition>,
) -> Result<Json, String> {
    // Nothing of this is a run: no ledger rows, no checkpoints.
    let quiet = Services {
        resources: services.resources.clone(),
        ledger: None,
        checkpoints: None,
    };
    let mut sources = BTreeMap::new();
    for (index, block) in pipeline.blocks.iter().enumerate() {
        if !matches!(block.kind, BlockKind::HttpSource | BlockKind::FileSource) {
            continue;
        }
        let mut plan = vec![Directive::NotSelected; pipeline.blocks.len()];
        plan[index] = Directive::Run;
        let request = RunRequest {
            plan,
            ..RunRequest::full(partition, HashMap::new(), TriggerKind::Only)
        };
        quiet.resources.start_observing();
        let report = crate::executor::run(pipeline, request, &quiet)
            .await
            .map_err(|e| e.to_string())?;
        let observations = quiet.resources.take_observations();
        let outcome = &report.blocks[index].status;
        let Some(first) = observations.first() else {
            let error = match outcome {
                BlockStatus::Failed { error } => error.clone(),
                other => format!("{other:?}"),
            };
            return Err(format!("cannot read source `{}`: {error}", block.name));
        };
        // The declared schema either read the file, or the lock records why it did not.
        let parses = match outcome {
            BlockStatus::Failed { error } => Json::String(error.clone()),
            _ => Json::Bool(true),
        };
        sources.insert(
            block.name.to_string(),
            json!({
                "locations": observations.iter().map(|o| o.location.clone()).collect::<Vec<_>>(),
                "columns": columns_json(&first.columns),
                "declared_schema_reads_it": parses,
            }),
        );
    }
    let mut tables = BTreeMap::new();
    for block in pipeline.blocks {
        let Some(SinkDef::Table(target)) = block.sink else {
            continue;
        };
        let ctx = crate::context::RunContext::new(
            pipeline,
            "prepare".into(),
            partition,
            &HashMap::new(),
            services.resources.clone(),
            None,
        );
        let warehouse = ctx
            .warehouse(target.connection)
            .await
            .map_err(|e| format!("table sink `{}`: {e}", block.name))?;
        let columns = warehouse
            .existing_columns(target.schema, target.table)
            .await
            .map_err(|e| format!("table sink `{}`: {e}", block.name))?;
        let name = match target.schema {
            Some(schema) => format!("{schema}.{}", target.table),
            None => target.table.to_string(),
        };
        tables.insert(
            block.name.to_string(),
            json!({
                "table": name,
                "columns": columns.map(|c| columns_json(&c)),
            }),
        );
    }
    Ok(json!({
        "@generated": format!("by `{} prepare`: commit it. `cargo build` checks the pipeline against it; `{0} prepare --check` checks the sources and tables against it.", pipeline.name),
        "pipeline": pipeline.name,
        "partition": partition.map(|p| p.key()),
        "sources": sources,
        "tables": tables,
    }))
}

fn columns_json(columns: &[(String, String)]) -> Json {
    Json::Array(columns.iter().map(|(name, ty)| json!([name, ty])).collect())
}

/// The lock as it is written: pretty JSON with a final newline.
pub fn render(lock: &Json) -> String {
    let mut text = serde_json::to_string_pretty(lock).unwrap_or_default();
    text.push('\n');
    text
}

/// How the world (`now`) differs from the lock (`locked`), one line per difference.
pub fn drift(locked: &Json, now: &Json) -> Vec<String> {
    let mut out = Vec::new();
    for (section, what) in [("sources", "source"), ("tables", "table sink")] {
        let empty = serde_json::Map::new();
        let before = locked[section].as_object().unwrap_or(&empty);
        let after = now[section].as_object().unwrap_or(&empty);
        for (block, old) in before {
            let Some(new) = after.get(block) else {
                out.push(format!(
                    "{what} `{block}` is in the lock but not in the pipeline"
                ));
                continue;
            };
            let columns = |value: &Json| -> Vec<(String, String)> {
                value["columns"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| {
                                Some((c[0].as_str()?.to_string(), c[1].as_str()?.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (old_columns, new_columns) = (columns(old), columns(new));
            if old["columns"].is_null() != new["columns"].is_null() {
                out.push(format!(
                    "{what} `{block}`: the table {}",
                    if new["columns"].is_null() {
                        "no longer exists"
                    } else {
                        "exists now"
                    }
                ));
            }
            for (name, ty) in &old_columns {
                match new_columns.iter().find(|(n, _)| n == name) {
                    None => out.push(format!("{what} `{block}`: column `{name}` ({ty}) is gone")),
                    Some((_, now)) if now != ty => out.push(format!(
                        "{what} `{block}`: column `{name}` was {ty}, is now {now}"
                    )),
                    Some(_) => {}
                }
            }
            for (name, ty) in &new_columns {
                if !old_columns.iter().any(|(n, _)| n == name) {
                    out.push(format!("{what} `{block}`: column `{name}` ({ty}) is new"));
                }
            }
            let parses = |value: &Json| value["declared_schema_reads_it"].clone();
            if section == "sources" && parses(old) != parses(new) {
                out.push(match parses(new) {
                    Json::String(error) => format!(
                        "source `{block}`: the declared schema no longer reads the file: {error}"
                    ),
                    _ => format!("source `{block}`: the declared schema reads the file now"),
                });
            }
        }
        for block in after.keys() {
            if !before.contains_key(block) {
                out.push(format!("{what} `{block}` is not in the lock yet"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_names_every_change() {
        let locked = json!({
            "sources": { "extract": { "columns": [["a", "int64"], ["b", "string?"]], "declared_schema_reads_it": true } },
            "tables": { "load": { "table": "t", "columns": null } },
        });
        let now = json!({
            "sources": { "extract": { "columns": [["a", "float64"], ["c", "date"]], "declared_schema_reads_it": "column `a` is declared int64" } },
            "tables": { "load": { "table": "t", "columns": [["a", "bigint"]] } },
        });
        let drift = drift(&locked, &now);
        assert_eq!(
            drift,
            [
                "source `extract`: column `a` was int64, is now float64",
                "source `extract`: column `b` (string?) is gone",
                "source `extract`: column `c` (date) is new",
                "source `extract`: the declared schema no longer reads the file: column `a` is declared int64",
                "table sink `load`: the table exists now",
                "table sink `load`: column `a` (bigint) is new",
            ]
        );
        assert!(super::drift(&locked, &locked).is_empty());
    }
}
