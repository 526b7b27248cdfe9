//! The supplier registry's domain: pure types and rules, no I/O.
//!
//! Verification, by action (rows) and current state (columns); `-` is refused
//! with FAILED_PRECONDITION naming the current state:
//!
//! | action  | unverified | submitted | verified | rejected  |
//! |---------|------------|-----------|----------|-----------|
//! | submit  | submitted  | -         | -        | submitted |
//! | verify  | -          | verified  | -        | -         |
//! | reject  | -          | rejected  | -        | -         |
//!
//! Enrolment needs `verified`. The Trade Assurance badge is derived: verified,
//! enrolled and active. Cover can be reserved only under the badge, in the TA
//! limit's currency, within the remaining limit.

mod validation;

use ta_runtime::{ServiceError, money::Money};
use time::OffsetDateTime;
use uuid::Uuid;

pub use validation::{NewSupplier, is_storable, validate_contacts, validate_reference};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contact {
    pub name: String,
    pub email: String,
    pub phone: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    Unverified,
    Submitted,
    Verified,
    Rejected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationAction {
    Submit,
    Verify,
    Reject,
}

impl Verification {
    pub const ALL: [Self; 4] = [
        Self::Unverified,
        Self::Submitted,
        Self::Verified,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unverified => "unverified",
            Self::Submitted => "submitted",
            Self::Verified => "verified",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// The transition table above.
    pub fn after(self, action: VerificationAction) -> Option<Self> {
        use Verification::*;
        use VerificationAction::*;
        match (self, action) {
            (Unverified | Rejected, Submit) => Some(Submitted),
            (Submitted, Verify) => Some(Verified),
            (Submitted, Reject) => Some(Rejected),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    Restricted,
    Suspended,
}

impl Status {
    pub const ALL: [Self; 3] = [Self::Active, Self::Restricted, Self::Suspended];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Restricted => "restricted",
            Self::Suspended => "suspended",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// When penalty points restrict a supplier, and by how much its TA limit drops.
#[derive(Clone, Copy, Debug)]
pub struct PenaltyPolicy {
    pub restriction_threshold: u32,
    /// Percentage (0-100) taken off the TA limit when the threshold is reached.
    pub limit_reduction_percent: u8,
}

/// A supplier's Trade Assurance cover, all in the limit's currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cover {
    pub limit: Money,
    pub reserved: Money,
    pub remaining: Money,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Supplier {
    pub id: Uuid,
    pub owner_principal_id: String,
    pub legal_name: String,
    pub country_code: String,
    pub business_licence_number: String,
    pub contacts: Vec<Contact>,
    pub verification: Verification,
    pub verification_rejection_reason: String,
    pub status: Status,
    pub status_reason: String,
    /// The TA limit; `None` until enrolled.
    pub ta_limit: Option<Money>,
    pub cover_reserved_minor: i64,
    pub rating_sum: i64,
    pub review_count: i64,
    pub inquiry_count: i64,
    pub replied_inquiry_count: i64,
    pub penalty_points: i32,
    /// When the verification was last submitted; `None` if it never was.
    pub verification_submitted_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

fn refused(action: &str, state: impl std::fmt::Display) -> ServiceError {
    ServiceError::FailedPrecondition(format!("cannot {action}: {state}"))
}

impl Supplier {
    pub fn register(new: NewSupplier, owner_principal_id: String, now: OffsetDateTime) -> Self {
        Self {
            id: Uuid::now_v7(),
            owner_principal_id,
            legal_name: new.legal_name,
            country_code: new.country_code,
            business_licence_number: new.business_licence_number,
            contacts: new.contacts,
            verification: Verification::Unverified,
            verification_rejection_reason: String::new(),
            status: Status::Active,
            status_reason: String::new(),
            ta_limit: None,
            cover_reserved_minor: 0,
            rating_sum: 0,
            review_count: 0,
            inquiry_count: 0,
            replied_inquiry_count: 0,
            penalty_points: 0,
            verification_submitted_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn enrolled(&self) -> bool {
        self.ta_limit.is_some()
    }

    /// Verified, enrolled and active.
    pub fn has_badge(&self) -> bool {
        self.verification == Verification::Verified
            && self.enrolled()
            && self.status == Status::Active
    }

    /// The TA limit, the cover reserved and what remains; `None` until enrolled.
    pub fn cover(&self) -> Option<Cover> {
        self.ta_limit.map(|limit| Cover {
            limit,
            reserved: Money::new(self.cover_reserved_minor, limit.currency),
            // A lowered limit may sit below what is already reserved.
            remaining: Money::new(
                limit
                    .amount_minor
                    .saturating_sub(self.cover_reserved_minor)
                    .max(0),
                limit.currency,
            ),
        })
    }

    /// Average rating times 100, rounded half up; 0 without reviews.
    pub fn average_rating_centi(&self) -> u32 {
        if self.review_count == 0 {
            return 0;
        }
        let centi = (self.rating_sum * 200 + self.review_count) / (2 * self.review_count);
        u32::try_from(centi).unwrap_or(0)
    }

    /// Replied inquiries per 10 000, rounded down; 0 without inquiries.
    pub fn response_rate_basis_points(&self) -> u32 {
        if self.inquiry_count == 0 {
            return 0;
        }
        u32::try_from(self.replied_inquiry_count * 10_000 / self.inquiry_count).unwrap_or(0)
    }

    fn apply_verification(
        &mut self,
        action: VerificationAction,
        verb: &str,
    ) -> Result<(), ServiceError> {
        let next = self.verification.after(action).ok_or_else(|| {
            refused(
                verb,
                format_args!("verification is {}", self.verification.as_str()),
            )
        })?;
        self.verification = next;
        Ok(())
    }

    /// Submits the verification `at` that time: the queue is in that order.
    pub fn submit_verification(&mut self, at: OffsetDateTime) -> Result<(), ServiceError> {
        self.apply_verification(VerificationAction::Submit, "submit verification")?;
        self.verification_rejection_reason.clear();
        self.verification_submitted_at = Some(at);
        Ok(())
    }

    pub fn verify(&mut self) -> Result<(), ServiceError> {
        self.apply_verification(VerificationAction::Verify, "verify")
    }

    pub fn reject_verification(&mut self, reason: String) -> Result<(), ServiceError> {
        self.apply_verification(VerificationAction::Reject, "reject verification")?;
        self.verification_rejection_reason = reason;
        Ok(())
    }

    pub fn enroll(&mut self, limit: Money) -> Result<(), ServiceError> {
        if self.verification != Verification::Verified {
            return Err(refused(
                "enrol in Trade Assurance",
                format_args!("verification is {}", self.verification.as_str()),
            ));
        }
        if self.enrolled() {
            return Err(refused(
                "enrol in Trade Assurance",
                "the supplier is already enrolled; use SetTradeAssuranceLimit",
            ));
        }
        self.ta_limit = Some(limit);
        Ok(())
    }

    pub fn set_limit(&mut self, limit: Money) -> Result<(), ServiceError> {
        let current = self
            .ta_limit
            .ok_or_else(|| refused("set the TA limit", "the supplier is not enrolled"))?;
        if current.currency != limit.currency {
            return Err(ServiceError::invalid(
                "ta_limit.currency_code",
                format!(
                    "must be {}, the currency of the current limit",
                    current.currency
                ),
            ));
        }
        self.ta_limit = Some(limit);
        Ok(())
    }

    pub fn set_status(&mut self, status: Status, reason: String) {
        self.status = status;
        self.status_reason = reason;
    }

    /// Reserves cover; the caller holds the supplier's row lock. Refusals
    /// carry a reason code the contract service acts on.
    pub fn reserve_cover(&mut self, amount: Money) -> Result<(), ServiceError> {
        if !self.has_badge() {
            return Err(ServiceError::Refused {
                reason: "NO_TRADE_ASSURANCE_BADGE",
                subject: format!("suppliers/{}", self.id),
                message: format!(
                    "cannot reserve cover: the supplier has no Trade Assurance badge \
                     (verification {}, {}, status {})",
                    self.verification.as_str(),
                    if self.enrolled() {
                        "enrolled"
                    } else {
                        "not enrolled"
                    },
                    self.status.as_str()
                ),
            });
        }
        let Some(Cover { remaining, .. }) = self.cover() else {
            return Err(ServiceError::internal(
                "a supplier with the badge has no TA limit",
            ));
        };
        if amount.currency != remaining.currency {
            return Err(ServiceError::invalid(
                "amount.currency_code",
                format!(
                    "must be {}, the currency of the TA limit",
                    remaining.currency
                ),
            ));
        }
        if amount.amount_minor > remaining.amount_minor {
            return Err(ServiceError::Refused {
                reason: "TA_LIMIT_EXCEEDED",
                subject: format!("suppliers/{}", self.id),
                message: format!(
                    "cannot reserve cover: {amount} exceeds the remaining TA limit of {remaining}"
                ),
            });
        }
        self.cover_reserved_minor += amount.amount_minor;
        Ok(())
    }

    /// Gives a reservation's cover back. Releasing more than is reserved means
    /// the counter drifted from the reservations: an error, never clamped away.
    pub fn release_cover(&mut self, amount: Money) -> Result<(), ServiceError> {
        if amount.amount_minor > self.cover_reserved_minor {
            return Err(ServiceError::internal(format!(
                "supplier {}: releasing {amount} but only {} minor units are reserved",
                self.id, self.cover_reserved_minor
            )));
        }
        self.cover_reserved_minor -= amount.amount_minor;
        Ok(())
    }

    pub fn record_review(&mut self, rating: u8) {
        self.rating_sum += i64::from(rating);
        self.review_count += 1;
    }

    pub fn record_inquiry(&mut self) {
        self.inquiry_count += 1;
    }

    pub fn record_inquiry_reply(&mut self) {
        self.replied_inquiry_count += 1;
    }

    /// Adds penalty points. At or above the threshold an active supplier is
    /// restricted (also one an operator reactivated while above it; a
    /// suspended one stays suspended, with its reason); crossing the threshold
    /// lowers the TA limit once. Returns true when this penalty restricted the
    /// supplier.
    pub fn record_penalty(&mut self, points: u32, policy: PenaltyPolicy) -> bool {
        let before = u32::try_from(self.penalty_points).unwrap_or(0);
        let after = before.saturating_add(points);
        self.penalty_points = i32::try_from(after).unwrap_or(i32::MAX);
        let crossed =
            before < policy.restriction_threshold && after >= policy.restriction_threshold;
        let restricted = after >= policy.restriction_threshold && self.status == Status::Active;
        if restricted {
            self.status = Status::Restricted;
            self.status_reason = format!(
                "{after} penalty points reached the restriction threshold of {}",
                policy.restriction_threshold
            );
        }
        if crossed && let Some(limit) = self.ta_limit.as_mut() {
            let keep = 100 - i64::from(policy.limit_reduction_percent.min(100));
            limit.amount_minor =
                limit.amount_minor / 100 * keep + limit.amount_minor % 100 * keep / 100;
        }
        restricted
    }
}

#[cfg(test)]
mod tests;
