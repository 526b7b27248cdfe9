//! 64 concurrent conflicting calls on one escrow account through the API:
//! releases, refunds, freezes, unfreezes, claim settlements, and the
//! gateway's webhooks racing for one bank transfer's hold (credits under
//! different event ids, failures). Whatever order they run in, the hold
//! resolves once, each purpose moves money once, every credit beyond the
//! first goes to suspense and back, nothing goes negative, the ledger sums
//! to zero and the gateway's books agree with it.

mod support;

use std::collections::HashMap;

use sqlx::PgPool;
use support::*;
use ta_proto::escrow as pb;
use tonic::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    Release,
    Refund,
    Freeze,
    Unfreeze,
    Settle,
    Credit,
    Fail,
}

fn purpose(p: pb::purpose::Purpose) -> Option<pb::Purpose> {
    Some(pb::Purpose { purpose: Some(p) })
}

fn sum(postings: &[pb::Posting]) -> i64 {
    postings.iter().map(|p| minor(&p.amount)).sum()
}

#[sqlx::test(migrations = false)]
async fn conflicting_calls_on_one_account(pool: PgPool) {
    use pb::purpose::Purpose as P;
    let escrow = start_with(
        pool,
        &[
            "--gateway-check-after",
            "100ms",
            "--gateway-worker-poll",
            "50ms",
        ],
    )
    .await;
    let mut client = escrow.client.clone();
    let id = open_with(
        &mut client,
        open_request(
            "contract-race",
            vec![payment("deposit", 10_000), payment("balance", 5_000)],
        ),
    )
    .await
    .escrow_account_id;
    client
        .fund_escrow(buyer(card(&id, "deposit", 10_000, "tok_visa", "card")))
        .await
        .unwrap();
    let attempt = client
        .fund_escrow(buyer(bank(&id, "balance", 5_000, "bank")))
        .await
        .unwrap()
        .into_inner()
        .funding_attempt
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let mut client = client.clone();
        let id = id.clone();
        let attempt = attempt.clone();
        let call = [
            Call::Release,
            Call::Refund,
            Call::Freeze,
            Call::Release,
            Call::Refund,
            Call::Unfreeze,
            Call::Credit,
            Call::Fail,
            Call::Settle,
        ][i as usize % 9];
        // Few distinct purposes, so that many calls race for each one.
        let claim = format!("c{}", i % 5);
        let key = format!("k-{i}");
        tasks.push(tokio::spawn(async move {
            let outcome: Result<i64, tonic::Status> = match call {
                Call::Release => {
                    let p = match i % 4 {
                        0 => P::MilestoneId("deposit".into()),
                        1 => P::ClaimId(claim.clone()),
                        2 => P::MilestoneId("balance".into()),
                        _ => P::MilestoneId("not-scheduled".into()),
                    };
                    client
                        .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
                            idempotency_key: key,
                            escrow_account_id: id,
                            amount: usd(700),
                            reason: "shipment".into(),
                            purpose: purpose(p),
                        }))
                        .await
                        .map(|r| minor(&r.into_inner().posting.unwrap().amount))
                }
                Call::Refund => {
                    let p = if i % 2 == 0 {
                        P::ClaimId(claim.clone())
                    } else {
                        P::Cancellation(true)
                    };
                    client
                        .refund_to_buyer(finance(pb::RefundToBuyerRequest {
                            idempotency_key: key,
                            escrow_account_id: id,
                            amount: usd(900),
                            reason: "refund".into(),
                            purpose: purpose(p),
                        }))
                        .await
                        .map(|r| sum(&r.into_inner().postings))
                }
                Call::Settle => client
                    .settle_claim(dispute(pb::SettleClaimRequest {
                        idempotency_key: key,
                        escrow_account_id: id,
                        claim_id: claim.clone(),
                        refund: usd(900),
                        release_rest: false,
                        reason: "decided".into(),
                    }))
                    .await
                    .map(|r| sum(&r.into_inner().postings)),
                Call::Freeze => client
                    .freeze_escrow(dispute(pb::FreezeEscrowRequest {
                        idempotency_key: key,
                        escrow_account_id: id,
                        claim_id: claim.clone(),
                        reason: "claim filed".into(),
                    }))
                    .await
                    .map(|_| 0),
                Call::Unfreeze => client
                    .unfreeze_escrow(dispute(pb::UnfreezeEscrowRequest {
                        idempotency_key: key,
                        escrow_account_id: id,
                        claim_id: claim.clone(),
                        reason: "claim withdrawn".into(),
                    }))
                    .await
                    .map(|_| 0),
                Call::Credit | Call::Fail => {
                    let event = if call == Call::Credit {
                        Event::new(
                            &format!("evt-credit-{i}"),
                            "bank_transfer.credited",
                            &attempt.gateway_reference,
                        )
                        .usd(5_000)
                    } else {
                        Event::new(
                            &format!("evt-fail-{i}"),
                            "payment.failed",
                            &attempt.gateway_reference,
                        )
                    }
                    .client(&attempt.funding_attempt_id);
                    client
                        .handle_gateway_webhook(gateway(event.signed()))
                        .await
                        .map(|r| i64::from(r.into_inner().outcome))
                }
            };
            (call, outcome)
        }));
    }
    let mut moved: HashMap<Call, i64> = HashMap::new();
    let mut refusals = 0;
    let mut credits = 0;
    let mut failures_applied = 0;
    for task in tasks {
        let (call, outcome) = task.await.unwrap();
        match (call, outcome) {
            (Call::Credit, Ok(outcome)) => {
                assert_eq!(outcome, pb::WebhookOutcome::Applied as i64, "a credit");
                credits += 1;
            }
            (Call::Fail, Ok(outcome)) => {
                if outcome == pb::WebhookOutcome::Applied as i64 {
                    failures_applied += 1;
                } else {
                    assert_eq!(outcome, pb::WebhookOutcome::Duplicate as i64);
                }
            }
            (_, Ok(amount)) => *moved.entry(call).or_default() += amount,
            // Refused by the rules (frozen, purpose settled, not enough
            // held, not in the schedule, closed): expected. Anything else
            // (a deadlock, an internal error) fails the test.
            (_, Err(status))
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::InvalidArgument
                ) =>
            {
                refusals += 1
            }
            (call, Err(other)) => panic!("{call:?}: {other:?}"),
        }
    }
    let got = account(&mut client, &id).await;
    let bank = got
        .funding_attempts
        .iter()
        .find(|a| a.funding_attempt_id == attempt.funding_attempt_id)
        .unwrap();
    let from_bank = match pb::FundingStatus::try_from(bank.status).unwrap() {
        pb::FundingStatus::Succeeded => 5_000,
        pb::FundingStatus::Failed => 0,
        other => panic!("the bank transfer is still {other:?}"),
    };
    assert_eq!(
        failures_applied + i32::from(from_bank > 0),
        1,
        "the bank transfer's hold resolved exactly once"
    );
    // Every other credit went to suspense and is sent back.
    let back: i64 = transfers(&mut client, pb::GatewayTransferDirection::SuspenseRefund)
        .await
        .iter()
        .map(|t| minor(&t.amount))
        .sum();
    assert_eq!(back, 5_000 * credits - from_bank, "the rest goes back");
    let released = trial_posted(&mut client, pb::LedgerAccountKind::SupplierPayable).await;
    let refunded = trial_posted(&mut client, pb::LedgerAccountKind::BuyerRefundPayable).await;
    let held = minor(&got.account.unwrap().held);
    assert_eq!(
        released,
        moved.get(&Call::Release).copied().unwrap_or(0),
        "counted releases"
    );
    assert_eq!(
        refunded,
        moved.get(&Call::Refund).copied().unwrap_or(0)
            + moved.get(&Call::Settle).copied().unwrap_or(0),
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
    .fetch_one(&escrow.pool)
    .await
    .unwrap();
    assert_eq!(repeated, 0, "a purpose moved money more than once");
    let (per_purpose_max,): (Option<i64>,) = sqlx::query_as(
        "SELECT max(n) FROM (SELECT count(DISTINCT transfer_id) AS n FROM escrow.postings \
         JOIN escrow.transfers t ON t.id = transfer_id GROUP BY t.purpose_scope, t.purpose) x",
    )
    .fetch_one(&escrow.pool)
    .await
    .unwrap();
    assert_eq!(per_purpose_max, Some(1));
    assert!(refusals > 0, "the calls did conflict");
    assert_money(&escrow, 5_000 * credits).await;
}
