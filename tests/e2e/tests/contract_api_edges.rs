//! The contract API's answers to bad input, strangers, stale edits and
//! retries, through the real grpcurl: each refusal is the documented code
//! and changes nothing.

use std::time::Duration;

use e2e_tests::{platform::*, *};

const BUYER: &str = "buyer-edges";

fn contracts_stored(platform: &Platform) -> i64 {
    platform
        .session()
        .int("SELECT count(*) FROM contract.contracts")
}

#[test]
fn bad_input_strangers_and_stale_edits_are_refused_and_change_nothing() {
    let platform = Platform::start(&[]);
    let owner = "supplier-edges";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));

    // Every bad field of the terms is named at once.
    let mut bad = terms("PROTECTION_TRADE_ASSURANCE");
    bad["title"] = json!("");
    bad["line_items"][0]["quantity"] = json!(0);
    bad["line_items"][1]["unit_price"] = json!({ "currency_code": "XXX1", "amount_minor": 100 });
    bad["delivery_deadline"] = json!(at(Duration::from_secs(60)));
    bad["payment_terms"]["milestones"][1]["share_basis_points"] = json!(6000);
    let refused = platform
        .contract_call(
            "CreateContractDraft",
            &buyer,
            &json!({ "idempotency_key": "bad-terms", "supplier_id": supplier_id, "terms": bad }),
        )
        .expect_err("invalid terms");
    assert_eq!(refused.code, "InvalidArgument", "{refused:#?}");
    for field in [
        "terms.title",
        "terms.line_items[0].quantity",
        "terms.line_items[1].unit_price",
        "terms.delivery_deadline",
        "terms.payment_terms.milestones",
    ] {
        assert!(refused.message.contains(field), "{field}: {refused:#?}");
    }
    let unknown_supplier = platform
        .contract_call(
            "CreateContractDraft",
            &buyer,
            &json!({ "idempotency_key": "no-supplier", "supplier_id": "01a2337e-0000-7000-8000-000000000000",
                     "terms": terms("PROTECTION_TRADE_ASSURANCE") }),
        )
        .expect_err("no such supplier");
    assert_eq!(unknown_supplier.code, "NotFound", "{unknown_supplier:#?}");
    let impostor = platform
        .contract_call(
            "CreateContractDraft",
            &mint("someone-else", Role::Supplier),
            &json!({ "idempotency_key": "impostor", "supplier_id": supplier_id, "buyer_principal_id": BUYER,
                     "terms": terms("PROTECTION_TRADE_ASSURANCE") }),
        )
        .expect_err("not the supplier's owner");
    assert_eq!(impostor.code, "PermissionDenied", "{impostor:#?}");
    assert_eq!(contracts_stored(&platform), 0, "no refusal stored anything");

    // A draft by the supplier, for the buyer.
    let created = platform.contract_ok(
        "CreateContractDraft",
        &supplier,
        &json!({ "idempotency_key": "draft-1", "supplier_id": supplier_id, "buyer_principal_id": BUYER,
                 "terms": terms("PROTECTION_TRADE_ASSURANCE") }),
    );
    let id = created["contract"]["contractId"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(created["contract"]["buyerPrincipalId"], BUYER);
    assert_eq!(
        int(&created["version"]["terms"]["lineItems"][0]["lineTotal"]["amountMinor"]),
        300_000
    );
    assert_eq!(
        int(&created["version"]["terms"]["paymentTerms"]["milestones"][1]["amount"]["amountMinor"]),
        217_000,
        "the server computes each milestone's amount"
    );

    for (body, code) in [
        (json!({ "contract_id": "not-a-uuid" }), "InvalidArgument"),
        (
            json!({ "contract_id": "01a2337e-0000-7000-8000-000000000000" }),
            "NotFound",
        ),
    ] {
        let err = platform
            .contract_call("GetContract", &buyer, &body)
            .expect_err("refused");
        assert_eq!(err.code, code, "{err:#?}");
    }
    // A stranger is told the contract does not exist, as for a random id.
    let stranger = mint("buyer-stranger", Role::Buyer);
    for method in [
        "GetContract",
        "GetContractTimeline",
        "ListInspectionReports",
    ] {
        let err = platform
            .contract_call(method, &stranger, &json!({ "contract_id": id }))
            .expect_err("not a party");
        assert_eq!(err.code, "NotFound", "{method}: {err:#?}");
        assert_eq!(err.message, format!("contract {id} not found"), "{method}");
    }
    let outsider_inspector = platform
        .contract_call(
            "GetContract",
            &mint("agency-other", Role::Inspector),
            &json!({ "contract_id": id }),
        )
        .expect_err("no agency is named");
    assert_eq!(
        outsider_inspector.code, "NotFound",
        "{outsider_inspector:#?}"
    );
    let wrong_role = platform
        .contract_call(
            "SubmitInspectionReport",
            &buyer,
            &json!({ "idempotency_key": "r", "contract_id": id }),
        )
        .expect_err("buyers do not inspect");
    assert_eq!(wrong_role.code, "PermissionDenied", "{wrong_role:#?}");

    // Revisions: a stale base is ABORTED; a revision voids the signature.
    platform.contract_ok(
        "SignContract",
        &buyer,
        &json!({ "idempotency_key": "sign-v1", "contract_id": id, "version": 1 }),
    );
    let mut cheaper = terms("PROTECTION_TRADE_ASSURANCE");
    cheaper["line_items"][0]["unit_price"] = usd(290);
    let revised = platform.contract_ok(
        "ReviseContractDraft",
        &supplier,
        &json!({ "idempotency_key": "revise-1", "contract_id": id, "base_version": 1,
                 "terms": cheaper, "change_note": "2.90 per mug for 1,000" }),
    );
    assert_eq!(revised["contract"]["status"], "CONTRACT_STATUS_DRAFT");
    assert_eq!(revised["contract"]["latestVersion"], 2);
    assert!(
        revised["contract"]["signatures"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    let stale = platform
        .contract_call(
            "ReviseContractDraft",
            &buyer,
            &json!({ "idempotency_key": "revise-stale", "contract_id": id, "base_version": 1,
                     "terms": terms("PROTECTION_TRADE_ASSURANCE"), "change_note": "back to 3.00" }),
        )
        .expect_err("version 1 is no longer the latest");
    assert_eq!(stale.code, "Aborted", "{stale:#?}");
    let old_signature = platform
        .contract_call(
            "SignContract",
            &buyer,
            &json!({ "idempotency_key": "sign-old", "contract_id": id, "version": 1 }),
        )
        .expect_err("sign what you read: the latest");
    assert_eq!(
        old_signature.code, "FailedPrecondition",
        "{old_signature:#?}"
    );
    let key_reused = platform
        .contract_call(
            "SignContract",
            &buyer,
            &json!({ "idempotency_key": "sign-v1", "contract_id": id, "version": 2 }),
        )
        .expect_err("a key names one request");
    assert_eq!(key_reused.code, "InvalidArgument", "{key_reused:#?}");
    let cancel_unsigned = platform
        .contract_call(
            "CancelContract",
            &buyer,
            &json!({ "idempotency_key": "cancel-no-reason", "contract_id": id }),
        )
        .expect_err("a reason is required");
    assert_eq!(
        cancel_unsigned.code, "InvalidArgument",
        "{cancel_unsigned:#?}"
    );
    assert!(
        cancel_unsigned.message.contains("reason"),
        "{cancel_unsigned:#?}"
    );

    // Listing: a buyer sees its own, page by page.
    for n in 0..2 {
        platform.contract_ok(
            "CreateContractDraft",
            &buyer,
            &json!({ "idempotency_key": format!("more-{n}"), "supplier_id": supplier_id,
                     "terms": terms("PROTECTION_NONE") }),
        );
    }
    let first = platform.contract_ok(
        "ListContracts",
        &buyer,
        &json!({ "page": { "page_size": 2 } }),
    );
    assert_eq!(first["contracts"].as_array().map(Vec::len), Some(2));
    let token = first["nextPageToken"].as_str().expect("token").to_owned();
    assert!(!token.is_empty());
    let second = platform.contract_ok(
        "ListContracts",
        &buyer,
        &json!({ "page": { "page_size": 2, "page_token": token } }),
    );
    assert_eq!(second["contracts"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["nextPageToken"], "");
    let theirs = platform.contract_ok("ListContracts", &stranger, &json!({}));
    assert!(theirs["contracts"].as_array().is_none_or(Vec::is_empty));
    let forged = platform
        .contract_call(
            "ListContracts",
            &buyer,
            &json!({ "page": { "page_token": "bm9wZQ" } }),
        )
        .expect_err("not a token this listing issued");
    assert_eq!(forged.code, "InvalidArgument", "{forged:#?}");
    let unprotected = platform.contract_ok(
        "ListContracts",
        &platform.staff.support,
        &json!({ "protection": "PROTECTION_NONE", "statuses": ["CONTRACT_STATUS_DRAFT"] }),
    );
    assert_eq!(unprotected["contracts"].as_array().map(Vec::len), Some(2));
}

#[test]
fn the_second_signature_sent_thirty_times_at_once_activates_once() {
    let platform = Platform::start(&[]);
    let owner = "supplier-storm";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let created = platform.contract_ok(
        "CreateContractDraft",
        &buyer,
        &json!({ "idempotency_key": "storm-draft", "supplier_id": supplier_id,
                 "terms": terms("PROTECTION_TRADE_ASSURANCE") }),
    );
    let id = created["contract"]["contractId"]
        .as_str()
        .expect("id")
        .to_owned();
    platform.contract_ok(
        "SignContract",
        &supplier,
        &json!({ "idempotency_key": "storm-sign-supplier", "contract_id": id, "version": 1 }),
    );
    let body = json!({ "idempotency_key": "storm-sign-buyer", "contract_id": id, "version": 1 });
    let calls: Vec<Background> = (0..30)
        .map(|_| {
            grpcurl_spawn(&call_args(
                &platform.contract.addr(),
                &contract_method("SignContract"),
                Some(&buyer),
                &body,
            ))
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        let output = call.wait(PATIENCE);
        assert!(output.status.success(), "{output:?}");
        let answer = parse_json(&output.stdout, "SignContract");
        answers.push(answer["contract"]["updatedAt"].clone());
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "one answer, replayed: {answers:?}"
    );
    platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    assert_eq!(platform.cover(&supplier_id), (310_000, 690_000));
    let actions: Vec<String> = platform.timeline_actions(&id);
    let signed = actions.iter().filter(|a| *a == "contract.signed").count();
    let reserved = actions.iter().filter(|a| *a == "cover.reserved").count();
    assert_eq!((signed, reserved), (2, 1), "{actions:?}");
    assert_eq!(
        platform.session().int(
            "SELECT count(*) FROM contract.workflow_outbox WHERE method LIKE '%/ReserveCover'"
        ),
        1
    );
}

#[test]
fn the_event_feed_streams_every_step_in_order_from_a_cursor() {
    let platform = Platform::start(&[]);
    let owner = "supplier-feed";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, None);
    let id = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &terms("PROTECTION_NONE"),
    );
    let stream = |after: u64| {
        let mut args = call_args(
            &platform.contract.addr(),
            &contract_method("StreamContractEvents"),
            Some(&platform.staff.platform),
            &json!({ "after_sequence": after }),
        );
        // The feed stays open for new events; three seconds read the backlog.
        let at = args
            .iter()
            .position(|a| a == "-max-time")
            .expect("-max-time");
        args[at + 1] = "3".into();
        let output = grpcurl(&args);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        // grpcurl prints one JSON object per message.
        let mut events = Vec::new();
        let mut depth = 0;
        let mut current = String::new();
        for c in text.chars() {
            if c == '{' {
                depth += 1;
            }
            if depth > 0 {
                current.push(c);
            }
            if c == '}' {
                depth -= 1;
                if depth == 0 {
                    let value: Value = serde_json::from_str(&current).expect("a feed message");
                    if !value["event"].is_null() {
                        events.push(value["event"].clone());
                    }
                    current.clear();
                }
            }
        }
        events
    };
    let events = wait_until(PATIENCE, "the feed to number three events", || {
        let events = stream(0);
        if events.len() >= 3 {
            Ok(events)
        } else {
            Err(format!("{} events", events.len()))
        }
    });
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "CONTRACT_EVENT_TYPE_DRAFT_CREATED",
            "CONTRACT_EVENT_TYPE_SIGNED",
            "CONTRACT_EVENT_TYPE_ACTIVATED"
        ]
    );
    let sequences: Vec<i64> = events.iter().map(|e| int(&e["sequence"])).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert_eq!(events[2]["contract"]["contractId"], id.as_str());
    assert_eq!(
        events[2]["contract"]["status"],
        "CONTRACT_STATUS_SIGNED_UNPROTECTED"
    );
    // From a cursor: only what follows it.
    let after_first = stream(u64::try_from(sequences[0]).expect("positive"));
    assert_eq!(after_first.len(), 2);
    let denied = platform
        .contract_call(
            "StreamContractEvents",
            &buyer,
            &json!({ "after_sequence": 0 }),
        )
        .expect_err("staff and back ends only");
    assert_eq!(denied.code, "PermissionDenied", "{denied:#?}");
}

#[test]
fn a_draft_waits_for_supplier_registry_and_says_unavailable_while_it_is_down() {
    let mut platform = Platform::start(&[]);
    let owner = "supplier-down";
    let buyer = mint(BUYER, Role::Buyer);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    platform.registry.kill();
    let down = platform
        .contract_call(
            "CreateContractDraft",
            &buyer,
            &json!({ "idempotency_key": "while-down", "supplier_id": supplier_id,
                     "terms": terms("PROTECTION_TRADE_ASSURANCE") }),
        )
        .expect_err("the supplier cannot be looked up");
    assert_eq!(down.code, "Unavailable", "{down:#?}");
    assert!(
        !down.message.contains("tcp"),
        "no internal detail: {down:#?}"
    );
    assert_eq!(contracts_stored(&platform), 0);
}
