//! The audit trail's table refuses to change what it recorded: a row can be
//! added, never updated or deleted, and the table cannot be truncated. The
//! install is idempotent and safe for replicas starting together.

use sqlx::PgPool;
use ta_runtime::audit;

const SCHEMA: &str = "svc";

async fn installed(pool: &PgPool) {
    sqlx::query("CREATE SCHEMA svc")
        .execute(pool)
        .await
        .unwrap();
    let (a, b) = tokio::join!(audit::install(pool, SCHEMA), audit::install(pool, SCHEMA));
    a.unwrap();
    b.unwrap();
    audit::install(pool, SCHEMA).await.unwrap();
    sqlx::query(
        "INSERT INTO svc.audit_entries (principal_id, role, method, resource_type, resource_id, \
         reason, trace_id, request_type, request) \
         VALUES ('ts-1', 'trust_safety', '/x.S/VerifySupplier', 'supplier', 's-1', \
                 'licence checked', '00', 'type.googleapis.com/x.R', '\\x00')",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn refusal(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> String {
    let error = result.expect_err("the audit trail must refuse the change");
    let db = error.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("42501"), "{db}");
    db.message().to_owned()
}

#[sqlx::test(migrations = false)]
async fn an_entry_cannot_be_updated_deleted_or_truncated(pool: PgPool) {
    installed(&pool).await;
    let update = sqlx::query("UPDATE svc.audit_entries SET reason = 'nothing happened'")
        .execute(&pool)
        .await;
    assert_eq!(
        refusal(update),
        "audit entries are append-only: UPDATE refused"
    );
    let delete = sqlx::query("DELETE FROM svc.audit_entries")
        .execute(&pool)
        .await;
    assert_eq!(
        refusal(delete),
        "audit entries are append-only: DELETE refused"
    );
    let truncate = sqlx::query("TRUNCATE svc.audit_entries")
        .execute(&pool)
        .await;
    assert_eq!(
        refusal(truncate),
        "audit entries are append-only: TRUNCATE refused"
    );

    let kept: (i64, String) = sqlx::query_as("SELECT count(*), min(reason) FROM svc.audit_entries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, (1, "licence checked".to_owned()));

    // Appending goes on.
    sqlx::query(
        "INSERT INTO svc.audit_entries (principal_id, role, method, resource_type, resource_id, \
         reason, trace_id, request_type, request) \
         SELECT principal_id, role, method, resource_type, resource_id, 'again', trace_id, \
                request_type, request FROM svc.audit_entries",
    )
    .execute(&pool)
    .await
    .unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM svc.audit_entries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
}
