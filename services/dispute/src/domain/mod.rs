//! The dispute domain: pure types and rules, no I/O.
//!
//! - [`status`]: the claim's life as a state machine (its table is there).
//! - [`claim`]: one claim with its negotiation windows, offers and decision.

pub mod claim;
pub mod status;
