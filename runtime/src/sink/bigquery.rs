//! The BigQuery sink: load jobs over BigQuery's REST API.
//!
//! The connection URL is `bigquery://PROJECT/DATASET`, with optional query settings:
//! `endpoint` (another API root, such as an emulator), `location` (the jobs' location) and any
//! Google Cloud Storage configuration key of object_store (`service_account_key`,
//! `service_account`, `application_credentials`). Credentials come from the same standard places
//! as the GCS lake's, through object_store's Google credential provider, whose token has the
//! `cloud-platform` scope that BigQuery accepts. A service account key with
//! `"disable_oauth": true` sends no token, for emulators.
//!
//! The frame is encoded as Parquet and uploaded with the load job (a multipart media upload).
//! The dataset and the table are created from the compiled schema when missing; an existing
//! table must match it. Write modes:
//! - `replace`: one load job with `WRITE_TRUNCATE`, which BigQuery applies atomically;
//! - `append`: one load job with `WRITE_APPEND`;
//! - `replace_partition`: a load into a staging table, then one transaction that deletes the
//!   run's partition from the table and inserts the staged rows, then the staging table is
//!   dropped. Readers see the old partition or the new one, never both or neither;
//! - `upsert`: a load into a staging table, then one `MERGE` on the key columns that updates the
//!   rows whose key exists and inserts the others.

use std::time::Duration;

use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use polars::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::context::RunContext;
use crate::error::{BlockError, BlockResult};
use crate::pipeline::{BaseType, Column as ColumnDef};
use crate::sink::export::encode;
use crate::sink::table::{WriteMode, last_row_per_key, own_partition};
use crate::source::FileFormat;

/// BigQuery's API root.
const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Loads larger than this go up as resumable uploads; BigQuery takes multipart uploads of a
/// few megabytes only.
const DEFAULT_RESUMABLE_ABOVE: usize = 5 * 1024 * 1024;

/// The size of one chunk of a resumable upload (a multiple of 256 KiB, as the API requires).
const DEFAULT_UPLOAD_CHUNK: usize = 8 * 1024 * 1024;

/// The longest pause between two polls of a running job.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// A BigQuery sink as compiled.
#[derive(Clone, Copy, Debug)]
pub struct BigQueryTarget {
    /// The `bigquery://PROJECT/DATASET` connection's role.
    pub connection: &'static str,
    /// The dataset, when not the connection's.
    pub dataset: Option<&'static str>,
    /// The table.
    pub table: &'static str,
    /// Replace, append or replace_partition.
    pub mode: WriteMode,
    /// The columns flowing in.
    pub columns: &'static [ColumnDef],
}

/// What a `bigquery://` URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BigQueryUrl {
    /// The API root.
    pub endpoint: String,
    /// The project.
    pub project: String,
    /// The dataset named in the path, if any.
    pub dataset: Option<String>,
    /// The jobs' location (`US`, `EU`, `europe-west1`), if set.
    pub location: Option<String>,
    /// Loads larger than this many bytes use a resumable upload.
    pub resumable_above: usize,
    /// The chunk size of resumable uploads.
    pub upload_chunk: usize,
    /// Google credential settings for object_store's credential provider.
    pub credentials: Vec<(String, String)>,
}

impl BigQueryUrl {
    /// Parses `bigquery://PROJECT[/DATASET][?endpoint=..&location=..&service_account_key=..]`.
    pub fn parse(url: &str) -> BlockResult<BigQueryUrl> {
        let shown = crate::store::redact_store_url(url);
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| BlockError::fatal(format!("`{shown}` is not a URL: {e}")))?;
        if parsed.scheme() != "bigquery" {
            return Err(BlockError::fatal(format!(
                "`{shown}`: a BigQuery connection is `bigquery://PROJECT/DATASET`"
            )));
        }
        let project = parsed.host_str().unwrap_or_default().to_string();
        if project.is_empty()
            || !project
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        {
            return Err(BlockError::fatal(format!(
                "`{shown}`: `{project}` is not a BigQuery project id"
            )));
        }
        let dataset = Some(parsed.path().trim_matches('/').to_string()).filter(|d| !d.is_empty());
        let mut endpoint = DEFAULT_ENDPOINT.to_string();
        let mut location = None;
        let mut resumable_above = DEFAULT_RESUMABLE_ABOVE;
        let mut upload_chunk = DEFAULT_UPLOAD_CHUNK;
        let mut credentials = Vec::new();
        let bytes = |key: &str, value: &str| {
            value.parse::<usize>().map_err(|_| {
                BlockError::fatal(format!("`{shown}`: `{key}` must be a number of bytes"))
            })
        };
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "endpoint" => endpoint = value.trim_end_matches('/').to_string(),
                "location" => location = Some(value.into_owned()),
                "resumable_above" => resumable_above = bytes(&key, &value)?,
                "upload_chunk" => {
                    upload_chunk = bytes(&key, &value)?;
                    if upload_chunk == 0 || !upload_chunk.is_multiple_of(256 * 1024) {
                        return Err(BlockError::fatal(format!(
                            "`{shown}`: `upload_chunk` must be a positive multiple of 262144 bytes"
                        )));
                    }
                }
                _ => credentials.push((key.into_owned(), value.into_owned())),
            }
        }
        Ok(BigQueryUrl {
            endpoint,
            project,
            dataset,
            location,
            resumable_above,
            upload_chunk,
            credentials,
        })
    }
}

/// Loads `frame` into the target table.
pub async fn write_bigquery(
    ctx: &RunContext,
    target: &BigQueryTarget,
    frame: DataFrame,
) -> BlockResult<()> {
    let own = own_partition(ctx, target.mode, target.columns, &frame)?;
    let frame = last_row_per_key(frame, target.mode, target.table)?;
    let url = BigQueryUrl::parse(&ctx.connection_url(target.connection)?)?;
    let dataset = target
        .dataset
        .map(str::to_string)
        .or_else(|| url.dataset.clone())
        .ok_or_else(|| {
            BlockError::fatal(format!(
                "connection `{}` names no dataset: use `bigquery://{}/DATASET` or set `dataset` on the block",
                target.connection, url.project
            ))
        })?;
    let started = std::time::Instant::now();
    let rows = frame.height();
    let client = Client::connect(&url).await?;
    let table = TableRef {
        dataset: dataset.clone(),
        table: target.table.to_string(),
    };
    client.ensure_dataset(&dataset).await?;
    let fields = schema_fields(target.columns);
    match client.table_fields(&table).await? {
        None => client.create_table(&table, &fields).await?,
        Some(existing) if target.mode != WriteMode::Replace => {
            let problems = field_differences(&existing, target.columns);
            if !problems.is_empty() {
                return Err(BlockError::fatal(format!(
                    "BigQuery table {} does not match the pipeline:\n  - {}\nchange the table, or load it once with mode = \"replace\"",
                    client.qualified(&table),
                    problems.join("\n  - ")
                )));
            }
        }
        Some(_) => {}
    }
    let parquet = tokio::task::spawn_blocking(move || encode(&mut { frame }, FileFormat::Parquet))
        .await
        .map_err(|e| BlockError::fatal(format!("encoder panicked: {e}")))??;
    match (target.mode, own) {
        (WriteMode::Replace, _) => {
            client
                .load(&table, &fields, "WRITE_TRUNCATE", parquet)
                .await?
        }
        (WriteMode::Append, _) => {
            client
                .load(&table, &fields, "WRITE_APPEND", parquet)
                .await?
        }
        (WriteMode::ReplacePartition { .. }, Some((column, value))) => {
            let names = column_list(target.columns);
            client
                .through_staging(&table, &fields, ctx.run_id(), parquet, |staging| {
                    format!(
                        "BEGIN TRANSACTION;\nDELETE FROM {table} WHERE `{column}` = {value};\nINSERT INTO {table} ({names}) SELECT {names} FROM {staging};\nCOMMIT TRANSACTION;",
                        table = client.qualified(&table),
                        column = column.name,
                        value = sql_literal(column.ty, &value),
                    )
                })
                .await?;
        }
        (WriteMode::Upsert { key }, _) => {
            let names = column_list(target.columns);
            let matches = key
                .iter()
                .map(|k| format!("t.`{k}` = s.`{k}`"))
                .collect::<Vec<_>>()
                .join(" AND ");
            let updates = target
                .columns
                .iter()
                .filter(|c| !key.contains(&c.name))
                .map(|c| format!("`{0}` = s.`{0}`", c.name))
                .collect::<Vec<_>>();
            let values = target
                .columns
                .iter()
                .map(|c| format!("s.`{}`", c.name))
                .collect::<Vec<_>>()
                .join(", ");
            let update = if updates.is_empty() {
                String::new()
            } else {
                format!("WHEN MATCHED THEN UPDATE SET {} ", updates.join(", "))
            };
            client
                .through_staging(&table, &fields, ctx.run_id(), parquet, |staging| {
                    format!(
                        "MERGE {table} AS t USING {staging} AS s ON {matches} {update}WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values});",
                        table = client.qualified(&table),
                    )
                })
                .await?;
        }
        (WriteMode::ReplacePartition { column }, None) => {
            return Err(BlockError::fatal(format!(
                "replace_partition by `{column}` needs a partitioned run"
            )));
        }
    }
    info!(
        table = %client.qualified(&table),
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded BigQuery"
    );
    Ok(())
}

/// For `validate`: how the existing table differs from what the sink writes; empty when it
/// matches or does not exist yet (the sink creates it). Needs the API and credentials to work.
pub async fn validate_bigquery(
    ctx: &RunContext,
    target: &BigQueryTarget,
) -> BlockResult<Vec<String>> {
    let url = BigQueryUrl::parse(&ctx.connection_url(target.connection)?)?;
    let client = Client::connect(&url).await?;
    let Some(dataset) = target.dataset.map(str::to_string).or(url.dataset) else {
        return Ok(vec![format!(
            "connection `{}` names no dataset",
            target.connection
        )]);
    };
    let table = TableRef {
        dataset,
        table: target.table.to_string(),
    };
    Ok(match client.table_fields(&table).await? {
        Some(fields) if target.mode != WriteMode::Replace => {
            field_differences(&fields, target.columns)
        }
        _ => Vec::new(),
    })
}

/// The columns, backquoted and comma-separated, for SQL.
fn column_list(columns: &[ColumnDef]) -> String {
    columns
        .iter()
        .map(|c| format!("`{}`", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table of the connection's project.
struct TableRef {
    dataset: String,
    table: String,
}

/// The staging table of one run: unique per run, so concurrent partitions never share one.
fn staging_table(table: &str, run_id: &str) -> String {
    let run: String = run_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{table}__baton_staging_{run}")
}

/// The BigQuery type of a compiled type. Timestamps are naive (no time zone), which BigQuery
/// calls DATETIME; Parquet carries them as timestamps not adjusted to UTC, which load as such.
pub fn bigquery_type(ty: BaseType) -> &'static str {
    match ty {
        BaseType::Int64 => "INT64",
        BaseType::Float64 => "FLOAT64",
        BaseType::String => "STRING",
        BaseType::Bool => "BOOL",
        BaseType::Date => "DATE",
        BaseType::Timestamp => "DATETIME",
    }
}

/// The legacy and standard names of one BigQuery type, as the API may report either.
fn same_type(reported: &str, ty: BaseType) -> bool {
    let canonical = match reported {
        "INTEGER" => "INT64",
        "FLOAT" => "FLOAT64",
        "BOOLEAN" => "BOOL",
        other => other,
    };
    canonical == bigquery_type(ty)
}

fn schema_fields(columns: &[ColumnDef]) -> Value {
    Value::Array(
        columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": bigquery_type(c.ty),
                    "mode": if c.nullable { "NULLABLE" } else { "REQUIRED" },
                })
            })
            .collect(),
    )
}

/// How an existing table's fields differ from what the pipeline writes.
fn field_differences(existing: &[Value], columns: &[ColumnDef]) -> Vec<String> {
    let mut problems = Vec::new();
    for column in columns {
        let field = existing
            .iter()
            .find(|f| f["name"].as_str() == Some(column.name));
        match field {
            None => problems.push(format!("the table has no column `{}`", column.name)),
            Some(field) => {
                let reported = field["type"].as_str().unwrap_or_default();
                if !same_type(reported, column.ty) {
                    problems.push(format!(
                        "column `{}` is {reported} in the table, the pipeline writes {}",
                        column.name,
                        bigquery_type(column.ty)
                    ));
                }
                if column.nullable && field["mode"].as_str() == Some("REQUIRED") {
                    problems.push(format!(
                        "column `{}` is REQUIRED in the table, the pipeline may write nulls",
                        column.name
                    ));
                }
            }
        }
    }
    for field in existing {
        let name = field["name"].as_str().unwrap_or_default();
        let required = field["mode"].as_str() == Some("REQUIRED");
        if required && !columns.iter().any(|c| c.name == name) {
            problems.push(format!(
                "REQUIRED column `{name}` of the table is not written by the pipeline"
            ));
        }
    }
    problems
}

/// A GoogleSQL literal of a partition value (its text as `own_partition` gives it).
fn sql_literal(ty: BaseType, text: &str) -> String {
    let quoted = format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"));
    match ty {
        BaseType::Date => format!("DATE {quoted}"),
        BaseType::Timestamp => format!("DATETIME {quoted}"),
        _ => quoted,
    }
}

/// A BigQuery REST client for one project.
struct Client {
    http: crate::http::HttpClient,
    endpoint: String,
    project: String,
    location: Option<String>,
    token: Option<String>,
    resumable_above: usize,
    upload_chunk: usize,
}

impl Client {
    async fn connect(url: &BigQueryUrl) -> BlockResult<Client> {
        let http = crate::http::client(REQUEST_TIMEOUT, Default::default())?;
        Ok(Client {
            http,
            endpoint: url.endpoint.clone(),
            project: url.project.clone(),
            location: url.location.clone(),
            token: bearer_token(&url.credentials).await?,
            resumable_above: url.resumable_above,
            upload_chunk: url.upload_chunk,
        })
    }

    /// `project.dataset.table` in backticks, for SQL.
    fn qualified(&self, table: &TableRef) -> String {
        format!("`{}.{}.{}`", self.project, table.dataset, table.table)
    }

    fn api(&self, path: &str) -> String {
        format!(
            "{}/bigquery/v2/projects/{}/{path}",
            self.endpoint, self.project
        )
    }

    /// Sends a request; returns the status and the JSON body. A transport failure, a 5xx or a
    /// 429 is retryable; any other error status is reported with BigQuery's message.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: RequestBody,
        what: &str,
    ) -> BlockResult<(StatusCode, Value)> {
        let request = self.http.request(method, url);
        let request = match body {
            RequestBody::None => request,
            RequestBody::Json(value) => request.json_body(&value),
            RequestBody::Multipart { boundary, bytes } => request
                .header(
                    reqwest::header::CONTENT_TYPE,
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(bytes),
        };
        let failed = format!("{what}: request to {} failed", self.endpoint);
        let (status, _, value) = self.exchange(request, &failed, what).await?;
        Ok((status, value))
    }

    /// Sends a request with the bearer token, if any; returns the status, the headers and the
    /// JSON body (null when the body is not JSON). A transport failure is retryable and reported
    /// as `failed`.
    async fn exchange(
        &self,
        mut request: reqwest::RequestBuilder,
        failed: &str,
        what: &str,
    ) -> BlockResult<(StatusCode, reqwest::header::HeaderMap, Value)> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| BlockError::retryable(format!("{failed}: {e}")))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|e| BlockError::retryable(format!("{what}: response interrupted: {e}")))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, headers, value))
    }

    /// Like `send`, but an error status is an error.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: RequestBody,
        what: &str,
    ) -> BlockResult<Value> {
        let (status, value) = self.send(method, url, body, what).await?;
        if status.is_success() {
            return Ok(value);
        }
        Err(api_error(status, &value, what))
    }

    async fn ensure_dataset(&self, dataset: &str) -> BlockResult<()> {
        let what = format!("dataset {}.{dataset}", self.project);
        let url = self.api(&format!("datasets/{dataset}"));
        let (status, value) = self
            .send(Method::GET, &url, RequestBody::None, &what)
            .await?;
        match status {
            StatusCode::NOT_FOUND => {}
            status if status.is_success() => return Ok(()),
            status => return Err(api_error(status, &value, &what)),
        }
        let mut body =
            json!({"datasetReference": {"projectId": self.project, "datasetId": dataset}});
        if let Some(location) = &self.location {
            body["location"] = json!(location);
        }
        let (status, value) = self
            .send(
                Method::POST,
                &self.api("datasets"),
                RequestBody::Json(body),
                &what,
            )
            .await?;
        // Another run may have created it meanwhile.
        if status.is_success() || status == StatusCode::CONFLICT {
            Ok(())
        } else {
            Err(api_error(status, &value, &what))
        }
    }

    /// The table's fields, or `None` when it does not exist.
    async fn table_fields(&self, table: &TableRef) -> BlockResult<Option<Vec<Value>>> {
        let what = format!("table {}", self.qualified(table));
        let url = self.api(&format!(
            "datasets/{}/tables/{}",
            table.dataset, table.table
        ));
        let (status, value) = self
            .send(Method::GET, &url, RequestBody::None, &what)
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(
                value["schema"]["fields"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            )),
            status => Err(api_error(status, &value, &what)),
        }
    }

    async fn create_table(&self, table: &TableRef, fields: &Value) -> BlockResult<()> {
        let what = format!("creating table {}", self.qualified(table));
        let body = json!({
            "tableReference": {"projectId": self.project, "datasetId": table.dataset, "tableId": table.table},
            "schema": {"fields": fields},
        });
        let url = self.api(&format!("datasets/{}/tables", table.dataset));
        let (status, value) = self
            .send(Method::POST, &url, RequestBody::Json(body), &what)
            .await?;
        if status.is_success() || status == StatusCode::CONFLICT {
            Ok(())
        } else {
            Err(api_error(status, &value, &what))
        }
    }

    async fn delete_table(&self, table: &TableRef) -> BlockResult<()> {
        let what = format!("dropping table {}", self.qualified(table));
        let url = self.api(&format!(
            "datasets/{}/tables/{}",
            table.dataset, table.table
        ));
        let (status, value) = self
            .send(Method::DELETE, &url, RequestBody::None, &what)
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(api_error(status, &value, &what))
        }
    }

    /// Runs a load job of Parquet bytes into `table` and waits for it.
    async fn load(
        &self,
        table: &TableRef,
        fields: &Value,
        disposition: &str,
        parquet: Vec<u8>,
    ) -> BlockResult<()> {
        let what = format!("load job into {}", self.qualified(table));
        let mut job = json!({
            "configuration": {"load": {
                "destinationTable": {"projectId": self.project, "datasetId": table.dataset, "tableId": table.table},
                "sourceFormat": "PARQUET",
                "writeDisposition": disposition,
                "createDisposition": "CREATE_IF_NEEDED",
                "schema": {"fields": fields},
            }},
        });
        if let Some(location) = &self.location {
            job["jobReference"] = json!({"projectId": self.project, "location": location});
        }
        if parquet.len() > self.resumable_above {
            let started = self.resumable_upload(&job, parquet, &what).await?;
            return self.wait(started, &what).await;
        }
        let boundary = format!("baton_{:016x}", fastrand::u64(..));
        let mut bytes = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{job}\r\n--{boundary}\r\nContent-Type: application/vnd.apache.parquet\r\n\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(&parquet);
        bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!(
            "{}/upload/bigquery/v2/projects/{}/jobs?uploadType=multipart",
            self.endpoint, self.project
        );
        let started = self
            .call(
                Method::POST,
                &url,
                RequestBody::Multipart { boundary, bytes },
                &what,
            )
            .await?;
        self.wait(started, &what).await
    }

    /// Uploads a load job's data in chunks: the job is announced, then each chunk is PUT to the
    /// session URI with its byte range. Returns the job BigQuery answers with after the last
    /// chunk.
    async fn resumable_upload(&self, job: &Value, data: Vec<u8>, what: &str) -> BlockResult<Value> {
        let url = format!(
            "{}/upload/bigquery/v2/projects/{}/jobs?uploadType=resumable",
            self.endpoint, self.project
        );
        let request = self
            .http
            .request(Method::POST, &url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=UTF-8",
            )
            .header("X-Upload-Content-Type", "application/octet-stream")
            .header("X-Upload-Content-Length", data.len().to_string())
            .body(job.to_string());
        let failed = format!("{what}: starting the upload failed");
        let (status, headers, body) = self.exchange(request, &failed, what).await?;
        if !status.is_success() {
            return Err(api_error(status, &body, what));
        }
        let session = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let session = session.ok_or_else(|| {
            BlockError::fatal(format!("{what}: BigQuery returned no upload session"))
        })?;
        let total = data.len();
        let mut start = 0;
        loop {
            let end = (start + self.upload_chunk).min(total);
            let range = if total == 0 {
                "bytes */0".to_string()
            } else {
                format!("bytes {start}-{}/{total}", end - 1)
            };
            let request = self
                .http
                .request(Method::PUT, &session)
                .header(reqwest::header::CONTENT_RANGE, range)
                .body(data[start..end].to_vec());
            let failed = format!("{what}: uploading bytes {start}-{end} failed");
            let (status, _, body) = self.exchange(request, &failed, what).await?;
            match status.as_u16() {
                // Resume Incomplete: the chunk is stored; send the next one.
                308 if end < total => start = end,
                _ if status.is_success() => return Ok(body),
                _ => return Err(api_error(status, &body, what)),
            }
        }
    }

    /// Loads the data into a staging table of this run, runs the SQL that `statement` makes of
    /// the staging table's name, and drops the staging table whatever happened.
    async fn through_staging(
        &self,
        table: &TableRef,
        fields: &Value,
        run_id: &str,
        parquet: Vec<u8>,
        statement: impl FnOnce(&str) -> String,
    ) -> BlockResult<()> {
        let staging = TableRef {
            dataset: table.dataset.clone(),
            table: staging_table(&table.table, run_id),
        };
        self.create_table(&staging, fields).await?;
        let result = async {
            self.load(&staging, fields, "WRITE_TRUNCATE", parquet)
                .await?;
            self.query(&statement(&self.qualified(&staging))).await
        }
        .await;
        if let Err(error) = self.delete_table(&staging).await {
            warn!(%error, table = %self.qualified(&staging), "cannot drop the staging table");
        }
        result
    }

    /// Runs a GoogleSQL query job (a script may hold a transaction) and waits for it.
    async fn query(&self, sql: &str) -> BlockResult<()> {
        let what = "query job".to_string();
        let mut job = json!({"configuration": {"query": {"query": sql, "useLegacySql": false}}});
        if let Some(location) = &self.location {
            job["jobReference"] = json!({"projectId": self.project, "location": location});
        }
        let started = self
            .call(
                Method::POST,
                &self.api("jobs"),
                RequestBody::Json(job),
                &what,
            )
            .await?;
        self.wait(started, &what).await
    }

    /// Polls a job until it is done; its error result becomes the block's error.
    async fn wait(&self, mut job: Value, what: &str) -> BlockResult<()> {
        let id = job["jobReference"]["jobId"]
            .as_str()
            .ok_or_else(|| BlockError::fatal(format!("{what}: BigQuery returned no job id")))?
            .to_string();
        let location = job["jobReference"]["location"]
            .as_str()
            .map(str::to_string)
            .or_else(|| self.location.clone());
        let mut url = self.api(&format!("jobs/{id}"));
        if let Some(location) = location {
            url = format!("{url}?location={location}");
        }
        let mut interval = Duration::from_millis(200);
        while job["status"]["state"].as_str() != Some("DONE") {
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(MAX_POLL_INTERVAL);
            job = self
                .call(Method::GET, &url, RequestBody::None, what)
                .await?;
        }
        let Some(error) = job["status"].get("errorResult") else {
            return Ok(());
        };
        let mut message = format!(
            "{what} ({id}) failed: {}",
            error["message"].as_str().unwrap_or("no message")
        );
        for detail in job["status"]["errors"].as_array().into_iter().flatten() {
            if let Some(text) = detail["message"].as_str()
                && !message.contains(text)
            {
                message.push_str("\n  - ");
                message.push_str(text);
            }
        }
        // BigQuery marks its own transient failures; everything else is about the data or the
        // request and would fail again.
        let transient = matches!(
            error["reason"].as_str(),
            Some("backendError" | "internalError" | "rateLimitExceeded")
        );
        Err(if transient {
            BlockError::retryable(message)
        } else {
            BlockError::fatal(message)
        })
    }
}

/// A request's body.
enum RequestBody {
    None,
    Json(Value),
    Multipart { boundary: String, bytes: Vec<u8> },
}

/// Sets a JSON body without reqwest's `json` feature, which would change shared features.
trait JsonBody {
    fn json_body(self, value: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, value: &Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(value.to_string())
    }
}

/// An error status as a block error carrying BigQuery's own message.
fn api_error(status: StatusCode, body: &Value, what: &str) -> BlockError {
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string()
        });
    crate::http::status_error(
        status,
        format!("{what}: BigQuery answered HTTP {status}: {message}"),
    )
}

/// A bearer token from the standard Google credentials, or `None` when the credentials disable
/// OAuth (emulators).
async fn bearer_token(settings: &[(String, String)]) -> BlockResult<Option<String>> {
    // object_store's Google builder reads the standard places and settings; the bucket is only
    // required by the builder, no request is made to it.
    let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name("baton-bigquery");
    for (key, value) in settings {
        let parsed: GoogleConfigKey = key.parse().map_err(|_| {
            BlockError::fatal(format!(
                "unknown BigQuery connection option `{key}` (use endpoint, location or a Google credential setting)"
            ))
        })?;
        builder = builder.with_config(parsed, value);
    }
    let credential = builder
        .build()?
        .credentials()
        .get_credential()
        .await
        .map_err(|e| BlockError::fatal(format!("BigQuery credentials: {e}")))?;
    Ok(Some(credential.bearer.clone()).filter(|token| !token.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_project_dataset_endpoint_and_credentials() {
        let url = BigQueryUrl::parse(
            "bigquery://test-project/ny_taxi?endpoint=http://127.0.0.1:9050/&location=US&service_account_key=%7B%7D",
        )
        .unwrap();
        assert_eq!(url.project, "test-project");
        assert_eq!(url.dataset.as_deref(), Some("ny_taxi"));
        assert_eq!(url.endpoint, "http://127.0.0.1:9050");
        assert_eq!(url.location.as_deref(), Some("US"));
        assert_eq!(
            url.credentials,
            vec![("service_account_key".to_string(), "{}".to_string())]
        );
        let tuned =
            BigQueryUrl::parse("bigquery://p/d?resumable_above=0&upload_chunk=262144").unwrap();
        assert_eq!((tuned.resumable_above, tuned.upload_chunk), (0, 262_144));
        assert!(BigQueryUrl::parse("bigquery://p/d?upload_chunk=1000").is_err());
        let plain = BigQueryUrl::parse("bigquery://p").unwrap();
        assert_eq!(plain.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(plain.dataset, None);
        assert!(BigQueryUrl::parse("postgres://p/d").is_err());
        assert!(BigQueryUrl::parse("bigquery://bad project/d").is_err());
    }

    #[test]
    fn literals_are_quoted_and_typed() {
        assert_eq!(
            sql_literal(BaseType::Date, "2021-01-01"),
            "DATE '2021-01-01'"
        );
        assert_eq!(sql_literal(BaseType::String, "it's"), "'it\\'s'");
    }

    #[test]
    fn existing_tables_are_compared_by_name_type_and_mode() {
        let columns = [
            ColumnDef::required("id", BaseType::Int64),
            ColumnDef::nullable("note", BaseType::String),
        ];
        let existing = vec![
            json!({"name": "id", "type": "INTEGER", "mode": "NULLABLE"}),
            json!({"name": "note", "type": "STRING", "mode": "REQUIRED"}),
            json!({"name": "extra", "type": "DATE", "mode": "REQUIRED"}),
        ];
        let problems = field_differences(&existing, &columns);
        assert_eq!(
            problems,
            [
                "column `note` is REQUIRED in the table, the pipeline may write nulls",
                "REQUIRED column `extra` of the table is not written by the pipeline",
            ]
        );
        assert!(field_differences(&existing[..1], &columns[..1]).is_empty());
    }

    #[test]
    fn staging_tables_are_unique_per_run_and_valid_names() {
        assert_eq!(
            staging_table("green_taxi", "2021-01.7f3a"),
            "green_taxi__baton_staging_2021_01_7f3a"
        );
    }
}
