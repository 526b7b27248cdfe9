//! One suite, two gateways: every assertion in `contract` runs against the
//! in-process [`InMemoryGateway`] and against [`HttpGateway`] talking to a
//! real `payment-gateway-sandbox` process (built beside this test: `cargo
//! build -p payment-gateway-sandbox`, which `make test` does), started on a
//! free loopback port with a database of its own.
//!
//! Then what only a remote gateway can do: refuse a reused key or an excess
//! refund, be unreachable, fail before acting.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use escrow::gateway::{
    CardOutcome, GatewayError, OperationKind, OperationStatus, PaymentGateway, http::HttpGateway,
    memory::InMemoryGateway,
};
use sqlx::PgPool;
use ta_runtime::money::{Currency, Money};

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").unwrap())
}

/// The shared assertions: what any gateway must do.
mod contract {
    use super::*;

    pub async fn idempotent_per_key(gateway: &dyn PaymentGateway) {
        let first = gateway
            .charge_card("charge-1", "attempt-1", "tok_visa", usd(1_000))
            .await
            .unwrap();
        assert_eq!(first.outcome, CardOutcome::Approved);
        let again = gateway
            .charge_card("charge-1", "attempt-1", "tok_visa", usd(1_000))
            .await
            .unwrap();
        assert_eq!(again, first, "the same key answers the same charge");
        let other = gateway
            .charge_card("charge-2", "attempt-2", "tok_visa", usd(1_000))
            .await
            .unwrap();
        assert_ne!(
            other.reference, first.reference,
            "another key, another charge"
        );

        let bank = gateway
            .start_bank_transfer("bank-1", "attempt-3", "Buyer GmbH", usd(500))
            .await
            .unwrap();
        assert_eq!(
            gateway
                .start_bank_transfer("bank-1", "attempt-3", "Buyer GmbH", usd(500))
                .await
                .unwrap(),
            bank
        );
        assert!(bank.payment_reference.starts_with("TA"), "{bank:?}");
        assert!(!bank.iban.is_empty() && !bank.bic.is_empty());

        let loan = gateway
            .start_pay_later("loan-1", "attempt-4", "partner-1", 6, usd(700))
            .await
            .unwrap();
        assert_eq!(
            gateway
                .start_pay_later("loan-1", "attempt-4", "partner-1", 6, usd(700))
                .await
                .unwrap(),
            loan
        );

        let payout = gateway
            .send_payout("payout-1", "transfer-1", "supplier-1", usd(300))
            .await
            .unwrap();
        assert_eq!(payout.status, OperationStatus::Pending);
        assert_eq!(
            gateway
                .send_payout("payout-1", "transfer-1", "supplier-1", usd(300))
                .await
                .unwrap(),
            payout
        );
    }

    pub async fn operation_by_key(gateway: &dyn PaymentGateway) {
        assert_eq!(gateway.operation("never-sent").await.unwrap(), None);

        let charge = gateway
            .charge_card("charge-1", "attempt-1", "tok_visa", usd(1_000))
            .await
            .unwrap();
        let seen = gateway.operation("charge-1").await.unwrap().unwrap();
        assert_eq!(seen.kind, OperationKind::Charge);
        assert_eq!(seen.reference, charge.reference);
        assert_eq!(seen.client_reference, "attempt-1");
        assert_eq!(seen.amount, usd(1_000));
        assert_eq!(seen.status, OperationStatus::Succeeded);

        let bank = gateway
            .start_bank_transfer("bank-1", "attempt-2", "Buyer GmbH", usd(500))
            .await
            .unwrap();
        let seen = gateway.operation("bank-1").await.unwrap().unwrap();
        assert_eq!(seen.kind, OperationKind::BankTransfer);
        assert_eq!(seen.reference, bank.reference);
        assert_eq!(seen.status, OperationStatus::Pending);
        assert_eq!(seen.settled_minor, None, "nothing arrived yet");
        assert_eq!(seen.bank_instructions, Some(bank), "recoverable by key");

        let loan = gateway
            .start_pay_later("loan-1", "attempt-3", "partner-1", 3, usd(200))
            .await
            .unwrap();
        let seen = gateway.operation("loan-1").await.unwrap().unwrap();
        assert_eq!(seen.kind, OperationKind::PayLater);
        assert_eq!(seen.reference, loan.reference);
        assert_eq!(seen.loan_reference, Some(loan.loan_reference));

        let payout = gateway
            .send_payout("payout-1", "transfer-1", "supplier-1", usd(300))
            .await
            .unwrap();
        let seen = gateway.operation("payout-1").await.unwrap().unwrap();
        assert_eq!(seen.kind, OperationKind::Payout);
        assert_eq!(seen.reference, payout.reference);
        assert_eq!(seen.client_reference, "transfer-1");
        assert_eq!(seen.amount, usd(300));
        assert_eq!(seen.status, OperationStatus::Pending);
    }

    pub async fn declines(gateway: &dyn PaymentGateway) {
        for (token, code) in [
            ("tok_declined", "card_declined"),
            ("tok_insufficient_funds", "insufficient_funds"),
            ("4242424242424242", "invalid_token"),
        ] {
            let charge = gateway
                .charge_card(token, "attempt", token, usd(100))
                .await
                .unwrap();
            assert!(
                matches!(&charge.outcome, CardOutcome::Declined { code: c, .. } if c == code),
                "{token}: {charge:?}"
            );
            let seen = gateway.operation(token).await.unwrap().unwrap();
            assert!(
                matches!(&seen.status, OperationStatus::Failed { code: c, .. } if c == code),
                "{token}: {seen:?}"
            );
        }

        let failed = gateway
            .charge_card("broken", "attempt", "tok_gateway_error", usd(100))
            .await
            .unwrap_err();
        assert!(matches!(failed, GatewayError::Unavailable(_)), "{failed:?}");
        assert!(!failed.may_have_acted());
        assert_eq!(gateway.operation("broken").await.unwrap(), None);

        let partner = gateway
            .start_pay_later("no-partner", "attempt", "partner_unavailable", 3, usd(100))
            .await
            .unwrap_err();
        assert!(
            matches!(partner, GatewayError::Unavailable(_)),
            "{partner:?}"
        );
        assert_eq!(gateway.operation("no-partner").await.unwrap(), None);
    }

    pub async fn unknown_on_a_lost_answer_then_operation_shows_it(gateway: &dyn PaymentGateway) {
        let lost = gateway
            .charge_card("slow", "attempt-1", "tok_timeout", usd(900))
            .await
            .unwrap_err();
        assert!(matches!(lost, GatewayError::Unknown(_)), "{lost:?}");
        assert!(lost.may_have_acted());

        let seen = gateway.operation("slow").await.unwrap().unwrap();
        assert_eq!(seen.kind, OperationKind::Charge);
        assert_eq!(seen.status, OperationStatus::Succeeded, "it was charged");
        assert_eq!(seen.client_reference, "attempt-1");
        assert_eq!(seen.amount, usd(900));

        let retried = gateway
            .charge_card("slow", "attempt-1", "tok_timeout", usd(900))
            .await
            .unwrap();
        assert_eq!(retried.outcome, CardOutcome::Approved);
        assert_eq!(retried.reference, seen.reference, "the same charge, once");
    }

    pub async fn refund_against_a_charge(gateway: &dyn PaymentGateway) {
        let charge = gateway
            .charge_card("charge-1", "attempt-1", "tok_visa", usd(1_000))
            .await
            .unwrap();
        let refund = gateway
            .refund("refund-1", "transfer-1", &charge.reference, usd(400))
            .await
            .unwrap();
        assert_eq!(refund.status, OperationStatus::Pending);
        assert_ne!(refund.reference, charge.reference);
        assert_eq!(
            gateway
                .refund("refund-1", "transfer-1", &charge.reference, usd(400))
                .await
                .unwrap(),
            refund
        );
        let seen = gateway.operation("refund-1").await.unwrap().unwrap();
        assert_eq!(seen.kind, OperationKind::Refund);
        assert_eq!(seen.reference, refund.reference);
        assert_eq!(seen.client_reference, "transfer-1");
        assert_eq!(seen.amount, usd(400));
    }
}

/// A `payment-gateway-sandbox` process on a free loopback port, killed on drop.
struct Sandbox {
    base: String,
    child: Child,
}

/// How long the adapter waits in these tests: `tok_timeout` holds its answer
/// for a minute, far beyond it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn sandbox_binary() -> PathBuf {
    // This test runs from <target>/debug/deps; the binaries sit in <target>/debug.
    let exe = std::env::current_exe().expect("the test's path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("<target>/debug");
    debug.join("payment-gateway-sandbox")
}

impl Sandbox {
    async fn start(pool: &PgPool) -> Self {
        // Any reqwest client here needs rustls' provider (HttpGateway::new installs it too).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binary = sandbox_binary();
        assert!(
            binary.exists(),
            "{} not found: build it first (cargo build -p payment-gateway-sandbox)",
            binary.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .env("DATABASE_URL", ta_testkit::database_url(pool))
            .env("GATEWAY_SANDBOX_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            // Payouts and refunds stay pending while a test looks at them.
            .env("GATEWAY_SANDBOX_SETTLE_AFTER", "1h")
            .env("GATEWAY_SANDBOX_HANG", "60s")
            .env("LOG_FORMAT", "text")
            .env("LOG_LEVEL", "warn")
            .spawn()
            .expect("start payment-gateway-sandbox");
        let sandbox = Self {
            base: format!("http://127.0.0.1:{port}"),
            child,
        };
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(format!("{}/healthz", sandbox.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sandbox never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sandbox
    }

    fn gateway(&self) -> HttpGateway {
        HttpGateway::new(&self.base, CALL_TIMEOUT, None).unwrap()
    }

    async fn put_faults(&self, faults: &str) {
        let answer = reqwest::Client::new()
            .put(format!("{}/sandbox/faults", self.base))
            .body(faults.to_owned())
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{answer:?}");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::contract::$name(&super::InMemoryGateway::new()).await;
                }
            )*
        }

        mod http {
            $(
                #[sqlx::test(migrations = false)]
                async fn $name(pool: sqlx::PgPool) {
                    let sandbox = super::Sandbox::start(&pool).await;
                    super::contract::$name(&sandbox.gateway()).await;
                }
            )*
        }
    };
}

both!(
    idempotent_per_key,
    operation_by_key,
    declines,
    unknown_on_a_lost_answer_then_operation_shows_it,
    refund_against_a_charge,
);

#[sqlx::test(migrations = false)]
async fn http_a_reused_key_and_an_excess_refund_are_rejected(pool: PgPool) {
    let sandbox = Sandbox::start(&pool).await;
    let gateway = sandbox.gateway();
    let charge = gateway
        .charge_card("charge-1", "attempt-1", "tok_visa", usd(1_000))
        .await
        .unwrap();
    let reused = gateway
        .charge_card("charge-1", "attempt-1", "tok_visa", usd(2_000))
        .await
        .unwrap_err();
    assert!(
        matches!(&reused, GatewayError::Rejected { code, .. } if code == "idempotency_key_reused"),
        "{reused:?}"
    );
    gateway
        .refund("refund-1", "transfer-1", &charge.reference, usd(600))
        .await
        .unwrap();
    let excess = gateway
        .refund("refund-2", "transfer-2", &charge.reference, usd(401))
        .await
        .unwrap_err();
    assert!(
        matches!(&excess, GatewayError::Rejected { code, .. } if code == "refund_exceeds_collected"),
        "{excess:?}"
    );
    assert_eq!(gateway.operation("refund-2").await.unwrap(), None);
}

#[sqlx::test(migrations = false)]
async fn http_an_injected_failure_is_unavailable_and_did_nothing(pool: PgPool) {
    let sandbox = Sandbox::start(&pool).await;
    let gateway = sandbox.gateway();
    sandbox
        .put_faults(r#"{"fail_nth": {"kind": "payout", "n": 1}}"#)
        .await;
    let failed = gateway
        .send_payout("payout-1", "transfer-1", "supplier-1", usd(300))
        .await
        .unwrap_err();
    assert!(matches!(failed, GatewayError::Unavailable(_)), "{failed:?}");
    assert_eq!(gateway.operation("payout-1").await.unwrap(), None);
    let sent = gateway
        .send_payout("payout-1", "transfer-1", "supplier-1", usd(300))
        .await
        .unwrap();
    assert_eq!(
        gateway
            .operation("payout-1")
            .await
            .unwrap()
            .unwrap()
            .reference,
        sent.reference
    );
}

#[sqlx::test(migrations = false)]
async fn http_an_unreachable_gateway_is_unavailable_and_a_wrong_path_proves_nothing(pool: PgPool) {
    // A port nothing listens on: the connection is refused, nothing was sent.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let nowhere = HttpGateway::new(&format!("http://{closed}"), CALL_TIMEOUT, None).unwrap();
    let refused = nowhere
        .charge_card("k", "a", "tok_visa", usd(1))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, GatewayError::Unavailable(_)),
        "{refused:?}"
    );
    let asked = nowhere.operation("k").await.unwrap_err();
    assert!(matches!(asked, GatewayError::Unavailable(_)), "{asked:?}");

    // A base URL with a wrong prefix: its 404s are not "never saw the key".
    let sandbox = Sandbox::start(&pool).await;
    let misrouted =
        HttpGateway::new(&format!("{}/wrong/", sandbox.base), CALL_TIMEOUT, None).unwrap();
    let answer = misrouted.operation("k").await;
    assert!(
        matches!(&answer, Err(GatewayError::Rejected { code, .. }) if code == "no_such_route"),
        "{answer:?}"
    );
}
