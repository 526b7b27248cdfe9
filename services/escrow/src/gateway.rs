//! The payment gateway escrow pays in and out through, as a trait, and the
//! sandbox adapter that stands in for a real gateway in development and tests.
//!
//! Every call carries an idempotency key, and a gateway answers the same key
//! with the same result without moving money again (as real gateways do).
//! Escrow derives the key from the caller's own idempotency key, so a client
//! that retries after a timeout is charged once.
//!
//! # Sandbox test tokens and names
//!
//! | Input | Answer |
//! |---|---|
//! | card token `tok_visa` (or any other `tok_...`) | approved, settled in the call |
//! | card token `tok_declined` | declined, code `card_declined` |
//! | card token `tok_insufficient_funds` | declined, code `insufficient_funds` |
//! | card token `tok_gateway_error` | the gateway fails: nothing charged, nothing recorded |
//! | card token `tok_timeout` | the charge goes through but the answer is lost (a timeout); the same key again returns that charge |
//! | a card token not starting with `tok_` | declined, code `invalid_token` |
//! | bank transfer | pending, with the sandbox's IBAN, BIC and a payment reference |
//! | Pay Later, partner `partner_unavailable` | the gateway fails, nothing recorded |
//! | Pay Later | pending until the partner's `pay_later.disbursed` webhook |
//! | payouts and refunds | pending until `payout.paid` / `refund.paid` webhooks |

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ta_runtime::{ServiceError, money::Money};
use uuid::Uuid;

/// The gateway failed to answer: nothing is recorded and the caller may
/// retry with the same idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("the payment gateway is unavailable: {0}")]
    Unavailable(String),
    /// The call's outcome is unknown (the gateway may have acted).
    #[error("the payment gateway did not answer in time")]
    Timeout,
}

impl From<GatewayError> for ServiceError {
    fn from(error: GatewayError) -> Self {
        ServiceError::Unavailable(format!(
            "{error}; nothing was recorded: retry with the same idempotency key"
        ))
    }
}

/// A card charge's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardOutcome {
    Approved,
    Declined { code: String, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardCharge {
    /// The gateway's payment id.
    pub reference: String,
    pub outcome: CardOutcome,
}

/// Where the buyer sends a bank transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankInstructions {
    pub reference: String,
    pub beneficiary_name: String,
    pub iban: String,
    pub bic: String,
    pub payment_reference: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayLaterApplication {
    pub reference: String,
    pub loan_reference: String,
}

/// A payment gateway. Each call is idempotent per `key`.
#[tonic::async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn charge_card(
        &self,
        key: &str,
        card_token: &str,
        amount: Money,
    ) -> Result<CardCharge, GatewayError>;

    async fn start_bank_transfer(
        &self,
        key: &str,
        payer_name: &str,
        amount: Money,
    ) -> Result<BankInstructions, GatewayError>;

    async fn start_pay_later(
        &self,
        key: &str,
        partner_id: &str,
        repayment_months: u32,
        amount: Money,
    ) -> Result<PayLaterApplication, GatewayError>;

    /// Sends money out (a supplier payout or a buyer refund); returns the
    /// gateway's transfer id, which its webhooks name.
    async fn send_transfer(
        &self,
        key: &str,
        beneficiary: &str,
        amount: Money,
    ) -> Result<String, GatewayError>;
}

#[derive(Clone, Debug)]
enum Stored {
    Card(CardCharge),
    Bank(BankInstructions),
    PayLater(PayLaterApplication),
    Transfer(String),
}

/// An in-memory gateway that behaves like a real one for the inputs in the
/// module docs, idempotent per key.
#[derive(Clone, Debug, Default)]
pub struct SandboxGateway {
    state: Arc<Mutex<SandboxState>>,
}

#[derive(Debug, Default)]
struct SandboxState {
    by_key: HashMap<String, Stored>,
    /// Money actually charged or sent, per key (a retry adds nothing).
    moved: HashMap<String, Money>,
}

pub const SANDBOX_BENEFICIARY: &str = "Trade Assurance Escrow (sandbox)";
pub const SANDBOX_IBAN: &str = "DE89370400440532013000";
pub const SANDBOX_BIC: &str = "COBADEFFXXX";

impl SandboxGateway {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, SandboxState> {
        // A panic while holding the lock leaves consistent maps behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reference(prefix: &str) -> String {
        format!("{prefix}_{}", Uuid::now_v7().simple())
    }
}

#[tonic::async_trait]
impl PaymentGateway for SandboxGateway {
    async fn charge_card(
        &self,
        key: &str,
        card_token: &str,
        amount: Money,
    ) -> Result<CardCharge, GatewayError> {
        let mut state = self.lock();
        if let Some(Stored::Card(charge)) = state.by_key.get(key) {
            return Ok(charge.clone());
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
        if charge.outcome == CardOutcome::Approved {
            state.moved.insert(key.to_owned(), amount);
        }
        state
            .by_key
            .insert(key.to_owned(), Stored::Card(charge.clone()));
        if card_token == "tok_timeout" {
            // Charged, but the answer never reaches escrow.
            return Err(GatewayError::Timeout);
        }
        Ok(charge)
    }

    async fn start_bank_transfer(
        &self,
        key: &str,
        _payer_name: &str,
        _amount: Money,
    ) -> Result<BankInstructions, GatewayError> {
        let mut state = self.lock();
        if let Some(Stored::Bank(instructions)) = state.by_key.get(key) {
            return Ok(instructions.clone());
        }
        let reference = Self::reference("bt");
        let instructions = BankInstructions {
            payment_reference: format!("TA{}", reference[3..15].to_ascii_uppercase()),
            reference,
            beneficiary_name: SANDBOX_BENEFICIARY.into(),
            iban: SANDBOX_IBAN.into(),
            bic: SANDBOX_BIC.into(),
        };
        state
            .by_key
            .insert(key.to_owned(), Stored::Bank(instructions.clone()));
        Ok(instructions)
    }

    async fn start_pay_later(
        &self,
        key: &str,
        partner_id: &str,
        _repayment_months: u32,
        _amount: Money,
    ) -> Result<PayLaterApplication, GatewayError> {
        let mut state = self.lock();
        if let Some(Stored::PayLater(application)) = state.by_key.get(key) {
            return Ok(application.clone());
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
        state
            .by_key
            .insert(key.to_owned(), Stored::PayLater(application.clone()));
        Ok(application)
    }

    async fn send_transfer(
        &self,
        key: &str,
        _beneficiary: &str,
        amount: Money,
    ) -> Result<String, GatewayError> {
        let mut state = self.lock();
        if let Some(Stored::Transfer(reference)) = state.by_key.get(key) {
            return Ok(reference.clone());
        }
        let reference = Self::reference("tr");
        state.moved.insert(key.to_owned(), amount);
        state
            .by_key
            .insert(key.to_owned(), Stored::Transfer(reference.clone()));
        Ok(reference)
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
    async fn a_card_is_charged_once_per_key() {
        let gateway = SandboxGateway::new();
        let first = gateway
            .charge_card("k1", "tok_visa", usd(100))
            .await
            .unwrap();
        let again = gateway
            .charge_card("k1", "tok_visa", usd(100))
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(first.outcome, CardOutcome::Approved);
        assert_eq!(gateway.money_movements(), 1);
        gateway
            .charge_card("k2", "tok_visa", usd(100))
            .await
            .unwrap();
        assert_eq!(gateway.money_movements(), 2);
    }

    #[tokio::test]
    async fn declines_move_no_money() {
        let gateway = SandboxGateway::new();
        for (token, code) in [
            ("tok_declined", "card_declined"),
            ("tok_insufficient_funds", "insufficient_funds"),
            ("4242424242424242", "invalid_token"),
        ] {
            let charge = gateway.charge_card(token, token, usd(5)).await.unwrap();
            assert!(
                matches!(&charge.outcome, CardOutcome::Declined { code: c, .. } if c == code),
                "{token}: {charge:?}"
            );
        }
        assert_eq!(gateway.money_movements(), 0);
    }

    #[tokio::test]
    async fn a_gateway_error_records_nothing_and_a_timeout_replays_its_charge() {
        let gateway = SandboxGateway::new();
        let error = gateway.charge_card("e", "tok_gateway_error", usd(5)).await;
        assert!(matches!(error, Err(GatewayError::Unavailable(_))));
        assert_eq!(gateway.money_movements(), 0);

        let lost = gateway.charge_card("t", "tok_timeout", usd(5)).await;
        assert_eq!(lost, Err(GatewayError::Timeout));
        assert_eq!(
            gateway.moved_under("t"),
            Some(usd(5)),
            "charged, answer lost"
        );
        let retried = gateway
            .charge_card("t", "tok_timeout", usd(5))
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
        let gateway = SandboxGateway::new();
        let a = gateway
            .start_bank_transfer("b", "Buyer GmbH", usd(9))
            .await
            .unwrap();
        let b = gateway
            .start_bank_transfer("b", "Buyer GmbH", usd(9))
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.iban, SANDBOX_IBAN);
        assert!(a.payment_reference.starts_with("TA"), "{a:?}");
        let loan = gateway
            .start_pay_later("p", "partner-1", 3, usd(9))
            .await
            .unwrap();
        assert_eq!(
            loan,
            gateway
                .start_pay_later("p", "partner-1", 3, usd(9))
                .await
                .unwrap()
        );
        assert!(
            gateway
                .start_pay_later("q", "partner_unavailable", 3, usd(9))
                .await
                .is_err()
        );
        let sent = gateway
            .send_transfer("s", "supplier-1", usd(9))
            .await
            .unwrap();
        assert_eq!(
            sent,
            gateway
                .send_transfer("s", "supplier-1", usd(9))
                .await
                .unwrap()
        );
        assert_eq!(gateway.money_movements(), 1);
    }
}
