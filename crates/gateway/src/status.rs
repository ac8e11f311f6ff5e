//! The one place where domain errors become gRPC statuses: ingest, queue and store
//! errors. Every variant maps to the code a client can act on: INVALID_ARGUMENT (fix the
//! request), NOT_FOUND, FAILED_PRECONDITION (the state changed), RESOURCE_EXHAUSTED
//! (back off and retry), UNAVAILABLE (retry later or elsewhere; nothing was stored),
//! INTERNAL (a bug or damaged data: a retry repeats it). Services call these; none maps
//! an error itself.

use crate::pipeline::IngestError;
use adflow_queue::{BackendErrorKind, QueueError};
use adflow_store::StoreError;
use tonic::{Code, Status};

/// The code of a queue error (also used for the per-lease refusals of a worker message).
pub(crate) fn queue_code(e: &QueueError) -> Code {
    match e {
        QueueError::NotFound(_) | QueueError::UnknownLease(_) => Code::NotFound,
        QueueError::BadId(_) | QueueError::Invalid { .. } => Code::InvalidArgument,
        QueueError::WrongState { .. } | QueueError::StaleLease(_) => Code::FailedPrecondition,
        QueueError::Journal(_) | QueueError::Backend { kind: BackendErrorKind::Unavailable, .. } => {
            Code::Unavailable
        }
        QueueError::Backend { kind: BackendErrorKind::Internal, .. } => Code::Internal,
    }
}

/// The status of a queue error (a function: both types are foreign to this crate).
pub(crate) fn from_queue(e: QueueError) -> Status {
    Status::new(queue_code(&e), e.to_string())
}

/// The status of a store error met while serving a read.
pub(crate) fn from_store(e: StoreError) -> Status {
    use StoreError as E;
    let msg = e.to_string();
    match e {
        E::BadCursor(_) => Status::invalid_argument(msg),
        E::Unsupported(_) => Status::unimplemented(msg),
        E::Corrupt { .. } => Status::data_loss(msg),
        E::Io { .. } | E::Closed | E::Backend { .. } => Status::unavailable(msg),
    }
}

/// Response metadata key of gRPC's retry pushback (milliseconds to wait before a retry).
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// A retry delay for a full pipeline: 50 ms, up to 500 ms as the queue fills.
pub fn retry_after_ms(queued: usize, capacity: usize) -> u64 {
    let fill = queued as f64 / capacity.max(1) as f64;
    (50.0 + 450.0 * fill.clamp(0.0, 1.0)) as u64
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        let msg = e.to_string();
        match e {
            IngestError::Empty | IngestError::TooMany { .. } | IngestError::Invalid(_) => {
                Status::invalid_argument(msg)
            }
            IngestError::Full { queued, capacity } => {
                let mut s = Status::resource_exhausted(msg);
                // gRPC's retry pushback: how long to wait before retrying, by how full we are.
                let ms = retry_after_ms(queued, capacity);
                if let Ok(v) = ms.to_string().parse() {
                    s.metadata_mut().insert(RETRY_PUSHBACK, v);
                }
                s
            }
            IngestError::StoreRefused(_) => {
                let mut s = Status::resource_exhausted(msg);
                s.metadata_mut().insert(RETRY_PUSHBACK, tonic::metadata::MetadataValue::from_static("5000"));
                s
            }
            IngestError::ShuttingDown | IngestError::CommitFailed(_) | IngestError::FirstCopyPending(_) => {
                Status::unavailable(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_gets_an_actionable_code() {
        assert_eq!(Status::from(IngestError::Empty).code(), Code::InvalidArgument);
        assert_eq!(Status::from(IngestError::TooMany { got: 2, limit: 1 }).code(), Code::InvalidArgument);
        assert_eq!(
            Status::from(IngestError::Full { queued: 1, capacity: 1 }).code(),
            Code::ResourceExhausted
        );
        assert_eq!(Status::from(IngestError::ShuttingDown).code(), Code::Unavailable);
        assert_eq!(Status::from(IngestError::CommitFailed("disk".into())).code(), Code::Unavailable);
    }

    #[test]
    fn queue_backend_errors_say_whether_a_retry_helps() {
        assert_eq!(
            from_queue(QueueError::unavailable("redis: connection refused")).code(),
            Code::Unavailable
        );
        assert_eq!(
            from_queue(QueueError::internal("redis: ERR Error running script")).code(),
            Code::Internal
        );
        assert_eq!(from_queue(QueueError::StaleLease(3)).code(), Code::FailedPrecondition);
        let store = StoreError::Backend { backend: "redis", op: "sum", message: "timed out".into() };
        assert_eq!(from_store(store).code(), Code::Unavailable);
    }

    #[test]
    fn a_full_pipeline_tells_the_client_when_to_retry() {
        let s = Status::from(IngestError::Full { queued: 65_536, capacity: 65_536 });
        assert_eq!(s.metadata().get(RETRY_PUSHBACK).unwrap().to_str().unwrap(), "500");
        let s = Status::from(IngestError::Full { queued: 0, capacity: 65_536 });
        assert_eq!(s.metadata().get(RETRY_PUSHBACK).unwrap().to_str().unwrap(), "50");
    }
}
