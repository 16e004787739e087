//! REST sources: the records of a paginated JSON API, flattened into the declared schema.
//!
//! Each response holds an array of records (at a dotted path such as `data`, or the whole body).
//! Nested objects are flattened with `__` between names, as dlt does: `{"pickup": {"zone": "x"}}`
//! fills column `pickup__zone`. A declared column missing from a record is null; a value of the
//! wrong type fails the block naming the record and the column. Pages are requested one after
//! another, by page number, offset, cursor or `Link` header, up to `max_pages`: more is an error,
//! never a silent cut. A 429 or 503 answer with `Retry-After` is waited out and asked again (a few
//! times, a minute at most each); other server errors are left to the block's retry policy.

use std::time::Duration;

use chrono::DateTime;
use polars::prelude::*;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::context::{RunContext, read_secret};
use crate::error::{BlockError, BlockResult};
use crate::pipeline::{BaseType, Column, Secret};
use crate::schema::{conform, parse_date, parse_timestamp};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How often one page is asked again after a `Retry-After`.
const RATE_LIMIT_WAITS: u32 = 5;

/// The longest `Retry-After` that is waited out; a longer one fails the attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A REST source as compiled.
#[derive(Clone, Copy, Debug)]
pub struct RestApi {
    /// The connection holding the API's base URL.
    pub connection: &'static str,
    /// The dotted path of the records array in a response; empty when the body is the array.
    pub records: &'static str,
    /// How the next page is asked for.
    pub pagination: Pagination,
    /// The secret sent with every request.
    pub auth: Option<Secret>,
    /// The header carrying it; `Authorization` (as `Bearer TOKEN`) when `None`.
    pub auth_header: Option<&'static str>,
    /// The most pages one read may take.
    pub max_pages: u32,
}

/// Pagination styles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pagination {
    /// One request.
    None,
    /// `param=1,2,...` (and `size.0=size.1`), until a page has fewer than `size.1` records or none.
    Page {
        /// The page number parameter.
        param: &'static str,
        /// The page size parameter and value.
        size: Option<(&'static str, u32)>,
    },
    /// `param=0,limit,...&limit_param=limit`, until a page has fewer than `limit` records.
    Offset {
        /// The offset parameter.
        param: &'static str,
        /// The limit parameter.
        limit_param: &'static str,
        /// Records per page.
        limit: u32,
    },
    /// `param=CURSOR`, the cursor read from each response at `next`, until it is absent.
    Cursor {
        /// The cursor parameter.
        param: &'static str,
        /// The dotted path of the next cursor in a response.
        next: &'static str,
    },
    /// The `Link: <URL>; rel="next"` header, until there is none.
    Link,
}

/// Reads every page of `path` under the connection's base URL into the compiled schema.
pub async fn read_rest(
    ctx: &RunContext,
    api: &RestApi,
    path: String,
    columns: &'static [Column],
) -> BlockResult<DataFrame> {
    let base = ctx.connection_url(api.connection)?;
    let url = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let shown = crate::context::redact(&url);
    let mut headers = HeaderMap::new();
    if let Some(secret) = api.auth {
        let token = read_secret(secret)
            .map_err(|e| BlockError::fatal(format!("{}: {e}", api.connection)))?;
        let (name, value) = match api.auth_header {
            Some(header) => (header, token),
            None => ("authorization", format!("Bearer {token}")),
        };
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| BlockError::fatal(format!("invalid auth header `{name}`: {e}")))?;
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| BlockError::fatal("the auth secret is not a valid header value"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let client = crate::http::client(REQUEST_TIMEOUT, headers)?;
    let (records, pages) = fetch_records(&client, &url, api)
        .await
        .map_err(|e| e.context(&shown))?;
    let count = records.len();
    let frame = tokio::task::spawn_blocking(move || records_frame(&records, columns))
        .await
        .map_err(|e| BlockError::fatal(format!("record conversion panicked: {e}")))?
        .map_err(|e| e.context(&shown))?;
    info!(source = %shown, pages, records = count, "read REST source");
    Ok(frame)
}

/// Every record of every page, flattened, and the number of pages read.
pub(crate) async fn fetch_records(
    client: &crate::http::HttpClient,
    url: &str,
    api: &RestApi,
) -> BlockResult<(Vec<Map<String, Value>>, u32)> {
    let first =
        reqwest::Url::parse(url).map_err(|e| BlockError::fatal(format!("invalid URL: {e}")))?;
    let mut records = Vec::new();
    let mut page_number: u64 = 1;
    let mut next_url = Some(page_url(&first, api.pagination, page_number, 0, None));
    let mut pages = 0;
    while let Some(url) = next_url.take() {
        if pages == api.max_pages {
            return Err(BlockError::fatal(format!(
                "the API has more than {} pages; raise `max_pages` if that is expected",
                api.max_pages
            )));
        }
        pages += 1;
        let (body, link_next) = get_page(client, &url).await?;
        let page = records_at(&body, api.records)
            .map_err(|e| BlockError::fatal(format!("page {pages} ({url}): {e}")))?;
        let received = page.len();
        records.extend(page.iter().map(flatten));
        next_url = match api.pagination {
            Pagination::None => None,
            Pagination::Page { size, .. } => {
                let full = size.is_none_or(|(_, size)| received >= size as usize);
                (received > 0 && full).then(|| {
                    page_number += 1;
                    page_url(&first, api.pagination, page_number, 0, None)
                })
            }
            Pagination::Offset { limit, .. } => (received >= limit as usize && received > 0)
                .then(|| page_url(&first, api.pagination, 0, records.len(), None)),
            Pagination::Cursor { next, .. } => match value_at(&body, next) {
                Some(Value::String(cursor)) if !cursor.is_empty() => {
                    Some(page_url(&first, api.pagination, 0, 0, Some(cursor)))
                }
                Some(Value::Number(cursor)) => Some(page_url(
                    &first,
                    api.pagination,
                    0,
                    0,
                    Some(&cursor.to_string()),
                )),
                _ => None,
            },
            Pagination::Link => match link_next {
                Some(link) => Some(url.join(&link).map_err(|e| {
                    BlockError::fatal(format!("invalid Link header target `{link}`: {e}"))
                })?),
                None => None,
            },
        };
    }
    Ok((records, pages))
}

/// The URL of one page: the first URL with the pagination parameters set.
fn page_url(
    first: &reqwest::Url,
    pagination: Pagination,
    page: u64,
    offset: usize,
    cursor: Option<&str>,
) -> reqwest::Url {
    let set: Vec<(&str, String)> = match pagination {
        Pagination::None | Pagination::Link => Vec::new(),
        Pagination::Page { param, size } => {
            let mut set = vec![(param, page.to_string())];
            if let Some((name, size)) = size {
                set.push((name, size.to_string()));
            }
            set
        }
        Pagination::Offset {
            param,
            limit_param,
            limit,
        } => vec![
            (param, offset.to_string()),
            (limit_param, limit.to_string()),
        ],
        Pagination::Cursor { param, .. } => cursor
            .map(|cursor| vec![(param, cursor.to_string())])
            .unwrap_or_default(),
    };
    let mut url = first.clone();
    let kept: Vec<(String, String)> = first
        .query_pairs()
        .filter(|(key, _)| !set.iter().any(|(name, _)| name == key))
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    if kept.is_empty() && set.is_empty() {
        return url;
    }
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .extend_pairs(set);
    url
}

/// GETs one page; waits out `Retry-After` on 429 and 503. Returns the JSON body and the
/// `rel="next"` target of its `Link` header.
async fn get_page(
    client: &crate::http::HttpClient,
    url: &reqwest::Url,
) -> BlockResult<(Value, Option<String>)> {
    let mut waits = 0;
    loop {
        let response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| BlockError::retryable(format!("GET {url} failed: {e}")))?;
        let status = response.status();
        let throttled = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        if throttled
            && waits < RATE_LIMIT_WAITS
            && let Some(wait) = retry_after(response.headers())
            && wait <= MAX_RETRY_AFTER
        {
            waits += 1;
            warn!(%url, %status, wait_ms = wait.as_millis() as u64, "rate limited; waiting as the API asks");
            tokio::time::sleep(wait).await;
            continue;
        }
        let link = response
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(next_link);
        let text = response
            .text()
            .await
            .map_err(|e| BlockError::retryable(format!("GET {url}: response interrupted: {e}")))?;
        if !status.is_success() {
            let excerpt: String = text.chars().take(300).collect();
            let message = format!("GET {url} returned HTTP {status}: {excerpt}");
            // A 503 is a server error, so throttled answers stay retryable.
            return Err(crate::http::status_error(status, message));
        }
        let body = serde_json::from_str(&text)
            .map_err(|e| BlockError::fatal(format!("GET {url}: the response is not JSON: {e}")))?;
        return Ok((body, link));
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The `rel="next"` target of a `Link` header value (RFC 8288).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let is_next = params.split(';').any(|param| {
            let Some((key, value)) = param.split_once('=') else {
                return false;
            };
            key.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        is_next.then(|| target.to_string())
    })
}

/// The value at a dotted path (`meta.next_cursor`); the whole value for an empty path.
fn value_at<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |value, key| value.get(key))
}

/// The records array at `path`.
fn records_at<'v>(body: &'v Value, path: &str) -> Result<&'v Vec<Value>, String> {
    let shown = if path.is_empty() { "the body" } else { path };
    match value_at(body, path) {
        Some(Value::Array(records)) => Ok(records),
        Some(other) => Err(format!(
            "expected an array of records at `{shown}`, found {}",
            json_kind(other)
        )),
        None => Err(format!("the response has no `{shown}`")),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A record with nested objects flattened into `outer__inner` keys.
fn flatten(record: &Value) -> Map<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut Map<String, Value>) {
        match value {
            Value::Object(fields) => {
                for (key, value) in fields {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}__{key}")
                    };
                    walk(&name, value, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = Map::new();
    match record {
        Value::Object(_) => walk("", record, &mut out),
        // A scalar record fills a column named `value`, as dlt does.
        other => {
            out.insert("value".to_string(), other.clone());
        }
    }
    out
}

/// The records as a frame with exactly the compiled schema.
pub fn records_frame(records: &[Map<String, Value>], columns: &[Column]) -> BlockResult<DataFrame> {
    let mut series = Vec::with_capacity(columns.len());
    for column in columns {
        let values = records.iter().map(|record| record.get(column.name));
        let wrong = |index: usize, value: &Value| {
            BlockError::fatal(format!(
                "record {index}: column `{}` is {}, not a value of type {}",
                column.name,
                json_kind(value),
                column.ty.name()
            ))
        };
        let name = PlSmallStr::from_static(column.name);
        let built = match column.ty {
            BaseType::Int64 => {
                let parsed = collect(values, |v| v.as_i64(), wrong)?;
                Series::new(name, parsed)
            }
            BaseType::Float64 => Series::new(name, collect(values, Value::as_f64, wrong)?),
            BaseType::Bool => Series::new(name, collect(values, Value::as_bool, wrong)?),
            BaseType::String => {
                let text = collect(
                    values,
                    |v| {
                        Some(match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                    },
                    wrong,
                )?;
                Series::new(name, text)
            }
            BaseType::Date => {
                let days = collect(values, |v| parse_date(v.as_str()?), wrong)?;
                Series::new(name, days).cast(&DataType::Date)?
            }
            BaseType::Timestamp => {
                let micros = collect(
                    values,
                    |v| Some(parse_timestamp(v.as_str()?)?.and_utc().timestamp_micros()),
                    wrong,
                )?;
                Series::new(name, micros).cast(&BaseType::Timestamp.dtype())?
            }
        };
        series.push(built.into_column());
    }
    let height = records.len();
    conform(DataFrame::new(height, series)?, columns)
}

/// Collects one column's values: a missing key or JSON null is null; a value `convert` rejects
/// is reported by `wrong` with the record's index.
fn collect<'v, T>(
    values: impl Iterator<Item = Option<&'v Value>>,
    convert: impl Fn(&Value) -> Option<T>,
    wrong: impl Fn(usize, &Value) -> BlockError,
) -> BlockResult<Vec<Option<T>>> {
    values
        .enumerate()
        .map(|(index, value)| match value {
            None | Some(Value::Null) => Ok(None),
            Some(value) => convert(value).map(Some).ok_or_else(|| wrong(index, value)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Query, State};
    use axum::http::HeaderMap as AxumHeaders;
    use axum::response::IntoResponse;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    const TOTAL: usize = 23;

    fn record(id: usize) -> Value {
        serde_json::json!({"id": id, "pickup": {"zone": format!("zone {id}")}})
    }

    /// A loopback API serving 23 records in every pagination style; the first request of all
    /// answers 429 with `Retry-After: 1`.
    async fn api(
        State(throttled): State<Arc<AtomicU32>>,
        axum::extract::Path(style): axum::extract::Path<String>,
        Query(query): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        if throttled.fetch_add(1, Ordering::SeqCst) == 0 {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response();
        }
        let number =
            |key: &str, default: usize| query.get(key).map_or(default, |v| v.parse().unwrap());
        let (start, size) = match style.as_str() {
            "page" => {
                let size = number("per_page", 10);
                ((number("page", 1) - 1) * size, size)
            }
            "offset" => (number("offset", 0), number("limit", 10)),
            _ => (number("cursor", 0), 10),
        };
        let records: Vec<Value> = (start..TOTAL.min(start + size)).map(record).collect();
        let more = start + size < TOTAL;
        let mut headers = AxumHeaders::new();
        if style == "link" && more {
            let next = format!(
                "</link?cursor={}>; rel=\"next\", </link>; rel=\"first\"",
                start + size
            );
            headers.insert("link", next.parse().unwrap());
        }
        let body = match style.as_str() {
            "cursor" => {
                serde_json::json!({"data": records, "meta": {"next": if more { Value::from((start + size).to_string()) } else { Value::Null }}})
            }
            _ => serde_json::json!({"data": records}),
        };
        (headers, axum::Json(body)).into_response()
    }

    async fn serve() -> String {
        let app = axum::Router::new()
            .route("/{style}", axum::routing::get(api))
            .with_state(Arc::new(AtomicU32::new(0)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn rest(pagination: Pagination) -> RestApi {
        RestApi {
            connection: "api",
            records: "data",
            pagination,
            auth: None,
            auth_header: None,
            max_pages: 100,
        }
    }

    #[tokio::test]
    async fn every_pagination_style_reads_every_record_once() {
        let styles = [
            (
                "page",
                Pagination::Page {
                    param: "page",
                    size: Some(("per_page", 10)),
                },
            ),
            (
                "offset",
                Pagination::Offset {
                    param: "offset",
                    limit_param: "limit",
                    limit: 10,
                },
            ),
            (
                "cursor",
                Pagination::Cursor {
                    param: "cursor",
                    next: "meta.next",
                },
            ),
            ("link", Pagination::Link),
        ];
        for (style, pagination) in styles {
            let base = serve().await;
            let client = crate::http::client(REQUEST_TIMEOUT, Default::default()).unwrap();
            let (records, pages) =
                fetch_records(&client, &format!("{base}/{style}"), &rest(pagination))
                    .await
                    .unwrap_or_else(|e| panic!("{style}: {e}"));
            let ids: Vec<i64> = records.iter().map(|r| r["id"].as_i64().unwrap()).collect();
            assert_eq!(ids, (0..TOTAL as i64).collect::<Vec<_>>(), "{style}");
            assert_eq!(pages, 3, "{style}");
            assert_eq!(
                records[4]["pickup__zone"], "zone 4",
                "{style}: nested fields are flattened"
            );
        }
    }

    #[tokio::test]
    async fn more_pages_than_allowed_is_an_error() {
        let base = serve().await;
        let mut api = rest(Pagination::Page {
            param: "page",
            size: Some(("per_page", 10)),
        });
        api.max_pages = 2;
        let error = fetch_records(
            &crate::http::client(REQUEST_TIMEOUT, Default::default()).unwrap(),
            &format!("{base}/page"),
            &api,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("more than 2 pages"), "{error}");
    }

    #[test]
    fn records_become_typed_columns() {
        let records: Vec<Map<String, Value>> = [
            serde_json::json!({"id": 1, "fare": 2.5, "at": "2021-01-01T00:15:56", "day": "2021-01-01", "ok": true, "tags": ["a"]}),
            serde_json::json!({"id": 2, "fare": 3, "at": "2021-01-01T01:00:00+01:00"}),
        ]
        .iter()
        .map(flatten)
        .collect();
        let columns = [
            Column::required("id", BaseType::Int64),
            Column::nullable("fare", BaseType::Float64),
            Column::required("at", BaseType::Timestamp),
            Column::nullable("day", BaseType::Date),
            Column::nullable("ok", BaseType::Bool),
            Column::nullable("tags", BaseType::String),
        ];
        let frame = records_frame(&records, &columns).unwrap();
        assert_eq!(frame.height(), 2);
        assert_eq!(
            frame.column("fare").unwrap().f64().unwrap().get(1),
            Some(3.0)
        );
        assert_eq!(frame.column("day").unwrap().null_count(), 1);
        assert_eq!(
            frame.column("tags").unwrap().str().unwrap().get(0),
            Some("[\"a\"]")
        );
        let at = frame.column("at").unwrap().cast(&DataType::String).unwrap();
        assert_eq!(at.str().unwrap().get(1), Some("2021-01-01 00:00:00.000000"));

        let bad = [serde_json::json!({"id": "one", "at": "2021-01-01T00:00:00"})]
            .iter()
            .map(flatten)
            .collect::<Vec<_>>();
        let error = records_frame(&bad, &columns).unwrap_err().to_string();
        assert!(
            error.contains("record 0: column `id` is a string, not a value of type int64"),
            "{error}"
        );
    }

    #[test]
    fn link_headers_and_retry_after_are_read() {
        assert_eq!(
            next_link("<https://api/x?page=1>; rel=\"prev\", <https://api/x?page=3>; rel=\"next\""),
            Some("https://api/x?page=3".to_string())
        );
        assert_eq!(next_link("<https://api/x>; rel=\"last\""), None);
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            retry_after(&headers),
            Some(Duration::ZERO),
            "a past date means now"
        );
    }
}
