//! `cargo xtask`: developer commands around the pipeline compiler.
//!
//! - `cargo xtask check [NAME...]`: compile pipelines and print every diagnostic, without building.
//! - `cargo xtask generate [NAME...]`: regenerate `generated/NAME/src/main.rs` (what `cargo build` does).
//! - `cargo xtask new NAME`: create `generated/NAME/` (Cargo.toml and build.rs) for a new pipeline.
//!
//! Without names, every `pipelines/*.toml` is processed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use baton_compiler::build::{PipelineFiles, write_if_changed};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Baton developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile pipelines and print their diagnostics.
    Check {
        /// Pipeline names (default: all in pipelines/).
        names: Vec<String>,
    },
    /// Regenerate the committed code of pipelines.
    Generate {
        /// Pipeline names (default: all in pipelines/).
        names: Vec<String>,
    },
    /// Create the generated crate of a new pipeline.
    New {
        /// The pipeline's name (pipelines/NAME.toml).
        name: String,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn pipeline_names(root: &Path, names: Vec<String>) -> Vec<String> {
    if !names.is_empty() {
        return names;
    }
    let mut found: Vec<String> = std::fs::read_dir(root.join("pipelines"))
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    entry
                        .ok()?
                        .file_name()
                        .to_str()?
                        .strip_suffix(".toml")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Check { names } | Command::Generate { names }
            if pipeline_names(&root, names.clone()).is_empty() =>
        {
            eprintln!("no pipelines found in {}", root.join("pipelines").display());
            ExitCode::FAILURE
        }
        Command::Check { names } => {
            let mut failed = false;
            for name in pipeline_names(&root, names) {
                match PipelineFiles::new(&root, &name).render() {
                    Ok((_, warnings)) => {
                        eprint!("{}", warnings.unwrap_or_default());
                        eprintln!("ok: pipelines/{name}.toml");
                    }
                    Err(diagnostics) => {
                        eprint!("{diagnostics}");
                        failed = true;
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Generate { names } => {
            let mut failed = false;
            for name in pipeline_names(&root, names) {
                if let Err(error) = generate(&root, &name) {
                    eprint!("{error}");
                    failed = true;
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        // The crate's code is generated right away: a workspace member without `src/main.rs`
        // would break every cargo command.
        Command::New { name } => match scaffold(&root, &name) {
            Ok(()) => {
                eprintln!("created generated/{name}/; `cargo build --workspace` builds its binary");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprint!("{error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Compiles a pipeline and writes its generated sources when they changed. The error is the
/// rendered diagnostics or the write failure, ready to print.
fn generate(root: &Path, name: &str) -> Result<(), String> {
    let (generated, _) = PipelineFiles::new(root, name).render()?;
    for (path, code) in generated {
        match write_if_changed(&path, &code) {
            Ok(true) => eprintln!("wrote {}", path.display()),
            Ok(false) => eprintln!("unchanged {}", path.display()),
            Err(error) => return Err(format!("error: {}: {error}\n", path.display())),
        }
    }
    Ok(())
}

/// Creates a pipeline's crate: its Cargo.toml and build.rs, and its generated sources (which
/// its build script keeps up to date from then on). Nothing is written when the pipeline does
/// not compile.
fn scaffold(root: &Path, name: &str) -> Result<(), String> {
    if !root.join("pipelines").join(format!("{name}.toml")).exists() {
        return Err(format!(
            "error: pipelines/{name}.toml does not exist; write it first\n"
        ));
    }
    PipelineFiles::new(root, name).render()?;
    let dir = root.join("generated").join(name);
    let write = |path: PathBuf, text: String| {
        write_if_changed(&path, &text).map_err(|e| format!("error: {}: {e}\n", path.display()))
    };
    write(dir.join("Cargo.toml"), crate_manifest(name))?;
    write(dir.join("build.rs"), build_script(name))?;
    generate(root, name)
}

/// The Cargo.toml of a generated pipeline crate.
pub fn crate_manifest(name: &str) -> String {
    format!(
        "# @generated by `cargo xtask new {name}`: the binary of pipelines/{name}.toml.\n\
         [package]\nname = \"{name}\"\ndescription = \"Baton pipeline {name}, compiled from pipelines/{name}.toml\"\n\
         edition.workspace = true\nversion.workspace = true\nlicense.workspace = true\npublish = false\nbuild = \"build.rs\"\n\n\
         [dependencies]\nbaton-runtime.workspace = true\n\n[build-dependencies]\nbaton-compiler.workspace = true\n"
    )
}

/// The build.rs of a generated pipeline crate.
pub fn build_script(name: &str) -> String {
    format!(
        "// @generated by `cargo xtask new {name}`.\n\
         // Checks pipelines/{name}.toml and regenerates src/main.rs when it changed; a pipeline\n\
         // error fails `cargo build` with diagnostics pointing at the TOML.\n\
         fn main() {{\n    baton_compiler::build::generate_crate(\"{name}\");\n}}\n"
    )
}
