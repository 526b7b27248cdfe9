//! The contract's domain: pure types and rules, no I/O.
//!
//! - [`status`]: the contract's life as a state machine (its table is there).
//! - [`terms`]: the agreement as signed, validated, with the figures the
//!   server computes (line totals, total, each payment milestone's amount).
//! - [`fulfilment`]: inspection reports, shipment, and whether a claim opens.
//! - [`lots`]: payment milestones tied to shipment lots, released when their
//!   lot is accepted.
//! - [`negotiation`]: versions and signatures; both sign the latest version.
//! - [`quality`]: measurable quality criteria and exact decimal judgement of
//!   a measured value, which inspection reports and claims point at.

pub mod fulfilment;
pub mod lots;
pub mod negotiation;
pub mod quality;
pub mod status;
pub mod terms;

#[cfg(test)]
mod tests;
