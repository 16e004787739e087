//! Several `serve` replicas of one pipeline sharing a PostgreSQL ledger (a throwaway cluster):
//! every schedule tick is run by exactly one of them, and a replica killed mid-run (SIGKILL) is
//! noticed by another, which resumes its run.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use baton_tests::{
    HttpServer, Postgres, ServerOptions, green_data_dir, sqlite_rows, start_service, trigger_run,
};

const TOKEN: &str = "replica-token";

fn replica(work: &Path, ledger: &str, tlc: &str, args: &[&str]) -> (Child, u16) {
    start_service(
        "green_taxi_etl",
        work,
        &[
            ("TLC_BASE_URL", tlc),
            ("BATON_LEDGER_URL", ledger),
            ("BATON_API_TOKEN", TOKEN),
        ],
        args,
    )
}

/// What the replicas logged, for failure messages.
fn replica_logs(work: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(work).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("serve-") {
            all.push_str(&format!("--- {name}\n"));
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    all
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "a replica did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn query<T>(url: &str, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(url)
            .await
            .expect("connect to the ledger");
        sqlx::query_as::<_, T>(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&pool)
            .await
            .unwrap()
    })
}

#[test]
fn two_replicas_run_each_tick_once() {
    let postgres = Postgres::start();
    // Scheduled runs load the latest complete month; serve a real month under its name.
    let month = baton_tests::last_complete_months(1)[0];
    let files = baton_tests::green_files_for(&[month]);
    let server = HttpServer::serve(files.path());
    let work = tempfile::tempdir().unwrap();
    let every_two_seconds = ["--cron", "*/2 * * * * *"];
    let (first, _) = replica(work.path(), &postgres.url, &server.url, &every_two_seconds);
    let (second, _) = replica(work.path(), &postgres.url, &server.url, &every_two_seconds);
    std::thread::sleep(Duration::from_secs(14));
    stop(first);
    stop(second);
    let verified = baton_tests::run_pipeline(
        "green_taxi_etl",
        work.path(),
        &[("BATON_LEDGER_URL", postgres.url.as_str())],
        &["audit", "verify"],
    );
    let report = baton_tests::output_text(&verified);
    assert!(verified.status.success(), "{report}");

    let runs: Vec<(String, i64, Option<i64>, String)> = query(
        &postgres.url,
        "SELECT partition_key, started_at, ended_at, status FROM baton_runs \
         WHERE trigger_kind = 'schedule' ORDER BY started_at",
    );
    // Seven ticks came; a loaded machine may skip some while a run goes (overlap = "skip").
    assert!(runs.len() >= 3, "{runs:?}");
    for (partition, _, _, status) in &runs {
        assert_eq!(partition, &month.key());
        assert_eq!(status, "succeeded", "{runs:?}");
    }
    // One run per two-second tick, whichever replica got it; never two at once.
    for pair in runs.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= 1_500,
            "two runs {gap} ms apart: {runs:?}\n{}",
            replica_logs(work.path())
        );
        assert!(
            pair[0].2.is_some_and(|end| end <= pair[1].1),
            "runs overlap: {runs:?}"
        );
    }
}

#[test]
fn a_replica_killed_mid_run_is_resumed_by_another() {
    let postgres = Postgres::start();
    // The first replica's file server stalls, so its run is caught mid-extract; the second
    // replica reads the same month from a healthy server.
    let stalling = HttpServer::start(
        &green_data_dir(),
        ServerOptions {
            stall: Some("2021-02".into()),
            ..ServerOptions::default()
        },
    );
    let healthy = HttpServer::serve(&green_data_dir());
    let work = tempfile::tempdir().unwrap();
    let (mut first, first_port) = replica(
        work.path(),
        &postgres.url,
        &stalling.url,
        &["--no-schedule"],
    );
    let (second, _) = replica(work.path(), &postgres.url, &healthy.url, &["--no-schedule"]);

    let run_id = trigger_run(first_port, TOKEN, "2021-02");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stalling.requests().iter().any(|r| r.contains("2021-02")) {
        assert!(
            Instant::now() < deadline,
            "the first replica never asked for the file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // The second replica notices within its watch interval and resumes the run.
    let deadline = Instant::now() + Duration::from_secs(90);
    let resumed = loop {
        let rows: Vec<(String, String, String)> = query(
            &postgres.url,
            &format!(
                "SELECT run_id, status, trigger_kind FROM baton_runs \
                 WHERE resumed_from = '{run_id}'"
            ),
        );
        if let Some(row) = rows.first().filter(|r| r.1 != "running") {
            break row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the dead replica's run was not resumed"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(resumed.1, "succeeded", "{resumed:?}");
    assert_eq!(resumed.2, "resume");
    let original: Vec<(String, String)> = query(
        &postgres.url,
        &format!("SELECT status, error FROM baton_runs WHERE run_id = '{run_id}'"),
    );
    assert_eq!(original[0].0, "abandoned", "{original:?}");
    assert!(
        original[0].1.contains("stopped without finishing"),
        "{original:?}"
    );
    stop(second);
    // Exactly one run of the partition did the work, and the month is in the warehouse.
    let runs: Vec<(i64,)> = query(
        &postgres.url,
        "SELECT count(*) FROM baton_runs WHERE partition_key = '2021-02' AND status = 'succeeded'",
    );
    assert_eq!(runs[0].0, 1);
    let loaded = sqlite_rows(
        &work.path().join(".baton/warehouse.db"),
        "SELECT count(*) FROM green_taxi WHERE partition_month LIKE '2021-02%'",
    );
    assert_ne!(loaded, ["0"], "{loaded:?}");
    // The replicas appended to one audit trail at the same time; the chain held.
    let verified = baton_tests::run_pipeline(
        "green_taxi_etl",
        work.path(),
        &[("BATON_LEDGER_URL", postgres.url.as_str())],
        &["audit", "verify"],
    );
    assert!(
        verified.status.success(),
        "{}",
        baton_tests::output_text(&verified)
    );
}

#[test]
fn a_run_is_cancelled_through_another_replica() {
    let postgres = Postgres::start();
    let stalling = HttpServer::start(
        &green_data_dir(),
        ServerOptions {
            stall: Some("2021-03".into()),
            ..ServerOptions::default()
        },
    );
    let work = tempfile::tempdir().unwrap();
    let (first, first_port) = replica(
        work.path(),
        &postgres.url,
        &stalling.url,
        &["--no-schedule"],
    );
    let (second, second_port) = replica(
        work.path(),
        &postgres.url,
        &stalling.url,
        &["--no-schedule"],
    );
    let run_id = trigger_run(first_port, TOKEN, "2021-03");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stalling.requests().iter().any(|r| r.contains("2021-03")) {
        assert!(
            Instant::now() < deadline,
            "the run never asked for the file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Asked of the replica that does not run it: it passes the request on through the ledger.
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = baton_tests::http_request(
        second_port,
        "POST",
        &format!("/runs/{run_id}/cancel"),
        &[("Authorization", bearer.as_str())],
        None,
    );
    assert_eq!(status, 202, "{body}");
    let detail = baton_tests::wait_for_run(second_port, &run_id, Duration::from_secs(30));
    assert_eq!(detail["run"]["status"], "cancelled", "{detail}");
    stop(first);
    stop(second);
}
