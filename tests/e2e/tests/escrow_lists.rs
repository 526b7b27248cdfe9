//! ListEscrowAccounts and ListGatewayTransfers through the real binaries:
//! parties list their own escrow accounts and strangers nothing of them,
//! finance filters by status, currency and created range, the platform
//! lists every account, and a refund is found by the payment it goes back
//! against.

use e2e_tests::{platform::*, *};
use serde_json::{Value, json};
use ta_runtime::auth::Role;

/// The contract ids of the accounts `token` lists with `filters`, in the
/// listing's order.
fn listed(platform: &Platform, token: &str, filters: Value) -> Result<Vec<String>, RpcError> {
    let mut body = json!({ "page": { "page_size": 100 } });
    if let (Some(body), Some(filters)) = (body.as_object_mut(), filters.as_object()) {
        body.extend(filters.clone());
    }
    let answer = platform
        .escrow
        .call(&escrow_method("ListEscrowAccounts"), Some(token), &body)?;
    Ok(answer["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["contractId"].as_str().unwrap_or_default().to_owned())
        .collect())
}

fn listed_ok(platform: &Platform, token: &str, filters: Value) -> Vec<String> {
    listed(platform, token, filters).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn transfers(platform: &Platform, filters: Value) -> Vec<Value> {
    platform.escrow.call_ok(
        &escrow_method("ListGatewayTransfers"),
        Some(&platform.staff.finance),
        &filters,
    )["transfers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn escrow_accounts_are_listed_to_their_parties_staff_and_the_platform_and_refunds_by_reference() {
    // Refunds owed to buyers are paid out by the payout run: every second.
    let platform = Platform::start_with(&[("ESCROW_PAYOUT_INTERVAL", "1s")], &[]);
    let (buyer, owner) = (
        mint("buyer-lists", Role::Buyer),
        mint("owner-lists", Role::Supplier),
    );
    let (other_buyer, other_owner) = (
        mint("buyer-lists-other", Role::Buyer),
        mint("owner-lists-other", Role::Supplier),
    );
    let supplier_id = platform.supplier("owner-lists", Some(10_000_000));
    let other_supplier_id = platform.supplier("owner-lists-other", Some(10_000_000));
    let protected = terms("PROTECTION_TRADE_ASSURANCE");

    // The buyer's first order, paid; its second, awaiting payment; another
    // buyer's order with another supplier.
    let paid = signed_contract(&platform, &buyer, &owner, &supplier_id, &protected);
    let paid_account = platform.fund_by_card(&buyer, &paid);
    let unpaid = signed_contract(&platform, &buyer, &owner, &supplier_id, &protected);
    platform.account_id_of(&unpaid);
    let theirs = signed_contract(
        &platform,
        &other_buyer,
        &other_owner,
        &other_supplier_id,
        &protected,
    );
    platform.account_id_of(&theirs);

    // Each party lists its own, newest first.
    assert_eq!(
        listed_ok(&platform, &buyer, json!({})),
        [unpaid.clone(), paid.clone()]
    );
    assert_eq!(
        listed_ok(&platform, &owner, json!({})),
        [unpaid.clone(), paid.clone()]
    );
    assert_eq!(
        listed_ok(&platform, &other_buyer, json!({})),
        std::slice::from_ref(&theirs)
    );
    assert_eq!(
        listed_ok(&platform, &other_owner, json!({})),
        std::slice::from_ref(&theirs)
    );
    // Strangers get nothing of anyone's, whatever they name.
    let stranger_buyer = mint("buyer-lists-stranger", Role::Buyer);
    let stranger_owner = mint("owner-lists-stranger", Role::Supplier);
    assert!(listed_ok(&platform, &stranger_buyer, json!({})).is_empty());
    assert!(listed_ok(&platform, &stranger_owner, json!({})).is_empty());
    assert!(
        listed_ok(
            &platform,
            &stranger_owner,
            json!({ "supplier_id": supplier_id })
        )
        .is_empty()
    );
    assert!(
        listed_ok(
            &platform,
            &other_owner,
            json!({ "buyer_principal_id": "buyer-lists" })
        )
        .is_empty()
    );
    // A buyer naming another buyer is refused, as ListContracts refuses it.
    let refused = listed(
        &platform,
        &stranger_buyer,
        json!({ "buyer_principal_id": "buyer-lists" }),
    )
    .expect_err("another buyer's accounts");
    assert_eq!(refused.code, "PermissionDenied", "{refused:#?}");

    // Finance filters by status, currency and created range.
    let paid_view = platform.escrow_account(&paid)["account"].clone();
    let created = paid_view["createdAt"]
        .as_str()
        .expect("createdAt")
        .to_owned();
    assert_eq!(
        listed_ok(
            &platform,
            &platform.staff.finance,
            json!({ "statuses": ["ESCROW_ACCOUNT_STATUS_FUNDED"], "currency_code": "USD",
                    "created_after": created, "created_before": at(days(1)) })
        ),
        std::slice::from_ref(&paid)
    );
    assert_eq!(
        listed_ok(
            &platform,
            &platform.staff.finance,
            json!({ "statuses": ["ESCROW_ACCOUNT_STATUS_AWAITING_FUNDING"] })
        ),
        [theirs.clone(), unpaid.clone()]
    );
    assert!(
        listed_ok(
            &platform,
            &platform.staff.finance,
            json!({ "currency_code": "EUR" })
        )
        .is_empty()
    );
    assert_eq!(
        listed_ok(
            &platform,
            &platform.staff.finance,
            json!({ "created_before": created })
        ),
        Vec::<String>::new(),
        "nothing was created before the first account"
    );
    assert_eq!(
        listed_ok(
            &platform,
            &platform.staff.support,
            json!({ "supplier_id": supplier_id, "buyer_principal_id": "buyer-lists" })
        ),
        [unpaid.clone(), paid.clone()]
    );
    // The platform lists every account, each as GetEscrowAccount shows it.
    let everything = platform.escrow.call_ok(
        &escrow_method("ListEscrowAccounts"),
        Some(&platform.staff.platform),
        &json!({}),
    );
    let accounts = everything["accounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(accounts.len(), 3, "{everything:#}");
    let listed_paid = accounts
        .iter()
        .find(|a| a["contractId"] == paid.as_str())
        .expect("the paid account");
    assert_eq!(*listed_paid, paid_view);
    assert_eq!(int(&listed_paid["held"]["amountMinor"]), 310_000);

    // The supplier cancels the paid order: what escrow held goes back to
    // the card it came from, and the refund is found by that payment's
    // reference.
    platform.contract_ok(
        "CancelContract",
        &owner,
        &json!({ "idempotency_key": "cancel-paid", "contract_id": paid,
                 "reason": "out of stock" }),
    );
    platform.wait_account_status(&paid, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        listed_ok(
            &platform,
            &buyer,
            json!({ "statuses": ["ESCROW_ACCOUNT_STATUS_CLOSED"] })
        ),
        std::slice::from_ref(&paid)
    );
    wait_until(PATIENCE, "the refunds to be sent", || {
        let refunds = transfers(&platform, json!({ "kind": "GATEWAY_TRANSFER_KIND_REFUND" }));
        if refunds.len() == 2 {
            Ok(())
        } else {
            Err(format!("{refunds:#?}"))
        }
    });
    let attempts = platform.escrow_account(&paid)["fundingAttempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attempts.len(), 2, "deposit and balance: {attempts:#?}");
    for attempt in &attempts {
        let charge = attempt["gatewayReference"].as_str().expect("reference");
        let found = transfers(&platform, json!({ "reference": charge }));
        assert_eq!(found.len(), 1, "{charge}: {found:#?}");
        assert_eq!(
            found[0]["direction"],
            "GATEWAY_TRANSFER_DIRECTION_BUYER_REFUND"
        );
        assert_eq!(found[0]["sourceReference"], charge);
        assert_eq!(found[0]["escrowAccountId"], paid_account.as_str());
        assert_eq!(found[0]["amount"], attempt["amount"]);
        // By escrow's own ids too: the attempt refunded, the transfer.
        // (The gateway may move the refund on meanwhile: compared by id.)
        let ids = |found: Vec<Value>| -> Vec<Value> {
            found
                .iter()
                .map(|t| t["gatewayTransferId"].clone())
                .collect()
        };
        let refund = vec![found[0]["gatewayTransferId"].clone()];
        let by_attempt = transfers(
            &platform,
            json!({ "reference": attempt["fundingAttemptId"], "kind": "GATEWAY_TRANSFER_KIND_REFUND" }),
        );
        assert_eq!(ids(by_attempt), refund);
        let by_id = transfers(&platform, json!({ "reference": refund[0] }));
        assert_eq!(ids(by_id), refund);
        assert!(
            transfers(
                &platform,
                json!({ "reference": charge, "kind": "GATEWAY_TRANSFER_KIND_PAYOUT" })
            )
            .is_empty()
        );
    }
    assert_eq!(
        transfers(&platform, json!({ "kind": "GATEWAY_TRANSFER_KIND_REFUND" })).len(),
        2
    );
    assert!(transfers(&platform, json!({ "reference": "ch_nobody" })).is_empty());
}
