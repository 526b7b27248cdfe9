//! Contract storage over real Postgres: a contract's negotiation round-trips
//! through its row and signatures, versions are immutable and unique, the
//! timeline numbers its entries without gaps, and the schema refuses states
//! the domain never produces.

use contract::{
    domain::{
        negotiation::{Negotiation, Party, Protection},
        status::Status,
    },
    storage::{
        contracts::{ContractRecord, Progress},
        versions::VersionRecord,
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

/// The storage functions these tests call, from their aggregates' modules.
mod storage {
    pub use contract::storage::{
        MIGRATOR,
        contracts::{get_contract, insert_contract, lock_contract, save_contract},
        timeline::{append_timeline, list_timeline as timeline},
        versions::{insert_version, version},
    };
}

static MIGRATOR: &sqlx::migrate::Migrator = &storage::MIGRATOR;

fn usd(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::parse("USD").unwrap())
}

fn draft() -> (ContractRecord, VersionRecord) {
    let now = timestamps::now();
    let id = Uuid::new_v4();
    let contract = ContractRecord {
        contract_id: id,
        buyer_principal_id: "buyer-1".into(),
        supplier_id: Uuid::new_v4(),
        supplier_principal_id: "owner-1".into(),
        negotiation: Negotiation::new(Protection::TradeAssurance),
        status_before_dispute: None,
        total: usd(341_750),
        escrow_account_id: None,
        open_claim_id: None,
        activation_refusal: String::new(),
        cancellation_reason: String::new(),
        progress: Progress::default(),
        external_reference: None,
        created_at: now,
        updated_at: now,
    };
    let version = VersionRecord {
        contract_id: id,
        version: 1,
        terms: vec![1, 2, 3],
        total: usd(341_750),
        created_by_principal_id: "buyer-1".into(),
        created_by_role: "buyer".into(),
        change_note: String::new(),
        created_at: now,
    };
    (contract, version)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_negotiation_round_trips_through_its_row_and_signatures(pool: PgPool) {
    let (mut contract, first) = draft();
    let id = contract.contract_id;
    let mut tx = pool.begin().await.unwrap();
    storage::insert_contract(&mut tx, &contract, &first)
        .await
        .unwrap();
    let at = timestamps::now();
    contract
        .negotiation
        .sign(Party::Buyer, "buyer-1", 1, at)
        .unwrap();
    storage::save_contract(&mut tx, &mut contract, at)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Revised: version 2, the buyer's signature on version 1 no longer counts.
    let mut tx = pool.begin().await.unwrap();
    let mut locked = storage::lock_contract(&mut tx, id).await.unwrap();
    assert_eq!(locked.negotiation, contract.negotiation);
    let version = locked.negotiation.revise(1).unwrap();
    storage::insert_version(
        &mut tx,
        &VersionRecord {
            version,
            ..first.clone()
        },
    )
    .await
    .unwrap();
    storage::save_contract(&mut tx, &mut locked, at)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let read = storage::get_contract(&mut conn, id).await.unwrap();
    assert_eq!(
        (
            read.negotiation.latest_version,
            read.negotiation.signatures.len()
        ),
        (2, 0)
    );
    assert_eq!(read.negotiation.status, Status::Draft);

    // Both sign version 2; then cover is refused and the signatures are void.
    let mut tx = pool.begin().await.unwrap();
    let mut locked = storage::lock_contract(&mut tx, id).await.unwrap();
    locked
        .negotiation
        .sign(Party::Supplier, "owner-1", 2, at)
        .unwrap();
    locked
        .negotiation
        .sign(Party::Buyer, "buyer-1", 2, at)
        .unwrap();
    storage::save_contract(&mut tx, &mut locked, at)
        .await
        .unwrap();
    let signed = storage::get_contract(&mut tx, id).await.unwrap();
    assert_eq!(
        (signed.negotiation.status, signed.negotiation.signed_version),
        (Status::Activating, 2)
    );
    assert_eq!(signed.negotiation.signatures.len(), 2);
    locked.negotiation.activation_refused().unwrap();
    locked.activation_refusal = "TA_LIMIT_EXCEEDED: over the remaining limit".into();
    storage::save_contract(&mut tx, &mut locked, at)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let refused = storage::get_contract(&mut conn, id).await.unwrap();
    assert_eq!(refused.negotiation, locked.negotiation);
    assert!(refused.negotiation.signatures.is_empty());
    assert_eq!(refused.activation_refusal, locked.activation_refusal);

    let stored = storage::version(&mut conn, id, 2).await.unwrap();
    assert_eq!(stored.terms, first.terms);
    assert!(matches!(
        storage::version(&mut conn, id, 9).await,
        Err(ServiceError::NotFound { .. })
    ));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn versions_are_written_once_and_the_schema_refuses_impossible_states(pool: PgPool) {
    let (contract, first) = draft();
    let mut tx = pool.begin().await.unwrap();
    storage::insert_contract(&mut tx, &contract, &first)
        .await
        .unwrap();
    let again = storage::insert_version(&mut tx, &first).await.unwrap_err();
    assert!(matches!(again, ServiceError::Aborted(_)), "{again:?}");
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    storage::insert_contract(&mut tx, &contract, &first)
        .await
        .unwrap();
    let mut broken = contract.clone();
    broken.negotiation.signed_version = 5;
    let refused = storage::save_contract(&mut tx, &mut broken, timestamps::now())
        .await
        .unwrap_err();
    assert!(matches!(refused, ServiceError::Internal(_)), "{refused:?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_timeline_numbers_its_entries_in_order(pool: PgPool) {
    let (contract, first) = draft();
    let id = contract.contract_id;
    let mut tx = pool.begin().await.unwrap();
    storage::insert_contract(&mut tx, &contract, &first)
        .await
        .unwrap();
    for (kind, money) in [
        ("DRAFT_CREATED", None),
        ("SIGNED", None),
        ("PAYMENT_RECEIVED", Some(usd(102_525))),
    ] {
        let entry = TimelineEntry {
            entry: 0,
            occurred_at: timestamps::now(),
            actor_principal_id: "buyer-1".into(),
            actor_role: "buyer".into(),
            kind: kind.into(),
            description: format!("{kind} by the buyer"),
            money,
        };
        storage::append_timeline(&mut tx, id, &entry).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let all = storage::timeline(&mut conn, id, 0, 10).await.unwrap();
    let numbers: Vec<u32> = all.iter().map(|e| e.entry).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(all[2].money, Some(usd(102_525)));
    let page = storage::timeline(&mut conn, id, 1, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].kind, "SIGNED");
}
