//! Conflicts decided by a concurrent transaction: another transaction inserts
//! the conflicting row and commits only once the call under test waits on it,
//! so the call's own existence check came too early. The answer must still be
//! ALREADY_EXISTS, never INTERNAL, and the call must write nothing.

mod common;

use std::time::Duration;

use common::*;
use sqlx::{PgPool, Postgres, Transaction};
use ta_proto::supplier as pb;
use ta_runtime::auth::Role;
use tonic::Code;

/// Waits until a session of this test's database waits for a lock.
async fn until_blocked(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never waited for the concurrent transaction"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `call` while `conflict` holds an uncommitted conflicting row, commits
/// that row once the call waits for it, and returns the call's status.
async fn racing<T: Send + 'static>(
    pool: &PgPool,
    conflict: Transaction<'static, Postgres>,
    call: impl Future<Output = Result<T, tonic::Status>> + Send + 'static,
) -> tonic::Status {
    let call = tokio::spawn(call);
    until_blocked(pool).await;
    conflict.commit().await.unwrap();
    match call.await.unwrap() {
        Ok(_) => panic!("the conflicting call succeeded"),
        Err(status) => status,
    }
}

async fn uncommitted(
    pool: &PgPool,
    sql: &'static str,
    supplier_id: &str,
) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(sql)
        .bind(uuid::Uuid::parse_str(supplier_id).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

#[sqlx::test(migrations = false)]
async fn a_contract_completed_concurrently_with_another_supplier(pool: PgPool) {
    let Registry { server, client } = start(pool.clone()).await;
    let mut setup = client.clone();
    let first = register(&mut setup, "LIC-RACE-A").await;
    let second = register(&mut setup, "LIC-RACE-B").await;
    let conflict = uncommitted(
        &pool,
        "INSERT INTO supplier_registry.completed_contracts \
         (contract_id, supplier_id, buyer_principal_id, completed_at) \
         VALUES ('contract-1', $1, 'buyer-1', now())",
        &first,
    )
    .await;
    let before = snapshot(&pool).await;

    let mut racer = client.clone();
    let status = racing(&pool, conflict, async move {
        racer
            .record_completed_contract(service(pb::RecordCompletedContractRequest {
                idempotency_key: "completed-1".into(),
                supplier_id: second,
                contract_id: "contract-1".into(),
                buyer_principal_id: "buyer-1".into(),
            }))
            .await
    })
    .await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("contract-1"), "{status:?}");
    let after = snapshot(&pool).await;
    assert_eq!(after.rows("completed_contracts"), 1, "only the winner's");
    assert_eq!(
        after.rows("idempotency_keys"),
        before.rows("idempotency_keys")
    );
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_contract_covered_concurrently_by_another_supplier(pool: PgPool) {
    let Registry { server, client } = start(pool.clone()).await;
    let mut setup = client.clone();
    let first = badged_supplier(&mut setup, "LIC-RACE-A", 100_000).await;
    let second = badged_supplier(&mut setup, "LIC-RACE-B", 100_000).await;
    let conflict = uncommitted(
        &pool,
        "INSERT INTO supplier_registry.cover_reservations \
         (contract_id, supplier_id, currency, amount_minor, status, reserved_at) \
         VALUES ('contract-1', $1, 'USD', 5000, 'active', now())",
        &first,
    )
    .await;
    let before = snapshot(&pool).await;

    let mut racer = client.clone();
    let racer_id = second.clone();
    let status = racing(&pool, conflict, async move {
        racer
            .reserve_cover(service(pb::ReserveCoverRequest {
                idempotency_key: "reserve-1".into(),
                supplier_id: racer_id,
                contract_id: "contract-1".into(),
                amount: usd(5_000),
            }))
            .await
    })
    .await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("contract-1"), "{status:?}");
    let after = snapshot(&pool).await;
    assert_eq!(after.rows("cover_reservations"), 1, "only the winner's");
    assert_eq!(
        after.rows("idempotency_keys"),
        before.rows("idempotency_keys")
    );
    let loser = supplier(&mut setup, &second).await;
    assert_eq!(loser.cover_reserved.unwrap().amount_minor, 0);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_licence_registered_concurrently(pool: PgPool) {
    let Registry { server, client } = start(pool.clone()).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO supplier_registry.suppliers (id, owner_principal_id, legal_name, country_code, \
         business_licence_number, contacts, verification, status, created_at, updated_at) \
         VALUES ($1, 'supplier-first', 'First Ltd', 'CN', 'LIC-RACE', '[]', 'unverified', 'active', now(), now())",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&mut *tx)
    .await
    .unwrap();

    let mut racer = client.clone();
    let status = racing(&pool, tx, async move {
        racer
            .register_supplier(as_role(
                registration("reg-1", "LIC-RACE"),
                SUPPLIER,
                Role::Supplier,
            ))
            .await
    })
    .await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(
        status.message(),
        "a supplier with business licence LIC-RACE in CN is already registered"
    );
    let after = snapshot(&pool).await;
    assert_eq!(after.rows("suppliers"), 1);
    assert_eq!(after.rows("idempotency_keys"), 0);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_dispute_penalised_concurrently_for_another_supplier(pool: PgPool) {
    let Registry { server, client } = start(pool.clone()).await;
    let mut setup = client.clone();
    let first = register(&mut setup, "LIC-RACE-A").await;
    let second = register(&mut setup, "LIC-RACE-B").await;
    let conflict = uncommitted(
        &pool,
        "INSERT INTO supplier_registry.penalties \
         (claim_id, supplier_id, points, reason, recorded_at) \
         VALUES ('dispute-1', $1, 5, 'upheld', now())",
        &first,
    )
    .await;

    let mut racer = client.clone();
    let racer_id = second.clone();
    let status = racing(&pool, conflict, async move {
        racer
            .record_penalty(service(pb::RecordPenaltyRequest {
                idempotency_key: "penalty-1".into(),
                supplier_id: racer_id,
                claim_id: "dispute-1".into(),
                points: 5,
                reason: "upheld".into(),
            }))
            .await
    })
    .await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(
        status.message(),
        "claim dispute-1 already has a different penalty recorded"
    );
    assert_eq!(supplier(&mut setup, &second).await.penalty_points, 0);
    server.stop().await.unwrap();
}
