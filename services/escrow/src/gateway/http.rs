//! A hosted payment gateway over HTTP/JSON (the sandbox process,
//! `sandbox/payment-gateway`, speaks the same API): every call carries its
//! `Idempotency-Key`, has a connect time-out and a whole-call time-out, and
//! carries the W3C trace context. HTTPS through rustls on ring (the crypto
//! the workspace builds already for sqlx), with the platform's roots.
//!
//! # What an answer means
//!
//! | What happened | Error |
//! |---|---|
//! | the connection was refused or could not be made; 503; 429 | [`GatewayError::Unavailable`]: nothing done, the same key may be sent again |
//! | no answer within the time-out once the request was sent; the answer broke off or cannot be read; another 5xx | [`GatewayError::Unknown`]: it may have acted, ask by key |
//! | another 4xx | [`GatewayError::Rejected`] with the gateway's `error.code` and `error.message` |
//! | `GET /v1/operations/{key}` answered 404 `resource_missing` | `Ok(None)`: the gateway never saw the key |

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use ta_runtime::{
    config::Secret,
    money::{Currency, Money},
};

use super::{
    BankInstructions, CardCharge, CardOutcome, GatewayError, Operation, OperationKind,
    OperationStatus, OutgoingTransfer, PayLaterApplication, PaymentGateway,
};

/// The longest a connection may take to open (less when the call's
/// time-out is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The gateway's code for "no such key" on the status query.
const RESOURCE_MISSING: &str = "resource_missing";

/// A payment gateway reached over HTTP.
#[derive(Clone, Debug)]
pub struct HttpGateway {
    client: reqwest::Client,
    base: Url,
    /// `Debug` shows it as `<redacted>`.
    api_key: Option<Secret>,
}

/// Checks `ESCROW_GATEWAY_URL`: an absolute http:// or https:// URL.
///
/// # Errors
/// Why it is not one.
pub fn check_base_url(text: &str) -> Result<String, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    if url.cannot_be_a_base() || url.query().is_some() {
        return Err("must be a base URL without a query".into());
    }
    Ok(text.to_owned())
}

impl HttpGateway {
    /// A client of the gateway at `base_url` whose calls end after `timeout`.
    ///
    /// # Errors
    /// A bad URL, or a client that cannot be built.
    pub fn new(base_url: &str, timeout: Duration, api_key: Option<String>) -> Result<Self, String> {
        check_base_url(base_url)?;
        let base = Url::parse(base_url).map_err(|e| e.to_string())?;
        // reqwest's rustls needs a process-wide provider; one may be set already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(CONNECT_TIMEOUT))
            .user_agent(concat!(
                "trade-assurance-escrow/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("cannot build the gateway's HTTP client: {e}"))?;
        Ok(Self {
            client,
            base,
            api_key: api_key.filter(|k| !k.is_empty()).map(Secret::from),
        })
    }

    fn url(&self, segments: &[&str]) -> Result<Url, GatewayError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| GatewayError::Unavailable("the gateway URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends one call; the status and the JSON body of a 2xx or 404 answer.
    async fn send(
        &self,
        method: Method,
        url: Url,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), GatewayError> {
        let mut trace = tonic::metadata::MetadataMap::new();
        ta_runtime::telemetry::inject_trace_context(&mut trace);
        let mut request = self
            .client
            .request(method, url)
            .headers(trace.into_headers())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(api_key) = &self.api_key {
            request = request.bearer_auth(api_key.expose());
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(sending_failed)?;
        let status = response.status();
        // A body that breaks off after the gateway answered: it may have acted.
        let bytes = response
            .bytes()
            .await
            .map_err(|e| GatewayError::Unknown(format!("the answer broke off: {e}")))?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            if let Some(json) = json {
                return Ok((status, json));
            }
            if status.is_success() {
                return Err(GatewayError::Unknown(format!(
                    "an answer ({status}) that is not JSON"
                )));
            }
        }
        Err(refused(status, json.as_ref(), &bytes))
    }

    async fn act(&self, path: &str, key: &str, body: Value) -> Result<Value, GatewayError> {
        let url = self.url(&["v1", path])?;
        match self.send(Method::POST, url, Some(key), Some(body)).await? {
            (status, json) if status.is_success() => Ok(json),
            (status, json) => Err(refused(status, Some(&json), b"")),
        }
    }
}

/// A request that got no answer: refused before sending, or lost after.
fn sending_failed(error: reqwest::Error) -> GatewayError {
    if error.is_connect() || error.is_builder() {
        // Nothing reached the gateway.
        GatewayError::Unavailable(format!("cannot reach the gateway: {error}"))
    } else if error.is_timeout() {
        GatewayError::Unknown(format!("no answer in time: {error}"))
    } else {
        GatewayError::Unknown(format!("the call broke off: {error}"))
    }
}

/// A non-2xx answer as an error.
fn refused(status: StatusCode, json: Option<&Value>, raw: &[u8]) -> GatewayError {
    let error = json.map(|j| &j["error"]);
    let code = error
        .and_then(|e| e["code"].as_str())
        .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned);
    let message = error.and_then(|e| e["message"].as_str()).map_or_else(
        || String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned(),
        str::to_owned,
    );
    match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            GatewayError::Unavailable(format!("{status} {code}: {message}"))
        }
        s if s.is_server_error() => GatewayError::Unknown(format!("{status} {code}: {message}")),
        _ => GatewayError::Rejected { code, message },
    }
}

fn unreadable(what: &str, error: impl std::fmt::Display) -> GatewayError {
    GatewayError::Unknown(format!("an answer that cannot be read ({what}): {error}"))
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, json: Value) -> Result<T, GatewayError> {
    serde_json::from_value(json).map_err(|e| unreadable(what, e))
}

fn money_body(client_reference: &str, amount: Money) -> serde_json::Map<String, Value> {
    let mut body = serde_json::Map::new();
    body.insert("client_reference".into(), json!(client_reference));
    body.insert("amount_minor".into(), json!(amount.amount_minor));
    body.insert("currency".into(), json!(amount.currency.as_str()));
    body
}

fn with(mut body: serde_json::Map<String, Value>, field: &str, value: Value) -> Value {
    body.insert(field.into(), value);
    Value::Object(body)
}

#[derive(Deserialize)]
struct ChargeAnswer {
    id: String,
    status: String,
    failure_code: Option<String>,
    failure_message: Option<String>,
}

#[derive(Deserialize)]
struct BankAnswer {
    id: String,
    instructions: Instructions,
}

#[derive(Deserialize)]
struct Instructions {
    beneficiary_name: String,
    iban: String,
    bic: String,
    payment_reference: String,
}

impl Instructions {
    fn of(self, reference: String) -> BankInstructions {
        BankInstructions {
            reference,
            beneficiary_name: self.beneficiary_name,
            iban: self.iban,
            bic: self.bic,
            payment_reference: self.payment_reference,
        }
    }
}

#[derive(Deserialize)]
struct PayLaterAnswer {
    id: String,
    loan_reference: String,
}

#[derive(Deserialize)]
struct TransferAnswer {
    id: String,
    status: String,
    failure_code: Option<String>,
    failure_message: Option<String>,
}

#[derive(Deserialize)]
struct OperationAnswer {
    kind: String,
    id: String,
    client_reference: String,
    amount_minor: i64,
    currency: String,
    status: String,
    settled_minor: Option<i64>,
    failure_code: Option<String>,
    failure_message: Option<String>,
    /// A bank transfer's, as its start call answered them.
    instructions: Option<Instructions>,
    /// A Pay Later operation's.
    loan_reference: Option<String>,
}

fn status_of(
    status: &str,
    code: Option<String>,
    message: Option<String>,
) -> Result<OperationStatus, GatewayError> {
    match status {
        "pending" => Ok(OperationStatus::Pending),
        "succeeded" => Ok(OperationStatus::Succeeded),
        "failed" => Ok(OperationStatus::Failed {
            code: code.unwrap_or_else(|| "failed".into()),
            message: message.unwrap_or_default(),
        }),
        other => Err(unreadable("status", format!("`{other}`"))),
    }
}

fn kind_of(kind: &str) -> Result<OperationKind, GatewayError> {
    Ok(match kind {
        "charge" => OperationKind::Charge,
        "bank_transfer" => OperationKind::BankTransfer,
        "pay_later" => OperationKind::PayLater,
        "payout" => OperationKind::Payout,
        "refund" => OperationKind::Refund,
        other => return Err(unreadable("kind", format!("`{other}`"))),
    })
}

fn transfer(json: Value) -> Result<OutgoingTransfer, GatewayError> {
    let answer: TransferAnswer = parse("transfer", json)?;
    Ok(OutgoingTransfer {
        reference: answer.id,
        status: status_of(&answer.status, answer.failure_code, answer.failure_message)?,
    })
}

#[tonic::async_trait]
impl PaymentGateway for HttpGateway {
    async fn charge_card(
        &self,
        key: &str,
        client_reference: &str,
        card_token: &str,
        amount: Money,
    ) -> Result<CardCharge, GatewayError> {
        let body = with(
            money_body(client_reference, amount),
            "card_token",
            json!(card_token),
        );
        let answer: ChargeAnswer = parse("charge", self.act("charges", key, body).await?)?;
        let outcome = match status_of(&answer.status, answer.failure_code, answer.failure_message)?
        {
            OperationStatus::Succeeded => CardOutcome::Approved,
            OperationStatus::Failed { code, message } => CardOutcome::Declined { code, message },
            OperationStatus::Pending => {
                return Err(unreadable("charge", "a card charge left pending"));
            }
        };
        Ok(CardCharge {
            reference: answer.id,
            outcome,
        })
    }

    async fn start_bank_transfer(
        &self,
        key: &str,
        client_reference: &str,
        payer_name: &str,
        amount: Money,
    ) -> Result<BankInstructions, GatewayError> {
        let body = with(
            money_body(client_reference, amount),
            "payer_name",
            json!(payer_name),
        );
        let answer: BankAnswer = parse(
            "bank transfer",
            self.act("bank_transfers", key, body).await?,
        )?;
        Ok(BankInstructions {
            reference: answer.id,
            beneficiary_name: answer.instructions.beneficiary_name,
            iban: answer.instructions.iban,
            bic: answer.instructions.bic,
            payment_reference: answer.instructions.payment_reference,
        })
    }

    async fn start_pay_later(
        &self,
        key: &str,
        client_reference: &str,
        partner_id: &str,
        repayment_months: u32,
        amount: Money,
    ) -> Result<PayLaterApplication, GatewayError> {
        let mut body = money_body(client_reference, amount);
        body.insert("partner_id".into(), json!(partner_id));
        let body = with(body, "repayment_months", json!(repayment_months));
        let answer: PayLaterAnswer = parse("Pay Later", self.act("pay_later", key, body).await?)?;
        Ok(PayLaterApplication {
            reference: answer.id,
            loan_reference: answer.loan_reference,
        })
    }

    async fn send_payout(
        &self,
        key: &str,
        client_reference: &str,
        beneficiary: &str,
        amount: Money,
    ) -> Result<OutgoingTransfer, GatewayError> {
        let body = with(
            money_body(client_reference, amount),
            "beneficiary",
            json!(beneficiary),
        );
        transfer(self.act("payouts", key, body).await?)
    }

    async fn refund(
        &self,
        key: &str,
        client_reference: &str,
        source_reference: &str,
        amount: Money,
    ) -> Result<OutgoingTransfer, GatewayError> {
        let body = with(
            money_body(client_reference, amount),
            "source",
            json!(source_reference),
        );
        transfer(self.act("refunds", key, body).await?)
    }

    async fn operation(&self, key: &str) -> Result<Option<Operation>, GatewayError> {
        let url = self.url(&["v1", "operations", key])?;
        let (status, json) = self.send(Method::GET, url, None, None).await?;
        if status == StatusCode::NOT_FOUND {
            // Only the gateway's own "no such key" means it never saw it; a
            // 404 from anything else (a wrong base URL) proves nothing.
            if json["error"]["code"] == RESOURCE_MISSING {
                return Ok(None);
            }
            return Err(refused(status, Some(&json), b""));
        }
        operation_of(json).map(Some)
    }

    async fn void_unless_done(&self, key: &str) -> Result<Option<Operation>, GatewayError> {
        let url = self.url(&["v1", "operations", key, "void"])?;
        match self.send(Method::POST, url, None, None).await? {
            (status, json) if status.is_success() && json["status"] == "voided" => Ok(None),
            (status, json) if status.is_success() => operation_of(json).map(Some),
            (status, json) => Err(refused(status, Some(&json), b"")),
        }
    }
}

/// The gateway's record of one operation.
fn operation_of(json: Value) -> Result<Operation, GatewayError> {
    {
        let answer: OperationAnswer = parse("operation", json)?;
        let currency = Currency::parse(&answer.currency)
            .ok_or_else(|| unreadable("currency", format!("`{}`", answer.currency)))?;
        let bank_instructions = answer.instructions.map(|i| i.of(answer.id.clone()));
        Ok(Operation {
            kind: kind_of(&answer.kind)?,
            bank_instructions,
            loan_reference: answer.loan_reference,
            reference: answer.id,
            client_reference: answer.client_reference,
            amount: Money::new(answer.amount_minor, currency),
            settled_minor: answer.settled_minor,
            status: status_of(&answer.status, answer.failure_code, answer.failure_message)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert!(check_base_url("http://127.0.0.1:50060").is_ok());
        assert!(check_base_url("https://gateway.example.com/api/").is_ok());
        for bad in [
            "127.0.0.1:50060",
            "ftp://x",
            "http://",
            "http://x?y=1",
            "nonsense",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_keep_a_base_prefix_and_escape_the_key() {
        let gateway =
            HttpGateway::new("http://gw.example/api/", Duration::from_secs(1), None).unwrap();
        let url = gateway.url(&["v1", "operations", "a/b ?#%"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://gw.example/api/v1/operations/a%2Fb%20%3F%23%25"
        );
        let bare = HttpGateway::new("http://gw.example", Duration::from_secs(1), None).unwrap();
        assert_eq!(
            bare.url(&["v1", "charges"]).unwrap().as_str(),
            "http://gw.example/v1/charges"
        );
    }

    #[test]
    fn statuses_map_to_what_the_gateway_may_have_done() {
        let body = json!({ "error": { "code": "idempotency_key_reused", "message": "no" } });
        assert_eq!(
            refused(StatusCode::UNPROCESSABLE_ENTITY, Some(&body), b""),
            GatewayError::Rejected {
                code: "idempotency_key_reused".into(),
                message: "no".into()
            }
        );
        assert!(matches!(
            refused(StatusCode::SERVICE_UNAVAILABLE, None, b""),
            GatewayError::Unavailable(_)
        ));
        assert!(matches!(
            refused(StatusCode::TOO_MANY_REQUESTS, None, b""),
            GatewayError::Unavailable(_)
        ));
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::GATEWAY_TIMEOUT,
        ] {
            assert!(refused(status, None, b"").may_have_acted(), "{status}");
        }
        assert_eq!(
            refused(StatusCode::BAD_REQUEST, None, b"plain text"),
            GatewayError::Rejected {
                code: "http_400".into(),
                message: "plain text".into()
            }
        );
    }
}
