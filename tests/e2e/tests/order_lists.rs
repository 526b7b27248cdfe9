//! ListContracts and ListClaims through the real binaries and the real
//! grpcurl: a shop drafts with its own order reference and finds the
//! contract by it (a second draft with it is refused, another buyer may use
//! it), a stranger buyer or supplier lists nothing of it, a date range and
//! the sort orders; an arbiter lists the claims whose decision is overdue,
//! the parties their own, strangers none, and the platform role lists
//! contracts and claims alike.

use e2e_tests::{platform::*, *};

const SHOP: &str = "buyer-shop-lists";

/// The contract ids of a ListContracts answer, in order.
fn contract_ids(answer: &Value) -> Vec<String> {
    answer["contracts"]
        .as_array()
        .map(|contracts| {
            contracts
                .iter()
                .map(|c| c["contractId"].as_str().expect("contractId").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The claim ids of a ListClaims answer, in order.
fn claim_ids(answer: &Value) -> Vec<String> {
    answer["claims"]
        .as_array()
        .map(|claims| {
            claims
                .iter()
                .map(|c| c["claimId"].as_str().expect("claimId").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every page of a ListContracts call, two at a time, through its tokens.
fn list_contracts(platform: &Platform, token: &str, request: &Value) -> Vec<String> {
    let mut request = request.clone();
    let mut ids = Vec::new();
    loop {
        let page = platform.contract_ok("ListContracts", token, &request);
        ids.extend(contract_ids(&page));
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => {
                request["page"] = json!({ "page_size": 2, "page_token": next });
            }
            _ => return ids,
        }
    }
}

fn draft(platform: &Platform, buyer: &str, supplier_id: &str, key: &str, reference: &str) -> Value {
    platform.contract_ok(
        "CreateContractDraft",
        buyer,
        &json!({ "idempotency_key": key, "supplier_id": supplier_id,
                 "terms": terms("PROTECTION_TRADE_ASSURANCE"), "external_reference": reference }),
    )["contract"]
        .clone()
}

#[test]
fn a_shop_finds_its_order_by_reference_and_strangers_list_nothing() {
    let platform = Platform::start(&[]);
    let owner = "supplier-lists";
    let supplier_id = platform.supplier(owner, Some(10_000_000));
    let shop = mint(SHOP, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);

    let mut orders = Vec::new();
    for n in 1..=3 {
        let created = draft(
            &platform,
            &shop,
            &supplier_id,
            &format!("order-{n}"),
            &format!("SHOP-ORDER-{n}"),
        );
        assert_eq!(created["externalReference"], format!("SHOP-ORDER-{n}"));
        orders.push(created);
    }
    let ids: Vec<String> = orders
        .iter()
        .map(|c| c["contractId"].as_str().expect("contractId").to_owned())
        .collect();

    // Found by its reference; GetContract shows it.
    let by_reference = json!({ "external_reference": "SHOP-ORDER-2" });
    assert_eq!(
        list_contracts(&platform, &shop, &by_reference),
        [ids[1].clone()]
    );
    assert_eq!(
        platform.get_contract(&ids[1])["externalReference"],
        "SHOP-ORDER-2"
    );

    // A second draft of the shop with it names the contract that has it.
    let taken = platform
        .contract_call(
            "CreateContractDraft",
            &shop,
            &json!({ "idempotency_key": "order-2-again", "supplier_id": supplier_id,
                     "terms": terms("PROTECTION_TRADE_ASSURANCE"), "external_reference": "SHOP-ORDER-2" }),
        )
        .expect_err("a shop's reference is unique");
    assert_eq!(taken.code, "AlreadyExists", "{taken:#?}");
    assert!(taken.message.contains(&ids[1]), "{taken:#?}");
    // Another buyer may have the same reference.
    let other_shop = mint("buyer-other-shop", Role::Buyer);
    let theirs = draft(
        &platform,
        &other_shop,
        &supplier_id,
        "their-order",
        "SHOP-ORDER-2",
    );
    let theirs = theirs["contractId"]
        .as_str()
        .expect("contractId")
        .to_owned();
    assert_eq!(
        list_contracts(&platform, &shop, &by_reference),
        [ids[1].clone()]
    );
    assert_eq!(
        list_contracts(&platform, &other_shop, &by_reference),
        std::slice::from_ref(&theirs)
    );

    // Strangers: nothing, with or without the reference.
    let stranger_buyer = mint("buyer-stranger-lists", Role::Buyer);
    let stranger_supplier = mint("supplier-stranger-lists", Role::Supplier);
    for token in [&stranger_buyer, &stranger_supplier] {
        assert!(list_contracts(&platform, token, &by_reference).is_empty());
        assert!(list_contracts(&platform, token, &json!({})).is_empty());
    }
    // A buyer naming another buyer is refused.
    let naming = platform
        .contract_call(
            "ListContracts",
            &stranger_buyer,
            &json!({ "buyer_principal_id": SHOP }),
        )
        .expect_err("another buyer's contracts");
    assert_eq!(naming.code, "PermissionDenied", "{naming:#?}");

    // The supplier's owner, staff and the platform see both shops' orders.
    let mut both = vec![ids[1].clone(), theirs.clone()];
    both.sort();
    for token in [&supplier, &platform.staff.support, &platform.staff.platform] {
        let mut seen = list_contracts(&platform, token, &by_reference);
        seen.sort();
        assert_eq!(seen, both);
    }

    // A date range and the sort orders, two a page.
    let second_created = orders[1]["createdAt"].as_str().expect("createdAt");
    let from_second = json!({ "created_after": second_created, "sort": "CONTRACT_SORT_CREATED_ASC",
                              "page": { "page_size": 2 } });
    assert_eq!(list_contracts(&platform, &shop, &from_second), ids[1..]);
    let before_second = json!({ "created_before": second_created, "page": { "page_size": 2 } });
    assert_eq!(list_contracts(&platform, &shop, &before_second), ids[..1]);
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(
        list_contracts(&platform, &shop, &json!({ "page": { "page_size": 2 } })),
        newest_first
    );
    // The first order changed last (its buyer signs it).
    platform.contract_ok(
        "SignContract",
        &shop,
        &json!({ "idempotency_key": "sign-order-1", "contract_id": ids[0], "version": 1 }),
    );
    let by_change = json!({ "sort": "CONTRACT_SORT_UPDATED_DESC", "page": { "page_size": 2 } });
    assert_eq!(
        list_contracts(&platform, &shop, &by_change),
        [ids[0].clone(), ids[2].clone(), ids[1].clone()]
    );
    let empty_range = platform
        .contract_call(
            "ListContracts",
            &shop,
            &json!({ "created_after": second_created, "created_before": second_created }),
        )
        .expect_err("an empty range");
    assert_eq!(empty_range.code, "InvalidArgument", "{empty_range:#?}");
    assert!(
        empty_range.message.contains("created_before"),
        "{empty_range:#?}"
    );
}

fn dcall_ok(dispute: &Service, method: &str, token: &str, body: &Value) -> Value {
    dispute.call_ok(&dispute_method(method), Some(token), body)
}

fn claim_status(dispute: &Service, token: &str, claim_id: &str) -> String {
    dcall_ok(dispute, "GetClaim", token, &json!({ "claim_id": claim_id }))["claim"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A claim the buyer files on a delivered contract, once negotiating.
fn negotiating_claim(dispute: &Service, buyer: &str, contract_id: &str, key: &str) -> String {
    let filed = dcall_ok(
        dispute,
        "FileClaim",
        buyer,
        &json!({
            "idempotency_key": key,
            "contract_id": contract_id,
            "reason": "CLAIM_REASON_DAMAGE",
            "quality_criterion_ids": ["QC-1"],
            "amount_claimed": usd(50_000),
            "description": "12 of 40 cartons arrived crushed, mugs broken"
        }),
    );
    let claim_id = filed["claim"]["claimId"]
        .as_str()
        .expect("claimId")
        .to_owned();
    wait_until(
        PATIENCE,
        &format!("claim {claim_id} to negotiate"),
        || match claim_status(dispute, buyer, &claim_id).as_str() {
            "CLAIM_STATUS_NEGOTIATING" => Ok(()),
            other => Err(other.to_owned()),
        },
    );
    claim_id
}

#[test]
fn an_arbiter_lists_the_claims_whose_decision_is_overdue() {
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let store = TempDir::new("evidence");
    // Days of three seconds: an escalated claim's decision (1 day) falls
    // due 3 s after its escalation; no claim escalates by itself within the
    // test (90 days: 270 s).
    let dispute = platform.spawn_dispute(
        store.path(),
        &[
            ("DISPUTE_TERM_DAY", "3s"),
            ("DISPUTE_NEGOTIATION_DAYS", "2"),
            ("DISPUTE_AUTO_ESCALATION_DAYS", "90"),
            ("DISPUTE_DECISION_DAYS", "1"),
        ],
    );
    let owner = "supplier-claim-lists";
    let supplier_id = platform.supplier(owner, Some(10_000_000));
    let buyer = mint("buyer-claim-lists", Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let (escalated_contract, _) =
        platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let (negotiating_contract, _) =
        platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let overdue = negotiating_claim(&dispute, &buyer, &escalated_contract, "file-overdue");
    let negotiating =
        negotiating_claim(&dispute, &buyer, &negotiating_contract, "file-negotiating");
    let escalated = dcall_ok(
        &dispute,
        "EscalateClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "escalate-overdue", "claim_id": overdue,
                 "reason": "the supplier stopped answering" }),
    );
    assert_eq!(escalated["claim"]["status"], "CLAIM_STATUS_ESCALATED");
    assert!(
        escalated["claim"]["decisionDueAt"].is_string(),
        "{escalated:#}"
    );

    let list =
        |token: &str, request: &Value| claim_ids(&dcall_ok(&dispute, "ListClaims", token, request));
    let overdue_only = json!({ "decision_overdue": true });
    // Its decision falls due a (term) day after the escalation.
    wait_until(PATIENCE, "the decision to be overdue", || {
        let listed = list(&platform.staff.arbiter, &overdue_only);
        if listed == [overdue.clone()] {
            Ok(())
        } else {
            Err(format!("{listed:?}"))
        }
    });
    assert_eq!(
        list(
            &platform.staff.arbiter,
            &json!({ "decision_overdue": false })
        ),
        std::slice::from_ref(&negotiating)
    );
    // The platform role, the claim's buyer and supplier see it too.
    for token in [&platform.staff.platform, &buyer, &supplier] {
        assert_eq!(list(token, &overdue_only), std::slice::from_ref(&overdue));
    }
    // Strangers see no claim at all.
    for stranger in [
        mint("buyer-stranger-claims", Role::Buyer),
        mint("supplier-stranger-claims", Role::Supplier),
    ] {
        assert!(list(&stranger, &overdue_only).is_empty());
        assert!(list(&stranger, &json!({})).is_empty());
    }
    // Filed before a time before both: none; since then: both, newest first.
    let earlier = json!({ "filed_before": "2020-01-01T00:00:00Z" });
    assert!(list(&platform.staff.arbiter, &earlier).is_empty());
    let since = json!({ "filed_after": "2020-01-01T00:00:00Z", "filed_before": at(days(1)) });
    assert_eq!(
        list(&platform.staff.support, &since),
        [negotiating.clone(), overdue.clone()]
    );
    // The platform lists contracts as well as claims.
    let mut contracts = contract_ids(&platform.contract_ok(
        "ListContracts",
        &platform.staff.platform,
        &json!({ "statuses": ["CONTRACT_STATUS_IN_DISPUTE"] }),
    ));
    contracts.sort();
    let mut disputed = vec![escalated_contract, negotiating_contract];
    disputed.sort();
    assert_eq!(contracts, disputed);
}
