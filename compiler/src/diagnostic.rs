//! Diagnostics: what the compiler reports, and how it is rendered the way rustc renders errors.
//!
//! Every problem found in a pipeline file becomes a [`Diagnostic`] with a stable code, a primary
//! location, optional secondary locations and optional help. The compiler collects all of them
//! before it stops, so a user fixes everything in one pass instead of one error per build.

use std::fmt::Write as _;
use std::ops::Range;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

/// A byte range in the pipeline file.
pub type Span = Range<usize>;

/// How bad a diagnostic is. Errors fail the build; warnings are printed and the build goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Fails the build.
    Error,
    /// Printed, but the pipeline still compiles.
    Warning,
}

/// A located label: a span of the pipeline file and what to say under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// The byte range the caret points at.
    pub span: Span,
    /// The text printed next to the caret.
    pub message: String,
}

/// One problem in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The stable code, such as `E0008`; documented in `docs/diagnostics.md`.
    pub code: &'static str,
    /// The one-line summary.
    pub message: String,
    /// Where the problem is.
    pub primary: Label,
    /// Other places that explain it (the first definition of a duplicate, each edge of a cycle).
    pub secondary: Vec<Label>,
    /// Notes printed after the excerpt.
    pub notes: Vec<String>,
    /// A suggestion printed after the excerpt, such as "did you mean `passenger_count`?".
    pub help: Option<String>,
}

/// Every warning code, for `deny = [...]`.
pub const WARNING_CODES: [&str; 6] = ["W0001", "W0002", "W0003", "W0004", "W0005", "W0006"];

impl Diagnostic {
    /// An error with a code, a message and the span it is about.
    pub fn error(
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: Label {
                span,
                message: label.into(),
            },
            secondary: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    /// A warning with a code, a message and the span it is about.
    pub fn warning(
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message, span, label)
        }
    }

    /// Adds a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a help line only when there is one (typically a "did you mean" suggestion).
    pub fn with_optional_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }

    /// Adds a secondary label.
    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.secondary.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

/// Line and column (both 1-based, columns counted in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Sorts diagnostics by position (then errors before warnings) so output is stable across runs.
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| {
        (a.primary.span.start, a.severity, a.code).cmp(&(b.primary.span.start, b.severity, b.code))
    });
}

/// Renders diagnostics the way rustc does: `error[E0008]: ...`, then `--> path:line:col`, an
/// excerpt of the file with carets, and help. `path` is how the file is named in the output.
pub fn render(path: &str, source: &str, diagnostics: &[Diagnostic]) -> String {
    let renderer = Renderer::plain();
    let mut out = String::new();
    for diagnostic in diagnostics {
        let level = match diagnostic.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        let mut snippet = Snippet::source(source).path(path).line_start(1).annotation(
            AnnotationKind::Primary
                .span(clamp(source, &diagnostic.primary.span))
                .label(diagnostic.primary.message.as_str()),
        );
        for label in &diagnostic.secondary {
            snippet = snippet.annotation(
                AnnotationKind::Context
                    .span(clamp(source, &label.span))
                    .label(label.message.as_str()),
            );
        }
        let mut group = level
            .primary_title(diagnostic.message.as_str())
            .id(diagnostic.code)
            .element(snippet);
        for note in &diagnostic.notes {
            group = group.element(Level::NOTE.message(note.as_str()));
        }
        if let Some(help) = &diagnostic.help {
            group = group.element(Level::HELP.message(help.as_str()));
        }
        let report: [Group<'_>; 1] = [group];
        let _ = writeln!(out, "{}\n", renderer.render(&report));
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    match (errors, warnings) {
        (0, 0) => {}
        (0, w) => {
            let _ = writeln!(out, "warning: {path}: {w} warning{} emitted", plural(w));
        }
        (e, _) => {
            let _ = writeln!(
                out,
                "error: could not compile `{path}` due to {e} previous error{}",
                plural(e)
            );
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Keeps a span inside the source and on character boundaries, so a bad span never panics the
/// renderer; an empty span at the end of the file still shows a caret.
fn clamp(source: &str, span: &Span) -> Span {
    let mut start = span.start.min(source.len());
    let mut end = span.end.clamp(start, source.len());
    while !source.is_char_boundary(start) {
        start -= 1;
    }
    while !source.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

/// The candidate closest to `name`, if one is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            let distance = strsim::damerau_levenshtein(&lower, &candidate.to_lowercase());
            (distance, candidate)
        })
        .filter(|(distance, candidate)| {
            *distance <= (candidate.len().max(name.len()) / 3).max(1) + usize::from(*distance == 0)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| format!("did you mean `{candidate}`?"))
}
