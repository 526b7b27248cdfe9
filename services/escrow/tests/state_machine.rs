//! Random sequences of what production does to escrow, driven through the
//! paths production drives: FundEscrow (card approved, declined, refused by
//! the gateway before it acted, or charged with its answer lost; bank
//! transfer; Pay Later) and its retries under the same key, the gateway
//! worker asking the gateway about an unanswered attempt, attempt expiries
//! and hold deadlines by their timers' handlers, the gateway's signed
//! webhooks through HandleGatewayWebhook (credits exact, short or beyond
//! what is due, failures, routine card confirmations, redeliveries, forged,
//! stale, malformed ones and ones naming a payment escrow does not know yet),
//! releases, refunds, claim settlements, freezes, closing, payout runs (the
//! RPC and the payout timer's, which also pays buyers back against their
//! payments) and the gateway's reports on each transfer. All over the
//! in-process gRPC API, with the in-memory gateway.
//!
//! A reference model built from the pure domain (the in-memory `Ledger` and
//! `EscrowAccount`) predicts each step: an intent is recorded (with its
//! hold) before the gateway is called; a card attempt holds, then posts or
//! voids; a credit posts what the payment still needs and parks the rest in
//! suspense, sent back as a `suspense_refund` transfer against the payment
//! that brought it; a credit for an attempt that ended goes the same way;
//! an unknown reference is answered RETRY_LATER and recorded nowhere.
//! After every step: both predict the same outcome, the ledger sums to zero
//! per currency, no bounded balance is negative, every hold resolved at most
//! once and alike in both, balances, attempts and transfers agree, the
//! kept balances equal the recomputation from postings, and the gateway
//! charged exactly the cards the model says. A refused, forged, stale,
//! replayed or early webhook, and a hold deadline passing, change no row.
//!
//! The test makes its own database and escrow server (proptest drives the
//! system from a plain thread, so it brings its own runtime) and drops the
//! database at the end.

mod common;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Mutex, OnceLock},
};

use escrow::{
    app::{
        accounts::{ACCOUNT_CLOSED, NOTHING_HELD},
        deadlines::ATTEMPT_EXPIRY,
        funding,
        worker::GatewayWorker,
    },
    domain::{
        AccountKey, AccountKind, Action, EscrowAccount, HoldRequest, HoldStatus, Ledger,
        LedgerError, LedgerStore, Leg, NewAccount, Purpose, Settles, TransferRequest,
        account::split_refund,
        ledger::{INSUFFICIENT_FUNDS, PURPOSE_ALREADY_SETTLED, never_expires},
    },
    gateway::{OperationStatus, PaymentGateway, signature::WebhookSecret},
    storage::{PgLedger, ledger},
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use sqlx::{Connection, PgConnection, PgPool};
use ta_proto::escrow as pb;
use ta_runtime::{ServiceError, money::Money};
use time::OffsetDateTime;
use uuid::Uuid;

const ACCOUNTS: usize = 2;
/// Account 0 takes cards and bank transfers; account 1 is Pay Later through
/// partner 0.
const PAY_LATER: usize = 1;
const SCHEDULE: [i64; 2] = [400, 600];
const SUPPLIER: &str = "supplier-0";
const FORGER_SECRET: &str = "whsec_forger_0123456789abcdef0123456789abcd";
const WEBHOOK_TOLERANCE_SECONDS: i64 = 300;

fn usd() -> ta_runtime::money::Currency {
    common::usd()
}

/// The model's clock: its holds never expire, so any time will do.
fn base() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Visa,
    Declined,
    /// The gateway refuses before acting.
    GatewayError,
    /// The gateway charges; its answer is lost.
    Timeout,
}

impl Token {
    fn as_str(self) -> &'static str {
        match self {
            Token::Visa => "tok_visa",
            Token::Declined => "tok_declined",
            Token::GatewayError => "tok_gateway_error",
            Token::Timeout => "tok_timeout",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Method {
    Card(Token),
    Bank,
    PayLater(u8),
}

/// How a webhook step delivers its event.
#[derive(Clone, Debug)]
enum Hook {
    /// A new, correctly signed credit of the attempt's payment (a card's:
    /// the gateway's routine report of its charge).
    Credit,
    /// A new, correctly signed failure of the attempt's payment.
    Failure,
    /// An event answered before, delivered again (re-signed now).
    Replay(usize),
    /// A new credit signed with another key, or whose body was changed
    /// after signing.
    Forged { other_key: bool },
    /// A new credit signed `seconds` beyond the tolerance, either way.
    Stale { seconds: i64, future: bool },
    /// A credit naming a payment escrow does not know (yet).
    Unknown,
    /// A credit that does not say how much arrived.
    NoAmount,
}

#[derive(Clone, Debug)]
enum Step {
    Open(usize),
    Fund {
        account: usize,
        milestone: usize,
        method: Method,
    },
    /// The buyer sends an attempt's FundEscrow again, same key.
    Retry {
        attempt: usize,
    },
    /// The gateway worker asks the gateway about an unanswered attempt.
    Resolve {
        attempt: usize,
    },
    /// The attempt's expiry timer fires.
    Expire {
        attempt: usize,
    },
    Webhook {
        attempt: usize,
        delta: i64,
        hook: Hook,
    },
    /// The account's hold deadline timer fires.
    HoldDeadline(usize),
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
    Settle {
        account: usize,
        claim: u8,
        refund: Option<i64>,
        release_rest: bool,
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
    /// RunSupplierPayouts for the case's supplier.
    Payout,
    /// The payout timer: the worker pays suppliers, then buyers.
    PayoutRun,
    /// The gateway reports on a transfer.
    SettleTransfer {
        transfer: usize,
        paid: bool,
    },
    /// The gateway pays a payout or buyer refund it had reported failed.
    PaidLate {
        transfer: usize,
    },
}

/// What a step did, coarsely: both sides must agree on it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Skipped,
    Done,
    /// A webhook's answer.
    Webhook(&'static str),
    /// What the hold deadline announced as still held, if anything.
    Announced(Option<i64>),
    Refused(String),
}

fn refusal(error: &ServiceError) -> String {
    match error {
        ServiceError::NotFound { .. } => "not found".into(),
        ServiceError::FailedPrecondition(_) => "failed precondition".into(),
        ServiceError::Refused { reason, .. } => (*reason).into(),
        ServiceError::InvalidArgument(_) => "invalid argument".into(),
        other => panic!("the model refused with {other:?}"),
    }
}

fn refused_by(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    use tonic_types::StatusExt;
    Outcome::Refused(match status.code() {
        Code::NotFound => "not found".into(),
        Code::InvalidArgument => "invalid argument".into(),
        Code::Unavailable => "unavailable".into(),
        Code::Unauthenticated => "unauthenticated".into(),
        Code::FailedPrecondition => status
            .get_error_details()
            .precondition_failure()
            .and_then(|p| p.violations.first().map(|v| v.r#type.clone()))
            .unwrap_or_else(|| "failed precondition".into()),
        _ => panic!("unexpected error: {status:?}"),
    })
}

fn answered<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(status) => refused_by(&status),
    }
}

fn ledger_refusal(error: LedgerError) -> String {
    refusal(&error.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttemptState {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
struct Attempt {
    account: usize,
    milestone: String,
    amount: i64,
    method: Method,
    hold: Uuid,
    state: AttemptState,
    /// The start call's answer is not recorded yet.
    awaiting: bool,
    /// The FundEscrow call's answer is stored under its key.
    answer_stored: bool,
    /// The gateway charged the card.
    charged: bool,
    declined: bool,
    credit: Option<String>,
    received: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Direction {
    Payout,
    BuyerRefund,
    SuspenseRefund,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransferState {
    Open,
    Paid,
    Failed,
}

#[derive(Clone, Debug)]
struct Transfer {
    direction: Direction,
    hold: Uuid,
    amount: i64,
    account: Option<usize>,
    attempt: Option<usize>,
    state: TransferState,
}

/// A gateway event a webhook step built.
#[derive(Clone, Debug)]
struct SentEvent {
    /// Its answer, once escrow stored one (replays answer the same).
    answer: Option<&'static str>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    ledger: Ledger,
    accounts: Vec<Option<EscrowAccount>>,
    /// The claims that ever froze each account.
    froze: Vec<BTreeSet<String>>,
    attempts: Vec<Attempt>,
    transfers: Vec<Transfer>,
    events: Vec<SentEvent>,
    ids: u128,
    last: Option<Outcome>,
    /// What the step did, for the coverage count.
    note: Option<&'static str>,
}

/// The `back`-th most recent of `len` items: steps mostly concern what
/// was just made.
fn recent(back: usize, len: usize) -> usize {
    len - 1 - back % len
}

fn model_account_id(i: usize) -> Uuid {
    Uuid::from_u128(i as u128 + 1)
}

fn new_account(i: usize, contract: String, supplier: String) -> NewAccount {
    NewAccount {
        contract_id: contract,
        buyer_principal_id: support::BUYER.into(),
        supplier_id: supplier,
        schedule: SCHEDULE
            .iter()
            .enumerate()
            .map(|(m, a)| (format!("m{m}"), Money::new(*a, usd()), base()))
            .collect(),
        hold_until: base() + time::Duration::days(i as i64 + 30),
    }
}

impl Model {
    fn next_id(&mut self) -> Uuid {
        self.ids += 1;
        Uuid::from_u128(1_000_000 + self.ids)
    }

    fn account(&self, i: usize) -> Result<EscrowAccount, String> {
        self.accounts[i].clone().ok_or_else(|| "not found".into())
    }

    fn held(&self, i: usize) -> i64 {
        self.ledger
            .balance_of(&AccountKey::escrow_held(model_account_id(i), usd()))
            .available()
    }

    fn pending_attempts(&self, i: usize) -> Vec<usize> {
        (0..self.attempts.len())
            .filter(|ix| {
                self.attempts[*ix].account == i && self.attempts[*ix].state == AttemptState::Pending
            })
            .collect()
    }

    /// A pending attempt failed: its hold is voided.
    fn fail(&mut self, ix: usize) -> bool {
        if self.attempts[ix].state != AttemptState::Pending {
            return false;
        }
        self.attempts[ix].state = AttemptState::Failed;
        let _ = self.ledger.void_hold_now(self.attempts[ix].hold);
        true
    }

    fn fund(&mut self, i: usize, milestone: usize, method: &Method) -> Result<Outcome, String> {
        let account = self.account(i)?;
        match (method, i == PAY_LATER) {
            (Method::PayLater(p), true) if *p != 0 => return Err("invalid argument".into()),
            (Method::PayLater(_), true) | (Method::Card(_) | Method::Bank, false) => {}
            _ => return Err("failed precondition".into()),
        }
        let milestone = format!("m{milestone}");
        let due = account.due_for(&milestone).map_err(|e| refusal(&e))?;
        if self
            .attempts
            .iter()
            .any(|a| a.account == i && a.milestone == milestone && a.state == AttemptState::Pending)
        {
            return Err("failed precondition".into());
        }
        let source = match method {
            Method::PayLater(_) => AccountKey::financing_partner("partner-0", usd()),
            _ => AccountKey::gateway_clearing(usd()),
        };
        let attempt_id = self.next_id();
        let hold = self.next_id();
        self.ledger
            .hold_now(&HoldRequest {
                id: hold,
                purpose: Purpose::funding(account.id, attempt_id),
                escrow_account: Some(account.id),
                debit: source,
                credit: AccountKey::escrow_held(account.id, usd()),
                amount_minor: due,
                expires_at: never_expires(),
            })
            .map_err(ledger_refusal)?;
        let ix = self.attempts.len();
        self.attempts.push(Attempt {
            account: i,
            milestone,
            amount: due,
            method: method.clone(),
            hold,
            state: AttemptState::Pending,
            awaiting: true,
            answer_stored: false,
            charged: false,
            declined: false,
            credit: None,
            received: 0,
        });
        Ok(match method {
            Method::Card(Token::GatewayError) => {
                self.note = Some("card unanswered");
                Outcome::Refused("unavailable".into())
            }
            Method::Card(Token::Timeout) => {
                self.attempts[ix].charged = true;
                self.note = Some("card unanswered");
                Outcome::Refused("unavailable".into())
            }
            Method::Card(Token::Visa) => {
                self.attempts[ix].charged = true;
                self.answer(ix, true);
                self.note = Some("card funded");
                Outcome::Done
            }
            Method::Card(Token::Declined) => {
                self.attempts[ix].declined = true;
                self.answer(ix, false);
                self.note = Some("card declined");
                Outcome::Done
            }
            Method::Bank | Method::PayLater(_) => {
                self.attempts[ix].awaiting = false;
                self.attempts[ix].answer_stored = true;
                self.note = Some(if *method == Method::Bank {
                    "bank pending"
                } else {
                    "pay later pending"
                });
                Outcome::Done
            }
        })
    }

    /// Records the gateway's answer to a card attempt's start call: a
    /// charge (`approved`) is credited, a decline or a refusal fails it.
    fn answer(&mut self, ix: usize, approved: bool) {
        self.attempts[ix].awaiting = false;
        if approved {
            let amount = self.attempts[ix].amount;
            self.credit(ix, &format!("charge-{ix}"), amount);
        } else {
            self.fail(ix);
        }
    }

    fn park(&mut self, ix: usize, credit: &str, amount: i64) -> bool {
        let account = model_account_id(self.attempts[ix].account);
        self.ledger
            .transfer_now(&TransferRequest {
                id: Uuid::now_v7(),
                purpose: Purpose::unmatched_credit(account, Uuid::from_u128(ix as u128), credit),
                escrow_account: Some(account),
                legs: vec![Leg {
                    debit: AccountKey::gateway_clearing(usd()),
                    credit: AccountKey::suspense(usd()),
                    amount_minor: amount,
                }],
            })
            .is_ok()
    }

    /// Money arrived for attempt `ix`: what the payment still needs posts,
    /// the rest (or all, for an attempt that ended) goes to suspense and
    /// back. Returns the webhook's answer.
    fn credit(&mut self, ix: usize, credit: &str, received: i64) -> &'static str {
        let attempt = self.attempts[ix].clone();
        if attempt.credit.as_deref() == Some(credit) {
            self.note = Some("credit duplicate");
            return "duplicate";
        }
        let parked = if attempt.state == AttemptState::Pending {
            let mut account = self.accounts[attempt.account].clone().unwrap();
            let still_due = account
                .payment(&attempt.milestone)
                .map(|p| p.remaining_minor())
                .unwrap_or(0);
            let take = received.min(attempt.amount).min(still_due);
            assert!(take > 0, "nothing due for a pending attempt: {attempt:?}");
            self.ledger
                .post_hold_now(attempt.hold, Some(take), base())
                .unwrap();
            account.record_funding(&attempt.milestone, take).unwrap();
            self.accounts[attempt.account] = Some(account);
            let a = &mut self.attempts[ix];
            a.state = AttemptState::Succeeded;
            a.received = take;
            a.credit = Some(credit.to_owned());
            let excess = received - take;
            if excess > 0 {
                self.park(ix, credit, excess);
            }
            self.note = Some(if excess > 0 {
                "credit applied beyond what is due"
            } else {
                "credit applied"
            });
            excess
        } else if self.park(ix, credit, received) {
            self.note = Some("credit for an ended attempt");
            received
        } else {
            self.note = Some("credit duplicate");
            return "duplicate";
        };
        if parked > 0 {
            let account = model_account_id(attempt.account);
            let id = self.next_id();
            self.ledger
                .hold_now(&HoldRequest {
                    id,
                    purpose: Purpose::suspense_refund(account, Uuid::from_u128(ix as u128), credit),
                    escrow_account: Some(account),
                    debit: AccountKey::suspense(usd()),
                    credit: AccountKey::gateway_clearing(usd()),
                    amount_minor: parked,
                    expires_at: never_expires(),
                })
                .unwrap();
            self.transfers.push(Transfer {
                direction: Direction::SuspenseRefund,
                hold: id,
                amount: parked,
                account: Some(attempt.account),
                attempt: Some(ix),
                state: TransferState::Open,
            });
        }
        "applied"
    }

    fn webhook(&mut self, attempt: usize, delta: i64, hook: &Hook) -> Outcome {
        if let Hook::Replay(back) = hook {
            let answered: Vec<usize> = (0..self.events.len())
                .filter(|e| self.events[*e].answer.is_some())
                .collect();
            if answered.is_empty() {
                return Outcome::Skipped;
            }
            let index = answered[recent(*back, answered.len())];
            self.note = Some("webhook replayed");
            return Outcome::Webhook(self.events[index].answer.unwrap_or_default());
        }
        if self.attempts.is_empty() {
            return Outcome::Skipped;
        }
        let ix = recent(attempt, self.attempts.len());
        let a = self.attempts[ix].clone();
        let card = matches!(a.method, Method::Card(_));
        match hook {
            Hook::Replay(_) => unreachable!(),
            Hook::Forged { .. } | Hook::Stale { .. } => {
                self.events.push(SentEvent { answer: None });
                self.note = Some(if matches!(hook, Hook::Forged { .. }) {
                    "webhook forged"
                } else {
                    "webhook stale"
                });
                Outcome::Refused("unauthenticated".into())
            }
            Hook::Unknown => {
                self.events.push(SentEvent { answer: None });
                self.note = Some("webhook retry later");
                Outcome::Webhook("retry_later")
            }
            Hook::NoAmount => {
                self.events.push(SentEvent { answer: None });
                self.note = Some("webhook malformed");
                Outcome::Refused("invalid argument".into())
            }
            Hook::Credit => {
                if card && !a.charged {
                    return Outcome::Skipped;
                }
                let index = self.events.len();
                let (credit, received) = if card {
                    (format!("charge-{ix}"), a.amount)
                } else {
                    (format!("e{index}"), (a.amount + delta).max(1))
                };
                let answer = self.credit(ix, &credit, received);
                self.events.push(SentEvent {
                    answer: Some(answer),
                });
                Outcome::Webhook(answer)
            }
            Hook::Failure => {
                if card && !a.declined {
                    return Outcome::Skipped;
                }
                let answer = if self.fail(ix) {
                    self.note = Some("failure applied");
                    "applied"
                } else {
                    "duplicate"
                };
                self.events.push(SentEvent {
                    answer: Some(answer),
                });
                Outcome::Webhook(answer)
            }
        }
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

    /// A release or refund of account `i` (app::release / app::refund).
    fn outflow(
        &mut self,
        i: usize,
        action: Action,
        amount: Option<i64>,
        settles: &Settles,
    ) -> Result<i64, String> {
        let mut account = self.account(i)?;
        if account.status == escrow::domain::Status::Closed {
            return Err(ACCOUNT_CLOSED.into());
        }
        let purpose = account
            .authorize_outflow(action, settles)
            .map_err(|e| refusal(&e))?;
        let amount = match amount {
            Some(a) => a,
            None => match self.held(i) {
                0 => return Err(NOTHING_HELD.into()),
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
        Ok(amount)
    }

    /// What a direct release or refund may name (app::check_direct_purpose).
    fn check_direct(&self, i: usize, settles: &Settles) -> Result<(), String> {
        let account = self.account(i)?;
        match settles {
            Settles::Milestone(m) if account.payment(m).is_err() => Err("invalid argument".into()),
            Settles::Claim(c) if !self.froze[i].contains(c) || account.freezes.contains(c) => {
                Err("failed precondition".into())
            }
            _ => Ok(()),
        }
    }

    /// A funded account emptied by a release or refund closes.
    fn close_if_emptied(&mut self, i: usize) {
        let account = self.accounts[i].clone().unwrap();
        if account.status == escrow::domain::Status::Funded
            && account.freezes.is_empty()
            && self.held(i) == 0
            && self.pending_attempts(i).is_empty()
        {
            let mut closed = account;
            closed.close(0, base()).unwrap();
            self.accounts[i] = Some(closed);
            self.note = Some("emptied and closed");
        }
    }

    fn direct(
        &mut self,
        i: usize,
        action: Action,
        amount: Option<i64>,
        settles: &Settles,
    ) -> Outcome {
        let result = self
            .check_direct(i, settles)
            .and_then(|()| self.outflow(i, action, amount, settles));
        match result {
            Ok(_) => {
                self.note = Some(if action == Action::Release {
                    "released"
                } else {
                    "refunded"
                });
                self.close_if_emptied(i);
                Outcome::Done
            }
            Err(kind) => Outcome::Refused(kind),
        }
    }

    fn settle(
        &mut self,
        i: usize,
        claim: &str,
        refund: Option<i64>,
        release_rest: bool,
    ) -> Outcome {
        let before = self.clone();
        let result = (|| {
            let account = self.account(i)?;
            if !account.freezes.contains(claim) {
                return Err("failed precondition".to_owned());
            }
            let settles = Settles::Claim(claim.to_owned());
            if let Some(amount) = refund {
                self.outflow(i, Action::Refund, Some(amount), &settles)?;
            }
            if release_rest && self.held(i) > 0 {
                self.outflow(i, Action::Release, None, &settles)?;
            }
            let mut account = self.account(i)?;
            account.unfreeze(claim, base()).map_err(|e| refusal(&e))?;
            self.accounts[i] = Some(account);
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.note = Some("claim settled");
                self.close_if_emptied(i);
                Outcome::Done
            }
            Err(kind) => {
                // One transaction: nothing of it stays.
                *self = Model {
                    last: None,
                    ..before
                };
                Outcome::Refused(kind)
            }
        }
    }

    fn freeze(&mut self, i: usize, claim: &str, freeze: bool) -> Result<(), String> {
        let mut account = self.account(i)?;
        if freeze
            && !account.freezes.contains(claim)
            && self.held(i) == 0
            && self.pending_attempts(i).is_empty()
        {
            return Err("failed precondition".into());
        }
        let changed = if freeze {
            account.freeze(claim, base())
        } else {
            account.unfreeze(claim, base())
        }
        .map_err(|e| refusal(&e))?;
        if freeze && changed {
            self.froze[i].insert(claim.to_owned());
            self.note = Some("frozen");
        }
        self.accounts[i] = Some(account);
        Ok(())
    }

    fn close(&mut self, i: usize) -> Result<(), String> {
        let mut account = self.account(i)?;
        if account.status == escrow::domain::Status::Closed {
            // Closing again changes nothing.
            return Ok(());
        }
        account
            .close(self.held(i), base())
            .map_err(|e| refusal(&e))?;
        self.accounts[i] = Some(account);
        for ix in self.pending_attempts(i) {
            self.fail(ix);
        }
        self.note = Some("closed");
        Ok(())
    }

    fn payout(&mut self) {
        let payable = AccountKey::supplier_payable(SUPPLIER, usd());
        let available = self.ledger.balance_of(&payable).available();
        if available <= 0 {
            return;
        }
        let id = self.next_id();
        self.ledger
            .hold_now(&HoldRequest {
                id,
                purpose: Purpose::payout(SUPPLIER, id),
                escrow_account: None,
                debit: payable,
                credit: AccountKey::gateway_clearing(usd()),
                amount_minor: available,
                expires_at: never_expires(),
            })
            .unwrap();
        self.transfers.push(Transfer {
            direction: Direction::Payout,
            hold: id,
            amount: available,
            account: None,
            attempt: None,
            state: TransferState::Open,
        });
        self.note = Some("payout started");
    }

    fn buyer_refunds(&mut self) {
        for i in 0..ACCOUNTS {
            let payable = AccountKey::buyer_refund_payable(model_account_id(i), usd());
            let mut available = self.ledger.balance_of(&payable).available();
            for ix in 0..self.attempts.len() {
                let a = &self.attempts[ix];
                if available <= 0
                    || a.account != i
                    || a.state != AttemptState::Succeeded
                    || matches!(a.method, Method::PayLater(_))
                {
                    continue;
                }
                let refunded: i64 = self
                    .transfers
                    .iter()
                    .filter(|t| {
                        t.direction == Direction::BuyerRefund
                            && t.attempt == Some(ix)
                            && t.state != TransferState::Failed
                    })
                    .map(|t| t.amount)
                    .sum();
                let amount = (a.received - refunded).min(available);
                if amount <= 0 {
                    continue;
                }
                let id = self.next_id();
                self.ledger
                    .hold_now(&HoldRequest {
                        id,
                        purpose: Purpose::buyer_refund_payout(model_account_id(i), id),
                        escrow_account: Some(model_account_id(i)),
                        debit: payable.clone(),
                        credit: AccountKey::gateway_clearing(usd()),
                        amount_minor: amount,
                        expires_at: never_expires(),
                    })
                    .unwrap();
                self.transfers.push(Transfer {
                    direction: Direction::BuyerRefund,
                    hold: id,
                    amount,
                    account: Some(i),
                    attempt: Some(ix),
                    state: TransferState::Open,
                });
                available -= amount;
                self.note = Some("buyer refund started");
            }
        }
    }

    fn settle_transfer(&mut self, t: usize, paid: bool) -> Outcome {
        let transfer = self.transfers[t].clone();
        let answer = match (transfer.state, paid) {
            (TransferState::Open, true) => {
                self.ledger
                    .post_hold_now(transfer.hold, None, base())
                    .unwrap();
                self.transfers[t].state = TransferState::Paid;
                self.note = Some("transfer paid");
                "applied"
            }
            (TransferState::Open, false) => {
                self.ledger.void_hold_now(transfer.hold).unwrap();
                self.transfers[t].state = TransferState::Failed;
                self.note = Some("transfer failed");
                "applied"
            }
            (TransferState::Failed, true) => {
                // Paid after all: the money leaves what it was owed from.
                let from = match transfer.direction {
                    Direction::Payout => AccountKey::supplier_payable(SUPPLIER, usd()),
                    Direction::BuyerRefund => AccountKey::buyer_refund_payable(
                        model_account_id(transfer.account.unwrap()),
                        usd(),
                    ),
                    Direction::SuspenseRefund => unreachable!("not generated: suspense is shared"),
                };
                let covered = self
                    .ledger
                    .balance_of(&from)
                    .available()
                    .clamp(0, transfer.amount);
                if covered > 0 {
                    self.ledger
                        .transfer_now(&TransferRequest {
                            id: Uuid::now_v7(),
                            purpose: Purpose::correction(format!("transfer-{t}"), transfer.hold),
                            escrow_account: transfer.account.map(model_account_id),
                            legs: vec![Leg {
                                debit: from,
                                credit: AccountKey::gateway_clearing(usd()),
                                amount_minor: covered,
                            }],
                        })
                        .unwrap();
                }
                self.transfers[t].state = TransferState::Paid;
                self.note = Some("paid after failure");
                "applied"
            }
            (TransferState::Paid, _) | (TransferState::Failed, false) => "duplicate",
        };
        Outcome::Webhook(answer)
    }

    fn step(&mut self, step: &Step) -> Outcome {
        self.note = None;
        match step {
            Step::Open(_) => Outcome::Done,
            Step::Fund {
                account,
                milestone,
                method,
            } => self
                .fund(*account, *milestone, method)
                .unwrap_or_else(Outcome::Refused),
            Step::Retry { attempt } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                let ix = recent(*attempt, self.attempts.len());
                let a = self.attempts[ix].clone();
                if a.answer_stored || !a.awaiting {
                    self.attempts[ix].answer_stored = true;
                    return Outcome::Done;
                }
                match a.method {
                    Method::Card(Token::GatewayError) => Outcome::Refused("unavailable".into()),
                    Method::Card(Token::Timeout) => {
                        self.answer(ix, true);
                        self.attempts[ix].answer_stored = true;
                        self.note = Some("retry answered");
                        Outcome::Done
                    }
                    _ => unreachable!("only cards wait for their answer: {a:?}"),
                }
            }
            Step::Resolve { attempt } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                let ix = recent(*attempt, self.attempts.len());
                if !self.attempts[ix].awaiting {
                    return Outcome::Skipped;
                }
                let charged = self.attempts[ix].charged;
                self.answer(ix, charged);
                self.note = Some(if charged {
                    "resolved: charged"
                } else {
                    "resolved: never reached the gateway"
                });
                Outcome::Done
            }
            Step::Expire { attempt } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                let ix = recent(*attempt, self.attempts.len());
                if self.fail(ix) {
                    self.note = Some("expired");
                }
                Outcome::Done
            }
            Step::Webhook {
                attempt,
                delta,
                hook,
            } => self.webhook(*attempt, *delta, hook),
            Step::HoldDeadline(i) => match self.account(*i) {
                Err(kind) => Outcome::Refused(kind),
                Ok(a) => {
                    let held = self.held(*i);
                    let announced = (a.hold_deadline_runs() && held > 0).then_some(held);
                    if announced.is_some() {
                        self.note = Some("hold deadline passed");
                    }
                    Outcome::Announced(announced)
                }
            },
            Step::Release {
                account,
                amount,
                settles,
            } => self.direct(*account, Action::Release, *amount, settles),
            Step::Refund {
                account,
                amount,
                settles,
            } => self.direct(*account, Action::Refund, *amount, settles),
            Step::Settle {
                account,
                claim,
                refund,
                release_rest,
            } => self.settle(*account, &format!("c{claim}"), *refund, *release_rest),
            Step::Freeze { account, claim } | Step::Unfreeze { account, claim } => {
                let freeze = matches!(step, Step::Freeze { .. });
                match self.freeze(*account, &format!("c{claim}"), freeze) {
                    Ok(()) => Outcome::Done,
                    Err(kind) => Outcome::Refused(kind),
                }
            }
            Step::Close(i) => match self.close(*i) {
                Ok(()) => Outcome::Done,
                Err(kind) => Outcome::Refused(kind),
            },
            Step::Payout => {
                self.payout();
                Outcome::Done
            }
            Step::PayoutRun => {
                self.payout();
                self.buyer_refunds();
                Outcome::Done
            }
            Step::PaidLate { transfer } => {
                let failed: Vec<usize> = (0..self.transfers.len())
                    .filter(|t| {
                        self.transfers[*t].state == TransferState::Failed
                            && self.transfers[*t].direction != Direction::SuspenseRefund
                    })
                    .collect();
                if failed.is_empty() {
                    return Outcome::Skipped;
                }
                self.settle_transfer(failed[recent(*transfer, failed.len())], true)
            }
            Step::SettleTransfer { transfer, paid } => {
                if self.transfers.is_empty() {
                    return Outcome::Skipped;
                }
                let t = recent(*transfer, self.transfers.len());
                let suspense = self.transfers[t].direction == Direction::SuspenseRefund;
                if suspense && *paid && self.transfers[t].state == TransferState::Failed {
                    // A correction out of suspense, which all cases share,
                    // is not this model's to predict.
                    return Outcome::Skipped;
                }
                self.settle_transfer(t, *paid)
            }
        }
    }
}

struct Reference;

fn settles(release: bool) -> impl Strategy<Value = Settles> {
    let claim = (0u8..2).prop_map(|c| Settles::Claim(format!("c{c}")));
    if release {
        prop_oneof![
            // m2 is not in the schedule.
            3 => (0u8..3).prop_map(|m| Settles::Milestone(format!("m{m}"))),
            2 => Just(Settles::Acceptance),
            1 => claim
        ]
        .boxed()
    } else {
        prop_oneof![1 => claim, 2 => Just(Settles::Cancellation)].boxed()
    }
}

fn hook() -> impl Strategy<Value = Hook> {
    prop_oneof![
        6 => Just(Hook::Credit),
        2 => Just(Hook::Failure),
        2 => (0usize..4).prop_map(Hook::Replay),
        1 => any::<bool>().prop_map(|other_key| Hook::Forged { other_key }),
        1 => (1i64..10_000, any::<bool>()).prop_map(|(seconds, future)| Hook::Stale { seconds, future }),
        1 => Just(Hook::Unknown),
        1 => Just(Hook::NoAmount),
    ]
}

fn amount() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![1 => Just(None), 2 => (1i64..300).prop_map(Some)]
}

/// What a buyer pays with: mostly what the account takes (cards and bank
/// transfers for account 0, Pay Later through its partner for account 1),
/// now and then what it does not.
fn funding() -> impl Strategy<Value = (usize, Method)> {
    let direct = prop_oneof![
        3 => Just(Method::Card(Token::Visa)),
        1 => Just(Method::Card(Token::Declined)),
        1 => Just(Method::Card(Token::GatewayError)),
        2 => Just(Method::Card(Token::Timeout)),
        3 => Just(Method::Bank),
    ];
    prop_oneof![
        6 => direct.prop_map(|m| (0, m)),
        3 => Just((PAY_LATER, Method::PayLater(0))),
        1 => prop_oneof![
            Just((0, Method::PayLater(0))),
            Just((PAY_LATER, Method::PayLater(1))),
            Just((PAY_LATER, Method::Bank)),
            Just((PAY_LATER, Method::Card(Token::Visa))),
        ],
    ]
}

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        // Both accounts start open, so that most steps have money to move;
        // `Open` stays a step (idempotent per contract).
        let accounts = (0..ACCOUNTS)
            .map(|i| {
                EscrowAccount::open(
                    model_account_id(i),
                    new_account(i, format!("c{i}"), SUPPLIER.into()),
                    base() - time::Duration::days(1),
                )
                .ok()
            })
            .collect();
        Just(Model {
            accounts,
            froze: vec![BTreeSet::new(); ACCOUNTS],
            ..Model::default()
        })
        .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Step> {
        let account = 0..ACCOUNTS;
        prop_oneof![
            1 => account.clone().prop_map(Step::Open),
            8 => (funding(), 0..SCHEDULE.len())
                .prop_map(|((account, method), milestone)| Step::Fund { account, milestone, method }),
            2 => (0usize..4).prop_map(|attempt| Step::Retry { attempt }),
            2 => (0usize..4).prop_map(|attempt| Step::Resolve { attempt }),
            1 => (0usize..4).prop_map(|attempt| Step::Expire { attempt }),
            10 => (0usize..3, -60i64..60, hook())
                .prop_map(|(attempt, delta, hook)| Step::Webhook { attempt, delta, hook }),
            1 => account.clone().prop_map(Step::HoldDeadline),
            5 => (account.clone(), amount(), settles(true))
                .prop_map(|(account, amount, settles)| Step::Release { account, amount, settles }),
            3 => (account.clone(), amount(), settles(false))
                .prop_map(|(account, amount, settles)| Step::Refund { account, amount, settles }),
            3 => (account.clone(), 0u8..2, prop::option::of(1i64..500), any::<bool>())
                .prop_map(|(account, claim, refund, release_rest)| Step::Settle { account, claim, refund, release_rest }),
            2 => (account.clone(), 0u8..2).prop_map(|(account, claim)| Step::Freeze { account, claim }),
            2 => (account.clone(), 0u8..2).prop_map(|(account, claim)| Step::Unfreeze { account, claim }),
            1 => account.prop_map(Step::Close),
            2 => Just(Step::Payout),
            2 => Just(Step::PayoutRun),
            5 => (0usize..3, any::<bool>()).prop_map(|(transfer, paid)| Step::SettleTransfer { transfer, paid }),
            2 => (0usize..3).prop_map(|transfer| Step::PaidLate { transfer }),
        ]
        .boxed()
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        let outcome = state.step(step);
        state.last = Some(outcome);
        state
    }
}

/// The database, the escrow server and its gateway all cases share; each
/// case uses accounts, a supplier and a partner of its own and compares the
/// platform's accounts by difference.
struct Shared {
    runtime: tokio::runtime::Runtime,
    escrow: support::Escrow,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get().expect("the test sets up escrow first")
}

fn block<T>(work: impl Future<Output = T>) -> T {
    shared().runtime.block_on(work)
}

fn pool() -> &'static PgPool {
    &shared().escrow.pool
}

fn client() -> support::Client {
    shared().escrow.client.clone()
}

fn platform(kind: AccountKind) -> AccountKey {
    AccountKey::new(kind, escrow::domain::ledger::PLATFORM, usd())
}

/// A gateway transfer as recorded: id, direction, escrow account, funding
/// attempt, amount.
type TransferRow = (Uuid, String, Option<Uuid>, Option<Uuid>, i64);

struct SysAttempt {
    id: Uuid,
    hold: Uuid,
    key: String,
    request: pb::FundEscrowRequest,
}

struct System {
    run: Uuid,
    accounts: Vec<Uuid>,
    /// How each account was opened (opening again sends the same).
    opened: Vec<pb::OpenEscrowAccountRequest>,
    attempts: Vec<SysAttempt>,
    transfers: Vec<Uuid>,
    /// Each event's payload, by the model's index.
    events: Vec<Vec<u8>>,
    steps: usize,
    platform_start: HashMap<AccountKind, i64>,
    worker: GatewayWorker,
}

impl System {
    fn supplier(&self) -> String {
        format!("{SUPPLIER}-{}", self.run)
    }

    fn partner(&self) -> String {
        format!("partner-0-{}", self.run)
    }

    fn key(&mut self, what: &str) -> String {
        self.steps += 1;
        format!("{what}-{}-{}", self.run, self.steps)
    }

    fn account_of(&self, id: Uuid) -> Option<usize> {
        self.accounts.iter().position(|a| *a == id)
    }

    fn open(&mut self, i: usize) -> Outcome {
        if self.opened.len() <= i {
            let mut request = support::open_request(
                &format!("contract-{}-{i}", self.run),
                SCHEDULE
                    .iter()
                    .enumerate()
                    .map(|(m, a)| support::payment(&format!("m{m}"), *a))
                    .collect(),
            );
            request.idempotency_key = format!("open-{}-{i}", self.run);
            request.supplier_id = self.supplier();
            if i == PAY_LATER {
                request.payment_scheme = pb::EscrowPaymentScheme::PayLater as i32;
                request.financing_partner_id = self.partner();
            }
            self.opened.push(request);
        }
        let opened = block(client().open_escrow_account(support::contract(self.opened[i].clone())))
            .unwrap()
            .into_inner()
            .account
            .unwrap();
        let id = Uuid::parse_str(&opened.escrow_account_id).unwrap();
        if self.accounts.len() <= i {
            self.accounts.push(id);
        }
        assert_eq!(self.accounts[i], id, "opening again returns the account");
        Outcome::Done
    }

    fn fund(&mut self, account: usize, milestone: usize, method: &Method) -> Outcome {
        let id = self.accounts[account];
        let milestone_id = format!("m{milestone}");
        let due = block(async {
            let mut c = pool().acquire().await.unwrap();
            escrow::storage::accounts::get_account(&mut c, id)
                .await
                .ok()
                .and_then(|a| a.payment(&milestone_id).ok().map(|p| p.remaining_minor()))
        });
        let key = self.key("fund");
        let mut request = support::card(
            &id.to_string(),
            &milestone_id,
            due.unwrap_or(1).max(1),
            "",
            &key,
        );
        request.method = Some(match method {
            Method::Card(token) => pb::fund_escrow_request::Method::Card(pb::CardPayment {
                card_token: token.as_str().into(),
            }),
            Method::Bank => {
                pb::fund_escrow_request::Method::BankTransfer(pb::BankTransferPayment {
                    payer_name: "Buyer GmbH".into(),
                })
            }
            Method::PayLater(p) => pb::fund_escrow_request::Method::PayLater(pb::PayLaterPayment {
                financing_partner_id: if *p == 0 {
                    self.partner()
                } else {
                    format!("partner-{p}-{}", self.run)
                },
                repayment_months: 3,
            }),
        });
        let got = answered(block(client().fund_escrow(support::buyer(request.clone()))));
        // Recorded before the gateway was called, whatever it answered.
        let gateway_key = format!("fund:{}:{key}", support::BUYER);
        let recorded: Option<(Uuid, Uuid)> = block(
            sqlx::query_as(
                "SELECT f.id, f.hold_id FROM escrow.funding_attempts f WHERE f.gateway_key = $1",
            )
            .bind(&gateway_key)
            .fetch_optional(pool()),
        )
        .unwrap();
        if let Some((id, hold)) = recorded {
            self.attempts.push(SysAttempt {
                id,
                hold,
                key: gateway_key,
                request,
            });
        }
        got
    }

    fn retry(&mut self, ix: usize) -> Outcome {
        let request = self.attempts[ix].request.clone();
        answered(block(client().fund_escrow(support::buyer(request))))
    }

    fn resolve(&mut self, ix: usize) -> Outcome {
        let id = self.attempts[ix].id;
        if !block(awaiting(id)) {
            return Outcome::Skipped;
        }
        block(async {
            sqlx::query("UPDATE escrow.funding_attempts SET check_at = now() WHERE id = $1")
                .bind(id)
                .execute(pool())
                .await
                .unwrap();
            funding::resolve_unanswered(&self.worker.flows, pool())
                .await
                .unwrap();
            // The service's own worker may have taken it first: wait for it.
            support::eventually("the attempt answered", || async {
                (!awaiting(id).await).then_some(())
            })
            .await;
        });
        Outcome::Done
    }

    /// The gateway's record of key `key`: its reference and status.
    fn at_gateway(&self, key: &str) -> Option<(String, OperationStatus)> {
        block(at_gateway(key))
    }

    fn deliver(&self, payload: &[u8], signature: String, id: &str) -> Outcome {
        let request = pb::HandleGatewayWebhookRequest {
            idempotency_key: id.into(),
            payload: payload.to_vec(),
            signature,
        };
        match block(client().handle_gateway_webhook(support::gateway(request))) {
            Ok(answer) => Outcome::Webhook(
                match pb::WebhookOutcome::try_from(answer.into_inner().outcome) {
                    Ok(pb::WebhookOutcome::Applied) => "applied",
                    Ok(pb::WebhookOutcome::Duplicate) => "duplicate",
                    Ok(pb::WebhookOutcome::RetryLater) => "retry_later",
                    _ => "ignored",
                },
            ),
            Err(status) => refused_by(&status),
        }
    }

    fn webhook(&mut self, model: &Model, attempt: usize, delta: i64, hook: &Hook) -> Outcome {
        let secret = WebhookSecret::new(support::WEBHOOK_SECRET).unwrap();
        let now = support::now_unix();
        if let Hook::Replay(back) = hook {
            let answered: Vec<usize> = (0..model.events.len())
                .filter(|e| model.events[*e].answer.is_some())
                .collect();
            if answered.is_empty() {
                return Outcome::Skipped;
            }
            let index = answered[recent(*back, answered.len())];
            let payload = self.events[index].clone();
            let before = block(digest());
            let got = self.deliver(
                &payload,
                secret.sign(now, &payload),
                &format!("evt-{}-{index}", self.run),
            );
            assert_eq!(block(digest()), before, "a replay changed a row");
            return got;
        }
        if self.attempts.is_empty() {
            return Outcome::Skipped;
        }
        let ix = recent(attempt, self.attempts.len());
        let a = &model.attempts[ix];
        let card = matches!(a.method, Method::Card(_));
        let gateway = self.at_gateway(&self.attempts[ix].key);
        let index = self.events.len();
        let id = format!("evt-{}-{index}", self.run);
        let mut event = support::Event::new(
            &id,
            match (hook, &a.method) {
                (Hook::Failure, Method::PayLater(_)) => "pay_later.rejected",
                (Hook::Failure, _) => "payment.failed",
                (_, Method::Card(_)) => "payment.succeeded",
                (_, Method::Bank) => "bank_transfer.credited",
                (_, Method::PayLater(_)) => "pay_later.disbursed",
            },
            &gateway
                .as_ref()
                .map(|(reference, _)| reference.clone())
                .unwrap_or_else(|| "no-reference".into()),
        )
        .client(self.attempts[ix].id);
        match hook {
            Hook::Credit => {
                if card && !matches!(gateway, Some((_, OperationStatus::Succeeded))) {
                    return Outcome::Skipped;
                }
                event = event.usd(if card {
                    a.amount
                } else {
                    (a.amount + delta).max(1)
                });
            }
            Hook::Failure => {
                if card && !matches!(gateway, Some((_, OperationStatus::Failed { .. }))) {
                    return Outcome::Skipped;
                }
                event.failure_code = Some("rejected".into());
            }
            Hook::Unknown => {
                event = support::Event::new(&id, "bank_transfer.credited", &format!("bt_{id}"))
                    .client(Uuid::now_v7())
                    .usd(100);
            }
            Hook::NoAmount | Hook::Forged { .. } | Hook::Stale { .. } => {
                event = event.usd((a.amount + delta).max(1));
                if matches!(hook, Hook::NoAmount) {
                    event.amount_minor = None;
                }
            }
            Hook::Replay(_) => unreachable!(),
        }
        let mut payload = event.payload();
        self.events.push(payload.clone());
        let signature = match hook {
            Hook::Forged { other_key: true } => WebhookSecret::new(FORGER_SECRET)
                .unwrap()
                .sign(now, &payload),
            Hook::Forged { other_key: false } => {
                let signature = secret.sign(now, &payload);
                payload = event
                    .clone()
                    .usd(event.amount_minor.unwrap_or(1) * 2 + 1)
                    .payload();
                signature
            }
            Hook::Stale { seconds, future } => {
                let off = WEBHOOK_TOLERANCE_SECONDS + seconds;
                secret.sign(if *future { now + off } else { now - off }, &payload)
            }
            _ => secret.sign(now, &payload),
        };
        let quiet = !matches!(hook, Hook::Credit | Hook::Failure);
        let before = quiet.then(|| block(digest()));
        let got = self.deliver(&payload, signature, &id);
        if let Some(before) = before {
            assert_eq!(block(digest()), before, "{hook:?} changed a row");
        }
        got
    }

    fn outflow(
        &mut self,
        account: usize,
        amount: Option<i64>,
        settles: &Settles,
        release: bool,
    ) -> Outcome {
        use pb::purpose::Purpose as P;
        let purpose = Some(pb::Purpose {
            purpose: Some(match settles {
                Settles::Milestone(m) => P::MilestoneId(m.clone()),
                Settles::Acceptance => P::Acceptance(true),
                Settles::Claim(c) => P::ClaimId(c.clone()),
                Settles::Cancellation => P::Cancellation(true),
            }),
        });
        let id = self.accounts[account].to_string();
        let key = self.key("out");
        let amount = amount.and_then(support::usd);
        if release {
            answered(block(client().release_to_supplier(support::contract(
                pb::ReleaseToSupplierRequest {
                    idempotency_key: key,
                    escrow_account_id: id,
                    amount,
                    reason: "goods accepted".into(),
                    purpose,
                },
            ))))
        } else {
            answered(block(client().refund_to_buyer(support::finance(
                pb::RefundToBuyerRequest {
                    idempotency_key: key,
                    escrow_account_id: id,
                    amount,
                    reason: "refund".into(),
                    purpose,
                },
            ))))
        }
    }

    /// Makes sure the gateway has the transfer (the worker sends it), and
    /// returns its reference there.
    fn sent(&self, id: Uuid) -> String {
        let key: String = block(
            sqlx::query_scalar("SELECT gateway_key FROM escrow.gateway_transfers WHERE id = $1")
                .bind(id)
                .fetch_one(pool()),
        )
        .unwrap();
        block(support::eventually("the transfer sent", || async {
            if let Some((reference, _)) = at_gateway(&key).await {
                return Some(reference);
            }
            sqlx::query(
                "UPDATE escrow.gateway_transfers SET check_at = now() \
                 WHERE id = $1 AND status = 'sending'",
            )
            .bind(id)
            .execute(pool())
            .await
            .unwrap();
            self.worker.pass().await.unwrap();
            None
        }))
    }

    fn run_step(&mut self, model: &Model, step: &Step) -> Outcome {
        match step {
            Step::Open(i) => self.open(*i),
            Step::Fund {
                account,
                milestone,
                method,
            } => self.fund(*account, *milestone, method),
            Step::Retry { attempt } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                self.retry(recent(*attempt, self.attempts.len()))
            }
            Step::Resolve { attempt } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                self.resolve(recent(*attempt, self.attempts.len()))
            }
            Step::Expire { attempt } => {
                if self.attempts.is_empty() {
                    return Outcome::Skipped;
                }
                let id = self.attempts[recent(*attempt, self.attempts.len())].id;
                block(shared().escrow.fire(ATTEMPT_EXPIRY, &id.to_string())).unwrap();
                Outcome::Done
            }
            Step::Webhook {
                attempt,
                delta,
                hook,
            } => self.webhook(model, *attempt, *delta, hook),
            Step::HoldDeadline(i) => {
                let id = self.accounts[*i];
                let before = block(digest());
                let announced = block(async {
                    let mut tx = pool().begin().await.unwrap();
                    let announced = self
                        .worker
                        .flows
                        .fire_hold_deadline(&mut tx, id)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    announced
                });
                let after = block(digest());
                // Only the feed may have grown: no money, account or timer moved.
                assert_eq!(
                    after[..after.len() - 1],
                    before[..before.len() - 1],
                    "the hold deadline moved something"
                );
                Outcome::Announced(announced)
            }
            Step::Release {
                account,
                amount,
                settles,
            } => self.outflow(*account, *amount, settles, true),
            Step::Refund {
                account,
                amount,
                settles,
            } => self.outflow(*account, *amount, settles, false),
            Step::Settle {
                account,
                claim,
                refund,
                release_rest,
            } => {
                let key = self.key("settle");
                answered(block(client().settle_claim(support::dispute(
                    pb::SettleClaimRequest {
                        idempotency_key: key,
                        escrow_account_id: self.accounts[*account].to_string(),
                        claim_id: format!("c{claim}"),
                        refund: refund.and_then(support::usd),
                        release_rest: *release_rest,
                        reason: "decided".into(),
                    },
                ))))
            }
            Step::Freeze { account, claim } => {
                let key = self.key("freeze");
                answered(block(client().freeze_escrow(support::dispute(
                    pb::FreezeEscrowRequest {
                        idempotency_key: key,
                        escrow_account_id: self.accounts[*account].to_string(),
                        claim_id: format!("c{claim}"),
                        reason: "claim filed".into(),
                    },
                ))))
            }
            Step::Unfreeze { account, claim } => {
                let key = self.key("unfreeze");
                answered(block(client().unfreeze_escrow(support::dispute(
                    pb::UnfreezeEscrowRequest {
                        idempotency_key: key,
                        escrow_account_id: self.accounts[*account].to_string(),
                        claim_id: format!("c{claim}"),
                        reason: "claim withdrawn".into(),
                    },
                ))))
            }
            Step::Close(i) => {
                let key = self.key("close");
                answered(block(client().close_escrow_account(support::contract(
                    pb::CloseEscrowAccountRequest {
                        idempotency_key: key,
                        escrow_account_id: self.accounts[*i].to_string(),
                        reason: "closed".into(),
                        refund_held: false,
                    },
                ))))
            }
            Step::Payout => {
                let key = self.key("payout");
                answered(block(client().run_supplier_payouts(support::finance(
                    pb::RunSupplierPayoutsRequest {
                        idempotency_key: key,
                        reason: "the weekly run".into(),
                        supplier_id: self.supplier(),
                        currency_code: String::new(),
                    },
                ))))
            }
            Step::PayoutRun => {
                self.worker.flows.request_payouts();
                block(self.worker.pass()).unwrap();
                Outcome::Done
            }
            Step::PaidLate { transfer } => {
                let failed: Vec<usize> = (0..self.transfers.len())
                    .filter(|t| {
                        model.transfers[*t].direction != Direction::SuspenseRefund
                            && block(transfer_status(self.transfers[*t])) == "failed"
                    })
                    .collect();
                if failed.is_empty() {
                    return Outcome::Skipped;
                }
                self.report(model, failed[recent(*transfer, failed.len())], true)
            }
            Step::SettleTransfer { transfer, paid } => {
                if self.transfers.is_empty() {
                    return Outcome::Skipped;
                }
                let t = recent(*transfer, self.transfers.len());
                self.report(model, t, *paid)
            }
        }
    }

    /// The gateway's report on transfer `t`: paid or failed.
    fn report(&mut self, model: &Model, t: usize, paid: bool) -> Outcome {
        let theirs = &model.transfers[t];
        if theirs.direction == Direction::SuspenseRefund
            && paid
            && theirs.state == TransferState::Failed
        {
            // Skipped by the model (see there).
            return Outcome::Skipped;
        }
        let id = self.transfers[t];
        let reference = self.sent(id);
        let kind = match (theirs.direction, paid) {
            (Direction::Payout, true) => "payout.paid",
            (Direction::Payout, false) => "payout.failed",
            (_, true) => "refund.paid",
            (_, false) => "refund.failed",
        };
        let event_id = self.key("evt-transfer");
        let mut event = support::Event::new(&event_id, kind, &reference).client(id);
        if !paid {
            event.failure_code = Some("account_closed".into());
        }
        let payload = event.payload();
        let signature = WebhookSecret::new(support::WEBHOOK_SECRET)
            .unwrap()
            .sign(support::now_unix(), &payload);
        self.deliver(&payload, signature, &event_id)
    }

    /// Maps the transfers this step made to the model's, by what they are.
    fn map_transfers(&mut self, model: &Model) {
        let rows: Vec<TransferRow> = block(
            sqlx::query_as(
                "SELECT id, direction, escrow_account_id, funding_attempt_id, amount_minor \
                 FROM escrow.gateway_transfers \
                 WHERE supplier_id = $1 OR escrow_account_id = ANY($2) ORDER BY created_at, id",
            )
            .bind(self.supplier())
            .bind(&self.accounts)
            .fetch_all(pool()),
        )
        .unwrap();
        let known: BTreeSet<Uuid> = self.transfers.iter().copied().collect();
        let mut new: Vec<_> = rows
            .into_iter()
            .filter(|(id, ..)| !known.contains(id))
            .map(|(id, direction, account, attempt, amount)| {
                let direction = match direction.as_str() {
                    "payout" => Direction::Payout,
                    "buyer_refund" => Direction::BuyerRefund,
                    _ => Direction::SuspenseRefund,
                };
                let account = account.and_then(|a| self.account_of(a));
                let attempt = attempt.and_then(|a| self.attempts.iter().position(|s| s.id == a));
                (id, (direction, account, attempt, amount))
            })
            .collect();
        for theirs in &model.transfers[self.transfers.len()..] {
            let wanted = (
                theirs.direction,
                theirs.account,
                theirs.attempt,
                theirs.amount,
            );
            let at = new
                .iter()
                .position(|(_, what)| *what == wanted)
                .unwrap_or_else(|| panic!("no transfer {wanted:?} among {new:?}"));
            self.transfers.push(new.remove(at).0);
        }
        assert!(
            new.is_empty(),
            "transfers the model does not expect: {new:?}"
        );
    }

    fn compare(&self, model: &Model) {
        let found = model.ledger.discrepancies();
        assert!(
            found.is_empty(),
            "the reference ledger is unsound: {found:#?}"
        );
        assert_eq!(self.attempts.len(), model.attempts.len(), "attempts");
        assert_eq!(self.transfers.len(), model.transfers.len(), "transfers");
        block(async {
            let mut l = PgLedger::new(pool().clone());
            common::assert_sound(&mut l).await;
            let mut c = pool().acquire().await.unwrap();
            for (i, real) in self.accounts.iter().enumerate() {
                let expected = model.accounts[i].as_ref().unwrap();
                let account = escrow::storage::accounts::get_account(&mut c, *real)
                    .await
                    .unwrap();
                assert_eq!(account.status, expected.status, "account {i}");
                assert_eq!(account.freezes, expected.freezes, "account {i}");
                assert_eq!(
                    account.hold_paused_at.is_some(),
                    expected.hold_paused_at.is_some(),
                    "account {i}'s hold deadline paused"
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
            for (mine, theirs) in [
                (
                    AccountKey::supplier_payable(&self.supplier(), usd()),
                    AccountKey::supplier_payable(SUPPLIER, usd()),
                ),
                (
                    AccountKey::financing_partner(&self.partner(), usd()),
                    AccountKey::financing_partner("partner-0", usd()),
                ),
            ] {
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
            for (ix, real) in self.attempts.iter().enumerate() {
                let theirs = &model.attempts[ix];
                let (status, answered_at): (String, Option<OffsetDateTime>) = sqlx::query_as(
                    "SELECT status, answered_at FROM escrow.funding_attempts WHERE id = $1",
                )
                .bind(real.id)
                .fetch_one(&mut *c)
                .await
                .unwrap();
                let expected = match theirs.state {
                    AttemptState::Pending => "pending",
                    AttemptState::Succeeded => "succeeded",
                    AttemptState::Failed => "failed",
                };
                assert_eq!(status, expected, "attempt {ix}");
                assert_eq!(
                    answered_at.is_none(),
                    theirs.awaiting,
                    "attempt {ix} answered"
                );
                let hold = ledger::get_hold(&mut c, real.hold).await.unwrap().status;
                assert_eq!(
                    hold,
                    model_hold_status(model, theirs.hold),
                    "attempt {ix}'s hold"
                );
                let charged = shared()
                    .escrow
                    .gateway
                    .moved_under(&real.key)
                    .map(|m| m.amount_minor);
                assert_eq!(
                    charged,
                    theirs.charged.then_some(theirs.amount),
                    "attempt {ix} at the gateway"
                );
            }
            for (t, id) in self.transfers.iter().enumerate() {
                let theirs = &model.transfers[t];
                let status: String =
                    sqlx::query_scalar("SELECT status FROM escrow.gateway_transfers WHERE id = $1")
                        .bind(id)
                        .fetch_one(&mut *c)
                        .await
                        .unwrap();
                let open = ["sending", "pending", "unknown"].contains(&status.as_str());
                let matches = match theirs.state {
                    TransferState::Open => open,
                    TransferState::Paid => status == "paid",
                    TransferState::Failed => status == "failed",
                };
                assert!(matches, "transfer {t}: {status}, the model says {theirs:?}");
                let hold = ledger::get_hold(&mut c, *id).await.unwrap().status;
                assert_eq!(
                    hold,
                    model_hold_status(model, theirs.hold),
                    "transfer {t}'s hold"
                );
            }
        });
    }
}

/// Whether the attempt's start call still has no recorded answer.
async fn transfer_status(id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM escrow.gateway_transfers WHERE id = $1")
        .bind(id)
        .fetch_one(pool())
        .await
        .unwrap()
}

/// Whether the attempt's start call still has no recorded answer.
async fn awaiting(id: Uuid) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT answered_at IS NULL FROM escrow.funding_attempts WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool())
    .await
    .unwrap()
}

/// The gateway's record of key `key`: its reference and status.
async fn at_gateway(key: &str) -> Option<(String, OperationStatus)> {
    shared()
        .escrow
        .gateway
        .operation(key)
        .await
        .unwrap()
        .map(|op| (op.reference, op.status))
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

fn count(model: &Model, got: &Outcome) {
    let kind = match (model.note, got) {
        (Some(note), _) => note,
        (None, Outcome::Refused(reason)) if reason == INSUFFICIENT_FUNDS => "insufficient funds",
        (None, Outcome::Refused(reason)) if reason == PURPOSE_ALREADY_SETTLED => {
            "purpose already settled"
        }
        (None, Outcome::Refused(_)) => "refused",
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
        let platform_start = block(async {
            let mut l = PgLedger::new(pool().clone());
            let mut start = HashMap::new();
            for kind in [AccountKind::GatewayClearing, AccountKind::Suspense] {
                start.insert(kind, l.balance(&platform(kind)).await.unwrap().posted);
            }
            start
        });
        let mut system = System {
            run: Uuid::now_v7(),
            accounts: Vec::new(),
            opened: Vec::new(),
            attempts: Vec::new(),
            transfers: Vec::new(),
            events: Vec::new(),
            steps: 0,
            platform_start,
            worker: shared().escrow.worker(),
        };
        for i in 0..model.accounts.len() {
            system.open(i);
        }
        system
    }

    fn apply(mut system: System, model: &Model, step: Step) -> System {
        let got = system.run_step(model, &step);
        assert_eq!(Some(&got), model.last.as_ref(), "{step:?}");
        system.map_transfers(model);
        count(model, &got);
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
    (pool, name, url)
}

/// The rows a quiet step must leave as they were: the escrow tables whole,
/// and of those the service's background work touches (the feed's
/// numbering, the worker sending transfers, the roll-up of shared
/// balances), what no background work changes. The feed last.
const WATCHED: [(&str, &str); 13] = [
    ("escrow_accounts", "t::text"),
    ("scheduled_payments", "t::text"),
    ("freezes", "t::text"),
    ("funding_attempts", "t::text"),
    ("attempt_gateway", "t::text"),
    ("transfers", "t::text"),
    ("holds", "t::text"),
    ("postings", "t::text"),
    ("gateway_events", "t::text"),
    ("idempotency_keys", "t::text"),
    ("workflow_timers", "t::text"),
    (
        "gateway_transfers",
        "(t.id, t.direction, t.amount_minor, t.funding_attempt_id)::text",
    ),
    ("workflow_feed_events", "t.id::text"),
];

async fn digest() -> Vec<(i64, String)> {
    let mut tables = Vec::new();
    for (table, row) in WATCHED {
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg({row}, '|' ORDER BY {row})), '') \
             FROM escrow.{table} t"
        );
        tables.push(
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool())
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
    let (database, name, url) = runtime.block_on(create_database());
    // Nothing is retried or asked about on its own: the steps say when.
    let escrow = runtime.block_on(support::start_with(
        database,
        &[
            "--gateway-check-after",
            "3600s",
            "--gateway-worker-poll",
            "600s",
        ],
    ));
    assert!(SHARED.set(Shared { runtime, escrow }).is_ok());
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
        &Reference::sequential_strategy(1..60),
        |(initial, steps, seen)| {
            EscrowTest::test_sequential(config.clone(), initial, steps, seen);
            Ok(())
        },
    );
    block(async {
        pool().close().await;
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
        "card declined",
        "card unanswered",
        "bank pending",
        "pay later pending",
        "retry answered",
        "resolved: charged",
        "resolved: never reached the gateway",
        "credit applied",
        "credit applied beyond what is due",
        "credit for an ended attempt",
        "credit duplicate",
        "failure applied",
        "expired",
        "webhook replayed",
        "webhook forged",
        "webhook stale",
        "webhook retry later",
        "webhook malformed",
        "hold deadline passed",
        "released",
        "refunded",
        "claim settled",
        "frozen",
        "closed",
        "emptied and closed",
        "payout started",
        "buyer refund started",
        "transfer paid",
        "transfer failed",
        "paid after failure",
        "purpose already settled",
        "refused",
    ] {
        assert!(
            seen.get(kind).is_some_and(|n| *n > 0),
            "no step ended as `{kind}`: {seen:?}"
        );
    }
}
