//! The orders' money, exactly once: each order's escrow statement against
//! what its client was told.
//!
//! An order's money moves in three ways: the buyer's fundings (each
//! acknowledged attempt once; an attempt answered PENDING may complete
//! later through the documented path, the gateway's webhook or escrow's
//! status check), the releases and refunds contract's and dispute's
//! workflows make after a step the client was told of, and the refund
//! payments escrow sends the buyer through the gateway. What the client was
//! told fixes which releases and refunds must be there, once each, with
//! their amounts:
//!
//! | told | must be there |
//! |---|---|
//! | amendment signed by both (10 -> 8 items) | one refund, purpose the amendment (version 2), of what was funded above 800.00 USD |
//! | cancelled | one refund, purpose the cancellation, of everything funded (none when nothing was) |
//! | claim decided, or a partial offer accepted (R) | one refund, purpose the claim, of R; one release, purpose the claim, of the rest |
//! | a full-refund offer accepted | one refund, purpose the claim, of everything held |
//! | accepted | one release, purpose the acceptance, of everything held |
//!
//! and nothing else: no milestone release, no other purpose, no second
//! transfer for a purpose, no suspense or correction posting. The
//! account's totals must agree, an ended order holds nothing, and every
//! refund owed to the buyer was paid out through the gateway (the refund
//! payments equal the refund legs credited to the buyer's payable).

use std::collections::{BTreeMap, BTreeSet};

use ta_proto::tradeassurance::escrow::v1::{
    GetEscrowStatementResponse, LedgerAccountKind, Posting, PostingKind, purpose,
};

use super::workload::{AMENDED_TOTAL_MINOR, ClaimEnd, OrderTold};

/// What the statements of the orders showed, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderSums {
    pub accounts: u64,
    pub fundings: u64,
    pub funded_minor: i64,
    /// Fundings of attempts answered PENDING, completed later.
    pub documented: u64,
    pub releases: u64,
    pub released_minor: i64,
    /// Refund transfers (one or two legs each).
    pub refunds: u64,
    pub refunded_minor: i64,
    pub refund_payments: u64,
    pub refund_paid_minor: i64,
    /// Refund legs that went back to the Pay Later partner.
    pub to_partner_minor: i64,
}

fn amount(p: &Posting) -> i64 {
    p.amount.as_ref().map_or(0, |m| m.amount_minor)
}

/// A release's or refund's purpose, as the statement names it.
fn purpose_of(p: &Posting) -> String {
    match p.purpose.as_ref().and_then(|p| p.purpose.as_ref()) {
        Some(purpose::Purpose::MilestoneId(m)) => format!("milestone {m}"),
        Some(purpose::Purpose::Acceptance(_)) => "acceptance".into(),
        Some(purpose::Purpose::Cancellation(_)) => "cancellation".into(),
        Some(purpose::Purpose::ClaimId(c)) => format!("claim {c}"),
        Some(purpose::Purpose::AmendmentVersion(v)) => format!("amendment {v}"),
        None => "none".into(),
    }
}

fn credits(p: &Posting, kind: LedgerAccountKind) -> bool {
    p.credit_account.as_ref().is_some_and(|a| a.kind() == kind)
}

/// Compares one order's statement with what its client was told; every
/// difference is handed to `say`. Adds what it found to `sums`.
pub fn check_order(
    order: &OrderTold,
    statement: &GetEscrowStatementResponse,
    pending_attempts: &BTreeSet<String>,
    sums: &mut OrderSums,
    say: &mut impl FnMut(String),
) {
    let account_id = order.account_id.as_str();
    sums.accounts += 1;
    let mut fundings: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    // Per purpose: the transfers of releases, and of refunds (legs summed).
    let mut releases: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut refunds: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut owed_to_buyer = 0i64;
    let mut paid_to_buyer = 0i64;
    for p in &statement.postings {
        if p.escrow_account_id != account_id {
            say(format!(
                "{:?} posting {} names escrow account {}",
                p.kind(),
                p.posting_id,
                p.escrow_account_id
            ));
        }
        match p.kind() {
            PostingKind::Funding => {
                fundings
                    .entry(p.funding_attempt_id.as_str())
                    .or_default()
                    .push(amount(p));
                sums.fundings += 1;
                sums.funded_minor += amount(p);
            }
            PostingKind::Release => {
                if !credits(p, LedgerAccountKind::SupplierPayable) {
                    say(format!(
                        "release {} does not credit a supplier's payable",
                        p.posting_id
                    ));
                }
                releases.entry(purpose_of(p)).or_default().push(amount(p));
                sums.releases += 1;
                sums.released_minor += amount(p);
            }
            PostingKind::Refund => {
                if credits(p, LedgerAccountKind::BuyerRefundPayable) {
                    owed_to_buyer += amount(p);
                } else if credits(p, LedgerAccountKind::FinancingPartner) {
                    sums.to_partner_minor += amount(p);
                } else {
                    say(format!(
                        "refund {} credits neither the buyer's payable nor the partner",
                        p.posting_id
                    ));
                }
                let transfer = if p.transfer_id.is_empty() {
                    p.posting_id.clone()
                } else {
                    p.transfer_id.clone()
                };
                *refunds
                    .entry(purpose_of(p))
                    .or_default()
                    .entry(transfer)
                    .or_default() += amount(p);
                sums.refunded_minor += amount(p);
            }
            PostingKind::RefundPayment => {
                paid_to_buyer += amount(p);
                sums.refund_payments += 1;
                sums.refund_paid_minor += amount(p);
            }
            other => say(format!(
                "unexpected {other:?} posting {} of {} minor",
                p.posting_id,
                amount(p)
            )),
        }
    }
    sums.refunds += refunds.values().map(|t| t.len() as u64).sum::<u64>();

    // Fundings: each acknowledged attempt once; others only through the
    // documented PENDING path.
    let mut acknowledged = BTreeSet::new();
    for (attempt, told) in &order.fundings {
        acknowledged.insert(attempt.as_str());
        match fundings.get(attempt.as_str()).map(Vec::as_slice) {
            None | Some([]) => say(format!(
                "acknowledged funding attempt {attempt} ({told} minor) has no funding posting"
            )),
            Some([one]) if one == told => {}
            Some([one]) => say(format!(
                "funding attempt {attempt}: acknowledged {told} minor, posted {one}"
            )),
            Some(many) => say(format!(
                "funding attempt {attempt} posted {} times",
                many.len()
            )),
        }
    }
    for (attempt, postings) in &fundings {
        if acknowledged.contains(attempt) {
            continue;
        }
        if pending_attempts.contains(*attempt) && postings.len() == 1 {
            sums.documented += 1;
        } else {
            say(format!(
                "{} funding posting(s) for attempt {attempt:?} ({postings:?} minor), which no caller was told of",
                postings.len()
            ));
        }
    }
    let funded: i64 = fundings.values().flatten().sum();

    // What must have been released and refunded, by purpose.
    let mut want_refunds: BTreeMap<String, i64> = BTreeMap::new();
    let mut want_releases: BTreeMap<String, i64> = BTreeMap::new();
    let mut base = funded;
    if order.amended && funded > AMENDED_TOTAL_MINOR {
        want_refunds.insert("amendment 2".into(), funded - AMENDED_TOTAL_MINOR);
        base = AMENDED_TOTAL_MINOR;
    }
    if order.cancelled && funded > 0 {
        want_refunds.insert("cancellation".into(), base);
        base = 0;
    }
    if let Some(claim) = &order.claim {
        let purpose = format!("claim {}", claim.claim_id);
        match claim.end {
            ClaimEnd::Decided(r) | ClaimEnd::Settled(Some(r)) => {
                want_refunds.insert(purpose.clone(), r);
                want_releases.insert(purpose, base - r);
                base = 0;
            }
            ClaimEnd::Settled(None) => {
                want_refunds.insert(purpose, base);
                base = 0;
            }
            ClaimEnd::Withdrawn | ClaimEnd::Refused(_) | ClaimEnd::Filed => {}
        }
    }
    if order.accepted {
        want_releases.insert("acceptance".into(), base);
    }
    for (what, want, found) in [
        ("release", &want_releases, &releases),
        (
            "refund",
            &want_refunds,
            &refunds
                .iter()
                .map(|(k, t)| (k.clone(), t.values().copied().collect()))
                .collect::<BTreeMap<String, Vec<i64>>>(),
        ),
    ] {
        for (purpose, amount) in want {
            match found.get(purpose).map(Vec::as_slice) {
                None | Some([]) if *amount == 0 => {}
                None | Some([]) => say(format!(
                    "no {what} for the {purpose} the client was told of ({amount} minor expected)"
                )),
                Some([one]) if one == amount => {}
                Some([one]) => say(format!(
                    "the {what} for the {purpose} moved {one} minor, {amount} expected"
                )),
                Some(many) => say(format!(
                    "{} {what}s for the {purpose} ({many:?} minor): a purpose moves money once",
                    many.len()
                )),
            }
        }
        for (purpose, moved) in found {
            if !want.contains_key(purpose) {
                say(format!(
                    "{what} for the {purpose} ({moved:?} minor), which no caller was told of"
                ));
            }
        }
    }
    if paid_to_buyer != owed_to_buyer {
        say(format!(
            "refunds owed to the buyer {owed_to_buyer} minor, paid out through the gateway {paid_to_buyer}"
        ));
    }

    // The account's own totals.
    let released: i64 = releases.values().flatten().sum();
    let refunded: i64 = refunds.values().flat_map(|t| t.values()).sum();
    match &statement.account {
        Some(account) => {
            let of = |m: &Option<ta_proto::common::Money>| m.as_ref().map_or(0, |m| m.amount_minor);
            for (field, shown, expected) in [
                ("funded_total", of(&account.funded_total), funded),
                ("released_total", of(&account.released_total), released),
                ("refunded_total", of(&account.refunded_total), refunded),
                ("held", of(&account.held), funded - released - refunded),
            ] {
                if shown != expected {
                    say(format!(
                        "{field} is {shown} minor, its postings say {expected}"
                    ));
                }
            }
            let ended = order.accepted
                || order.cancelled
                || order
                    .claim
                    .as_ref()
                    .is_some_and(|c| matches!(c.end, ClaimEnd::Decided(_) | ClaimEnd::Settled(_)));
            if ended && of(&account.held) != 0 {
                say(format!(
                    "the order ended ({}) and its account still holds {} minor",
                    order.last_ok,
                    of(&account.held)
                ));
            }
        }
        None => say("the statement names no account".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::workload::{ClaimTold, DECIDED_MINOR};
    use ta_proto::{
        common::Money,
        tradeassurance::escrow::v1::{EscrowAccount, LedgerAccount, Purpose},
    };

    const ACCOUNT: &str = "acc-1";

    fn usd(minor: i64) -> Option<Money> {
        Some(Money {
            currency_code: "USD".into(),
            amount_minor: minor,
        })
    }

    fn posting(
        id: &str,
        kind: PostingKind,
        credit: LedgerAccountKind,
        minor: i64,
        purpose: Option<purpose::Purpose>,
    ) -> Posting {
        Posting {
            posting_id: id.into(),
            escrow_account_id: ACCOUNT.into(),
            kind: kind as i32,
            credit_account: Some(LedgerAccount {
                kind: credit as i32,
                ..Default::default()
            }),
            amount: usd(minor),
            purpose: purpose.map(|p| Purpose { purpose: Some(p) }),
            ..Default::default()
        }
    }

    fn statement(
        postings: Vec<Posting>,
        (funded, released, refunded): (i64, i64, i64),
    ) -> GetEscrowStatementResponse {
        GetEscrowStatementResponse {
            account: Some(EscrowAccount {
                escrow_account_id: ACCOUNT.into(),
                funded_total: usd(funded),
                released_total: usd(released),
                refunded_total: usd(refunded),
                held: usd(funded - released - refunded),
                ..Default::default()
            }),
            postings,
            ..Default::default()
        }
    }

    fn funding() -> Posting {
        let mut p = posting(
            "f",
            PostingKind::Funding,
            LedgerAccountKind::EscrowHeld,
            100_000,
            None,
        );
        p.funding_attempt_id = "att".into();
        p
    }

    fn order() -> OrderTold {
        OrderTold {
            account_id: ACCOUNT.into(),
            fundings: vec![("att".into(), 100_000)],
            ..OrderTold::default()
        }
    }

    fn differences(order: &OrderTold, s: &GetEscrowStatementResponse) -> Vec<String> {
        let mut found = Vec::new();
        check_order(
            order,
            s,
            &BTreeSet::new(),
            &mut OrderSums::default(),
            &mut |d| found.push(d),
        );
        found
    }

    #[test]
    fn a_decided_claim_needs_its_refund_paid_out_and_the_rest_released_once() {
        let mut o = order();
        o.claim = Some(ClaimTold {
            claim_id: "c1".into(),
            end: ClaimEnd::Decided(DECIDED_MINOR),
        });
        let claim = || Some(purpose::Purpose::ClaimId("c1".into()));
        let refund = posting(
            "r",
            PostingKind::Refund,
            LedgerAccountKind::BuyerRefundPayable,
            DECIDED_MINOR,
            claim(),
        );
        let paid = posting(
            "p",
            PostingKind::RefundPayment,
            LedgerAccountKind::GatewayClearing,
            DECIDED_MINOR,
            None,
        );
        let release = posting(
            "l",
            PostingKind::Release,
            LedgerAccountKind::SupplierPayable,
            100_000 - DECIDED_MINOR,
            claim(),
        );
        let totals = (100_000, 100_000 - DECIDED_MINOR, DECIDED_MINOR);
        let sound = vec![funding(), refund.clone(), release.clone(), paid.clone()];
        assert_eq!(
            differences(&o, &statement(sound, totals)),
            Vec::<String>::new()
        );

        let unpaid = vec![funding(), refund.clone(), release.clone()];
        let d = differences(&o, &statement(unpaid, totals));
        assert!(d.iter().any(|d| d.contains("paid out")), "{d:?}");

        let mut again = release.clone();
        again.posting_id = "l2".into();
        let twice = vec![
            funding(),
            refund.clone(),
            release.clone(),
            again,
            paid.clone(),
        ];
        let d = differences(&o, &statement(twice, (100_000, 160_000, DECIDED_MINOR)));
        assert!(d.iter().any(|d| d.contains("moves money once")), "{d:?}");

        // Accepted instead: the claim's money is not expected.
        o.claim = None;
        o.accepted = true;
        let d = differences(
            &o,
            &statement(vec![funding(), refund, release, paid], totals),
        );
        assert!(
            d.iter().any(|d| d.contains("no caller was told of")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|d| d.contains("no release for the acceptance")),
            "{d:?}"
        );
    }

    #[test]
    fn an_amended_then_accepted_order_refunds_the_excess_and_releases_the_rest() {
        let mut o = order();
        o.amended = true;
        o.accepted = true;
        let refund = posting(
            "r",
            PostingKind::Refund,
            LedgerAccountKind::FinancingPartner,
            20_000,
            Some(purpose::Purpose::AmendmentVersion(2)),
        );
        let release = posting(
            "l",
            PostingKind::Release,
            LedgerAccountKind::SupplierPayable,
            80_000,
            Some(purpose::Purpose::Acceptance(true)),
        );
        let s = statement(vec![funding(), refund, release], (100_000, 80_000, 20_000));
        assert_eq!(differences(&o, &s), Vec::<String>::new());
        o.amended = false;
        let d = differences(&o, &s);
        assert!(d.iter().any(|d| d.contains("amendment 2")), "{d:?}");
    }

    #[test]
    fn an_unacknowledged_funding_is_a_difference_unless_it_was_pending() {
        let o = OrderTold {
            account_id: ACCOUNT.into(),
            cancelled: true,
            ..OrderTold::default()
        };
        let refund = posting(
            "r",
            PostingKind::Refund,
            LedgerAccountKind::BuyerRefundPayable,
            100_000,
            Some(purpose::Purpose::Cancellation(true)),
        );
        let paid = posting(
            "p",
            PostingKind::RefundPayment,
            LedgerAccountKind::GatewayClearing,
            100_000,
            None,
        );
        let s = statement(vec![funding(), refund, paid], (100_000, 0, 100_000));
        let d = differences(&o, &s);
        assert!(
            d.iter().any(|d| d.contains("no caller was told of")),
            "{d:?}"
        );
        let mut found = Vec::new();
        let mut sums = OrderSums::default();
        check_order(
            &o,
            &s,
            &["att".to_owned()].into_iter().collect(),
            &mut sums,
            &mut |d| found.push(d),
        );
        assert_eq!(found, Vec::<String>::new());
        assert_eq!(sums.documented, 1);
    }
}
