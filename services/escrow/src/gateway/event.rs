//! The payment gateway's webhook event, as its JSON payload says, read only
//! once its signature checked out (see [`super::signature`]).

use serde::Deserialize;

/// A gateway event, as the payload's JSON says.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct GatewayEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds.
    pub created: i64,
    #[serde(default)]
    pub data: EventData,
}

/// What the event is about: the gateway's payment or transfer id, and for
/// credits the amount that came.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EventData {
    /// The gateway's payment or transfer id (a funding attempt's
    /// `gateway_reference`, a transfer's `gateway_reference`).
    #[serde(default)]
    pub reference: String,
    /// Escrow's own id of the record the event is about (a funding attempt
    /// or a gateway transfer), as escrow gave it when it called.
    #[serde(default)]
    pub client_reference: Option<String>,
    #[serde(default)]
    pub amount_minor: Option<i64>,
    #[serde(default)]
    pub currency_code: Option<String>,
    #[serde(default)]
    pub failure_code: Option<String>,
}

/// What escrow does with an event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// The payment's money arrived (a bank credit may name another amount).
    Credit,
    /// The payment failed (declined, rejected).
    PaymentFailed,
    /// A payout or refund sent through the gateway was paid.
    TransferPaid,
    /// ... or failed: the money is owed again.
    TransferFailed,
    Ignored,
}

impl GatewayEvent {
    /// # Errors
    /// The payload is not the gateway's JSON event.
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(payload).map_err(|e| format!("not a gateway event: {e}"))
    }

    /// What is wrong with the event's fields, each against its field path:
    /// a credit must say how much arrived and in which currency (never taken
    /// as "the whole amount"), amounts are positive, currencies ISO 4217.
    pub fn check(&self, v: &mut ta_runtime::Violations) {
        let action = self.action();
        if action != EventAction::Ignored {
            ta_runtime::text::validate_reference("payload.data.reference", &self.data.reference, v);
        }
        if let Some(client) = &self.data.client_reference
            && uuid::Uuid::parse_str(client).is_err()
        {
            v.add(
                "payload.data.client_reference",
                "must be the id escrow gave the gateway (a UUID)",
            );
        }
        if let Some(amount) = self.data.amount_minor {
            v.require(
                amount > 0,
                "payload.data.amount_minor",
                "must be a positive number of minor units",
            );
        } else if action == EventAction::Credit {
            v.add(
                "payload.data.amount_minor",
                "is required for a credit: how much arrived, in minor units",
            );
        }
        match self.data.currency_code.as_deref() {
            Some(code) if ta_runtime::money::Currency::parse(code).is_none() => v.add(
                "payload.data.currency_code",
                "must be an ISO 4217 currency code in capitals, such as USD",
            ),
            None if action == EventAction::Credit => {
                v.add("payload.data.currency_code", "is required for a credit")
            }
            _ => {}
        }
    }

    pub fn action(&self) -> EventAction {
        match self.kind.as_str() {
            "payment.succeeded" | "bank_transfer.credited" | "pay_later.disbursed" => {
                EventAction::Credit
            }
            "payment.failed" | "pay_later.rejected" => EventAction::PaymentFailed,
            "payout.paid" | "refund.paid" => EventAction::TransferPaid,
            "payout.failed" | "refund.failed" => EventAction::TransferFailed,
            _ => EventAction::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_map_to_actions() {
        let event = GatewayEvent::parse(
            br#"{"id":"evt_1","type":"bank_transfer.credited","created":5,
                 "data":{"reference":"bt_1","amount_minor":900,"currency_code":"EUR"}}"#,
        )
        .unwrap();
        assert_eq!(event.action(), EventAction::Credit);
        assert_eq!(event.data.amount_minor, Some(900));
        for (kind, action) in [
            ("payment.succeeded", EventAction::Credit),
            ("pay_later.disbursed", EventAction::Credit),
            ("payment.failed", EventAction::PaymentFailed),
            ("pay_later.rejected", EventAction::PaymentFailed),
            ("payout.paid", EventAction::TransferPaid),
            ("refund.failed", EventAction::TransferFailed),
            ("customer.created", EventAction::Ignored),
        ] {
            let e = GatewayEvent {
                kind: kind.into(),
                ..event.clone()
            };
            assert_eq!(e.action(), action, "{kind}");
        }
        assert!(GatewayEvent::parse(b"not json").is_err());
    }
}
