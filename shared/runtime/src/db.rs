//! Postgres: one pool per service. Each service owns one schema, migrates only
//! that schema (its `sqlx.toml` names the schema and the migration table), and
//! qualifies every query with it.

use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::config::DatabaseConfig;

/// A pool that connects on first use, so the server can start (and report
/// NOT_SERVING) before the database answers. Fails fast on a malformed URL.
pub fn lazy_pool(config: &DatabaseConfig) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(config.database_acquire_timeout)
        .connect_lazy(&config.database_url)
        .map_err(|e| format!("DATABASE_URL: not a usable Postgres URL: {e}"))
}
