//! `serve`: the pipeline binary as a service. A scheduler starts runs on the pipeline's cron
//! schedule (in its time zone, catching up after downtime by the pipeline's policy), and an
//! HTTP API lists runs, shows one, triggers runs and backfills, and exports Prometheus metrics.
//!
//! The scheduler never stops silently: every tick is logged, `/health` shows the next and the
//! last tick, and it sleeps in short steps so that a suspended machine or a changed clock is
//! noticed within seconds. Runs a tick starts are awaited by the scheduler itself, so two runs
//! of one schedule never overlap: a tick that comes meanwhile is skipped (and logged) or queued,
//! as `[pipeline.schedule] overlap` says. On SIGTERM or Ctrl-C the scheduler and the API stop
//! taking work and in-flight runs get a grace period to finish; a run still going after it is
//! found by the next process as abandoned, and `backfill` or `resume` completes it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, Notify, watch};
use tracing::{error, info, warn};

use crate::cli::{backfill_plan, latest_complete, newest_succeeded, scheduled_partitions};
use crate::context::Value;
use crate::executor::{RunRequest, Services, new_run_id};
use crate::ledger::{Claim, TriggerKind};
use crate::partition::Partition;
use crate::pipeline::{Overlap, Pipeline};

/// How `serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// The bearer token that state-changing requests (and, with `private`, all requests)
    /// must carry; without one, the API is read-only.
    pub token: Option<String>,
    /// Require the token for reads too.
    pub private: bool,
    /// A cron pattern that replaces the compiled schedule (for operations and tests).
    pub cron: Option<String>,
    /// An SLA that replaces the compiled one.
    pub sla: Option<Duration>,
    /// A sensor poke interval that replaces the compiled one.
    pub poke: Option<Duration>,
    /// How long in-flight runs may take to finish after a shutdown signal.
    pub grace: Duration,
    /// Run no scheduler, only the API.
    pub no_schedule: bool,
}

/// The schedule in force.
struct Schedule {
    cron: Cron,
    pattern: String,
    timezone: Tz,
    overlap: Overlap,
    sla: Option<Duration>,
}

#[derive(Default)]
struct SchedulerStatus {
    next_tick: Option<DateTime<Utc>>,
    last_tick: Option<DateTime<Utc>>,
    skipped_ticks: u64,
    missed_slas: u64,
    sensor_timeouts: u64,
    last_poke: Option<DateTime<Utc>>,
}

struct AppState {
    pipeline: &'static Pipeline,
    services: Services,
    options: ServeOptions,
    schedule: Option<(String, String)>,
    status: Mutex<SchedulerStatus>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Runs of this process that can be cancelled, by id.
    cancels: std::sync::Mutex<HashMap<String, watch::Sender<Option<String>>>>,
}

impl AppState {
    /// Starts a run in the background and returns its id at once.
    fn spawn_run(
        self: &Arc<Self>,
        partition: Option<Partition>,
        params: HashMap<String, Value>,
    ) -> String {
        let run_id = new_run_id(self.pipeline, partition);
        let request = RunRequest {
            run_id: Some(run_id.clone()),
            actor: self.api_actor(),
            ..RunRequest::full(partition, params, TriggerKind::Api)
        };
        let state = self.clone();
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            state.execute(request, None).await;
            state.finished_one();
        });
        run_id
    }

    /// A run context for `run_id` (callbacks and sensors outside a run use it for connections
    /// and the partition).
    fn context(&self, run_id: &str, partition: Option<Partition>) -> crate::context::RunContext {
        crate::context::RunContext::new(
            self.pipeline,
            run_id.to_string(),
            partition,
            &HashMap::new(),
            self.services.resources.clone(),
            self.services.ledger.clone(),
        )
    }

    /// The sensor's poke interval: `--poke`, or the compiled one.
    fn poke_interval(&self, sensor: &crate::pipeline::SensorDef) -> Duration {
        self.options
            .poke
            .unwrap_or(Duration::from_millis(sensor.poke_interval_ms))
    }

    /// Who the audit trail names for a run started through the API: the token's fingerprint
    /// (only the token's holder can start runs) and this machine.
    fn api_actor(&self) -> Option<String> {
        let host = self.services.ledger.as_ref()?.host();
        self.options
            .token
            .as_deref()
            .map(|token| crate::audit::token_actor(token, host))
    }

    /// Runs `request`, if the ledger grants `claim` when there is one (another replica may have
    /// the partition). While it goes, `POST /runs/{id}/cancel` can cancel it.
    async fn execute(&self, mut request: RunRequest, claim: Option<Claim>) {
        let run_id = request
            .run_id
            .get_or_insert_with(|| new_run_id(self.pipeline, request.partition))
            .clone();
        let (cancel, cancelled) = watch::channel(None);
        request.cancel = Some(cancelled);
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id.clone(), cancel);
        let started = match claim {
            Some(claim) => {
                crate::executor::run_claimed(self.pipeline, request, &self.services, claim)
                    .await
                    .map(|_| ())
            }
            None => crate::executor::run(self.pipeline, request, &self.services)
                .await
                .map(|_| ()),
        };
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run_id);
        if let Err(error) = started {
            error!("the run could not start: {error}");
        }
    }

    fn finished_one(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no run is in flight, at most `limit`; returns how many are still going.
    async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let going = self.in_flight.load(Ordering::SeqCst);
            if going == 0 {
                return 0;
            }
            let idle = self.idle.notified();
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight.load(Ordering::SeqCst);
            }
        }
    }
}

/// Runs the service until SIGTERM or Ctrl-C. Returns a message for a start-up failure.
pub async fn serve(
    pipeline: &'static Pipeline,
    services: Services,
    options: ServeOptions,
) -> Result<(), String> {
    // A pipeline with a sensor and no schedule runs each partition when the sensor sees it.
    let sensor_only = pipeline.sensor.is_some()
        && pipeline.schedule.is_none()
        && options.cron.is_none()
        && !options.no_schedule;
    if sensor_only && pipeline.partitions.is_none() {
        return Err(format!(
            "pipeline {} has a sensor but neither a schedule nor partitions: add [pipeline.schedule] (the sensor then gates each scheduled run) or [pipeline.partitions]",
            pipeline.name
        ));
    }
    let schedule = if options.no_schedule || sensor_only {
        None
    } else {
        Some(schedule(pipeline, options.cron.as_deref(), options.sla)?)
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let state = Arc::new(AppState {
        pipeline,
        services,
        schedule: schedule
            .as_ref()
            .map(|s| (s.pattern.clone(), s.timezone.name().to_string())),
        options,
        status: Mutex::new(SchedulerStatus::default()),
        in_flight: AtomicUsize::new(0),
        idle: Notify::new(),
        cancels: std::sync::Mutex::new(HashMap::new()),
    });
    let (stop, stopped) = watch::channel(false);
    let scheduler = schedule
        .map(|schedule| tokio::spawn(run_scheduler(state.clone(), schedule, stopped.clone())));
    let watchdog = tokio::spawn(watch_abandoned_runs(state.clone(), stopped.clone()));
    let cancels = tokio::spawn(watch_cancel_requests(state.clone(), stopped.clone()));
    let sensing = sensor_only.then(|| tokio::spawn(run_on_sensor(state.clone(), stopped.clone())));
    info!(listen = %state.options.listen, "serving {}", pipeline.name);
    let app = router(state.clone());
    let mut api_stopped = stopped.clone();
    let api = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_stopped.wait_for(|stop| *stop).await;
            })
            .await
    });
    shutdown_signal().await;
    info!(
        "shutting down: no new runs; waiting up to {:?} for runs in flight",
        state.options.grace
    );
    let _ = stop.send(true);
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    let _ = watchdog.await;
    let _ = cancels.await;
    if let Some(sensing) = sensing {
        let _ = sensing.await;
    }
    let left = state.drain(state.options.grace).await;
    if left > 0 {
        warn!(
            runs = left,
            "runs still going after the grace period are left to be recovered as abandoned"
        );
    }
    let _ = api.await;
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The compiled schedule, or `--cron` in the compiled (or UTC) time zone; `--sla` replaces the
/// compiled SLA.
fn schedule(
    pipeline: &Pipeline,
    cron: Option<&str>,
    sla: Option<Duration>,
) -> Result<Schedule, String> {
    let compiled = pipeline.schedule;
    let pattern = match (cron, compiled) {
        (Some(pattern), _) => pattern.to_string(),
        (None, Some(compiled)) => compiled.cron.to_string(),
        (None, None) => {
            return Err(format!(
                "pipeline {} has no [pipeline.schedule]; add one, pass --cron, or use --no-schedule",
                pipeline.name
            ));
        }
    };
    let parsed = Cron::from_str(&pattern).map_err(|e| format!("--cron `{pattern}`: {e}"))?;
    let timezone = match compiled {
        Some(compiled) => Tz::from_str(compiled.timezone)
            .map_err(|e| format!("time zone {}: {e}", compiled.timezone))?,
        None => Tz::UTC,
    };
    Ok(Schedule {
        cron: parsed,
        pattern,
        timezone,
        overlap: compiled.map_or(Overlap::Skip, |c| c.overlap),
        sla: sla.or_else(|| compiled.and_then(|c| c.sla_ms).map(Duration::from_millis)),
    })
}

async fn run_scheduler(
    state: Arc<AppState>,
    schedule: Schedule,
    mut stopped: watch::Receiver<bool>,
) {
    info!(cron = %schedule.pattern, timezone = %schedule.timezone, "scheduler started");
    catch_up(&state, &schedule).await;
    let mut after = Utc::now();
    loop {
        // Cron times are whole seconds; croner carries the sub-second part of its starting
        // point into the time it finds, so it is cut off here. Every replica then computes the
        // same tick to the millisecond, which is what their claims on a tick compare.
        after = after.with_nanosecond(0).unwrap_or(after);
        let next = match schedule
            .cron
            .find_next_occurrence(&after.with_timezone(&schedule.timezone), false)
        {
            Ok(next) => next.with_timezone(&Utc),
            Err(e) => {
                error!("the schedule has no next time ({e}); the scheduler stops, the API goes on");
                return;
            }
        };
        state.status.lock().await.next_tick = Some(next);
        // Short sleeps: a suspended machine or a changed clock is noticed within seconds.
        loop {
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            if wait.is_zero() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(5))) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
        {
            let mut status = state.status.lock().await;
            status.last_tick = Some(next);
        }
        info!(tick = %next, "schedule tick");
        tick(&state, &schedule, next).await;
        // Ticks that came while the run was going: skipped, or coalesced into one more run.
        let now = Utc::now();
        let missed_ticks: Vec<DateTime<Utc>> = schedule
            .cron
            .iter_after(next.with_timezone(&schedule.timezone))
            .map(|t| t.with_timezone(&Utc))
            .take_while(|t| *t <= now)
            .take(10_000)
            .collect();
        let missed = missed_ticks.len();
        if let Some(&last_missed) = missed_ticks.last() {
            match schedule.overlap {
                Overlap::Skip => {
                    state.status.lock().await.skipped_ticks += missed as u64;
                    warn!(
                        skipped = missed,
                        "ticks came while the previous run was going and were skipped (overlap = \"skip\")"
                    );
                }
                Overlap::Queue => {
                    info!(
                        queued = missed,
                        "ticks came while the previous run was going; running once more now (overlap = \"queue\")"
                    );
                    // The run stands for the last missed tick, an exact cron time that other
                    // replicas compute alike, so their claims on it agree.
                    tick(&state, &schedule, last_missed).await;
                }
            }
        }
        after = Utc::now().max(next);
        if *stopped.borrow() {
            return;
        }
    }
}

/// Every second, cancels the runs of this process that another replica was asked to cancel.
async fn watch_cancel_requests(state: Arc<AppState>, mut stopped: watch::Receiver<bool>) {
    let Some(ledger) = state.services.ledger.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let local: Vec<(String, watch::Sender<Option<String>>)> = state
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, cancel)| (id.clone(), cancel.clone()))
            .collect();
        for (run_id, cancel) in local {
            match ledger.cancel_request(&run_id).await {
                Ok(Some(reason)) if cancel.borrow().is_none() => {
                    info!(run_id = %run_id, "cancelling the run, as asked through another replica");
                    cancel.send_replace(Some(reason));
                }
                Ok(_) => {}
                Err(error) => warn!("cannot read cancel requests: {error}"),
            }
        }
    }
}

/// How often `serve` looks for runs whose process died.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// Finds runs of this pipeline whose process died (a replica killed mid-run: its pid is gone on
/// this machine, or its heartbeat stopped for longer than the lease) and resumes them: blocks
/// that succeeded are reused from their checkpoints, the rest run again. The ledger's status
/// guard gives each dead run to exactly one replica, and the resumed run is claimed like a
/// scheduled one, so a partition is never run by two replicas at once.
async fn watch_abandoned_runs(state: Arc<AppState>, mut stopped: watch::Receiver<bool>) {
    let Some(ledger) = state.services.ledger.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let abandoned = match ledger.recover_abandoned(state.pipeline.name).await {
            Ok(abandoned) => abandoned,
            Err(error) => {
                warn!("cannot look for abandoned runs: {error}");
                continue;
            }
        };
        for run in abandoned {
            if let Some(checkpoints) = &state.services.checkpoints {
                crate::executor::remove_unrecorded_checkpoints(
                    &ledger,
                    checkpoints,
                    state.pipeline.name,
                    &run.run_id,
                )
                .await;
            }
            let trigger = run.trigger.as_str();
            if trigger == TriggerKind::Only.as_str() || trigger == TriggerKind::Until.as_str() {
                warn!(run_id = %run.run_id, "{}; a partial run is not resumed", run.error.as_deref().unwrap_or("abandoned"));
                continue;
            }
            match crate::cli::resume_request(state.pipeline, &ledger, &run.run_id).await {
                Ok((Some(request), reused)) => {
                    let request = RunRequest {
                        actor: Some(format!(
                            "serve@{} (resuming run {} of a process that died)",
                            ledger.host(),
                            run.run_id
                        )),
                        ..request
                    };
                    warn!(run_id = %run.run_id, reused, "{}; resuming it", run.error.as_deref().unwrap_or("abandoned"));
                    state.in_flight.fetch_add(1, Ordering::SeqCst);
                    let state = state.clone();
                    tokio::spawn(async move {
                        state.execute(request, Some(Claim::Idle)).await;
                        state.finished_one();
                    });
                }
                Ok((None, _)) => {}
                Err(error) => {
                    error!(run_id = %run.run_id, "an abandoned run cannot be resumed: {error}");
                }
            }
        }
    }
}

/// Without a schedule: every poke interval, looks for the latest complete partition's data and
/// runs the partition once it is there, unless it is loaded, running, or was already started on
/// a sensor's word (the claim decides, so replicas run it once).
async fn run_on_sensor(state: Arc<AppState>, mut stopped: watch::Receiver<bool>) {
    let (Some(sensor), Some(spec)) = (&state.pipeline.sensor, state.pipeline.partitions) else {
        return;
    };
    let poke = state.poke_interval(sensor);
    info!(path = sensor.path, every = ?poke, "sensor started");
    loop {
        match latest_complete(spec) {
            Ok(partition) => {
                state.status.lock().await.last_poke = Some(Utc::now());
                let run_id = new_run_id(state.pipeline, Some(partition));
                let ctx = state.context(&run_id, Some(partition));
                match crate::sensor::poke(sensor, &ctx).await {
                    Ok(true) => {
                        let request = RunRequest {
                            run_id: Some(run_id),
                            ..RunRequest::full(Some(partition), HashMap::new(), TriggerKind::Sensor)
                        };
                        state.in_flight.fetch_add(1, Ordering::SeqCst);
                        state.execute(request, Some(Claim::Sensor)).await;
                        state.finished_one();
                    }
                    Ok(false) => {}
                    Err(error) => warn!(path = sensor.path, "sensor cannot look: {error}"),
                }
            }
            Err(error) => error!("cannot tell the sensor's partition: {error}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poke) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// At start-up: partitions missed while the service was down, by the catch-up policy.
async fn catch_up(state: &Arc<AppState>, schedule: &Schedule) {
    let pipeline = state.pipeline;
    let (Some(spec), Some(ledger)) = (pipeline.partitions, &state.services.ledger) else {
        return;
    };
    let Ok(latest) = latest_complete(spec) else {
        return;
    };
    let newest = match newest_succeeded(pipeline, ledger).await {
        Ok(newest) => newest,
        Err(error) => {
            error!("cannot read the ledger to catch up: {error}");
            return;
        }
    };
    // Nothing ever succeeded: the first tick runs the latest partition; history is `backfill`'s.
    let Some(newest) = newest else {
        return;
    };
    if newest >= latest {
        return;
    }
    let (partitions, missed) = scheduled_partitions(spec.catchup, latest, Some(newest));
    if !missed.is_empty() {
        warn!(
            missed = missed.len(),
            "partitions missed while the service was down are not caught up (catchup = \"latest\")"
        );
    }
    info!(partitions = partitions.len(), "catching up after downtime");
    for partition in partitions {
        run_scheduled(state, schedule, Some(partition), Utc::now(), Claim::Missing).await;
    }
}

/// One tick: the latest complete partition (or the whole pipeline when it has no partitions).
async fn tick(state: &Arc<AppState>, schedule: &Schedule, at: DateTime<Utc>) {
    let partition = if let Some(spec) = state.pipeline.partitions {
        match latest_complete(spec) {
            Ok(partition) => Some(partition),
            Err(error) => {
                error!("cannot tell this tick's partition: {error}");
                return;
            }
        }
    } else {
        None
    };
    run_scheduled(
        state,
        schedule,
        partition,
        at,
        Claim::Tick(at.timestamp_millis()),
    )
    .await;
}

async fn run_scheduled(
    state: &Arc<AppState>,
    schedule: &Schedule,
    partition: Option<Partition>,
    tick: DateTime<Utc>,
    claim: Claim,
) {
    let run_id = new_run_id(state.pipeline, partition);
    if let Some(sensor) = &state.pipeline.sensor {
        let ctx = state.context(&run_id, partition);
        let poke = state.poke_interval(sensor);
        let timeout = Duration::from_millis(sensor.timeout_ms);
        info!(
            path = sensor.path,
            "waiting for the sensor before the scheduled run"
        );
        if crate::sensor::wait(sensor, &ctx, poke, timeout).await == crate::sensor::Waited::TimedOut
        {
            state.status.lock().await.sensor_timeouts += 1;
            error!(
                partition = %partition.map(|p| p.key()).unwrap_or_default(),
                path = sensor.path,
                "the sensor timed out after {:?}: the scheduled run does not start",
                timeout
            );
            return;
        }
    }
    let request = RunRequest {
        run_id: Some(run_id.clone()),
        ..RunRequest::full(partition, HashMap::new(), TriggerKind::Schedule)
    };
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let run = state.execute(request, Some(claim));
    tokio::pin!(run);
    let sla = schedule.sla.map(|sla| {
        let elapsed = (Utc::now() - tick).to_std().unwrap_or_default();
        sla.saturating_sub(elapsed)
    });
    match sla {
        Some(left) => {
            tokio::select! {
                _ = &mut run => {}
                _ = tokio::time::sleep(left) => {
                    state.status.lock().await.missed_slas += 1;
                    let sla = schedule.sla.unwrap_or_default();
                    error!(partition = %partition.map(|p| p.key()).unwrap_or_default(), tick = %tick, run_id = %run_id, "SLA missed: the run has not finished {:?} after its tick", sla);
                    send_sla_alerts(state, partition, &run_id, sla).await;
                    run.await;
                }
            }
        }
        None => {
            run.await;
        }
    }
    state.finished_one();
}

mod ui;

/// Sends every `on = "sla"` callback for a late run, each with up to three attempts when its
/// channel answers with a retryable error.
async fn send_sla_alerts(
    state: &Arc<AppState>,
    partition: Option<Partition>,
    run_id: &str,
    late_by: Duration,
) {
    let pipeline = state.pipeline;
    for block in pipeline.blocks {
        let Some(target) = block.sla_alert() else {
            continue;
        };
        let ctx = state.context(run_id, partition);
        for attempt in 1..=3u32 {
            match crate::callback::notify_sla(ctx.clone(), target, late_by).await {
                Ok(()) => break,
                Err(error) if error.kind == crate::error::ErrorKind::Retryable && attempt < 3 => {
                    warn!(
                        block = block.name,
                        attempt, "SLA alert not delivered, retrying: {error}"
                    );
                    tokio::time::sleep(Duration::from_secs(2 * u64::from(attempt))).await;
                }
                Err(error) => {
                    error!(block = block.name, "SLA alert not delivered: {error}");
                    break;
                }
            }
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(ui::root))
        .route("/ui", get(ui::page))
        .route("/pipeline", get(ui::pipeline))
        .route("/health", get(health))
        .route("/runs", get(list_runs).post(trigger_run))
        .route("/runs/{run_id}", get(run_detail))
        .route("/runs/{run_id}/cancel", axum::routing::post(cancel_run))
        .route("/runs/{run_id}/logs", get(ui::logs))
        .route("/runs/{run_id}/blocks/{block}/preview", get(ui::preview))
        .route("/backfills", axum::routing::post(trigger_backfill))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn api_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    (status, Json(json!({ "error": message.into() })))
}

/// Requests that change state need the token; reads need it with `--private`.
fn authorize(state: &AppState, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
    if !write && !state.options.private {
        return Ok(());
    }
    let Some(token) = &state.options.token else {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "this API is read-only: set BATON_API_TOKEN when starting `serve` to allow runs to be triggered",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared in constant time, so the token cannot be guessed byte by byte.
    let equal = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if equal {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong `Authorization: Bearer <token>`",
        ))
    }
}

async fn health(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, false)?;
    let status = state.status.lock().await;
    Ok(Json(json!({
        "pipeline": state.pipeline.name,
        "version": state.pipeline.source_hash,
        "git_commit": state.pipeline.git_commit,
        "runs_in_flight": state.in_flight.load(Ordering::SeqCst),
        "scheduler": state.schedule.as_ref().map(|(cron, timezone)| json!({
            "cron": cron,
            "timezone": timezone,
            "next_tick": status.next_tick.map(|t| t.to_rfc3339()),
            "last_tick": status.last_tick.map(|t| t.to_rfc3339()),
            "skipped_ticks": status.skipped_ticks,
            "missed_slas": status.missed_slas,
        })),
        "sensor": state.pipeline.sensor.map(|sensor| json!({
            "kind": format!("{:?}", sensor.kind).to_lowercase(),
            "path": sensor.path,
            "poke_interval_ms": state.poke_interval(&sensor).as_millis() as u64,
            "timeout_ms": sensor.timeout_ms,
            "last_poke": status.last_poke.map(|t| t.to_rfc3339()),
            "timeouts": status.sensor_timeouts,
        })),
    })))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    /// Only runs started before this time (milliseconds since the epoch): the next page.
    before: Option<i64>,
}

/// A ledger that cannot be read or written, as the API answers it.
fn ledger_unavailable(error: crate::ledger::LedgerError) -> ApiError {
    api_error(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}

fn ledger(state: &AppState) -> Result<&crate::ledger::Ledger, ApiError> {
    state
        .services
        .ledger
        .as_ref()
        .ok_or_else(|| api_error(StatusCode::SERVICE_UNAVAILABLE, "no run ledger"))
}

async fn list_runs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, false)?;
    let limit = query.limit.unwrap_or(50).clamp(1, 10_000);
    let runs = ledger(&state)?
        .runs(state.pipeline.name, limit, query.before)
        .await
        .map_err(ledger_unavailable)?;
    Ok(Json(json!({ "runs": runs })))
}

async fn run_detail(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, false)?;
    let ledger = ledger(&state)?;
    let run = ledger
        .run(&run_id)
        .await
        .map_err(ledger_unavailable)?
        .filter(|r| r.pipeline == state.pipeline.name)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, format!("no run `{run_id}`")))?;
    let blocks = ledger.blocks(&run_id).await.map_err(ledger_unavailable)?;
    let attempts = ledger.attempts(&run_id).await.map_err(ledger_unavailable)?;
    Ok(Json(
        json!({ "run": run, "blocks": blocks, "attempts": attempts }),
    ))
}

/// `POST /runs/{run_id}/cancel`: cancels a run of this process at once, or asks the replica
/// running it through the shared ledger. Its running blocks stop and fail, the rest are
/// skipped, and it ends `cancelled` (no failure alert is sent; it can be resumed).
async fn cancel_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers, true)?;
    let cancel = state
        .cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&run_id)
        .cloned();
    // The ledger is asked first even for a run of this process: a run is recorded as ended a
    // moment before it leaves the process's list, and an ended run cannot be cancelled.
    // A ledger that cannot answer does not keep a run of this process from being cancelled.
    let run = match ledger(&state) {
        Ok(ledger) => ledger.run(&run_id).await.map_err(ledger_unavailable),
        Err(error) => Err(error),
    }
    .map(|run| run.filter(|r| r.pipeline == state.pipeline.name));
    let run = match (run, cancel) {
        (Ok(Some(run)), _) if run.status != "running" => {
            return Err(api_error(
                StatusCode::CONFLICT,
                format!("run `{run_id}` has already ended: {}", run.status),
            ));
        }
        // Running here, or starting here and not yet in the ledger.
        (_, Some(cancel)) => {
            let by = state.api_actor().unwrap_or_else(|| "the API".into());
            cancel.send_replace(Some(format!("cancelled by {by}")));
            info!(run_id = %run_id, "cancelling the run, as asked through the API");
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": run_id, "status": "cancelling" })),
            ));
        }
        (Err(error), None) => return Err(error),
        (Ok(Some(run)), None) => run,
        (Ok(None), None) => {
            return Err(api_error(
                StatusCode::NOT_FOUND,
                format!("no run `{run_id}`"),
            ));
        }
    };
    // Another replica runs it: it reads the request from the shared ledger within a second.
    let by = state.api_actor().unwrap_or_else(|| "the API".into());
    ledger(&state)?
        .request_cancel(&run_id, &format!("cancelled by {by}"))
        .await
        .map_err(ledger_unavailable)?;
    info!(run_id = %run_id, host = %run.host, pid = run.pid, "asked the replica running it to cancel the run");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "run_id": run_id,
            "status": "cancelling",
            "host": run.host,
            "pid": run.pid,
        })),
    ))
}

#[derive(Deserialize)]
struct TriggerBody {
    partition: Option<String>,
    #[serde(default)]
    params: HashMap<String, String>,
}

async fn trigger_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<TriggerBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers, true)?;
    let bad = |message: String| api_error(StatusCode::BAD_REQUEST, message);
    let partition = match (body.partition, state.pipeline.partitions) {
        (Some(key), Some(spec)) => Some(Partition::parse(spec.granularity, &key).map_err(bad)?),
        (Some(_), None) => {
            return Err(bad(format!(
                "pipeline {} has no partitions",
                state.pipeline.name
            )));
        }
        (None, Some(spec)) => Some(latest_complete(spec).map_err(bad)?),
        (None, None) => None,
    };
    let raw: Vec<String> = body
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let params = crate::cli::parse_params(state.pipeline, &raw).map_err(bad)?;
    let run_id = state.spawn_run(partition, params);
    info!(run_id = %run_id, "run triggered through the API");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run_id": run_id, "partition": partition.map(|p| p.key()) })),
    ))
}

#[derive(Deserialize)]
struct BackfillBody {
    from: String,
    to: String,
    #[serde(default)]
    rerun_all: bool,
}

async fn trigger_backfill(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<BackfillBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers, true)?;
    let bad = |message: String| api_error(StatusCode::BAD_REQUEST, message);
    let partitions =
        crate::cli::backfill_partitions(state.pipeline, &body.from, &body.to).map_err(bad)?;
    let plan = backfill_plan(state.pipeline, ledger(&state)?, &partitions, body.rerun_all)
        .await
        .map_err(ledger_unavailable)?;
    let (todo, skipped): (Vec<_>, Vec<_>) = plan.into_iter().partition(|p| p.run);
    let todo: Vec<Partition> = todo.into_iter().map(|p| p.partition).collect();
    let task_state = state.clone();
    let queued: Vec<String> = todo.iter().map(Partition::key).collect();
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        for partition in todo {
            let request = RunRequest {
                actor: task_state.api_actor(),
                ..RunRequest::full(Some(partition), HashMap::new(), TriggerKind::Api)
            };
            task_state.execute(request, None).await;
        }
        task_state.finished_one();
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "queued": queued,
            "skipped": skipped.iter().map(|p| p.partition.key()).collect::<Vec<_>>(),
        })),
    ))
}

/// A counter family with one sample per block: its name, its help and the values.
type PerBlock<'a> = (&'static str, &'static str, &'a [(String, i64)]);

/// Histogram bounds of block durations, in seconds.
const DURATION_BOUNDS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, false)?;
    let bounds_ms: Vec<i64> = DURATION_BOUNDS
        .iter()
        .map(|b| (b * 1000.0) as i64)
        .collect();
    let metrics = ledger(&state)?
        .metrics(state.pipeline.name, &bounds_ms)
        .await
        .map_err(ledger_unavailable)?;
    let pipeline = state.pipeline.name;
    let status = state.status.lock().await;
    let mut out = String::new();
    let push = |out: &mut String, name: &str, kind: &str, help: &str, lines: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        out.push_str(&lines);
    };
    let mut lines = String::new();
    for (run_status, count) in &metrics.runs {
        let _ = writeln!(
            lines,
            "baton_runs{{pipeline=\"{pipeline}\",status=\"{run_status}\"}} {count}"
        );
    }
    push(
        &mut out,
        "baton_runs",
        "gauge",
        "Runs recorded in the ledger, by status.",
        lines,
    );
    let mut lines = String::new();
    for (block, buckets, count, sum_ms) in &metrics.durations {
        for (bound, cumulative) in DURATION_BOUNDS.iter().zip(buckets) {
            let _ = writeln!(
                lines,
                "baton_block_duration_seconds_bucket{{pipeline=\"{pipeline}\",block=\"{block}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            lines,
            "baton_block_duration_seconds_bucket{{pipeline=\"{pipeline}\",block=\"{block}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            lines,
            "baton_block_duration_seconds_sum{{pipeline=\"{pipeline}\",block=\"{block}\"}} {}",
            *sum_ms as f64 / 1000.0
        );
        let _ = writeln!(
            lines,
            "baton_block_duration_seconds_count{{pipeline=\"{pipeline}\",block=\"{block}\"}} {count}"
        );
    }
    push(
        &mut out,
        "baton_block_duration_seconds",
        "histogram",
        "Time blocks took, first attempt to last.",
        lines,
    );
    // Counters per block: name, help, values.
    let per_block: [PerBlock<'_>; 3] = [
        (
            "baton_block_rows_total",
            "Rows produced (sinks: written) by successful blocks.",
            &metrics.rows,
        ),
        (
            "baton_block_bytes_total",
            "In-memory bytes of the frames successful blocks produced (sinks: received).",
            &metrics.bytes,
        ),
        (
            "baton_block_retries_total",
            "Attempts after the first.",
            &metrics.retries,
        ),
    ];
    for (name, help, values) in per_block {
        let mut lines = String::new();
        for (block, value) in values {
            let _ = writeln!(
                lines,
                "{name}{{pipeline=\"{pipeline}\",block=\"{block}\"}} {value}"
            );
        }
        push(&mut out, name, "counter", help, lines);
    }
    // One sample each, labelled with the pipeline only.
    let heartbeat_lag = metrics.oldest_heartbeat_ms.map_or(0.0, |at| {
        (crate::ledger::now_ms() - at).max(0) as f64 / 1000.0
    });
    let scalars: [(&str, &str, &str, f64); 7] = [
        (
            "baton_ledger_heartbeat_lag_seconds",
            "gauge",
            "Age of the oldest heartbeat of a running run (0: none running); beyond 30 s its process is likely gone.",
            heartbeat_lag,
        ),
        (
            "baton_last_success_timestamp_seconds",
            "gauge",
            "End of the newest successful run (0: none yet).",
            metrics.last_success_ms.unwrap_or(0) as f64 / 1000.0,
        ),
        (
            "baton_scheduler_next_tick_timestamp_seconds",
            "gauge",
            "When the scheduler starts the next run (0: no scheduler).",
            status.next_tick.map_or(0, |t| t.timestamp()) as f64,
        ),
        (
            "baton_scheduler_skipped_ticks_total",
            "counter",
            "Ticks skipped because the previous run was still going.",
            status.skipped_ticks as f64,
        ),
        (
            "baton_scheduler_missed_slas_total",
            "counter",
            "Scheduled runs that had not finished within the SLA.",
            status.missed_slas as f64,
        ),
        (
            "baton_sensor_timeouts_total",
            "counter",
            "Scheduled runs that did not start because the sensor timed out.",
            status.sensor_timeouts as f64,
        ),
        (
            "baton_runs_in_flight",
            "gauge",
            "Runs this process is executing now.",
            state.in_flight.load(Ordering::SeqCst) as f64,
        ),
    ];
    for (name, kind, help, value) in scalars {
        push(
            &mut out,
            name,
            kind,
            help,
            format!("{name}{{pipeline=\"{pipeline}\"}} {value}\n"),
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}
