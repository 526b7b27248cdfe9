//! A contract's life through the real binaries (supplier-registry, escrow,
//! contract) and the real grpcurl: every path the contract issue lists, with
//! the money, the cover and the timeline checked at the end of each.

use std::time::Duration;

use e2e_tests::{platform::*, *};

const BUYER: &str = "buyer-journey";
const AGENCY: &str = "agency-sgs";

fn tokens(owner: &str) -> (String, String) {
    (mint(BUYER, Role::Buyer), mint(owner, Role::Supplier))
}

fn count(actions: &[String], action: &str) -> usize {
    actions.iter().filter(|a| *a == action).count()
}

fn report(contract_id: &str, key: &str, measured: &str, outcome: &str) -> Value {
    json!({
        "idempotency_key": key,
        "contract_id": contract_id,
        "agency_reference": format!("SGS-{key}"),
        "inspected_at": at(Duration::from_secs(0)),
        "results": [{ "criterion_id": "QC-1", "outcome": outcome, "measured_value": measured }],
        "summary": "AQL 2.5 sampling of 125 units"
    })
}

/// Trade Assurance terms with a pre-shipment inspection by `AGENCY`.
fn inspected_terms() -> Value {
    let mut terms = terms("PROTECTION_TRADE_ASSURANCE");
    terms["inspection"] = json!({
        "kind": "INSPECTION_KIND_PRE_SHIPMENT_THIRD_PARTY", "agency_name": "SGS", "agency_principal_id": AGENCY
    });
    terms
}

#[test]
fn an_order_from_signature_to_release_with_a_failed_then_passing_inspection() {
    let platform = Platform::start(&[]);
    let owner = "supplier-happy";
    let (buyer, supplier) = tokens(owner);
    let inspector = mint(AGENCY, Role::Inspector);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let terms = inspected_terms();

    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &terms);
    let active = platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    assert_eq!(int(&active["total"]["amountMinor"]), 310_000);
    assert_eq!(active["supplierPrincipalId"], owner);
    let account = active["escrowAccountId"]
        .as_str()
        .expect("escrow account")
        .to_owned();
    assert_eq!(platform.cover(&supplier_id), (310_000, 690_000));

    // Someone else's buyer sees nothing of it: not even that it exists.
    let stranger = mint("buyer-stranger", Role::Buyer);
    let denied = platform
        .contract_call("GetContract", &stranger, &json!({ "contract_id": id }))
        .expect_err("not a party");
    assert_eq!(denied.code, "NotFound", "{denied:#?}");
    assert_eq!(denied.message, format!("contract {id} not found"));

    // Deposit, then balance; the contract follows escrow's feed.
    platform.pay_by_card(&buyer, &account, "deposit", 93_000);
    platform.wait_status(&id, "CONTRACT_STATUS_PARTIALLY_FUNDED");
    platform.pay_by_card(&buyer, &account, "balance", 217_000);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");

    // No shipment before a passing inspection.
    let ship = |key: &str| {
        platform.contract_call(
            "RecordShipment",
            &supplier,
            &json!({ "idempotency_key": key, "contract_id": id, "carrier": "Maersk",
                     "tracking_number": "MAEU1234567", "final": true }),
        )
    };
    let early = ship("ship-early").expect_err("inspection required");
    assert_eq!(early.code, "FailedPrecondition", "{early:#?}");
    assert!(early.message.contains("inspection"), "{early:#?}");

    let assignments = platform.contract_ok("ListInspectionAssignments", &inspector, &json!({}));
    assert_eq!(assignments["contracts"][0]["contractId"], id.as_str());

    let failed = platform.contract_ok(
        "SubmitInspectionReport",
        &inspector,
        &report(&id, "r1", "3.5", "CRITERION_OUTCOME_FAIL"),
    );
    assert_eq!(failed["report"]["passed"], false);
    let refused = ship("ship-after-fail").expect_err("inspection failed");
    assert_eq!(refused.code, "FailedPrecondition", "{refused:#?}");
    assert!(refused.message.contains("failed"), "{refused:#?}");

    // An outcome contradicting the measurement is refused, naming the field.
    let contradiction = platform
        .contract_call(
            "SubmitInspectionReport",
            &inspector,
            &report(&id, "r-bad", "3.5", "CRITERION_OUTCOME_PASS"),
        )
        .expect_err("3.5 mm is outside 4.0 ± 0.3");
    assert_eq!(contradiction.code, "InvalidArgument", "{contradiction:#?}");

    let passed = platform.contract_ok(
        "SubmitInspectionReport",
        &inspector,
        &report(&id, "r2", "4.1", "CRITERION_OUTCOME_PASS"),
    );
    assert_eq!(passed["report"]["passed"], true);
    let reports = platform.contract_ok(
        "ListInspectionReports",
        &buyer,
        &json!({ "contract_id": id }),
    );
    assert_eq!(
        reports["reports"].as_array().map(Vec::len),
        Some(2),
        "every report is kept"
    );
    let empty = platform.contract_ok("ListInspectionAssignments", &inspector, &json!({}));
    assert!(
        empty["contracts"].as_array().is_none_or(Vec::is_empty),
        "{empty:#}"
    );

    let shipped = ship("ship-1").expect("ships after the passing report");
    assert_eq!(shipped["contract"]["status"], "CONTRACT_STATUS_SHIPPED");
    assert_eq!(shipped["contract"]["shipments"][0]["late"], false);
    let received = platform.contract_ok(
        "ConfirmReceipt",
        &buyer,
        &json!({ "idempotency_key": "receipt", "contract_id": id }),
    );
    assert_eq!(received["contract"]["status"], "CONTRACT_STATUS_DELIVERED");
    assert!(received["contract"]["claimWindowEndsAt"].is_string());
    let accepted = platform.contract_ok(
        "AcceptGoods",
        &buyer,
        &json!({ "idempotency_key": "accept", "contract_id": id, "note": "all good" }),
    );
    assert_eq!(accepted["contract"]["status"], "CONTRACT_STATUS_COMPLETED");
    assert_eq!(
        accepted["contract"]["acceptance"],
        "ACCEPTANCE_KIND_EXPLICIT"
    );
    // The retried acceptance answers the same and moves nothing again.
    let again = platform.contract_ok(
        "AcceptGoods",
        &buyer,
        &json!({ "idempotency_key": "accept", "contract_id": id, "note": "all good" }),
    );
    assert_eq!(
        again["contract"]["updatedAt"],
        accepted["contract"]["updatedAt"]
    );

    // The money went to the supplier, the cover is free, escrow is closed.
    wait_until(PATIENCE, "escrow to release and close", || {
        let account = platform.escrow_account(&id);
        if account["account"]["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED" {
            Ok(account)
        } else {
            Err(format!("{:#}", account["account"]["status"]))
        }
    });
    wait_until(PATIENCE, "the cover to be released", || {
        match platform.cover(&supplier_id) {
            (0, 1_000_000) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    platform.assert_ledger_reconciles();

    let actions = platform.timeline_actions(&id);
    let expected = [
        "draft.created",
        "contract.signed",
        "contract.signed",
        "cover.reserved",
        "contract.activated",
        "payment.received",
        "payment.received",
        "inspection.reported",
        "inspection.reported",
        "goods.shipped",
        "goods.received",
        "goods.accepted",
    ];
    assert_eq!(actions, expected, "the story in order");
}

#[test]
fn timers_cancel_an_unfunded_order_and_accept_received_goods_automatically() {
    // A term's day lasts one second here.
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let owner = "supplier-timers";
    let (buyer, supplier) = tokens(owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));

    // Unfunded: the deposit is due two "days" after signing.
    let mut unfunded = terms("PROTECTION_TRADE_ASSURANCE");
    unfunded["payment_terms"]["milestones"][0]["due_days"] = json!(2);
    let cancelled_id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &unfunded);
    platform.wait_status(&cancelled_id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    let cancelled = platform.wait_status(&cancelled_id, "CONTRACT_STATUS_CANCELLED");
    assert!(
        cancelled["cancellationReason"]
            .as_str()
            .is_some_and(|r| r.contains("deposit")),
        "{cancelled:#}"
    );

    // Funded and received: accepted when the inspection period and claim
    // window (one "day" each) lapse without a claim.
    let mut prepaid = terms("PROTECTION_TRADE_ASSURANCE");
    prepaid["payment_terms"] = full_prepayment(300);
    prepaid["inspection_period_days"] = json!(1);
    prepaid["claim_window_days"] = json!(2);
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &prepaid);
    let active = platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    let account = active["escrowAccountId"]
        .as_str()
        .expect("account")
        .to_owned();
    platform.pay_by_card(&buyer, &account, "full", 310_000);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    platform.contract_ok(
        "RecordShipment",
        &supplier,
        &json!({ "idempotency_key": "ship", "contract_id": id, "carrier": "DHL", "tracking_number": "JD0001", "final": true }),
    );
    platform.contract_ok(
        "ConfirmReceipt",
        &buyer,
        &json!({ "idempotency_key": "receipt", "contract_id": id }),
    );
    let completed = platform.wait_status(&id, "CONTRACT_STATUS_COMPLETED");
    assert_eq!(completed["acceptance"], "ACCEPTANCE_KIND_AUTOMATIC");

    wait_until(PATIENCE, "both accounts closed and the cover free", || {
        let closed = [&cancelled_id, &id].iter().all(|c| {
            platform.escrow_account(c)["account"]["status"] == "ESCROW_ACCOUNT_STATUS_CLOSED"
        });
        match (closed, platform.cover(&supplier_id)) {
            (true, (0, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let actions = platform.timeline_actions(&cancelled_id);
    assert_eq!(
        actions.last().map(String::as_str),
        Some("contract.cancelled")
    );
    assert_eq!(
        platform.timeline_actions(&id).last().map(String::as_str),
        Some("goods.accepted")
    );
    platform.assert_ledger_reconciles();
}

#[test]
fn a_late_shipment_lets_the_buyer_cancel_with_a_full_refund() {
    let platform = Platform::start(&[]);
    let owner = "supplier-late";
    let (buyer, supplier) = tokens(owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let mut late = terms("PROTECTION_TRADE_ASSURANCE");
    late["shipment_deadline"] = json!(at(Duration::from_secs(8)));
    late["delivery_deadline"] = json!(at(days(30)));
    late["payment_terms"] = full_prepayment(3);
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &late);
    let active = platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    let account = active["escrowAccountId"]
        .as_str()
        .expect("account")
        .to_owned();
    platform.pay_by_card(&buyer, &account, "full", 310_000);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");

    let cancel = |key: &str| {
        platform.contract_call(
            "CancelContract",
            &buyer,
            &json!({ "idempotency_key": key, "contract_id": id, "reason": "the goods did not ship on time" }),
        )
    };
    let too_early = cancel("cancel-early").expect_err("not late yet");
    assert_eq!(too_early.code, "FailedPrecondition", "{too_early:#?}");

    wait_until(PATIENCE, "the shipment deadline to pass", || {
        let actions = platform.timeline_actions(&id);
        if actions.iter().any(|a| a == "deadline.shipment_passed") {
            Ok(())
        } else {
            Err(format!("{actions:?}"))
        }
    });
    let cancelled = cancel("cancel-late").expect("the buyer may cancel a late order");
    assert_eq!(cancelled["contract"]["status"], "CONTRACT_STATUS_CANCELLED");

    wait_until(PATIENCE, "the refund and the closed account", || {
        let account = platform.escrow_account(&id);
        match (
            account["account"]["status"].as_str(),
            platform.cover(&supplier_id),
        ) {
            (Some("ESCROW_ACCOUNT_STATUS_CLOSED"), (0, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let statement = platform.escrow.call_ok(
        &escrow_method("GetEscrowStatement"),
        Some(&platform.staff.support),
        &json!({ "escrow_account_id": account }),
    );
    let refunded = statement["postings"]
        .as_array()
        .expect("postings")
        .iter()
        .any(|p| p["kind"] == "POSTING_KIND_REFUND" && int(&p["amount"]["amountMinor"]) == 310_000);
    assert!(refunded, "the whole payment was refunded: {statement:#}");
    platform.assert_ledger_reconciles();
}

#[test]
fn amendments_move_the_cover_within_the_limit_and_are_refused_beyond_it() {
    let platform = Platform::start(&[]);
    let owner = "supplier-amend";
    let (buyer, supplier) = tokens(owner);
    let supplier_id = platform.supplier(owner, Some(400_000));
    let original = terms("PROTECTION_TRADE_ASSURANCE");
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &original);
    platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    assert_eq!(platform.cover(&supplier_id), (310_000, 90_000));

    let amend = |base: u32, mugs: u64, key: &str| {
        let mut amended = original.clone();
        amended["line_items"][0]["quantity"] = json!(mugs);
        let proposed = platform.contract_ok(
            "ProposeAmendment",
            &buyer,
            &json!({ "idempotency_key": format!("{key}-propose"), "contract_id": id, "base_version": base,
                     "terms": amended, "change_note": format!("{mugs} mugs") }),
        );
        let version = proposed["version"]["version"].as_u64().expect("version") as u32;
        for (who, party) in [(&supplier, "s"), (&buyer, "b")] {
            platform.contract_ok(
                "SignAmendment",
                who,
                &json!({ "idempotency_key": format!("{key}-sign-{party}"), "contract_id": id, "version": version }),
            );
        }
        version
    };

    // Within the limit: 1,020 mugs, 3,160.00 USD.
    let v2 = amend(1, 1020, "within");
    wait_until(PATIENCE, "the amendment to apply", || {
        let c = platform.get_contract(&id);
        if c["signedVersion"] == v2 {
            Ok(c)
        } else {
            Err(format!("signed {}", c["signedVersion"]))
        }
    });
    assert_eq!(
        int(&platform.get_contract(&id)["total"]["amountMinor"]),
        316_000
    );
    assert_eq!(platform.cover(&supplier_id), (316_000, 84_000));
    let account = platform.escrow_account(&id);
    let due: i64 = account["account"]["schedule"]
        .as_array()
        .expect("schedule")
        .iter()
        .map(|p| int(&p["amount"]["amountMinor"]))
        .sum();
    assert_eq!(due, 316_000, "escrow's schedule follows: {account:#}");

    // Funded in full, then lowered to 900 mugs (2,800.00 USD): the excess is
    // refunded, the cover follows down, the contract stays funded.
    let escrow_id = account["account"]["escrowAccountId"]
        .as_str()
        .expect("account id")
        .to_owned();
    platform.pay_by_card(&buyer, &escrow_id, "deposit", 94_800);
    platform.pay_by_card(&buyer, &escrow_id, "balance", 221_200);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    let lowered = amend(v2, 900, "lower");
    wait_until(PATIENCE, "the lowering amendment to apply", || {
        let c = platform.get_contract(&id);
        if c["signedVersion"] == lowered {
            Ok(c)
        } else {
            Err(format!("signed {}", c["signedVersion"]))
        }
    });
    let c = platform.get_contract(&id);
    assert_eq!(c["status"], "CONTRACT_STATUS_FUNDED", "{c:#}");
    assert_eq!(int(&c["total"]["amountMinor"]), 280_000);
    assert_eq!(platform.cover(&supplier_id), (280_000, 120_000));
    let statement = platform.escrow.call_ok(
        &escrow_method("GetEscrowStatement"),
        Some(&platform.staff.support),
        &json!({ "escrow_account_id": escrow_id }),
    );
    let refunded: i64 = statement["postings"]
        .as_array()
        .expect("postings")
        .iter()
        .filter(|p| p["kind"] == "POSTING_KIND_REFUND")
        .map(|p| int(&p["amount"]["amountMinor"]))
        .sum();
    assert_eq!(refunded, 36_000, "the excess went back: {statement:#}");
    let v2 = lowered;

    // Beyond it: 2,000 mugs, 6,100.00 USD.
    let v3 = amend(v2, 2000, "beyond");
    wait_until(PATIENCE, "the amendment to be refused", || {
        let actions = platform.timeline_actions(&id);
        if actions.iter().any(|a| a == "amendment.refused") {
            Ok(())
        } else {
            Err(format!("{actions:?}"))
        }
    });
    let c = platform.get_contract(&id);
    assert_eq!(c["signedVersion"], v2);
    assert_eq!(c["pendingAmendmentVersion"], v3, "it stays proposed");
    assert!(
        c["amendmentSignatures"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{c:#}"
    );
    assert_eq!(platform.cover(&supplier_id), (280_000, 120_000));
    platform.assert_ledger_reconciles();
}

#[test]
fn activation_is_refused_without_the_badge_or_over_the_limit_and_unprotected_orders_stay_outside() {
    let platform = Platform::start(&[]);
    let buyer = mint(BUYER, Role::Buyer);

    for (owner, limit, reason) in [
        ("supplier-nobadge", None, "NO_TRADE_ASSURANCE_BADGE"),
        ("supplier-small", Some(100_000), "TA_LIMIT_EXCEEDED"),
    ] {
        let supplier = mint(owner, Role::Supplier);
        let supplier_id = platform.supplier(owner, limit);
        let id = signed_contract(
            &platform,
            &buyer,
            &supplier,
            &supplier_id,
            &terms("PROTECTION_TRADE_ASSURANCE"),
        );
        let refused = wait_until(PATIENCE, "activation refused", || {
            let c = platform.get_contract(&id);
            if c["status"] == "CONTRACT_STATUS_DRAFT" && c["activationRefusal"].is_string() {
                Ok(c)
            } else {
                Err(format!("{:#}", c["status"]))
            }
        });
        assert!(
            refused["activationRefusal"]
                .as_str()
                .is_some_and(|r| r.starts_with(reason)),
            "{refused:#}"
        );
        assert!(refused["signatures"].as_array().is_none_or(Vec::is_empty));
        assert!(
            refused["escrowAccountId"]
                .as_str()
                .is_none_or(str::is_empty)
        );
        let missing = platform
            .escrow
            .call(
                &escrow_method("GetEscrowAccount"),
                Some(&platform.staff.platform),
                &json!({ "contract_id": id }),
            )
            .expect_err("no escrow was opened");
        assert_eq!(missing.code, "NotFound", "{missing:#?}");
        let actions = platform.timeline_actions(&id);
        assert_eq!(
            count(&actions, "contract.activation_refused"),
            1,
            "{actions:?}"
        );
    }

    // Unprotected: in force at the second signature, outside escrow and claims.
    let owner = "supplier-plain";
    let supplier = mint(owner, Role::Supplier);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let id = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &terms("PROTECTION_NONE"),
    );
    let plain = platform.get_contract(&id);
    assert_eq!(plain["status"], "CONTRACT_STATUS_SIGNED_UNPROTECTED");
    assert_eq!(plain["protection"], "PROTECTION_NONE");
    assert_eq!(platform.cover(&supplier_id), (0, 1_000_000));
    let dispute = mint_service("dispute", "contract");
    let no_claim = platform
        .contract_call(
            "RecordClaimOpened",
            &dispute,
            &json!({ "idempotency_key": "claim", "contract_id": id, "claim_id": "claim-1", "reason": "CLAIM_REASON_DAMAGE" }),
        )
        .expect_err("no claims without protection");
    assert_eq!(no_claim.code, "FailedPrecondition", "{no_claim:#?}");
    assert!(
        no_claim.message.contains("not under Trade Assurance"),
        "{no_claim:#?}"
    );
    platform.contract_ok(
        "RecordShipment",
        &supplier,
        &json!({ "idempotency_key": "ship", "contract_id": id, "carrier": "DHL", "tracking_number": "JD42", "final": true }),
    );
    let done = platform.contract_ok(
        "AcceptGoods",
        &buyer,
        &json!({ "idempotency_key": "accept", "contract_id": id }),
    );
    assert_eq!(done["contract"]["status"], "CONTRACT_STATUS_COMPLETED");
}

#[test]
fn a_contract_killed_between_the_second_signature_and_its_calls_activates_exactly_once() {
    // The first process never delivers its outbox in time: its relay polls
    // once a minute and is not woken by a commit.
    let mut platform = Platform::start(&[
        ("WORKFLOW_OUTBOX_POLL_INTERVAL", "60s"),
        ("WORKFLOW_OUTBOX_WAKE_ON_COMMIT", "false"),
    ]);
    let owner = "supplier-crash";
    let (buyer, supplier) = tokens(owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let id = signed_contract(
        &platform,
        &buyer,
        &supplier,
        &supplier_id,
        &terms("PROTECTION_TRADE_ASSURANCE"),
    );
    assert_eq!(
        platform.get_contract(&id)["status"],
        "CONTRACT_STATUS_ACTIVATING"
    );
    let mut session = platform.session();
    assert_eq!(
        session.int("SELECT count(*) FROM contract.workflow_outbox WHERE status = 'pending'"),
        1,
        "the cover reservation is committed with the signature, not yet called"
    );
    assert_eq!(platform.cover(&supplier_id), (0, 1_000_000));

    platform.contract.kill();
    platform.contract = platform.spawn_contract(&[
        ("WORKFLOW_OUTBOX_POLL_INTERVAL", "100ms"),
        ("WORKFLOW_OUTBOX_WAKE_ON_COMMIT", "true"),
    ]);
    platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");

    let cover = platform.registry.call_ok(
        &registry_method("GetCover"),
        Some(&platform.staff.platform),
        &json!({ "supplier_id": supplier_id }),
    );
    let reservations = cover["activeReservations"]
        .as_array()
        .expect("reservations");
    assert_eq!(reservations.len(), 1, "{cover:#}");
    assert_eq!(int(&reservations[0]["amount"]["amountMinor"]), 310_000);
    assert_eq!(
        session.int(&format!(
            "SELECT count(*) FROM escrow.escrow_accounts WHERE contract_id = '{id}'"
        )),
        1
    );
    assert_eq!(
        session.int(
            "SELECT count(*) FROM contract.workflow_outbox WHERE method LIKE '%/ReserveCover' OR method LIKE '%/OpenEscrowAccount'"
        ),
        2,
        "one call each"
    );
    let actions = platform.timeline_actions(&id);
    assert_eq!(count(&actions, "contract.activated"), 1, "{actions:?}");
}

#[test]
fn two_replicas_fire_every_timer_exactly_once() {
    let platform = Platform::start(&[]);
    let second = platform.spawn_contract(&[]);
    let owner = "supplier-replicas";
    let (buyer, supplier) = tokens(owner);
    let supplier_id = platform.supplier(owner, None);
    let mut plain = terms("PROTECTION_NONE");
    let contracts = 12;
    let ids: Vec<String> = (0..contracts)
        .map(|_| {
            plain["shipment_deadline"] = json!(at(Duration::from_secs(6)));
            signed_contract(&platform, &buyer, &supplier, &supplier_id, &plain)
        })
        .collect();
    wait_until(PATIENCE, "every shipment deadline to pass", || {
        let late = ids
            .iter()
            .filter(|id| {
                platform
                    .timeline_actions(id)
                    .iter()
                    .any(|a| a == "deadline.shipment_passed")
            })
            .count();
        if late == contracts {
            Ok(())
        } else {
            Err(format!("{late} of {contracts}"))
        }
    });
    // Both replicas polled throughout; give a double firing time to show.
    std::thread::sleep(Duration::from_secs(1));
    for id in &ids {
        let actions = platform.timeline_actions(id);
        assert_eq!(
            count(&actions, "deadline.shipment_passed"),
            1,
            "{id}: {actions:?}"
        );
    }
    let mut session = platform.session();
    assert_eq!(
        session.int(
            "SELECT count(*) FROM contract.workflow_timers WHERE kind = 'shipment_due' AND status = 'fired'"
        ),
        i64::try_from(contracts).expect("small"),
    );
    assert!(second.log().contains("contract"), "the second replica ran");
}

#[test]
fn a_claim_pauses_the_timers_and_an_unconfirmed_one_is_dropped() {
    let platform = Platform::start(&[
        ("CONTRACT_TERM_DAY", "1s"),
        ("CONTRACT_CLAIM_CONFIRMATION_TIMEOUT", "2s"),
    ]);
    let owner = "supplier-claims";
    let (buyer, supplier) = tokens(owner);
    let dispute = mint_service("dispute", "contract");
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let mut prepaid = terms("PROTECTION_TRADE_ASSURANCE");
    prepaid["payment_terms"] = full_prepayment(300);
    prepaid["inspection_period_days"] = json!(4);
    prepaid["claim_window_days"] = json!(4);
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &prepaid);
    let active = platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    let account = active["escrowAccountId"]
        .as_str()
        .expect("account")
        .to_owned();
    let claim = |key: &str, claim_id: &str, reason: &str| {
        platform.contract_call(
            "RecordClaimOpened",
            &dispute,
            &json!({ "idempotency_key": key, "contract_id": id, "claim_id": claim_id, "reason": reason }),
        )
    };
    let nothing_held = claim("c0", "claim-0", "CLAIM_REASON_DAMAGE").expect_err("nothing funded");
    assert!(
        nothing_held.message.contains("no money is held"),
        "{nothing_held:#?}"
    );

    platform.pay_by_card(&buyer, &account, "full", 310_000);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    platform.contract_ok(
        "RecordShipment",
        &supplier,
        &json!({ "idempotency_key": "ship", "contract_id": id, "carrier": "DHL", "tracking_number": "JD7", "final": true }),
    );
    let too_early = claim("c1", "claim-1", "CLAIM_REASON_DAMAGE").expect_err("not received yet");
    assert!(
        too_early
            .message
            .contains("after the buyer confirmed receipt"),
        "{too_early:#?}"
    );
    platform.contract_ok(
        "ConfirmReceipt",
        &buyer,
        &json!({ "idempotency_key": "receipt", "contract_id": id }),
    );

    // Phase one without phase two: dropped by its timer, the contract resumes.
    let pending = claim("c2", "claim-2", "CLAIM_REASON_DAMAGE").expect("within the window");
    assert_eq!(pending["contract"]["status"], "CONTRACT_STATUS_IN_DISPUTE");
    assert_eq!(pending["contract"]["claimPendingConfirmation"], true);
    let other = claim("c3", "claim-3", "CLAIM_REASON_DAMAGE").expect_err("one open claim");
    assert!(other.message.contains("already open"), "{other:#?}");
    let resumed = platform.wait_status(&id, "CONTRACT_STATUS_DELIVERED");
    assert_eq!(resumed["openClaimId"], "");

    // Confirmed, then withdrawn: the acceptance deadline moved by the pause.
    let due_before = platform.get_contract(&id)["milestones"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["kind"] == "MILESTONE_KIND_ACCEPTANCE")
                .cloned()
        })
        .expect("acceptance milestone")["dueAt"]
        .clone();
    claim("c4", "claim-4", "CLAIM_REASON_QUALITY_MISMATCH").expect("opens");
    platform.contract_ok(
        "ConfirmClaimOpened",
        &dispute,
        &json!({ "idempotency_key": "c4-confirm", "contract_id": id, "claim_id": "claim-4" }),
    );
    // Paused: the acceptance deadline passes while the claim is open.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        platform.get_contract(&id)["status"],
        "CONTRACT_STATUS_IN_DISPUTE"
    );
    let withdrawn = platform.contract_ok(
        "RecordClaimClosed",
        &dispute,
        &json!({ "idempotency_key": "c4-close", "contract_id": id, "claim_id": "claim-4", "closure": "CLAIM_CLOSURE_WITHDRAWN" }),
    );
    assert_eq!(withdrawn["contract"]["status"], "CONTRACT_STATUS_DELIVERED");
    let due_after = withdrawn["contract"]["milestones"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["kind"] == "MILESTONE_KIND_ACCEPTANCE")
                .cloned()
        })
        .expect("acceptance milestone")["dueAt"]
        .clone();
    assert!(
        due_after.as_str() > due_before.as_str(),
        "{due_before} -> {due_after}"
    );
    let completed = platform.wait_status(&id, "CONTRACT_STATUS_COMPLETED");
    assert_eq!(completed["acceptance"], "ACCEPTANCE_KIND_AUTOMATIC");
    let actions = platform.timeline_actions(&id);
    for action in [
        "claim.recorded",
        "claim.abandoned",
        "claim.opened",
        "claim.withdrawn",
        "goods.accepted",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
}

#[test]
fn an_order_still_unshipped_a_claim_window_after_its_deadline_is_cancelled_and_refunded() {
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "1s")]);
    let owner = "supplier-never";
    let (buyer, supplier) = tokens(owner);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let mut never = terms("PROTECTION_TRADE_ASSURANCE");
    never["shipment_deadline"] = json!(at(Duration::from_secs(6)));
    never["delivery_deadline"] = json!(at(days(30)));
    never["claim_window_days"] = json!(3);
    never["payment_terms"] = full_prepayment(300);
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &never);
    let active = platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");
    let account = active["escrowAccountId"]
        .as_str()
        .expect("account")
        .to_owned();
    platform.pay_by_card(&buyer, &account, "full", 310_000);
    platform.wait_status(&id, "CONTRACT_STATUS_FUNDED");
    let cancelled = platform.wait_status(&id, "CONTRACT_STATUS_CANCELLED");
    assert!(
        cancelled["cancellationReason"]
            .as_str()
            .is_some_and(|r| r.contains("nothing shipped")),
        "{cancelled:#}"
    );
    wait_until(PATIENCE, "the refund and the closed account", || {
        match (
            platform.escrow_account(&id)["account"]["status"].as_str(),
            platform.cover(&supplier_id),
        ) {
            (Some("ESCROW_ACCOUNT_STATUS_CLOSED"), (0, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let actions = platform.timeline_actions(&id);
    let tail: Vec<&str> = actions
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        ["deadline.shipment_passed", "contract.cancelled"],
        "{actions:?}"
    );
    platform.assert_ledger_reconciles();
}

#[test]
fn an_amended_shipment_deadline_lifts_the_lateness() {
    let platform = Platform::start(&[]);
    let owner = "supplier-later";
    let (buyer, supplier) = tokens(owner);
    let supplier_id = platform.supplier(owner, None);
    let mut plain = terms("PROTECTION_NONE");
    plain["shipment_deadline"] = json!(at(Duration::from_secs(4)));
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &plain);
    wait_until(PATIENCE, "the shipment deadline to pass", || {
        let actions = platform.timeline_actions(&id);
        if actions.iter().any(|a| a == "deadline.shipment_passed") {
            Ok(())
        } else {
            Err(format!("{actions:?}"))
        }
    });
    let mut later = plain.clone();
    later["shipment_deadline"] = json!(at(days(10)));
    platform.contract_ok(
        "ProposeAmendment",
        &supplier,
        &json!({ "idempotency_key": "later", "contract_id": id, "base_version": 1, "terms": later,
                 "change_note": "the factory needs ten more days" }),
    );
    for (who, key) in [(&supplier, "later-s"), (&buyer, "later-b")] {
        platform.contract_ok(
            "SignAmendment",
            who,
            &json!({ "idempotency_key": key, "contract_id": id, "version": 2 }),
        );
    }
    let shipped = platform.contract_ok(
        "RecordShipment",
        &supplier,
        &json!({ "idempotency_key": "ship", "contract_id": id, "carrier": "COSCO", "tracking_number": "CS1", "final": true }),
    );
    assert_eq!(shipped["contract"]["signedVersion"], 2);
    assert_eq!(
        shipped["contract"]["shipments"][0]["late"], false,
        "on time by the amended deadline: {shipped:#}"
    );
}

/// A file's SHA-256 by the system's `sha256sum`, in lower-case hex.
fn sha256_hex(bytes: &[u8]) -> String {
    let dir = TempDir::new("sha");
    let path = dir.path().join("file");
    std::fs::write(&path, bytes).expect("write");
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// UploadInspectionFile through a raw gRPC client (the bytes stream in
/// chunks of 64 KiB after the metadata).
fn upload_inspection_file(
    platform: &Platform,
    token: &str,
    contract_id: &str,
    sha256_hex: &str,
    bytes: &[u8],
) -> Result<ta_proto::contract::UploadInspectionFileResponse, tonic::Status> {
    use ta_proto::contract::{
        self as pb, contract_service_client::ContractServiceClient,
        upload_inspection_file_request::Part,
    };
    let mut messages = vec![pb::UploadInspectionFileRequest {
        part: Some(Part::Metadata(pb::InspectionFileMetadata {
            contract_id: contract_id.to_owned(),
            content_type: "application/pdf".into(),
            size_bytes: bytes.len() as u64,
            sha256_hex: sha256_hex.to_owned(),
        })),
    }];
    for chunk in bytes.chunks(64 * 1024) {
        messages.push(pb::UploadInspectionFileRequest {
            part: Some(Part::Chunk(chunk.to_vec())),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client =
            ContractServiceClient::connect(format!("http://{}", platform.contract.addr()))
                .await
                .expect("connect to contract");
        let mut request = tonic::Request::new(tokio_stream::iter(messages));
        request
            .metadata_mut()
            .insert("authorization", ta_runtime::auth::bearer_metadata(token));
        client
            .upload_inspection_file(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

/// Every file under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(next) = dirs.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            } else {
                out.push(
                    entry
                        .path()
                        .strip_prefix(dir)
                        .unwrap_or(&entry.path())
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_agency_stores_its_report_files_by_their_hash_in_the_store_dispute_shares() {
    let store = TempDir::new("inspection-files");
    let dir = store.path().display().to_string();
    let platform = Platform::start(&[("EVIDENCE_STORE", &dir)]);
    let owner = "supplier-files";
    let (buyer, supplier) = tokens(owner);
    let inspector = mint(AGENCY, Role::Inspector);
    let supplier_id = platform.supplier(owner, Some(1_000_000));
    let terms = inspected_terms();
    let id = signed_contract(&platform, &buyer, &supplier, &supplier_id, &terms);
    platform.wait_status(&id, "CONTRACT_STATUS_AWAITING_PAYMENT");

    let pdf: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let sha = sha256_hex(&pdf);
    // Only the named agency (to another the contract does not exist); a
    // wrong hash stores nothing.
    let other = mint("agency-other", Role::Inspector);
    let denied =
        upload_inspection_file(&platform, &other, &id, &sha, &pdf).expect_err("not the agency");
    assert_eq!(denied.code(), tonic::Code::NotFound, "{denied:?}");
    assert_eq!(denied.message(), format!("contract {id} not found"));
    let wrong = upload_inspection_file(&platform, &inspector, &id, &"0".repeat(64), &pdf)
        .expect_err("the hash differs");
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument, "{wrong:?}");
    assert!(
        files_under(store.path()).is_empty(),
        "{:?}",
        files_under(store.path())
    );

    let stored = upload_inspection_file(&platform, &inspector, &id, &sha, &pdf).expect("stored");
    assert_eq!(stored.evidence_sha256, format!("sha256:{sha}"));
    assert!(stored.stored_now);
    assert_eq!(
        files_under(store.path()),
        vec![format!("sha256/{}/{sha}", &sha[..2])],
        "by its hash, where dispute's evidence goes"
    );
    let again = upload_inspection_file(&platform, &inspector, &id, &sha, &pdf).expect("again");
    assert!(!again.stored_now, "the same file is not stored twice");

    // A report names only files the store has.
    let mut unknown = report(&id, "files-0", "4.0", "CRITERION_OUTCOME_PASS");
    unknown["results"][0]["evidence_sha256"] = json!([format!("sha256:{}", "ab".repeat(32))]);
    let refused = platform
        .contract_call("SubmitInspectionReport", &inspector, &unknown)
        .expect_err("a file nobody uploaded");
    assert_eq!(refused.code, "InvalidArgument", "{refused:#?}");
    assert!(
        refused.message.contains("results[0].evidence_sha256[0]")
            || refused.stderr.contains("results[0].evidence_sha256[0]"),
        "{refused:#?}"
    );
    assert!(
        platform.get_contract(&id)["latestInspectionReport"].is_null(),
        "nothing was filed"
    );

    // The report names it.
    let mut filed = report(&id, "files-1", "4.0", "CRITERION_OUTCOME_PASS");
    filed["results"][0]["evidence_sha256"] = json!([stored.evidence_sha256]);
    let submitted = platform
        .contract_call("SubmitInspectionReport", &inspector, &filed)
        .expect("report");
    assert_eq!(
        submitted["report"]["results"][0]["evidenceSha256"][0],
        format!("sha256:{sha}"),
        "{submitted:#}"
    );
}
