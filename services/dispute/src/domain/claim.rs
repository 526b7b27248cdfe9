//! One claim: its negotiation windows, the supplier's offers, escalation and
//! the arbiter's decision. The money rules are checked against what escrow
//! holds for the contract, in the account's currency: a refund is never more
//! than is held, and a partial refund is strictly between nothing and all.

use ta_runtime::{ServiceError, money::Money};
use time::{Duration, OffsetDateTime};

use super::status::{Action, Status};

/// The brief's figures (negotiation 3 days, the buyer may escalate from day
/// 4, automatic escalation on day 7) as configuration, and the penalty points
/// a decision against the supplier records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// After it the buyer may escalate.
    pub negotiation_window: Duration,
    /// After it a claim still negotiating escalates by itself.
    pub auto_escalation_after: Duration,
    pub full_refund_penalty_points: u32,
    pub partial_refund_penalty_points: u32,
    /// Per reason (indexed by [`Reason::index`]), the (full refund, partial
    /// refund) points instead of the two above.
    pub points_by_reason: [Option<(u32, u32)>; 6],
}

impl Policy {
    /// The policy a claim of `reason` is decided by.
    pub fn for_reason(&self, reason: Reason) -> Policy {
        let mut policy = *self;
        if let Some((full, partial)) = self.points_by_reason[reason.index()] {
            policy.full_refund_penalty_points = full;
            policy.partial_refund_penalty_points = partial;
        }
        policy
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            negotiation_window: Duration::days(3),
            auto_escalation_after: Duration::days(7),
            full_refund_penalty_points: 12,
            partial_refund_penalty_points: 6,
            points_by_reason: [None; 6],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    FullRefund,
    PartialRefund(Money),
    ReleaseToSupplier,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferStatus {
    Open,
    Accepted,
    Rejected,
    Superseded,
    Lapsed,
}

/// Who made an offer: the supplier, or the buyer countering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    Supplier,
    Buyer,
}

impl Party {
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Supplier => "supplier",
            Party::Buyer => "buyer",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub offer_id: String,
    pub made_by: Party,
    /// `FullRefund` or `PartialRefund`; an offer never releases.
    pub outcome: Outcome,
    pub status: OfferStatus,
    pub made_at: OffsetDateTime,
    pub responded_at: Option<OffsetDateTime>,
    pub rejection_reason: String,
    /// Shown to the buyer.
    pub message: String,
    /// The buyer's counter-evidence when rejected.
    pub counter_evidence_ids: Vec<String>,
}

/// What the buyer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Remedy {
    Refund,
    ReturnAndRefund,
    Reshipment,
}

impl Remedy {
    pub const ALL: [Remedy; 3] = [Remedy::Refund, Remedy::ReturnAndRefund, Remedy::Reshipment];

    pub fn as_str(self) -> &'static str {
        match self {
            Remedy::Refund => "refund",
            Remedy::ReturnAndRefund => "return_and_refund",
            Remedy::Reshipment => "reshipment",
        }
    }

    pub fn parse(text: &str) -> Option<Remedy> {
        Remedy::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// Why the buyer claims: it decides the contract's window (see contract's
/// RecordClaimOpened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    LateShipment,
    NonDelivery,
    QualityMismatch,
    Damage,
    ShortQuantity,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::LateShipment,
        Reason::NonDelivery,
        Reason::QualityMismatch,
        Reason::Damage,
        Reason::ShortQuantity,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LateShipment => "late_shipment",
            Reason::NonDelivery => "non_delivery",
            Reason::QualityMismatch => "quality_mismatch",
            Reason::Damage => "damage",
            Reason::ShortQuantity => "short_quantity",
            Reason::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Its position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// Claims about the goods themselves, filed after receipt.
    pub fn about_the_goods(self) -> bool {
        !matches!(self, Reason::LateShipment | Reason::NonDelivery)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escalator {
    Buyer,
    Arbiter,
    Timer,
}

/// How a settled or decided claim ended: what moves and what it costs the
/// supplier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub outcome: Outcome,
    pub refund: Money,
    pub reason: String,
    /// 0 for a settlement between the parties.
    pub penalty_points: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub status: Status,
    pub filed_at: OffsetDateTime,
    pub negotiation_ends_at: OffsetDateTime,
    pub auto_escalate_at: OffsetDateTime,
    pub amount_claimed: Money,
    /// What escrow holds for the contract (frozen by this claim).
    pub held: Money,
    pub offers: Vec<Offer>,
    pub escalated_at: Option<OffsetDateTime>,
    pub resolution: Option<Resolution>,
}

fn refused(reason: &'static str, message: String) -> ServiceError {
    ServiceError::Refused {
        reason,
        subject: "claim".into(),
        message,
    }
}

impl Claim {
    /// A new claim for `amount_claimed` (at most what is held), `opening`
    /// until the contract recorded it and escrow froze the money.
    pub fn file(
        amount_claimed: Money,
        held: Money,
        now: OffsetDateTime,
        policy: &Policy,
    ) -> Result<Claim, ServiceError> {
        if amount_claimed.currency != held.currency {
            return Err(ServiceError::invalid(
                "amount_claimed.currency_code",
                format!(
                    "must be {}, the currency of the escrow account",
                    held.currency
                ),
            ));
        }
        if amount_claimed.amount_minor <= 0 || amount_claimed.amount_minor > held.amount_minor {
            return Err(ServiceError::invalid(
                "amount_claimed.amount_minor",
                format!("must be positive and at most what escrow holds ({held})"),
            ));
        }
        Ok(Claim {
            status: Status::Opening,
            filed_at: now,
            negotiation_ends_at: now + policy.negotiation_window,
            auto_escalate_at: now + policy.auto_escalation_after,
            amount_claimed,
            held,
            offers: Vec::new(),
            escalated_at: None,
            resolution: None,
        })
    }

    /// The contract recorded the claim and escrow froze `held`: negotiation
    /// starts, and its windows run from now.
    pub fn opened(
        &mut self,
        held: Money,
        now: OffsetDateTime,
        policy: &Policy,
    ) -> Result<(), ServiceError> {
        let next = self.status.next(Action::Opened)?;
        if held.currency == self.held.currency && held.amount_minor > 0 {
            self.held = held;
        }
        self.negotiation_ends_at = now + policy.negotiation_window;
        self.auto_escalate_at = now + policy.auto_escalation_after;
        self.status = next;
        Ok(())
    }

    /// The contract refused the claim (or escrow could not freeze): final.
    pub fn refuse(&mut self) -> Result<(), ServiceError> {
        self.status = self.status.next(Action::Refuse)?;
        Ok(())
    }

    /// The supplier rejects the claim; negotiation goes on until escalation.
    pub fn reject_claim(&mut self) -> Result<(), ServiceError> {
        self.status = self.status.next(Action::RejectClaim)?;
        Ok(())
    }

    /// The open offer, if any.
    pub fn open_offer(&self) -> Option<&Offer> {
        self.offers.iter().find(|o| o.status == OfferStatus::Open)
    }

    fn open_offer_mut(&mut self) -> Option<&mut Offer> {
        self.offers
            .iter_mut()
            .find(|o| o.status == OfferStatus::Open)
    }

    /// The open offer named `offer_id`, answered by `by` (the party that did
    /// not make it), or why there is none.
    fn open_offer_named(&mut self, offer_id: &str, by: Party) -> Result<&mut Offer, ServiceError> {
        match self.offers.iter_mut().find(|o| o.offer_id == offer_id) {
            Some(offer) if offer.made_by == by => Err(ServiceError::FailedPrecondition(format!(
                "offer {offer_id} is the {}'s own: the other party answers it",
                by.as_str()
            ))),
            Some(offer) if offer.status == OfferStatus::Open => Ok(offer),
            Some(offer) => Err(ServiceError::FailedPrecondition(format!(
                "offer {offer_id} is {:?}, not open",
                offer.status
            ))),
            None => Err(ServiceError::not_found("offer", offer_id)),
        }
    }

    fn lapse_open_offer(&mut self, at: OffsetDateTime) {
        if let Some(open) = self.open_offer_mut() {
            open.status = OfferStatus::Lapsed;
            open.responded_at = Some(at);
        }
    }

    /// A refund amount as an outcome: all that is held is a full refund.
    fn checked_refund(&self, outcome: Outcome, field: &str) -> Result<Money, ServiceError> {
        match outcome {
            Outcome::FullRefund => Ok(self.held),
            Outcome::ReleaseToSupplier => Ok(Money::zero(self.held.currency)),
            Outcome::PartialRefund(amount) => {
                if amount.currency != self.held.currency {
                    return Err(ServiceError::invalid(
                        format!("{field}.currency_code"),
                        format!(
                            "must be {}, the currency of the escrow account",
                            self.held.currency
                        ),
                    ));
                }
                if amount.amount_minor <= 0 || amount.amount_minor >= self.held.amount_minor {
                    return Err(ServiceError::invalid(
                        format!("{field}.amount_minor"),
                        format!(
                            "a partial refund is more than nothing and less than all that is held ({})",
                            self.held
                        ),
                    ));
                }
                Ok(amount)
            }
        }
    }

    /// The supplier's offer; it replaces an open one.
    pub fn make_offer(
        &mut self,
        offer_id: &str,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        self.propose(Party::Supplier, offer_id, outcome, now)
    }

    /// The buyer's counter-offer; it replaces an open one.
    pub fn counter_offer(
        &mut self,
        offer_id: &str,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        self.propose(Party::Buyer, offer_id, outcome, now)
    }

    fn propose(
        &mut self,
        by: Party,
        offer_id: &str,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        let next = self.status.next(Action::MakeOffer)?;
        if outcome == Outcome::ReleaseToSupplier {
            return Err(ServiceError::invalid(
                "kind",
                "an offer refunds the buyer: OFFER_KIND_FULL_REFUND or OFFER_KIND_PARTIAL_REFUND",
            ));
        }
        self.checked_refund(outcome, "refund_amount")?;
        if let Some(open) = self.open_offer_mut() {
            open.status = OfferStatus::Superseded;
            open.responded_at = Some(now);
        }
        self.offers.push(Offer {
            offer_id: offer_id.to_owned(),
            made_by: by,
            outcome,
            status: OfferStatus::Open,
            made_at: now,
            responded_at: None,
            rejection_reason: String::new(),
            message: String::new(),
            counter_evidence_ids: Vec::new(),
        });
        self.status = next;
        Ok(())
    }

    /// The other party rejects the open offer.
    pub fn reject_offer(
        &mut self,
        offer_id: &str,
        by: Party,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        self.status.next(Action::RejectOffer)?;
        let offer = self.open_offer_named(offer_id, by)?;
        offer.status = OfferStatus::Rejected;
        offer.responded_at = Some(now);
        offer.rejection_reason = reason.to_owned();
        Ok(())
    }

    /// The other party accepts the open offer: settled, no penalty.
    pub fn accept_offer(
        &mut self,
        offer_id: &str,
        by: Party,
        now: OffsetDateTime,
    ) -> Result<Resolution, ServiceError> {
        let next = self.status.next(Action::AcceptOffer)?;
        let held = self.held;
        let offer = self.open_offer_named(offer_id, by)?;
        offer.status = OfferStatus::Accepted;
        offer.responded_at = Some(now);
        let outcome = offer.outcome;
        let refund = match outcome {
            Outcome::PartialRefund(amount) => amount,
            _ => held,
        };
        let resolution = Resolution {
            outcome,
            refund,
            reason: format!("the {} accepted offer {offer_id}", by.as_str()),
            penalty_points: 0,
        };
        self.status = next;
        self.resolution = Some(resolution.clone());
        Ok(resolution)
    }

    /// Hands the claim to an arbiter: the buyer once the negotiation window
    /// passed, an arbiter at any time, the timer once automatic escalation
    /// is due. An open offer lapses.
    pub fn escalate(&mut self, by: Escalator, now: OffsetDateTime) -> Result<(), ServiceError> {
        let next = self.status.next(Action::Escalate)?;
        match by {
            Escalator::Buyer if now < self.negotiation_ends_at => {
                return Err(refused(
                    "NEGOTIATION_WINDOW_OPEN",
                    format!(
                        "the buyer may escalate once the negotiation window ends at {}",
                        self.negotiation_ends_at
                    ),
                ));
            }
            Escalator::Timer if now < self.auto_escalate_at => {
                return Err(refused(
                    "NOT_DUE",
                    format!("automatic escalation is due at {}", self.auto_escalate_at),
                ));
            }
            _ => {}
        }
        self.lapse_open_offer(now);
        self.escalated_at = Some(now);
        self.status = next;
        Ok(())
    }

    /// The arbiter's decision, with a written reason; penalty points as the
    /// policy sets for the outcome.
    pub fn decide(
        &mut self,
        outcome: Outcome,
        reason: &str,
        policy: &Policy,
    ) -> Result<Resolution, ServiceError> {
        let next = self.status.next(Action::Decide)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ServiceError::invalid(
                "reason",
                "an arbiter's decision gives its reason",
            ));
        }
        let refund = self.checked_refund(outcome, "refund_amount")?;
        let penalty_points = match outcome {
            Outcome::FullRefund => policy.full_refund_penalty_points,
            Outcome::PartialRefund(_) => policy.partial_refund_penalty_points,
            Outcome::ReleaseToSupplier => 0,
        };
        let resolution = Resolution {
            outcome,
            refund,
            reason: reason.to_owned(),
            penalty_points,
        };
        self.status = next;
        self.resolution = Some(resolution.clone());
        Ok(resolution)
    }

    /// The buyer withdraws: final; an open offer lapses.
    pub fn withdraw(&mut self, now: OffsetDateTime) -> Result<(), ServiceError> {
        let next = self.status.next(Action::Withdraw)?;
        self.lapse_open_offer(now);
        self.status = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ta_runtime::money::Currency;
    use time::macros::datetime;

    use super::*;

    const FILED: OffsetDateTime = datetime!(2026-12-01 08:00 UTC);

    fn usd(amount_minor: i64) -> Money {
        Money::new(amount_minor, Currency::parse("USD").unwrap())
    }

    fn claim() -> Claim {
        let mut c = Claim::file(usd(40_000), usd(100_000), FILED, &Policy::default()).unwrap();
        c.opened(usd(100_000), FILED, &Policy::default()).unwrap();
        c
    }

    #[test]
    fn an_opening_claim_waits_for_the_contract_and_a_refusal_is_final() {
        let policy = Policy::default();
        let mut c = Claim::file(usd(40_000), usd(100_000), FILED, &policy).unwrap();
        assert_eq!(c.status, Status::Opening);
        assert!(c.make_offer("o", Outcome::FullRefund, FILED).is_err());
        assert!(c.withdraw(FILED).is_err());
        let later = FILED + Duration::hours(1);
        c.opened(usd(90_000), later, &policy).unwrap();
        assert_eq!(c.held, usd(90_000), "what escrow froze");
        assert_eq!(c.negotiation_ends_at, later + Duration::days(3));
        assert!(c.opened(usd(90_000), later, &policy).is_err());
        let mut refused = Claim::file(usd(40_000), usd(100_000), FILED, &policy).unwrap();
        refused.refuse().unwrap();
        assert_eq!(refused.status, Status::Refused);
        assert!(refused.opened(usd(1), FILED, &policy).is_err());
    }

    fn reason_of(error: ServiceError) -> &'static str {
        match error {
            ServiceError::Refused { reason, .. } => reason,
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn windows_follow_the_brief_by_default() {
        let c = claim();
        assert_eq!(c.negotiation_ends_at, datetime!(2026-12-04 08:00 UTC));
        assert_eq!(c.auto_escalate_at, datetime!(2026-12-08 08:00 UTC));
        let too_much = Claim::file(usd(100_001), usd(100_000), FILED, &Policy::default());
        assert!(matches!(too_much, Err(ServiceError::InvalidArgument(_))));
    }

    #[test]
    fn a_newer_offer_supersedes_and_accepting_settles_without_penalty() {
        let mut c = claim();
        c.make_offer("o-1", Outcome::PartialRefund(usd(20_000)), FILED)
            .unwrap();
        c.make_offer("o-2", Outcome::PartialRefund(usd(30_000)), FILED)
            .unwrap();
        assert_eq!(c.offers[0].status, OfferStatus::Superseded);
        assert!(
            c.accept_offer("o-1", Party::Buyer, FILED).is_err(),
            "a superseded offer"
        );
        assert!(
            c.accept_offer("o-2", Party::Supplier, FILED).is_err(),
            "its own offer"
        );
        let resolution = c.accept_offer("o-2", Party::Buyer, FILED).unwrap();
        assert_eq!(resolution.refund, usd(30_000));
        assert_eq!(resolution.penalty_points, 0);
        assert_eq!(c.status, Status::Settled);
        assert!(c.make_offer("o-3", Outcome::FullRefund, FILED).is_err());
    }

    #[test]
    fn partial_refunds_lie_strictly_between_nothing_and_all() {
        let mut c = claim();
        for bad in [0, -1, 100_000, 100_001] {
            let refused = c.make_offer("o", Outcome::PartialRefund(usd(bad)), FILED);
            assert!(
                matches!(refused, Err(ServiceError::InvalidArgument(_))),
                "{bad}"
            );
        }
        assert!(
            c.make_offer("o", Outcome::ReleaseToSupplier, FILED)
                .is_err()
        );
        assert!(c.offers.is_empty(), "a refused offer leaves nothing");
    }

    #[test]
    fn escalation_waits_for_the_window_except_for_operators() {
        let mut c = claim();
        c.make_offer("o-1", Outcome::PartialRefund(usd(10_000)), FILED)
            .unwrap();
        let day_3 = FILED + Duration::days(3) - Duration::seconds(1);
        assert_eq!(
            reason_of(c.escalate(Escalator::Buyer, day_3).unwrap_err()),
            "NEGOTIATION_WINDOW_OPEN"
        );
        assert_eq!(
            reason_of(
                c.escalate(Escalator::Timer, FILED + Duration::days(6))
                    .unwrap_err()
            ),
            "NOT_DUE"
        );
        c.escalate(Escalator::Buyer, FILED + Duration::days(3))
            .unwrap();
        assert_eq!(c.status, Status::Escalated);
        assert_eq!(c.offers[0].status, OfferStatus::Lapsed);
        let mut early = claim();
        early.escalate(Escalator::Arbiter, FILED).unwrap();
        let mut timed = claim();
        timed
            .escalate(Escalator::Timer, FILED + Duration::days(7))
            .unwrap();
    }

    #[test]
    fn a_decision_gives_its_reason_and_costs_the_supplier_by_outcome() {
        let policy = Policy::default();
        let mut c = claim();
        assert!(
            c.decide(Outcome::FullRefund, "x", &policy).is_err(),
            "not escalated"
        );
        c.escalate(Escalator::Arbiter, FILED).unwrap();
        assert!(matches!(
            c.decide(Outcome::FullRefund, "  ", &policy),
            Err(ServiceError::InvalidArgument(_))
        ));
        let decided = c
            .decide(
                Outcome::PartialRefund(usd(25_000)),
                "QC-1 failed on 3 of 5 samples",
                &policy,
            )
            .unwrap();
        assert_eq!((decided.refund, decided.penalty_points), (usd(25_000), 6));
        assert_eq!(c.status, Status::Decided);

        let mut full = claim();
        full.escalate(Escalator::Arbiter, FILED).unwrap();
        let all = full
            .decide(Outcome::FullRefund, "never shipped", &policy)
            .unwrap();
        assert_eq!((all.refund, all.penalty_points), (usd(100_000), 12));
        let mut release = claim();
        release.escalate(Escalator::Arbiter, FILED).unwrap();
        let none = release
            .decide(Outcome::ReleaseToSupplier, "goods as agreed", &policy)
            .unwrap();
        assert_eq!((none.refund, none.penalty_points), (usd(0), 0));
    }

    #[test]
    fn penalty_points_may_differ_by_reason() {
        let mut policy = Policy::default();
        policy.points_by_reason[Reason::NonDelivery.index()] = Some((20, 10));
        let strict = policy.for_reason(Reason::NonDelivery);
        assert_eq!(
            (
                strict.full_refund_penalty_points,
                strict.partial_refund_penalty_points
            ),
            (20, 10)
        );
        assert_eq!(policy.for_reason(Reason::Damage), policy);
        let mut c = claim();
        c.escalate(Escalator::Arbiter, FILED).unwrap();
        let decided = c
            .decide(Outcome::FullRefund, "never came", &strict)
            .unwrap();
        assert_eq!(decided.penalty_points, 20);
    }

    #[test]
    fn a_withdrawn_claim_is_final() {
        let mut c = claim();
        c.make_offer("o-1", Outcome::FullRefund, FILED).unwrap();
        c.withdraw(FILED).unwrap();
        assert_eq!(c.offers[0].status, OfferStatus::Lapsed);
        assert!(c.withdraw(FILED).is_err());
        assert!(c.escalate(Escalator::Arbiter, FILED).is_err());
        assert!(c.accept_offer("o-1", Party::Buyer, FILED).is_err());
    }

    #[test]
    fn the_buyer_counters_and_the_supplier_answers_the_counter() {
        let mut c = claim();
        c.make_offer("o-1", Outcome::PartialRefund(usd(10_000)), FILED)
            .unwrap();
        c.counter_offer("o-2", Outcome::PartialRefund(usd(30_000)), FILED)
            .unwrap();
        assert_eq!(c.offers[0].status, OfferStatus::Superseded);
        assert_eq!(c.offers[1].made_by, Party::Buyer);
        assert!(
            c.reject_offer("o-2", Party::Buyer, "no", FILED).is_err(),
            "the buyer does not answer its own counter"
        );
        c.reject_offer("o-2", Party::Supplier, "too much", FILED)
            .unwrap();
        c.counter_offer("o-3", Outcome::PartialRefund(usd(20_000)), FILED)
            .unwrap();
        let settled = c.accept_offer("o-3", Party::Supplier, FILED).unwrap();
        assert_eq!((settled.refund, settled.penalty_points), (usd(20_000), 0));
        assert_eq!(c.status, Status::Settled);
    }
}
