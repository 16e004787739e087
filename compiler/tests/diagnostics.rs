//! Every diagnostic, rendered exactly as a user sees it, is a snapshot: one fixture pipeline per
//! class of mistake in tests/fixtures/diagnostics/.

use baton_compiler::{Source, compile};

#[test]
fn diagnostics_are_rendered_like_rustc() {
    insta::glob!("../../tests/fixtures/diagnostics", "*.toml", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let name = format!(
            "tests/fixtures/diagnostics/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        // A fixture may have a schema lock and hand-written Rust blocks beside it.
        let lock = std::fs::read_to_string(path.with_extension("lock.json")).ok();
        let lock_name = name.replace(".toml", ".lock.json");
        let rust = std::fs::read_to_string(path.with_extension("rs")).ok();
        let rust_name = name.replace(".toml", ".rs");
        let source = Source {
            path: &name,
            text: &text,
            rust_module: rust.as_deref().map(|r| (rust_name.as_str(), r)),
            lock: lock.as_deref().map(|l| (lock_name.as_str(), l)),
        };
        let compilation = compile(&source);
        assert!(compilation.has_errors(), "{name} should not compile");
        insta::assert_snapshot!(compilation.render(&source));
    });
}

#[test]
fn every_error_is_reported_at_once_and_sorted() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/diagnostics/unknown_input_and_key.toml"
    ))
    .unwrap();
    let source = Source {
        path: "x.toml",
        text: &text,
        rust_module: None,
        lock: None,
    };
    let compilation = compile(&source);
    let codes: Vec<&str> = compilation.diagnostics.iter().map(|d| d.code).collect();
    assert!(
        codes.contains(&"E0006") && codes.contains(&"E0002") && codes.contains(&"E0004"),
        "{codes:?}"
    );
    let starts: Vec<usize> = compilation
        .diagnostics
        .iter()
        .map(|d| d.primary.span.start)
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] <= w[1]),
        "sorted by position: {starts:?}"
    );
}
