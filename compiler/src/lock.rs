//! The schema lock: the pipeline checked against what `prepare` saw of the real sources and
//! tables (`pipelines/NAME.lock.json`), offline, at build time.
//!
//! A declared source column the file does not have, a declared type the file's values do not
//! have, a NOT NULL column the file has nulls in, or a schema that failed to read the file is an
//! error at the column's line in the TOML. A table sink whose existing table lacks a column the
//! pipeline writes is an error too (except in `replace` mode, which recreates the table).

use serde_json::Value as Json;

use crate::diagnostic::Diagnostic;
use crate::syntax::{Block, BlockKind, PipelineFile, WriteMode};
use crate::types::{BaseType, ColumnType};

/// Checks `file` against the lock; adds errors (E0024) and warnings (W0003).
pub fn check(
    file: &PipelineFile,
    lock_path: &str,
    lock_text: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let lock: Json = match serde_json::from_str(lock_text) {
        Ok(lock) => lock,
        Err(error) => {
            let span = file.pipeline.name.span.clone();
            diagnostics.push(
                Diagnostic::error(
                    "E0024",
                    format!("{lock_path} is not a valid lock file"),
                    span,
                    "the pipeline is checked against it",
                )
                .with_note(error.to_string())
                .with_help("run the pipeline binary's `prepare` to write it again"),
            );
            return;
        }
    };
    let prepared = lock["partition"]
        .as_str()
        .map(|p| format!("{lock_path}, prepared from partition {p}"))
        .unwrap_or_else(|| lock_path.to_string());
    for block in &file.blocks {
        match &block.kind {
            BlockKind::HttpSource(source) | BlockKind::FileSource(source) => {
                let entry = &lock["sources"][&block.name.value];
                if entry.is_null() {
                    diagnostics.push(not_locked(block, lock_path));
                    continue;
                }
                if let Some(error) = entry["declared_schema_reads_it"].as_str() {
                    diagnostics.push(
                        Diagnostic::error("E0024", format!("the declared schema of `{}` did not read its file", block.name.value), source.schema_span.clone(), "when `prepare` tried it")
                            .with_note(format!("{prepared}: {error}"))
                            .with_help("change the declared columns to what the file holds, then run `prepare` again"),
                    );
                }
                let columns = columns(entry);
                for declared in &source.schema {
                    let name = &declared.name.value;
                    let Some(observed) = columns.iter().find(|(n, _)| n == name).map(|(_, t)| t)
                    else {
                        let available = columns
                            .iter()
                            .map(|(n, _)| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        diagnostics.push(
                            Diagnostic::error(
                                "E0024",
                                format!(
                                    "the file of `{}` has no column `{name}`",
                                    block.name.value
                                ),
                                declared.name.span.clone(),
                                "not in the file",
                            )
                            .with_note(format!("{prepared}; the file's columns are: {available}"))
                            .with_help(
                                crate::diagnostic::did_you_mean(
                                    name,
                                    columns.iter().map(|(n, _)| n.as_str()),
                                )
                                .unwrap_or_else(|| "remove the column or fix its name".into()),
                            ),
                        );
                        continue;
                    };
                    if let Some(problem) = mismatch(declared.ty.value, observed) {
                        diagnostics.push(
                            Diagnostic::error(
                                "E0024",
                                format!(
                                    "column `{name}` is declared {} but the file holds {observed}",
                                    declared.ty.value
                                ),
                                declared.ty.span.clone(),
                                problem,
                            )
                            .with_note(prepared.clone())
                            .with_help(format!(
                                "declare it as the file has it (`{}`), or cast it in a transform",
                                suggestion(observed)
                            )),
                        );
                    }
                }
            }
            BlockKind::TableSink(sink) => {
                let entry = &lock["tables"][&block.name.value];
                if entry.is_null() {
                    diagnostics.push(not_locked(block, lock_path));
                    continue;
                }
                if sink.mode.value == WriteMode::Replace || entry["columns"].is_null() {
                    continue;
                }
                let table = columns(entry);
                let declared = sink.columns.iter().flatten();
                for column in declared {
                    if !table.iter().any(|(n, _)| *n == column.name.value) {
                        diagnostics.push(
                            Diagnostic::error("E0024", format!("table `{}` has no column `{}`", entry["table"].as_str().unwrap_or_default(), column.name.value), column.name.span.clone(), "the sink writes it")
                                .with_note(prepared.clone())
                                .with_help("add the column to the table (a migration), or write the table once with `mode = \"replace\"`"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    for section in ["sources", "tables"] {
        if let Some(entries) = lock[section].as_object() {
            for name in entries.keys() {
                if !file.blocks.iter().any(|b| b.name.value == *name) {
                    diagnostics.push(
                        Diagnostic::warning(
                            "W0003",
                            format!("{lock_path} has `{name}`, which the pipeline no longer has"),
                            file.pipeline.name.span.clone(),
                            "the lock is out of date",
                        )
                        .with_help("run the pipeline binary's `prepare` again"),
                    );
                }
            }
        }
    }
}

fn not_locked(block: &Block, lock_path: &str) -> Diagnostic {
    Diagnostic::warning(
        "W0003",
        format!("`{}` is not in {lock_path}", block.name.value),
        block.name.span.clone(),
        "not checked against the real source or table",
    )
    .with_help("run the pipeline binary's `prepare` to add it")
}

fn columns(entry: &Json) -> Vec<(String, String)> {
    entry["columns"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| Some((c[0].as_str()?.to_string(), c[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Why a declared type cannot read what the file holds (`int64`, `float64?`, `null`...).
fn mismatch(declared: ColumnType, observed: &str) -> Option<String> {
    let nullable = observed.ends_with('?');
    let base = observed.trim_end_matches('?');
    if base == "null" {
        // Empty in every sampled row: any type reads it, but only as nulls.
        return (!declared.nullable).then(|| "every sampled value is empty".to_string());
    }
    if nullable && !declared.nullable {
        return Some("the file has empty values, and the column is declared never null".into());
    }
    let fits = match declared.base {
        BaseType::String => true,
        BaseType::Int64 => base == "int64",
        BaseType::Float64 => matches!(base, "float64" | "int64"),
        BaseType::Bool => base == "bool",
        BaseType::Date => base == "date",
        BaseType::Timestamp => matches!(base, "timestamp" | "date"),
    };
    (!fits).then(|| format!("`{}` cannot read {base} values", declared.base.name()))
}

/// The declaration that reads what the file holds.
fn suggestion(observed: &str) -> String {
    let nullable = observed.ends_with('?');
    let base = match observed.trim_end_matches('?') {
        "null" => "string",
        other => other,
    };
    format!("{base}{}", if nullable { "?" } else { "" })
}
