//! Block errors, classified as retryable or not.

use std::fmt;

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A transient failure: an HTTP 5xx or 429, a timeout, a dropped connection.
    Retryable,
    /// Retrying gives the same result: bad data, a failed check, a schema mismatch, a 404.
    Fatal,
    /// The block whose rows were streaming in failed: this block did nothing wrong and is
    /// skipped, not retried.
    InputFailed,
}

/// An error of one block attempt.
#[derive(Debug)]
pub struct BlockError {
    /// Retryable or fatal.
    pub kind: ErrorKind,
    /// What went wrong, for people, naming the URL, column or table concerned.
    pub message: String,
}

/// The result type of block functions.
pub type BlockResult<T> = Result<T, BlockError>;

impl BlockError {
    /// An error that retrying will not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        BlockError {
            kind: ErrorKind::Fatal,
            message: message.into(),
        }
    }

    /// An error that may go away on retry.
    pub fn retryable(message: impl Into<String>) -> Self {
        BlockError {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// The streaming input `block` failed before its last batch.
    pub fn input_failed(block: &str) -> Self {
        BlockError {
            kind: ErrorKind::InputFailed,
            message: format!("input `{block}` failed"),
        }
    }

    /// Prefixes the message with context, keeping the kind. An `InputFailed` error stays as it
    /// is: it only names the input, and becomes the reason the block is skipped.
    pub fn context(self, context: impl fmt::Display) -> Self {
        if self.kind == ErrorKind::InputFailed {
            return self;
        }
        BlockError {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BlockError {}

impl From<polars::error::PolarsError> for BlockError {
    fn from(error: polars::error::PolarsError) -> Self {
        BlockError::fatal(error.to_string())
    }
}

impl From<sqlx::Error> for BlockError {
    fn from(error: sqlx::Error) -> Self {
        let retryable = match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // Serialization failures and deadlocks succeed when tried again.
            sqlx::Error::Database(db) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01" | "57P01"))
            }
            _ => false,
        };
        let message = error.to_string();
        if retryable {
            BlockError::retryable(message)
        } else {
            BlockError::fatal(message)
        }
    }
}

impl From<object_store::Error> for BlockError {
    /// A missing object, a refused credential or a bad path will not mend by itself; anything
    /// else (a server error after the client's own retries, a dropped connection) may.
    fn from(error: object_store::Error) -> Self {
        use object_store::Error as E;
        match error {
            E::NotFound { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::Precondition { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
            | E::NotImplemented { .. } => BlockError::fatal(error.to_string()),
            _ if refused_request(&error) => BlockError::fatal(error.to_string()),
            _ => BlockError::retryable(error.to_string()),
        }
    }
}

/// Whether the store answered with a 4xx status other than 408 and 429: the request itself is
/// wrong (a bad bucket, a refused signature) and would be refused again. object_store keeps the
/// status in a private error type, so it is read from the message its client writes,
/// `... non-2xx status code: 403 Forbidden ...`.
fn refused_request(error: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        let text = current.to_string();
        if let Some((_, rest)) = text.split_once("status code: ")
            && let Some(Ok(status)) = rest.get(..3).map(str::parse::<u16>)
        {
            return (400..500).contains(&status) && status != 408 && status != 429;
        }
        source = current.source();
    }
    false
}

impl From<std::io::Error> for BlockError {
    fn from(error: std::io::Error) -> Self {
        BlockError::fatal(error.to_string())
    }
}

/// The message a panic carried, for an error that reports it.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}
