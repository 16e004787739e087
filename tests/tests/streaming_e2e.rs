//! green_taxi_etl streaming a real month in small batches (`BATON_BATCH_BYTES`): the rows, lake
//! files and audit checksums are those of a run in one batch; and a file whose bad row comes
//! after many batches have reached the warehouse's open transaction and the lake's spool fails
//! the run without changing what an earlier run loaded, in the embedded SQLite warehouse and in
//! a throwaway PostgreSQL cluster (binary COPY). With `--no-checkpoints` rows still stream, and
//! the spool of a run killed mid-stream is deleted by the next command.
//!
//! Needs the real NYC TLC files in ../shared/data/tlc/green (the test says so when absent).

use std::path::{Path, PathBuf};
use std::process::Command;

use baton_tests::{
    HttpServer, Postgres, green_data_dir, output_text, pipeline_command, run_pipeline, sqlite_rows,
};

/// A month of 76,518 rows: 64 KiB of text per batch makes about 170 batches.
const MONTH: &str = "2021-01";
const SMALL_BATCHES: &str = "65536";

fn run(
    work: &Path,
    server: &HttpServer,
    batch_bytes: Option<&str>,
    postgres: Option<&Postgres>,
) -> std::process::Output {
    let mut env = vec![("TLC_BASE_URL", server.url.as_str())];
    if let Some(bytes) = batch_bytes {
        env.push(("BATON_BATCH_BYTES", bytes));
    }
    if let Some(postgres) = postgres {
        env.push(("DATABASE_URL", postgres.url.as_str()));
    }
    run_pipeline("green_taxi_etl", work, &env, &["run", "--partition", MONTH])
}

/// Rows out of every block and the audit checksum of the cleaned rows, from the last run.
fn recorded(work: &Path) -> (Vec<String>, String) {
    let ledger = work.join(".baton/ledger.db");
    let rows = sqlite_rows(
        &ledger,
        "SELECT block || ' ' || status || ' ' || ifnull(rows_in, '-') || ' ' || ifnull(rows_out, '-') \
         FROM baton_block_runs WHERE run_id = (SELECT run_id FROM baton_runs ORDER BY started_at DESC LIMIT 1) \
         ORDER BY position",
    );
    let checksum = sqlite_rows(
        &ledger,
        "SELECT json_extract(b.value, '$.checksum') \
         FROM baton_audit a, json_each(json_extract(a.detail, '$.blocks')) b \
         WHERE a.event = 'run_finished' AND json_extract(b.value, '$.block') = 'clean_green_taxi' \
         ORDER BY a.seq DESC LIMIT 1",
    );
    (rows, checksum.into_iter().next().unwrap_or_default())
}

/// Every file under `dir` (none if it does not exist) with its size, sorted.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push((path.clone(), entry.metadata().unwrap().len()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    files
}

/// Every lake file with its size, sorted.
fn lake_files(work: &Path) -> Vec<(PathBuf, u64)> {
    files_under(&work.join("lake"))
}

/// Rows and total amount in the warehouse: the SQLite file of `work`, or `postgres`.
fn warehouse_month(work: &Path, postgres: Option<&Postgres>) -> Vec<String> {
    let Some(postgres) = postgres else {
        return sqlite_rows(
            &work.join(".baton/warehouse.db"),
            "SELECT count(*) || ' ' || round(sum(total_amount), 2) FROM green_taxi",
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&postgres.url).await.unwrap();
        let (summary,): (String,) = sqlx::query_as(
            "SELECT count(*) || ' ' || round(sum(total_amount)::numeric, 2) FROM mage.green_taxi",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        vec![summary]
    })
}

#[test]
fn small_batches_load_what_one_batch_loads() {
    let data = green_data_dir();
    let server = HttpServer::serve(&data);
    let whole = tempfile::tempdir().unwrap();
    let output = run(whole.path(), &server, Some("1000000000"), None);
    assert!(output.status.success(), "{}", output_text(&output));
    let batched = tempfile::tempdir().unwrap();
    let output = run(batched.path(), &server, Some(SMALL_BATCHES), None);
    assert!(output.status.success(), "{}", output_text(&output));

    let (whole_rows, whole_checksum) = recorded(whole.path());
    let (batched_rows, batched_checksum) = recorded(batched.path());
    assert_eq!(
        whole_rows,
        [
            "extract_green_taxi succeeded 0 76518",
            "clean_green_taxi succeeded 76518 38324",
            "load_warehouse succeeded 38324 38324",
            "load_lake succeeded 38324 38324",
            "report_failure skipped - -",
            "report_late skipped - -",
        ]
    );
    assert_eq!(batched_rows, whole_rows);
    assert!(
        whole_checksum.starts_with("blake3-columns:"),
        "{whole_checksum}"
    );
    assert_eq!(batched_checksum, whole_checksum);
    assert_eq!(
        warehouse_month(batched.path(), None),
        warehouse_month(whole.path(), None)
    );
    // The same partition folders, one file each (row groups differ, so sizes may too).
    let names = |work: &Path| -> Vec<String> {
        lake_files(work)
            .into_iter()
            .map(|(path, _)| {
                path.strip_prefix(work)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    assert_eq!(names(batched.path()), names(whole.path()));
    assert!(names(whole.path()).len() > 28, "{:?}", names(whole.path()));
    // The checkpoints that `resume` reads were written batch by batch and hold every row.
    let checkpoints = sqlite_rows(
        &batched.path().join(".baton/ledger.db"),
        "SELECT checkpoint FROM baton_block_runs WHERE block = 'clean_green_taxi'",
    );
    let frame =
        baton_runtime::checkpoint::read_now(&batched.path().join(&checkpoints[0]), &[]).unwrap();
    assert_eq!(frame.height(), 38_324);
    // The source's checkpoint is the file it downloaded, byte for byte, and `inspect` (as
    // `resume` and a retry) parses it again into the rows the source produced.
    let source = sqlite_rows(
        &batched.path().join(".baton/ledger.db"),
        "SELECT checkpoint FROM baton_block_runs WHERE block = 'extract_green_taxi'",
    );
    assert!(
        source[0].ends_with("extract_green_taxi.csv.gz"),
        "{source:?}"
    );
    assert_eq!(
        std::fs::read(batched.path().join(&source[0])).unwrap(),
        std::fs::read(data.join(format!("green_tripdata_{MONTH}.csv.gz"))).unwrap()
    );
    let inspected = run_pipeline(
        "green_taxi_etl",
        batched.path(),
        &[],
        &["inspect", "extract_green_taxi", "--partition", MONTH],
    );
    let text = output_text(&inspected);
    assert!(inspected.status.success(), "{text}");
    assert!(text.contains("rows       76518"), "{text}");
    assert!(
        text.contains("lpep_pickup_datetime   datetime[μs]  (0 nulls)"),
        "{text}"
    );
}

/// `--no-checkpoints` keeps nothing after the run, yet rows still stream in small batches (a
/// retrying consumer reads them back from a spool deleted with the run) and load as before.
#[test]
fn without_kept_checkpoints_the_run_streams_and_leaves_no_checkpoint() {
    let data = green_data_dir();
    let server = HttpServer::serve(&data);
    let work = tempfile::tempdir().unwrap();
    let output = pipeline_command(
        "green_taxi_etl",
        work.path(),
        &[
            ("TLC_BASE_URL", server.url.as_str()),
            ("BATON_BATCH_BYTES", SMALL_BATCHES),
        ],
        &["run", "--partition", MONTH, "--no-checkpoints"],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    let (rows, checksum) = recorded(work.path());
    assert_eq!(rows[1], "clean_green_taxi succeeded 76518 38324");
    assert!(checksum.starts_with("blake3-columns:"), "{checksum}");
    let kept = tempfile::tempdir().unwrap();
    let output = run(kept.path(), &server, None, None);
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(recorded(kept.path()), (rows, checksum));
    assert_eq!(
        warehouse_month(work.path(), None),
        warehouse_month(kept.path(), None)
    );
    let recorded_checkpoints = sqlite_rows(
        &work.path().join(".baton/ledger.db"),
        "SELECT count(*) FROM baton_block_runs WHERE checkpoint IS NOT NULL",
    );
    assert_eq!(recorded_checkpoints, ["0"]);
    assert_eq!(files_under(&work.path().join(".baton/checkpoints")), []);
}

/// A `--no-checkpoints` run killed (SIGKILL) while its rows stream leaves its spool behind; the
/// next command finds the run abandoned and deletes the spool, which the ledger records no
/// checkpoint in.
#[test]
fn a_killed_run_without_kept_checkpoints_leaves_no_spool_behind() {
    let data = green_data_dir();
    let server = HttpServer::serve(&data);
    let work = tempfile::tempdir().unwrap();
    let spools = work.path().join(".baton/checkpoints/green_taxi_etl");
    // Batches of 4 KiB: about 2,700 for the month, so the rows stream for a while.
    let mut child = pipeline_command(
        "green_taxi_etl",
        work.path(),
        &[
            ("TLC_BASE_URL", server.url.as_str()),
            ("BATON_BATCH_BYTES", "4096"),
        ],
        &["run", "--partition", MONTH, "--no-checkpoints"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("the pipeline binary starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while files_under(&spools).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its spool was seen"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no spool after two minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SIGKILL: the run cannot delete its spool.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(files_under(&spools), []);

    let runs = run_pipeline("green_taxi_etl", work.path(), &[], &["runs"]);
    assert!(runs.status.success(), "{}", output_text(&runs));
    let statuses = sqlite_rows(
        &work.path().join(".baton/ledger.db"),
        "SELECT status FROM baton_runs",
    );
    assert_eq!(statuses, ["abandoned"]);
    assert_eq!(files_under(&spools), []);
}

#[test]
fn a_bad_row_late_in_the_file_leaves_the_earlier_load_intact_in_sqlite() {
    bad_row_late_in_the_file(None);
}

#[test]
fn a_bad_row_late_in_the_file_leaves_the_earlier_load_intact_in_postgres() {
    bad_row_late_in_the_file(Some(&Postgres::start()));
}

fn bad_row_late_in_the_file(postgres: Option<&Postgres>) {
    let data = green_data_dir();
    let good = HttpServer::serve(&data);
    let work = tempfile::tempdir().unwrap();
    let output = run(work.path(), &good, None, postgres);
    assert!(output.status.success(), "{}", output_text(&output));
    let loaded = warehouse_month(work.path(), postgres);
    let lake = lake_files(work.path());
    assert_eq!(loaded[0].split(' ').next(), Some("38324"));

    // The same month again, with a pickup time that is no time 70,000 rows in: by then most
    // batches have gone into the warehouse's transaction and the lake's spool.
    let name = format!("green_tripdata_{MONTH}.csv.gz");
    let text = Command::new("gzip")
        .arg("-dc")
        .arg(data.join(&name))
        .output()
        .unwrap()
        .stdout;
    let mut text = String::from_utf8(text).unwrap();
    let line_start = text.match_indices('\n').nth(70_000).unwrap().0 + 1;
    let first_comma = line_start + text[line_start..].find(',').unwrap() + 1;
    let second_comma = first_comma + text[first_comma..].find(',').unwrap();
    text.replace_range(first_comma..second_comma, "soon");
    let bad_dir = tempfile::tempdir().unwrap();
    let mut gzip = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(bad_dir.path().join(&name)).unwrap())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    gzip.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(gzip.wait().unwrap().success());
    let bad = HttpServer::serve(bad_dir.path());

    let output = run(work.path(), &bad, Some(SMALL_BATCHES), postgres);
    let shown = output_text(&output);
    assert!(!output.status.success(), "{shown}");
    assert!(
        shown.contains("lpep_pickup_datetime") && shown.contains("`soon`"),
        "{shown}"
    );
    let (rows, _) = recorded(work.path());
    assert!(rows[0].starts_with("extract_green_taxi failed"), "{rows:?}");
    for (row, block) in rows[1..4]
        .iter()
        .zip(["clean_green_taxi", "load_warehouse", "load_lake"])
    {
        assert!(row.starts_with(&format!("{block} skipped")), "{rows:?}");
    }
    let reasons = sqlite_rows(
        &work.path().join(".baton/ledger.db"),
        "SELECT error FROM baton_block_runs WHERE block = 'load_warehouse' AND status = 'skipped'",
    );
    assert_eq!(reasons, ["input `clean_green_taxi` failed"]);
    // Nothing of the failed run was committed or published.
    assert_eq!(warehouse_month(work.path(), postgres), loaded);
    assert_eq!(lake_files(work.path()), lake);
    // Nor is anything of it left in the lake's staging area.
    assert!(
        !work.path().join("lake/_baton_staging").exists(),
        "the failed write left its staging folder"
    );
}
