//! Random sequences of open, fund (card approved or declined, bank
//! transfer, Pay Later), gateway confirmations (exact, short, excess,
//! duplicate, late) and failures, signed gateway webhooks (valid credits and
//! failures, the same event replayed, forged ones: another key or a
//! tampered body, stale ones: outside the tolerance either way), release,
//! refund, freeze, unfreeze, close, payout, hold expiry and the hold
//! deadline passing, run against the Postgres implementation and a
//! reference model built from the pure domain (the in-memory `Ledger` and
//! `EscrowAccount`). After every step: both predict the same outcome, the
//! ledger sums to zero per currency, no balance is negative, every hold
//! resolved at most once and alike in both, the kept balances equal the
//! recomputation from postings (reconciliation finds nothing), and the hold
//! deadlines (paused while frozen) agree. A replayed, forged or stale
//! webhook, and a hold deadline passing, change no row of the ledger or the
//! accounts (checked on the tables themselves).
//!
//! Webhooks run what `HandleGatewayWebhook` runs after its idempotency-key
//! pipeline: the signature check and `Flows::apply_gateway_event`, both at
//! the model's clock.
//!
//! The test makes its own database (proptest drives the system from a plain
//! thread, so it brings its own runtime) and drops it at the end.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock},
};

use common::*;
use escrow::{
    app::{self, StartFunding},
    domain::{
        AccountKey, AccountKind, Action, EscrowAccount, HoldRequest, HoldStatus, Ledger,
        LedgerError, LedgerStore, Leg, NewAccount, Purpose, Settles, TransferRequest,
        account::split_refund,
        funding::{CreditOutcome, FundingMethod},
    },
    flows::{self, Flows, Settings},
    gateway::memory::InMemoryGateway,
    storage::{
        PgLedger, accounts,
        api::{self, AttemptGateway, Scheme, Terms},
        ledger,
    },
    webhook::{GatewayEvent, WebhookSecret},
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use sqlx::{Connection, PgConnection, PgPool};
use ta_proto::escrow::WebhookOutcome;
use ta_runtime::{ServiceError, money::Money};
use ta_workflow::{feed::Feed, timers::Timers};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const ACCOUNTS: usize = 2;
const SCHEDULE: [i64; 2] = [400, 600];
const HOLD_TTL_MINUTES: i64 = 60;
/// Each account's hold deadline, after opening at the start of the clock.
const HOLD_UNTIL_MINUTES: i64 = 24 * 60;
const SUPPLIER: &str = "supplier-0";
const WEBHOOK_SECRET: &str = "whsec_props_0123456789abcdef0123456789abcdef";
const FORGER_SECRET: &str = "whsec_forger_0123456789abcdef0123456789abcd";
const WEBHOOK_TOLERANCE_SECONDS: i64 = 300;

fn base() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
}

#[derive(Clone, Debug)]
enum Method {
    Card(bool),
    Bank,
    PayLater(u8),
}

/// How a webhook step delivers its event.
#[derive(Clone, Debug)]
enum Hook {
    /// A new, correctly signed credit of the attempt's payment.
    Credit,
    /// A new, correctly signed failure of the attempt's payment.
    Failure,
    /// An event delivered before, again (re-signed now, as gateways do).
    Replay(usize),
    /// A new credit signed with another key, or whose body was changed
    /// after signing.
    Forged { other_key: bool },
    /// A new credit signed `seconds` beyond the tolerance, in the past or
    /// the future.
    Stale { seconds: i64, future: bool },
}

#[derive(Clone, Debug)]
enum Step {
    Open(usize),
    Fund {
        account: usize,
        milestone: usize,
        method: Method,
    },
    Confirm {
        attempt: usize,
        credit: u8,
        delta: i64,
    },
    Fail {
        attempt: usize,
    },
    Webhook {
        attempt: usize,
        delta: i64,
        hook: Hook,
    },
    /// The account's hold deadline timer fires.
    HoldDeadline(usize),
    Advance {
        minutes: i64,
    },
    Release {
        account: usize,
        amount: Option<i64>,
        settles: Settles,
    },
    Refund {
        account: usize,
        amount: Option<i64>,
        settles: Settles,
    },
    Freeze {
        account: usize,
        claim: u8,
    },
    Unfreeze {
        account: usize,
        claim: u8,
    },
    Close(usize),
    Payout {
        amount: i64,
    },
    SettlePayout {
        payout: usize,
        paid: bool,
    },
}

/// What a step did, coarsely: both sides must agree on it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Skipped,
    Done,
    Credit(CreditOutcome),
    Failed(bool),
    /// A webhook's answer: "applied", "duplicate" or "ignored".
    Webhook(&'static str),
    /// What the hold deadline announced as still held, if anything.
    Announced(Option<i64>),
    Refused(&'static str),
}

fn refused(error: &ServiceError) -> Outcome {
    Outcome::Refused(match error {
        ServiceError::NotFound { .. } => "not found",
        ServiceError::FailedPrecondition(_) => "failed precondition",
        ServiceError::Refused { reason, .. } => reason,
        ServiceError::InvalidArgument(_) => "invalid argument",
        other => panic!("unexpected error: {other:?}"),
    })
}

fn outcome<T>(result: Result<T, ServiceError>, done: impl FnOnce(T) -> Outcome) -> Outcome {
    match result {
        Ok(value) => done(value),
        Err(error) => refused(&error),
    }
}

#[derive(Clone, Debug)]
struct Attempt {
    account: usize,
    milestone: String,
    amount: i64,
    hold: Option<uuid::Uuid>,
    pending: bool,
    succeeded_with: Option<String>,
    expires_at: OffsetDateTime,
    /// The gateway event type that reports this payment's money.
    credit_kind: &'static str,
}

/// A gateway event a webhook step sent (delivered or refused).
#[derive(Clone, Debug)]
struct SentEvent {
    attempt: usize,
    kind: &'static str,
    /// For credits.
    received: Option<i64>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    ledger: Ledger,
    accounts: Vec<Option<EscrowAccount>>,
    attempts: Vec<Attempt>,
    payouts: Vec<Uuid>,
    /// Every event a webhook step built, by index (the event's id).
    events: Vec<SentEvent>,
    /// The events escrow accepted (authenticated and applied), by index.
    delivered: Vec<usize>,
    minutes: i64,
    ids: u128,
    last: Option<Outcome>,
}

/// The `back`-th most recent of `len` attempts: gateway answers mostly
/// concern the attempts just made.
fn recent(back: usize, len: usize) -> usize {
    len - 1 - back % len
}

fn model_account_id(i: usize) -> Uuid {
    Uuid::from_u128(i as u128 + 1)
}

fn usd_money(amount: i64) -> Money {
    Money::new(amount, usd())
}

fn new_account(i: usize, contract: String, supplier: String) -> NewAccount {
    NewAccount {
        contract_id: contract,
        buyer_principal_id: format!("buyer-{i}"),
        supplier_id: supplier,
        schedule: SCHEDULE
            .iter()
            .enumerate()
            .map(|(m, a)| (format!("m{m}"), usd_money(*a), base()))
            .collect(),
        hold_until: base() + Duration::minutes(HOLD_UNTIL_MINUTES),
    }
}

/// The model's name of a credit from event `index` (its purposes).
fn model_credit(index: usize) -> String {
    format!("e{index}")
}

fn ledger_refusal(error: LedgerError) -> ServiceError {
    error.into()
}

impl Model {
    fn now(&self) -> OffsetDateTime {
        base() + Duration::minutes(self.minutes)
    }

    fn next_id(&mut self) -> Uuid {
        self.ids += 1;
        Uuid::from_u128(1_000_000 + self.ids)
    }

    fn account(&self, i: usize) -> Result<EscrowAccount, ServiceError> {
        self.accounts[i]
            .clone()
            .ok_or_else(|| ServiceError::not_found("escrow account", i))
    }

    fn held(&self, account: &EscrowAccount) -> i64 {
        self.ledger
            .balance_of(&AccountKey::escrow_held(account.id, usd()))
            .posted
    }

    fn void_attempt(&mut self, ix: usize) {
        let attempt = &mut self.attempts[ix];
        attempt.pending = false;
        if let Some(hold) = attempt.hold {
            let _ = self.ledger.void_hold_now(hold);
        }
    }

    fn fund(&mut self, i: usize, milestone: usize, method: &Method) -> Result<(), ServiceError> {
        let mut account = self.account(i)?;
        let milestone = format!("m{milestone}");
        let due = account.due_for(&milestone)?;
        if self
            .attempts
            .iter()
            .any(|a| a.account == i && a.milestone == milestone && a.pending)
        {
            return Err(ServiceError::FailedPrecondition("pending attempt".into()));
        }
        let attempt_id = self.next_id();
        let held = AccountKey::escrow_held(account.id, usd());
        let purpose = Purpose::funding(account.id, attempt_id);
        let expires_at = self.now() + Duration::minutes(HOLD_TTL_MINUTES);
        let mut attempt = Attempt {
            account: i,
            milestone: milestone.clone(),
            amount: due,
            hold: None,
            pending: false,
            succeeded_with: None,
            expires_at,
            credit_kind: match method {
                Method::Card(_) => "payment.succeeded",
                Method::Bank => "bank_transfer.credited",
                Method::PayLater(_) => "pay_later.disbursed",
            },
        };
        let source = match method {
            Method::Card(true) => {
                self.ledger
                    .transfer_now(&TransferRequest {
                        id: Uuid::now_v7(),
                        purpose,
                        escrow_account: Some(account.id),
                        legs: vec![Leg {
                            debit: AccountKey::gateway_clearing(usd()),
                            credit: held,
                            amount_minor: due,
                        }],
                    })
                    .map_err(ledger_refusal)?;
                account.record_funding(&milestone, due)?;
                self.accounts[i] = Some(account);
                attempt.succeeded_with = Some(String::new());
                self.attempts.push(attempt);
                return Ok(());
            }
            Method::Card(false) => {
                self.attempts.push(attempt);
                return Ok(());
            }
            Method::Bank => AccountKey::gateway_clearing(usd()),
            Method::PayLater(p) => AccountKey::financing_partner(&format!("partner-{p}"), usd()),
        };
        let hold_id = self.next_id();
        self.ledger
            .hold_now(&HoldRequest {
                id: hold_id,
                purpose,
                escrow_account: Some(account.id),
                debit: source,
                credit: held,
                amount_minor: due,
                expires_at,
            })
            .map_err(ledger_refusal)?;
        attempt.hold = Some(hold_id);
        attempt.pending = true;
        self.attempts.push(attempt);
        Ok(())
    }

    fn park(&mut self, ix: usize, credit: &str, amount: i64) -> bool {
        let account = self.accounts[self.attempts[ix].account]
            .clone()
            .map(|a| a.id)
            .unwrap_or_default();
        let request = TransferRequest {
            id: Uuid::now_v7(),
            purpose: Purpose::unmatched_credit(account, Uuid::from_u128(ix as u128), credit),
            escrow_account: Some(account),
            legs: vec![Leg {
                debit: AccountKey::gateway_clearing(usd()),
                credit: AccountKey::suspense(usd()),
                amount_minor: amount,
            }],
        };
        self.ledger.transfer_now(&request).is_ok()
    }

    fn confirm(
        &mut self,
        ix: usize,
        credit: &str,
        received: i64,
    ) -> Result<CreditOutcome, ServiceError> {
        let now = self.now();
        if self.attempts[ix].pending && now >= self.attempts[ix].expires_at {
            self.void_attempt(ix);
        }
        let attempt = self.attempts[ix].clone();
        if attempt.pending {
            let take = received.min(attempt.amount);
            let hold = attempt.hold.unwrap_or_default();
            self.ledger
                .post_hold_now(hold, Some(take), now)
                .map_err(ledger_refusal)?;
            let mut account = self.account(attempt.account)?;
            account.record_funding(&attempt.milestone, take)?;
            self.accounts[attempt.account] = Some(account);
            let a = &mut self.attempts[ix];
            a.pending = false;
            a.succeeded_with = Some(credit.to_owned());
            let excess = received - take;
            if excess > 0 {
                self.park(ix, credit, excess);
            }
            return Ok(CreditOutcome::Applied {
                posted: take,
                to_suspense: excess,
            });
        }
        if attempt.succeeded_with.as_deref() == Some(credit) {
            return Ok(CreditOutcome::Duplicate);
        }
        Ok(if self.park(ix, credit, received) {
            CreditOutcome::Suspended {
                to_suspense: received,
            }
        } else {
            CreditOutcome::Duplicate
        })
    }

    /// A credit delivered by webhook: like [`Self::confirm`], and money
    /// parked in suspense goes back to the payer at once.
    fn webhook_credit(
        &mut self,
        ix: usize,
        credit: &str,
        received: i64,
    ) -> Result<&'static str, ServiceError> {
        let outcome = self.confirm(ix, credit, received)?;
        let parked = match outcome {
            CreditOutcome::Applied { to_suspense, .. }
            | CreditOutcome::Suspended { to_suspense } => to_suspense,
            CreditOutcome::Duplicate => 0,
        };
        if parked > 0 {
            let account = self.accounts[self.attempts[ix].account]
                .clone()
                .map(|a| a.id)
                .unwrap_or_default();
            self.ledger
                .transfer_now(&TransferRequest {
                    id: Uuid::now_v7(),
                    purpose: Purpose::suspense_refund(account, Uuid::from_u128(ix as u128), credit),
                    escrow_account: Some(account),
                    legs: vec![Leg {
                        debit: AccountKey::suspense(usd()),
                        credit: AccountKey::gateway_clearing(usd()),
                        amount_minor: parked,
                    }],
                })
                .map_err(ledger_refusal)?;
        }
        Ok(if outcome == CreditOutcome::Duplicate {
            "duplicate"
        } else {
            "applied"
        })
    }

    fn webhook(&mut self, attempt: usize, delta: i64, hook: &Hook) -> Outcome {
        if self.attempts.is_empty() {
            return Outcome::Skipped;
        }
        let ix = recent(attempt, self.attempts.len());
        let index = self.events.len();
        let credit = SentEvent {
            attempt: ix,
            kind: self.attempts[ix].credit_kind,
            received: Some((self.attempts[ix].amount + delta).max(1)),
        };
        match hook {
            Hook::Replay(_) if self.delivered.is_empty() => Outcome::Skipped,
            // Seen before: nothing changes.
            Hook::Replay(_) => Outcome::Webhook("duplicate"),
            Hook::Forged { .. } | Hook::Stale { .. } => {
                self.events.push(credit);
                Outcome::Refused("unauthenticated")
            }
            Hook::Credit => {
                let received = credit.received.unwrap_or(1);
                self.events.push(credit);
                match self.webhook_credit(ix, &model_credit(index), received) {
                    Ok(answer) => {
                        self.delivered.push(index);
                        Outcome::Webhook(answer)
                    }
                    Err(error) => refused(&error),
                }
            }
            Hook::Failure => {
                self.events.push(SentEvent {
                    attempt: ix,
                    kind: "payment.failed",
                    received: None,
                });
                self.delivered.push(index);
                let was = self.attempts[ix].pending;
                if was {
                    self.void_attempt(ix);
                }
                Outcome::Webhook(if was { "applied" } else { "duplicate" })
            }
        }
    }

    fn outflow(
        &mut self,
        i: usize,
        action: Action,
        amount: Option<i64>,
        settles: &Settles,
    ) -> Result<(), ServiceError> {
        let mut account = self.account(i)?;
        let purpose = account.authorize_outflow(action, settles)?;
        let amount = match amount {
            Some(a) => a,
            None => match self.held(&account) {
                0 => return Err(ServiceError::FailedPrecondition("nothing held".into())),
                all => all,
            },
        };
        let held = AccountKey::escrow_held(account.id, usd());
        let legs = if action == Action::Release {
            vec![Leg {
                debit: held,
                credit: AccountKey::supplier_payable(SUPPLIER, usd()),
                amount_minor: amount,
            }]
        } else {
            let outstanding = self.loan_outstanding(account.id);
            let (partners, buyer) = split_refund(amount, &outstanding);
            let mut legs: Vec<Leg> = partners
                .into_iter()
                .map(|(p, share)| Leg {
                    debit: held.clone(),
                    credit: p,
                    amount_minor: share,
                })
                .collect();
            if buyer > 0 || legs.is_empty() {
                legs.push(Leg {
                    debit: held.clone(),
                    credit: AccountKey::buyer_refund_payable(account.id, usd()),
                    amount_minor: buyer,
                });
            }
            legs
        };
        self.ledger
            .transfer_now(&TransferRequest {
                id: Uuid::now_v7(),
                purpose,
                escrow_account: Some(account.id),
                legs,
            })
            .map_err(ledger_refusal)?;
        self.accounts[i] = Some(account);
        Ok(())
    }

    fn loan_outstanding(&self, escrow: Uuid) -> Vec<(AccountKey, i64)> {
        let mut by_partner: BTreeMap<String, (AccountKey, i64)> = BTreeMap::new();
        for p in self
            .ledger
            .postings()
            .iter()
            .filter(|p| p.escrow_account == Some(escrow))
        {
            for (key, sign) in [(&p.debit, 1), (&p.credit, -1)] {
                if key.kind == AccountKind::FinancingPartner {
                    by_partner
                        .entry(key.owner.clone())
                        .or_insert((key.clone(), 0))
                        .1 += sign * p.amount_minor;
                }
            }
        }
        by_partner.into_values().collect()
    }

    fn step(&mut self, step: &Step) -> Outcome {
        let now = self.now();
        match step {
            Step::Open(i) => {
                if self.accounts[*i].is_none() {
                    let account = EscrowAccount::open(
                        model_account_id(*i),
                        new_account(*i, format!("c{i}"), SUPPLIER.into()),
                        now,
                    );
                    self.accounts[*i] = account.ok();
                }
                Outcome::Done
            }
            Step::Fund {
                account,
                milestone,
                method,
            } => outcome(self.fund(*account, *milestone, method), |()| Outcome::Done),
            Step::Confirm {
                attempt,
                credit,
                delta,
            } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                let ix = recent(*attempt, self.attempts.len());
                let received = (self.attempts[ix].amount + delta).max(1);
                outcome(
                    self.confirm(ix, &format!("k{credit}"), received),
                    Outcome::Credit,
                )
            }
            Step::Fail { attempt } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                let ix = recent(*attempt, self.attempts.len());
                let was = self.attempts[ix].pending;
                if was {
                    self.void_attempt(ix);
                }
                Outcome::Failed(was)
            }
            Step::Webhook {
                attempt,
                delta,
                hook,
            } => self.webhook(*attempt, *delta, hook),
            Step::HoldDeadline(i) => match self.account(*i) {
                Err(error) => refused(&error),
                Ok(a) => {
                    let held = self.held(&a);
                    Outcome::Announced((a.hold_deadline_runs() && held > 0).then_some(held))
                }
            },
            Step::Advance { minutes } => {
                self.minutes += minutes;
                let now = self.now();
                self.ledger.expire_now(now);
                for a in &mut self.attempts {
                    if a.pending && a.expires_at <= now {
                        a.pending = false;
                    }
                }
                Outcome::Done
            }
            Step::Release {
                account,
                amount,
                settles,
            } => outcome(
                self.outflow(*account, Action::Release, *amount, settles),
                |()| Outcome::Done,
            ),
            Step::Refund {
                account,
                amount,
                settles,
            } => outcome(
                self.outflow(*account, Action::Refund, *amount, settles),
                |()| Outcome::Done,
            ),
            Step::Freeze { account, claim } | Step::Unfreeze { account, claim } => {
                let freeze = matches!(step, Step::Freeze { .. });
                let result = self.account(*account).and_then(|mut a| {
                    let claim = format!("c{claim}");
                    if freeze {
                        a.freeze(&claim, now)?
                    } else {
                        a.unfreeze(&claim, now)?
                    };
                    self.accounts[*account] = Some(a);
                    Ok(())
                });
                outcome(result, |()| Outcome::Done)
            }
            Step::Close(i) => {
                let result = self.account(*i).and_then(|mut a| {
                    a.close(self.held(&a), now)?;
                    self.accounts[*i] = Some(a);
                    Ok(())
                });
                if result.is_ok() {
                    for ix in 0..self.attempts.len() {
                        if self.attempts[ix].account == *i && self.attempts[ix].pending {
                            self.void_attempt(ix);
                        }
                    }
                }
                outcome(result, |()| Outcome::Done)
            }
            Step::Payout { amount } => {
                let id = self.next_id();
                let result = self.ledger.hold_now(&HoldRequest {
                    id,
                    purpose: Purpose::payout(SUPPLIER, id),
                    escrow_account: None,
                    debit: AccountKey::supplier_payable(SUPPLIER, usd()),
                    credit: AccountKey::gateway_clearing(usd()),
                    amount_minor: *amount,
                    expires_at: now + Duration::minutes(HOLD_TTL_MINUTES),
                });
                if result.is_ok() {
                    self.payouts.push(id);
                }
                outcome(result.map_err(ledger_refusal), |_| Outcome::Done)
            }
            Step::SettlePayout { payout, paid } => {
                if self.payouts.is_empty() {
                    return Outcome::Skipped;
                }
                let id = self.payouts[payout % self.payouts.len()];
                let result = if *paid {
                    self.ledger.post_hold_now(id, None, now).map(|_| ())
                } else {
                    self.ledger.void_hold_now(id).map(|_| ())
                };
                outcome(result.map_err(ledger_refusal), |()| Outcome::Done)
            }
        }
    }
}

struct Reference;

fn settles(release: bool) -> impl Strategy<Value = Settles> {
    let claim = (0u8..3).prop_map(|c| Settles::Claim(format!("c{c}")));
    if release {
        prop_oneof![
            (0u8..3).prop_map(|m| Settles::Milestone(format!("d{m}"))),
            Just(Settles::Acceptance),
            claim
        ]
        .boxed()
    } else {
        prop_oneof![claim, Just(Settles::Cancellation)].boxed()
    }
}

fn hook() -> impl Strategy<Value = Hook> {
    prop_oneof![
        4 => Just(Hook::Credit),
        1 => Just(Hook::Failure),
        2 => (0usize..4).prop_map(Hook::Replay),
        1 => any::<bool>().prop_map(|other_key| Hook::Forged { other_key }),
        1 => (1i64..10_000, any::<bool>()).prop_map(|(seconds, future)| Hook::Stale { seconds, future }),
    ]
}

fn amount() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![Just(None), (1i64..700).prop_map(Some)]
}

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        // Both accounts start open, so that most steps have money to move;
        // `Open` stays a step (idempotent per contract).
        let mut model = Model {
            accounts: vec![None; ACCOUNTS],
            ..Model::default()
        };
        for i in 0..ACCOUNTS {
            model.step(&Step::Open(i));
        }
        Just(model).boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Step> {
        let account = 0..ACCOUNTS;
        let method = prop_oneof![
            any::<bool>().prop_map(Method::Card),
            Just(Method::Bank),
            (0u8..2).prop_map(Method::PayLater),
        ];
        prop_oneof![
            2 => account.clone().prop_map(Step::Open),
            6 => (account.clone(), 0..SCHEDULE.len(), method)
                .prop_map(|(account, milestone, method)| Step::Fund { account, milestone, method }),
            5 => (0usize..4, 0u8..3, -60i64..60)
                .prop_map(|(attempt, credit, delta)| Step::Confirm { attempt, credit, delta }),
            1 => (0usize..4).prop_map(|attempt| Step::Fail { attempt }),
            5 => (0usize..4, -60i64..60, hook())
                .prop_map(|(attempt, delta, hook)| Step::Webhook { attempt, delta, hook }),
            1 => account.clone().prop_map(Step::HoldDeadline),
            2 => (1i64..90).prop_map(|minutes| Step::Advance { minutes }),
            4 => (account.clone(), amount(), settles(true))
                .prop_map(|(account, amount, settles)| Step::Release { account, amount, settles }),
            3 => (account.clone(), amount(), settles(false))
                .prop_map(|(account, amount, settles)| Step::Refund { account, amount, settles }),
            1 => (account.clone(), 0u8..3).prop_map(|(account, claim)| Step::Freeze { account, claim }),
            2 => (account.clone(), 0u8..3).prop_map(|(account, claim)| Step::Unfreeze { account, claim }),
            1 => account.prop_map(Step::Close),
            3 => (1i64..500).prop_map(|amount| Step::Payout { amount }),
            2 => (0usize..4, any::<bool>()).prop_map(|(payout, paid)| Step::SettlePayout { payout, paid }),
        ]
        .boxed()
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        let outcome = state.step(step);
        state.last = Some(outcome);
        state
    }
}

/// The database all cases share; each case uses accounts, suppliers and
/// partners of its own and compares the platform's accounts by difference.
struct Shared {
    runtime: tokio::runtime::Runtime,
    pool: PgPool,
    /// What the API's webhooks and timers run, paying through a sandbox.
    flows: Flows,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

struct System {
    run: Uuid,
    accounts: Vec<Option<Uuid>>,
    attempts: Vec<(Uuid, Option<Uuid>)>,
    payouts: Vec<Uuid>,
    platform_start: HashMap<AccountKind, i64>,
}

fn shared() -> &'static Shared {
    SHARED.get().expect("the test sets up the database first")
}

fn block<T>(work: impl Future<Output = T>) -> T {
    shared().runtime.block_on(work)
}

fn platform(kind: AccountKind) -> AccountKey {
    AccountKey::new(kind, escrow::domain::ledger::PLATFORM, usd())
}

impl System {
    fn supplier(&self) -> String {
        format!("{SUPPLIER}-{}", self.run)
    }

    fn partner(&self, p: u8) -> String {
        format!("partner-{p}-{}", self.run)
    }

    fn account(&self, i: usize) -> Uuid {
        // A random id never opened: the use case answers NOT_FOUND, as the
        // model does.
        self.accounts[i].unwrap_or_else(Uuid::now_v7)
    }

    /// The gateway's reference of attempt `ix`.
    fn reference(&self, ix: usize) -> String {
        format!("gw-{}", self.attempts[ix].0)
    }

    /// Event `index` as the gateway sends it (the same bytes every time).
    fn payload(&self, index: usize, sent: &SentEvent) -> Vec<u8> {
        let mut data = serde_json::json!({ "reference": self.reference(sent.attempt) });
        match sent.received {
            Some(amount) => {
                data["amount_minor"] = amount.into();
                data["currency_code"] = "USD".into();
            }
            None => data["failure_code"] = "rejected".into(),
        }
        serde_json::to_vec(&serde_json::json!({
            "id": format!("evt-{}-{index}", self.run),
            "type": sent.kind,
            "created": 1_900_000_000,
            "data": data,
        }))
        .unwrap()
    }

    fn webhook(&self, model: &Model, hook: &Hook) -> Outcome {
        if self.attempts.is_empty() {
            return Outcome::Skipped;
        }
        let pool = &shared().pool;
        let flows = &shared().flows;
        let now = model.now();
        let t = now.unix_timestamp();
        let index = match hook {
            Hook::Replay(_) if model.delivered.is_empty() => return Outcome::Skipped,
            Hook::Replay(back) => model.delivered[recent(*back, model.delivered.len())],
            _ => model.events.len() - 1,
        };
        let sent = &model.events[index];
        let mut payload = self.payload(index, sent);
        let secret = WebhookSecret::new(WEBHOOK_SECRET).unwrap();
        let signature = match hook {
            Hook::Forged { other_key: true } => {
                WebhookSecret::new(FORGER_SECRET).unwrap().sign(t, &payload)
            }
            Hook::Forged { other_key: false } => {
                let signature = secret.sign(t, &payload);
                let more = SentEvent {
                    received: sent.received.map(|r| r * 2 + 1),
                    ..sent.clone()
                };
                payload = self.payload(index, &more);
                signature
            }
            Hook::Stale { seconds, future } => {
                let off = WEBHOOK_TOLERANCE_SECONDS + seconds;
                secret.sign(if *future { t + off } else { t - off }, &payload)
            }
            Hook::Credit | Hook::Failure | Hook::Replay(_) => secret.sign(t, &payload),
        };
        let quiet = !matches!(hook, Hook::Credit | Hook::Failure);
        let before = quiet.then(|| block(digest(pool)));
        let got = match flows.authenticate_webhook(&signature, &payload, t) {
            Err(_) => Outcome::Refused("unauthenticated"),
            Ok(()) => {
                let event = GatewayEvent::parse(&payload).unwrap();
                let result = block(in_tx(pool, async |c| {
                    flows.apply_gateway_event(c, &event, now).await
                }));
                outcome(result, |answer| {
                    Outcome::Webhook(match WebhookOutcome::try_from(answer.outcome) {
                        Ok(WebhookOutcome::Applied) => "applied",
                        Ok(WebhookOutcome::Duplicate) => "duplicate",
                        _ => "ignored",
                    })
                })
            }
        };
        if let Some(before) = before {
            assert_eq!(block(digest(pool)), before, "{hook:?} changed a row");
        }
        got
    }

    fn run_step(&mut self, model: &Model, step: &Step) -> Outcome {
        let pool = &shared().pool;
        let now = model.now();
        match step {
            Step::Open(i) => {
                if self.accounts[*i].is_none() {
                    let new =
                        new_account(*i, format!("contract-{}-{i}", self.run), self.supplier());
                    // With the terms the API records beside it, which the
                    // feed's account view reads.
                    let terms = Terms {
                        scheme: Scheme::Direct,
                        financing_partner_id: String::new(),
                        supplier_owner_principal_id: "owner".into(),
                        contract_version: 1,
                    };
                    let opened = block(in_tx(pool, async |c| {
                        let opened = app::open_account(c, new, now).await?;
                        api::insert_terms(c, opened.id, &terms).await?;
                        Ok(opened)
                    }))
                    .unwrap();
                    self.accounts[*i] = Some(opened.id);
                }
                Outcome::Done
            }
            Step::Fund {
                account,
                milestone,
                method,
            } => {
                let id = self.account(*account);
                let milestone_id = format!("m{milestone}");
                let due = block(async {
                    let mut c = pool.acquire().await.unwrap();
                    accounts::get_account(&mut c, id)
                        .await
                        .ok()
                        .and_then(|a| a.payment(&milestone_id).ok().map(|p| p.remaining_minor()))
                });
                let method = match method {
                    Method::Card(approved) => FundingMethod::Card {
                        approved: *approved,
                    },
                    Method::Bank => FundingMethod::BankTransfer,
                    Method::PayLater(p) => FundingMethod::PayLater {
                        partner_id: self.partner(*p),
                    },
                };
                let command = StartFunding {
                    account_id: id,
                    milestone_id,
                    attempt_id: Uuid::now_v7(),
                    method,
                    amount_minor: due.unwrap_or(1).max(1),
                    expires_at: now + Duration::minutes(HOLD_TTL_MINUTES),
                };
                // With the gateway's reference the API records, which its
                // webhooks name.
                let gateway = AttemptGateway {
                    reference: format!("gw-{}", command.attempt_id),
                    ..Default::default()
                };
                let result = block(in_tx(pool, async |c| {
                    let attempt = app::start_funding(c, &command, now).await?;
                    api::insert_attempt_gateway(c, attempt.id, &gateway).await?;
                    Ok(attempt)
                }));
                outcome(result, |attempt| {
                    self.attempts.push((attempt.id, attempt.hold_id));
                    Outcome::Done
                })
            }
            Step::Confirm {
                attempt,
                credit,
                delta,
            } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                let ix = recent(*attempt, self.attempts.len());
                let received = (model.attempts[ix].amount + delta).max(1);
                let id = self.attempts[ix].0;
                let result = block(in_tx(pool, async |c| {
                    app::confirm_funding(c, id, &format!("k{credit}"), received, now).await
                }));
                outcome(result, Outcome::Credit)
            }
            Step::Fail { attempt } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                let id = self.attempts[recent(*attempt, self.attempts.len())].0;
                let result = block(in_tx(pool, async |c| {
                    app::fail_funding(c, id, "rejected", now).await
                }));
                outcome(result, Outcome::Failed)
            }
            Step::Webhook { hook, .. } => self.webhook(model, hook),
            Step::HoldDeadline(i) => {
                let id = self.account(*i);
                let flows = &shared().flows;
                let before = block(digest(pool));
                let got = outcome(
                    block(in_tx(pool, async |c| flows.fire_hold_deadline(c, id).await)),
                    Outcome::Announced,
                );
                let after = block(digest(pool));
                // Only the feed may have grown: no money, account or timer moved.
                assert_eq!(
                    after[..after.len() - 1],
                    before[..before.len() - 1],
                    "the hold deadline moved something"
                );
                got
            }
            Step::Advance { .. } => {
                // Other cases' leftovers may be due too: expire until none is.
                block(async {
                    while !in_tx(pool, async |c| app::expire_due(c, now).await)
                        .await
                        .unwrap()
                        .is_empty()
                    {}
                });
                Outcome::Done
            }
            Step::Release {
                account,
                amount,
                settles,
            } => {
                let id = self.account(*account);
                outcome(
                    block(in_tx(pool, async |c| {
                        app::release(c, id, *amount, settles, now).await
                    })),
                    |_| Outcome::Done,
                )
            }
            Step::Refund {
                account,
                amount,
                settles,
            } => {
                let id = self.account(*account);
                outcome(
                    block(in_tx(pool, async |c| {
                        app::refund(c, id, *amount, settles, now).await
                    })),
                    |_| Outcome::Done,
                )
            }
            Step::Freeze { account, claim } => {
                let id = self.account(*account);
                let claim = format!("c{claim}");
                outcome(
                    block(in_tx(pool, async |c| {
                        app::freeze(c, id, &claim, "claim filed", now).await
                    })),
                    |_| Outcome::Done,
                )
            }
            Step::Unfreeze { account, claim } => {
                let id = self.account(*account);
                let claim = format!("c{claim}");
                outcome(
                    block(in_tx(pool, async |c| {
                        app::unfreeze(c, id, &claim, now).await
                    })),
                    |_| Outcome::Done,
                )
            }
            Step::Close(i) => {
                let id = self.account(*i);
                outcome(
                    block(in_tx(pool, async |c| app::close(c, id, now).await)),
                    |_| Outcome::Done,
                )
            }
            Step::Payout { amount } => {
                let supplier = self.supplier();
                let expires = now + Duration::minutes(HOLD_TTL_MINUTES);
                let result = block(in_tx(pool, async |c| {
                    app::start_payout(c, &supplier, usd(), Uuid::now_v7(), *amount, expires).await
                }));
                outcome(result, |hold| {
                    self.payouts.push(hold.id);
                    Outcome::Done
                })
            }
            Step::SettlePayout { payout, paid } => {
                if self.payouts.is_empty() {
                    return Outcome::Skipped;
                }
                let id = self.payouts[payout % self.payouts.len()];
                outcome(
                    block(in_tx(pool, async |c| {
                        app::settle_payout(c, id, *paid, now).await
                    })),
                    |()| Outcome::Done,
                )
            }
        }
    }

    fn compare(&self, model: &Model) {
        let found = model.ledger.discrepancies();
        assert!(
            found.is_empty(),
            "the reference ledger is unsound: {found:#?}"
        );
        let pool = &shared().pool;
        block(async {
            let mut l = PgLedger::new(pool.clone());
            assert_sound(&mut l).await;
            for (i, real) in self.accounts.iter().enumerate() {
                let (Some(real), Some(expected)) = (real, &model.accounts[i]) else {
                    assert_eq!(
                        real.is_some(),
                        model.accounts[i].is_some(),
                        "account {i} opened on one side only"
                    );
                    continue;
                };
                let mut c = pool.acquire().await.unwrap();
                let account = accounts::get_account(&mut c, *real).await.unwrap();
                assert_eq!(account.status, expected.status, "account {i}");
                assert_eq!(account.freezes, expected.freezes, "account {i}");
                assert_eq!(
                    (account.hold_until, account.hold_paused_at),
                    (expected.hold_until, expected.hold_paused_at),
                    "account {i}'s hold deadline"
                );
                let funded: Vec<i64> = account.schedule.iter().map(|p| p.funded_minor).collect();
                let model_funded: Vec<i64> =
                    expected.schedule.iter().map(|p| p.funded_minor).collect();
                assert_eq!(funded, model_funded, "account {i}");
                for (mine, theirs) in [
                    (
                        AccountKey::escrow_held(*real, usd()),
                        AccountKey::escrow_held(expected.id, usd()),
                    ),
                    (
                        AccountKey::buyer_refund_payable(*real, usd()),
                        AccountKey::buyer_refund_payable(expected.id, usd()),
                    ),
                ] {
                    assert_eq!(
                        l.balance(&mine).await.unwrap(),
                        model.ledger.balance_of(&theirs),
                        "{theirs}"
                    );
                }
            }
            let pairs = [
                (
                    AccountKey::supplier_payable(&self.supplier(), usd()),
                    AccountKey::supplier_payable(SUPPLIER, usd()),
                ),
                (
                    AccountKey::financing_partner(&self.partner(0), usd()),
                    AccountKey::financing_partner("partner-0", usd()),
                ),
                (
                    AccountKey::financing_partner(&self.partner(1), usd()),
                    AccountKey::financing_partner("partner-1", usd()),
                ),
            ];
            for (mine, theirs) in pairs {
                assert_eq!(
                    l.balance(&mine).await.unwrap(),
                    model.ledger.balance_of(&theirs),
                    "{theirs}"
                );
            }
            for (kind, start) in &self.platform_start {
                let now = l.balance(&platform(*kind)).await.unwrap().posted;
                assert_eq!(
                    now - start,
                    model.ledger.balance_of(&platform(*kind)).posted,
                    "{kind:?}"
                );
            }
            let mut c = pool.acquire().await.unwrap();
            for (ix, (_, hold)) in self.attempts.iter().enumerate() {
                let expected = model.attempts[ix].hold.map(|h| model_hold_status(model, h));
                let actual = match hold {
                    Some(h) => Some(ledger::get_hold(&mut c, *h).await.unwrap().status),
                    None => None,
                };
                assert_eq!(actual, expected, "attempt {ix}'s hold");
            }
            for (ix, hold) in self.payouts.iter().enumerate() {
                let actual = ledger::get_hold(&mut c, *hold).await.unwrap().status;
                assert_eq!(
                    actual,
                    model_hold_status(model, model.payouts[ix]),
                    "payout {ix}"
                );
            }
        });
    }
}

fn model_hold_status(model: &Model, hold: Uuid) -> HoldStatus {
    model
        .ledger
        .holds()
        .find(|h| h.id == hold)
        .map(|h| h.status)
        .unwrap_or(HoldStatus::Pending)
}

/// How often each kind of step did something, over the whole run: the
/// test must not pass by refusing everything.
static SEEN: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());

fn count(step: &Step, outcome: &Outcome) {
    let kind = match (step, outcome) {
        (
            Step::Fund {
                method: Method::Card(true),
                ..
            },
            Outcome::Done,
        ) => "card funded",
        (
            Step::Fund {
                method: Method::Bank,
                ..
            },
            Outcome::Done,
        ) => "bank hold placed",
        (
            Step::Fund {
                method: Method::PayLater(_),
                ..
            },
            Outcome::Done,
        ) => "pay later hold placed",
        (_, Outcome::Credit(CreditOutcome::Applied { .. })) => "credit applied",
        (_, Outcome::Credit(CreditOutcome::Suspended { .. })) => "credit suspended",
        (_, Outcome::Credit(CreditOutcome::Duplicate)) => "credit duplicate",
        (
            Step::Webhook {
                hook: Hook::Credit, ..
            },
            Outcome::Webhook("applied"),
        ) => "webhook credit applied",
        (
            Step::Webhook {
                hook: Hook::Failure,
                ..
            },
            Outcome::Webhook("applied"),
        ) => "webhook failure applied",
        (
            Step::Webhook {
                hook: Hook::Replay(_),
                ..
            },
            Outcome::Webhook("duplicate"),
        ) => "webhook replayed",
        (
            Step::Webhook {
                hook: Hook::Forged { .. },
                ..
            },
            Outcome::Refused(_),
        ) => "webhook forged",
        (
            Step::Webhook {
                hook: Hook::Stale { .. },
                ..
            },
            Outcome::Refused(_),
        ) => "webhook stale",
        (Step::HoldDeadline(_), Outcome::Announced(Some(_))) => "hold deadline passed",
        (Step::Fail { .. }, Outcome::Failed(true)) => "attempt failed",
        (Step::Release { .. }, Outcome::Done) => "released",
        (Step::Refund { .. }, Outcome::Done) => "refunded",
        (Step::Freeze { .. }, Outcome::Done) => "frozen",
        (Step::Close(_), Outcome::Done) => "closed",
        (Step::Payout { .. }, Outcome::Done) => "payout started",
        (Step::SettlePayout { .. }, Outcome::Done) => "payout settled",
        (_, Outcome::Refused(_)) => "refused",
        _ => return,
    };
    if let Ok(mut seen) = SEEN.lock() {
        *seen.entry(kind).or_default() += 1;
    }
}

struct EscrowTest;

impl StateMachineTest for EscrowTest {
    type SystemUnderTest = System;
    type Reference = Reference;

    fn init_test(model: &Model) -> System {
        let pool = &shared().pool;
        let platform_start = block(async {
            let mut l = PgLedger::new(pool.clone());
            let mut start = HashMap::new();
            for kind in [AccountKind::GatewayClearing, AccountKind::Suspense] {
                start.insert(kind, l.balance(&platform(kind)).await.unwrap().posted);
            }
            start
        });
        let mut system = System {
            run: Uuid::now_v7(),
            accounts: vec![None; ACCOUNTS],
            attempts: Vec::new(),
            payouts: Vec::new(),
            platform_start,
        };
        for (i, account) in model.accounts.iter().enumerate() {
            if account.is_some() {
                system.run_step(model, &Step::Open(i));
            }
        }
        system
    }

    fn apply(mut system: System, model: &Model, step: Step) -> System {
        // `model` is the state after the step; only Advance moves its clock,
        // and the expiry it runs uses the new time.
        let got = system.run_step(model, &step);
        assert_eq!(Some(&got), model.last.as_ref(), "{step:?}");
        count(&step, &got);
        system
    }

    fn check_invariants(system: &System, model: &Model) {
        system.compare(model);
    }
}

async fn create_database() -> (PgPool, String, String) {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/dev-postgres.sh)");
    let name = format!("escrow_props_{}", Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(url.clone());
    let pool = PgPool::connect(&format!("{base}/{name}")).await.unwrap();
    escrow::storage::MIGRATOR.run(&pool).await.unwrap();
    // The feed and timers the webhooks and the hold deadline write to.
    ta_workflow::install(&pool, flows::schema()).await.unwrap();
    (pool, name, url)
}

fn flows() -> Flows {
    let days = |d: u64| std::time::Duration::from_secs(d * 86_400);
    Flows {
        gateway: Arc::new(InMemoryGateway::new()),
        feed: Feed::new(flows::schema(), flows::FEED),
        timers: Timers::new(flows::schema()),
        settings: Settings {
            webhook_secret: WebhookSecret::new(WEBHOOK_SECRET).unwrap(),
            webhook_tolerance: std::time::Duration::from_secs(
                WEBHOOK_TOLERANCE_SECONDS.unsigned_abs(),
            ),
            bank_transfer_expiry: days(7),
            pay_later_expiry: days(2),
            payout_interval: days(1),
            payout_expiry: days(3),
        },
    }
}

/// The escrow tables a quiet step must leave as they were, each as a row
/// count and a digest of its rows; the feed last.
const WATCHED: [&str; 12] = [
    "escrow_accounts",
    "scheduled_payments",
    "freezes",
    "funding_attempts",
    "ledger_accounts",
    "transfers",
    "holds",
    "postings",
    "balance_deltas",
    "gateway_events",
    "workflow_timers",
    "workflow_feed_events",
];

async fn digest(pool: &PgPool) -> Vec<(i64, String)> {
    let mut tables = Vec::new();
    for table in WATCHED {
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') \
             FROM escrow.{table} t"
        );
        tables.push(
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
                .unwrap(),
        );
    }
    tables
}

/// Sequences from this seed reach every kind of outcome.
const SEED: u64 = 1;

#[test]
fn escrow_follows_its_reference_model() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (pool, name, url) = runtime.block_on(create_database());
    let flows = flows();
    assert!(
        SHARED
            .set(Shared {
                runtime,
                pool,
                flows
            })
            .is_ok()
    );
    // A fixed seed (unless PROPTEST_RNG_SEED picks another), so the check
    // below that every kind of outcome happened cannot fail by chance; run
    // with PROPTEST_RNG_SEED=<n> to explore other sequences.
    let defaults = Config::default();
    let config = Config {
        cases: 64,
        failure_persistence: None,
        rng_seed: match defaults.rng_seed {
            proptest::test_runner::RngSeed::Random => proptest::test_runner::RngSeed::Fixed(SEED),
            chosen => chosen,
        },
        ..defaults
    };
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(
        &Reference::sequential_strategy(1..40),
        |(initial, steps, seen)| {
            EscrowTest::test_sequential(config.clone(), initial, steps, seen);
            Ok(())
        },
    );
    block(async {
        shared().pool.close().await;
        let mut admin = PgConnection::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let seen = SEEN.lock().map(|s| s.clone()).unwrap_or_default();
    eprintln!("steps by outcome: {seen:?}");
    for kind in [
        "card funded",
        "bank hold placed",
        "pay later hold placed",
        "credit applied",
        "credit suspended",
        "credit duplicate",
        "attempt failed",
        "released",
        "refunded",
        "frozen",
        "closed",
        "payout started",
        "payout settled",
        "webhook credit applied",
        "webhook failure applied",
        "webhook replayed",
        "webhook forged",
        "webhook stale",
        "hold deadline passed",
        "refused",
    ] {
        assert!(
            seen.get(kind).is_some_and(|n| *n > 0),
            "no step ended as `{kind}`: {seen:?}"
        );
    }
}
