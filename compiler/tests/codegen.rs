//! Snapshots of generated code and review summaries for fixture pipelines (the reference
//! pipelines' code is committed in generated/ and checked by generated_is_fresh).

use std::path::Path;

use baton_compiler::emit::{EmitOptions, RustModule};
use baton_compiler::ir::Pipeline;
use baton_compiler::{Source, compile};

/// Compiles a fixture (with its hand-written Rust module, if it has one); panics with the
/// rendered diagnostics when it does not compile.
fn compile_fixture(path: &Path) -> Pipeline {
    let text = std::fs::read_to_string(path).unwrap();
    let rust = std::fs::read_to_string(path.with_extension("rs")).ok();
    let name = format!(
        "tests/fixtures/pipelines/{}",
        path.file_name().unwrap().to_string_lossy()
    );
    let rust_name = name.replace(".toml", ".rs");
    let source = Source {
        path: &name,
        text: &text,
        rust_module: rust.as_deref().map(|r| (rust_name.as_str(), r)),
        lock: None,
    };
    let compilation = compile(&source);
    compilation
        .pipeline
        .clone()
        .unwrap_or_else(|| panic!("{}", compilation.render(&source)))
}

#[test]
fn generated_code_snapshots() {
    insta::glob!("../../tests/fixtures/pipelines", "*.toml", |path| {
        let pipeline = compile_fixture(path);
        let options = EmitOptions {
            with_main: true,
            rust_module: pipeline
                .rust_module
                .as_ref()
                .map(|m| RustModule::Path(m.clone())),
            comments: true,
        };
        insta::assert_snapshot!(baton_compiler::emit::file(&pipeline, &options));
    });
}

/// The review summary of every fixture pipeline: blocks, schemas with column lineage, sinks.
#[test]
fn review_summary_snapshots() {
    insta::glob!("../../tests/fixtures/pipelines", "*.toml", |path| {
        insta::assert_snapshot!(baton_compiler::review::review(&compile_fixture(path)));
    });
}

/// The deployment files of every fixture pipeline: container file, CronJob, Deployment.
#[test]
fn deployment_file_snapshots() {
    insta::glob!("../../tests/fixtures/pipelines", "*.toml", |path| {
        let files = baton_compiler::deploy::files(&compile_fixture(path));
        let text: String = files
            .iter()
            .map(|(name, text)| format!("==> {name} <==\n{text}\n"))
            .collect();
        insta::assert_snapshot!(text);
    });
}
