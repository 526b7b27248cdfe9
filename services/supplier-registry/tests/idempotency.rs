//! The shared idempotency-key store over this service's real schema.

use std::{sync::Arc, time::Duration};

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
    sqlx::query("CREATE TABLE effects (run text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let keys = supplier_registry::storage::idempotency_keys();
    let first = keys
        .run(&pool, &SCOPE, &request("a"), async |tx| {
            record_effect(tx, "first").await;
            Ok(response("first"))
        })
        .await
        .unwrap();
    let replay = keys
        .run(&pool, &SCOPE, &request("a"), async |tx| {
            record_effect(tx, "second").await;
            Ok(response("second"))
        })
        .await
        .unwrap();
    assert_eq!(replay, first);
    let committed: Vec<String> = sqlx::query_scalar("SELECT run FROM effects")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(committed, ["first"], "the retry changed nothing");

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

/// The key is recorded at the end of the work's transaction, so overlapping
/// runs under one key each do their work, but only one commits it: the others
/// find the key taken (waiting for its transaction where it is still open),
/// roll back and answer what it answered.
#[sqlx::test(migrator = "MIGRATOR")]
async fn concurrent_runs_under_one_key_commit_the_work_once(pool: PgPool) {
    sqlx::query("CREATE TABLE effects (run text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let keys = supplier_registry::storage::idempotency_keys();
    // All four are inside their work, each in its own open transaction,
    // before any of them records the key (the test pool holds five
    // connections).
    let all_working = Arc::new(tokio::sync::Barrier::new(4));
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let (keys, pool, all_working) = (keys.clone(), pool.clone(), all_working.clone());
            tokio::spawn(async move {
                keys.run(&pool, &SCOPE, &request("a"), async |tx| {
                    record_effect(tx, &format!("run-{i}")).await;
                    all_working.wait().await;
                    Ok(response(&format!("run-{i}")))
                })
                .await
            })
        })
        .collect();
    let answers: Vec<_> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|run| run.unwrap().unwrap())
        .collect();
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "every run answers alike: {answers:?}"
    );
    let committed: Vec<String> = sqlx::query_scalar("SELECT run FROM effects")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        committed.len(),
        1,
        "one run's work committed: {committed:?}"
    );
    assert_eq!(
        response(&committed[0]),
        answers[0],
        "the answer is the committed run's"
    );
}

/// A retry that arrives after the first run committed and whose work now
/// fails on the state that run left answers the first run's answer.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_retry_refused_by_the_first_runs_effects_replays_its_answer(pool: PgPool) {
    let keys = supplier_registry::storage::idempotency_keys();
    let first = keys
        .run(&pool, &SCOPE, &request("a"), async |_tx| {
            Ok(response("first"))
        })
        .await
        .unwrap();
    let retry = keys
        .run(&pool, &SCOPE, &request("a"), async |_tx| {
            Err::<pb::RecordCompletedContractResponse, _>(ServiceError::FailedPrecondition(
                "already done".into(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(retry, first);
    let other_body = keys
        .run(&pool, &SCOPE, &request("b"), async |_tx| {
            Err::<pb::RecordCompletedContractResponse, _>(ServiceError::FailedPrecondition(
                "already done".into(),
            ))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(other_body, ServiceError::IdempotencyKeyReused { .. }),
        "{other_body:?}"
    );
}

async fn record_effect(tx: &mut sqlx::PgConnection, run: &str) {
    sqlx::query("INSERT INTO effects (run) VALUES ($1)")
        .bind(run)
        .execute(tx)
        .await
        .unwrap();
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
