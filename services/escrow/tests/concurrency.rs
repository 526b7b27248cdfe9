//! 64 concurrent conflicting calls on one escrow account: releases,
//! refunds, freezes and unfreezes, and gateway answers racing for one hold.
//! Whatever order they run in, each hold resolves once, each purpose moves
//! money once, nothing goes negative and the ledger sums to zero.

mod common;

use std::collections::HashMap;

use common::*;
use escrow::{
    app::{self, StartFunding},
    domain::{
        AccountKey, HoldStatus, NewAccount, Settles,
        funding::{CreditOutcome, FundingMethod},
    },
    storage::{PgLedger, ledger},
};
use sqlx::PgPool;
use ta_runtime::{ServiceError, money::Money, timestamps};
use time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    Release,
    Refund,
    Freeze,
    Unfreeze,
    Confirm,
    Fail,
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn conflicting_calls_on_one_account(pool: PgPool) {
    let now = timestamps::now();
    let new = NewAccount {
        contract_id: "contract-race".into(),
        buyer_principal_id: "buyer-1".into(),
        supplier_id: "supplier-1".into(),
        schedule: vec![
            ("deposit".into(), Money::new(10_000, usd()), now),
            ("balance".into(), Money::new(5_000, usd()), now),
        ],
        hold_until: now + Duration::days(30),
    };
    let account = in_tx(&pool, async |c| app::open_account(c, new, now).await)
        .await
        .unwrap();
    let card = StartFunding {
        account_id: account.id,
        milestone_id: "deposit".into(),
        attempt_id: Uuid::now_v7(),
        method: FundingMethod::Card { approved: true },
        amount_minor: 10_000,
        expires_at: now + Duration::hours(1),
    };
    in_tx(&pool, async |c| app::start_funding(c, &card, now).await)
        .await
        .unwrap();
    let bank = StartFunding {
        milestone_id: "balance".into(),
        attempt_id: Uuid::now_v7(),
        method: FundingMethod::BankTransfer,
        amount_minor: 5_000,
        ..card.clone()
    };
    let attempt = in_tx(&pool, async |c| app::start_funding(c, &bank, now).await)
        .await
        .unwrap();
    let hold_id = attempt.hold_id.unwrap();

    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let pool = pool.clone();
        let id = account.id;
        let call = [
            Call::Release,
            Call::Refund,
            Call::Freeze,
            Call::Release,
            Call::Refund,
            Call::Unfreeze,
            Call::Confirm,
            Call::Fail,
        ][i as usize % 8];
        // Few distinct purposes, so that many calls race for each one.
        let tag = format!("{}", i % 5);
        tasks.push(tokio::spawn(async move {
            let outcome: Result<i64, ServiceError> = in_tx(&pool, async |c| match call {
                Call::Release => {
                    let settles = if i % 2 == 0 {
                        Settles::Milestone(format!("m{tag}"))
                    } else {
                        Settles::Claim(format!("c{tag}"))
                    };
                    app::release(c, id, Some(700), &settles, now)
                        .await
                        .map(|_| 700)
                }
                Call::Refund => {
                    app::refund(c, id, Some(900), &Settles::Claim(format!("c{tag}")), now)
                        .await
                        .map(|_| 900)
                }
                Call::Freeze => app::freeze(c, id, &format!("c{tag}"), "claim filed", now)
                    .await
                    .map(|_| 0),
                Call::Unfreeze => app::unfreeze(c, id, &format!("c{tag}"), now)
                    .await
                    .map(|_| 0),
                Call::Confirm => {
                    match app::confirm_funding(c, attempt.id, &format!("credit-{i}"), 5_000, now)
                        .await?
                    {
                        CreditOutcome::Applied { posted, .. } => Ok(posted),
                        _ => Ok(-1),
                    }
                }
                Call::Fail => app::fail_funding(c, attempt.id, "rejected", now)
                    .await
                    .map(|won| if won { 1 } else { -1 }),
            })
            .await;
            (call, outcome)
        }));
    }
    let mut moved: HashMap<Call, i64> = HashMap::new();
    let mut refusals = 0;
    let mut hold_won = 0;
    for task in tasks {
        let (call, outcome) = task.await.unwrap();
        match outcome {
            Ok(amount) if matches!(call, Call::Confirm | Call::Fail) => {
                if amount > 0 {
                    hold_won += 1;
                }
            }
            Ok(amount) => *moved.entry(call).or_default() += amount,
            // Refused by the rules (frozen, purpose settled, not enough
            // held): expected. Anything else (a deadlock, an internal
            // error) fails the test.
            Err(ServiceError::FailedPrecondition(_) | ServiceError::Refused { .. }) => {
                refusals += 1
            }
            Err(other) => panic!("{call:?}: {other:?}"),
        }
    }
    assert_eq!(
        hold_won, 1,
        "the bank transfer's hold resolved exactly once"
    );
    let mut conn = pool.acquire().await.unwrap();
    let hold = ledger::get_hold(&mut conn, hold_id).await.unwrap();
    let from_bank = match hold.status {
        HoldStatus::Posted => 5_000,
        HoldStatus::Voided => 0,
        HoldStatus::Pending => panic!("the hold is still pending"),
    };
    let mut l = PgLedger::new(pool.clone());
    let released = posted(&mut l, &AccountKey::supplier_payable("supplier-1", usd())).await;
    let refunded = posted(&mut l, &AccountKey::buyer_refund_payable(account.id, usd())).await;
    let held = posted(&mut l, &AccountKey::escrow_held(account.id, usd())).await;
    assert_eq!(
        released,
        moved.get(&Call::Release).copied().unwrap_or(0),
        "counted releases"
    );
    assert_eq!(
        refunded,
        moved.get(&Call::Refund).copied().unwrap_or(0),
        "counted refunds"
    );
    assert_eq!(
        held + released + refunded,
        10_000 + from_bank,
        "every unit accounted for"
    );
    assert!(held >= 0);
    let (repeated,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT purpose FROM escrow.transfers \
         GROUP BY purpose_scope, purpose HAVING count(*) > 1) twice",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(repeated, 0, "a purpose moved money more than once");
    let (per_purpose_max,): (Option<i64>,) = sqlx::query_as(
        "SELECT max(n) FROM (SELECT count(DISTINCT transfer_id) AS n FROM escrow.postings \
         JOIN escrow.transfers t ON t.id = transfer_id GROUP BY t.purpose_scope, t.purpose) x",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(per_purpose_max, Some(1));
    assert!(refusals > 0, "the calls did conflict");
    assert_sound(&mut l).await;
}
