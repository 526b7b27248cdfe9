//! The idempotency table moved from each service's first migration
//! (`0001_idempotency_keys.sql`) to the runtime ([`IdempotencyKeys::install`]).
//! A database migrated with the old files must still start once the file is
//! gone: its migrator ignores the missing applied version, and the install
//! finds the table there. A fresh schema gets the same table from the install.

use std::borrow::Cow;

use sqlx::{
    PgPool, SqlStr,
    migrate::{MigrateError, Migration, MigrationType, Migrator},
};
use ta_runtime::idempotency::{IdempotencyKeys, KeyScope};

const SCHEMA: &str = "svc";

/// What contract's, dispute's and escrow's `0001_idempotency_keys.sql` held
/// (schema aside), byte for byte.
const OLD_0001: &str = "-- See ta_runtime::idempotency.
CREATE TABLE svc.idempotency_keys (
    principal_id  text NOT NULL,
    method        text NOT NULL,
    key           text NOT NULL,
    request       bytea NOT NULL,
    response      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, method, key)
);
";
const THE_REST: &str = "CREATE TABLE svc.things (id bigint PRIMARY KEY);";

fn migration(version: i64, description: &'static str, sql: &'static str) -> Migration {
    Migration::new(
        version,
        Cow::Borrowed(description),
        MigrationType::Simple,
        SqlStr::from_static(sql),
        false,
    )
}

/// A service's migrator as `sqlx::migrate!()` builds it from its sqlx.toml
/// (its own schema and migration table).
fn migrator(with_0001: bool, ignore_missing: bool) -> Migrator {
    let mut migrations = vec![migration(2, "things", THE_REST)];
    if with_0001 {
        migrations.push(migration(1, "idempotency keys", OLD_0001));
    }
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name("svc._sqlx_migrations");
    migrator.create_schema(SCHEMA);
    migrator.set_ignore_missing(ignore_missing);
    migrator
}

/// The table's columns: name, type, nullable, default; and its primary key.
async fn shape(pool: &PgPool) -> (Vec<(String, String, String, Option<String>)>, Vec<String>) {
    let columns = sqlx::query_as(
        "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text
         FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = 'idempotency_keys' ORDER BY ordinal_position",
    )
    .bind(SCHEMA)
    .fetch_all(pool)
    .await
    .unwrap();
    let key = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = 'svc.idempotency_keys'::regclass AND i.indisprimary
         ORDER BY array_position(i.indkey, a.attnum)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (columns, key)
}

/// A keyed request runs once and is replayed.
async fn keys_work(pool: &PgPool, keys: &IdempotencyKeys) {
    let scope = KeyScope {
        principal_id: "buyer-1",
        method: "/svc.v1.Svc/Do",
        key: "k-1",
    };
    let first: String = keys
        .run(pool, &scope, &"req".to_owned(), async |_tx| {
            Ok("done".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(first, "done");
    let again: String = keys
        .run(pool, &scope, &"req".to_owned(), async |_tx| {
            Ok("again".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(again, "done", "the retry replays the first answer");
}

#[sqlx::test(migrations = false)]
async fn a_schema_migrated_with_the_old_0001_still_starts_without_it(pool: PgPool) {
    migrator(true, false).run(&pool).await.unwrap();
    let old_shape = shape(&pool).await;

    // Without ignore_missing, sqlx refuses the applied version it no longer has.
    let strict = migrator(false, false).run(&pool).await;
    assert!(
        matches!(strict, Err(MigrateError::VersionMissing(1))),
        "{strict:?}"
    );
    // What a service runs once its 0001 is gone, then what the server runs next.
    migrator(false, true).run(&pool).await.unwrap();
    let keys = IdempotencyKeys::new(SCHEMA);
    keys.install(&pool).await.unwrap();
    keys.install(&pool).await.unwrap();
    assert_eq!(shape(&pool).await, old_shape, "the table is untouched");
    keys_work(&pool, &keys).await;
}

#[sqlx::test(migrations = false)]
async fn a_fresh_schema_gets_the_same_table_from_the_install(pool: PgPool) {
    migrator(true, false).run(&pool).await.unwrap();
    let old_shape = shape(&pool).await;
    sqlx::raw_sql("DROP SCHEMA svc CASCADE")
        .execute(&pool)
        .await
        .unwrap();

    migrator(false, true).run(&pool).await.unwrap();
    let keys = IdempotencyKeys::new(SCHEMA);
    // Replicas starting together.
    let (a, b) = tokio::join!(keys.install(&pool), keys.install(&pool));
    a.unwrap();
    b.unwrap();
    assert_eq!(shape(&pool).await, old_shape);
    keys_work(&pool, &keys).await;
}

/// What the server runs: the service's migrations without the retired 0001,
/// then the install, on a database migrated with the old files.
#[sqlx::test(migrations = false)]
async fn the_server_starts_on_a_schema_migrated_with_the_old_0001(pool: PgPool) {
    migrator(true, false).run(&pool).await.unwrap();
    let old_shape = shape(&pool).await;
    let current: &'static Migrator = Box::leak(Box::new(migrator(false, false)));
    let keys = IdempotencyKeys::new(SCHEMA);
    ta_runtime::migrations::apply(current, &pool, &keys)
        .await
        .unwrap();
    ta_runtime::migrations::apply(current, &pool, &keys)
        .await
        .unwrap();
    assert_eq!(shape(&pool).await, old_shape, "the table is untouched");
    keys_work(&pool, &keys).await;
}

/// An older build on a schema a newer release migrated refuses to go on,
/// naming the version it does not know, and changes nothing.
#[sqlx::test(migrations = false)]
async fn a_schema_migrated_by_a_newer_release_is_refused(pool: PgPool) {
    let newer = {
        let mut newer = Migrator::with_migrations(vec![
            migration(2, "things", THE_REST),
            migration(3, "more things", "CREATE TABLE svc.more (id bigint);"),
        ]);
        newer.dangerous_set_table_name("svc._sqlx_migrations");
        newer.create_schema(SCHEMA);
        newer
    };
    newer.run(&pool).await.unwrap();
    let current: &'static Migrator = Box::leak(Box::new(migrator(false, false)));
    let error = ta_runtime::migrations::apply(current, &pool, &IdempotencyKeys::new(SCHEMA))
        .await
        .unwrap_err();
    assert!(
        error.contains("migration 3 (more things)") && error.contains("newer release"),
        "{error}"
    );
    let keys_table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('svc.idempotency_keys')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(keys_table, None, "nothing installed");
}
