//! Release per milestone through the real binaries (supplier-registry,
//! escrow with the sandbox gateway, contract, dispute) and the real grpcurl:
//! an order in two lots whose first milestone (40 %) is released on the
//! first lot's acceptance while the second lot is claimed, and the claim can
//! only touch the 60 % escrow still holds. Every figure is read from
//! escrow's account and the contract, through their APIs.

use e2e_tests::{platform::*, scenario::*, *};

const BUYER: &str = "buyer-lots";
const OWNER: &str = "supplier-lots";
/// 1,000 mugs at 3.00 USD and 10 cartons at 10.00 USD.
const TOTAL: i64 = 310_000;
/// 40 %, released with lot 1.
const FIRST: i64 = 124_000;
/// 60 %, released with lot 2 (the final shipment).
const SECOND: i64 = 186_000;

/// The platform's terms, paid 40 % with lot 1 and 60 % with lot 2.
fn two_lot_terms() -> Value {
    let mut terms = terms("PROTECTION_TRADE_ASSURANCE");
    terms["payment_terms"] = json!({
        "scheme": "PAYMENT_SCHEME_DEPOSIT_AND_BALANCE",
        "milestones": [
            { "milestone_id": "first-lot", "share_basis_points": 4000,
              "trigger": "PAYMENT_TRIGGER_AFTER_SIGNING", "due_days": 3, "lot": 1 },
            { "milestone_id": "second-lot", "share_basis_points": 6000,
              "trigger": "PAYMENT_TRIGGER_BEFORE_SHIPMENT_DEADLINE", "due_days": 2, "lot": 2 }
        ]
    });
    terms
}

fn account(platform: &Platform, contract_id: &str) -> Value {
    platform.escrow_account(contract_id)["account"].clone()
}

fn money_of(account: &Value, field: &str) -> i64 {
    int(&account[field]["amountMinor"])
}

/// Waits until escrow's account satisfies `ok`; returns it.
fn wait_account(
    platform: &Platform,
    contract_id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(PATIENCE, &format!("escrow account: {what}"), || {
        let a = account(platform, contract_id);
        if ok(&a) { Ok(a) } else { Err(format!("{a:#}")) }
    })
}

fn ship(
    platform: &Platform,
    supplier: &str,
    id: &str,
    key: &str,
    is_final: bool,
) -> Result<Value, RpcError> {
    platform.contract_call(
        "RecordShipment",
        supplier,
        &json!({ "idempotency_key": format!("{key}-{id}"), "contract_id": id, "carrier": "COSCO",
                 "tracking_number": format!("COSU-{key}"), "final": is_final }),
    )
}

#[test]
fn an_order_in_two_lots_releases_the_first_milestone_on_the_first_lots_acceptance_while_the_second_is_claimed()
 {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence-lots");
    let dispute = platform.spawn_dispute(store.path(), &[]);
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(OWNER, Role::Supplier);
    let supplier_id = platform.supplier(OWNER, Some(1_000_000));

    // Lots must be numbered 1..N: a gap is refused at drafting, naming the field.
    let mut gap = two_lot_terms();
    gap["payment_terms"]["milestones"][1]["lot"] = json!(3);
    let refused = platform
        .contract_call(
            "CreateContractDraft",
            &buyer,
            &json!({ "idempotency_key": "draft-gap", "supplier_id": supplier_id, "terms": gap }),
        )
        .expect_err("lot 2 missing");
    assert_eq!(refused.code, "InvalidArgument", "{refused:#?}");
    assert!(
        refused
            .message
            .contains("terms.payment_terms.milestones: the lots must be numbered 1..3"),
        "{refused:#?}"
    );

    // Signed, activated and paid in full, milestone by milestone.
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &two_lot_terms());
    let active = platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    let account_id = active["escrowAccountId"]
        .as_str()
        .expect("account")
        .to_owned();
    platform.pay_by_card(&buyer, &account_id, "first-lot", FIRST);
    platform.pay_by_card(&buyer, &account_id, "second-lot", SECOND);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    assert_eq!(money_of(&account(&platform, &id), "held"), TOTAL);

    // Lot 1: a part shipment (lot 1 cannot be the final one).
    let wrong =
        ship(&platform, &supplier, &id, "lot-1-final", true).expect_err("lot 1 is not final");
    assert_eq!(wrong.code, "InvalidArgument", "{wrong:#?}");
    assert!(wrong.message.contains("final"), "{wrong:#?}");
    let shipped =
        ship(&platform, &supplier, &id, "lot-1", false).expect("lot 1 shipped")["contract"].clone();
    assert_eq!(shipped["status"], "CONTRACT_STATUS_FUNDED", "{shipped:#}");
    assert_eq!(shipped["shipments"][0]["lot"], 1, "{shipped:#}");
    platform.contract_ok(
        "ConfirmReceipt",
        &buyer,
        &json!({ "idempotency_key": format!("receipt-1-{id}"), "contract_id": id, "lot": 1 }),
    );

    // The buyer accepts lot 1: escrow releases its 40 %, once.
    let accepted = platform.contract_ok(
        "AcceptGoods",
        &buyer,
        &json!({ "idempotency_key": format!("accept-1-{id}"), "contract_id": id, "lot": 1,
                 "note": "first lot as ordered" }),
    )["contract"]
        .clone();
    assert_eq!(
        accepted["status"], "CONTRACT_STATUS_FUNDED",
        "the order goes on: {accepted:#}"
    );
    assert_eq!(
        accepted["shipments"][0]["acceptance"],
        "ACCEPTANCE_KIND_EXPLICIT"
    );
    assert_eq!(
        accepted["shipments"][0]["releasedMilestoneIds"],
        json!(["first-lot"])
    );
    assert_eq!(
        int(&accepted["shipments"][0]["released"]["amountMinor"]),
        FIRST
    );
    let released = wait_account(&platform, &id, "lot 1 released", |a| {
        money_of(a, "releasedTotal") == FIRST
    });
    assert_eq!(money_of(&released, "held"), SECOND, "{released:#}");
    assert_eq!(money_of(&released, "refundedTotal"), 0, "{released:#}");
    assert_eq!(
        released["status"], "ESCROW_ACCOUNT_STATUS_FUNDED",
        "{released:#}"
    );
    let contract = wait_until(PATIENCE, "escrow's answer on the contract", || {
        let c = platform.get_contract(&id);
        if c["shipments"][0]["releasePending"]
            .as_bool()
            .unwrap_or(false)
        {
            Err(format!("{c:#}"))
        } else {
            Ok(c)
        }
    });
    assert_eq!(contract["status"], "CONTRACT_STATUS_FUNDED");
    let actions = platform.timeline_actions(&id);
    assert!(
        in_order(
            &actions,
            &[
                "goods.shipped",
                "lot.received",
                "lot.accepted",
                "escrow.lot_released"
            ]
        ),
        "{actions:?}"
    );
    // Accepting lot 1 again under another key moves nothing more.
    let again = platform
        .contract_call(
            "AcceptGoods",
            &buyer,
            &json!({ "idempotency_key": format!("accept-1-again-{id}"), "contract_id": id, "lot": 1 }),
        )
        .expect_err("accepted already");
    assert_eq!(again.code, "FailedPrecondition", "{again:#?}");
    assert_eq!(money_of(&account(&platform, &id), "releasedTotal"), FIRST);

    // Lot 2, the final shipment, shipped and received.
    ship(&platform, &supplier, &id, "lot-2", true).expect("lot 2 shipped");
    platform.contract_ok(
        "ConfirmReceipt",
        &buyer,
        &json!({ "idempotency_key": format!("receipt-2-{id}"), "contract_id": id }),
    );
    platform.wait_status(&id, "CONTRACT_STATUS_DELIVERED");

    // The buyer claims on lot 2: only the 60 % still held can be claimed.
    let claim = |key: &str, amount: i64| {
        dcall(
            &dispute,
            "FileClaim",
            &buyer,
            &json!({ "idempotency_key": key, "contract_id": id, "reason": "CLAIM_REASON_DAMAGE",
                     "quality_criterion_ids": ["QC-1"], "amount_claimed": usd(amount),
                     "description": "the second lot arrived with 20 cartons crushed" }),
        )
    };
    let too_much = claim("claim-all", TOTAL).expect_err("more than is held");
    assert_eq!(too_much.code, "InvalidArgument", "{too_much:#?}");
    assert!(
        too_much
            .message
            .contains("at most what escrow holds (USD 186000"),
        "{too_much:#?}"
    );
    let beyond = claim("claim-beyond", SECOND + 1).expect_err("one cent more than is held");
    assert_eq!(beyond.code, "InvalidArgument", "{beyond:#?}");
    let filed = claim("claim-lot-2", 100_000).expect("files");
    let claim_id = claim_id_of(&filed);
    wait_claim_status(&dispute, &buyer, &claim_id, "CLAIM_STATUS_NEGOTIATING");
    assert_eq!(
        platform.get_contract(&id)["status"],
        "CONTRACT_STATUS_IN_DISPUTE"
    );
    // Escrow froze what it holds: lot 2's 60 %; lot 1's 40 % is the supplier's.
    let frozen = account(&platform, &id);
    assert_eq!(
        frozen["activeFreezes"].as_array().map_or(0, Vec::len),
        1,
        "{frozen:#}"
    );
    assert_eq!(money_of(&frozen, "held"), SECOND, "{frozen:#}");
    assert_eq!(money_of(&frozen, "releasedTotal"), FIRST, "{frozen:#}");

    // A full refund is what is still held, not the order's total; a partial
    // refund above it is refused.
    let full = dcall_ok(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer-full", "claim_id": claim_id, "kind": "OFFER_KIND_FULL_REFUND",
                 "message": "all that is still held" }),
    );
    assert_eq!(
        int(&full["offer"]["refundAmount"]["amountMinor"]),
        SECOND,
        "{full:#}"
    );
    let above = dcall(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer-above", "claim_id": claim_id, "kind": "OFFER_KIND_PARTIAL_REFUND",
                 "refund_amount": usd(SECOND + 1) }),
    )
    .expect_err("above what is held");
    assert_eq!(above.code, "InvalidArgument", "{above:#?}");

    // Settled: 60,000 back to the buyer, the rest of lot 2's money to the supplier.
    let offer_id = dcall_ok(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer-part", "claim_id": claim_id, "kind": "OFFER_KIND_PARTIAL_REFUND",
                 "refund_amount": usd(60_000), "message": "the crushed cartons" }),
    )["offer"]["offerId"]
        .as_str()
        .expect("offerId")
        .to_owned();
    let settled = dcall_ok(
        &dispute,
        "AcceptOffer",
        &buyer,
        &json!({ "idempotency_key": "accept-offer", "claim_id": claim_id, "offer_id": offer_id }),
    );
    assert_eq!(
        settled["claim"]["status"], "CLAIM_STATUS_SETTLED",
        "{settled:#}"
    );
    wait_claim_effects(&dispute, &buyer, &claim_id);
    let done = platform.wait_status(&id, "CONTRACT_STATUS_COMPLETED");
    assert_eq!(
        done["acceptance"], "ACCEPTANCE_KIND_CLAIM_OUTCOME",
        "{done:#}"
    );
    let closed = wait_account(&platform, &id, "closed", |a| {
        a["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED"
    });
    assert_eq!(money_of(&closed, "held"), 0, "{closed:#}");
    assert_eq!(money_of(&closed, "refundedTotal"), 60_000, "{closed:#}");
    assert_eq!(
        money_of(&closed, "releasedTotal"),
        FIRST + SECOND - 60_000,
        "lot 1's 40 % and what the claim left of lot 2's 60 %: {closed:#}"
    );
    assert_eq!(
        money_of(&closed, "releasedTotal") + money_of(&closed, "refundedTotal"),
        TOTAL,
        "every cent went somewhere: {closed:#}"
    );
    // The statement: lot 1's release under its milestone, then the claim's
    // refund and the release of the rest under the claim.
    let statement = platform.statement(&account_id);
    let moved: Vec<(String, String, i64)> = statement["postings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["kind"] != "POSTING_KIND_FUNDING")
        .map(|p| {
            let purpose = &p["purpose"];
            let named = purpose["milestoneId"]
                .as_str()
                .or_else(|| purpose["claimId"].as_str())
                .unwrap_or_default();
            (
                p["kind"].as_str().unwrap_or_default().to_owned(),
                named.to_owned(),
                int(&p["amount"]["amountMinor"]),
            )
        })
        .collect();
    let row = |kind: &str, named: &str, amount: i64| (kind.to_owned(), named.to_owned(), amount);
    assert_eq!(
        moved,
        [
            row("POSTING_KIND_RELEASE", "first-lot", FIRST),
            row("POSTING_KIND_REFUND", &claim_id, 60_000),
            row("POSTING_KIND_RELEASE", &claim_id, SECOND - 60_000),
        ],
        "{statement:#}"
    );
    platform.assert_ledger_reconciles();
}
