//! The run ledger on a throwaway PostgreSQL cluster (what several replicas share): the same
//! migrations create the schema, a run of the real pipeline is recorded with its version and
//! git commit, and a run whose process died is marked abandoned by the next command.

use std::process::Output;

use baton_tests::{HttpServer, Postgres, green_data_dir, output_text, run_pipeline};

fn run(workdir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    run_pipeline("green_taxi_etl", workdir, env, args)
}

fn text(output: &Output) -> String {
    output_text(output)
}

#[test]
fn runs_are_recorded_in_a_postgres_ledger_and_dead_runs_recovered() {
    let postgres = Postgres::start();
    let server = HttpServer::serve(&green_data_dir());
    let work = tempfile::tempdir().unwrap();
    let env = [
        ("TLC_BASE_URL", server.url.as_str()),
        ("BATON_LEDGER_URL", postgres.url.as_str()),
    ];
    let output = run(work.path(), &env, &["run", "--partition", "2021-01"]);
    assert!(output.status.success(), "{}", text(&output));
    // Nothing was written to the default SQLite ledger.
    assert!(!work.path().join(".baton/ledger.db").exists());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = runtime
        .block_on(sqlx::PgPool::connect(&postgres.url))
        .expect("connect to the test cluster");
    let (run_id, status, version, commit): (String, String, String, Option<String>) = runtime
        .block_on(
            sqlx::query_as(
                "SELECT run_id, status, version, git_commit FROM baton_runs WHERE partition_key = '2021-01'",
            )
            .fetch_one(&pool),
        )
        .unwrap();
    assert_eq!(status, "succeeded");
    assert_eq!(version.len(), 16);
    // The test runs from a git checkout, so the build script knew the commit.
    assert!(
        commit.as_deref().is_some_and(|c| c.len() >= 40),
        "{commit:?}"
    );
    let (blocks, attempts): (i64, i64) = runtime
        .block_on(
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM baton_block_runs WHERE run_id = $1), \
                 (SELECT count(*) FROM baton_attempts WHERE run_id = $1)",
            )
            .bind(&run_id)
            .fetch_one(&pool),
        )
        .unwrap();
    // Six blocks; the failure callback was skipped and the SLA alert is `serve`'s, so neither
    // made an attempt.
    assert_eq!((blocks, attempts), (6, 4));

    // A run left "running" by a process that no longer exists on this machine.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    runtime
        .block_on(
            sqlx::query(
                "INSERT INTO baton_runs (run_id, pipeline, partition_key, status, trigger_kind, \
                 version, params, host, pid, started_at, heartbeat_at) VALUES \
                 ('ghost', 'green_taxi_etl', '2021-02', 'running', 'backfill', $1, '{}', $2, \
                 4194400, 0, 0)",
            )
            .bind(&version)
            .bind(&host)
            .execute(&pool),
        )
        .unwrap();
    let runs = run(work.path(), &env, &["runs"]);
    assert!(runs.status.success(), "{}", text(&runs));
    let runs = text(&runs);
    assert!(
        runs.lines()
            .any(|l| l.starts_with("ghost") && l.contains("abandoned")),
        "{runs}"
    );
    assert!(
        runs.lines()
            .any(|l| l.starts_with(&run_id) && l.contains("succeeded")),
        "{runs}"
    );
    runtime.block_on(pool.close());
}
