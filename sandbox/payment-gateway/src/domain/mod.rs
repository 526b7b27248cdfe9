//! The sandbox gateway's rules, with no I/O: operations and their states,
//! what each request is and how it is checked, what a card token does, how
//! much a refund may take back, which webhook each settlement sends, how
//! redeliveries back off, and the faults (`faults`).

pub mod faults;
pub mod requests;

use std::time::Duration;

pub use faults::{FailNth, FaultSettings, Rng};
pub use requests::{
    BankTransferRequest, ChargeRequest, PayLaterRequest, PayoutRequest, RefundRequest, Request,
};

/// What an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Charge,
    BankTransfer,
    PayLater,
    Payout,
    Refund,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Charge,
        Kind::BankTransfer,
        Kind::PayLater,
        Kind::Payout,
        Kind::Refund,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Charge => "charge",
            Kind::BankTransfer => "bank_transfer",
            Kind::PayLater => "pay_later",
            Kind::Payout => "payout",
            Kind::Refund => "refund",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The prefix of its ids (`ch_...`).
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Charge => "ch",
            Kind::BankTransfer => "bt",
            Kind::PayLater => "pl",
            Kind::Payout => "po",
            Kind::Refund => "re",
        }
    }

    /// Money leaving the gateway: settled by the settlement worker after
    /// `GATEWAY_SANDBOX_SETTLE_AFTER` unless `hold_settlement` is on.
    pub fn is_outgoing(self) -> bool {
        matches!(self, Kind::Payout | Kind::Refund)
    }

    /// Money a refund may be sent back against, once it was collected.
    pub fn is_refundable_source(self) -> bool {
        matches!(self, Kind::Charge | Kind::BankTransfer | Kind::PayLater)
    }

    /// The webhook sent when an operation of this kind succeeds or fails.
    pub fn event_type(self, succeeded: bool) -> &'static str {
        match (self, succeeded) {
            (Kind::Charge, true) => "payment.succeeded",
            (Kind::Charge, false) => "payment.failed",
            (Kind::BankTransfer, true) => "bank_transfer.credited",
            // A bank transfer never fails at the gateway: it is credited or never arrives.
            (Kind::BankTransfer, false) => "bank_transfer.failed",
            (Kind::PayLater, true) => "pay_later.disbursed",
            (Kind::PayLater, false) => "pay_later.rejected",
            (Kind::Payout, true) => "payout.paid",
            (Kind::Payout, false) => "payout.failed",
            (Kind::Refund, true) => "refund.paid",
            (Kind::Refund, false) => "refund.failed",
        }
    }
}

/// Where an operation stands.
///
/// | from \ to | pending | succeeded | failed |
/// |---|---|---|---|
/// | (new) | bank transfer, Pay Later, payout, refund | an approved charge | a declined charge |
/// | pending | - | credited, disbursed, paid | rejected, failed |
/// | succeeded | - | - | - |
/// | failed | - | - | - |
///
/// A settled operation never changes again: a second credit or "pay" of the
/// same operation is refused (409 `not_pending`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Status::Pending, Status::Succeeded, Status::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Whether the table above allows `self -> to`.
    pub fn can_become(self, to: Status) -> bool {
        self == Status::Pending && to != Status::Pending
    }
}

/// Why a request got no operation (mapped to an HTTP status by `api`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the request is malformed (`invalid_request`, `idempotency_key_missing`).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// 401: the API key is missing or wrong.
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// 404 `resource_missing`: no such key or id.
    #[error("{0}")]
    NotFound(String),
    /// 404 `no_such_route`: no such path (so a client with a wrong base URL
    /// never takes it for "no such key").
    #[error("no such path")]
    NoRoute,
    /// 409: the operation is no longer pending.
    #[error("{0}")]
    NotPending(String),
    /// 422: well-formed but refused (`idempotency_key_reused`, a refund's bound).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// 503, before acting: the same key may be sent again.
    #[error("{0}")]
    Unavailable(String),
    /// 500: the gateway broke; it may or may not have acted.
    #[error("internal error")]
    Internal,
}

impl Refusal {
    pub fn invalid(message: impl Into<String>) -> Self {
        Refusal::Invalid {
            code: "invalid_request",
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid { code, .. } | Refusal::Unprocessable { code, .. } => code,
            Refusal::Unauthorized => "unauthorized",
            Refusal::NotFound(_) => "resource_missing",
            Refusal::NoRoute => "no_such_route",
            Refusal::NotPending(_) => "not_pending",
            Refusal::Unavailable(_) => "gateway_unavailable",
            Refusal::Internal => "internal_error",
        }
    }

    /// 422 `operation_voided`: the key was voided; nothing is done under it.
    pub fn voided(key: &str) -> Self {
        Refusal::Unprocessable {
            code: "operation_voided",
            message: format!("the key {key} was voided: nothing is done under it"),
        }
    }

    pub fn key_reused() -> Self {
        Refusal::Unprocessable {
            code: "idempotency_key_reused",
            message: "this idempotency key was used with another request".into(),
        }
    }
}

/// What a card token does (the table of `escrow::gateway::memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardDecision {
    Approve,
    Decline {
        code: &'static str,
        message: &'static str,
    },
    /// 503 before acting: nothing charged.
    GatewayError,
    /// Charged and committed, then the answer is held longer than any client waits.
    ApproveThenHang,
}

pub fn card_decision(token: &str) -> CardDecision {
    match token {
        "tok_gateway_error" => CardDecision::GatewayError,
        "tok_timeout" => CardDecision::ApproveThenHang,
        "tok_declined" => CardDecision::Decline {
            code: "card_declined",
            message: "the card was declined",
        },
        "tok_insufficient_funds" => CardDecision::Decline {
            code: "insufficient_funds",
            message: "insufficient funds",
        },
        token if !token.starts_with("tok_") => CardDecision::Decline {
            code: "invalid_token",
            message: "the card token is unknown",
        },
        _ => CardDecision::Approve,
    }
}

/// The financing partner that never answers.
pub const UNAVAILABLE_PARTNER: &str = "partner_unavailable";

/// Money a source took in, as a refund sees it: a charge approved, a bank
/// transfer credited (what arrived), Pay Later disbursed. Nothing while pending.
pub fn collected(kind: Kind, status: Status, amount_minor: i64, settled_minor: Option<i64>) -> i64 {
    match (kind, status) {
        (Kind::Charge, Status::Succeeded) => amount_minor,
        (Kind::BankTransfer | Kind::PayLater, Status::Succeeded) => {
            settled_minor.unwrap_or(amount_minor)
        }
        _ => 0,
    }
}

/// Whether a refund of `amount` fits in what the source collected beside the
/// refunds already sent against it (pending or paid; failed ones gave it back).
///
/// # Errors
/// The refusal, naming what is left.
pub fn check_refund(collected: i64, already_refunded: i64, amount: i64) -> Result<(), Refusal> {
    let left = collected.saturating_sub(already_refunded);
    if amount > left {
        return Err(Refusal::Unprocessable {
            code: "refund_exceeds_collected",
            message: format!(
                "the source collected {collected} and {already_refunded} is refunded already: at most {} may be refunded",
                left.max(0)
            ),
        });
    }
    Ok(())
}

/// The wait before redelivery number `attempt` (1 after the first failure):
/// `base * 2^(attempt-1)`, at most `cap`, and at least what the receiver's
/// `Retry-After` asked (itself capped).
pub fn retry_delay(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let backoff = base.saturating_mul(1 << exponent).min(cap);
    backoff.max(retry_after.unwrap_or_default().min(cap))
}

/// A new id for an operation of `kind` (or an event: `evt`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// The reference a buyer writes on a bank transfer: `TA` and 12 characters of
/// the transfer id's random part.
pub fn payment_reference(transfer_id: &str) -> String {
    let tail = &transfer_id[transfer_id.len().saturating_sub(12)..];
    format!("TA{}", tail.to_ascii_uppercase())
}

pub const BENEFICIARY_NAME: &str = "Trade Assurance Escrow (sandbox)";
pub const IBAN: &str = "DE89370400440532013000";
pub const BIC: &str = "COBADEFFXXX";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_transition_follows_the_table() {
        use Status::*;
        let allowed = [(Pending, Succeeded), (Pending, Failed)];
        for from in [Pending, Succeeded, Failed] {
            for to in [Pending, Succeeded, Failed] {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn kinds_and_statuses_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("loan"), None);
        for status in [Status::Pending, Status::Succeeded, Status::Failed] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
    }

    #[test]
    fn card_tokens_behave_as_the_in_memory_gateway() {
        let declined = |code| match card_decision(code) {
            CardDecision::Decline { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(card_decision("tok_visa"), CardDecision::Approve);
        assert_eq!(card_decision("tok_mastercard"), CardDecision::Approve);
        assert_eq!(declined("tok_declined"), "card_declined");
        assert_eq!(declined("tok_insufficient_funds"), "insufficient_funds");
        assert_eq!(declined("4242424242424242"), "invalid_token");
        assert_eq!(
            card_decision("tok_gateway_error"),
            CardDecision::GatewayError
        );
        assert_eq!(card_decision("tok_timeout"), CardDecision::ApproveThenHang);
    }

    #[test]
    fn refunds_are_bounded_by_what_the_source_collected() {
        assert_eq!(collected(Kind::Charge, Status::Succeeded, 100, None), 100);
        assert_eq!(collected(Kind::Charge, Status::Failed, 100, None), 0);
        assert_eq!(
            collected(Kind::BankTransfer, Status::Succeeded, 100, Some(80)),
            80
        );
        assert_eq!(collected(Kind::BankTransfer, Status::Pending, 100, None), 0);
        assert_eq!(collected(Kind::PayLater, Status::Succeeded, 100, None), 100);
        assert!(check_refund(100, 0, 100).is_ok());
        assert!(check_refund(100, 60, 40).is_ok());
        let refused = check_refund(100, 60, 41).unwrap_err();
        assert_eq!(refused.code(), "refund_exceeds_collected");
        assert!(refused.to_string().contains("at most 40"), "{refused}");
        assert!(check_refund(0, 0, 1).is_err());
    }

    #[test]
    fn events_name_the_kind_and_the_outcome() {
        for (kind, ok, ko) in [
            (Kind::Charge, "payment.succeeded", "payment.failed"),
            (Kind::PayLater, "pay_later.disbursed", "pay_later.rejected"),
            (Kind::Payout, "payout.paid", "payout.failed"),
            (Kind::Refund, "refund.paid", "refund.failed"),
        ] {
            assert_eq!(kind.event_type(true), ok);
            assert_eq!(kind.event_type(false), ko);
        }
        assert_eq!(
            Kind::BankTransfer.event_type(true),
            "bank_transfer.credited"
        );
    }

    #[test]
    fn redelivery_backs_off_exponentially_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        let delays: Vec<_> = (1..=9)
            .map(|n| retry_delay(n, base, cap, None).as_millis())
            .collect();
        assert_eq!(
            delays,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );
        assert_eq!(retry_delay(u32::MAX, base, cap, None), cap);
        // Retry-After lengthens a short backoff, never beyond the cap.
        assert_eq!(
            retry_delay(1, base, cap, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            retry_delay(1, base, cap, Some(Duration::from_secs(600))),
            cap
        );
    }

    #[test]
    fn payment_references_come_from_the_random_part_of_the_id() {
        let a = new_id("bt");
        let b = new_id("bt");
        assert!(a.starts_with("bt_"));
        let (ra, rb) = (payment_reference(&a), payment_reference(&b));
        assert_eq!(ra.len(), 14);
        assert!(ra.starts_with("TA"));
        assert_ne!(ra, rb);
    }
}
