//! The server's limits as a caller meets them: deadlines and message sizes.

mod common;

use common::*;
use sqlx::PgPool;
use ta_proto::supplier as pb;
use ta_runtime::auth::Role;
use tonic::Code;

#[sqlx::test(migrations = false)]
async fn a_request_past_the_server_deadline_gets_deadline_exceeded_and_changes_nothing(
    pool: PgPool,
) {
    let Registry { server, mut client } =
        start_with(pool.clone(), &["--request-timeout", "500ms"]).await;
    let id = register(&mut client, "LIC-DEADLINE").await;

    // Another transaction holds the supplier's row, so the call cannot finish in time.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM supplier_registry.suppliers WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let status = client
        .submit_verification(as_role(
            pb::SubmitVerificationRequest {
                reason: String::new(),
                idempotency_key: "sub-1".into(),
                supplier_id: id.clone(),
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Postgres itself gave up at the deadline: while we still hold the row,
    // nobody waits for it and no abandoned transaction keeps its rows.
    assert_no_abandoned_work(&pool, &mut blocker).await;
    blocker.rollback().await.unwrap();

    // The abandoned work rolled back: still unverified, and the key is free.
    let supplier = client
        .get_supplier(as_role(
            pb::GetSupplierRequest {
                supplier_id: id.clone(),
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    assert_eq!(
        supplier.verification_status(),
        pb::VerificationStatus::Unverified
    );
    let retried = client
        .submit_verification(as_role(
            pb::SubmitVerificationRequest {
                reason: String::new(),
                idempotency_key: "sub-1".into(),
                supplier_id: id,
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retried.supplier.unwrap().verification_status(),
        pb::VerificationStatus::Submitted
    );
    server.stop().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_caller_deadline_ends_the_lock_wait_in_postgres_too(pool: PgPool) {
    let Registry { server, mut client } = start_with(pool.clone(), &[]).await;
    let id = register(&mut client, "LIC-CALLER-DEADLINE").await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM supplier_registry.suppliers WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut request = as_role(
        pb::SubmitVerificationRequest {
            reason: String::new(),
            idempotency_key: "sub-deadline".into(),
            supplier_id: id.clone(),
        },
        SUPPLIER,
        Role::Supplier,
    );
    request.set_timeout(std::time::Duration::from_millis(400));
    let status = client.submit_verification(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_no_abandoned_work(&pool, &mut blocker).await;
    blocker.rollback().await.unwrap();
    server.stop().await.unwrap();
}

/// No session of this test's database waits on a lock, and none but the
/// blocker sits in an open transaction (the abandoned one rolled back and its
/// connection is reusable).
async fn assert_no_abandoned_work(pool: &PgPool, blocker: &mut sqlx::PgConnection) {
    let (blocker_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    let (waiting,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(waiting, 0, "a statement still waits on the held row");
    let in_transaction = || async {
        let (open,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%' AND pid <> $1",
        )
        .bind(blocker_pid)
        .fetch_one(pool)
        .await
        .unwrap();
        open
    };
    // The rollback of the dropped transaction is sent when its connection
    // goes back to the pool, a moment after the answer.
    let mut open = in_transaction().await;
    for _ in 0..100 {
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        open = in_transaction().await;
    }
    assert_eq!(open, 0, "an abandoned transaction is still open");
}

#[sqlx::test(migrations = false)]
async fn an_oversized_message_is_refused_before_any_work(pool: PgPool) {
    let Registry { server, mut client } =
        start_with(pool.clone(), &["--max-message-bytes", "2048"]).await;
    let mut request = registration("big-1", "LIC-BIG");
    request.contacts = (0..100)
        .map(|i| pb::Contact {
            name: format!("Contact {i}"),
            email: format!("c{i}@acme.example"),
            phone: String::new(),
        })
        .collect();
    let status = client
        .register_supplier(as_role(request, SUPPLIER, Role::Supplier))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (suppliers,): (i64,) = sqlx::query_as("SELECT count(*) FROM supplier_registry.suppliers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(suppliers, 0);
    server.stop().await.unwrap();
}
