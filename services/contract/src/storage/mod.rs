//! Postgres storage of contracts, one module per aggregate. Every table is
//! qualified with the service's own schema, `contract`. A mutation locks the
//! contract row first (`contracts::lock_contract`), so concurrent changes to
//! one contract serialize and the timeline numbers its entries without gaps.

pub mod contracts;
pub mod fulfilment;
pub mod payments;
pub mod timeline;
pub mod versions;

use sqlx::migrate::Migrator;
use ta_runtime::{
    ServiceError,
    idempotency::IdempotencyKeys,
    money::{Currency, Money},
};

use crate::domain::negotiation::{Party, Protection};

pub const SCHEMA: &str = "contract";

pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The service's schema, as the workflow machinery (outbox, feed, timers,
/// timeline) addresses it.
pub fn schema() -> ta_workflow::Schema {
    // A constant that is a plain identifier.
    ta_workflow::Schema::new(SCHEMA).unwrap_or_else(|_| unreachable!())
}

pub fn idempotency_keys() -> IdempotencyKeys {
    IdempotencyKeys::new(SCHEMA)
}

fn corrupt(what: &str) -> ServiceError {
    ServiceError::internal(format!("contract row holds an impossible {what}"))
}

fn protection_name(p: Protection) -> &'static str {
    match p {
        Protection::TradeAssurance => "trade_assurance",
        Protection::None => "none",
    }
}

fn party_name(p: Party) -> &'static str {
    p.as_str()
}

fn version_number(v: i32) -> Result<u32, ServiceError> {
    u32::try_from(v).map_err(|_| corrupt("version"))
}

fn db_version(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn money(currency: &str, amount_minor: i64) -> Result<Money, ServiceError> {
    let currency = Currency::parse(currency.trim()).ok_or_else(|| corrupt("currency"))?;
    Ok(Money::new(amount_minor, currency))
}
