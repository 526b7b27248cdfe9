//! Every change trust and safety makes leaves one entry in the registry's
//! audit trail, in the change's transaction: who, in which duty, what, on
//! which supplier, why, the trace, the request. A retry under the same key
//! adds none, a refused or reasonless call none, a supplier's own act none.

mod common;

use common::*;
use prost::Message;
use sqlx::PgPool;
use ta_proto::{common::Role as PbRole, supplier as pb};
use ta_runtime::auth::Role;
use ta_testkit::{audit_entries, audited_methods, staff_mutations};
use tonic::Code;

fn ts<T>(message: T) -> tonic::Request<T> {
    as_role(message, OPERATOR, Role::TrustSafety)
}

#[sqlx::test(migrations = false)]
async fn each_trust_and_safety_change_leaves_one_entry(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let channel = server.channel.clone();

    // The supplier's own acts are its profile's history, not staff actions.
    let own = register(&mut client, "LIC-OWN").await;
    let on_behalf = client
        .register_supplier(ts(pb::RegisterSupplierRequest {
            owner_principal_id: "supplier-onboarded".into(),
            reason: "onboarding call with the factory's director".into(),
            ..registration("ts-reg", "LIC-BEHALF")
        }))
        .await
        .expect("registered on the supplier's behalf")
        .into_inner()
        .supplier
        .unwrap()
        .supplier_id;
    let id = on_behalf.clone();
    client
        .update_supplier_contacts(ts(pb::UpdateSupplierContactsRequest {
            idempotency_key: "ts-contacts".into(),
            supplier_id: id.clone(),
            contacts: registration("x", "x").contacts,
            reason: "the director asked by phone".into(),
        }))
        .await
        .expect("contacts");
    let submit = |key: &str| pb::SubmitVerificationRequest {
        idempotency_key: key.into(),
        supplier_id: id.clone(),
        reason: "documents received by post".into(),
    };
    client
        .submit_verification(ts(submit("ts-submit-1")))
        .await
        .expect("submitted");
    client
        .reject_verification(ts(pb::RejectVerificationRequest {
            idempotency_key: "ts-reject".into(),
            supplier_id: id.clone(),
            reason: "the licence scan is unreadable".into(),
        }))
        .await
        .expect("rejected");
    client
        .submit_verification(ts(submit("ts-submit-2")))
        .await
        .expect("submitted again");
    let verify = pb::VerifySupplierRequest {
        idempotency_key: "ts-verify".into(),
        supplier_id: id.clone(),
        reason: "licence checked against the state registry".into(),
    };
    client
        .verify_supplier(ts(verify.clone()))
        .await
        .expect("verified");
    // A retry replays and records nothing more.
    client
        .verify_supplier(ts(verify.clone()))
        .await
        .expect("replayed");
    client
        .enroll_trade_assurance(ts(pb::EnrollTradeAssuranceRequest {
            idempotency_key: "ts-enrol".into(),
            supplier_id: id.clone(),
            ta_limit: usd(5_000_000),
            reason: "three years of clean trade".into(),
        }))
        .await
        .expect("enrolled");
    client
        .set_trade_assurance_limit(ts(pb::SetTradeAssuranceLimitRequest {
            idempotency_key: "ts-limit".into(),
            supplier_id: id.clone(),
            ta_limit: usd(8_000_000),
            reason: "credit review of December".into(),
        }))
        .await
        .expect("limit");
    // Cover contract reserved for a contract it never made: trust and safety
    // releases it, once; a second correction finds nothing to release.
    client
        .reserve_cover(as_role(
            pb::ReserveCoverRequest {
                idempotency_key: "stranded".into(),
                supplier_id: id.clone(),
                contract_id: "contract-stranded".into(),
                amount: usd(250_000),
            },
            "contract",
            Role::Service,
        ))
        .await
        .expect("reserved");
    let stranded = |key: &str| pb::ReleaseStrandedCoverRequest {
        idempotency_key: key.into(),
        supplier_id: id.clone(),
        contract_id: "contract-stranded".into(),
        reason: "reconciliation: COVER_WITHOUT_CONTRACT".into(),
    };
    let released = client
        .release_stranded_cover(ts(stranded("ts-stranded")))
        .await
        .expect("released")
        .into_inner();
    assert_eq!(
        released.reservation.unwrap().status,
        pb::CoverReservationStatus::Released as i32
    );
    assert_eq!(released.cover_remaining.unwrap().amount_minor, 8_000_000);
    let again = client
        .release_stranded_cover(ts(stranded("ts-stranded-2")))
        .await
        .expect_err("nothing left to release");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("released"), "{again:?}");
    client
        .set_supplier_status(ts(pb::SetSupplierStatusRequest {
            idempotency_key: "ts-status".into(),
            supplier_id: id.clone(),
            status: pb::SupplierStatus::Restricted.into(),
            reason: "two late shipments under review".into(),
        }))
        .await
        .expect("restricted");

    // Without a reason staff change nothing, and the trail says nothing.
    let reasonless = client
        .set_supplier_status(ts(pb::SetSupplierStatusRequest {
            idempotency_key: "ts-status-2".into(),
            supplier_id: id.clone(),
            status: pb::SupplierStatus::Active.into(),
            reason: "  ".into(),
        }))
        .await
        .expect_err("a reason is required of staff");
    assert_eq!(reasonless.code(), Code::InvalidArgument);
    assert!(reasonless.message().contains("reason"), "{reasonless:?}");
    // A refused change (verifying what is verified) neither.
    let refused = client
        .verify_supplier(ts(pb::VerifySupplierRequest {
            idempotency_key: "ts-verify-again".into(),
            ..verify
        }))
        .await
        .expect_err("already verified");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    let entries = audit_entries(channel).await;
    let methods = audited_methods(&entries);
    assert_eq!(
        methods,
        [
            "RegisterSupplier",
            "UpdateSupplierContacts",
            "SubmitVerification",
            "RejectVerification",
            "SubmitVerification",
            "VerifySupplier",
            "EnrollTradeAssurance",
            "SetTradeAssuranceLimit",
            "ReleaseStrandedCover",
            "SetSupplierStatus",
        ]
    );
    let mut covered = methods.clone();
    covered.sort();
    covered.dedup();
    let mut declared = staff_mutations(REGISTRY_SERVICE);
    declared.sort_unstable();
    assert_eq!(
        covered, declared,
        "every staff mutation of the registry is audited here"
    );

    for entry in &entries {
        let actor = entry.actor.as_ref().unwrap();
        assert_eq!(actor.principal_id, OPERATOR);
        assert_eq!(actor.role, PbRole::TrustSafety as i32);
        assert!(!entry.reason.trim().is_empty());
        assert_eq!(entry.trace_id.len(), 32, "{entry:?}");
        assert!(entry.recorded_at.is_some());
    }
    // The new supplier has no id in its request: the trail keeps the request.
    assert_eq!(
        (
            entries[0].resource_type.as_str(),
            entries[0].resource_id.as_str()
        ),
        ("", "")
    );
    let registered = entries[0].request.as_ref().unwrap();
    assert_eq!(
        registered.type_url,
        "type.googleapis.com/tradeassurance.supplier.v1.RegisterSupplierRequest"
    );
    let request = pb::RegisterSupplierRequest::decode(registered.value.as_slice()).unwrap();
    assert_eq!(request.business_licence_number, "LIC-BEHALF");
    for entry in &entries[1..] {
        assert_eq!(entry.resource_type, "supplier");
        assert_eq!(entry.resource_id, on_behalf);
    }
    let verified = &entries[5];
    assert_eq!(
        verified.reason,
        "licence checked against the state registry"
    );
    assert!(entries.iter().all(|e| e.resource_id != own));
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn the_trail_is_filtered_and_paged(pool: PgPool) {
    use ta_proto::ops::{
        ListAuditEntriesRequest, audit_trail_service_client::AuditTrailServiceClient,
    };

    let Registry { server, mut client } = start(pool).await;
    let first = register(&mut client, "LIC-A").await;
    let second = register(&mut client, "LIC-B").await;
    for (n, id) in [&first, &second, &first].into_iter().enumerate() {
        client
            .update_supplier_contacts(ts(pb::UpdateSupplierContactsRequest {
                idempotency_key: format!("contacts-{n}"),
                supplier_id: id.clone(),
                contacts: registration("x", "x").contacts,
                reason: format!("correction {n}"),
            }))
            .await
            .expect("contacts");
    }
    let mut trail = AuditTrailServiceClient::new(server.channel.clone());
    let list = |request: ListAuditEntriesRequest, role: Role| {
        ta_testkit::authorized(request, "reviewer-1", role)
    };
    let of_first = trail
        .list_audit_entries(list(
            ListAuditEntriesRequest {
                resource_id: first.clone(),
                ..Default::default()
            },
            Role::Support,
        ))
        .await
        .unwrap()
        .into_inner();
    let reasons: Vec<_> = of_first.entries.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["correction 2", "correction 0"], "newest first");

    let page = |token: String| ListAuditEntriesRequest {
        method: "UpdateSupplierContacts".into(),
        page: Some(ta_proto::common::PageRequest {
            page_size: 2,
            page_token: token,
        }),
        ..Default::default()
    };
    let one = trail
        .list_audit_entries(list(page(String::new()), Role::Finance))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.entries.len(), 2);
    let two = trail
        .list_audit_entries(list(page(one.next_page_token), Role::Finance))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.entries.len(), 1);
    assert!(two.next_page_token.is_empty());
    assert_eq!(two.entries[0].reason, "correction 0");

    // Nobody else reads the trail, and a forged page token is refused.
    for role in [Role::Buyer, Role::Supplier, Role::Platform] {
        let denied = trail
            .list_audit_entries(list(ListAuditEntriesRequest::default(), role))
            .await
            .expect_err("staff only");
        assert_eq!(denied.code(), Code::PermissionDenied, "{role}");
    }
    let forged = trail
        .list_audit_entries(list(page("bm90IGEgdG9rZW4".into()), Role::Support))
        .await
        .expect_err("a token the listing did not issue");
    assert_eq!(forged.code(), Code::InvalidArgument);
    server.stop().await.unwrap();
}
