//! The escrow API end to end over real gRPC and Postgres: funding by card,
//! bank transfer and Pay Later through the sandbox gateway and its signed
//! webhooks, releases, refunds, claims, payouts, amendments, deadlines and
//! the feed; reconciliation finds nothing after each flow.

mod support;

use sqlx::PgPool;
use support::*;
use ta_proto::escrow as pb;
use tonic::Code;

fn purpose(p: pb::purpose::Purpose) -> Option<pb::Purpose> {
    Some(pb::Purpose { purpose: Some(p) })
}

#[sqlx::test(migrations = false)]
async fn a_card_payment_funds_and_a_release_pays_the_supplier_out(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        ..
    } = start(pool).await;
    let id = funded(&mut client, "c-card", 10_000).await;
    let got = account(&mut client, &id).await;
    let acc = got.account.unwrap();
    assert_eq!(acc.status, pb::EscrowAccountStatus::Funded as i32);
    assert_eq!(minor(&acc.held), 10_000);
    assert_eq!(got.funding_attempts.len(), 1);
    assert!(
        got.funding_attempts[0]
            .gateway_reference
            .starts_with("pay_")
    );

    let released = client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "rel-1".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "goods accepted".into(),
            purpose: purpose(pb::purpose::Purpose::Acceptance(true)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minor(&released.posting.unwrap().amount), 10_000);
    assert_eq!(minor(&released.account.unwrap().released_total), 10_000);

    // The same purpose under another key moves nothing.
    let again = client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "rel-2".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "goods accepted".into(),
            purpose: purpose(pb::purpose::Purpose::Acceptance(true)),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    let payouts = client
        .run_supplier_payouts(finance(pb::RunSupplierPayoutsRequest {
            idempotency_key: "payout-1".into(),
            reason: "the weekly run".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .payouts;
    assert_eq!(payouts.len(), 1);
    assert_eq!(minor(&payouts[0].amount), 10_000);
    assert_eq!(payouts[0].status, pb::GatewayTransferStatus::Pending as i32);
    let paid = client
        .handle_gateway_webhook(gateway(webhook(
            "evt-payout-1",
            "payout.paid",
            &payouts[0].gateway_reference,
            None,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paid.outcome, pb::WebhookOutcome::Applied as i32);
    let listed = client
        .list_gateway_transfers(as_role(
            pb::ListGatewayTransfersRequest {
                supplier_id: SUPPLIER_ID.into(),
                ..Default::default()
            },
            SUPPLIER_OWNER,
            ta_runtime::auth::Role::Supplier,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.transfers.len(), 1);
    assert_eq!(
        listed.transfers[0].status,
        pb::GatewayTransferStatus::Paid as i32
    );

    let statement = client
        .get_escrow_statement(buyer(pb::GetEscrowStatementRequest {
            escrow_account_id: id.clone(),
            page: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = statement.postings.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        vec![
            pb::PostingKind::Funding as i32,
            pb::PostingKind::Release as i32
        ]
    );
    assert_eq!(statement.postings[1].reason, "goods accepted");
    let sum: i64 = statement.balances.iter().map(|b| minor(&b.posted)).sum();
    assert_eq!(sum, 0, "the statement's balances sum to zero");
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn a_declined_card_moves_nothing_and_a_gateway_error_is_resolved_by_asking_the_gateway(
    pool: PgPool,
) {
    let Escrow {
        mut client,
        gateway: sandbox,
        server: _server,
        ..
    } = start_with(
        pool,
        &[
            "--gateway-check-after",
            "200ms",
            "--gateway-worker-poll",
            "50ms",
        ],
    )
    .await;
    let id = open(&mut client, "c-decline", 5_000)
        .await
        .escrow_account_id;

    let declined = client
        .fund_escrow(buyer(card(&id, "full", 5_000, "tok_declined", "d-1")))
        .await
        .unwrap()
        .into_inner();
    let attempt = declined.funding_attempt.unwrap();
    assert_eq!(attempt.status, pb::FundingStatus::Failed as i32);
    assert_eq!(attempt.failure_code, "card_declined");
    let acc = declined.account.unwrap();
    assert_eq!(acc.status, pb::EscrowAccountStatus::AwaitingFunding as i32);
    assert_eq!(minor(&acc.held), 0);
    assert_eq!(sandbox.money_movements(), 0);

    // The gateway fails before acting: the caller hears UNAVAILABLE; the
    // attempt recorded before the call waits for the gateway's word, and the
    // worker, asking by key, learns it never arrived and fails it.
    let error = client
        .fund_escrow(buyer(card(&id, "full", 5_000, "tok_gateway_error", "g-1")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert_eq!(sandbox.money_movements(), 0);
    let failed = wait_for(&mut client, &id, |acc| {
        acc.funding_attempts
            .iter()
            .any(|a| a.failure_code == "gateway_unreachable")
    })
    .await;
    let acc = failed.account.unwrap();
    assert_eq!(minor(&acc.held), 0);
    assert_eq!(acc.status, pb::EscrowAccountStatus::AwaitingFunding as i32);
    // The payment is free for another try.
    let paid = client
        .fund_escrow(buyer(card(&id, "full", 5_000, "tok_visa", "g-2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        paid.funding_attempt.unwrap().status,
        pb::FundingStatus::Succeeded as i32
    );
    assert_eq!(sandbox.money_movements(), 1);
    assert_sound(&mut client).await;
}

/// Polls the account (bounded) until `done` holds.
async fn wait_for(
    client: &mut Client,
    id: &str,
    done: impl Fn(&pb::GetEscrowAccountResponse) -> bool,
) -> pb::GetEscrowAccountResponse {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let acc = account(client, id).await;
        if done(&acc) {
            return acc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {acc:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_card_payment_lost_to_a_timeout_and_retried_is_charged_once(pool: PgPool) {
    let Escrow {
        mut client,
        gateway: sandbox,
        server: _server,
        ..
    } = start(pool).await;
    let id = open(&mut client, "c-timeout", 7_500)
        .await
        .escrow_account_id;
    let lost = client
        .fund_escrow(buyer(card(&id, "full", 7_500, "tok_timeout", "t-1")))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    assert_eq!(sandbox.money_movements(), 1, "the gateway did charge");
    let waiting = account(&mut client, &id).await;
    assert_eq!(
        waiting.funding_attempts.len(),
        1,
        "recorded before the call"
    );
    assert_eq!(
        waiting.funding_attempts[0].status,
        pb::FundingStatus::Pending as i32
    );
    assert_eq!(minor(&waiting.account.unwrap().held), 0, "not posted yet");

    let retried = client
        .fund_escrow(buyer(card(&id, "full", 7_500, "tok_timeout", "t-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retried.funding_attempt.unwrap().status,
        pb::FundingStatus::Succeeded as i32
    );
    assert_eq!(sandbox.money_movements(), 1, "charged once");
    let again = client
        .fund_escrow(buyer(card(&id, "full", 7_500, "tok_timeout", "t-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        minor(&again.account.unwrap().funded_total),
        7_500,
        "replayed"
    );
    let acc = account(&mut client, &id).await;
    assert_eq!(acc.funding_attempts.len(), 1);
    assert_eq!(minor(&acc.account.unwrap().held), 7_500);
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn a_card_payment_whose_answer_was_lost_is_recorded_by_asking_the_gateway(pool: PgPool) {
    let Escrow {
        mut client,
        gateway: sandbox,
        server: _server,
        ..
    } = start_with(
        pool,
        &[
            "--gateway-check-after",
            "200ms",
            "--gateway-worker-poll",
            "50ms",
        ],
    )
    .await;
    let id = open(&mut client, "c-lost", 7_500).await.escrow_account_id;
    let lost = client
        .fund_escrow(buyer(card(&id, "full", 7_500, "tok_timeout", "l-1")))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    // The buyer never retries: the worker asks the gateway by key.
    let settled = wait_for(&mut client, &id, |acc| {
        acc.funding_attempts
            .iter()
            .any(|a| a.status == pb::FundingStatus::Succeeded as i32)
    })
    .await;
    assert_eq!(minor(&settled.account.unwrap().held), 7_500);
    assert_eq!(sandbox.money_movements(), 1, "charged once, recorded once");
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn a_bank_transfer_waits_for_a_signed_credit_and_forged_or_replayed_ones_change_nothing(
    pool: PgPool,
) {
    let Escrow {
        mut client,
        pool,
        server: _server,
        ..
    } = start(pool).await;
    let id = open(&mut client, "c-bank", 20_000).await.escrow_account_id;
    let pending = client
        .fund_escrow(buyer(bank(&id, "full", 20_000, "b-1")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    assert_eq!(pending.status, pb::FundingStatus::Pending as i32);
    let instructions = pending.bank_transfer_instructions.clone().unwrap();
    assert!(!instructions.iban.is_empty() && !instructions.bic.is_empty());
    assert!(!instructions.payment_reference.is_empty());
    let reference = pending.gateway_reference.clone();

    let before = snapshot(&pool).await;
    let good = webhook(
        "evt-credit-1",
        "bank_transfer.credited",
        &reference,
        Some(20_000),
    );
    let mut forged = good.clone();
    forged.signature = forged.signature.replace("v1=", "v1=00");
    let mut tampered = good.clone();
    tampered.payload = tampered
        .payload
        .iter()
        .map(|b| if *b == b'2' { b'9' } else { *b })
        .collect();
    let unsigned = pb::HandleGatewayWebhookRequest {
        signature: String::new(),
        ..good.clone()
    };
    let stale = webhook_at(
        "evt-credit-1",
        "bank_transfer.credited",
        &reference,
        Some(20_000),
        now_unix() - 3_600,
    );
    for (name, bad) in [
        ("forged", forged),
        ("tampered", tampered),
        ("unsigned", unsigned),
        ("stale", stale),
    ] {
        let status = client
            .handle_gateway_webhook(gateway(bad))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    }
    assert_eq!(
        snapshot(&pool).await,
        before,
        "refused events change nothing"
    );

    let applied = client
        .handle_gateway_webhook(gateway(good.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.outcome, pb::WebhookOutcome::Applied as i32);
    assert_eq!(
        applied.funding_attempt.unwrap().status,
        pb::FundingStatus::Succeeded as i32
    );
    let after_first = snapshot(&pool).await;
    // The same event again, under its key or re-signed under another key.
    let replay = client
        .handle_gateway_webhook(gateway(good))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replay.outcome,
        pb::WebhookOutcome::Applied as i32,
        "replayed answer"
    );
    // Redelivered with a fresh signature: the first answer again.
    let redelivered = client
        .handle_gateway_webhook(gateway(webhook_at(
            "evt-credit-1",
            "bank_transfer.credited",
            &reference,
            Some(20_000),
            now_unix() - 1,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redelivered.outcome, pb::WebhookOutcome::Applied as i32);
    // A failure reported for the resolved attempt changes nothing.
    let late_failure = client
        .handle_gateway_webhook(gateway(webhook(
            "evt-fail-late",
            "payment.failed",
            &reference,
            None,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late_failure.outcome, pb::WebhookOutcome::Duplicate as i32);
    let postings_after: i64 = snapshot(&pool).await.rows("postings");
    assert_eq!(postings_after, after_first.rows("postings"), "applied once");
    let acc = account(&mut client, &id).await.account.unwrap();
    assert_eq!(acc.status, pb::EscrowAccountStatus::Funded as i32);
    assert_eq!(minor(&acc.held), 20_000);

    // A credit naming no payment, older than the retry window (the event's
    // `created` is in 2023), is listed for operators, and reconciliation
    // reports it until one settles it.
    let unknown = client
        .handle_gateway_webhook(gateway(webhook(
            "evt-unknown",
            "bank_transfer.credited",
            "bt_nobody",
            Some(100),
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.outcome, pb::WebhookOutcome::Ignored as i32);
    let items = client
        .list_unmatched_gateway_items(finance(pb::ListUnmatchedGatewayItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, "UNKNOWN_REFERENCE");
    assert_eq!(minor(&items[0].amount), 100);
    let found = client
        .reconcile_ledger(finance(pb::ReconcileLedgerRequest {}))
        .await
        .unwrap()
        .into_inner()
        .differences;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, "UNKNOWN_REFERENCE");
    assert_eq!(minor(&found[0].actual), 100);
}

#[sqlx::test(migrations = false)]
async fn pay_later_is_funded_by_the_partner_and_a_claim_refund_reduces_the_loan_first(
    pool: PgPool,
) {
    let Escrow {
        mut client,
        server: _server,
        ..
    } = start(pool).await;
    let mut request = open_request("c-later", vec![payment("full", 30_000)]);
    request.payment_scheme = pb::EscrowPaymentScheme::PayLater as i32;
    request.financing_partner_id = PARTNER.into();
    let id = open_with(&mut client, request).await.escrow_account_id;

    let by_card = client
        .fund_escrow(buyer(card(&id, "full", 30_000, "tok_visa", "pl-card")))
        .await
        .unwrap_err();
    assert_eq!(by_card.code(), Code::FailedPrecondition, "{by_card:?}");

    let later = pb::FundEscrowRequest {
        method: Some(pb::fund_escrow_request::Method::PayLater(
            pb::PayLaterPayment {
                financing_partner_id: PARTNER.into(),
                repayment_months: 3,
            },
        )),
        ..card(&id, "full", 30_000, "", "pl-1")
    };
    let attempt = client
        .fund_escrow(buyer(later))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    assert_eq!(attempt.status, pb::FundingStatus::Pending as i32);
    assert!(!attempt.loan_reference.is_empty());
    client
        .handle_gateway_webhook(gateway(webhook(
            "evt-disbursed",
            "pay_later.disbursed",
            &attempt.gateway_reference,
            Some(minor(&attempt.amount)),
        )))
        .await
        .unwrap();

    client
        .freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: "fz-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            reason: "quality mismatch".into(),
        }))
        .await
        .unwrap();
    let refused = client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "rel-frozen".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "goods accepted".into(),
            purpose: purpose(pb::purpose::Purpose::Acceptance(true)),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let settled = client
        .settle_claim(dispute(pb::SettleClaimRequest {
            idempotency_key: "settle-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            refund: usd(12_000),
            release_rest: true,
            reason: "partial refund decided".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let to_partner: i64 = settled
        .postings
        .iter()
        .filter(|p| {
            p.credit_account.as_ref().unwrap().kind
                == pb::LedgerAccountKind::FinancingPartner as i32
        })
        .map(|p| minor(&p.amount))
        .sum();
    assert_eq!(to_partner, 12_000, "the refund reduced the loan");
    let acc = settled.account.unwrap();
    assert_eq!(minor(&acc.held), 0);
    assert_eq!(minor(&acc.released_total), 18_000);
    assert!(acc.active_freezes.is_empty());
    let twice = client
        .settle_claim(dispute(pb::SettleClaimRequest {
            idempotency_key: "settle-2".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            refund: usd(1),
            release_rest: false,
            reason: "again".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "once per claim");
    let events = events_until(&mut client, pb::EscrowEventType::ClaimSettled).await;
    let types: Vec<i32> = events.iter().map(|e| e.r#type).collect();
    for wanted in [
        pb::EscrowEventType::AccountOpened,
        pb::EscrowEventType::PaymentSucceeded,
        pb::EscrowEventType::Funded,
        pb::EscrowEventType::Frozen,
    ] {
        assert!(types.contains(&(wanted as i32)), "{wanted:?} in {types:?}");
    }
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn an_unpaid_deadline_publishes_payment_overdue(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        ..
    } = start(pool).await;
    let mut request = open_request("c-overdue", vec![payment("deposit", 1_000)]);
    request.schedule[0].due_at = Some(ta_runtime::timestamps::to_proto(
        ta_runtime::timestamps::now() + time::Duration::milliseconds(200),
    ));
    let id = open_with(&mut client, request).await.escrow_account_id;
    let events = events_until(&mut client, pb::EscrowEventType::PaymentOverdue).await;
    let overdue = events.last().unwrap();
    assert_eq!(overdue.escrow_account_id, id);
    assert_eq!(overdue.milestone_id, "deposit");
    let held = client
        .list_held_accounts(finance(pb::ListHeldAccountsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(held.accounts.is_empty(), "nothing is held");
}

#[sqlx::test(migrations = false)]
async fn refunds_close_and_amendments_keep_the_ledger_sound(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        ..
    } = start(pool).await;
    let mut request = open_request(
        "c-amend",
        vec![payment("deposit", 3_000), payment("balance", 7_000)],
    );
    request.idempotency_key = "open-amend".into();
    let id = open_with(&mut client, request).await.escrow_account_id;
    client
        .fund_escrow(buyer(card(&id, "deposit", 3_000, "tok_visa", "a-1")))
        .await
        .unwrap();
    let held = client
        .list_held_accounts(finance(pb::ListHeldAccountsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.accounts.len(), 1);
    assert_eq!(held.accounts[0].next_deadline_kind, "payment_due");

    // Version 2 lowers the deposit: the excess goes back to the buyer.
    let amended = client
        .amend_escrow_schedule(contract(pb::AmendEscrowScheduleRequest {
            reason: String::new(),
            idempotency_key: "amend-2".into(),
            escrow_account_id: id.clone(),
            schedule: vec![payment("deposit", 2_000), payment("balance", 6_000)],
            contract_version: 2,
            hold_until: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(amended.postings.len(), 1);
    assert_eq!(minor(&amended.postings[0].amount), 1_000);
    let acc = amended.account.unwrap();
    assert_eq!(minor(&acc.held), 2_000);
    assert_eq!(minor(&acc.expected_total), 8_000);
    // An older version changes nothing.
    let stale = client
        .amend_escrow_schedule(contract(pb::AmendEscrowScheduleRequest {
            reason: String::new(),
            idempotency_key: "amend-2-late".into(),
            escrow_account_id: id.clone(),
            schedule: vec![payment("deposit", 9_000)],
            contract_version: 2,
            hold_until: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(stale.postings.is_empty());
    assert_eq!(minor(&stale.account.unwrap().expected_total), 8_000);

    let refund = client
        .refund_to_buyer(finance(pb::RefundToBuyerRequest {
            idempotency_key: "cancel".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "contract cancelled before shipment".into(),
            purpose: purpose(pb::purpose::Purpose::Cancellation(true)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minor(&refund.postings[0].amount), 2_000);
    let closed = client
        .close_escrow_account(contract(pb::CloseEscrowAccountRequest {
            idempotency_key: "close".into(),
            escrow_account_id: id.clone(),
            reason: "contract cancelled".into(),
            refund_held: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        closed.account.unwrap().status,
        pb::EscrowAccountStatus::Closed as i32
    );
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn closing_for_a_cancellation_refunds_what_the_account_holds_in_the_same_step(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        ..
    } = start_with(pool, &[]).await;
    // Funded while the contract, not told yet, believed nothing was paid.
    let id = funded(&mut client, "c-cancelled", 8_000).await;
    let close = |key: &str, refund_held: bool| {
        contract(pb::CloseEscrowAccountRequest {
            idempotency_key: key.into(),
            escrow_account_id: id.clone(),
            reason: "contract cancelled: the payment deadline passed".into(),
            refund_held,
        })
    };
    let refused = client
        .close_escrow_account(close("plain", false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("holds"), "{}", refused.message());

    let closed = client
        .close_escrow_account(close("cancel", true))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(closed.status, pb::EscrowAccountStatus::Closed as i32);
    assert_eq!(minor(&closed.held), 0);
    assert_eq!(minor(&closed.refunded_total), 8_000);
    // The relay's retry replays the answer and refunds nothing more.
    let replayed = client
        .close_escrow_account(close("cancel", true))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(minor(&replayed.refunded_total), 8_000);
    assert_sound(&mut client).await;
}

#[sqlx::test(migrations = false)]
async fn the_payout_timer_pays_refunds_and_suppliers_out_and_the_gateway_settles_them(
    pool: PgPool,
) {
    let Escrow {
        mut client,
        server: _server,
        ..
    } = start_with(pool, &["--payout-interval", "1s"]).await;
    let id = funded(&mut client, "c-timer", 8_000).await;
    client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: "part".into(),
            escrow_account_id: id.clone(),
            amount: usd(5_000),
            reason: "deposit share".into(),
            purpose: purpose(pb::purpose::Purpose::MilestoneId("full".into())),
        }))
        .await
        .unwrap();
    client
        .refund_to_buyer(finance(pb::RefundToBuyerRequest {
            idempotency_key: "rest".into(),
            escrow_account_id: id.clone(),
            amount: None,
            reason: "short shipment".into(),
            purpose: purpose(pb::purpose::Purpose::Cancellation(true)),
        }))
        .await
        .unwrap();
    // The timer sends both out within a few runs (bounded wait).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let transfers = loop {
        let listed = client
            .list_gateway_transfers(finance(pb::ListGatewayTransfersRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .transfers;
        // Recorded, then accepted by the gateway (PENDING) once sent.
        if listed.len() == 2
            && listed
                .iter()
                .all(|t| t.status == pb::GatewayTransferStatus::Pending as i32)
        {
            break listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payout timer never sent both: {listed:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for t in &transfers {
        assert_eq!(t.status, pb::GatewayTransferStatus::Pending as i32);
        let (kind, amount) = if t.direction == pb::GatewayTransferDirection::Payout as i32 {
            ("payout.paid", 5_000)
        } else {
            ("refund.paid", 3_000)
        };
        assert_eq!(minor(&t.amount), amount, "{t:?}");
        let answer = client
            .handle_gateway_webhook(gateway(webhook(
                &format!("evt-{}", t.gateway_transfer_id),
                kind,
                &t.gateway_reference,
                None,
            )))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.outcome, pb::WebhookOutcome::Applied as i32);
    }
    let paid = client
        .list_gateway_transfers(finance(pb::ListGatewayTransfersRequest {
            status: pb::GatewayTransferStatus::Paid as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .transfers;
    assert_eq!(paid.len(), 2);
    let trial = client
        .get_trial_balance(finance(pb::GetTrialBalanceRequest::default()))
        .await
        .unwrap()
        .into_inner();
    for line in &trial.currencies[0].lines {
        let kind = line.kind;
        if kind == pb::LedgerAccountKind::SupplierPayable as i32
            || kind == pb::LedgerAccountKind::BuyerRefundPayable as i32
            || kind == pb::LedgerAccountKind::GatewayClearing as i32
        {
            assert_eq!(minor(&line.posted), 0, "{line:?}: everything paid out");
        }
    }
    assert_sound(&mut client).await;
}
