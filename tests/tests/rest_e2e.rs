//! End to end: `taxi_zones_api` reads the real NYC taxi zone lookup from a loopback JSON API
//! (`tests/support/zones_api.py`) that pages, wants a bearer token and rate-limits its first
//! request, and loads it into the SQLite warehouse.

use std::path::PathBuf;
use std::process::Command;

use baton_tests::peers::Peer;
use baton_tests::{free_port, output_text, run_pipeline, sqlite_rows, workspace_root};

const TOKEN: &str = "zones-test-token";

fn zones_file() -> PathBuf {
    let file = workspace_root().join("../shared/data/tlc/zones/taxi+_zone_lookup.csv");
    assert!(
        file.exists(),
        "this test needs the real NYC TLC zone lookup at {} (the project's shared data folder); it is absent",
        file.display()
    );
    file
}

/// The zones API, stopped on drop.
struct ZonesApi {
    peer: Peer,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ZonesApi {
    fn start() -> ZonesApi {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.log");
        let mut command = Command::new("python3");
        command
            .arg(workspace_root().join("tests/support/zones_api.py"))
            .args(["--port", &port.to_string(), "--token", TOKEN, "--zones"])
            .arg(zones_file())
            .arg("--log")
            .arg(&log);
        let peer = Peer::spawn(command, port, "zones API");
        ZonesApi {
            peer,
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.peer.url()
    }

    fn requests(&self) -> Vec<String> {
        baton_tests::log_lines(&self.log)
    }
}

#[test]
fn a_paginated_authenticated_rate_limited_api_loads_every_record_once() {
    let api = ZonesApi::start();
    let url = api.url();
    let work = tempfile::tempdir().unwrap();
    let env = [("ZONES_API_URL", url.as_str()), ("ZONES_API_TOKEN", TOKEN)];
    let output = run_pipeline("taxi_zones_api", work.path(), &env, &["run"]);
    assert!(output.status.success(), "{}", output_text(&output));

    let csv_rows = std::fs::read_to_string(zones_file())
        .unwrap()
        .lines()
        .count()
        - 1;
    let db = work.path().join(".baton/warehouse.db");
    let counts = sqlite_rows(
        &db,
        "SELECT COUNT(*), COUNT(DISTINCT location_id) FROM taxi_zones",
    );
    assert_eq!(
        counts,
        [format!("{csv_rows}|{csv_rows}")],
        "every zone once"
    );
    let newark = sqlite_rows(
        &db,
        "SELECT borough, zone, service_zone FROM taxi_zones WHERE location_id = 1",
    );
    assert_eq!(
        newark,
        ["EWR|Newark Airport|EWR"],
        "nested fields are flattened"
    );
    assert_eq!(
        api.requests(),
        [
            "GET /v1/zones?page=1&per_page=100 429",
            "GET /v1/zones?page=1&per_page=100 200",
            "GET /v1/zones?page=2&per_page=100 200",
            "GET /v1/zones?page=3&per_page=100 200",
        ],
        "the 429 is waited out per Retry-After, then three pages of 100 are read"
    );

    // A second run replaces the table instead of adding to it.
    let output = run_pipeline("taxi_zones_api", work.path(), &env, &["run"]);
    assert!(output.status.success(), "{}", output_text(&output));
    let again = sqlite_rows(&db, "SELECT COUNT(*) FROM taxi_zones");
    assert_eq!(again, [csv_rows.to_string()]);
}

#[test]
fn a_wrong_token_fails_at_once_with_the_apis_answer() {
    let api = ZonesApi::start();
    let url = api.url();
    let work = tempfile::tempdir().unwrap();
    let env = [
        ("ZONES_API_URL", url.as_str()),
        ("ZONES_API_TOKEN", "wrong"),
    ];
    let output = run_pipeline("taxi_zones_api", work.path(), &env, &["run"]);
    let text = output_text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(
            "returned HTTP 401 Unauthorized: {\"error\": \"missing or wrong bearer token\"}"
        ),
        "{text}"
    );
    assert!(
        !text.contains("wrong\""),
        "the token is never printed:\n{text}"
    );
    // A 401 is not retried: one throttled request, one refused.
    assert_eq!(api.requests().len(), 2, "{:?}", api.requests());

    // Without the variable the run says which secret is missing.
    let output = run_pipeline(
        "taxi_zones_api",
        work.path(),
        &[("ZONES_API_URL", url.as_str())],
        &["run"],
    );
    let text = output_text(&output);
    assert!(!output.status.success());
    assert!(
        text.contains("secret environment variable ZONES_API_TOKEN is not set"),
        "{text}"
    );
}
