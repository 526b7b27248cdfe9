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
        matches!(refused, ServiceError::IdempotencyKeyReused { .. }),
        "{refused:?}"
    );
    let status = tonic::Status::from(refused);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details.error_info().map(|info| info.reason.as_str()),
        Some("IDEMPOTENCY_KEY_REUSED")
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
    let (claimed_tx, claimed) = tokio::sync::oneshot::channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());

    // The first attempt claims the key and holds its transaction open...
    let first = {
        let (runs, keys, pool, release) =
            (runs.clone(), keys.clone(), pool.clone(), release.clone());
        tokio::spawn(async move {
            keys.run(&pool, &SCOPE, &request("a"), async |_tx| {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = claimed_tx.send(());
                release.notified().await;
                Ok(response("run-0"))
            })
            .await
        })
    };
    claimed.await.expect("the first attempt claimed the key");
    // ...while three retries arrive and queue on its claim (the test pool holds
    // five connections: each waiting retry holds one).
    let retries: Vec<_> = (1..4)
        .map(|i| {
            let (runs, keys, pool) = (runs.clone(), keys.clone(), pool.clone());
            tokio::spawn(async move {
                keys.run(&pool, &SCOPE, &request("a"), async |_tx| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(response(&format!("run-{i}")))
                })
                .await
            })
        })
        .collect();
    let mut waiting = 0;
    for _ in 0..600 {
        (waiting,) = sqlx::query_as::<_, (i64,)>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting, 3, "every retry waits on the first claim");
    release.notify_one();

    let first = first.await.unwrap().unwrap();
    for retry in futures_util::future::join_all(retries).await {
        assert_eq!(
            retry.unwrap().unwrap(),
            first,
            "every retry replays the first result"
        );
    }
    assert_eq!(first, response("run-0"));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran once");
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
