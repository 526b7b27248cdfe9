//! Every change finance or an arbiter makes to escrow leaves one entry in its
//! audit trail, in the change's transaction; the services' own calls (contract
//! opening an account, dispute freezing one) and the buyers' leave none.

mod support;

use sqlx::PgPool;
use support::*;
use ta_proto::{common::Role as PbRole, escrow as pb};
use ta_testkit::{audit_entries, audited_methods, staff_mutations};
use tonic::Code;

fn purpose(p: pb::purpose::Purpose) -> Option<pb::Purpose> {
    Some(pb::Purpose { purpose: Some(p) })
}

async fn fund(client: &mut Client, id: &str, milestone: &str, amount_minor: i64) {
    client
        .fund_escrow(buyer(card(
            id,
            milestone,
            amount_minor,
            "tok_visa",
            &format!("fund-{id}-{milestone}"),
        )))
        .await
        .expect("funded");
}

#[sqlx::test(migrations = false)]
async fn each_staff_change_to_escrow_leaves_one_entry(pool: PgPool) {
    let Escrow {
        mut client, server, ..
    } = start(pool).await;

    // Opened and amended by finance, frozen and released by an arbiter,
    // paid to the supplier and closed by finance.
    let opened = client
        .open_escrow_account(finance(pb::OpenEscrowAccountRequest {
            reason: "contract service down; order confirmed by phone".into(),
            ..open_request("c-staff", vec![payment("full", 10_000)])
        }))
        .await
        .expect("opened by finance")
        .into_inner()
        .account
        .unwrap();
    let a = opened.escrow_account_id;
    client
        .amend_escrow_schedule(finance(pb::AmendEscrowScheduleRequest {
            idempotency_key: "amend".into(),
            escrow_account_id: a.clone(),
            schedule: vec![payment("deposit", 4_000), payment("balance", 6_000)],
            contract_version: 2,
            hold_until: None,
            reason: "signed amendment v2 on paper".into(),
        }))
        .await
        .expect("amended");
    fund(&mut client, &a, "deposit", 4_000).await;
    fund(&mut client, &a, "balance", 6_000).await;
    let freeze = pb::FreezeEscrowRequest {
        idempotency_key: "freeze".into(),
        escrow_account_id: a.clone(),
        claim_id: "claim-staff".into(),
        reason: "buyer called about breakage".into(),
    };
    client
        .freeze_escrow(arbiter(freeze.clone()))
        .await
        .expect("frozen");
    // A retry replays and records nothing more.
    client
        .freeze_escrow(arbiter(freeze))
        .await
        .expect("replayed");
    client
        .unfreeze_escrow(arbiter(pb::UnfreezeEscrowRequest {
            idempotency_key: "unfreeze".into(),
            escrow_account_id: a.clone(),
            claim_id: "claim-staff".into(),
            reason: "photos show no damage".into(),
        }))
        .await
        .expect("unfrozen");
    client
        .release_to_supplier(finance(pb::ReleaseToSupplierRequest {
            idempotency_key: "release".into(),
            escrow_account_id: a.clone(),
            amount: None,
            reason: "buyer confirmed acceptance by e-mail".into(),
            purpose: purpose(pb::purpose::Purpose::Acceptance(true)),
        }))
        .await
        .expect("released");
    client
        .close_escrow_account(finance(pb::CloseEscrowAccountRequest {
            idempotency_key: "close".into(),
            escrow_account_id: a.clone(),
            reason: "order complete".into(),
            refund_held: false,
        }))
        .await
        .expect("closed");

    // Refunded by finance after the contract service opened it.
    let b = funded(&mut client, "c-refund", 5_000).await;
    client
        .refund_to_buyer(finance(pb::RefundToBuyerRequest {
            idempotency_key: "refund".into(),
            escrow_account_id: b.clone(),
            amount: None,
            reason: "cancelled by both parties in writing".into(),
            purpose: purpose(pb::purpose::Purpose::Cancellation(true)),
        }))
        .await
        .expect("refunded");

    // Settled by finance after dispute froze it for its claim.
    let c = funded(&mut client, "c-claim", 8_000).await;
    client
        .freeze_escrow(dispute(pb::FreezeEscrowRequest {
            idempotency_key: "dispute-freeze".into(),
            escrow_account_id: c.clone(),
            claim_id: "claim-c".into(),
            reason: "claim filed".into(),
        }))
        .await
        .expect("frozen by dispute");
    client
        .settle_claim(finance(pb::SettleClaimRequest {
            idempotency_key: "settle".into(),
            escrow_account_id: c.clone(),
            claim_id: "claim-c".into(),
            refund: usd(1_000),
            release_rest: true,
            reason: "dispute's settlement call parked; applied by hand".into(),
        }))
        .await
        .expect("settled");
    client
        .run_supplier_payouts(finance(pb::RunSupplierPayoutsRequest {
            idempotency_key: "payouts".into(),
            reason: "month-end run".into(),
            ..Default::default()
        }))
        .await
        .expect("payouts");

    // Without a reason, staff change nothing and leave nothing.
    let reasonless = client
        .refund_to_buyer(finance(pb::RefundToBuyerRequest {
            idempotency_key: "refund-2".into(),
            escrow_account_id: c.clone(),
            amount: usd(1),
            reason: String::new(),
            purpose: purpose(pb::purpose::Purpose::Cancellation(true)),
        }))
        .await
        .expect_err("a reason is required of staff");
    assert_eq!(reasonless.code(), Code::InvalidArgument);
    assert!(violated_fields(&reasonless).contains(&"reason".to_owned()));

    let entries = audit_entries(server.channel.clone()).await;
    let methods = audited_methods(&entries);
    assert_eq!(
        methods,
        [
            "OpenEscrowAccount",
            "AmendEscrowSchedule",
            "FreezeEscrow",
            "UnfreezeEscrow",
            "ReleaseToSupplier",
            "CloseEscrowAccount",
            "RefundToBuyer",
            "SettleClaim",
            "RunSupplierPayouts",
        ]
    );
    let mut covered = methods.clone();
    covered.sort();
    let mut declared = staff_mutations(ESCROW_SERVICE);
    declared.sort_unstable();
    assert_eq!(
        covered, declared,
        "every staff mutation of escrow is audited here"
    );

    let duty = |m: &str| match m {
        "FreezeEscrow" | "UnfreezeEscrow" => PbRole::Arbiter as i32,
        _ => PbRole::Finance as i32,
    };
    for (entry, method) in entries.iter().zip(&methods) {
        let actor = entry.actor.as_ref().unwrap();
        assert_eq!(
            (actor.principal_id.as_str(), actor.role),
            (OPERATOR, duty(method))
        );
        assert!(!entry.reason.is_empty());
        assert_eq!(entry.trace_id.len(), 32);
    }
    let on: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.resource_type.as_str(), e.resource_id.as_str()))
        .collect();
    assert_eq!(on[0], ("contract", "c-staff"), "opening names its contract");
    for (n, id) in [
        (1, &a),
        (2, &a),
        (3, &a),
        (4, &a),
        (5, &a),
        (6, &b),
        (7, &c),
    ] {
        assert_eq!(on[n], ("escrow_account", id.as_str()), "{}", methods[n]);
    }
    assert_eq!(on[8], ("", ""), "a run over every supplier names none");
    assert_eq!(entries[4].reason, "buyer confirmed acceptance by e-mail");
    server.stop().await.unwrap();
}
