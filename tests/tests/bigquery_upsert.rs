//! BigQuery upserts through the `pipeline!` macro against the BigQuery emulator: a second load
//! updates the rows whose key exists, adds the others, and keeps the last of two rows with one
//! key.

use std::collections::HashMap;

use baton_runtime::executor::{RunRequest, Services, run};
use baton_runtime::ledger::TriggerKind;
use baton_tests::peers::{self, BIGQUERY_PROJECT, bigquery_rows, google_test_key};

mod trips {
    baton_macros::pipeline!("fixtures/pipelines/bigquery_upsert.toml");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_load_updates_existing_keys_and_adds_new_ones() {
    let bigquery = peers::bigquery(None);
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("data")).unwrap();
    std::env::set_current_dir(work.path()).unwrap();
    let url = format!(
        "bigquery://{BIGQUERY_PROJECT}/unused?endpoint={}",
        bigquery.url()
    );
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("BIGQUERY_URL", url);
        std::env::set_var("GOOGLE_SERVICE_ACCOUNT_KEY", google_test_key(None));
    }
    let services = Services::default();
    let load = |csv: &'static str| {
        std::fs::write("data/trips.csv", csv).unwrap();
        run(
            &trips::PIPELINE,
            RunRequest::full(None, HashMap::new(), TriggerKind::Run),
            &services,
        )
    };

    let report = load("trip_id,zone,fare\n1,Queens,10.5\n2,Bronx,\n3,,7.0\n")
        .await
        .unwrap();
    assert!(report.succeeded(), "{:?}", report.blocks);
    let report = load("trip_id,zone,fare\n2,Bronx,8.0\n4,EWR,60.0\n2,Bronx,9.0\n")
        .await
        .unwrap();
    assert!(report.succeeded(), "{:?}", report.blocks);

    let rows = bigquery_rows(
        &bigquery,
        "SELECT trip_id, zone, fare FROM upserts.trips ORDER BY trip_id",
    );
    let text = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![
            vec![text("1"), text("Queens"), text("10.5")],
            vec![text("2"), text("Bronx"), text("9.0")],
            vec![text("3"), None, text("7.0")],
            vec![text("4"), text("EWR"), text("60.0")],
        ],
        "key 2 updated with the last of its two rows, key 4 added"
    );
    let tables = bigquery_rows(
        &bigquery,
        "SELECT table_name FROM upserts.INFORMATION_SCHEMA.TABLES ORDER BY 1",
    );
    assert_eq!(
        tables,
        vec![vec![text("trips")]],
        "no staging table is left"
    );
}
