//! Who may call what: the access matrix derived from the one declaration (the
//! `access` option on each RPC in the proto), every person's role and every
//! service principal against every RPC; suppliers acting only on their own
//! profiles, buyers reviewing only their own contracts, and a valid token on
//! every call but health.

mod common;

use std::time::Duration;

use common::*;
use sqlx::PgPool;
use ta_proto::supplier as pb;
use ta_runtime::auth::{Role, TokenIssuer};
use ta_testkit::access::{
    Caller, PEOPLE, SERVICES, check_refusals, declared_roles, declared_rpcs, declared_services,
};
use tonic::Code;

const UNKNOWN_ID: &str = "0190c5a2-7a2b-7c3d-8e4f-5a6b7c8d9e0f";
/// A second supplier account, owning nothing of [`SUPPLIER`]'s.
const OTHER_SUPPLIER: &str = "supplier-globex";
const OTHER_BUYER: &str = "buyer-2";

/// The supplier role acts as the owner of the supplier under test, so only
/// the role can be what is refused.
fn auth(caller: Caller) -> Auth<'static> {
    let (subject, role) = caller.principal(BUYER, SUPPLIER, OPERATOR);
    Auth::Valid(subject, role)
}

#[test]
fn every_rpc_of_the_service_declares_who_may_call_it() {
    let mut rpcs = RPCS.to_vec();
    rpcs.sort_unstable();
    assert_eq!(
        declared_rpcs(REGISTRY_SERVICE),
        rpcs,
        "the declarations cover exactly the RPCs"
    );
}

#[sqlx::test(migrations = false)]
async fn callers_the_proto_does_not_declare_are_permission_denied(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = badged_supplier(&mut client, "LIC-ROLES", 100_000).await;
    let before = snapshot(&pool).await;

    let (refused, cells) = check_refusals(
        REGISTRY_SERVICE,
        every_call(&id, "k"),
        Call::rpc,
        async |call, caller| call.send(&mut client, auth(caller)).await,
    )
    .await;
    assert_eq!(cells, RPCS.len() * (PEOPLE.len() + SERVICES.len()));
    assert_eq!(RPCS.len(), 23);
    // Least privilege: most cells are refused, each service calls only its own.
    assert!(refused > cells / 2, "{refused} of {cells} refused");
    for service in ["escrow", "supplier-registry", "payment-gateway"] {
        assert!(
            RPCS.iter()
                .all(|rpc| !Caller::Service(service).declared_for(REGISTRY_SERVICE, rpc)),
            "{service} calls nothing here"
        );
    }
    assert_eq!(snapshot(&pool).await, before, "a refused call wrote");
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn callers_the_proto_declares_get_past_authorization(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let mut admitted = 0;
    for call in every_call(UNKNOWN_ID, "k") {
        let rpc = call.rpc();
        // A registration that fails validation, so it writes nothing either.
        let call = match call {
            Call::RegisterSupplier(request) => {
                Call::RegisterSupplier(pb::RegisterSupplierRequest {
                    country_code: "XX".into(),
                    ..request
                })
            }
            other => other,
        };
        for caller in Caller::all().filter(|c| c.declared_for(REGISTRY_SERVICE, rpc)) {
            let outcome = call.clone().send(&mut client, auth(caller)).await;
            let code = outcome.err().map_or(Code::Ok, |s| s.code());
            let expected = match rpc {
                "RegisterSupplier" => Code::InvalidArgument,
                // Listings and the feed: nothing of an unknown supplier.
                "SearchSuppliers" | "ListCoverReservations" | "StreamSupplierEvents" => Code::Ok,
                _ => Code::NotFound,
            };
            assert_eq!(code, expected, "{caller:?} calling {rpc}");
            admitted += 1;
        }
    }
    assert!(admitted >= RPCS.len(), "every RPC admits someone");
    assert_eq!(snapshot(&pool).await.rows("idempotency_keys"), 0);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_supplier_may_not_act_on_another_suppliers_profile(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = register(&mut client, "LIC-OWNED").await;
    client
        .register_supplier(as_role(
            registration("reg-globex", "LIC-GLOBEX"),
            OTHER_SUPPLIER,
            Role::Supplier,
        ))
        .await
        .expect("the other supplier registers itself");
    client
        .record_inquiry(service(pb::RecordInquiryRequest {
            idempotency_key: "inquiry-1".into(),
            supplier_id: id.clone(),
            inquiry_id: "inquiry-1".into(),
        }))
        .await
        .unwrap();
    let before = snapshot(&pool).await;

    let calls: Vec<Call> = every_call(&id, "k")
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                Call::UpdateSupplierContacts(_)
                    | Call::SubmitVerification(_)
                    | Call::GetCover(_)
                    | Call::RecordInquiryReply(_)
            )
        })
        .collect();
    assert_eq!(calls.len(), 4);
    for call in calls.clone() {
        let rpc = call.rpc();
        let status = call
            .send(&mut client, Auth::Valid(OTHER_SUPPLIER, Role::Supplier))
            .await
            .expect_err(&format!("another supplier's {rpc} was accepted"));
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
        assert_eq!(
            status.message(),
            format!("supplier {id} belongs to another account"),
            "{rpc}"
        );
    }
    // Registering in someone else's name is refused too.
    let status = client
        .register_supplier(as_role(
            pb::RegisterSupplierRequest {
                owner_principal_id: SUPPLIER.into(),
                ..registration("reg-impostor", "LIC-IMPOSTOR")
            },
            OTHER_SUPPLIER,
            Role::Supplier,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("owner_principal_id"),
        "{}",
        status.message()
    );
    assert_eq!(snapshot(&pool).await, before, "a refused call wrote");

    // The owner may do each of them, under the very same keys.
    for call in calls {
        let rpc = call.rpc();
        call.send(&mut client, Auth::Valid(SUPPLIER, Role::Supplier))
            .await
            .unwrap_or_else(|s| panic!("the owner's {rpc}: {s:?}"));
    }
    let owned = supplier(&mut client, &id).await;
    assert_eq!(owned.contacts, vec![contact()]);
    assert_eq!(
        owned.verification_status(),
        pb::VerificationStatus::Submitted
    );
    assert_eq!(owned.response_rate_basis_points, 10_000);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_buyer_may_not_review_another_buyers_contract(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = register(&mut client, "LIC-REVIEWED").await;
    client
        .record_completed_contract(service(pb::RecordCompletedContractRequest {
            idempotency_key: "completed-1".into(),
            supplier_id: id.clone(),
            contract_id: "contract-1".into(),
            buyer_principal_id: BUYER.into(),
        }))
        .await
        .unwrap();
    let before = snapshot(&pool).await;

    let review = pb::SubmitReviewRequest {
        idempotency_key: "review-1".into(),
        supplier_id: id.clone(),
        contract_id: "contract-1".into(),
        rating: 1,
        comment: "never bought from them, but still".into(),
    };
    let status = client
        .submit_review(as_role(review.clone(), OTHER_BUYER, Role::Buyer))
        .await
        .unwrap_err();
    // Answered as a contract it never completed: reviews cannot probe.
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "completed contract contract-1 not found");
    let unknown = client
        .submit_review(as_role(
            pb::SubmitReviewRequest {
                idempotency_key: "review-unknown".into(),
                contract_id: "contract-unknown".into(),
                ..review.clone()
            },
            OTHER_BUYER,
            Role::Buyer,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), status.code());
    assert_eq!(
        unknown.message().replace("contract-unknown", "<id>"),
        status.message().replace("contract-1", "<id>")
    );
    assert_eq!(unknown.details(), status.details());
    assert_eq!(snapshot(&pool).await, before, "a refused review wrote");

    let own = client
        .submit_review(as_role(
            pb::SubmitReviewRequest {
                rating: 5,
                comment: "as agreed".into(),
                ..review
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("the contract's buyer reviews it")
        .into_inner();
    assert_eq!(own.review.unwrap().buyer_principal_id, BUYER);
    assert_eq!(own.supplier.unwrap().average_rating_centi, 500);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn every_rpc_needs_a_valid_token(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = badged_supplier(&mut client, "LIC-TOKENS", 100_000).await;
    let before = snapshot(&pool).await;

    let forged = ta_runtime::auth::bearer_metadata(
        &TokenIssuer::hs256("some-other-secret-of-enough-bytes", ta_testkit::TEST_ISSUER)
            .mint(
                OPERATOR,
                Role::TrustSafety,
                ta_runtime::auth::PLATFORM_AUDIENCE,
                Duration::from_secs(3_600),
            )
            .unwrap(),
    );
    let forged = forged.to_str().unwrap();

    let calls = every_call(&id, "k");
    assert_eq!(calls.len(), RPCS.len());
    for call in calls {
        let rpc = call.rpc();
        // A caller the RPC admits, so only the token is wrong.
        let (subject, role) = match declared_roles(REGISTRY_SERVICE, rpc).first() {
            Some(Role::Buyer) => (BUYER, Role::Buyer),
            Some(Role::Supplier) => (SUPPLIER, Role::Supplier),
            Some(&role) => (OPERATOR, role),
            None => (declared_services(REGISTRY_SERVICE, rpc)[0], Role::Service),
        };
        let cases = [
            (Auth::Missing, "missing bearer token"),
            (Auth::Expired(subject, role), "token has expired"),
            (Auth::Header(forged), "invalid token signature"),
            (Auth::Header("Bearer not.a.jwt"), "malformed token"),
            (
                Auth::Header("Basic b3BzOnNlY3JldA=="),
                "authorization header must be `Bearer <token>`",
            ),
        ];
        for (auth, message) in cases {
            let status = call
                .clone()
                .send(&mut client, auth)
                .await
                .expect_err(&format!("{rpc} with {auth:?} was accepted"));
            assert_eq!(status.code(), Code::Unauthenticated, "{rpc} {auth:?}");
            assert_eq!(status.message(), message, "{rpc} {auth:?}");
        }
    }
    assert_eq!(
        snapshot(&pool).await,
        before,
        "an unauthenticated call wrote"
    );
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn health_needs_no_token(pool: PgPool) {
    let Registry { server, client: _ } = start(pool).await;
    for service in ["", "tradeassurance.supplier.v1.SupplierRegistryService"] {
        assert_eq!(
            ta_testkit::health_status(server.channel.clone(), service).await,
            Ok(ta_testkit::HealthStatus::Serving),
            "health of {service:?} without a token"
        );
    }
    server.stop().await.unwrap();
}
