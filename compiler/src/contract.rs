//! Sink contracts: what each sink writes, compared between two versions of a pipeline so that
//! a reviewer sees whether a change breaks the readers of a table or file. Dropping a column,
//! changing its type, letting it hold nulls, or changing where or how a sink writes is
//! breaking; adding a column or ruling out nulls is compatible.

use std::fmt;

use crate::emit::summary;
use crate::ir::{Pipeline, Schema};

/// What one sink writes: where and how, and the columns flowing in.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkContract {
    /// The sink block's name.
    pub sink: String,
    /// Where and how it writes, in words (`write table green_taxi on {warehouse} (replace)`).
    pub target: String,
    /// The columns it writes.
    pub columns: Schema,
}

/// The contracts of every sink of a pipeline, in block order.
pub fn contracts(pipeline: &Pipeline) -> Vec<SinkContract> {
    pipeline
        .blocks
        .iter()
        .filter(|block| block.op.is_sink())
        .map(|block| SinkContract {
            sink: block.name.clone(),
            target: summary(block),
            columns: block
                .inputs
                .first()
                .and_then(|&i| pipeline.blocks[i].output.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// How a change affects a sink's readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Impact {
    /// Readers of the old output keep working.
    Compatible,
    /// Readers of the old output may break.
    Breaking,
}

/// One difference between two versions of a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkChange {
    /// The sink block.
    pub sink: String,
    /// Breaking or compatible.
    pub impact: Impact,
    /// What changed, in words.
    pub what: String,
}

impl fmt::Display for SinkChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let impact = match self.impact {
            Impact::Breaking => "breaking",
            Impact::Compatible => "compatible",
        };
        write!(f, "{impact}: sink `{}`: {}", self.sink, self.what)
    }
}

/// The differences between the sinks of an old and a new version, sinks matched by name:
/// breaking ones first, then in sink and column order.
pub fn compare(old: &[SinkContract], new: &[SinkContract]) -> Vec<SinkChange> {
    let mut changes = Vec::new();
    let mut change = |sink: &str, impact, what: String| {
        changes.push(SinkChange {
            sink: sink.to_string(),
            impact,
            what,
        })
    };
    for before in old {
        let Some(after) = new.iter().find(|n| n.sink == before.sink) else {
            change(
                &before.sink,
                Impact::Breaking,
                format!("removed (it did: {})", before.target),
            );
            continue;
        };
        if before.target != after.target {
            change(
                &before.sink,
                Impact::Breaking,
                format!("now does: {} (was: {})", after.target, before.target),
            );
        }
        for (name, was) in &before.columns {
            match after.columns.iter().find(|(n, _)| n == name) {
                None => change(
                    &before.sink,
                    Impact::Breaking,
                    format!("column `{name}` ({was}) is dropped"),
                ),
                Some((_, now)) if now.base != was.base => change(
                    &before.sink,
                    Impact::Breaking,
                    format!("column `{name}` changes type: {was} -> {now}"),
                ),
                Some((_, now)) if now.nullable && !was.nullable => change(
                    &before.sink,
                    Impact::Breaking,
                    format!("column `{name}` may now be null ({was} -> {now})"),
                ),
                Some((_, now)) if was.nullable && !now.nullable => change(
                    &before.sink,
                    Impact::Compatible,
                    format!("column `{name}` is never null any more ({was} -> {now})"),
                ),
                Some(_) => {}
            }
        }
        for (name, now) in &after.columns {
            if !before.columns.iter().any(|(n, _)| n == name) {
                change(
                    &before.sink,
                    Impact::Compatible,
                    format!("column `{name}` ({now}) is added"),
                );
            }
        }
    }
    for after in new {
        if !old.iter().any(|o| o.sink == after.sink) {
            change(
                &after.sink,
                Impact::Compatible,
                format!("new sink: {}", after.target),
            );
        }
    }
    // Stable: within one impact, sinks and columns keep their order.
    changes.sort_by_key(|c| std::cmp::Reverse(c.impact));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{BaseType, ColumnType};

    fn contract(columns: &[(&str, BaseType, bool)]) -> SinkContract {
        SinkContract {
            sink: "load".into(),
            target: "write table t on {warehouse} (replace)".into(),
            columns: columns
                .iter()
                .map(|(n, base, nullable)| {
                    (
                        n.to_string(),
                        ColumnType {
                            base: *base,
                            nullable: *nullable,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn dropped_retyped_and_nullable_columns_break_added_ones_do_not() {
        let old = contract(&[
            ("id", BaseType::Int64, false),
            ("fare", BaseType::Float64, false),
            ("zone", BaseType::String, true),
            ("gone", BaseType::Bool, false),
        ]);
        let new = contract(&[
            ("id", BaseType::String, false),
            ("fare", BaseType::Float64, true),
            ("zone", BaseType::String, false),
            ("added", BaseType::Date, true),
        ]);
        let changes: Vec<String> = compare(&[old], &[new])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            [
                "breaking: sink `load`: column `id` changes type: int64 -> string",
                "breaking: sink `load`: column `fare` may now be null (float64 -> float64?)",
                "breaking: sink `load`: column `gone` (bool) is dropped",
                "compatible: sink `load`: column `zone` is never null any more (string? -> string)",
                "compatible: sink `load`: column `added` (date?) is added",
            ]
        );
    }

    #[test]
    fn an_unchanged_sink_has_no_changes_and_a_retargeted_one_breaks() {
        let old = contract(&[("id", BaseType::Int64, false)]);
        assert!(compare(std::slice::from_ref(&old), std::slice::from_ref(&old)).is_empty());
        let mut moved = old.clone();
        moved.target = "write table t on {warehouse} (append)".into();
        let changes = compare(&[old], &[moved]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].impact, Impact::Breaking);
    }
}
