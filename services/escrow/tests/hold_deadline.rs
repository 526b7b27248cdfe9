//! The hold deadline over the API: every account keeps a `hold_deadline`
//! timer at its `hold_until`, paused while frozen (and moved later by the
//! time spent frozen), cancelled on close; when it fires with money still
//! held the feed says so; and reconciliation reports money held with no
//! live timer of its account and no open freeze.

mod support;

use sqlx::PgPool;
use support::*;
use ta_proto::escrow as pb;
use ta_runtime::timestamps;
use time::{Duration, OffsetDateTime};
use tonic::Code;

/// The newest `hold_deadline` timer of an account: its status and due time.
async fn hold_timer(pool: &PgPool, account: &str) -> Option<(String, OffsetDateTime)> {
    sqlx::query_as(
        "SELECT status, due_at FROM escrow.workflow_timers \
         WHERE kind = 'hold_deadline' AND subject_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(account)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn differences(client: &mut Client) -> Vec<pb::LedgerDifference> {
    client
        .reconcile_ledger(finance(pb::ReconcileLedgerRequest {}))
        .await
        .unwrap()
        .into_inner()
        .differences
}

fn at(t: &Option<prost_types::Timestamp>) -> OffsetDateTime {
    timestamps::from_proto(t.as_ref().expect("a timestamp")).expect("a valid timestamp")
}

fn in_from_now(d: Duration) -> Option<prost_types::Timestamp> {
    Some(timestamps::to_proto(timestamps::now() + d))
}

fn close_to(a: OffsetDateTime, b: OffsetDateTime) -> bool {
    (a - b).abs() < Duration::seconds(5)
}

async fn freeze(client: &mut Client, id: &str, claim: &str) -> pb::EscrowAccount {
    client
        .freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: format!("freeze-{id}-{claim}"),
            escrow_account_id: id.into(),
            claim_id: claim.into(),
            reason: "claim filed".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn money_held_needs_a_live_timer_or_an_open_freeze(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    let live = funded(&mut client, "c-live", 1_000).await;
    let fired = funded(&mut client, "c-fired", 2_000).await;
    let deleted = funded(&mut client, "c-deleted", 3_000).await;
    let frozen = funded(&mut client, "c-frozen", 4_000).await;
    let empty = open(&mut client, "c-empty", 5_000).await.escrow_account_id;

    // Funded: the payment deadlines are gone, the hold deadline stays.
    let acc = account(&mut client, &live).await.account.unwrap();
    let (status, due) = hold_timer(&pool, &live)
        .await
        .expect("a hold deadline timer");
    assert_eq!(status, "scheduled");
    assert!(
        close_to(due, at(&acc.hold_until)),
        "{due} vs {:?}",
        acc.hold_until
    );
    let held = client
        .list_held_accounts(finance(pb::ListHeldAccountsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.accounts.len(), 4);
    assert!(
        held.accounts
            .iter()
            .all(|a| a.next_deadline_kind == "hold_deadline"),
        "{held:?}"
    );
    assert_sound(&mut client).await;

    // Frozen: the deadline is paused (its timer cancelled), and the freeze
    // is what keeps the money accounted for.
    freeze(&mut client, &frozen, "claim-1").await;
    assert_eq!(hold_timer(&pool, &frozen).await.unwrap().0, "cancelled");
    assert_sound(&mut client).await;

    // A timer that fired, one that vanished, and an account holding nothing.
    for (account, sql) in [
        (
            &fired,
            "UPDATE escrow.workflow_timers SET status = 'fired', fired_at = now() \
             WHERE kind = 'hold_deadline' AND subject_id = $1",
        ),
        (
            &deleted,
            "DELETE FROM escrow.workflow_timers WHERE kind = 'hold_deadline' AND subject_id = $1",
        ),
        (
            &empty,
            "DELETE FROM escrow.workflow_timers WHERE subject_id LIKE $1 || '%'",
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account)
            .execute(&pool)
            .await
            .unwrap();
    }
    let mut found: Vec<(String, String, i64)> = differences(&mut client)
        .await
        .into_iter()
        .map(|d| {
            let account = d.account.unwrap();
            assert_eq!(
                account.kind,
                pb::LedgerAccountKind::EscrowHeld as i32,
                "{}",
                d.detail
            );
            (d.kind, account.escrow_account_id, minor(&d.actual))
        })
        .collect();
    found.sort();
    let mut expected = vec![
        ("HELD_WITHOUT_DEADLINE".to_owned(), fired.clone(), 2_000),
        ("HELD_WITHOUT_DEADLINE".to_owned(), deleted.clone(), 3_000),
    ];
    expected.sort();
    assert_eq!(found, expected);

    // Money moved out: nothing to report.
    for id in [&fired, &deleted] {
        client
            .refund_to_buyer(finance(pb::RefundToBuyerRequest {
                idempotency_key: format!("cancel-{id}"),
                escrow_account_id: id.clone(),
                amount: None,
                reason: "contract cancelled".into(),
                purpose: Some(pb::Purpose {
                    purpose: Some(pb::purpose::Purpose::Cancellation(true)),
                }),
            }))
            .await
            .unwrap();
    }
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn a_freeze_pauses_the_hold_deadline_and_unfreezing_moves_it_later(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    let id = funded(&mut client, "c-pause", 1_000).await;
    let before = at(&account(&mut client, &id).await.account.unwrap().hold_until);
    freeze(&mut client, &id, "claim-1").await;
    freeze(&mut client, &id, "claim-2").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let unfreeze = async |client: &mut Client, claim: &str| {
        client
            .unfreeze_escrow(dispute(pb::UnfreezeEscrowRequest {
                idempotency_key: format!("unfreeze-{claim}"),
                escrow_account_id: id.clone(),
                claim_id: claim.into(),
                reason: "claim withdrawn".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
    };
    let still = unfreeze(&mut client, "claim-1").await;
    assert_eq!(at(&still.hold_until), before, "still frozen for claim-2");
    assert_eq!(hold_timer(&pool, &id).await.unwrap().0, "cancelled");
    // SettleClaim lifts the last freeze: the deadline runs again, later by
    // the time spent frozen.
    let settled = client
        .settle_claim(dispute(pb::SettleClaimRequest {
            idempotency_key: "settle-2".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-2".into(),
            refund: usd(0),
            release_rest: false,
            reason: "claim rejected".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    let after = at(&settled.hold_until);
    let moved = after - before;
    assert!(
        moved >= Duration::milliseconds(300) && moved < Duration::seconds(10),
        "moved by {moved}"
    );
    let (status, due) = hold_timer(&pool, &id).await.unwrap();
    assert_eq!(status, "scheduled");
    assert!(close_to(due, after), "{due} vs {after}");
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn a_passed_hold_deadline_with_money_held_is_announced(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    // Holds nothing when its (earlier) deadline passes: no announcement.
    let mut quiet = open_request(
        "c-quiet",
        vec![pb::ScheduledPayment {
            due_at: in_from_now(Duration::milliseconds(100)),
            ..payment("full", 500)
        }],
    );
    quiet.hold_until = in_from_now(Duration::milliseconds(300));
    let quiet = open_with(&mut client, quiet).await.escrow_account_id;
    let mut request = open_request(
        "c-late",
        vec![pb::ScheduledPayment {
            due_at: in_from_now(Duration::milliseconds(200)),
            ..payment("full", 1_000)
        }],
    );
    request.hold_until = in_from_now(Duration::milliseconds(800));
    let id = open_with(&mut client, request).await.escrow_account_id;
    client
        .fund_escrow(buyer(card(&id, "full", 1_000, "tok_visa", "fund-late")))
        .await
        .unwrap();
    let events = events_until(&mut client, pb::EscrowEventType::HoldDeadlinePassed).await;
    let passed = events.last().unwrap();
    assert_eq!(passed.escrow_account_id, id);
    assert_eq!(passed.contract_id, "c-late");
    assert_eq!(minor(&passed.amount), 1_000, "what is still held");
    assert_eq!(minor(&passed.account.as_ref().unwrap().held), 1_000);
    assert_eq!(hold_timer(&pool, &quiet).await.unwrap().0, "fired");
    assert!(
        !events.iter().any(|e| e.escrow_account_id == quiet
            && e.r#type == pb::EscrowEventType::HoldDeadlinePassed as i32),
        "nothing held, nothing announced"
    );
    // No money moved, and none will by itself: reconciliation says so.
    let acc = account(&mut client, &id).await.account.unwrap();
    assert_eq!(minor(&acc.held), 1_000);
    let found = differences(&mut client).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, "HELD_WITHOUT_DEADLINE");
    assert_eq!(found[0].account.as_ref().unwrap().escrow_account_id, id);
    // The contract releases it late: sound again.
    client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "release-late".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "goods accepted".into(),
            purpose: Some(pb::Purpose {
                purpose: Some(pb::purpose::Purpose::Acceptance(true)),
            }),
        }))
        .await
        .unwrap();
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn closing_cancels_and_amending_moves_the_hold_deadline(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    let closed = open(&mut client, "c-close", 1_000).await.escrow_account_id;
    assert_eq!(hold_timer(&pool, &closed).await.unwrap().0, "scheduled");
    client
        .close_escrow_account(contract(pb::CloseEscrowAccountRequest {
            idempotency_key: "close-1".into(),
            escrow_account_id: closed.clone(),
            reason: "cancelled before funding".into(),
            refund_held: false,
        }))
        .await
        .unwrap();
    assert_eq!(hold_timer(&pool, &closed).await.unwrap().0, "cancelled");

    let id = open(&mut client, "c-amend", 1_000).await.escrow_account_id;
    let amend = |key: &str, due_days: i64, hold_until| pb::AmendEscrowScheduleRequest {
        reason: String::new(),
        idempotency_key: key.into(),
        escrow_account_id: id.clone(),
        schedule: vec![pb::ScheduledPayment {
            due_at: due_in(due_days),
            ..payment("full", 1_000)
        }],
        contract_version: 2,
        hold_until,
    };
    // Due after the current deadline (30 days), and no new deadline.
    let refused = client
        .amend_escrow_schedule(contract(amend("amend-1", 40, None)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(violated_fields(&refused), ["hold_until"]);
    let refused = client
        .amend_escrow_schedule(contract(amend("amend-2", 40, due_in(35))))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["hold_until"]);
    let amended = client
        .amend_escrow_schedule(contract(amend("amend-3", 40, due_in(60))))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    let hold_until = at(&amended.hold_until);
    assert!(close_to(hold_until, timestamps::now() + Duration::days(60)));
    let (status, due) = hold_timer(&pool, &id).await.unwrap();
    assert_eq!(status, "scheduled");
    assert!(close_to(due, hold_until), "{due} vs {hold_until}");
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn opening_needs_a_hold_deadline_after_the_schedule(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    let before = snapshot(&pool).await;
    let due = due_in(7);
    for (hold_until, why) in [
        (None, "missing"),
        (due_in(-1), "in the past"),
        (due_in(3), "before the payment due in 7 days"),
        (due, "at the payment's due date"),
    ] {
        let last = pb::ScheduledPayment {
            due_at: due,
            ..payment("balance", 1_000)
        };
        let mut request = open_request("c-bad-hold", vec![payment("deposit", 1_000), last]);
        request.hold_until = hold_until;
        let refused = client
            .open_escrow_account(contract(request))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{why}: {refused:?}");
        assert_eq!(violated_fields(&refused), ["hold_until"], "{why}");
    }
    assert_eq!(snapshot(&pool).await, before, "nothing recorded");
}
