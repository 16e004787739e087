//! Object stores by URL: a local folder, `file://`, `s3://`, `gs://` or `az://`.
//!
//! A connection URL names a bucket (or container) and a prefix inside it; every path a block
//! uses is relative to that prefix. Credentials come from the standard places each cloud's own
//! tools use (`AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS` / `GOOGLE_SERVICE_ACCOUNT*`, `AZURE_*`),
//! and any of object_store's configuration keys may also be given in the URL's query string
//! (`s3://lake/trips?endpoint=http://127.0.0.1:5000&region=us-east-1`). Query values other than
//! a few harmless ones are never shown: [`StoreLocation::display`] redacts them.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};

use crate::error::{BlockError, BlockResult};

/// Files larger than this go up as multipart uploads, in parts of this size.
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;

/// The object store client's own retries of one request. They are few and short on purpose:
/// the block's retry policy (`retries`, `retry_delay`) is the one users set and see in the
/// ledger, and two generous layers would multiply into minutes of silence.
fn request_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    }
}

/// Query keys whose values are shown in messages; every other value is redacted.
const PUBLIC_KEYS: &[&str] = &[
    "endpoint",
    "aws_endpoint",
    "region",
    "aws_region",
    "allow_http",
];

/// An opened object store, rooted at the connection's prefix.
#[derive(Clone, Debug)]
pub struct StoreLocation {
    /// The store; paths are relative to the connection's prefix.
    pub store: Arc<dyn ObjectStore>,
    /// The URL without secrets, to name this store in messages and logs.
    pub display: String,
    /// The folder, for a local store: object stores have no folders, but a file system keeps
    /// the empty ones that deleting objects leaves behind.
    pub local_root: Option<std::path::PathBuf>,
}

/// The URL's scheme, bucket, prefix and query options.
struct ParsedUrl {
    scheme: String,
    bucket: String,
    prefix: String,
    options: Vec<(String, String)>,
}

fn parse_cloud_url(url: &str) -> BlockResult<ParsedUrl> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| BlockError::fatal(format!("`{}` is not a URL: {e}", redact_store_url(url))))?;
    let bucket = parsed.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        return Err(BlockError::fatal(format!(
            "`{}` names no bucket",
            redact_store_url(url)
        )));
    }
    Ok(ParsedUrl {
        scheme: parsed.scheme().to_string(),
        bucket,
        prefix: parsed.path().trim_matches('/').to_string(),
        options: parsed.query_pairs().into_owned().collect(),
    })
}

/// Opens the object store a connection URL names. Local folders are created when missing.
pub fn open_store(url: &str) -> BlockResult<StoreLocation> {
    let display = redact_store_url(url);
    let local = match url.strip_prefix("file://") {
        Some(path) => Some(path),
        None if !url.contains("://") => Some(url),
        None => None,
    };
    if let Some(path) = local {
        std::fs::create_dir_all(path)
            .map_err(|e| BlockError::fatal(format!("cannot create folder {path}: {e}")))?;
        return Ok(StoreLocation {
            store: Arc::new(LocalFileSystem::new_with_prefix(path)?),
            display,
            local_root: Some(path.into()),
        });
    }
    let parsed = parse_cloud_url(url)?;
    let bucket_url = format!("{}://{}", parsed.scheme, parsed.bucket);
    let display = &display;
    let store: Arc<dyn ObjectStore> = match parsed.scheme.as_str() {
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env()
                .with_url(&bucket_url)
                .with_retry(request_retries());
            for (key, value) in aws_profile(|name| std::env::var(name).ok()) {
                builder = builder.with_config(key, value);
            }
            let builder = configure(builder, &parsed, display, |b, k: AmazonS3ConfigKey, v| {
                b.with_config(k, v)
            })?;
            Arc::new(builder.build()?)
        }
        "gs" => {
            let builder = GoogleCloudStorageBuilder::from_env()
                .with_url(&bucket_url)
                .with_retry(request_retries());
            let builder = configure(builder, &parsed, display, |b, k: GoogleConfigKey, v| {
                b.with_config(k, v)
            })?;
            Arc::new(builder.build()?)
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let builder = MicrosoftAzureBuilder::from_env()
                .with_url(&bucket_url)
                .with_retry(request_retries());
            let builder = configure(builder, &parsed, display, |b, k: AzureConfigKey, v| {
                b.with_config(k, v)
            })?;
            Arc::new(builder.build()?)
        }
        other => {
            return Err(BlockError::fatal(format!(
                "{display}: unsupported scheme `{other}://` (use a local folder, file://, s3://, gs:// or az://)"
            )));
        }
    };
    let store = if parsed.prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(
            store,
            ObjectPath::from(parsed.prefix.as_str()),
        ))
    };
    Ok(StoreLocation {
        store,
        display: display.clone(),
        local_root: None,
    })
}

/// Settings from the AWS CLI's shared files for `AWS_PROFILE` (else `default`), for what the
/// environment leaves unset: keys and session token from `~/.aws/credentials`
/// (`AWS_SHARED_CREDENTIALS_FILE`), the region from `~/.aws/config` (`AWS_CONFIG_FILE`).
/// object_store reads the environment and instance roles but not these files.
fn aws_profile(env: impl Fn(&str) -> Option<String>) -> Vec<(AmazonS3ConfigKey, String)> {
    let home = env("HOME").unwrap_or_default();
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let read = |variable: &str, default: &str| {
        let path = env(variable).unwrap_or_else(|| format!("{home}/.aws/{default}"));
        ini::Ini::load_from_file(path).ok()
    };
    let mut settings = Vec::new();
    if env("AWS_ACCESS_KEY_ID").is_none()
        && let Some(credentials) = read("AWS_SHARED_CREDENTIALS_FILE", "credentials")
        && let Some(section) = credentials.section(Some(profile.as_str()))
    {
        for (name, key) in [
            ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId),
            ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
            ("aws_session_token", AmazonS3ConfigKey::Token),
        ] {
            if let Some(value) = section.get(name) {
                settings.push((key, value.to_string()));
            }
        }
    }
    // The config file names profiles `[profile NAME]`, except `[default]`.
    let config_section = if profile == "default" {
        profile.clone()
    } else {
        format!("profile {profile}")
    };
    if env("AWS_REGION").is_none()
        && env("AWS_DEFAULT_REGION").is_none()
        && let Some(config) = read("AWS_CONFIG_FILE", "config")
        && let Some(region) = config
            .section(Some(config_section.as_str()))
            .and_then(|section| section.get("region"))
    {
        settings.push((AmazonS3ConfigKey::Region, region.to_string()));
    }
    settings
}

/// The part size of a file uploaded from disk: the smallest S3 and GCS accept, so that an upload
/// holds little of the file in memory.
const UPLOAD_PART_BYTES: usize = 5 * 1024 * 1024;

/// Uploads a local file, reading it a part at a time: in one request when it is small, as a
/// multipart upload otherwise. Either way the object appears whole or not at all.
pub async fn put_local_file(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    local: &std::path::Path,
) -> BlockResult<()> {
    use tokio::io::AsyncReadExt;
    let unreadable =
        |e: std::io::Error| BlockError::fatal(format!("cannot read {}: {e}", local.display()));
    let mut file = tokio::fs::File::open(local).await.map_err(unreadable)?;
    let size = file.metadata().await.map_err(unreadable)?.len() as usize;
    if size <= UPLOAD_PART_BYTES {
        let mut bytes = Vec::with_capacity(size);
        file.read_to_end(&mut bytes).await.map_err(unreadable)?;
        return put_file(store, path, bytes).await;
    }
    let failed = |e: object_store::Error| BlockError::retryable(format!("uploading {path}: {e}"));
    let upload = store.put_multipart(&path).await.map_err(failed)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES);
    let mut buffer = vec![0u8; UPLOAD_PART_BYTES];
    loop {
        let read = file.read(&mut buffer).await.map_err(unreadable)?;
        if read == 0 {
            break;
        }
        // At most one part waits while another is in flight.
        writer.wait_for_capacity(1).await.map_err(failed)?;
        writer.write(&buffer[..read]);
    }
    writer.finish().await.map(drop).map_err(failed)
}

/// Uploads one file: in one request when small, as a multipart upload when large. Either way
/// the object appears whole or not at all.
pub async fn put_file(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    bytes: Vec<u8>,
) -> BlockResult<()> {
    let result = if bytes.len() <= MULTIPART_THRESHOLD {
        store.put(&path, PutPayload::from(bytes)).await.map(drop)
    } else {
        match store.put_multipart(&path).await {
            Ok(upload) => {
                let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_THRESHOLD);
                writer.write(&bytes);
                writer.finish().await.map(drop)
            }
            Err(error) => Err(error),
        }
    };
    result.map_err(|e| BlockError::retryable(format!("uploading {path}: {e}")))
}

/// The files under the store whose paths match `pattern`, sorted by path. `*` and `?` stay
/// within one folder, `**` crosses folders, `{a,b}` and `[...]` work as in shells. Folders
/// whose names start with `_` or `.` (staging areas, markers) are skipped.
pub async fn matching_files(
    store: &dyn ObjectStore,
    pattern: &str,
) -> BlockResult<Vec<ObjectPath>> {
    let pattern = pattern.trim_start_matches('/');
    let glob_start = pattern.find(['*', '?', '[', '{']);
    let Some(glob_start) = glob_start else {
        return Ok(vec![ObjectPath::from(pattern)]);
    };
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| BlockError::fatal(format!("invalid glob `{pattern}`: {e}")))?
        .compile_matcher();
    // List only under the folder before the first wildcard.
    let prefix = pattern[..glob_start]
        .rsplit_once('/')
        .map(|(folder, _)| folder);
    let prefix = prefix.filter(|p| !p.is_empty()).map(ObjectPath::from);
    let mut files: Vec<ObjectPath> = store
        .list(prefix.as_ref())
        .map_ok(|meta| meta.location)
        .try_filter(|path| {
            let hidden = path
                .parts()
                .any(|part| part.as_ref().starts_with(['_', '.']));
            std::future::ready(!hidden && matcher.is_match(path.as_ref()))
        })
        .try_collect()
        .await?;
    files.sort();
    Ok(files)
}

/// Applies the URL's query options to a store builder, each read as one of its configuration
/// keys; an unknown key is an error naming it.
fn configure<B, K: std::str::FromStr>(
    mut builder: B,
    url: &ParsedUrl,
    display: &str,
    with_config: fn(B, K, &str) -> B,
) -> BlockResult<B> {
    for (key, value) in &url.options {
        let parsed: K = key.parse().map_err(|_| {
            BlockError::fatal(format!(
                "{display}: unknown option `{key}` (see object_store's configuration keys for {})",
                url.scheme
            ))
        })?;
        builder = with_config(builder, parsed, value);
    }
    Ok(builder)
}

/// The URL with its password and every query value redacted, except endpoints, regions and
/// `allow_http`.
pub fn redact_store_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let shown = if PUBLIC_KEYS.contains(&key.as_ref()) {
                    value.into_owned()
                } else {
                    "***".to_string()
                };
                (key.into_owned(), shown)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_the_query_are_redacted() {
        let url = "s3://lake/trips?endpoint=http://127.0.0.1:5000&aws_secret_access_key=hunter2&region=us-east-1";
        let shown = redact_store_url(url);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("aws_secret_access_key=***"), "{shown}");
        assert!(shown.contains("region=us-east-1"), "{shown}");
    }

    #[test]
    fn bucket_prefix_and_options_are_split() {
        let parsed = parse_cloud_url("gs://bucket/a/b/?service_account_key=%7B%7D").unwrap();
        assert_eq!(parsed.scheme, "gs");
        assert_eq!(parsed.bucket, "bucket");
        assert_eq!(parsed.prefix, "a/b");
        assert_eq!(
            parsed.options,
            vec![("service_account_key".to_string(), "{}".to_string())]
        );
        assert!(parse_cloud_url("s3:///x").is_err());
    }

    #[test]
    fn unknown_options_and_schemes_are_reported() {
        let error = open_store("s3://b?no_such_option=1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown option `no_such_option`"), "{error}");
        let error = open_store("ftp://host/x").unwrap_err().to_string();
        assert!(error.contains("unsupported scheme"), "{error}");
    }

    #[tokio::test]
    async fn globs_match_within_and_across_folders() {
        let folder = tempfile::tempdir().unwrap();
        let store = open_store(folder.path().to_str().unwrap()).unwrap().store;
        for path in [
            "trips/day=2021-01-01/part-2021-01.parquet",
            "trips/day=2021-01-02/part-2021-01.parquet",
            "trips/day=2021-02-01/part-2021-02.parquet",
            "trips/_baton_staging/run/day=2021-01-03/part-2021-01.parquet",
            "trips/notes.txt",
        ] {
            put_file(store.clone(), ObjectPath::from(path), b"x".to_vec())
                .await
                .unwrap();
        }
        let names =
            |paths: Vec<ObjectPath>| paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let january = matching_files(store.as_ref(), "trips/day=2021-01-*/*.parquet")
            .await
            .unwrap();
        assert_eq!(
            names(january),
            [
                "trips/day=2021-01-01/part-2021-01.parquet",
                "trips/day=2021-01-02/part-2021-01.parquet"
            ]
        );
        let all = matching_files(store.as_ref(), "trips/**/*.parquet")
            .await
            .unwrap();
        assert_eq!(all.len(), 3, "the staging folder is skipped");
        let none = matching_files(store.as_ref(), "trips/*.parquet")
            .await
            .unwrap();
        assert!(none.is_empty(), "`*` does not cross folders");
        let plain = matching_files(store.as_ref(), "trips/notes.txt")
            .await
            .unwrap();
        assert_eq!(names(plain), ["trips/notes.txt"]);
    }

    #[test]
    fn aws_profiles_fill_what_the_environment_leaves_unset() {
        let folder = tempfile::tempdir().unwrap();
        let credentials = folder.path().join("credentials");
        let config = folder.path().join("config");
        std::fs::write(
            &credentials,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n[etl]\naws_access_key_id = E\naws_secret_access_key = ES\naws_session_token = ET\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = us-east-1\n\n[profile etl]\nregion = eu-west-1\n",
        )
        .unwrap();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ];
        let lookup = |extra: &'static [(&'static str, &'static str)]| {
            let vars: Vec<(String, String)> = files
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        };
        let values = |settings: Vec<(AmazonS3ConfigKey, String)>| {
            settings.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
        };
        assert_eq!(values(aws_profile(lookup(&[]))), ["D", "DS", "us-east-1"]);
        assert_eq!(
            values(aws_profile(lookup(&[("AWS_PROFILE", "etl")]))),
            ["E", "ES", "ET", "eu-west-1"]
        );
        // The environment wins.
        let set = &[("AWS_ACCESS_KEY_ID", "X"), ("AWS_REGION", "ap-south-1")];
        assert!(aws_profile(lookup(set)).is_empty());
        // No files, no settings.
        let missing = |name: &str| name.ends_with("_FILE").then(|| "/nonexistent".to_string());
        assert!(aws_profile(missing).is_empty());
    }
}
