//! `pipeline!("pipelines/x.toml")`: compiles a Baton pipeline at macro-expansion time and expands
//! to its executor code (the same code the build script writes to `generated/`, without `main`).
//!
//! The path is relative to the invoking crate's `Cargo.toml` (or else to the invoking file). A pipeline error becomes a
//! `compile_error!` whose text is the full rustc-style diagnostic pointing into the TOML.
//! The crate must depend on `baton-runtime`. Invoke it inside a module, because the expansion
//! imports the runtime's prelude:
//!
//! ```ignore
//! mod taxi {
//!     baton_macros::pipeline!("pipelines/green_taxi_etl.toml");
//! }
//! fn main() -> std::process::ExitCode {
//!     baton_runtime::cli::main(&taxi::PIPELINE)
//! }
//! ```

use std::path::PathBuf;

use baton_compiler::emit::{EmitOptions, RustModule};
use baton_compiler::{Source, compile};
use proc_macro::TokenStream;
use quote::quote;
use syn::{LitStr, parse_macro_input};

/// Expands a pipeline TOML into its executor code. See the crate documentation.
#[proc_macro]
pub fn pipeline(input: TokenStream) -> TokenStream {
    let literal = parse_macro_input!(input as LitStr);
    match expand(&literal) {
        Ok(tokens) => tokens.into(),
        Err(message) => syn::Error::new(literal.span(), message)
            .to_compile_error()
            .into(),
    }
}

fn expand(literal: &LitStr) -> Result<proc_macro2::TokenStream, String> {
    let relative = literal.value();
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").map_err(|_| {
        "CARGO_MANIFEST_DIR is not set; invoke pipeline! from a cargo build".to_string()
    })?;
    let mut path = PathBuf::from(&manifest_dir).join(&relative);
    // Not under the crate root: try next to the invoking file, as `include_str!` resolves.
    if !path.exists()
        && let Some(beside) = proc_macro::Span::call_site()
            .local_file()
            .and_then(|file| Some(file.parent()?.join(&relative)))
        && beside.exists()
    {
        path = beside;
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read pipeline file {}: {e}", path.display()))?;
    let rust_path = path.with_extension("rs");
    let rust_text = std::fs::read_to_string(&rust_path).ok();
    let rust_display = PathBuf::from(&relative)
        .with_extension("rs")
        .display()
        .to_string();
    let lock_text = std::fs::read_to_string(path.with_extension("lock.json")).ok();
    let lock_display = PathBuf::from(&relative)
        .with_extension("lock.json")
        .display()
        .to_string();
    let source = Source {
        path: &relative,
        text: &text,
        rust_module: rust_text.as_deref().map(|t| (rust_display.as_str(), t)),
        lock: lock_text.as_deref().map(|t| (lock_display.as_str(), t)),
    };
    let compilation = compile(&source);
    let Some(pipeline) = compilation.pipeline.as_ref() else {
        return Err(format!(
            "pipeline `{relative}` does not compile:\n\n{}",
            compilation.render(&source)
        ));
    };
    let options = EmitOptions {
        with_main: false,
        rust_module: pipeline
            .rust_module
            .as_ref()
            .map(|_| RustModule::Include(rust_path.display().to_string())),
        comments: false,
    };
    let items = baton_compiler::emit::tokens(pipeline, &options);
    // Reading the file through include_bytes! makes cargo rebuild when the TOML changes.
    let tracked = path.display().to_string();
    Ok(quote! {
        const _: &[u8] = include_bytes!(#tracked);
        #items
    })
}
