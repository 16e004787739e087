//! What the HTTP clients of sources and sinks share: how a client is built and how an error
//! answer becomes a block error.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::error::{BlockError, BlockResult};

/// A client that names itself `baton/VERSION`, with a timeout per request and default headers.
pub(crate) fn client(timeout: Duration, headers: HeaderMap) -> BlockResult<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .build()
        .map_err(|e| BlockError::fatal(format!("cannot build HTTP client: {e}")))
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
