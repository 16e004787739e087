//! Failure handling through the `pipeline!` macro and a real SQLite ledger: an upstream failure
//! skips the blocks that need its rows (they do not hang), an `always` callback still runs, a
//! failure callback POSTs exactly one webhook to a loopback receiver, the run ends failed with
//! the root cause named; and a false `run_if` skips its block without failing the run.

use std::collections::HashMap;

use baton_runtime::checkpoint::Checkpoints;
use baton_runtime::executor::{BlockStatus, RunRequest, Services, run};
use baton_runtime::ledger::{Ledger, TriggerKind};
use baton_runtime::partition::{Granularity, Partition};
use baton_tests::HttpServer;

mod orchestrated {
    baton_macros::pipeline!("fixtures/pipelines/orchestrated.toml");
}

fn status_of<'r>(statuses: &'r [(&str, BlockStatus)], block: &str) -> &'r BlockStatus {
    &statuses
        .iter()
        .find(|(name, _)| *name == block)
        .unwrap_or_else(|| panic!("no block {block}"))
        .1
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_skip_downstream_run_cleanup_and_alert_once() {
    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    for day in ["2024-01-01", "2024-01-03"] {
        std::fs::write(
            files.join(format!("trips_{day}.csv")),
            "trip_id,fare\n1,12.5\n2,0\n3,\n4,7.0\n",
        )
        .unwrap();
    }
    let server = HttpServer::serve(&files);
    let db = work.path().join("warehouse.db");
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("API_URL", &server.url);
        std::env::set_var("DATABASE_URL", format!("sqlite://{}", db.display()));
        std::env::set_var("ALERT_WEBHOOK_URL", format!("{}/hook", server.url));
    }
    let ledger = Ledger::open(&format!(
        "sqlite://{}",
        work.path().join("ledger.db").display()
    ))
    .await
    .unwrap();
    let services = Services {
        ledger: Some(ledger.clone()),
        checkpoints: Some(Checkpoints::new(work.path().join("checkpoints"))),
        ..Services::default()
    };
    let day = |key: &str| Some(Partition::parse(Granularity::Daily, key).unwrap());
    let posts = || {
        server
            .requests()
            .into_iter()
            .filter(|r| r.starts_with("POST"))
            .collect::<Vec<_>>()
    };

    // 2024-01-02 has no file: the source fails with a 404, which is never retried.
    let report = run(
        &orchestrated::PIPELINE,
        RunRequest::full(day("2024-01-02"), HashMap::new(), TriggerKind::Run),
        &services,
    )
    .await
    .unwrap();
    let statuses: Vec<(&str, BlockStatus)> = report
        .blocks
        .iter()
        .map(|b| (b.name, b.status.clone()))
        .collect();
    assert!(!report.succeeded());
    assert!(
        matches!(status_of(&statuses, "extract"), BlockStatus::Failed { error } if error.contains("404")),
        "{statuses:?}"
    );
    assert_eq!(
        status_of(&statuses, "clean"),
        &BlockStatus::Skipped {
            because: "input `extract` failed".into()
        }
    );
    assert_eq!(
        status_of(&statuses, "load"),
        &BlockStatus::Skipped {
            because: "input `clean` was skipped".into()
        }
    );
    assert!(matches!(
        status_of(&statuses, "audit"),
        BlockStatus::Succeeded { .. }
    ));
    assert!(matches!(
        status_of(&statuses, "alert"),
        BlockStatus::Succeeded { .. }
    ));
    let root = report.root_cause.clone().unwrap();
    assert!(
        root.contains("block `extract`") && root.contains("404"),
        "{root}"
    );
    // The extract attempt was not retried: a 404 is not retryable.
    assert_eq!(report.blocks[0].attempts, 1);

    let posts_after_failure = posts();
    assert_eq!(posts_after_failure.len(), 1, "{posts_after_failure:?}");
    let body = posts_after_failure[0]
        .strip_prefix("POST /hook ")
        .expect("the webhook path");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["pipeline"], "orchestrated");
    assert_eq!(json["partition"], "2024-01-02");
    assert_eq!(json["status"], "failed");
    assert_eq!(json["run_id"], report.run_id.as_str());
    assert_eq!(json["failed_blocks"][0]["block"], "extract");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .starts_with("orchestrated failed for 2024-01-02 in extract: block `extract`"),
        "{json}"
    );

    // The ledger has the run as failed with its root cause, and every block's outcome.
    let recorded = ledger.run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(recorded.status, "failed");
    assert_eq!(recorded.error.as_deref(), Some(root.as_str()));
    let blocks: Vec<(String, String)> = ledger
        .blocks(&report.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.block, b.status))
        .collect();
    let expected: Vec<(String, String)> = [
        ("extract", "failed"),
        ("clean", "skipped"),
        ("load", "skipped"),
        ("audit", "succeeded"),
        ("alert", "succeeded"),
        ("alert_slack", "succeeded"),
    ]
    .iter()
    .map(|(b, s)| (b.to_string(), s.to_string()))
    .collect();
    assert_eq!(blocks, expected);

    // 2024-01-03 succeeds: the failure callback does not fire and nothing is posted.
    let report = run(
        &orchestrated::PIPELINE,
        RunRequest::full(day("2024-01-03"), HashMap::new(), TriggerKind::Run),
        &services,
    )
    .await
    .unwrap();
    assert!(report.succeeded(), "{:?}", report.blocks);
    let load = report.block("load").unwrap();
    // Trips 2 (fare 0) and 3 (no fare) are filtered out.
    assert_eq!(load.status, BlockStatus::Succeeded { rows: 2 });
    let alert = report.block("alert").unwrap();
    assert!(
        matches!(&alert.status, BlockStatus::Skipped { because } if because.starts_with("trigger `one_failed` did not fire")),
        "{:?}",
        alert.status
    );
    assert_eq!(posts().len(), 1);

    // On the first day of a month `run_if` is false: the load is skipped, the run succeeds.
    let report = run(
        &orchestrated::PIPELINE,
        RunRequest::full(day("2024-01-01"), HashMap::new(), TriggerKind::Run),
        &services,
    )
    .await
    .unwrap();
    assert!(report.succeeded());
    let load = report.block("load").unwrap();
    assert_eq!(
        load.status,
        BlockStatus::Skipped {
            because: "run_if `param.publish and partition.day != 1` is false".into()
        }
    );
    // A parameter can turn the load off on any day.
    let off = HashMap::from([(
        "publish".to_string(),
        baton_runtime::context::Value::Bool(false),
    )]);
    let report = run(
        &orchestrated::PIPELINE,
        RunRequest::full(day("2024-01-03"), off, TriggerKind::Run),
        &services,
    )
    .await
    .unwrap();
    let load = report.block("load").unwrap();
    assert!(matches!(load.status, BlockStatus::Skipped { .. }));
    assert_eq!(posts().len(), 1);
}
