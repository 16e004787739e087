//! Sensors: what `serve` waits for before it runs a partition — an object in a folder or
//! object store (any object matching a glob), or an HTTP endpoint answering 2xx — looked for
//! every `poke_interval`, for at most `timeout` when a scheduled run waits on it.

use std::time::Duration;

use object_store::ObjectStoreExt as _;
use tracing::{info, warn};

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::pipeline::{SensorDef, SensorKind};

/// Whether what the sensor waits for is there for the partition of `ctx`. A store or endpoint
/// that cannot be asked is an error (logged by the caller, who asks again at the next poke).
pub async fn poke(sensor: &SensorDef, ctx: &RunContext) -> BlockResult<bool> {
    let base = ctx.connection_url(sensor.connection)?;
    let target = (sensor.target)(ctx)?;
    match sensor.kind {
        SensorKind::Object => {
            let location = crate::store::open_store(&base)?;
            if target.contains(['*', '?', '[', '{']) {
                let found = crate::store::matching_files(location.store.as_ref(), &target).await?;
                Ok(!found.is_empty())
            } else {
                let path = object_store::path::Path::from(target.trim_start_matches('/'));
                match location.store.head(&path).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(error) => Err(BlockError::from(error)),
                }
            }
        }
        SensorKind::Http => {
            let url = format!(
                "{}/{}",
                base.trim_end_matches('/'),
                target.trim_start_matches('/')
            );
            let client = crate::http::client(Duration::from_secs(30), Default::default())?;
            let response = client.head(&url).send().await.map_err(|e| {
                BlockError::retryable(format!(
                    "sensor endpoint {} did not answer: {e}",
                    crate::context::redact(&url)
                ))
            })?;
            Ok(response.status().is_success())
        }
    }
}

/// How waiting for a sensor ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// It is there.
    Ready,
    /// It did not come within the timeout.
    TimedOut,
}

/// Pokes every `poke_interval` until the sensor is satisfied or `timeout` has passed.
pub async fn wait(
    sensor: &SensorDef,
    ctx: &RunContext,
    poke_interval: Duration,
    timeout: Duration,
) -> Waited {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match poke(sensor, ctx).await {
            Ok(true) => {
                info!(path = sensor.path, "sensor satisfied");
                return Waited::Ready;
            }
            Ok(false) => {}
            Err(error) => warn!(path = sensor.path, "sensor cannot look: {error}"),
        }
        if tokio::time::Instant::now() + poke_interval > deadline {
            return Waited::TimedOut;
        }
        tokio::time::sleep(poke_interval).await;
    }
}
