//! What only the Postgres ledger has: append-only postings, roll-ups of the
//! shared accounts, reconciliation against the rows, and credits to a hot
//! account that never wait for its row.

mod common;

use std::time::Duration as StdDuration;

use common::*;
use escrow::{
    domain::{AccountKey, Discrepancy, HoldRequest, LedgerStore, Leg, Purpose, TransferRequest},
    storage::{PgLedger, ledger},
};
use sqlx::PgPool;
use time::Duration;
use uuid::Uuid;

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

fn release(escrow: Uuid, supplier: &str, amount: i64) -> TransferRequest {
    TransferRequest {
        id: Uuid::now_v7(),
        purpose: Purpose::release_milestone(escrow, "m1"),
        escrow_account: Some(escrow),
        legs: vec![Leg {
            debit: AccountKey::escrow_held(escrow, usd()),
            credit: AccountKey::supplier_payable(supplier, usd()),
            amount_minor: amount,
        }],
    }
}

async fn funded_and_released(pool: &PgPool, supplier: &str, amount: i64) -> Uuid {
    let escrow = Uuid::now_v7();
    let mut l = PgLedger::new(pool.clone());
    l.transfer(&fund(escrow, amount)).await.unwrap();
    l.transfer(&release(escrow, supplier, amount))
        .await
        .unwrap();
    escrow
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn postings_can_be_neither_updated_nor_deleted(pool: PgPool) {
    funded_and_released(&pool, "s-1", 500).await;
    for sql in [
        "UPDATE escrow.postings SET amount_minor = amount_minor + 1",
        "DELETE FROM escrow.postings",
        "TRUNCATE escrow.postings CASCADE",
    ] {
        let error = sqlx::query(sql).execute(&pool).await.unwrap_err();
        let db = error.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("P0001"), "{sql}: {db}");
        assert!(db.message().contains("append-only"), "{sql}: {db}");
    }
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM escrow.postings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
}

#[test]
fn no_code_path_updates_or_deletes_postings() {
    // The trigger refuses it at run time; this keeps the code from trying.
    let sources = [
        include_str!("../src/storage/ledger.rs"),
        include_str!("../src/storage/accounts.rs"),
        include_str!("../src/storage/attempts.rs"),
        include_str!("../src/storage/gateway_events.rs"),
        include_str!("../src/storage/reconciliation.rs"),
        include_str!("../src/storage/statement.rs"),
        include_str!("../src/storage/timers.rs"),
        include_str!("../src/storage/transfers.rs"),
        include_str!("../src/app/mod.rs"),
        include_str!("../src/app/accounts.rs"),
        include_str!("../src/app/amendments.rs"),
        include_str!("../src/app/deadlines.rs"),
        include_str!("../src/app/funding.rs"),
        include_str!("../src/app/reactions.rs"),
        include_str!("../src/app/settlement.rs"),
        include_str!("../src/app/transfers.rs"),
        include_str!("../src/app/gateway_events.rs"),
    ];
    for source in sources {
        let flat = source.split_whitespace().collect::<Vec<_>>().join(" ");
        for forbidden in [
            "UPDATE escrow.postings",
            "DELETE FROM escrow.postings",
            "TRUNCATE escrow.postings",
        ] {
            assert!(!flat.contains(forbidden), "found `{forbidden}`");
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_roll_up_folds_shared_balances_without_changing_them(pool: PgPool) {
    for _ in 0..5 {
        funded_and_released(&pool, "s-1", 300).await;
    }
    let mut l = PgLedger::new(pool.clone());
    let payable = AccountKey::supplier_payable("s-1", usd());
    let clearing = AccountKey::gateway_clearing(usd());
    assert_eq!(posted(&mut l, &payable).await, 1_500);
    let mut conn = pool.acquire().await.unwrap();
    let folded = ledger::roll_up(&mut conn, 100).await.unwrap();
    assert_eq!(folded, 2, "the payable and the clearing account");
    let (deltas,): (i64,) = sqlx::query_as("SELECT count(*) FROM escrow.balance_deltas")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(deltas, 0);
    let (row,): (i64,) = sqlx::query_as(
        "SELECT balance_minor FROM escrow.ledger_accounts WHERE kind = 'supplier_payable'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row, 1_500);
    assert_eq!(posted(&mut l, &payable).await, 1_500);
    assert_eq!(posted(&mut l, &clearing).await, -1_500);
    funded_and_released(&pool, "s-1", 1).await;
    assert_eq!(
        posted(&mut l, &payable).await,
        1_501,
        "row plus the new delta"
    );
    assert_eq!(ledger::roll_up(&mut conn, 100).await.unwrap(), 2);
    assert_eq!(
        ledger::roll_up(&mut conn, 100).await.unwrap(),
        0,
        "nothing left"
    );
    assert_sound(&mut l).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_corrupted_balance_row_is_reported(pool: PgPool) {
    let escrow = funded_and_released(&pool, "s-1", 700).await;
    PgLedger::new(pool.clone())
        .transfer(&fund(escrow, 50))
        .await
        .unwrap();
    let mut l = PgLedger::new(pool.clone());
    assert_sound(&mut l).await;
    sqlx::query(
        "UPDATE escrow.ledger_accounts SET balance_minor = balance_minor + 25 \
         WHERE kind = 'escrow_held'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let found = l.reconcile().await.unwrap();
    let held = AccountKey::escrow_held(escrow, usd());
    assert!(
        found.contains(&Discrepancy::BalanceMismatch {
            account: held,
            kept: 75,
            recomputed: 50
        }),
        "{found:#?}"
    );
    assert!(
        found.contains(&Discrepancy::CurrencyImbalance {
            currency: "USD".into(),
            sum: 25
        }),
        "{found:#?}"
    );
    assert_eq!(found.len(), 2, "{found:#?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_corrupted_shared_account_is_reported_after_its_roll_up(pool: PgPool) {
    funded_and_released(&pool, "s-1", 700).await;
    let mut conn = pool.acquire().await.unwrap();
    ledger::roll_up(&mut conn, 100).await.unwrap();
    sqlx::query(
        "UPDATE escrow.ledger_accounts SET balance_minor = 0 WHERE kind = 'supplier_payable'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let found = PgLedger::new(pool.clone()).reconcile().await.unwrap();
    assert!(
        found.contains(&Discrepancy::BalanceMismatch {
            account: AccountKey::supplier_payable("s-1", usd()),
            kept: 0,
            recomputed: 700
        }),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|d| matches!(d, Discrepancy::CurrencyImbalance { sum: -700, .. }))
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_hold_marked_posted_without_its_posting_is_reported(pool: PgPool) {
    let escrow = Uuid::now_v7();
    let mut l = PgLedger::new(pool.clone());
    let hold = l
        .hold(&HoldRequest {
            id: Uuid::now_v7(),
            purpose: Purpose::funding(escrow, Uuid::now_v7()),
            escrow_account: Some(escrow),
            debit: AccountKey::gateway_clearing(usd()),
            credit: AccountKey::escrow_held(escrow, usd()),
            amount_minor: 10,
            expires_at: ta_runtime::timestamps::now() + Duration::hours(1),
        })
        .await
        .unwrap();
    sqlx::query(
        "UPDATE escrow.holds SET status = 'posted', posted_minor = 10, resolved_at = now() \
         WHERE id = $1",
    )
    .bind(hold.id)
    .execute(&pool)
    .await
    .unwrap();
    let found = l.reconcile().await.unwrap();
    assert!(
        matches!(found.as_slice(), [Discrepancy::HoldMismatch { hold: h, .. }] if *h == hold.id),
        "{found:#?}"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn releases_to_a_supplier_never_wait_for_its_payable_row(pool: PgPool) {
    funded_and_released(&pool, "s-hot", 1_000).await;
    // A payout is checking the supplier's balance: it holds the payable
    // row's lock, uncommitted.
    let mut payout = pool.begin().await.unwrap();
    let id = Uuid::now_v7();
    ledger::hold(
        &mut payout,
        &HoldRequest {
            id,
            purpose: Purpose::payout("s-hot", id),
            escrow_account: None,
            debit: AccountKey::supplier_payable("s-hot", usd()),
            credit: AccountKey::gateway_clearing(usd()),
            amount_minor: 1_000,
            expires_at: ta_runtime::timestamps::now() + Duration::hours(1),
        },
    )
    .await
    .unwrap();
    // Releases from other contracts to the same supplier go through
    // meanwhile (a bounded wait: they would hang on the row otherwise).
    let releases = async {
        for _ in 0..5 {
            funded_and_released(&pool, "s-hot", 10).await;
        }
    };
    tokio::time::timeout(StdDuration::from_secs(20), releases)
        .await
        .expect("releases waited for the payout's row lock");
    payout.commit().await.unwrap();
    let mut l = PgLedger::new(pool.clone());
    let balance = l
        .balance(&AccountKey::supplier_payable("s-hot", usd()))
        .await
        .unwrap();
    assert_eq!((balance.posted, balance.pending_debits), (1_050, 1_000));
    assert_sound(&mut l).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn roll_ups_beside_concurrent_releases_and_payouts_lose_nothing(pool: PgPool) {
    let mut work = Vec::new();
    for i in 0..24 {
        let pool = pool.clone();
        work.push(tokio::spawn(async move {
            if i % 3 == 2 {
                // A payout of what is there so far, racing the releases.
                let id = Uuid::now_v7();
                let mut tx = pool.begin().await.unwrap();
                let placed = ledger::hold(
                    &mut tx,
                    &HoldRequest {
                        id,
                        purpose: Purpose::payout("s-busy", id),
                        escrow_account: None,
                        debit: AccountKey::supplier_payable("s-busy", usd()),
                        credit: AccountKey::gateway_clearing(usd()),
                        amount_minor: 15,
                        expires_at: ta_runtime::timestamps::now() + Duration::hours(1),
                    },
                )
                .await;
                if placed.is_ok() {
                    ledger::post_hold(&mut tx, id, None, ta_runtime::timestamps::now())
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    return 15;
                }
                return 0;
            }
            if i % 3 == 1 {
                let mut conn = pool.acquire().await.unwrap();
                ledger::roll_up(&mut conn, 10).await.unwrap();
                return 0;
            }
            funded_and_released(&pool, "s-busy", 10).await;
            0
        }));
    }
    let mut paid = 0;
    for task in work {
        paid += task.await.unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    ledger::roll_up(&mut conn, 100).await.unwrap();
    let mut l = PgLedger::new(pool.clone());
    let payable = posted(&mut l, &AccountKey::supplier_payable("s-busy", usd())).await;
    assert_eq!(payable, 8 * 10 - paid, "released minus paid out");
    assert!(payable >= 0);
    assert_sound(&mut l).await;
}
