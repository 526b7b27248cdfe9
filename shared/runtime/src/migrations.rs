//! A service's schema brought up to date: its own migrations, then the tables
//! the runtime owns in every service's schema (the idempotency keys, the
//! audit trail).
//!
//! Contract, dispute and escrow once created `idempotency_keys` in their
//! first migration (`0001_idempotency_keys.sql`); the runtime creates it now
//! ([`IdempotencyKeys::install`]), so the DDL is written once. Databases
//! migrated before still list that version as applied. sqlx refuses an applied
//! version missing from the sources, and its blanket `ignore_missing` would
//! also let an older build run on a schema a newer release migrated. So the
//! versions the runtime took over are named here ([`RETIRED`]), and any other
//! applied version this build does not know stops the start.

use std::borrow::Cow;

use sqlx::{AssertSqlSafe, PgPool, migrate::Migrator};

use crate::{audit, idempotency::IdempotencyKeys};

/// Migrations a service had and the runtime took over: (version, the
/// description sqlx recorded from the file name).
pub const RETIRED: &[(i64, &str)] = &[(1, "idempotency keys")];

/// Runs `migrator` on `pool`, then installs the runtime's tables in `keys`'
/// schema: the idempotency keys and the audit trail.
///
/// # Errors
/// The database is unreachable, a migration failed, or the database holds a
/// migration this build does not know (a newer release migrated it).
pub async fn apply(
    migrator: &'static Migrator,
    pool: &PgPool,
    keys: &IdempotencyKeys,
) -> Result<(), String> {
    refuse_unknown_versions(migrator, pool).await?;
    tolerating_retired(migrator)
        .run(pool)
        .await
        .map_err(|e| e.to_string())?;
    keys.install(pool)
        .await
        .map_err(|e| format!("idempotency_keys: {e}"))?;
    audit::install(pool, keys.schema())
        .await
        .map_err(|e| format!("audit_entries: {e}"))
}

/// `migrator` with sqlx's missing-version check off: [`refuse_unknown_versions`]
/// checks it instead, allowing only [`RETIRED`] ones.
fn tolerating_retired(migrator: &'static Migrator) -> Migrator {
    // sqlx's fields are public (for `migrate!()`) but unstable: a new sqlx
    // that changes them fails to compile here, never at run time.
    Migrator {
        migrations: Cow::Borrowed(&migrator.migrations),
        ignore_missing: true,
        locking: migrator.locking,
        no_tx: migrator.no_tx,
        table_name: migrator.table_name.clone(),
        create_schemas: migrator.create_schemas.clone(),
    }
}

/// Refuses to go on when the database records an applied version that
/// neither this build's sources nor [`RETIRED`] have.
async fn refuse_unknown_versions(migrator: &Migrator, pool: &PgPool) -> Result<(), String> {
    let table = migrator.table_name.as_ref();
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table)
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())?;
    if exists.is_none() {
        return Ok(());
    }
    let applied: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT version, description FROM {table} WHERE success ORDER BY version"
    )))
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    let unknown = unknown_versions(migrator, &applied);
    match unknown.first() {
        None => Ok(()),
        Some((version, description)) => Err(format!(
            "the database holds migration {version} ({description}) that this build does not \
             have: a newer release migrated it; run that release or a newer one"
        )),
    }
}

fn unknown_versions<'a>(
    migrator: &Migrator,
    applied: &'a [(i64, String)],
) -> Vec<&'a (i64, String)> {
    applied
        .iter()
        .filter(|(version, description)| {
            !migrator.iter().any(|m| m.version == *version)
                && !RETIRED.contains(&(*version, description.as_str()))
        })
        .collect()
}
