//! An HTTP sensor against a loopback server: it waits while the month's marker answers 404,
//! gives up at its timeout, and is satisfied once the marker answers 200; an object sensor on a
//! folder sees exact paths and globs, but not files under hidden (`_`) folders.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use baton_runtime::context::RunContext;
use baton_runtime::partition::{Granularity, Partition};
use baton_runtime::pipeline::{SensorDef, SensorKind};
use baton_runtime::sensor::{Waited, poke, wait};
use baton_tests::HttpServer;

mod sensing {
    baton_macros::pipeline!("fixtures/pipelines/sensing.toml");
}

fn context(partition: &str) -> RunContext {
    RunContext::new(
        &sensing::PIPELINE,
        "sensor-test".into(),
        Some(Partition::parse(Granularity::Monthly, partition).unwrap()),
        &HashMap::new(),
        Default::default(),
        None,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sensors_wait_time_out_and_see_what_appears() {
    let files = tempfile::tempdir().unwrap();
    let server = HttpServer::serve(files.path());
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe { std::env::set_var("SENSOR_API_URL", &server.url) };
    let sensor = sensing::PIPELINE.sensor.expect("the fixture has a sensor");
    assert_eq!(sensor.kind, SensorKind::Http);
    let ctx = context("2021-03");

    // Not ready: the sensor gives up at its 2 s timeout, having looked several times.
    let started = Instant::now();
    let waited = wait(
        &sensor,
        &ctx,
        Duration::from_millis(200),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(waited, Waited::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(1800));
    let heads = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("HEAD /ready/2021-03"))
        .count();
    assert!(heads >= 5, "{:?}", server.requests());

    // The marker appears while it waits.
    let ready = files.path().join("ready");
    std::fs::create_dir_all(&ready).unwrap();
    let marker = ready.join("2021-03");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        std::fs::write(marker, b"ok").unwrap();
    });
    let waited = wait(
        &sensor,
        &ctx,
        Duration::from_millis(200),
        Duration::from_secs(10),
    )
    .await;
    writer.join().unwrap();
    assert_eq!(waited, Waited::Ready);
    // Another month's marker is not this month's.
    assert!(!poke(&sensor, &context("2021-04")).await.unwrap());

    // An object sensor on a folder, through the same connection machinery.
    fn objects(_: &RunContext) -> Result<String, baton_runtime::error::BlockError> {
        Ok("green/*/part-2021-03.parquet".into())
    }
    fn exact(_: &RunContext) -> Result<String, baton_runtime::error::BlockError> {
        Ok("green/done".into())
    }
    let lake = tempfile::tempdir().unwrap();
    unsafe { std::env::set_var("SENSOR_API_URL", lake.path()) };
    let glob = SensorDef {
        kind: SensorKind::Object,
        target: objects,
        ..sensor
    };
    let marker = SensorDef {
        kind: SensorKind::Object,
        target: exact,
        ..sensor
    };
    assert!(!poke(&glob, &ctx).await.unwrap());
    assert!(!poke(&marker, &ctx).await.unwrap());
    let hidden = lake.path().join("green/_staging");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::write(hidden.join("part-2021-03.parquet"), b"x").unwrap();
    assert!(!poke(&glob, &ctx).await.unwrap(), "a staged file counted");
    let day = lake.path().join("green/day=2021-03-01");
    std::fs::create_dir_all(&day).unwrap();
    std::fs::write(day.join("part-2021-03.parquet"), b"x").unwrap();
    assert!(poke(&glob, &ctx).await.unwrap());
    std::fs::write(lake.path().join("green/done"), b"").unwrap();
    assert!(poke(&marker, &ctx).await.unwrap());
}
