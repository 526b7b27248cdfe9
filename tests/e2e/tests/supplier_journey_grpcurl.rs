//! A supplier's whole life, through the real grpcurl against the real
//! supplier-registry binary: register, verify, enrol, reserve and release cover
//! (idempotent retries, the limit), a completed contract and its review, search.

use e2e_tests::*;

fn method(name: &str) -> String {
    format!("{SUPPLIER_SERVICE}/{name}")
}

fn usd(amount_minor: i64) -> Value {
    json!({ "currency_code": "USD", "amount_minor": amount_minor })
}

/// The ids of the suppliers a SearchSuppliers response lists.
fn ids(response: &Value) -> Vec<&str> {
    response["suppliers"]
        .as_array()
        .expect("suppliers array")
        .iter()
        .map(|s| s["supplierId"].as_str().expect("supplierId"))
        .collect()
}

#[test]
fn a_supplier_from_registration_to_search_through_grpcurl() {
    let database = fresh_database();
    let mut registry = Service::spawn(SUPPLIER_REGISTRY, &[("DATABASE_URL", &database.url)]);
    registry.wait_serving();

    let supplier_principal = "supplier-e2e-1";
    let supplier = mint(supplier_principal, Role::Supplier);
    // Staff tokens come from the mint-token CLI, as a developer gets one:
    // trust and safety to verify and enrol, support to look.
    let trust_safety = mint_with_cli("ts-e2e-1", Role::TrustSafety);
    let support = mint_with_cli("support-e2e-1", Role::Support);
    let service = mint_service("contract", "supplier-registry");
    let buyer_principal = "buyer-e2e-1";
    let buyer = mint(buyer_principal, Role::Buyer);

    // --- register, as the supplier itself --------------------------------------------
    let registered = registry.call_ok(
        &method("RegisterSupplier"),
        Some(&supplier),
        &json!({
            "idempotency_key": "register-1",
            "legal_name": "Hanoi Precision Parts JSC",
            "country_code": "VN",
            "business_licence_number": "0101234567",
            "contacts": [{ "name": "Nguyen Van An", "email": "an@example.com" }]
        }),
    );
    let s = &registered["supplier"];
    let id = s["supplierId"].as_str().expect("supplierId").to_owned();
    assert!(!id.is_empty());
    assert_eq!(s["ownerPrincipalId"], supplier_principal);
    assert_eq!(s["legalName"], "Hanoi Precision Parts JSC");
    assert_eq!(s["countryCode"], "VN");
    assert_eq!(s["verificationStatus"], "VERIFICATION_STATUS_UNVERIFIED");
    assert_eq!(s["status"], "SUPPLIER_STATUS_ACTIVE");
    assert_eq!(s["enrolled"], false);
    assert_eq!(s["tradeAssuranceBadge"], false);
    assert_eq!(s["contacts"][0]["email"], "an@example.com");

    // A malformed request is refused, naming the field.
    let invalid = registry
        .call(
            &method("RegisterSupplier"),
            Some(&supplier),
            &json!({
                "idempotency_key": "register-invalid",
                "legal_name": "Hanoi Precision Parts JSC",
                "country_code": "Vietnam",
                "business_licence_number": "0101234567",
                "contacts": [{ "name": "Nguyen Van An", "email": "an@example.com" }]
            }),
        )
        .expect_err("not an ISO country code");
    assert_eq!(invalid.code, "InvalidArgument", "{invalid:#?}");
    assert!(invalid.message.contains("country_code"), "{invalid:#?}");

    // A buyer may read it but may not verify it.
    let read = registry.call_ok(
        &method("GetSupplier"),
        Some(&buyer),
        &json!({ "supplier_id": id }),
    );
    assert_eq!(read["supplier"]["supplierId"], id.as_str());
    let refused = registry
        .call(
            &method("VerifySupplier"),
            Some(&buyer),
            &json!({ "idempotency_key": "verify-by-buyer", "supplier_id": id }),
        )
        .expect_err("a buyer cannot verify");
    assert_eq!(refused.code, "PermissionDenied", "{refused:#?}");

    // --- verification -------------------------------------------------------------------
    let submitted = registry.call_ok(
        &method("SubmitVerification"),
        Some(&supplier),
        &json!({ "idempotency_key": "submit-1", "supplier_id": id }),
    );
    assert_eq!(
        submitted["supplier"]["verificationStatus"],
        "VERIFICATION_STATUS_SUBMITTED"
    );
    // Staff say why they change something: no reason, no verification.
    let unexplained = registry
        .call(
            &method("VerifySupplier"),
            Some(&trust_safety),
            &json!({ "idempotency_key": "verify-0", "supplier_id": id }),
        )
        .expect_err("a staff mutation needs a reason");
    assert_eq!(unexplained.code, "InvalidArgument", "{unexplained:#?}");
    assert!(unexplained.stderr.contains("reason"), "{unexplained:#?}");
    let verified = registry.call_ok(
        &method("VerifySupplier"),
        Some(&trust_safety),
        &json!({ "idempotency_key": "verify-1", "supplier_id": id,
                 "reason": "business licence checked against the national registry" }),
    );
    assert_eq!(
        verified["supplier"]["verificationStatus"],
        "VERIFICATION_STATUS_VERIFIED"
    );
    assert_eq!(verified["supplier"]["tradeAssuranceBadge"], false);

    // --- Trade Assurance: 10 000.00 USD --------------------------------------------------
    let enrolled = registry.call_ok(
        &method("EnrollTradeAssurance"),
        Some(&trust_safety),
        &json!({ "idempotency_key": "enrol-1", "supplier_id": id, "ta_limit": usd(1_000_000),
                 "reason": "two years of on-time orders, audited factory" }),
    );
    let s = &enrolled["supplier"];
    assert_eq!(s["enrolled"], true);
    assert_eq!(s["tradeAssuranceBadge"], true);
    assert_eq!(s["taLimit"]["currencyCode"], "USD");
    assert_eq!(int(&s["taLimit"]["amountMinor"]), 1_000_000);
    assert_eq!(int(&s["coverReserved"]["amountMinor"]), 0);
    assert_eq!(int(&s["coverRemaining"]["amountMinor"]), 1_000_000);

    // --- cover ----------------------------------------------------------------------------
    let reserve = json!({
        "idempotency_key": "reserve-contract-1",
        "supplier_id": id,
        "contract_id": "contract-e2e-1",
        "amount": usd(250_000),
    });
    let reserved = registry.call_ok(&method("ReserveCover"), Some(&service), &reserve);
    let reservation = &reserved["reservation"];
    assert_eq!(reservation["supplierId"], id.as_str());
    assert_eq!(reservation["contractId"], "contract-e2e-1");
    assert_eq!(reservation["status"], "COVER_RESERVATION_STATUS_ACTIVE");
    assert_eq!(int(&reservation["amount"]["amountMinor"]), 250_000);
    assert_eq!(int(&reserved["coverRemaining"]["amountMinor"]), 750_000);

    // The retry (same key, same body) replays the first answer and reserves nothing more.
    let retried = registry.call_ok(&method("ReserveCover"), Some(&service), &reserve);
    assert_eq!(retried, reserved);
    let cover = registry.call_ok(
        &method("GetCover"),
        Some(&support),
        &json!({ "supplier_id": id }),
    );
    assert_eq!(int(&cover["taLimit"]["amountMinor"]), 1_000_000);
    assert_eq!(int(&cover["coverReserved"]["amountMinor"]), 250_000);
    assert_eq!(int(&cover["coverRemaining"]["amountMinor"]), 750_000);
    let active = cover["activeReservations"].as_array().expect("array");
    assert_eq!(active.len(), 1, "{cover}");
    assert_eq!(active[0]["contractId"], "contract-e2e-1");

    // More than the 7 500.00 USD left is refused, and grpcurl says so.
    let too_much = registry
        .call(
            &method("ReserveCover"),
            Some(&service),
            &json!({
                "idempotency_key": "reserve-contract-2",
                "supplier_id": id,
                "contract_id": "contract-e2e-2",
                "amount": usd(750_001),
            }),
        )
        .expect_err("beyond the remaining limit");
    assert!(
        too_much.stderr.contains("Code: FailedPrecondition"),
        "{too_much:#?}"
    );
    // grpcurl exits with 64 + the status code (FAILED_PRECONDITION = 9).
    assert_eq!(too_much.exit_code, Some(64 + 9), "{too_much:#?}");
    let cover = registry.call_ok(
        &method("GetCover"),
        Some(&support),
        &json!({ "supplier_id": id }),
    );
    assert_eq!(int(&cover["coverReserved"]["amountMinor"]), 250_000);

    let released = registry.call_ok(
        &method("ReleaseCover"),
        Some(&service),
        &json!({
            "idempotency_key": "release-contract-1",
            "supplier_id": id,
            "contract_id": "contract-e2e-1",
        }),
    );
    assert_eq!(
        released["reservation"]["status"],
        "COVER_RESERVATION_STATUS_RELEASED"
    );
    assert!(
        released["reservation"]["releasedAt"].is_string(),
        "{released}"
    );
    assert_eq!(int(&released["coverRemaining"]["amountMinor"]), 1_000_000);

    // --- a completed contract and the buyer's review ---------------------------------------
    let completed = registry.call_ok(
        &method("RecordCompletedContract"),
        Some(&service),
        &json!({
            "idempotency_key": "completed-contract-1",
            "supplier_id": id,
            "contract_id": "contract-e2e-1",
            "buyer_principal_id": buyer_principal,
        }),
    );
    assert_eq!(completed["supplierId"], id.as_str());
    assert_eq!(completed["contractId"], "contract-e2e-1");

    let reviewed = registry.call_ok(
        &method("SubmitReview"),
        Some(&buyer),
        &json!({
            "idempotency_key": "review-contract-1",
            "supplier_id": id,
            "contract_id": "contract-e2e-1",
            "rating": 4,
            "comment": "Parts within tolerance, shipped on time.",
        }),
    );
    assert_eq!(reviewed["review"]["rating"], 4);
    assert_eq!(reviewed["review"]["buyerPrincipalId"], buyer_principal);
    assert_eq!(reviewed["supplier"]["reviewCount"], 1);
    assert_eq!(reviewed["supplier"]["averageRatingCenti"], 400);

    // --- search -------------------------------------------------------------------------------
    // Another supplier in the same country, registered by trust and safety, without the badge.
    let other = registry.call_ok(
        &method("RegisterSupplier"),
        Some(&trust_safety),
        &json!({
            "idempotency_key": "register-other",
            "legal_name": "Saigon Textiles Co.",
            "country_code": "VN",
            "business_licence_number": "0309876543",
            "contacts": [{ "name": "Tran Thi Binh", "email": "binh@example.com" }],
            "owner_principal_id": "supplier-e2e-2",
            "reason": "onboarded at the Canton Fair booth",
        }),
    );
    let other_id = other["supplier"]["supplierId"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(other["supplier"]["ownerPrincipalId"], "supplier-e2e-2");

    let search =
        |filter: Value| registry.call_ok(&method("SearchSuppliers"), Some(&buyer), &filter);
    let badged = search(json!({ "has_trade_assurance_badge": true, "country_code": "VN" }));
    assert_eq!(ids(&badged), [id.as_str()], "{badged}");
    let found = &badged["suppliers"][0];
    assert_eq!(found["tradeAssuranceBadge"], true);
    assert_eq!(found["averageRatingCenti"], 400);
    assert_eq!(found["reviewCount"], 1);
    assert_eq!(int(&found["coverRemaining"]["amountMinor"]), 1_000_000);
    assert_eq!(badged["nextPageToken"], "");

    let unbadged = search(json!({ "has_trade_assurance_badge": false, "country_code": "VN" }));
    assert_eq!(ids(&unbadged), [other_id.as_str()], "{unbadged}");
    let elsewhere = search(json!({ "has_trade_assurance_badge": true, "country_code": "CN" }));
    assert_eq!(ids(&elsewhere), Vec::<&str>::new(), "{elsewhere}");
    let well_rated = search(json!({ "country_code": "VN", "min_average_rating_centi": 400 }));
    assert_eq!(ids(&well_rated), [id.as_str()], "{well_rated}");
}
