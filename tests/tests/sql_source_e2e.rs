//! End to end: `postgres_to_gcs` streams each month of the warehouse table that `green_taxi_etl`
//! loaded into a throwaway PostgreSQL cluster back out with a query, and writes it to the lake as
//! one Parquet file per month; the files are read back with pyarrow and compared with Postgres.

use std::path::Path;

use baton_tests::{HttpServer, Postgres, green_data_dir, output_text, peers, run_pipeline};

/// Per month of the Parquet exports: rows, the sum of total_amount in cents, null e-hail fees.
fn export_facts(lake: &Path, months: &[&str]) -> Vec<(i64, i64, i64)> {
    let files: Vec<String> = months
        .iter()
        .map(|m| {
            lake.join(format!("warehouse_exports/green_taxi/{m}.parquet"))
                .display()
                .to_string()
        })
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = peers::python(
        "import sys, pyarrow.parquet as pq, pyarrow.compute as pc\n\
         for path in sys.argv[1:]:\n    \
             t = pq.read_table(path, use_threads=False)\n    \
             total = pc.sum(t['total_amount']).as_py() or 0\n    \
             print(t.num_rows, round(total * 100), t['ehail_fee'].null_count)",
        &files,
    );
    out.lines()
        .map(|line| {
            let numbers: Vec<i64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
            (numbers[0], numbers[1], numbers[2])
        })
        .collect()
}

#[test]
fn monthly_queries_stream_the_warehouse_into_the_lake() {
    let server = HttpServer::serve(&green_data_dir());
    let postgres = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    let months = ["2021-01", "2021-02"];
    let backfill = ["backfill", "--from", months[0], "--to", months[1]];
    let load = run_pipeline(
        "green_taxi_etl",
        work.path(),
        &[
            ("TLC_BASE_URL", server.url.as_str()),
            ("DATABASE_URL", postgres.url.as_str()),
        ],
        &backfill,
    );
    assert!(load.status.success(), "{}", output_text(&load));

    let lake = work.path().join("lake");
    let lake_url = format!("file://{}", lake.display());
    let database = format!("{}?options=-c%20search_path%3Dmage", postgres.url);
    let env = [
        ("DATABASE_URL", database.as_str()),
        ("GCS_LAKE_URL", lake_url.as_str()),
    ];
    let export = run_pipeline("postgres_to_gcs", work.path(), &env, &backfill);
    assert!(export.status.success(), "{}", output_text(&export));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let expected: Vec<(i64, i64, i64)> = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&postgres.url).await.unwrap();
        let rows = sqlx::query_as(
            "SELECT count(*), round(sum(total_amount) * 100)::bigint, count(*) FILTER (WHERE ehail_fee IS NULL) \
             FROM mage.green_taxi GROUP BY partition_month ORDER BY partition_month",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows
    });
    assert_eq!(expected.len(), 2);
    assert!(
        expected.iter().all(|(_, _, nulls)| *nulls > 0),
        "the months have null e-hail fees"
    );
    assert_eq!(
        export_facts(&lake, &months),
        expected,
        "rows, amounts and nulls survive"
    );

    // Without the search path the table is not found, and Postgres' message says so.
    let env = [
        ("DATABASE_URL", postgres.url.as_str()),
        ("GCS_LAKE_URL", lake_url.as_str()),
    ];
    let output = run_pipeline(
        "postgres_to_gcs",
        work.path(),
        &env,
        &["run", "--partition", months[0]],
    );
    let text = output_text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("relation \"green_taxi\" does not exist") && text.contains("read_month"),
        "{text}"
    );
}
