//! The front end never panics, whatever the input: every fixture, mutated at random (bytes
//! deleted, TOML-looking text inserted, lines duplicated, the file cut short), compiles to
//! diagnostics or a pipeline, never a crash. Bounded: a fixed number of cases per run. Inputs
//! that once crashed are kept in tests/fixtures/crashes/ and compiled on every run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use baton_compiler::{Source, compile};
use proptest::prelude::*;

fn fixtures() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut texts = Vec::new();
    for folder in ["diagnostics", "pipelines", "crashes"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        texts.extend(paths.iter().map(|p| std::fs::read_to_string(p).unwrap()));
    }
    texts
}

/// Compiles and renders; a panic fails the test with the input that caused it.
fn compiles_without_panic(text: &str) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let source = Source {
            path: "fuzz.toml",
            text,
            rust_module: None,
            lock: None,
        };
        let compilation = compile(&source);
        let _ = compilation.render(&source);
    }));
    assert!(result.is_ok(), "the compiler panicked on:\n{text}");
}

#[test]
fn past_crashes_compile_without_panic() {
    for text in fixtures() {
        compiles_without_panic(&text);
    }
}

/// One edit of a file.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Edit::Delete(at, len)),
        (
            any::<usize>(),
            "[\\[\\]{}=\"'.,#a-z0-9_ \\n$:?()<>!-]{0,24}"
        )
            .prop_map(|(at, text)| Edit::Insert(at, text)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// A char boundary at or before `at` (modulo the length).
fn boundary(text: &str, at: usize) -> usize {
    if text.is_empty() {
        return 0;
    }
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &mut String, edit: &Edit) {
    match edit {
        Edit::Delete(at, len) => {
            let start = boundary(text, *at);
            let end = boundary(text, start + len).max(start);
            text.replace_range(start..end, "");
        }
        Edit::Insert(at, inserted) => {
            let at = boundary(text, *at);
            text.insert_str(at, inserted);
        }
        Edit::DuplicateLine(at) => {
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let line = lines[at % lines.len()].to_string();
                let at = boundary(text, *at);
                text.insert_str(at, &format!("\n{line}\n"));
            }
        }
        Edit::Truncate(at) => {
            let at = boundary(text, *at);
            text.truncate(at);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(which in any::<usize>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let texts = fixtures();
        let mut text = texts[which % texts.len()].clone();
        for edit in &edits {
            apply(&mut text, edit);
        }
        compiles_without_panic(&text);
    }
}
