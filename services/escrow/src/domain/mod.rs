//! The escrow domain: pure types and rules, no I/O. `ledger` holds the
//! double-entry rules and the in-memory reference ledger, `account` the
//! escrow account's state machine.

pub mod account;
pub mod funding;
pub mod ledger;

pub use account::{Action, EscrowAccount, NewAccount, ScheduledPayment, Settles, Status};
pub use ledger::{
    AccountKey, AccountKind, Balance, Discrepancy, Hold, HoldRequest, HoldStatus, Ledger,
    LedgerError, LedgerStore, Leg, Posting, Purpose, TransferRequest,
};

#[cfg(test)]
mod tests;
