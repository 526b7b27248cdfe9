//! Escrow's use cases. Each runs in the caller's transaction (the shared
//! pipeline's, once the API serves them): it locks the escrow account row
//! first, applies the domain rules, moves money through the ledger and
//! saves. Every movement names its purpose, so a retried or concurrent
//! request for the same milestone, claim or cancellation moves money once.
//!
//! `context` holds what they share beyond the transaction (the gateway, the
//! feed, the timers, the settings); `events` and `deadlines` keep the feed
//! and the timers in step with a change; `reactions` is what a timer firing
//! does; `worker` runs what no request waits for.

use ta_runtime::ServiceError;

pub mod accounts;
pub mod amendments;
pub mod context;
pub mod deadlines;
pub mod events;
pub mod funding;
pub mod gateway_events;
pub mod reactions;
pub mod settlement;
pub mod transfers;
pub mod worker;

/// A buyer or supplier asking about an account it is not a party to.
pub fn not_party() -> ServiceError {
    ServiceError::PermissionDenied("the caller is not a party to this escrow account".into())
}
