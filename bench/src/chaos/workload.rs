//! The clients: the rolling scenario's money paths driven through the real
//! binaries while the schedule runs. Half the clients place whole orders
//! through contract (draft, both signatures, activation with cover and an
//! escrow account, card funding, shipment, receipt, acceptance and the
//! release that follows; one order in five cancelled by its buyer once
//! active instead); the other half work escrow directly as contract does
//! (an account of two milestones, each funded by card and released).
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

use ta_proto::tradeassurance::{
    contract::v1::{
        AcceptGoodsRequest, CancelContractRequest, ConfirmReceiptRequest, Contract, ContractStatus,
        CreateContractDraftRequest, GetContractRequest, RecordShipmentRequest, SignContractRequest,
        contract_service_client::ContractServiceClient,
    },
    escrow::v1::{
        EscrowPaymentScheme, FundingStatus, GetEscrowStatementResponse, OpenEscrowAccountRequest,
        ScheduledPayment, escrow_service_client::EscrowServiceClient,
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

/// What one order's client was finally told, for the end-state checks.
#[derive(Clone, Debug, Default)]
pub struct OrderTold {
    pub contract_id: String,
    pub account_id: String,
    /// The last step acknowledged: "signed", "funded", "accepted", "cancelled".
    pub last_ok: String,
    /// Why the client stopped before the end, if it did: the final answer.
    pub stopped: Option<String>,
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
        (contract_channel, escrow_channel): (Channel, Channel),
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
            if !self
                .fund(
                    &account_id,
                    &contract_id,
                    &buyer,
                    &milestone,
                    MILESTONE_MINOR,
                )
                .await
            {
                return;
            }
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

    /// Funds one milestone by card until the money is in (true), each new
    /// try under a new key: a declined card (the gateway's 503s) is tried
    /// again, an attempt answered PENDING is waited for.
    async fn fund(
        &mut self,
        account_id: &str,
        contract_id: &str,
        buyer: &MetadataValue<Ascii>,
        milestone: &str,
        minor: i64,
    ) -> bool {
        let supplier_id = self.parties.supplier_id.clone();
        let mut waiting: Option<String> = None;
        for n in 0.. {
            if Instant::now() >= self.give_up_at {
                self.fail(account_id, &format!("{milestone} never funded"));
                return false;
            }
            if let Some(attempt) = waiting.clone() {
                // The PENDING attempt: its money shows once the gateway's
                // answer arrives (webhook or status check).
                match self.statement(account_id).await {
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
                            format!("funding posted {posted} minor after a PENDING answer"),
                        );
                        self.told
                            .tally
                            .funded(account_id, &supplier_id, &attempt, posted);
                        return true;
                    }
                    _ => {}
                }
            }
            let request = fund_request(
                &format!("fund-{account_id}-{milestone}-{n}"),
                account_id,
                milestone,
                minor,
            );
            let client = self.escrow.clone();
            let token = buyer.clone();
            let answer = self
                .call(
                    "FundEscrow",
                    &request.idempotency_key.clone(),
                    &[contract_id, account_id],
                    format!("{milestone} card {minor} minor"),
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
                        return false;
                    };
                    self.note(
                        "(funding attempt)",
                        &attempt.funding_attempt_id,
                        &[contract_id, account_id],
                        format!("{:?} {}", attempt.status(), attempt.failure_message),
                    );
                    match attempt.status() {
                        FundingStatus::Succeeded => {
                            self.told.tally.funded(
                                account_id,
                                &supplier_id,
                                &attempt.funding_attempt_id,
                                attempt.amount.map_or(0, |a| a.amount_minor),
                            );
                            return true;
                        }
                        FundingStatus::Pending => {
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
                Err(s) => {
                    self.fail(account_id, &format!("FundEscrow {milestone}: {s:?}"));
                    return false;
                }
            }
        }
        false
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
        let cancel = self.rng.below(5) == 0;
        let mut told = OrderTold::default();
        let outcome = self
            .order_steps(key, &buyer, &supplier, cancel, &mut told)
            .await;
        if let Err(e) = outcome {
            self.fail(&told.contract_id, &e);
            told.stopped = Some(e);
        }
        self.told.orders.push(told);
    }

    async fn order_steps(
        &mut self,
        key: &str,
        buyer: &MetadataValue<Ascii>,
        supplier: &MetadataValue<Ascii>,
        cancel: bool,
        told: &mut OrderTold,
    ) -> Result<(), String> {
        let draft = CreateContractDraftRequest {
            idempotency_key: format!("draft-{key}"),
            supplier_id: self.parties.supplier_id.clone(),
            terms: Some(order_terms()),
            ..Default::default()
        };
        let client = self.contracts.clone();
        let created = self
            .call(
                "CreateContractDraft",
                &draft.idempotency_key.clone(),
                &[],
                "1,000.00 USD".into(),
                || {
                    let mut c = client.clone();
                    let m = draft.clone();
                    let t = buyer.clone();
                    async move { c.create_contract_draft(req(m, &t)).await }
                },
            )
            .await
            .map_err(|s| format!("CreateContractDraft: {s:?}"))?;
        let contract_id = created
            .contract
            .map(|c| c.contract_id)
            .ok_or("no contract")?;
        told.contract_id.clone_from(&contract_id);
        self.note(
            "(draft)",
            key,
            &[&contract_id],
            format!("contract {contract_id}"),
        );
        for (who, token) in [("supplier", supplier), ("buyer", buyer)] {
            let sign = SignContractRequest {
                idempotency_key: format!("sign-{who}-{key}"),
                contract_id: contract_id.clone(),
                version: 1,
            };
            let client = self.contracts.clone();
            self.call(
                "SignContract",
                &sign.idempotency_key.clone(),
                &[&contract_id],
                who.into(),
                || {
                    let mut c = client.clone();
                    let m = sign.clone();
                    let t = token.clone();
                    async move { c.sign_contract(req(m, &t)).await }
                },
            )
            .await
            .map_err(|s| format!("SignContract ({who}): {s:?}"))?;
        }
        told.last_ok = "signed".into();
        let active = self
            .wait_status(&contract_id, buyer, ContractStatus::AwaitingPayment)
            .await?;
        let account_id = active.escrow_account_id;
        told.account_id.clone_from(&account_id);
        if cancel {
            let request = CancelContractRequest {
                idempotency_key: format!("cancel-{key}"),
                contract_id: contract_id.clone(),
                reason: "the buyer changed its mind".into(),
            };
            let client = self.contracts.clone();
            self.call(
                "CancelContract",
                &request.idempotency_key.clone(),
                &[&contract_id, &account_id],
                "buyer".into(),
                || {
                    let mut c = client.clone();
                    let m = request.clone();
                    let t = buyer.clone();
                    async move { c.cancel_contract(req(m, &t)).await }
                },
            )
            .await
            .map_err(|s| format!("CancelContract: {s:?}"))?;
            told.last_ok = "cancelled".into();
            return Ok(());
        }
        if !self
            .fund(&account_id, &contract_id, buyer, "full", ORDER_TOTAL_MINOR)
            .await
        {
            return Err("the order was never funded".into());
        }
        told.last_ok = "funded".into();
        self.wait_status(&contract_id, buyer, ContractStatus::Funded)
            .await?;
        let ship = RecordShipmentRequest {
            idempotency_key: format!("ship-{key}"),
            contract_id: contract_id.clone(),
            carrier: "DHL".into(),
            tracking_number: "JD014600006281".into(),
            r#final: true,
            ..Default::default()
        };
        let client = self.contracts.clone();
        self.call(
            "RecordShipment",
            &ship.idempotency_key.clone(),
            &[&contract_id, &account_id],
            "final".into(),
            || {
                let mut c = client.clone();
                let m = ship.clone();
                let t = supplier.clone();
                async move { c.record_shipment(req(m, &t)).await }
            },
        )
        .await
        .map_err(|s| format!("RecordShipment: {s:?}"))?;
        let receipt = ConfirmReceiptRequest {
            idempotency_key: format!("receipt-{key}"),
            contract_id: contract_id.clone(),
            ..Default::default()
        };
        let client = self.contracts.clone();
        self.call(
            "ConfirmReceipt",
            &receipt.idempotency_key.clone(),
            &[&contract_id, &account_id],
            String::new(),
            || {
                let mut c = client.clone();
                let m = receipt.clone();
                let t = buyer.clone();
                async move { c.confirm_receipt(req(m, &t)).await }
            },
        )
        .await
        .map_err(|s| format!("ConfirmReceipt: {s:?}"))?;
        let accept = AcceptGoodsRequest {
            idempotency_key: format!("accept-{key}"),
            contract_id: contract_id.clone(),
            note: "all good".into(),
            ..Default::default()
        };
        let client = self.contracts.clone();
        let accepted = self
            .call(
                "AcceptGoods",
                &accept.idempotency_key.clone(),
                &[&contract_id, &account_id],
                String::new(),
                || {
                    let mut c = client.clone();
                    let m = accept.clone();
                    let t = buyer.clone();
                    async move { c.accept_goods(req(m, &t)).await }
                },
            )
            .await
            .map_err(|s| format!("AcceptGoods: {s:?}"))?;
        match accepted.contract.map(|c| c.status()) {
            Some(ContractStatus::Completed) => {
                told.last_ok = "accepted".into();
                self.told
                    .tally
                    .account(&account_id, &self.parties.supplier_id)
                    .acceptance_expected = true;
                Ok(())
            }
            other => Err(format!("AcceptGoods answered a contract {other:?}")),
        }
    }

    /// Polls GetContract (retried like any call) until `wanted`.
    async fn wait_status(
        &mut self,
        contract_id: &str,
        token: &MetadataValue<Ascii>,
        wanted: ContractStatus,
    ) -> Result<Contract, String> {
        let started = Instant::now();
        let client = self.contracts.clone();
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
                && contract.status() == wanted
            {
                self.note(
                    "(wait)",
                    contract_id,
                    &[contract_id],
                    format!("{wanted:?} after {} ms", started.elapsed().as_millis()),
                );
                return Ok(contract);
            }
            if Instant::now() >= self.give_up_at {
                return Err(format!("{contract_id} never became {wanted:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
