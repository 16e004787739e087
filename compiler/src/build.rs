//! Support for build scripts, the proc-macro and tools: find a pipeline's files, compile them,
//! and write the generated code only when it changed (like prost-build), so `git diff` stays
//! empty after a build that changed nothing.

use std::path::{Path, PathBuf};

use crate::emit::{EmitOptions, RustModule};
use crate::{Source, compile};

/// Generated files (path, contents) and the rendered warnings, if any.
pub type Rendered = (Vec<(PathBuf, String)>, Option<String>);

/// A pipeline's files inside the workspace.
#[derive(Clone, Debug)]
pub struct PipelineFiles {
    /// The workspace root.
    pub root: PathBuf,
    /// The pipeline's name.
    pub name: String,
}

impl PipelineFiles {
    /// The files of pipeline `name` under workspace `root`.
    pub fn new(root: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        PipelineFiles {
            root: root.into(),
            name: name.into(),
        }
    }

    /// `pipelines/NAME.toml`, relative to the root; how messages name it.
    pub fn toml_display(&self) -> String {
        format!("pipelines/{}.toml", self.name)
    }

    /// `pipelines/NAME.rs`, relative to the root.
    pub fn rust_display(&self) -> String {
        format!("pipelines/{}.rs", self.name)
    }

    /// `pipelines/NAME.lock.json`, relative to the root.
    pub fn lock_display(&self) -> String {
        format!("pipelines/{}.lock.json", self.name)
    }

    /// The generated crate's source folder.
    pub fn generated_src(&self) -> PathBuf {
        self.root.join("generated").join(&self.name).join("src")
    }

    /// Compiles the pipeline and renders the generated crate's `main.rs` and `pipeline.rs`. On
    /// errors, returns the rendered diagnostics. Warnings are returned alongside the code.
    pub fn render(&self) -> Result<Rendered, String> {
        let toml_path = self.root.join(self.toml_display());
        let text = std::fs::read_to_string(&toml_path)
            .map_err(|e| format!("error: cannot read {}: {e}", toml_path.display()))?;
        let rust_path = self.root.join(self.rust_display());
        let rust_text = std::fs::read_to_string(&rust_path).ok();
        let lock_display = self.lock_display();
        let lock_text = std::fs::read_to_string(self.root.join(&lock_display)).ok();
        let toml_display = self.toml_display();
        let rust_display = self.rust_display();
        let source = Source {
            path: &toml_display,
            text: &text,
            rust_module: rust_text.as_deref().map(|t| (rust_display.as_str(), t)),
            lock: lock_text.as_deref().map(|t| (lock_display.as_str(), t)),
        };
        let compilation = compile(&source);
        let rendered = compilation.render(&source);
        let Some(pipeline) = compilation.pipeline else {
            return Err(rendered);
        };
        let options = EmitOptions {
            // `mod blocks` is declared in src/pipeline.rs, so its path starts from src/pipeline/.
            rust_module: pipeline
                .rust_module
                .as_ref()
                .map(|module| RustModule::Path(format!("../../../../{module}"))),
            comments: true,
            with_main: false,
        };
        let warnings = (!rendered.is_empty()).then_some(rendered);
        let src = self.generated_src();
        let review = src
            .parent()
            .map_or_else(|| src.join("REVIEW.md"), |dir| dir.join("REVIEW.md"));
        let files = vec![
            (src.join("main.rs"), crate::emit::main_file(&pipeline)),
            (
                src.join("pipeline.rs"),
                crate::emit::file(&pipeline, &options),
            ),
            (review, crate::review::review(&pipeline)),
        ];
        let crate_dir = src.parent().map_or_else(|| src.clone(), Path::to_path_buf);
        let mut files = files;
        files.extend(
            crate::deploy::files(&pipeline)
                .into_iter()
                .map(|(path, text)| (crate_dir.join(path), text)),
        );
        Ok((files, warnings))
    }
}

/// Writes `contents` to `path` unless the file already holds exactly that. Returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|existing| existing == contents) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents)?;
    Ok(true)
}

/// Tells cargo which files the generated code is made from. The pipeline's Rust blocks and its
/// schema lock are optional, and cargo counts a watched file that does not exist as changed: each
/// `cargo build` would then run the build script again and rebuild and relink the pipeline's
/// binary (some 15 s in release). A missing one is watched through the `pipelines/` folder
/// instead, whose files change when it is created; editing another pipeline then reruns this
/// script too, which is cheap, and rebuilds this binary, which is the cost of not knowing.
fn watch_inputs(files: &PipelineFiles) {
    for path in watched_inputs(files) {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

/// The paths [`watch_inputs`] gives cargo: the TOML, each optional file that exists, and the
/// `pipelines/` folder once if one does not.
fn watched_inputs(files: &PipelineFiles) -> Vec<PathBuf> {
    let mut watched = vec![files.root.join(files.toml_display())];
    let folder = files.root.join("pipelines");
    for optional in [files.rust_display(), files.lock_display()] {
        let path = files.root.join(optional);
        if path.exists() {
            watched.push(path);
        } else if !watched.contains(&folder) {
            watched.push(folder.clone());
        }
    }
    watched
}

/// The file in a generated crate's folder that lists, hottest first, the functions a run of
/// the pipeline executes (`bench/link_order.py` writes the reference pipeline's).
pub const LINK_ORDER_FILE: &str = "link-order.txt";

/// Lays the pipeline binary's code out in the order of `generated/NAME/link-order.txt`, when
/// the crate has one and the link is a release link by Rust's default linker for
/// x86_64 Linux (LLD, since Rust 1.90).
///
/// A release binary holds about 66 MB of code, of which a run executes about 5 MB spread over
/// the whole file. The kernel maps code 64 KiB at a time around each page first touched, so the
/// scattered functions kept some 34 MB of the executable resident, a third of the reference
/// run's peak memory. Listed first, they take about 6 MB. A name the binary lacks (the list
/// was made before a dependency changed) is skipped without a warning: a stale list costs
/// memory, never correctness, and the benchmark reports how much of it still matches.
fn link_in_order(manifest_dir: &Path) {
    let order_file = manifest_dir.join(LINK_ORDER_FILE);
    if !order_file.exists() {
        return;
    }
    println!("cargo::rerun-if-changed={}", order_file.display());
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let link = LinkSettings {
        target: var("TARGET"),
        profile: var("PROFILE"),
        rustflags: var("CARGO_ENCODED_RUSTFLAGS"),
        linker: std::env::var_os("RUSTC_LINKER").is_some(),
    };
    for arg in link_order_args(&order_file, &link) {
        println!("cargo::rustc-link-arg-bins={arg}");
    }
}

/// What a build script knows of the link it prepares for.
#[derive(Debug)]
struct LinkSettings {
    /// The target triple (`TARGET`).
    target: String,
    /// `release` or `debug` (`PROFILE`).
    profile: String,
    /// The rustflags, separated by 0x1f (`CARGO_ENCODED_RUSTFLAGS`).
    rustflags: String,
    /// Whether a linker is configured (`RUSTC_LINKER`).
    linker: bool,
}

/// The linker arguments that pass `order_file` to LLD, or none when the link may not be LLD's
/// or is not a release link. A configured linker, or rustflags that choose one, could be GNU
/// ld, which rejects the option, so the order is then left out. A debug build's symbols differ
/// from the release build's the list was made from, so it would match nothing. `-Xlinker`
/// passes the path whole, where `-Wl,` would split it at a comma.
fn link_order_args(order_file: &Path, link: &LinkSettings) -> Vec<String> {
    let chooses_linker = link.rustflags.split('\x1f').any(|flag| {
        ["linker", "fuse-ld", "link-self-contained"]
            .iter()
            .any(|word| flag.contains(word))
    });
    if link.target != "x86_64-unknown-linux-gnu"
        || link.profile != "release"
        || link.linker
        || chooses_linker
    {
        return Vec::new();
    }
    [
        "--no-warn-symbol-ordering".to_owned(),
        format!("--symbol-ordering-file={}", order_file.display()),
    ]
    .into_iter()
    .flat_map(|arg| ["-Xlinker".to_owned(), arg])
    .collect()
}

/// Links the pipeline binary at a fixed address on Linux. A position-independent executable
/// must relocate every pointer in its read-only data when it starts: for a binary holding all
/// of polars that is some 150,000 relocations, whose 3.7 MB table is read and whose 2.8 MB of
/// pointers are written, page by page, on every start, memory the process then keeps. A
/// pipeline binary is a program, not a library, so it gains nothing from being loadable at a
/// random address beyond what address-space layout randomisation of its heap and stacks gives.
fn link_position_dependent() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os == "linux" && arch == "x86_64" {
        println!("cargo::rustc-link-arg-bins=-no-pie");
    }
}

/// The body of a generated pipeline crate's `build.rs`: regenerates `src/main.rs` from
/// `pipelines/NAME.toml`, or prints the diagnostics and fails the build.
pub fn generate_crate(name: &str) {
    let manifest_dir = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR")
            .expect("cargo sets CARGO_MANIFEST_DIR for build scripts"),
    );
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("the generated crate lives in generated/NAME of the workspace");
    let files = PipelineFiles::new(root, name);
    watch_inputs(&files);
    git_commit(&files.root);
    link_position_dependent();
    link_in_order(&manifest_dir);
    match files.render() {
        Ok((generated, warnings)) => {
            if let Some(warnings) = warnings {
                for line in warnings.lines().filter(|l| !l.is_empty()) {
                    println!("cargo::warning={line}");
                }
            }
            for (path, code) in generated {
                if let Err(error) = write_if_changed(&path, &code) {
                    eprintln!("error: cannot write {}: {error}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            // One short line that cargo shows on its own, pointing at the full report in stderr.
            println!(
                "cargo::error=pipeline {} does not compile; the diagnostics are in the stderr section below",
                files.toml_display()
            );
            std::process::exit(1);
        }
    }
}

/// Tells rustc the workspace's git commit (`BATON_GIT_COMMIT`), so each run in the ledger
/// names the code it ran. Outside a git checkout, or without
/// git, the variable is simply not set.
fn git_commit(root: &Path) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return;
    };
    // Rebuild when HEAD moves: HEAD itself changes on checkout, the ref file on commit.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        println!("cargo::rerun-if-changed={}", git_dir.join("HEAD").display());
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            // A packed ref has no file of its own; watching a missing file would rerun the
            // build script on every build.
            let loose = git_dir.join(reference);
            let watched = if loose.exists() {
                loose
            } else {
                git_dir.join("packed-refs")
            };
            println!("cargo::rerun-if-changed={}", watched.display());
        }
    }
    println!("cargo::rustc-env=BATON_GIT_COMMIT={commit}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release_link() -> LinkSettings {
        LinkSettings {
            target: "x86_64-unknown-linux-gnu".into(),
            profile: "release".into(),
            rustflags: String::new(),
            linker: false,
        }
    }

    #[test]
    fn a_missing_optional_input_is_watched_through_the_pipelines_folder() {
        let root = std::env::temp_dir().join(format!("baton-watch-{}", std::process::id()));
        let pipelines = root.join("pipelines");
        std::fs::create_dir_all(&pipelines).unwrap();
        std::fs::write(pipelines.join("p.toml"), "").unwrap();
        let files = PipelineFiles::new(&root, "p");
        // Neither the Rust blocks nor the lock exist: the folder, once.
        assert_eq!(
            watched_inputs(&files),
            [pipelines.join("p.toml"), pipelines.clone()]
        );
        std::fs::write(pipelines.join("p.lock.json"), "{}").unwrap();
        assert_eq!(
            watched_inputs(&files),
            [
                pipelines.join("p.toml"),
                pipelines.clone(),
                pipelines.join("p.lock.json")
            ]
        );
        // Every input exists: cargo watches exactly them, and nothing else reruns the script.
        std::fs::write(pipelines.join("p.rs"), "").unwrap();
        assert_eq!(
            watched_inputs(&files),
            [
                pipelines.join("p.toml"),
                pipelines.join("p.rs"),
                pipelines.join("p.lock.json")
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_release_link_by_the_default_linker_gets_the_order_file_whole() {
        let file = Path::new("/work/a,b/generated/x/link-order.txt");
        assert_eq!(
            link_order_args(file, &release_link()),
            [
                "-Xlinker",
                "--no-warn-symbol-ordering",
                "-Xlinker",
                "--symbol-ordering-file=/work/a,b/generated/x/link-order.txt",
            ]
        );
    }

    #[test]
    fn other_links_get_no_order_file() {
        let file = Path::new("link-order.txt");
        let debug = LinkSettings {
            profile: "debug".into(),
            ..release_link()
        };
        let other_target = LinkSettings {
            target: "aarch64-unknown-linux-gnu".into(),
            ..release_link()
        };
        let configured_linker = LinkSettings {
            linker: true,
            ..release_link()
        };
        let linker_in_rustflags = LinkSettings {
            rustflags: "-C\x1ftarget-cpu=native\x1f-C\x1flink-arg=-fuse-ld=bfd".into(),
            ..release_link()
        };
        for link in [debug, other_target, configured_linker, linker_in_rustflags] {
            assert_eq!(
                link_order_args(file, &link),
                Vec::<String>::new(),
                "{link:?}"
            );
        }
        let unrelated_rustflags = LinkSettings {
            rustflags: "-C\x1ftarget-cpu=native".into(),
            ..release_link()
        };
        assert_eq!(link_order_args(file, &unrelated_rustflags).len(), 4);
    }
}
