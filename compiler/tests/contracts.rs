//! Sink contracts of a real fixture, before and after an edit, as `cargo xtask sink-changes`
//! reports them.

use baton_compiler::contract::{Impact, compare, contracts};
use baton_compiler::{Source, compile};

fn contracts_of(text: &str) -> Vec<baton_compiler::contract::SinkContract> {
    let source = Source {
        path: "fleet_union.toml",
        text,
        rust_module: None,
        lock: None,
    };
    let compilation = compile(&source);
    contracts(
        compilation
            .pipeline
            .as_ref()
            .unwrap_or_else(|| panic!("{}", compilation.render(&source))),
    )
}

#[test]
fn an_edit_upstream_is_reported_at_the_sinks_it_reaches() {
    let before = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/pipelines/fleet_union.toml"
    ))
    .unwrap();
    // A new derived column in the shared transform, and a sum replaced by a mean.
    let after = before
        .replace(
            "rename = { pickup_zone = \"zone\" }",
            "rename = { pickup_zone = \"zone\" }\n\n[[blocks.green.steps]]\ndrop = [\"zone\"]\n\n[[blocks.green.steps]]\nderive = { zone = \"'?'\" }",
        )
        .replace("revenue = \"sum(fare)\"", "revenue = \"mean(fare)\"");
    let changes: Vec<String> = compare(&contracts_of(&before), &contracts_of(&after))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        changes,
        [
            "breaking: sink `load_totals`: column `revenue` may now be null (float64 -> float64?)",
            "compatible: sink `load_above`: column `zone` is never null any more (string? -> string)",
        ]
    );
    let unchanged = compare(&contracts_of(&before), &contracts_of(&before));
    assert!(unchanged.iter().all(|c| c.impact != Impact::Breaking) && unchanged.is_empty());
}
