//! Escrow at the payment gateway's boundary (issue 19): one test per escrow
//! finding, each named after it, over the in-process API with a gateway
//! that fails, loses answers or blocks when told (`support::faults`). After
//! each: reconciliation finds nothing, the trial balance sums to zero, and
//! the gateway's own books agree with the ledger (`assert_money`).

mod support;

use std::time::Duration;

use escrow::{
    app::{deadlines::PAYMENT_DUE, funding},
    gateway::PaymentGateway,
};
use sqlx::PgPool;
use support::{
    faults::{Call, Fault},
    *,
};
use ta_proto::escrow as pb;
use tonic::Code;

fn purpose(p: pb::purpose::Purpose) -> Option<pb::Purpose> {
    Some(pb::Purpose { purpose: Some(p) })
}

/// Checks and moves money in and out quickly: the worker polls every 50 ms
/// and asks the gateway 100 ms after a call went unanswered.
const QUICK: [&str; 4] = [
    "--gateway-check-after",
    "100ms",
    "--gateway-worker-poll",
    "50ms",
];

/// Nothing is retried or asked about unless the test says: the worker
/// polls rarely and a call's answer is awaited an hour.
const PATIENT: [&str; 4] = [
    "--gateway-check-after",
    "3600s",
    "--gateway-worker-poll",
    "600s",
];

/// Time passes: every transfer not accepted yet is due to be sent again.
async fn come_due(pool: &PgPool) {
    sqlx::query("UPDATE escrow.gateway_transfers SET check_at = now() WHERE status = 'sending'")
        .execute(pool)
        .await
        .unwrap();
}

/// Opens a direct account of `supplier` with `payments` (milestone, amount).
async fn open_for(
    client: &mut Client,
    contract_id: &str,
    supplier: &str,
    payments: &[(&str, i64)],
) -> String {
    let mut request = open_request(
        contract_id,
        payments.iter().map(|(m, a)| payment(m, *a)).collect(),
    );
    request.supplier_id = supplier.into();
    open_with(client, request).await.escrow_account_id
}

async fn fund_card(
    client: &mut Client,
    id: &str,
    milestone: &str,
    amount: i64,
) -> pb::FundingAttempt {
    let attempt = client
        .fund_escrow(buyer(card(
            id,
            milestone,
            amount,
            "tok_visa",
            &format!("card-{id}-{milestone}"),
        )))
        .await
        .expect("card funding")
        .into_inner()
        .funding_attempt
        .unwrap();
    assert_eq!(attempt.status, pb::FundingStatus::Succeeded as i32);
    attempt
}

async fn release(
    client: &mut Client,
    id: &str,
    key: &str,
    amount: Option<i64>,
    p: pb::purpose::Purpose,
) -> Result<pb::ReleaseToSupplierResponse, tonic::Status> {
    client
        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
            idempotency_key: key.into(),
            escrow_account_id: id.into(),
            amount: amount.and_then(usd),
            reason: "goods accepted".into(),
            purpose: purpose(p),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn run_payouts(client: &mut Client, key: &str) -> Vec<pb::GatewayTransfer> {
    client
        .run_supplier_payouts(finance(pb::RunSupplierPayoutsRequest {
            idempotency_key: key.into(),
            reason: "the weekly run".into(),
            ..Default::default()
        }))
        .await
        .expect("payout run")
        .into_inner()
        .payouts
}

fn status_of(t: &pb::GatewayTransfer) -> pb::GatewayTransferStatus {
    pb::GatewayTransferStatus::try_from(t.status).unwrap()
}

/// The account's only funding attempt... or the newest.
async fn newest_attempt(client: &mut Client, id: &str) -> pb::FundingAttempt {
    account(client, id).await.funding_attempts.remove(0)
}

#[sqlx::test(migrations = false)]
async fn finding_1_a_payout_run_failing_at_the_kth_supplier_pays_every_supplier_exactly_once(
    pool: PgPool,
) {
    // The worker sends again only when this test lets time pass.
    let (escrow, faulty) = start_faulty(pool, &PATIENT).await;
    let mut client = escrow.client.clone();
    let suppliers = ["sup-a", "sup-b", "sup-c", "sup-d"];
    for (i, supplier) in suppliers.iter().enumerate() {
        let amount = 1_000 * (i as i64 + 1);
        let id = open_for(
            &mut client,
            &format!("c-run-{i}"),
            supplier,
            &[("full", amount)],
        )
        .await;
        fund_card(&mut client, &id, "full", amount).await;
        release(
            &mut client,
            &id,
            &format!("rel-{i}"),
            None,
            pb::purpose::Purpose::Acceptance(true),
        )
        .await
        .unwrap();
    }
    // The second payout the run sends fails before the gateway acts; the
    // third is paid but its answer is lost.
    faulty.inject(Call::Payout, 2, Fault::Unavailable);
    faulty.inject(Call::Payout, 3, Fault::LoseAnswer);
    let run = run_payouts(&mut client, "run-1").await;
    assert_eq!(
        run.len(),
        4,
        "every supplier's payout is recorded: {run:#?}"
    );
    let statuses: Vec<_> = run.iter().map(status_of).collect();
    assert_eq!(
        statuses,
        vec![
            pb::GatewayTransferStatus::Pending,
            pb::GatewayTransferStatus::Sending,
            pb::GatewayTransferStatus::Sending,
            pb::GatewayTransferStatus::Pending,
        ],
        "the payouts before and after the failure stay recorded and sent"
    );
    assert_eq!(
        escrow.gateway.money_movements(),
        4 + 3,
        "4 charges, 3 payouts"
    );
    // Their next try falls due; the worker sends them again, each under its
    // own key.
    let worker = escrow.worker();
    come_due(&escrow.pool).await;
    worker.pass().await.unwrap();
    let sent = transfers(&mut client, pb::GatewayTransferDirection::Payout).await;
    assert!(
        sent.iter()
            .all(|t| status_of(t) == pb::GatewayTransferStatus::Pending),
        "{sent:#?}"
    );
    assert_eq!(faulty.made(Call::Payout).len(), 6, "two sent again");

    // Two overlapping runs (the RPC and the payout timer's worker pass) over
    // new money pay each supplier once.
    for (i, supplier) in suppliers.iter().enumerate() {
        let id = open_for(
            &mut client,
            &format!("c-more-{i}"),
            supplier,
            &[("full", 500)],
        )
        .await;
        fund_card(&mut client, &id, "full", 500).await;
        release(
            &mut client,
            &id,
            &format!("more-{i}"),
            None,
            pb::purpose::Purpose::Acceptance(true),
        )
        .await
        .unwrap();
    }
    worker.flows.request_payouts();
    let mut other = client.clone();
    let (by_rpc, by_timer) = tokio::join!(run_payouts(&mut other, "run-2"), worker.pass());
    by_timer.unwrap();
    assert!(by_rpc.len() <= 4);
    let all = transfers(&mut client, pb::GatewayTransferDirection::Payout).await;
    assert_eq!(all.len(), 8, "one more payout per supplier: {all:#?}");
    assert!(
        all.iter()
            .all(|t| status_of(t) == pb::GatewayTransferStatus::Pending),
        "{all:#?}"
    );
    assert_eq!(
        pay_all(&mut client, pb::GatewayTransferDirection::Payout).await,
        8
    );

    // Counted at the gateway: each supplier got what it was owed, once.
    for (i, supplier) in suppliers.iter().enumerate() {
        let owed = 1_000 * (i as i64 + 1) + 500;
        let mine: Vec<_> = all.iter().filter(|t| t.supplier_id == *supplier).collect();
        assert_eq!(mine.len(), 2, "{supplier}");
        let at_gateway: i64 = faulty
            .made(Call::Payout)
            .iter()
            .filter(|m| m.detail == *supplier)
            .map(|m| m.key.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .iter()
            .filter_map(|key| escrow.gateway.moved_under(key))
            .map(|m| m.amount_minor)
            .sum();
        assert_eq!(
            at_gateway, owed,
            "{supplier} paid exactly once at the gateway"
        );
    }
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        0,
        "nothing owed any more"
    );
    assert!(run_payouts(&mut client, "run-3").await.is_empty());
    assert_eq!(
        escrow.gateway.money_movements(),
        8 + 8,
        "8 charges, 8 payouts"
    );
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn finding_2_a_payout_without_a_report_by_its_expiry_becomes_unknown_and_a_late_paid_posts_once(
    pool: PgPool,
) {
    let mut flags = QUICK.to_vec();
    flags.extend(["--payout-expiry", "1s"]);
    let (escrow, faulty) = start_faulty(pool, &flags).await;
    let mut client = escrow.client.clone();
    let id = funded(&mut client, "c-slow-payout", 6_000).await;
    release(
        &mut client,
        &id,
        "rel",
        None,
        pb::purpose::Purpose::Acceptance(true),
    )
    .await
    .unwrap();
    let run = run_payouts(&mut client, "run-1").await;
    assert_eq!(run.len(), 1);
    let payout = run[0].clone();
    assert_eq!(status_of(&payout), pb::GatewayTransferStatus::Pending);
    let key = faulty.made(Call::Payout)[0].key.clone();

    // No report by its expiry: it becomes UNKNOWN and the gateway is asked
    // about it by key (the gateway says it is still on its way).
    eventually("the payout is unknown", || {
        let mut client = client.clone();
        async move {
            let all = transfers(&mut client, pb::GatewayTransferDirection::Payout).await;
            (status_of(&all[0]) == pb::GatewayTransferStatus::Unknown).then_some(())
        }
    })
    .await;
    eventually("the gateway asked by key", || async {
        faulty
            .made(Call::Status)
            .iter()
            .any(|m| m.key == key)
            .then_some(())
    })
    .await;
    let items = client
        .reconcile_ledger(finance(pb::ReconcileLedgerRequest {}))
        .await
        .unwrap()
        .into_inner()
        .differences;
    assert!(
        items.iter().any(|d| d.kind == "TRANSFER_UNKNOWN"),
        "an operator sees it meanwhile: {items:#?}"
    );
    // Nothing voided it: the money is not owed again, and a run pays nothing.
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        6_000,
        "still held for the payout"
    );
    assert!(run_payouts(&mut client, "run-2").await.is_empty());

    // The late `payout.paid` posts it, once.
    let paid = Event::new("evt-late-paid", "payout.paid", &payout.gateway_reference)
        .client(&payout.gateway_transfer_id);
    assert_eq!(
        deliver(&mut client, &paid).await,
        pb::WebhookOutcome::Applied
    );
    let again = Event::new("evt-late-paid-2", "payout.paid", &payout.gateway_reference);
    assert_eq!(
        deliver(&mut client, &again).await,
        pb::WebhookOutcome::Duplicate
    );
    let all = transfers(&mut client, pb::GatewayTransferDirection::Payout).await;
    assert_eq!(all.len(), 1);
    assert_eq!(status_of(&all[0]), pb::GatewayTransferStatus::Paid);
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await,
        0
    );
    assert!(run_payouts(&mut client, "run-3").await.is_empty());
    assert_eq!(faulty.made(Call::Payout).len(), 1, "sent once");
    assert_eq!(
        escrow.gateway.moved_under(&key).unwrap().amount_minor,
        6_000
    );
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn finding_3_a_card_attempts_routine_payment_succeeded_is_a_duplicate(pool: PgPool) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let id = funded(&mut client, "c-card-webhook", 9_000).await;
    let attempt = newest_attempt(&mut client, &id).await;
    // The gateway reports the charge it settled in the call, by escrow's
    // reference and by its own.
    let routine = Event::new(
        "evt-card-1",
        "payment.succeeded",
        &attempt.gateway_reference,
    )
    .client(&attempt.funding_attempt_id)
    .usd(9_000);
    assert_eq!(
        deliver(&mut client, &routine).await,
        pb::WebhookOutcome::Duplicate
    );
    let by_reference = Event::new(
        "evt-card-2",
        "payment.succeeded",
        &attempt.gateway_reference,
    )
    .usd(9_000);
    assert_eq!(
        deliver(&mut client, &by_reference).await,
        pb::WebhookOutcome::Duplicate
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::Suspense).await,
        0,
        "nothing to suspense"
    );
    assert!(
        transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund)
            .await
            .is_empty(),
        "nothing sent back"
    );
    let items = client
        .list_unmatched_gateway_items(finance(pb::ListUnmatchedGatewayItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(items.is_empty(), "{items:#?}");
    let acc = account(&mut client, &id).await.account.unwrap();
    assert_eq!(minor(&acc.held), 9_000);
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn finding_4_a_credit_without_amount_minor_is_invalid_and_changes_nothing(pool: PgPool) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let id = open(&mut client, "c-no-amount", 20_000)
        .await
        .escrow_account_id;
    let attempt = client
        .fund_escrow(buyer(bank(&id, "full", 20_000, "b-1")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    let before = snapshot(&escrow.pool).await;
    let no_amount = Event::new(
        "evt-credit-1",
        "bank_transfer.credited",
        &attempt.gateway_reference,
    )
    .client(&attempt.funding_attempt_id);
    let mut no_currency = no_amount.clone();
    no_currency.amount_minor = Some(20_000);
    for (event, field) in [
        (&no_amount, "payload.data.amount_minor"),
        (&no_currency, "payload.data.currency_code"),
    ] {
        let refused = client
            .handle_gateway_webhook(gateway(event.signed()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            violated_fields(&refused).contains(&field.to_owned()),
            "{refused:?}"
        );
    }
    assert_eq!(
        snapshot(&escrow.pool).await,
        before,
        "a malformed credit changes nothing, not even its event id"
    );
    // The gateway's corrected event under the same id applies.
    let good = no_amount.usd(20_000);
    assert_eq!(
        deliver(&mut client, &good).await,
        pb::WebhookOutcome::Applied
    );
    let acc = account(&mut client, &id).await.account.unwrap();
    assert_eq!(acc.status, pb::EscrowAccountStatus::Funded as i32);
    assert_eq!(minor(&acc.held), 20_000);
    assert_money(&escrow, 20_000).await;
}

#[sqlx::test(migrations = false)]
async fn finding_5_a_webhook_before_its_attempt_is_recorded_gets_retry_later_and_its_redelivery_applies_once(
    pool: PgPool,
) {
    let (escrow, faulty) = start_faulty(pool, &[]).await;
    let mut client = escrow.client.clone();

    // The gateway has started the bank transfer; escrow has not recorded its
    // answer yet when the credit's webhook, naming only the gateway's
    // reference, arrives.
    let id = open(&mut client, "c-overtaken", 20_000)
        .await
        .escrow_account_id;
    faulty.inject(Call::BankTransfer, 1, Fault::BlockAfter);
    let funding = tokio::spawn({
        let mut client = client.clone();
        let id = id.clone();
        async move {
            client
                .fund_escrow(buyer(bank(&id, "full", 20_000, "b-1")))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    faulty.wait_blocked(1).await;
    let started = faulty.made(Call::BankTransfer)[0].clone();
    let reference = escrow
        .gateway
        .operation(&started.key)
        .await
        .unwrap()
        .expect("the gateway has it")
        .reference;
    let before = snapshot(&escrow.pool).await;
    let credit = Event::new("evt-early", "bank_transfer.credited", &reference).usd(20_000);
    assert_eq!(
        deliver(&mut client, &credit).await,
        pb::WebhookOutcome::RetryLater
    );
    assert_eq!(
        snapshot(&escrow.pool).await,
        before,
        "nothing recorded, not even the event id"
    );
    faulty.release();
    let answered = funding.await.unwrap().unwrap().funding_attempt.unwrap();
    assert_eq!(answered.status, pb::FundingStatus::Pending as i32);
    assert_eq!(answered.gateway_reference, reference);
    // The gateway delivers it again: applied, once.
    assert_eq!(
        deliver(&mut client, &credit).await,
        pb::WebhookOutcome::Applied
    );
    assert_eq!(
        deliver(&mut client, &credit).await,
        pb::WebhookOutcome::Applied,
        "replayed"
    );
    let acc = account(&mut client, &id).await;
    assert_eq!(minor(&acc.account.as_ref().unwrap().held), 20_000);
    assert_eq!(
        acc.funding_attempts[0].status,
        pb::FundingStatus::Succeeded as i32
    );

    // A webhook naming the attempt, between the intent's commit and the
    // answer's record, settles the attempt; the answer adds only what it
    // knows.
    let other = open(&mut client, "c-between", 7_000)
        .await
        .escrow_account_id;
    faulty.inject(Call::BankTransfer, 2, Fault::BlockAfter);
    let funding = tokio::spawn({
        let mut client = client.clone();
        let other = other.clone();
        async move {
            client
                .fund_escrow(buyer(bank(&other, "full", 7_000, "b-2")))
                .await
                .map(tonic::Response::into_inner)
        }
    });
    faulty.wait_blocked(1).await;
    let second = faulty.made(Call::BankTransfer)[1].clone();
    let intent = newest_attempt(&mut client, &other).await;
    assert_eq!(intent.funding_attempt_id, second.client_reference);
    let at_gateway = escrow
        .gateway
        .operation(&second.key)
        .await
        .unwrap()
        .unwrap()
        .reference;
    let between = Event::new("evt-between", "bank_transfer.credited", &at_gateway)
        .client(&second.client_reference)
        .usd(7_000);
    assert_eq!(
        deliver(&mut client, &between).await,
        pb::WebhookOutcome::Applied
    );
    faulty.release();
    let answered = funding.await.unwrap().unwrap();
    assert_eq!(
        answered.funding_attempt.unwrap().status,
        pb::FundingStatus::Succeeded as i32
    );
    let acc = account(&mut client, &other).await.account.unwrap();
    assert_eq!(minor(&acc.held), 7_000, "posted once");
    assert_eq!(acc.status, pb::EscrowAccountStatus::Funded as i32);
    assert_money(&escrow, 27_000).await;

    // An unknown reference past the retry window is an operator's item.
    let stray = Event::new("evt-stray", "bank_transfer.credited", "bt_nobody")
        .usd(100)
        .created(now_unix() - 2 * 3_600);
    assert_eq!(
        deliver(&mut client, &stray).await,
        pb::WebhookOutcome::Ignored
    );
    let items = client
        .list_unmatched_gateway_items(finance(pb::ListUnmatchedGatewayItemsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, "UNKNOWN_REFERENCE");
    let found = client
        .reconcile_ledger(finance(pb::ReconcileLedgerRequest {}))
        .await
        .unwrap()
        .into_inner()
        .differences;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, "UNKNOWN_REFERENCE");
}

#[sqlx::test(migrations = false)]
async fn finding_6_no_gateway_call_holds_a_lock_or_a_pooled_connection(pool: PgPool) {
    // A pool of four connections, and six card charges waiting at the
    // gateway at once.
    let small = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let (escrow, faulty) = start_faulty(small, &[]).await;
    let mut client = escrow.client.clone();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            open(&mut client, &format!("c-slow-{i}"), 1_000)
                .await
                .escrow_account_id,
        );
        faulty.inject(Call::Charge, i + 1, Fault::BlockBefore);
    }
    let other = open(&mut client, "c-other", 3_000).await.escrow_account_id;
    let mut charging = Vec::new();
    for id in &ids {
        let mut client = client.clone();
        let id = id.clone();
        charging.push(tokio::spawn(async move {
            client
                .fund_escrow(buyer(card(
                    &id,
                    "full",
                    1_000,
                    "tok_visa",
                    &format!("k-{id}"),
                )))
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    faulty.wait_blocked(6).await;

    // Meanwhile (each bounded): the account being charged is read and even
    // frozen and unfrozen (its row is not locked), another account is funded
    // and credited, the books are read.
    let bounded = Duration::from_secs(10);
    let read = tokio::time::timeout(bounded, account(&mut client, &ids[0]))
        .await
        .expect("a read while the gateway is slow");
    assert_eq!(read.funding_attempts.len(), 1, "the intent is recorded");
    assert_eq!(
        read.funding_attempts[0].status,
        pb::FundingStatus::Pending as i32
    );
    let frozen = tokio::time::timeout(
        bounded,
        client.freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: "f-1".into(),
            escrow_account_id: ids[0].clone(),
            claim_id: "claim-1".into(),
            reason: "claim filed".into(),
        })),
    )
    .await
    .expect("the charged account's row is free")
    .expect("frozen: money is on its way");
    assert_eq!(frozen.into_inner().account.unwrap().active_freezes.len(), 1);
    tokio::time::timeout(
        bounded,
        client.unfreeze_escrow(dispute(pb::UnfreezeEscrowRequest {
            idempotency_key: "u-1".into(),
            escrow_account_id: ids[0].clone(),
            claim_id: "claim-1".into(),
            reason: "claim withdrawn".into(),
        })),
    )
    .await
    .expect("unfrozen in time")
    .unwrap();
    let pending = tokio::time::timeout(
        bounded,
        client.fund_escrow(buyer(bank(&other, "full", 3_000, "b-other"))),
    )
    .await
    .expect("another account's funding proceeds")
    .unwrap()
    .into_inner()
    .funding_attempt
    .unwrap();
    let credit = Event::new(
        "evt-other",
        "bank_transfer.credited",
        &pending.gateway_reference,
    )
    .client(&pending.funding_attempt_id)
    .usd(3_000);
    let applied = tokio::time::timeout(bounded, deliver(&mut client, &credit))
        .await
        .expect("a webhook is applied meanwhile");
    assert_eq!(applied, pb::WebhookOutcome::Applied);
    tokio::time::timeout(
        bounded,
        client.get_trial_balance(finance(pb::GetTrialBalanceRequest::default())),
    )
    .await
    .expect("the books are read meanwhile")
    .unwrap();
    assert_eq!(faulty.blocked(), 6, "all six still wait at the gateway");

    faulty.release();
    for task in charging {
        let funded = task.await.unwrap().expect("charged once released");
        assert_eq!(
            funded.funding_attempt.unwrap().status,
            pb::FundingStatus::Succeeded as i32
        );
    }
    assert_eq!(escrow.gateway.money_movements(), 6);
    assert_money(&escrow, 3_000).await;
}

#[sqlx::test(migrations = false)]
async fn finding_7_lowering_a_milestone_while_a_bank_transfer_is_pending_posts_what_is_due_and_sends_the_rest_back(
    pool: PgPool,
) {
    let escrow = start_with(pool, &QUICK).await;
    let mut client = escrow.client.clone();
    let amend = |id: &str, amount: i64| {
        contract(pb::AmendEscrowScheduleRequest {
            idempotency_key: format!("amend-{id}"),
            escrow_account_id: id.into(),
            schedule: vec![payment("full", amount)],
            contract_version: 2,
            hold_until: None,
            reason: String::new(),
        })
    };

    // Lowered from 10,000 to 6,000 while the 10,000 are on their way.
    let id = open(&mut client, "c-lowered", 10_000)
        .await
        .escrow_account_id;
    let attempt = client
        .fund_escrow(buyer(bank(&id, "full", 10_000, "b-1")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    client
        .amend_escrow_schedule(amend(&id, 6_000))
        .await
        .unwrap();
    let credit = Event::new(
        "evt-full-credit",
        "bank_transfer.credited",
        &attempt.gateway_reference,
    )
    .client(&attempt.funding_attempt_id)
    .usd(10_000);
    assert_eq!(
        deliver(&mut client, &credit).await,
        pb::WebhookOutcome::Applied
    );
    let acc = account(&mut client, &id).await.account.unwrap();
    assert_eq!(acc.status, pb::EscrowAccountStatus::Funded as i32);
    assert_eq!(minor(&acc.held), 6_000, "what is due posts");
    let back = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await;
    assert_eq!(back.len(), 1);
    assert_eq!(minor(&back[0].amount), 4_000, "the rest goes back");
    assert_eq!(back[0].source_reference, attempt.gateway_reference);
    assert_eq!(back[0].funding_attempt_id, attempt.funding_attempt_id);

    // Made funded (the amendment lowers it to what a short credit brought)
    // while the rest is on its way: all of that credit goes back.
    let other = open(&mut client, "c-made-funded", 10_000)
        .await
        .escrow_account_id;
    let first = client
        .fund_escrow(buyer(bank(&other, "full", 10_000, "b-2")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    let short = Event::new(
        "evt-short",
        "bank_transfer.credited",
        &first.gateway_reference,
    )
    .client(&first.funding_attempt_id)
    .usd(4_000);
    assert_eq!(
        deliver(&mut client, &short).await,
        pb::WebhookOutcome::Applied
    );
    let rest = client
        .fund_escrow(buyer(bank(&other, "full", 6_000, "b-3")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    let amended = client
        .amend_escrow_schedule(amend(&other, 4_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        amended.account.unwrap().status,
        pb::EscrowAccountStatus::Funded as i32
    );
    let late = Event::new(
        "evt-rest",
        "bank_transfer.credited",
        &rest.gateway_reference,
    )
    .client(&rest.funding_attempt_id)
    .usd(6_000);
    assert_eq!(
        deliver(&mut client, &late).await,
        pb::WebhookOutcome::Applied
    );
    let got = account(&mut client, &other).await;
    assert_eq!(minor(&got.account.unwrap().held), 4_000);
    let settled = got
        .funding_attempts
        .iter()
        .find(|a| a.funding_attempt_id == rest.funding_attempt_id)
        .unwrap();
    assert_eq!(settled.status, pb::FundingStatus::Failed as i32);
    assert_eq!(settled.failure_code, "nothing_due");

    // The worker sends both refunds; the gateway pays them.
    eventually("both refunds sent", || {
        let mut client = client.clone();
        async move {
            let all = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await;
            (all.len() == 2
                && all
                    .iter()
                    .all(|t| status_of(t) == pb::GatewayTransferStatus::Pending))
            .then_some(())
        }
    })
    .await;
    assert_eq!(
        pay_all(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await,
        2
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::Suspense).await,
        0
    );
    assert_money(&escrow, 10_000 + 4_000 + 6_000).await;
}

#[sqlx::test(migrations = false)]
async fn finding_8_payment_overdue_waits_for_a_bank_transfer_started_before_the_due_date(
    pool: PgPool,
) {
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let mut request = open_request("c-on-its-way", vec![payment("full", 5_000)]);
    request.schedule[0].due_at = Some(ta_runtime::timestamps::to_proto(
        ta_runtime::timestamps::now() + time::Duration::seconds(2),
    ));
    let id = open_with(&mut client, request).await.escrow_account_id;
    let attempt = client
        .fund_escrow(buyer(bank(&id, "full", 5_000, "b-1")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();
    let subject = format!("{id}/full");
    // The deadline passes: its timer fires and waits for the transfer.
    let deferred_to = eventually("the payment deadline fired and deferred", || {
        let pool = escrow.pool.clone();
        let subject = subject.clone();
        async move {
            let rows: Vec<(String, time::OffsetDateTime)> = sqlx::query_as(
                "SELECT status, due_at FROM escrow.workflow_timers \
                 WHERE kind = $1 AND subject_id = $2 ORDER BY id",
            )
            .bind(PAYMENT_DUE)
            .bind(&subject)
            .fetch_all(&pool)
            .await
            .unwrap();
            match rows.as_slice() {
                [(fired, _), (scheduled, at)] if fired == "fired" && scheduled == "scheduled" => {
                    Some(*at)
                }
                _ => None,
            }
        }
    })
    .await;
    let expires = ta_runtime::timestamps::from_proto(attempt.expires_at.as_ref().unwrap()).unwrap();
    assert!(deferred_to > expires, "until the transfer's expiry");
    let overdue = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM escrow.workflow_feed_events \
             WHERE kind = 'PAYMENT_OVERDUE' AND subject_id = $1",
        )
        .bind(&id)
        .fetch_one(&escrow.pool)
        .await
        .unwrap();
        n
    };
    assert_eq!(
        overdue().await,
        0,
        "not overdue while the money is on its way"
    );

    // The transfer fails: now the payment is overdue, once.
    let failed = Event::new("evt-failed", "payment.failed", &attempt.gateway_reference)
        .client(&attempt.funding_attempt_id);
    assert_eq!(
        deliver(&mut client, &failed).await,
        pb::WebhookOutcome::Applied
    );
    let events = events_until(&mut client, pb::EscrowEventType::PaymentOverdue).await;
    assert_eq!(events.last().unwrap().milestone_id, "full");
    eventually("the payment deadline is done", || {
        let pool = escrow.pool.clone();
        let subject = subject.clone();
        async move {
            let (live,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM escrow.workflow_timers \
                 WHERE kind = $1 AND subject_id = $2 AND status = 'scheduled'",
            )
            .bind(PAYMENT_DUE)
            .bind(&subject)
            .fetch_one(&pool)
            .await
            .unwrap();
            (live == 0).then_some(())
        }
    })
    .await;
    assert_eq!(overdue().await, 1, "announced once");
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn finding_10b_direct_movements_name_the_schedule_and_settled_claims_and_an_emptied_account_closes(
    pool: PgPool,
) {
    use pb::purpose::Purpose as P;
    let escrow = start(pool).await;
    let mut client = escrow.client.clone();
    let id = open_for(
        &mut client,
        "c-direct",
        SUPPLIER_ID,
        &[("deposit", 6_000), ("balance", 4_000)],
    )
    .await;
    fund_card(&mut client, &id, "deposit", 6_000).await;
    fund_card(&mut client, &id, "balance", 4_000).await;
    let before = snapshot(&escrow.pool).await;

    let not_scheduled = release(
        &mut client,
        &id,
        "r-1",
        Some(100),
        P::MilestoneId("delivery".into()),
    )
    .await
    .unwrap_err();
    assert_eq!(
        not_scheduled.code(),
        Code::InvalidArgument,
        "{not_scheduled:?}"
    );
    assert_eq!(
        violated_fields(&not_scheduled),
        vec!["purpose.milestone_id"]
    );
    let never_froze = release(
        &mut client,
        &id,
        "r-2",
        Some(100),
        P::ClaimId("claim-x".into()),
    )
    .await
    .unwrap_err();
    assert_eq!(
        never_froze.code(),
        Code::FailedPrecondition,
        "{never_froze:?}"
    );
    assert_eq!(
        snapshot(&escrow.pool).await.rows("postings"),
        before.rows("postings")
    );

    client
        .freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: "f-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            reason: "not as described".into(),
        }))
        .await
        .unwrap();
    let active = release(
        &mut client,
        &id,
        "r-3",
        Some(100),
        P::ClaimId("claim-1".into()),
    )
    .await
    .unwrap_err();
    assert_eq!(active.code(), Code::FailedPrecondition, "{active:?}");
    let refund_active = client
        .refund_to_buyer(finance(pb::RefundToBuyerRequest {
            idempotency_key: "rf-1".into(),
            escrow_account_id: id.clone(),
            amount: usd(100),
            reason: "goodwill".into(),
            purpose: purpose(P::ClaimId("claim-1".into())),
        }))
        .await
        .unwrap_err();
    assert_eq!(refund_active.code(), Code::FailedPrecondition);
    // The claim's outcome moves its money and lifts the freeze.
    client
        .settle_claim(dispute(pb::SettleClaimRequest {
            idempotency_key: "s-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            refund: usd(1_000),
            release_rest: false,
            reason: "partial refund decided".into(),
        }))
        .await
        .unwrap();

    // Releases that empty the account close it.
    let part = release(
        &mut client,
        &id,
        "r-4",
        Some(5_000),
        P::MilestoneId("deposit".into()),
    )
    .await
    .unwrap();
    assert_eq!(
        part.account.unwrap().status,
        pb::EscrowAccountStatus::Funded as i32
    );
    let last = release(
        &mut client,
        &id,
        "r-5",
        None,
        P::MilestoneId("balance".into()),
    )
    .await
    .unwrap();
    let closed = last.account.unwrap();
    assert_eq!(closed.status, pb::EscrowAccountStatus::Closed as i32);
    assert_eq!(minor(&closed.held), 0);
    let events = events_until(&mut client, pb::EscrowEventType::Closed).await;
    assert_eq!(events.last().unwrap().escrow_account_id, id);

    // Nothing to freeze: refused; money on its way: frozen.
    let empty = open(&mut client, "c-empty", 2_000).await.escrow_account_id;
    let freeze = |key: &str| {
        dispute(pb::FreezeEscrowRequest {
            idempotency_key: key.into(),
            escrow_account_id: empty.clone(),
            claim_id: "claim-2".into(),
            reason: "claim filed".into(),
        })
    };
    let nothing = client.freeze_escrow(freeze("f-2")).await.unwrap_err();
    assert_eq!(nothing.code(), Code::FailedPrecondition, "{nothing:?}");
    client
        .fund_escrow(buyer(bank(&empty, "full", 2_000, "b-1")))
        .await
        .unwrap();
    client.freeze_escrow(freeze("f-3")).await.unwrap();
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn finding_14_a_buyer_refund_is_sent_against_the_funding_attempts_charge(pool: PgPool) {
    use pb::purpose::Purpose as P;
    let (escrow, faulty) = start_faulty(pool, &QUICK).await;
    let mut client = escrow.client.clone();
    let id = open_for(
        &mut client,
        "c-refund",
        SUPPLIER_ID,
        &[("deposit", 6_000), ("balance", 4_000)],
    )
    .await;
    let deposit = fund_card(&mut client, &id, "deposit", 6_000).await;
    let balance = fund_card(&mut client, &id, "balance", 4_000).await;
    client
        .refund_to_buyer(finance(pb::RefundToBuyerRequest {
            idempotency_key: "cancel".into(),
            escrow_account_id: id.clone(),
            amount: usd(8_000),
            reason: "cancelled".into(),
            purpose: purpose(P::Cancellation(true)),
        }))
        .await
        .unwrap();
    // The payout timer's run: the worker pays the buyer back.
    let worker = escrow.worker();
    worker.flows.request_payouts();
    worker.pass().await.unwrap();
    let sent = transfers(&mut client, pb::GatewayTransferDirection::BuyerRefund).await;
    let against: Vec<_> = sent
        .iter()
        .map(|t| {
            (
                minor(&t.amount),
                t.source_reference.clone(),
                t.funding_attempt_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        against,
        vec![
            (
                6_000,
                deposit.gateway_reference.clone(),
                deposit.funding_attempt_id.clone()
            ),
            (
                2_000,
                balance.gateway_reference.clone(),
                balance.funding_attempt_id.clone()
            ),
        ],
        "each against the charge that brought the money"
    );
    let at_gateway: Vec<_> = faulty
        .made(Call::Refund)
        .iter()
        .map(|m| (m.detail.clone(), m.amount.unwrap().amount_minor))
        .collect();
    assert_eq!(
        at_gateway,
        vec![
            (deposit.gateway_reference.clone(), 6_000),
            (balance.gateway_reference.clone(), 2_000),
        ]
    );
    assert_eq!(
        pay_all(&mut client, pb::GatewayTransferDirection::BuyerRefund).await,
        2
    );

    // A claim's refund later goes back against what is left of a charge.
    client
        .freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: "f-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            reason: "damaged".into(),
        }))
        .await
        .unwrap();
    client
        .settle_claim(dispute(pb::SettleClaimRequest {
            idempotency_key: "s-1".into(),
            escrow_account_id: id.clone(),
            claim_id: "claim-1".into(),
            refund: usd(2_000),
            release_rest: false,
            reason: "refund decided".into(),
        }))
        .await
        .unwrap();
    worker.flows.request_payouts();
    worker.pass().await.unwrap();
    let sent = transfers(&mut client, pb::GatewayTransferDirection::BuyerRefund).await;
    assert_eq!(sent.len(), 3);
    assert_eq!(minor(&sent[2].amount), 2_000);
    assert_eq!(sent[2].source_reference, balance.gateway_reference);
    assert_eq!(
        pay_all(&mut client, pb::GatewayTransferDirection::BuyerRefund).await,
        1
    );
    assert_eq!(
        trial_posted(&mut client, pb::LedgerAccountKind::BuyerRefundPayable).await,
        0
    );
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn escrow_killed_between_the_gateway_call_and_recording_its_answer_charges_once_and_records_once(
    pool: PgPool,
) {
    // The worker asks only when this test says (no poll, no due check).
    let (escrow, faulty) = start_faulty(pool, &PATIENT).await;
    let mut client = escrow.client.clone();
    let id = open(&mut client, "c-killed", 4_500).await.escrow_account_id;
    // Escrow records the intent and calls; its answer is never recorded
    // (here: the call fails before the gateway acts, and the test then acts
    // as the gateway that did receive it).
    faulty.inject(Call::Charge, 1, Fault::Unavailable);
    let lost = client
        .fund_escrow(buyer(card(&id, "full", 4_500, "tok_visa", "k-1")))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    let call = faulty.made(Call::Charge)[0].clone();
    let intent = newest_attempt(&mut client, &id).await;
    assert_eq!(intent.funding_attempt_id, call.client_reference);
    assert_eq!(intent.status, pb::FundingStatus::Pending as i32);
    assert!(intent.gateway_reference.is_empty(), "no answer recorded");
    let charge = escrow
        .gateway
        .charge_card(
            &call.key,
            &call.client_reference,
            "tok_visa",
            call.amount.unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(escrow.gateway.money_movements(), 1);

    // Its check time passes; the worker asks the gateway by key.
    sqlx::query("UPDATE escrow.funding_attempts SET check_at = now() WHERE id = $1::uuid")
        .bind(&intent.funding_attempt_id)
        .execute(&escrow.pool)
        .await
        .unwrap();
    let resolved = funding::resolve_unanswered(&escrow.replica(), &escrow.pool)
        .await
        .unwrap();
    assert_eq!(resolved, 1);
    let got = account(&mut client, &id).await;
    let attempt = &got.funding_attempts[0];
    assert_eq!(attempt.status, pb::FundingStatus::Succeeded as i32);
    assert_eq!(attempt.gateway_reference, charge.reference);
    assert_eq!(minor(&got.account.unwrap().held), 4_500);

    // The buyer's retry and the gateway's routine webhook change nothing.
    let retried = client
        .fund_escrow(buyer(card(&id, "full", 4_500, "tok_visa", "k-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retried.funding_attempt.unwrap().status,
        pb::FundingStatus::Succeeded as i32
    );
    let routine = Event::new("evt-charge", "payment.succeeded", &charge.reference)
        .client(&intent.funding_attempt_id)
        .usd(4_500);
    assert_eq!(
        deliver(&mut client, &routine).await,
        pb::WebhookOutcome::Duplicate
    );
    assert_eq!(faulty.made(Call::Charge).len(), 1, "escrow called once");
    assert_eq!(escrow.gateway.money_movements(), 1, "charged once");
    let statement = client
        .get_escrow_statement(finance(pb::GetEscrowStatementRequest {
            escrow_account_id: id.clone(),
            page: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statement.postings.len(), 1, "recorded once");
    assert_money(&escrow, 0).await;
}

#[sqlx::test(migrations = false)]
async fn a_charge_the_gateway_approved_after_its_attempt_expired_is_sent_back(pool: PgPool) {
    let (escrow, faulty) = start_faulty(pool, &PATIENT).await;
    let mut client = escrow.client.clone();
    let id = open(&mut client, "c-late-answer", 3_000)
        .await
        .escrow_account_id;
    // The charge goes through; its answer is lost, and the gateway does not
    // answer status queries either for as long as the attempt may wait.
    faulty.inject(Call::Charge, 1, Fault::LoseAnswer);
    faulty.inject(Call::Status, 1, Fault::Unavailable);
    let lost = client
        .fund_escrow(buyer(card(&id, "full", 3_000, "tok_visa", "k-1")))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable);
    let attempt = newest_attempt(&mut client, &id).await;
    let ask = async || {
        sqlx::query("UPDATE escrow.funding_attempts SET check_at = now() WHERE id = $1::uuid")
            .bind(&attempt.funding_attempt_id)
            .execute(&escrow.pool)
            .await
            .unwrap();
        funding::resolve_unanswered(&escrow.replica(), &escrow.pool)
            .await
            .unwrap()
    };
    assert_eq!(ask().await, 0, "the gateway did not say");
    escrow
        .fire(
            escrow::app::deadlines::ATTEMPT_EXPIRY,
            &attempt.funding_attempt_id,
        )
        .await
        .unwrap();
    let expired = newest_attempt(&mut client, &id).await;
    assert_eq!(expired.status, pb::FundingStatus::Failed as i32);
    assert_eq!(expired.failure_code, "expired");

    // The gateway answers at last: it charged. The money came in for an
    // attempt that has ended: it goes back against that charge.
    assert_eq!(ask().await, 1);
    let back = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await;
    assert_eq!(back.len(), 1, "the charge is sent back");
    assert_eq!(minor(&back[0].amount), 3_000);
    let charge = escrow
        .gateway
        .operation(&faulty.made(Call::Charge)[0].key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back[0].source_reference, charge.reference);
    let acc = account(&mut client, &id).await.account.unwrap();
    assert_eq!(minor(&acc.held), 0);
    assert_eq!(acc.status, pb::EscrowAccountStatus::AwaitingFunding as i32);
    // The gateway's routine webhook for the charge changes nothing more.
    let routine = Event::new("evt-late", "payment.succeeded", &charge.reference)
        .client(&attempt.funding_attempt_id)
        .usd(3_000);
    assert_eq!(
        deliver(&mut client, &routine).await,
        pb::WebhookOutcome::Duplicate
    );
    come_due(&escrow.pool).await;
    escrow.worker().pass().await.unwrap();
    assert_eq!(
        pay_all(&mut client, pb::GatewayTransferDirection::SuspenseRefund).await,
        1
    );
    assert_money(&escrow, 0).await;
}
