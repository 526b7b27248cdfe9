//! The clients: the rolling scenario's money paths driven through the real
//! binaries while the schedule runs. Half the clients place whole orders
//! through contract (draft, both signatures, activation with cover and an
//! escrow account), each with a plan the seed picks ([`Plan`]): funded by
//! card, bank transfer or Pay Later (the last two PENDING until the
//! gateway's webhook), then accepted (and released), cancelled before or
//! after funding (refunded), amended to a lower total once funded (the
//! excess refunded, the cover lowered) and then accepted, or claimed after
//! receipt through dispute and the claim withdrawn (then accepted),
//! escalated and decided by an arbiter (a partial refund, the rest
//! released), or settled by the supplier's full or partial offer. The other
//! half work escrow directly as contract does (an account of two
//! milestones, each funded by card and released) and, now and then, ask
//! for the supplier's payout as finance (RunSupplierPayouts); escrow's own
//! payout timer pays the rest and the buyers' refunds.
//!
//! Every call carries an idempotency key and a short deadline; after
//! UNAVAILABLE, DEADLINE_EXCEEDED, a transport error (UNKNOWN, CANCELLED),
//! ABORTED, RESOURCE_EXHAUSTED or INTERNAL the client sends the same
//! request under the same key again, as a real client would, until it gets
//! an answer it can act on; every try and every answer goes into the
//! [`History`]. What the clients were finally told goes into their
//! [`Tally`] and [`Told`] for the checker.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ta_proto::{
    common::ClaimReason,
    tradeassurance::{
        contract::v1::{
            AcceptGoodsRequest, CancelContractRequest, ConfirmReceiptRequest, Contract,
            ContractStatus, ContractTerms, CreateContractDraftRequest, GetContractRequest,
            PayLaterTerms, PaymentScheme, ProposeAmendmentRequest, RecordShipmentRequest,
            SignAmendmentRequest, SignContractRequest,
            contract_service_client::ContractServiceClient,
        },
        dispute::v1::{
            AcceptOfferRequest, Claim, ClaimOutcome, ClaimStatus, DecideClaimRequest,
            EscalateClaimRequest, FileClaimRequest, GetClaimRequest, MakeOfferRequest, OfferKind,
            WithdrawClaimRequest, dispute_service_client::DisputeServiceClient,
        },
        escrow::v1::{
            BankTransferPayment, EscrowPaymentScheme, FundingStatus, GetEscrowAccountRequest,
            GetEscrowStatementResponse, OpenEscrowAccountRequest, PayLaterPayment,
            RunSupplierPayoutsRequest, ScheduledPayment,
            escrow_service_client::EscrowServiceClient, fund_escrow_request,
        },
    },
};
use ta_runtime::auth::Role;
use ta_testkit::bearer;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use super::{
    history::{Event, History},
    schedule::Rng,
};
use crate::{
    MILESTONE_MINOR, ORDER_TOTAL_MINOR, fund_request, order_terms, read_statement, release_request,
    tally::{Release, Tally},
    timestamp_in, usd,
};

/// How long a client waits for one answer before it counts as lost.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers the network loses on their way back, as a share in `f64` bits
/// (0: none); set and cleared by the schedule.
#[derive(Clone, Default)]
pub struct LostAnswers(Arc<AtomicU64>);

impl LostAnswers {
    pub fn set(&self, share: f64) {
        self.0.store(share.to_bits(), Ordering::Relaxed);
    }

    fn share(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// The Pay Later partner of the run's Pay Later contracts.
pub const PARTNER: &str = "partner-chaos-credit";
/// An amendment lowers the order from 10 to 8 items: 800.00 USD.
pub const AMENDED_TOTAL_MINOR: i64 = ORDER_TOTAL_MINOR * 8 / 10;
/// What a claim asks back, what an arbiter decides and what a partial
/// offer gives back.
pub const CLAIMED_MINOR: i64 = 30_000;
pub const DECIDED_MINOR: i64 = 20_000;
pub const OFFERED_MINOR: i64 = 25_000;

/// How an order's buyer pays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    #[default]
    Card,
    BankTransfer,
    PayLater,
}

/// How a claim is meant to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClaimPlan {
    /// The buyer withdraws it, then accepts the goods.
    Withdraw,
    /// An arbiter escalates it and decides a partial refund.
    Decide,
    /// The buyer accepts the supplier's offer of a full refund.
    FullOffer,
    /// The buyer accepts the supplier's offer of a partial refund.
    PartialOffer,
}

/// What an order's client sets out to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Plan {
    /// Funded, shipped, received, accepted.
    Accept,
    /// Cancelled by the buyer once active, before any funding.
    CancelUnfunded,
    /// Cancelled by the supplier once funded (before shipment only the
    /// supplier may): everything held refunded.
    CancelFunded,
    /// Amended to 8 items once funded (both sign), then accepted.
    Amend,
    /// Claimed after receipt.
    Claim(ClaimPlan),
}

impl Plan {
    /// Drawn from the client's seeded generator.
    fn draw(rng: &mut Rng) -> (Self, Method) {
        let method = match rng.below(4) {
            0 | 1 => Method::Card,
            2 => Method::BankTransfer,
            _ => Method::PayLater,
        };
        let plan = match rng.below(20) {
            0..=2 => Self::CancelUnfunded,
            3 | 4 => Self::CancelFunded,
            5..=7 => Self::Amend,
            8 | 9 => Self::Claim(ClaimPlan::Withdraw),
            10 | 11 => Self::Claim(ClaimPlan::Decide),
            12 => Self::Claim(ClaimPlan::FullOffer),
            13 => Self::Claim(ClaimPlan::PartialOffer),
            _ => Self::Accept,
        };
        (plan, method)
    }

    pub fn name(self) -> String {
        match self {
            Self::Accept => "accept".into(),
            Self::CancelUnfunded => "cancel before funding".into(),
            Self::CancelFunded => "cancel after funding".into(),
            Self::Amend => "amend, accept".into(),
            Self::Claim(c) => format!("claim: {c:?}"),
        }
    }
}

/// How a claim ended, as its client was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimEnd {
    /// Filed, nothing final acknowledged (the client stopped).
    Filed,
    /// The claim came back REFUSED (its reason): an explained end; the
    /// client then accepts the goods.
    Refused(String),
    Withdrawn,
    /// An offer accepted: its refund (None: everything held).
    Settled(Option<i64>),
    /// An arbiter's partial refund.
    Decided(i64),
}

/// A claim as its client knows it.
#[derive(Clone, Debug)]
pub struct ClaimTold {
    pub claim_id: String,
    pub end: ClaimEnd,
}

/// What one order's client was finally told, for the end-state checks.
#[derive(Clone, Debug, Default)]
pub struct OrderTold {
    pub contract_id: String,
    pub account_id: String,
    pub plan: Option<Plan>,
    pub method: Method,
    /// The last step acknowledged: "signed", "funded", "amended",
    /// "received", "accepted", "cancelled", "claim".
    pub last_ok: String,
    /// Why the client stopped before the end, if it did: the final answer.
    pub stopped: Option<String>,
    /// Fundings the client saw succeed: attempt id, amount.
    pub fundings: Vec<(String, i64)>,
    /// The two signatures of the amendment were acknowledged.
    pub amended: bool,
    pub cancelled: bool,
    pub accepted: bool,
    pub claim: Option<ClaimTold>,
}

/// Everything the clients were told, merged.
#[derive(Clone, Debug, Default)]
pub struct Told {
    pub tally: Tally,
    pub orders: Vec<OrderTold>,
    /// Escrow accounts opened directly (contract's calls).
    pub direct_accounts: Vec<String>,
    /// Funding attempts answered PENDING: money may come in later through
    /// the documented path (the gateway's webhook or escrow's status check).
    pub pending_attempts: BTreeSet<String>,
    /// Payouts RunSupplierPayouts answered with: id, amount.
    pub payouts: Vec<(String, i64)>,
    /// Operations (keys) and their outcome, counted.
    pub operations: u64,
    pub retries: u64,
    pub answers_lost: u64,
    pub calls: BTreeMap<String, u64>,
    /// Operations that ended in an answer no client expected (failures of
    /// the platform under faults, not checker violations by themselves).
    pub failures: Vec<String>,
}

impl Told {
    pub fn merge(&mut self, other: Told) {
        self.tally.merge(other.tally);
        self.orders.extend(other.orders);
        self.direct_accounts.extend(other.direct_accounts);
        self.pending_attempts.extend(other.pending_attempts);
        self.payouts.extend(other.payouts);
        self.operations += other.operations;
        self.retries += other.retries;
        self.answers_lost += other.answers_lost;
        for (k, v) in other.calls {
            *self.calls.entry(k).or_default() += v;
        }
        self.failures.extend(other.failures);
    }
}

/// The fixed parties of a run.
#[derive(Clone)]
pub struct Parties {
    pub run: String,
    pub supplier_id: String,
    pub supplier_owner: String,
    pub contract_to_escrow: MetadataValue<Ascii>,
    pub support: MetadataValue<Ascii>,
    pub finance: MetadataValue<Ascii>,
    pub arbiter: MetadataValue<Ascii>,
    /// Buyers waiting on a PENDING funding try again now and then under a
    /// new key (escrow must refuse while the attempt is pending or once the
    /// payment is funded).
    pub impatient: bool,
}

/// One client.
pub struct Client {
    pub id: usize,
    history: History,
    lost: LostAnswers,
    rng: Rng,
    /// No new operation after this.
    stop_at: Instant,
    /// Retries end here (long after the faults stop).
    give_up_at: Instant,
    contracts: ContractServiceClient<Channel>,
    escrow: EscrowServiceClient<Channel>,
    disputes: DisputeServiceClient<Channel>,
    parties: Parties,
    pub told: Told,
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
    )
}

fn req<T>(message: T, token: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request.set_timeout(CALL_TIMEOUT);
    request
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        seed: u64,
        history: History,
        lost: LostAnswers,
        (stop_at, give_up_at): (Instant, Instant),
        (contract_channel, escrow_channel, dispute_channel): (Channel, Channel, Channel),
        parties: Parties,
    ) -> Self {
        Self {
            id,
            history,
            lost,
            rng: Rng::new(seed ^ (id as u64).wrapping_mul(0x9E37_79B9)),
            stop_at,
            give_up_at,
            contracts: ContractServiceClient::new(contract_channel),
            escrow: EscrowServiceClient::new(escrow_channel),
            disputes: DisputeServiceClient::new(dispute_channel),
            parties,
            told: Told::default(),
        }
    }

    /// Operations until the schedule ends; the one under way is finished.
    pub async fn run(mut self) -> Told {
        let mut n = 0u64;
        while Instant::now() < self.stop_at {
            n += 1;
            let key = format!("{}-{}-{n}", self.parties.run, self.id);
            if self.id.is_multiple_of(2) {
                self.order(&key).await;
            } else {
                self.direct_account(&key).await;
                if n.is_multiple_of(4) {
                    self.payouts(&key).await;
                }
            }
        }
        self.told
    }

    /// One call under `key`, retried as a real client would; the final
    /// answer (recorded as such) is returned.
    async fn call<T, F, Fut>(
        &mut self,
        name: &str,
        key: &str,
        entities: &[&str],
        request: String,
        mut send: F,
    ) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        *self.told.calls.entry(name.to_owned()).or_default() += 1;
        self.told.operations += 1;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = send().await;
            let mut event = Event {
                at_ms: 0,
                client: self.id,
                call: name.to_owned(),
                key: key.to_owned(),
                entities: entities.iter().map(|e| (*e).to_owned()).collect(),
                attempt,
                request: request.clone(),
                answer: String::new(),
                fin: false,
            };
            let retry = match &outcome {
                Ok(_) => {
                    let share = self.lost.share();
                    if share > 0.0 && self.rng.chance(share) && Instant::now() < self.give_up_at {
                        event.answer = "OK, lost on the way back (injected)".into();
                        self.told.answers_lost += 1;
                        true
                    } else {
                        event.answer = "OK".into();
                        false
                    }
                }
                Err(status) => {
                    event.answer = format!("{:?}: {}", status.code(), status.message());
                    retryable(status.code()) && Instant::now() < self.give_up_at
                }
            };
            if !retry {
                event.fin = true;
                self.history.record(event);
                return outcome.map(tonic::Response::into_inner);
            }
            self.history.record(event);
            self.told.retries += 1;
            let backoff = Duration::from_millis(100 * u64::from(attempt.min(10)));
            tokio::time::sleep(backoff).await;
        }
    }

    fn note(&self, call: &str, key: &str, entities: &[&str], answer: String) {
        self.history.record(Event {
            at_ms: 0,
            client: self.id,
            call: call.to_owned(),
            key: key.to_owned(),
            entities: entities.iter().map(|e| (*e).to_owned()).collect(),
            attempt: 0,
            request: String::new(),
            answer,
            fin: true,
        });
    }

    // --- escrow, as contract uses it ----------------------------------------------

    async fn direct_account(&mut self, key: &str) {
        let contract_id = format!("direct-{key}");
        let buyer_id = format!("{}-buyer-{}", self.parties.run, self.id);
        let due = Some(timestamp_in(Duration::from_secs(7 * 86_400)));
        let open = OpenEscrowAccountRequest {
            idempotency_key: format!("open-{contract_id}"),
            contract_id: contract_id.clone(),
            buyer_principal_id: buyer_id.clone(),
            supplier_id: self.parties.supplier_id.clone(),
            schedule: (0..2)
                .map(|m| ScheduledPayment {
                    milestone_id: format!("m{m}"),
                    amount: usd(MILESTONE_MINOR),
                    due_at: due,
                    funded_at: None,
                })
                .collect(),
            payment_scheme: EscrowPaymentScheme::Direct as i32,
            financing_partner_id: String::new(),
            supplier_owner_principal_id: self.parties.supplier_owner.clone(),
            hold_until: Some(timestamp_in(Duration::from_secs(60 * 86_400))),
            reason: String::new(),
        };
        let token = self.parties.contract_to_escrow.clone();
        let client = self.escrow.clone();
        let opened = self
            .call(
                "OpenEscrowAccount",
                &open.idempotency_key.clone(),
                &[&contract_id],
                "2 x 10.00 USD".into(),
                || {
                    let mut c = client.clone();
                    let m = open.clone();
                    let t = token.clone();
                    async move { c.open_escrow_account(req(m, &t)).await }
                },
            )
            .await;
        let account_id = match opened {
            Ok(answer) => match answer.account {
                Some(a) => a.escrow_account_id,
                None => return self.fail(&contract_id, "OpenEscrowAccount answered no account"),
            },
            Err(s) => return self.fail(&contract_id, &format!("OpenEscrowAccount: {s:?}")),
        };
        self.told.direct_accounts.push(account_id.clone());
        let buyer = bearer(&buyer_id, Role::Buyer);
        for m in 0..2 {
            let milestone = format!("m{m}");
            let Some((attempt, amount)) = self
                .fund(
                    &account_id,
                    &contract_id,
                    &buyer,
                    &milestone,
                    (MILESTONE_MINOR, Method::Card),
                )
                .await
            else {
                return;
            };
            let supplier_id = self.parties.supplier_id.clone();
            self.told
                .tally
                .funded(&account_id, &supplier_id, &attempt, amount);
            let release = release_request(format!("rel-{account_id}-{m}"), &account_id, &milestone);
            let client = self.escrow.clone();
            let released = self
                .call(
                    "ReleaseToSupplier",
                    &release.idempotency_key.clone(),
                    &[&contract_id, &account_id],
                    format!("{milestone} 10.00 USD"),
                    || {
                        let mut c = client.clone();
                        let m = release.clone();
                        let t = token.clone();
                        async move { c.release_to_supplier(req(m, &t)).await }
                    },
                )
                .await;
            match released {
                Ok(answer) => match answer.posting {
                    Some(posting) => self.told.tally.released(
                        &account_id,
                        &self.parties.supplier_id,
                        Release {
                            posting_id: posting.posting_id,
                            milestone_id: milestone,
                            amount_minor: posting.amount.map_or(0, |a| a.amount_minor),
                        },
                    ),
                    None => return self.fail(&account_id, "ReleaseToSupplier answered no posting"),
                },
                Err(s) => {
                    return self.fail(
                        &account_id,
                        &format!("ReleaseToSupplier {milestone}: {s:?}"),
                    );
                }
            }
        }
    }

    fn fail(&mut self, entity: &str, what: &str) {
        self.told
            .failures
            .push(format!("client {} ({entity}): {what}", self.id));
    }

    /// RunSupplierPayouts for the run's supplier, as finance: the payouts
    /// it answers with are checked (paid once, at the gateway too); escrow's
    /// payout timer pays what is owed in between.
    async fn payouts(&mut self, key: &str) {
        let request = RunSupplierPayoutsRequest {
            idempotency_key: format!("payout-{key}"),
            supplier_id: self.parties.supplier_id.clone(),
            currency_code: "USD".into(),
            reason: "the chaos run's payout".into(),
        };
        let client = self.escrow.clone();
        let token = self.parties.finance.clone();
        let supplier_id = self.parties.supplier_id.clone();
        let answer = self
            .call(
                "RunSupplierPayouts",
                &request.idempotency_key.clone(),
                &[&supplier_id],
                "USD".into(),
                || {
                    let mut c = client.clone();
                    let m = request.clone();
                    let t = token.clone();
                    async move { c.run_supplier_payouts(req(m, &t)).await }
                },
            )
            .await;
        match answer {
            Ok(answer) => {
                for payout in answer.payouts {
                    let amount = payout.amount.as_ref().map_or(0, |a| a.amount_minor);
                    self.note(
                        "(payout)",
                        &payout.gateway_transfer_id,
                        &[&supplier_id, &payout.gateway_transfer_id],
                        format!("{amount} minor, {:?}", payout.status()),
                    );
                    self.told.payouts.push((payout.gateway_transfer_id, amount));
                }
            }
            Err(s) => self.fail(&supplier_id, &format!("RunSupplierPayouts: {s:?}")),
        }
    }

    /// Funds one milestone until the money is in: the attempt and its
    /// amount, each new try under a new key. A declined card (the gateway's
    /// 503s) is tried again; an attempt answered PENDING (a bank transfer,
    /// Pay Later, a card whose answer the gateway withheld) is waited for
    /// until its posting shows in the statement.
    async fn fund(
        &mut self,
        account_id: &str,
        contract_id: &str,
        buyer: &MetadataValue<Ascii>,
        milestone: &str,
        (minor, method): (i64, Method),
    ) -> Option<(String, i64)> {
        let mut waiting: Option<String> = None;
        // Every attempt this client started for the milestone: when escrow
        // says the payment is funded, one of them brought the money.
        let mut started: Vec<String> = Vec::new();
        for n in 0.. {
            if Instant::now() >= self.give_up_at {
                self.fail(account_id, &format!("{milestone} never funded"));
                return None;
            }
            if let Some(attempt) = waiting.clone() {
                // The PENDING attempt: its money shows once the gateway's
                // answer arrives (webhook or status check). Meanwhile the
                // buyer tries again now and then, as an impatient buyer
                // would, under a new key: escrow must refuse while an
                // attempt is pending (each probe notes what escrow showed
                // of the attempt just before).
                match self.attempt_status(account_id, &attempt).await {
                    Some((FundingStatus::Pending, _)) | None
                        if !self.parties.impatient || n % 3 != 2 =>
                    {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                    Some((FundingStatus::Pending, why)) => {
                        self.note(
                            "(attempt before a retry)",
                            &attempt,
                            &[contract_id, account_id],
                            why,
                        );
                    }
                    None => {}
                    Some((FundingStatus::Failed, why)) => {
                        self.note(
                            "(pending attempt failed)",
                            &attempt,
                            &[contract_id, account_id],
                            why,
                        );
                        waiting = None;
                    }
                    Some((status, _)) => match self.statement(account_id).await {
                        Some(s) if s.postings.iter().any(|p| p.funding_attempt_id == attempt) => {
                            let posted: i64 = s
                                .postings
                                .iter()
                                .filter(|p| p.funding_attempt_id == attempt)
                                .map(|p| p.amount.as_ref().map_or(0, |a| a.amount_minor))
                                .sum();
                            self.note(
                                "(pending attempt settled)",
                                &attempt,
                                &[contract_id, account_id],
                                format!(
                                    "{status:?}: funding posted {posted} minor after a PENDING answer"
                                ),
                            );
                            return Some((attempt, posted));
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            continue;
                        }
                    },
                }
            }
            let mut request = fund_request(
                &format!("fund-{account_id}-{milestone}-{n}"),
                account_id,
                milestone,
                minor,
            );
            match method {
                Method::Card => {}
                Method::BankTransfer => {
                    request.method = Some(fund_escrow_request::Method::BankTransfer(
                        BankTransferPayment {
                            payer_name: "Chaos Imports Ltd".into(),
                        },
                    ));
                }
                Method::PayLater => {
                    request.method = Some(fund_escrow_request::Method::PayLater(PayLaterPayment {
                        financing_partner_id: PARTNER.into(),
                        repayment_months: 6,
                    }));
                }
            }
            let client = self.escrow.clone();
            let token = buyer.clone();
            let answer = self
                .call(
                    "FundEscrow",
                    &request.idempotency_key.clone(),
                    &[contract_id, account_id],
                    format!("{milestone} {method:?} {minor} minor"),
                    || {
                        let mut c = client.clone();
                        let m = request.clone();
                        let t = token.clone();
                        async move { c.fund_escrow(req(m, &t)).await }
                    },
                )
                .await;
            match answer {
                Ok(answer) => {
                    let Some(attempt) = answer.funding_attempt else {
                        self.fail(account_id, "FundEscrow answered no attempt");
                        return None;
                    };
                    self.note(
                        "(funding attempt)",
                        &attempt.funding_attempt_id,
                        &[contract_id, account_id],
                        format!("{:?} {}", attempt.status(), attempt.failure_message),
                    );
                    match attempt.status() {
                        FundingStatus::Succeeded => {
                            return Some((
                                attempt.funding_attempt_id,
                                attempt.amount.map_or(0, |a| a.amount_minor),
                            ));
                        }
                        FundingStatus::Pending => {
                            started.push(attempt.funding_attempt_id.clone());
                            self.told
                                .pending_attempts
                                .insert(attempt.funding_attempt_id.clone());
                            waiting = Some(attempt.funding_attempt_id);
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        // Declined (a gateway failure): a new try.
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                // Another attempt of the milestone is still pending: wait.
                Err(s)
                    if s.code() == Code::FailedPrecondition && s.message().contains("pending") =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                // Nothing due any more: a PENDING attempt brought it; the
                // loop finds its posting.
                Err(s) if s.code() == Code::InvalidArgument && waiting.is_some() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                // Funded, and not by the attempt waited for: by an earlier
                // one of this client's (found in the statement), else an
                // answer no correct platform gives.
                Err(s)
                    if s.code() == Code::FailedPrecondition
                        && s.message().contains("already funded")
                        && !started.is_empty() =>
                {
                    let statement = self.statement(account_id).await;
                    let posted = statement.and_then(|st| {
                        st.postings
                            .iter()
                            .find(|p| started.contains(&p.funding_attempt_id))
                            .map(|p| {
                                (
                                    p.funding_attempt_id.clone(),
                                    p.amount.as_ref().map_or(0, |a| a.amount_minor),
                                )
                            })
                    });
                    if let Some((attempt, amount)) = posted {
                        self.note(
                            "(funded by an earlier attempt)",
                            &attempt,
                            &[contract_id, account_id],
                            format!("funding posted {amount} minor"),
                        );
                        return Some((attempt, amount));
                    }
                    self.fail(account_id, &format!("FundEscrow {milestone}: {s:?}"));
                    return None;
                }
                Err(s) => {
                    self.fail(account_id, &format!("FundEscrow {milestone}: {s:?}"));
                    return None;
                }
            }
        }
        None
    }

    /// A funding attempt's status and failure, as escrow shows it to support.
    async fn attempt_status(
        &mut self,
        account_id: &str,
        attempt_id: &str,
    ) -> Option<(FundingStatus, String)> {
        let mut c = self.escrow.clone();
        let answer = c
            .get_escrow_account(req(
                GetEscrowAccountRequest {
                    escrow_account_id: account_id.to_owned(),
                    contract_id: String::new(),
                },
                &self.parties.support,
            ))
            .await
            .ok()?
            .into_inner();
        answer
            .funding_attempts
            .into_iter()
            .find(|a| a.funding_attempt_id == attempt_id)
            .map(|a| {
                (
                    a.status(),
                    format!("{:?} {} {}", a.status(), a.failure_code, a.failure_message),
                )
            })
    }

    async fn statement(&mut self, account_id: &str) -> Option<GetEscrowStatementResponse> {
        let support = self.parties.support.clone();
        read_statement(&mut self.escrow, &support, account_id)
            .await
            .ok()
    }

    // --- whole orders through contract --------------------------------------------

    async fn order(&mut self, key: &str) {
        let buyer_id = format!("{}-order-buyer-{}", self.parties.run, self.id);
        let buyer = bearer(&buyer_id, Role::Buyer);
        let supplier = bearer(&self.parties.supplier_owner, Role::Supplier);
        let (plan, method) = Plan::draw(&mut self.rng);
        let mut told = OrderTold {
            plan: Some(plan),
            method,
            ..OrderTold::default()
        };
        let outcome = self
            .order_steps(key, (&buyer, &supplier), (plan, method), &mut told)
            .await;
        if let Err(e) = outcome {
            let entity = if told.contract_id.is_empty() {
                key.to_owned()
            } else {
                told.contract_id.clone()
            };
            self.fail(&entity, &e);
            told.stopped = Some(e);
        }
        self.told.orders.push(told);
    }

    /// One call to contract under `key`, retried; an error is the order's end.
    async fn contract_step<M, T, F, Fut>(
        &mut self,
        name: &str,
        (key, entities, request): (&str, &[&str], String),
        message: M,
        token: &MetadataValue<Ascii>,
        send: F,
    ) -> Result<T, String>
    where
        M: Clone,
        F: Fn(ContractServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.contracts.clone();
        self.call(name, key, entities, request, || {
            send(client.clone(), req(message.clone(), token))
        })
        .await
        .map_err(|s| format!("{name}: {s:?}"))
    }

    /// One call to dispute under `key`, retried; an error is the order's end.
    async fn dispute_step<M, T, F, Fut>(
        &mut self,
        name: &str,
        (key, entities, request): (&str, &[&str], String),
        message: M,
        token: &MetadataValue<Ascii>,
        send: F,
    ) -> Result<T, String>
    where
        M: Clone,
        F: Fn(DisputeServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.disputes.clone();
        self.call(name, key, entities, request, || {
            send(client.clone(), req(message.clone(), token))
        })
        .await
        .map_err(|s| format!("{name}: {s:?}"))
    }

    async fn order_steps(
        &mut self,
        key: &str,
        (buyer, supplier): (&MetadataValue<Ascii>, &MetadataValue<Ascii>),
        (plan, method): (Plan, Method),
        told: &mut OrderTold,
    ) -> Result<(), String> {
        let terms = chaos_terms(method, plan, 10);
        let draft = CreateContractDraftRequest {
            idempotency_key: format!("draft-{key}"),
            supplier_id: self.parties.supplier_id.clone(),
            terms: Some(terms.clone()),
            ..Default::default()
        };
        let created = self
            .contract_step(
                "CreateContractDraft",
                (
                    &draft.idempotency_key.clone(),
                    &[],
                    format!("1,000.00 USD {method:?}, plan {}", plan.name()),
                ),
                draft,
                buyer,
                |mut c, r| async move { c.create_contract_draft(r).await },
            )
            .await?;
        let contract_id = created
            .contract
            .map(|c| c.contract_id)
            .ok_or("no contract")?;
        told.contract_id.clone_from(&contract_id);
        self.note(
            "(draft)",
            key,
            &[&contract_id],
            format!("contract {contract_id}: {method:?}, plan {}", plan.name()),
        );
        for (who, token) in [("supplier", supplier), ("buyer", buyer)] {
            let sign = SignContractRequest {
                idempotency_key: format!("sign-{who}-{key}"),
                contract_id: contract_id.clone(),
                version: 1,
            };
            self.contract_step(
                "SignContract",
                (&sign.idempotency_key.clone(), &[&contract_id], who.into()),
                sign,
                token,
                |mut c, r| async move { c.sign_contract(r).await },
            )
            .await?;
        }
        told.last_ok = "signed".into();
        let active = self
            .wait_status(&contract_id, buyer, ContractStatus::AwaitingPayment)
            .await?;
        let account_id = active.escrow_account_id;
        told.account_id.clone_from(&account_id);
        let ids = [contract_id.as_str(), account_id.as_str()];
        if plan == Plan::CancelUnfunded {
            return self.cancel(key, &ids, ("buyer", buyer), told).await;
        }
        let Some(funding) = self
            .fund(
                &account_id,
                &contract_id,
                buyer,
                "full",
                (ORDER_TOTAL_MINOR, method),
            )
            .await
        else {
            return Err("the order was never funded".into());
        };
        told.fundings.push(funding);
        told.last_ok = "funded".into();
        self.wait_status(&contract_id, buyer, ContractStatus::Funded)
            .await?;
        match plan {
            // Once funded, only the supplier may cancel before shipment.
            Plan::CancelFunded => {
                return self.cancel(key, &ids, ("supplier", supplier), told).await;
            }
            Plan::Amend => {
                let propose = ProposeAmendmentRequest {
                    idempotency_key: format!("amend-{key}"),
                    contract_id: contract_id.clone(),
                    base_version: 1,
                    terms: Some(chaos_terms(method, plan, 8)),
                    change_note: "2 items fewer: the glaze batch ran short".into(),
                };
                self.contract_step(
                    "ProposeAmendment",
                    (
                        &propose.idempotency_key.clone(),
                        &ids,
                        "10 -> 8 items".into(),
                    ),
                    propose,
                    supplier,
                    |mut c, r| async move { c.propose_amendment(r).await },
                )
                .await?;
                for (who, token) in [("supplier", supplier), ("buyer", buyer)] {
                    let sign = SignAmendmentRequest {
                        idempotency_key: format!("amend-{who}-{key}"),
                        contract_id: contract_id.clone(),
                        version: 2,
                    };
                    self.contract_step(
                        "SignAmendment",
                        (&sign.idempotency_key.clone(), &ids, who.into()),
                        sign,
                        token,
                        |mut c, r| async move { c.sign_amendment(r).await },
                    )
                    .await?;
                }
                told.amended = true;
                told.last_ok = "amended".into();
                self.wait_contract(
                    &contract_id,
                    buyer,
                    "the amendment signed (version 2)",
                    |c| c.signed_version == 2 && c.status() == ContractStatus::Funded,
                )
                .await?;
            }
            _ => {}
        }
        let ship = RecordShipmentRequest {
            idempotency_key: format!("ship-{key}"),
            contract_id: contract_id.clone(),
            carrier: "DHL".into(),
            tracking_number: "JD014600006281".into(),
            r#final: true,
            ..Default::default()
        };
        self.contract_step(
            "RecordShipment",
            (&ship.idempotency_key.clone(), &ids, "final".into()),
            ship,
            supplier,
            |mut c, r| async move { c.record_shipment(r).await },
        )
        .await?;
        let receipt = ConfirmReceiptRequest {
            idempotency_key: format!("receipt-{key}"),
            contract_id: contract_id.clone(),
            ..Default::default()
        };
        self.contract_step(
            "ConfirmReceipt",
            (&receipt.idempotency_key.clone(), &ids, String::new()),
            receipt,
            buyer,
            |mut c, r| async move { c.confirm_receipt(r).await },
        )
        .await?;
        told.last_ok = "received".into();
        if let Plan::Claim(claim_plan) = plan {
            self.wait_status(&contract_id, buyer, ContractStatus::Delivered)
                .await?;
            let ends_in_acceptance = self
                .claim(key, &ids, (buyer, supplier), claim_plan, told)
                .await?;
            if !ends_in_acceptance {
                return Ok(());
            }
            // Withdrawn or refused: the contract resumes, then is accepted.
            self.wait_status(&contract_id, buyer, ContractStatus::Delivered)
                .await?;
        }
        let accept = AcceptGoodsRequest {
            idempotency_key: format!("accept-{key}"),
            contract_id: contract_id.clone(),
            note: "all good".into(),
            ..Default::default()
        };
        let accepted = self
            .contract_step(
                "AcceptGoods",
                (&accept.idempotency_key.clone(), &ids, String::new()),
                accept,
                buyer,
                |mut c, r| async move { c.accept_goods(r).await },
            )
            .await?;
        match accepted.contract.map(|c| c.status()) {
            Some(ContractStatus::Completed) => {
                told.last_ok = "accepted".into();
                told.accepted = true;
                Ok(())
            }
            other => Err(format!("AcceptGoods answered a contract {other:?}")),
        }
    }

    async fn cancel(
        &mut self,
        key: &str,
        ids: &[&str],
        (who, token): (&str, &MetadataValue<Ascii>),
        told: &mut OrderTold,
    ) -> Result<(), String> {
        let request = CancelContractRequest {
            idempotency_key: format!("cancel-{key}"),
            contract_id: ids[0].to_owned(),
            reason: "the order is no longer needed".into(),
        };
        self.contract_step(
            "CancelContract",
            (&request.idempotency_key.clone(), ids, who.into()),
            request,
            token,
            |mut c, r| async move { c.cancel_contract(r).await },
        )
        .await?;
        told.last_ok = "cancelled".into();
        told.cancelled = true;
        Ok(())
    }

    /// Files a claim on the received goods and drives it to its planned
    /// end; true when the order goes on to its acceptance (the claim
    /// withdrawn, or refused by the platform).
    async fn claim(
        &mut self,
        key: &str,
        ids: &[&str],
        (buyer, supplier): (&MetadataValue<Ascii>, &MetadataValue<Ascii>),
        plan: ClaimPlan,
        told: &mut OrderTold,
    ) -> Result<bool, String> {
        let file = FileClaimRequest {
            idempotency_key: format!("claim-{key}"),
            contract_id: ids[0].to_owned(),
            reason: ClaimReason::Damage as i32,
            amount_claimed: usd(CLAIMED_MINOR),
            description: "cartons crushed in transit".into(),
            ..Default::default()
        };
        let filed = self
            .dispute_step(
                "FileClaim",
                (
                    &file.idempotency_key.clone(),
                    ids,
                    format!("{plan:?} 300.00 USD"),
                ),
                file,
                buyer,
                |mut c, r| async move { c.file_claim(r).await },
            )
            .await?;
        let claim_id = filed.claim.map(|c| c.claim_id).ok_or("no claim")?;
        told.last_ok = "claim".into();
        told.claim = Some(ClaimTold {
            claim_id: claim_id.clone(),
            end: ClaimEnd::Filed,
        });
        let mut entities: Vec<&str> = ids.to_vec();
        entities.push(&claim_id);
        let entities = entities.as_slice();
        self.note("(claim)", key, entities, format!("claim {claim_id}"));
        let opened = self
            .wait_claim(&claim_id, buyer, |c| c.status() != ClaimStatus::Opening)
            .await?;
        if opened.status() == ClaimStatus::Refused {
            self.note(
                "(claim refused)",
                &claim_id,
                entities,
                opened.refusal_reason.clone(),
            );
            if let Some(claim) = told.claim.as_mut() {
                claim.end = ClaimEnd::Refused(opened.refusal_reason);
            }
            return Ok(true);
        }
        let arbiter = self.parties.arbiter.clone();
        let end = match plan {
            ClaimPlan::Withdraw => {
                let request = WithdrawClaimRequest {
                    idempotency_key: format!("withdraw-{key}"),
                    claim_id: claim_id.clone(),
                    reason: "the supplier replaced the cartons".into(),
                };
                self.dispute_step(
                    "WithdrawClaim",
                    (&request.idempotency_key.clone(), entities, String::new()),
                    request,
                    buyer,
                    |mut c, r| async move { c.withdraw_claim(r).await },
                )
                .await?;
                ClaimEnd::Withdrawn
            }
            ClaimPlan::Decide => {
                let request = EscalateClaimRequest {
                    idempotency_key: format!("escalate-{key}"),
                    claim_id: claim_id.clone(),
                    reason: "the parties stopped answering each other".into(),
                };
                self.dispute_step(
                    "EscalateClaim",
                    (&request.idempotency_key.clone(), entities, "arbiter".into()),
                    request,
                    &arbiter,
                    |mut c, r| async move { c.escalate_claim(r).await },
                )
                .await?;
                let request = DecideClaimRequest {
                    idempotency_key: format!("decide-{key}"),
                    claim_id: claim_id.clone(),
                    outcome: ClaimOutcome::PartialRefund as i32,
                    refund_amount: usd(DECIDED_MINOR),
                    reason: "a fifth of the cartons crushed".into(),
                    ..Default::default()
                };
                self.dispute_step(
                    "DecideClaim",
                    (
                        &request.idempotency_key.clone(),
                        entities,
                        "partial refund 200.00 USD".into(),
                    ),
                    request,
                    &arbiter,
                    |mut c, r| async move { c.decide_claim(r).await },
                )
                .await?;
                ClaimEnd::Decided(DECIDED_MINOR)
            }
            ClaimPlan::FullOffer | ClaimPlan::PartialOffer => {
                let full = plan == ClaimPlan::FullOffer;
                let request = MakeOfferRequest {
                    idempotency_key: format!("offer-{key}"),
                    claim_id: claim_id.clone(),
                    kind: if full {
                        OfferKind::FullRefund
                    } else {
                        OfferKind::PartialRefund
                    } as i32,
                    refund_amount: if full { None } else { usd(OFFERED_MINOR) },
                    message: "we take the claim".into(),
                };
                let offered = self
                    .dispute_step(
                        "MakeOffer",
                        (
                            &request.idempotency_key.clone(),
                            entities,
                            format!("{plan:?}"),
                        ),
                        request,
                        supplier,
                        |mut c, r| async move { c.make_offer(r).await },
                    )
                    .await?;
                let offer_id = offered.offer.map(|o| o.offer_id).ok_or("no offer")?;
                let request = AcceptOfferRequest {
                    idempotency_key: format!("accept-offer-{key}"),
                    claim_id: claim_id.clone(),
                    offer_id,
                };
                self.dispute_step(
                    "AcceptOffer",
                    (&request.idempotency_key.clone(), entities, String::new()),
                    request,
                    buyer,
                    |mut c, r| async move { c.accept_offer(r).await },
                )
                .await?;
                ClaimEnd::Settled(if full { None } else { Some(OFFERED_MINOR) })
            }
        };
        let resumes = end == ClaimEnd::Withdrawn;
        if let Some(claim) = told.claim.as_mut() {
            claim.end = end;
        }
        Ok(resumes)
    }

    /// Polls GetClaim (as the buyer) until `done`.
    async fn wait_claim(
        &mut self,
        claim_id: &str,
        token: &MetadataValue<Ascii>,
        done: impl Fn(&Claim) -> bool,
    ) -> Result<Claim, String> {
        let started = Instant::now();
        loop {
            let mut c = self.disputes.clone();
            let answer = c
                .get_claim(req(
                    GetClaimRequest {
                        claim_id: claim_id.to_owned(),
                    },
                    token,
                ))
                .await;
            if let Ok(answer) = answer
                && let Some(claim) = answer.into_inner().claim
                && done(&claim)
            {
                self.note(
                    "(wait)",
                    claim_id,
                    &[claim_id],
                    format!(
                        "claim {:?} after {} ms",
                        claim.status(),
                        started.elapsed().as_millis()
                    ),
                );
                return Ok(claim);
            }
            if Instant::now() >= self.give_up_at {
                return Err(format!("claim {claim_id} never left OPENING"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls GetContract (retried like any call) until `wanted`.
    async fn wait_status(
        &mut self,
        contract_id: &str,
        token: &MetadataValue<Ascii>,
        wanted: ContractStatus,
    ) -> Result<Contract, String> {
        self.wait_contract(contract_id, token, &format!("{wanted:?}"), |c| {
            c.status() == wanted
        })
        .await
    }

    /// Polls GetContract (retried like any call) until `done`.
    async fn wait_contract(
        &mut self,
        contract_id: &str,
        token: &MetadataValue<Ascii>,
        what: &str,
        done: impl Fn(&Contract) -> bool,
    ) -> Result<Contract, String> {
        let started = Instant::now();
        let client = self.contracts.clone();
        let mut last = None;
        loop {
            let mut c = client.clone();
            let answer = c
                .get_contract(req(
                    GetContractRequest {
                        contract_id: contract_id.to_owned(),
                        version: 0,
                    },
                    token,
                ))
                .await;
            if let Ok(answer) = answer
                && let Some(contract) = answer.into_inner().contract
            {
                if done(&contract) {
                    self.note(
                        "(wait)",
                        contract_id,
                        &[contract_id],
                        format!("{what} after {} ms", started.elapsed().as_millis()),
                    );
                    return Ok(contract);
                }
                last = Some(contract.status());
            }
            if Instant::now() >= self.give_up_at {
                return Err(format!(
                    "{contract_id} never became {what} (last seen {last:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The run's order: 10 items at 100.00 USD (`items` fewer after an
/// amendment), paid in full after signing; Pay Later through the run's
/// partner for Pay Later orders; a claim window of 7 days (days are real:
/// no timer accepts or escalates during a run) for the claims.
fn chaos_terms(method: Method, plan: Plan, items: u32) -> ContractTerms {
    let mut terms = order_terms();
    terms.line_items[0].quantity = items.into();
    terms.claim_window_days = 7;
    if let Plan::Claim(_) = plan {
        terms.title = "Stoneware mugs, claimed".into();
    }
    if method == Method::PayLater
        && let Some(payment) = terms.payment_terms.as_mut()
    {
        payment.scheme = PaymentScheme::PayLater as i32;
        payment.pay_later = Some(PayLaterTerms {
            financing_partner_id: PARTNER.into(),
            repayment_months: 6,
        });
    }
    terms
}
