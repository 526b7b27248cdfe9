//! Supplier-registry's listings and feed through the real binary and the real
//! grpcurl: a buyer's name search sorted by remaining cover and by rating,
//! trust and safety's queue of suppliers waiting for verification, a
//! supplier account's own suppliers, staff listing cover reservations, and a
//! back end reading the registry's event feed; and a stranger (another
//! supplier account, a buyer) getting nothing of another party's rows.

use e2e_tests::{platform::Staff, *};

fn method(name: &str) -> String {
    format!("{SUPPLIER_SERVICE}/{name}")
}

fn usd(amount_minor: i64) -> Value {
    json!({ "currency_code": "USD", "amount_minor": amount_minor })
}

/// The ids of the suppliers a SearchSuppliers response lists.
fn ids(response: &Value) -> Vec<String> {
    response["suppliers"]
        .as_array()
        .expect("suppliers array")
        .iter()
        .map(|s| s["supplierId"].as_str().expect("supplierId").to_owned())
        .collect()
}

/// The contract ids a ListCoverReservations response lists.
fn contracts(response: &Value) -> Vec<String> {
    response["reservations"]
        .as_array()
        .expect("reservations array")
        .iter()
        .map(|r| r["contractId"].as_str().expect("contractId").to_owned())
        .collect()
}

/// The events a feed stream sends within a few seconds of being opened
/// (the backlog; the stream itself stays open, so grpcurl is stopped).
fn feed(registry: &Service, token: &str, after: u64) -> Vec<Value> {
    let mut args = call_args(
        &registry.addr(),
        &method("StreamSupplierEvents"),
        Some(token),
        &json!({ "after_sequence": after }),
    );
    let at = args
        .iter()
        .position(|a| a == "-max-time")
        .expect("-max-time");
    args[at + 1] = "3".into();
    let output = grpcurl(&args);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    // grpcurl prints one JSON object per message.
    let mut events = Vec::new();
    let (mut depth, mut current) = (0, String::new());
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
                let message: Value = serde_json::from_str(&current).expect("a feed message");
                if !message["event"].is_null() {
                    events.push(message["event"].clone());
                }
                current.clear();
            }
        }
    }
    events
}

#[test]
fn searches_queues_reservations_and_the_feed_through_grpcurl() {
    let database = fresh_database();
    let mut registry = Service::spawn(SUPPLIER_REGISTRY, &[("DATABASE_URL", &database.url)]);
    registry.wait_serving();
    let staff = Staff::mint();
    let owner_a = "supplier-lists-a";
    let owner_b = "supplier-lists-b";
    let supplier_a = mint(owner_a, Role::Supplier);
    let supplier_b = mint(owner_b, Role::Supplier);
    let buyer_principal = "buyer-lists-1";
    let buyer = mint(buyer_principal, Role::Buyer);
    let contract = mint_service("contract", SUPPLIER_REGISTRY);

    // --- three suppliers of two accounts -------------------------------------------
    let register = |token: &str, name: &str, licence: &str| {
        registry.call_ok(
            &method("RegisterSupplier"),
            Some(token),
            &json!({
                "idempotency_key": format!("register-{licence}"),
                "legal_name": name,
                "country_code": "CN",
                "business_licence_number": licence,
                "contacts": [{ "name": "Li Wei", "email": "sales@example.com" }]
            }),
        )["supplier"]["supplierId"]
            .as_str()
            .expect("supplierId")
            .to_owned()
    };
    let a1 = register(&supplier_a, "Jingdezhen Ceramics Co., Ltd.", "LISTS-A1");
    let a2 = register(&supplier_a, "Jingdezhen Tooling Works", "LISTS-A2");
    let b1 = register(&supplier_b, "Dehua Ceramics Factory", "LISTS-B1");
    let submit = |token: &str, id: &str| {
        registry.call_ok(
            &method("SubmitVerification"),
            Some(token),
            &json!({ "idempotency_key": format!("submit-{id}"), "supplier_id": id }),
        );
    };
    submit(&supplier_b, &b1);
    submit(&supplier_a, &a1);

    // --- trust and safety's queue: oldest submission first --------------------------
    let queue = json!({
        "verification_statuses": ["VERIFICATION_STATUS_SUBMITTED"],
        "sort": "SUPPLIER_SORT_SUBMITTED_AT",
        "page": { "page_size": 1 }
    });
    let first = registry.call_ok(
        &method("SearchSuppliers"),
        Some(&staff.trust_safety),
        &queue,
    );
    assert_eq!(ids(&first), std::slice::from_ref(&b1));
    let token = first["nextPageToken"].as_str().expect("a next page");
    assert!(!token.is_empty());
    let mut next = queue.clone();
    next["page"]["page_token"] = json!(token);
    let second = registry.call_ok(&method("SearchSuppliers"), Some(&staff.trust_safety), &next);
    assert_eq!(ids(&second), std::slice::from_ref(&a1));
    assert_eq!(second["nextPageToken"], "");
    // The queue is the staff's: a buyer or a supplier asking for it is refused.
    for token in [&buyer, &supplier_a] {
        let refused = registry
            .call(&method("SearchSuppliers"), Some(token), &queue)
            .expect_err("the staff filters are the staff's");
        assert_eq!(refused.code, "PermissionDenied", "{refused:#?}");
    }
    // Both verified and enrolled, B with more cover.
    for (id, limit) in [(&b1, 2_000_000), (&a1, 1_000_000)] {
        registry.call_ok(
            &method("VerifySupplier"),
            Some(&staff.trust_safety),
            &json!({ "idempotency_key": format!("verify-{id}"), "supplier_id": id,
                     "reason": "business licence checked against the registry" }),
        );
        registry.call_ok(
            &method("EnrollTradeAssurance"),
            Some(&staff.trust_safety),
            &json!({ "idempotency_key": format!("enrol-{id}"), "supplier_id": id,
                     "ta_limit": usd(limit), "reason": "three years of clean trade history" }),
        );
    }
    let empty = registry.call_ok(&method("SearchSuppliers"), Some(&staff.support), &queue);
    assert!(ids(&empty).is_empty(), "the queue is worked off: {empty}");

    // --- a buyer searches by name, sorted ----------------------------------------------
    let ceramics = |sort: &str| {
        registry.call_ok(
            &method("SearchSuppliers"),
            Some(&buyer),
            &json!({ "name_query": "CERAMICS", "sort": sort,
                     "min_cover_remaining": usd(0) }),
        )
    };
    let by_cover = ceramics("SUPPLIER_SORT_COVER_REMAINING");
    assert_eq!(ids(&by_cover), [b1.clone(), a1.clone()]);
    for supplier in by_cover["suppliers"].as_array().expect("suppliers") {
        assert_eq!(
            supplier["privateView"], false,
            "a buyer sees the public view"
        );
        assert_eq!(supplier["ownerPrincipalId"], "");
        assert_eq!(supplier["contacts"], json!([]));
    }
    // A's buyer reviews it: five stars put A first by rating.
    registry.call_ok(
        &method("RecordCompletedContract"),
        Some(&contract),
        &json!({ "idempotency_key": "completed-a1", "supplier_id": a1,
                 "contract_id": "contract-lists-0", "buyer_principal_id": buyer_principal }),
    );
    registry.call_ok(
        &method("SubmitReview"),
        Some(&buyer),
        &json!({ "idempotency_key": "review-a1", "supplier_id": a1,
                 "contract_id": "contract-lists-0", "rating": 5, "comment": "as agreed" }),
    );
    let by_rating = ceramics("SUPPLIER_SORT_AVERAGE_RATING");
    assert_eq!(ids(&by_rating), [a1.clone(), b1.clone()]);
    assert_eq!(by_rating["suppliers"][0]["averageRatingCenti"], 500);
    let words = registry.call_ok(
        &method("SearchSuppliers"),
        Some(&buyer),
        &json!({ "name_query": "jingdezhen tool" }),
    );
    assert_eq!(ids(&words), std::slice::from_ref(&a2));

    // --- a supplier account's own suppliers, and nothing of another's -------------------
    let owned = |token: &str, name_query: &str| {
        registry.call_ok(
            &method("SearchSuppliers"),
            Some(token),
            &json!({ "owned_by_me": true, "name_query": name_query }),
        )
    };
    let mut own_a = vec![a1.clone(), a2.clone()];
    own_a.sort();
    let of_a = owned(&supplier_a, "");
    assert_eq!(ids(&of_a), own_a);
    for supplier in of_a["suppliers"].as_array().expect("suppliers") {
        assert_eq!(
            supplier["ownerPrincipalId"], owner_a,
            "its owner's private view"
        );
    }
    assert_eq!(ids(&owned(&supplier_b, "")), std::slice::from_ref(&b1));
    assert!(
        ids(&owned(&supplier_b, "jingdezhen")).is_empty(),
        "B asking for A's names gets nothing"
    );
    let not_a_supplier = registry
        .call(
            &method("SearchSuppliers"),
            Some(&buyer),
            &json!({ "owned_by_me": true }),
        )
        .expect_err("a buyer owns no suppliers");
    assert_eq!(
        not_a_supplier.code, "InvalidArgument",
        "{not_a_supplier:#?}"
    );
    assert!(
        not_a_supplier.message.contains("owned_by_me"),
        "{not_a_supplier:#?}"
    );

    // --- cover reservations, listed by staff ----------------------------------------------
    for (id, contract_id) in [(&a1, "contract-lists-1"), (&b1, "contract-lists-2")] {
        registry.call_ok(
            &method("ReserveCover"),
            Some(&contract),
            &json!({ "idempotency_key": format!("reserve-{contract_id}"), "supplier_id": id,
                     "contract_id": contract_id, "amount": usd(250_000) }),
        );
    }
    registry.call_ok(
        &method("ReleaseCover"),
        Some(&contract),
        &json!({ "idempotency_key": "release-contract-lists-1", "supplier_id": a1,
                 "contract_id": "contract-lists-1" }),
    );
    let all = registry.call_ok(
        &method("ListCoverReservations"),
        Some(&staff.finance),
        &json!({ "page": { "page_size": 10 } }),
    );
    assert_eq!(contracts(&all), ["contract-lists-2", "contract-lists-1"]);
    assert_eq!(
        all["reservations"][1]["status"],
        "COVER_RESERVATION_STATUS_RELEASED"
    );
    assert_eq!(all["reservations"][0]["amount"]["amountMinor"], "250000");
    let active = registry.call_ok(
        &method("ListCoverReservations"),
        Some(&staff.platform),
        &json!({ "status": "COVER_RESERVATION_STATUS_ACTIVE" }),
    );
    assert_eq!(contracts(&active), ["contract-lists-2"]);
    let of_a1 = registry.call_ok(
        &method("ListCoverReservations"),
        Some(&staff.arbiter),
        &json!({ "supplier_id": a1 }),
    );
    assert_eq!(contracts(&of_a1), ["contract-lists-1"]);
    // Paged one at a time, the token continues the listing.
    let page_one = registry.call_ok(
        &method("ListCoverReservations"),
        Some(&staff.support),
        &json!({ "page": { "page_size": 1 } }),
    );
    assert_eq!(contracts(&page_one), ["contract-lists-2"]);
    let page_two = registry.call_ok(
        &method("ListCoverReservations"),
        Some(&staff.support),
        &json!({ "page": { "page_size": 1, "page_token": page_one["nextPageToken"] } }),
    );
    assert_eq!(contracts(&page_two), ["contract-lists-1"]);
    // Parties list no reservations, not even their own supplier's.
    for token in [&buyer, &supplier_a] {
        let refused = registry
            .call(
                &method("ListCoverReservations"),
                Some(token),
                &json!({ "supplier_id": a1 }),
            )
            .expect_err("staff and back ends only");
        assert_eq!(refused.code, "PermissionDenied", "{refused:#?}");
    }

    // --- the registry's event feed, read by a back end ------------------------------------
    let expected = [
        ("SUPPLIER_EVENT_TYPE_REGISTERED", &a1),
        ("SUPPLIER_EVENT_TYPE_REGISTERED", &a2),
        ("SUPPLIER_EVENT_TYPE_REGISTERED", &b1),
        ("SUPPLIER_EVENT_TYPE_VERIFICATION_SUBMITTED", &b1),
        ("SUPPLIER_EVENT_TYPE_VERIFICATION_SUBMITTED", &a1),
        ("SUPPLIER_EVENT_TYPE_VERIFIED", &b1),
        ("SUPPLIER_EVENT_TYPE_ENROLLED", &b1),
        ("SUPPLIER_EVENT_TYPE_VERIFIED", &a1),
        ("SUPPLIER_EVENT_TYPE_ENROLLED", &a1),
    ];
    let events = wait_until(PATIENCE, "the feed to number every event", || {
        let events = feed(&registry, &staff.platform, 0);
        if events.len() >= expected.len() {
            Ok(events)
        } else {
            Err(format!("{} events", events.len()))
        }
    });
    let told: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["supplierId"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let wanted: Vec<(&str, &str)> = expected.iter().map(|(t, id)| (*t, id.as_str())).collect();
    assert_eq!(told, wanted, "reservations and reviews are no events");
    let sequences: Vec<i64> = events.iter().map(|e| int(&e["sequence"])).collect();
    assert_eq!(sequences, (1..=9).collect::<Vec<i64>>());
    // Facts, not views: who did it and the new values.
    assert_eq!(events[0]["actor"]["principalId"], owner_a);
    assert_eq!(events[0]["actor"]["role"], "ROLE_SUPPLIER");
    assert_eq!(events[0]["ownerPrincipalId"], owner_a);
    assert_eq!(events[5]["actor"]["principalId"], "ts-journey");
    assert_eq!(events[5]["actor"]["role"], "ROLE_TRUST_SAFETY");
    assert_eq!(
        events[5]["verificationStatus"],
        "VERIFICATION_STATUS_VERIFIED"
    );
    assert_eq!(events[6]["taLimit"]["amountMinor"], "2000000");
    // From a cursor: only what follows it.
    let after = feed(&registry, &staff.platform, 7);
    assert_eq!(
        after
            .iter()
            .map(|e| int(&e["sequence"]))
            .collect::<Vec<_>>(),
        [8, 9]
    );
    // Parties do not read the feed.
    for token in [&buyer, &supplier_a] {
        let refused = registry
            .call(
                &method("StreamSupplierEvents"),
                Some(token),
                &json!({ "after_sequence": 0 }),
            )
            .expect_err("staff and back ends only");
        assert_eq!(refused.code, "PermissionDenied", "{refused:#?}");
    }
}
