//! `[pipeline.concurrency]`: with `table = 1`, partitions running at the same time never load
//! the warehouse at the same time. The ledger's attempt intervals (which start once a slot is
//! granted) prove it.

use std::collections::HashMap;

use baton_runtime::executor::{RunRequest, Services, run};
use baton_runtime::ledger::{Ledger, TriggerKind};
use baton_runtime::partition::{Granularity, Partition};
use baton_tests::HttpServer;

mod orchestrated {
    baton_macros::pipeline!("fixtures/pipelines/orchestrated.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_table_load_at_a_time_across_concurrent_partitions() {
    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let days = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"];
    let mut csv = String::from("trip_id,fare\n");
    for trip in 0..20_000 {
        csv.push_str(&format!("{trip},{}.5\n", trip % 90 + 1));
    }
    for day in days {
        std::fs::write(files.join(format!("trips_{day}.csv")), &csv).unwrap();
    }
    let server = HttpServer::serve(&files);
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("API_URL", &server.url);
        std::env::set_var(
            "DATABASE_URL",
            format!("sqlite://{}", work.path().join("w.db").display()),
        );
        std::env::set_var("ALERT_WEBHOOK_URL", "");
    }
    let ledger = Ledger::open(&format!(
        "sqlite://{}",
        work.path().join("ledger.db").display()
    ))
    .await
    .unwrap();
    let services = Services {
        ledger: Some(ledger.clone()),
        ..Services::default()
    };
    let runs = days.map(|day| {
        let services = services.clone();
        async move {
            let partition = Partition::parse(Granularity::Daily, day).unwrap();
            run(
                &orchestrated::PIPELINE,
                RunRequest::full(Some(partition), HashMap::new(), TriggerKind::Backfill),
                &services,
            )
            .await
            .unwrap()
        }
    });
    let reports = futures::future::join_all(runs).await;
    let mut loads = Vec::new();
    for report in &reports {
        assert!(report.succeeded(), "{:?}", report.blocks);
        for attempt in ledger.attempts(&report.run_id).await.unwrap() {
            if attempt.block == "load" {
                loads.push((attempt.started_at, attempt.ended_at));
            }
        }
    }
    assert_eq!(loads.len(), days.len());
    loads.sort();
    for pair in loads.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two loads overlapped: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}
