//! One escrow account per contract, and its state machine.
//!
//! Status, by action (rows) and current status (columns); `-` is refused
//! with FAILED_PRECONDITION naming the current status:
//!
//! | action        | awaiting_funding | partially_funded | funded  | closed |
//! |---------------|------------------|------------------|---------|--------|
//! | fund_part     | partially_funded | partially_funded | -       | -      |
//! | fund_complete | funded           | funded           | -       | -      |
//! | release       | -                | partially_funded | funded  | -      |
//! | refund        | -                | partially_funded | funded  | -      |
//! | freeze        | awaiting_funding | partially_funded | funded  | -      |
//! | unfreeze      | awaiting_funding | partially_funded | funded  | -      |
//! | close         | closed           | closed           | closed  | -      |
//!
//! `fund_part` is money received that leaves some of the schedule unpaid (a
//! payment, or a bank credit short of it); `fund_complete` pays the last of
//! it. Nothing is held before any funding, so release and refund are refused
//! there. Guards beyond the status:
//! - freezes are per claim and several may be active; while any is, a
//!   release or refund must name an active freezing claim as its purpose
//!   (the claim whose outcome it executes); funding continues;
//! - close needs nothing held and no active freeze. The account does not
//!   close by itself when it runs empty: the contract decides that the last
//!   release was the last (a later milestone may still be funded).
//!
//! Every account has a hold deadline (`hold_until`): the latest time by
//! which the contract will have released or refunded what is held, after
//! the last payment's due date. It is paused while any freeze is active:
//! the first freeze records when the pause began (`hold_paused_at`), and
//! lifting the last one moves `hold_until` later by the time spent frozen.

use std::collections::BTreeSet;

use ta_runtime::{
    ServiceError,
    money::{Currency, Money},
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::ledger::Purpose;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    AwaitingFunding,
    PartiallyFunded,
    Funded,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    FundPart,
    FundComplete,
    Release,
    Refund,
    Freeze,
    Unfreeze,
    Close,
}

impl Action {
    pub const ALL: [Self; 7] = [
        Self::FundPart,
        Self::FundComplete,
        Self::Release,
        Self::Refund,
        Self::Freeze,
        Self::Unfreeze,
        Self::Close,
    ];
}

impl Status {
    pub const ALL: [Self; 4] = [
        Self::AwaitingFunding,
        Self::PartiallyFunded,
        Self::Funded,
        Self::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingFunding => "awaiting_funding",
            Self::PartiallyFunded => "partially_funded",
            Self::Funded => "funded",
            Self::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The transition table above.
    pub fn after(self, action: Action) -> Option<Self> {
        use Action::*;
        use Status::*;
        match (self, action) {
            (AwaitingFunding | PartiallyFunded, FundPart) => Some(PartiallyFunded),
            (AwaitingFunding | PartiallyFunded, FundComplete) => Some(Funded),
            (PartiallyFunded | Funded, Release | Refund) => Some(self),
            (AwaitingFunding | PartiallyFunded | Funded, Freeze | Unfreeze) => Some(self),
            (AwaitingFunding | PartiallyFunded | Funded, Close) => Some(Closed),
            _ => None,
        }
    }
}

/// One payment the contract expects, e.g. the deposit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledPayment {
    pub milestone_id: String,
    pub amount_minor: i64,
    pub due_at: OffsetDateTime,
    /// Received so far; a short bank credit leaves the rest due.
    pub funded_minor: i64,
}

impl ScheduledPayment {
    pub fn remaining_minor(&self) -> i64 {
        self.amount_minor - self.funded_minor
    }

    pub fn is_funded(&self) -> bool {
        self.funded_minor >= self.amount_minor
    }
}

/// Why money leaves escrow: it names what the movement settles, and that
/// purpose moves money at most once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Settles {
    /// A payment milestone's share (the deposit, say).
    Milestone(String),
    /// The goods were accepted (releases only).
    Acceptance,
    /// A claim's outcome.
    Claim(String),
    /// The contract's cancellation (refunds only).
    Cancellation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscrowAccount {
    pub id: Uuid,
    pub contract_id: String,
    pub buyer_principal_id: String,
    pub supplier_id: String,
    pub currency: Currency,
    pub status: Status,
    pub schedule: Vec<ScheduledPayment>,
    /// Claims whose freeze is active.
    pub freezes: BTreeSet<String>,
    /// The hold deadline (see the module docs).
    pub hold_until: OffsetDateTime,
    /// Since when the hold deadline is paused: set while any freeze is active.
    pub hold_paused_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub closed_at: Option<OffsetDateTime>,
}

/// What opening an account needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccount {
    pub contract_id: String,
    pub buyer_principal_id: String,
    pub supplier_id: String,
    pub schedule: Vec<(String, Money, OffsetDateTime)>,
    /// The hold deadline: in the future and after every payment's due date.
    pub hold_until: OffsetDateTime,
}

/// What is wrong with `hold_until` as the hold deadline of a schedule whose
/// last payment is due at `last_due`, at `now`; `None` when it is fine.
pub fn hold_until_problem(
    hold_until: OffsetDateTime,
    last_due: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<String> {
    if hold_until <= now {
        return Some("must be in the future".into());
    }
    match last_due {
        Some(due) if hold_until <= due => {
            Some(format!("must be after the last payment's due date, {due}"))
        }
        _ => None,
    }
}

fn refused(action: &str, state: impl std::fmt::Display) -> ServiceError {
    ServiceError::FailedPrecondition(format!("cannot {action}: {state}"))
}

/// The sum of `amounts`, or `None` when it does not fit an `i64`: money is
/// summed with checked arithmetic, so an absurd amount is an error, never a
/// wrapped number or a panic.
pub fn checked_total(amounts: impl IntoIterator<Item = i64>) -> Option<i64> {
    amounts.into_iter().try_fold(0_i64, i64::checked_add)
}

impl EscrowAccount {
    /// What the schedule adds up to. [`EscrowAccount::open`] refuses a
    /// schedule whose total does not fit, so the error means stored data no
    /// request could have written.
    pub fn expected_total(&self) -> Result<i64, ServiceError> {
        checked_total(self.schedule.iter().map(|p| p.amount_minor)).ok_or_else(|| {
            ServiceError::internal(format!(
                "escrow account {}: the schedule's total overflows an i64",
                self.id
            ))
        })
    }

    /// What has been funded so far (at most the expected total).
    pub fn funded_total(&self) -> Result<i64, ServiceError> {
        checked_total(self.schedule.iter().map(|p| p.funded_minor)).ok_or_else(|| {
            ServiceError::internal(format!(
                "escrow account {}: the funded total overflows an i64",
                self.id
            ))
        })
    }

    /// Validates the schedule (at least one payment, positive amounts, one
    /// currency, distinct milestone ids, a total that fits) and the hold
    /// deadline.
    pub fn open(id: Uuid, new: NewAccount, now: OffsetDateTime) -> Result<Self, ServiceError> {
        let Some((_, first, _)) = new.schedule.first() else {
            return Err(ServiceError::invalid(
                "schedule",
                "needs at least one payment",
            ));
        };
        let currency = first.currency;
        let mut seen = BTreeSet::new();
        let mut schedule = Vec::with_capacity(new.schedule.len());
        for (i, (milestone_id, amount, due_at)) in new.schedule.into_iter().enumerate() {
            if amount.currency != currency {
                return Err(ServiceError::invalid(
                    format!("schedule[{i}].amount.currency_code"),
                    format!("must be {currency}, like the first payment"),
                ));
            }
            if amount.amount_minor <= 0 {
                return Err(ServiceError::invalid(
                    format!("schedule[{i}].amount.amount_minor"),
                    "must be a positive number of minor units",
                ));
            }
            if milestone_id.is_empty() || !seen.insert(milestone_id.clone()) {
                return Err(ServiceError::invalid(
                    format!("schedule[{i}].milestone_id"),
                    "must be set and distinct",
                ));
            }
            schedule.push(ScheduledPayment {
                milestone_id,
                amount_minor: amount.amount_minor,
                due_at,
                funded_minor: 0,
            });
        }
        if checked_total(schedule.iter().map(|p| p.amount_minor)).is_none() {
            return Err(ServiceError::invalid(
                "schedule",
                "the payments add up to more than an amount can hold",
            ));
        }
        let last_due = schedule.iter().map(|p| p.due_at).max();
        if let Some(problem) = hold_until_problem(new.hold_until, last_due, now) {
            return Err(ServiceError::invalid("hold_until", problem));
        }
        Ok(Self {
            id,
            contract_id: new.contract_id,
            buyer_principal_id: new.buyer_principal_id,
            supplier_id: new.supplier_id,
            currency,
            status: Status::AwaitingFunding,
            schedule,
            freezes: BTreeSet::new(),
            hold_until: new.hold_until,
            hold_paused_at: None,
            created_at: now,
            closed_at: None,
        })
    }

    fn step(&mut self, action: Action, verb: &str) -> Result<(), ServiceError> {
        self.status = self.status.after(action).ok_or_else(|| {
            refused(
                verb,
                format_args!("the account is {}", self.status.as_str()),
            )
        })?;
        Ok(())
    }

    pub fn payment(&self, milestone_id: &str) -> Result<&ScheduledPayment, ServiceError> {
        self.schedule
            .iter()
            .find(|p| p.milestone_id == milestone_id)
            .ok_or_else(|| ServiceError::not_found("scheduled payment", milestone_id))
    }

    /// What a new funding attempt for `milestone_id` must pay: what is still
    /// due of it. Refused once it is paid or the account is closed.
    pub fn due_for(&self, milestone_id: &str) -> Result<i64, ServiceError> {
        if self.status == Status::Closed {
            return Err(refused("fund", "the account is closed"));
        }
        let payment = self.payment(milestone_id)?;
        if payment.is_funded() {
            return Err(refused(
                "fund",
                format_args!("payment {milestone_id} is already funded"),
            ));
        }
        Ok(payment.remaining_minor())
    }

    /// Records money received for a milestone: at most what is due of it
    /// (the caller parks any excess in suspense).
    pub fn record_funding(&mut self, milestone_id: &str, amount: i64) -> Result<(), ServiceError> {
        let due = self.due_for(milestone_id)?;
        if amount <= 0 || amount > due {
            return Err(ServiceError::internal(format!(
                "escrow account {}: recording {amount} against {due} due for {milestone_id}",
                self.id
            )));
        }
        if let Some(payment) = self
            .schedule
            .iter_mut()
            .find(|p| p.milestone_id == milestone_id)
        {
            payment.funded_minor += amount;
        }
        let complete = self.schedule.iter().all(ScheduledPayment::is_funded);
        let action = if complete {
            Action::FundComplete
        } else {
            Action::FundPart
        };
        self.step(action, "fund")
    }

    /// Checks that money may leave escrow for `settles` and returns its purpose.
    pub fn authorize_outflow(
        &mut self,
        action: Action,
        settles: &Settles,
    ) -> Result<Purpose, ServiceError> {
        let (verb, purpose) = match (action, settles) {
            (Action::Release, Settles::Milestone(m)) => {
                ("release", Purpose::release_milestone(self.id, m))
            }
            (Action::Release, Settles::Acceptance) => {
                ("release", Purpose::release_acceptance(self.id))
            }
            (Action::Release, Settles::Claim(c)) => ("release", Purpose::release_claim(self.id, c)),
            (Action::Refund, Settles::Claim(c)) => ("refund", Purpose::refund_claim(self.id, c)),
            (Action::Refund, Settles::Cancellation) => {
                ("refund", Purpose::refund_cancellation(self.id))
            }
            (Action::Refund, Settles::Milestone(_) | Settles::Acceptance) => {
                return Err(ServiceError::invalid(
                    "purpose",
                    "a refund settles a claim or the cancellation",
                ));
            }
            (Action::Release, Settles::Cancellation) => {
                return Err(ServiceError::invalid(
                    "purpose",
                    "a release settles a milestone or a claim",
                ));
            }
            _ => {
                return Err(ServiceError::internal(format!(
                    "{action:?} does not move money out of escrow"
                )));
            }
        };
        if !self.freezes.is_empty() {
            let named = match settles {
                Settles::Claim(c) => self.freezes.contains(c),
                _ => false,
            };
            if !named {
                return Err(refused(
                    verb,
                    format_args!(
                        "the account is frozen for claim(s) {}; only their outcome may move money",
                        self.freezes.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        self.step(action, verb)?;
        Ok(purpose)
    }

    /// Idempotent per claim: returns whether this call froze it. The first
    /// active freeze pauses the hold deadline.
    pub fn freeze(&mut self, claim_id: &str, now: OffsetDateTime) -> Result<bool, ServiceError> {
        self.step(Action::Freeze, "freeze")?;
        let froze = self.freezes.insert(claim_id.to_owned());
        if froze && self.hold_paused_at.is_none() {
            self.hold_paused_at = Some(now);
        }
        Ok(froze)
    }

    /// Idempotent: returns whether this call lifted an active freeze.
    /// Lifting the last one resumes the hold deadline, later by the time
    /// spent frozen.
    pub fn unfreeze(&mut self, claim_id: &str, now: OffsetDateTime) -> Result<bool, ServiceError> {
        self.step(Action::Unfreeze, "unfreeze")?;
        let lifted = self.freezes.remove(claim_id);
        if self.freezes.is_empty()
            && let Some(since) = self.hold_paused_at.take()
        {
            self.hold_until += (now - since).max(time::Duration::ZERO);
        }
        Ok(lifted)
    }

    /// A signed amendment's schedule replaces the account's (each payment
    /// keeping what it received, up to its new amount); the status follows
    /// what is funded of it: all of it funded, some, or none. A higher total
    /// takes a funded account back to partially funded. The caller refuses a
    /// closed account.
    pub fn amend(&mut self, schedule: Vec<ScheduledPayment>) {
        self.status = if schedule.iter().all(ScheduledPayment::is_funded) {
            Status::Funded
        } else if schedule.iter().any(|p| p.funded_minor > 0) {
            Status::PartiallyFunded
        } else {
            Status::AwaitingFunding
        };
        self.schedule = schedule;
    }

    /// Whether the hold deadline runs: the account is open and not frozen.
    pub fn hold_deadline_runs(&self) -> bool {
        self.status != Status::Closed && self.hold_paused_at.is_none()
    }

    /// Sets a new hold deadline (an amendment). While paused, the pause
    /// starts again now: the new deadline is moved only by the time frozen
    /// from here on.
    pub fn set_hold_until(&mut self, hold_until: OffsetDateTime, now: OffsetDateTime) {
        self.hold_until = hold_until;
        if self.hold_paused_at.is_some() {
            self.hold_paused_at = Some(now);
        }
    }

    /// Closes an account that holds nothing and is not frozen.
    pub fn close(&mut self, held_minor: i64, now: OffsetDateTime) -> Result<(), ServiceError> {
        if self.status != Status::Closed && !self.freezes.is_empty() {
            return Err(refused("close", "the account is frozen"));
        }
        if self.status != Status::Closed && held_minor != 0 {
            return Err(refused(
                "close",
                format_args!("it holds {}", Money::new(held_minor, self.currency)),
            ));
        }
        self.step(Action::Close, "close")?;
        self.closed_at = Some(now);
        Ok(())
    }
}

/// Splits a refund the way the money came: to each financing partner up to
/// the loan still outstanding for this account (in the order given), the
/// rest to the buyer. Returns the partners' shares and the buyer's.
pub fn split_refund<K: Clone>(amount: i64, outstanding: &[(K, i64)]) -> (Vec<(K, i64)>, i64) {
    let mut left = amount;
    let mut partners = Vec::new();
    for (partner, loan) in outstanding {
        if left == 0 {
            break;
        }
        let share = left.min((*loan).max(0));
        if share > 0 {
            partners.push((partner.clone(), share));
            left -= share;
        }
    }
    (partners, left)
}
