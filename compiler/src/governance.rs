//! Data governance: columns a source tags as personal data (`pii = [...]`) may reach only sinks
//! that say they may hold it (`pii_allowed = true`), followed through every rename, selection
//! and derivation by the column lineage. A column derived from an e-mail address is personal
//! data too.

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::ir::Pipeline;
use crate::lineage::{Origin, lineage};
use crate::syntax::PipelineFile;

/// Checks where personal data flows; adds errors (E0025).
pub fn check(file: &PipelineFile, pipeline: &Pipeline, diagnostics: &mut Vec<Diagnostic>) {
    // Tags are declared on sources, against their declared columns.
    let mut tagged: Vec<(String, String)> = Vec::new();
    for block in &file.blocks {
        let source = block.kind.source();
        for column in &block.pii {
            match source {
                None => diagnostics.push(
                    Diagnostic::error("E0025", "`pii` tags the columns of a source", column.span.clone(), "not a source")
                        .with_help("tag personal data where it enters the pipeline: on the source block that reads it"),
                ),
                Some(source) if !source.schema.iter().any(|c| c.name.value == column.value) => {
                    diagnostics.push(
                        Diagnostic::error("E0008", format!("unknown column `{}`", column.value), column.span.clone(), "not a column of this source")
                            .with_optional_help(did_you_mean(&column.value, source.schema.iter().map(|c| c.name.value.as_str()))),
                    );
                }
                Some(_) => tagged.push((block.name.value.clone(), column.value.clone())),
            }
        }
        if let Some(allowed) = &block.pii_allowed
            && !block.kind.is_sink()
        {
            diagnostics.push(
                Diagnostic::error(
                    "E0025",
                    "`pii_allowed` is a property of sinks",
                    allowed.span.clone(),
                    "not a sink",
                )
                .with_help("set it on the table or lake sink that may store personal data"),
            );
        }
    }
    if tagged.is_empty() {
        return;
    }
    let lineages = lineage(pipeline);
    for (index, block) in pipeline.blocks.iter().enumerate() {
        if !block.op.is_sink() {
            continue;
        }
        let Some(declared) = file.blocks.iter().find(|b| b.name.value == block.name) else {
            continue;
        };
        if declared.pii_allowed.as_ref().is_some_and(|a| a.value) {
            continue;
        }
        let flowing = &lineages[index];
        for (column, origins) in flowing {
            for origin in origins {
                let Origin::Column {
                    block: source,
                    column: source_column,
                } = origin
                else {
                    continue;
                };
                if !tagged
                    .iter()
                    .any(|(b, c)| b == source && c == source_column)
                {
                    continue;
                }
                let via = if column == source_column {
                    format!("`{column}`")
                } else {
                    format!("`{column}`, made from `{source}.{source_column}`,")
                };
                diagnostics.push(
                    Diagnostic::error("E0025", format!("personal data reaches sink `{}`", block.name), declared.name.span.clone(), format!("{via} is written here"))
                        .with_note(format!("`{source}.{source_column}` is tagged `pii` on source `{source}`"))
                        .with_help("drop or mask the column before the sink, or set `pii_allowed = true` on the sink if it may store personal data"),
                );
            }
        }
    }
}
