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
    /// A caller who may see the resource but not do this to it (a party in
    /// the wrong position, e.g. the supplier on a buyer's step). A caller who
    /// may not see the resource at all is told [`ServiceError::unseen`].
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

/// At most this many violations are reported in the `BadRequest` detail; the
/// rest are counted.
pub const MAX_LISTED_VIOLATIONS: usize = 50;
/// ...and at most about this many bytes of them, and of the message: the
/// message travels twice (in `grpc-message` and inside the encoded details),
/// and both must stay far below the 16 KiB of headers gRPC clients accept by
/// default (a draft with 10,000 bad line items once answered with 515 KB of
/// metadata that clients refused to read).
const MAX_DETAIL_BYTES: usize = 4 * 1024;
const MAX_MESSAGE_BYTES: usize = 2 * 1024;
/// A field path or description longer than this is cut (a field path can
/// echo a client's map key).
const MAX_VIOLATION_TEXT: usize = 256;
/// ErrorInfo reason when violations were left out of the detail.
pub const VIOLATIONS_TRUNCATED: &str = "VIOLATIONS_TRUNCATED";

/// The first violations, as many as fit `max_count` and about `max_bytes`
/// (always at least one), each text cut to a bounded length.
fn listed(
    violations: &[FieldViolation],
    max_count: usize,
    max_bytes: usize,
) -> Vec<FieldViolation> {
    let mut listed = Vec::new();
    let mut bytes = 0;
    for v in violations.iter().take(max_count) {
        let v = FieldViolation {
            field: truncate_chars(&v.field, MAX_VIOLATION_TEXT),
            description: truncate_chars(&v.description, MAX_VIOLATION_TEXT),
        };
        bytes += v.field.len() + v.description.len() + 4;
        if bytes > max_bytes && !listed.is_empty() {
            break;
        }
        listed.push(v);
    }
    listed
}

/// `text` cut to at most `max` characters, with "..." marking a cut.
fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}...", &text[..end]),
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    let listed = listed(violations, MAX_LISTED_VIOLATIONS, MAX_MESSAGE_BYTES);
    let mut text = listed
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if listed.len() < violations.len() {
        text.push_str(&format!(
            "; and {} more ({} in all)",
            violations.len() - listed.len(),
            violations.len()
        ));
    }
    text
}

impl ServiceError {
    pub fn not_found(resource: &'static str, id: impl fmt::Display) -> Self {
        Self::NotFound {
            resource,
            id: id.to_string(),
        }
    }

    /// What a caller is told about `resource` `id` that exists but that it
    /// may not see (it is no party to it): exactly what an id that does not
    /// exist is told, [`ServiceError::not_found`] (`NOT_FOUND`, the same
    /// message, no details), so that nobody learns which ids exist by asking
    /// for ones it may not see. `resource` and `id` must be what the lookup of
    /// a missing id names (the same words, the id as the caller sent it or as
    /// storage prints it).
    pub fn unseen(resource: &'static str, id: impl fmt::Display) -> Self {
        Self::not_found(resource, id)
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
                let listed = listed(&violations, MAX_LISTED_VIOLATIONS, MAX_DETAIL_BYTES);
                let left_out = violations.len() - listed.len();
                let mut details = ErrorDetails::with_bad_request(
                    listed
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                if left_out > 0 {
                    details.set_error_info(
                        VIOLATIONS_TRUNCATED,
                        ERROR_DOMAIN,
                        [
                            (
                                "listed".to_owned(),
                                (violations.len() - left_out).to_string(),
                            ),
                            ("total".to_owned(), violations.len().to_string()),
                        ]
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                    );
                }
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

    /// Whether a violation of `field` was recorded.
    pub fn mentions(&self, field: &str) -> bool {
        self.0.iter().any(|v| v.field == field)
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

    /// What travels in headers: the message (at most 3 bytes per byte when
    /// percent-encoded, but these are ASCII) and the base64 of the details.
    fn wire_bytes(status: &Status) -> usize {
        status.message().len() + status.details().len().div_ceil(3) * 4
    }

    #[test]
    fn ten_thousand_violations_are_answered_in_a_bounded_size() {
        let mut v = Violations::new();
        for i in 0..10_000 {
            v.add(
                format!("line_items[{i}].sku"),
                "must be unique within the draft",
            );
        }
        v.add(
            "x".repeat(5_000),
            "a field path echoing a client's long key",
        );
        let status: Status = v.finish(()).unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("invalid request: line_items[0].sku:")
        );
        assert!(
            status.message().ends_with(" more (10001 in all)"),
            "{}",
            status.message()
        );
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations.len(), MAX_LISTED_VIOLATIONS);
        assert_eq!(bad.field_violations[49].field, "line_items[49].sku");
        let info = details
            .error_info()
            .expect("the count of what was left out");
        assert_eq!(info.reason, VIOLATIONS_TRUNCATED);
        assert_eq!(info.metadata["listed"], "50");
        assert_eq!(info.metadata["total"], "10001");
        assert!(
            wire_bytes(&status) < 12 * 1024,
            "{} bytes of error metadata",
            wire_bytes(&status)
        );
    }

    #[test]
    fn long_violation_texts_are_cut_and_the_bytes_bounded() {
        let mut v = Violations::new();
        for i in 0..40 {
            v.add(format!("{i}:{}", "k".repeat(1_000)), "d".repeat(1_000));
        }
        let status: Status = v.finish(()).unwrap_err().into();
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert!(bad.field_violations.len() < 40);
        assert!(bad.field_violations[0].field.ends_with("..."));
        assert!(bad.field_violations[0].description.chars().count() <= 259);
        assert!(
            wire_bytes(&status) < 12 * 1024,
            "{} bytes of error metadata",
            wire_bytes(&status)
        );
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
    fn an_unseen_resource_is_answered_as_a_missing_one() {
        let unseen = Status::from(ServiceError::unseen("contract", "c-1"));
        let missing = Status::from(ServiceError::not_found("contract", "c-1"));
        assert_eq!(unseen.code(), Code::NotFound);
        assert_eq!(unseen.code(), missing.code());
        assert_eq!(unseen.message(), missing.message());
        assert_eq!(unseen.message(), "contract c-1 not found");
        assert_eq!(unseen.details(), missing.details());
        assert!(unseen.details().is_empty());
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
