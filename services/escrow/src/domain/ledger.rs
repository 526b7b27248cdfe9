//! The double-entry ledger's rules, and an in-memory ledger that follows them.
//!
//! The in-memory [`Ledger`] is the reference model: the Postgres ledger
//! (`storage::ledger`) passes the same test suite (`tests/ledger_suite`) and
//! the property test compares the two step by step. Both share the pure
//! checks below ([`validate_leg`], [`plan_debits`]), so the rules live once.
//!
//! Conventions: a balance is credits minus debits; every movement is a
//! transfer of one or more legs (one debit account, one credit account, a
//! positive amount of minor units in their common currency), so the balances
//! of each currency always sum to zero. A non-negative account may never be
//! debited below zero: its *available* balance (posted balance minus the
//! amounts its pending holds reserve) must cover every debit and every new
//! hold. Credits never break a non-negative bound, so only debits are checked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use ta_runtime::{ServiceError, money::Currency};
use time::OffsetDateTime;
use uuid::Uuid;

/// What a ledger account is for; with its owner and currency it names the
/// account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccountKind {
    /// Per escrow account: the money held for the contract.
    EscrowHeld,
    /// Per escrow account: refunds owed to the buyer until the gateway pays
    /// them out.
    BuyerRefundPayable,
    /// Per supplier and currency: released money owed to the supplier across
    /// all its contracts; what a payout pays.
    SupplierPayable,
    /// Platform, per currency: minus the cash the platform holds at the
    /// payment gateway. Unbounded: it is where outside money enters and leaves.
    GatewayClearing,
    /// Platform, per currency: bank credits that arrived after their attempt
    /// ended, awaiting their refund.
    Suspense,
    /// Platform, per currency: fees earned.
    Fees,
    /// Per financing partner and currency: the source of Pay Later money, and
    /// where Pay Later refunds go back. Unbounded.
    FinancingPartner,
}

impl AccountKind {
    pub const ALL: [Self; 7] = [
        Self::EscrowHeld,
        Self::BuyerRefundPayable,
        Self::SupplierPayable,
        Self::GatewayClearing,
        Self::Suspense,
        Self::Fees,
        Self::FinancingPartner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EscrowHeld => "escrow_held",
            Self::BuyerRefundPayable => "buyer_refund_payable",
            Self::SupplierPayable => "supplier_payable",
            Self::GatewayClearing => "gateway_clearing",
            Self::Suspense => "suspense",
            Self::Fees => "fees",
            Self::FinancingPartner => "financing_partner",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether the balance may never go below zero. Only the two places
    /// outside money comes from are unbounded.
    pub fn is_non_negative(self) -> bool {
        !matches!(self, Self::GatewayClearing | Self::FinancingPartner)
    }

    /// Whether storage keeps the balance on the account row in the same
    /// transaction as every posting. Per-contract accounts are touched only
    /// under their escrow account's row lock, so their row is never hot; the
    /// shared accounts (a supplier's payable, the platform's) take postings
    /// without touching their row and fold them in later (`storage::ledger`).
    pub fn is_eager(self) -> bool {
        matches!(self, Self::EscrowHeld | Self::BuyerRefundPayable)
    }
}

/// Names one ledger account: kind, owner (an escrow account id, a supplier
/// id, a financing partner id, or [`PLATFORM`]) and currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AccountKey {
    pub kind: AccountKind,
    pub owner: String,
    pub currency: Currency,
}

/// The owner of the platform's own accounts.
pub const PLATFORM: &str = "platform";

/// The expiry of a hold only the gateway's word (or an operator) resolves:
/// money sent out may have left however late the report comes, so its hold
/// is never voided by the clock.
pub fn never_expires() -> OffsetDateTime {
    OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT)
}

impl AccountKey {
    pub fn new(kind: AccountKind, owner: impl Into<String>, currency: Currency) -> Self {
        Self {
            kind,
            owner: owner.into(),
            currency,
        }
    }

    pub fn escrow_held(escrow_account: Uuid, currency: Currency) -> Self {
        Self::new(
            AccountKind::EscrowHeld,
            escrow_account.to_string(),
            currency,
        )
    }

    pub fn buyer_refund_payable(escrow_account: Uuid, currency: Currency) -> Self {
        Self::new(
            AccountKind::BuyerRefundPayable,
            escrow_account.to_string(),
            currency,
        )
    }

    pub fn supplier_payable(supplier_id: &str, currency: Currency) -> Self {
        Self::new(AccountKind::SupplierPayable, supplier_id, currency)
    }

    pub fn gateway_clearing(currency: Currency) -> Self {
        Self::new(AccountKind::GatewayClearing, PLATFORM, currency)
    }

    pub fn suspense(currency: Currency) -> Self {
        Self::new(AccountKind::Suspense, PLATFORM, currency)
    }

    pub fn fees(currency: Currency) -> Self {
        Self::new(AccountKind::Fees, PLATFORM, currency)
    }

    pub fn financing_partner(partner_id: &str, currency: Currency) -> Self {
        Self::new(AccountKind::FinancingPartner, partner_id, currency)
    }

    fn sort_key(&self) -> (AccountKind, &str, &'static str) {
        (self.kind, &self.owner, self.currency.as_str())
    }
}

impl PartialOrd for AccountKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AccountKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind.as_str(), self.owner, self.currency)
    }
}

/// Why money moves. A purpose moves money at most once, whatever the
/// idempotency key of the request that asks: `key` is unique within `scope`
/// (the escrow account, the supplier, or the platform).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Purpose {
    pub scope: String,
    pub key: String,
}

impl Purpose {
    fn escrow(escrow_account: Uuid, key: String) -> Self {
        Self {
            scope: format!("escrow:{escrow_account}"),
            key,
        }
    }

    pub fn funding(escrow_account: Uuid, attempt_id: Uuid) -> Self {
        Self::escrow(escrow_account, format!("funding:attempt:{attempt_id}"))
    }

    pub fn release_milestone(escrow_account: Uuid, milestone_id: &str) -> Self {
        Self::escrow(escrow_account, format!("release:milestone:{milestone_id}"))
    }

    /// The goods were accepted: everything held goes to the supplier.
    pub fn release_acceptance(escrow_account: Uuid) -> Self {
        Self::escrow(escrow_account, "release:acceptance".into())
    }

    pub fn release_claim(escrow_account: Uuid, claim_id: &str) -> Self {
        Self::escrow(escrow_account, format!("release:claim:{claim_id}"))
    }

    pub fn refund_claim(escrow_account: Uuid, claim_id: &str) -> Self {
        Self::escrow(escrow_account, format!("refund:claim:{claim_id}"))
    }

    pub fn refund_cancellation(escrow_account: Uuid) -> Self {
        Self::escrow(escrow_account, "refund:cancellation".into())
    }

    /// What a signed amendment's lower schedule leaves funded beyond it.
    pub fn refund_amendment(escrow_account: Uuid, contract_version: i32) -> Self {
        Self::escrow(
            escrow_account,
            format!("refund:amendment:{contract_version}"),
        )
    }

    /// Paying a refund owed to the buyer out through the gateway.
    pub fn buyer_refund_payout(escrow_account: Uuid, refund_id: Uuid) -> Self {
        Self::escrow(escrow_account, format!("buyer-refund:{refund_id}"))
    }

    /// The part of a bank credit that no pending attempt could take, parked
    /// in suspense.
    pub fn unmatched_credit(escrow_account: Uuid, attempt_id: Uuid, credit_id: &str) -> Self {
        Self::escrow(
            escrow_account,
            format!("unmatched-credit:attempt:{attempt_id}:{credit_id}"),
        )
    }

    pub fn suspense_refund(escrow_account: Uuid, attempt_id: Uuid, credit_id: &str) -> Self {
        Self::escrow(
            escrow_account,
            format!("suspense-refund:attempt:{attempt_id}:{credit_id}"),
        )
    }

    pub fn payout(supplier_id: &str, payout_id: Uuid) -> Self {
        Self {
            scope: format!("supplier:{supplier_id}"),
            key: format!("payout:{payout_id}"),
        }
    }

    /// A correcting entry: mistakes are never edited, they are reversed or
    /// adjusted by a new transfer that names what it corrects.
    pub fn correction(scope: impl Into<String>, correction_id: Uuid) -> Self {
        Self {
            scope: scope.into(),
            key: format!("correction:{correction_id}"),
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.key, self.scope)
    }
}

/// One debit and one equal credit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    pub debit: AccountKey,
    pub credit: AccountKey,
    pub amount_minor: i64,
}

/// A balanced movement of one or more legs that commit together or not at
/// all (TigerBeetle's linked transfers): a refund split between the
/// financing partner and the buyer is one transfer of two legs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRequest {
    pub id: Uuid,
    pub purpose: Purpose,
    /// The escrow account the movement concerns, if any: statements and the
    /// loan still outstanding per contract are read by it.
    pub escrow_account: Option<Uuid>,
    pub legs: Vec<Leg>,
}

/// A pending transfer: reserves `amount_minor` on the debit account until it
/// is posted (for at most that amount) or voided, exactly once. Every hold
/// expires: a timer voids it at `expires_at`, and it cannot be posted after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    pub id: Uuid,
    pub purpose: Purpose,
    pub escrow_account: Option<Uuid>,
    pub debit: AccountKey,
    pub credit: AccountKey,
    pub amount_minor: i64,
    pub expires_at: OffsetDateTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    Pending,
    Posted,
    Voided,
}

impl HoldStatus {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Posted, Self::Voided];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Posted => "posted",
            Self::Voided => "voided",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: Uuid,
    pub purpose: Purpose,
    pub escrow_account: Option<Uuid>,
    pub debit: AccountKey,
    pub credit: AccountKey,
    pub amount_minor: i64,
    pub status: HoldStatus,
    /// What posting it moved; at most `amount_minor`.
    pub posted_minor: Option<i64>,
    pub expires_at: OffsetDateTime,
}

/// An immutable posting: one leg of a committed transfer, or a posted hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    pub id: Uuid,
    /// The transfer or hold it belongs to.
    pub transfer_id: Uuid,
    pub debit: AccountKey,
    pub credit: AccountKey,
    pub amount_minor: i64,
    pub hold_id: Option<Uuid>,
    pub escrow_account: Option<Uuid>,
}

/// An account's money: the posted balance (credits minus debits) and what
/// its pending holds reserve against it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    pub posted: i64,
    pub pending_debits: i64,
    pub pending_credits: i64,
}

impl Balance {
    /// What a new debit or hold may take from a non-negative account.
    pub fn available(&self) -> i64 {
        self.posted.saturating_sub(self.pending_debits)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("an amount must be a positive number of minor units, not {0}")]
    InvalidAmount(i64),
    #[error("{debit} and {credit} are in different currencies")]
    CurrencyMismatch {
        debit: AccountKey,
        credit: AccountKey,
    },
    #[error("a transfer cannot debit and credit the same account {0}")]
    SameAccount(AccountKey),
    #[error("a transfer needs at least one leg")]
    NoLegs,
    #[error("{account} has {available} minor units available, {requested} requested")]
    InsufficientFunds {
        account: AccountKey,
        available: i64,
        requested: i64,
    },
    #[error("purpose {0} already moved money")]
    PurposeUsed(Purpose),
    #[error("hold {0} not found")]
    HoldNotFound(Uuid),
    #[error("hold {hold} is already {}", status.as_str())]
    HoldResolved { hold: Uuid, status: HoldStatus },
    #[error("hold {0} has expired; it can only be voided")]
    HoldExpired(Uuid),
    #[error("hold {hold} reserved {reserved} minor units; cannot post {requested}")]
    PostExceedsHold {
        hold: Uuid,
        reserved: i64,
        requested: i64,
    },
    #[error("a balance would overflow")]
    Overflow,
    #[error(transparent)]
    Storage(#[from] ServiceError),
}

/// Stable reason codes for refusals other services act on.
pub const INSUFFICIENT_FUNDS: &str = "INSUFFICIENT_FUNDS";
pub const PURPOSE_ALREADY_SETTLED: &str = "PURPOSE_ALREADY_SETTLED";

impl From<LedgerError> for ServiceError {
    fn from(error: LedgerError) -> Self {
        let message = error.to_string();
        match error {
            LedgerError::InvalidAmount(_) => ServiceError::invalid("amount.amount_minor", message),
            LedgerError::CurrencyMismatch { .. } => {
                ServiceError::invalid("amount.currency_code", message)
            }
            // The service builds every leg itself: a leg from an account to
            // itself or an empty transfer is a bug, not the caller's fault.
            LedgerError::SameAccount(_) | LedgerError::NoLegs | LedgerError::Overflow => {
                ServiceError::Internal(message)
            }
            LedgerError::InsufficientFunds { account, .. } => ServiceError::Refused {
                reason: INSUFFICIENT_FUNDS,
                subject: format!("ledger-accounts/{account}"),
                message,
            },
            LedgerError::PurposeUsed(purpose) => ServiceError::Refused {
                reason: PURPOSE_ALREADY_SETTLED,
                subject: purpose.scope,
                message,
            },
            LedgerError::HoldNotFound(id) => ServiceError::not_found("hold", id),
            LedgerError::HoldResolved { .. }
            | LedgerError::HoldExpired(_)
            | LedgerError::PostExceedsHold { .. } => ServiceError::FailedPrecondition(message),
            LedgerError::Storage(inner) => inner,
        }
    }
}

/// The checks one leg needs on its own.
pub fn validate_leg(
    debit: &AccountKey,
    credit: &AccountKey,
    amount: i64,
) -> Result<(), LedgerError> {
    if amount <= 0 {
        return Err(LedgerError::InvalidAmount(amount));
    }
    if debit.currency != credit.currency {
        return Err(LedgerError::CurrencyMismatch {
            debit: debit.clone(),
            credit: credit.clone(),
        });
    }
    if debit == credit {
        return Err(LedgerError::SameAccount(debit.clone()));
    }
    Ok(())
}

/// The checks every transfer needs before anything is read: at least one
/// leg, and each leg valid on its own. Both ledgers check in the same order
/// (legs, then the purpose, then funds), so they refuse alike.
pub fn validate_legs(legs: &[Leg]) -> Result<(), LedgerError> {
    if legs.is_empty() {
        return Err(LedgerError::NoLegs);
    }
    legs.iter()
        .try_for_each(|leg| validate_leg(&leg.debit, &leg.credit, leg.amount_minor))
}

/// A hold on a non-negative account needs that much available.
pub fn check_hold_funds(request: &HoldRequest, available: i64) -> Result<(), LedgerError> {
    if request.debit.kind.is_non_negative() && available < request.amount_minor {
        return Err(LedgerError::InsufficientFunds {
            account: request.debit.clone(),
            available,
            requested: request.amount_minor,
        });
    }
    Ok(())
}

/// Checks that the non-negative accounts a transfer debits can bear it,
/// leg by leg, as if the legs ran in order (so a later leg may use what an
/// earlier one credited). `available` gives each such account's available
/// balance before the transfer; an account missing from it has nothing.
pub fn plan_debits(legs: &[Leg], available: &HashMap<AccountKey, i64>) -> Result<(), LedgerError> {
    if legs.is_empty() {
        return Err(LedgerError::NoLegs);
    }
    let mut left: HashMap<&AccountKey, i64> = HashMap::new();
    for leg in legs {
        validate_leg(&leg.debit, &leg.credit, leg.amount_minor)?;
        if leg.debit.kind.is_non_negative() {
            let have = *left
                .entry(&leg.debit)
                .or_insert_with(|| available.get(&leg.debit).copied().unwrap_or(0));
            if have < leg.amount_minor {
                return Err(LedgerError::InsufficientFunds {
                    account: leg.debit.clone(),
                    available: have,
                    requested: leg.amount_minor,
                });
            }
            left.insert(&leg.debit, have - leg.amount_minor);
        }
        if leg.credit.kind.is_non_negative() {
            let have = *left
                .entry(&leg.credit)
                .or_insert_with(|| available.get(&leg.credit).copied().unwrap_or(0));
            let after = have
                .checked_add(leg.amount_minor)
                .ok_or(LedgerError::Overflow)?;
            left.insert(&leg.credit, after);
        }
    }
    Ok(())
}

/// The non-negative accounts a transfer debits, in a fixed order, so that
/// every writer locks them in the same order and two never deadlock.
pub fn bounded_debits(legs: &[Leg]) -> Vec<AccountKey> {
    let mut accounts: Vec<AccountKey> = legs
        .iter()
        .filter(|leg| leg.debit.kind.is_non_negative())
        .map(|leg| leg.debit.clone())
        .collect();
    accounts.sort();
    accounts.dedup();
    accounts
}

/// Which amount a hold posts: all it reserved, or less (a bank credit below
/// the expected amount), never more, never after it expired.
pub fn post_amount(
    hold: &Hold,
    requested: Option<i64>,
    now: OffsetDateTime,
) -> Result<i64, LedgerError> {
    if hold.status != HoldStatus::Pending {
        return Err(LedgerError::HoldResolved {
            hold: hold.id,
            status: hold.status,
        });
    }
    if now >= hold.expires_at {
        return Err(LedgerError::HoldExpired(hold.id));
    }
    let amount = requested.unwrap_or(hold.amount_minor);
    if amount <= 0 {
        return Err(LedgerError::InvalidAmount(amount));
    }
    if amount > hold.amount_minor {
        return Err(LedgerError::PostExceedsHold {
            hold: hold.id,
            reserved: hold.amount_minor,
            requested: amount,
        });
    }
    Ok(amount)
}

/// One thing reconciliation found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discrepancy {
    /// The kept balance differs from the sum of the account's postings.
    BalanceMismatch {
        account: AccountKey,
        kept: i64,
        recomputed: i64,
    },
    /// The kept balances of a currency do not sum to zero.
    CurrencyImbalance { currency: String, sum: i64 },
    /// A non-negative account is below zero (posted, or available after its
    /// pending holds).
    Negative { account: AccountKey, available: i64 },
    /// A hold's status disagrees with its postings (posted without exactly
    /// one posting of the posted amount, or a posting on an unposted hold).
    HoldMismatch { hold: Uuid, detail: String },
    /// A posting whose accounts are not both in its currency.
    PostingCurrency { posting: Uuid },
    /// An escrow account's `escrow_held` holds money (`held`) while nothing
    /// will ever move it: no scheduled timer of its own (hold deadline,
    /// payment deadline) and no active freeze. Found by the service's
    /// reconciliation, which sees accounts, freezes and timers; the ledger
    /// alone never reports it.
    HeldWithoutDeadline { account: AccountKey, held: i64 },
    /// Money at the gateway's boundary that only an operator can settle:
    /// `kind` is `TRANSFER_UNKNOWN` (a payout or refund the gateway never
    /// reported on and cannot say about), `SUSPENSE_REFUND_FAILED` (a late
    /// credit the gateway would not send back: it sits in suspense),
    /// `PAID_AFTER_FAILURE` (a transfer paid after it was reported failed,
    /// beyond what the correction could take back) or `UNKNOWN_REFERENCE`
    /// (a credit naming no payment escrow knows, at the gateway).
    GatewayItem {
        kind: &'static str,
        currency: Currency,
        amount: i64,
        detail: String,
    },
}

/// Checks that need only the recomputed balances: per currency they sum to
/// zero, and no non-negative account is below zero.
pub fn check_totals(
    kept: &BTreeMap<AccountKey, i64>,
    pending_debits: &HashMap<AccountKey, i64>,
) -> Vec<Discrepancy> {
    let mut found = Vec::new();
    // Summed in i128: no count of i64 balances this side of 2^64 overflows
    // it, so the zero test is exact and an overflow never panics.
    let mut sums: BTreeMap<&'static str, i128> = BTreeMap::new();
    for (account, balance) in kept {
        *sums.entry(account.currency.as_str()).or_default() += i128::from(*balance);
        let available = balance.saturating_sub(pending_debits.get(account).copied().unwrap_or(0));
        if account.kind.is_non_negative() && available < 0 {
            found.push(Discrepancy::Negative {
                account: account.clone(),
                available,
            });
        }
    }
    for (currency, sum) in sums {
        if sum != 0 {
            found.push(Discrepancy::CurrencyImbalance {
                currency: currency.into(),
                sum: clamp_to_i64(sum),
            });
        }
    }
    found
}

/// An i128 sum as an i64, the nearest one when it does not fit (only ever
/// shown in a discrepancy that is reported anyway).
fn clamp_to_i64(sum: i128) -> i64 {
    i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX })
}

/// The ledger operations every implementation offers: the in-memory
/// [`Ledger`] and the Postgres one. Each call is atomic: it fully happens or
/// changes nothing.
#[allow(async_fn_in_trait)]
pub trait LedgerStore {
    async fn transfer(&mut self, request: &TransferRequest) -> Result<Vec<Posting>, LedgerError>;
    async fn hold(&mut self, request: &HoldRequest) -> Result<Hold, LedgerError>;
    async fn post_hold(
        &mut self,
        hold_id: Uuid,
        amount_minor: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<Posting, LedgerError>;
    async fn void_hold(&mut self, hold_id: Uuid) -> Result<Hold, LedgerError>;
    /// Voids every hold pending at `now` past its expiry; returns them.
    async fn expire_due_holds(&mut self, now: OffsetDateTime) -> Result<Vec<Uuid>, LedgerError>;
    async fn balance(&mut self, account: &AccountKey) -> Result<Balance, LedgerError>;
    async fn hold_status(&mut self, hold_id: Uuid) -> Result<Hold, LedgerError>;
    /// Every discrepancy between kept balances and the postings; empty when
    /// the ledger is sound.
    async fn reconcile(&mut self) -> Result<Vec<Discrepancy>, LedgerError>;
}

/// The in-memory ledger: the reference model.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    balances: BTreeMap<AccountKey, i64>,
    postings: Vec<Posting>,
    holds: BTreeMap<Uuid, Hold>,
    purposes: HashSet<Purpose>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn postings(&self) -> &[Posting] {
        &self.postings
    }

    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    pub fn accounts(&self) -> impl Iterator<Item = (&AccountKey, i64)> {
        self.balances.iter().map(|(k, v)| (k, *v))
    }

    fn pending(&self) -> (HashMap<AccountKey, i64>, HashMap<AccountKey, i64>) {
        let mut debits: HashMap<AccountKey, i64> = HashMap::new();
        let mut credits: HashMap<AccountKey, i64> = HashMap::new();
        for hold in self
            .holds
            .values()
            .filter(|h| h.status == HoldStatus::Pending)
        {
            // Saturating, never wrapping: pending debits beyond i64 only make
            // less available, never more.
            let debit = debits.entry(hold.debit.clone()).or_default();
            *debit = debit.saturating_add(hold.amount_minor);
            let credit = credits.entry(hold.credit.clone()).or_default();
            *credit = credit.saturating_add(hold.amount_minor);
        }
        (debits, credits)
    }

    pub fn balance_of(&self, account: &AccountKey) -> Balance {
        let (debits, credits) = self.pending();
        Balance {
            posted: self.balances.get(account).copied().unwrap_or(0),
            pending_debits: debits.get(account).copied().unwrap_or(0),
            pending_credits: credits.get(account).copied().unwrap_or(0),
        }
    }

    fn available(&self, accounts: &[AccountKey]) -> HashMap<AccountKey, i64> {
        accounts
            .iter()
            .map(|a| (a.clone(), self.balance_of(a).available()))
            .collect()
    }

    fn apply(&mut self, posting: Posting) -> Result<(), LedgerError> {
        let debit = self.balances.get(&posting.debit).copied().unwrap_or(0);
        let credit = self.balances.get(&posting.credit).copied().unwrap_or(0);
        let debit = debit
            .checked_sub(posting.amount_minor)
            .ok_or(LedgerError::Overflow)?;
        let credit = credit
            .checked_add(posting.amount_minor)
            .ok_or(LedgerError::Overflow)?;
        self.balances.insert(posting.debit.clone(), debit);
        self.balances.insert(posting.credit.clone(), credit);
        self.postings.push(posting);
        Ok(())
    }

    pub fn transfer_now(&mut self, request: &TransferRequest) -> Result<Vec<Posting>, LedgerError> {
        validate_legs(&request.legs)?;
        if self.purposes.contains(&request.purpose) {
            return Err(LedgerError::PurposeUsed(request.purpose.clone()));
        }
        let available = self.available(&bounded_debits(&request.legs));
        plan_debits(&request.legs, &available)?;
        // Checked before anything changes, so an overflow cannot leave half
        // a linked transfer behind.
        let mut scratch = self.clone();
        let mut postings = Vec::new();
        for leg in &request.legs {
            let posting = Posting {
                id: Uuid::now_v7(),
                transfer_id: request.id,
                debit: leg.debit.clone(),
                credit: leg.credit.clone(),
                amount_minor: leg.amount_minor,
                hold_id: None,
                escrow_account: request.escrow_account,
            };
            scratch.apply(posting.clone())?;
            postings.push(posting);
        }
        scratch.purposes.insert(request.purpose.clone());
        *self = scratch;
        Ok(postings)
    }

    pub fn hold_now(&mut self, request: &HoldRequest) -> Result<Hold, LedgerError> {
        validate_leg(&request.debit, &request.credit, request.amount_minor)?;
        if self.purposes.contains(&request.purpose) {
            return Err(LedgerError::PurposeUsed(request.purpose.clone()));
        }
        check_hold_funds(request, self.balance_of(&request.debit).available())?;
        let hold = Hold {
            id: request.id,
            purpose: request.purpose.clone(),
            escrow_account: request.escrow_account,
            debit: request.debit.clone(),
            credit: request.credit.clone(),
            amount_minor: request.amount_minor,
            status: HoldStatus::Pending,
            posted_minor: None,
            expires_at: request.expires_at,
        };
        self.purposes.insert(request.purpose.clone());
        self.holds.insert(hold.id, hold.clone());
        Ok(hold)
    }

    pub fn post_hold_now(
        &mut self,
        hold_id: Uuid,
        amount_minor: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<Posting, LedgerError> {
        let hold = self
            .holds
            .get(&hold_id)
            .ok_or(LedgerError::HoldNotFound(hold_id))?;
        let amount = post_amount(hold, amount_minor, now)?;
        let posting = Posting {
            id: Uuid::now_v7(),
            transfer_id: hold.id,
            debit: hold.debit.clone(),
            credit: hold.credit.clone(),
            amount_minor: amount,
            hold_id: Some(hold.id),
            escrow_account: hold.escrow_account,
        };
        self.apply(posting.clone())?;
        if let Some(hold) = self.holds.get_mut(&hold_id) {
            hold.status = HoldStatus::Posted;
            hold.posted_minor = Some(amount);
        }
        Ok(posting)
    }

    pub fn void_hold_now(&mut self, hold_id: Uuid) -> Result<Hold, LedgerError> {
        let hold = self
            .holds
            .get_mut(&hold_id)
            .ok_or(LedgerError::HoldNotFound(hold_id))?;
        if hold.status != HoldStatus::Pending {
            return Err(LedgerError::HoldResolved {
                hold: hold_id,
                status: hold.status,
            });
        }
        hold.status = HoldStatus::Voided;
        Ok(hold.clone())
    }

    pub fn expire_now(&mut self, now: OffsetDateTime) -> Vec<Uuid> {
        let mut expired = Vec::new();
        for hold in self.holds.values_mut() {
            if hold.status == HoldStatus::Pending && hold.expires_at <= now {
                hold.status = HoldStatus::Voided;
                expired.push(hold.id);
            }
        }
        expired
    }

    /// Recomputes every balance from the postings and compares.
    pub fn discrepancies(&self) -> Vec<Discrepancy> {
        // In i128, as in `check_totals`: exact, and never an overflow.
        let mut recomputed: BTreeMap<AccountKey, i128> = BTreeMap::new();
        let mut found = Vec::new();
        let mut posted_by_hold: HashMap<Uuid, Vec<i64>> = HashMap::new();
        for p in &self.postings {
            if p.debit.currency != p.credit.currency {
                found.push(Discrepancy::PostingCurrency { posting: p.id });
            }
            *recomputed.entry(p.debit.clone()).or_default() -= i128::from(p.amount_minor);
            *recomputed.entry(p.credit.clone()).or_default() += i128::from(p.amount_minor);
            if let Some(hold) = p.hold_id {
                posted_by_hold.entry(hold).or_default().push(p.amount_minor);
            }
        }
        for (account, kept) in &self.balances {
            let again = recomputed.get(account).copied().unwrap_or(0);
            if again != i128::from(*kept) {
                found.push(Discrepancy::BalanceMismatch {
                    account: account.clone(),
                    kept: *kept,
                    recomputed: clamp_to_i64(again),
                });
            }
        }
        for hold in self.holds.values() {
            let postings = posted_by_hold.remove(&hold.id).unwrap_or_default();
            if let Some(detail) = hold_mismatch(hold.status, hold.posted_minor, &postings) {
                found.push(Discrepancy::HoldMismatch {
                    hold: hold.id,
                    detail,
                });
            }
        }
        found.extend(check_totals(&self.balances, &self.pending().0));
        found
    }
}

/// What is wrong with a hold given the amounts of its postings, if anything.
pub fn hold_mismatch(status: HoldStatus, posted: Option<i64>, postings: &[i64]) -> Option<String> {
    match (status, postings) {
        (HoldStatus::Posted, [amount]) if Some(*amount) == posted => None,
        (HoldStatus::Posted, _) => Some(format!("posted {posted:?} but has postings {postings:?}")),
        (_, []) => None,
        (status, _) => Some(format!("{} but has postings {postings:?}", status.as_str())),
    }
}

impl LedgerStore for Ledger {
    async fn transfer(&mut self, request: &TransferRequest) -> Result<Vec<Posting>, LedgerError> {
        self.transfer_now(request)
    }

    async fn hold(&mut self, request: &HoldRequest) -> Result<Hold, LedgerError> {
        self.hold_now(request)
    }

    async fn post_hold(
        &mut self,
        hold_id: Uuid,
        amount_minor: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<Posting, LedgerError> {
        self.post_hold_now(hold_id, amount_minor, now)
    }

    async fn void_hold(&mut self, hold_id: Uuid) -> Result<Hold, LedgerError> {
        self.void_hold_now(hold_id)
    }

    async fn expire_due_holds(&mut self, now: OffsetDateTime) -> Result<Vec<Uuid>, LedgerError> {
        Ok(self.expire_now(now))
    }

    async fn balance(&mut self, account: &AccountKey) -> Result<Balance, LedgerError> {
        Ok(self.balance_of(account))
    }

    async fn hold_status(&mut self, hold_id: Uuid) -> Result<Hold, LedgerError> {
        self.holds
            .get(&hold_id)
            .cloned()
            .ok_or(LedgerError::HoldNotFound(hold_id))
    }

    async fn reconcile(&mut self) -> Result<Vec<Discrepancy>, LedgerError> {
        Ok(self.discrepancies())
    }
}
