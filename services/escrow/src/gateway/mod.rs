//! The payment gateway escrow pays in and out through: a remote system that
//! can be slow, time out after acting, fail part-way and report late, twice
//! or out of order.
//!
//! Every call carries an idempotency key and escrow's own id of the record it
//! is about (`client_reference`: a funding attempt's or a gateway transfer's
//! id). A gateway answers the same key with the same operation without moving
//! money again, echoes the client reference in every webhook about that
//! operation, and answers [`PaymentGateway::operation`] by key, so a call
//! whose answer was lost is resolved by asking, never by guessing.
//!
//! Adapters: [`http::HttpGateway`] speaks to a hosted gateway (and to the
//! sandbox process, `sandbox/payment-gateway`) over HTTP/JSON;
//! [`memory::InMemoryGateway`] answers in-process for fast tests. Both pass
//! the same suite (`tests/gateway_contract.rs`). Its webhooks: [`signature`]
//! (checked first) and [`event`].

pub mod event;
pub mod http;
pub mod memory;
pub mod signature;

use ta_runtime::{ServiceError, money::Money};

/// Why a call has no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway said it did nothing (refused the connection, a 5xx that
    /// says so, "try again"): the same key may be sent again.
    #[error("the payment gateway is unavailable: {0}")]
    Unavailable(String),
    /// No answer in time, or one that cannot be read: the gateway may have
    /// acted. Resolved by [`PaymentGateway::operation`] or by sending the
    /// same key again.
    #[error("the payment gateway's answer is unknown: {0}")]
    Unknown(String),
    /// The gateway refused the request itself (bad input, a key reused for
    /// another request): sending it again will not help.
    #[error("the payment gateway refused the request ({code}): {message}")]
    Rejected { code: String, message: String },
}

impl GatewayError {
    /// Whether the gateway may have acted on the call.
    pub fn may_have_acted(&self) -> bool {
        matches!(self, GatewayError::Unknown(_))
    }
}

impl From<GatewayError> for ServiceError {
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::Rejected { .. } => ServiceError::FailedPrecondition(error.to_string()),
            _ => ServiceError::Unavailable(format!("{error}; retry with the same idempotency key")),
        }
    }
}

/// A card charge's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardOutcome {
    Approved,
    Declined { code: String, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardCharge {
    /// The gateway's payment id.
    pub reference: String,
    pub outcome: CardOutcome,
}

/// Where the buyer sends a bank transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankInstructions {
    pub reference: String,
    pub beneficiary_name: String,
    pub iban: String,
    pub bic: String,
    pub payment_reference: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayLaterApplication {
    pub reference: String,
    pub loan_reference: String,
}

/// Where an operation stands at the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationStatus {
    /// Accepted, not settled yet (a bank transfer awaiting the credit, a
    /// payout on its way).
    Pending,
    /// Settled: a charge approved, a credit received, a payout or refund paid.
    Succeeded,
    /// It failed or was declined; no money moved.
    Failed { code: String, message: String },
}

/// Money sent out: a payout to a supplier or a refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingTransfer {
    /// The gateway's transfer id, which its webhooks name.
    pub reference: String,
    pub status: OperationStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    Charge,
    BankTransfer,
    PayLater,
    Payout,
    Refund,
}

/// What the gateway knows of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub kind: OperationKind,
    pub reference: String,
    pub client_reference: String,
    pub amount: Money,
    /// What arrived for a bank transfer or Pay Later, once it did.
    pub settled_minor: Option<i64>,
    pub status: OperationStatus,
    /// A bank transfer's instructions, as the start call answered them.
    pub bank_instructions: Option<BankInstructions>,
    /// A Pay Later operation's loan.
    pub loan_reference: Option<String>,
}

/// A payment gateway. Each call is idempotent per `key`.
#[tonic::async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn charge_card(
        &self,
        key: &str,
        client_reference: &str,
        card_token: &str,
        amount: Money,
    ) -> Result<CardCharge, GatewayError>;

    async fn start_bank_transfer(
        &self,
        key: &str,
        client_reference: &str,
        payer_name: &str,
        amount: Money,
    ) -> Result<BankInstructions, GatewayError>;

    async fn start_pay_later(
        &self,
        key: &str,
        client_reference: &str,
        partner_id: &str,
        repayment_months: u32,
        amount: Money,
    ) -> Result<PayLaterApplication, GatewayError>;

    /// Pays a supplier (`beneficiary`, the supplier's id).
    async fn send_payout(
        &self,
        key: &str,
        client_reference: &str,
        beneficiary: &str,
        amount: Money,
    ) -> Result<OutgoingTransfer, GatewayError>;

    /// Refunds `amount` back the way it came: against the charge, bank
    /// transfer or disbursement the gateway calls `source_reference`.
    async fn refund(
        &self,
        key: &str,
        client_reference: &str,
        source_reference: &str,
        amount: Money,
    ) -> Result<OutgoingTransfer, GatewayError>;

    /// What the gateway did under `key`; `None` when it never saw the key
    /// (so nothing moved and the call may be sent, or given up, safely).
    async fn operation(&self, key: &str) -> Result<Option<Operation>, GatewayError>;

    /// What the gateway did under `key`, or, when it never saw the key, the
    /// key voided so that nothing will ever be done under it (`None`): a
    /// call under it still on its way (held in a paused gateway, a retry in
    /// flight) is refused when it arrives. Only this makes "never saw it"
    /// final enough to fail a payment.
    async fn void_unless_done(&self, key: &str) -> Result<Option<Operation>, GatewayError>;
}
