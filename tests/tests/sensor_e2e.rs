//! `serve` with a sensor and no schedule (the committed gcs_to_bigquery binary, its lake in a
//! local folder): nothing runs while the month's files are missing; once an object matching the
//! sensor's glob appears, the month runs, once, on the sensor's word, even as the sensor keeps
//! looking.

use std::time::{Duration, Instant};

use baton_tests::{free_port, http_request, sqlite_rows, start_service};

#[test]
fn a_sensor_runs_the_month_once_its_files_appear() {
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let lake_url = lake.display().to_string();
    // BigQuery is a closed port: the run is expected to fail at the load; what matters here is
    // when, and how often, it starts.
    let bigquery = format!(
        "bigquery://test-project/ny_taxi?endpoint=http://127.0.0.1:{}",
        free_port()
    );
    let (mut service, port) = start_service(
        "gcs_to_bigquery",
        work.path(),
        &[
            ("GCS_LAKE_URL", lake_url.as_str()),
            ("BIGQUERY_URL", bigquery.as_str()),
        ],
        &["--poke", "500ms"],
    );
    let ledger = work.path().join(".baton/ledger.db");
    let runs = || {
        sqlite_rows(
            &ledger,
            "SELECT partition_key || ' ' || trigger_kind || ' ' || started_at FROM baton_runs",
        )
    };

    // Nothing to load yet: the sensor looks, nothing runs.
    std::thread::sleep(Duration::from_secs(2));
    let (_, health) = http_request(port, "GET", "/health", &[], None);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["sensor"]["kind"], "object");
    assert!(health["sensor"]["last_poke"].is_string(), "{health}");
    assert!(runs().is_empty(), "{:?}", runs());

    // The month's file lands (under a hidden staging folder first, which does not count).
    let month = baton_tests::last_complete_months(1)[0];
    let staging = lake.join("green_taxi/_baton_staging/x");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join(format!("part-{}.parquet", month.key())), b"x").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        runs().is_empty(),
        "a staged file started a run: {:?}",
        runs()
    );
    let folder = lake.join("green_taxi/lpep_pickup_date=2026-10-01");
    std::fs::create_dir_all(&folder).unwrap();
    let landed = chrono::Utc::now().timestamp_millis();
    std::fs::write(folder.join(format!("part-{}.parquet", month.key())), b"x").unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while runs().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sensor did not start the run"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Several more pokes: the month is not started again.
    std::thread::sleep(Duration::from_secs(3));
    let started = runs();
    let _ = service.kill();
    let _ = service.wait();
    assert_eq!(started.len(), 1, "{started:?}");
    let fields: Vec<&str> = started[0].split(' ').collect();
    assert_eq!(fields[0], month.key());
    assert_eq!(fields[1], "sensor");
    assert!(fields[2].parse::<i64>().unwrap() >= landed);
}
