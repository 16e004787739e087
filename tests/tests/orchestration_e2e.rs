//! Orchestration end to end, with the committed `green_taxi_etl` binary and the real NYC TLC
//! files served on 127.0.0.1: retries recorded in the ledger, recovery after `kill -9` in the
//! middle of a backfill, `resume` after a failed sink, and `run --only` on checkpoints.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{
    HttpServer, ServerOptions, green_data_dir, independent_green_counts, output_text,
    pipeline_command, run_pipeline, sqlite_rows,
};

fn command(workdir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    pipeline_command("green_taxi_etl", workdir, env, args)
}

fn run(workdir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    run_pipeline("green_taxi_etl", workdir, env, args)
}

fn text(output: &Output) -> String {
    output_text(output)
}

/// The id of the newest run in the ledger.
fn newest_run(workdir: &Path) -> String {
    sqlite_rows(
        &workdir.join(".baton/ledger.db"),
        "SELECT run_id FROM baton_runs ORDER BY started_at DESC LIMIT 1",
    )
    .pop()
    .expect("a run in the ledger")
}

fn month_count(month: &str) -> usize {
    let file = green_data_dir().join(format!("green_tripdata_{month}.csv.gz"));
    independent_green_counts(&[file]).0
}

#[test]
fn a_flaky_source_succeeds_after_two_retries_visible_in_run_info() {
    let server = HttpServer::start(
        &green_data_dir(),
        ServerOptions {
            fail_first: 2,
            ..ServerOptions::default()
        },
    );
    let work = tempfile::tempdir().unwrap();
    let env = [("TLC_BASE_URL", server.url.as_str())];
    let output = run(work.path(), &env, &["run", "--partition", "2021-01"]);
    assert!(output.status.success(), "{}", text(&output));
    let gets: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET"))
        .collect();
    assert_eq!(
        gets,
        [
            "GET /green_tripdata_2021-01.csv.gz 503",
            "GET /green_tripdata_2021-01.csv.gz 503",
            "GET /green_tripdata_2021-01.csv.gz 200"
        ]
    );

    let run_id = newest_run(work.path());
    let info = run(work.path(), &[], &["run-info", &run_id]);
    assert!(info.status.success(), "{}", text(&info));
    let info = text(&info);
    assert!(info.contains("status     succeeded"), "{info}");
    let extract = info
        .lines()
        .find(|l| l.starts_with("extract_green_taxi "))
        .unwrap_or_else(|| panic!("no extract row in:\n{info}"));
    let columns: Vec<&str> = extract.split_whitespace().collect();
    assert_eq!(&columns[1..3], ["succeeded", "3"], "{extract}");
    // The clean block's row counts: the whole month in, the rows with passengers and distance out.
    let clean: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("clean_green_taxi "))
        .unwrap_or_else(|| panic!("no clean row in:\n{info}"))
        .split_whitespace()
        .collect();
    let kept = month_count("2021-01").to_string();
    assert_eq!(
        &clean[1..5],
        ["succeeded", "1", "76518", kept.as_str()],
        "{info}"
    );
    let failed_attempts = info
        .lines()
        .filter(|l| l.contains("extract_green_taxi #") && l.contains("failed"))
        .filter(|l| l.contains("503") && l.contains("(retryable)"))
        .count();
    assert_eq!(failed_attempts, 2, "{info}");

    // `runs` lists it too.
    let runs = text(&run(work.path(), &[], &["runs"]));
    assert!(
        runs.lines()
            .any(|l| l.starts_with(&run_id) && l.contains("succeeded")),
        "{runs}"
    );
}

#[test]
fn kill_9_in_a_backfill_then_backfill_again_finishes_only_the_missing_months() {
    let data = green_data_dir();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join(".baton/warehouse.db");
    let ledger = work.path().join(".baton/ledger.db");
    {
        // February stalls, so the backfill is in the middle of it when it is killed.
        let server = HttpServer::start(
            &data,
            ServerOptions {
                stall: Some("2021-02".into()),
                ..ServerOptions::default()
            },
        );
        let env = [("TLC_BASE_URL", server.url.as_str())];
        let mut child = command(
            work.path(),
            &env,
            &["backfill", "--from", "2021-01", "--to", "2021-03"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the pipeline binary starts");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !server
            .requests()
            .iter()
            .any(|r| r.contains("2021-02") && r.ends_with("stalled"))
        {
            assert!(
                Instant::now() < deadline,
                "February was never requested: {:?}",
                server.requests()
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the backfill ended early"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // SIGKILL: no cleanup, no last ledger write.
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let statuses = sqlite_rows(
        &ledger,
        "SELECT partition_key || ' ' || status FROM baton_runs ORDER BY partition_key",
    );
    assert_eq!(statuses, ["2021-01 succeeded", "2021-02 running"]);

    let server = HttpServer::serve(&data);
    let env = [("TLC_BASE_URL", server.url.as_str())];
    let dry = run(
        work.path(),
        &env,
        &[
            "backfill",
            "--from",
            "2021-01",
            "--to",
            "2021-03",
            "--dry-run",
        ],
    );
    let dry = text(&dry);
    assert!(dry.contains("2021-01        skip"), "{dry}");
    assert!(dry.contains("2021-02        run"), "{dry}");
    assert!(dry.contains("abandoned"), "{dry}");
    assert!(
        dry.contains("2 partition(s) would run, 1 would be skipped"),
        "{dry}"
    );

    let again = run(
        work.path(),
        &env,
        &["backfill", "--from", "2021-01", "--to", "2021-03"],
    );
    assert!(again.status.success(), "{}", text(&again));
    // January was not downloaded again.
    let months: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET"))
        .collect();
    assert_eq!(
        months,
        [
            "GET /green_tripdata_2021-02.csv.gz 200",
            "GET /green_tripdata_2021-03.csv.gz 200"
        ]
    );
    // The warehouse holds exactly what a clean run loads, month by month.
    let counts = sqlite_rows(
        &db,
        "SELECT month || ' ' || n FROM (SELECT strftime('%Y-%m', partition_month) AS month, \
         count(*) AS n FROM green_taxi GROUP BY month) ORDER BY month",
    );
    let expected: Vec<String> = ["2021-01", "2021-02", "2021-03"]
        .iter()
        .map(|m| format!("{m} {}", month_count(m)))
        .collect();
    assert_eq!(counts, expected);
    let statuses = sqlite_rows(
        &ledger,
        "SELECT partition_key || ' ' || status FROM baton_runs ORDER BY partition_key, started_at",
    );
    assert_eq!(
        statuses,
        [
            "2021-01 succeeded",
            "2021-02 abandoned",
            "2021-02 succeeded",
            "2021-03 succeeded"
        ]
    );
}

#[test]
fn resume_reruns_only_the_failed_sink_and_run_only_reuses_checkpoints() {
    let server = HttpServer::serve(&green_data_dir());
    let work = tempfile::tempdir().unwrap();
    // The lake's path is a file, so the lake sink fails (not retryable) while the table loads.
    let blocked = work.path().join("not-a-folder");
    std::fs::write(&blocked, "x").unwrap();
    let blocked = blocked.display().to_string();
    let env = [
        ("TLC_BASE_URL", server.url.as_str()),
        ("LAKE_URL", blocked.as_str()),
    ];
    let failed = run(work.path(), &env, &["run", "--partition", "2021-01"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let failed_text = text(&failed);
    assert!(failed_text.contains("load_lake"), "{failed_text}");
    let failed_run = newest_run(work.path());

    // With the lake fixed, resume runs only the lake sink, on the checkpointed clean rows.
    let lake = work.path().join("lake").display().to_string();
    let env = [
        ("TLC_BASE_URL", server.url.as_str()),
        ("LAKE_URL", lake.as_str()),
    ];
    let resumed = run(work.path(), &env, &["resume", &failed_run]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let gets = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET"))
        .count();
    assert_eq!(gets, 1, "resume downloaded again: {:?}", server.requests());
    let resumed_run = newest_run(work.path());
    let info = text(&run(work.path(), &[], &["run-info", &resumed_run]));
    assert!(info.contains(&format!("resumes    {failed_run}")), "{info}");
    for (block, status) in [
        ("extract_green_taxi", "reused"),
        ("clean_green_taxi", "reused"),
        ("load_warehouse", "reused"),
        ("load_lake", "succeeded"),
    ] {
        assert!(
            info.lines()
                .any(|l| l.starts_with(block) && l.split_whitespace().nth(1) == Some(status)),
            "{block} should be {status}:\n{info}"
        );
    }
    let folders = std::fs::read_dir(work.path().join("lake/green_taxi"))
        .unwrap()
        .count();
    assert!(folders >= 28, "{folders} lake folders");

    // The fast loop: one transform again, on the checkpointed extract, nothing downloaded.
    let started = Instant::now();
    let only = run(
        work.path(),
        &env,
        &[
            "run",
            "--partition",
            "2021-01",
            "--only",
            "clean_green_taxi",
        ],
    );
    let elapsed = started.elapsed();
    assert!(only.status.success(), "{}", text(&only));
    eprintln!("run --only clean_green_taxi took {elapsed:?}");
    let gets = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET"))
        .count();
    assert_eq!(gets, 1, "--only downloaded again");
    let only_text = text(&only);
    assert!(
        only_text.contains(&format!("clean_green_taxi {} rows", month_count("2021-01"))),
        "{only_text}"
    );

    // `inspect` shows the checkpoint the fast loop wrote.
    let inspect = run(
        work.path(),
        &[],
        &[
            "inspect",
            "clean_green_taxi",
            "--partition",
            "2021-01",
            "--rows",
            "3",
        ],
    );
    assert!(inspect.status.success(), "{}", text(&inspect));
    let inspect = text(&inspect);
    assert!(
        inspect.contains(&format!("rows       {}", month_count("2021-01"))),
        "{inspect}"
    );
    assert!(inspect.contains("vendor_id"), "{inspect}");
}

#[test]
fn a_scheduled_run_names_the_partitions_it_missed() {
    let server = HttpServer::serve(&green_data_dir());
    let work = tempfile::tempdir().unwrap();
    let env = [("TLC_BASE_URL", server.url.as_str())];
    let first = run(work.path(), &env, &["run", "--partition", "2021-01"]);
    assert!(first.status.success(), "{}", text(&first));
    // Without --partition the run takes the latest complete month; with the pipeline's
    // `catchup = "latest"` it does not load the months in between but says which they are.
    // The local server has no file for that month, so the run itself fails with a 404.
    let scheduled = run(work.path(), &env, &["run"]);
    let output = text(&scheduled);
    assert_eq!(scheduled.status.code(), Some(1), "{output}");
    assert!(output.contains("partitions 2021-02 to "), "{output}");
    assert!(
        output.contains("run `backfill --from 2021-02 --to "),
        "{output}"
    );
    assert!(output.contains("HTTP 404"), "{output}");
    let runs = sqlite_rows(
        &work.path().join(".baton/ledger.db"),
        "SELECT count(*) FROM baton_runs",
    );
    assert_eq!(runs, ["2"], "one scheduled run, not one per missed month");
}
