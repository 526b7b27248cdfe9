//! The one mapping from service errors to gRPC status codes.
//!
//! Domain and storage code return [`ServiceError`]; transport code converts it
//! with `?` into a `tonic::Status`. `Internal` never reaches the caller with its
//! text: it is logged with the trace id, and the caller gets that trace id only.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::telemetry::current_trace_id;

/// The `domain` of the platform's google.rpc.ErrorInfo details.
pub const ERROR_DOMAIN: &str = "tradeassurance";
/// ErrorInfo reason: an idempotency key reused for a different request.
pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// One offending request field, reported in `google.rpc.BadRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    /// A refusal other services act on: `reason` is a stable code (e.g.
    /// `TA_LIMIT_EXCEEDED`) sent as google.rpc.PreconditionFailure, `subject`
    /// what it is about (e.g. `suppliers/<id>`).
    #[error("{message}")]
    Refused {
        reason: &'static str,
        subject: String,
        message: String,
    },
    /// The idempotency key was used before for a different request of the
    /// same method: a client bug, not a duplicate. INVALID_ARGUMENT with the
    /// machine-readable reason `IDEMPOTENCY_KEY_REUSED` (google.rpc.ErrorInfo),
    /// so clients can tell it from a real conflict.
    #[error("idempotency key `{key}` was already used for a different {method} request")]
    IdempotencyKeyReused { key: String, method: String },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A concurrent change won; the client may retry with the same idempotency key.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed while the database worked or waited.
    #[error("the request's deadline passed before the database finished")]
    DeadlineExceeded,
    #[error("{0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ServiceError {
    pub fn not_found(resource: &'static str, id: impl fmt::Display) -> Self {
        Self::NotFound {
            resource,
            id: id.to_string(),
        }
    }

    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    pub fn internal(error: impl fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let message = error.to_string();
        match error {
            ServiceError::InvalidArgument(violations) => {
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::NotFound { .. } => Status::not_found(message),
            ServiceError::FailedPrecondition(_) => Status::failed_precondition(message),
            ServiceError::Refused {
                reason, subject, ..
            } => Status::with_error_details(
                Code::FailedPrecondition,
                message.clone(),
                ErrorDetails::with_precondition_failure_violation(reason, subject, message),
            ),
            ServiceError::IdempotencyKeyReused { method, .. } => {
                let mut details = ErrorDetails::with_error_info(
                    IDEMPOTENCY_KEY_REUSED,
                    ERROR_DOMAIN,
                    [("method".to_owned(), method)]
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                );
                details.add_bad_request_violation(
                    "idempotency_key",
                    "was already used for a different request; choose a new key per request",
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::PermissionDenied(_) => Status::permission_denied(message),
            ServiceError::AlreadyExists(_) => Status::already_exists(message),
            ServiceError::Aborted(_) => Status::aborted(message),
            ServiceError::Unavailable(_) => Status::unavailable(message),
            ServiceError::DeadlineExceeded => Status::deadline_exceeded(message),
            ServiceError::Internal(detail) => {
                let trace_id = current_trace_id();
                tracing::error!(error = %detail, %trace_id, "internal error");
                Status::internal(format!("internal error; trace id {trace_id}"))
            }
        }
    }
}

/// Storage errors by kind and SQLSTATE. A database that cannot be reached,
/// is restarting, or has no room for us is `UNAVAILABLE` (the work rolled back;
/// retry with the same key); a lost race is `ABORTED`; a statement or lock wait
/// cut short by the request's deadline is `DEADLINE_EXCEEDED`; anything else
/// is internal.
impl From<sqlx::Error> for ServiceError {
    fn from(error: sqlx::Error) -> Self {
        let unavailable = || Self::Unavailable("the database is unavailable; retry later".into());
        match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => unavailable(),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some(code) if is_connection_level(code) => unavailable(),
                // serialization_failure, deadlock_detected
                Some("40001" | "40P01") => {
                    Self::Aborted("a concurrent change won; retry the request".into())
                }
                // query_canceled (statement_timeout), lock_not_available
                // (lock_timeout): both are set from the request's deadline.
                Some("57014" | "55P03") => Self::DeadlineExceeded,
                _ => Self::Internal(error.to_string()),
            },
            _ => Self::Internal(error.to_string()),
        }
    }
}

/// SQLSTATEs that say the connection or the server is gone or full, not that
/// the statement is wrong: class 08 (connection exception), 57P01-57P03
/// (admin shutdown, crash shutdown, cannot connect now), class 53
/// (insufficient resources, e.g. too many connections).
fn is_connection_level(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// For inserts that may meet a concurrent twin: a unique violation becomes the
/// caller's own conflict (with a message naming what exists); any other error
/// maps as usual.
pub trait OrConflict<T> {
    fn or_conflict(self, conflict: impl FnOnce() -> ServiceError) -> Result<T, ServiceError>;
}

impl<T> OrConflict<T> for Result<T, sqlx::Error> {
    fn or_conflict(self, conflict: impl FnOnce() -> ServiceError) -> Result<T, ServiceError> {
        self.map_err(|error| match error {
            sqlx::Error::Database(db) if db.is_unique_violation() => conflict(),
            other => other.into(),
        })
    }
}

/// Collects field violations of one request, to report all of them at once.
#[derive(Default, Debug)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Records a violation unless `ok` holds.
    pub fn require(&mut self, ok: bool, field: &str, description: &str) {
        if !ok {
            self.add(field, description);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many violations were recorded so far (to tell whether a part of a
    /// request added any).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn extend(&mut self, more: impl IntoIterator<Item = FieldViolation>) {
        self.0.extend(more);
    }

    /// The `InvalidArgument` error reporting every violation collected.
    pub fn into_error(self) -> ServiceError {
        ServiceError::InvalidArgument(self.0)
    }

    /// The value a field parsed to, when nothing was violated. A parser
    /// returns `None` only after recording why; `field` covers one that did not.
    pub fn finish_some<T>(mut self, field: &str, value: Option<T>) -> Result<T, ServiceError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            None if self.0.is_empty() => {
                self.add(field, "is invalid");
                Err(ServiceError::InvalidArgument(self.0))
            }
            _ => Err(ServiceError::InvalidArgument(self.0)),
        }
    }

    /// `Ok(value)` when nothing was violated, else `InvalidArgument`.
    pub fn finish<T>(self, value: T) -> Result<T, ServiceError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ServiceError::InvalidArgument(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_field_violation() {
        let mut v = Violations::new();
        v.add("legal_name", "must not be empty");
        v.add("contacts[0].email", "is not an email address");
        let status: Status = v.finish(()).unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("legal_name: must not be empty"));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["legal_name", "contacts[0].email"]);
    }

    #[test]
    fn refusals_carry_a_machine_readable_reason() {
        let status: Status = ServiceError::Refused {
            reason: "TA_LIMIT_EXCEEDED",
            subject: "suppliers/s-1".into(),
            message: "cannot reserve cover: too much".into(),
        }
        .into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "cannot reserve cover: too much");
        let details = status.get_error_details();
        let violation = &details.precondition_failure().expect("details").violations[0];
        assert_eq!(violation.r#type, "TA_LIMIT_EXCEEDED");
        assert_eq!(violation.subject, "suppliers/s-1");
    }

    #[test]
    fn internal_text_never_reaches_the_caller() {
        let status: Status = ServiceError::internal("relation secret_table does not exist").into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret_table"));
        assert!(status.message().contains("trace id"));
    }

    #[test]
    fn connection_level_sqlstates_are_told_from_statement_errors() {
        for code in [
            "08000", "08003", "08006", "57P01", "57P02", "57P03", "53300", "53100",
        ] {
            assert!(is_connection_level(code), "{code}");
        }
        for code in ["23505", "40001", "57014", "55P03", "42P01", "22P02"] {
            assert!(!is_connection_level(code), "{code}");
        }
    }

    #[test]
    fn a_lost_connection_is_unavailable_never_internal() {
        let lost = [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            sqlx::Error::Protocol("unexpected end of stream".into()),
        ];
        for error in lost {
            let status = Status::from(ServiceError::from(error));
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
    }

    #[test]
    fn each_kind_has_its_code() {
        let cases = [
            (ServiceError::not_found("supplier", "s-1"), Code::NotFound),
            (
                ServiceError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (
                ServiceError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (ServiceError::AlreadyExists("x".into()), Code::AlreadyExists),
            (ServiceError::Aborted("x".into()), Code::Aborted),
            (ServiceError::Unavailable("x".into()), Code::Unavailable),
            (ServiceError::DeadlineExceeded, Code::DeadlineExceeded),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
        assert_eq!(
            Status::from(ServiceError::not_found("supplier", "s-1")).message(),
            "supplier s-1 not found"
        );
    }
}
