//! The sandbox payment gateway as the platform runs it: its own process
//! beside escrow, delivering signed webhooks to escrow's HTTP endpoint, its
//! control API as the fault-injection tests use it, its settings checked at
//! start, and an orderly stop on SIGTERM.

use std::time::Duration;

use e2e_tests::{platform::*, *};

#[test]
fn the_gateway_delivers_signed_webhooks_to_escrow_s_endpoint() {
    let platform = Platform::start(&[]);
    let gateway = &platform.gateway;
    assert_eq!(gateway.books()["currencies"], json!([]));

    // A charge escrow never asked for: the gateway reports it, escrow's
    // endpoint checks the signature and answers (retry later for a
    // reference it does not know, or accepted), never 401.
    let body = json!({ "client_reference": "not-escrow-s", "amount_minor": 500,
                       "currency": "USD", "card_token": "tok_visa" });
    let (status, refused) = gateway.request("POST", "/v1/charges", Some(&body)).unwrap();
    assert_eq!(status, 400, "no idempotency key: {refused}");
    let (status, charge) = gateway.post("/v1/charges", "wiring-1", &body);
    assert_eq!(status, 200, "{charge}");
    assert_eq!(charge["status"], "succeeded", "{charge}");
    let reference = charge["id"].as_str().unwrap().to_owned();
    let answered = wait_until(PATIENCE, "a delivery attempt", || {
        let events = gateway.events();
        let attempts = events
            .iter()
            .find(|e| e["operation_id"] == reference.as_str())
            .map(|e| e["attempts"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        attempts
            .first()
            .and_then(|a| a["status_code"].as_u64())
            .ok_or_else(|| format!("{attempts:?}"))
    });
    assert_ne!(answered, 401, "escrow refused the gateway's signature");
    assert_ne!(answered, 404, "the webhook URL is not escrow's endpoint");
    assert_eq!(
        gateway.operation("wiring-1").unwrap()["client_reference"],
        "not-escrow-s"
    );
    assert_eq!(gateway.operation("never-sent"), None);
    assert_eq!(gateway.books_of("USD")["charges_minor"], 500);

    // Faults round-trip through the control API.
    let faults = gateway.set_faults(&json!({ "fail_nth": { "kind": "payout", "n": 2 } }));
    assert_eq!(faults["fail_nth"]["n"], 2);
    assert_eq!(gateway.faults()["fail_nth"]["kind"], "payout");
    gateway.set_faults(&json!({}));
    assert_eq!(gateway.faults()["fail_nth"], Value::Null);
}

#[test]
fn bad_settings_stop_the_gateway_naming_the_variable() {
    let database = fresh_database();
    for (variable, value) in [
        ("GATEWAY_SANDBOX_FAILURE_RATE", "2"),
        (
            "GATEWAY_SANDBOX_WEBHOOK_URL",
            "https://escrow:50063/v1/gateway-webhooks",
        ),
        ("GATEWAY_SANDBOX_WEBHOOK_SECRET", "too-short"),
        ("GATEWAY_SANDBOX_SETTLE_AFTER", "soon"),
    ] {
        let output = run_binary(
            GATEWAY_SANDBOX,
            &[("DATABASE_URL", database.url.as_str()), (variable, value)],
            &[],
        );
        assert!(!output.status.success(), "{variable}={value} was accepted");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(variable), "{variable}: {said}");
    }
    // A webhook URL without its secret.
    let output = run_binary(
        GATEWAY_SANDBOX,
        &[
            ("DATABASE_URL", database.url.as_str()),
            (
                "GATEWAY_SANDBOX_LISTEN_ADDR",
                &format!("127.0.0.1:{}", free_port()),
            ),
            ("GATEWAY_SANDBOX_WEBHOOK_URL", "http://127.0.0.1:1/hooks"),
            ("LOG_FORMAT", "text"),
        ],
        &[],
    );
    assert!(!output.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("GATEWAY_SANDBOX_WEBHOOK_SECRET"), "{said}");
}

#[test]
fn the_gateway_stops_in_order_on_sigterm() {
    let database = fresh_database();
    let mut gateway = GatewaySandbox::start(&database.url, "http://127.0.0.1:1/hooks", &[]);
    gateway.service.terminate();
    let status = gateway.service.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", gateway.service.log());
    assert!(gateway.service.log().contains("stopped"));
}
