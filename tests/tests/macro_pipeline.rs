//! The `pipeline!` macro path, end to end: a fixture pipeline with a local file source, a
//! parameter, every transform step, a hand-written Rust block and both check kinds, expanded
//! inline and run against a SQLite warehouse.

use std::collections::HashMap;

use baton_runtime::context::Value;
use baton_runtime::executor::{BlockStatus, RunRequest, Services, run};
use baton_runtime::ledger::TriggerKind;
use baton_runtime::partition::{Granularity, Partition};

mod trips {
    baton_macros::pipeline!("fixtures/pipelines/trips_with_rust_block.toml");
}

const CSV: &str = "Trip ID,PickupTime,Fare,Zone,Shared\n\
1,2024-01-01 08:15:00,12.5,manhattan,true\n\
2,2024-01-01 09:00:00,1.0,brooklyn,false\n\
3,2024-01-01 23:59:59,30.0,queens,\n\
4,2024-01-01 10:30:00,7.25,,false\n\
5,2024-01-01 11:45:00,55.0,Manhattan,true\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_macro_expanded_pipeline_with_a_rust_block_runs() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("data")).unwrap();
    std::fs::write(work.path().join("data/trips_20240101.csv"), CSV).unwrap();
    std::env::set_current_dir(work.path()).unwrap();
    let db = work.path().join("w.db");
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe { std::env::set_var("DATABASE_URL", format!("sqlite://{}", db.display())) };
    let partition = Partition::parse(Granularity::Daily, "2024-01-01").unwrap();

    let services = Services::default();
    let report = run(
        &trips::PIPELINE,
        RunRequest::full(Some(partition), HashMap::new(), TriggerKind::Run),
        &services,
    )
    .await
    .unwrap();
    let statuses: Vec<_> = report
        .blocks
        .iter()
        .map(|b| (b.name, b.status.clone()))
        .collect();
    assert!(report.succeeded(), "{statuses:?}");
    // Trip 2 is below min_fare (2.5) and trip 4 has no zone.
    assert_eq!(
        statuses.last().unwrap().1,
        BlockStatus::Succeeded { rows: 3 }
    );

    // A parameter override changes what the compiled filter keeps; the partition is replaced.
    let strict = HashMap::from([("min_fare".to_string(), Value::Float(20.0))]);
    let report = run(
        &trips::PIPELINE,
        RunRequest::full(Some(partition), strict, TriggerKind::Run),
        &services,
    )
    .await
    .unwrap();
    assert!(report.succeeded());
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the warehouse");
    let row: (i64, i64, String, i64, String) = sqlx::query_as(
        "SELECT count(*), sum(expensive), min(zone), max(pickup_hour), min(run_day) FROM trips",
    )
    .fetch_one(&pool)
    .await
    .expect("query the loaded table");
    assert_eq!(
        row,
        (2, 1, "MANHATTAN".to_string(), 23, "2024-01-01".to_string())
    );
    pool.close().await;
}
