//! What the HTTP clients of sources and sinks share: how a client is built and how an error
//! answer becomes a block error.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{IntoUrl, Method, RequestBuilder, StatusCode};

use crate::error::{BlockError, BlockResult};

/// How a block talks HTTP: the process's one client, with the block's timeout and default
/// headers put on every request.
#[derive(Clone, Debug)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    timeout: Duration,
    headers: HeaderMap,
}

impl HttpClient {
    /// A request with this client's timeout and headers.
    pub(crate) fn request(&self, method: Method, url: impl IntoUrl) -> RequestBuilder {
        self.client
            .request(method, url)
            .timeout(self.timeout)
            .headers(self.headers.clone())
    }

    /// A GET with this client's timeout and headers.
    pub(crate) fn get(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// A HEAD with this client's timeout and headers.
    pub(crate) fn head(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::HEAD, url)
    }
}

/// The process's one `reqwest::Client`, built on first use: building one loads and parses the
/// system's root certificates, which cost each month of a backfill milliseconds of CPU before
/// its first byte was asked for when every block built its own. Sharing it also pools
/// connections to the same server across blocks and runs. Pooled connections are driven by the
/// tokio runtime that opened them; a pipeline binary runs one runtime (`cli::block_on`).
fn shared_client() -> &'static Result<reqwest::Client, String> {
    static SHARED: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    SHARED.get_or_init(|| {
        reqwest::Client::builder()
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))
    })
}

/// Starts building the shared client in the background, so that a run whose first block
/// downloads does not wait for it: the root certificates (6 ms of CPU on the reference run,
/// before its first request) are read while the ledger opens and the run starts. A block that
/// asks for the client before the build ends waits for it rather than starting another. The
/// build runs on tokio's blocking pool, whose threads parse the downloads afterwards: a thread
/// of its own would also get an allocator arena of its own.
pub(crate) fn warm_up() {
    tokio::task::spawn_blocking(|| {
        let _ = shared_client();
    });
}

/// A client that names itself `baton/VERSION`, with a timeout per request and default headers.
pub(crate) fn client(timeout: Duration, headers: HeaderMap) -> BlockResult<HttpClient> {
    match shared_client() {
        Ok(client) => Ok(HttpClient {
            client: client.clone(),
            timeout,
            headers,
        }),
        Err(message) => Err(BlockError::fatal(message.clone())),
    }
}

/// An error answer as a block error: a server error or a rate limit (429) may pass when asked
/// again, so it is retryable; any other status is not.
pub(crate) fn status_error(status: StatusCode, message: String) -> BlockError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        BlockError::retryable(message)
    } else {
        BlockError::fatal(message)
    }
}
