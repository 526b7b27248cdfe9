//! Release per milestone: terms may tie a payment milestone to a shipment
//! lot, and the lot's acceptance releases it. Pure: the caller passes the
//! contract's facts and the time.
//!
//! - A milestone names its lot (`lot`, 1..=[`MAX_LOTS`]); 0 releases it
//!   with the final acceptance, as everything is without lots. The lots
//!   named are 1..N without a gap (checked with the terms,
//!   [`super::terms::check_lot_terms`]).
//! - Shipments are lots in the order they are recorded: the first is lot 1.
//!   Under lot terms lots 1..N-1 are part shipments and lot N is the final
//!   one ([`check_lot_shipment`]); without lot terms shipments are numbered
//!   the same way and only the final one counts, as before.
//! - A lot before the final one is received and accepted on its own: the
//!   buyer's AcceptGoods naming it, or its receipt plus the later of the
//!   inspection period and the claim window lapsing. Its acceptance
//!   releases the funded milestones tied to it ([`lot_release`]); a
//!   milestone not funded then is released with the final acceptance.
//! - The final lot is the contract's own receipt and acceptance: it releases
//!   whatever escrow still holds.
//! - While escrow has not answered a lot's release, no claim opens
//!   ([`LOT_RELEASE_PENDING`]): what a claim may touch is what escrow holds
//!   once the release went through.

pub use super::terms::MAX_LOTS;
use ta_runtime::{ServiceError, money::Money};
use time::OffsetDateTime;

#[cfg(test)]
use super::terms::check_lot_terms;
use super::{
    status::Status,
    terms::{PaymentMilestone, Terms},
};

/// The reason code of a claim recorded while a lot's release is on its way
/// to escrow: the claim would freeze money that is leaving.
pub const LOT_RELEASE_PENDING: &str = "LOT_RELEASE_PENDING";

/// Which shipment a receipt or an acceptance is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LotTarget {
    /// The final shipment: the contract's own receipt or acceptance.
    Final,
    /// A lot before the final one.
    Lot(u32),
}

/// The lot a request names (`requested`, 0 for the final shipment) under
/// terms of `lots` lots.
///
/// # Errors
/// `InvalidArgument` on `lot` for a lot the terms do not have.
pub fn target(lots: u32, requested: u32) -> Result<LotTarget, ServiceError> {
    match requested {
        0 => Ok(LotTarget::Final),
        _ if lots == 0 => Err(ServiceError::invalid(
            "lot",
            "the terms tie no payment milestone to a lot: leave it 0 for the whole order",
        )),
        n if n > lots => Err(ServiceError::invalid(
            "lot",
            format!("the terms ship in {lots} lots: 1-{lots}, or 0 for the final one"),
        )),
        n if n == lots => Ok(LotTarget::Final),
        n => Ok(LotTarget::Lot(n)),
    }
}

/// May the shipment numbered `next` (recorded shipments + 1) be recorded
/// with `is_final`, under terms of `lots` lots, when the request named
/// `requested` (0: whichever is next)?
///
/// # Errors
/// `FailedPrecondition` when `requested` is not the next lot (recorded
/// already, or one skipped); `InvalidArgument` on `final` when it
/// contradicts the terms' lots.
pub fn check_lot_shipment(
    lots: u32,
    next: u32,
    requested: u32,
    is_final: bool,
) -> Result<(), ServiceError> {
    if requested != 0 && requested != next {
        return Err(ServiceError::FailedPrecondition(format!(
            "this shipment is lot {next} ({} recorded so far), not lot {requested}",
            next - 1
        )));
    }
    if lots == 0 {
        return Ok(());
    }
    if next < lots && is_final {
        return Err(ServiceError::invalid(
            "final",
            format!(
                "the terms ship in {lots} lots: lot {next} is a part shipment, lot {lots} is the final one"
            ),
        ));
    }
    if next >= lots && !is_final {
        return Err(ServiceError::invalid(
            "final",
            format!("lot {lots} is the last lot of the terms: it is the final shipment"),
        ));
    }
    Ok(())
}

/// A shipped lot before the final one, as far as its acceptance goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LotFacts {
    pub lot: u32,
    pub shipped_at: OffsetDateTime,
    pub received_at: Option<OffsetDateTime>,
    pub accepted_at: Option<OffsetDateTime>,
}

/// The states in which a lot before the final one is received or accepted:
/// signed, funded as far as shipping went, not in dispute, not ended.
fn lots_move(status: Status) -> bool {
    matches!(
        status,
        Status::PartiallyFunded
            | Status::Funded
            | Status::SignedUnprotected
            | Status::Shipped
            | Status::Delivered
    )
}

fn check_lot_open(
    status: Status,
    lot: u32,
    facts: Option<&LotFacts>,
    what: &str,
) -> Result<LotFacts, ServiceError> {
    if !lots_move(status) {
        return Err(ServiceError::FailedPrecondition(format!(
            "the contract is {}: {what} lot {lot} is not possible in that state",
            status.as_str()
        )));
    }
    let Some(facts) = facts else {
        return Err(ServiceError::FailedPrecondition(format!(
            "lot {lot} has not shipped yet"
        )));
    };
    if let Some(at) = facts.accepted_at {
        return Err(ServiceError::FailedPrecondition(format!(
            "lot {lot} was accepted already ({at})"
        )));
    }
    Ok(*facts)
}

/// The buyer confirms a lot's receipt at `received_at`.
///
/// # Errors
/// `FailedPrecondition` when the lot cannot be received now (the state, not
/// shipped, received or accepted already); `InvalidArgument` on
/// `received_at` before the lot shipped.
pub fn check_lot_receipt(
    status: Status,
    lot: u32,
    facts: Option<&LotFacts>,
    received_at: OffsetDateTime,
) -> Result<(), ServiceError> {
    let facts = check_lot_open(status, lot, facts, "receiving")?;
    if let Some(at) = facts.received_at {
        return Err(ServiceError::FailedPrecondition(format!(
            "lot {lot}'s receipt was confirmed already ({at})"
        )));
    }
    if received_at < facts.shipped_at {
        return Err(ServiceError::invalid(
            "received_at",
            format!("must not be before lot {lot} shipped"),
        ));
    }
    Ok(())
}

/// The lot is accepted (explicitly, or its acceptance deadline lapsed).
///
/// # Errors
/// `FailedPrecondition` when the lot cannot be accepted now.
pub fn check_lot_acceptance(
    status: Status,
    lot: u32,
    facts: Option<&LotFacts>,
) -> Result<(), ServiceError> {
    check_lot_open(status, lot, facts, "accepting").map(|_| ())
}

/// What a lot's acceptance releases: its milestones that escrow has funded,
/// each released under its own purpose, and their sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LotRelease {
    pub milestones: Vec<(String, Money)>,
    /// Milestones tied to the lot that are not funded: released with the
    /// final acceptance instead.
    pub unfunded: Vec<String>,
    pub total: Money,
}

/// The release of lot `lot` under `terms`; `funded` says whether a milestone
/// is funded in escrow (the contract's projection of escrow's feed).
///
/// # Errors
/// `Internal` when the amounts overflow (never, for amounts that sum to the
/// contract's total).
pub fn lot_release(
    terms: &Terms,
    lot: u32,
    funded: impl Fn(&str) -> bool,
) -> Result<LotRelease, ServiceError> {
    let mut release = LotRelease {
        milestones: Vec::new(),
        unfunded: Vec::new(),
        total: Money::new(0, terms.total.currency),
    };
    for m in terms.milestones.iter().filter(|m| m.lot == lot) {
        if funded(&m.milestone_id) {
            release.total = release
                .total
                .amount_minor
                .checked_add(m.amount.amount_minor)
                .map(|sum| Money::new(sum, terms.total.currency))
                .ok_or_else(|| ServiceError::internal("a lot's release overflows an i64"))?;
            release.milestones.push((m.milestone_id.clone(), m.amount));
        } else {
            release.unfunded.push(m.milestone_id.clone());
        }
    }
    Ok(release)
}

/// The milestones of the terms tied to `lot`.
pub fn milestones_of(terms: &Terms, lot: u32) -> impl Iterator<Item = &PaymentMilestone> {
    terms.milestones.iter().filter(move |m| m.lot == lot)
}

/// An amendment proposed once `shipped` lots shipped keeps the lots: the
/// terms' number of lots, and every milestone a lot's acceptance released
/// (`released`), with its lot and its amount: that money has left escrow.
///
/// # Errors
/// `InvalidArgument` on `terms.payment_terms.milestones`.
pub fn check_lot_amendment(
    signed: &Terms,
    proposed: &Terms,
    shipped: u32,
    released: &[String],
) -> Result<(), ServiceError> {
    let field = "terms.payment_terms.milestones";
    if shipped > 0 && proposed.lots() != signed.lots() {
        return Err(ServiceError::invalid(
            field,
            format!(
                "{shipped} shipment(s) were recorded under terms of {} lot(s): an amendment keeps the number of lots",
                signed.lots()
            ),
        ));
    }
    for id in released {
        let before = signed.milestones.iter().find(|m| &m.milestone_id == id);
        let after = proposed.milestones.iter().find(|m| &m.milestone_id == id);
        let kept = match (before, after) {
            (Some(b), Some(a)) => a.lot == b.lot && a.amount == b.amount,
            _ => false,
        };
        if !kept {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "milestone {id} was released to the supplier with its lot: an amendment keeps it, its lot and its amount"
                ),
            ));
        }
    }
    Ok(())
}

/// The lots before the final one whose acceptance deadline has passed at
/// `now`, received and not accepted: `(lot, due)` pairs.
pub fn lots_due(lots: &[(u32, Option<OffsetDateTime>, bool)], now: OffsetDateTime) -> Vec<u32> {
    lots.iter()
        .filter(|(_, due, accepted)| !accepted && due.is_some_and(|d| d <= now))
        .map(|(lot, _, _)| *lot)
        .collect()
}

/// When the next lot counts as accepted: the earliest deadline of the
/// received lots not accepted yet.
pub fn next_lot_due(lots: &[(u32, Option<OffsetDateTime>, bool)]) -> Option<OffsetDateTime> {
    lots.iter()
        .filter(|(_, _, accepted)| !accepted)
        .filter_map(|(_, due, _)| *due)
        .min()
}

#[cfg(test)]
mod tests {
    use time::{Duration, macros::datetime};

    use ta_runtime::Violations;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-11-30 09:00 UTC);

    fn violations_of(lots: &[u32]) -> Vec<(String, String)> {
        let mut v = Violations::new();
        check_lot_terms(lots, "terms.payment_terms.milestones", &mut v);
        match v.finish(()) {
            Ok(()) => Vec::new(),
            Err(ServiceError::InvalidArgument(list)) => {
                list.into_iter().map(|f| (f.field, f.description)).collect()
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn lots_are_numbered_one_to_n_without_a_gap() {
        assert!(violations_of(&[0, 0]).is_empty());
        assert!(violations_of(&[1, 0]).is_empty());
        assert!(violations_of(&[1, 2]).is_empty());
        assert!(violations_of(&[2, 1, 2, 0]).is_empty());
        let gap = violations_of(&[1, 3]);
        assert_eq!(gap.len(), 1, "{gap:?}");
        assert_eq!(gap[0].0, "terms.payment_terms.milestones");
        assert!(gap[0].1.contains("no milestone names lot 2"), "{gap:?}");
        let no_first = violations_of(&[0, 2]);
        assert!(no_first[0].1.contains("lot 1"), "{no_first:?}");
        let too_far = violations_of(&[1, 11]);
        assert_eq!(too_far[0].0, "terms.payment_terms.milestones[1].lot");
    }

    #[test]
    fn a_request_names_a_lot_of_the_terms_or_the_final_one() {
        assert_eq!(target(0, 0).unwrap(), LotTarget::Final);
        assert_eq!(target(2, 0).unwrap(), LotTarget::Final);
        assert_eq!(target(2, 1).unwrap(), LotTarget::Lot(1));
        assert_eq!(target(2, 2).unwrap(), LotTarget::Final);
        for (lots, requested) in [(0, 1), (2, 3)] {
            match target(lots, requested) {
                Err(ServiceError::InvalidArgument(v)) => assert_eq!(v[0].field, "lot"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_last_lot_is_the_final_shipment_and_no_other() {
        assert!(check_lot_shipment(2, 1, 0, false).is_ok());
        assert!(check_lot_shipment(2, 1, 1, false).is_ok());
        assert!(check_lot_shipment(2, 2, 0, true).is_ok());
        for (next, is_final) in [(1, true), (2, false)] {
            match check_lot_shipment(2, next, 0, is_final) {
                Err(ServiceError::InvalidArgument(v)) => assert_eq!(v[0].field, "final"),
                other => panic!("lot {next} final {is_final}: {other:?}"),
            }
        }
        // A lot recorded again under another key is not taken for the next.
        assert!(matches!(
            check_lot_shipment(2, 2, 1, true),
            Err(ServiceError::FailedPrecondition(_))
        ));
        // Without lot terms part shipments come as before.
        assert!(check_lot_shipment(0, 3, 0, false).is_ok());
        assert!(check_lot_shipment(0, 3, 0, true).is_ok());
    }

    fn shipped() -> LotFacts {
        LotFacts {
            lot: 1,
            shipped_at: NOW,
            received_at: None,
            accepted_at: None,
        }
    }

    #[test]
    fn a_lot_is_received_and_accepted_once_after_it_shipped_and_never_in_dispute() {
        let lot = shipped();
        assert!(check_lot_receipt(Status::Funded, 1, Some(&lot), NOW + Duration::DAY).is_ok());
        assert!(check_lot_acceptance(Status::Funded, 1, Some(&lot)).is_ok());
        assert!(check_lot_acceptance(Status::Delivered, 1, Some(&lot)).is_ok());
        match check_lot_receipt(Status::Funded, 1, Some(&lot), NOW - Duration::DAY) {
            Err(ServiceError::InvalidArgument(v)) => assert_eq!(v[0].field, "received_at"),
            other => panic!("{other:?}"),
        }
        for status in [
            Status::InDispute,
            Status::Completed,
            Status::Cancelled,
            Status::AwaitingPayment,
        ] {
            assert!(matches!(
                check_lot_acceptance(status, 1, Some(&lot)),
                Err(ServiceError::FailedPrecondition(m)) if m.contains(status.as_str())
            ));
        }
        assert!(matches!(
            check_lot_acceptance(Status::Funded, 1, None),
            Err(ServiceError::FailedPrecondition(m)) if m.contains("not shipped")
        ));
        let received = LotFacts {
            received_at: Some(NOW),
            ..lot
        };
        assert!(check_lot_receipt(Status::Funded, 1, Some(&received), NOW).is_err());
        let accepted = LotFacts {
            accepted_at: Some(NOW),
            ..lot
        };
        assert!(check_lot_acceptance(Status::Funded, 1, Some(&accepted)).is_err());
    }

    #[test]
    fn an_amendment_after_lots_shipped_keeps_them_and_what_they_released() {
        use ta_runtime::money::Currency;

        use crate::domain::{
            negotiation::Protection,
            terms::{Inspection, Scheme, Trigger},
        };
        let usd = |minor| Money::new(minor, Currency::parse("USD").unwrap());
        let milestone = |id: &str, lot, amount| PaymentMilestone {
            milestone_id: id.into(),
            share_basis_points: 5_000,
            trigger: Trigger::AfterSigning,
            due_days: 1,
            amount: usd(amount),
            lot,
        };
        let terms = |milestones| Terms {
            protection: Protection::TradeAssurance,
            title: "mugs".into(),
            line_items: Vec::new(),
            quality_criteria: Vec::new(),
            shipment_deadline: NOW,
            delivery_deadline: NOW,
            inspection: Inspection::None,
            scheme: Scheme::DepositAndBalance,
            milestones,
            pay_later: None,
            inspection_period_days: 1,
            claim_window_days: 1,
            total: usd(1_000),
        };
        let signed = terms(vec![milestone("a", 1, 400), milestone("b", 2, 600)]);
        let three_lots = terms(vec![
            milestone("a", 1, 400),
            milestone("b", 2, 300),
            milestone("c", 3, 300),
        ]);
        assert!(check_lot_amendment(&signed, &three_lots, 0, &[]).is_ok());
        assert!(matches!(
            check_lot_amendment(&signed, &three_lots, 1, &[]),
            Err(ServiceError::InvalidArgument(_))
        ));
        let more_for_b = terms(vec![milestone("a", 1, 400), milestone("b", 2, 700)]);
        assert!(check_lot_amendment(&signed, &more_for_b, 1, &["a".into()]).is_ok());
        let less_for_a = terms(vec![milestone("a", 1, 300), milestone("b", 2, 700)]);
        assert!(check_lot_amendment(&signed, &less_for_a, 1, &["a".into()]).is_err());
        let a_moved = terms(vec![milestone("a", 2, 400), milestone("b", 1, 600)]);
        assert!(check_lot_amendment(&signed, &a_moved, 1, &["a".into()]).is_err());
    }

    #[test]
    fn lots_fall_due_in_order_and_accepted_ones_never() {
        let lots = [
            (1, Some(NOW), false),
            (2, Some(NOW + Duration::DAY), false),
            (3, Some(NOW - Duration::DAY), true),
            (4, None, false),
        ];
        assert_eq!(lots_due(&lots, NOW), vec![1]);
        assert_eq!(lots_due(&lots, NOW + Duration::DAY), vec![1, 2]);
        assert_eq!(next_lot_due(&lots), Some(NOW));
        assert_eq!(next_lot_due(&lots[2..]), None);
    }
}
