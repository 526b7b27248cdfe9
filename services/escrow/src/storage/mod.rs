//! Postgres storage of escrow. Every table is qualified with the service's
//! own schema, `escrow`.

pub mod accounts;
pub mod attempts;
pub mod gateway_events;
pub mod ledger;
pub mod reconciliation;
pub mod statement;
pub mod timers;
pub mod transfers;

use sqlx::migrate::Migrator;
use ta_runtime::idempotency::IdempotencyKeys;

pub use ledger::PgLedger;

pub const SCHEMA: &str = "escrow";

pub static MIGRATOR: Migrator = sqlx::migrate!();

pub fn idempotency_keys() -> IdempotencyKeys {
    IdempotencyKeys::new(SCHEMA)
}
