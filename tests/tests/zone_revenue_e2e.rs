//! End to end: the committed `monthly_zone_revenue` binary (joins, an aggregate and a window)
//! on a real green month and the real zone lookup, both served on 127.0.0.1, compared with an
//! independent computation in Python's standard library.

use std::collections::BTreeMap;
use std::path::Path;

use baton_tests::{
    HttpServer, green_data_dir, green_month_files, output_text, python_lines, run_pipeline,
    sqlite_rows, zones_data_dir,
};

/// Per pickup zone of a known borough, for trips with a vendor whose pickup and dropoff zones
/// are both known: (trips, total_amount summed, passenger_count averaged over non-null values).
fn independent_zone_revenue(
    trips: &Path,
    zones: &Path,
) -> BTreeMap<(String, String), (i64, f64, Option<f64>)> {
    let script = r#"
import csv, gzip, sys
zones = {}
with open(sys.argv[2], newline='') as f:
    for r in csv.DictReader(f):
        if r['Borough'] != 'Unknown':
            zones[r['LocationID']] = (r['Borough'], r['Zone'])
groups = {}
with gzip.open(sys.argv[1], 'rt', newline='') as f:
    for r in csv.DictReader(f):
        if r['VendorID'] == '' or r['PULocationID'] not in zones or r['DOLocationID'] not in zones:
            continue
        g = groups.setdefault(zones[r['PULocationID']], [0, 0.0, 0, 0])
        g[0] += 1
        g[1] += float(r['total_amount']) if r['total_amount'] != '' else 0.0
        if r['passenger_count'] != '':
            g[2] += int(r['passenger_count'])
            g[3] += 1
for (borough, zone), (n, total, passengers, counted) in sorted(groups.items()):
    mean = passengers / counted if counted else ''
    print(f"{borough}|{zone}|{n}|{total!r}|{mean!r}" if counted else f"{borough}|{zone}|{n}|{total!r}|")
"#;
    python_lines(script, &[trips, zones])
        .iter()
        .map(|line| zone_row(line))
        .collect()
}

/// `borough|zone|trips|total|mean passengers` (the mean may be empty).
fn zone_row(line: &str) -> ((String, String), (i64, f64, Option<f64>)) {
    let fields: Vec<&str> = line.split('|').collect();
    (
        (fields[0].to_string(), fields[1].to_string()),
        (
            fields[2].parse().expect("trips"),
            fields[3].parse().expect("total"),
            fields[4].parse().ok(),
        ),
    )
}

fn mart(db: &Path) -> BTreeMap<(String, String), (i64, f64, Option<f64>)> {
    sqlite_rows(
        db,
        "SELECT revenue_borough, revenue_zone, total_monthly_trips, revenue_monthly_total_amount, \
         avg_monthly_passenger_count FROM dm_monthly_zone_revenue WHERE revenue_month = '2021-01-01'",
    )
    .iter()
    .map(|line| zone_row(line))
    .collect()
}

#[test]
fn monthly_zone_revenue_matches_an_independent_computation_and_reruns_idempotently() {
    let trips = HttpServer::serve(&green_data_dir());
    let zones = HttpServer::serve(&zones_data_dir());
    let work = tempfile::tempdir().unwrap();
    let env = [
        ("TLC_BASE_URL", trips.url.as_str()),
        ("ZONES_BASE_URL", zones.url.as_str()),
    ];
    let db = work.path().join(".baton/warehouse.db");
    let expected = independent_zone_revenue(
        &green_month_files(&["2021-01"])[0],
        &zones_data_dir().join("taxi+_zone_lookup.csv"),
    );
    assert!(expected.len() > 200, "the month has trips in most zones");

    for attempt in 0..2 {
        let output = run_pipeline(
            "monthly_zone_revenue",
            work.path(),
            &env,
            &["run", "--partition", "2021-01"],
        );
        assert!(
            output.status.success(),
            "run {attempt} failed:\n{}",
            output_text(&output)
        );
        let loaded = mart(&db);
        // Re-running the month replaces its rows: same zones, nothing twice.
        assert_eq!(
            loaded.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "run {attempt}: the zones differ"
        );
        for (zone, (trips, total, passengers)) in &expected {
            let (got_trips, got_total, got_passengers) = loaded[zone];
            assert_eq!(got_trips, *trips, "{zone:?}: trips");
            assert!(
                (got_total - total).abs() < 1e-6 * total.abs().max(1.0),
                "{zone:?}: total {got_total} vs {total}"
            );
            match (got_passengers, passengers) {
                (Some(a), Some(b)) => {
                    assert!((a - b).abs() < 1e-9, "{zone:?}: mean passengers {a} vs {b}")
                }
                (a, b) => assert_eq!(a, *b, "{zone:?}: mean passengers"),
            }
        }
    }

    // The window: every borough's zone shares add up to one.
    for line in sqlite_rows(
        &db,
        "SELECT revenue_borough, sum(borough_revenue_share) FROM dm_monthly_zone_revenue GROUP BY revenue_borough",
    ) {
        let (borough, share) = line.split_once('|').expect("borough|share");
        let share: f64 = share.parse().expect("a share");
        assert!(
            (share - 1.0).abs() < 1e-9,
            "{borough}: shares add up to {share}"
        );
    }
    // The second join's right columns were suffixed, not lost or swapped.
    let columns = sqlite_rows(
        &db,
        "SELECT name FROM pragma_table_info('dm_monthly_zone_revenue')",
    );
    assert_eq!(
        columns[..3],
        ["revenue_borough", "revenue_zone", "revenue_month"]
    );
}
