//! One suite, two ledgers: the in-memory reference (`domain::Ledger`) and
//! the Postgres one (`storage::PgLedger`) must behave alike.

mod common;

use common::*;
use escrow::{
    domain::{
        AccountKey, HoldRequest, HoldStatus, Ledger, LedgerError, LedgerStore, Leg, Purpose,
        TransferRequest,
    },
    storage::PgLedger,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Runs each suite function against both ledgers.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&mut escrow::domain::Ledger::new(), super::start()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[sqlx::test(migrator = "crate::common::MIGRATOR")]
                async fn $name(pool: sqlx::PgPool) {
                    super::$name(&mut escrow::storage::PgLedger::new(pool), super::start()).await;
                }
            )*
        }
    };
}

both!(
    a_transfer_moves_money_and_every_currency_sums_to_zero,
    a_purpose_moves_money_once,
    a_non_negative_account_is_never_overdrawn,
    a_linked_transfer_moves_every_leg_or_none,
    a_hold_reserves_then_posts_once_possibly_for_less,
    a_voided_hold_frees_its_reservation_and_resolves_once,
    expiry_voids_due_holds_and_an_expired_hold_cannot_post,
    bad_legs_are_refused,
);

fn start() -> OffsetDateTime {
    ta_runtime::timestamps::now()
}

fn fund(escrow: Uuid, amount: i64) -> TransferRequest {
    TransferRequest {
        id: Uuid::now_v7(),
        purpose: Purpose::funding(escrow, Uuid::now_v7()),
        escrow_account: Some(escrow),
        legs: vec![Leg {
            debit: AccountKey::gateway_clearing(usd()),
            credit: AccountKey::escrow_held(escrow, usd()),
            amount_minor: amount,
        }],
    }
}

fn release(escrow: Uuid, milestone: &str, amount: i64) -> TransferRequest {
    TransferRequest {
        id: Uuid::now_v7(),
        purpose: Purpose::release_milestone(escrow, milestone),
        escrow_account: Some(escrow),
        legs: vec![Leg {
            debit: AccountKey::escrow_held(escrow, usd()),
            credit: AccountKey::supplier_payable("supplier-1", usd()),
            amount_minor: amount,
        }],
    }
}

fn payout(amount: i64, expires_at: OffsetDateTime) -> HoldRequest {
    let id = Uuid::now_v7();
    HoldRequest {
        id,
        purpose: Purpose::payout("supplier-1", id),
        escrow_account: None,
        debit: AccountKey::supplier_payable("supplier-1", usd()),
        credit: AccountKey::gateway_clearing(usd()),
        amount_minor: amount,
        expires_at,
    }
}

async fn a_transfer_moves_money_and_every_currency_sums_to_zero<L: LedgerStore>(
    ledger: &mut L,
    _now: OffsetDateTime,
) {
    let escrow = Uuid::now_v7();
    let postings = ledger.transfer(&fund(escrow, 10_000)).await.unwrap();
    assert_eq!(postings.len(), 1);
    assert_eq!(postings[0].amount_minor, 10_000);
    ledger
        .transfer(&release(escrow, "m1", 4_000))
        .await
        .unwrap();
    let euro = TransferRequest {
        legs: vec![Leg {
            debit: AccountKey::gateway_clearing(eur()),
            credit: AccountKey::escrow_held(escrow, eur()),
            amount_minor: 7,
        }],
        ..fund(escrow, 1)
    };
    ledger.transfer(&euro).await.unwrap();
    assert_eq!(
        posted(ledger, &AccountKey::escrow_held(escrow, usd())).await,
        6_000
    );
    assert_eq!(
        posted(ledger, &AccountKey::supplier_payable("supplier-1", usd())).await,
        4_000
    );
    assert_eq!(
        posted(ledger, &AccountKey::gateway_clearing(usd())).await,
        -10_000
    );
    assert_eq!(
        posted(ledger, &AccountKey::escrow_held(escrow, eur())).await,
        7
    );
    assert_eq!(
        posted(ledger, &AccountKey::suspense(usd())).await,
        0,
        "never used"
    );
    assert_sound(ledger).await;
}

async fn a_purpose_moves_money_once<L: LedgerStore>(ledger: &mut L, _now: OffsetDateTime) {
    let escrow = Uuid::now_v7();
    ledger.transfer(&fund(escrow, 10_000)).await.unwrap();
    ledger
        .transfer(&release(escrow, "m1", 1_000))
        .await
        .unwrap();
    // Another request (another transfer id, another amount) for the same
    // milestone is refused: money moves once per purpose, not per key.
    let again = ledger
        .transfer(&release(escrow, "m1", 500))
        .await
        .unwrap_err();
    assert!(matches!(again, LedgerError::PurposeUsed(_)), "{again}");
    // The same purpose on another escrow account is another purpose.
    let other = Uuid::now_v7();
    ledger.transfer(&fund(other, 100)).await.unwrap();
    ledger.transfer(&release(other, "m1", 100)).await.unwrap();
    assert_eq!(
        posted(ledger, &AccountKey::escrow_held(escrow, usd())).await,
        9_000
    );
    assert_sound(ledger).await;
}

async fn a_non_negative_account_is_never_overdrawn<L: LedgerStore>(
    ledger: &mut L,
    now: OffsetDateTime,
) {
    let escrow = Uuid::now_v7();
    ledger.transfer(&fund(escrow, 1_000)).await.unwrap();
    let error = ledger
        .transfer(&release(escrow, "m1", 1_001))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LedgerError::InsufficientFunds {
                available: 1_000,
                requested: 1_001,
                ..
            }
        ),
        "{error}"
    );
    // The refused release did not use up its purpose.
    ledger
        .transfer(&release(escrow, "m1", 1_000))
        .await
        .unwrap();
    // A pending payout reserves the payable: a second one sees only the rest.
    let first = ledger
        .hold(&payout(600, now + Duration::hours(1)))
        .await
        .unwrap();
    let error = ledger
        .hold(&payout(401, now + Duration::hours(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LedgerError::InsufficientFunds {
                available: 400,
                requested: 401,
                ..
            }
        ),
        "{error}"
    );
    let balance = ledger
        .balance(&AccountKey::supplier_payable("supplier-1", usd()))
        .await
        .unwrap();
    assert_eq!(
        (balance.posted, balance.pending_debits, balance.available()),
        (1_000, 600, 400)
    );
    ledger.post_hold(first.id, None, now).await.unwrap();
    ledger
        .hold(&payout(400, now + Duration::hours(1)))
        .await
        .unwrap();
    // The unbounded clearing account may run negative: it is where money
    // enters from outside.
    assert!(posted(ledger, &AccountKey::gateway_clearing(usd())).await < 0);
    assert_sound(ledger).await;
}

async fn a_linked_transfer_moves_every_leg_or_none<L: LedgerStore>(
    ledger: &mut L,
    _now: OffsetDateTime,
) {
    let escrow = Uuid::now_v7();
    ledger.transfer(&fund(escrow, 1_000)).await.unwrap();
    let held = AccountKey::escrow_held(escrow, usd());
    let partner = AccountKey::financing_partner("partner-1", usd());
    let buyer = AccountKey::buyer_refund_payable(escrow, usd());
    let split = |to_partner, to_buyer| TransferRequest {
        id: Uuid::now_v7(),
        purpose: Purpose::refund_claim(escrow, "claim-1"),
        escrow_account: Some(escrow),
        legs: vec![
            Leg {
                debit: held.clone(),
                credit: partner.clone(),
                amount_minor: to_partner,
            },
            Leg {
                debit: held.clone(),
                credit: buyer.clone(),
                amount_minor: to_buyer,
            },
        ],
    };
    let error = ledger.transfer(&split(700, 301)).await.unwrap_err();
    assert!(
        matches!(error, LedgerError::InsufficientFunds { .. }),
        "{error}"
    );
    assert_eq!(
        posted(ledger, &partner).await,
        0,
        "the first leg did not move"
    );
    assert_eq!(posted(ledger, &held).await, 1_000);
    let postings = ledger.transfer(&split(700, 300)).await.unwrap();
    assert_eq!(postings.len(), 2);
    assert_eq!(postings[0].transfer_id, postings[1].transfer_id, "one unit");
    assert_eq!(posted(ledger, &held).await, 0);
    assert_eq!(posted(ledger, &partner).await, 700);
    assert_eq!(posted(ledger, &buyer).await, 300);
    assert_sound(ledger).await;
}

async fn a_hold_reserves_then_posts_once_possibly_for_less<L: LedgerStore>(
    ledger: &mut L,
    now: OffsetDateTime,
) {
    let escrow = Uuid::now_v7();
    let held = AccountKey::escrow_held(escrow, usd());
    let bank = HoldRequest {
        id: Uuid::now_v7(),
        purpose: Purpose::funding(escrow, Uuid::now_v7()),
        escrow_account: Some(escrow),
        debit: AccountKey::gateway_clearing(usd()),
        credit: held.clone(),
        amount_minor: 5_000,
        expires_at: now + Duration::hours(1),
    };
    let hold = ledger.hold(&bank).await.unwrap();
    assert_eq!(hold.status, HoldStatus::Pending);
    let balance = ledger.balance(&held).await.unwrap();
    assert_eq!(
        (balance.posted, balance.pending_credits),
        (0, 5_000),
        "pending is not posted"
    );
    let error = ledger
        .post_hold(hold.id, Some(5_001), now)
        .await
        .unwrap_err();
    assert!(
        matches!(error, LedgerError::PostExceedsHold { .. }),
        "{error}"
    );
    // The bank credited less than expected: the hold posts what came.
    let posting = ledger.post_hold(hold.id, Some(4_990), now).await.unwrap();
    assert_eq!(
        (posting.amount_minor, posting.hold_id),
        (4_990, Some(hold.id))
    );
    let resolved = ledger.hold_status(hold.id).await.unwrap();
    assert_eq!(
        (resolved.status, resolved.posted_minor),
        (HoldStatus::Posted, Some(4_990))
    );
    let twice = ledger.post_hold(hold.id, None, now).await.unwrap_err();
    assert!(
        matches!(
            twice,
            LedgerError::HoldResolved {
                status: HoldStatus::Posted,
                ..
            }
        ),
        "{twice}"
    );
    let void = ledger.void_hold(hold.id).await.unwrap_err();
    assert!(matches!(void, LedgerError::HoldResolved { .. }), "{void}");
    let balance = ledger.balance(&held).await.unwrap();
    assert_eq!((balance.posted, balance.pending_credits), (4_990, 0));
    let again = ledger
        .hold(&HoldRequest {
            id: Uuid::now_v7(),
            ..bank
        })
        .await
        .unwrap_err();
    assert!(matches!(again, LedgerError::PurposeUsed(_)), "{again}");
    let missing = ledger
        .post_hold(Uuid::now_v7(), None, now)
        .await
        .unwrap_err();
    assert!(matches!(missing, LedgerError::HoldNotFound(_)), "{missing}");
    assert_sound(ledger).await;
}

async fn a_voided_hold_frees_its_reservation_and_resolves_once<L: LedgerStore>(
    ledger: &mut L,
    now: OffsetDateTime,
) {
    let escrow = Uuid::now_v7();
    ledger.transfer(&fund(escrow, 1_000)).await.unwrap();
    ledger
        .transfer(&release(escrow, "m1", 1_000))
        .await
        .unwrap();
    let hold = ledger
        .hold(&payout(1_000, now + Duration::hours(1)))
        .await
        .unwrap();
    let payable = AccountKey::supplier_payable("supplier-1", usd());
    assert_eq!(ledger.balance(&payable).await.unwrap().available(), 0);
    let voided = ledger.void_hold(hold.id).await.unwrap();
    assert_eq!(voided.status, HoldStatus::Voided);
    assert_eq!(ledger.balance(&payable).await.unwrap().available(), 1_000);
    let twice = ledger.void_hold(hold.id).await.unwrap_err();
    assert!(
        matches!(
            twice,
            LedgerError::HoldResolved {
                status: HoldStatus::Voided,
                ..
            }
        ),
        "{twice}"
    );
    let post = ledger.post_hold(hold.id, None, now).await.unwrap_err();
    assert!(
        matches!(post, LedgerError::HoldResolved { .. }),
        "a voided hold never commits"
    );
    assert_eq!(posted(ledger, &payable).await, 1_000);
    assert_sound(ledger).await;
}

async fn expiry_voids_due_holds_and_an_expired_hold_cannot_post<L: LedgerStore>(
    ledger: &mut L,
    now: OffsetDateTime,
) {
    let escrow = Uuid::now_v7();
    ledger.transfer(&fund(escrow, 1_000)).await.unwrap();
    ledger
        .transfer(&release(escrow, "m1", 1_000))
        .await
        .unwrap();
    let soon = ledger
        .hold(&payout(100, now + Duration::minutes(5)))
        .await
        .unwrap();
    let later = ledger
        .hold(&payout(200, now + Duration::hours(5)))
        .await
        .unwrap();
    let at = now + Duration::minutes(5);
    let error = ledger.post_hold(soon.id, None, at).await.unwrap_err();
    assert!(matches!(error, LedgerError::HoldExpired(_)), "{error}");
    let expired = ledger.expire_due_holds(at).await.unwrap();
    assert!(
        expired.contains(&soon.id),
        "{expired:?} lacks {} (expires {:?}, expired at {at:?})",
        soon.id,
        soon.expires_at
    );
    assert!(!expired.contains(&later.id));
    assert_eq!(
        ledger.hold_status(soon.id).await.unwrap().status,
        HoldStatus::Voided
    );
    assert!(
        !ledger
            .expire_due_holds(at)
            .await
            .unwrap()
            .contains(&soon.id),
        "expiry resolves a hold once"
    );
    assert_eq!(
        ledger.hold_status(later.id).await.unwrap().status,
        HoldStatus::Pending
    );
    ledger.post_hold(later.id, None, at).await.unwrap();
    assert_sound(ledger).await;
}

async fn bad_legs_are_refused<L: LedgerStore>(ledger: &mut L, now: OffsetDateTime) {
    let escrow = Uuid::now_v7();
    let held = AccountKey::escrow_held(escrow, usd());
    let leg = |debit: &AccountKey, credit: &AccountKey, amount| TransferRequest {
        legs: vec![Leg {
            debit: debit.clone(),
            credit: credit.clone(),
            amount_minor: amount,
        }],
        ..fund(escrow, 1)
    };
    let clearing = AccountKey::gateway_clearing(usd());
    for (request, expect) in [
        (leg(&clearing, &held, 0), "positive"),
        (leg(&clearing, &held, -5), "positive"),
        (
            leg(&AccountKey::gateway_clearing(eur()), &held, 5),
            "different currencies",
        ),
        (leg(&clearing, &clearing, 5), "same account"),
        (
            TransferRequest {
                legs: vec![],
                ..fund(escrow, 1)
            },
            "at least one leg",
        ),
    ] {
        let error = ledger.transfer(&request).await.unwrap_err().to_string();
        assert!(error.contains(expect), "{error}");
    }
    let hold = HoldRequest {
        amount_minor: 0,
        ..payout(1, now + Duration::hours(1))
    };
    assert!(matches!(
        ledger.hold(&hold).await,
        Err(LedgerError::InvalidAmount(0))
    ));
    assert_eq!(posted(ledger, &held).await, 0);
    assert_sound(ledger).await;
}

#[tokio::test]
async fn the_reference_ledger_reports_nothing_when_empty() {
    assert_sound(&mut Ledger::new()).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_postgres_ledger_reports_nothing_when_empty(pool: sqlx::PgPool) {
    assert_sound(&mut PgLedger::new(pool)).await;
}
