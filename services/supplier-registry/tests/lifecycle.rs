//! A supplier's life over real gRPC and Postgres: registration, verification,
//! enrolment and limits, status, reviews, response rate, penalties, search.

mod common;

use std::collections::BTreeSet;

use common::*;
use sqlx::PgPool;
use ta_proto::supplier as pb;
use ta_runtime::auth::Role;
use tonic::Code;

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn buyer<T>(subject: &str, message: T) -> tonic::Request<T> {
    as_role(message, subject, Role::Buyer)
}

fn owner<T>(message: T) -> tonic::Request<T> {
    as_role(message, SUPPLIER, Role::Supplier)
}

async fn register_in(client: &mut Client, licence: &str, country: &str) -> String {
    client
        .register_supplier(owner(pb::RegisterSupplierRequest {
            country_code: country.into(),
            ..registration(&key(), licence)
        }))
        .await
        .expect("register")
        .into_inner()
        .supplier
        .unwrap()
        .supplier_id
}

async fn submit(client: &mut Client, id: &str) -> Result<pb::Supplier, tonic::Status> {
    client
        .submit_verification(owner(pb::SubmitVerificationRequest {
            reason: String::new(),
            idempotency_key: key(),
            supplier_id: id.into(),
        }))
        .await
        .map(|r| r.into_inner().supplier.unwrap())
}

async fn verify(client: &mut Client, id: &str) -> Result<pb::Supplier, tonic::Status> {
    client
        .verify_supplier(trust_safety(pb::VerifySupplierRequest {
            reason: "licence checked against the registry".into(),
            idempotency_key: key(),
            supplier_id: id.into(),
        }))
        .await
        .map(|r| r.into_inner().supplier.unwrap())
}

async fn reject(
    client: &mut Client,
    id: &str,
    reason: &str,
) -> Result<pb::Supplier, tonic::Status> {
    client
        .reject_verification(trust_safety(pb::RejectVerificationRequest {
            idempotency_key: key(),
            supplier_id: id.into(),
            reason: reason.into(),
        }))
        .await
        .map(|r| r.into_inner().supplier.unwrap())
}

async fn enrol(
    client: &mut Client,
    id: &str,
    limit: Option<ta_proto::common::Money>,
) -> Result<pb::Supplier, tonic::Status> {
    client
        .enroll_trade_assurance(trust_safety(pb::EnrollTradeAssuranceRequest {
            reason: "enrolled after review".into(),
            idempotency_key: key(),
            supplier_id: id.into(),
            ta_limit: limit,
        }))
        .await
        .map(|r| r.into_inner().supplier.unwrap())
}

async fn set_limit(
    client: &mut Client,
    id: &str,
    limit: Option<ta_proto::common::Money>,
) -> Result<pb::Supplier, tonic::Status> {
    client
        .set_trade_assurance_limit(trust_safety(pb::SetTradeAssuranceLimitRequest {
            reason: "credit review".into(),
            idempotency_key: key(),
            supplier_id: id.into(),
            ta_limit: limit,
        }))
        .await
        .map(|r| r.into_inner().supplier.unwrap())
}

async fn set_status(
    client: &mut Client,
    id: &str,
    status: pb::SupplierStatus,
    reason: &str,
) -> pb::Supplier {
    client
        .set_supplier_status(trust_safety(pb::SetSupplierStatusRequest {
            idempotency_key: key(),
            supplier_id: id.into(),
            status: status as i32,
            reason: reason.into(),
        }))
        .await
        .expect("set status")
        .into_inner()
        .supplier
        .unwrap()
}

async fn reserve(
    client: &mut Client,
    id: &str,
    contract: &str,
    amount_minor: i64,
) -> Result<pb::ReserveCoverResponse, tonic::Status> {
    client
        .reserve_cover(service(pb::ReserveCoverRequest {
            idempotency_key: key(),
            supplier_id: id.into(),
            contract_id: contract.into(),
            amount: usd(amount_minor),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn complete(client: &mut Client, id: &str, contract: &str, buyer: &str) {
    client
        .record_completed_contract(service(pb::RecordCompletedContractRequest {
            idempotency_key: key(),
            supplier_id: id.into(),
            contract_id: contract.into(),
            buyer_principal_id: buyer.into(),
        }))
        .await
        .expect("completed contract");
}

async fn review(
    client: &mut Client,
    buyer_id: &str,
    id: &str,
    contract: &str,
    rating: u32,
) -> Result<pb::SubmitReviewResponse, tonic::Status> {
    client
        .submit_review(buyer(
            buyer_id,
            pb::SubmitReviewRequest {
                idempotency_key: key(),
                supplier_id: id.into(),
                contract_id: contract.into(),
                rating,
                comment: format!("{rating} stars for {contract}"),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// Completes one contract per rating, each with its own buyer, and reviews it.
async fn rated(client: &mut Client, id: &str, ratings: &[u32]) -> pb::Supplier {
    let mut last = None;
    for (i, &rating) in ratings.iter().enumerate() {
        let contract = format!("contract-{id}-{i}");
        let buyer_id = format!("buyer-{id}-{i}");
        complete(client, id, &contract, &buyer_id).await;
        last = review(client, &buyer_id, id, &contract, rating)
            .await
            .expect("review")
            .supplier;
    }
    last.expect("at least one rating")
}

async fn inquiry(client: &mut Client, id: &str, inquiry_id: &str) -> pb::Supplier {
    client
        .record_inquiry(service(pb::RecordInquiryRequest {
            idempotency_key: key(),
            supplier_id: id.into(),
            inquiry_id: inquiry_id.into(),
        }))
        .await
        .expect("inquiry")
        .into_inner()
        .supplier
        .unwrap()
}

async fn reply(client: &mut Client, id: &str, inquiry_id: &str) -> pb::Supplier {
    client
        .record_inquiry_reply(owner(pb::RecordInquiryReplyRequest {
            idempotency_key: key(),
            supplier_id: id.into(),
            inquiry_id: inquiry_id.into(),
        }))
        .await
        .expect("reply")
        .into_inner()
        .supplier
        .unwrap()
}

async fn penalty(
    client: &mut Client,
    id: &str,
    dispute: &str,
    points: u32,
) -> Result<pb::RecordPenaltyResponse, tonic::Status> {
    client
        .record_penalty(service(pb::RecordPenaltyRequest {
            idempotency_key: key(),
            supplier_id: id.into(),
            claim_id: dispute.into(),
            points,
            reason: format!("dispute {dispute} upheld"),
        }))
        .await
        .map(|r| r.into_inner())
}

fn amount(money: Option<ta_proto::common::Money>) -> (String, i64) {
    let money = money.expect("money");
    (money.currency_code, money.amount_minor)
}

fn usd_amount(amount_minor: i64) -> (String, i64) {
    ("USD".into(), amount_minor)
}

fn failed_precondition(result: Result<impl std::fmt::Debug, tonic::Status>, message: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), message);
}

/// A reservation refused with `reason` as the google.rpc.PreconditionFailure type.
fn cover_refused(
    result: Result<pb::ReserveCoverResponse, tonic::Status>,
    supplier_id: &str,
    reason: &str,
    message: &str,
) {
    use tonic_types::StatusExt;
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), message);
    let details = status.get_error_details();
    let failure = details
        .precondition_failure()
        .unwrap_or_else(|| panic!("no PreconditionFailure in {status:?}"));
    let violations: Vec<_> = failure
        .violations
        .iter()
        .map(|v| (v.r#type.as_str(), v.subject.as_str()))
        .collect();
    assert_eq!(
        violations,
        [(reason, format!("suppliers/{supplier_id}").as_str())]
    );
}

// ---------------------------------------------------------------------------
// Registration and verification
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn verification_is_submitted_then_verified_or_rejected_and_resubmitted(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = register(&mut client, "LIC-VERIFY").await;
    let fresh = supplier(&mut client, &id).await;
    assert_eq!(
        fresh.verification_status(),
        pb::VerificationStatus::Unverified
    );
    assert_eq!(fresh.status(), pb::SupplierStatus::Active);
    assert!(!fresh.enrolled && !fresh.trade_assurance_badge);

    failed_precondition(
        verify(&mut client, &id).await,
        "cannot verify: verification is unverified",
    );
    failed_precondition(
        reject(&mut client, &id, "too early").await,
        "cannot reject verification: verification is unverified",
    );

    let submitted = submit(&mut client, &id).await.unwrap();
    assert_eq!(
        submitted.verification_status(),
        pb::VerificationStatus::Submitted
    );
    failed_precondition(
        submit(&mut client, &id).await,
        "cannot submit verification: verification is submitted",
    );

    let rejected = reject(&mut client, &id, "  licence scan is unreadable ")
        .await
        .unwrap();
    assert_eq!(
        rejected.verification_status(),
        pb::VerificationStatus::Rejected
    );
    assert_eq!(
        rejected.verification_rejection_reason,
        "licence scan is unreadable"
    );
    assert_eq!(supplier(&mut client, &id).await, rejected);
    failed_precondition(
        verify(&mut client, &id).await,
        "cannot verify: verification is rejected",
    );
    failed_precondition(
        reject(&mut client, &id, "again").await,
        "cannot reject verification: verification is rejected",
    );

    // Resubmission clears the reason.
    let resubmitted = submit(&mut client, &id).await.unwrap();
    assert_eq!(
        resubmitted.verification_status(),
        pb::VerificationStatus::Submitted
    );
    assert_eq!(resubmitted.verification_rejection_reason, "");

    let verified = verify(&mut client, &id).await.unwrap();
    assert_eq!(
        verified.verification_status(),
        pb::VerificationStatus::Verified
    );
    assert!(!verified.trade_assurance_badge, "verified but not enrolled");
    for (result, action) in [
        (submit(&mut client, &id).await, "submit verification"),
        (verify(&mut client, &id).await, "verify"),
        (
            reject(&mut client, &id, "late").await,
            "reject verification",
        ),
    ] {
        failed_precondition(
            result,
            &format!("cannot {action}: verification is verified"),
        );
    }
    assert_eq!(supplier(&mut client, &id).await, verified);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_licence_registers_once_per_country(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    register(&mut client, "LIC-DUP").await;
    let before = snapshot(&pool).await;

    // Another key, another account, another name: still the same licence in CN.
    for (subject, role, owner_id) in [
        (SUPPLIER, Role::Supplier, ""),
        ("supplier-other", Role::Supplier, ""),
        (OPERATOR, Role::TrustSafety, "supplier-third"),
    ] {
        let status = client
            .register_supplier(as_role(
                pb::RegisterSupplierRequest {
                    legal_name: "Acme Copycat Ltd".into(),
                    owner_principal_id: owner_id.into(),
                    reason: "onboarding on the factory's behalf".into(),
                    ..registration(&key(), "LIC-DUP")
                },
                subject,
                role,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{subject}");
        assert_eq!(
            status.message(),
            "a supplier with business licence LIC-DUP in CN is already registered"
        );
    }
    assert_eq!(snapshot(&pool).await, before);

    // The same licence number in another country is another company.
    let german = register_in(&mut client, "LIC-DUP", "DE").await;
    assert_eq!(supplier(&mut client, &german).await.country_code, "DE");
    assert_eq!(snapshot(&pool).await.rows("suppliers"), 2);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_retried_registration_returns_the_same_supplier(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let request = registration("reg-retry", "LIC-RETRY");
    let first = client
        .register_supplier(owner(request.clone()))
        .await
        .unwrap()
        .into_inner();
    let retry = client
        .register_supplier(owner(request.clone()))
        .await
        .expect("a retry is answered, not refused")
        .into_inner();
    assert_eq!(retry, first, "the retry replays the first response");
    let after = snapshot(&pool).await;
    assert_eq!(after.rows("suppliers"), 1);
    assert_eq!(after.rows("idempotency_keys"), 1);

    // The same key for another registration is refused.
    let status = client
        .register_supplier(owner(registration("reg-retry", "LIC-RETRY-2")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("reg-retry"), "{status:?}");
    assert_eq!(
        tonic_types::StatusExt::get_error_details(&status)
            .error_info()
            .map(|info| info.reason.clone()),
        Some("IDEMPOTENCY_KEY_REUSED".to_owned()),
        "a reused key is told apart from a real conflict"
    );
    assert_eq!(snapshot(&pool).await, after);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn an_operator_registers_a_supplier_on_its_behalf(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    const ONBOARDED: &str = "supplier-onboarded";

    let status = client
        .register_supplier(trust_safety(registration(&key(), "LIC-BEHALF")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["owner_principal_id"]);
    assert_eq!(snapshot(&pool).await.rows("suppliers"), 0);

    let registered = client
        .register_supplier(trust_safety(pb::RegisterSupplierRequest {
            owner_principal_id: ONBOARDED.into(),
            reason: "onboarding call with the factory".into(),
            ..registration(&key(), "LIC-BEHALF")
        }))
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    assert_eq!(registered.owner_principal_id, ONBOARDED);
    let id = registered.supplier_id;

    // The named owner acts on it; the operator does not own it.
    let updated = client
        .update_supplier_contacts(as_role(
            pb::UpdateSupplierContactsRequest {
                reason: String::new(),
                idempotency_key: key(),
                supplier_id: id.clone(),
                contacts: vec![contact()],
            },
            ONBOARDED,
            Role::Supplier,
        ))
        .await
        .expect("the owner updates its contacts")
        .into_inner()
        .supplier
        .unwrap();
    assert_eq!(updated.contacts, vec![contact()]);
    assert_eq!(updated.owner_principal_id, ONBOARDED);
    let status = submit(&mut client, &id).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{SUPPLIER} is not the owner"
    );

    // A supplier naming itself as the owner is the same as naming nobody.
    let own = client
        .register_supplier(owner(pb::RegisterSupplierRequest {
            owner_principal_id: SUPPLIER.into(),
            ..registration(&key(), "LIC-SELF")
        }))
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    assert_eq!(own.owner_principal_id, SUPPLIER);
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// Enrolment, limits, status
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn enrolment_needs_verification(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = register(&mut client, "LIC-ENROL").await;
    failed_precondition(
        enrol(&mut client, &id, usd(100_000)).await,
        "cannot enrol in Trade Assurance: verification is unverified",
    );
    submit(&mut client, &id).await.unwrap();
    failed_precondition(
        enrol(&mut client, &id, usd(100_000)).await,
        "cannot enrol in Trade Assurance: verification is submitted",
    );
    failed_precondition(
        set_limit(&mut client, &id, usd(100_000)).await,
        "cannot set the TA limit: the supplier is not enrolled",
    );
    let before = supplier(&mut client, &id).await;
    assert!(!before.enrolled);
    assert_eq!(
        (
            before.ta_limit,
            before.cover_reserved,
            before.cover_remaining
        ),
        (None, None, None),
        "no cover before enrolment"
    );
    let cover = client
        .get_cover(owner(pb::GetCoverRequest {
            supplier_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cover, pb::GetCoverResponse::default());

    verify(&mut client, &id).await.unwrap();
    let enrolled = enrol(&mut client, &id, usd(100_000)).await.unwrap();
    assert!(enrolled.enrolled && enrolled.trade_assurance_badge);
    assert_eq!(amount(enrolled.ta_limit), usd_amount(100_000));
    assert_eq!(amount(enrolled.cover_remaining), usd_amount(100_000));
    failed_precondition(
        enrol(&mut client, &id, usd(500_000)).await,
        "cannot enrol in Trade Assurance: the supplier is already enrolled; use SetTradeAssuranceLimit",
    );
    assert_eq!(
        amount(supplier(&mut client, &id).await.ta_limit),
        usd_amount(100_000)
    );
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn the_limit_keeps_its_currency(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = badged_supplier(&mut client, "LIC-CURRENCY", 100_000).await;
    let before = snapshot(&pool).await;
    let status = set_limit(&mut client, &id, money("EUR", 200_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["ta_limit.currency_code"]);
    assert!(
        status
            .message()
            .contains("must be USD, the currency of the current limit"),
        "{status:?}"
    );
    assert_eq!(snapshot(&pool).await, before);

    let raised = set_limit(&mut client, &id, usd(250_000)).await.unwrap();
    assert_eq!(amount(raised.ta_limit), usd_amount(250_000));
    assert_eq!(amount(raised.cover_remaining), usd_amount(250_000));
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_limit_lowered_below_reserved_cover_keeps_the_reservations(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = badged_supplier(&mut client, "LIC-LOWER", 100_000).await;
    reserve(&mut client, &id, "contract-a", 60_000)
        .await
        .unwrap();
    reserve(&mut client, &id, "contract-b", 30_000)
        .await
        .unwrap();

    let lowered = set_limit(&mut client, &id, usd(50_000)).await.unwrap();
    assert_eq!(amount(lowered.ta_limit), usd_amount(50_000));
    assert_eq!(amount(lowered.cover_reserved), usd_amount(90_000));
    assert_eq!(amount(lowered.cover_remaining), usd_amount(0));
    assert!(lowered.trade_assurance_badge);

    let cover = client
        .get_cover(owner(pb::GetCoverRequest {
            supplier_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(amount(cover.ta_limit), usd_amount(50_000));
    assert_eq!(amount(cover.cover_reserved), usd_amount(90_000));
    assert_eq!(amount(cover.cover_remaining), usd_amount(0));
    let contracts: Vec<_> = cover
        .active_reservations
        .iter()
        .map(|r| (r.contract_id.as_str(), r.status()))
        .collect();
    assert_eq!(
        contracts,
        [
            ("contract-a", pb::CoverReservationStatus::Active),
            ("contract-b", pb::CoverReservationStatus::Active)
        ]
    );

    // New cover is refused until enough is released.
    cover_refused(
        reserve(&mut client, &id, "contract-c", 1).await,
        &id,
        "TA_LIMIT_EXCEEDED",
        "cannot reserve cover: USD 1 minor units exceeds the remaining TA limit of USD 0 minor units",
    );
    let released = client
        .release_cover(service(pb::ReleaseCoverRequest {
            idempotency_key: key(),
            supplier_id: id.clone(),
            contract_id: "contract-a".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(amount(released.cover_remaining), usd_amount(20_000));
    let granted = reserve(&mut client, &id, "contract-c", 20_000)
        .await
        .unwrap();
    assert_eq!(amount(granted.cover_remaining), usd_amount(0));
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn suspension_removes_the_badge(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = badged_supplier(&mut client, "LIC-SUSPEND", 100_000).await;
    assert!(supplier(&mut client, &id).await.trade_assurance_badge);

    let suspended = set_status(
        &mut client,
        &id,
        pb::SupplierStatus::Suspended,
        "fraud investigation",
    )
    .await;
    assert_eq!(suspended.status(), pb::SupplierStatus::Suspended);
    assert_eq!(suspended.status_reason, "fraud investigation");
    assert!(!suspended.trade_assurance_badge);
    assert!(suspended.enrolled, "still enrolled, just not badged");
    assert_eq!(
        suspended.verification_status(),
        pb::VerificationStatus::Verified
    );
    cover_refused(
        reserve(&mut client, &id, "contract-a", 1_000).await,
        &id,
        "NO_TRADE_ASSURANCE_BADGE",
        "cannot reserve cover: the supplier has no Trade Assurance badge \
         (verification verified, enrolled, status suspended)",
    );

    let restored = set_status(&mut client, &id, pb::SupplierStatus::Active, "cleared").await;
    assert!(restored.trade_assurance_badge);
    assert_eq!(restored.status_reason, "cleared");
    reserve(&mut client, &id, "contract-a", 1_000)
        .await
        .unwrap();
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// Reviews
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_completed_contract_is_reviewed_once_by_its_buyer(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = register(&mut client, "LIC-REVIEWS").await;
    complete(&mut client, &id, "contract-1", BUYER).await;
    complete(&mut client, &id, "contract-2", "buyer-2").await;
    // Recording the same completion again is harmless; with another buyer it conflicts.
    complete(&mut client, &id, "contract-1", BUYER).await;
    let status = client
        .record_completed_contract(service(pb::RecordCompletedContractRequest {
            idempotency_key: key(),
            supplier_id: id.clone(),
            contract_id: "contract-1".into(),
            buyer_principal_id: "buyer-9".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("contract-1"), "{status:?}");
    assert_eq!(snapshot(&pool).await.rows("completed_contracts"), 2);

    let first = review(&mut client, BUYER, &id, "contract-1", 5)
        .await
        .unwrap();
    let first_review = first.review.unwrap();
    assert_eq!(first_review.rating, 5);
    assert_eq!(first_review.buyer_principal_id, BUYER);
    assert_eq!(first_review.contract_id, "contract-1");
    assert_eq!(first_review.supplier_id, id);
    let after_one = first.supplier.unwrap();
    assert_eq!(
        (after_one.review_count, after_one.average_rating_centi),
        (1, 500)
    );

    let second = review(&mut client, "buyer-2", &id, "contract-2", 4)
        .await
        .unwrap()
        .supplier
        .unwrap();
    assert_eq!((second.review_count, second.average_rating_centi), (2, 450));

    let before = snapshot(&pool).await;
    let status = review(&mut client, BUYER, &id, "contract-1", 1)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(
        status.message(),
        "contract contract-1 has already been reviewed"
    );
    assert_eq!(snapshot(&pool).await, before);
    let stored = supplier(&mut client, &id).await;
    assert_eq!((stored.review_count, stored.average_rating_centi), (2, 450));
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn average_ratings_round_half_up(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    for (licence, ratings, centi) in [
        ("LIC-AVG-1", &[5, 4, 4][..], 433),
        ("LIC-AVG-2", &[5, 5, 4], 467),
        ("LIC-AVG-3", &[1, 2], 150),
        ("LIC-AVG-4", &[3, 3, 3, 4, 4, 4, 4, 4], 363),
    ] {
        let id = register(&mut client, licence).await;
        let rated = rated(&mut client, &id, ratings).await;
        assert_eq!(rated.review_count as usize, ratings.len());
        assert_eq!(rated.average_rating_centi, centi, "{ratings:?}");
    }
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn reviews_are_listed_newest_first_page_by_page(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = register(&mut client, "LIC-LIST").await;
    let other = register(&mut client, "LIC-LIST-OTHER").await;
    rated(&mut client, &other, &[1]).await;
    let ratings = [5, 3, 4, 2, 5];
    rated(&mut client, &id, &ratings).await;
    let submitted: Vec<String> = (0..ratings.len())
        .map(|i| format!("contract-{id}-{i}"))
        .collect();
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();

    let list = |page_size: i32, token: &str| {
        as_role(
            pb::ListReviewsRequest {
                supplier_id: id.clone(),
                page: page(page_size, token),
            },
            "buyer-browsing",
            Role::Buyer,
        )
    };
    let all = client.list_reviews(list(0, "")).await.unwrap().into_inner();
    assert_eq!(all.next_page_token, "");
    let contracts: Vec<String> = all.reviews.iter().map(|r| r.contract_id.clone()).collect();
    assert_eq!(contracts, newest_first);
    let created: Vec<_> = all
        .reviews
        .iter()
        .map(|r| {
            let at = r.created_at.unwrap();
            (at.seconds, at.nanos)
        })
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );
    assert_eq!(
        all.reviews.iter().map(|r| r.rating).collect::<Vec<_>>(),
        [5, 2, 4, 3, 5]
    );

    // One per page, following the tokens to the end.
    let mut walked = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_reviews(list(1, &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.reviews.len(), 1, "after {walked:?}");
        walked.push(page.reviews[0].clone());
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(
            walked.len() < ratings.len(),
            "a token after the last review"
        );
        token = page.next_page_token;
    }
    assert_eq!(walked, all.reviews);

    // Pages of two: 2, 2, 1.
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_reviews(list(2, &token))
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.reviews.len());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sizes, [2, 2, 1]);

    // A supplier without reviews lists nothing.
    let unreviewed = register(&mut client, "LIC-LIST-NONE").await;
    let none = client
        .list_reviews(as_role(
            pb::ListReviewsRequest {
                supplier_id: unreviewed,
                page: None,
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(none.reviews.is_empty() && none.next_page_token.is_empty());
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// Response rate
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn the_response_rate_counts_each_inquiry_and_reply_once(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = register(&mut client, "LIC-INQUIRIES").await;
    let fresh = supplier(&mut client, &id).await;
    assert_eq!(
        (fresh.inquiry_count, fresh.response_rate_basis_points),
        (0, 0)
    );

    for inquiry_id in ["inq-1", "inq-2", "inq-3"] {
        inquiry(&mut client, &id, inquiry_id).await;
    }
    // The messaging system delivers inq-1 again: recorded once.
    let again = inquiry(&mut client, &id, "inq-1").await;
    assert_eq!(
        (again.inquiry_count, again.response_rate_basis_points),
        (3, 0)
    );

    let one = reply(&mut client, &id, "inq-1").await;
    assert_eq!(
        (one.inquiry_count, one.response_rate_basis_points),
        (3, 3333)
    );
    let before = snapshot(&pool).await;
    let repeated = reply(&mut client, &id, "inq-1").await;
    assert_eq!(repeated.response_rate_basis_points, 3333);
    assert_eq!(
        snapshot(&pool).await.rows("inquiries"),
        before.rows("inquiries")
    );

    // The service may record replies too.
    let two = client
        .record_inquiry_reply(service(pb::RecordInquiryReplyRequest {
            idempotency_key: key(),
            supplier_id: id.clone(),
            inquiry_id: "inq-2".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    assert_eq!(two.response_rate_basis_points, 6666);
    let all = reply(&mut client, &id, "inq-3").await;
    assert_eq!(all.response_rate_basis_points, 10_000);
    let (replied,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM supplier_registry.inquiries WHERE replied_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(replied, 3);
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// Penalties
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn penalties_count_once_per_dispute_and_restrict_at_the_threshold(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = badged_supplier(&mut client, "LIC-PENALTY", 100_001).await;
    let other = register(&mut client, "LIC-PENALTY-OTHER").await;

    let first = penalty(&mut client, &id, "dispute-1", 10).await.unwrap();
    assert!(!first.restricted_by_this_penalty);
    let s = first.supplier.unwrap();
    assert_eq!(s.penalty_points, 10);
    assert_eq!(s.status(), pb::SupplierStatus::Active);

    // The same dispute again, under another key: nothing changes.
    let before = snapshot(&pool).await;
    let again = penalty(&mut client, &id, "dispute-1", 10).await.unwrap();
    assert!(!again.restricted_by_this_penalty);
    assert_eq!(again.supplier.unwrap().penalty_points, 10);
    // Other points for the same dispute, or the same dispute for another
    // supplier, conflict.
    for (supplier_id, points) in [(&id, 12), (&other, 10)] {
        let status = penalty(&mut client, supplier_id, "dispute-1", points)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(
            status.message(),
            "claim dispute-1 already has a different penalty recorded"
        );
    }
    let after = snapshot(&pool).await;
    assert_eq!(after.rows("penalties"), before.rows("penalties"));
    assert_eq!(after.rows("suppliers"), before.rows("suppliers"));
    assert_eq!(supplier(&mut client, &other).await.penalty_points, 0);

    let below = penalty(&mut client, &id, "dispute-2", 13).await.unwrap();
    assert!(!below.restricted_by_this_penalty);
    let s = below.supplier.unwrap();
    assert_eq!(s.penalty_points, 23);
    assert!(s.trade_assurance_badge);
    assert_eq!(amount(s.ta_limit), usd_amount(100_001));

    let crossing = penalty(&mut client, &id, "dispute-3", 1).await.unwrap();
    assert!(crossing.restricted_by_this_penalty);
    let s = crossing.supplier.unwrap();
    assert_eq!(s.penalty_points, 24);
    assert_eq!(s.status(), pb::SupplierStatus::Restricted);
    assert!(!s.trade_assurance_badge);
    assert_eq!(
        s.status_reason,
        "24 penalty points reached the restriction threshold of 24"
    );
    assert_eq!(
        amount(s.ta_limit.clone()),
        usd_amount(50_000),
        "halved, rounded down"
    );
    assert_eq!(supplier(&mut client, &id).await, s);
    cover_refused(
        reserve(&mut client, &id, "contract-x", 1).await,
        &id,
        "NO_TRADE_ASSURANCE_BADGE",
        "cannot reserve cover: the supplier has no Trade Assurance badge \
         (verification verified, enrolled, status restricted)",
    );

    // Further penalties add points but do not halve the limit again.
    let more = penalty(&mut client, &id, "dispute-4", 5).await.unwrap();
    assert!(!more.restricted_by_this_penalty);
    let s = more.supplier.unwrap();
    assert_eq!(s.penalty_points, 29);
    assert_eq!(s.status(), pb::SupplierStatus::Restricted);
    assert_eq!(amount(s.ta_limit), usd_amount(50_000));
    assert_eq!(snapshot(&pool).await.rows("penalties"), 4);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_penalty_crossing_the_threshold_at_once_restricts(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = register(&mut client, "LIC-PENALTY-BIG").await;
    let crossing = penalty(&mut client, &id, "dispute-big", 30).await.unwrap();
    assert!(crossing.restricted_by_this_penalty);
    let s = crossing.supplier.unwrap();
    assert_eq!(s.status(), pb::SupplierStatus::Restricted);
    assert_eq!(s.penalty_points, 30);
    // Not enrolled: no limit to halve.
    assert!(!s.enrolled);
    assert_eq!(s.ta_limit, None);
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------

/// The ids found by `request` (a buyer's search), on one page.
async fn found(client: &mut Client, request: pb::SearchSuppliersRequest) -> BTreeSet<String> {
    let response = client
        .search_suppliers(buyer(BUYER, request))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(response.next_page_token, "", "one page");
    response
        .suppliers
        .into_iter()
        .map(|s| s.supplier_id)
        .collect()
}

fn ids<const N: usize>(ids: [&String; N]) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

#[sqlx::test(migrations = false)]
async fn search_filters_by_the_badge(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let badged = badged_supplier(&mut client, "LIC-S-BADGE", 100_000).await;
    let suspended = badged_supplier(&mut client, "LIC-S-SUSPENDED", 100_000).await;
    set_status(
        &mut client,
        &suspended,
        pb::SupplierStatus::Suspended,
        "audit",
    )
    .await;
    let not_enrolled = register(&mut client, "LIC-S-NOT-ENROLLED").await;
    submit(&mut client, &not_enrolled).await.unwrap();
    verify(&mut client, &not_enrolled).await.unwrap();

    let with = |badge| pb::SearchSuppliersRequest {
        has_trade_assurance_badge: badge,
        ..Default::default()
    };
    assert_eq!(found(&mut client, with(Some(true))).await, ids([&badged]));
    assert_eq!(
        found(&mut client, with(Some(false))).await,
        ids([&suspended, &not_enrolled])
    );
    assert_eq!(
        found(&mut client, with(None)).await,
        ids([&badged, &suspended, &not_enrolled])
    );
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn search_filters_by_verification(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let unverified = register(&mut client, "LIC-S-UNVERIFIED").await;
    let submitted = register(&mut client, "LIC-S-SUBMITTED").await;
    submit(&mut client, &submitted).await.unwrap();
    let rejected = register(&mut client, "LIC-S-REJECTED").await;
    submit(&mut client, &rejected).await.unwrap();
    reject(&mut client, &rejected, "blurry").await.unwrap();
    let verified = register(&mut client, "LIC-S-VERIFIED").await;
    submit(&mut client, &verified).await.unwrap();
    verify(&mut client, &verified).await.unwrap();

    let with = |verified| pb::SearchSuppliersRequest {
        verified,
        ..Default::default()
    };
    assert_eq!(found(&mut client, with(Some(true))).await, ids([&verified]));
    assert_eq!(
        found(&mut client, with(Some(false))).await,
        ids([&unverified, &submitted, &rejected])
    );
    assert_eq!(found(&mut client, with(None)).await.len(), 4);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn search_filters_by_country(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let chinese = register_in(&mut client, "LIC-S-COUNTRY", "CN").await;
    let german = register_in(&mut client, "LIC-S-COUNTRY", "DE").await;

    let with = |country: &str| pb::SearchSuppliersRequest {
        country_code: country.into(),
        ..Default::default()
    };
    assert_eq!(found(&mut client, with("CN")).await, ids([&chinese]));
    assert_eq!(found(&mut client, with("DE")).await, ids([&german]));
    assert_eq!(found(&mut client, with("US")).await, ids([]));
    assert_eq!(found(&mut client, with("")).await, ids([&chinese, &german]));
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn search_filters_by_minimum_average_rating(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let four_and_a_half = register(&mut client, "LIC-S-450").await;
    rated(&mut client, &four_and_a_half, &[5, 4]).await;
    let three = register(&mut client, "LIC-S-300").await;
    rated(&mut client, &three, &[3]).await;
    // 4.666..., shown as 467.
    let rounded_up = register(&mut client, "LIC-S-467").await;
    let shown = rated(&mut client, &rounded_up, &[5, 5, 4]).await;
    assert_eq!(shown.average_rating_centi, 467);
    let unrated = register(&mut client, "LIC-S-UNRATED").await;

    let with = |min| pb::SearchSuppliersRequest {
        min_average_rating_centi: min,
        ..Default::default()
    };
    assert_eq!(
        found(&mut client, with(0)).await,
        ids([&four_and_a_half, &three, &rounded_up, &unrated])
    );
    assert_eq!(
        found(&mut client, with(100)).await,
        ids([&four_and_a_half, &three, &rounded_up]),
        "a supplier without reviews has no rating to meet a minimum"
    );
    assert_eq!(
        found(&mut client, with(301)).await,
        ids([&four_and_a_half, &rounded_up])
    );
    assert_eq!(
        found(&mut client, with(450)).await,
        ids([&four_and_a_half, &rounded_up])
    );
    assert_eq!(found(&mut client, with(451)).await, ids([&rounded_up]));
    // The filter agrees with the average the supplier shows.
    assert_eq!(found(&mut client, with(467)).await, ids([&rounded_up]));
    assert_eq!(found(&mut client, with(468)).await, ids([]));
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn search_filters_by_minimum_response_rate(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let always = register(&mut client, "LIC-S-RR-ALL").await;
    let half = register(&mut client, "LIC-S-RR-HALF").await;
    let silent = register(&mut client, "LIC-S-RR-NONE").await;
    for (id, replied) in [(&always, 2), (&half, 1), (&silent, 0)] {
        for n in 0..2 {
            let inquiry_id = format!("inq-{n}");
            inquiry(&mut client, id, &inquiry_id).await;
            if n < replied {
                reply(&mut client, id, &inquiry_id).await;
            }
        }
    }
    let never_asked = register(&mut client, "LIC-S-RR-NEW").await;

    let with = |min| pb::SearchSuppliersRequest {
        min_response_rate_basis_points: min,
        ..Default::default()
    };
    assert_eq!(
        found(&mut client, with(0)).await,
        ids([&always, &half, &silent, &never_asked])
    );
    assert_eq!(found(&mut client, with(1)).await, ids([&always, &half]));
    assert_eq!(found(&mut client, with(5_000)).await, ids([&always, &half]));
    assert_eq!(found(&mut client, with(5_001)).await, ids([&always]));
    assert_eq!(found(&mut client, with(10_000)).await, ids([&always]));
    let status = client
        .search_suppliers(as_role(with(10_001), BUYER, Role::Buyer))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("min_response_rate_basis_points"));
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn search_filters_by_minimum_remaining_cover(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let roomy = badged_supplier(&mut client, "LIC-S-ROOMY", 100_000).await;
    let busy = badged_supplier(&mut client, "LIC-S-BUSY", 100_000).await;
    reserve(&mut client, &busy, "contract-busy", 60_000)
        .await
        .unwrap();
    let euro = register(&mut client, "LIC-S-EURO").await;
    submit(&mut client, &euro).await.unwrap();
    verify(&mut client, &euro).await.unwrap();
    enrol(&mut client, &euro, money("EUR", 100_000))
        .await
        .unwrap();
    let not_enrolled = register(&mut client, "LIC-S-NO-LIMIT").await;

    let with = |currency: &str, amount_minor| pb::SearchSuppliersRequest {
        min_cover_remaining: money(currency, amount_minor),
        ..Default::default()
    };
    assert_eq!(found(&mut client, with("USD", 50_000)).await, ids([&roomy]));
    assert_eq!(
        found(&mut client, with("USD", 40_000)).await,
        ids([&roomy, &busy])
    );
    assert_eq!(found(&mut client, with("USD", 40_001)).await, ids([&roomy]));
    assert_eq!(
        found(&mut client, with("USD", 0)).await,
        ids([&roomy, &busy])
    );
    assert_eq!(found(&mut client, with("EUR", 1)).await, ids([&euro]));
    assert_eq!(found(&mut client, with("CNY", 1)).await, ids([]));
    assert_eq!(
        found(&mut client, pb::SearchSuppliersRequest::default()).await,
        ids([&roomy, &busy, &euro, &not_enrolled])
    );
    server.stop().await.unwrap();
}

/// Walks every page of `request` with `page_size`; returns the page sizes and
/// every supplier id in order.
async fn walk(
    client: &mut Client,
    request: pb::SearchSuppliersRequest,
    page_size: i32,
) -> (Vec<usize>, Vec<String>) {
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let response = client
            .search_suppliers(buyer(
                BUYER,
                pb::SearchSuppliersRequest {
                    page: page(page_size, &token),
                    ..request.clone()
                },
            ))
            .await
            .expect("search page")
            .into_inner();
        sizes.push(response.suppliers.len());
        seen.extend(response.suppliers.into_iter().map(|s| s.supplier_id));
        if response.next_page_token.is_empty() {
            return (sizes, seen);
        }
        assert!(sizes.len() <= 20, "pages never end");
        token = response.next_page_token;
    }
}

#[sqlx::test(migrations = false)]
async fn search_pages_walk_every_result_once(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let mut chinese = BTreeSet::new();
    let mut everyone = BTreeSet::new();
    for i in 0..7 {
        let country = if i % 2 == 0 { "CN" } else { "DE" };
        let id = register_in(&mut client, &format!("LIC-PAGE-{i}"), country).await;
        if country == "CN" {
            chinese.insert(id.clone());
        }
        everyone.insert(id);
    }
    assert_eq!(chinese.len(), 4);

    for (page_size, expected_sizes) in [
        (3, vec![3, 3, 1]),
        (1, vec![1; 7]),
        (7, vec![7]),
        (6, vec![6, 1]),
    ] {
        let (sizes, seen) = walk(
            &mut client,
            pb::SearchSuppliersRequest::default(),
            page_size,
        )
        .await;
        assert_eq!(sizes, expected_sizes, "page size {page_size}");
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "duplicates: {seen:?}");
        assert_eq!(unique, everyone);
    }

    // Paging within a filter: exactly two pages of two.
    let (sizes, seen) = walk(
        &mut client,
        pb::SearchSuppliersRequest {
            country_code: "CN".into(),
            ..Default::default()
        },
        2,
    )
    .await;
    assert_eq!(sizes, [2, 2]);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), chinese);
    assert_eq!(seen.len(), 4);
    server.stop().await.unwrap();
}
