//! Any text as an expression (`filter`, `derive`, `aggregates`, checks): the parser returns an
//! expression or a located error, never a panic, and an error's span lies inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = baton_compiler::expr::parse(text) {
        assert!(error.span.start <= error.span.end && error.span.end <= text.len());
        assert!(text.is_char_boundary(error.span.start) && text.is_char_boundary(error.span.end));
    }
});
