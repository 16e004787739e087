//! The macro's errors reach rustc with the full TOML diagnostic, snapshotted as `.stderr` files.
//! Regenerate snapshots with `TRYBUILD=overwrite cargo test -p baton-macros`.

#[test]
fn pipeline_errors_fail_compilation() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
