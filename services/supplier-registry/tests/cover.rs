//! Cover (TA limit) over real gRPC and real Postgres: concurrency, idempotency,
//! release at most once.

mod common;

use common::*;
use sqlx::PgPool;
use ta_proto::supplier as pb;
use ta_runtime::auth::Role;
use tonic::Code;

fn reserve(
    key: &str,
    supplier_id: &str,
    contract_id: &str,
    amount: i64,
) -> tonic::Request<pb::ReserveCoverRequest> {
    as_role(
        pb::ReserveCoverRequest {
            idempotency_key: key.into(),
            supplier_id: supplier_id.into(),
            contract_id: contract_id.into(),
            amount: usd(amount),
        },
        SERVICE,
        Role::Service,
    )
}

#[sqlx::test(migrations = false)]
async fn fifty_concurrent_reservations_never_exceed_the_limit(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    // Room for exactly 20 reservations of 500.00 USD.
    let id = badged_supplier(&mut client, "LIC-CONCURRENT", 1_000_000).await;

    let attempts = (0..50).map(|i| {
        let mut client = client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            client
                .reserve_cover(reserve(
                    &format!("r-{i}"),
                    &id,
                    &format!("contract-{i}"),
                    50_000,
                ))
                .await
                .map(|r| r.into_inner())
        })
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut granted = 0;
    for result in results {
        match result.expect("task") {
            Ok(_) => granted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(
                    status.message().contains("exceeds the remaining TA limit"),
                    "{status:?}"
                );
            }
        }
    }
    assert_eq!(granted, 20);

    let cover = client
        .get_cover(as_role(
            pb::GetCoverRequest {
                supplier_id: id.clone(),
            },
            OPERATOR,
            Role::TrustSafety,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cover.cover_reserved.unwrap().amount_minor, 1_000_000);
    assert_eq!(cover.cover_remaining.unwrap().amount_minor, 0);
    assert_eq!(cover.active_reservations.len(), 20);

    let (sum,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount_minor), 0)::bigint FROM supplier_registry.cover_reservations WHERE status = 'active'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        sum, 1_000_000,
        "the ledger of reservations agrees with the supplier row"
    );
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_retried_reservation_changes_nothing(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = badged_supplier(&mut client, "LIC-RETRY", 100_000).await;

    let first = client
        .reserve_cover(reserve("k-1", &id, "contract-a", 30_000))
        .await
        .unwrap()
        .into_inner();
    // The same key and body: replayed.
    let replay = client
        .reserve_cover(reserve("k-1", &id, "contract-a", 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, replay);
    // Another key, same contract and amount: idempotent per contract.
    let again = client
        .reserve_cover(reserve("k-2", &id, "contract-a", 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.reservation, first.reservation);
    assert_eq!(again.cover_remaining.unwrap().amount_minor, 70_000);
    // Same key, different body: refused.
    let reused = client
        .reserve_cover(reserve("k-1", &id, "contract-b", 10_000))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert_eq!(
        tonic_types::StatusExt::get_error_details(&reused)
            .error_info()
            .map(|info| info.reason.clone()),
        Some("IDEMPOTENCY_KEY_REUSED".to_owned()),
        "a reused key is told apart from a real conflict"
    );
    // Same contract, different amount: refused.
    let conflict = client
        .reserve_cover(reserve("k-3", &id, "contract-a", 40_000))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);

    let supplier = client
        .get_supplier(as_role(
            pb::GetSupplierRequest {
                supplier_id: id.clone(),
            },
            BUYER,
            Role::Buyer,
        ))
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    assert_eq!(supplier.cover_reserved.unwrap().amount_minor, 30_000);
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn cover_is_released_at_most_once(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = badged_supplier(&mut client, "LIC-RELEASE", 100_000).await;
    client
        .reserve_cover(reserve("k-1", &id, "contract-a", 60_000))
        .await
        .unwrap();
    client
        .reserve_cover(reserve("k-2", &id, "contract-b", 40_000))
        .await
        .unwrap();

    let release = |key: &str| {
        as_role(
            pb::ReleaseCoverRequest {
                idempotency_key: key.into(),
                supplier_id: id.clone(),
                contract_id: "contract-a".into(),
            },
            SERVICE,
            Role::Service,
        )
    };
    let first = client
        .release_cover(release("rel-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.reservation.as_ref().unwrap().status(),
        pb::CoverReservationStatus::Released
    );
    assert_eq!(first.cover_remaining.as_ref().unwrap().amount_minor, 60_000);
    // A second release under another key returns the released hold, freeing nothing more.
    let second = client
        .release_cover(release("rel-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.reservation, first.reservation);
    assert_eq!(second.cover_remaining.unwrap().amount_minor, 60_000);
    // A released contract cannot take cover again.
    let status = client
        .reserve_cover(reserve("k-4", &id, "contract-a", 60_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("was released"));
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn cover_needs_the_badge(pool: PgPool) {
    let Registry { server, mut client } = start(pool).await;
    let id = register(&mut client, "LIC-NOBADGE").await;
    let status = client
        .reserve_cover(reserve("k-1", &id, "contract-a", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("no Trade Assurance badge"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("verification unverified"),
        "{}",
        status.message()
    );
    server.stop().await.unwrap();
}

fn adjust(
    key: &str,
    supplier_id: &str,
    contract_id: &str,
    amount: i64,
    version: u32,
) -> tonic::Request<pb::AdjustCoverRequest> {
    as_role(
        pb::AdjustCoverRequest {
            idempotency_key: key.into(),
            supplier_id: supplier_id.into(),
            contract_id: contract_id.into(),
            amount: usd(amount),
            contract_version: version,
        },
        SERVICE,
        Role::Service,
    )
}

async fn reserved(pool: &PgPool, supplier_id: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT s.cover_reserved_minor, \
                (SELECT coalesce(sum(amount_minor), 0)::bigint FROM supplier_registry.cover_reservations r \
                 WHERE r.supplier_id = s.id AND r.status = 'active') \
         FROM supplier_registry.suppliers s WHERE s.id = $1::uuid",
    )
    .bind(supplier_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn an_amendment_moves_the_cover_within_the_limit_and_in_version_order(pool: PgPool) {
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = badged_supplier(&mut client, "LIC-AMEND", 100_000).await;
    client
        .reserve_cover(reserve("r-1", &id, "contract-a", 40_000))
        .await
        .unwrap();
    client
        .reserve_cover(reserve("r-2", &id, "contract-b", 30_000))
        .await
        .unwrap();

    // Version 2 raises contract-a within what is left.
    let raised = client
        .adjust_cover(adjust("a-2", &id, "contract-a", 65_000, 2))
        .await
        .unwrap()
        .into_inner();
    let reservation = raised.reservation.unwrap();
    assert_eq!(reservation.amount.unwrap().amount_minor, 65_000);
    assert_eq!(reservation.contract_version, 2);
    assert_eq!(raised.cover_remaining.unwrap().amount_minor, 5_000);

    // Version 3 would exceed the limit: refused with the reason, nothing moves.
    let status = client
        .adjust_cover(adjust("a-3", &id, "contract-a", 75_001, 3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details.precondition_failure().unwrap().violations[0].r#type,
        "TA_LIMIT_EXCEEDED"
    );
    assert_eq!(reserved(&pool, &id).await, (95_000, 95_000));

    // Version 4 lowers it and frees the difference.
    let lowered = client
        .adjust_cover(adjust("a-4", &id, "contract-a", 20_000, 4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lowered.cover_remaining.unwrap().amount_minor, 50_000);

    // A late redelivery of version 2 (another key) does not undo version 4.
    let stale = client
        .adjust_cover(adjust("a-2-again", &id, "contract-a", 65_000, 2))
        .await
        .unwrap()
        .into_inner();
    let reservation = stale.reservation.unwrap();
    assert_eq!(
        (
            reservation.amount.unwrap().amount_minor,
            reservation.contract_version
        ),
        (20_000, 4)
    );
    assert_eq!(reserved(&pool, &id).await, (50_000, 50_000));

    // Another currency is refused; released cover is not adjusted.
    let mut eur = adjust("a-5", &id, "contract-a", 1_000, 5);
    eur.get_mut().amount = Some(ta_proto::common::Money {
        currency_code: "EUR".into(),
        amount_minor: 1_000,
    });
    assert_eq!(
        client.adjust_cover(eur).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    client
        .release_cover(as_role(
            pb::ReleaseCoverRequest {
                idempotency_key: "rel-b".into(),
                supplier_id: id.clone(),
                contract_id: "contract-b".into(),
            },
            SERVICE,
            Role::Service,
        ))
        .await
        .unwrap();
    let status = client
        .adjust_cover(adjust("b-2", &id, "contract-b", 10_000, 2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("was released"), "{status:?}");
    assert_eq!(
        client
            .adjust_cover(adjust("c-2", &id, "contract-none", 10_000, 2))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(reserved(&pool, &id).await, (20_000, 20_000));
    server.stop().await.unwrap();
}

/// The guarded write of a reservation decided without a lock: it writes
/// nothing of the supplier's side when the limit moved after the read (the
/// use case then decides again under the lock), and nothing at all when the
/// contract's reservation was taken meanwhile.
#[sqlx::test(migrations = false)]
async fn a_reservation_decided_on_a_stale_read_is_not_written_past_the_guard(pool: PgPool) {
    use supplier_registry::storage::{self, Reserved};
    let Registry { server, mut client } = start(pool.clone()).await;
    let id = badged_supplier(&mut client, "LIC-GUARD", 100_000).await;
    let supplier_id: uuid::Uuid = id.parse().unwrap();
    let mut tx = pool.begin().await.unwrap();
    let (seen, existing) = storage::supplier_and_reservation(&mut tx, supplier_id, "contract-g")
        .await
        .unwrap();
    assert!(existing.is_none());
    tx.rollback().await.unwrap();
    let reservation = |contract: &str| storage::Reservation {
        contract_id: contract.into(),
        supplier_id,
        currency: "USD".into(),
        amount_minor: 60_000,
        status: "active".into(),
        reserved_at: ta_runtime::timestamps::now(),
        released_at: None,
        contract_version: 1,
    };

    let set_limit = async |minor: i64| {
        sqlx::query("UPDATE supplier_registry.suppliers SET ta_limit_minor = $2 WHERE id = $1")
            .bind(supplier_id)
            .bind(minor)
            .execute(&pool)
            .await
            .unwrap();
    };
    // Writes the reservation decided on `seen`, then rolls it back.
    let write_on_stale_read = async || {
        let mut tx = pool.begin().await.unwrap();
        let outcome = storage::reserve_if_unchanged(&mut tx, &seen, &reservation("contract-g"))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        outcome
    };

    // An operator lowers the limit after the read.
    set_limit(50_000).await;
    assert!(matches!(
        write_on_stale_read().await,
        Reserved::SupplierChanged
    ));
    assert_eq!(reserved(&pool, &id).await, (0, 0));

    // Through the API the same request is decided again on the new limit.
    let refused = client
        .reserve_cover(reserve("g-1", &id, "contract-g", 60_000))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // A contract reserved by another transaction after the read.
    set_limit(100_000).await;
    client
        .reserve_cover(reserve("g-2", &id, "contract-g", 60_000))
        .await
        .unwrap();
    assert!(matches!(
        write_on_stale_read().await,
        Reserved::ContractTaken
    ));
    assert_eq!(reserved(&pool, &id).await, (60_000, 60_000));
    server.stop().await.unwrap();
}
