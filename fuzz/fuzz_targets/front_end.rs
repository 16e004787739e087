//! Any text as a pipeline file: parse, resolve, check, emit and render the diagnostics. The
//! compiler must answer with diagnostics or a pipeline, never a panic.
#![no_main]

use baton_compiler::{Source, compile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source {
        path: "fuzz.toml",
        text,
        rust_module: None,
        lock: None,
    };
    let compilation = compile(&source);
    let _ = compilation.render(&source);
    // A pipeline that checks is emitted, formatted and summarised too: the emitter asserts
    // that what it produces parses as Rust.
    if let Some(pipeline) = compilation.pipeline.as_ref().filter(|_| !compilation.has_errors()) {
        let options = baton_compiler::emit::EmitOptions {
            with_main: true,
            rust_module: None,
            comments: true,
        };
        let _ = baton_compiler::emit::file(pipeline, &options);
        let _ = baton_compiler::review::review(pipeline);
    }
});
