//! `mode = "upsert"` on SQLite and on a throwaway PostgreSQL cluster: a second load updates the
//! rows whose key it contains, adds the others, keeps the rest, and the last of two rows with
//! one key wins.

use std::collections::HashMap;
use std::path::Path;

use baton_tests::{Postgres, run_succeeding};

mod upsert_trips {
    baton_macros::pipeline!("fixtures/pipelines/upsert_trips.toml");
}

async fn load(work: &Path, csv: &str) {
    std::fs::write(work.join("data/trips.csv"), csv).unwrap();
    run_succeeding(&upsert_trips::PIPELINE, None, HashMap::new()).await;
}

const FIRST: &str = "trip_id,fare,zone\n1,10.0,Queens\n2,20.0,Bronx\n3,30.0,\n";
// Trip 2 changes, trip 4 is new and appears twice (the last one wins), trip 1 and 3 are absent.
const SECOND: &str = "trip_id,fare,zone\n2,25.0,Brooklyn\n4,1.0,Harlem\n4,40.0,Manhattan\n";
const EXPECTED: [(i64, Option<f64>, Option<&str>); 4] = [
    (1, Some(10.0), Some("Queens")),
    (2, Some(25.0), Some("Brooklyn")),
    (3, Some(30.0), None),
    (4, Some(40.0), Some("Manhattan")),
];

fn expected() -> Vec<(i64, Option<f64>, Option<String>)> {
    EXPECTED
        .iter()
        .map(|(id, fare, zone)| (*id, *fare, zone.map(str::to_string)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_updates_adds_and_keeps_on_sqlite_and_postgres() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("data")).unwrap();
    std::env::set_current_dir(work.path()).unwrap();

    // SQLite (schemas are ignored there).
    let db = work.path().join("w.db");
    // SAFETY: this test binary runs one test, and sets the variable before any run reads it.
    unsafe { std::env::set_var("DATABASE_URL", format!("sqlite://{}", db.display())) };
    load(work.path(), FIRST).await;
    load(work.path(), SECOND).await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(i64, Option<f64>, Option<String>)> =
        sqlx::query_as("SELECT trip_id, fare, zone FROM trips ORDER BY trip_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows, expected());
    pool.close().await;

    // Postgres, in the `staging` schema.
    let postgres = Postgres::start();
    // SAFETY: as above; no run is in flight.
    unsafe { std::env::set_var("DATABASE_URL", &postgres.url) };
    load(work.path(), FIRST).await;
    load(work.path(), SECOND).await;
    // Loading the same file again changes nothing.
    load(work.path(), SECOND).await;
    let pool = sqlx::PgPool::connect(&postgres.url).await.unwrap();
    let rows: Vec<(i64, Option<f64>, Option<String>)> =
        sqlx::query_as("SELECT trip_id, fare, zone FROM staging.trips ORDER BY trip_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows, expected());
    pool.close().await;
}
