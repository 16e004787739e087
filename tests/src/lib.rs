//! Test support: real peers on 127.0.0.1 (an HTTP file server, a throwaway PostgreSQL cluster)
//! and paths into the workspace. Every wait is bounded.

pub mod peers;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// `../shared/data/tlc/yellow`, real yellow-taxi samples of 2019 (10,000 rows a month). Panics
/// with an explanation when absent.
pub fn yellow_data_dir() -> PathBuf {
    let dir = workspace_root().join("../shared/data/tlc/yellow");
    assert!(
        dir.join("yellow_tripdata_sample_2019-12.csv").exists(),
        "this test needs the real NYC TLC yellow samples in {} (the project's shared data folder); it is absent",
        dir.display()
    );
    dir
}

/// `../shared/data/tlc/green`, the real NYC TLC files. Panics with an explanation when absent,
/// because the tests that call this check real data and must not pass without it.
pub fn green_data_dir() -> PathBuf {
    let dir = workspace_root().join("../shared/data/tlc/green");
    assert!(
        dir.join("green_tripdata_2021-01.csv.gz").exists(),
        "this test needs the real NYC TLC files in {} (the project's shared data folder); it is absent",
        dir.display()
    );
    dir
}

/// `../shared/data/tlc/zones`, the TLC's real taxi zone lookup (`taxi+_zone_lookup.csv`). Panics
/// with an explanation when absent.
pub fn zones_data_dir() -> PathBuf {
    let dir = workspace_root().join("../shared/data/tlc/zones");
    assert!(
        dir.join("taxi+_zone_lookup.csv").exists(),
        "this test needs the real NYC TLC zone lookup in {} (the project's shared data folder); it is absent",
        dir.display()
    );
    dir
}

/// The real green-taxi files of these months (`2021-01`), from [`green_data_dir`].
pub fn green_month_files(months: &[&str]) -> Vec<PathBuf> {
    let dir = green_data_dir();
    months
        .iter()
        .map(|m| dir.join(format!("green_tripdata_{m}.csv.gz")))
        .collect()
}

/// The lines of a peer's request log; none when it does not exist yet.
pub fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until something accepts connections on the port, at most `limit`.
pub fn wait_for_port(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// How the loopback HTTP peer misbehaves.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// The first N GETs of each file answer 503.
    pub fail_first: u32,
    /// Only files whose name contains this text fail (all files when `None`).
    pub fail_only: Option<String>,
    /// GETs of files whose name contains this text stall for two minutes.
    pub stall: Option<String>,
    /// Every request answers `fail_status` (500 when unset) with a JSON error body.
    pub always_fail: bool,
    /// The status of `always_fail`.
    pub fail_status: Option<u16>,
}

/// A loopback HTTP peer (`tests/support/test_server.py`): serves a folder's files, fails or
/// stalls on purpose, accepts webhook POSTs and logs every request. Stopped on drop.
pub struct HttpServer {
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
    /// The base URL, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl HttpServer {
    /// Serves `dir` faithfully.
    pub fn serve(dir: &Path) -> HttpServer {
        HttpServer::start(dir, ServerOptions::default())
    }

    /// Serves `dir` with the given failures.
    pub fn start(dir: &Path, options: ServerOptions) -> HttpServer {
        let port = free_port();
        let log_dir = tempfile::tempdir().expect("a temporary folder for the request log");
        let log = log_dir.path().join("requests.log");
        let mut command = Command::new("python3");
        command
            .arg(workspace_root().join("tests/support/test_server.py"))
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .arg("--log")
            .arg(&log)
            .args(["--fail-first", &options.fail_first.to_string()]);
        if let Some(stall) = &options.stall {
            command.args(["--stall", stall]);
        }
        if let Some(only) = &options.fail_only {
            command.args(["--fail-only", only]);
        }
        if options.always_fail {
            command.arg("--always-fail");
        }
        if let Some(status) = options.fail_status {
            command.args(["--fail-status", &status.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the loopback HTTP server");
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "the HTTP server did not start on port {port}"
        );
        HttpServer {
            child,
            log,
            _log_dir: log_dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Every request so far, one line each: `GET /path STATUS`, `HEAD /path` or
    /// `POST /path BODY`.
    pub fn requests(&self) -> Vec<String> {
        log_lines(&self.log)
    }

    /// The JSON bodies POSTed to `path` (the webhook receiver's inbox), oldest first.
    pub fn posted(&self, path: &str) -> Vec<serde_json::Value> {
        let prefix = format!("POST {path} ");
        self.requests()
            .into_iter()
            .filter_map(|r| r.strip_prefix(&prefix).map(str::to_string))
            .map(|body| serde_json::from_str(&body).expect("a JSON body"))
            .collect()
    }
}

/// Starts `NAME serve --listen 127.0.0.1:PORT ARGS...` in `workdir` (see [`pipeline_command`]),
/// its log in `workdir/serve-PORT.log`, and waits until it listens. Returns the process and the
/// port.
pub fn start_service(
    name: &str,
    workdir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Child, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec!["serve", "--listen", listen.as_str()];
    all.extend_from_slice(args);
    let log = std::fs::File::create(workdir.join(format!("serve-{port}.log")))
        .expect("a log file for the service");
    let child = pipeline_command(name, workdir, env, &all)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("serve starts");
    assert!(
        wait_for_port(port, Duration::from_secs(30)),
        "{name} serve did not listen on {port}"
    );
    (child, port)
}

/// `POST /runs {"partition": ...}` with the bearer `token`; returns the new run's id.
pub fn trigger_run(port: u16, token: &str, partition: &str) -> String {
    let bearer = format!("Bearer {token}");
    let body = serde_json::json!({ "partition": partition }).to_string();
    let (status, answer) = http_request(
        port,
        "POST",
        "/runs",
        &[("Authorization", bearer.as_str())],
        Some(&body),
    );
    assert_eq!(status, 202, "{answer}");
    serde_json::from_str::<serde_json::Value>(&answer).expect("JSON")["run_id"]
        .as_str()
        .expect("a run id")
        .to_string()
}

/// Polls `GET /runs/{run_id}` until the run has ended (at most `limit`); returns its detail.
pub fn wait_for_run(port: u16, run_id: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_request(port, "GET", &format!("/runs/{run_id}"), &[], None);
        if status == 200 {
            let detail: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            if detail["run"]["status"] != "running" {
                return detail;
            }
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} did not end within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `n` complete months as of now (UTC), oldest first: what a monthly schedule runs.
pub fn last_complete_months(n: usize) -> Vec<baton_runtime::partition::Partition> {
    use baton_runtime::partition::{Granularity, Partition};
    let current = Partition::containing(Granularity::Monthly, chrono::Utc::now().naive_utc());
    let mut all = vec![Partition::parse(Granularity::Monthly, "2019-01").expect("a month")];
    while all.last().expect("a month").next() < current {
        let next = all.last().expect("a month").next();
        all.push(next);
    }
    all.split_off(all.len().saturating_sub(n))
}

/// A folder serving the real green-taxi month 2021-01 under each of `months`' file names (as
/// symbolic links): what a schedule's recent months need, from data that exists.
pub fn green_files_for(months: &[baton_runtime::partition::Partition]) -> tempfile::TempDir {
    let folder = tempfile::tempdir().expect("a temporary folder");
    for month in months {
        std::os::unix::fs::symlink(
            green_data_dir().join("green_tripdata_2021-01.csv.gz"),
            folder
                .path()
                .join(format!("green_tripdata_{}.csv.gz", month.key())),
        )
        .expect("a symbolic link");
    }
    folder
}

/// Points a macro-expanded test pipeline's connections at loopback peers: `API_URL` at
/// `server`, `DATABASE_URL` at a SQLite warehouse in `dir`, `ALERT_WEBHOOK_URL` at the
/// server's `/hook` (its webhook inbox, see [`HttpServer::posted`]).
///
/// # Safety
///
/// It sets environment variables: call it only while no other thread reads the environment,
/// as in a test binary that runs one test.
pub unsafe fn point_test_pipeline_at(server: &HttpServer, dir: &Path) {
    // SAFETY: the caller guarantees that no other thread reads the environment.
    unsafe {
        std::env::set_var("API_URL", &server.url);
        std::env::set_var(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("warehouse.db").display()),
        );
        std::env::set_var("ALERT_WEBHOOK_URL", format!("{}/hook", server.url));
    }
}

/// Services recording runs in a SQLite ledger under `dir`, as the CLI would.
pub async fn sqlite_services(dir: &Path) -> baton_runtime::executor::Services {
    let ledger = baton_runtime::ledger::Ledger::open(&format!(
        "sqlite://{}",
        dir.join("ledger.db").display()
    ))
    .await
    .expect("a SQLite ledger");
    baton_runtime::executor::Services {
        ledger: Some(ledger),
        ..baton_runtime::executor::Services::default()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL cluster from the installed server binaries, on 127.0.0.1, removed on drop.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (scripts/test.sh installs them)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an installed PostgreSQL version with initdb")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (initdb refuses root).
fn pg_tool(bin: &Path, tool: &str, args: &[&str]) -> Output {
    let path = bin.join(tool);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

impl Postgres {
    /// Creates and starts a cluster.
    pub fn start() -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("baton-pg-")
            .tempdir()
            .expect("a temp dir");
        let data = dir.path().join("data");
        let socket = dir.path().join("socket");
        std::fs::create_dir_all(&socket).expect("socket dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster folder failed");
        }
        let init = pg_tool(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            socket.display()
        );
        let log = dir.path().join("postgres.log");
        let start = pg_tool(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            start.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&start.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            wait_for_port(port, Duration::from_secs(30)),
            "PostgreSQL did not listen on {port}"
        );
        Postgres {
            bin,
            data,
            _dir: dir,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_tool(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// Variables the pipelines read, removed from every pipeline command so that a developer's own
/// settings never leak into a test.
const PIPELINE_VARIABLES: [&str; 22] = [
    "DATABASE_URL",
    "LAKE_URL",
    "GCS_LAKE_URL",
    "EXPORT_URL",
    "BIGQUERY_URL",
    "TLC_BASE_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT",
    "AWS_REGION",
    "ZONES_API_URL",
    "ZONES_API_TOKEN",
    "BATON_LEDGER_URL",
    "BATON_CHECKPOINT_DIR",
    "ALERT_WEBHOOK_URL",
    "BATON_LOG",
];

/// A command running the workspace's pipeline binary `name` in `workdir` with `args`, the
/// pipeline variables cleared and `env` set.
pub fn pipeline_command(
    name: &str,
    workdir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Command {
    let mut command = Command::new(workspace_binary(name));
    command.current_dir(workdir).args(args).env("NO_COLOR", "1");
    for variable in PIPELINE_VARIABLES {
        command.env_remove(variable);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs a pipeline binary (see [`pipeline_command`]) to the end.
pub fn run_pipeline(name: &str, workdir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    pipeline_command(name, workdir, env, args)
        .output()
        .expect("the pipeline binary runs")
}

/// Everything a command printed: stdout, then stderr.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The rows of a query on a SQLite file, through the `sqlite3` command line (an independent
/// reader), one `|`-separated line per row.
pub fn sqlite_rows(db: &Path, sql: &str) -> Vec<String> {
    // A pipeline's connections may still be closing (the last one checkpoints the WAL, which
    // locks the file for a moment): wait up to 10 s for the lock rather than fail at once.
    let output = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 is installed");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The path of a workspace binary built by `cargo build` (next to the test executable's folder).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps/TEST");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Counts, with Python's standard library only (no pandas, no Baton code), the rows of gzip CSV
/// files where passenger_count > 0 and trip_distance > 0, and the distinct pickup dates among them.
/// This is the independent reference the end-to-end tests compare Baton's loads with.
pub fn independent_green_counts(files: &[PathBuf]) -> (usize, usize) {
    let script = r#"
import csv, gzip, sys
rows = 0
dates = set()
for path in sys.argv[1:]:
    with gzip.open(path, 'rt', newline='') as f:
        for r in csv.DictReader(f):
            try:
                p = int(r['passenger_count']) if r['passenger_count'] != '' else None
                d = float(r['trip_distance']) if r['trip_distance'] != '' else None
            except ValueError:
                continue
            if p is not None and d is not None and p > 0 and d > 0:
                rows += 1
                dates.add(r['lpep_pickup_datetime'][:10])
print(rows, len(dates))
"#;
    let text = python_lines(script, files).join(" ");
    let mut numbers = text
        .split_whitespace()
        .map(|n| n.parse::<usize>().expect("a count"));
    (
        numbers.next().expect("rows"),
        numbers.next().expect("dates"),
    )
}

/// A fresh folder for a `pipeline!`-expanded fixture pipeline: `files` (relative path and
/// text) written into it, the working directory moved there and `DATABASE_URL` pointing at a
/// SQLite file in it. Returns the folder and that file. It changes the process's working
/// directory and environment, so the test binary must hold one test.
pub fn fixture_folder(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().expect("a temporary folder");
    for (path, text) in files {
        let path = work.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a folder")).expect("a folder");
        std::fs::write(path, text).expect("write a fixture file");
    }
    std::env::set_current_dir(work.path()).expect("enter the folder");
    let db = work.path().join("w.db");
    // SAFETY: such a test binary runs one test, so no other thread reads the environment.
    unsafe { std::env::set_var("DATABASE_URL", format!("sqlite://{}", db.display())) };
    (work, db)
}

/// Runs a compiled pipeline once (no ledger) and requires that it succeeded, printing every
/// block's status when it did not.
pub async fn run_succeeding(
    pipeline: &'static baton_runtime::pipeline::Pipeline,
    partition: Option<baton_runtime::partition::Partition>,
    params: std::collections::HashMap<String, baton_runtime::context::Value>,
) -> baton_runtime::executor::RunReport {
    let report = baton_runtime::executor::run(
        pipeline,
        baton_runtime::executor::RunRequest::full(
            partition,
            params,
            baton_runtime::ledger::TriggerKind::Run,
        ),
        &baton_runtime::executor::Services::default(),
    )
    .await
    .expect("the run starts");
    let statuses: Vec<_> = report
        .blocks
        .iter()
        .map(|b| (b.name, b.status.clone()))
        .collect();
    assert!(report.succeeded(), "{statuses:?}");
    report
}

/// Runs a Python script (standard library only: the independent reference of the end-to-end
/// tests) with these arguments; returns the lines it printed, and panics with its error output
/// when it fails.
pub fn python_lines(script: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Vec<String> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// One HTTP/1.1 request to 127.0.0.1:`port` over a plain socket (the tests need no HTTP client
/// library for this): returns the status code and the body. Bounded by a 30-second timeout.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the service");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a header");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    // Chunked bodies (axum streams some responses) are joined back together.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut joined = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            joined.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        joined
    } else {
        body.to_string()
    };
    (status, body)
}
