//! The Baton pipeline compiler: TOML in, checked Rust out.
//!
//! Layers, each in its own module: [`syntax`] reads the TOML into a spanned tree, [`resolve`]
//! links block names into a graph and finds cycles, [`check`] propagates schemas and types every
//! expression, and [`emit`] writes the Rust executor. Problems are collected as
//! [`Diagnostic`]s across all layers and rendered like rustc's.
//!
//! The same library serves the build script of each generated pipeline crate ([`build`]), the
//! `pipeline!` proc-macro and the `xtask` command line.

pub mod build;
pub mod check;
pub mod contract;
pub mod deploy;
pub mod diagnostic;
pub mod emit;
pub mod expr;
pub mod governance;
pub mod ir;
pub mod lineage;
pub mod lock;
pub mod resolve;
pub mod review;
pub mod syntax;
pub mod types;

pub use diagnostic::{Diagnostic, Severity};

use sha2::{Digest, Sha256};

/// The input of one compilation.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    /// How the pipeline file is named in messages, e.g. `pipelines/green_taxi_etl.toml`.
    pub path: &'a str,
    /// The pipeline file's text.
    pub text: &'a str,
    /// The pipeline's hand-written Rust module, if it exists: its display path and text.
    pub rust_module: Option<(&'a str, &'a str)>,
    /// The pipeline's schema lock (`pipelines/NAME.lock.json`), if it has one: its display
    /// path and text.
    pub lock: Option<(&'a str, &'a str)>,
}

/// The result of a compilation: the checked pipeline when there was no error, and every
/// diagnostic (errors and warnings), sorted by position.
#[derive(Debug)]
pub struct Compilation {
    /// The checked pipeline, present when no error was found.
    pub pipeline: Option<ir::Pipeline>,
    /// Every diagnostic.
    pub diagnostics: Vec<Diagnostic>,
}

impl Compilation {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// The diagnostics rendered like rustc's.
    pub fn render(&self, source: &Source<'_>) -> String {
        diagnostic::render(source.path, source.text, &self.diagnostics)
    }
}

/// Runs every layer on a pipeline file, collecting all diagnostics.
pub fn compile(source: &Source<'_>) -> Compilation {
    let mut diagnostics = Vec::new();
    let pipeline = syntax::parse(source.text, &mut diagnostics).map(|file| {
        let graph = resolve::resolve(&file, &mut diagnostics);
        let context = check::Context {
            source: source.text,
            source_path: source.path,
            rust_module: source.rust_module,
        };
        let pipeline = check::check(&file, &graph, &context, &mut diagnostics);
        if let Some((lock_path, lock_text)) = source.lock {
            lock::check(&file, lock_path, lock_text, &mut diagnostics);
        }
        governance::check(&file, &pipeline, &mut diagnostics);
        deny(&file, &mut diagnostics);
        pipeline
    });
    diagnostic::sort(&mut diagnostics);
    let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
    Compilation {
        pipeline: if failed { None } else { pipeline },
        diagnostics,
    }
}

/// `[pipeline] deny = ["W0005"]` turns those warnings into errors (`"warnings"`: all of them),
/// as rustc's `#![deny(...)]` does: a team decides which risks its pipelines may not take.
fn deny(file: &syntax::PipelineFile, diagnostics: &mut Vec<Diagnostic>) {
    let denied = &file.pipeline.deny;
    for code in denied {
        if code.value != "warnings" && !diagnostic::WARNING_CODES.contains(&code.value.as_str()) {
            diagnostics.push(
                Diagnostic::error(
                    "E0003",
                    format!("`{}` is not a warning code", code.value),
                    code.span.clone(),
                    "cannot be denied",
                )
                .with_note(format!(
                    "warnings: {}, or \"warnings\" for all",
                    diagnostic::WARNING_CODES.join(", ")
                )),
            );
        }
    }
    for diagnostic in diagnostics.iter_mut() {
        let rule = denied
            .iter()
            .find(|code| code.value == diagnostic.code || code.value == "warnings");
        if let (Severity::Warning, Some(rule)) = (diagnostic.severity, rule) {
            diagnostic.severity = Severity::Error;
            diagnostic.notes.push(format!(
                "an error here because `[pipeline] deny` lists `{}`",
                rule.value
            ));
        }
    }
}

/// A short, stable hash of the pipeline file and of the compiler's version, recorded with every
/// run so a run can be tied to the exact pipeline version that produced it. A new compiler may
/// generate different code from the same file, so its version is part of the hash.
pub fn source_hash(text: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    hasher.update(b"\0baton-compiler ");
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    let digest = hasher.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
