//! The one mapping between [`PublicError`] and gRPC status codes, both ways.

use deploy::PublicError;
use tonic::{Code, Status};

/// `PublicError` → gRPC `Status`. Exhaustive: a new variant must be mapped here.
pub fn to_status(err: &PublicError) -> Status {
    let code = match err {
        PublicError::NotFound { .. } => Code::NotFound,
        PublicError::AlreadyExists { .. } => Code::AlreadyExists,
        PublicError::InvalidRequest { .. } => Code::InvalidArgument,
        PublicError::Conflict { .. } => Code::FailedPrecondition,
        PublicError::NodeLocked { .. } => Code::Aborted,
        PublicError::Unavailable { .. } => Code::Unavailable,
        PublicError::Internal { .. } => Code::Internal,
    };
    // Display of Internal hides the details by construction.
    Status::new(code, err.to_string())
}

/// gRPC `Status` → `PublicError`, for clients of Ferric's own services.
pub fn from_status(status: &Status) -> PublicError {
    let msg = status.message().to_owned();
    match status.code() {
        Code::NotFound => PublicError::NotFound { kind: "Resource", id: msg },
        Code::AlreadyExists => PublicError::AlreadyExists { message: msg },
        Code::InvalidArgument | Code::OutOfRange => PublicError::InvalidRequest { message: msg },
        Code::FailedPrecondition | Code::Aborted => PublicError::Conflict { message: msg },
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {
            PublicError::Unavailable { message: msg }
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            PublicError::InvalidRequest { message: msg }
        }
        Code::Ok | Code::Unknown | Code::Internal | Code::Unimplemented | Code::DataLoss => {
            PublicError::Internal { internal: format!("{:?}: {msg}", status.code()) }
        }
    }
}

impl From<PublicErrorStatus> for Status {
    fn from(e: PublicErrorStatus) -> Self {
        to_status(&e.0)
    }
}

/// Wrapper so `?` converts a `PublicError` into a `Status` in tonic handlers.
#[derive(Debug)]
pub struct PublicErrorStatus(pub PublicError);

impl From<PublicError> for PublicErrorStatus {
    fn from(e: PublicError) -> Self {
        Self(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mapping_round_trips_kinds() {
        let cases = [
            (PublicError::not_found("Node", "x"), Code::NotFound),
            (PublicError::invalid("bad"), Code::InvalidArgument),
            (PublicError::AlreadyExists { message: "dup".into() }, Code::AlreadyExists),
            (PublicError::conflict("c"), Code::FailedPrecondition),
            (PublicError::NodeLocked { node: "n".into(), holder: "h".into() }, Code::Aborted),
            (PublicError::unavailable("u"), Code::Unavailable),
            (PublicError::internal("secret detail"), Code::Internal),
        ];
        for (err, code) in cases {
            let st = to_status(&err);
            assert_eq!(st.code(), code);
            assert!(!st.message().contains("secret detail"));
        }
        assert!(matches!(
            from_status(&Status::invalid_argument("x")),
            PublicError::InvalidRequest { .. }
        ));
    }
}
