//! End to end: the committed `green_taxi_etl` binary against a loopback HTTP server of the real
//! NYC TLC files, loading SQLite (the default) and a throwaway PostgreSQL cluster.

use std::path::{Path, PathBuf};
use std::process::Output;

use baton_tests::{
    HttpServer, Postgres, green_data_dir, independent_green_counts, run_pipeline, sqlite_rows,
};

const MONTHS: [&str; 3] = ["2021-01", "2021-02", "2021-03"];

fn run(workdir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    run_pipeline("green_taxi_etl", workdir, env, args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn sqlite_count(db: &Path, sql: &str) -> i64 {
    sqlite_rows(db, sql)
        .first()
        .and_then(|row| row.parse().ok())
        .expect("a number")
}

fn lake_folders(lake: &Path) -> Vec<String> {
    let mut folders: Vec<String> = std::fs::read_dir(lake.join("green_taxi"))
        .expect("the lake dataset exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    folders.sort();
    folders
}

fn lake_files(lake: &Path) -> usize {
    lake_folders(lake)
        .iter()
        .map(|f| {
            std::fs::read_dir(lake.join("green_taxi").join(f))
                .expect("folder")
                .count()
        })
        .sum()
}

fn month_files() -> Vec<PathBuf> {
    baton_tests::green_month_files(&MONTHS)
}

#[test]
fn backfill_into_sqlite_matches_an_independent_count_and_is_idempotent() {
    let server = HttpServer::serve(&green_data_dir());
    let work = tempfile::tempdir().unwrap();
    let env = [("TLC_BASE_URL", server.url.as_str())];
    let output = run(
        work.path(),
        &env,
        &["backfill", "--from", "2021-01", "--to", "2021-03"],
    );
    assert!(
        output.status.success(),
        "backfill failed:\n{}",
        stderr(&output)
    );

    let (expected_rows, expected_dates) = independent_green_counts(&month_files());
    // The pandas baseline of the course (../shared/bench/README.md) loads 113,335 rows in 91 partitions.
    assert_eq!((expected_rows, expected_dates), (113_335, 91));
    let db = work.path().join(".baton/warehouse.db");
    assert_eq!(
        sqlite_count(&db, "SELECT count(*) FROM green_taxi") as usize,
        expected_rows
    );
    assert_eq!(
        sqlite_count(
            &db,
            "SELECT count(*) FROM green_taxi WHERE passenger_count <= 0 OR trip_distance <= 0"
        ),
        0
    );
    let folders = lake_folders(&work.path().join("lake"));
    assert_eq!(folders.len(), expected_dates);
    assert!(
        folders.iter().all(|f| f.starts_with("lpep_pickup_date=")),
        "{folders:?}"
    );
    let files_before = lake_files(&work.path().join("lake"));

    // The same backfill again skips the months the ledger shows as loaded by this version.
    let again = run(
        work.path(),
        &env,
        &["backfill", "--from", "2021-01", "--to", "2021-03"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("3 partition(s) already succeeded"),
        "{}",
        stderr(&again)
    );
    // Forcing it re-runs every month, and the sinks replace rather than duplicate.
    let forced = run(
        work.path(),
        &env,
        &[
            "backfill",
            "--from",
            "2021-01",
            "--to",
            "2021-03",
            "--rerun-all",
        ],
    );
    assert!(
        forced.status.success(),
        "forced backfill failed:\n{}",
        stderr(&forced)
    );
    assert!(
        stderr(&forced).contains("3 run(s): 3 succeeded"),
        "{}",
        stderr(&forced)
    );
    assert_eq!(
        sqlite_count(&db, "SELECT count(*) FROM green_taxi") as usize,
        expected_rows
    );
    assert_eq!(
        lake_folders(&work.path().join("lake")).len(),
        expected_dates
    );
    assert_eq!(lake_files(&work.path().join("lake")), files_before);
}

#[test]
fn backfill_into_postgres_creates_typed_columns_and_is_idempotent() {
    let server = HttpServer::serve(&green_data_dir());
    let postgres = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    let env = [
        ("TLC_BASE_URL", server.url.as_str()),
        ("DATABASE_URL", postgres.url.as_str()),
    ];
    // The first backfill loads the three months at once into an empty database (their DDL must
    // not race); the second is forced, so the sink really replaces every month once more.
    for (attempt, args) in [(1, &["--concurrency", "3"][..]), (2, &["--rerun-all"][..])] {
        let mut all = vec!["backfill", "--from", "2021-01", "--to", "2021-03"];
        all.extend_from_slice(args);
        let output = run(work.path(), &env, &all);
        assert!(
            output.status.success(),
            "backfill {attempt} failed:\n{}",
            stderr(&output)
        );
    }
    let (expected_rows, _) = independent_green_counts(&month_files());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&postgres.url).await.expect("connect to the test cluster");
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM mage.green_taxi").fetch_one(&pool).await.unwrap();
        assert_eq!(count as usize, expected_rows);
        let per_month: Vec<(String, i64)> =
            sqlx::query_as("SELECT partition_month::text, count(*) FROM mage.green_taxi GROUP BY 1 ORDER BY 1").fetch_all(&pool).await.unwrap();
        assert_eq!(per_month.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), ["2021-01-01", "2021-02-01", "2021-03-01"]);
        let types: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns \
             WHERE table_schema = 'mage' AND table_name = 'green_taxi'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let type_of = |name: &str| types.iter().find(|(n, _, _)| n == name).map(|(_, t, nullable)| (t.as_str(), nullable.as_str()));
        assert_eq!(type_of("vendor_id"), Some(("bigint", "YES")));
        assert_eq!(type_of("passenger_count"), Some(("bigint", "NO")));
        assert_eq!(type_of("trip_distance"), Some(("double precision", "NO")));
        assert_eq!(type_of("lpep_pickup_datetime"), Some(("timestamp without time zone", "NO")));
        assert_eq!(type_of("lpep_pickup_date"), Some(("date", "NO")));
        assert_eq!(type_of("store_and_fwd_flag"), Some(("text", "YES")));
        // Nulls survive the CSV COPY as nulls, values as values.
        let (flags, nulls): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE store_and_fwd_flag IN ('N', 'Y')), count(*) FILTER (WHERE store_and_fwd_flag IS NULL) FROM mage.green_taxi",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((flags + nulls) as usize, expected_rows);
        assert!(flags > 0);
        pool.close().await;
    });
}

#[test]
fn a_missing_file_fails_naming_the_url_and_partition_and_loads_nothing() {
    let empty = tempfile::tempdir().unwrap();
    let server = HttpServer::serve(empty.path());
    let work = tempfile::tempdir().unwrap();
    let output = run(
        work.path(),
        &[("TLC_BASE_URL", server.url.as_str())],
        &["run", "--partition", "2021-01"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("404"), "{message}");
    assert!(
        message.contains(&format!("{}/green_tripdata_2021-01.csv.gz", server.url)),
        "{message}"
    );
    assert!(message.contains("partition 2021-01"), "{message}");
    assert!(message.contains("load_warehouse skipped"), "{message}");
    assert!(
        !work.path().join("lake/green_taxi").exists(),
        "nothing may reach the lake"
    );
}

#[test]
fn a_truncated_gzip_fails_clearly_and_keeps_the_previous_load() {
    let served = tempfile::tempdir().unwrap();
    let file = "green_tripdata_2021-01.csv.gz";
    let original = std::fs::read(green_data_dir().join(file)).unwrap();
    std::fs::write(served.path().join(file), &original).unwrap();
    let server = HttpServer::serve(served.path());
    let work = tempfile::tempdir().unwrap();
    let env = [("TLC_BASE_URL", server.url.as_str())];
    let first = run(work.path(), &env, &["run", "--partition", "2021-01"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let db = work.path().join(".baton/warehouse.db");
    let loaded = sqlite_count(&db, "SELECT count(*) FROM green_taxi");
    let files = lake_files(&work.path().join("lake"));

    std::fs::write(served.path().join(file), &original[..original.len() / 2]).unwrap();
    let second = run(work.path(), &env, &["run", "--partition", "2021-01"]);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    let message = stderr(&second);
    assert!(message.contains("truncated or corrupt"), "{message}");
    assert!(
        message.contains(&format!("{}/{file}", server.url)),
        "{message}"
    );
    assert!(message.contains("partition 2021-01"), "{message}");
    assert_eq!(
        sqlite_count(&db, "SELECT count(*) FROM green_taxi"),
        loaded,
        "the earlier load is intact"
    );
    assert_eq!(lake_files(&work.path().join("lake")), files);
}

#[test]
fn graph_and_explain_describe_the_compiled_pipeline() {
    let work = tempfile::tempdir().unwrap();
    let graph = run(work.path(), &[], &["graph"]);
    let text = String::from_utf8_lossy(&graph.stdout);
    assert!(
        text.contains("extract_green_taxi --> clean_green_taxi"),
        "{text}"
    );
    assert!(text.contains("clean_green_taxi --> load_lake"), "{text}");
    let dot = run(work.path(), &[], &["graph", "--format", "dot"]);
    assert!(
        String::from_utf8_lossy(&dot.stdout)
            .contains("\"clean_green_taxi\" -> \"load_warehouse\";")
    );
    let explain = run(work.path(), &[], &["explain"]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        text.contains("lpep_pickup_date  date") || text.contains("lpep_pickup_date       date"),
        "{text}"
    );
    assert!(text.contains("pipelines/green_taxi_etl.toml:"), "{text}");
    let bad = run(work.path(), &[], &["run", "--partition", "2021-13"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// The pipeline binary is linked at a fixed address (ELF type EXEC, not the DYN of a
/// position-independent executable), so it starts without relocating the pointers in its
/// read-only data: about 6 MB less memory for the binary holding all of polars.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn the_pipeline_binary_needs_no_relocation_at_start() {
    use std::io::Read;
    let mut header = [0u8; 18];
    std::fs::File::open(baton_tests::workspace_binary("green_taxi_etl"))
        .and_then(|mut file| file.read_exact(&mut header))
        .expect("the binary's ELF header");
    assert_eq!(&header[..4], b"\x7fELF");
    const EXECUTABLE: u16 = 2;
    assert_eq!(u16::from_le_bytes([header[16], header[17]]), EXECUTABLE);
}
