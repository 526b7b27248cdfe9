//! Who may call what: the roles listed per RPC in the proto, suppliers acting
//! only on their own profiles, buyers reviewing only their own contracts, and a
//! valid token on every call but health.

mod common;

use std::time::Duration;

use common::*;
use sqlx::PgPool;
use ta_proto::supplier as pb;
use ta_runtime::auth::{Role, TokenIssuer};
use tonic::Code;

const UNKNOWN_ID: &str = "0190c5a2-7a2b-7c3d-8e4f-5a6b7c8d9e0f";
/// A second supplier account, owning nothing of [`SUPPLIER`]'s.
const OTHER_SUPPLIER: &str = "supplier-globex";
const OTHER_BUYER: &str = "buyer-2";

/// The roles each RPC allows, as documented in supplier_registry.proto.
fn allowed_roles(rpc: &str) -> &'static [Role] {
    use Role::*;
    const ALL: &[Role] = &[Buyer, Supplier, Inspector, Operator, Service];
    match rpc {
        "RegisterSupplier" | "UpdateSupplierContacts" | "SubmitVerification" => {
            &[Supplier, Operator]
        }
        "GetSupplier" | "SearchSuppliers" | "ListReviews" => ALL,
        "VerifySupplier"
        | "RejectVerification"
        | "EnrollTradeAssurance"
        | "SetTradeAssuranceLimit"
        | "SetSupplierStatus" => &[Operator],
        "ReserveCover"
        | "ReleaseCover"
        | "RecordCompletedContract"
        | "RecordInquiry"
        | "RecordPenalty" => &[Service, Operator],
        "GetCover" | "RecordInquiryReply" => &[Supplier, Service, Operator],
        "SubmitReview" => &[Buyer],
        other => panic!("unknown RPC {other}"),
    }
}

/// The subject of a test token for `role`; the supplier is the owner of the
/// supplier under test, so only the role can be what is refused.
fn subject(role: Role) -> &'static str {
    match role {
        Role::Buyer => BUYER,
        Role::Supplier => SUPPLIER,
        Role::Inspector => "inspector-1",
        Role::Operator => OPERATOR,
        Role::Service => SERVICE,
    }
}

#[sqlx::test(migrations = false)]
async fn roles_the_proto_does_not_list_are_permission_denied(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = badged_supplier(&mut client, "LIC-ROLES", 100_000).await;
    let before = Snapshot::take(&pool).await;

    let mut refused = 0;
    for call in every_call(&id, "k") {
        let rpc = call.rpc();
        for role in Role::ALL {
            if allowed_roles(rpc).contains(&role) {
                continue;
            }
            let status = call
                .clone()
                .send(&mut client, Auth::Valid(subject(role), role))
                .await
                .expect_err(&format!("{role} may call {rpc}"));
            assert_eq!(status.code(), Code::PermissionDenied, "{role} {rpc}");
            assert!(
                status
                    .message()
                    .starts_with(&format!("role {role} may not call"))
                    && status.message().ends_with(&format!("/{rpc}")),
                "{role} {rpc}: {}",
                status.message()
            );
            refused += 1;
        }
    }
    // 5 roles x 19 RPCs minus the 43 (RPC, role) pairs the proto lists.
    assert_eq!(refused, 95 - 43);
    assert_eq!(Snapshot::take(&pool).await, before, "a refused call wrote");
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn roles_the_proto_lists_get_past_authorization(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
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
        for &role in allowed_roles(rpc) {
            let outcome = call
                .clone()
                .send(&mut client, Auth::Valid(subject(role), role))
                .await;
            let code = outcome.err().map_or(Code::Ok, |s| s.code());
            let expected = match rpc {
                "RegisterSupplier" => Code::InvalidArgument,
                "SearchSuppliers" => Code::Ok,
                _ => Code::NotFound,
            };
            assert_eq!(code, expected, "{role} calling {rpc}");
        }
    }
    assert_eq!(Snapshot::take(&pool).await.rows("idempotency_keys"), 0);
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
    let before = Snapshot::take(&pool).await;

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
    assert_eq!(Snapshot::take(&pool).await, before, "a refused call wrote");

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
    let before = Snapshot::take(&pool).await;

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
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "only the buyer of contract contract-1 may review it"
    );
    assert_eq!(
        Snapshot::take(&pool).await,
        before,
        "a refused review wrote"
    );

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
    let before = Snapshot::take(&pool).await;

    let forged = ta_runtime::auth::bearer_metadata(
        &TokenIssuer::new(
            "some-other-secret-of-enough-bytes",
            ta_testkit::TEST_ISSUER,
            ta_testkit::TEST_AUDIENCE,
        )
        .mint(OPERATOR, Role::Operator, Duration::from_secs(3_600))
        .unwrap(),
    );
    let forged = forged.to_str().unwrap();

    let calls = every_call(&id, "k");
    assert_eq!(calls.len(), 19);
    for call in calls {
        let rpc = call.rpc();
        // A role the RPC allows, so only the token is wrong.
        let role = allowed_roles(rpc)[0];
        let cases = [
            (Auth::Missing, "missing bearer token"),
            (Auth::Expired(subject(role), role), "token has expired"),
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
        Snapshot::take(&pool).await,
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
