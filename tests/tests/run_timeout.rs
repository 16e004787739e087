//! A run that passes its `[pipeline] timeout`: the running block fails with the timeout, the
//! blocks not started are skipped, and the failure callback still runs and alerts (a timed-out
//! run is an incident), while a success callback does not.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use baton_runtime::executor::{BlockStatus, RunRequest, run};
use baton_runtime::ledger::TriggerKind;
use baton_tests::{HttpServer, ServerOptions};

mod timing_out {
    baton_macros::pipeline!("fixtures/pipelines/timing_out.toml");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_run_fails_and_alerts() {
    let work = tempfile::tempdir().unwrap();
    let server = HttpServer::start(
        work.path(),
        ServerOptions {
            stall: Some("stalled".into()),
            ..ServerOptions::default()
        },
    );
    std::fs::write(work.path().join("trips_stalled.csv"), "trip_id\n1\n").unwrap();
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe {
        baton_tests::point_test_pipeline_at(&server, work.path());
    }
    let services = baton_tests::sqlite_services(work.path()).await;
    let started = Instant::now();
    let report = run(
        &timing_out::PIPELINE,
        RunRequest::full(None, HashMap::new(), TriggerKind::Run),
        &services,
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!report.succeeded());
    let status = |name: &str| report.block(name).unwrap().status.clone();
    assert!(
        matches!(status("extract"), BlockStatus::Failed { error } if error.contains("the run timed out after 2.0s")),
        "{:?}",
        status("extract")
    );
    assert!(matches!(status("load"), BlockStatus::Skipped { .. }));
    assert!(
        matches!(status("alert"), BlockStatus::Succeeded { .. }),
        "{:?}",
        status("alert")
    );
    assert!(matches!(status("done"), BlockStatus::Skipped { .. }));
    let alerts = server.posted("/hook");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0]["message"]
            .as_str()
            .unwrap()
            .contains("timing_out: extract: block `extract`: the run timed out after 2.0s"),
        "{}",
        alerts[0]
    );
}
