//! Left and full joins through the `pipeline!` macro against a SQLite warehouse: the rows
//! polars produces fit the nullability the compiler derived (the sinks declare it), and every
//! value is checked by hand.

use std::collections::HashMap;

use baton_runtime::executor::{RunRequest, Services, run};
use baton_runtime::ledger::TriggerKind;
use baton_tests::sqlite_rows;

mod zone_joins {
    baton_macros::pipeline!("fixtures/pipelines/zone_joins.toml");
}

// Trip 3 has no zone, trip 4 a zone the lookup lacks; zone 30 has no trip.
const TRIPS: &str = "trip_id,zone_id,name\n1,10,first\n2,20,second\n3,,third\n4,99,fourth\n";
const ZONES: &str =
    "location_id,name,borough\n10,Airport,Queens\n20,Harlem,Manhattan\n30,Park,Brooklyn\n";

#[tokio::test(flavor = "multi_thread")]
async fn left_and_full_joins_keep_the_rows_and_nulls_they_promise() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("data")).unwrap();
    std::fs::write(work.path().join("data/trips.csv"), TRIPS).unwrap();
    std::fs::write(work.path().join("data/zones.csv"), ZONES).unwrap();
    std::env::set_current_dir(work.path()).unwrap();
    let db = work.path().join("w.db");
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe { std::env::set_var("DATABASE_URL", format!("sqlite://{}", db.display())) };

    let report = run(
        &zone_joins::PIPELINE,
        RunRequest::full(None, HashMap::new(), TriggerKind::Run),
        &Services::default(),
    )
    .await
    .unwrap();
    let statuses: Vec<_> = report
        .blocks
        .iter()
        .map(|b| (b.name, b.status.clone()))
        .collect();
    assert!(report.succeeded(), "{statuses:?}");

    // Left: every trip once; the right key is merged into zone_id, the right `name` suffixed.
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT trip_id, ifnull(zone_id, '-'), name, ifnull(name_zone, '-'), ifnull(borough, '-') \
             FROM trips_with_zones ORDER BY trip_id"
        ),
        [
            "1|10|first|Airport|Queens",
            "2|20|second|Harlem|Manhattan",
            "3|-|third|-|-",
            "4|99|fourth|-|-",
        ]
    );
    // Full: the trips, plus zone 30 without a trip, whose key comes from the right side.
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT ifnull(trip_id, '-'), ifnull(zone_id, '-'), ifnull(name, '-'), ifnull(name_zone, '-') \
             FROM trips_and_zones ORDER BY trip_id IS NULL, trip_id"
        ),
        [
            "1|10|first|Airport",
            "2|20|second|Harlem",
            "3|-|third|-",
            "4|99|fourth|-",
            "-|30|-|Park",
        ]
    );
}
