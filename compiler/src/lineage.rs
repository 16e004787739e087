//! Column lineage through a checked pipeline: for every column of every block's output, the
//! source columns it comes from, through renames, selections and derivations. The review
//! summary shows it; the data-governance check follows personal data with it.

use std::collections::BTreeSet;
use std::fmt;

use crate::ir::{Block, BlockOp, Pipeline, StepOp, TypedExpr};
use crate::syntax::ForEach;

/// Where a column's values come from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A column of a source's file.
    Column {
        /// The source block.
        block: String,
        /// The file's column.
        column: String,
    },
    /// Constants, parameters or partition fields.
    Computed,
    /// The item of a fanned-out source's file: `day`, `hour` or `item`.
    Item(&'static str),
    /// A hand-written Rust function.
    Rust(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Column { block, column } => write!(f, "`{block}.{column}`"),
            Origin::Computed => f.write_str("computed"),
            Origin::Item(kind) => write!(f, "the {kind} of the file"),
            Origin::Rust(function) => write!(f, "Rust `{function}`"),
        }
    }
}

/// Each output column of a block and its origins, in output order.
pub type Lineage = Vec<(String, BTreeSet<Origin>)>;

/// The origins of one column in words, as the review summary and the web UI show them:
/// "`extract.a`, computed".
pub fn origins_text(origins: &BTreeSet<Origin>) -> String {
    origins
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A source's columns originate in the source itself, except the fan-out item column.
fn source_lineage(block: &Block, item_column: Option<&String>, item: &'static str) -> Lineage {
    block
        .output
        .iter()
        .flatten()
        .map(|(name, _)| {
            let origin = if Some(name) == item_column {
                Origin::Item(item)
            } else {
                Origin::Column {
                    block: block.name.clone(),
                    column: name.clone(),
                }
            };
            (name.clone(), BTreeSet::from([origin]))
        })
        .collect()
}

/// The lineage of every block's output, indexed like `pipeline.blocks` (sinks pass their
/// input's lineage through).
pub fn lineage(pipeline: &Pipeline) -> Vec<Lineage> {
    let mut all: Vec<Lineage> = Vec::with_capacity(pipeline.blocks.len());
    for block in &pipeline.blocks {
        let input: Lineage = block
            .inputs
            .first()
            .map(|&i| all[i].clone())
            .unwrap_or_default();
        let lineage = match &block.op {
            BlockOp::RestSource { .. } | BlockOp::SqlSource { .. } => {
                source_lineage(block, None, "item")
            }
            BlockOp::Source { fan_out, .. } => {
                let item_column = fan_out.as_ref().and_then(|f| f.item_column.as_ref());
                let item = match fan_out.as_ref().map(|f| &f.items) {
                    Some(ForEach::Days) => "day",
                    Some(ForEach::Hours) => "hour",
                    _ => "item",
                };
                source_lineage(block, item_column, item)
            }
            BlockOp::Transform { steps } => {
                let mut current = input;
                for step in steps {
                    apply(&mut current, &step.op);
                }
                current
            }
            // A hand-written function may move anything anywhere: a column keeps what its
            // namesake in the input carried, and gains the function as an origin.
            BlockOp::Rust { function } => block
                .output
                .iter()
                .flatten()
                .map(|(name, _)| {
                    let mut origins = input
                        .iter()
                        .find(|(column, _)| column == name)
                        .map(|(_, origins)| origins.clone())
                        .unwrap_or_default();
                    origins.insert(Origin::Rust(function.clone()));
                    (name.clone(), origins)
                })
                .collect(),
            // A semi or anti join only filters the left rows.
            BlockOp::Join { how, .. } if how.filters_only() => input,
            BlockOp::Join {
                left_on,
                right_on,
                suffix,
                ..
            } => match block.inputs[..] {
                [left, right] => join_lineage(
                    &all[left],
                    &all[right],
                    left_on,
                    right_on,
                    suffix.as_deref(),
                ),
                _ => input,
            },
            // A union's column holds the values of its namesakes in every input.
            BlockOp::Union => input
                .iter()
                .map(|(name, origins)| {
                    let mut origins = origins.clone();
                    for &other in &block.inputs[1..] {
                        if let Some((_, more)) = all[other].iter().find(|(c, _)| c == name) {
                            origins.extend(more.iter().cloned());
                        }
                    }
                    (name.clone(), origins)
                })
                .collect(),
            BlockOp::Aggregate {
                group_by,
                aggregates,
            } => {
                let mut out: Lineage = group_by
                    .iter()
                    .filter_map(|key| input.iter().find(|(c, _)| c == key).cloned())
                    .collect();
                for (name, expr) in aggregates {
                    out.push((name.clone(), expression_origins(&input, expr)));
                }
                out
            }
            _ => input,
        };
        all.push(lineage);
    }
    all
}

/// How one transform step moves, makes or removes columns.
fn apply(lineage: &mut Lineage, op: &StepOp) {
    match op {
        StepOp::Filter(_) | StepOp::Cast(_) => {}
        StepOp::Derive(columns) => {
            let before = lineage.clone();
            for (name, expr) in columns {
                let origins = expression_origins(&before, expr);
                match lineage.iter_mut().find(|(c, _)| c == name) {
                    Some(entry) => entry.1 = origins,
                    None => lineage.push((name.clone(), origins)),
                }
            }
        }
        StepOp::Rename(pairs) => {
            for (from, to) in pairs {
                if let Some(entry) = lineage.iter_mut().find(|(c, _)| c == from) {
                    entry.0 = to.clone();
                }
            }
        }
        StepOp::Select(columns) => lineage.retain(|(c, _)| columns.contains(c)),
        StepOp::Drop(columns) => lineage.retain(|(c, _)| !columns.contains(c)),
    }
}

/// The origins of a computed column: those of every column its expression reads; constants,
/// parameters and partition fields make it (also) computed.
fn expression_origins(input: &Lineage, expr: &TypedExpr) -> BTreeSet<Origin> {
    let mut origins = BTreeSet::new();
    references(expr, &mut |reference| match reference {
        Some(column) => {
            if let Some((_, from)) = input.iter().find(|(c, _)| c == column) {
                origins.extend(from.iter().cloned());
            }
        }
        None => {
            origins.insert(Origin::Computed);
        }
    });
    if origins.is_empty() {
        origins.insert(Origin::Computed);
    }
    origins
}

/// A join's lineage, built like its schema: the left columns (a key also carries its right
/// key's origins, whose values it holds), then the right columns without keys, suffixed when
/// the left has their name.
fn join_lineage(
    left: &Lineage,
    right: &Lineage,
    left_on: &[String],
    right_on: &[String],
    suffix: Option<&str>,
) -> Lineage {
    let mut out = left.clone();
    for (name, origins) in right {
        match right_on.iter().position(|key| key == name) {
            Some(position) => {
                if let Some(entry) = out.iter_mut().find(|(c, _)| *c == left_on[position]) {
                    entry.1.extend(origins.iter().cloned());
                }
            }
            None => {
                let taken = left.iter().any(|(c, _)| c == name);
                let name = match (taken, suffix) {
                    (true, Some(suffix)) => format!("{name}{suffix}"),
                    _ => name.clone(),
                };
                out.push((name, origins.clone()));
            }
        }
    }
    out
}

/// Calls `visit` with every column an expression reads, and with `None` for every parameter
/// or partition field (values computed outside the rows).
fn references(expr: &TypedExpr, visit: &mut dyn FnMut(Option<&str>)) {
    match expr {
        TypedExpr::Column(name) => visit(Some(name)),
        TypedExpr::Param(..) | TypedExpr::Partition(_) => visit(None),
        TypedExpr::Literal(_) | TypedExpr::DateLiteral(..) | TypedExpr::Null(_) => {}
        TypedExpr::Not(inner) | TypedExpr::Neg(inner) => references(inner, visit),
        TypedExpr::IsNull(inner, _) | TypedExpr::InList(inner, _, _) => references(inner, visit),
        TypedExpr::Binary(_, left, right) => {
            references(left, visit);
            references(right, visit);
        }
        TypedExpr::Call(_, args) => {
            for arg in args {
                references(arg, visit);
            }
        }
        TypedExpr::Aggregate(_, argument) => {
            if let Some(argument) = argument {
                references(argument, visit);
            }
        }
        // The groups a window is computed over shape its values too (a sum per e-mail
        // address tells something about each address).
        TypedExpr::Window(aggregate, columns) => {
            references(aggregate, visit);
            for column in columns {
                visit(Some(column));
            }
        }
    }
}
