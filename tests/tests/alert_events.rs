//! Alerts on the events besides failure, against a loopback webhook receiver: a `recovery`
//! callback speaks once when a success follows a failure (and not after a success), and a
//! `warning` callback reports the data checks that flagged rows, with a link to the run when
//! `BATON_UI_URL` is set. (`serve_e2e.rs` covers the `sla` callback.)

use std::collections::HashMap;

use baton_runtime::executor::{RunRequest, run};
use baton_runtime::ledger::TriggerKind;
use baton_runtime::partition::{Granularity, Partition};
use baton_tests::HttpServer;

mod alerting {
    baton_macros::pipeline!("fixtures/pipelines/alerting.toml");
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_and_warnings_are_reported_once_each() {
    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    // Two fares are not positive: the warn check flags them, the run still loads everything.
    std::fs::write(
        files.join("trips_2024-01-03.csv"),
        "trip_id,fare\n1,12.5\n2,0\n3,\n4,7.0\n",
    )
    .unwrap();
    std::fs::write(files.join("trips_2024-01-04.csv"), "trip_id,fare\n1,3.5\n").unwrap();
    let server = HttpServer::serve(&files);
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe {
        baton_tests::point_test_pipeline_at(&server, work.path());
        std::env::set_var("BATON_UI_URL", "https://baton.example.com/");
    }
    let services = baton_tests::sqlite_services(work.path()).await;
    let run_day = |key: &'static str| {
        let partition = Partition::parse(Granularity::Daily, key).unwrap();
        run(
            &alerting::PIPELINE,
            RunRequest::full(Some(partition), HashMap::new(), TriggerKind::Run),
            &services,
        )
    };
    // Callbacks run side by side, so events of one run come in either order.
    let events = || {
        let mut events: Vec<String> = server
            .posted("/hook")
            .iter()
            .map(|b| format!("{} {}", b["partition"], b["event"].as_str().unwrap()))
            .collect();
        events.sort();
        events
    };

    // No file: a failure, and no recovery to speak of.
    assert!(!run_day("2024-01-02").await.unwrap().succeeded());
    assert_eq!(events(), ["\"2024-01-02\" failure"]);

    // Back to work with flagged rows: the incident is over, and the checks warned.
    let report = run_day("2024-01-03").await.unwrap();
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(
        events(),
        [
            "\"2024-01-02\" failure",
            "\"2024-01-03\" recovery",
            "\"2024-01-03\" warning"
        ]
    );
    let bodies = server.posted("/hook");
    let of = |event: &str| bodies.iter().find(|b| b["event"] == event).unwrap();
    let recovery = of("recovery");
    assert_eq!(recovery["status"], "recovered");
    let link = format!(
        "https://baton.example.com/ui#run={}",
        recovery["run_id"].as_str().unwrap()
    );
    assert_eq!(recovery["run_url"], link.as_str());
    assert!(recovery["message"].as_str().unwrap().ends_with(&link));
    let warning = of("warning");
    assert_eq!(warning["status"], "warned");
    let flagged = warning["warnings"][0].as_str().unwrap();
    assert!(
        flagged.starts_with("check `fare > 0`") && flagged.contains("failed for 2 of 4 rows"),
        "{warning}"
    );
    assert!(warning["message"].as_str().unwrap().contains(flagged));

    // A clean success after a success: nothing to say.
    assert!(run_day("2024-01-04").await.unwrap().succeeded());
    assert_eq!(events().len(), 3, "{:?}", events());
}
