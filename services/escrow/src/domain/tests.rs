use std::collections::HashMap;

use ta_runtime::money::{Currency, Money};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::account::split_refund;
use super::*;

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH
}

fn account(payments: &[i64]) -> EscrowAccount {
    let schedule = payments
        .iter()
        .enumerate()
        .map(|(i, amount)| {
            (
                format!("m{i}"),
                Money::new(*amount, usd()),
                OffsetDateTime::UNIX_EPOCH,
            )
        })
        .collect();
    EscrowAccount::open(
        Uuid::now_v7(),
        NewAccount {
            contract_id: "c-1".into(),
            buyer_principal_id: "buyer-1".into(),
            supplier_id: "s-1".into(),
            schedule,
            hold_until: OffsetDateTime::UNIX_EPOCH + Duration::days(30),
        },
        OffsetDateTime::UNIX_EPOCH,
    )
    .unwrap()
}

#[test]
fn status_transition_table_covers_every_pair() {
    use Action::*;
    use Status::*;
    let p = PartiallyFunded;
    let expected = [
        (
            AwaitingFunding,
            [
                Some(p),
                Some(Funded),
                None,
                None,
                Some(AwaitingFunding),
                Some(AwaitingFunding),
                Some(Closed),
            ],
        ),
        (
            PartiallyFunded,
            [
                Some(p),
                Some(Funded),
                Some(p),
                Some(p),
                Some(p),
                Some(p),
                Some(Closed),
            ],
        ),
        (
            Funded,
            [
                None,
                None,
                Some(Funded),
                Some(Funded),
                Some(Funded),
                Some(Funded),
                Some(Closed),
            ],
        ),
        (Closed, [None, None, None, None, None, None, None]),
    ];
    assert_eq!(expected.len(), Status::ALL.len());
    for (from, row) in expected {
        for (action, to) in Action::ALL.into_iter().zip(row) {
            assert_eq!(from.after(action), to, "{from:?} --{action:?}-->");
        }
    }
    // Every (from, to) pair of statuses: reachable in one step exactly when
    // some action of the table leads there.
    let reachable = [
        (AwaitingFunding, AwaitingFunding),
        (AwaitingFunding, PartiallyFunded),
        (AwaitingFunding, Funded),
        (AwaitingFunding, Closed),
        (PartiallyFunded, PartiallyFunded),
        (PartiallyFunded, Funded),
        (PartiallyFunded, Closed),
        (Funded, Funded),
        (Funded, Closed),
    ];
    for from in Status::ALL {
        for to in Status::ALL {
            let by_table = Action::ALL.into_iter().any(|a| from.after(a) == Some(to));
            assert_eq!(
                by_table,
                reachable.contains(&(from, to)),
                "{from:?} -> {to:?}"
            );
        }
    }
    let _ = (
        FundPart,
        FundComplete,
        Release,
        Refund,
        Freeze,
        Unfreeze,
        Close,
    );
}

#[test]
fn statuses_round_trip_through_their_names() {
    for status in Status::ALL {
        assert_eq!(Status::parse(status.as_str()), Some(status));
    }
    for kind in AccountKind::ALL {
        assert_eq!(AccountKind::parse(kind.as_str()), Some(kind));
    }
    for status in HoldStatus::ALL {
        assert_eq!(HoldStatus::parse(status.as_str()), Some(status));
    }
    assert_eq!(Status::parse("FUNDED"), None);
}

#[test]
fn funding_moves_through_partially_funded_to_funded() {
    let mut a = account(&[300, 700]);
    assert_eq!(a.due_for("m0").unwrap(), 300);
    a.record_funding("m0", 100).unwrap();
    assert_eq!(
        a.status,
        Status::PartiallyFunded,
        "a short credit leaves the rest due"
    );
    assert_eq!(a.due_for("m0").unwrap(), 200);
    a.record_funding("m0", 200).unwrap();
    assert!(a.due_for("m0").is_err(), "paid in full");
    a.record_funding("m1", 700).unwrap();
    assert_eq!(a.status, Status::Funded);
    assert!(a.record_funding("m1", 1).is_err());
    assert!(matches!(
        a.due_for("nope"),
        Err(ServiceError::NotFound { .. })
    ));
}

use ta_runtime::ServiceError;

#[test]
fn a_schedule_needs_positive_amounts_in_one_currency() {
    let open = |schedule| {
        EscrowAccount::open(
            Uuid::now_v7(),
            NewAccount {
                contract_id: "c".into(),
                buyer_principal_id: "b".into(),
                supplier_id: "s".into(),
                schedule,
                hold_until: OffsetDateTime::UNIX_EPOCH + Duration::days(30),
            },
            OffsetDateTime::UNIX_EPOCH,
        )
    };
    let at = OffsetDateTime::UNIX_EPOCH;
    let eur = Currency::parse("EUR").unwrap();
    assert!(open(vec![]).is_err());
    assert!(open(vec![("m".into(), Money::new(0, usd()), at)]).is_err());
    assert!(
        open(vec![
            ("m".into(), Money::new(1, usd()), at),
            ("n".into(), Money::new(1, eur), at)
        ])
        .is_err()
    );
    assert!(
        open(vec![
            ("m".into(), Money::new(1, usd()), at),
            ("m".into(), Money::new(1, usd()), at)
        ])
        .is_err()
    );
    assert!(open(vec![("m".into(), Money::new(1, usd()), at)]).is_ok());
}

#[test]
fn a_frozen_account_moves_money_only_for_a_freezing_claim() {
    let mut a = account(&[1_000]);
    a.record_funding("m0", 1_000).unwrap();
    assert!(a.freeze("claim-1", t0()).unwrap());
    assert!(!a.freeze("claim-1", t0()).unwrap(), "idempotent per claim");
    assert!(a.freeze("claim-2", t0()).unwrap());
    let milestone = Settles::Milestone("delivery".into());
    let error = a
        .authorize_outflow(Action::Release, &milestone)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("frozen for claim(s) claim-1, claim-2"),
        "{error}"
    );
    assert!(
        a.authorize_outflow(Action::Refund, &Settles::Cancellation)
            .is_err()
    );
    assert!(
        a.authorize_outflow(Action::Refund, &Settles::Claim("claim-3".into()))
            .is_err()
    );
    let purpose = a
        .authorize_outflow(Action::Refund, &Settles::Claim("claim-2".into()))
        .unwrap();
    assert_eq!(purpose.key, "refund:claim:claim-2");
    assert!(a.close(0, OffsetDateTime::UNIX_EPOCH).is_err(), "frozen");
    assert!(a.unfreeze("claim-1", t0()).unwrap());
    assert!(!a.unfreeze("claim-1", t0()).unwrap(), "idempotent");
    assert!(a.unfreeze("claim-2", t0()).unwrap());
    let purpose = a.authorize_outflow(Action::Release, &milestone).unwrap();
    assert_eq!(purpose.key, "release:milestone:delivery");
    assert_eq!(purpose.scope, format!("escrow:{}", a.id));
}

#[test]
fn the_hold_deadline_is_after_the_schedule_and_in_the_future() {
    let due = t0() + Duration::days(10);
    let open = |hold_until| {
        EscrowAccount::open(
            Uuid::now_v7(),
            NewAccount {
                contract_id: "c".into(),
                buyer_principal_id: "b".into(),
                supplier_id: "s".into(),
                schedule: vec![("m".into(), Money::new(1, usd()), due)],
                hold_until,
            },
            t0(),
        )
    };
    for bad in [t0() - Duration::days(1), t0(), due - Duration::days(1), due] {
        let error = open(bad).unwrap_err();
        assert!(
            matches!(&error, ServiceError::InvalidArgument(v) if v[0].field == "hold_until"),
            "{bad}: {error:?}"
        );
    }
    let a = open(due + Duration::seconds(1)).unwrap();
    assert_eq!(a.hold_until, due + Duration::seconds(1));
    assert!(a.hold_deadline_runs());
}

#[test]
fn freezes_pause_the_hold_deadline_for_the_time_spent_frozen() {
    let mut a = account(&[1_000]);
    let until = a.hold_until;
    let hour = Duration::hours(1);
    assert!(a.freeze("claim-1", t0() + hour).unwrap());
    assert!(!a.hold_deadline_runs(), "paused while frozen");
    assert!(a.freeze("claim-2", t0() + 2 * hour).unwrap());
    assert!(!a.freeze("claim-2", t0() + 3 * hour).unwrap());
    assert_eq!(a.hold_paused_at, Some(t0() + hour), "from the first freeze");
    assert!(a.unfreeze("claim-1", t0() + 4 * hour).unwrap());
    assert_eq!(a.hold_until, until, "still frozen for claim-2");
    assert!(!a.hold_deadline_runs());
    assert!(a.unfreeze("claim-2", t0() + 6 * hour).unwrap());
    assert_eq!(a.hold_until, until + 5 * hour, "frozen from 1h to 6h");
    assert_eq!(a.hold_paused_at, None);
    assert!(a.hold_deadline_runs());
    assert!(!a.unfreeze("claim-2", t0() + 9 * hour).unwrap());
    assert_eq!(
        a.hold_until,
        until + 5 * hour,
        "a repeated unfreeze moves nothing"
    );
    // An amendment while frozen: the new deadline moves only by the time
    // frozen after it.
    a.freeze("claim-3", t0() + 10 * hour).unwrap();
    a.set_hold_until(until + 100 * hour, t0() + 12 * hour);
    a.unfreeze("claim-3", t0() + 13 * hour).unwrap();
    assert_eq!(a.hold_until, until + 101 * hour);
    a.close(0, t0()).unwrap();
    assert!(!a.hold_deadline_runs(), "closed");
}

#[test]
fn close_needs_an_empty_account_and_is_final() {
    let mut a = account(&[1_000]);
    a.record_funding("m0", 1_000).unwrap();
    assert!(
        a.close(1, OffsetDateTime::UNIX_EPOCH)
            .unwrap_err()
            .to_string()
            .contains("holds USD 1 minor units")
    );
    a.close(0, OffsetDateTime::UNIX_EPOCH).unwrap();
    assert_eq!(a.status, Status::Closed);
    assert!(a.freeze("claim", t0()).is_err());
    assert!(a.due_for("m0").is_err());
    assert!(
        a.authorize_outflow(Action::Release, &Settles::Claim("c".into()))
            .is_err()
    );
    assert!(a.close(0, OffsetDateTime::UNIX_EPOCH).is_err());
}

#[test]
fn purposes_fit_their_direction() {
    let mut a = account(&[1]);
    a.record_funding("m0", 1).unwrap();
    assert!(matches!(
        a.authorize_outflow(Action::Refund, &Settles::Milestone("m".into())),
        Err(ServiceError::InvalidArgument(_))
    ));
    assert!(matches!(
        a.authorize_outflow(Action::Release, &Settles::Cancellation),
        Err(ServiceError::InvalidArgument(_))
    ));
    assert!(matches!(
        a.authorize_outflow(Action::Refund, &Settles::Acceptance),
        Err(ServiceError::InvalidArgument(_))
    ));
    let purpose = a
        .authorize_outflow(Action::Release, &Settles::Acceptance)
        .unwrap();
    assert_eq!(purpose.key, "release:acceptance");
}

#[test]
fn refunds_go_back_to_the_loan_first() {
    assert_eq!(split_refund(500, &[("p", 300)]), (vec![("p", 300)], 200));
    assert_eq!(split_refund(200, &[("p", 300)]), (vec![("p", 200)], 0));
    assert_eq!(split_refund(200, &[("p", 0)]), (vec![], 200));
    assert_eq!(
        split_refund(200, &[("p", -5), ("q", 50)]),
        (vec![("q", 50)], 150)
    );
    assert_eq!(split_refund::<&str>(200, &[]), (vec![], 200));
}

fn clearing() -> AccountKey {
    AccountKey::gateway_clearing(usd())
}

#[test]
fn a_linked_transfer_checks_every_leg_before_anything_moves() {
    let mut ledger = Ledger::new();
    let escrow = Uuid::now_v7();
    let held = AccountKey::escrow_held(escrow, usd());
    ledger
        .transfer_now(&TransferRequest {
            id: Uuid::now_v7(),
            purpose: Purpose::funding(escrow, Uuid::now_v7()),
            escrow_account: Some(escrow),
            legs: vec![Leg {
                debit: clearing(),
                credit: held.clone(),
                amount_minor: 100,
            }],
        })
        .unwrap();
    let supplier = AccountKey::supplier_payable("s-1", usd());
    let refund = AccountKey::buyer_refund_payable(escrow, usd());
    let error = ledger
        .transfer_now(&TransferRequest {
            id: Uuid::now_v7(),
            purpose: Purpose::refund_cancellation(escrow),
            escrow_account: Some(escrow),
            legs: vec![
                Leg {
                    debit: held.clone(),
                    credit: supplier.clone(),
                    amount_minor: 60,
                },
                Leg {
                    debit: held.clone(),
                    credit: refund.clone(),
                    amount_minor: 41,
                },
            ],
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            LedgerError::InsufficientFunds {
                available: 40,
                requested: 41,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(ledger.balance_of(&held).posted, 100, "no leg moved");
    assert_eq!(ledger.balance_of(&supplier).posted, 0);
    assert!(ledger.discrepancies().is_empty());
}

#[test]
fn plan_debits_lets_a_later_leg_use_an_earlier_credit() {
    let escrow = Uuid::now_v7();
    let held = AccountKey::escrow_held(escrow, usd());
    let suspense = AccountKey::suspense(usd());
    let legs = vec![
        Leg {
            debit: clearing(),
            credit: suspense.clone(),
            amount_minor: 5,
        },
        Leg {
            debit: suspense.clone(),
            credit: held.clone(),
            amount_minor: 5,
        },
    ];
    assert!(ledger::plan_debits(&legs, &HashMap::new()).is_ok());
    let reversed: Vec<Leg> = legs.into_iter().rev().collect();
    assert!(ledger::plan_debits(&reversed, &HashMap::new()).is_err());
    assert!(matches!(
        ledger::plan_debits(&[], &HashMap::new()),
        Err(LedgerError::NoLegs)
    ));
}

#[test]
fn a_hold_posts_at_most_its_amount_before_it_expires() {
    let now = OffsetDateTime::UNIX_EPOCH;
    let hold = Hold {
        id: Uuid::now_v7(),
        purpose: Purpose::payout("s", Uuid::now_v7()),
        escrow_account: None,
        debit: clearing(),
        credit: AccountKey::suspense(usd()),
        amount_minor: 100,
        status: HoldStatus::Pending,
        posted_minor: None,
        expires_at: now + Duration::hours(1),
    };
    assert_eq!(ledger::post_amount(&hold, None, now).unwrap(), 100);
    assert_eq!(ledger::post_amount(&hold, Some(40), now).unwrap(), 40);
    assert!(matches!(
        ledger::post_amount(&hold, Some(101), now),
        Err(LedgerError::PostExceedsHold { .. })
    ));
    assert!(matches!(
        ledger::post_amount(&hold, Some(0), now),
        Err(LedgerError::InvalidAmount(0))
    ));
    assert!(matches!(
        ledger::post_amount(&hold, None, hold.expires_at),
        Err(LedgerError::HoldExpired(_))
    ));
    let posted = Hold {
        status: HoldStatus::Posted,
        ..hold
    };
    assert!(matches!(
        ledger::post_amount(&posted, None, now),
        Err(LedgerError::HoldResolved { .. })
    ));
}

#[test]
fn ledger_refusals_map_to_stable_service_errors() {
    let refused: ServiceError = LedgerError::InsufficientFunds {
        account: clearing(),
        available: 0,
        requested: 1,
    }
    .into();
    assert!(matches!(
        refused,
        ServiceError::Refused {
            reason: ledger::INSUFFICIENT_FUNDS,
            ..
        }
    ));
    let used: ServiceError =
        LedgerError::PurposeUsed(Purpose::refund_cancellation(Uuid::nil())).into();
    assert!(matches!(
        used,
        ServiceError::Refused {
            reason: ledger::PURPOSE_ALREADY_SETTLED,
            ..
        }
    ));
    let twice: ServiceError = LedgerError::HoldResolved {
        hold: Uuid::nil(),
        status: HoldStatus::Voided,
    }
    .into();
    assert!(matches!(twice, ServiceError::FailedPrecondition(m) if m.contains("already voided")));
}

#[test]
fn money_sums_are_checked_never_wrapped() {
    let at = OffsetDateTime::UNIX_EPOCH;
    // A schedule whose total does not fit an i64 is refused at opening.
    let refused = EscrowAccount::open(
        Uuid::now_v7(),
        NewAccount {
            contract_id: "c".into(),
            buyer_principal_id: "b".into(),
            supplier_id: "s".into(),
            schedule: vec![
                ("m".into(), Money::new(i64::MAX, usd()), at),
                ("n".into(), Money::new(1, usd()), at),
            ],
            hold_until: at + Duration::days(30),
        },
        at,
    )
    .unwrap_err();
    assert!(
        matches!(
            refused,
            ta_runtime::errors::ServiceError::InvalidArgument(_)
        ),
        "{refused:?}"
    );
    let largest = account(&[i64::MAX - 1, 1]);
    assert_eq!(largest.expected_total().unwrap(), i64::MAX);
    assert_eq!(largest.funded_total().unwrap(), 0);
    assert_eq!(account::checked_total([i64::MAX, 1]), None);
    assert_eq!(account::checked_total([i64::MIN, -1]), None);
    assert_eq!(account::checked_total([]), Some(0));

    // Balances that sum to zero through partial sums beyond i64 are
    // balanced; an imbalance beyond i64 is reported, not wrapped.
    let escrow = Uuid::now_v7();
    let kept: std::collections::BTreeMap<AccountKey, i64> = [
        (AccountKey::escrow_held(escrow, usd()), i64::MAX),
        (AccountKey::supplier_payable("s", usd()), i64::MAX),
        (
            AccountKey::new(AccountKind::FinancingPartner, "p1", usd()),
            -i64::MAX,
        ),
        (
            AccountKey::new(AccountKind::FinancingPartner, "p2", usd()),
            -i64::MAX,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(ledger::check_totals(&kept, &HashMap::new()), Vec::new());
    let mut unbalanced = kept.clone();
    unbalanced.insert(clearing(), i64::MAX);
    assert_eq!(
        ledger::check_totals(&unbalanced, &HashMap::new()),
        vec![Discrepancy::CurrencyImbalance {
            currency: "USD".into(),
            sum: i64::MAX,
        }]
    );
}
