//! `serve` end to end with the committed `green_taxi_etl` binary: the scheduler starts runs on
//! time (an every-two-seconds pattern replaces the monthly one), the API answers, refuses to
//! start work without the token, starts a run with it, `/metrics` is valid Prometheus text, and
//! SIGTERM stops the service cleanly; a scheduled run still going after the SLA raises the
//! pipeline's `on = "sla"` alert, once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{
    HttpServer, ServerOptions, free_port, green_data_dir, http_request, last_complete_months,
    pipeline_command, sqlite_rows, start_service, trigger_run, wait_for_port, wait_for_run,
};

const TOKEN: &str = "test-token-1234";

/// Every non-comment line of a Prometheus text exposition is `name{labels} value`.
fn check_prometheus_text(text: &str) {
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end + 1..series.len() - 1];
            assert!(series.ends_with('}'), "{line}");
            for label in labels.split("\",").filter(|l| !l.is_empty()) {
                let (key, value) = label.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!value.contains('\n'), "{line}");
            }
        }
    }
}

#[test]
fn the_scheduler_runs_on_time_and_the_api_answers() {
    let server = HttpServer::serve(&green_data_dir());
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut service = pipeline_command(
        "green_taxi_etl",
        work.path(),
        &[
            ("TLC_BASE_URL", server.url.as_str()),
            ("BATON_API_TOKEN", TOKEN),
        ],
        &[
            "serve",
            "--listen",
            &listen,
            "--cron",
            "*/2 * * * * *",
            "--grace",
            "60s",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("serve starts");
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "serve did not listen"
    );

    let (status, body) = http_request(port, "GET", "/health", &[], None);
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["pipeline"], "green_taxi_etl");
    assert_eq!(health["scheduler"]["cron"], "*/2 * * * * *");
    assert_eq!(health["scheduler"]["timezone"], "America/New_York");

    // Starting work needs the token.
    let run = r#"{"partition": "2021-01"}"#;
    let (status, _) = http_request(port, "POST", "/runs", &[], Some(run));
    assert_eq!(status, 401);
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(
        http_request(port, "POST", "/runs", &wrong, Some(run)).0,
        401
    );
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let bad = r#"{"partition": "2021-13"}"#;
    let (status, body) = http_request(port, "POST", "/runs", &auth, Some(bad));
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_request(port, "POST", "/runs", &auth, Some(run));
    assert_eq!(status, 202, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run_id = started["run_id"].as_str().unwrap().to_string();

    // The triggered run finishes and its detail shows every block.
    let deadline = Instant::now() + Duration::from_secs(120);
    let detail = loop {
        let (status, body) = http_request(port, "GET", &format!("/runs/{run_id}"), &[], None);
        if status == 200 {
            let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
            if detail["run"]["status"] != "running" {
                break detail;
            }
        }
        assert!(Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(detail["run"]["status"], "succeeded", "{detail}");
    assert_eq!(detail["run"]["trigger"], "api");
    assert_eq!(detail["blocks"].as_array().unwrap().len(), 6);
    assert_eq!(http_request(port, "GET", "/runs/nope", &[], None).0, 404);

    // Let the scheduler tick a few times (its runs fail: the local server has no file for the
    // latest month, which is fine for timing).
    std::thread::sleep(Duration::from_secs(7));
    let (status, metrics) = http_request(port, "GET", "/metrics", &[], None);
    assert_eq!(status, 200);
    check_prometheus_text(&metrics);
    // Prometheus' own Python client parses it too, into the families the docs list.
    let families = baton_tests::peers::python(
        "import sys\n\
         from prometheus_client.parser import text_string_to_metric_families\n\
         for family in text_string_to_metric_families(sys.argv[1]):\n\
         \x20   print(family.name, family.type, len(family.samples))",
        &[&metrics],
    );
    for (family, kind) in [
        ("baton_runs", "gauge"),
        ("baton_block_duration_seconds", "histogram"),
        ("baton_block_rows", "counter"),
        ("baton_block_bytes", "counter"),
        ("baton_ledger_heartbeat_lag_seconds", "gauge"),
        ("baton_scheduler_next_tick_timestamp_seconds", "gauge"),
    ] {
        assert!(
            families
                .lines()
                .any(|l| l.starts_with(&format!("{family} {kind} "))),
            "{family} ({kind}) not parsed: {families}"
        );
    }
    assert!(
        metrics.contains("baton_runs{pipeline=\"green_taxi_etl\",status=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_block_duration_seconds_bucket{pipeline=\"green_taxi_etl\",block=\"load_warehouse\",le=\"+Inf\"} 1"),
        "{metrics}"
    );
    // Bytes moved: the cleaned month's frame, a few megabytes.
    let bytes: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "baton_block_bytes_total{pipeline=\"green_taxi_etl\",block=\"clean_green_taxi\"} ",
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(bytes > 1_000_000.0, "{bytes}");
    assert!(metrics.contains("baton_ledger_heartbeat_lag_seconds{pipeline=\"green_taxi_etl\"}"));
    let (status, openapi) = http_request(port, "GET", "/openapi.json", &[], None);
    assert_eq!(status, 200);
    let openapi: serde_json::Value = serde_json::from_str(&openapi).unwrap();
    assert!(openapi["paths"]["/runs"]["post"].is_object());

    // SIGTERM: the service stops taking work and exits cleanly.
    let stopped = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(90);
    let exit = loop {
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit:?}");

    // The scheduled runs started every two seconds, on the tick.
    let starts: Vec<i64> = sqlite_rows(
        &work.path().join(".baton/ledger.db"),
        "SELECT started_at FROM baton_runs WHERE trigger_kind = 'schedule' ORDER BY started_at",
    )
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    assert!(starts.len() >= 3, "{starts:?}");
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (1_500..=2_700).contains(&gap),
            "runs {gap} ms apart: {starts:?}"
        );
    }
    // Nothing is left running.
    let running = sqlite_rows(
        &work.path().join(".baton/ledger.db"),
        "SELECT count(*) FROM baton_runs WHERE status = 'running'",
    );
    assert_eq!(running, ["0"]);
}

#[test]
fn serve_reports_a_missed_sla() {
    // The file stalls, so the scheduled run is still going when its one-second SLA passes.
    let month = last_complete_months(1)[0];
    let name = format!("green_tripdata_{}.csv.gz", month.key());
    let files = baton_tests::green_files_for(&[month]);
    let server = HttpServer::start(
        files.path(),
        ServerOptions {
            stall: Some(name),
            ..ServerOptions::default()
        },
    );
    let work = tempfile::tempdir().unwrap();
    let hook = format!("{}/hook", server.url);
    let (mut service, _) = start_service(
        "green_taxi_etl",
        work.path(),
        &[
            ("TLC_BASE_URL", server.url.as_str()),
            ("ALERT_WEBHOOK_URL", hook.as_str()),
        ],
        &["--cron", "*/2 * * * * *", "--sla", "1s", "--grace", "1s"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let late = loop {
        if let Some(body) = server.posted("/hook").into_iter().next() {
            break body;
        }
        assert!(Instant::now() < deadline, "no SLA alert was sent");
        std::thread::sleep(Duration::from_millis(200));
    };
    // One alert for the one late run: further ticks are skipped while it goes.
    std::thread::sleep(Duration::from_secs(3));
    let _ = service.kill();
    let _ = service.wait();
    assert_eq!(server.posted("/hook").len(), 1);
    assert_eq!(late["event"], "sla");
    assert_eq!(late["status"], "missed its SLA");
    assert_eq!(late["partition"], month.key().as_str());
    let message = late["message"].as_str().unwrap();
    assert!(
        message.contains("missed its SLA: not finished 1.0s after its scheduled time"),
        "{message}"
    );
}

#[test]
fn a_running_run_is_cancelled_through_the_api() {
    let server = HttpServer::start(
        &green_data_dir(),
        ServerOptions {
            stall: Some("2021-02".into()),
            ..ServerOptions::default()
        },
    );
    let work = tempfile::tempdir().unwrap();
    let hook = format!("{}/hook", server.url);
    let (mut service, port) = start_service(
        "green_taxi_etl",
        work.path(),
        &[
            ("TLC_BASE_URL", server.url.as_str()),
            ("BATON_API_TOKEN", TOKEN),
            ("ALERT_WEBHOOK_URL", hook.as_str()),
        ],
        &["--no-schedule"],
    );
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let run_id = trigger_run(port, TOKEN, "2021-02");
    // The extract is stuck on the stalling file.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.requests().iter().any(|r| r.contains("2021-02")) {
        assert!(
            Instant::now() < deadline,
            "the run never asked for the file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cancel = format!("/runs/{run_id}/cancel");
    assert_eq!(http_request(port, "POST", &cancel, &[], None).0, 401);
    let (status, body) = http_request(port, "POST", &cancel, &auth, None);
    assert_eq!(status, 202, "{body}");

    let detail = wait_for_run(port, &run_id, Duration::from_secs(30));
    assert_eq!(detail["run"]["status"], "cancelled", "{detail}");
    let blocks = detail["blocks"].as_array().unwrap();
    let extract = blocks
        .iter()
        .find(|b| b["block"] == "extract_green_taxi")
        .unwrap();
    assert_eq!(extract["status"], "failed");
    assert!(
        extract["error"]
            .as_str()
            .unwrap()
            .contains("cancelled by api token sha256:"),
        "{extract}"
    );
    let load = blocks
        .iter()
        .find(|b| b["block"] == "load_warehouse")
        .unwrap();
    assert_eq!(load["status"], "skipped");
    // A deliberate cancel is not an incident: no failure alert.
    assert!(server.posted("/hook").is_empty());
    // Once ended, there is nothing left to cancel.
    let (status, body) = http_request(port, "POST", &cancel, &auth, None);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already ended: cancelled"), "{body}");
    assert_eq!(
        http_request(port, "POST", "/runs/nope/cancel", &auth, None).0,
        404
    );
    let _ = service.kill();
    let _ = service.wait();
}

#[test]
fn restarting_after_downtime_catches_up_by_the_policy() {
    // Three recent months served from a real month's file.
    let months = last_complete_months(3);
    let files = baton_tests::green_files_for(&months);
    let server = HttpServer::serve(files.path());
    let work = tempfile::tempdir().unwrap();
    let env = [("TLC_BASE_URL", server.url.as_str())];
    // Before the downtime, the service had loaded the oldest of the three.
    let loaded = baton_tests::run_pipeline(
        "green_taxi_etl",
        work.path(),
        &env,
        &["run", "--partition", &months[0].key()],
    );
    assert!(
        loaded.status.success(),
        "{}",
        baton_tests::output_text(&loaded)
    );

    // Back up, with a schedule that does not fire during the test: at start-up it catches up
    // on the latest complete month only (catchup = "latest"), and names the one it skips.
    let (mut service, port) = start_service(
        "green_taxi_etl",
        work.path(),
        &env,
        &["--cron", "0 0 1 1 *"],
    );
    let ledger = work.path().join(".baton/ledger.db");
    let scheduled = || {
        sqlite_rows(
            &ledger,
            "SELECT partition_key || ' ' || status FROM baton_runs \
             WHERE trigger_kind = 'schedule' ORDER BY started_at",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while scheduled().iter().all(|r| r.ends_with(" running")) {
        assert!(
            Instant::now() < deadline,
            "no catch-up run: {:?}",
            scheduled()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = service.kill();
    let _ = service.wait();
    assert_eq!(
        scheduled(),
        [format!("{} succeeded", months[2].key())],
        "only the latest month is caught up"
    );
    let logged = std::fs::read_to_string(work.path().join(format!("serve-{port}.log"))).unwrap();
    assert!(
        logged.contains("partitions missed while the service was down are not caught up"),
        "{logged}"
    );
}
