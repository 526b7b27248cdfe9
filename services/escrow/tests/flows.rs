//! The use cases as production drives them, over the in-process API and real
//! Postgres: funding by each method through the gateway and its signed
//! webhooks, short, excess and late bank credits (what the payment no
//! longer needs goes to suspense and back through the gateway), Pay Later
//! refunds back to the loan, freezes and claims, closing, and payouts that
//! resolve once. After each: the ledger is sound and, where the gateway's
//! books can tell, they agree with it.

mod support;

use escrow::{
    app::{deadlines::ATTEMPT_EXPIRY, funding},
    domain::funding::CreditOutcome,
};
use sqlx::PgPool;
use support::*;
use ta_proto::escrow as pb;
use tonic::Code;
use uuid::Uuid;

fn purpose(p: pb::purpose::Purpose) -> Option<pb::Purpose> {
    Some(pb::Purpose { purpose: Some(p) })
}

const QUICK: [&str; 4] = [
    "--gateway-check-after",
    "100ms",
    "--gateway-worker-poll",
    "50ms",
];

async fn fund(
    client: &mut Client,
    request: pb::FundEscrowRequest,
) -> Result<pb::FundingAttempt, tonic::Status> {
    client
        .fund_escrow(buyer(request))
        .await
        .map(|r| r.into_inner().funding_attempt.unwrap())
}

fn status(attempt: &pb::FundingAttempt) -> pb::FundingStatus {
    pb::FundingStatus::try_from(attempt.status).unwrap()
}

/// The account's financing partner balance (minus the loan outstanding).
async fn partner(client: &mut Client, id: &str) -> i64 {
    let statement = client
        .get_escrow_statement(finance(pb::GetEscrowStatementRequest {
            escrow_account_id: id.into(),
            page: None,
        }))
        .await
        .unwrap()
        .into_inner();
    statement
        .balances
        .iter()
        .filter(|b| {
            b.account.as_ref().unwrap().kind == pb::LedgerAccountKind::FinancingPartner as i32
        })
        .map(|b| minor(&b.posted))
        .sum()
}

async fn account_status(client: &mut Client, id: &str) -> pb::EscrowAccountStatus {
    pb::EscrowAccountStatus::try_from(account(client, id).await.account.unwrap().status).unwrap()
}

async fn held(client: &mut Client, id: &str) -> i64 {
    minor(&account(client, id).await.account.unwrap().held)
}

/// The holds of an account's statement, by id.
async fn hold_status(client: &mut Client, id: &str, hold_id: &str) -> pb::HoldStatus {
    let statement = client
        .get_escrow_statement(finance(pb::GetEscrowStatementRequest {
            escrow_account_id: id.into(),
            page: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let hold = statement
        .holds
        .iter()
        .find(|h| h.hold_id == hold_id)
        .unwrap_or_else(|| panic!("no hold {hold_id} in {statement:#?}"));
    pb::HoldStatus::try_from(hold.status).unwrap()
}

fn credit(id: &str, attempt: &pb::FundingAttempt, amount: i64) -> Event {
    Event::new(id, "bank_transfer.credited", &attempt.gateway_reference)
        .client(&attempt.funding_attempt_id)
        .usd(amount)
}

/// Sends back (the worker) and pays (the gateway's webhook) every credit
/// parked in suspense.
async fn refund_suspense(client: &mut Client, count: usize) {
    eventually("the suspense refunds sent", || {
        let mut client = client.clone();
        async move {
            let all = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await;
            (all.len() == count
                && all
                    .iter()
                    .all(|t| t.status != pb::GatewayTransferStatus::Sending as i32))
            .then_some(())
        }
    })
    .await;
    pay_all(client, pb::GatewayTransferDirection::SuspenseRefund).await;
    assert_eq!(
        trial_posted(client, pb::LedgerAccountKind::Suspense).await,
        0,
        "suspense is empty again"
    );
}

#[sqlx::test(migrations = false)]
async fn opening_again_returns_the_existing_account(pool: PgPool) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let request = open_request("contract-1", vec![payment("deposit", 300)]);
    let first = open_with(&mut client, request.clone()).await;
    let second = open_with(
        &mut client,
        pb::OpenEscrowAccountRequest {
            idempotency_key: "open-again".into(),
            ..request
        },
    )
    .await;
    assert_eq!(first.escrow_account_id, second.escrow_account_id);
    assert_eq!(
        second.status,
        pb::EscrowAccountStatus::AwaitingFunding as i32
    );
    assert_eq!(minor(&second.schedule[0].amount), 300);
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn a_card_holds_then_posts_and_a_declined_card_moves_nothing(pool: PgPool) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let id = open_with(
        &mut client,
        open_request("c-card", vec![payment("m0", 300), payment("m1", 700)]),
    )
    .await
    .escrow_account_id;
    let declined = fund(&mut client, card(&id, "m0", 300, "tok_declined", "k-0"))
        .await
        .unwrap();
    assert_eq!(
        (status(&declined), declined.failure_code.as_str()),
        (pb::FundingStatus::Failed, "card_declined")
    );
    assert_eq!(
        hold_status(&mut client, &id, &declined.hold_id).await,
        pb::HoldStatus::Voided,
        "its hold was recorded before the call, and voided"
    );
    assert_eq!(
        account_status(&mut client, &id).await,
        pb::EscrowAccountStatus::AwaitingFunding
    );
    let wrong = fund(&mut client, card(&id, "m0", 299, "tok_visa", "k-1"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument, "{wrong:?}");
    let paid = fund(&mut client, card(&id, "m0", 300, "tok_visa", "k-2"))
        .await
        .unwrap();
    assert_eq!(status(&paid), pb::FundingStatus::Succeeded);
    assert_eq!(
        hold_status(&mut client, &id, &paid.hold_id).await,
        pb::HoldStatus::Posted,
        "the charge's hold posted"
    );
    assert_eq!(
        account_status(&mut client, &id).await,
        pb::EscrowAccountStatus::PartiallyFunded
    );
    let again = fund(&mut client, card(&id, "m0", 300, "tok_visa", "k-3"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    fund(&mut client, card(&id, "m1", 700, "tok_visa", "k-4"))
        .await
        .unwrap();
    assert_eq!(
        account_status(&mut client, &id).await,
        pb::EscrowAccountStatus::Funded
    );
    assert_eq!(held(&mut client, &id).await, 1_000);
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::GatewayClearing).await,
        -1_000
    );
    assert_eq!(escrow.gateway.money_movements(), 2, "two charges");
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn a_short_bank_credit_posts_less_and_an_excess_goes_to_suspense_and_back(pool: PgPool) {
    let escrow = start_with(pool, &QUICK).await;
    let mut client = escrow.client.clone();
    let id = open(&mut client, "c-short", 1_000).await.escrow_account_id;
    let attempt = fund(&mut client, bank(&id, "full", 1_000, "b-1"))
        .await
        .unwrap();
    assert_eq!(status(&attempt), pb::FundingStatus::Pending);
    let twin = fund(&mut client, bank(&id, "full", 1_000, "b-2"))
        .await
        .unwrap_err();
    assert_eq!(
        twin.code(),
        Code::FailedPrecondition,
        "one pending attempt per payment"
    );
    let short = credit("evt-1", &attempt, 990);
    assert_eq!(
        deliver(&mut client, &short).await,
        pb::WebhookOutcome::Applied
    );
    assert_eq!(
        deliver(&mut client, &short).await,
        pb::WebhookOutcome::Applied,
        "the same event replays its answer"
    );
    assert_eq!(held(&mut client, &id).await, 990);
    assert_eq!(
        account_status(&mut client, &id).await,
        pb::EscrowAccountStatus::PartiallyFunded,
        "10 still due"
    );
    let rest = fund(&mut client, bank(&id, "full", 10, "b-3"))
        .await
        .unwrap();
    let excess = credit("evt-2", &rest, 25);
    assert_eq!(
        deliver(&mut client, &excess).await,
        pb::WebhookOutcome::Applied
    );
    assert_eq!(
        account_status(&mut client, &id).await,
        pb::EscrowAccountStatus::Funded
    );
    assert_eq!(held(&mut client, &id).await, 1_000);
    let back = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await;
    assert_eq!(back.len(), 1);
    assert_eq!(minor(&back[0].amount), 15);
    assert_eq!(back[0].source_reference, rest.gateway_reference);
    assert_eq!(back[0].funding_attempt_id, rest.funding_attempt_id);
    let items = client
        .list_unmatched_gateway_items(finance(pb::ListUnmatchedGatewayItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, "LATE_CREDIT");
    assert_eq!(minor(&items[0].amount), 15);
    assert_eq!(items[0].gateway_transfer_id, back[0].gateway_transfer_id);
    refund_suspense(&mut client, 1).await;
    let back = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await;
    assert_eq!(back[0].status, pb::GatewayTransferStatus::Paid as i32);
    // The gateway reports the refund twice: it is paid once.
    let twice = Event::new("evt-paid-again", "refund.paid", &back[0].gateway_reference)
        .client(&back[0].gateway_transfer_id);
    assert_eq!(
        deliver(&mut client, &twice).await,
        pb::WebhookOutcome::Duplicate
    );
    assert_money(&escrow, 990 + 25).await;
}

#[sqlx::test(migrations = false)]
async fn a_bank_credit_after_the_attempt_expired_goes_to_suspense_and_back(pool: PgPool) {
    let escrow = start_with(pool, &QUICK).await;
    let mut client = escrow.client.clone();
    let id = open(&mut client, "c-expired", 1_000)
        .await
        .escrow_account_id;
    let attempt = fund(&mut client, bank(&id, "full", 1_000, "b-1"))
        .await
        .unwrap();
    // The attempt's expiry timer falls due and fires.
    make_due(&escrow.pool, ATTEMPT_EXPIRY, &attempt.funding_attempt_id).await;
    let expired = eventually("the attempt expired", || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let a = account(&mut client, &id).await.funding_attempts.remove(0);
            (status(&a) == pb::FundingStatus::Failed).then_some(a)
        }
    })
    .await;
    assert_eq!(expired.failure_code, "expired");
    assert_eq!(
        hold_status(&mut client, &id, &attempt.hold_id).await,
        pb::HoldStatus::Voided
    );
    let late = credit("evt-late", &attempt, 1_000);
    let answer = client
        .handle_gateway_webhook(gateway(late.signed()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome, pb::WebhookOutcome::Applied as i32);
    assert_eq!(
        answer.funding_attempt.unwrap().status,
        pb::FundingStatus::Failed as i32,
        "the attempt stays failed"
    );
    assert_eq!(held(&mut client, &id).await, 0);
    assert_eq!(
        account_status(&mut client, &id).await,
        pb::EscrowAccountStatus::AwaitingFunding
    );
    let events = events_until(&mut client, pb::EscrowEventType::LateCreditSuspended).await;
    assert_eq!(minor(&events.last().unwrap().amount), 1_000);
    assert_eq!(
        deliver(&mut client, &late).await,
        pb::WebhookOutcome::Applied,
        "redelivered: replayed, not parked twice"
    );
    refund_suspense(&mut client, 1).await;
    assert_money(&escrow, 1_000).await;
}

#[sqlx::test(migrations = false)]
async fn a_credit_arriving_after_the_expiry_before_its_timer_fired_is_still_late(pool: PgPool) {
    let escrow = start_with(pool, &QUICK).await;
    let mut client = escrow.client.clone();
    let id = open(&mut client, "c-late", 1_000).await.escrow_account_id;
    let attempt = fund(&mut client, bank(&id, "full", 1_000, "b-1"))
        .await
        .unwrap();
    // What the webhook runs, at the moment the attempt expires (its timer
    // has not fired yet).
    let expires_at =
        ta_runtime::timestamps::from_proto(attempt.expires_at.as_ref().unwrap()).unwrap();
    let attempt_id = Uuid::parse_str(&attempt.funding_attempt_id).unwrap();
    let flows = escrow.replica();
    let mut tx = escrow.pool.begin().await.unwrap();
    let credited = funding::credit(
        &mut tx,
        &flows,
        attempt_id,
        "evt-late",
        &attempt.gateway_reference,
        1_000,
        expires_at,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        credited.outcome,
        CreditOutcome::Suspended { to_suspense: 1_000 }
    );
    assert!(credited.suspense_refund.is_some(), "sent back");
    let got = account(&mut client, &id).await;
    assert_eq!(got.funding_attempts[0].failure_code, "expired");
    assert_eq!(minor(&got.account.unwrap().held), 0);
    refund_suspense(&mut client, 1).await;
    assert_money(&escrow, 1_000).await;
}

#[sqlx::test(migrations = false)]
async fn a_pay_later_refund_goes_back_to_the_loan_and_nothing_to_the_buyer(pool: PgPool) {
    use pb::purpose::Purpose as P;
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let mut request = open_request("c-loan", vec![payment("m0", 600), payment("m1", 400)]);
    request.payment_scheme = pb::EscrowPaymentScheme::PayLater as i32;
    request.financing_partner_id = PARTNER.into();
    let id = open_with(&mut client, request).await.escrow_account_id;
    for (milestone, amount) in [("m0", 600), ("m1", 400)] {
        let loan = fund(
            &mut client,
            pb::FundEscrowRequest {
                method: Some(pb::fund_escrow_request::Method::PayLater(
                    pb::PayLaterPayment {
                        financing_partner_id: PARTNER.into(),
                        repayment_months: 3,
                    },
                )),
                ..card(&id, milestone, amount, "", &format!("pl-{milestone}"))
            },
        )
        .await
        .unwrap();
        assert_eq!(status(&loan), pb::FundingStatus::Pending);
        let disbursed = Event::new(
            &format!("evt-{milestone}"),
            "pay_later.disbursed",
            &loan.gateway_reference,
        )
        .client(&loan.funding_attempt_id)
        .usd(amount);
        assert_eq!(
            deliver(&mut client, &disbursed).await,
            pb::WebhookOutcome::Applied
        );
    }
    assert_eq!(partner(&mut client, &id).await, -1_000, "the loan");

    // A claim's refund goes back to the loan, in one transfer.
    client
        .freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: "f-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            reason: "damaged".into(),
        }))
        .await
        .unwrap();
    let settled = client
        .settle_claim(dispute(pb::SettleClaimRequest {
            idempotency_key: "s-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            refund: usd(800),
            release_rest: false,
            reason: "refund decided".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(settled.postings.len(), 1);
    let leg = &settled.postings[0];
    assert_eq!(minor(&leg.amount), 800);
    assert_eq!(
        leg.credit_account.as_ref().unwrap().kind,
        pb::LedgerAccountKind::FinancingPartner as i32
    );
    assert_eq!(
        partner(&mut client, &id).await,
        -200,
        "the loan is reduced first"
    );
    // The rest, on cancellation, repays the loan too: the account closes.
    let rest = client
        .refund_to_buyer(finance(pb::RefundToBuyerRequest {
            idempotency_key: "cancel".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "cancelled".into(),
            purpose: purpose(P::Cancellation(true)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.postings.len(), 1);
    assert_eq!(
        rest.account.unwrap().status,
        pb::EscrowAccountStatus::Closed as i32
    );
    assert_eq!(
        partner(&mut client, &id).await,
        0,
        "the loan is repaid in full"
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::BuyerRefundPayable).await,
        0,
        "nothing owed to the buyer"
    );
    let worker = escrow.worker();
    worker.flows.request_payouts();
    worker.pass().await.unwrap();
    assert!(
        transfers(&mut client, pb::GatewayTransferDirection::BuyerRefund)
            .await
            .is_empty()
    );
    let nothing = client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "rel".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "delivered".into(),
            purpose: purpose(P::MilestoneId("m0".into())),
        }))
        .await
        .unwrap_err();
    assert_eq!(nothing.code(), Code::FailedPrecondition, "{nothing:?}");
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn a_frozen_account_moves_money_only_through_the_claims_outcome(pool: PgPool) {
    use pb::purpose::Purpose as P;
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let id = funded(&mut client, "c-frozen", 1_000).await;
    let frozen = client
        .freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: "f-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            reason: "not as described".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(frozen.active_freezes[0].claim_id, "claim-1");
    let refused = client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "rel".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "delivered".into(),
            purpose: purpose(P::MilestoneId("full".into())),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let closing = client
        .close_escrow_account(contract(pb::CloseEscrowAccountRequest {
            idempotency_key: "close".into(),
            escrow_account_id: id.clone(),
            reason: "done".into(),
            refund_held: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(closing.code(), Code::FailedPrecondition);
    let settled = client
        .settle_claim(dispute(pb::SettleClaimRequest {
            idempotency_key: "s-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            refund: usd(300),
            release_rest: true,
            reason: "partial refund, rest to the supplier".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let acc = settled.account.unwrap();
    assert!(acc.active_freezes.is_empty());
    assert_eq!(minor(&acc.refunded_total), 300);
    assert_eq!(minor(&acc.released_total), 700);
    assert_eq!(
        acc.status,
        pb::EscrowAccountStatus::Closed as i32,
        "emptied: closed"
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        700
    );
    // Once per claim.
    let again = client
        .settle_claim(dispute(pb::SettleClaimRequest {
            idempotency_key: "s-2".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            refund: usd(300),
            release_rest: true,
            reason: "again".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn closing_fails_pending_attempts_and_a_late_credit_goes_back(pool: PgPool) {
    let escrow = start_with(pool, &QUICK).await;
    let mut client = escrow.client.clone();
    let id = open(&mut client, "c-closing", 1_000)
        .await
        .escrow_account_id;
    let attempt = fund(&mut client, bank(&id, "full", 1_000, "b-1"))
        .await
        .unwrap();
    client
        .close_escrow_account(contract(pb::CloseEscrowAccountRequest {
            idempotency_key: "close".into(),
            escrow_account_id: id.clone(),
            reason: "cancelled".into(),
            refund_held: false,
        }))
        .await
        .unwrap();
    let failed = account(&mut client, &id).await.funding_attempts.remove(0);
    assert_eq!(failed.failure_code, "account_closed");
    assert_eq!(
        hold_status(&mut client, &id, &attempt.hold_id).await,
        pb::HoldStatus::Voided
    );
    assert_eq!(
        deliver(&mut client, &credit("evt-late", &attempt, 1_000)).await,
        pb::WebhookOutcome::Applied
    );
    assert_eq!(held(&mut client, &id).await, 0);
    let refused = fund(&mut client, card(&id, "full", 1_000, "tok_visa", "k-1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        escrow
            .gateway
            .moved_under(&format!("fund:{BUYER}:k-1"))
            .is_none(),
        "nothing charged"
    );
    refund_suspense(&mut client, 1).await;
    assert_money(&escrow, 1_000).await;
}

#[sqlx::test(migrations = false)]
async fn a_payout_pays_the_supplier_across_contracts_and_resolves_once(pool: PgPool) {
    use pb::purpose::Purpose as P;
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    for i in 0..3 {
        let id = funded(&mut client, &format!("c-payout-{i}"), 500).await;
        client
            .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
                idempotency_key: format!("rel-{i}"),
                escrow_account_id: id,
                amount: None,
                reason: "delivered".into(),
                purpose: purpose(P::Acceptance(true)),
            }))
            .await
            .unwrap();
    }
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        1_500
    );
    let runner = client.clone();
    let run = |key: &'static str| {
        let mut client = runner.clone();
        async move {
            client
                .run_supplier_payouts(finance(pb::RunSupplierPayoutsRequest {
                    idempotency_key: key.into(),
                    reason: "the weekly run".into(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .payouts
        }
    };
    let first = run("run-1").await;
    assert_eq!(first.len(), 1, "one payout across the supplier's contracts");
    assert_eq!(minor(&first[0].amount), 1_500);
    assert!(run("run-2").await.is_empty(), "its money is held for it");

    // It fails: the money is owed again; the same report twice changes nothing.
    let failed = Event::new("evt-failed", "payout.failed", &first[0].gateway_reference)
        .client(&first[0].gateway_transfer_id);
    assert_eq!(
        deliver(&mut client, &failed).await,
        pb::WebhookOutcome::Applied
    );
    let again = Event::new("evt-failed-2", "payout.failed", &first[0].gateway_reference);
    assert_eq!(
        deliver(&mut client, &again).await,
        pb::WebhookOutcome::Duplicate
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        1_500
    );
    let second = run("run-3").await;
    assert_eq!(second.len(), 1);
    let paid = Event::new("evt-paid", "payout.paid", &second[0].gateway_reference)
        .client(&second[0].gateway_transfer_id);
    assert_eq!(
        deliver(&mut client, &paid).await,
        pb::WebhookOutcome::Applied
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        0
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::GatewayClearing).await,
        0,
        "in and out again"
    );
    let paid_again = Event::new("evt-paid-2", "payout.paid", &second[0].gateway_reference);
    assert_eq!(
        deliver(&mut client, &paid_again).await,
        pb::WebhookOutcome::Duplicate,
        "paid once"
    );
    let all = transfers(&mut client, pb::GatewayTransferDirection::Payout).await;
    let statuses: Vec<_> = all.iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        vec![
            pb::GatewayTransferStatus::Failed as i32,
            pb::GatewayTransferStatus::Paid as i32
        ]
    );
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn a_payout_reported_paid_after_it_failed_leaves_the_ledger_once(pool: PgPool) {
    use pb::purpose::Purpose as P;
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let id = funded(&mut client, "c-paid-late", 1_500).await;
    client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "rel".into(),
            escrow_account_id: id,
            amount: None,
            reason: "delivered".into(),
            purpose: purpose(P::Acceptance(true)),
        }))
        .await
        .unwrap();
    let payout = client
        .run_supplier_payouts(finance(pb::RunSupplierPayoutsRequest {
            idempotency_key: "run-1".into(),
            reason: "the weekly run".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .payouts
        .remove(0);
    let report = |id: &str, kind: &str| {
        Event::new(id, kind, &payout.gateway_reference).client(&payout.gateway_transfer_id)
    };
    assert_eq!(
        deliver(&mut client, &report("evt-1", "payout.failed")).await,
        pb::WebhookOutcome::Applied
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        1_500,
        "owed again"
    );
    // The gateway paid it after all: the money leaves the payable, once,
    // however often the gateway says so.
    assert_eq!(
        deliver(&mut client, &report("evt-2", "payout.paid")).await,
        pb::WebhookOutcome::Applied
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        0
    );
    // The supplier is owed again for another contract when the gateway
    // repeats itself.
    let other = funded(&mut client, "c-paid-late-2", 700).await;
    client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "rel-2".into(),
            escrow_account_id: other,
            amount: None,
            reason: "delivered".into(),
            purpose: purpose(P::Acceptance(true)),
        }))
        .await
        .unwrap();
    assert_eq!(
        deliver(&mut client, &report("evt-3", "payout.paid")).await,
        pb::WebhookOutcome::Duplicate
    );
    let items = client
        .list_unmatched_gateway_items(finance(pb::ListUnmatchedGatewayItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(items.is_empty(), "nothing for an operator: {items:#?}");
    let all = transfers(&mut client, pb::GatewayTransferDirection::Payout).await;
    assert_eq!(
        all[0].status,
        pb::GatewayTransferStatus::Paid as i32,
        "the money left: paid"
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        700,
        "the new money is still owed"
    );
    assert_money(&escrow, 0).await;
}
