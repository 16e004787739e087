//! `cargo xtask`: developer commands around the pipeline compiler.
//!
//! - `cargo xtask check [NAME...]`: compile pipelines and print every diagnostic, without building.
//! - `cargo xtask generate [NAME...]`: regenerate `generated/NAME/src/main.rs` (what `cargo build` does).
//! - `cargo xtask new NAME`: create `generated/NAME/` (Cargo.toml and build.rs) for a new pipeline.
//! - `cargo xtask sink-changes [--base REV] [--deny-breaking] [NAME...]`: what the working tree
//!   changes in what each sink writes, compared with git revision REV (default `HEAD`), each
//!   change called breaking or compatible.
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
    /// Compare what each sink writes with a git revision: breaking and compatible changes.
    SinkChanges {
        /// The git revision to compare with.
        #[arg(long, default_value = "HEAD")]
        base: String,
        /// Exit with an error when a change is breaking (for CI).
        #[arg(long)]
        deny_breaking: bool,
        /// Pipeline names (default: all in pipelines/).
        names: Vec<String>,
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
        Command::SinkChanges {
            base,
            deny_breaking,
            names,
        } => match sink_changes(&root, &base, pipeline_names(&root, names)) {
            Ok(breaking) if breaking && deny_breaking => ExitCode::FAILURE,
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprint!("{error}");
                ExitCode::FAILURE
            }
        },
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

/// Prints, per pipeline, how its sinks' contracts changed since git revision `base`. Returns
/// whether any change is breaking.
fn sink_changes(root: &Path, base: &str, names: Vec<String>) -> Result<bool, String> {
    let mut breaking = false;
    for name in names {
        let toml = format!("pipelines/{name}.toml");
        let rust = format!("pipelines/{name}.rs");
        let new_text = std::fs::read_to_string(root.join(&toml))
            .map_err(|e| format!("cannot read {toml}: {e}\n"))?;
        let new_rust = std::fs::read_to_string(root.join(&rust)).ok();
        let new = contracts_of(&toml, &new_text, &rust, new_rust.as_deref())?;
        let old = match git_show(root, base, &toml) {
            Some(old_text) => {
                let old_rust = git_show(root, base, &rust);
                contracts_of(&toml, &old_text, &rust, old_rust.as_deref())
                    .map_err(|e| format!("{toml} at {base} does not compile:\n{e}"))?
            }
            None => Vec::new(),
        };
        let changes = baton_compiler::contract::compare(&old, &new);
        if changes.is_empty() {
            println!("{toml}: no change to what its sinks write");
        } else {
            println!("{toml}:");
            for change in &changes {
                println!("  {change}");
            }
        }
        breaking |= changes
            .iter()
            .any(|c| c.impact == baton_compiler::contract::Impact::Breaking);
    }
    Ok(breaking)
}

/// The sink contracts of a pipeline's text, or its rendered diagnostics.
fn contracts_of(
    path: &str,
    text: &str,
    rust_path: &str,
    rust: Option<&str>,
) -> Result<Vec<baton_compiler::contract::SinkContract>, String> {
    let source = baton_compiler::Source {
        path,
        text,
        rust_module: rust.map(|r| (rust_path, r)),
        lock: None,
    };
    let compilation = baton_compiler::compile(&source);
    match &compilation.pipeline {
        Some(pipeline) if !compilation.has_errors() => {
            Ok(baton_compiler::contract::contracts(pipeline))
        }
        _ => Err(compilation.render(&source)),
    }
}

/// A file's text at a git revision; `None` when it did not exist there.
fn git_show(root: &Path, revision: &str, path: &str) -> Option<String> {
    let output = std::process::Command::new("git")
        .current_dir(root)
        .args(["show", &format!("{revision}:{path}")])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
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
