//! Bad input is answered INVALID_ARGUMENT with a field violation for every
//! bad field at once, and writes nothing.

mod support;

use sqlx::PgPool;
use support::*;
use ta_proto::{common::Money, escrow as pb};
use tonic::Code;

fn bad_money() -> Option<Money> {
    Some(Money {
        currency_code: "XXQ".into(),
        amount_minor: -5,
    })
}

#[sqlx::test(migrations = false)]
async fn bad_requests_name_every_bad_field_and_write_nothing(pool: PgPool) {
    let Escrow {
        mut client,
        server: _server,
        pool,
        ..
    } = start(pool).await;
    let id = open(&mut client, "c-bad", 1_000).await.escrow_account_id;
    let before = snapshot(&pool).await;

    let mut cases: Vec<(&str, Result<(), tonic::Status>, Vec<&str>)> = Vec::new();

    let open = pb::OpenEscrowAccountRequest {
        reason: String::new(),
        idempotency_key: "with space".into(),
        contract_id: String::new(),
        buyer_principal_id: "bad id!".into(),
        supplier_id: String::new(),
        schedule: vec![pb::ScheduledPayment {
            milestone_id: String::new(),
            amount: bad_money(),
            due_at: None,
            funded_at: None,
        }],
        payment_scheme: 0,
        financing_partner_id: String::new(),
        supplier_owner_principal_id: String::new(),
        hold_until: None,
    };
    cases.push((
        "open",
        client.open_escrow_account(contract(open)).await.map(drop),
        vec![
            "buyer_principal_id",
            "contract_id",
            "hold_until",
            "idempotency_key",
            "payment_scheme",
            "schedule[0].amount.amount_minor",
            "schedule[0].amount.currency_code",
            "schedule[0].due_at",
            "schedule[0].milestone_id",
            "supplier_id",
            "supplier_owner_principal_id",
        ],
    ));
    cases.push((
        "open without a schedule",
        client
            .open_escrow_account(contract(open_request("c-empty", vec![])))
            .await
            .map(drop),
        vec!["schedule"],
    ));
    let mut pay_later_without_partner = open_request("c-pl", vec![payment("full", 10)]);
    pay_later_without_partner.payment_scheme = pb::EscrowPaymentScheme::PayLater as i32;
    cases.push((
        "pay later without partner",
        client
            .open_escrow_account(contract(pay_later_without_partner))
            .await
            .map(drop),
        vec!["financing_partner_id"],
    ));
    cases.push((
        "fund",
        client
            .fund_escrow(buyer(pb::FundEscrowRequest {
                idempotency_key: "f-1".into(),
                escrow_account_id: "not-a-uuid".into(),
                milestone_id: String::new(),
                amount: None,
                method: None,
            }))
            .await
            .map(drop),
        vec!["amount", "escrow_account_id", "method", "milestone_id"],
    ));
    cases.push((
        "fund pay later",
        client
            .fund_escrow(buyer(pb::FundEscrowRequest {
                method: Some(pb::fund_escrow_request::Method::PayLater(
                    pb::PayLaterPayment {
                        financing_partner_id: String::new(),
                        repayment_months: 9,
                    },
                )),
                ..card(&id, "full", 1_000, "", "f-2")
            }))
            .await
            .map(drop),
        vec![
            "pay_later.financing_partner_id",
            "pay_later.repayment_months",
        ],
    ));
    cases.push((
        "fund in another currency",
        client
            .fund_escrow(buyer(pb::FundEscrowRequest {
                amount: Some(Money {
                    currency_code: "EUR".into(),
                    amount_minor: 1_000,
                }),
                ..card(&id, "full", 1_000, "tok_visa", "f-3")
            }))
            .await
            .map(drop),
        vec!["amount.currency_code"],
    ));
    cases.push((
        "fund the wrong amount",
        client
            .fund_escrow(buyer(card(&id, "full", 999, "tok_visa", "f-4")))
            .await
            .map(drop),
        vec!["amount.amount_minor"],
    ));
    cases.push((
        "release",
        client
            .release_to_supplier(contract(pb::ReleaseToSupplierRequest {
                idempotency_key: "r-1".into(),
                escrow_account_id: id.clone(),
                amount: bad_money(),
                reason: "  ".into(),
                purpose: None,
            }))
            .await
            .map(drop),
        vec![
            "amount.amount_minor",
            "amount.currency_code",
            "purpose",
            "reason",
        ],
    ));
    cases.push((
        "refund with the amendment purpose",
        client
            .refund_to_buyer(finance(pb::RefundToBuyerRequest {
                idempotency_key: "r-2".into(),
                escrow_account_id: id.clone(),
                amount: None,
                reason: "why".into(),
                purpose: Some(pb::Purpose {
                    purpose: Some(pb::purpose::Purpose::AmendmentVersion(2)),
                }),
            }))
            .await
            .map(drop),
        vec!["purpose.amendment_version"],
    ));
    cases.push((
        "settle",
        client
            .settle_claim(dispute(pb::SettleClaimRequest {
                idempotency_key: "s-1".into(),
                escrow_account_id: String::new(),
                claim_id: String::new(),
                refund: bad_money(),
                release_rest: true,
                reason: String::new(),
            }))
            .await
            .map(drop),
        vec![
            "claim_id",
            "escrow_account_id",
            "reason",
            "refund.amount_minor",
            "refund.currency_code",
        ],
    ));
    cases.push((
        "freeze",
        client
            .freeze_escrow(dispute(pb::FreezeEscrowRequest {
                idempotency_key: "fr-1".into(),
                escrow_account_id: id.clone(),
                claim_id: "bad claim".into(),
                reason: String::new(),
            }))
            .await
            .map(drop),
        vec!["claim_id", "reason"],
    ));
    cases.push((
        "unfreeze",
        client
            .unfreeze_escrow(dispute(pb::UnfreezeEscrowRequest {
                idempotency_key: String::new(),
                escrow_account_id: id.clone(),
                claim_id: String::new(),
                reason: "x".into(),
            }))
            .await
            .map(drop),
        vec!["claim_id", "idempotency_key"],
    ));
    cases.push((
        "close",
        client
            .close_escrow_account(contract(pb::CloseEscrowAccountRequest {
                idempotency_key: "cl-1".into(),
                escrow_account_id: "x".into(),
                reason: String::new(),
                refund_held: false,
            }))
            .await
            .map(drop),
        vec!["escrow_account_id", "reason"],
    ));
    cases.push((
        "amend",
        client
            .amend_escrow_schedule(contract(pb::AmendEscrowScheduleRequest {
                reason: String::new(),
                idempotency_key: "am-1".into(),
                escrow_account_id: id.clone(),
                schedule: vec![],
                contract_version: 1,
                hold_until: due_in(-1),
            }))
            .await
            .map(drop),
        vec!["contract_version", "hold_until", "schedule"],
    ));
    cases.push((
        "payouts",
        client
            .run_supplier_payouts(finance(pb::RunSupplierPayoutsRequest {
                idempotency_key: "p-1".into(),
                reason: "the weekly run".into(),
                supplier_id: "bad supplier".into(),
                currency_code: "dollars".into(),
            }))
            .await
            .map(drop),
        vec!["currency_code", "supplier_id"],
    ));
    let mut not_json = webhook("evt-x", "payment.succeeded", "pay_1", None);
    not_json.payload = b"not json".to_vec();
    not_json.signature = escrow::gateway::signature::WebhookSecret::new(WEBHOOK_SECRET)
        .unwrap()
        .sign(now_unix(), &not_json.payload);
    cases.push((
        "webhook payload",
        client
            .handle_gateway_webhook(gateway(not_json))
            .await
            .map(drop),
        vec!["payload"],
    ));
    let mut other_key = webhook("evt-y", "payment.succeeded", "pay_1", Some(0));
    other_key.idempotency_key = "evt-z".into();
    cases.push((
        "webhook key and amount",
        client
            .handle_gateway_webhook(gateway(other_key))
            .await
            .map(drop),
        vec!["idempotency_key", "payload.data.amount_minor"],
    ));
    cases.push((
        "get",
        client
            .get_escrow_account(finance(pb::GetEscrowAccountRequest {
                escrow_account_id: id.clone(),
                contract_id: "c-bad".into(),
            }))
            .await
            .map(drop),
        vec!["escrow_account_id"],
    ));
    cases.push((
        "statement page",
        client
            .get_escrow_statement(finance(pb::GetEscrowStatementRequest {
                escrow_account_id: id.clone(),
                page: Some(ta_proto::common::PageRequest {
                    page_size: 1_000,
                    page_token: "forged".into(),
                }),
            }))
            .await
            .map(drop),
        vec!["page.page_size", "page.page_token"],
    ));
    cases.push((
        "transfers",
        client
            .list_gateway_transfers(as_role(
                pb::ListGatewayTransfersRequest {
                    page: None,
                    supplier_id: String::new(),
                    direction: 7,
                    status: 9,
                    kind: 4,
                    reference: "a reference with spaces".into(),
                },
                SUPPLIER_OWNER,
                ta_runtime::auth::Role::Supplier,
            ))
            .await
            .map(drop),
        vec!["direction", "kind", "reference", "status", "supplier_id"],
    ));
    cases.push((
        "trial balance",
        client
            .get_trial_balance(finance(pb::GetTrialBalanceRequest {
                currency_code: "usd".into(),
            }))
            .await
            .map(drop),
        vec!["currency_code"],
    ));

    for (name, result, fields) in cases {
        let status = result.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert_eq!(violated_fields(&status), fields, "{name}");
    }
    assert_eq!(snapshot(&pool).await, before, "bad input wrote nothing");
}
