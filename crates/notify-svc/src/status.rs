//! The one mapping from domain and store errors to gRPC statuses.

use notify_core::ValidationError;
use notify_store::StoreError;
use tonic::Status;

use crate::delivery::pipeline::PipelineError;

pub fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn store(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable(msg) => Status::unavailable(format!(
            "database unavailable ({msg}); retry later (a publish retried with the same \
             idempotency key is never stored twice)"
        )),
        StoreError::Internal(msg) => {
            tracing::error!(error = %msg, "store error");
            Status::internal("internal database error")
        }
        e @ StoreError::MigrationChanged { .. } => Status::internal(e.to_string()),
    }
}

pub fn pipeline(e: PipelineError) -> Status {
    match e {
        PipelineError::Store(e) => store(e),
        PipelineError::Overloaded => {
            Status::resource_exhausted("publish queue is full; retry with backoff")
        }
        PipelineError::Stopped => Status::unavailable("notify-svc is shutting down; retry"),
    }
}

/// A status as the `(code, message)` pair of a batch item.
pub fn code_and_message(status: &Status) -> (i32, String) {
    (status.code() as i32, status.message().to_owned())
}
