//! Funding attempts: one try at paying a scheduled payment.

use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FundingMethod {
    /// A hold on the gateway's clearing account, settled by the charge's
    /// answer: approved posts it, declined voids it.
    Card,
    /// A hold on the gateway's clearing account until the bank's credit.
    BankTransfer,
    /// A hold on the financing partner until it disburses.
    PayLater { partner_id: String },
}

impl FundingMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::BankTransfer => "bank_transfer",
            Self::PayLater { .. } => "pay_later",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptStatus {
    Pending,
    Succeeded,
    Failed,
}

impl AttemptStatus {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Succeeded, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FundingAttempt {
    pub id: Uuid,
    pub escrow_account_id: Uuid,
    pub milestone_id: String,
    pub method: String,
    pub amount_minor: i64,
    pub status: AttemptStatus,
    /// What the ledger took for it; below `amount_minor` after a short credit.
    pub received_minor: Option<i64>,
    pub financing_partner_id: Option<String>,
    pub hold_id: Option<Uuid>,
    pub failure_code: String,
    /// The gateway's id of the credit that settled it.
    pub credit_reference: Option<String>,
    pub expires_at: time::OffsetDateTime,
    /// The idempotency key the gateway was (or is being) asked under.
    pub gateway_key: Option<String>,
    /// When the gateway's answer to the start call was recorded; unset while
    /// the call's outcome is unknown.
    pub answered_at: Option<time::OffsetDateTime>,
}

impl FundingAttempt {
    /// Whether the gateway's answer to the start call is still unknown.
    pub fn awaits_answer(&self) -> bool {
        self.answered_at.is_none()
    }
}

/// What a gateway confirmation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreditOutcome {
    /// It settled the pending attempt for `posted` (at most the amount due);
    /// anything above went to suspense.
    Applied { posted: i64, to_suspense: i64 },
    /// The attempt had ended (failed, expired, closed) or was settled by
    /// another credit: all of it went to suspense, to be refunded.
    Suspended { to_suspense: i64 },
    /// Seen before: nothing changed.
    Duplicate,
}
