//! Snapshots of generated code for fixture pipelines (the reference pipeline's code is committed
//! in generated/ and checked by generated_is_fresh).

use baton_compiler::emit::{EmitOptions, RustModule};
use baton_compiler::{Source, compile};

#[test]
fn generated_code_snapshots() {
    insta::glob!("../../tests/fixtures/pipelines", "*.toml", |path| {
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
        };
        let compilation = compile(&source);
        let pipeline = compilation
            .pipeline
            .as_ref()
            .unwrap_or_else(|| panic!("{}", compilation.render(&source)));
        let options = EmitOptions {
            with_main: true,
            rust_module: pipeline
                .rust_module
                .as_ref()
                .map(|m| RustModule::Path(m.clone())),
            comments: true,
        };
        insta::assert_snapshot!(baton_compiler::emit::file(pipeline, &options));
    });
}
