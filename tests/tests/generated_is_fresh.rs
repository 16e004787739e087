//! The committed code in generated/ must be exactly what the compiler produces from pipelines/,
//! so a reviewer reading `generated/` reads what runs. Regenerate with `cargo build` or
//! `cargo xtask generate`.

use baton_compiler::build::PipelineFiles;
use baton_tests::workspace_root;

#[test]
fn generated_code_is_fresh() {
    let root = workspace_root();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".toml"))
        else {
            continue;
        };
        let files = PipelineFiles::new(&root, name);
        let (generated, _) = files.render().unwrap_or_else(|diagnostics| {
            panic!("pipelines/{name}.toml does not compile:\n{diagnostics}")
        });
        for (path, expected) in generated {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == expected,
                "{} is stale: run `cargo xtask generate {name}` (or `cargo build`) and commit it",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no pipelines found");
}
