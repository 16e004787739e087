//! The `pipeline!` macro path, end to end: a fixture pipeline with a local file source, a
//! parameter, every transform step, a hand-written Rust block and both check kinds, expanded
//! inline and run against a SQLite warehouse.

use std::collections::HashMap;

use baton_runtime::context::Value;
use baton_runtime::executor::BlockStatus;
use baton_runtime::partition::{Granularity, Partition};
use baton_tests::{fixture_folder, run_succeeding};

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
    let (_work, db) = fixture_folder(&[("data/trips_20240101.csv", CSV)]);
    let partition = Partition::parse(Granularity::Daily, "2024-01-01").unwrap();

    let report = run_succeeding(&trips::PIPELINE, Some(partition), HashMap::new()).await;
    // Trip 2 is below min_fare (2.5) and trip 4 has no zone.
    assert_eq!(
        report.blocks.last().unwrap().status,
        BlockStatus::Succeeded { rows: 3 }
    );

    // A parameter override changes what the compiled filter keeps; the partition is replaced.
    let strict = HashMap::from([("min_fare".to_string(), Value::Float(20.0))]);
    run_succeeding(&trips::PIPELINE, Some(partition), strict).await;
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
