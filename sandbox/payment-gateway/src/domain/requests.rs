//! The bodies of the acting calls, as JSON, and their checks. Unknown fields
//! are refused, as hosted gateways do, so a typo is not silently ignored.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{Kind, Refusal};

/// The longest text field accepted (references, names, tokens).
pub const MAX_TEXT: usize = 255;

/// The longest idempotency key accepted.
pub const MAX_KEY: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    pub client_reference: String,
    pub amount_minor: i64,
    pub currency: String,
    pub card_token: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankTransferRequest {
    pub client_reference: String,
    pub amount_minor: i64,
    pub currency: String,
    pub payer_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayLaterRequest {
    pub client_reference: String,
    pub amount_minor: i64,
    pub currency: String,
    pub partner_id: String,
    pub repayment_months: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutRequest {
    pub client_reference: String,
    pub amount_minor: i64,
    pub currency: String,
    /// Whom the money is for (escrow sends the supplier's id).
    pub beneficiary: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub client_reference: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The charge, bank transfer or Pay Later operation the money came by.
    pub source: String,
}

/// One of the acting calls, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Charge(ChargeRequest),
    BankTransfer(BankTransferRequest),
    PayLater(PayLaterRequest),
    Payout(PayoutRequest),
    Refund(RefundRequest),
}

impl Request {
    /// Parses and checks the body of a call of `kind`.
    ///
    /// # Errors
    /// 400 `invalid_request`, naming the field.
    pub fn parse(kind: Kind, body: &[u8]) -> Result<Self, Refusal> {
        let request = match kind {
            Kind::Charge => Request::Charge(json(body)?),
            Kind::BankTransfer => Request::BankTransfer(json(body)?),
            Kind::PayLater => Request::PayLater(json(body)?),
            Kind::Payout => Request::Payout(json(body)?),
            Kind::Refund => Request::Refund(json(body)?),
        };
        request.check()?;
        Ok(request)
    }

    pub fn kind(&self) -> Kind {
        match self {
            Request::Charge(_) => Kind::Charge,
            Request::BankTransfer(_) => Kind::BankTransfer,
            Request::PayLater(_) => Kind::PayLater,
            Request::Payout(_) => Kind::Payout,
            Request::Refund(_) => Kind::Refund,
        }
    }

    /// (client_reference, amount_minor, currency)
    pub fn money(&self) -> (&str, i64, &str) {
        let (r, a, c) = match self {
            Request::Charge(q) => (&q.client_reference, q.amount_minor, &q.currency),
            Request::BankTransfer(q) => (&q.client_reference, q.amount_minor, &q.currency),
            Request::PayLater(q) => (&q.client_reference, q.amount_minor, &q.currency),
            Request::Payout(q) => (&q.client_reference, q.amount_minor, &q.currency),
            Request::Refund(q) => (&q.client_reference, q.amount_minor, &q.currency),
        };
        (r, a, c)
    }

    /// The request as stored, to compare a replay with.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Request::Charge(q) => serde_json::to_value(q),
            Request::BankTransfer(q) => serde_json::to_value(q),
            Request::PayLater(q) => serde_json::to_value(q),
            Request::Payout(q) => serde_json::to_value(q),
            Request::Refund(q) => serde_json::to_value(q),
        };
        // Plain structs of strings and numbers always serialize.
        value.unwrap_or(serde_json::Value::Null)
    }

    fn check(&self) -> Result<(), Refusal> {
        let (client_reference, amount_minor, currency) = self.money();
        text("client_reference", client_reference)?;
        if amount_minor <= 0 {
            return Err(Refusal::invalid(
                "amount_minor must be a positive number of minor units",
            ));
        }
        if !(currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(Refusal::invalid(
                "currency must be 3 uppercase letters (ISO 4217, e.g. USD)",
            ));
        }
        match self {
            Request::Charge(q) => text("card_token", &q.card_token),
            Request::BankTransfer(q) => text("payer_name", &q.payer_name),
            Request::PayLater(q) => {
                text("partner_id", &q.partner_id)?;
                if !(1..=120).contains(&q.repayment_months) {
                    return Err(Refusal::invalid("repayment_months must be 1 to 120"));
                }
                Ok(())
            }
            Request::Payout(q) => text("beneficiary", &q.beneficiary),
            Request::Refund(q) => text("source", &q.source),
        }
    }
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| Refusal::invalid(format!("invalid JSON body: {e}")))
}

fn text(field: &str, value: &str) -> Result<(), Refusal> {
    if value.trim().is_empty() {
        return Err(Refusal::invalid(format!("{field} is required")));
    }
    if value.len() > MAX_TEXT {
        return Err(Refusal::invalid(format!(
            "{field} is longer than {MAX_TEXT} bytes"
        )));
    }
    Ok(())
}

/// Checks an `Idempotency-Key` header's value.
///
/// # Errors
/// 400 `idempotency_key_missing` or `invalid_request`.
pub fn check_key(key: Option<&str>) -> Result<&str, Refusal> {
    let key = key.map(str::trim).unwrap_or_default();
    if key.is_empty() {
        return Err(Refusal::Invalid {
            code: "idempotency_key_missing",
            message: "the Idempotency-Key header is required on every POST".into(),
        });
    }
    if key.len() > MAX_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::invalid(format!(
            "the Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(kind: Kind, body: &str) -> String {
        match Request::parse(kind, body.as_bytes()) {
            Err(Refusal::Invalid { message, .. }) => message,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn well_formed_requests_parse() {
        let charge = Request::parse(
            Kind::Charge,
            br#"{"client_reference":"a1","amount_minor":500,"currency":"USD","card_token":"tok_visa"}"#,
        )
        .unwrap();
        assert_eq!(charge.kind(), Kind::Charge);
        assert_eq!(charge.money(), ("a1", 500, "USD"));
        let refund = Request::parse(
            Kind::Refund,
            br#"{"client_reference":"r","amount_minor":5,"currency":"EUR","source":"ch_1"}"#,
        )
        .unwrap();
        assert_eq!(refund.to_json()["source"], "ch_1");
    }

    #[test]
    fn bad_bodies_name_what_is_wrong() {
        let ok = r#""client_reference":"a","currency":"USD","card_token":"tok_visa""#;
        for (body, expected) in [
            ("not json".to_owned(), "invalid JSON"),
            (format!("{{{ok}}}"), "missing field `amount_minor`"),
            (format!("{{{ok},\"amount_minor\":0}}"), "amount_minor"),
            (format!("{{{ok},\"amount_minor\":-5}}"), "amount_minor"),
            (
                format!("{{{ok},\"amount_minor\":\"5\"}}"),
                "invalid type: string",
            ),
            (
                format!("{{{ok},\"amount_minor\":5,\"extra\":1}}"),
                "unknown field `extra`",
            ),
            (
                r#"{"client_reference":"a","amount_minor":5,"currency":"usd","card_token":"t"}"#
                    .to_owned(),
                "currency must be 3 uppercase letters",
            ),
            (
                r#"{"client_reference":"a","amount_minor":5,"currency":"USDX","card_token":"t"}"#
                    .to_owned(),
                "currency must be 3 uppercase letters",
            ),
            (
                r#"{"client_reference":" ","amount_minor":5,"currency":"USD","card_token":"t"}"#
                    .to_owned(),
                "client_reference is required",
            ),
            (
                r#"{"client_reference":"a","amount_minor":5,"currency":"USD","card_token":""}"#
                    .to_owned(),
                "card_token is required",
            ),
        ] {
            let message = refused(Kind::Charge, &body);
            assert!(message.contains(expected), "{body}: {message}");
        }
        let months = refused(
            Kind::PayLater,
            r#"{"client_reference":"a","amount_minor":5,"currency":"USD","partner_id":"p","repayment_months":0}"#,
        );
        assert!(months.contains("repayment_months"), "{months}");
    }

    #[test]
    fn idempotency_keys_are_required_and_visible_ascii() {
        assert_eq!(check_key(Some("k-1")), Ok("k-1"));
        assert_eq!(
            check_key(None).unwrap_err().code(),
            "idempotency_key_missing"
        );
        assert_eq!(
            check_key(Some("  ")).unwrap_err().code(),
            "idempotency_key_missing"
        );
        assert_eq!(
            check_key(Some("a b")).unwrap_err().code(),
            "invalid_request"
        );
        assert!(check_key(Some(&"k".repeat(256))).is_err());
    }
}
