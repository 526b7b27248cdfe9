//! Credentials worth no more than what they are for (issue 22), against the
//! real binaries: a service's key signs only its own service's tokens.

use e2e_tests::{
    MINT_TOKEN, SUPPLIER_REGISTRY, SUPPLIER_SERVICE, Service, TempDir, fresh_database, json,
    run_binary,
};
use ta_testkit::{jwk_set, rs256_fixture_key, rs256_issuer};

/// A token minted by the `mint-token` binary with the RS256 fixture key `key`
/// under `kid`.
fn mint_rs256(key: &str, kid: &str, subject: &str, role: &str, audience: &str) -> String {
    let key_file = rs256_fixture_key(key);
    let output = run_binary(
        MINT_TOKEN,
        &[],
        &[
            "--signing-key-file",
            key_file.to_str().expect("utf-8 path"),
            "--kid",
            kid,
            "--subject",
            subject,
            "--role",
            role,
            "--audience",
            audience,
            "--ttl",
            "10m",
        ],
    );
    assert!(
        output.status.success(),
        "mint-token: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 token")
        .trim()
        .to_owned()
}

/// The gRPC code grpcurl reported for `method` called with `token`, or "OK".
fn code(registry: &Service, method: &str, token: &str, body: &e2e_tests::Value) -> String {
    match registry.call(&format!("{SUPPLIER_SERVICE}/{method}"), Some(token), body) {
        Ok(_) => "OK".to_owned(),
        Err(error) => error.code,
    }
}

#[test]
fn a_services_key_signs_only_its_own_service_and_people_keys_no_service() {
    let database = fresh_database();
    let dir = TempDir::new("trust-jwks");
    // The deployed shape: RS256 only, the people's issuer key (a) beside
    // contract's (b) and dispute's (c) own keys, each bound to its service.
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        jwk_set(&[
            (&rs256_issuer("a", "people-1"), None),
            (&rs256_issuer("b", "contract-1"), Some("contract")),
            (&rs256_issuer("c", "dispute-1"), Some("dispute")),
        ]),
    )
    .expect("write the JWK set");
    let mut registry = Service::spawn_without(
        SUPPLIER_REGISTRY,
        &["AUTH_JWT_HS256_SECRET"],
        &[
            ("DATABASE_URL", &database.url),
            ("AUTH_JWT_JWKS_FILE", jwks.to_str().expect("utf-8 path")),
        ],
    );
    registry.wait_serving();

    let penalty = json!({});
    let get = json!({ "supplier_id": "00000000-0000-7000-8000-000000000000" });
    // Each key as what it is: past authentication (the empty request is
    // invalid, the supplier unknown).
    let dispute = mint_rs256("c", "dispute-1", "dispute", "service", SUPPLIER_REGISTRY);
    assert_eq!(
        code(&registry, "RecordPenalty", &dispute, &penalty),
        "InvalidArgument"
    );
    let operator = mint_rs256("a", "people-1", "ops-1", "operator", "trade-assurance");
    assert_eq!(code(&registry, "GetSupplier", &operator, &get), "NotFound");

    // Contract's key claiming to be an operator, or dispute.
    let as_operator = mint_rs256("b", "contract-1", "ops-1", "operator", "trade-assurance");
    assert_eq!(
        code(&registry, "GetSupplier", &as_operator, &get),
        "Unauthenticated"
    );
    let contract_as_operator =
        mint_rs256("b", "contract-1", "contract", "operator", "trade-assurance");
    assert_eq!(
        code(&registry, "GetSupplier", &contract_as_operator, &get),
        "Unauthenticated"
    );
    let as_dispute = mint_rs256("b", "contract-1", "dispute", "service", SUPPLIER_REGISTRY);
    assert_eq!(
        code(&registry, "RecordPenalty", &as_dispute, &penalty),
        "Unauthenticated"
    );
    // The people's issuer speaking for a service.
    let people_as_dispute = mint_rs256("a", "people-1", "dispute", "service", SUPPLIER_REGISTRY);
    assert_eq!(
        code(&registry, "RecordPenalty", &people_as_dispute, &penalty),
        "Unauthenticated"
    );
}
