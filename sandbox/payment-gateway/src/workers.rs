//! The background work: settling what is due, and delivering webhooks with
//! redelivery. Both claim their rows with `FOR UPDATE SKIP LOCKED`, so two
//! sandbox processes over one schema never settle or deliver the same thing
//! twice; each is woken by its own process's new work and otherwise polls.

use std::{sync::Arc, time::Duration};

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use time::OffsetDateTime;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    api::Shared,
    config::WebhookTarget,
    domain,
    storage::{self, Attempt, DueEvent},
};

/// Events claimed per round.
const BATCH: i64 = 32;

/// The header carrying `t=<unix seconds>,v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "Gateway-Signature";

/// Until `draining`: settles due payouts and refunds (and bank transfers and
/// Pay Later when they are credited automatically).
pub async fn settle(shared: Arc<Shared>, poll: Duration, mut draining: watch::Receiver<bool>) {
    let gateway = &shared.gateway;
    while !*draining.borrow() {
        match gateway.settle_due().await {
            // A full batch: there may be more due at once.
            Ok(100..) => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "settlement round failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = gateway.new_settlements.notified() => {}
            _ = draining.changed() => {}
        }
    }
}

/// Installs ring as the process's rustls provider unless one is: reqwest
/// (built with escrow's `rustls-no-provider`) needs one for any client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Until `draining`: delivers due events to `target`, each signed at its own
/// attempt; a non-2xx answer or no answer is redelivered with capped
/// exponential backoff (at least the receiver's `Retry-After`).
pub async fn deliver(
    shared: Arc<Shared>,
    target: WebhookTarget,
    poll: Duration,
    mut draining: watch::Receiver<bool>,
) {
    install_crypto_provider();
    let client = match reqwest::Client::builder()
        .timeout(target.timeout)
        .connect_timeout(target.timeout.min(Duration::from_secs(5)))
        .user_agent("payment-gateway-sandbox")
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the webhook client: no webhooks will be delivered");
            return;
        }
    };
    let target = Arc::new(target);
    // Long enough that a delivery in flight is never claimed by another process.
    let lease = target.timeout * 2 + Duration::from_secs(5);
    let pool = &shared.gateway.pool;
    while !*draining.borrow() {
        let due = match storage::claim_due_events(pool, lease, BATCH).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot claim webhook events");
                Vec::new()
            }
        };
        let full = due.len() as i64 == BATCH;
        let mut deliveries = JoinSet::new();
        for event in due {
            deliveries.spawn(deliver_one(
                client.clone(),
                target.clone(),
                pool.clone(),
                event,
            ));
        }
        while deliveries.join_next().await.is_some() {}
        if full {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = shared.gateway.new_events.notified() => {}
            _ = draining.changed() => {}
        }
    }
}

async fn deliver_one(
    client: reqwest::Client,
    target: Arc<WebhookTarget>,
    pool: sqlx::PgPool,
    event: DueEvent,
) {
    let attempt = u32::try_from(event.attempts).unwrap_or(0) + 1;
    let (signature, answer) = post(&client, &target, &event.payload).await;
    let retry_in = match &answer {
        Ok((status, _)) if (200..300).contains(status) => None,
        Ok((_, retry_after)) => Some(domain::retry_delay(
            attempt,
            target.retry_base,
            target.retry_cap,
            *retry_after,
        )),
        Err(_) => Some(domain::retry_delay(
            attempt,
            target.retry_base,
            target.retry_cap,
            None,
        )),
    };
    if let Some(wait) = retry_in {
        tracing::info!(event = %event.id, attempt, ?answer, ?wait, "webhook not accepted: redelivering later");
    }
    let record = |signature: String, answer: Result<(u16, Option<Duration>), String>| {
        let pool = pool.clone();
        let id = event.id.clone();
        async move {
            let (status_code, error) = match &answer {
                Ok((status, _)) => (Some(*status), None),
                Err(error) => (None, Some(error.as_str())),
            };
            let attempt = Attempt {
                event_id: &id,
                signature: &signature,
                status_code,
                error,
            };
            if let Err(error) = storage::record_attempt(&pool, attempt, retry_in).await {
                // The lease runs out and the event is delivered again: at least once.
                tracing::warn!(%error, event = %id, "cannot record a webhook delivery");
            }
        }
    };
    record(signature, answer).await;
    if retry_in.is_none() && event.duplicate {
        // The duplicate fault: the same event once more.
        let (signature, answer) = post(&client, &target, &event.payload).await;
        record(signature, answer).await;
    }
}

/// POSTs `payload` signed now: the signature, and the status code with the
/// receiver's `Retry-After`, or why there was no answer.
async fn post(
    client: &reqwest::Client,
    target: &WebhookTarget,
    payload: &str,
) -> (String, Result<(u16, Option<Duration>), String>) {
    let signature = target.secret.sign(
        OffsetDateTime::now_utc().unix_timestamp(),
        payload.as_bytes(),
    );
    let sent = client
        .post(&target.url)
        .header(CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, &signature)
        .body(payload.to_owned())
        .send()
        .await;
    let answer = match sent {
        Ok(response) => {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Ok((response.status().as_u16(), retry_after))
        }
        Err(error) => Err(error.to_string()),
    };
    (signature, answer)
}
