//! An in-process gateway for fast tests: it answers at once, never fails
//! half-way, and keeps every operation by key, like the sandbox process
//! (`sandbox/payment-gateway`) and a hosted gateway do.
//!
//! # Test tokens and names
//!
//! | Input | Answer |
//! |---|---|
//! | card token `tok_visa` (or any other `tok_...`) | approved, settled in the call |
//! | card token `tok_declined` | declined, code `card_declined` |
//! | card token `tok_insufficient_funds` | declined, code `insufficient_funds` |
//! | card token `tok_gateway_error` | the gateway fails: nothing charged |
//! | card token `tok_timeout` | the charge goes through but the answer is lost; the same key again, or [`PaymentGateway::operation`], returns that charge |
//! | a card token not starting with `tok_` | declined, code `invalid_token` |
//! | bank transfer | pending, with the sandbox's IBAN, BIC and a payment reference |
//! | Pay Later, partner `partner_unavailable` | the gateway fails, nothing recorded |
//! | Pay Later | pending until the partner's `pay_later.disbursed` webhook |
//! | payouts and refunds | pending until `payout.paid` / `refund.paid` webhooks |

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ta_runtime::money::Money;
use uuid::Uuid;

use super::{
    BankInstructions, CardCharge, CardOutcome, GatewayError, Operation, OperationKind,
    OperationStatus, OutgoingTransfer, PayLaterApplication, PaymentGateway,
};

/// An in-memory gateway that behaves like a real one for the inputs in the
/// module docs, idempotent per key.
#[derive(Clone, Debug, Default)]
pub struct InMemoryGateway {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    by_key: HashMap<String, Stored>,
    /// Money actually charged or sent, per key (a retry adds nothing).
    moved: HashMap<String, Money>,
    /// Keys voided by `void_unless_done`: nothing is done under them.
    voided: std::collections::HashSet<String>,
}

#[derive(Clone, Debug)]
struct Stored {
    operation: Operation,
    answer: Answer,
}

#[derive(Clone, Debug)]
enum Answer {
    Card(CardCharge),
    Bank(BankInstructions),
    PayLater(PayLaterApplication),
    Transfer(OutgoingTransfer),
}

pub const SANDBOX_BENEFICIARY: &str = "Trade Assurance Escrow (sandbox)";
pub const SANDBOX_IBAN: &str = "DE89370400440532013000";
pub const SANDBOX_BIC: &str = "COBADEFFXXX";

impl InMemoryGateway {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many charges or transfers moved money (each key counts once).
    pub fn money_movements(&self) -> usize {
        self.lock().moved.len()
    }

    /// The amount charged or sent under `key`, if any.
    pub fn moved_under(&self, key: &str) -> Option<Money> {
        self.lock().moved.get(key).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reference(prefix: &str) -> String {
        format!("{prefix}_{}", Uuid::now_v7().simple())
    }

    fn remember(&self, key: &str, operation: Operation, answer: Answer, moved: bool) {
        let mut state = self.lock();
        if moved {
            state.moved.insert(key.to_owned(), operation.amount);
        }
        state
            .by_key
            .insert(key.to_owned(), Stored { operation, answer });
    }

    /// Refuses a new payment under a voided key.
    fn refuse_voided(&self, key: &str) -> Result<(), GatewayError> {
        if self.lock().voided.contains(key) {
            return Err(GatewayError::Rejected {
                code: "operation_voided".into(),
                message: format!("the key {key} was voided"),
            });
        }
        Ok(())
    }

    fn replay(&self, key: &str) -> Option<Answer> {
        self.lock().by_key.get(key).map(|s| s.answer.clone())
    }

    fn operation_of(
        kind: OperationKind,
        reference: &str,
        client_reference: &str,
        amount: Money,
        status: OperationStatus,
    ) -> Operation {
        Operation {
            kind,
            reference: reference.to_owned(),
            client_reference: client_reference.to_owned(),
            amount,
            settled_minor: None,
            status,
            bank_instructions: None,
            loan_reference: None,
        }
    }

    fn transfer(
        &self,
        kind: OperationKind,
        prefix: &str,
        key: &str,
        client_reference: &str,
        amount: Money,
    ) -> OutgoingTransfer {
        if let Some(Answer::Transfer(transfer)) = self.replay(key) {
            return transfer;
        }
        let transfer = OutgoingTransfer {
            reference: Self::reference(prefix),
            status: OperationStatus::Pending,
        };
        let operation = Self::operation_of(
            kind,
            &transfer.reference,
            client_reference,
            amount,
            OperationStatus::Pending,
        );
        self.remember(key, operation, Answer::Transfer(transfer.clone()), true);
        transfer
    }
}

#[tonic::async_trait]
impl PaymentGateway for InMemoryGateway {
    async fn charge_card(
        &self,
        key: &str,
        client_reference: &str,
        card_token: &str,
        amount: Money,
    ) -> Result<CardCharge, GatewayError> {
        self.refuse_voided(key)?;
        if let Some(Answer::Card(charge)) = self.replay(key) {
            return Ok(charge);
        }
        let declined = |code: &str, message: &str| CardOutcome::Declined {
            code: code.into(),
            message: message.into(),
        };
        let outcome = match card_token {
            "tok_gateway_error" => {
                return Err(GatewayError::Unavailable("sandbox gateway error".into()));
            }
            "tok_declined" => declined("card_declined", "the card was declined"),
            "tok_insufficient_funds" => declined("insufficient_funds", "insufficient funds"),
            token if !token.starts_with("tok_") => {
                declined("invalid_token", "the card token is unknown")
            }
            _ => CardOutcome::Approved,
        };
        let charge = CardCharge {
            reference: Self::reference("pay"),
            outcome,
        };
        let status = match &charge.outcome {
            CardOutcome::Approved => OperationStatus::Succeeded,
            CardOutcome::Declined { code, message } => OperationStatus::Failed {
                code: code.clone(),
                message: message.clone(),
            },
        };
        let approved = status == OperationStatus::Succeeded;
        let operation = Self::operation_of(
            OperationKind::Charge,
            &charge.reference,
            client_reference,
            amount,
            status,
        );
        self.remember(key, operation, Answer::Card(charge.clone()), approved);
        if card_token == "tok_timeout" {
            // Charged, but the answer never reaches escrow.
            return Err(GatewayError::Unknown("sandbox timeout".into()));
        }
        Ok(charge)
    }

    async fn start_bank_transfer(
        &self,
        key: &str,
        client_reference: &str,
        _payer_name: &str,
        amount: Money,
    ) -> Result<BankInstructions, GatewayError> {
        self.refuse_voided(key)?;
        if let Some(Answer::Bank(instructions)) = self.replay(key) {
            return Ok(instructions);
        }
        let reference = Self::reference("bt");
        let instructions = BankInstructions {
            payment_reference: format!("TA{}", reference[3..15].to_ascii_uppercase()),
            reference,
            beneficiary_name: SANDBOX_BENEFICIARY.into(),
            iban: SANDBOX_IBAN.into(),
            bic: SANDBOX_BIC.into(),
        };
        let mut operation = Self::operation_of(
            OperationKind::BankTransfer,
            &instructions.reference,
            client_reference,
            amount,
            OperationStatus::Pending,
        );
        operation.bank_instructions = Some(instructions.clone());
        self.remember(key, operation, Answer::Bank(instructions.clone()), false);
        Ok(instructions)
    }

    async fn start_pay_later(
        &self,
        key: &str,
        client_reference: &str,
        partner_id: &str,
        _repayment_months: u32,
        amount: Money,
    ) -> Result<PayLaterApplication, GatewayError> {
        self.refuse_voided(key)?;
        if let Some(Answer::PayLater(application)) = self.replay(key) {
            return Ok(application);
        }
        if partner_id == "partner_unavailable" {
            return Err(GatewayError::Unavailable(
                "the financing partner does not answer".into(),
            ));
        }
        let application = PayLaterApplication {
            reference: Self::reference("pl"),
            loan_reference: Self::reference("loan"),
        };
        let mut operation = Self::operation_of(
            OperationKind::PayLater,
            &application.reference,
            client_reference,
            amount,
            OperationStatus::Pending,
        );
        operation.loan_reference = Some(application.loan_reference.clone());
        self.remember(key, operation, Answer::PayLater(application.clone()), false);
        Ok(application)
    }

    async fn send_payout(
        &self,
        key: &str,
        client_reference: &str,
        _beneficiary: &str,
        amount: Money,
    ) -> Result<OutgoingTransfer, GatewayError> {
        Ok(self.transfer(OperationKind::Payout, "po", key, client_reference, amount))
    }

    async fn refund(
        &self,
        key: &str,
        client_reference: &str,
        _source_reference: &str,
        amount: Money,
    ) -> Result<OutgoingTransfer, GatewayError> {
        Ok(self.transfer(OperationKind::Refund, "re", key, client_reference, amount))
    }

    async fn operation(&self, key: &str) -> Result<Option<Operation>, GatewayError> {
        Ok(self.lock().by_key.get(key).map(|s| s.operation.clone()))
    }

    async fn void_unless_done(&self, key: &str) -> Result<Option<Operation>, GatewayError> {
        let mut state = self.lock();
        let done = state.by_key.get(key).map(|s| s.operation.clone());
        if done.is_none() {
            state.voided.insert(key.to_owned());
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use ta_runtime::money::Currency;

    use super::*;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::parse("USD").unwrap())
    }

    #[tokio::test]
    async fn a_voided_key_charges_nothing_and_a_charged_one_is_not_voided() {
        let gateway = InMemoryGateway::new();
        assert!(gateway.void_unless_done("late").await.unwrap().is_none());
        let late = gateway
            .charge_card("late", "a1", "tok_visa", usd(100))
            .await
            .unwrap_err();
        assert!(
            matches!(&late, GatewayError::Rejected { code, .. } if code == "operation_voided"),
            "{late:?}"
        );
        assert!(gateway.operation("late").await.unwrap().is_none());
        gateway
            .charge_card("done", "a2", "tok_visa", usd(100))
            .await
            .unwrap();
        let done = gateway.void_unless_done("done").await.unwrap().unwrap();
        assert_eq!(done.status, OperationStatus::Succeeded);
    }

    #[tokio::test]
    async fn a_card_is_charged_once_per_key() {
        let gateway = InMemoryGateway::new();
        let first = gateway
            .charge_card("k1", "a1", "tok_visa", usd(100))
            .await
            .unwrap();
        let again = gateway
            .charge_card("k1", "a1", "tok_visa", usd(100))
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(first.outcome, CardOutcome::Approved);
        assert_eq!(gateway.money_movements(), 1);
        gateway
            .charge_card("k2", "a2", "tok_visa", usd(100))
            .await
            .unwrap();
        assert_eq!(gateway.money_movements(), 2);
    }

    #[tokio::test]
    async fn declines_move_no_money() {
        let gateway = InMemoryGateway::new();
        for (token, code) in [
            ("tok_declined", "card_declined"),
            ("tok_insufficient_funds", "insufficient_funds"),
            ("4242424242424242", "invalid_token"),
        ] {
            let charge = gateway
                .charge_card(token, token, token, usd(5))
                .await
                .unwrap();
            assert!(
                matches!(&charge.outcome, CardOutcome::Declined { code: c, .. } if c == code),
                "{token}: {charge:?}"
            );
        }
        assert_eq!(gateway.money_movements(), 0);
    }

    #[tokio::test]
    async fn a_gateway_error_records_nothing_and_a_timeout_replays_its_charge() {
        let gateway = InMemoryGateway::new();
        let error = gateway
            .charge_card("e", "a", "tok_gateway_error", usd(5))
            .await;
        assert!(matches!(error, Err(GatewayError::Unavailable(_))));
        assert_eq!(gateway.money_movements(), 0);

        let lost = gateway.charge_card("t", "a", "tok_timeout", usd(5)).await;
        assert!(matches!(lost, Err(GatewayError::Unknown(_))));
        assert_eq!(
            gateway.moved_under("t"),
            Some(usd(5)),
            "charged, answer lost"
        );
        let retried = gateway
            .charge_card("t", "a", "tok_timeout", usd(5))
            .await
            .unwrap();
        assert_eq!(retried.outcome, CardOutcome::Approved);
        assert_eq!(
            gateway.money_movements(),
            1,
            "the retry charged nothing more"
        );
    }

    #[tokio::test]
    async fn bank_transfers_and_pay_later_are_stable_per_key() {
        let gateway = InMemoryGateway::new();
        let a = gateway
            .start_bank_transfer("b", "a", "Buyer GmbH", usd(9))
            .await
            .unwrap();
        let b = gateway
            .start_bank_transfer("b", "a", "Buyer GmbH", usd(9))
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.iban, SANDBOX_IBAN);
        assert!(a.payment_reference.starts_with("TA"), "{a:?}");
        let loan = gateway
            .start_pay_later("p", "a", "partner-1", 3, usd(9))
            .await
            .unwrap();
        assert_eq!(
            loan,
            gateway
                .start_pay_later("p", "a", "partner-1", 3, usd(9))
                .await
                .unwrap()
        );
        assert!(
            gateway
                .start_pay_later("q", "a", "partner_unavailable", 3, usd(9))
                .await
                .is_err()
        );
        let sent = gateway
            .send_payout("s", "x", "supplier-1", usd(9))
            .await
            .unwrap();
        assert_eq!(
            sent,
            gateway
                .send_payout("s", "x", "supplier-1", usd(9))
                .await
                .unwrap()
        );
        assert_eq!(gateway.money_movements(), 1);
    }
}
