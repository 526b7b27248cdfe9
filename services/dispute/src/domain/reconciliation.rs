//! Cross-service reconciliation: the rules that say when what supplier-registry,
//! contract, escrow and dispute record of one order disagree. Pure: the
//! records come in as read from each service's API, the differences go out.
//!
//! Work in flight looks like a difference for a moment (a cancelled contract
//! whose refund is still in the outbox holds money), so a record any side
//! changed after `settled_before` is left out of every comparison it is in.

use std::collections::{BTreeMap, BTreeSet};

use ta_runtime::money::{Money, readable};
use time::OffsetDateTime;

pub const REGISTRY: &str = "supplier-registry";
pub const CONTRACT: &str = "contract";
pub const ESCROW: &str = "escrow";
pub const DISPUTE: &str = "dispute";

/// Where a contract is in its life, as far as cover and escrow care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Draft or awaiting signatures: no cover, no account yet.
    Unsigned,
    /// Both signed; cover and the account are being set up (in flight).
    Activating,
    /// Activated and not ended: cover held, the account open.
    Live,
    /// Completed, cancelled or refunded: no cover, nothing held.
    Ended,
    /// Signed without protection: no cover, no account ever.
    Unprotected,
}

#[derive(Clone, Debug)]
pub struct Reservation {
    pub contract_id: String,
    pub supplier_id: String,
    pub amount: Money,
    pub changed_at: OffsetDateTime,
}

#[derive(Clone, Debug)]
pub struct Contract {
    pub contract_id: String,
    pub supplier_id: String,
    /// The state as contract names it, for the report.
    pub state: String,
    pub stage: Stage,
    pub total: Money,
    /// An amendment both sides are signing: cover and the schedule follow its
    /// total before the contract does, so amounts are not compared meanwhile.
    pub amendment_pending: bool,
    pub changed_at: OffsetDateTime,
}

#[derive(Clone, Debug)]
pub struct Account {
    pub escrow_account_id: String,
    pub contract_id: String,
    pub supplier_id: String,
    pub state: String,
    pub open: bool,
    pub expected_total: Money,
    pub held: Money,
    /// The claims of its active freezes.
    pub frozen_for: Vec<String>,
    pub changed_at: OffsetDateTime,
}

/// Where a claim is, as far as freezes care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimStage {
    /// Being opened: the freeze is on its way (in flight).
    Opening,
    /// Negotiating or escalated: its account must be frozen for it.
    Open,
    /// Refused, settled, decided or withdrawn: no freeze of its own remains
    /// once its effects are done.
    Ended,
}

#[derive(Clone, Debug)]
pub struct Claim {
    pub claim_id: String,
    pub contract_id: String,
    pub escrow_account_id: String,
    pub supplier_id: String,
    pub state: String,
    pub stage: ClaimStage,
    /// Every call its last change asked of the other services answered.
    pub effects_done: bool,
    pub changed_at: OffsetDateTime,
}

/// Everything read, once, from the four services.
#[derive(Clone, Debug, Default)]
pub struct Books {
    /// Active reservations only.
    pub reservations: Vec<Reservation>,
    pub contracts: Vec<Contract>,
    pub accounts: Vec<Account>,
    pub claims: Vec<Claim>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    CoverWithoutContract,
    CoverOfEndedContract,
    CoverAmountDiffers,
    ContractWithoutCover,
    ContractWithoutOpenAccount,
    AccountTotalDiffers,
    MoneyHeldForEndedContract,
    OpenClaimWithoutFreeze,
    FreezeWithoutOpenClaim,
}

impl Kind {
    pub const ALL: [Self; 9] = [
        Self::CoverWithoutContract,
        Self::CoverOfEndedContract,
        Self::CoverAmountDiffers,
        Self::ContractWithoutCover,
        Self::ContractWithoutOpenAccount,
        Self::AccountTotalDiffers,
        Self::MoneyHeldForEndedContract,
        Self::OpenClaimWithoutFreeze,
        Self::FreezeWithoutOpenClaim,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CoverWithoutContract => "cover_without_contract",
            Self::CoverOfEndedContract => "cover_of_ended_contract",
            Self::CoverAmountDiffers => "cover_amount_differs",
            Self::ContractWithoutCover => "contract_without_cover",
            Self::ContractWithoutOpenAccount => "contract_without_open_account",
            Self::AccountTotalDiffers => "account_total_differs",
            Self::MoneyHeldForEndedContract => "money_held_for_ended_contract",
            Self::OpenClaimWithoutFreeze => "open_claim_without_freeze",
            Self::FreezeWithoutOpenClaim => "freeze_without_open_claim",
        }
    }
}

/// One side's record of the thing compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figure {
    pub service: &'static str,
    pub state: String,
    pub amount: Option<Money>,
}

impl Figure {
    fn of(service: &'static str, state: impl Into<String>, amount: Option<Money>) -> Self {
        Self {
            service,
            state: state.into(),
            amount,
        }
    }

    fn missing(service: &'static str) -> Self {
        Self::of(service, "missing", None)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    pub contract_id: String,
    pub supplier_id: String,
    pub escrow_account_id: String,
    pub claim_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub kind: Kind,
    pub ids: Ids,
    pub left: Figure,
    pub right: Figure,
    pub summary: String,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub differences: Vec<Difference>,
    /// Records left out because a side changed them after `settled_before`.
    pub unsettled: usize,
}

impl Report {
    pub fn count(&self, kind: Kind) -> usize {
        self.differences.iter().filter(|d| d.kind == kind).count()
    }
}

/// One comparison: when, how many records of each kind were read, and what
/// differs.
pub struct Reconciled {
    pub checked_at: OffsetDateTime,
    pub report: Report,
    pub reservations: usize,
    pub contracts: usize,
    pub accounts: usize,
    pub claims: usize,
}

/// Compares the four services' records. A comparison involving any record
/// changed after `settled_before` is skipped and counted as unsettled.
pub fn reconcile(books: &Books, settled_before: OffsetDateTime) -> Report {
    let settled = |at: OffsetDateTime| at <= settled_before;
    let contracts: BTreeMap<&str, &Contract> = books
        .contracts
        .iter()
        .map(|c| (c.contract_id.as_str(), c))
        .collect();
    let covered: BTreeSet<&str> = books
        .reservations
        .iter()
        .map(|r| r.contract_id.as_str())
        .collect();
    let accounts_of: BTreeMap<&str, Vec<&Account>> =
        books.accounts.iter().fold(BTreeMap::new(), |mut by, a| {
            by.entry(a.contract_id.as_str())
                .or_insert_with(Vec::new)
                .push(a);
            by
        });
    let claims: BTreeMap<&str, &Claim> = books
        .claims
        .iter()
        .map(|c| (c.claim_id.as_str(), c))
        .collect();
    let accounts: BTreeMap<&str, &Account> = books
        .accounts
        .iter()
        .map(|a| (a.escrow_account_id.as_str(), a))
        .collect();

    let mut report = Report::default();
    let mut note = |kind, ids, left, right, summary, changed: &[OffsetDateTime]| {
        if changed.iter().all(|at| settled(*at)) {
            report.differences.push(Difference {
                kind,
                ids,
                left,
                right,
                summary,
            });
        } else {
            report.unsettled += 1;
        }
    };

    for reservation in &books.reservations {
        let ids = Ids {
            contract_id: reservation.contract_id.clone(),
            supplier_id: reservation.supplier_id.clone(),
            ..Ids::default()
        };
        let held = Figure::of(REGISTRY, "active reservation", Some(reservation.amount));
        let Some(contract) = contracts.get(reservation.contract_id.as_str()) else {
            note(
                Kind::CoverWithoutContract,
                ids,
                held,
                Figure::missing(CONTRACT),
                format!(
                    "cover of {} held for contract {}, which contract does not know",
                    readable(reservation.amount),
                    reservation.contract_id
                ),
                &[reservation.changed_at],
            );
            continue;
        };
        let changed = [reservation.changed_at, contract.changed_at];
        match contract.stage {
            Stage::Live if reservation.amount != contract.total && !contract.amendment_pending => {
                note(
                    Kind::CoverAmountDiffers,
                    ids,
                    held,
                    Figure::of(CONTRACT, contract.state.clone(), Some(contract.total)),
                    format!(
                        "cover of {} held for contract {} whose total is {}",
                        readable(reservation.amount),
                        contract.contract_id,
                        readable(contract.total)
                    ),
                    &changed,
                );
            }
            Stage::Ended | Stage::Unsigned | Stage::Unprotected => note(
                Kind::CoverOfEndedContract,
                ids,
                held,
                Figure::of(CONTRACT, contract.state.clone(), Some(contract.total)),
                format!(
                    "cover of {} held for contract {}, which is {}",
                    readable(reservation.amount),
                    contract.contract_id,
                    contract.state
                ),
                &changed,
            ),
            Stage::Live | Stage::Activating => {}
        }
    }

    for contract in books.contracts.iter().filter(|c| c.stage == Stage::Live) {
        let ids = Ids {
            contract_id: contract.contract_id.clone(),
            supplier_id: contract.supplier_id.clone(),
            ..Ids::default()
        };
        let live = Figure::of(CONTRACT, contract.state.clone(), Some(contract.total));
        if !covered.contains(contract.contract_id.as_str()) {
            note(
                Kind::ContractWithoutCover,
                ids.clone(),
                live.clone(),
                Figure::of(REGISTRY, "no active reservation", None),
                format!(
                    "contract {} is {} with no cover held",
                    contract.contract_id, contract.state
                ),
                &[contract.changed_at],
            );
        }
        let open = accounts_of
            .get(contract.contract_id.as_str())
            .and_then(|accounts| accounts.iter().find(|a| a.open));
        let Some(account) = open else {
            let closed = accounts_of
                .get(contract.contract_id.as_str())
                .and_then(|accounts| accounts.first());
            let mut changed = vec![contract.changed_at];
            changed.extend(closed.map(|a| a.changed_at));
            note(
                Kind::ContractWithoutOpenAccount,
                Ids {
                    escrow_account_id: closed
                        .map(|a| a.escrow_account_id.clone())
                        .unwrap_or_default(),
                    ..ids
                },
                live,
                closed.map_or_else(
                    || Figure::missing(ESCROW),
                    |a| Figure::of(ESCROW, a.state.clone(), Some(a.held)),
                ),
                format!(
                    "contract {} is {} with no open escrow account",
                    contract.contract_id, contract.state
                ),
                &changed,
            );
            continue;
        };
        if account.expected_total != contract.total && !contract.amendment_pending {
            note(
                Kind::AccountTotalDiffers,
                Ids {
                    escrow_account_id: account.escrow_account_id.clone(),
                    ..ids
                },
                live,
                Figure::of(ESCROW, account.state.clone(), Some(account.expected_total)),
                format!(
                    "escrow account {} expects {} for contract {} whose total is {}",
                    account.escrow_account_id,
                    readable(account.expected_total),
                    contract.contract_id,
                    readable(contract.total)
                ),
                &[contract.changed_at, account.changed_at],
            );
        }
    }

    for account in books.accounts.iter().filter(|a| a.held.amount_minor != 0) {
        let ids = Ids {
            contract_id: account.contract_id.clone(),
            supplier_id: account.supplier_id.clone(),
            escrow_account_id: account.escrow_account_id.clone(),
            ..Ids::default()
        };
        let holds = Figure::of(ESCROW, "held", Some(account.held));
        match contracts.get(account.contract_id.as_str()) {
            None => note(
                Kind::MoneyHeldForEndedContract,
                ids,
                holds,
                Figure::missing(CONTRACT),
                format!(
                    "escrow account {} holds {} for contract {}, which contract does not know",
                    account.escrow_account_id,
                    readable(account.held),
                    account.contract_id
                ),
                &[account.changed_at],
            ),
            Some(contract) if contract.stage == Stage::Ended => note(
                Kind::MoneyHeldForEndedContract,
                ids,
                holds,
                Figure::of(CONTRACT, contract.state.clone(), Some(contract.total)),
                format!(
                    "escrow account {} holds {} for contract {}, which is {}",
                    account.escrow_account_id,
                    readable(account.held),
                    account.contract_id,
                    contract.state
                ),
                &[account.changed_at, contract.changed_at],
            ),
            Some(_) => {}
        }
    }

    for claim in books.claims.iter().filter(|c| c.stage == ClaimStage::Open) {
        let account = accounts.get(claim.escrow_account_id.as_str());
        if account.is_some_and(|a| a.frozen_for.contains(&claim.claim_id)) {
            continue;
        }
        let mut changed = vec![claim.changed_at];
        changed.extend(account.map(|a| a.changed_at));
        note(
            Kind::OpenClaimWithoutFreeze,
            Ids {
                contract_id: claim.contract_id.clone(),
                supplier_id: claim.supplier_id.clone(),
                escrow_account_id: claim.escrow_account_id.clone(),
                claim_id: claim.claim_id.clone(),
            },
            Figure::of(DISPUTE, claim.state.clone(), None),
            account.map_or_else(
                || Figure::missing(ESCROW),
                |a| Figure::of(ESCROW, "no freeze for the claim", Some(a.held)),
            ),
            format!(
                "claim {} is {} but escrow account {} is not frozen for it",
                claim.claim_id, claim.state, claim.escrow_account_id
            ),
            &changed,
        );
    }

    for account in &books.accounts {
        for claim_id in &account.frozen_for {
            let claim = claims.get(claim_id.as_str());
            let ended = match claim {
                None => true,
                Some(c) => c.stage == ClaimStage::Ended && c.effects_done,
            };
            if !ended {
                continue;
            }
            let mut changed = vec![account.changed_at];
            changed.extend(claim.map(|c| c.changed_at));
            note(
                Kind::FreezeWithoutOpenClaim,
                Ids {
                    contract_id: account.contract_id.clone(),
                    supplier_id: account.supplier_id.clone(),
                    escrow_account_id: account.escrow_account_id.clone(),
                    claim_id: claim_id.clone(),
                },
                Figure::of(ESCROW, "frozen", Some(account.held)),
                claim.map_or_else(
                    || Figure::missing(DISPUTE),
                    |c| Figure::of(DISPUTE, c.state.clone(), None),
                ),
                format!(
                    "escrow account {} is frozen for claim {}, which is {}",
                    account.escrow_account_id,
                    claim_id,
                    claim.map_or("unknown to dispute", |c| c.state.as_str())
                ),
                &changed,
            );
        }
    }

    report.differences.sort_by_key(|d| d.kind);
    report
}

#[cfg(test)]
mod tests {
    use ta_runtime::money::Currency;
    use time::Duration;

    use super::*;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::parse("USD").expect("USD"))
    }

    fn long_ago() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn now() -> OffsetDateTime {
        long_ago() + Duration::hours(1)
    }

    fn contract(id: &str, stage: Stage, total: i64) -> Contract {
        Contract {
            contract_id: id.into(),
            supplier_id: "s".into(),
            state: format!("{stage:?}"),
            stage,
            total: usd(total),
            amendment_pending: false,
            changed_at: long_ago(),
        }
    }

    fn reservation(contract_id: &str, amount: i64) -> Reservation {
        Reservation {
            contract_id: contract_id.into(),
            supplier_id: "s".into(),
            amount: usd(amount),
            changed_at: long_ago(),
        }
    }

    fn account(id: &str, contract_id: &str, total: i64, held: i64, open: bool) -> Account {
        Account {
            escrow_account_id: id.into(),
            contract_id: contract_id.into(),
            supplier_id: "s".into(),
            state: if open { "FUNDED" } else { "CLOSED" }.into(),
            open,
            expected_total: usd(total),
            held: usd(held),
            frozen_for: Vec::new(),
            changed_at: long_ago(),
        }
    }

    fn claim(id: &str, account_id: &str, stage: ClaimStage) -> Claim {
        Claim {
            claim_id: id.into(),
            contract_id: "c1".into(),
            escrow_account_id: account_id.into(),
            supplier_id: "s".into(),
            state: format!("{stage:?}"),
            stage,
            effects_done: true,
            changed_at: long_ago(),
        }
    }

    fn consistent() -> Books {
        let mut frozen = account("a1", "c1", 1_000, 1_000, true);
        frozen.frozen_for.push("k1".into());
        Books {
            reservations: vec![reservation("c1", 1_000)],
            contracts: vec![
                contract("c1", Stage::Live, 1_000),
                contract("c2", Stage::Ended, 500),
                contract("c3", Stage::Unsigned, 700),
            ],
            accounts: vec![frozen, account("a2", "c2", 500, 0, false)],
            claims: vec![
                claim("k1", "a1", ClaimStage::Open),
                claim("k2", "a2", ClaimStage::Ended),
            ],
        }
    }

    fn kinds(report: &Report) -> Vec<Kind> {
        report.differences.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn consistent_books_have_no_difference() {
        let report = reconcile(&consistent(), now());
        assert_eq!(kinds(&report), []);
        assert_eq!(report.unsettled, 0);
    }

    #[test]
    fn cover_without_a_contract_names_both_sides() {
        let mut books = consistent();
        books.reservations.push(reservation("ghost", 250));
        let report = reconcile(&books, now());
        assert_eq!(kinds(&report), [Kind::CoverWithoutContract]);
        let difference = &report.differences[0];
        assert_eq!(difference.ids.contract_id, "ghost");
        assert_eq!(
            difference.left,
            Figure::of(REGISTRY, "active reservation", Some(usd(250)))
        );
        assert_eq!(difference.right, Figure::missing(CONTRACT));
        assert!(
            difference.summary.contains("2.50 USD"),
            "{}",
            difference.summary
        );
    }

    #[test]
    fn cover_and_money_of_an_ended_contract_are_differences() {
        let mut books = consistent();
        books.reservations.push(reservation("c2", 500));
        books.accounts[1].held = usd(500);
        let report = reconcile(&books, now());
        assert_eq!(
            kinds(&report),
            [Kind::CoverOfEndedContract, Kind::MoneyHeldForEndedContract]
        );
        assert_eq!(report.differences[1].right.state, "Ended");
    }

    #[test]
    fn amounts_are_compared_unless_an_amendment_is_being_signed() {
        let mut books = consistent();
        books.reservations[0].amount = usd(1_200);
        books.accounts[0].expected_total = usd(1_200);
        assert_eq!(
            kinds(&reconcile(&books, now())),
            [Kind::CoverAmountDiffers, Kind::AccountTotalDiffers]
        );
        books.contracts[0].amendment_pending = true;
        assert_eq!(kinds(&reconcile(&books, now())), []);
    }

    #[test]
    fn a_live_contract_needs_cover_and_an_open_account() {
        let mut books = consistent();
        books.reservations.clear();
        books.accounts[0].open = false;
        books.accounts[0].held = usd(0);
        let report = reconcile(&books, now());
        assert_eq!(
            kinds(&report),
            [Kind::ContractWithoutCover, Kind::ContractWithoutOpenAccount,]
        );
        assert_eq!(report.differences[1].ids.escrow_account_id, "a1");
    }

    #[test]
    fn an_open_claim_needs_its_freeze_and_a_freeze_its_open_claim() {
        let mut books = consistent();
        books.accounts[0].frozen_for = vec!["k2".into()];
        let report = reconcile(&books, now());
        assert_eq!(
            kinds(&report),
            [Kind::OpenClaimWithoutFreeze, Kind::FreezeWithoutOpenClaim]
        );
        assert_eq!(report.differences[0].ids.claim_id, "k1");
        assert_eq!(report.differences[1].ids.claim_id, "k2");
    }

    #[test]
    fn an_ended_claim_whose_effects_are_still_on_their_way_keeps_its_freeze() {
        let mut books = consistent();
        books.claims[0].stage = ClaimStage::Ended;
        books.claims[0].effects_done = false;
        assert_eq!(kinds(&reconcile(&books, now())), []);
    }

    #[test]
    fn work_in_flight_is_not_compared_until_it_settles() {
        let mut books = consistent();
        books.contracts[1].changed_at = now();
        books.accounts[1].held = usd(500);
        books.contracts.push(contract("c4", Stage::Activating, 900));
        books.reservations.push(reservation("c4", 900));
        let report = reconcile(&books, now() - Duration::minutes(1));
        assert_eq!(kinds(&report), []);
        assert_eq!(report.unsettled, 1);
        assert_eq!(
            kinds(&reconcile(&books, now())),
            [Kind::MoneyHeldForEndedContract]
        );
    }
}
