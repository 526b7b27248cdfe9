//! A payment gateway that misbehaves when a test says so, around the
//! in-process [`InMemoryGateway`] (which keeps the books: what was charged
//! and sent, by key): the k-th call of a kind fails before acting
//! (UNAVAILABLE), acts and loses its answer (UNKNOWN), or waits until the
//! test releases it, before or after acting. Every call is recorded with its
//! arguments.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use escrow::gateway::{
    BankInstructions, CardCharge, GatewayError, Operation, OutgoingTransfer, PayLaterApplication,
    PaymentGateway, memory::InMemoryGateway,
};
use ta_runtime::money::Money;
use tokio::sync::watch;

/// The gateway's calls, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Charge,
    BankTransfer,
    PayLater,
    Payout,
    Refund,
    /// The status query by key.
    Status,
}

/// What goes wrong with one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The gateway refuses before acting: nothing moves.
    Unavailable,
    /// The gateway acts; its answer never arrives.
    LoseAnswer,
    /// The call waits for [`FaultyGateway::release`] before the gateway acts.
    BlockBefore,
    /// The gateway acts, then the answer waits for [`FaultyGateway::release`].
    BlockAfter,
}

/// One call as escrow made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub call: Call,
    pub key: String,
    pub client_reference: String,
    /// A payout's beneficiary, a refund's source, a card token.
    pub detail: String,
    pub amount: Option<Money>,
}

#[derive(Default)]
struct State {
    faults: HashMap<(Call, usize), Fault>,
    made: Vec<Made>,
    blocked: usize,
}

/// See the module docs. Clones share their state.
#[derive(Clone)]
pub struct FaultyGateway {
    pub books: InMemoryGateway,
    state: Arc<Mutex<State>>,
    /// Bumped by each release: a blocked call waits for the next bump.
    released: Arc<watch::Sender<u64>>,
}

impl Default for FaultyGateway {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyGateway {
    pub fn new() -> Self {
        Self {
            books: InMemoryGateway::new(),
            state: Arc::default(),
            released: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `nth` call (from 1) of `call` suffers `fault`.
    pub fn inject(&self, call: Call, nth: usize, fault: Fault) {
        self.lock().faults.insert((call, nth), fault);
    }

    /// Lets every call blocked now go on (a later one blocks again).
    pub fn release(&self) {
        self.released.send_modify(|generation| *generation += 1);
    }

    /// The calls of `call` escrow made, in order.
    pub fn made(&self, call: Call) -> Vec<Made> {
        self.lock()
            .made
            .iter()
            .filter(|m| m.call == call)
            .cloned()
            .collect()
    }

    /// How many calls wait for [`Self::release`] now.
    pub fn blocked(&self) -> usize {
        self.lock().blocked
    }

    /// Waits (bounded) until `n` calls are blocked.
    pub async fn wait_blocked(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.blocked() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} calls reached the gateway",
                self.blocked()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn enter(&self, made: Made) -> Option<Fault> {
        let mut state = self.lock();
        let call = made.call;
        state.made.push(made);
        let nth = state.made.iter().filter(|m| m.call == call).count();
        state.faults.get(&(call, nth)).copied()
    }

    async fn wait(&self) {
        let mut released = self.released.subscribe();
        let generation = *released.borrow_and_update();
        self.lock().blocked += 1;
        let _ = released.wait_for(|g| *g > generation).await;
        self.lock().blocked -= 1;
    }

    async fn around<T>(
        &self,
        made: Made,
        act: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        let fault = self.enter(made);
        match fault {
            Some(Fault::Unavailable) => {
                return Err(GatewayError::Unavailable("injected: refused".into()));
            }
            Some(Fault::BlockBefore) => self.wait().await,
            _ => {}
        }
        let answer = act.await;
        match fault {
            Some(Fault::LoseAnswer) => Err(GatewayError::Unknown("injected: answer lost".into())),
            Some(Fault::BlockAfter) => {
                self.wait().await;
                answer
            }
            _ => answer,
        }
    }
}

fn made(call: Call, key: &str, client: &str, detail: &str, amount: Option<Money>) -> Made {
    Made {
        call,
        key: key.to_owned(),
        client_reference: client.to_owned(),
        detail: detail.to_owned(),
        amount,
    }
}

#[tonic::async_trait]
impl PaymentGateway for FaultyGateway {
    async fn charge_card(
        &self,
        key: &str,
        client_reference: &str,
        card_token: &str,
        amount: Money,
    ) -> Result<CardCharge, GatewayError> {
        self.around(
            made(
                Call::Charge,
                key,
                client_reference,
                card_token,
                Some(amount),
            ),
            self.books
                .charge_card(key, client_reference, card_token, amount),
        )
        .await
    }

    async fn start_bank_transfer(
        &self,
        key: &str,
        client_reference: &str,
        payer_name: &str,
        amount: Money,
    ) -> Result<BankInstructions, GatewayError> {
        self.around(
            made(
                Call::BankTransfer,
                key,
                client_reference,
                payer_name,
                Some(amount),
            ),
            self.books
                .start_bank_transfer(key, client_reference, payer_name, amount),
        )
        .await
    }

    async fn start_pay_later(
        &self,
        key: &str,
        client_reference: &str,
        partner_id: &str,
        repayment_months: u32,
        amount: Money,
    ) -> Result<PayLaterApplication, GatewayError> {
        self.around(
            made(
                Call::PayLater,
                key,
                client_reference,
                partner_id,
                Some(amount),
            ),
            self.books
                .start_pay_later(key, client_reference, partner_id, repayment_months, amount),
        )
        .await
    }

    async fn send_payout(
        &self,
        key: &str,
        client_reference: &str,
        beneficiary: &str,
        amount: Money,
    ) -> Result<OutgoingTransfer, GatewayError> {
        self.around(
            made(
                Call::Payout,
                key,
                client_reference,
                beneficiary,
                Some(amount),
            ),
            self.books
                .send_payout(key, client_reference, beneficiary, amount),
        )
        .await
    }

    async fn refund(
        &self,
        key: &str,
        client_reference: &str,
        source_reference: &str,
        amount: Money,
    ) -> Result<OutgoingTransfer, GatewayError> {
        self.around(
            made(
                Call::Refund,
                key,
                client_reference,
                source_reference,
                Some(amount),
            ),
            self.books
                .refund(key, client_reference, source_reference, amount),
        )
        .await
    }

    async fn operation(&self, key: &str) -> Result<Option<Operation>, GatewayError> {
        self.around(
            made(Call::Status, key, "", "", None),
            self.books.operation(key),
        )
        .await
    }

    async fn void_unless_done(&self, key: &str) -> Result<Option<Operation>, GatewayError> {
        self.around(
            made(Call::Status, key, "", "void", None),
            self.books.void_unless_done(key),
        )
        .await
    }
}
