//! The queue's errors, shared by every backend. A backend failure carries a kind, so the
//! gateway can tell a client to retry (the server was unreachable or slow) from a bug it
//! should report (a Lua script error, a reply of the wrong shape, undecodable data).

use crate::journal::JournalError;

/// Errors of queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No ad has this id.
    #[error("ad {0} not found")]
    NotFound(String),
    /// The id is not a UUID.
    #[error("id {0:?} is not a valid ad id (a UUID)")]
    BadId(String),
    /// The ad is not in a state that allows the operation.
    #[error("ad {id} is {status}: {what}")]
    WrongState {
        /// The ad.
        id: String,
        /// Its status name.
        status: &'static str,
        /// What was refused.
        what: &'static str,
    },
    /// A field is out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// The lease does not exist.
    #[error("lease {0} does not exist")]
    UnknownLease(u64),
    /// The lease is not the ad's newest one (expired, released or settled) or not yours.
    #[error("lease {0} is not the ad's current lease (it expired, was released, or the ad was settled)")]
    StaleLease(u64),
    /// Persistence failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The shared backend (Redis, MongoDB) failed; `kind` says whether a retry can help.
    #[error("the queue backend failed: {message}")]
    Backend {
        /// Transient (retry) or a bug (report).
        kind: BackendErrorKind,
        /// The backend's name and its error.
        message: String,
    },
}

/// What kind of backend failure an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The server could not be reached, dropped the connection, timed out or is busy
    /// (failing over, loading): nothing was changed, a retry may succeed.
    Unavailable,
    /// The server answered, but with a script error or a reply this code does not
    /// understand, or stored data is undecodable: a bug, which a retry repeats.
    Internal,
}

/// Why a queue operation refused an ad in the wrong state (the `what` of `WrongState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Cancel of a finished ad.
    Cancel,
    /// SetPriority of an ad that is not queued.
    Reprioritize,
}

impl QueueError {
    /// A transient backend failure.
    pub fn unavailable(message: impl std::fmt::Display) -> Self {
        Self::Backend { kind: BackendErrorKind::Unavailable, message: message.to_string() }
    }

    /// A backend failure that is a bug or bad data.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::Backend { kind: BackendErrorKind::Internal, message: message.to_string() }
    }

    /// The refusal of `op` on ad `id`, whose status is `status` (the numeric AdStatus).
    pub fn wrong_state(id: &str, status: i32, op: Refused) -> Self {
        Self::WrongState {
            id: id.to_owned(),
            status: crate::status::name(status),
            what: match op {
                Refused::Cancel => "only unfinished ads can be cancelled",
                Refused::Reprioritize => "only queued ads can be reprioritized",
            },
        }
    }

    /// A field out of range.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }
}

/// Priorities are 1..=5 (`Priority` holds the rule); the error names the field.
pub(crate) fn priority(p: u8) -> Result<crate::Priority, QueueError> {
    crate::Priority::new(p).map_err(|e| QueueError::invalid("priority", e.to_string()))
}
