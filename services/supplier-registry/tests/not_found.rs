//! Well-formed requests naming something the registry does not know: NOT_FOUND
//! naming what is missing, and nothing written.

mod common;

use common::*;
use sqlx::PgPool;
use ta_proto::supplier as pb;
use ta_runtime::auth::Role;
use tonic::Code;

/// A well-formed UUID no supplier has.
const UNKNOWN_ID: &str = "0190c5a2-7a2b-7c3d-8e4f-5a6b7c8d9e0f";

fn buyer<T>(message: T) -> tonic::Request<T> {
    as_role(message, BUYER, Role::Buyer)
}

#[sqlx::test(migrations = false)]
async fn every_rpc_naming_an_unknown_supplier_is_not_found(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    // Another supplier exists, with a reservation, a completed contract and an
    // inquiry under the ids the calls use, so only the supplier is unknown.
    let known = badged_supplier(&mut client, "LIC-KNOWN", 100_000).await;
    for call in every_call(&known, "seed") {
        if matches!(
            call,
            Call::ReserveCover(_) | Call::RecordCompletedContract(_) | Call::RecordInquiry(_)
        ) {
            let caller = call.admitted_caller();
            call.send(&mut client, caller).await.expect("seed");
        }
    }
    let before = snapshot(&pool).await;

    // A listing's supplier filter is no lookup: an unknown one lists nothing
    // (tests/search.rs), and the feed names no supplier.
    let calls: Vec<Call> = every_call(UNKNOWN_ID, "k")
        .into_iter()
        .filter(|c| {
            !matches!(
                c,
                Call::RegisterSupplier(_)
                    | Call::SearchSuppliers(_)
                    | Call::ListCoverReservations(_)
                    | Call::StreamSupplierEvents(_)
            )
        })
        .collect();
    assert_eq!(
        calls.len(),
        RPCS.len() - 4,
        "every RPC that names a supplier"
    );
    for call in calls {
        let rpc = call.rpc();
        let auth = call.admitted_caller();
        let status = call
            .send(&mut client, auth)
            .await
            .expect_err(&format!("{rpc} on an unknown supplier succeeded"));
        assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
        assert_eq!(
            status.message(),
            format!("supplier {UNKNOWN_ID} not found"),
            "{rpc}"
        );
        assert_eq!(snapshot(&pool).await, before, "{rpc} wrote something");
    }
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_supplier_role_on_an_unknown_supplier_is_not_found(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let before = snapshot(&pool).await;
    for call in every_call(UNKNOWN_ID, "k") {
        if !matches!(
            call,
            Call::UpdateSupplierContacts(_)
                | Call::SubmitVerification(_)
                | Call::GetCover(_)
                | Call::RecordInquiryReply(_)
        ) {
            continue;
        }
        let rpc = call.rpc();
        let status = call
            .send(&mut client, Auth::Valid(SUPPLIER, Role::Supplier))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
        assert!(status.message().contains(UNKNOWN_ID), "{rpc}: {status:?}");
    }
    assert_eq!(snapshot(&pool).await, before);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn releasing_cover_of_an_unknown_contract_is_not_found(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = badged_supplier(&mut client, "LIC-RELEASE-A", 100_000).await;
    let other = badged_supplier(&mut client, "LIC-RELEASE-B", 100_000).await;
    // The other supplier holds cover for contract-b.
    client
        .reserve_cover(service(pb::ReserveCoverRequest {
            idempotency_key: "reserve-b".into(),
            supplier_id: other.clone(),
            contract_id: "contract-b".into(),
            amount: usd(40_000),
        }))
        .await
        .unwrap();
    let before = snapshot(&pool).await;

    for contract in ["contract-never-reserved", "contract-b"] {
        let status = client
            .release_cover(service(pb::ReleaseCoverRequest {
                idempotency_key: format!("release-{contract}"),
                supplier_id: id.clone(),
                contract_id: contract.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{contract}: {status:?}");
        assert_eq!(
            status.message(),
            format!("cover reservation for contract {contract} not found")
        );
    }
    assert_eq!(snapshot(&pool).await, before);
    // The other supplier's hold is untouched.
    assert_eq!(
        supplier(&mut client, &other)
            .await
            .cover_reserved
            .unwrap()
            .amount_minor,
        40_000
    );
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn reviewing_a_contract_never_completed_is_not_found(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = register(&mut client, "LIC-REVIEW-A").await;
    let other = register(&mut client, "LIC-REVIEW-B").await;
    // contract-other completed, but with the other supplier.
    client
        .record_completed_contract(service(pb::RecordCompletedContractRequest {
            idempotency_key: "completed-other".into(),
            supplier_id: other,
            contract_id: "contract-other".into(),
            buyer_principal_id: BUYER.into(),
        }))
        .await
        .unwrap();
    let before = snapshot(&pool).await;

    let review = |contract: &str, key: &str| {
        buyer(pb::SubmitReviewRequest {
            idempotency_key: key.into(),
            supplier_id: id.clone(),
            contract_id: contract.into(),
            rating: 5,
            comment: "great".into(),
        })
    };
    for contract in ["contract-never-completed", "contract-other"] {
        let status = client
            .submit_review(review(contract, &format!("review-{contract}")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{contract}: {status:?}");
        assert_eq!(
            status.message(),
            format!("completed contract {contract} not found")
        );
    }
    assert_eq!(snapshot(&pool).await, before);

    // Once the contract completes, the same request under the same key works:
    // the refusal was not stored against the key.
    client
        .record_completed_contract(service(pb::RecordCompletedContractRequest {
            idempotency_key: "completed-a".into(),
            supplier_id: id.clone(),
            contract_id: "contract-never-completed".into(),
            buyer_principal_id: BUYER.into(),
        }))
        .await
        .unwrap();
    let accepted = client
        .submit_review(review(
            "contract-never-completed",
            "review-contract-never-completed",
        ))
        .await
        .expect("review after completion")
        .into_inner();
    assert_eq!(accepted.supplier.unwrap().review_count, 1);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn replying_to_an_unknown_inquiry_is_not_found(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = register(&mut client, "LIC-INQUIRY-A").await;
    let other = register(&mut client, "LIC-INQUIRY-B").await;
    // inquiry-other was sent to the other supplier.
    client
        .record_inquiry(service(pb::RecordInquiryRequest {
            idempotency_key: "inquiry-other".into(),
            supplier_id: other,
            inquiry_id: "inquiry-other".into(),
        }))
        .await
        .unwrap();
    let before = snapshot(&pool).await;

    for inquiry in ["inquiry-unknown", "inquiry-other"] {
        for (subject, role) in [("dispute", Role::Service), (SUPPLIER, Role::Supplier)] {
            let status = client
                .record_inquiry_reply(as_role(
                    pb::RecordInquiryReplyRequest {
                        idempotency_key: format!("reply-{inquiry}"),
                        supplier_id: id.clone(),
                        inquiry_id: inquiry.into(),
                    },
                    subject,
                    role,
                ))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::NotFound, "{inquiry} as {role}");
            assert_eq!(status.message(), format!("inquiry {inquiry} not found"));
        }
    }
    assert_eq!(snapshot(&pool).await, before);
    server.stop().await.unwrap();
}
