//! The generator's own count of the money movements escrow acknowledged, and
//! its comparison with what escrow shows afterwards.
//!
//! ReconcileLedger proves the ledger agrees with itself; it cannot see a
//! movement written twice under two ids, one never written, or one written
//! that no caller was told about. So every caller counts what it was told
//! (each FundEscrow's funding attempt, each ReleaseToSupplier's posting, in
//! minor units), and after the run each account's statement is read by
//! support staff and must hold exactly those movements: each once, with its
//! amount, between the right ledger accounts, and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use ta_proto::tradeassurance::escrow::v1::{
    EscrowAccount, GetEscrowStatementResponse, LedgerAccount, LedgerAccountKind, Posting,
    PostingKind, purpose,
};

/// One acknowledged release: the posting escrow answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub posting_id: String,
    pub milestone_id: String,
    pub amount_minor: i64,
}

/// What the generator was told about one escrow account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountTally {
    pub supplier_id: String,
    /// Acknowledged FundEscrow calls (SUCCEEDED): funding attempt id, amount.
    pub fundings: Vec<(String, i64)>,
    pub releases: Vec<Release>,
    /// AcceptGoods was acknowledged by contract: its workflow must release
    /// everything held, once (purpose: the acceptance). Escrow acknowledges
    /// that release to contract, not to the generator, so it is expected
    /// rather than counted.
    pub acceptance_expected: bool,
}

impl AccountTally {
    pub fn funded_minor(&self) -> i64 {
        self.fundings.iter().map(|(_, a)| a).sum()
    }

    pub fn released_minor(&self) -> i64 {
        self.releases.iter().map(|r| r.amount_minor).sum()
    }
}

/// Counts and sums in minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub accounts: usize,
    pub fundings: u64,
    pub funded_minor: i64,
    pub releases: u64,
    pub released_minor: i64,
    /// Accounts with at least one release.
    pub accounts_with_releases: usize,
}

/// Every caller's tally, merged after the run.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub accounts: BTreeMap<String, AccountTally>,
}

impl Tally {
    /// The account's tally; `supplier_id` is whom its releases must credit.
    pub fn account(&mut self, account_id: &str, supplier_id: &str) -> &mut AccountTally {
        let entry = self.accounts.entry(account_id.to_owned()).or_default();
        if entry.supplier_id.is_empty() {
            supplier_id.clone_into(&mut entry.supplier_id);
        }
        entry
    }

    pub fn funded(&mut self, account_id: &str, supplier_id: &str, attempt_id: &str, amount: i64) {
        self.account(account_id, supplier_id)
            .fundings
            .push((attempt_id.to_owned(), amount));
    }

    pub fn released(&mut self, account_id: &str, supplier_id: &str, release: Release) {
        self.account(account_id, supplier_id).releases.push(release);
    }

    pub fn merge(&mut self, other: Tally) {
        for (id, theirs) in other.accounts {
            let mine = self.account(&id, &theirs.supplier_id);
            mine.fundings.extend(theirs.fundings);
            mine.releases.extend(theirs.releases);
            mine.acceptance_expected |= theirs.acceptance_expected;
        }
    }

    /// What the callers were told (the acceptance releases not included).
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            accounts: self.accounts.len(),
            ..Totals::default()
        };
        for a in self.accounts.values() {
            t.fundings += a.fundings.len() as u64;
            t.funded_minor += a.funded_minor();
            t.releases += a.releases.len() as u64;
            t.released_minor += a.released_minor();
            t.accounts_with_releases += usize::from(!a.releases.is_empty());
        }
        t
    }
}

/// The outcome of comparing a run's tally with escrow's statements.
#[derive(Clone, Debug, Default)]
pub struct TallyCheck {
    /// Acknowledged to the generator.
    pub expected: Totals,
    /// Found in the statements of those accounts (acceptance releases
    /// counted separately below).
    pub found: Totals,
    /// Releases of everything held after AcceptGoods: expected, found.
    pub acceptances: (u64, u64),
    /// Every difference, described; empty when each acknowledged movement
    /// appears exactly once and nothing else moved.
    pub differences: Vec<String>,
}

impl TallyCheck {
    pub fn print(&self) {
        let usd = |minor: i64| format!("{}.{:02}", minor / 100, minor % 100);
        println!(
            "   tally: {} accounts; acknowledged {} FundEscrow ({} USD) and {} ReleaseToSupplier ({} USD); \
             escrow's statements show {} fundings ({} USD) and {} releases ({} USD){}; {} differences",
            self.expected.accounts,
            self.expected.fundings,
            usd(self.expected.funded_minor),
            self.expected.releases,
            usd(self.expected.released_minor),
            self.found.fundings,
            usd(self.found.funded_minor),
            self.found.releases,
            usd(self.found.released_minor),
            if self.acceptances.0 > 0 {
                format!(
                    ", and {} of {} releases after acceptance",
                    self.acceptances.1, self.acceptances.0
                )
            } else {
                String::new()
            },
            self.differences.len()
        );
        for d in self.differences.iter().take(20) {
            println!("     tally difference: {d}");
        }
        if self.differences.len() > 20 {
            println!("     ... and {} more", self.differences.len() - 20);
        }
    }
}

fn is_ledger(account: Option<&LedgerAccount>, kind: LedgerAccountKind, owner: &str) -> bool {
    account.is_some_and(|a| {
        a.kind() == kind
            && match kind {
                LedgerAccountKind::EscrowHeld => a.escrow_account_id == owner,
                LedgerAccountKind::SupplierPayable => a.supplier_id == owner,
                _ => true,
            }
    })
}

fn amount_of(posting: &Posting) -> i64 {
    posting.amount.as_ref().map_or(0, |m| m.amount_minor)
}

fn describe(posting: &Posting) -> String {
    format!(
        "{:?} posting {} of {} minor",
        posting.kind(),
        posting.posting_id,
        amount_of(posting)
    )
}

fn is_acceptance(posting: &Posting) -> bool {
    matches!(
        posting.purpose.as_ref().and_then(|p| p.purpose.as_ref()),
        Some(purpose::Purpose::Acceptance(true))
    )
}

fn milestone_of(posting: &Posting) -> Option<&str> {
    match posting.purpose.as_ref().and_then(|p| p.purpose.as_ref()) {
        Some(purpose::Purpose::MilestoneId(m)) => Some(m),
        _ => None,
    }
}

/// Whether the statement already shows the release the acceptance must make
/// (so a caller waiting on contract's workflow can stop waiting).
pub fn shows_acceptance(statement: &GetEscrowStatementResponse) -> bool {
    statement
        .postings
        .iter()
        .any(|p| p.kind() == PostingKind::Release && is_acceptance(p))
}

/// Compares one account's tally with its statement (every page of postings
/// in `statement.postings`); adds what it found to `found` and each
/// difference to `differences`. Found releases are also summed per supplier
/// credited, into `by_supplier`.
pub fn compare_account(
    account_id: &str,
    tally: &AccountTally,
    statement: &GetEscrowStatementResponse,
    check: &mut TallyCheck,
    by_supplier: &mut BTreeMap<String, (u64, i64)>,
) {
    let differences = &mut check.differences;
    let mut say = |what: String| differences.push(format!("account {account_id}: {what}"));
    let mut fundings: BTreeMap<&str, Vec<&Posting>> = BTreeMap::new();
    let mut releases: BTreeMap<&str, &Posting> = BTreeMap::new();
    let mut acceptances: Vec<&Posting> = Vec::new();
    for posting in &statement.postings {
        if posting.escrow_account_id != account_id {
            say(format!(
                "{} names escrow account {}",
                describe(posting),
                posting.escrow_account_id
            ));
        }
        if posting.amount.as_ref().map(|m| m.currency_code.as_str()) != Some("USD") {
            say(format!("{} is not in USD", describe(posting)));
        }
        match posting.kind() {
            PostingKind::Funding => {
                if !is_ledger(
                    posting.credit_account.as_ref(),
                    LedgerAccountKind::EscrowHeld,
                    account_id,
                ) {
                    say(format!(
                        "{} does not credit the account's escrow_held",
                        describe(posting)
                    ));
                }
                fundings
                    .entry(posting.funding_attempt_id.as_str())
                    .or_default()
                    .push(posting);
                check.found.fundings += 1;
                check.found.funded_minor += amount_of(posting);
            }
            PostingKind::Release => {
                let credit = posting.credit_account.as_ref();
                if !is_ledger(
                    posting.debit_account.as_ref(),
                    LedgerAccountKind::EscrowHeld,
                    account_id,
                ) || !is_ledger(
                    credit,
                    LedgerAccountKind::SupplierPayable,
                    &tally.supplier_id,
                ) {
                    say(format!(
                        "{} does not move escrow_held to supplier {}'s payable",
                        describe(posting),
                        tally.supplier_id
                    ));
                }
                let supplier = credit.map_or(String::new(), |c| c.supplier_id.clone());
                let entry = by_supplier.entry(supplier).or_default();
                entry.0 += 1;
                entry.1 += amount_of(posting);
                if tally.acceptance_expected && is_acceptance(posting) {
                    acceptances.push(posting);
                } else {
                    check.found.releases += 1;
                    check.found.released_minor += amount_of(posting);
                    if releases
                        .insert(posting.posting_id.as_str(), posting)
                        .is_some()
                    {
                        say(format!("{} listed twice", describe(posting)));
                    }
                }
            }
            _ => say(format!("unexpected {}", describe(posting))),
        }
    }

    let mut acknowledged_attempts = BTreeSet::new();
    for (attempt, amount) in &tally.fundings {
        if !acknowledged_attempts.insert(attempt.as_str()) {
            say(format!("funding attempt {attempt} acknowledged twice"));
            continue;
        }
        match fundings.get(attempt.as_str()).map(Vec::as_slice) {
            None | Some([]) => say(format!(
                "acknowledged funding attempt {attempt} ({amount} minor) has no funding posting"
            )),
            Some([one]) if amount_of(one) == *amount => {}
            Some([one]) => say(format!(
                "funding attempt {attempt}: acknowledged {amount} minor, posted {}",
                amount_of(one)
            )),
            Some(many) => say(format!(
                "funding attempt {attempt} posted {} times",
                many.len()
            )),
        }
    }
    for (attempt, postings) in &fundings {
        if !acknowledged_attempts.contains(attempt) {
            for p in postings {
                say(format!(
                    "{} for attempt {attempt:?}, which no caller was told of",
                    describe(p)
                ));
            }
        }
    }

    let mut acknowledged_releases = BTreeSet::new();
    for release in &tally.releases {
        if !acknowledged_releases.insert(release.posting_id.as_str()) {
            say(format!(
                "release posting {} acknowledged twice",
                release.posting_id
            ));
            continue;
        }
        match releases.get(release.posting_id.as_str()) {
            None => say(format!(
                "acknowledged release {} of milestone {} ({} minor) is not in the statement",
                release.posting_id, release.milestone_id, release.amount_minor
            )),
            Some(p) => {
                if amount_of(p) != release.amount_minor {
                    say(format!(
                        "release {}: acknowledged {} minor, posted {}",
                        release.posting_id,
                        release.amount_minor,
                        amount_of(p)
                    ));
                }
                if milestone_of(p) != Some(release.milestone_id.as_str()) {
                    say(format!(
                        "release {}: acknowledged for milestone {}, posted for {:?}",
                        release.posting_id, release.milestone_id, p.purpose
                    ));
                }
            }
        }
    }
    for (id, p) in &releases {
        if !acknowledged_releases.contains(id) {
            say(format!("{}, which no caller was told of", describe(p)));
        }
    }

    check.found.accounts_with_releases += usize::from(!releases.is_empty());
    let acknowledged_in = tally.funded_minor();
    let acknowledged_out = tally.released_minor();
    let mut released_total = acknowledged_out;
    if tally.acceptance_expected {
        check.acceptances.0 += 1;
        check.acceptances.1 += acceptances.len() as u64;
        match acceptances.as_slice() {
            [] => say("no release after the acknowledged acceptance".into()),
            [one] => {
                let rest = acknowledged_in - acknowledged_out;
                if amount_of(one) != rest {
                    say(format!(
                        "the acceptance released {} minor, {rest} was held",
                        amount_of(one)
                    ));
                }
                released_total += amount_of(one);
            }
            many => say(format!("{} releases for the acceptance", many.len())),
        }
    }
    if let Some(account) = &statement.account {
        compare_totals(account, acknowledged_in, released_total, &mut say);
    } else {
        say("the statement names no account".into());
    }
}

/// The account's own totals against the tally.
fn compare_totals(
    account: &EscrowAccount,
    funded: i64,
    released: i64,
    say: &mut impl FnMut(String),
) {
    let of = |m: &Option<ta_proto::common::Money>| m.as_ref().map_or(0, |m| m.amount_minor);
    for (field, shown, expected) in [
        ("funded_total", of(&account.funded_total), funded),
        ("released_total", of(&account.released_total), released),
        ("refunded_total", of(&account.refunded_total), 0),
        ("held", of(&account.held), funded - released),
    ] {
        if shown != expected {
            say(format!(
                "{field} is {shown} minor, the tally says {expected}"
            ));
        }
    }
}

/// What the statements credited each supplier's payable against the
/// tally's (the acceptance releases included at what was held).
pub fn compare_suppliers(
    tally: &Tally,
    found: &BTreeMap<String, (u64, i64)>,
    differences: &mut Vec<String>,
) {
    let mut expected: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for a in tally.accounts.values() {
        let e = expected.entry(a.supplier_id.as_str()).or_default();
        e.0 += a.releases.len() as u64;
        e.1 += a.released_minor();
        if a.acceptance_expected {
            e.0 += 1;
            e.1 += a.funded_minor() - a.released_minor();
        }
    }
    let suppliers: BTreeSet<&str> = expected
        .keys()
        .copied()
        .chain(found.keys().map(String::as_str))
        .collect();
    for supplier in suppliers {
        let want = expected.get(supplier).copied().unwrap_or_default();
        let got = found.get(supplier).copied().unwrap_or_default();
        if want != got {
            differences.push(format!(
                "supplier {supplier:?}: the tally credits its payable {} times with {} minor, \
                 the statements {} times with {} minor",
                want.0, want.1, got.0, got.1
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ta_proto::{
        common::Money,
        tradeassurance::escrow::v1::{Purpose, purpose::Purpose as P},
    };

    const ACCOUNT: &str = "acc-1";
    const SUPPLIER: &str = "sup-1";

    fn usd(minor: i64) -> Option<Money> {
        Some(Money {
            currency_code: "USD".into(),
            amount_minor: minor,
        })
    }

    fn ledger(kind: LedgerAccountKind) -> Option<LedgerAccount> {
        Some(LedgerAccount {
            kind: kind as i32,
            currency_code: "USD".into(),
            escrow_account_id: if kind == LedgerAccountKind::EscrowHeld {
                ACCOUNT.into()
            } else {
                String::new()
            },
            supplier_id: if kind == LedgerAccountKind::SupplierPayable {
                SUPPLIER.into()
            } else {
                String::new()
            },
            ..Default::default()
        })
    }

    fn funding(id: &str, attempt: &str, minor: i64) -> Posting {
        Posting {
            posting_id: id.into(),
            escrow_account_id: ACCOUNT.into(),
            kind: PostingKind::Funding as i32,
            debit_account: ledger(LedgerAccountKind::GatewayClearing),
            credit_account: ledger(LedgerAccountKind::EscrowHeld),
            amount: usd(minor),
            funding_attempt_id: attempt.into(),
            ..Default::default()
        }
    }

    fn release(id: &str, milestone: &str, minor: i64) -> Posting {
        Posting {
            posting_id: id.into(),
            escrow_account_id: ACCOUNT.into(),
            kind: PostingKind::Release as i32,
            debit_account: ledger(LedgerAccountKind::EscrowHeld),
            credit_account: ledger(LedgerAccountKind::SupplierPayable),
            amount: usd(minor),
            purpose: Some(Purpose {
                purpose: Some(P::MilestoneId(milestone.into())),
            }),
            ..Default::default()
        }
    }

    fn statement(postings: Vec<Posting>, funded: i64, released: i64) -> GetEscrowStatementResponse {
        GetEscrowStatementResponse {
            account: Some(EscrowAccount {
                escrow_account_id: ACCOUNT.into(),
                funded_total: usd(funded),
                released_total: usd(released),
                refunded_total: usd(0),
                held: usd(funded - released),
                ..Default::default()
            }),
            postings,
            ..Default::default()
        }
    }

    fn tally() -> Tally {
        let mut t = Tally::default();
        t.funded(ACCOUNT, SUPPLIER, "att-1", 1_000);
        t.funded(ACCOUNT, SUPPLIER, "att-2", 1_000);
        t.released(
            ACCOUNT,
            SUPPLIER,
            Release {
                posting_id: "p-r1".into(),
                milestone_id: "m0".into(),
                amount_minor: 1_000,
            },
        );
        t
    }

    fn differences(t: &Tally, s: &GetEscrowStatementResponse) -> Vec<String> {
        let mut check = TallyCheck::default();
        let mut by_supplier = BTreeMap::new();
        compare_account(
            ACCOUNT,
            &t.accounts[ACCOUNT],
            s,
            &mut check,
            &mut by_supplier,
        );
        compare_suppliers(t, &by_supplier, &mut check.differences);
        check.differences
    }

    fn sound() -> Vec<Posting> {
        vec![
            funding("p-f1", "att-1", 1_000),
            funding("p-f2", "att-2", 1_000),
            release("p-r1", "m0", 1_000),
        ]
    }

    #[test]
    fn each_acknowledged_movement_once_is_no_difference() {
        assert_eq!(
            differences(&tally(), &statement(sound(), 2_000, 1_000)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_missing_duplicated_or_unacknowledged_movement_is_a_difference() {
        let t = tally();
        let mut missing = sound();
        missing.remove(1);
        let d = differences(&t, &statement(missing, 1_000, 1_000));
        assert!(
            d.iter()
                .any(|d| d.contains("att-2") && d.contains("no funding posting")),
            "{d:?}"
        );

        let mut twice = sound();
        twice.push(funding("p-f3", "att-2", 1_000));
        let d = differences(&t, &statement(twice, 3_000, 1_000));
        assert!(d.iter().any(|d| d.contains("posted 2 times")), "{d:?}");
        assert!(d.iter().any(|d| d.contains("funded_total")), "{d:?}");

        let mut extra = sound();
        extra.push(release("p-r2", "m1", 1_000));
        let d = differences(&t, &statement(extra, 2_000, 2_000));
        assert!(
            d.iter()
                .any(|d| d.contains("p-r2") && d.contains("no caller was told")),
            "{d:?}"
        );
        assert!(d.iter().any(|d| d.contains("supplier")), "{d:?}");
    }

    #[test]
    fn a_release_of_another_amount_milestone_or_supplier_is_a_difference() {
        let t = tally();
        let mut amount = sound();
        amount[2] = release("p-r1", "m0", 999);
        let d = differences(&t, &statement(amount, 2_000, 999));
        assert!(d.iter().any(|d| d.contains("posted 999")), "{d:?}");

        let mut milestone = sound();
        milestone[2] = release("p-r1", "m1", 1_000);
        let d = differences(&t, &statement(milestone, 2_000, 1_000));
        assert!(d.iter().any(|d| d.contains("milestone m0")), "{d:?}");

        let mut supplier = sound();
        supplier[2].credit_account.as_mut().unwrap().supplier_id = "someone-else".into();
        let d = differences(&t, &statement(supplier, 2_000, 1_000));
        assert!(d.iter().any(|d| d.contains("payable")), "{d:?}");
    }

    #[test]
    fn an_accepted_order_needs_exactly_one_release_of_the_rest() {
        let mut t = Tally::default();
        t.funded(ACCOUNT, SUPPLIER, "att-1", 100_000);
        t.account(ACCOUNT, SUPPLIER).acceptance_expected = true;
        let mut accepted = release("p-a", "", 100_000);
        accepted.purpose = Some(Purpose {
            purpose: Some(P::Acceptance(true)),
        });
        let check = |postings: Vec<Posting>, released: i64| {
            let mut check = TallyCheck::default();
            let mut by_supplier = BTreeMap::new();
            let s = statement(postings, 100_000, released);
            compare_account(
                ACCOUNT,
                &t.accounts[ACCOUNT],
                &s,
                &mut check,
                &mut by_supplier,
            );
            compare_suppliers(&t, &by_supplier, &mut check.differences);
            check.differences
        };
        let funded = funding("p-f", "att-1", 100_000);
        assert_eq!(
            check(vec![funded.clone(), accepted.clone()], 100_000),
            Vec::<String>::new()
        );
        let d = check(vec![funded.clone()], 0);
        assert!(d.iter().any(|d| d.contains("no release after")), "{d:?}");
        let mut again = accepted.clone();
        again.posting_id = "p-b".into();
        let d = check(vec![funded, accepted, again], 200_000);
        assert!(d.iter().any(|d| d.contains("2 releases")), "{d:?}");
    }
}
