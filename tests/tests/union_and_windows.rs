//! Union, windows and a whole-input aggregate through the `pipeline!` macro, run against a
//! SQLite warehouse on files written here, with every loaded value checked by hand.

use std::collections::HashMap;

use baton_runtime::partition::{Granularity, Partition};
use baton_tests::{fixture_folder, run_succeeding, sqlite_rows};

mod fleet {
    baton_macros::pipeline!("fixtures/pipelines/fleet_union.toml");
}

// Vendor 1: fares 10, 20 and 1 (mean 10.33); vendor 2: 5 and 30 (mean 17.5). One green zone is
// missing.
const GREEN: &str = "vendor,fare,pickup_zone\n1,10.0,A\n1,20.0,B\n2,5.0,\n";
const YELLOW: &str = "zone,fare_amount,vendor_id\nA,30.0,2\nC,1.0,1\n";

#[tokio::test(flavor = "multi_thread")]
async fn union_stacks_by_name_and_windows_and_aggregates_compute_what_sql_would() {
    let (_work, db) = fixture_folder(&[
        ("data/green_2024-01-01.csv", GREEN),
        ("data/yellow_2024-01-01.csv", YELLOW),
    ]);
    let partition = Partition::parse(Granularity::Daily, "2024-01-01").unwrap();
    run_succeeding(&fleet::PIPELINE, Some(partition), HashMap::new()).await;

    // The union has five rows; above their vendor's mean are 20 (vendor 1) and 30 (vendor 2).
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT vendor, fare, zone, share_of_kept, vendor_trips, day FROM above_vendor_mean ORDER BY fare"
        ),
        ["1|20.0|B|0.4|1|2024-01-01", "2|30.0|A|0.6|1|2024-01-01"]
    );
    // count() counts rows, count_distinct ignores the missing zone, min of text is the first.
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT trips, revenue, zones, first_zone, top_fare, mean_fare FROM day_totals"
        ),
        ["5|66.0|3|A|30.0|13.2"]
    );
    // Columns keep the first input's order whatever the second's file order was.
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT name FROM pragma_table_info('above_vendor_mean')"
        ),
        [
            "vendor",
            "fare",
            "zone",
            "share_of_kept",
            "vendor_trips",
            "day"
        ]
    );
}
