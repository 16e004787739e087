//! End to end: the Zoomcamp's cloud pipelines against local peers on 127.0.0.1, with the real
//! NYC TLC green-taxi months: `green_taxi_to_gcs` writing an S3 lake (moto), `gcs_to_bigquery`
//! reading a GCS lake (fake-gcs-server) into BigQuery (bqemulator), `daily_trips_export`
//! backfilling templated files into S3, and a broken cloud API answering 500s.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use baton_tests::peers::{
    self, AWS_TEST_ENV, BIGQUERY_PROJECT, bigquery_fields, bigquery_rows, google_test_key,
    s3_objects, s3_url,
};
use baton_tests::{
    HttpServer, ServerOptions, green_data_dir, independent_green_counts, output_text, run_pipeline,
    sqlite_rows,
};

const MONTHS: [&str; 2] = ["2021-01", "2021-02"];

fn month_files() -> Vec<PathBuf> {
    baton_tests::green_month_files(&MONTHS)
}

/// Runs a pipeline binary and asserts that it succeeded.
fn run_ok(name: &str, workdir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = run_pipeline(name, workdir, env, args);
    let text = output_text(&output);
    assert!(output.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

/// Writes the two months of the green-taxi lake into the local folder `lake` with
/// `green_taxi_to_gcs`, the way it writes a GCS bucket.
fn write_local_lake(workdir: &Path, lake: &Path) {
    let server = HttpServer::serve(&green_data_dir());
    let lake_url = format!("file://{}", lake.display());
    let env = [
        ("TLC_BASE_URL", server.url.as_str()),
        ("GCS_LAKE_URL", lake_url.as_str()),
    ];
    run_ok(
        "green_taxi_to_gcs",
        workdir,
        &env,
        &["backfill", "--from", MONTHS[0], "--to", MONTHS[1]],
    );
    assert!(
        !lake.join("_baton_staging").exists(),
        "the staging folders are removed from a local lake"
    );
}

/// Runs a Python snippet that reads S3 objects with pyarrow through `s3`, a boto3 client of
/// the endpoint passed as `sys.argv[1]` (`args` follow). pyarrow's thread pool aborts at exit
/// when boto3 was used in the same process, so the snippet reads on one thread; and even so the
/// interpreter's shutdown sometimes aborted ("terminate called without an active exception")
/// after everything was printed, so the snippet leaves without it.
fn pyarrow_over_s3(endpoint: &str, body: &str, args: &[&str]) -> String {
    let code = format!(
        "import io, os, sys, boto3, pyarrow.parquet as pq\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
         {body}\n\
         sys.stdout.flush()\n\
         os._exit(0)"
    );
    peers::python(&code, &[&[endpoint][..], args].concat())
}

/// The number of rows of Parquet objects, read whole with pyarrow (an independent reader) from
/// S3.
fn s3_parquet_rows(peer: &peers::Peer, bucket: &str, keys: &[&str]) -> Vec<usize> {
    let out = pyarrow_over_s3(
        peer.url().as_str(),
        "for key in sys.argv[3:]:\n    \
             print(pq.read_table(io.BytesIO(s3.get_object(Bucket=sys.argv[2], Key=key)['Body'].read()), use_threads=False).num_rows)",
        &[&[bucket][..], keys].concat(),
    );
    out.lines()
        .map(|n| n.parse().expect("a row count"))
        .collect()
}

/// Rows of local Parquet files, read with pyarrow.
fn local_parquet_rows(files: &[PathBuf]) -> usize {
    let paths: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let out = peers::python(
        "import sys, pyarrow.parquet as pq\nprint(sum(pq.read_metadata(p).num_rows for p in sys.argv[1:]))",
        &paths,
    );
    out.trim().parse().expect("a row count")
}

#[test]
fn green_taxi_to_an_s3_lake_writes_partition_folders_and_exports_and_reruns_without_duplicates() {
    let server = HttpServer::serve(&green_data_dir());
    let s3 = peers::s3(&["baton-lake"]);
    let work = tempfile::tempdir().unwrap();
    let lake_url = s3_url(&s3, "baton-lake/zoomcamp");
    let mut env = vec![
        ("TLC_BASE_URL", server.url.as_str()),
        ("GCS_LAKE_URL", lake_url.as_str()),
    ];
    env.extend(AWS_TEST_ENV);
    let backfill = ["backfill", "--from", MONTHS[0], "--to", MONTHS[1]];
    run_ok("green_taxi_to_gcs", work.path(), &env, &backfill);

    let (rows, dates) = independent_green_counts(&month_files());
    let objects = s3_objects(&s3, "baton-lake", "zoomcamp/");
    let folders: BTreeSet<String> = objects
        .iter()
        .filter_map(|(key, _)| key.strip_prefix("zoomcamp/green_taxi/"))
        .filter_map(|rest| rest.split_once('/').map(|(folder, _)| folder.to_string()))
        .collect();
    assert_eq!(folders.len(), dates, "one folder per pickup date");
    assert!(
        folders.iter().all(|f| f.starts_with("lpep_pickup_date=")
            && f.len() == "lpep_pickup_date=2021-01-01".len()),
        "hive folders: {folders:?}"
    );
    assert!(
        objects
            .iter()
            .all(|(key, _)| !key.contains("_baton_staging")),
        "the staging area is cleaned up"
    );
    let exports = [
        "zoomcamp/exports/green_taxi/2021/01/green_taxi.parquet",
        "zoomcamp/exports/green_taxi/2021/02/green_taxi.parquet",
    ];
    let exported = s3_parquet_rows(&s3, "baton-lake", &exports);
    assert_eq!(
        exported.iter().sum::<usize>(),
        rows,
        "the exports hold every cleaned row"
    );
    let lake_keys: Vec<&str> = objects
        .iter()
        .map(|(key, _)| key.as_str())
        .filter(|key| key.starts_with("zoomcamp/green_taxi/"))
        .collect();
    let lake_rows: usize = s3_parquet_rows(&s3, "baton-lake", &lake_keys).iter().sum();
    assert_eq!(lake_rows, rows, "the lake holds every cleaned row once");

    // A re-run replaces its own objects: the same keys, no copies.
    run_ok(
        "green_taxi_to_gcs",
        work.path(),
        &env,
        &[&backfill[..], &["--rerun-all"]].concat(),
    );
    let again = s3_objects(&s3, "baton-lake", "zoomcamp/");
    let keys =
        |objects: &[(String, u64)]| objects.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&again), keys(&objects));
}

#[test]
fn a_gcs_lake_loads_into_bigquery_with_the_warehouse_types_and_reruns_without_duplicates() {
    let work = tempfile::tempdir().unwrap();
    // fake-gcs-server serves the subfolders of `buckets` as buckets.
    let buckets = work.path().join("buckets");
    write_local_lake(work.path(), &buckets.join("baton-lake"));
    let gcs = peers::gcs(&buckets);
    let bigquery = peers::bigquery(None);
    let key = google_test_key(Some(&gcs));
    let bigquery_url = format!(
        "bigquery://{BIGQUERY_PROJECT}/ny_taxi?endpoint={}",
        bigquery.url()
    );
    let env = [
        ("GCS_LAKE_URL", "gs://baton-lake"),
        ("GOOGLE_SERVICE_ACCOUNT_KEY", key.as_str()),
        ("BIGQUERY_URL", bigquery_url.as_str()),
    ];
    let backfill = ["backfill", "--from", MONTHS[0], "--to", MONTHS[1]];
    run_ok("gcs_to_bigquery", work.path(), &env, &backfill);

    let per_month = |peer: &peers::Peer| {
        bigquery_rows(
            peer,
            "SELECT CAST(partition_month AS STRING), COUNT(*) FROM ny_taxi.green_taxi GROUP BY 1 ORDER BY 1",
        )
    };
    let counts = per_month(&bigquery);
    let expected: Vec<Vec<Option<String>>> = MONTHS
        .iter()
        .map(|month| {
            let file = green_data_dir().join(format!("green_tripdata_{month}.csv.gz"));
            let (rows, _) = independent_green_counts(&[file]);
            vec![Some(format!("{month}-01")), Some(rows.to_string())]
        })
        .collect();
    assert_eq!(
        counts, expected,
        "rows per month equal an independent count"
    );

    // The same months through the foundation pipeline into the SQLite warehouse: BigQuery holds
    // as many rows, with the same types.
    let server = HttpServer::serve(&green_data_dir());
    run_ok(
        "green_taxi_etl",
        work.path(),
        &[("TLC_BASE_URL", server.url.as_str())],
        &backfill,
    );
    let warehouse = work.path().join(".baton/warehouse.db");
    let warehouse_rows = sqlite_rows(&warehouse, "SELECT COUNT(*) FROM green_taxi");
    let bigquery_total = bigquery_rows(&bigquery, "SELECT COUNT(*) FROM ny_taxi.green_taxi");
    assert_eq!(
        bigquery_total[0][0].as_deref(),
        Some(warehouse_rows[0].as_str())
    );
    let warehouse_types: Vec<(String, String)> = sqlite_rows(
        &warehouse,
        "SELECT name, type FROM pragma_table_info('green_taxi')",
    )
    .iter()
    .map(|row| {
        let (name, ty) = row.split_once('|').expect("name|type");
        (name.to_string(), ty.to_string())
    })
    .collect();
    let fields = bigquery_fields(&bigquery, "ny_taxi", "green_taxi");
    assert_eq!(fields.len(), warehouse_types.len(), "{fields:?}");
    for (name, ty) in &warehouse_types {
        let (_, bigquery_type, _) = fields
            .iter()
            .find(|(field, _, _)| field == name)
            .unwrap_or_else(|| panic!("BigQuery has no column `{name}`: {fields:?}"));
        let same = matches!(
            (ty.as_str(), bigquery_type.as_str()),
            ("INTEGER", "INT64" | "INTEGER")
                | ("REAL", "FLOAT64" | "FLOAT")
                | ("TEXT", "STRING")
                | ("DATE", "DATE")
                | ("TIMESTAMP", "DATETIME")
        );
        assert!(
            same,
            "`{name}` is {ty} in the warehouse, {bigquery_type} in BigQuery"
        );
    }

    let validated = run_ok("gcs_to_bigquery", work.path(), &env, &["validate"]);
    assert!(
        validated.contains("load_bigquery: BigQuery table green_taxi is reachable and compatible"),
        "{validated}"
    );

    // Re-running a month replaces its rows. This run sends its data as a resumable upload in
    // 256 KiB chunks, the way loads above a few megabytes go.
    let chunked_url = format!("{bigquery_url}&resumable_above=0&upload_chunk=262144");
    let chunked_env = [env[0], env[1], ("BIGQUERY_URL", chunked_url.as_str())];
    run_ok(
        "gcs_to_bigquery",
        work.path(),
        &chunked_env,
        &["run", "--partition", MONTHS[0]],
    );
    assert_eq!(per_month(&bigquery), counts, "no duplicates after a re-run");
}

#[test]
fn a_daily_backfill_writes_one_export_per_day_at_the_templated_path() {
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    write_local_lake(work.path(), &lake);
    let s3 = peers::s3(&["exports"]);
    let lake_url = format!("file://{}", lake.display());
    let export_url = s3_url(&s3, "exports/daily");
    let mut env = vec![
        ("GCS_LAKE_URL", lake_url.as_str()),
        ("EXPORT_URL", export_url.as_str()),
    ];
    env.extend(AWS_TEST_ENV);
    let backfill = ["backfill", "--from", "2021-01-01", "--to", "2021-01-05"];
    run_ok("daily_trips_export", work.path(), &env, &backfill);
    run_ok(
        "daily_trips_export",
        work.path(),
        &env,
        &[&backfill[..], &["--rerun-all"]].concat(),
    );

    let objects = s3_objects(&s3, "exports", "");
    let keys: Vec<&str> = objects.iter().map(|(key, _)| key.as_str()).collect();
    let expected: Vec<String> = (1..=5)
        .map(|day| format!("daily/2021/01/{day:02}/daily-trips.parquet"))
        .collect();
    assert_eq!(
        keys, expected,
        "five objects, one per execution date, after two backfills"
    );
    // The pickup date comes from the lake's folder names, typed as a date.
    let dates = pyarrow_over_s3(
        s3.url().as_str(),
        "for key in sys.argv[2:]:\n    \
             t = pq.read_table(io.BytesIO(s3.get_object(Bucket='exports', Key=key)['Body'].read()), use_threads=False)\n    \
             print(str(t.schema.field('lpep_pickup_date').type), sorted({str(d) for d in t['lpep_pickup_date'].to_pylist()}))",
        &keys,
    );
    let expected_dates: Vec<String> = (1..=5)
        .map(|day| format!("date32[day] ['2021-01-{day:02}']"))
        .collect();
    assert_eq!(dates.lines().collect::<Vec<_>>(), expected_dates);
    let exported = s3_parquet_rows(&s3, "exports", &keys);

    // `prepare` locks the columns of the files and of the folder names.
    run_ok(
        "daily_trips_export",
        work.path(),
        &env,
        &["prepare", "--partition", "2021-01-04"],
    );
    let lock: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("pipelines/daily_trips_export.lock.json"))
            .unwrap(),
    )
    .unwrap();
    let locked = lock["sources"]["read_day"]["columns"].to_string();
    assert!(
        locked.contains(r#"["lpep_pickup_date","date"]"#)
            && locked.contains(r#"["lpep_pickup_datetime","timestamp"]"#),
        "{locked}"
    );
    for (day, rows) in (1..=5).zip(exported) {
        let folder = lake.join(format!("green_taxi/lpep_pickup_date=2021-01-{day:02}"));
        let files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(rows, local_parquet_rows(&files), "2021-01-{day:02}");
    }
}

#[test]
fn a_cloud_api_that_answers_500s_is_retried_and_one_that_refuses_is_not() {
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    write_local_lake(work.path(), &lake);
    let broken = HttpServer::start(
        work.path(),
        ServerOptions {
            always_fail: true,
            ..ServerOptions::default()
        },
    );
    let lake_url = format!("file://{}", lake.display());
    let key = google_test_key(None);
    let bigquery_url = format!(
        "bigquery://{BIGQUERY_PROJECT}/ny_taxi?endpoint={}",
        broken.url
    );
    let env = [
        ("GCS_LAKE_URL", lake_url.as_str()),
        ("GOOGLE_SERVICE_ACCOUNT_KEY", key.as_str()),
        ("BIGQUERY_URL", bigquery_url.as_str()),
    ];
    let output = run_pipeline(
        "gcs_to_bigquery",
        work.path(),
        &env,
        &["run", "--partition", MONTHS[0]],
    );
    let text = output_text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(
            "BigQuery answered HTTP 500 Internal Server Error: backend unavailable (test peer)"
        ),
        "BigQuery's own message is reported:\n{text}"
    );
    assert!(
        text.contains("load_bigquery"),
        "the failed block is named:\n{text}"
    );
    // The pipeline allows 3 retries: four attempts, each stopping at its first request.
    let attempts = broken
        .requests()
        .iter()
        .filter(|line| line.starts_with("GET /bigquery/v2/projects/test-project/datasets/ny_taxi "))
        .count();
    assert_eq!(attempts, 4, "{:?}", broken.requests());

    // An S3 endpoint answering 500s: the client's own retries, then the block's, then a report.
    let export_url = format!("s3://exports/daily?endpoint={}&allow_http=true", broken.url);
    let mut env = vec![
        ("GCS_LAKE_URL", lake_url.as_str()),
        ("EXPORT_URL", export_url.as_str()),
    ];
    env.extend(AWS_TEST_ENV);
    let output = run_pipeline(
        "daily_trips_export",
        work.path(),
        &env,
        &["run", "--partition", "2021-01-04"],
    );
    let text = output_text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("daily/2021/01/04/daily-trips.parquet") && text.contains("500"),
        "the object and the status are reported:\n{text}"
    );
    let puts = broken
        .requests()
        .iter()
        .filter(|line| line.starts_with("PUT /exports/daily/2021/01/04/daily-trips.parquet"))
        .count();
    assert_eq!(
        puts, 12,
        "3 requests (2 client retries) in each of 4 attempts"
    );
}
