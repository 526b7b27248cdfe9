//! One way to install the workflow tables into a service's schema, instead of
//! four copies of the same DDL in four services' migrations: versioned
//! scripts, applied at start under an advisory lock (replicas starting
//! together wait for each other) and recorded in `<schema>.workflow_migrations`.
//! A second run applies nothing.

use sqlx::{AssertSqlSafe, PgPool};
use ta_runtime::ServiceError;

use crate::Schema;

/// Versioned scripts, in order. Append new versions; never edit an applied one.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../sql/0001_workflow.sql")),
    (2, include_str!("../sql/0002_operator_queue.sql")),
    (3, include_str!("../sql/0003_wakeups.sql")),
];

/// The newest version [`install`] brings a schema to.
pub const INSTALLED_VERSION: i32 = 3;

/// Brings the workflow tables of `schema` to [`INSTALLED_VERSION`]: creates the
/// schema if needed, applies the missing versions in one transaction.
///
/// # Errors
/// The database is unreachable (`Unavailable`) or a script failed (`Internal`).
pub async fn install(pool: &PgPool, schema: Schema) -> Result<(), ServiceError> {
    let mut tx = pool.begin().await?;
    // Serializes installers of this schema across replicas; released at commit.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("ta_workflow.install:{schema}"))
        .execute(&mut *tx)
        .await?;
    let setup = schema.sql(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.workflow_migrations (
             version     integer PRIMARY KEY,
             applied_at  timestamptz NOT NULL DEFAULT now()
         );",
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(&mut *tx)
        .await?;
    let applied: Option<i32> = sqlx::query_scalar(AssertSqlSafe(
        schema.sql("SELECT max(version) FROM {schema}.workflow_migrations"),
    ))
    .fetch_one(&mut *tx)
    .await?;
    let applied = applied.unwrap_or(0);
    for (version, script) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        sqlx::raw_sql(AssertSqlSafe(schema.sql(script)))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                ServiceError::internal(format!("workflow migration {version} into {schema}: {e}"))
            })?;
        sqlx::query(AssertSqlSafe(schema.sql(
            "INSERT INTO {schema}.workflow_migrations (version) VALUES ($1)",
        )))
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tracing::info!(%schema, version, "workflow tables migrated");
    }
    tx.commit().await?;
    Ok(())
}
