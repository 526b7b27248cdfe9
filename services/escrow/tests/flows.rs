//! The use cases over real Postgres: funding by each method, short and late
//! bank credits, Pay Later refunds back to the loan, freezes, close, payouts.

mod common;

use common::*;
use escrow::{
    app::{self, StartFunding},
    domain::{
        AccountKey, HoldStatus, LedgerStore, NewAccount, Settles, Status,
        funding::{AttemptStatus, CreditOutcome, FundingMethod},
    },
    storage::{PgLedger, accounts, ledger},
};
use sqlx::PgPool;
use ta_runtime::{ServiceError, money::Money, timestamps};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

async fn open(pool: &PgPool, payments: &[i64]) -> Uuid {
    let now = timestamps::now();
    let schedule = payments
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (
                format!("m{i}"),
                Money::new(*a, usd()),
                now + Duration::days(7),
            )
        })
        .collect();
    let new = NewAccount {
        contract_id: format!("contract-{}", Uuid::now_v7()),
        buyer_principal_id: "buyer-1".into(),
        supplier_id: "supplier-1".into(),
        schedule,
        hold_until: now + Duration::days(30),
    };
    in_tx(pool, async |c| app::open_account(c, new, now).await)
        .await
        .unwrap()
        .id
}

async fn fund(
    pool: &PgPool,
    account: Uuid,
    milestone: &str,
    method: FundingMethod,
    amount: i64,
) -> Result<escrow::domain::funding::FundingAttempt, ServiceError> {
    let now = timestamps::now();
    let command = StartFunding {
        account_id: account,
        milestone_id: milestone.into(),
        attempt_id: Uuid::now_v7(),
        method,
        amount_minor: amount,
        expires_at: now + Duration::hours(1),
    };
    in_tx(pool, async |c| app::start_funding(c, &command, now).await).await
}

async fn status(pool: &PgPool, account: Uuid) -> Status {
    let mut c = pool.acquire().await.unwrap();
    accounts::get_account(&mut c, account).await.unwrap().status
}

async fn balance(pool: &PgPool, key: &AccountKey) -> i64 {
    posted(&mut PgLedger::new(pool.clone()), key).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn opening_again_returns_the_existing_account(pool: PgPool) {
    let now = timestamps::now();
    let new = NewAccount {
        contract_id: "contract-1".into(),
        buyer_principal_id: "buyer-1".into(),
        supplier_id: "supplier-1".into(),
        schedule: vec![("deposit".into(), Money::new(300, usd()), now)],
        hold_until: now + Duration::days(30),
    };
    let first = in_tx(&pool, async |c| {
        app::open_account(c, new.clone(), now).await
    })
    .await
    .unwrap();
    let second = in_tx(&pool, async |c| {
        app::open_account(c, new.clone(), now).await
    })
    .await
    .unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(second.status, Status::AwaitingFunding);
    assert_eq!(second.schedule[0].amount_minor, 300);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_card_funds_at_once_and_a_declined_card_moves_nothing(pool: PgPool) {
    let account = open(&pool, &[300, 700]).await;
    let declined = fund(
        &pool,
        account,
        "m0",
        FundingMethod::Card { approved: false },
        300,
    )
    .await
    .unwrap();
    assert_eq!(
        (declined.status, declined.failure_code.as_str()),
        (AttemptStatus::Failed, "card_declined")
    );
    assert_eq!(status(&pool, account).await, Status::AwaitingFunding);
    let wrong = fund(
        &pool,
        account,
        "m0",
        FundingMethod::Card { approved: true },
        299,
    )
    .await;
    assert!(
        matches!(wrong, Err(ServiceError::InvalidArgument(_))),
        "{wrong:?}"
    );
    fund(
        &pool,
        account,
        "m0",
        FundingMethod::Card { approved: true },
        300,
    )
    .await
    .unwrap();
    assert_eq!(status(&pool, account).await, Status::PartiallyFunded);
    let again = fund(
        &pool,
        account,
        "m0",
        FundingMethod::Card { approved: true },
        300,
    )
    .await;
    assert!(
        matches!(again, Err(ServiceError::FailedPrecondition(_))),
        "{again:?}"
    );
    fund(
        &pool,
        account,
        "m1",
        FundingMethod::Card { approved: true },
        700,
    )
    .await
    .unwrap();
    assert_eq!(status(&pool, account).await, Status::Funded);
    assert_eq!(
        balance(&pool, &AccountKey::escrow_held(account, usd())).await,
        1_000
    );
    assert_eq!(
        balance(&pool, &AccountKey::gateway_clearing(usd())).await,
        -1_000
    );
    assert_sound(&mut PgLedger::new(pool)).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_short_bank_credit_posts_less_and_an_excess_lands_in_suspense(pool: PgPool) {
    let account = open(&pool, &[1_000]).await;
    let held = AccountKey::escrow_held(account, usd());
    let attempt = fund(&pool, account, "m0", FundingMethod::BankTransfer, 1_000)
        .await
        .unwrap();
    assert_eq!(attempt.status, AttemptStatus::Pending);
    let twin = fund(&pool, account, "m0", FundingMethod::BankTransfer, 1_000).await;
    assert!(
        matches!(twin, Err(ServiceError::FailedPrecondition(_))),
        "one pending attempt per payment"
    );
    let now = timestamps::now();
    let outcome = in_tx(&pool, async |c| {
        app::confirm_funding(c, attempt.id, "credit-1", 990, now).await
    })
    .await
    .unwrap();
    assert_eq!(
        outcome,
        CreditOutcome::Applied {
            posted: 990,
            to_suspense: 0
        }
    );
    let dup = in_tx(&pool, async |c| {
        app::confirm_funding(c, attempt.id, "credit-1", 990, now).await
    })
    .await
    .unwrap();
    assert_eq!(dup, CreditOutcome::Duplicate);
    assert_eq!(balance(&pool, &held).await, 990);
    assert_eq!(
        status(&pool, account).await,
        Status::PartiallyFunded,
        "10 still due"
    );
    let rest = fund(&pool, account, "m0", FundingMethod::BankTransfer, 10)
        .await
        .unwrap();
    let outcome = in_tx(&pool, async |c| {
        app::confirm_funding(c, rest.id, "credit-2", 25, now).await
    })
    .await
    .unwrap();
    assert_eq!(
        outcome,
        CreditOutcome::Applied {
            posted: 10,
            to_suspense: 15
        }
    );
    assert_eq!(status(&pool, account).await, Status::Funded);
    assert_eq!(balance(&pool, &held).await, 1_000);
    assert_eq!(balance(&pool, &AccountKey::suspense(usd())).await, 15);
    in_tx(&pool, async |c| {
        app::refund_suspended_credit(c, rest.id, "credit-2", 15).await
    })
    .await
    .unwrap();
    assert_eq!(balance(&pool, &AccountKey::suspense(usd())).await, 0);
    let twice = in_tx(&pool, async |c| {
        app::refund_suspended_credit(c, rest.id, "credit-2", 15).await
    })
    .await;
    assert!(
        matches!(twice, Err(ServiceError::Refused { .. })),
        "{twice:?}"
    );
    assert_sound(&mut PgLedger::new(pool)).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_bank_credit_after_expiry_lands_in_suspense(pool: PgPool) {
    let account = open(&pool, &[1_000]).await;
    let attempt = fund(&pool, account, "m0", FundingMethod::BankTransfer, 1_000)
        .await
        .unwrap();
    let later = timestamps::now() + Duration::hours(2);
    let voided = in_tx(&pool, async |c| app::expire_due(c, later).await)
        .await
        .unwrap();
    assert!(voided.contains(&attempt.hold_id.unwrap()));
    let mut c = pool.acquire().await.unwrap();
    let failed = accounts::get_attempt(&mut c, attempt.id, false)
        .await
        .unwrap();
    assert_eq!(
        (failed.status, failed.failure_code.as_str()),
        (AttemptStatus::Failed, "expired")
    );
    let hold = ledger::get_hold(&mut c, attempt.hold_id.unwrap())
        .await
        .unwrap();
    assert_eq!(hold.status, HoldStatus::Voided);
    let outcome = in_tx(&pool, async |c| {
        app::confirm_funding(c, attempt.id, "credit-1", 1_000, later).await
    })
    .await
    .unwrap();
    assert_eq!(outcome, CreditOutcome::Suspended { to_suspense: 1_000 });
    let dup = in_tx(&pool, async |c| {
        app::confirm_funding(c, attempt.id, "credit-1", 1_000, later).await
    })
    .await
    .unwrap();
    assert_eq!(dup, CreditOutcome::Duplicate);
    assert_eq!(
        balance(&pool, &AccountKey::escrow_held(account, usd())).await,
        0
    );
    assert_eq!(balance(&pool, &AccountKey::suspense(usd())).await, 1_000);
    assert_eq!(status(&pool, account).await, Status::AwaitingFunding);
    assert_sound(&mut PgLedger::new(pool)).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_credit_due_but_not_yet_expired_by_the_timer_is_still_late(pool: PgPool) {
    let account = open(&pool, &[1_000]).await;
    let attempt = fund(&pool, account, "m0", FundingMethod::BankTransfer, 1_000)
        .await
        .unwrap();
    let later = attempt.expires_at;
    let outcome = in_tx(&pool, async |c| {
        app::confirm_funding(c, attempt.id, "credit-1", 1_000, later).await
    })
    .await
    .unwrap();
    assert_eq!(outcome, CreditOutcome::Suspended { to_suspense: 1_000 });
    assert_sound(&mut PgLedger::new(pool)).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_pay_later_refund_goes_back_to_the_loan_first_in_one_unit(pool: PgPool) {
    let account = open(&pool, &[600, 400]).await;
    let partner = FundingMethod::PayLater {
        partner_id: "partner-1".into(),
    };
    let loan = fund(&pool, account, "m0", partner, 600).await.unwrap();
    let now = timestamps::now();
    in_tx(&pool, async |c| {
        app::confirm_funding(c, loan.id, "disbursement-1", 600, now).await
    })
    .await
    .unwrap();
    fund(
        &pool,
        account,
        "m1",
        FundingMethod::Card { approved: true },
        400,
    )
    .await
    .unwrap();
    let postings = in_tx(&pool, async |c| {
        app::refund(
            c,
            account,
            Some(800),
            &Settles::Claim("claim-1".into()),
            now,
        )
        .await
    })
    .await
    .unwrap();
    assert_eq!(postings.len(), 2);
    assert_eq!(postings[0].transfer_id, postings[1].transfer_id);
    let partner_account = AccountKey::financing_partner("partner-1", usd());
    assert_eq!(
        balance(&pool, &partner_account).await,
        0,
        "the loan is repaid in full"
    );
    assert_eq!(
        balance(&pool, &AccountKey::buyer_refund_payable(account, usd())).await,
        200
    );
    // The rest refunds to the buyer only: the loan is no longer outstanding.
    let postings = in_tx(&pool, async |c| {
        app::refund(c, account, None, &Settles::Cancellation, now).await
    })
    .await
    .unwrap();
    assert_eq!(postings.len(), 1);
    assert_eq!(
        balance(&pool, &AccountKey::buyer_refund_payable(account, usd())).await,
        400
    );
    let nothing = in_tx(&pool, async |c| {
        app::release(
            c,
            account,
            None,
            &Settles::Milestone("delivery".into()),
            now,
        )
        .await
    })
    .await;
    assert!(
        matches!(nothing, Err(ServiceError::FailedPrecondition(_))),
        "{nothing:?}"
    );
    // The buyer's refund is paid out through the gateway.
    let refund = in_tx(&pool, async |c| {
        app::start_buyer_refund_payout(c, account, Uuid::now_v7(), 400, now + Duration::hours(1))
            .await
    })
    .await
    .unwrap();
    in_tx(&pool, async |c| {
        app::settle_payout(c, refund.id, true, now).await
    })
    .await
    .unwrap();
    assert_eq!(
        balance(&pool, &AccountKey::buyer_refund_payable(account, usd())).await,
        0
    );
    assert_sound(&mut PgLedger::new(pool)).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_frozen_account_moves_money_only_for_the_freezing_claim(pool: PgPool) {
    let account = open(&pool, &[1_000]).await;
    fund(
        &pool,
        account,
        "m0",
        FundingMethod::Card { approved: true },
        1_000,
    )
    .await
    .unwrap();
    let now = timestamps::now();
    let frozen = in_tx(&pool, async |c| {
        app::freeze(c, account, "claim-1", "not as described", now).await
    })
    .await
    .unwrap();
    assert!(frozen.freezes.contains("claim-1"));
    let refused = in_tx(&pool, async |c| {
        app::release(
            c,
            account,
            None,
            &Settles::Milestone("delivery".into()),
            now,
        )
        .await
    })
    .await;
    assert!(
        matches!(refused, Err(ServiceError::FailedPrecondition(_))),
        "{refused:?}"
    );
    let closing = in_tx(&pool, async |c| app::close(c, account, now).await).await;
    assert!(matches!(closing, Err(ServiceError::FailedPrecondition(_))));
    in_tx(&pool, async |c| {
        app::refund(
            c,
            account,
            Some(300),
            &Settles::Claim("claim-1".into()),
            now,
        )
        .await
    })
    .await
    .unwrap();
    in_tx(&pool, async |c| {
        app::release(c, account, None, &Settles::Claim("claim-1".into()), now).await
    })
    .await
    .unwrap();
    assert_eq!(
        balance(&pool, &AccountKey::supplier_payable("supplier-1", usd())).await,
        700
    );
    let open_again = in_tx(&pool, async |c| {
        app::unfreeze(c, account, "claim-1", now).await
    })
    .await
    .unwrap();
    assert!(open_again.freezes.is_empty());
    let closed = in_tx(&pool, async |c| app::close(c, account, now).await)
        .await
        .unwrap();
    assert_eq!(closed.status, Status::Closed);
    assert_eq!(status(&pool, account).await, Status::Closed);
    assert_sound(&mut PgLedger::new(pool)).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn closing_fails_pending_attempts_and_voids_their_holds(pool: PgPool) {
    let account = open(&pool, &[1_000]).await;
    let attempt = fund(&pool, account, "m0", FundingMethod::BankTransfer, 1_000)
        .await
        .unwrap();
    let now = timestamps::now();
    in_tx(&pool, async |c| app::close(c, account, now).await)
        .await
        .unwrap();
    let mut c = pool.acquire().await.unwrap();
    let failed = accounts::get_attempt(&mut c, attempt.id, false)
        .await
        .unwrap();
    assert_eq!(failed.failure_code, "account_closed");
    let hold = ledger::get_hold(&mut c, attempt.hold_id.unwrap())
        .await
        .unwrap();
    assert_eq!(hold.status, HoldStatus::Voided);
    let late = in_tx(&pool, async |c| {
        app::confirm_funding(c, attempt.id, "credit-1", 1_000, now).await
    })
    .await
    .unwrap();
    assert_eq!(late, CreditOutcome::Suspended { to_suspense: 1_000 });
    let refused = fund(
        &pool,
        account,
        "m0",
        FundingMethod::Card { approved: true },
        1_000,
    )
    .await;
    assert!(matches!(refused, Err(ServiceError::FailedPrecondition(_))));
    assert_sound(&mut PgLedger::new(pool)).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_payout_pays_the_supplier_across_contracts_and_resolves_once(pool: PgPool) {
    let now = timestamps::now();
    for _ in 0..3 {
        let account = open(&pool, &[500]).await;
        fund(
            &pool,
            account,
            "m0",
            FundingMethod::Card { approved: true },
            500,
        )
        .await
        .unwrap();
        in_tx(&pool, async |c| {
            app::release(
                c,
                account,
                None,
                &Settles::Milestone("delivery".into()),
                now,
            )
            .await
        })
        .await
        .unwrap();
    }
    let payable = AccountKey::supplier_payable("supplier-1", usd());
    assert_eq!(balance(&pool, &payable).await, 1_500);
    let expires = now + Duration::hours(1);
    let too_much = in_tx(&pool, async |c| {
        app::start_payout(c, "supplier-1", usd(), Uuid::now_v7(), 1_501, expires).await
    })
    .await;
    assert!(
        matches!(too_much, Err(ServiceError::Refused { .. })),
        "{too_much:?}"
    );
    let failed = in_tx(&pool, async |c| {
        app::start_payout(c, "supplier-1", usd(), Uuid::now_v7(), 1_500, expires).await
    })
    .await
    .unwrap();
    in_tx(&pool, async |c| {
        app::settle_payout(c, failed.id, false, now).await
    })
    .await
    .unwrap();
    let twice = in_tx(&pool, async |c| {
        app::settle_payout(c, failed.id, true, now).await
    })
    .await;
    assert!(
        matches!(twice, Err(ServiceError::FailedPrecondition(_))),
        "a voided payout never posts"
    );
    let paid = in_tx(&pool, async |c| {
        app::start_payout(c, "supplier-1", usd(), Uuid::now_v7(), 1_500, expires).await
    })
    .await
    .unwrap();
    in_tx(&pool, async |c| {
        app::settle_payout(c, paid.id, true, now).await
    })
    .await
    .unwrap();
    assert_eq!(balance(&pool, &payable).await, 0);
    assert_eq!(
        balance(&pool, &AccountKey::gateway_clearing(usd())).await,
        0,
        "in and out again"
    );
    // An unanswered payout expires with the timer.
    let account = open(&pool, &[100]).await;
    fund(
        &pool,
        account,
        "m0",
        FundingMethod::Card { approved: true },
        100,
    )
    .await
    .unwrap();
    in_tx(&pool, async |c| {
        app::release(c, account, None, &Settles::Milestone("d".into()), now).await
    })
    .await
    .unwrap();
    let stuck = in_tx(&pool, async |c| {
        app::start_payout(c, "supplier-1", usd(), Uuid::now_v7(), 100, expires).await
    })
    .await
    .unwrap();
    let later: OffsetDateTime = expires + Duration::seconds(1);
    let voided = in_tx(&pool, async |c| app::expire_due(c, later).await)
        .await
        .unwrap();
    assert_eq!(voided, vec![stuck.id]);
    assert_eq!(
        PgLedger::new(pool.clone())
            .balance(&payable)
            .await
            .unwrap()
            .available(),
        100
    );
    assert_sound(&mut PgLedger::new(pool)).await;
}
