//! Left and full joins through the `pipeline!` macro against a SQLite warehouse: the rows
//! polars produces fit the nullability the compiler derived (the sinks declare it), and every
//! value is checked by hand.

use std::collections::HashMap;

use baton_tests::{fixture_folder, run_succeeding, sqlite_rows};

mod zone_joins {
    baton_macros::pipeline!("fixtures/pipelines/zone_joins.toml");
}

// Trip 3 has no zone, trip 4 a zone the lookup lacks; zone 30 has no trip.
const TRIPS: &str = "trip_id,zone_id,name\n1,10,first\n2,20,second\n3,,third\n4,99,fourth\n";
const ZONES: &str =
    "location_id,name,borough\n10,Airport,Queens\n20,Harlem,Manhattan\n30,Park,Brooklyn\n";

// Zones 10, 20 (three times) and 30: trip 2 must still come out of a semi join once.
const ZONE_LIST: &str = "location_id\n20\n10\n20\n30\n20\n";

#[tokio::test(flavor = "multi_thread")]
async fn left_and_full_joins_keep_the_rows_and_nulls_they_promise() {
    let (_work, db) = fixture_folder(&[
        ("data/trips.csv", TRIPS),
        ("data/zones.csv", ZONES),
        ("data/zone_list.csv", ZONE_LIST),
    ]);
    run_succeeding(&zone_joins::PIPELINE, None, HashMap::new()).await;

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
    // Semi: the trips with a known zone, once each, left columns only; anti: the others.
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT trip_id, zone_id, name FROM trips_in_known_zones ORDER BY trip_id"
        ),
        ["1|10|first", "2|20|second"]
    );
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT trip_id, ifnull(zone_id, '-'), name FROM trips_in_unknown_zones ORDER BY trip_id"
        ),
        ["3|-|third", "4|99|fourth"]
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
