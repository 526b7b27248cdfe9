//! The dispute domain: pure types and rules, no I/O.
//!
//! - [`status`]: the claim's life as a state machine (its table is there).
//! - [`claim`]: one claim with its negotiation windows, offers and decision.
//! - [`reconciliation`]: when the four services' records of an order disagree.

pub mod claim;
pub mod reconciliation;
pub mod status;
