//! One error type for the whole server, and its single mapping to gRPC status codes.
//! Denials are not errors: they are answers (see `engine::outcome`).

use crate::domain::InvalidInput;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] InvalidInput),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The outcome is unknown to the client; a retry with the same request id settles it.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument(InvalidInput::new(field, reason))
    }

    /// A write that the durable store did not confirm.
    pub fn not_durable(e: &StoreError) -> Self {
        Error::Unavailable(format!(
            "the durable store could not confirm the change ({e}); nothing was charged: retry with the same request_id"
        ))
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::{Code, Status};
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Internal(_) => Code::Internal,
        };
        match e {
            Error::InvalidArgument(input) => {
                let details =
                    tonic_types::ErrorDetails::with_bad_request_violation(input.field.clone(), input.reason.clone());
                use tonic_types::StatusExt;
                Status::with_error_details(code, format!("{}: {}", input.field, input.reason), details)
            }
            other => Status::new(code, other.to_string()),
        }
    }
}
