use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use tower::{Layer, ServiceExt};

use super::*;

const SECRET: &str = "0123456789abcdef-test-secret";
const SERVICE: &str = "supplier-registry";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const GET_SUPPLIER: &str = "/tradeassurance.supplier.v1.SupplierRegistryService/GetSupplier";
const VERIFY_SUPPLIER: &str = "/tradeassurance.supplier.v1.SupplierRegistryService/VerifySupplier";
const RESERVE_COVER: &str = "/tradeassurance.supplier.v1.SupplierRegistryService/ReserveCover";
const RECORD_PENALTY: &str = "/tradeassurance.supplier.v1.SupplierRegistryService/RecordPenalty";

fn private_pem(key: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(format!("rs256_{key}_private.pem"))).unwrap()
}

/// A scratch directory of this test process, removed by the caller.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ta-auth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a JWK set with the public halves of fixture keys, each under `kid`.
fn write_jwks(path: &Path, keys: &[(&str, &str)]) {
    let keys: Vec<Jwk> = keys
        .iter()
        .map(|(key, kid)| {
            let encoding = EncodingKey::from_rsa_pem(&private_pem(key)).unwrap();
            let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
}

fn hs256_config() -> AuthConfig {
    AuthConfig::hs256(SECRET)
}

fn jwks_config(path: &Path) -> AuthConfig {
    AuthConfig {
        jwks_file: Some(path.to_owned()),
        ..AuthConfig::default()
    }
}

fn hs256_issuer() -> TokenIssuer {
    TokenIssuer::hs256(SECRET, DEFAULT_ISSUER)
}

fn rs256_issuer(key: &str, kid: &str) -> TokenIssuer {
    TokenIssuer::rs256(&private_pem(key), kid, DEFAULT_ISSUER).unwrap()
}

fn hs256_verifier() -> TokenVerifier {
    TokenVerifier::from_config(&hs256_config(), SERVICE).unwrap()
}

fn token(issuer: &TokenIssuer, subject: &str, role: Role, audience: &str) -> String {
    issuer
        .mint(subject, role, audience, Duration::from_secs(600))
        .unwrap()
}

fn claims_json(role: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": "user-1",
        "role": role,
        "iss": DEFAULT_ISSUER,
        "aud": PLATFORM_AUDIENCE,
        "exp": unix_now() + 3600,
        "iat": unix_now(),
    })
}

fn hs256_token(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

// --- roles -------------------------------------------------------------------

#[test]
fn role_round_trips_through_str_and_serde() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        let json = serde_json::to_string(&role).unwrap();
        assert_eq!(json, format!("\"{}\"", role.as_str()));
        assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
    }
    assert!("Buyer".parse::<Role>().is_err());
    assert!("admin".parse::<Role>().is_err());
    assert!("operator".parse::<Role>().is_err());
    assert!(Role::ALL.iter().filter(|r| r.is_staff()).count() == 4);
}

// --- verification ------------------------------------------------------------

#[test]
fn people_may_carry_the_platform_or_the_service_audience() {
    let verifier = hs256_verifier();
    for audience in [PLATFORM_AUDIENCE, SERVICE] {
        let principal = verifier
            .verify(&token(&hs256_issuer(), "buyer-42", Role::Buyer, audience))
            .unwrap();
        assert_eq!(principal.subject, "buyer-42");
        assert_eq!(principal.role, Role::Buyer);
    }
    let elsewhere = token(&hs256_issuer(), "buyer-42", Role::Buyer, "escrow");
    assert_eq!(verifier.verify(&elsewhere), Err(AuthError::WrongAudience));
}

#[test]
fn a_service_token_must_name_the_called_service() {
    let verifier = hs256_verifier();
    let mine = token(&hs256_issuer(), "contract", Role::Service, SERVICE);
    assert_eq!(verifier.verify(&mine).unwrap().subject, "contract");
    for audience in [PLATFORM_AUDIENCE, "escrow"] {
        let other = token(&hs256_issuer(), "contract", Role::Service, audience);
        assert_eq!(
            verifier.verify(&other),
            Err(AuthError::WrongAudience),
            "{audience}"
        );
    }
    // The configured audience replaces the service name.
    let config = AuthConfig {
        audience: Some("registry.prod".into()),
        ..hs256_config()
    };
    let verifier = TokenVerifier::from_config(&config, SERVICE).unwrap();
    let token = token(&hs256_issuer(), "contract", Role::Service, "registry.prod");
    assert!(verifier.verify(&token).is_ok());
}

#[test]
fn rs256_keys_are_picked_by_kid() {
    let dir = scratch("kid");
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[("a", "key-a"), ("b", "key-b")]);
    let verifier = TokenVerifier::from_config(&jwks_config(&jwks), SERVICE).unwrap();
    for (key, kid) in [("a", "key-a"), ("b", "key-b")] {
        let t = token(
            &rs256_issuer(key, kid),
            "ops-1",
            Role::TrustSafety,
            PLATFORM_AUDIENCE,
        );
        assert_eq!(verifier.verify(&t).unwrap().role, Role::TrustSafety);
    }
    // Key a's signature under key b's kid, an unknown kid, and no kid at all.
    let swapped = token(
        &rs256_issuer("a", "key-b"),
        "ops-1",
        Role::TrustSafety,
        PLATFORM_AUDIENCE,
    );
    assert_eq!(verifier.verify(&swapped), Err(AuthError::BadSignature));
    let unknown = token(
        &rs256_issuer("c", "key-c"),
        "ops-1",
        Role::TrustSafety,
        PLATFORM_AUDIENCE,
    );
    assert_eq!(verifier.verify(&unknown), Err(AuthError::UnknownKey));
    let pem = private_pem("a");
    let no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims_json("trust_safety"),
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    assert_eq!(verifier.verify(&no_kid), Err(AuthError::UnknownKey));
    std::fs::remove_dir_all(dir).unwrap();
}

// --- keys bound to their principal ------------------------------------------

/// A JWK set: fixture key a is the people's issuer's (`people-1`), b is
/// contract's own (`contract-1`), c dispute's own (`dispute-1`).
fn write_bound_jwks(path: &Path) {
    let keys: Vec<serde_json::Value> = [
        ("a", "people-1", None),
        ("b", "contract-1", Some("contract")),
        ("c", "dispute-1", Some("dispute")),
    ]
    .into_iter()
    .map(|(key, kid, service)| rs256_issuer(key, kid).public_jwk(service).unwrap())
    .collect();
    std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
}

#[test]
fn a_services_key_signs_only_its_own_service_tokens() {
    let dir = scratch("bound");
    let jwks = dir.join("jwks.json");
    write_bound_jwks(&jwks);
    let verifier = TokenVerifier::from_config(&jwks_config(&jwks), SERVICE).unwrap();
    let contract = rs256_issuer("b", "contract-1");
    let people = rs256_issuer("a", "people-1");

    let own = token(&contract, "contract", Role::Service, SERVICE);
    assert_eq!(
        verifier.verify(&own),
        Ok(principal("contract", Role::Service))
    );
    let dispute = token(
        &rs256_issuer("c", "dispute-1"),
        "dispute",
        Role::Service,
        SERVICE,
    );
    assert_eq!(
        verifier.verify(&dispute),
        Ok(principal("dispute", Role::Service))
    );
    let operator = token(&people, "ops-1", Role::TrustSafety, PLATFORM_AUDIENCE);
    assert_eq!(
        verifier.verify(&operator),
        Ok(principal("ops-1", Role::TrustSafety))
    );

    // Contract's key claiming to be an operator, dispute, or anyone else.
    for (subject, role, audience) in [
        ("contract", Role::TrustSafety, PLATFORM_AUDIENCE),
        ("ops-1", Role::TrustSafety, PLATFORM_AUDIENCE),
        ("dispute", Role::Service, SERVICE),
        ("contract", Role::Buyer, SERVICE),
        ("supplier-1", Role::Supplier, PLATFORM_AUDIENCE),
    ] {
        let refused = verifier.verify(&token(&contract, subject, role, audience));
        assert_eq!(
            refused,
            Err(AuthError::KeyNotForPrincipal),
            "{subject} as {role}"
        );
        let status = tonic::Status::from(refused.unwrap_err());
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    // The people's issuer cannot speak for a service.
    for subject in ["contract", "dispute"] {
        let forged = token(&people, subject, Role::Service, SERVICE);
        assert_eq!(
            verifier.verify(&forged),
            Err(AuthError::KeyNotForPrincipal),
            "{subject}"
        );
    }

    // HS256 allowed beside the key set signs people's tokens only.
    let both = TokenVerifier::from_config(
        &AuthConfig {
            hs256_secret: Some(SECRET.into()),
            allow_hs256: true,
            ..jwks_config(&jwks)
        },
        SERVICE,
    )
    .unwrap();
    let hs_operator = token(
        &hs256_issuer(),
        "ops-1",
        Role::TrustSafety,
        PLATFORM_AUDIENCE,
    );
    assert!(both.verify(&hs_operator).is_ok());
    let hs_service = token(&hs256_issuer(), "contract", Role::Service, SERVICE);
    assert_eq!(both.verify(&hs_service), Err(AuthError::KeyNotForPrincipal));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_service_binding_must_name_a_service() {
    let dir = scratch("bad-binding");
    for (name, binding) in [
        ("number", serde_json::json!(7)),
        ("empty", serde_json::json!(" ")),
        ("control", serde_json::json!("con\ttract")),
    ] {
        let mut jwk = rs256_issuer("b", "contract-1").public_jwk(None).unwrap();
        jwk[JWK_SERVICE_MEMBER] = binding;
        let path = dir.join(name);
        std::fs::write(&path, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
        let message = config_error(jwks_config(&path));
        assert!(message.contains("AUTH_JWT_JWKS_FILE"), "{name}: {message}");
        assert!(message.contains(JWK_SERVICE_MEMBER), "{name}: {message}");
    }
    assert!(hs256_issuer().public_jwk(Some("contract")).is_none());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_rotated_key_set_is_picked_up_without_a_restart() {
    let dir = scratch("rotate");
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[("a", "key-a")]);
    let verifier = TokenVerifier::from_config(&jwks_config(&jwks), SERVICE).unwrap();
    let new_key = token(
        &rs256_issuer("c", "key-c"),
        "ops-1",
        Role::TrustSafety,
        PLATFORM_AUDIENCE,
    );
    assert_eq!(verifier.verify(&new_key), Err(AuthError::UnknownKey));

    // Rotate: c joins, a leaves. The file is looked at again after a second.
    write_jwks(&jwks, &[("c", "key-c")]);
    let old_key = token(
        &rs256_issuer("a", "key-a"),
        "ops-1",
        Role::TrustSafety,
        PLATFORM_AUDIENCE,
    );
    let mut picked_up = false;
    for _ in 0..40 {
        if verifier.verify(&new_key).is_ok() {
            picked_up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(picked_up, "the new key was never accepted");
    assert_eq!(verifier.verify(&old_key), Err(AuthError::UnknownKey));

    // A broken file keeps the last good keys.
    std::fs::write(&jwks, "{ not json").unwrap();
    std::thread::sleep(Duration::from_millis(1_100));
    assert!(verifier.verify(&new_key).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hs256_is_off_where_a_key_set_is_configured_unless_allowed() {
    let dir = scratch("hs256-off");
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[("a", "key-a")]);
    let both = AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..jwks_config(&jwks)
    };
    let message = TokenVerifier::from_config(&both, SERVICE)
        .unwrap_err()
        .to_string();
    assert!(message.contains("AUTH_JWT_ALLOW_HS256"), "{message}");
    assert!(!message.contains(SECRET));

    let hs = hs256_token(&claims_json("trust_safety"));
    let rs_only = TokenVerifier::from_config(&jwks_config(&jwks), SERVICE).unwrap();
    assert_eq!(
        rs_only.verify(&hs),
        Err(AuthError::UnsupportedAlgorithm("HS256".into()))
    );
    let allowed = TokenVerifier::from_config(
        &AuthConfig {
            allow_hs256: true,
            ..both
        },
        SERVICE,
    )
    .unwrap();
    assert!(allowed.verify(&hs).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let verifier = hs256_verifier();
    let mut claims = claims_json("buyer");
    claims["exp"] = serde_json::json!(unix_now() - 3600);
    assert_eq!(
        verifier.verify(&hs256_token(&claims)),
        Err(AuthError::Expired)
    );
    let mut claims = claims_json("buyer");
    claims["iss"] = serde_json::json!("someone-else");
    assert_eq!(
        verifier.verify(&hs256_token(&claims)),
        Err(AuthError::WrongIssuer)
    );
    // `operator`, the one staff role of earlier releases, is retired: staff
    // act in a duty.
    for retired in ["admin", "operator"] {
        let mut claims = claims_json("buyer");
        claims["role"] = serde_json::json!(retired);
        assert_eq!(
            verifier.verify(&hs256_token(&claims)),
            Err(AuthError::UnknownRole(retired.into()))
        );
    }
    let mut claims = claims_json("buyer");
    claims.as_object_mut().unwrap().remove("role");
    assert_eq!(
        verifier.verify(&hs256_token(&claims)),
        Err(AuthError::MissingClaim("role".into()))
    );
    for sub in [" ", "tab\there", &"x".repeat(MAX_SUBJECT_LEN + 1)] {
        let mut claims = claims_json("buyer");
        claims["sub"] = serde_json::json!(sub);
        assert_eq!(
            verifier.verify(&hs256_token(&claims)),
            Err(AuthError::InvalidClaim("sub".into()))
        );
    }
    let wrong_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims_json("buyer"),
        &EncodingKey::from_secret(b"another-secret-of-16-bytes"),
    )
    .unwrap();
    assert_eq!(verifier.verify(&wrong_secret), Err(AuthError::BadSignature));
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims_json("buyer"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&hs512),
        Err(AuthError::UnsupportedAlgorithm("HS512".into()))
    );
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims_json("trust_safety").to_string())
    );
    assert_eq!(verifier.verify(&alg_none), Err(AuthError::Malformed));
    assert_eq!(verifier.verify("garbage"), Err(AuthError::Malformed));
}

#[test]
fn a_token_lives_at_most_the_maximum_lifetime_counted_from_a_past_iat() {
    let verifier = hs256_verifier();
    let now = unix_now();
    let verify = |verifier: &TokenVerifier, iat: Option<u64>, exp: u64| {
        let mut claims = claims_json("buyer");
        claims["exp"] = serde_json::json!(exp);
        match iat {
            Some(iat) => claims["iat"] = serde_json::json!(iat),
            None => {
                claims.as_object_mut().unwrap().remove("iat");
            }
        }
        verifier.verify(&hs256_token(&claims))
    };
    // The default maximum is an hour.
    assert!(verify(&verifier, Some(now), now + 3_600).is_ok());
    assert_eq!(
        verify(&verifier, Some(now), now + 3_601),
        Err(AuthError::LifetimeTooLong(3_600))
    );
    assert_eq!(
        verify(&verifier, Some(now - 600), now + 3_600),
        Err(AuthError::LifetimeTooLong(3_600)),
        "the lifetime counts from iat, not from now"
    );
    assert_eq!(
        verify(&verifier, None, now + 600),
        Err(AuthError::MissingClaim("iat".into()))
    );
    assert_eq!(
        verify(&verifier, Some(now + 600), now + 1_200),
        Err(AuthError::IssuedInTheFuture)
    );
    assert!(
        verify(&verifier, Some(now + 10), now + 1_200).is_ok(),
        "within the leeway"
    );
    assert_eq!(
        verify(&verifier, Some(now + 20), now + 10),
        Err(AuthError::InvalidClaim("iat".into())),
        "expiring before it was issued"
    );
    let status = tonic::Status::from(AuthError::LifetimeTooLong(3_600));
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // Minted for longer than the maximum: refused; a longer maximum admits it.
    let day = token_for(&hs256_issuer(), Duration::from_secs(86_400));
    assert_eq!(
        verifier.verify(&day),
        Err(AuthError::LifetimeTooLong(3_600))
    );
    let patient = TokenVerifier::from_config(
        &AuthConfig {
            max_lifetime: Duration::from_secs(86_400),
            ..hs256_config()
        },
        SERVICE,
    )
    .unwrap();
    assert!(patient.verify(&day).is_ok());
}

fn token_for(issuer: &TokenIssuer, ttl: Duration) -> String {
    issuer
        .mint("buyer-1", Role::Buyer, PLATFORM_AUDIENCE, ttl)
        .unwrap()
}

// --- configuration -------------------------------------------------------------

fn config_error(config: AuthConfig) -> String {
    TokenVerifier::from_config(&config, SERVICE)
        .unwrap_err()
        .to_string()
}

#[test]
fn configuration_errors_name_the_variable() {
    let message = config_error(AuthConfig::default());
    assert!(message.contains("AUTH_JWT_HS256_SECRET") && message.contains("AUTH_JWT_JWKS_FILE"));
    let message = config_error(AuthConfig::hs256("short-secret"));
    assert!(message.contains("AUTH_JWT_HS256_SECRET") && !message.contains("short-secret"));
    let message = config_error(AuthConfig {
        issuer: " ".into(),
        ..hs256_config()
    });
    assert!(message.contains("AUTH_JWT_ISSUER"), "{message}");
    let message = config_error(AuthConfig {
        audience: Some(String::new()),
        ..hs256_config()
    });
    assert!(message.contains("AUTH_JWT_AUDIENCE"), "{message}");

    let dir = scratch("bad-jwks");
    let missing = dir.join("missing.json");
    let message = config_error(jwks_config(&missing));
    assert!(message.contains("AUTH_JWT_JWKS_FILE") && message.contains("missing.json"));
    let encoding = EncodingKey::from_rsa_pem(&private_pem("a")).unwrap();
    let without_kid = Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
    let hmac = Jwk::from_encoding_key(&EncodingKey::from_secret(b"k"), Algorithm::HS256).unwrap();
    let mut hmac_with_kid = hmac.clone();
    hmac_with_kid.common.key_id = Some("k1".into());
    for (name, content, expected) in [
        ("garbage", "not json".to_owned(), "not a usable JWK set"),
        ("empty", r#"{"keys":[]}"#.to_owned(), "holds no key"),
        (
            "no-kid",
            serde_json::json!({ "keys": [without_kid] }).to_string(),
            "no `kid`",
        ),
        (
            "hmac",
            serde_json::json!({ "keys": [hmac_with_kid] }).to_string(),
            "not an RSA key",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let message = config_error(jwks_config(&path));
        assert!(message.contains("AUTH_JWT_JWKS_FILE"), "{name}: {message}");
        assert!(message.contains(expected), "{name}: {message}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_published_secrets_need_the_development_flag() {
    for secret in PUBLISHED_HS256_SECRETS {
        let message = config_error(AuthConfig::hs256(secret));
        assert!(
            message.contains("AUTH_JWT_HS256_SECRET") && message.contains("AUTH_DEV_MODE"),
            "{message}"
        );
        assert!(!message.contains(secret), "{message}");
        let development = AuthConfig {
            dev_mode: true,
            ..AuthConfig::hs256(secret)
        };
        assert!(TokenVerifier::from_config(&development, SERVICE).is_ok());
        // Padding does not hide it.
        let padded = AuthConfig::hs256(format!("{secret}\n"));
        assert!(padded.check_development_secret().is_err());
    }
    // A secret of one's own needs no flag.
    assert!(TokenVerifier::from_config(&hs256_config(), SERVICE).is_ok());
}

#[test]
fn debug_output_hides_the_secret() {
    assert!(!format!("{:?}", hs256_config()).contains(SECRET));
    assert!(!format!("{:?}", hs256_issuer()).contains(SECRET));
    assert!(!format!("{:?}", hs256_verifier()).contains(SECRET));
}

#[test]
fn clap_reads_the_environment_names_and_defaults() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthConfig,
    }
    let cli =
        <Cli as clap::Parser>::try_parse_from(["svc", "--auth-jwt-hs256-secret", SECRET]).unwrap();
    assert_eq!(cli.auth.issuer, DEFAULT_ISSUER);
    assert_eq!(cli.auth.own_audience(SERVICE), SERVICE);
    assert!(!cli.auth.allow_hs256);
    assert!(!cli.auth.dev_mode);
    let command = <Cli as clap::CommandFactory>::command();
    let envs: Vec<_> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
        .collect();
    for env in [
        "AUTH_JWT_ISSUER",
        "AUTH_JWT_AUDIENCE",
        "AUTH_JWT_PLATFORM_AUDIENCE",
        "AUTH_JWT_HS256_SECRET",
        "AUTH_JWT_ALLOW_HS256",
        "AUTH_JWT_JWKS_FILE",
        "AUTH_JWT_LEEWAY_SECONDS",
        "AUTH_JWT_MAX_LIFETIME",
        "AUTH_DEV_MODE",
    ] {
        assert!(envs.iter().any(|e| e == env), "{env} missing");
    }
    assert_eq!(cli.auth.max_lifetime, Duration::from_secs(3_600));
    for out_of_range in ["30s", "2d"] {
        assert!(
            <Cli as clap::Parser>::try_parse_from(["svc", "--auth-jwt-max-lifetime", out_of_range])
                .is_err(),
            "{out_of_range}"
        );
    }
    assert!(
        <Cli as clap::Parser>::try_parse_from(["svc", "--auth-jwt-leeway-seconds", "99999"])
            .is_err()
    );
}

#[test]
fn minted_claims_are_complete() {
    let minted = hs256_issuer()
        .mint(
            "supplier-7",
            Role::Supplier,
            "escrow",
            Duration::from_secs(3600),
        )
        .unwrap();
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(&minted).unwrap();
    assert_eq!(claims.sub, "supplier-7");
    assert_eq!(claims.role, Role::Supplier);
    assert_eq!(claims.iss, DEFAULT_ISSUER);
    assert_eq!(claims.aud, "escrow");
    assert_eq!(claims.exp - claims.iat, 3600);
    assert!(matches!(
        hs256_issuer().mint(" ", Role::Buyer, "escrow", Duration::from_secs(1)),
        Err(MintError::EmptySubject)
    ));
    let header = jsonwebtoken::decode_header(token(
        &rs256_issuer("a", "key-a"),
        "contract",
        Role::Service,
        "escrow",
    ))
    .unwrap();
    assert_eq!(header.kid.as_deref(), Some("key-a"));
}

// --- policy ------------------------------------------------------------------

fn principal(subject: &str, role: Role) -> Principal {
    Principal {
        subject: subject.into(),
        role,
    }
}

#[test]
fn the_declared_policy_names_services_one_by_one() {
    let policy =
        MethodPolicy::declared_for(&["tradeassurance.supplier.v1.SupplierRegistryService"]);
    let contract = principal("contract", Role::Service);
    let dispute = principal("dispute", Role::Service);
    assert_eq!(policy.decide(RESERVE_COVER, &contract), Decision::Allowed);
    assert_eq!(policy.decide(RESERVE_COVER, &dispute), Decision::Denied);
    assert_eq!(policy.decide(RECORD_PENALTY, &dispute), Decision::Allowed);
    assert_eq!(policy.decide(RECORD_PENALTY, &contract), Decision::Denied);
    // Service-only: an operator may not reserve a supplier's cover either.
    assert_eq!(
        policy.decide(RESERVE_COVER, &principal("ops", Role::TrustSafety)),
        Decision::Denied
    );
    assert_eq!(
        policy.decide(RESERVE_COVER, &principal("b", Role::Buyer)),
        Decision::Denied
    );
    assert_eq!(
        policy.decide(
            "/tradeassurance.escrow.v1.EscrowService/FundEscrow",
            &principal("b", Role::Buyer)
        ),
        Decision::NotServed
    );
}

#[test]
#[should_panic(expected = "not a gRPC method path")]
fn policy_rejects_malformed_paths() {
    let _ = MethodPolicy::new().allow("GetSupplier", &[Role::Buyer]);
}

// --- layer -------------------------------------------------------------------

/// What the inner service saw: `None` if it was not called, else the caller
/// in the request extensions (if any).
type Seen = Arc<Mutex<Option<Option<Caller>>>>;

async fn call(
    authorization: Option<String>,
    path: &str,
) -> (tonic::Status, Option<Option<Caller>>) {
    let seen = Seen::default();
    let recorder = Arc::clone(&seen);
    let inner = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
        let seen = Arc::clone(&recorder);
        async move {
            *seen.lock().unwrap() = Some(request.extensions().get::<Caller>().cloned());
            Ok::<_, Infallible>(tonic::Status::ok("").into_http())
        }
    });
    let policy = MethodPolicy::new()
        .allow(GET_SUPPLIER, &[Role::Buyer])
        .allow(VERIFY_SUPPLIER, &[Role::TrustSafety])
        .allow_services(VERIFY_SUPPLIER, &["contract"]);
    let service = AuthLayer::new(Arc::new(hs256_verifier()), Arc::new(policy)).layer(inner);
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc");
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    let response = service
        .oneshot(builder.body(tonic::body::Body::default()).unwrap())
        .await
        .unwrap();
    let status = tonic::Status::from_header_map(response.headers()).expect("grpc-status");
    let seen = seen.lock().unwrap().clone();
    (status, seen)
}

fn bearer(subject: &str, role: Role) -> Option<String> {
    Some(format!(
        "Bearer {}",
        token(&hs256_issuer(), subject, role, SERVICE)
    ))
}

#[tokio::test]
async fn the_layer_authenticates_then_authorizes() {
    let (status, seen) = call(None, "/grpc.health.v1.Health/Check").await;
    assert_eq!(status.code(), tonic::Code::Ok);
    assert_eq!(seen, Some(None), "public paths pass without a caller");

    let (status, seen) = call(None, GET_SUPPLIER).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(seen, None);
    for header in ["Basic abc", "Bearer", "Bearer a b", "Bearer not.a.jwt"] {
        let (status, seen) = call(Some(header.into()), GET_SUPPLIER).await;
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header}");
        assert_eq!(seen, None);
    }

    let (status, seen) = call(bearer("ops", Role::TrustSafety), GET_SUPPLIER).await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "role trust_safety may not call SupplierRegistryService/GetSupplier"
    );
    assert_eq!(seen, None);
    let (status, _) = call(bearer("dispute", Role::Service), VERIFY_SUPPLIER).await;
    assert_eq!(
        status.message(),
        "service dispute may not call SupplierRegistryService/VerifySupplier"
    );
    let (status, _) = call(bearer("b", Role::Buyer), "/x.v1.Other/Thing").await;
    assert_eq!(status.message(), "Other/Thing is not served by this server");

    let (status, seen) = call(bearer("contract", Role::Service), VERIFY_SUPPLIER).await;
    assert_eq!(status.code(), tonic::Code::Ok);
    let caller = seen.flatten().expect("the caller reaches the handler");
    assert_eq!(caller.principal, principal("contract", Role::Service));
    assert_eq!(caller.method, VERIFY_SUPPLIER);
}

#[test]
fn a_listing_filter_is_narrowed_to_the_caller_who_is_told_when_it_named_another() {
    let buyer = Principal {
        subject: "buyer-1".into(),
        role: Role::Buyer,
    };
    for (named, named_another) in [
        (None, false),
        (Some("buyer-1".to_owned()), false),
        (Some("buyer-2".to_owned()), true),
    ] {
        let mut filter = named.clone();
        assert_eq!(
            buyer.narrow_to_self(&mut filter),
            named_another,
            "{named:?}"
        );
        assert_eq!(filter.as_deref(), Some("buyer-1"), "{named:?}");
    }
}
