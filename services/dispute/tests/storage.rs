//! Dispute storage over real Postgres: a claim round-trips through its row
//! and offers, one claim is in progress per contract, the same file on a
//! claim is one piece of evidence, listings filter and page, and the timeline
//! numbers its entries without gaps.

use dispute::{
    domain::{
        claim::{Claim, Escalator, OfferStatus, Outcome, Policy, Reason, Remedy},
        status::Status,
    },
    storage::{
        self, StoredActor,
        claims::{self, ClaimFilter, ClaimRecord},
        evidence::{self, EvidenceRecord},
        timeline,
    },
};
use sqlx::PgPool;
use ta_runtime::{
    ServiceError,
    money::{Currency, Money},
    timestamps,
};
use ta_workflow::timeline::TimelineEntry;
use uuid::Uuid;

static MIGRATOR: &sqlx::migrate::Migrator = &storage::MIGRATOR;

fn usd(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::parse("USD").unwrap())
}

fn claim_on(contract_id: &str, buyer: &str) -> ClaimRecord {
    let now = timestamps::now();
    ClaimRecord {
        claim_id: Uuid::now_v7(),
        contract_id: contract_id.into(),
        escrow_account_id: "account-1".into(),
        buyer_principal_id: buyer.into(),
        supplier_id: "supplier-1".into(),
        supplier_principal_id: "owner-1".into(),
        reason: Reason::Damage,
        remedy: Remedy::ReturnAndRefund,
        quality_criterion_ids: vec!["QC-1".into()],
        description: "crushed cartons".into(),
        goods_shipped: true,
        claim: Claim::file(usd(40_000), usd(100_000), now, &Policy::default()).unwrap(),
        supplier_rejected_at: None,
        supplier_rejection_reason: String::new(),
        supplier_counter_evidence_ids: Vec::new(),
        escalated_by: None,
        escalation_reason: String::new(),
        decision_due_at: None,
        accepted_offer_id: String::new(),
        resolved_by: None,
        resolved_at: None,
        withdrawn_at: None,
        withdrawal_reason: String::new(),
        refusal_reason: String::new(),
        effects_completed_at: None,
        new_shipment_deadline: None,
        updated_at: now,
    }
}

/// Postgres keeps microseconds; the domain's times are compared as stored.
fn truncated(mut c: ClaimRecord) -> ClaimRecord {
    let micros =
        |t: time::OffsetDateTime| t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap();
    c.claim.filed_at = micros(c.claim.filed_at);
    c.claim.negotiation_ends_at = micros(c.claim.negotiation_ends_at);
    c.claim.auto_escalate_at = micros(c.claim.auto_escalate_at);
    c.claim.escalated_at = c.claim.escalated_at.map(micros);
    c.updated_at = micros(c.updated_at);
    c.decision_due_at = c.decision_due_at.map(micros);
    c.resolved_at = c.resolved_at.map(micros);
    c.new_shipment_deadline = c.new_shipment_deadline.map(micros);
    for o in &mut c.claim.offers {
        o.made_at = micros(o.made_at);
        o.responded_at = o.responded_at.map(micros);
    }
    c
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_claim_round_trips_through_its_row_and_offers(pool: PgPool) {
    let mut record = claim_on("contract-1", "buyer-1");
    let id = record.claim_id;
    let mut tx = pool.begin().await.unwrap();
    claims::insert_claim(&mut tx, &record).await.unwrap();
    let now = timestamps::now();
    record
        .claim
        .opened(usd(100_000), now, &Policy::default())
        .unwrap();
    record
        .claim
        .make_offer(
            &Uuid::now_v7().to_string(),
            Outcome::PartialRefund(usd(20_000)),
            now,
        )
        .unwrap();
    record.claim.offers[0].message = "half the cartons".into();
    // A second offer supersedes the first within one save.
    record
        .claim
        .make_offer(&Uuid::now_v7().to_string(), Outcome::FullRefund, now)
        .unwrap();
    record.claim.escalate(Escalator::Arbiter, now).unwrap();
    record.escalated_by = Some(StoredActor {
        principal_id: "ops-1".into(),
        role: "operator".into(),
    });
    record.escalation_reason = "look at it".into();
    let reason = record.claim.offers[0].offer_id.clone();
    record
        .claim
        .decide(
            Outcome::PartialRefund(usd(25_000)),
            &reason,
            &Policy::default(),
        )
        .unwrap();
    record.resolved_at = Some(now);
    record.new_shipment_deadline = Some(now + time::Duration::days(10));
    claims::save_claim(&mut tx, &mut record, now).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let locked = claims::lock_claim(&mut tx, id).await.unwrap();
    assert_eq!(locked, truncated(record.clone()));
    assert_eq!(locked.claim.status, Status::Decided);
    assert_eq!(
        locked
            .claim
            .offers
            .iter()
            .map(|o| o.status)
            .collect::<Vec<_>>(),
        [OfferStatus::Superseded, OfferStatus::Lapsed]
    );
    let resolution = locked.claim.resolution.as_ref().unwrap();
    assert_eq!(
        (resolution.refund, resolution.penalty_points),
        (usd(25_000), 6)
    );
    let missing = claims::lock_claim(&mut tx, Uuid::now_v7()).await;
    assert!(matches!(missing, Err(ServiceError::NotFound { .. })));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_claim_is_in_progress_per_contract_and_withdrawn_reasons_are_remembered(pool: PgPool) {
    let mut first = claim_on("contract-2", "buyer-1");
    let mut tx = pool.begin().await.unwrap();
    claims::insert_claim(&mut tx, &first).await.unwrap();
    let second = claim_on("contract-2", "buyer-1");
    let refused = claims::insert_claim(&mut tx, &second).await;
    assert!(
        matches!(
            refused,
            Err(ServiceError::Refused {
                reason: "CLAIM_ALREADY_OPEN",
                ..
            })
        ),
        "{refused:?}"
    );
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    claims::insert_claim(&mut tx, &first).await.unwrap();
    let now = timestamps::now();
    first
        .claim
        .opened(usd(100_000), now, &Policy::default())
        .unwrap();
    first.claim.withdraw(now).unwrap();
    claims::save_claim(&mut tx, &mut first, now).await.unwrap();
    assert!(
        claims::withdrawn_before(&mut tx, "contract-2", Reason::Damage)
            .await
            .unwrap()
    );
    assert!(
        !claims::withdrawn_before(&mut tx, "contract-2", Reason::ShortQuantity)
            .await
            .unwrap()
    );
    // Once it is over, another claim may be filed.
    claims::insert_claim(&mut tx, &second).await.unwrap();
    tx.commit().await.unwrap();
}

fn evidence(claim_id: Uuid, sha: &str) -> EvidenceRecord {
    EvidenceRecord {
        evidence_id: Uuid::now_v7(),
        claim_id,
        kind: "photo".into(),
        filename: "carton.jpg".into(),
        content_type: "image/jpeg".into(),
        size_bytes: 1234,
        sha256_hex: sha.into(),
        description: String::new(),
        quality_criterion_ids: Vec::new(),
        uploaded_by_principal_id: "buyer-1".into(),
        uploaded_by_role: "buyer".into(),
        uploaded_at: timestamps::now(),
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_same_file_on_a_claim_is_one_piece_of_evidence(pool: PgPool) {
    let record = claim_on("contract-3", "buyer-1");
    let id = record.claim_id;
    let mut tx = pool.begin().await.unwrap();
    claims::insert_claim(&mut tx, &record).await.unwrap();
    let (a, new) = evidence::insert_evidence(&mut tx, &evidence(id, &"a".repeat(64)))
        .await
        .unwrap();
    assert!(new);
    let (again, new) = evidence::insert_evidence(&mut tx, &evidence(id, &"a".repeat(64)))
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(again.evidence_id, a.evidence_id);
    let (b, _) = evidence::insert_evidence(&mut tx, &evidence(id, &"b".repeat(64)))
        .await
        .unwrap();
    assert_eq!(evidence::count_evidence(&mut tx, id).await.unwrap(), 2);
    let stranger = Uuid::now_v7();
    assert_eq!(
        evidence::unknown_evidence(&mut tx, id, &[a.evidence_id, stranger])
            .await
            .unwrap(),
        [stranger]
    );
    let first = evidence::list_evidence(&mut tx, id, None, 1).await.unwrap();
    assert_eq!(first[0].evidence_id, a.evidence_id);
    let next = evidence::list_evidence(
        &mut tx,
        id,
        Some((first[0].uploaded_at, first[0].evidence_id)),
        5,
    )
    .await
    .unwrap();
    assert_eq!(
        next.iter().map(|e| e.evidence_id).collect::<Vec<_>>(),
        [b.evidence_id]
    );
    let bad = evidence::insert_evidence(&mut tx, &evidence(id, "not-hex")).await;
    assert!(bad.is_err(), "the schema refuses a malformed hash");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn listings_filter_by_party_and_status_and_page_newest_first(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for (i, buyer) in ["buyer-1", "buyer-2", "buyer-1"].iter().enumerate() {
        let mut c = claim_on(&format!("contract-l{i}"), buyer);
        c.claim.filed_at += time::Duration::seconds(i as i64);
        claims::insert_claim(&mut tx, &c).await.unwrap();
        ids.push(c.claim_id);
    }
    let mine = ClaimFilter {
        buyer_principal_id: Some("buyer-1".into()),
        ..ClaimFilter::default()
    };
    let page = claims::list_claims(&mut tx, &mine, None, 1).await.unwrap();
    assert_eq!(
        page.iter().map(|c| c.claim_id).collect::<Vec<_>>(),
        [ids[2]]
    );
    let rest = claims::list_claims(
        &mut tx,
        &mine,
        Some((page[0].claim.filed_at, page[0].claim_id)),
        5,
    )
    .await
    .unwrap();
    assert_eq!(
        rest.iter().map(|c| c.claim_id).collect::<Vec<_>>(),
        [ids[0]]
    );
    let negotiating = ClaimFilter {
        statuses: vec![Status::Negotiating],
        ..ClaimFilter::default()
    };
    assert!(
        claims::list_claims(&mut tx, &negotiating, None, 5)
            .await
            .unwrap()
            .is_empty()
    );
    let by_supplier = ClaimFilter {
        supplier_principal_id: Some("owner-1".into()),
        reason: Some(Reason::Damage),
        ..ClaimFilter::default()
    };
    assert_eq!(
        claims::list_claims(&mut tx, &by_supplier, None, 5)
            .await
            .unwrap()
            .len(),
        3
    );
    tx.commit().await.unwrap();
    let (by_status, overdue) = claims::claim_figures(&pool).await.unwrap();
    assert_eq!(by_status, [("opening".to_owned(), 3)]);
    assert_eq!(overdue, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_timeline_numbers_its_entries_without_gaps(pool: PgPool) {
    let record = claim_on("contract-t", "buyer-1");
    let mut tx = pool.begin().await.unwrap();
    claims::insert_claim(&mut tx, &record).await.unwrap();
    for (kind, money) in [("claim.filed", Some(usd(40_000))), ("claim.opened", None)] {
        timeline::append_timeline(
            &mut tx,
            record.claim_id,
            &TimelineEntry {
                entry: 0,
                occurred_at: timestamps::now(),
                actor_principal_id: "buyer-1".into(),
                actor_role: "buyer".into(),
                kind: kind.into(),
                description: "d".into(),
                money,
            },
        )
        .await
        .unwrap();
    }
    let entries = timeline::list_timeline(&mut tx, record.claim_id, 0, 10)
        .await
        .unwrap();
    assert_eq!(entries.iter().map(|e| e.entry).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(entries[0].money, Some(usd(40_000)));
    assert_eq!(
        timeline::list_timeline(&mut tx, record.claim_id, 1, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}
