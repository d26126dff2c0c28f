//! What a step can fail with, as the runtime sees it (CONTRACT §5: transient vs permanent).

use std::time::Duration;

/// A step's failure. A rejection is not an error: it is an `Outcome`.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Worth retrying: 429, 5xx, timeouts, connection errors, serialization conflicts.
    #[error("transient failure: {source:#}")]
    Transient {
        /// What happened.
        source: anyhow::Error,
        /// The earliest moment to try again, when the other side said so (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (our request is wrong, or the answer is unreadable): park now.
    #[error("permanent failure: {0:#}")]
    Permanent(anyhow::Error),
}

impl StepError {
    /// A transient failure without a `Retry-After`.
    pub fn transient(source: impl Into<anyhow::Error>) -> Self {
        StepError::Transient {
            source: source.into(),
            retry_after: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(source: impl Into<anyhow::Error>) -> Self {
        StepError::Permanent(source.into())
    }
}

impl From<sqlx::Error> for StepError {
    /// Database errors are transient: the connection may come back, a conflict may not repeat.
    fn from(error: sqlx::Error) -> Self {
        StepError::transient(error)
    }
}
