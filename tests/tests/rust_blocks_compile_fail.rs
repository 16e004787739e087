//! A hand-written Rust block that reads a column the pipeline does not have, or forgets one it
//! must return, fails `cargo build` with rustc's error in the user's file: the row types are
//! generated from the compiled schemas. The exact messages are snapshotted in tests/ui/*.stderr;
//! regenerate them with `TRYBUILD=overwrite cargo test -p baton-tests --test rust_blocks_compile_fail`.

#[test]
fn mistakes_in_hand_written_blocks_fail_in_rustc() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/rust_block_fields.rs");
}
