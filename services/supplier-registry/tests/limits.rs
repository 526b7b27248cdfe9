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
                idempotency_key: "sub-1".into(),
                supplier_id: id.clone(),
            },
            SUPPLIER,
            Role::Supplier,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
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
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let (suppliers,): (i64,) = sqlx::query_as("SELECT count(*) FROM supplier_registry.suppliers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(suppliers, 0);
    server.stop().await.unwrap();
}
