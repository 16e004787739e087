//! Schema locks end to end: `prepare` reads the real green-taxi file and the warehouse, the
//! reference pipeline compiles against the lock it writes, `prepare --check` passes while the
//! world is unchanged, and when the source drops a column `--check` fails naming it and the
//! compiler rejects the pipeline against the new lock (what `cargo build` would report).

use std::path::Path;

use baton_compiler::{Source, compile};
use baton_tests::{HttpServer, green_data_dir, output_text, run_pipeline, workspace_root};

/// Compiles the reference pipeline against a lock file; returns the rendered diagnostics and
/// whether there were errors.
fn compile_with_lock(lock: &Path) -> (String, bool) {
    let text =
        std::fs::read_to_string(workspace_root().join("pipelines/green_taxi_etl.toml")).unwrap();
    let lock_text = std::fs::read_to_string(lock).unwrap();
    let source = Source {
        path: "pipelines/green_taxi_etl.toml",
        text: &text,
        rust_module: None,
        lock: Some(("pipelines/green_taxi_etl.lock.json", &lock_text)),
    };
    let compilation = compile(&source);
    (compilation.render(&source), compilation.has_errors())
}

/// A copy of January 2021 without its last column, gzip-compressed, in `dir`.
fn drifted_month(dir: &Path) {
    let script = r#"
import csv, gzip, sys
source, target = sys.argv[1], sys.argv[2]
with gzip.open(source, 'rt', newline='') as f, gzip.open(target, 'wt', newline='') as out:
    writer = csv.writer(out)
    for row in csv.reader(f):
        writer.writerow(row[:-1])
"#;
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(green_data_dir().join("green_tripdata_2021-01.csv.gz"))
        .arg(dir.join("green_tripdata_2021-01.csv.gz"))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn prepare_locks_the_world_and_check_finds_drift() {
    let work = tempfile::tempdir().unwrap();
    let lock = work.path().join("green_taxi_etl.lock.json");
    let lock_arg = lock.display().to_string();
    let server = HttpServer::serve(&green_data_dir());
    let env = [("TLC_BASE_URL", server.url.as_str())];
    let args = [
        "prepare",
        "--partition",
        "2021-01",
        "--lock",
        lock_arg.as_str(),
    ];
    let prepared = run_pipeline("green_taxi_etl", work.path(), &env, &args);
    assert!(prepared.status.success(), "{}", output_text(&prepared));
    let locked: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    let source = &locked["sources"]["extract_green_taxi"];
    assert_eq!(source["declared_schema_reads_it"], true, "{locked:#}");
    let columns = source["columns"].as_array().unwrap();
    assert_eq!(columns.len(), 20);
    assert_eq!(columns[0], serde_json::json!(["VendorID", "int64?"]));
    assert_eq!(
        columns[1],
        serde_json::json!(["lpep_pickup_datetime", "timestamp"])
    );
    // No table yet in a fresh warehouse.
    assert!(locked["tables"]["load_warehouse"]["columns"].is_null());
    // The pipeline as committed compiles against what the real file holds.
    let (diagnostics, failed) = compile_with_lock(&lock);
    assert!(!failed, "{diagnostics}");

    let mut check_args = args.to_vec();
    check_args.push("--check");
    let unchanged = run_pipeline("green_taxi_etl", work.path(), &env, &check_args);
    assert!(unchanged.status.success(), "{}", output_text(&unchanged));
    drop(server);

    // The source drops its last column, congestion_surcharge.
    let drifted_dir = tempfile::tempdir().unwrap();
    drifted_month(drifted_dir.path());
    let server = HttpServer::serve(drifted_dir.path());
    let env = [("TLC_BASE_URL", server.url.as_str())];
    let drift = run_pipeline("green_taxi_etl", work.path(), &env, &check_args);
    let text = output_text(&drift);
    assert_eq!(drift.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "source `extract_green_taxi`: column `congestion_surcharge` (float64?) is gone"
        ),
        "{text}"
    );
    assert!(
        text.contains("the declared schema no longer reads the file"),
        "{text}"
    );

    // Locking the drifted world makes the build fail at the declared column.
    let relock = run_pipeline("green_taxi_etl", work.path(), &env, &args);
    assert!(relock.status.success(), "{}", output_text(&relock));
    let (diagnostics, failed) = compile_with_lock(&lock);
    assert!(failed, "{diagnostics}");
    assert!(
        diagnostics.contains(
            "error[E0024]: the file of `extract_green_taxi` has no column `congestion_surcharge`"
        ),
        "{diagnostics}"
    );
    assert!(
        diagnostics.contains("pipelines/green_taxi_etl.toml:"),
        "{diagnostics}"
    );
}
