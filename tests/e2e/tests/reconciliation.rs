//! The cross-service reconciliation through the real binaries: consistent
//! books report nothing; three inconsistencies introduced on purpose (cover
//! reserved for a contract nobody knows, a cancelled contract whose escrow
//! account still holds its money, an open claim whose freeze was lifted)
//! are each reported with both sides' figures, and the stranded cover is
//! corrected by trust and safety; fresh rows wait until they settle; only
//! staff may ask.

use std::collections::BTreeSet;

use e2e_tests::{platform::*, *};

const BUYER: &str = "buyer-reconciliation";
const OWNER: &str = "supplier-reconciliation";
const RECONCILE: &str = "tradeassurance.ops.v1.ReconciliationService/ReconcilePlatform";

fn reconcile(dispute: &Service, token: &str, body: &Value) -> Result<Value, RpcError> {
    dispute.call(RECONCILE, Some(token), body)
}

fn count(report: &Value, field: &str) -> i64 {
    report[field].as_i64().unwrap_or(0)
}

/// (kind, contract id, claim id) of every difference.
fn differences(report: &Value) -> BTreeSet<(String, String, String)> {
    report["differences"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|d| {
                    let text = |f: &str| d[f].as_str().unwrap_or_default().to_owned();
                    (text("kind"), text("contractId"), text("claimId"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn difference<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["differences"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} in {report:#}"))
}

/// (service, state, amount in USD minor units) of one side.
fn figure(side: &Value) -> (&str, &str, Option<i64>) {
    assert!(
        side["amount"].is_null() || side["amount"]["currencyCode"] == "USD",
        "{side:#}"
    );
    (
        side["service"].as_str().unwrap_or_default(),
        side["state"].as_str().unwrap_or_default(),
        (!side["amount"].is_null()).then(|| int(&side["amount"]["amountMinor"])),
    )
}

#[test]
fn each_inconsistency_is_reported_with_both_sides_and_consistent_books_report_none() {
    // Days of 2 s: the claim window (90 days) outlasts the test.
    let platform = Platform::start(&[("CONTRACT_TERM_DAY", "2s")]);
    let store = TempDir::new("evidence");
    let dispute = platform.spawn_dispute(store.path(), &[]);
    let buyer = mint(BUYER, Role::Buyer);
    let supplier = mint(OWNER, Role::Supplier);
    let supplier_id = platform.supplier(OWNER, Some(10_000_000));
    let staff = &platform.staff;

    // Two delivered orders; a claim on the first, negotiating (escrow frozen).
    let (claimed, claimed_account) =
        platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let (ended, ended_account) =
        platform.delivered_contract(&buyer, &supplier, &supplier_id, 90, 30);
    let filed = dispute.call_ok(
        &dispute_method("FileClaim"),
        Some(&buyer),
        &json!({ "idempotency_key": "claim-1", "contract_id": claimed,
                 "reason": "CLAIM_REASON_QUALITY_MISMATCH", "quality_criterion_ids": ["QC-1"],
                 "amount_claimed": usd(100_000), "description": "the glaze is cracked" }),
    );
    let claim_id = filed["claim"]["claimId"]
        .as_str()
        .expect("claim id")
        .to_owned();
    wait_until(PATIENCE, "the claim negotiates", || {
        let claim = dispute.call_ok(
            &dispute_method("GetClaim"),
            Some(&buyer),
            &json!({ "claim_id": claim_id }),
        );
        (claim["claim"]["status"] == "CLAIM_STATUS_NEGOTIATING")
            .then_some(())
            .ok_or_else(|| format!("{claim:#}"))
    });
    let everything = json!({ "settled_for": "0s" });
    let clean = wait_until(PATIENCE, "the books agree", || {
        let report = reconcile(&dispute, &staff.support, &everything).expect("reconcile");
        (count(&report, "differencesTotal") == 0)
            .then(|| report.clone())
            .ok_or_else(|| format!("{report:#}"))
    });
    assert_eq!(count(&clean, "contractsChecked"), 2, "{clean:#}");
    assert_eq!(count(&clean, "reservationsChecked"), 2, "{clean:#}");
    assert_eq!(count(&clean, "accountsChecked"), 2, "{clean:#}");
    assert_eq!(count(&clean, "claimsChecked"), 1, "{clean:#}");

    // 1. Cover reserved for a contract contract never heard of.
    let ghost = "0193f000-0000-7000-8000-00000000dead";
    platform.registry.call_ok(
        &registry_method("ReserveCover"),
        Some(&mint_service("contract", "supplier-registry")),
        &json!({ "idempotency_key": "ghost-cover", "supplier_id": supplier_id,
                 "contract_id": ghost, "amount": usd(250_000) }),
    );
    // 2. The second contract cancelled behind escrow's back: its account
    //    still holds the whole payment (and its cover is still reserved).
    platform.session().execute(&format!(
        "UPDATE contract.contracts SET status = 'cancelled' WHERE contract_id = '{ended}'"
    ));
    // 3. The claim's freeze lifted directly at escrow while it negotiates.
    platform.escrow.call_ok(
        &escrow_method("UnfreezeEscrow"),
        Some(&staff.arbiter),
        &json!({ "idempotency_key": "lift", "escrow_account_id": claimed_account,
                 "claim_id": claim_id, "reason": "reconciliation test: freeze lifted by hand" }),
    );

    let report = reconcile(&dispute, &staff.finance, &everything).expect("reconcile");
    let want: BTreeSet<(String, String, String)> = [
        ("DIFFERENCE_KIND_COVER_WITHOUT_CONTRACT", ghost, ""),
        (
            "DIFFERENCE_KIND_COVER_OF_ENDED_CONTRACT",
            ended.as_str(),
            "",
        ),
        (
            "DIFFERENCE_KIND_MONEY_HELD_FOR_ENDED_CONTRACT",
            ended.as_str(),
            "",
        ),
        (
            "DIFFERENCE_KIND_OPEN_CLAIM_WITHOUT_FREEZE",
            claimed.as_str(),
            claim_id.as_str(),
        ),
    ]
    .map(|(k, c, l)| (k.to_owned(), c.to_owned(), l.to_owned()))
    .into();
    assert_eq!(differences(&report), want, "{report:#}");
    assert_eq!(count(&report, "differencesTotal"), 4);

    let ghost_cover = difference(&report, "DIFFERENCE_KIND_COVER_WITHOUT_CONTRACT");
    assert_eq!(ghost_cover["supplierId"], supplier_id.as_str());
    assert_eq!(
        figure(&ghost_cover["left"]),
        ("supplier-registry", "active reservation", Some(250_000))
    );
    assert_eq!(figure(&ghost_cover["right"]), ("contract", "missing", None));
    let held = difference(&report, "DIFFERENCE_KIND_MONEY_HELD_FOR_ENDED_CONTRACT");
    assert_eq!(held["escrowAccountId"], ended_account.as_str());
    assert_eq!(figure(&held["left"]), ("escrow", "held", Some(310_000)));
    assert_eq!(
        figure(&held["right"]),
        ("contract", "CONTRACT_STATUS_CANCELLED", Some(310_000))
    );
    assert!(
        held["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("3,100.00 USD"),
        "{held:#}"
    );
    let unfrozen = difference(&report, "DIFFERENCE_KIND_OPEN_CLAIM_WITHOUT_FREEZE");
    assert_eq!(unfrozen["escrowAccountId"], claimed_account.as_str());
    assert_eq!(unfrozen["left"]["state"], "CLAIM_STATUS_NEGOTIATING");
    assert_eq!(unfrozen["right"]["state"], "no freeze for the claim");

    // Trust and safety corrects the stranded cover (audited, with the
    // finding as its reason); the next comparison no longer reports it.
    platform.registry.call_ok(
        &registry_method("ReleaseStrandedCover"),
        Some(&staff.trust_safety),
        &json!({ "idempotency_key": "correct-ghost", "supplier_id": supplier_id,
                 "contract_id": ghost, "reason": "reconciliation: COVER_WITHOUT_CONTRACT" }),
    );
    let corrected = reconcile(&dispute, &staff.support, &everything).expect("reconcile");
    assert_eq!(count(&corrected, "differencesTotal"), 3, "{corrected:#}");
    assert!(
        !differences(&corrected)
            .iter()
            .any(|(kind, _, _)| kind == "DIFFERENCE_KIND_COVER_WITHOUT_CONTRACT"),
        "{corrected:#}"
    );

    // With the default settling time every row above is too fresh to judge.
    let fresh = reconcile(&dispute, &staff.trust_safety, &json!({})).expect("reconcile");
    assert_eq!(count(&fresh, "differencesTotal"), 0, "{fresh:#}");
    assert!(count(&fresh, "rowsUnsettled") >= 3, "{fresh:#}");

    // Only staff may ask, and a settling time beyond a day is refused.
    for token in [&buyer, &supplier, &staff.platform] {
        let refused = reconcile(&dispute, token, &everything).expect_err("not staff");
        assert_eq!(refused.code, "PermissionDenied", "{refused:#?}");
    }
    let refused = reconcile(
        &dispute,
        &staff.support,
        &json!({ "settled_for": "90000s" }),
    )
    .expect_err("too long");
    assert_eq!(refused.code, "InvalidArgument", "{refused:#?}");
    assert!(refused.message.contains("settled_for"), "{refused:#?}");
}
