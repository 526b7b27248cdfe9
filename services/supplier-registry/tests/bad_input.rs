//! Invalid input to every RPC: INVALID_ARGUMENT naming each offending field in
//! `google.rpc.BadRequest`, and nothing written.

mod common;

use std::collections::BTreeSet;

use common::*;
use sqlx::PgPool;
use ta_proto::supplier as pb;
use ta_runtime::auth::Role;
use tonic::Code;

const UNKNOWN_ID: &str = "0190c5a2-7a2b-7c3d-8e4f-5a6b7c8d9e0f";

struct Case {
    what: &'static str,
    call: Call,
    fields: &'static [&'static str],
}

fn case(what: &'static str, call: Call, fields: &'static [&'static str]) -> Case {
    Case { what, call, fields }
}

/// A supplier with something in every table, so a stray write shows.
async fn populated(client: &mut Client) -> String {
    let id = badged_supplier(client, "LIC-BAD-INPUT", 100_000).await;
    client
        .reserve_cover(service(pb::ReserveCoverRequest {
            idempotency_key: "seed-reserve".into(),
            supplier_id: id.clone(),
            contract_id: "contract-seed".into(),
            amount: usd(10_000),
        }))
        .await
        .expect("reserve");
    client
        .record_completed_contract(service(pb::RecordCompletedContractRequest {
            idempotency_key: "seed-completed".into(),
            supplier_id: id.clone(),
            contract_id: "contract-seed".into(),
            buyer_principal_id: BUYER.into(),
        }))
        .await
        .expect("completed");
    client
        .submit_review(as_role(
            pb::SubmitReviewRequest {
                idempotency_key: "seed-review".into(),
                supplier_id: id.clone(),
                contract_id: "contract-seed".into(),
                rating: 4,
                comment: String::new(),
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .expect("review");
    client
        .record_inquiry(service(pb::RecordInquiryRequest {
            idempotency_key: "seed-inquiry".into(),
            supplier_id: id.clone(),
            inquiry_id: "inquiry-seed".into(),
        }))
        .await
        .expect("inquiry");
    client
        .record_penalty(service(pb::RecordPenaltyRequest {
            idempotency_key: "seed-penalty".into(),
            supplier_id: id.clone(),
            claim_id: "dispute-seed".into(),
            points: 2,
            reason: "late shipment upheld".into(),
        }))
        .await
        .expect("penalty");
    id
}

fn cases(id: &str) -> Vec<Case> {
    let id = || id.to_string();
    let long = |n: usize| "x".repeat(n);
    vec![
        // RegisterSupplier
        case(
            "registration with every top-level field wrong",
            Call::RegisterSupplier(pb::RegisterSupplierRequest {
                reason: String::new(),
                idempotency_key: String::new(),
                legal_name: "A".into(),
                country_code: "XX".into(),
                business_licence_number: "no spaces!".into(),
                contacts: vec![],
                owner_principal_id: SUPPLIER.into(),
            }),
            &[
                "business_licence_number",
                "contacts",
                "country_code",
                "idempotency_key",
                "legal_name",
                "reason",
            ],
        ),
        case(
            "registration with a bad contact",
            Call::RegisterSupplier(pb::RegisterSupplierRequest {
                contacts: vec![
                    contact(),
                    pb::Contact {
                        name: "  ".into(),
                        email: "not-an-email".into(),
                        phone: "12345".into(),
                    },
                ],
                owner_principal_id: SUPPLIER.into(),
                ..registration("reg-contact", "LIC-NEW-1")
            }),
            &["contacts[1].email", "contacts[1].name", "contacts[1].phone"],
        ),
        case(
            "registration with eleven contacts and a lower-case country",
            Call::RegisterSupplier(pb::RegisterSupplierRequest {
                contacts: vec![contact(); 11],
                country_code: "cn".into(),
                owner_principal_id: SUPPLIER.into(),
                ..registration("reg-many", "LIC-NEW-2")
            }),
            &["contacts", "country_code"],
        ),
        case(
            "operator registration without owner_principal_id",
            Call::RegisterSupplier(registration("reg-owner", "LIC-NEW-3")),
            &["owner_principal_id"],
        ),
        case(
            "registration with a malformed idempotency key",
            Call::RegisterSupplier(pb::RegisterSupplierRequest {
                owner_principal_id: SUPPLIER.into(),
                ..registration("key with spaces", "LIC-NEW-4")
            }),
            &["idempotency_key"],
        ),
        case(
            "registration with NUL characters, which Postgres cannot store",
            Call::RegisterSupplier(pb::RegisterSupplierRequest {
                legal_name: "Acme\0Co".into(),
                contacts: vec![pb::Contact {
                    name: "Li\0".into(),
                    email: "li\0wei@acme.example".into(),
                    phone: String::new(),
                }],
                owner_principal_id: SUPPLIER.into(),
                ..registration("reg-nul", "LIC-NEW-5")
            }),
            &["contacts[0].email", "contacts[0].name", "legal_name"],
        ),
        case(
            "operator registration for an owner with a NUL",
            Call::RegisterSupplier(pb::RegisterSupplierRequest {
                owner_principal_id: "supplier\0acme".into(),
                ..registration("reg-nul-owner", "LIC-NEW-6")
            }),
            &["owner_principal_id"],
        ),
        // GetSupplier
        case(
            "get with a non-UUID supplier id",
            Call::GetSupplier(pb::GetSupplierRequest {
                supplier_id: "supplier-1".into(),
            }),
            &["supplier_id"],
        ),
        case(
            "get without a supplier id",
            Call::GetSupplier(pb::GetSupplierRequest::default()),
            &["supplier_id"],
        ),
        // UpdateSupplierContacts
        case(
            "contacts update with no key, bad id, no contacts",
            Call::UpdateSupplierContacts(pb::UpdateSupplierContactsRequest {
                reason: "trust and safety review".into(),
                idempotency_key: String::new(),
                supplier_id: "12345".into(),
                contacts: vec![],
            }),
            &["contacts", "idempotency_key", "supplier_id"],
        ),
        case(
            "contacts update of a real supplier with a bad email",
            Call::UpdateSupplierContacts(pb::UpdateSupplierContactsRequest {
                reason: "trust and safety review".into(),
                idempotency_key: "contacts-1".into(),
                supplier_id: id(),
                contacts: vec![pb::Contact {
                    email: "wang@localhost".into(),
                    ..contact()
                }],
            }),
            &["contacts[0].email"],
        ),
        case(
            "contacts update with a NUL in a name",
            Call::UpdateSupplierContacts(pb::UpdateSupplierContactsRequest {
                reason: "trust and safety review".into(),
                idempotency_key: "contacts-2".into(),
                supplier_id: id(),
                contacts: vec![pb::Contact {
                    name: "Wang\0Fang".into(),
                    ..contact()
                }],
            }),
            &["contacts[0].name"],
        ),
        // SubmitVerification
        case(
            "submission without key or id",
            Call::SubmitVerification(pb::SubmitVerificationRequest::default()),
            &["idempotency_key", "reason", "supplier_id"],
        ),
        case(
            "submission of a real supplier without key",
            Call::SubmitVerification(pb::SubmitVerificationRequest {
                reason: "trust and safety review".into(),
                idempotency_key: String::new(),
                supplier_id: id(),
            }),
            &["idempotency_key"],
        ),
        // VerifySupplier
        case(
            "verification with a truncated UUID",
            Call::VerifySupplier(pb::VerifySupplierRequest {
                reason: "licence checked against the registry".into(),
                idempotency_key: "verify-1".into(),
                supplier_id: id()[..35].to_string(),
            }),
            &["supplier_id"],
        ),
        case(
            "verification without key",
            Call::VerifySupplier(pb::VerifySupplierRequest {
                reason: "licence checked against the registry".into(),
                idempotency_key: String::new(),
                supplier_id: UNKNOWN_ID.into(),
            }),
            &["idempotency_key"],
        ),
        // RejectVerification
        case(
            "rejection with an empty reason",
            Call::RejectVerification(pb::RejectVerificationRequest {
                idempotency_key: "reject-1".into(),
                supplier_id: id(),
                reason: String::new(),
            }),
            &["reason"],
        ),
        case(
            "rejection with a blank reason, no key, bad id",
            Call::RejectVerification(pb::RejectVerificationRequest {
                idempotency_key: String::new(),
                supplier_id: "x".into(),
                reason: " \t ".into(),
            }),
            &["idempotency_key", "reason", "supplier_id"],
        ),
        case(
            "rejection with a reason over 1000 characters",
            Call::RejectVerification(pb::RejectVerificationRequest {
                idempotency_key: "reject-2".into(),
                supplier_id: id(),
                reason: long(1001),
            }),
            &["reason"],
        ),
        case(
            "rejection with a NUL in the reason",
            Call::RejectVerification(pb::RejectVerificationRequest {
                idempotency_key: "reject-3".into(),
                supplier_id: id(),
                reason: "blurry\0scan".into(),
            }),
            &["reason"],
        ),
        // EnrollTradeAssurance
        case(
            "enrolment without a limit",
            Call::EnrollTradeAssurance(pb::EnrollTradeAssuranceRequest {
                reason: "enrolled after review".into(),
                idempotency_key: "enrol-1".into(),
                supplier_id: id(),
                ta_limit: None,
            }),
            &["ta_limit"],
        ),
        case(
            "enrolment in an unknown currency",
            Call::EnrollTradeAssurance(pb::EnrollTradeAssuranceRequest {
                reason: "enrolled after review".into(),
                idempotency_key: "enrol-2".into(),
                supplier_id: id(),
                ta_limit: money("XYZ", 100_000),
            }),
            &["ta_limit.currency_code"],
        ),
        case(
            "enrolment with a zero limit in lower-case currency, no key",
            Call::EnrollTradeAssurance(pb::EnrollTradeAssuranceRequest {
                reason: "enrolled after review".into(),
                idempotency_key: String::new(),
                supplier_id: id(),
                ta_limit: money("usd", 0),
            }),
            &[
                "idempotency_key",
                "ta_limit.amount_minor",
                "ta_limit.currency_code",
            ],
        ),
        // SetTradeAssuranceLimit
        case(
            "limit change to a negative amount",
            Call::SetTradeAssuranceLimit(pb::SetTradeAssuranceLimitRequest {
                reason: "credit review".into(),
                idempotency_key: "limit-1".into(),
                supplier_id: id(),
                ta_limit: usd(-1),
            }),
            &["ta_limit.amount_minor"],
        ),
        case(
            "limit change with a made-up currency and a bad id",
            Call::SetTradeAssuranceLimit(pb::SetTradeAssuranceLimitRequest {
                reason: "credit review".into(),
                idempotency_key: "limit-2".into(),
                supplier_id: "not-a-uuid".into(),
                ta_limit: money("DOLLARS", 5_000),
            }),
            &["supplier_id", "ta_limit.currency_code"],
        ),
        case(
            "limit change in another currency than the current limit",
            Call::SetTradeAssuranceLimit(pb::SetTradeAssuranceLimitRequest {
                reason: "credit review".into(),
                idempotency_key: "limit-3".into(),
                supplier_id: id(),
                ta_limit: money("EUR", 500_000),
            }),
            &["ta_limit.currency_code"],
        ),
        // SetSupplierStatus
        case(
            "status unspecified, without reason",
            Call::SetSupplierStatus(pb::SetSupplierStatusRequest {
                idempotency_key: "status-1".into(),
                supplier_id: id(),
                status: pb::SupplierStatus::Unspecified as i32,
                reason: String::new(),
            }),
            &["reason", "status"],
        ),
        case(
            "status not in the enum",
            Call::SetSupplierStatus(pb::SetSupplierStatusRequest {
                idempotency_key: "status-2".into(),
                supplier_id: id(),
                status: 42,
                reason: "testing".into(),
            }),
            &["status"],
        ),
        case(
            "suspension without key or reason",
            Call::SetSupplierStatus(pb::SetSupplierStatusRequest {
                idempotency_key: String::new(),
                supplier_id: id(),
                status: pb::SupplierStatus::Suspended as i32,
                reason: String::new(),
            }),
            &["idempotency_key", "reason"],
        ),
        case(
            "status change with a NUL in the reason",
            Call::SetSupplierStatus(pb::SetSupplierStatusRequest {
                idempotency_key: "status-3".into(),
                supplier_id: id(),
                status: pb::SupplierStatus::Restricted as i32,
                reason: "\0".into(),
            }),
            &["reason"],
        ),
        // SearchSuppliers
        case(
            "search with a page size over 100",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                page: page(101, ""),
                ..Default::default()
            }),
            &["page.page_size"],
        ),
        case(
            "search with a negative page size and a forged token",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                page: page(-1, "page-2"),
                ..Default::default()
            }),
            &["page.page_size", "page.page_token"],
        ),
        case(
            "search with a bad country and ratings out of range",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                country_code: "China".into(),
                min_average_rating_centi: 99,
                ..Default::default()
            }),
            &["country_code", "min_average_rating_centi"],
        ),
        case(
            "search with a rating above five stars",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                min_average_rating_centi: 501,
                ..Default::default()
            }),
            &["min_average_rating_centi"],
        ),
        case(
            "search with bad minimum cover",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                min_cover_remaining: money("ABC", -5),
                ..Default::default()
            }),
            &[
                "min_cover_remaining.amount_minor",
                "min_cover_remaining.currency_code",
            ],
        ),
        case(
            "search with an unknown sort and staff filters naming nothing",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                sort: 99,
                verification_statuses: vec![pb::VerificationStatus::Unspecified as i32, 42],
                statuses: vec![pb::SupplierStatus::Active as i32, 0],
                ..Default::default()
            }),
            &[
                "sort",
                "statuses[1]",
                "verification_statuses[0]",
                "verification_statuses[1]",
            ],
        ),
        case(
            "search by a name without a letter or digit, owned by staff",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                name_query: " -- & | ! ".into(),
                owned_by_me: true,
                ..Default::default()
            }),
            &["name_query", "owned_by_me"],
        ),
        case(
            "search by too long a name",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                name_query: "a".repeat(201),
                ..Default::default()
            }),
            &["name_query"],
        ),
        case(
            "search by eleven words",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                name_query: "a b c d e f g h i j k".into(),
                ..Default::default()
            }),
            &["name_query"],
        ),
        case(
            "search by remaining cover in no currency",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                sort: pb::SupplierSort::CoverRemaining as i32,
                ..Default::default()
            }),
            &["min_cover_remaining"],
        ),
        case(
            "search with a token of another order",
            Call::SearchSuppliers(pb::SearchSuppliersRequest {
                sort: pb::SupplierSort::AverageRating as i32,
                // The id order's token: `suppliers` and an id.
                page: page(
                    0,
                    "c3VwcGxpZXJzHzAxOTBjNWEyLTdhMmItN2MzZC04ZTRmLTVhNmI3YzhkOWUwZg",
                ),
                ..Default::default()
            }),
            &["page.page_token"],
        ),
        // ListCoverReservations
        case(
            "reservations with everything wrong",
            Call::ListCoverReservations(pb::ListCoverReservationsRequest {
                page: page(101, "not-a-token"),
                supplier_id: "supplier".into(),
                contract_id: "contract\u{0}".into(),
                status: 7,
            }),
            &[
                "contract_id",
                "page.page_size",
                "page.page_token",
                "status",
                "supplier_id",
            ],
        ),
        // ReserveCover
        case(
            "reservation with everything wrong",
            Call::ReserveCover(pb::ReserveCoverRequest {
                idempotency_key: String::new(),
                supplier_id: "supplier".into(),
                contract_id: String::new(),
                amount: money("EURO", 0),
            }),
            &[
                "amount.amount_minor",
                "amount.currency_code",
                "contract_id",
                "idempotency_key",
                "supplier_id",
            ],
        ),
        case(
            "reservation without an amount, contract id with a space",
            Call::ReserveCover(pb::ReserveCoverRequest {
                idempotency_key: "reserve-1".into(),
                supplier_id: id(),
                contract_id: "contract 2".into(),
                amount: None,
            }),
            &["amount", "contract_id"],
        ),
        case(
            "reservation with a 65-character contract id and a negative amount",
            Call::ReserveCover(pb::ReserveCoverRequest {
                idempotency_key: "reserve-2".into(),
                supplier_id: id(),
                contract_id: long(65),
                amount: usd(-100),
            }),
            &["amount.amount_minor", "contract_id"],
        ),
        case(
            "reservation in another currency than the TA limit",
            Call::ReserveCover(pb::ReserveCoverRequest {
                idempotency_key: "reserve-3".into(),
                supplier_id: id(),
                contract_id: "contract-eur".into(),
                amount: money("EUR", 1_000),
            }),
            &["amount.currency_code"],
        ),
        // AdjustCover
        case(
            "adjustment without key, id, contract, amount or version",
            Call::AdjustCover(pb::AdjustCoverRequest::default()),
            &[
                "amount",
                "contract_id",
                "contract_version",
                "idempotency_key",
                "supplier_id",
            ],
        ),
        case(
            "adjustment to a negative amount",
            Call::AdjustCover(pb::AdjustCoverRequest {
                idempotency_key: "adjust-1".into(),
                supplier_id: id(),
                contract_id: "contract-1".into(),
                amount: money("USD", -5),
                contract_version: 2,
            }),
            &["amount.amount_minor"],
        ),
        // ReleaseCover
        case(
            "release without key, id or contract",
            Call::ReleaseCover(pb::ReleaseCoverRequest::default()),
            &["contract_id", "idempotency_key", "supplier_id"],
        ),
        case(
            "release of a contract id with a slash",
            Call::ReleaseCover(pb::ReleaseCoverRequest {
                idempotency_key: "release-1".into(),
                supplier_id: id(),
                contract_id: "contract/seed".into(),
            }),
            &["contract_id"],
        ),
        // ReleaseStrandedCover
        case(
            "stranded cover without key, id, contract or reason",
            Call::ReleaseStrandedCover(pb::ReleaseStrandedCoverRequest::default()),
            &["contract_id", "idempotency_key", "reason", "supplier_id"],
        ),
        case(
            "stranded cover of a non-UUID supplier, reason too long",
            Call::ReleaseStrandedCover(pb::ReleaseStrandedCoverRequest {
                idempotency_key: "stranded-1".into(),
                supplier_id: "acme".into(),
                contract_id: "contract-1".into(),
                reason: "x".repeat(1_001),
            }),
            &["reason", "supplier_id"],
        ),
        // GetCover
        case(
            "cover of a non-UUID",
            Call::GetCover(pb::GetCoverRequest {
                supplier_id: "acme".into(),
            }),
            &["supplier_id"],
        ),
        // RecordCompletedContract
        case(
            "completed contract without key, contract or buyer",
            Call::RecordCompletedContract(pb::RecordCompletedContractRequest {
                idempotency_key: String::new(),
                supplier_id: id(),
                contract_id: String::new(),
                buyer_principal_id: "   ".into(),
            }),
            &["buyer_principal_id", "contract_id", "idempotency_key"],
        ),
        case(
            "completed contract with a bad supplier id",
            Call::RecordCompletedContract(pb::RecordCompletedContractRequest {
                idempotency_key: "completed-1".into(),
                supplier_id: "s-1".into(),
                contract_id: "contract-9".into(),
                buyer_principal_id: BUYER.into(),
            }),
            &["supplier_id"],
        ),
        case(
            "completed contract with a NUL in the buyer id",
            Call::RecordCompletedContract(pb::RecordCompletedContractRequest {
                idempotency_key: "completed-2".into(),
                supplier_id: id(),
                contract_id: "contract-10".into(),
                buyer_principal_id: "buyer\0".into(),
            }),
            &["buyer_principal_id"],
        ),
        // SubmitReview
        case(
            "review rated 0",
            Call::SubmitReview(pb::SubmitReviewRequest {
                idempotency_key: "review-1".into(),
                supplier_id: id(),
                contract_id: "contract-seed".into(),
                rating: 0,
                comment: String::new(),
            }),
            &["rating"],
        ),
        case(
            "review rated 6 with a comment over 2000 characters",
            Call::SubmitReview(pb::SubmitReviewRequest {
                idempotency_key: "review-2".into(),
                supplier_id: id(),
                contract_id: "contract-seed".into(),
                rating: 6,
                comment: long(2001),
            }),
            &["comment", "rating"],
        ),
        case(
            "review rated 261 (wraps to 5 as a byte)",
            Call::SubmitReview(pb::SubmitReviewRequest {
                idempotency_key: "review-3".into(),
                supplier_id: id(),
                contract_id: "contract-seed".into(),
                rating: 261,
                comment: String::new(),
            }),
            &["rating"],
        ),
        case(
            "review without key, id or contract",
            Call::SubmitReview(pb::SubmitReviewRequest {
                rating: 3,
                ..Default::default()
            }),
            &["contract_id", "idempotency_key", "supplier_id"],
        ),
        case(
            "review with a NUL in the comment",
            Call::SubmitReview(pb::SubmitReviewRequest {
                idempotency_key: "review-4".into(),
                supplier_id: id(),
                contract_id: "contract-seed".into(),
                rating: 4,
                comment: "fine\0".into(),
            }),
            &["comment"],
        ),
        // ListReviews
        case(
            "reviews of a non-UUID",
            Call::ListReviews(pb::ListReviewsRequest {
                supplier_id: "reviews".into(),
                page: None,
            }),
            &["supplier_id"],
        ),
        case(
            "reviews with a page size over 100",
            Call::ListReviews(pb::ListReviewsRequest {
                supplier_id: id(),
                page: page(1000, ""),
            }),
            &["page.page_size"],
        ),
        case(
            "reviews with a token that is not one",
            Call::ListReviews(pb::ListReviewsRequest {
                supplier_id: id(),
                page: page(5, "yesterday"),
            }),
            &["page.page_token"],
        ),
        case(
            "reviews with a token whose time is not a number",
            Call::ListReviews(pb::ListReviewsRequest {
                supplier_id: id(),
                page: page(5, "noon.contract-seed"),
            }),
            &["page.page_token"],
        ),
        case(
            "reviews with a token from 9000 BC, which Postgres cannot represent",
            Call::ListReviews(pb::ListReviewsRequest {
                supplier_id: id(),
                page: page(5, "-346000000000000000000.contract-seed"),
            }),
            &["page.page_token"],
        ),
        // RecordInquiry
        case(
            "inquiry without key or inquiry id",
            Call::RecordInquiry(pb::RecordInquiryRequest {
                idempotency_key: String::new(),
                supplier_id: id(),
                inquiry_id: String::new(),
            }),
            &["idempotency_key", "inquiry_id"],
        ),
        case(
            "inquiry of a bad supplier id",
            Call::RecordInquiry(pb::RecordInquiryRequest {
                idempotency_key: "inquiry-1".into(),
                supplier_id: "{not}".into(),
                inquiry_id: "inquiry-2".into(),
            }),
            &["supplier_id"],
        ),
        // RecordInquiryReply
        case(
            "reply with an inquiry id of spaces",
            Call::RecordInquiryReply(pb::RecordInquiryReplyRequest {
                idempotency_key: "reply-1".into(),
                supplier_id: id(),
                inquiry_id: "inquiry seed".into(),
            }),
            &["inquiry_id"],
        ),
        case(
            "reply without key or id",
            Call::RecordInquiryReply(pb::RecordInquiryReplyRequest {
                idempotency_key: String::new(),
                supplier_id: String::new(),
                inquiry_id: "inquiry-seed".into(),
            }),
            &["idempotency_key", "supplier_id"],
        ),
        // RecordPenalty
        case(
            "penalty of 0 points without reason",
            Call::RecordPenalty(pb::RecordPenaltyRequest {
                idempotency_key: "penalty-1".into(),
                supplier_id: id(),
                claim_id: "dispute-2".into(),
                points: 0,
                reason: String::new(),
            }),
            &["points", "reason"],
        ),
        case(
            "penalty of 101 points",
            Call::RecordPenalty(pb::RecordPenaltyRequest {
                idempotency_key: "penalty-2".into(),
                supplier_id: id(),
                claim_id: "dispute-3".into(),
                points: 101,
                reason: "quality mismatch upheld".into(),
            }),
            &["points"],
        ),
        case(
            "penalty without key, dispute, with a blank reason",
            Call::RecordPenalty(pb::RecordPenaltyRequest {
                idempotency_key: String::new(),
                supplier_id: id(),
                claim_id: String::new(),
                points: 5,
                reason: "\n".into(),
            }),
            &["claim_id", "idempotency_key", "reason"],
        ),
        case(
            "penalty with a NUL in the reason",
            Call::RecordPenalty(pb::RecordPenaltyRequest {
                idempotency_key: "penalty-3".into(),
                supplier_id: id(),
                claim_id: "dispute-4".into(),
                points: 5,
                reason: "upheld\0".into(),
            }),
            &["reason"],
        ),
    ]
}

#[sqlx::test(migrations = false)]
async fn every_rpc_refuses_invalid_fields_and_writes_nothing(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = populated(&mut client).await;
    let before = snapshot(&pool).await;
    for table in TABLES {
        assert!(before.rows(table) > 0, "{table} is seeded");
    }

    let cases = cases(&id);
    let covered: BTreeSet<&str> = cases.iter().map(|c| c.call.rpc()).collect();
    // The feed's one field, a sequence, has no bad value.
    let all: BTreeSet<&str> = RPCS
        .iter()
        .copied()
        .filter(|rpc| *rpc != "StreamSupplierEvents")
        .collect();
    assert_eq!(covered, all, "every RPC with a field has a bad-input case");
    assert_eq!(all.len(), RPCS.len() - 1);

    for Case { what, call, fields } in cases {
        let auth = call.admitted_caller();
        let rpc = call.rpc();
        let status = call
            .send(&mut client, auth)
            .await
            .expect_err(&format!("{rpc}: {what} was accepted"));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{rpc}: {what}: {status:?}"
        );
        assert_eq!(
            violated_fields(&status),
            fields,
            "{rpc}: {what}: {}",
            status.message()
        );
        for field in fields {
            assert!(
                status.message().contains(&format!("{field}: ")),
                "{rpc}: {what}: message does not name {field}: {}",
                status.message()
            );
        }
        assert_eq!(
            snapshot(&pool).await,
            before,
            "{rpc}: {what} wrote something"
        );
    }
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_refused_request_does_not_use_up_its_idempotency_key(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let refused = client
        .register_supplier(as_role(
            pb::RegisterSupplierRequest {
                country_code: "ZZ".into(),
                ..registration("reg-1", "LIC-KEY-1")
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["country_code"]);
    assert_eq!(snapshot(&pool).await.rows("idempotency_keys"), 0);

    // The corrected request under the same key runs.
    let supplier = client
        .register_supplier(as_role(
            registration("reg-1", "LIC-KEY-1"),
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .expect("corrected registration")
        .into_inner()
        .supplier
        .unwrap();
    assert_eq!(supplier.country_code, "CN");
    let after = snapshot(&pool).await;
    assert_eq!(after.rows("suppliers"), 1);
    assert_eq!(after.rows("idempotency_keys"), 1);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn page_size_bounds_are_inclusive(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = register(&mut client, "LIC-PAGES").await;
    for size in [0, 1, 100] {
        client
            .search_suppliers(as_role(
                pb::SearchSuppliersRequest {
                    page: page(size, ""),
                    ..Default::default()
                },
                BUYER,
                Role::Buyer,
            ))
            .await
            .unwrap_or_else(|s| panic!("search page_size {size}: {s:?}"));
        client
            .list_reviews(as_role(
                pb::ListReviewsRequest {
                    supplier_id: id.clone(),
                    page: page(size, ""),
                },
                BUYER,
                Role::Buyer,
            ))
            .await
            .unwrap_or_else(|s| panic!("reviews page_size {size}: {s:?}"));
    }
    server.stop().await.unwrap();
}
