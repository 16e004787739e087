//! The web UI that `serve` answers at `/ui`, end to end in headless Chromium (Debian's
//! `chromium`, which scripts/test.sh installs): after a real run of green taxi 2021-01, the page
//! draws the compiled DAG with every block coloured by the run's outcome, the run's Gantt
//! timeline of block attempts and the runs list. The API the page reads (the compiled pipeline
//! with schemas and lineage, a run's log lines, a preview of a checkpoint) is checked directly.
//! Screenshots are saved under the test's target folder (`CARGO_TARGET_TMPDIR/ui/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{
    HttpServer, green_data_dir, http_request, start_service, trigger_run, wait_for_run,
};

const TOKEN: &str = "ui-token-5678";

/// Chromium, headless, with no network of its own beyond loopback: the flags keep it from
/// calling Google's services, which this machine refuses.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .expect("Chromium is not installed: run scripts/test.sh, which installs Debian's chromium");
    let mut command = Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,1000",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null());
    // Bounded: a Chromium that hangs fails the test instead of stalling CI.
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Chromium starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("Chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = http_request(port, "GET", path, &[], None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_ui_draws_the_dag_and_a_run_timeline_in_chromium() {
    let server = HttpServer::serve(&green_data_dir());
    let work = tempfile::tempdir().unwrap();
    let (mut service, port) = start_service(
        "green_taxi_etl",
        work.path(),
        &[
            ("TLC_BASE_URL", server.url.as_str()),
            ("BATON_API_TOKEN", TOKEN),
        ],
        &["--no-schedule"],
    );

    // A real run to look at.
    let run_id = trigger_run(port, TOKEN, "2021-01");
    let detail = wait_for_run(port, &run_id, Duration::from_secs(120));
    assert_eq!(detail["run"]["status"], "succeeded", "{detail}");

    // The compiled pipeline: edges, schemas and lineage through the rename.
    let pipeline = json(port, "/pipeline");
    let blocks = pipeline["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 6);
    let clean = &blocks[1];
    assert_eq!(clean["name"], "clean_green_taxi");
    assert_eq!(clean["inputs"], serde_json::json!([0]));
    let vendor = clean["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vendor_id")
        .expect("the renamed column");
    assert_eq!(vendor["type"], "int64?");
    assert_eq!(vendor["from"], "`extract_green_taxi.VendorID`");

    // The run's log lines, filed under their blocks, and its checkpointed rows.
    let logs = json(port, &format!("/runs/{run_id}/logs"));
    let lines = logs["lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["block"] == "load_warehouse"),
        "{logs}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str().unwrap().contains("run started")),
        "{logs}"
    );
    let only = json(port, &format!("/runs/{run_id}/logs?block=load_warehouse"));
    assert!(
        only["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["block"] == "load_warehouse")
    );
    let preview = json(
        port,
        &format!("/runs/{run_id}/blocks/clean_green_taxi/preview?limit=5"),
    );
    assert_eq!(preview["rows"].as_array().unwrap().len(), 5, "{preview}");
    assert!(
        preview["columns"]
            .as_array()
            .unwrap()
            .contains(&"vendor_id".into())
    );
    let (status, _) = http_request(
        port,
        "GET",
        &format!("/runs/{run_id}/blocks/load_warehouse/preview"),
        &[],
        None,
    );
    assert_eq!(status, 404, "a sink has no checkpoint to preview");

    // A long history: 10,000 older runs in the ledger. The page shows the newest hundred and
    // offers the next page, rather than loading them all.
    let ledger = work.path().join(".baton/ledger.db");
    let seeded = Command::new("sqlite3")
        .arg(&ledger)
        .arg(
            "PRAGMA busy_timeout = 30000; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) \
             INSERT INTO baton_runs (run_id, pipeline, partition_key, status, trigger_kind, \
             version, params, host, pid, started_at, heartbeat_at, ended_at) \
             SELECT 'history-' || i, 'green_taxi_etl', '2020-01', \
             CASE WHEN i % 7 = 0 THEN 'failed' ELSE 'succeeded' END, 'schedule', 'old', '{}', \
             'elsewhere', 1, 1600000000000 + i * 60000, 1600000000000 + i * 60000, \
             1600000000000 + i * 60000 + 5000 FROM n;",
        )
        .stdout(Stdio::null())
        .status()
        .expect("sqlite3 runs");
    assert!(seeded.success());
    let page = json(port, "/runs?limit=100");
    assert_eq!(page["runs"].as_array().unwrap().len(), 100);
    assert_eq!(page["runs"][0]["run_id"], run_id.as_str(), "newest first");
    let last = page["runs"][99]["started_at"].as_i64().unwrap();
    let next = json(port, &format!("/runs?limit=100&before={last}"));
    assert!(next["runs"][0]["started_at"].as_i64().unwrap() < last);

    // The page, rendered by Chromium after its scripts ran.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/ui#run={run_id}");
    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    let dom_text = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom_text.contains("data-ready=\"true\""),
        "the page did not finish loading: {}\n{dom_text}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for block in [
        "extract_green_taxi",
        "clean_green_taxi",
        "load_warehouse",
        "load_lake",
    ] {
        assert!(
            dom_text.contains(&format!("class=\"node succeeded\" data-block=\"{block}\"")),
            "{block} is not drawn as succeeded:\n{dom_text}"
        );
        assert!(
            dom_text.contains(&format!("class=\"bar succeeded\" data-block=\"{block}\"")),
            "{block} has no bar in the timeline:\n{dom_text}"
        );
    }
    assert!(
        dom_text.contains("data-from=\"extract_green_taxi\" data-to=\"clean_green_taxi\""),
        "{dom_text}"
    );
    assert!(
        dom_text.contains(&format!("data-run=\"{run_id}\"")),
        "{dom_text}"
    );
    assert!(dom_text.contains("100 shown"), "{dom_text}");
    assert!(
        dom_text.contains("<button id=\"older\">"),
        "the next page is offered"
    );

    // Screenshots for people: the page, and the run's timeline.
    let shots: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("run.png");
    let _ = std::fs::remove_file(&shot);
    let output = chromium(
        profile.path(),
        &[&format!("--screenshot={}", shot.display()), &url],
    );
    let png = std::fs::read(&shot)
        .unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&output.stderr)));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    let _ = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while service.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}
