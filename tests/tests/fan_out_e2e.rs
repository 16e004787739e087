//! Fan-out end to end: the committed `yellow_taxi_2019` binary reads the twelve real monthly
//! samples of 2019 from a loopback server, four at a time. One month answers 503 twice: the
//! block is retried, and the retries fetch only that month.

use baton_tests::{
    HttpServer, ServerOptions, output_text, python_lines, run_pipeline, sqlite_rows,
    yellow_data_dir,
};

/// Rows of the samples that the pipeline keeps, counted with Python's standard library only:
/// passengers > 0, distance > 0, dropoff after pickup.
fn independent_counts() -> Vec<String> {
    let script = r#"
import csv, sys
for month in range(1, 13):
    path = f"{sys.argv[1]}/yellow_tripdata_sample_2019-{month:02}.csv"
    kept = 0
    with open(path, newline='') as f:
        for r in csv.DictReader(f):
            p = int(r['passenger_count']) if r['passenger_count'] else None
            if p is not None and p > 0 and float(r['trip_distance']) > 0 \
                    and r['dropoff_datetime'] > r['pickup_datetime']:
                kept += 1
    print(f"2019-{month:02}|{kept}")
"#;
    python_lines(script, &[yellow_data_dir()])
}

#[test]
fn twelve_months_fan_out_and_a_failing_month_is_refetched_alone() {
    let server = HttpServer::start(
        &yellow_data_dir(),
        ServerOptions {
            fail_first: 2,
            fail_only: Some("2019-07".into()),
            ..ServerOptions::default()
        },
    );
    let work = tempfile::tempdir().unwrap();
    let output = run_pipeline(
        "yellow_taxi_2019",
        work.path(),
        &[("YELLOW_BASE_URL", server.url.as_str())],
        &["run"],
    );
    assert!(output.status.success(), "{}", output_text(&output));

    let gets: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET"))
        .collect();
    // 12 months once, plus July twice more: the other months were not downloaded again.
    assert_eq!(gets.len(), 14, "{gets:#?}");
    for month in 1..=12 {
        let name = format!("yellow_tripdata_sample_2019-{month:02}.csv");
        let expected = if month == 7 { 3 } else { 1 };
        assert_eq!(
            gets.iter().filter(|g| g.contains(&name)).count(),
            expected,
            "{name}: {gets:#?}"
        );
    }

    let counts = sqlite_rows(
        &work.path().join(".baton/warehouse.db"),
        "SELECT source_month, count(*) FROM yellow_taxi_2019 GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(counts, independent_counts());

    // The ledger shows three attempts of the extract, the first two naming July.
    let attempts = sqlite_rows(
        &work.path().join(".baton/ledger.db"),
        "SELECT attempt || ' ' || status || ' ' || coalesce(error, '') FROM baton_attempts \
         WHERE block = 'extract_months' ORDER BY attempt",
    )
    .join("\n");
    let lines: Vec<&str> = attempts
        .lines()
        .filter(|l| l.starts_with(char::is_numeric))
        .collect();
    assert!(
        lines[0].starts_with("1 failed 1 of 12 items failed (11 read)"),
        "{attempts}"
    );
    assert!(attempts.contains("item 2019-07"), "{attempts}");
    assert!(attempts.contains("503"), "{attempts}");
    assert!(
        attempts.lines().any(|l| l.starts_with("3 succeeded")),
        "{attempts}"
    );
}
