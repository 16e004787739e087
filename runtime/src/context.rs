//! The run context: what a block knows about the run it belongs to.

use std::collections::HashMap;
use std::sync::Arc;

use polars::prelude::DataFrame;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use crate::pipeline::Column;
use crate::rows::Rows;

use crate::error::{BlockError, BlockResult};
use crate::executor::BlockOutcome;
use crate::partition::Partition;
use crate::pipeline::{BlockFuture, BlockKind, ParamValue, Pipeline, Secret};
use crate::sink::table::Warehouse;

/// A parameter's value for this run.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bool(_) => "bool",
        }
    }

    fn mismatch(&self, wanted: &str) -> BlockError {
        BlockError::fatal(format!(
            "parameter is {} but {wanted} was expected",
            self.type_name()
        ))
    }

    /// The integer value.
    pub fn int(&self) -> BlockResult<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            other => Err(other.mismatch("int")),
        }
    }

    /// The float value (an integer is widened).
    pub fn float(&self) -> BlockResult<f64> {
        match self {
            Value::Float(x) => Ok(*x),
            Value::Int(i) => Ok(*i as f64),
            other => Err(other.mismatch("float")),
        }
    }

    /// The string value.
    pub fn string(&self) -> BlockResult<String> {
        match self {
            Value::String(s) => Ok(s.clone()),
            other => Err(other.mismatch("string")),
        }
    }

    /// The boolean value.
    pub fn bool(&self) -> BlockResult<bool> {
        match self {
            Value::Bool(b) => Ok(*b),
            other => Err(other.mismatch("bool")),
        }
    }

    /// Parses `text` as a value of the same type as `default`.
    pub fn parse_like(default: &ParamValue, text: &str) -> Result<Value, String> {
        let bad = |ty: &str| format!("`{text}` is not a valid {ty}");
        Ok(match default {
            ParamValue::Int(_) => Value::Int(text.parse().map_err(|_| bad("int"))?),
            ParamValue::Float(_) => Value::Float(text.parse().map_err(|_| bad("float"))?),
            ParamValue::Bool(_) => Value::Bool(text.parse().map_err(|_| bad("bool (true/false)"))?),
            ParamValue::String(_) => Value::String(text.to_string()),
        })
    }

    fn from_default(default: &ParamValue) -> Value {
        match default {
            ParamValue::Int(i) => Value::Int(*i),
            ParamValue::Float(x) => Value::Float(*x),
            ParamValue::String(s) => Value::String((*s).to_string()),
            ParamValue::Bool(b) => Value::Bool(*b),
        }
    }
}

/// Resources shared by every run of one process: connection pools, opened once, and the
/// per-kind concurrency limits.
#[derive(Default)]
pub struct Resources {
    warehouses: Mutex<HashMap<String, Warehouse>>,
    limits: std::sync::Mutex<HashMap<BlockKind, Arc<Semaphore>>>,
    /// While `prepare` runs a source, what the source saw of its files.
    observations: std::sync::Mutex<Option<Vec<crate::prepare::Observation>>>,
}

impl Resources {
    /// Starts recording what sources see of their files (for `prepare`).
    pub fn start_observing(&self) {
        if let Ok(mut observations) = self.observations.lock() {
            *observations = Some(Vec::new());
        }
    }

    /// Stops recording and returns what was seen.
    pub fn take_observations(&self) -> Vec<crate::prepare::Observation> {
        self.observations
            .lock()
            .ok()
            .and_then(|mut o| o.take())
            .unwrap_or_default()
    }

    pub(crate) fn observing(&self) -> bool {
        self.observations.lock().is_ok_and(|o| o.is_some())
    }

    pub(crate) fn observe(&self, observation: crate::prepare::Observation) {
        if let Ok(mut observations) = self.observations.lock()
            && let Some(list) = observations.as_mut()
        {
            list.push(observation);
        }
    }

    /// Waits for a slot when the pipeline limits how many blocks of this kind run at once;
    /// the slot is freed when the returned permit is dropped. `None` when there is no limit.
    pub async fn slot(&self, pipeline: &Pipeline, kind: BlockKind) -> Option<OwnedSemaphorePermit> {
        let limit = pipeline
            .limits
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, n)| *n)?;
        let semaphore = self
            .limits
            .lock()
            .ok()?
            .entry(kind)
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone();
        semaphore.acquire_owned().await.ok()
    }
}

struct Inner {
    pipeline: &'static Pipeline,
    run_id: String,
    partition: Option<Partition>,
    params: HashMap<&'static str, Value>,
    resources: Arc<Resources>,
    /// The run ledger, when the run is recorded: callbacks read the pipeline's previous runs.
    ledger: Option<crate::ledger::Ledger>,
    /// Blocks that have ended so far, for callbacks that report on the run.
    outcomes: std::sync::Mutex<Vec<BlockOutcome>>,
    /// Items of fanned-out sources already read in this run, by block and item, so that a
    /// retry reads only the items that failed.
    items: std::sync::Mutex<HashMap<(&'static str, String), DataFrame>>,
    /// Alert channels already delivered in this run, so that a callback's retry after one
    /// channel failed does not send the others again.
    delivered: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Data checks with `severity = "warn"` that found failing rows in this run.
    /// Failed warning checks: subject, failing rows, rows checked.
    warnings: std::sync::Mutex<Vec<(String, usize, usize)>>,
    /// The files each source read, with their checksums, for the audit trail.
    inputs: std::sync::Mutex<HashMap<&'static str, Vec<(String, String)>>>,
}

/// What a block knows about its run: the pipeline, the partition, parameters and connections.
/// Cloning is cheap.
#[derive(Clone)]
pub struct RunContext {
    inner: Arc<Inner>,
}

impl RunContext {
    /// A context for one run. `params` override the declared defaults.
    pub fn new(
        pipeline: &'static Pipeline,
        run_id: String,
        partition: Option<Partition>,
        overrides: &HashMap<String, Value>,
        resources: Arc<Resources>,
        ledger: Option<crate::ledger::Ledger>,
    ) -> RunContext {
        let params = pipeline
            .params
            .iter()
            .map(|p| {
                (
                    p.name,
                    overrides
                        .get(p.name)
                        .cloned()
                        .unwrap_or_else(|| Value::from_default(&p.default)),
                )
            })
            .collect();
        RunContext {
            inner: Arc::new(Inner {
                pipeline,
                run_id,
                partition,
                params,
                resources,
                ledger,
                outcomes: std::sync::Mutex::new(Vec::new()),
                items: std::sync::Mutex::new(HashMap::new()),
                delivered: std::sync::Mutex::new(std::collections::HashSet::new()),
                warnings: std::sync::Mutex::new(Vec::new()),
                inputs: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The run ledger, when this run is recorded in one.
    pub fn ledger(&self) -> Option<&crate::ledger::Ledger> {
        self.inner.ledger.as_ref()
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &'static Pipeline {
        self.inner.pipeline
    }

    /// This run's identifier.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// This run's partition; an error for a pipeline without partitions.
    pub fn partition(&self) -> BlockResult<Partition> {
        self.inner
            .partition
            .ok_or_else(|| BlockError::fatal("this run has no partition"))
    }

    /// This run's partition, if it has one.
    pub fn partition_opt(&self) -> Option<Partition> {
        self.inner.partition
    }

    /// A parameter's value.
    pub fn param(&self, name: &str) -> BlockResult<&Value> {
        self.inner
            .params
            .get(name)
            .ok_or_else(|| BlockError::fatal(format!("unknown parameter `{name}`")))
    }

    /// The connection's URL with environment references resolved and its password injected.
    pub fn connection_url(&self, name: &str) -> BlockResult<String> {
        let connection = self
            .inner
            .pipeline
            .connections
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| BlockError::fatal(format!("unknown connection `{name}`")))?;
        let url = crate::env::interpolate(connection.url, |var| std::env::var(var).ok())
            .map_err(|e| BlockError::fatal(format!("connection `{name}`: {e}")))?;
        match connection.password {
            // An empty URL switches an optional channel off; it needs no password.
            _ if url.trim().is_empty() => Ok(url),
            None => Ok(url),
            Some(secret) => {
                let password = read_secret(secret)
                    .map_err(|e| BlockError::fatal(format!("connection `{name}`: {e}")))?;
                let mut parsed = reqwest::Url::parse(&url).map_err(|e| {
                    BlockError::fatal(format!("connection `{name}`: invalid URL: {e}"))
                })?;
                parsed.set_password(Some(&password)).map_err(|()| {
                    BlockError::fatal(format!(
                        "connection `{name}`: this URL cannot carry a password"
                    ))
                })?;
                Ok(parsed.to_string())
            }
        }
    }

    /// The blocks of this run that have ended so far, in the order they ended.
    pub fn outcomes(&self) -> Vec<BlockOutcome> {
        self.inner
            .outcomes
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default()
    }

    pub(crate) fn cached_item(&self, block: &'static str, item: &str) -> Option<DataFrame> {
        let items = self.inner.items.lock().ok()?;
        items.get(&(block, item.to_string())).cloned()
    }

    pub(crate) fn cache_item(&self, block: &'static str, item: &str, frame: DataFrame) {
        if let Ok(mut items) = self.inner.items.lock() {
            items.insert((block, item.to_string()), frame);
        }
    }

    pub(crate) fn forget_items(&self, block: &'static str) {
        if let Ok(mut items) = self.inner.items.lock() {
            items.retain(|(b, _), _| *b != block);
        }
    }

    /// Whether this run delivered on the channel `key` already.
    pub(crate) fn delivered(&self, key: &str) -> bool {
        self.inner
            .delivered
            .lock()
            .is_ok_and(|delivered| delivered.contains(key))
    }

    /// Records a delivery on the channel `key`.
    pub(crate) fn mark_delivered(&self, key: String) {
        if let Ok(mut delivered) = self.inner.delivered.lock() {
            delivered.insert(key);
        }
    }

    /// Records that a warning check (`subject`, its name and location) failed for `failing` of
    /// `rows` rows. A block that works batch by batch reports each batch: the counts add up to
    /// one warning per check.
    pub(crate) fn record_check_warning(&self, subject: &str, failing: usize, rows: usize) {
        let Ok(mut warnings) = self.inner.warnings.lock() else {
            return;
        };
        let (failing, rows) = match warnings.iter().position(|(s, _, _)| s == subject) {
            Some(index) => {
                let (_, before_failing, before_rows) = warnings.remove(index);
                (before_failing + failing, before_rows + rows)
            }
            None => (failing, rows),
        };
        warnings.push((subject.to_string(), failing, rows));
    }

    /// Notes a file a block read and its checksum; a retried read of the same file replaces it.
    pub(crate) fn record_input(&self, block: &'static str, label: &str, checksum: String) {
        if let Ok(mut inputs) = self.inner.inputs.lock() {
            let files = inputs.entry(block).or_default();
            files.retain(|(l, _)| l != label);
            files.push((label.to_string(), checksum));
        }
    }

    /// The files a block read, with their checksums (empty for blocks that read no file).
    pub(crate) fn take_inputs(&self, block: &'static str) -> Vec<(String, String)> {
        self.inner
            .inputs
            .lock()
            .ok()
            .and_then(|mut inputs| inputs.remove(block))
            .unwrap_or_default()
    }

    /// The data checks' warnings of this run so far.
    pub fn warnings(&self) -> Vec<String> {
        self.inner
            .warnings
            .lock()
            .map(|warnings| {
                warnings
                    .iter()
                    .map(|(subject, failing, rows)| {
                        format!("{subject} failed for {failing} of {rows} rows")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn record_outcome(&self, outcome: BlockOutcome) {
        if let Ok(mut outcomes) = self.inner.outcomes.lock() {
            outcomes.push(outcome);
        }
    }

    /// The process's shared resources.
    pub fn resources(&self) -> &Resources {
        &self.inner.resources
    }

    /// The warehouse behind a connection, connected once per process.
    pub async fn warehouse(&self, connection: &str) -> BlockResult<Warehouse> {
        let mut warehouses = self.inner.resources.warehouses.lock().await;
        if let Some(warehouse) = warehouses.get(connection) {
            return Ok(warehouse.clone());
        }
        let url = self.connection_url(connection)?;
        let warehouse = Warehouse::connect(&url)
            .await
            .map_err(|e| e.context(format!("connection `{connection}` ({})", redact(&url))))?;
        warehouses.insert(connection.to_string(), warehouse.clone());
        Ok(warehouse)
    }

    /// Runs CPU-bound work (polars) on the blocking pool, so it never stalls the I/O of other
    /// blocks running concurrently. The inputs are collected into whole frames first: the
    /// work needs every row at once.
    pub fn compute<F>(self, inputs: Vec<Rows>, work: F) -> BlockFuture
    where
        F: FnOnce(&RunContext, Vec<DataFrame>) -> BlockResult<DataFrame> + Send + 'static,
    {
        Box::pin(async move {
            let mut frames = Vec::with_capacity(inputs.len());
            for rows in inputs {
                frames.push(rows.collect().await?);
            }
            let frame = tokio::task::spawn_blocking(move || work(&self, frames))
                .await
                .map_err(|e| BlockError::fatal(format!("block panicked: {e}")))??;
            Ok(Some(Rows::from(frame)))
        })
    }

    /// Applies a row-wise block to each batch of its input as the batch arrives, on the
    /// blocking pool; the output is streamed when the input is. The compiler emits this only
    /// for blocks whose result on all rows is their results on the batches, stacked: filters,
    /// derived columns without windows, renames, casts, row checks.
    pub fn per_batch(
        self,
        input: Rows,
        columns: &'static [Column],
        work: fn(&RunContext, DataFrame) -> BlockResult<DataFrame>,
    ) -> BlockFuture {
        Box::pin(async move {
            if !input.is_streamed() {
                let frame = input.collect().await?;
                let frame = tokio::task::spawn_blocking(move || work(&self, frame))
                    .await
                    .map_err(|e| BlockError::fatal(format!("block panicked: {e}")))??;
                return Ok(Some(Rows::from(frame)));
            }
            let batches = futures::stream::unfold(
                (input, self, 0usize),
                move |(mut input, ctx, offset)| async move {
                    let batch = match input.next_batch().await? {
                        Ok(batch) => batch,
                        Err(error) => return Some((Err(error), (input, ctx, offset))),
                    };
                    let rows = batch.height();
                    let worker = ctx.clone();
                    // An error names the rows of the batch, since a check's counts are the
                    // batch's: "input rows 110,001 to 165,000: check ... failed for 2 of 55,000".
                    let mapped = tokio::task::spawn_blocking(move || work(&worker, batch))
                        .await
                        .map_err(|e| BlockError::fatal(format!("block panicked: {e}")))
                        .and_then(|result| result)
                        .map_err(|e| {
                            e.context(format!("input rows {} to {}", offset + 1, offset + rows))
                        });
                    Some((mapped, (input, ctx, offset + rows)))
                },
            );
            Ok(Some(Rows::batches(columns, batches)))
        })
    }
}

pub(crate) fn read_secret(secret: Secret) -> Result<String, String> {
    match secret {
        Secret::Env(var) => {
            std::env::var(var).map_err(|_| format!("secret environment variable {var} is not set"))
        }
        Secret::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| format!("cannot read secret file {path}: {e}")),
    }
}

/// A URL with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
