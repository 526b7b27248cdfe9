//! Postgres storage of claims, offers, evidence records and the timeline.
//! Every table is qualified with the service's own schema, `dispute`. A
//! mutation locks the claim row first (`claims::lock_claim`), so concurrent
//! changes to one claim serialize and the timeline numbers its entries
//! without gaps.
//!
//! - [`claims`]: the claim's row, listings and figures.
//! - [`offers`]: a claim's offers, loaded and saved with it.
//! - [`evidence`]: evidence records (the files are in the evidence store).
//! - [`timeline`]: the claim's numbered story.
//! - [`reconciliation`]: the claims compared with escrow's freezes.

pub mod claims;
pub mod evidence;
pub mod offers;
pub mod reconciliation;
pub mod timeline;

use sqlx::migrate::Migrator;
use ta_runtime::{
    ServiceError,
    money::{Currency, Money},
};

use crate::domain::claim::Outcome;

pub const SCHEMA: &str = "dispute";

pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The schema as the shared workflow tables (feed, outbox, timers,
/// timeline) name it.
pub fn schema() -> ta_workflow::Schema {
    // A constant that is a plain identifier.
    ta_workflow::Schema::new(SCHEMA).unwrap_or_else(|_| unreachable!())
}

/// Who did something, as stored: a principal and its role's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredActor {
    pub principal_id: String,
    pub role: String,
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::FullRefund => "full_refund",
        Outcome::PartialRefund(_) => "partial_refund",
        Outcome::ReleaseToSupplier => "release_to_supplier",
    }
}

fn outcome_of(name: &str, refund: Money) -> Result<Outcome, ServiceError> {
    match name {
        "full_refund" => Ok(Outcome::FullRefund),
        "partial_refund" => Ok(Outcome::PartialRefund(refund)),
        "release_to_supplier" => Ok(Outcome::ReleaseToSupplier),
        other => Err(ServiceError::internal(format!("unknown outcome {other}"))),
    }
}

fn currency_of(code: &str) -> Result<Currency, ServiceError> {
    Currency::parse(code.trim())
        .ok_or_else(|| ServiceError::internal(format!("stored currency {code} unknown")))
}

fn actor_of(principal_id: String, role: String) -> Option<StoredActor> {
    (!principal_id.is_empty()).then_some(StoredActor { principal_id, role })
}
