//! Credentials worth no more than what they are for (issue 22), against the
//! real binaries: a service's key signs only its own service's tokens, no
//! token lives longer than the maximum lifetime, and the secrets published
//! with the source code work only in development mode.

use std::time::{SystemTime, UNIX_EPOCH};

use e2e_tests::scenario::{base64, hmac_sha256};
use e2e_tests::{
    MINT_TOKEN, SERVICES, SUPPLIER_REGISTRY, SUPPLIER_SERVICE, Service, TEST_SECRET,
    TEST_WEBHOOK_SECRET, TempDir, Value, free_port, fresh_database, json, run_binary,
};
use ta_runtime::auth::{Claims, DEV_HS256_SECRET, PLATFORM_AUDIENCE, Role, TokenIssuer};
use ta_testkit::{TEST_ISSUER, jwk_set, rs256_fixture_key, rs256_issuer};

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
    let trust_safety = mint_rs256("a", "people-1", "ts-1", "trust_safety", "trade-assurance");
    assert_eq!(
        code(&registry, "GetSupplier", &trust_safety, &get),
        "NotFound"
    );

    // Contract's key claiming a staff duty, or dispute.
    let as_finance = mint_rs256("b", "contract-1", "finance-1", "finance", "trade-assurance");
    assert_eq!(
        code(&registry, "GetSupplier", &as_finance, &get),
        "Unauthenticated"
    );
    let contract_as_arbiter =
        mint_rs256("b", "contract-1", "contract", "arbiter", "trade-assurance");
    assert_eq!(
        code(&registry, "GetSupplier", &contract_as_arbiter, &get),
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A support agent's token (test secret) issued at `iat`, expiring at `exp`.
fn support_token(iat: u64, exp: u64) -> String {
    ta_testkit::issuer()
        .sign(&Claims {
            sub: "support-1".into(),
            role: Role::Support,
            iss: TEST_ISSUER.into(),
            aud: PLATFORM_AUDIENCE.into(),
            exp,
            iat,
            nbf: None,
        })
        .expect("test token")
}

/// `claims` as they are (whatever their role), signed with the test secret:
/// a compact HS256 JWT.
fn hs256_token(claims: &Value) -> String {
    let part = |bytes: &[u8]| {
        base64(bytes)
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    };
    let signed = format!(
        "{}.{}",
        part(
            json!({ "alg": "HS256", "typ": "JWT" })
                .to_string()
                .as_bytes()
        ),
        part(claims.to_string().as_bytes())
    );
    let signature = part(&hmac_sha256(TEST_SECRET.as_bytes(), signed.as_bytes()));
    format!("{signed}.{signature}")
}

#[test]
fn a_token_beyond_the_maximum_lifetime_or_issued_in_the_future_is_refused() {
    let database = fresh_database();
    let mut registry = Service::spawn(SUPPLIER_REGISTRY, &[("DATABASE_URL", &database.url)]);
    registry.wait_serving();
    let get = json!({ "supplier_id": "00000000-0000-7000-8000-000000000000" });
    let now = unix_now();

    // An hour (the default maximum) passes authentication; two hours, or an
    // issue time ten minutes ahead, do not.
    let hour = support_token(now, now + 3_600);
    assert_eq!(code(&registry, "GetSupplier", &hour, &get), "NotFound");
    let two_hours = support_token(now, now + 7_200);
    assert_eq!(
        code(&registry, "GetSupplier", &two_hours, &get),
        "Unauthenticated"
    );
    let ahead = support_token(now + 600, now + 1_200);
    assert_eq!(
        code(&registry, "GetSupplier", &ahead, &get),
        "Unauthenticated"
    );

    // A well-signed, current token in the role `operator` of earlier
    // releases: an unknown role now, refused like any bad token.
    let mut claims = json!({
        "sub": "ops-1", "role": "operator", "iss": TEST_ISSUER, "aud": PLATFORM_AUDIENCE,
        "iat": now, "exp": now + 600,
    });
    assert_eq!(
        code(&registry, "GetSupplier", &hs256_token(&claims), &get),
        "Unauthenticated",
        "the role operator is retired"
    );
    claims["role"] = json!("support");
    assert_eq!(
        code(&registry, "GetSupplier", &hs256_token(&claims), &get),
        "NotFound",
        "the same token in a duty passes"
    );

    // A process configured for longer accepts the two hours.
    let mut patient = Service::spawn(
        SUPPLIER_REGISTRY,
        &[
            ("DATABASE_URL", &database.url),
            ("AUTH_JWT_MAX_LIFETIME", "3h"),
        ],
    );
    patient.wait_serving();
    assert_eq!(code(&patient, "GetSupplier", &two_hours, &get), "NotFound");

    // mint-token refuses to mint what the services would refuse.
    let output = run_binary(
        MINT_TOKEN,
        &[
            ("AUTH_JWT_HS256_SECRET", TEST_SECRET),
            ("AUTH_DEV_MODE", "true"),
        ],
        &["--subject", "buyer-1", "--role", "buyer", "--ttl", "2h"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AUTH_JWT_MAX_LIFETIME"), "{stderr}");
    let retired = run_binary(
        MINT_TOKEN,
        &[
            ("AUTH_JWT_HS256_SECRET", TEST_SECRET),
            ("AUTH_DEV_MODE", "true"),
        ],
        &["--subject", "ops-1", "--role", "operator", "--ttl", "1h"],
    );
    let stderr = String::from_utf8_lossy(&retired.stderr);
    assert_eq!(retired.status.code(), Some(2), "{stderr}");
    assert!(retired.stdout.is_empty(), "no token for the role operator");
}

#[test]
fn each_binary_refuses_the_development_secret_without_the_development_flag() {
    let listen = format!("127.0.0.1:{}", free_port());
    for binary_name in SERVICES {
        for secret in [DEV_HS256_SECRET, TEST_SECRET] {
            // Nothing listens on port 1: the refusal comes before any use of it.
            let env = [
                ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/never_used"),
                ("GRPC_LISTEN_ADDR", listen.as_str()),
                ("AUTH_JWT_HS256_SECRET", secret),
                ("LOG_FORMAT", "text"),
                ("ESCROW_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET),
                ("ESCROW_GATEWAY_URL", "http://127.0.0.1:9"),
            ];
            let output = run_binary(binary_name, &env, &[]);
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let context = format!("{binary_name} with {secret}: {}\n{said}", output.status);
            assert!(!output.status.success(), "{context}");
            assert_ne!(output.status.code(), Some(101), "a panic: {context}");
            assert!(
                said.contains("AUTH_JWT_HS256_SECRET") && said.contains("AUTH_DEV_MODE"),
                "{context}"
            );
            assert!(
                !said.contains(secret),
                "the secret is never printed: {context}"
            );
        }
    }

    // mint-token (behind `make token`) likewise.
    let args = ["--subject", "ts-1", "--role", "trust_safety", "--ttl", "1h"];
    let refused = run_binary(
        MINT_TOKEN,
        &[("AUTH_JWT_HS256_SECRET", DEV_HS256_SECRET)],
        &args,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AUTH_DEV_MODE"), "{stderr}");
    assert!(refused.stdout.is_empty(), "no token is printed");
    let minted = run_binary(
        MINT_TOKEN,
        &[
            ("AUTH_JWT_HS256_SECRET", DEV_HS256_SECRET),
            ("AUTH_DEV_MODE", "true"),
        ],
        &args,
    );
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).expect("utf-8 token");

    // With the flag (as `make run` sets it), the dev secret is the local path.
    let database = fresh_database();
    let mut registry = Service::spawn(
        SUPPLIER_REGISTRY,
        &[
            ("DATABASE_URL", &database.url),
            ("AUTH_JWT_HS256_SECRET", DEV_HS256_SECRET),
            ("AUTH_DEV_MODE", "true"),
        ],
    );
    registry.wait_serving();
    let get = json!({ "supplier_id": "00000000-0000-7000-8000-000000000000" });
    assert_eq!(
        code(&registry, "GetSupplier", token.trim(), &get),
        "NotFound"
    );
    let test_signed = TokenIssuer::hs256(TEST_SECRET, TEST_ISSUER)
        .mint(
            "finance-1",
            Role::Finance,
            PLATFORM_AUDIENCE,
            std::time::Duration::from_secs(600),
        )
        .expect("test token");
    assert_eq!(
        code(&registry, "GetSupplier", &test_signed, &get),
        "Unauthenticated",
        "another secret's token"
    );
}
