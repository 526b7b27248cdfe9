//! The seed guide's five steps and every question of its FAQ, each answered
//! by what the real binaries (supplier-registry, contract, escrow, dispute on
//! one Postgres) do when driven through the real grpcurl. Every scenario
//! checks the money (what escrow's statement puts on the buyer's, the
//! supplier's and escrow's ledger accounts), the contract's and the claim's
//! states, the supplier's standing, and the timelines both parties read.
//!
//! | The seed asks | Answered by |
//! |---|---|
//! | The five steps; how does Trade Assurance work? | `the_five_steps_...` |
//! | Can I use it for all transactions? What if the supplier doesn't offer it? | `a_supplier_without_trade_assurance_...` |
//! | Is it available for bulk orders? (the coverage limit) | `bulk_orders_are_covered_...` |
//! | A refund if the products are damaged upon arrival? | `products_damaged_on_arrival_...` |
//! | What happens if the delivery is delayed? | `a_delayed_order_is_claimed_...` |
//! | How can I make sure my products meet quality standards? | `quality_below_the_contract_...`, `a_third_party_inspection_...` |
//! | Other payment options: Pay Later | `pay_later_is_funded_...` |
//! | Other payment options: bank transfer | `a_bank_transfer_credited_after_it_expired_...`, `a_bank_transfer_still_pending_...` |
//!
//! The remaining tests pin the edge cases these stories ran into (a bank
//! credit racing the cancellation, a short credit, a re-signed webhook, a
//! claim on criteria the contract lacks, a protection revised in a draft, an
//! order signed again after a refused activation); each failed against the
//! services until they were fixed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e_tests::{platform::*, scenario::*, *};
use ta_proto::dispute as pb;

const AGENCY: &str = "agency-sgs";

fn party_tokens(buyer: &str, owner: &str) -> (String, String) {
    (mint(buyer, Role::Buyer), mint(owner, Role::Supplier))
}

/// Days of the dispute windows last a second; negotiation two "days",
/// automatic escalation far off unless changed.
fn fast_dispute(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("DISPUTE_TERM_DAY", "1s"),
        ("DISPUTE_NEGOTIATION_DAYS", "2"),
        ("DISPUTE_AUTO_ESCALATION_DAYS", "60"),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v));
    }
    env
}

fn with_inspection(mut terms: Value) -> Value {
    terms["inspection"] = json!({
        "kind": "INSPECTION_KIND_PRE_SHIPMENT_THIRD_PARTY", "agency_name": "SGS", "agency_principal_id": AGENCY
    });
    terms
}

/// An inspection report with one result per criterion: (criterion, measured, outcome).
fn report(contract_id: &str, key: &str, results: &[(&str, &str, &str)]) -> Value {
    let results: Vec<Value> = results
        .iter()
        .map(|(criterion, measured, outcome)| {
            json!({ "criterion_id": criterion, "outcome": outcome, "measured_value": measured })
        })
        .collect();
    json!({
        "idempotency_key": key,
        "contract_id": contract_id,
        "agency_reference": format!("SGS-{key}"),
        "inspected_at": at(Duration::from_secs(0)),
        "results": results,
        "summary": "AQL 2.5 sampling of 125 units"
    })
}

fn ship(platform: &Platform, supplier: &str, id: &str) -> Result<Value, RpcError> {
    platform.contract_call(
        "RecordShipment",
        supplier,
        &json!({ "idempotency_key": format!("ship-{id}"), "contract_id": id, "carrier": "Maersk",
                 "tracking_number": "MAEU1234567", "final": true }),
    )
}

fn receive(platform: &Platform, buyer: &str, id: &str) -> Value {
    platform.contract_ok(
        "ConfirmReceipt",
        buyer,
        &json!({ "idempotency_key": format!("receipt-{id}"), "contract_id": id }),
    )
}

fn review(
    platform: &Platform,
    buyer: &str,
    supplier_id: &str,
    id: &str,
    rating: u32,
) -> Result<Value, RpcError> {
    platform.registry.call(
        &registry_method("SubmitReview"),
        Some(buyer),
        &json!({ "idempotency_key": format!("review-{id}"), "supplier_id": supplier_id, "contract_id": id,
                 "rating": rating, "comment": "as agreed" }),
    )
}

/// The supplier as a buyer searching with these filters finds it (or not).
fn found_by_search(platform: &Platform, buyer: &str, filters: &Value, supplier_id: &str) -> bool {
    let found =
        platform
            .registry
            .call_ok(&registry_method("SearchSuppliers"), Some(buyer), filters);
    found["suppliers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["supplierId"] == supplier_id)
}

// ---- The seed's five steps --------------------------------------------------------

#[test]
fn the_five_steps_verify_the_supplier_agree_the_specification_pay_into_escrow_ship_and_release_or_claim()
 {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let owner = "supplier-five-steps";
    let (buyer, supplier) = party_tokens("buyer-five-steps", owner);
    let trust_safety = platform.staff.trust_safety.clone();

    // 1. Verify that the supplier offers Trade Assurance: registered, it has
    // no badge; verified and enrolled with a limit, buyers find it by badge,
    // verification and remaining limit.
    let registered = platform.registry.call_ok(
        &registry_method("RegisterSupplier"),
        Some(&supplier),
        &json!({ "idempotency_key": "register", "legal_name": "Jingdezhen Ceramics Co.", "country_code": "CN",
                 "business_licence_number": "91360200MA35XYZ12K",
                 "contacts": [{ "name": "Li Wei", "email": "sales@example.com" }] }),
    );
    let supplier_id = registered["supplier"]["supplierId"]
        .as_str()
        .expect("supplierId")
        .to_owned();
    let unverified = platform.standing(&supplier_id);
    assert!(!unverified.badge, "{unverified:?}");
    let badge_search = json!({ "has_trade_assurance_badge": true, "verified": true,
                               "min_cover_remaining": usd(370_000) });
    assert!(!found_by_search(
        &platform,
        &buyer,
        &badge_search,
        &supplier_id
    ));
    platform.registry.call_ok(
        &registry_method("SubmitVerification"),
        Some(&supplier),
        &json!({ "idempotency_key": "submit", "supplier_id": supplier_id }),
    );
    platform.registry.call_ok(
        &registry_method("VerifySupplier"),
        Some(&trust_safety),
        &json!({ "idempotency_key": "verify", "supplier_id": supplier_id,
                 "reason": "business licence 91360200MA35XYZ12K matches the registry" }),
    );
    platform.registry.call_ok(
        &registry_method("EnrollTradeAssurance"),
        Some(&trust_safety),
        &json!({ "idempotency_key": "enrol", "supplier_id": supplier_id, "ta_limit": usd(1_000_000),
                 "reason": "factory audit passed; limit per the export volume" }),
    );
    let public = platform.registry.call_ok(
        &registry_method("GetSupplier"),
        Some(&buyer),
        &json!({ "supplier_id": supplier_id }),
    )["supplier"]
        .clone();
    assert_eq!(public["tradeAssuranceBadge"], true, "{public:#}");
    assert_eq!(public["verificationStatus"], "VERIFICATION_STATUS_VERIFIED");
    assert_eq!(int(&public["coverRemaining"]["amountMinor"]), 1_000_000);
    assert_eq!(public["privateView"], false, "a buyer sees the public view");
    assert!(found_by_search(
        &platform,
        &buyer,
        &badge_search,
        &supplier_id
    ));

    // 2. Review the agreement: the buyer drafts, the supplier revises the
    // quantity and adds a specification; both sign the latest version only.
    let mut v1 = terms("PROTECTION_TRADE_ASSURANCE");
    v1["title"] = json!("Stoneware mugs, 1,000 pcs");
    let created = platform.contract_ok(
        "CreateContractDraft",
        &buyer,
        &json!({ "idempotency_key": "draft", "supplier_id": supplier_id, "terms": v1 }),
    );
    let id = created["contract"]["contractId"]
        .as_str()
        .expect("contractId")
        .to_owned();
    assert_eq!(created["contract"]["status"], "CONTRACT_STATUS_DRAFT");
    let mut v2 = v1.clone();
    v2["title"] = json!("Stoneware mugs, 1,200 pcs");
    v2["line_items"][0]["quantity"] = json!(1200);
    v2["specifications"]
        .as_array_mut()
        .expect("specifications")
        .push(json!({ "sku": "MUG-350", "name": "handle", "value": "C-shaped, 2 finger" }));
    let revised = platform.contract_ok(
        "ReviseContractDraft",
        &supplier,
        &json!({ "idempotency_key": "revise", "contract_id": id, "base_version": 1, "terms": v2,
                 "change_note": "1,200 pcs as discussed; handle shape written down" }),
    );
    assert_eq!(revised["version"]["version"], 2);
    let stale = platform
        .contract_call(
            "SignContract",
            &buyer,
            &json!({ "idempotency_key": "sign-v1", "contract_id": id, "version": 1 }),
        )
        .expect_err("only the latest version is signed");
    assert_eq!(stale.code, "FailedPrecondition", "{stale:#?}");
    assert!(stale.message.contains("not the latest"), "{stale:#?}");
    for (who, key) in [(&supplier, "sign-supplier"), (&buyer, "sign-buyer")] {
        platform.contract_ok(
            "SignContract",
            who,
            &json!({ "idempotency_key": key, "contract_id": id, "version": 2 }),
        );
    }
    let account = platform.account_id_of(&id);
    let signed = platform.contract_ok("GetContract", &buyer, &json!({ "contract_id": id }));
    assert_eq!(signed["contract"]["signedVersion"], 2);
    assert_eq!(int(&signed["contract"]["total"]["amountMinor"]), 370_000);
    let signed_terms = &signed["version"]["terms"];
    assert_eq!(
        signed_terms["specifications"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(signed_terms["qualityCriteria"][0]["criterionId"], "QC-1");
    assert_eq!(platform.cover(&supplier_id), (370_000, 630_000));
    assert_eq!(
        platform.balances(&account),
        Balances::default(),
        "nothing paid yet"
    );

    // 3. Make the payment through Trade Assurance: 30 % deposit, then the
    // balance, both into escrow.
    platform.pay_by_card(&buyer, &account, "deposit", 111_000);
    platform.wait_status(&id, "CONTRACT_STATUS_PARTIALLY_FUNDED");
    assert_eq!(
        platform.balances(&account),
        Balances {
            escrow_held: 111_000,
            gateway_clearing: -111_000,
            ..Balances::default()
        }
    );
    platform.pay_by_card(&buyer, &account, "balance", 259_000);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    let funded = Balances {
        escrow_held: 370_000,
        gateway_clearing: -370_000,
        ..Balances::default()
    };
    assert_eq!(platform.balances(&account), funded);

    // 4. The supplier ships; the buyer confirms receipt and inspects. A
    // review waits for a completed contract.
    let shipped = ship(&platform, &supplier, &id).expect("a funded order ships");
    assert_eq!(shipped["contract"]["status"], "CONTRACT_STATUS_SHIPPED");
    let received = receive(&platform, &buyer, &id);
    assert_eq!(received["contract"]["status"], "CONTRACT_STATUS_DELIVERED");
    assert!(received["contract"]["claimWindowEndsAt"].is_string());
    assert_eq!(platform.balances(&account), funded, "held while inspected");
    let early = review(&platform, &buyer, &supplier_id, &id, 5).expect_err("not completed yet");
    assert_eq!(early.code, "NotFound", "{early:#?}");

    // 5. Satisfied, the buyer accepts: the money goes to the supplier, the
    // cover is free, and the buyer may review the supplier once.
    let accepted = platform.contract_ok(
        "AcceptGoods",
        &buyer,
        &json!({ "idempotency_key": "accept", "contract_id": id, "note": "glaze and handles as agreed" }),
    );
    assert_eq!(accepted["contract"]["status"], "CONTRACT_STATUS_COMPLETED");
    assert_eq!(
        accepted["contract"]["acceptance"],
        "ACCEPTANCE_KIND_EXPLICIT"
    );
    platform.wait_account_status(&id, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        platform.balances(&account),
        Balances {
            supplier_payable: 370_000,
            gateway_clearing: -370_000,
            ..Balances::default()
        }
    );
    platform.wait_cover(&supplier_id, (0, 1_000_000));
    let reviewed = wait_until(
        PATIENCE,
        "the completed contract to reach the registry",
        || review(&platform, &buyer, &supplier_id, &id, 5).map_err(|e| format!("{e:#?}")),
    );
    assert_eq!(reviewed["review"]["rating"], 5);
    let twice = platform
        .registry
        .call(
            &registry_method("SubmitReview"),
            Some(&buyer),
            &json!({ "idempotency_key": "review-again", "supplier_id": supplier_id, "contract_id": id,
                     "rating": 1, "comment": "changed my mind" }),
        )
        .expect_err("once per contract");
    assert_eq!(twice.code, "AlreadyExists", "{twice:#?}");
    assert_eq!(
        platform.timeline_actions(&id),
        [
            "draft.created",
            "draft.revised",
            "contract.signed",
            "contract.signed",
            "cover.reserved",
            "contract.activated",
            "payment.received",
            "payment.received",
            "goods.shipped",
            "goods.received",
            "goods.accepted",
        ],
        "the contract's story in order"
    );

    // 5'. File a claim if necessary: on the next order 100 mugs are missing;
    // the buyer claims with a photo, the supplier offers what they cost, the
    // buyer takes it. Settled between the parties: no penalty.
    let mut prepaid = terms("PROTECTION_TRADE_ASSURANCE");
    prepaid["payment_terms"] = full_prepayment(5);
    let (second, second_account) = platform.deliver(&buyer, &supplier, &supplier_id, &prepaid);
    let claim_id = open_claim(
        &dispute,
        &buyer,
        "claim-short",
        &json!({ "contract_id": second, "reason": "CLAIM_REASON_SHORT_QUANTITY",
                 "amount_claimed": usd(30_000), "description": "900 of 1,000 mugs arrived" }),
    );
    assert_eq!(
        platform.get_contract(&second)["status"],
        "CONTRACT_STATUS_IN_DISPUTE"
    );
    let photo = b"carton count photo, 9 of 10 cartons opened".repeat(100);
    upload_evidence(
        &dispute,
        &buyer,
        &EvidenceFile {
            key: "photo",
            claim_id: &claim_id,
            kind: pb::EvidenceKind::Photo,
            filename: "cartons.jpg",
            content_type: "image/jpeg",
            description: "the opened cartons",
            quality_criterion_ids: &[],
            bytes: &photo,
        },
    )
    .expect("the photo uploads");
    let offer = dcall_ok(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer", "claim_id": claim_id, "kind": "OFFER_KIND_PARTIAL_REFUND",
                 "refund_amount": usd(30_000), "message": "we refund the 100 missing mugs" }),
    );
    let settled = dcall_ok(
        &dispute,
        "AcceptOffer",
        &buyer,
        &json!({ "idempotency_key": "take", "claim_id": claim_id, "offer_id": offer["offer"]["offerId"] }),
    );
    assert_eq!(settled["claim"]["status"], "CLAIM_STATUS_SETTLED");
    let done = wait_claim_effects(&dispute, &buyer, &claim_id);
    assert_eq!(done["resolution"]["penaltyPoints"], 0, "{done:#}");
    let completed = platform.wait_status(&second, "CONTRACT_STATUS_COMPLETED");
    assert_eq!(completed["acceptance"], "ACCEPTANCE_KIND_CLAIM_OUTCOME");
    platform.wait_account_status(&second, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        platform.balances(&second_account),
        Balances {
            buyer_refund_payable: 30_000,
            supplier_payable: 280_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
    assert_eq!(
        claim_timeline(&dispute, &supplier, &claim_id),
        [
            "claim.filed",
            "claim.opened",
            "evidence.added",
            "offer.made",
            "claim.settled",
            "claim.effects_completed"
        ]
    );
    let actions = platform.timeline_actions(&second);
    assert!(
        in_order(
            &actions,
            &[
                "goods.received",
                "claim.recorded",
                "claim.opened",
                "claim.settled"
            ]
        ),
        "{actions:?}"
    );
    platform.wait_cover(&supplier_id, (0, 1_000_000));
    let standing = platform.standing(&supplier_id);
    assert_eq!(
        (
            standing.status.as_str(),
            standing.penalty_points,
            standing.ta_limit
        ),
        ("SUPPLIER_STATUS_ACTIVE", 0, 1_000_000),
        "{standing:?}"
    );
    assert_eq!(
        (standing.review_count, standing.average_rating_centi),
        (1, 500)
    );
    platform.assert_ledger_reconciles();
}

// ---- Can I use Trade Assurance for all transactions? What if the supplier
// ---- doesn't offer it? -----------------------------------------------------------

#[test]
fn a_supplier_without_trade_assurance_gets_no_protected_contract_only_an_unprotected_inspected_order()
 {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let owner = "supplier-no-ta";
    let (buyer, supplier) = party_tokens("buyer-no-ta", owner);
    let inspector = mint(AGENCY, Role::Inspector);
    // Verified, but not enrolled: no badge, no limit, not found by badge.
    let supplier_id = platform.supplier(owner, None);
    let standing = platform.standing(&supplier_id);
    assert!(!standing.badge, "{standing:?}");
    assert_eq!((standing.ta_limit, standing.cover_remaining), (0, 0));
    assert!(!found_by_search(
        &platform,
        &buyer,
        &json!({ "has_trade_assurance_badge": true }),
        &supplier_id
    ));
    assert!(found_by_search(
        &platform,
        &buyer,
        &json!({ "has_trade_assurance_badge": false, "verified": true }),
        &supplier_id
    ));

    // A Trade Assurance contract is refused at activation, with the reason.
    let id = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &terms("PROTECTION_TRADE_ASSURANCE"),
    );
    let refused = wait_until(PATIENCE, "the activation to be refused", || {
        let c = platform.get_contract(&id);
        if c["status"] == "CONTRACT_STATUS_DRAFT" && c["activationRefusal"].is_string() {
            Ok(c)
        } else {
            Err(format!("{c:#}"))
        }
    });
    let reason = refused["activationRefusal"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("NO_TRADE_ASSURANCE_BADGE: "),
        "{refused:#}"
    );
    assert!(reason.contains("not enrolled"), "{reason}");
    let no_escrow = platform
        .escrow
        .call(
            &escrow_method("GetEscrowAccount"),
            Some(&platform.staff.platform),
            &json!({ "contract_id": id }),
        )
        .expect_err("no escrow");
    assert_eq!(no_escrow.code, "NotFound", "{no_escrow:#?}");
    let unclaimable = dcall(
        &dispute,
        "FileClaim",
        &buyer,
        &json!({ "idempotency_key": "claim-draft", "contract_id": id, "reason": "CLAIM_REASON_DAMAGE",
                 "amount_claimed": usd(1000), "description": "nothing to claim yet" }),
    )
    .expect_err("nothing protected");
    assert_eq!(unclaimable.code, "FailedPrecondition", "{unclaimable:#?}");

    // The FAQ's advice: an order outside Trade Assurance with a third-party
    // inspection before shipment. Recorded as unprotected: no escrow, no cover.
    // (A new draft: revising the refused one out of Trade Assurance does not
    // stick, see the test below.)
    let mut plain = with_inspection(terms("PROTECTION_NONE"));
    plain["payment_terms"] = full_prepayment(5);
    let refused_id = id;
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &plain);
    let unprotected = platform.get_contract(&id);
    assert_eq!(unprotected["status"], "CONTRACT_STATUS_SIGNED_UNPROTECTED");
    assert_eq!(unprotected["protection"], "PROTECTION_NONE");
    assert!(
        unprotected["escrowAccountId"]
            .as_str()
            .is_none_or(str::is_empty)
    );
    assert_eq!(platform.cover(&supplier_id), (0, 0));
    assert_eq!(
        platform.get_contract(&refused_id)["status"],
        "CONTRACT_STATUS_DRAFT",
        "the refused one stays a draft"
    );

    // The inspection still guards the shipment.
    let assignments = platform.contract_ok("ListInspectionAssignments", &inspector, &json!({}));
    assert_eq!(
        assignments["contracts"][0]["contractId"],
        id.as_str(),
        "{assignments:#}"
    );
    platform.contract_ok(
        "SubmitInspectionReport",
        &inspector,
        &report(&id, "r1", &[("QC-1", "3.6", "CRITERION_OUTCOME_FAIL")]),
    );
    let blocked = ship(&platform, &supplier, &id).expect_err("the inspection failed");
    assert_eq!(blocked.code, "FailedPrecondition", "{blocked:#?}");
    platform.contract_ok(
        "SubmitInspectionReport",
        &inspector,
        &report(&id, "r2", &[("QC-1", "4.1", "CRITERION_OUTCOME_PASS")]),
    );
    ship(&platform, &supplier, &id).expect("ships after the passing report");
    receive(&platform, &buyer, &id);

    // But no claim: an unprotected order has no escrow and no cover.
    let no_claim = dcall(
        &dispute,
        "FileClaim",
        &buyer,
        &json!({ "idempotency_key": "claim", "contract_id": id, "reason": "CLAIM_REASON_DAMAGE",
                 "amount_claimed": usd(10_000), "description": "two cartons crushed" }),
    )
    .expect_err("not protected");
    assert_eq!(no_claim.code, "FailedPrecondition", "{no_claim:#?}");
    assert!(
        no_claim.message.contains("Trade Assurance"),
        "{no_claim:#?}"
    );
    let listed = dcall_ok(
        &dispute,
        "ListClaims",
        &buyer,
        &json!({ "contract_id": id }),
    );
    assert!(
        listed["claims"].as_array().is_none_or(Vec::is_empty),
        "nothing was filed: {listed:#}"
    );
    let done = platform.contract_ok(
        "AcceptGoods",
        &buyer,
        &json!({ "idempotency_key": "accept", "contract_id": id }),
    );
    assert_eq!(done["contract"]["status"], "CONTRACT_STATUS_COMPLETED");

    // No money ever entered the ledger; the supplier's standing is unchanged.
    let trial = platform.escrow.call_ok(
        &escrow_method("GetTrialBalance"),
        Some(&platform.staff.finance),
        &json!({}),
    );
    let moved: i64 = trial["currencies"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["lines"].as_array().cloned().unwrap_or_default())
        .map(|l| int(&l["posted"]["amountMinor"]).abs() + int(&l["pending"]["amountMinor"]).abs())
        .sum();
    assert_eq!(moved, 0, "{trial:#}");
    platform.assert_ledger_reconciles();
    let after = platform.standing(&supplier_id);
    assert_eq!(after, standing, "nothing changed for the supplier");
    let actions = platform.timeline_actions(&id);
    assert!(
        in_order(
            &actions,
            &[
                "draft.created",
                "contract.signed",
                "contract.signed_unprotected",
                "inspection.reported",
                "inspection.reported",
                "goods.shipped",
                "goods.received",
                "goods.accepted"
            ]
        ),
        "{actions:?}"
    );
}

/// Revises a draft of `base` version to `terms`, then both parties sign the new version.
fn revise_and_sign(
    platform: &Platform,
    buyer: &str,
    supplier: &str,
    id: &str,
    base: u32,
    terms: &Value,
) {
    platform.contract_ok(
        "ReviseContractDraft",
        buyer,
        &json!({ "idempotency_key": format!("revise-{id}-{base}"), "contract_id": id, "base_version": base,
                 "terms": terms, "change_note": "protection changed" }),
    );
    for (who, key) in [(supplier, "s"), (buyer, "b")] {
        platform.contract_ok(
            "SignContract",
            who,
            &json!({ "idempotency_key": format!("sign-{id}-{key}-{}", base + 1), "contract_id": id,
                     "version": base + 1 }),
        );
    }
}

#[test]
fn a_draft_revised_into_or_out_of_trade_assurance_is_signed_as_its_latest_version_says() {
    let platform = Platform::start(&[]);
    let owner = "supplier-revised";
    let (buyer, supplier) = party_tokens("buyer-revised", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));

    // Drafted under Trade Assurance, revised out of it before signing.
    let out = platform.contract_ok(
        "CreateContractDraft",
        &buyer,
        &json!({ "idempotency_key": "draft-out", "supplier_id": supplier_id,
                 "terms": terms("PROTECTION_TRADE_ASSURANCE") }),
    )["contract"]["contractId"]
        .as_str()
        .expect("contractId")
        .to_owned();
    revise_and_sign(
        &platform,
        &buyer,
        &supplier,
        &out,
        1,
        &terms("PROTECTION_NONE"),
    );
    let signed = platform.contract_ok("GetContract", &buyer, &json!({ "contract_id": out }));
    assert_eq!(signed["version"]["terms"]["protection"], "PROTECTION_NONE");
    assert_eq!(
        signed["contract"]["protection"], "PROTECTION_NONE",
        "the contract follows the version both signed: {signed:#}"
    );
    assert_eq!(
        signed["contract"]["status"],
        "CONTRACT_STATUS_SIGNED_UNPROTECTED"
    );

    // Drafted unprotected, revised into Trade Assurance before signing.
    let into = platform.contract_ok(
        "CreateContractDraft",
        &buyer,
        &json!({ "idempotency_key": "draft-in", "supplier_id": supplier_id,
                 "terms": terms("PROTECTION_NONE") }),
    )["contract"]["contractId"]
        .as_str()
        .expect("contractId")
        .to_owned();
    revise_and_sign(
        &platform,
        &buyer,
        &supplier,
        &into,
        1,
        &terms("PROTECTION_TRADE_ASSURANCE"),
    );
    let signed = platform.contract_ok("GetContract", &buyer, &json!({ "contract_id": into }));
    assert_eq!(
        signed["version"]["terms"]["protection"],
        "PROTECTION_TRADE_ASSURANCE"
    );
    assert_eq!(
        signed["contract"]["protection"], "PROTECTION_TRADE_ASSURANCE",
        "the buyer signed a protected order: {signed:#}"
    );
    platform.account_id_of(&into);
    assert_eq!(platform.cover(&supplier_id), (310_000, 690_000));
}

// ---- Is Trade Assurance available for bulk orders? --------------------------------

/// Terms for `mugs` mugs and `cartons` cartons, paid in full up front.
fn bulk(mugs: u64, cartons: u64) -> Value {
    let mut bulk = terms("PROTECTION_TRADE_ASSURANCE");
    bulk["title"] = json!(format!("{mugs} stoneware mugs"));
    bulk["line_items"][0]["quantity"] = json!(mugs);
    bulk["line_items"][1]["quantity"] = json!(cartons);
    bulk["payment_terms"] = full_prepayment(30);
    bulk
}

fn wait_refused(platform: &Platform, id: &str) -> Value {
    wait_until(PATIENCE, "the activation to be refused", || {
        let c = platform.get_contract(id);
        if c["status"] == "CONTRACT_STATUS_DRAFT" && c["activationRefusal"].is_string() {
            Ok(c)
        } else {
            Err(format!("{c:#}"))
        }
    })
}

#[test]
fn bulk_orders_are_covered_within_the_ta_limit_and_refused_beyond_it_with_the_figures() {
    let platform = Platform::start(&[]);
    let owner = "supplier-bulk";
    let (buyer, supplier) = party_tokens("buyer-bulk", owner);
    let supplier_id = platform.supplier(owner, Some(5_000_000));
    let search = |min: i64| {
        found_by_search(
            &platform,
            &buyer,
            &json!({ "has_trade_assurance_badge": true, "min_cover_remaining": usd(min) }),
            &supplier_id,
        )
    };

    // 10,000 mugs and 400 cartons: 34,000.00 USD of the 50,000.00 USD limit.
    let big = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &bulk(10_000, 400),
    );
    let big_account = platform.account_id_of(&big);
    assert_eq!(platform.cover(&supplier_id), (3_400_000, 1_600_000));
    let standing = platform.standing(&supplier_id);
    assert_eq!(
        (
            standing.ta_limit,
            standing.cover_reserved,
            standing.cover_remaining
        ),
        (5_000_000, 3_400_000, 1_600_000)
    );
    assert!(search(1_600_000), "found by what is left");
    assert!(!search(1_600_001), "not found by more than is left");

    // 6,000 mugs and 200 cartons (20,000.00 USD) exceed what is left: refused
    // with the registry's figures, nothing reserved, no escrow.
    let over = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &bulk(6_000, 200),
    );
    let refused = wait_refused(&platform, &over);
    let reason = refused["activationRefusal"].as_str().unwrap_or_default();
    assert!(reason.starts_with("TA_LIMIT_EXCEEDED: "), "{refused:#}");
    assert!(
        (reason.contains("2000000") || reason.contains("20,000.00"))
            && (reason.contains("1600000") || reason.contains("16,000.00")),
        "the order and the remaining limit: {reason}"
    );
    assert_eq!(platform.cover(&supplier_id), (3_400_000, 1_600_000));
    assert!(
        !platform
            .cover_reservations(&supplier_id)
            .contains_key(&over)
    );

    // Cut to 5,000 mugs and 100 cartons (16,000.00 USD): exactly what is left.
    let mut fits = bulk(5_000, 100);
    fits["title"] = json!("5,000 stoneware mugs (within the limit)");
    platform.contract_ok(
        "ReviseContractDraft",
        &buyer,
        &json!({ "idempotency_key": "cut", "contract_id": over, "base_version": 1, "terms": fits,
                 "change_note": "cut to the supplier's remaining Trade Assurance limit" }),
    );
    for (who, key) in [(&supplier, "sign-s"), (&buyer, "sign-b")] {
        platform.contract_ok(
            "SignContract",
            who,
            &json!({ "idempotency_key": key, "contract_id": over, "version": 2 }),
        );
    }
    platform.account_id_of(&over);
    assert_eq!(platform.cover(&supplier_id), (5_000_000, 0));
    assert!(!search(1), "nothing left to cover");

    // A small order now finds no limit left...
    let small = signed_contract(&platform, &buyer, &supplier, &supplier_id, &bulk(1_000, 10));
    let small_refused = wait_refused(&platform, &small);
    assert!(
        small_refused["activationRefusal"]
            .as_str()
            .is_some_and(|r| r.starts_with("TA_LIMIT_EXCEEDED: ")),
        "{small_refused:#}"
    );

    // ... until the big order completes and frees its cover.
    platform.pay_by_card(&buyer, &big_account, "full", 3_400_000);
    platform.wait_status(&big, "CONTRACT_STATUS_FUNDED");
    ship(&platform, &supplier, &big).expect("ships");
    receive(&platform, &buyer, &big);
    platform.contract_ok(
        "AcceptGoods",
        &buyer,
        &json!({ "idempotency_key": "accept", "contract_id": big }),
    );
    platform.wait_cover(&supplier_id, (1_600_000, 3_400_000));
    assert_eq!(
        platform.balances(&big_account),
        Balances {
            supplier_payable: 3_400_000,
            gateway_clearing: -3_400_000,
            ..Balances::default()
        }
    );
    let next = signed_contract(&platform, &buyer, &supplier, &supplier_id, &bulk(1_000, 10));
    platform.account_id_of(&next);
    assert_eq!(platform.cover(&supplier_id), (1_910_000, 3_090_000));
    let reservations = platform.cover_reservations(&supplier_id);
    assert_eq!(
        reservations,
        [(over.clone(), 1_600_000), (next.clone(), 310_000)]
            .into_iter()
            .collect(),
        "one reservation per open order, for its total"
    );
    assert_eq!(
        platform.get_contract(&small)["status"],
        "CONTRACT_STATUS_DRAFT",
        "the refused order holds no cover"
    );
    let actions = platform.timeline_actions(&over);
    assert!(
        in_order(
            &actions,
            &[
                "contract.signed",
                "contract.signed",
                "contract.activation_refused",
                "draft.revised",
                "contract.signed",
                "contract.signed",
                "cover.reserved",
                "contract.activated"
            ]
        ),
        "{actions:?}"
    );
    platform.assert_ledger_reconciles();
}

#[test]
fn an_order_refused_for_the_limit_activates_when_both_sign_it_again_once_cover_is_free() {
    let platform = Platform::start(&[]);
    let owner = "supplier-resign";
    let (buyer, supplier) = party_tokens("buyer-resign", owner);
    let supplier_id = platform.supplier(owner, Some(400_000));
    let first = signed_contract(&platform, &buyer, &supplier, &supplier_id, &bulk(1_000, 10));
    platform.account_id_of(&first);
    let second = signed_contract(&platform, &buyer, &supplier, &supplier_id, &bulk(1_000, 10));
    let refused = wait_refused(&platform, &second);
    assert!(
        refused["signatures"].as_array().is_none_or(Vec::is_empty),
        "{refused:#}"
    );

    // The first order is cancelled before funding: its cover is free.
    platform.contract_ok(
        "CancelContract",
        &buyer,
        &json!({ "idempotency_key": "cancel", "contract_id": first, "reason": "ordered twice" }),
    );
    platform.wait_cover(&supplier_id, (0, 400_000));

    // Both sign the refused order's version again: it activates this time.
    for (who, key) in [(&supplier, "again-s"), (&buyer, "again-b")] {
        platform.contract_ok(
            "SignContract",
            who,
            &json!({ "idempotency_key": key, "contract_id": second, "version": 1 }),
        );
    }
    // A generous bound: the outbox polls every 100 ms.
    let activated = wait_until(
        Duration::from_secs(20),
        "the second activation to end",
        || {
            let c = platform.get_contract(&second);
            if c["status"] == "CONTRACT_STATUS_ACTIVATING" {
                Err(format!("{c:#}"))
            } else {
                Ok(c)
            }
        },
    );
    assert_eq!(
        activated["status"], "CONTRACT_STATUS_AWAITING_PAYMENT",
        "{activated:#}"
    );
    assert_eq!(platform.cover(&supplier_id), (310_000, 90_000));
}

// ---- Can I get a refund if the products are damaged upon arrival? -----------------

fn prepaid() -> Value {
    let mut prepaid = terms("PROTECTION_TRADE_ASSURANCE");
    prepaid["payment_terms"] = full_prepayment(5);
    prepaid
}

fn evidence<'a>(
    key: &'a str,
    claim_id: &'a str,
    kind: pb::EvidenceKind,
    bytes: &'a [u8],
) -> EvidenceFile<'a> {
    let (filename, content_type) = match kind {
        pb::EvidenceKind::Photo => ("photo.jpg", "image/jpeg"),
        pb::EvidenceKind::Video => ("video.mp4", "video/mp4"),
        _ => ("report.pdf", "application/pdf"),
    };
    EvidenceFile {
        key,
        claim_id,
        kind,
        filename,
        content_type,
        description: key,
        quality_criterion_ids: &[],
        bytes,
    }
}

/// The buyer escalates as soon as the negotiation window allows.
fn escalate_when_allowed(dispute: &Service, buyer: &str, claim_id: &str) -> Value {
    wait_until(PATIENCE, "the buyer's escalation", || {
        dcall(
            dispute,
            "EscalateClaim",
            buyer,
            &json!({ "idempotency_key": format!("escalate-{claim_id}"), "claim_id": claim_id,
                     "reason": "no agreement" }),
        )
        .map_err(|e| format!("{e:#?}"))
    })
}

#[test]
fn products_damaged_on_arrival_are_refunded_in_full_after_a_damage_claim_with_photos() {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let owner = "supplier-damaged";
    let (buyer, supplier) = party_tokens("buyer-damaged", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (id, account) = platform.deliver(&buyer, &supplier, &supplier_id, &prepaid());

    // The buyer claims everything back and returns the goods.
    let claim_id = open_claim(
        &dispute,
        &buyer,
        "claim",
        &json!({ "contract_id": id, "reason": "CLAIM_REASON_DAMAGE", "remedy": "REMEDY_RETURN_AND_REFUND",
                 "amount_claimed": usd(310_000),
                 "description": "31 of 40 cartons crushed on arrival, most mugs broken" }),
    );
    let open = get_claim(&dispute, &buyer, &claim_id);
    assert_eq!(open["remedy"], "REMEDY_RETURN_AND_REFUND");
    assert_eq!(open["supplierId"], supplier_id.as_str());
    let frozen = platform.escrow_account(&id)["account"].clone();
    assert_eq!(
        frozen["activeFreezes"][0]["claimId"],
        claim_id.as_str(),
        "{frozen:#}"
    );
    assert_eq!(int(&frozen["held"]["amountMinor"]), 310_000);
    let contract = platform.get_contract(&id);
    assert_eq!(contract["status"], "CONTRACT_STATUS_IN_DISPUTE");
    assert_eq!(contract["openClaimId"], claim_id.as_str());
    let no_accept = platform
        .contract_call(
            "AcceptGoods",
            &buyer,
            &json!({ "idempotency_key": "accept", "contract_id": id }),
        )
        .expect_err("the claim is open");
    assert_eq!(no_accept.code, "FailedPrecondition", "{no_accept:#?}");

    // Photos and a video of the arrival; the supplier offers a part; the
    // buyer rejects it, pointing at the photo.
    let photo = b"crushed carton photo".repeat(2_000);
    let video = b"unloading video frame".repeat(20_000);
    let photo_id = upload_evidence(
        &dispute,
        &buyer,
        &evidence("photo", &claim_id, pb::EvidenceKind::Photo, &photo),
    )
    .expect("uploads")
    .evidence_id;
    upload_evidence(
        &dispute,
        &buyer,
        &evidence("video", &claim_id, pb::EvidenceKind::Video, &video),
    )
    .expect("uploads");
    assert_eq!(
        get_claim(&dispute, &supplier, &claim_id)["evidenceCount"],
        2
    );
    let offer = dcall_ok(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer", "claim_id": claim_id, "kind": "OFFER_KIND_PARTIAL_REFUND",
                 "refund_amount": usd(50_000), "message": "the carrier broke a few cartons" }),
    );
    dcall_ok(
        &dispute,
        "RejectOffer",
        &buyer,
        &json!({ "idempotency_key": "reject", "claim_id": claim_id, "offer_id": offer["offer"]["offerId"],
                 "reason": "31 of 40 cartons, not a few", "counter_evidence_ids": [photo_id] }),
    );

    // No agreement: the buyer escalates; the arbiter looks at the photo and
    // decides a full refund against the supplier.
    let escalated = escalate_when_allowed(&dispute, &buyer, &claim_id);
    assert_eq!(escalated["claim"]["status"], "CLAIM_STATUS_ESCALATED");
    let (seen, bytes) =
        download_evidence(&dispute, &platform.staff.arbiter, &photo_id).expect("downloads");
    assert_eq!(bytes, photo);
    assert_eq!(
        seen.metadata.expect("metadata").sha256_hex,
        hex(&sha256(&photo))
    );
    dcall_ok(
        &dispute,
        "DecideClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "decide", "claim_id": claim_id, "outcome": "CLAIM_OUTCOME_FULL_REFUND",
                 "reason": "the photos show most of the lot broken on arrival; the goods go back at the supplier's cost" }),
    );
    let decided = wait_claim_effects(&dispute, &buyer, &claim_id);
    assert_eq!(decided["status"], "CLAIM_STATUS_DECIDED");
    assert_eq!(
        decided["resolution"]["outcome"],
        "CLAIM_OUTCOME_FULL_REFUND"
    );
    assert_eq!(
        int(&decided["resolution"]["refundAmount"]["amountMinor"]),
        310_000
    );
    assert_eq!(decided["resolution"]["penaltyPoints"], 12, "{decided:#}");

    // The money is back with the buyer, the cover free, the supplier penalised.
    platform.wait_status(&id, "CONTRACT_STATUS_REFUNDED");
    platform.wait_account_status(&id, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        platform.balances(&account),
        Balances {
            buyer_refund_payable: 310_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
    platform.wait_cover(&supplier_id, (0, 1_000_000));
    let standing = platform.standing(&supplier_id);
    assert_eq!(
        (
            standing.status.as_str(),
            standing.penalty_points,
            standing.ta_limit,
            standing.badge
        ),
        ("SUPPLIER_STATUS_ACTIVE", 12, 1_000_000, true),
        "{standing:?}"
    );
    let no_review =
        review(&platform, &buyer, &supplier_id, &id, 1).expect_err("refunded, not completed");
    assert_eq!(no_review.code, "NotFound", "{no_review:#?}");
    assert_eq!(
        claim_timeline(&dispute, &buyer, &claim_id),
        [
            "claim.filed",
            "claim.opened",
            "evidence.added",
            "evidence.added",
            "offer.made",
            "offer.rejected",
            "claim.escalated",
            "claim.decided",
            "claim.effects_completed"
        ]
    );
    let actions = platform.timeline_actions(&id);
    assert!(
        in_order(
            &actions,
            &[
                "goods.received",
                "claim.recorded",
                "claim.opened",
                "claim.refunded"
            ]
        ),
        "{actions:?}"
    );
    assert_eq!(actions.last().map(String::as_str), Some("claim.refunded"));
    platform.assert_ledger_reconciles();
}

// ---- What happens if the delivery is delayed? --------------------------------------

fn wait_action(platform: &Platform, id: &str, action: &str) {
    wait_until(PATIENCE, &format!("{id}: {action}"), || {
        let actions = platform.timeline_actions(id);
        if actions.iter().any(|a| a == action) {
            Ok(())
        } else {
            Err(format!("{actions:?}"))
        }
    });
}

#[test]
fn a_delayed_order_is_claimed_after_its_deadline_and_refunded_and_the_supplier_loses_standing() {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let owner = "supplier-delayed";
    let (buyer, supplier) = party_tokens("buyer-delayed", owner);
    let arbiter = platform.staff.arbiter.clone();
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let with_deadlines = |shipment: Duration, delivery: Duration| {
        let mut t = prepaid();
        t["shipment_deadline"] = json!(at(shipment));
        t["delivery_deadline"] = json!(at(delivery));
        t
    };
    // Never shipped; shipped late; shipped but never arrives.
    // Deadlines far enough ahead that signing and paying three orders (each
    // payment a call to the gateway) end before the first of them, however
    // slowly a loaded machine runs.
    let unshipped = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &with_deadlines(Duration::from_secs(15), days(30)),
    );
    let late = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &with_deadlines(Duration::from_secs(15), days(30)),
    );
    let lost = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &with_deadlines(Duration::from_secs(20), Duration::from_secs(30)),
    );
    let accounts: Vec<String> = [&unshipped, &late, &lost]
        .iter()
        .map(|id| platform.fund_by_card(&buyer, id))
        .collect();
    assert_eq!(platform.cover(&supplier_id), (930_000, 70_000));
    let shipped = ship(&platform, &supplier, &lost).expect("ships on time");
    assert_eq!(shipped["contract"]["shipments"][0]["late"], false);

    // Before the deadline a lateness claim is refused by the contract.
    let early = dcall_ok(
        &dispute,
        "FileClaim",
        &buyer,
        &json!({ "idempotency_key": "early", "contract_id": unshipped, "reason": "CLAIM_REASON_LATE_SHIPMENT",
                 "amount_claimed": usd(310_000), "description": "not shipped yet" }),
    );
    let refused = wait_claim_status(
        &dispute,
        &buyer,
        &claim_id_of(&early),
        "CLAIM_STATUS_REFUSED",
    );
    assert!(
        refused["refusalReason"]
            .as_str()
            .is_some_and(|r| r.starts_with("NOT_LATE: ")),
        "{refused:#}"
    );

    // Shipped and on its way: a non-delivery claim before the delivery
    // deadline is refused by the contract (asked now, while the deadline is
    // still well ahead however slowly the machine runs).
    let not_yet = dcall_ok(
        &dispute,
        "FileClaim",
        &buyer,
        &json!({ "idempotency_key": "lost-early", "contract_id": lost, "reason": "CLAIM_REASON_NON_DELIVERY",
                 "amount_claimed": usd(310_000), "description": "not here" }),
    );
    let refused = wait_claim_status(
        &dispute,
        &buyer,
        &claim_id_of(&not_yet),
        "CLAIM_STATUS_REFUSED",
    );
    assert!(
        refused["refusalReason"]
            .as_str()
            .is_some_and(|r| r.starts_with("DELIVERY_NOT_OVERDUE: ")),
        "{refused:#}"
    );

    // The deadline passes: one still unshipped, the other ships late.
    wait_action(&platform, &unshipped, "deadline.shipment_passed");
    wait_action(&platform, &late, "deadline.shipment_passed");
    let shipped_late = ship(&platform, &supplier, &late).expect("ships, late");
    assert_eq!(
        shipped_late["contract"]["shipments"][0]["late"], true,
        "{shipped_late:#}"
    );
    receive(&platform, &buyer, &late);

    // Unshipped: the buyer claims everything; the supplier rejects; the
    // arbiter refunds it all.
    let unshipped_claim = open_claim(
        &dispute,
        &buyer,
        "claim-unshipped",
        &json!({ "contract_id": unshipped, "reason": "CLAIM_REASON_LATE_SHIPMENT",
                 "amount_claimed": usd(310_000), "description": "nothing shipped by the deadline" }),
    );
    dcall_ok(
        &dispute,
        "RejectClaim",
        &supplier,
        &json!({ "idempotency_key": "reject", "claim_id": unshipped_claim,
                 "reason": "the factory was closed for the holidays" }),
    );
    escalate_when_allowed(&dispute, &buyer, &unshipped_claim);
    dcall_ok(
        &dispute,
        "DecideClaim",
        &arbiter,
        &json!({ "idempotency_key": "decide-unshipped", "claim_id": unshipped_claim,
                 "outcome": "CLAIM_OUTCOME_FULL_REFUND", "reason": "not shipped by the agreed deadline" }),
    );

    // Shipped late and received: a tenth back for the delay, the rest released.
    let late_claim = open_claim(
        &dispute,
        &buyer,
        "claim-late",
        &json!({ "contract_id": late, "reason": "CLAIM_REASON_LATE_SHIPMENT",
                 "amount_claimed": usd(62_000), "description": "shipped after the deadline; we missed the season" }),
    );
    dcall_ok(
        &dispute,
        "EscalateClaim",
        &arbiter,
        &json!({ "idempotency_key": "escalate-late", "claim_id": late_claim, "reason": "lateness is on record" }),
    );
    dcall_ok(
        &dispute,
        "DecideClaim",
        &arbiter,
        &json!({ "idempotency_key": "decide-late", "claim_id": late_claim, "outcome": "CLAIM_OUTCOME_PARTIAL_REFUND",
                 "refund_amount": usd(31_000), "reason": "shipped after the deadline: 10 % back" }),
    );

    // Shipped, never arrived: after the delivery deadline, a non-delivery claim.
    let mut attempt = 0;
    let lost_claim = wait_until(PATIENCE, "the delivery deadline to pass", || {
        attempt += 1;
        let filed = dcall_ok(
            &dispute,
            "FileClaim",
            &buyer,
            &json!({ "idempotency_key": format!("lost-{attempt}"), "contract_id": lost,
                     "reason": "CLAIM_REASON_NON_DELIVERY", "amount_claimed": usd(310_000),
                     "description": "the container never arrived" }),
        );
        let id = claim_id_of(&filed);
        let claim = wait_claim(&dispute, &buyer, &id, "opened or refused", |c| {
            c["status"] != "CLAIM_STATUS_OPENING"
        });
        if claim["status"] == "CLAIM_STATUS_NEGOTIATING" {
            Ok(id)
        } else {
            std::thread::sleep(Duration::from_millis(500));
            Err(format!("{claim:#}"))
        }
    });
    dcall_ok(
        &dispute,
        "EscalateClaim",
        &arbiter,
        &json!({ "idempotency_key": "escalate-lost", "claim_id": lost_claim, "reason": "carrier has no trace" }),
    );
    dcall_ok(
        &dispute,
        "DecideClaim",
        &arbiter,
        &json!({ "idempotency_key": "decide-lost", "claim_id": lost_claim, "outcome": "CLAIM_OUTCOME_FULL_REFUND",
                 "reason": "not delivered by the delivery deadline" }),
    );

    // The money of each: refunded, split, refunded.
    for claim in [&unshipped_claim, &late_claim, &lost_claim] {
        wait_claim_effects(&dispute, &buyer, claim);
    }
    platform.wait_status(&unshipped, "CONTRACT_STATUS_REFUNDED");
    platform.wait_status(&late, "CONTRACT_STATUS_COMPLETED");
    platform.wait_status(&lost, "CONTRACT_STATUS_REFUNDED");
    for id in [&unshipped, &late, &lost] {
        platform.wait_account_status(id, "ESCROW_ACCOUNT_STATUS_CLOSED");
    }
    let refunded = Balances {
        buyer_refund_payable: 310_000,
        gateway_clearing: -310_000,
        ..Balances::default()
    };
    assert_eq!(platform.balances(&accounts[0]), refunded);
    assert_eq!(
        platform.balances(&accounts[1]),
        Balances {
            buyer_refund_payable: 31_000,
            supplier_payable: 279_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
    assert_eq!(platform.balances(&accounts[2]), refunded);

    // 12 + 6 + 12 points reach the restriction threshold: restricted, its
    // limit lowered, no badge, no new Trade Assurance order.
    platform.wait_cover(&supplier_id, (0, 500_000));
    let standing = platform.standing(&supplier_id);
    assert_eq!(
        (
            standing.status.as_str(),
            standing.penalty_points,
            standing.ta_limit,
            standing.badge
        ),
        ("SUPPLIER_STATUS_RESTRICTED", 30, 500_000, false),
        "{standing:?}"
    );
    let next = signed_contract(&platform, &buyer, &supplier, &supplier_id, &prepaid());
    let refused = wait_refused(&platform, &next);
    assert!(
        refused["activationRefusal"]
            .as_str()
            .is_some_and(|r| r.starts_with("NO_TRADE_ASSURANCE_BADGE: ")),
        "{refused:#}"
    );

    let actions = platform.timeline_actions(&unshipped);
    assert!(
        in_order(
            &actions,
            &[
                "payment.received",
                "deadline.shipment_passed",
                "claim.recorded",
                "claim.opened",
                "claim.refunded"
            ]
        ),
        "{actions:?}"
    );
    let actions = platform.timeline_actions(&late);
    assert!(
        in_order(
            &actions,
            &[
                "deadline.shipment_passed",
                "goods.shipped",
                "goods.received",
                "claim.recorded",
                "claim.opened",
                "claim.settled"
            ]
        ),
        "{actions:?}"
    );
    assert!(in_order(
        &claim_timeline(&dispute, &buyer, &unshipped_claim),
        &[
            "claim.filed",
            "claim.opened",
            "claim.rejected_by_supplier",
            "claim.escalated",
            "claim.decided",
            "claim.effects_completed"
        ]
    ));
    platform.assert_ledger_reconciles();
}

// ---- How can I make sure my products meet quality standards? ----------------------

/// Terms with two measurable criteria: wall thickness 4.0 ± 0.3 mm (QC-1)
/// and lead release at most 0.5 mg/L (QC-2).
fn two_criteria(mut terms: Value) -> Value {
    terms["quality_criteria"]
        .as_array_mut()
        .expect("criteria")
        .push(json!({
            "criterion_id": "QC-2", "name": "Lead release", "sku": "MUG-350", "metric": "lead release",
            "method": "ISO 6486-1, 4 % acetic acid, 24 h", "comparator": "COMPARATOR_AT_MOST",
            "target_value": "0.5", "unit": "mg/L"
        }));
    terms
}

#[test]
fn quality_below_the_contract_is_claimed_against_its_criteria_with_an_inspection_report_and_decided()
 {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(
        store.path(),
        &fast_dispute(&[("DISPUTE_AUTO_ESCALATION_DAYS", "4")]),
    );
    let owner = "supplier-quality";
    let (buyer, supplier) = party_tokens("buyer-quality", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (id, account) = platform.deliver(&buyer, &supplier, &supplier_id, &two_criteria(prepaid()));
    let signed = platform.contract_ok("GetContract", &buyer, &json!({ "contract_id": id }));
    let criteria: Vec<&str> = signed["version"]["terms"]["qualityCriteria"]
        .as_array()
        .expect("criteria")
        .iter()
        .map(|c| c["criterionId"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(criteria, ["QC-1", "QC-2"]);

    // A quality claim names the criteria it is about.
    let vague = dcall(
        &dispute,
        "FileClaim",
        &buyer,
        &json!({ "idempotency_key": "vague", "contract_id": id, "reason": "CLAIM_REASON_QUALITY_MISMATCH",
                 "amount_claimed": usd(155_000), "description": "bad quality" }),
    )
    .expect_err("no criterion named");
    assert_eq!(vague.code, "InvalidArgument", "{vague:#?}");
    assert!(vague.stderr.contains("quality_criterion_ids"), "{vague:#?}");

    // The buyer's lab measured the walls at 3.2 mm: QC-1 fails.
    let claim_id = open_claim(
        &dispute,
        &buyer,
        "claim",
        &json!({ "contract_id": id, "reason": "CLAIM_REASON_QUALITY_MISMATCH", "quality_criterion_ids": ["QC-1"],
                 "amount_claimed": usd(155_000),
                 "description": "QC-1: walls measure 3.2 mm on average against 4.0 ± 0.3 mm; the mugs crack in the dishwasher" }),
    );
    let lab_report =
        b"%PDF-1.7 independent lab report: QC-1 wall thickness 3.2 mm (n=125), FAIL".repeat(50);
    let lab = upload_evidence(
        &dispute,
        &buyer,
        &EvidenceFile {
            quality_criterion_ids: &["QC-1"],
            ..evidence(
                "lab-report",
                &claim_id,
                pb::EvidenceKind::InspectionReport,
                &lab_report,
            )
        },
    )
    .expect("the lab report uploads");
    // The supplier answers with its own final inspection and rejects the claim.
    let own_report = b"%PDF-1.7 factory QC: QC-1 wall thickness 3.9 mm (n=5), PASS".repeat(50);
    let own = upload_evidence(
        &dispute,
        &supplier,
        &EvidenceFile {
            quality_criterion_ids: &["QC-1"],
            ..evidence(
                "factory-report",
                &claim_id,
                pb::EvidenceKind::InspectionReport,
                &own_report,
            )
        },
    )
    .expect("the factory report uploads");
    dcall_ok(
        &dispute,
        "RejectClaim",
        &supplier,
        &json!({ "idempotency_key": "reject", "claim_id": claim_id, "reason": "our final QC passed QC-1",
                 "counter_evidence_ids": [own.evidence_id] }),
    );

    // Nobody escalates: the claim escalates by itself and waits for an arbiter.
    let escalated = wait_claim_status(&dispute, &buyer, &claim_id, "CLAIM_STATUS_ESCALATED");
    assert_eq!(
        escalated["escalatedBy"]["role"], "ROLE_SERVICE",
        "{escalated:#}"
    );
    assert_eq!(escalated["qualityCriterionIds"], json!(["QC-1"]));
    assert_eq!(
        escalated["supplierCounterEvidenceIds"],
        json!([own.evidence_id])
    );
    let listed = dcall_ok(
        &dispute,
        "ListEvidence",
        &platform.staff.arbiter,
        &json!({ "claim_id": claim_id }),
    );
    let listed: Vec<(String, Value)> = listed["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .map(|e| {
            (
                e["metadata"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["metadata"]["qualityCriterionIds"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (
                "EVIDENCE_KIND_INSPECTION_REPORT".to_owned(),
                json!(["QC-1"])
            ),
            (
                "EVIDENCE_KIND_INSPECTION_REPORT".to_owned(),
                json!(["QC-1"])
            )
        ]
    );
    for (evidence_id, bytes) in [
        (&lab.evidence_id, &lab_report),
        (&own.evidence_id, &own_report),
    ] {
        let (_, downloaded) =
            download_evidence(&dispute, &platform.staff.arbiter, evidence_id).expect("downloads");
        assert_eq!(&downloaded, bytes);
    }

    // The arbiter weighs 125 samples against 5: half back, the rest released.
    dcall_ok(
        &dispute,
        "DecideClaim",
        &platform.staff.arbiter,
        &json!({ "idempotency_key": "decide", "claim_id": claim_id, "outcome": "CLAIM_OUTCOME_PARTIAL_REFUND",
                 "refund_amount": usd(155_000),
                 "reason": "QC-1 fails on the lab's 125 samples; the factory checked 5" }),
    );
    let decided = wait_claim_effects(&dispute, &buyer, &claim_id);
    assert_eq!(decided["resolution"]["penaltyPoints"], 6, "{decided:#}");
    assert!(
        decided["resolution"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("QC-1"))
    );
    let completed = platform.wait_status(&id, "CONTRACT_STATUS_COMPLETED");
    assert_eq!(completed["acceptance"], "ACCEPTANCE_KIND_CLAIM_OUTCOME");
    platform.wait_account_status(&id, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        platform.balances(&account),
        Balances {
            buyer_refund_payable: 155_000,
            supplier_payable: 155_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
    platform.wait_cover(&supplier_id, (0, 1_000_000));
    let standing = platform.standing(&supplier_id);
    assert_eq!(
        (
            standing.status.as_str(),
            standing.penalty_points,
            standing.ta_limit
        ),
        ("SUPPLIER_STATUS_ACTIVE", 6, 1_000_000),
        "{standing:?}"
    );
    wait_until(
        PATIENCE,
        "the buyer's review of the completed order",
        || review(&platform, &buyer, &supplier_id, &id, 2).map_err(|e| format!("{e:#?}")),
    );
    assert_eq!(
        claim_timeline(&dispute, &supplier, &claim_id),
        [
            "claim.filed",
            "claim.opened",
            "evidence.added",
            "evidence.added",
            "claim.rejected_by_supplier",
            "claim.escalated",
            "claim.decided",
            "claim.effects_completed"
        ]
    );
    platform.assert_ledger_reconciles();
}

#[test]
fn a_quality_claim_names_criteria_the_contract_has() {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let owner = "supplier-criteria";
    let (buyer, supplier) = party_tokens("buyer-criteria", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let (id, _) = platform.deliver(&buyer, &supplier, &supplier_id, &prepaid());
    let unknown = dcall(
        &dispute,
        "FileClaim",
        &buyer,
        &json!({ "idempotency_key": "unknown", "contract_id": id, "reason": "CLAIM_REASON_QUALITY_MISMATCH",
                 "quality_criterion_ids": ["QC-9"], "amount_claimed": usd(10_000),
                 "description": "QC-9 is not in this contract" }),
    );
    let refused = unknown.expect_err("QC-9 is not one of the contract's criteria (it has QC-1)");
    assert_eq!(refused.code, "InvalidArgument", "{refused:#?}");
    assert!(
        refused.message.contains("QC-9") || refused.stderr.contains("QC-9"),
        "{refused:#?}"
    );
}

// ---- Other payment options: Pay Later ---------------------------------------------

const PARTNER: &str = "partner-ant-credit";

fn pay_later_terms() -> Value {
    let mut t = terms("PROTECTION_TRADE_ASSURANCE");
    t["payment_terms"] = json!({
        "scheme": "PAYMENT_SCHEME_PAY_LATER",
        "milestones": [{ "milestone_id": "full", "share_basis_points": 10000,
                         "trigger": "PAYMENT_TRIGGER_AFTER_SIGNING", "due_days": 5 }],
        "pay_later": { "financing_partner_id": PARTNER, "repayment_months": 6 }
    });
    t
}

fn fund(
    platform: &Platform,
    buyer: &str,
    account: &str,
    key: &str,
    method: Value,
) -> Result<Value, RpcError> {
    let mut body = json!({ "idempotency_key": key, "escrow_account_id": account, "milestone_id": "full",
                           "amount": usd(310_000) });
    for (k, v) in method.as_object().expect("a method") {
        body[k] = v.clone();
    }
    platform
        .escrow
        .call(&escrow_method("FundEscrow"), Some(buyer), &body)
}

fn apply_for_pay_later(platform: &Platform, buyer: &str, account: &str, key: &str) -> Value {
    let applied = fund(
        platform,
        buyer,
        account,
        key,
        json!({ "pay_later": { "financing_partner_id": PARTNER, "repayment_months": 6 } }),
    )
    .expect("the application is sent");
    let attempt = applied["fundingAttempt"].clone();
    assert_eq!(attempt["status"], "FUNDING_STATUS_PENDING", "{applied:#}");
    assert_eq!(attempt["method"], "FUNDING_METHOD_PAY_LATER");
    assert_eq!(attempt["financingPartnerId"], PARTNER);
    assert!(
        attempt["loanReference"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{attempt:#}"
    );
    attempt
}

fn webhook_ok(
    platform: &Platform,
    event_id: &str,
    kind: &str,
    reference: &str,
    amount: Option<i64>,
) -> Value {
    platform
        .gateway_webhook(event_id, kind, reference, amount)
        .unwrap_or_else(|e| panic!("{kind} {event_id}: {e:#?}"))
}

#[test]
fn pay_later_is_funded_by_the_partner_s_webhook_and_refunds_go_back_to_the_loan_first() {
    let platform = Platform::start(&[]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &fast_dispute(&[]));
    let owner = "supplier-pay-later";
    let (buyer, supplier) = party_tokens("buyer-pay-later", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let id = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &pay_later_terms(),
    );
    let account = platform.account_id_of(&id);
    let opened = platform.escrow_account(&id)["account"].clone();
    assert_eq!(opened["paymentScheme"], "ESCROW_PAYMENT_SCHEME_PAY_LATER");
    assert_eq!(opened["financingPartnerId"], PARTNER);

    // Only the agreed partner funds this account.
    let card = fund(
        &platform,
        &buyer,
        &account,
        "card",
        json!({ "card": { "card_token": "tok_visa" } }),
    )
    .expect_err("Pay Later only");
    assert_eq!(card.code, "FailedPrecondition", "{card:#?}");
    let other = fund(
        &platform,
        &buyer,
        &account,
        "other-partner",
        json!({ "pay_later": { "financing_partner_id": "partner-other", "repayment_months": 6 } }),
    )
    .expect_err("not the agreed partner");
    assert_eq!(other.code, "InvalidArgument", "{other:#?}");

    // The application is pending, its amount held, until the partner disburses.
    let attempt = apply_for_pay_later(&platform, &buyer, &account, "apply");
    let reference = attempt["gatewayReference"]
        .as_str()
        .expect("reference")
        .to_owned();
    assert_eq!(
        platform.balances(&account),
        Balances {
            pending_held: 310_000,
            ..Balances::default()
        }
    );
    assert_eq!(
        platform.get_contract(&id)["status"],
        "CONTRACT_STATUS_AWAITING_PAYMENT"
    );

    // A forged disbursement is refused and changes nothing.
    let payload = json!({ "id": "evt_forged", "type": "pay_later.disbursed", "created": 0,
                          "data": { "reference": reference } })
    .to_string();
    let forged = platform
        .signed_webhook(
            "evt_forged",
            payload.as_bytes(),
            &sign_webhook(
                b"not-the-gateway-secret-not-the-gateway",
                0,
                payload.as_bytes(),
            ),
        )
        .expect_err("badly signed");
    assert_eq!(forged.code, "Unauthenticated", "{forged:#?}");
    assert_eq!(
        platform.get_contract(&id)["status"],
        "CONTRACT_STATUS_AWAITING_PAYMENT"
    );

    // The partner's webhook funds escrow, once.
    let (payload, signature) = gateway_event(
        "evt_disbursed",
        "pay_later.disbursed",
        &reference,
        Some(310_000),
    );
    let applied = platform
        .signed_webhook("evt_disbursed", &payload, &signature)
        .expect("applied");
    assert_eq!(applied["outcome"], "WEBHOOK_OUTCOME_APPLIED", "{applied:#}");
    assert_eq!(
        applied["fundingAttempt"]["status"],
        "FUNDING_STATUS_SUCCEEDED"
    );
    // The same delivery again answers the same and moves nothing.
    let replayed = platform
        .signed_webhook("evt_disbursed", &payload, &signature)
        .expect("replayed");
    assert_eq!(replayed, applied);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    assert_eq!(
        platform.balances(&account),
        Balances {
            escrow_held: 310_000,
            financing_partner: -310_000,
            ..Balances::default()
        },
        "the partner's money, not the buyer's, is in escrow"
    );

    // A short delivery, settled: the refund reduces the loan, the rest goes to
    // the supplier.
    ship(&platform, &supplier, &id).expect("ships");
    receive(&platform, &buyer, &id);
    let claim_id = open_claim(
        &dispute,
        &buyer,
        "claim",
        &json!({ "contract_id": id, "reason": "CLAIM_REASON_SHORT_QUANTITY", "amount_claimed": usd(62_000),
                 "description": "2 of 10 cartons missing" }),
    );
    let offer = dcall_ok(
        &dispute,
        "MakeOffer",
        &supplier,
        &json!({ "idempotency_key": "offer", "claim_id": claim_id, "kind": "OFFER_KIND_PARTIAL_REFUND",
                 "refund_amount": usd(62_000), "message": "we refund the two cartons" }),
    );
    dcall_ok(
        &dispute,
        "AcceptOffer",
        &buyer,
        &json!({ "idempotency_key": "take", "claim_id": claim_id, "offer_id": offer["offer"]["offerId"] }),
    );
    wait_claim_effects(&dispute, &buyer, &claim_id);
    platform.wait_status(&id, "CONTRACT_STATUS_COMPLETED");
    platform.wait_account_status(&id, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        platform.balances(&account),
        Balances {
            supplier_payable: 248_000,
            financing_partner: -248_000,
            ..Balances::default()
        },
        "the loan is 62,000 smaller; nothing is owed to the buyer directly"
    );
    let refunds: Vec<PostingLine> = platform
        .postings(&account)
        .into_iter()
        .filter(|(kind, ..)| kind == "refund")
        .collect();
    assert_eq!(
        refunds,
        [(
            "refund".to_owned(),
            62_000,
            "escrow_held".to_owned(),
            "financing_partner".to_owned()
        )]
    );

    // A second order: the partner rejects the first application (nothing
    // held), approves the second; the supplier then cancels, and everything
    // goes back to the loan.
    let second = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &pay_later_terms(),
    );
    let second_account = platform.account_id_of(&second);
    let rejected = apply_for_pay_later(&platform, &buyer, &second_account, "apply-1");
    let answer = webhook_ok(
        &platform,
        "evt_rejected",
        "pay_later.rejected",
        rejected["gatewayReference"].as_str().expect("reference"),
        None,
    );
    assert_eq!(
        answer["fundingAttempt"]["status"], "FUNDING_STATUS_FAILED",
        "{answer:#}"
    );
    assert_eq!(platform.balances(&second_account), Balances::default());
    assert_eq!(
        platform.get_contract(&second)["status"],
        "CONTRACT_STATUS_AWAITING_PAYMENT"
    );
    let approved = apply_for_pay_later(&platform, &buyer, &second_account, "apply-2");
    webhook_ok(
        &platform,
        "evt_disbursed_2",
        "pay_later.disbursed",
        approved["gatewayReference"].as_str().expect("reference"),
        Some(310_000),
    );
    platform.wait_status(&second, "CONTRACT_STATUS_FUNDED");
    platform.contract_ok(
        "CancelContract",
        &supplier,
        &json!({ "idempotency_key": "cancel", "contract_id": second, "reason": "the kiln broke down" }),
    );
    platform.wait_account_status(&second, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        platform.balances(&second_account),
        Balances::default(),
        "the loan is repaid in full by the refund"
    );
    platform.wait_cover(&supplier_id, (0, 1_000_000));
    let standing = platform.standing(&supplier_id);
    assert_eq!(
        (standing.penalty_points, standing.status.as_str()),
        (0, "SUPPLIER_STATUS_ACTIVE")
    );
    let actions = platform.timeline_actions(&second);
    assert!(
        in_order(
            &actions,
            &[
                "contract.activated",
                "payment.received",
                "contract.cancelled"
            ]
        ),
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "payment.received").count(),
        1,
        "{actions:?}"
    );
    platform.assert_ledger_reconciles();
}

// ---- A bank transfer confirmed late ------------------------------------------------

fn bank_transfer(platform: &Platform, buyer: &str, account: &str, key: &str) -> Value {
    let started = fund(
        platform,
        buyer,
        account,
        key,
        json!({ "bank_transfer": { "payer_name": "Keramik Handel GmbH" } }),
    )
    .expect("the transfer is expected");
    let attempt = started["fundingAttempt"].clone();
    assert_eq!(attempt["status"], "FUNDING_STATUS_PENDING", "{started:#}");
    let instructions = &attempt["bankTransferInstructions"];
    assert!(
        instructions["iban"].as_str().is_some_and(|i| !i.is_empty()),
        "{attempt:#}"
    );
    assert!(
        instructions["paymentReference"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{attempt:#}"
    );
    attempt
}

fn attempt_of(platform: &Platform, contract_id: &str, attempt_id: &Value) -> Value {
    platform.escrow_account(contract_id)["fundingAttempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .find(|a| a["fundingAttemptId"] == *attempt_id)
        .cloned()
        .expect("the attempt")
}

fn late_credits(platform: &Platform) -> Vec<Value> {
    platform.escrow.call_ok(
        &escrow_method("ListUnmatchedGatewayItems"),
        Some(&platform.staff.finance),
        &json!({}),
    )["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// What `ListHeldAccounts` says escrow holds for the contract (0 when absent).
fn listed_as_held(platform: &Platform, contract_id: &str) -> i64 {
    let held = platform.escrow.call_ok(
        &escrow_method("ListHeldAccounts"),
        Some(&platform.staff.support),
        &json!({ "page": { "page_size": 100 } }),
    );
    held["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["account"]["contractId"] == contract_id)
        .map(|a| int(&a["account"]["held"]["amountMinor"]))
        .sum()
}

#[test]
fn a_bank_transfer_credited_after_it_expired_is_refunded_from_suspense_and_the_order_paid_again() {
    let platform = Platform::start_with(&[("ESCROW_BANK_TRANSFER_EXPIRY", "3s")], &[]);
    let owner = "supplier-bank";
    let (buyer, supplier) = party_tokens("buyer-bank", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &prepaid());
    let account = platform.account_id_of(&id);

    // Pending: the amount is held for it, nothing is in escrow yet.
    let attempt = bank_transfer(&platform, &buyer, &account, "transfer-1");
    let reference = attempt["gatewayReference"]
        .as_str()
        .expect("reference")
        .to_owned();
    assert_eq!(
        platform.balances(&account),
        Balances {
            pending_held: 310_000,
            ..Balances::default()
        }
    );
    // The bank takes longer than the transfer may: it expires, its hold voided.
    let expired = wait_until(PATIENCE, "the transfer to expire", || {
        let a = attempt_of(&platform, &id, &attempt["fundingAttemptId"]);
        if a["status"] == "FUNDING_STATUS_FAILED" {
            Ok(a)
        } else {
            Err(format!("{a:#}"))
        }
    });
    assert_eq!(expired["failureCode"], "expired", "{expired:#}");
    assert_eq!(platform.balances(&account), Balances::default());
    assert_eq!(
        platform.get_contract(&id)["status"],
        "CONTRACT_STATUS_AWAITING_PAYMENT"
    );

    // Then the money arrives at the gateway, which reports it: parked in
    // suspense and sent back against the transfer that brought it.
    platform
        .gateway
        .credit_bank_transfer(&reference, Some(310_000));
    let items = wait_until(PATIENCE, "the late credit to be listed", || {
        let items = late_credits(&platform);
        if items.len() == 1 {
            Ok(items)
        } else {
            Err(format!("{items:#?}"))
        }
    });
    assert_eq!(items[0]["kind"], "LATE_CREDIT");
    assert_eq!(int(&items[0]["amount"]["amountMinor"]), 310_000);
    assert!(
        items[0]["gatewayTransferId"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "the refund was sent: {items:#?}"
    );
    let failed = attempt_of(&platform, &id, &attempt["fundingAttemptId"]);
    assert_eq!(failed["status"], "FUNDING_STATUS_FAILED", "{failed:#}");
    // The gateway pays the refund out: nothing stays in suspense or escrow.
    wait_until(PATIENCE, "the refund of the late credit to be paid", || {
        let balances = platform.balances(&account);
        if balances == Balances::default() {
            Ok(())
        } else {
            Err(format!("{balances:?}"))
        }
    });
    assert_eq!(
        platform.postings(&account),
        [
            (
                "suspense".to_owned(),
                310_000,
                "gateway_clearing".to_owned(),
                "suspense".to_owned()
            ),
            (
                "suspense".to_owned(),
                310_000,
                "suspense".to_owned(),
                "gateway_clearing".to_owned()
            ),
        ]
    );
    // The gateway delivers the same event again: nothing changes.
    let events = platform.gateway.control("GET", "/sandbox/events", None);
    let credit_event = events["events"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["type"] == "bank_transfer.credited"))
        .and_then(|e| e["id"].as_str())
        .expect("the credit's event")
        .to_owned();
    platform.gateway.control(
        "POST",
        &format!("/sandbox/webhooks/redeliver/{credit_event}"),
        None,
    );
    wait_until(PATIENCE, "the redelivery to be answered", || {
        let events = platform.gateway.control("GET", "/sandbox/events", None);
        let answered = events["events"].as_array().and_then(|all| {
            all.iter()
                .find(|e| e["id"] == credit_event.as_str())
                .and_then(|e| e["attempts"].as_array())
                .map(|a| a.len())
        });
        match answered {
            Some(n) if n >= 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(late_credits(&platform).len(), 1);
    assert_eq!(platform.balances(&account), Balances::default());

    // Paid again, and this time the bank confirms in time.
    let second = bank_transfer(&platform, &buyer, &account, "transfer-2");
    let applied = webhook_ok(
        &platform,
        "evt_credit",
        "bank_transfer.credited",
        second["gatewayReference"].as_str().expect("reference"),
        Some(310_000),
    );
    assert_eq!(applied["outcome"], "WEBHOOK_OUTCOME_APPLIED", "{applied:#}");
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    assert_eq!(
        platform.balances(&account),
        Balances {
            escrow_held: 310_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
    assert_eq!(listed_as_held(&platform, &id), 310_000);
    assert_eq!(platform.cover(&supplier_id), (310_000, 690_000));
    let actions = platform.timeline_actions(&id);
    assert_eq!(
        actions.iter().filter(|a| *a == "payment.received").count(),
        1,
        "only the credit in time counts: {actions:?}"
    );
    platform.assert_ledger_reconciles();
}

#[test]
fn a_bank_transfer_pending_at_the_due_date_holds_off_the_cancellation_until_it_expires_and_its_late_credit_goes_back()
 {
    // A term day lasts a second: the payment is due three seconds after
    // signing; the bank transfer started before that may take six.
    let platform = Platform::start_with(
        &[("ESCROW_BANK_TRANSFER_EXPIRY", "6s")],
        &[("CONTRACT_TERM_DAY", "1s")],
    );
    let owner = "supplier-overdue";
    let (buyer, supplier) = party_tokens("buyer-overdue", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let mut due_soon = prepaid();
    due_soon["payment_terms"] = full_prepayment(3);
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &due_soon);
    let account = platform.account_id_of(&id);
    let attempt = bank_transfer(&platform, &buyer, &account, "transfer");
    let reference = attempt["gatewayReference"]
        .as_str()
        .expect("reference")
        .to_owned();

    // Due while the money is on its way: not overdue until the transfer
    // expires; then the contract is cancelled, the cover freed and the
    // account closed.
    let cancelled = platform.wait_status(&id, "CONTRACT_STATUS_CANCELLED");
    assert!(
        cancelled["cancellationReason"]
            .as_str()
            .is_some_and(|r| r.contains("passed unfunded")),
        "{cancelled:#}"
    );
    platform.wait_account_status(&id, "ESCROW_ACCOUNT_STATUS_CLOSED");
    let failed = attempt_of(&platform, &id, &attempt["fundingAttemptId"]);
    assert_eq!(failed["status"], "FUNDING_STATUS_FAILED", "{failed:#}");
    assert_eq!(failed["failureCode"], "expired", "{failed:#}");
    let expired_at = failed["resolvedAt"].as_str().expect("resolved").to_owned();
    let cancelled_at = cancelled["updatedAt"].as_str().expect("updated").to_owned();
    assert!(
        parse_time(&expired_at) <= parse_time(&cancelled_at),
        "cancelled at {cancelled_at}, before the transfer expired at {expired_at}"
    );
    platform.wait_cover(&supplier_id, (0, 1_000_000));

    // The bank's credit comes after all: refunded from suspense, never held.
    platform
        .gateway
        .credit_bank_transfer(&reference, Some(310_000));
    wait_until(PATIENCE, "the late credit to be sent back and paid", || {
        let items = late_credits(&platform);
        let balances = platform.balances(&account);
        if items.len() == 1 && balances == Balances::default() {
            Ok(())
        } else {
            Err(format!("{items:#?} {balances:?}"))
        }
    });
    let items = late_credits(&platform);
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0]["kind"], "LATE_CREDIT");
    assert_eq!(platform.balances(&account), Balances::default());
    assert_eq!(listed_as_held(&platform, &id), 0);
    let closed = platform.escrow_account(&id)["account"].clone();
    assert_eq!(closed["status"], "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(int(&closed["fundedTotal"]["amountMinor"]), 0, "{closed:#}");
    let actions = platform.timeline_actions(&id);
    assert_eq!(
        actions.last().map(String::as_str),
        Some("contract.cancelled"),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|a| a == "payment.received"),
        "{actions:?}"
    );
    platform.assert_ledger_reconciles();
}

#[test]
fn a_bank_credit_arriving_while_the_overdue_cancellation_is_on_its_way_to_escrow_is_still_refunded()
{
    let mut platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let owner = "supplier-race";
    let (buyer, supplier) = party_tokens("buyer-race", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let mut due_soon = prepaid();
    due_soon["payment_terms"] = full_prepayment(4);
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &due_soon);
    let account = platform.account_id_of(&id);

    // The contract's calls to escrow take a while (its relay polls once a
    // minute and is not woken by a commit, as when escrow is briefly
    // unreachable); it still follows escrow's feed.
    platform.contract.kill();
    platform.contract = platform.spawn_contract(&[
        ("WORKFLOW_OUTBOX_POLL_INTERVAL", "60s"),
        ("WORKFLOW_OUTBOX_WAKE_ON_COMMIT", "false"),
    ]);
    platform.wait_status(&id, "CONTRACT_STATUS_CANCELLED");
    // The buyer pays late, by bank transfer, while the cancellation has not
    // reached escrow yet.
    let attempt = bank_transfer(&platform, &buyer, &account, "transfer");
    assert_eq!(
        platform.escrow_account(&id)["account"]["status"],
        "ESCROW_ACCOUNT_STATUS_AWAITING_FUNDING",
        "the cancellation has not reached escrow yet"
    );

    // The bank confirms now: escrow, not told yet, takes the money.
    webhook_ok(
        &platform,
        "evt_credit",
        "bank_transfer.credited",
        attempt["gatewayReference"].as_str().expect("reference"),
        Some(310_000),
    );
    platform.contract.kill();
    platform.contract = platform.spawn_contract(&[]);
    wait_quiet(
        &[&platform.contract, &platform.escrow],
        &platform.staff.support,
    );

    // The order is cancelled: whatever reached escrow for it goes back.
    let settled = wait_until(
        Duration::from_secs(20),
        "the money of the cancelled order to go back and its account to close",
        || {
            let a = platform.escrow_account(&id)["account"].clone();
            if a["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED" {
                Ok(a)
            } else {
                Err(format!("{a:#}"))
            }
        },
    );
    assert_eq!(
        int(&settled["refundedTotal"]["amountMinor"]),
        310_000,
        "{settled:#}"
    );
    assert_eq!(
        platform.balances(&account),
        Balances {
            buyer_refund_payable: 310_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
    platform.wait_cover(&supplier_id, (0, 1_000_000));
    platform.assert_ledger_reconciles();
    // The parties read why money moved after the order ended.
    wait_action(&platform, &id, "payment.after_cancellation");
}

#[test]
fn a_short_bank_credit_leaves_the_rest_of_the_payment_due() {
    let platform = Platform::start(&[]);
    let owner = "supplier-short";
    let (buyer, supplier) = party_tokens("buyer-short", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &prepaid());
    let account = platform.account_id_of(&id);
    let attempt = bank_transfer(&platform, &buyer, &account, "transfer");
    // The bank's fee is taken out of the transfer: 100.00 USD short.
    webhook_ok(
        &platform,
        "evt_short",
        "bank_transfer.credited",
        attempt["gatewayReference"].as_str().expect("reference"),
        Some(300_000),
    );
    let held = platform.wait_account_status(&id, "ESCROW_ACCOUNT_STATUS_PARTIALLY_FUNDED");
    assert_eq!(int(&held["held"]["amountMinor"]), 300_000, "{held:#}");
    wait_action(&platform, &id, "payment.received");
    let contract = platform.get_contract(&id);
    assert_ne!(
        contract["status"], "CONTRACT_STATUS_FUNDED",
        "escrow holds 3,000.00 of 3,100.00 USD: {contract:#}"
    );
    // The rest, by card, funds it.
    platform.pay_by_card(&buyer, &account, "full", 10_000);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    assert_eq!(
        platform.balances(&account),
        Balances {
            escrow_held: 310_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
}

#[test]
fn a_gateway_event_redelivered_with_a_fresh_signature_replays_its_first_answer() {
    let platform = Platform::start(&[]);
    let owner = "supplier-redelivery";
    let (buyer, supplier) = party_tokens("buyer-redelivery", owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &prepaid());
    let account = platform.account_id_of(&id);
    let attempt = bank_transfer(&platform, &buyer, &account, "transfer");
    let reference = attempt["gatewayReference"]
        .as_str()
        .expect("reference")
        .to_owned();
    let (payload, first_signature) = gateway_event(
        "evt_credit",
        "bank_transfer.credited",
        &reference,
        Some(310_000),
    );
    let first = platform
        .signed_webhook("evt_credit", &payload, &first_signature)
        .expect("the credit applies");
    assert_eq!(first["outcome"], "WEBHOOK_OUTCOME_APPLIED", "{first:#}");
    // A gateway signs every delivery anew (its timestamp is part of the
    // signature): the retry of an event it thinks was lost carries the same
    // event under a later `t`.
    std::thread::sleep(Duration::from_millis(1_100));
    let resigned = sign_webhook(
        TEST_WEBHOOK_SECRET.as_bytes(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
        &payload,
    );
    assert_ne!(resigned, first_signature);
    let retried = platform
        .signed_webhook("evt_credit", &payload, &resigned)
        .expect("the same event delivered twice applies once");
    assert_eq!(retried, first, "a redelivery replays the first answer");
    // Another event under the same id is not a redelivery: refused, and it
    // changes nothing.
    let (other, other_signature) = gateway_event(
        "evt_credit",
        "bank_transfer.credited",
        &reference,
        Some(999_999),
    );
    let refused = platform
        .signed_webhook("evt_credit", &other, &other_signature)
        .expect_err("a different event under a seen id");
    assert_eq!(refused.code, "InvalidArgument", "{refused:#?}");
    assert!(refused.message.contains("already used"), "{refused:#?}");
    assert_eq!(
        platform.balances(&account),
        Balances {
            escrow_held: 310_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
}

// ---- Consider using a third-party inspection service before shipment ---------------

#[test]
fn a_third_party_inspection_before_shipment_blocks_a_failing_lot_and_lets_a_passing_one_ship() {
    // A term day lasts a second, so the booking rule's seven working days
    // are seven working seconds on the terms' calendar (nine to eleven).
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let owner = "supplier-inspected";
    let (buyer, supplier) = party_tokens("buyer-inspected", owner);
    let inspector = mint(AGENCY, Role::Inspector);
    let other_agency = mint("agency-other", Role::Inspector);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let inspected = |shipment: Duration| {
        let mut t = with_inspection(two_criteria(terms("PROTECTION_TRADE_ASSURANCE")));
        t["payment_terms"] = full_prepayment(300);
        t["shipment_deadline"] = json!(at(shipment));
        t
    };

    // Too short a notice to book the inspection is refused at drafting.
    let rushed = platform
        .contract_call(
            "CreateContractDraft",
            &buyer,
            &json!({ "idempotency_key": "rushed", "supplier_id": supplier_id,
                     "terms": inspected(Duration::from_secs(3)) }),
        )
        .expect_err("no time to book the inspection");
    assert_eq!(rushed.code, "InvalidArgument", "{rushed:#?}");
    assert!(
        rushed.stderr.contains("terms.shipment_deadline"),
        "{rushed:#?}"
    );
    assert!(rushed.stderr.contains("7 working days"), "{rushed:#?}");

    // Two lots: one reworked after a failed inspection, one never fixed.
    let reworked = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &inspected(Duration::from_secs(40)),
    );
    let abandoned = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &inspected(Duration::from_secs(16)),
    );
    let reworked_account = platform.fund_by_card(&buyer, &reworked);
    let abandoned_account = platform.fund_by_card(&buyer, &abandoned);
    let assigned: Vec<String> =
        platform.contract_ok("ListInspectionAssignments", &inspector, &json!({}))["contracts"]
            .as_array()
            .expect("assignments")
            .iter()
            .map(|c| c["contractId"].as_str().unwrap_or_default().to_owned())
            .collect();
    assert_eq!(
        assigned,
        [abandoned.clone(), reworked.clone()],
        "soonest deadline first"
    );
    let not_theirs = platform.contract_ok("ListInspectionAssignments", &other_agency, &json!({}));
    assert!(
        not_theirs["contracts"].as_array().is_none_or(Vec::is_empty),
        "{not_theirs:#}"
    );
    let intruder = platform
        .contract_call(
            "SubmitInspectionReport",
            &other_agency,
            &report(
                &reworked,
                "intruder",
                &[
                    ("QC-1", "4.0", "CRITERION_OUTCOME_PASS"),
                    ("QC-2", "0.1", "CRITERION_OUTCOME_PASS"),
                ],
            ),
        )
        .expect_err("only the agency named in the contract");
    // To another agency the contract does not exist.
    assert_eq!(intruder.code, "NotFound", "{intruder:#?}");
    assert_eq!(intruder.message, format!("contract {reworked} not found"));

    // Walls fine, lead release 0.8 mg/L over the 0.5 allowed: both lots fail.
    let failing = [
        ("QC-1", "4.1", "CRITERION_OUTCOME_PASS"),
        ("QC-2", "0.8", "CRITERION_OUTCOME_FAIL"),
    ];
    for (id, key) in [(&reworked, "r1"), (&abandoned, "a1")] {
        let failed = platform.contract_ok(
            "SubmitInspectionReport",
            &inspector,
            &report(id, key, &failing),
        );
        assert_eq!(failed["report"]["passed"], false, "{failed:#}");
        let blocked = ship(&platform, &supplier, id).expect_err("the inspection failed");
        assert_eq!(blocked.code, "FailedPrecondition", "{blocked:#?}");
        assert!(blocked.message.contains("failed"), "{blocked:#?}");
        let contract = platform.get_contract(id);
        assert_eq!(contract["status"], "CONTRACT_STATUS_FUNDED");
        assert_eq!(contract["latestInspectionReport"]["passed"], false);
        let inspection = contract["milestones"]
            .as_array()
            .expect("milestones")
            .iter()
            .find(|m| m["kind"] == "MILESTONE_KIND_INSPECTION")
            .cloned()
            .expect("an inspection milestone");
        assert!(inspection["reachedAt"].is_null(), "{inspection:#}");
    }
    let held = Balances {
        escrow_held: 310_000,
        gateway_clearing: -310_000,
        ..Balances::default()
    };
    assert_eq!(
        platform.balances(&reworked_account),
        held,
        "the money waits"
    );

    // Reworked: a passing report lets it ship; the buyer accepts.
    let passed = platform.contract_ok(
        "SubmitInspectionReport",
        &inspector,
        &report(
            &reworked,
            "r2",
            &[
                ("QC-1", "4.0", "CRITERION_OUTCOME_PASS"),
                ("QC-2", "0.2", "CRITERION_OUTCOME_PASS"),
            ],
        ),
    );
    assert_eq!(passed["report"]["passed"], true);
    let shipped = ship(&platform, &supplier, &reworked).expect("ships after the passing report");
    assert_eq!(shipped["contract"]["shipments"][0]["late"], false);
    receive(&platform, &buyer, &reworked);
    platform.contract_ok(
        "AcceptGoods",
        &buyer,
        &json!({ "idempotency_key": "accept", "contract_id": reworked }),
    );
    platform.wait_account_status(&reworked, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        platform.balances(&reworked_account),
        Balances {
            supplier_payable: 310_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
    let reports = platform.contract_ok(
        "ListInspectionReports",
        &buyer,
        &json!({ "contract_id": reworked }),
    );
    let outcomes: Vec<bool> = reports["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .map(|r| r["passed"] == true)
        .collect();
    assert_eq!(outcomes, [false, true], "both reports are on record");

    // Never fixed: the deadline passes unshipped and the buyer cancels with
    // a full refund.
    wait_action(&platform, &abandoned, "deadline.shipment_passed");
    let cancelled = platform.contract_ok(
        "CancelContract",
        &buyer,
        &json!({ "idempotency_key": "cancel", "contract_id": abandoned,
                 "reason": "the lot failed QC-2 and was never reworked" }),
    );
    assert_eq!(cancelled["contract"]["status"], "CONTRACT_STATUS_CANCELLED");
    platform.wait_account_status(&abandoned, "ESCROW_ACCOUNT_STATUS_CLOSED");
    assert_eq!(
        platform.balances(&abandoned_account),
        Balances {
            buyer_refund_payable: 310_000,
            gateway_clearing: -310_000,
            ..Balances::default()
        }
    );
    platform.wait_cover(&supplier_id, (0, 1_000_000));
    let standing = platform.standing(&supplier_id);
    assert_eq!(
        (
            standing.status.as_str(),
            standing.penalty_points,
            standing.ta_limit
        ),
        ("SUPPLIER_STATUS_ACTIVE", 0, 1_000_000),
        "a failed inspection costs no points"
    );
    assert_eq!(
        platform.timeline_actions(&reworked),
        [
            "draft.created",
            "contract.signed",
            "contract.signed",
            "cover.reserved",
            "contract.activated",
            "payment.received",
            "inspection.reported",
            "inspection.reported",
            "goods.shipped",
            "goods.received",
            "goods.accepted"
        ]
    );
    let actions = platform.timeline_actions(&abandoned);
    assert!(
        in_order(
            &actions,
            &[
                "payment.received",
                "inspection.reported",
                "deadline.shipment_passed",
                "contract.cancelled"
            ]
        ),
        "{actions:?}"
    );
    platform.assert_ledger_reconciles();
}

/// A protobuf JSON timestamp (UTC, `...Z`, 0-9 fraction digits) in a form
/// that sorts by time: the fraction padded to nine digits.
fn parse_time(text: &str) -> String {
    let bare = text.trim_end_matches('Z');
    let (seconds, fraction) = bare.split_once('.').unwrap_or((bare, ""));
    format!("{seconds}.{fraction:0<9}")
}
