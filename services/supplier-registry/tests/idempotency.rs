//! The shared idempotency-key store over this service's real schema.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use ta_proto::supplier as pb;
use ta_runtime::{ServiceError, idempotency::KeyScope};

static MIGRATOR: &sqlx::migrate::Migrator = &supplier_registry::storage::MIGRATOR;

fn request(name: &str) -> pb::GetSupplierRequest {
    pb::GetSupplierRequest {
        supplier_id: name.into(),
    }
}

fn response(name: &str) -> pb::RecordCompletedContractResponse {
    pb::RecordCompletedContractResponse {
        supplier_id: name.into(),
        contract_id: "c-1".into(),
    }
}

const SCOPE: KeyScope<'static> = KeyScope {
    principal_id: "ops-1",
    method: "Test",
    key: "k-1",
};

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_first_run_is_replayed_and_a_different_body_refused(pool: PgPool) {
    let keys = supplier_registry::storage::idempotency_keys();
    let mut runs = 0;
    let first = keys
        .run(&pool, &SCOPE, &request("a"), async |_tx| {
            runs += 1;
            Ok(response("first"))
        })
        .await
        .unwrap();
    let replay = keys
        .run(&pool, &SCOPE, &request("a"), async |_tx| {
            runs += 1;
            Ok(response("second"))
        })
        .await
        .unwrap();
    assert_eq!(runs, 1);
    assert_eq!(replay, first);

    let refused = keys
        .run(&pool, &SCOPE, &request("b"), async |_tx| {
            Ok(response("third"))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ServiceError::AlreadyExists(_)),
        "{refused:?}"
    );

    // Keys are scoped per principal.
    let other = KeyScope {
        principal_id: "ops-2",
        ..SCOPE
    };
    let theirs = keys
        .run(&pool, &other, &request("b"), async |_tx| {
            Ok(response("theirs"))
        })
        .await
        .unwrap();
    assert_eq!(theirs, response("theirs"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failed_run_stores_nothing_and_may_be_retried(pool: PgPool) {
    let keys = supplier_registry::storage::idempotency_keys();
    let failed = keys
        .run(&pool, &SCOPE, &request("a"), async |_tx| {
            Err::<pb::RecordCompletedContractResponse, _>(ServiceError::FailedPrecondition(
                "refused".into(),
            ))
        })
        .await;
    assert!(failed.is_err());
    let (keys_left,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM supplier_registry.idempotency_keys")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(keys_left, 0);
    let retried = keys
        .run(&pool, &SCOPE, &request("a"), async |_tx| Ok(response("ok")))
        .await
        .unwrap();
    assert_eq!(retried, response("ok"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn concurrent_retries_run_the_work_once(pool: PgPool) {
    let keys = supplier_registry::storage::idempotency_keys();
    let runs = Arc::new(AtomicUsize::new(0));
    let attempts = (0..10).map(|i| {
        let runs = runs.clone();
        let keys = keys.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            keys.run(&pool, &SCOPE, &request("a"), async |_tx| {
                runs.fetch_add(1, Ordering::SeqCst);
                // Hold the claim a moment so the others really wait on it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(response(&format!("run-{i}")))
            })
            .await
        })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(
        results.iter().all(|r| *r == results[0]),
        "every retry saw the first result"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn expired_keys_are_purged(pool: PgPool) {
    let keys = supplier_registry::storage::idempotency_keys();
    keys.run(&pool, &SCOPE, &request("a"), async |_tx| {
        Ok(response("first"))
    })
    .await
    .unwrap();
    assert_eq!(
        keys.purge(&pool, Duration::from_secs(3_600)).await.unwrap(),
        0
    );
    sqlx::query(
        "UPDATE supplier_registry.idempotency_keys SET created_at = now() - interval '2 hours'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        keys.purge(&pool, Duration::from_secs(3_600)).await.unwrap(),
        1
    );
    // Forgotten: the same key now runs again.
    let again = keys
        .run(&pool, &SCOPE, &request("a"), async |_tx| {
            Ok(response("again"))
        })
        .await
        .unwrap();
    assert_eq!(again, response("again"));
}
