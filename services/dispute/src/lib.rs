//! The dispute service: `domain` (pure rules: the claim state machine,
//! windows, offers, decisions), `storage` (Postgres), `app` (use cases, one
//! module per stage of a claim, and `app::reactions`: outbox answers, the
//! escalation timer), `views` (proto), `effects` (the calls to contract,
//! escrow and supplier-registry), `grpc` (the transport), and the wiring
//! below.

pub mod app;
pub mod config;
pub mod domain;
pub mod effects;
pub mod grpc;
pub mod storage;
pub mod views;

use std::{sync::Arc, time::Duration};

use ta_proto::{
    dispute::dispute_service_server::DisputeServiceServer,
    ops::reconciliation_service_server::ReconciliationServiceServer,
};
use ta_runtime::server::{Api, ServiceSpec};
use ta_workflow::{admin, service_api::WorkflowApi};

use ta_objects::Store as EvidenceStore;

use crate::app::reactions;

pub const DISPUTE_SERVICE: &str = "tradeassurance.dispute.v1.DisputeService";
/// The cross-service reconciliation, served by this process only.
pub const RECONCILIATION_SERVICE: &str = "tradeassurance.ops.v1.ReconciliationService";

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "dispute",
    schema: storage::SCHEMA,
    default_port: 50054,
    grpc_services: &[DISPUTE_SERVICE, RECONCILIATION_SERVICE, admin::SERVICE_NAME],
    migrator: &storage::MIGRATOR,
};

/// What the process needs from outside besides its pool: its peers, how it
/// proves it is the dispute service to them, and the evidence store.
pub struct Links {
    pub calls: ta_workflow::Calls,
    /// The evidence store: the shared content-addressed store of `ta-objects`
    /// (a local directory or an S3-compatible bucket, `EVIDENCE_STORE`), which
    /// checks uploads while they stream, resumes cut-off ones and leaves
    /// nothing behind a refused one. Evidence is stored by SHA-256, per claim
    /// in the database and once in the store.
    pub store: EvidenceStore,
}

impl Links {
    /// # Errors
    /// A message naming the variables at fault.
    pub fn from_config(config: &config::Config) -> Result<Self, String> {
        config.check()?;
        Ok(Self {
            calls: ta_workflow::Calls::from_config(
                SPEC.name,
                &config.workflow,
                &config.common.auth,
            )?,
            store: EvidenceStore::from_config(&config.store)?,
        })
    }
}

/// The service's routes, policy, preparation (the workflow tables) and
/// background work (outbox relay, timers, janitor, the periodic
/// reconciliation).
pub fn api(config: &config::Config, pool: sqlx::PgPool, links: Links) -> Api {
    let schema = storage::schema();
    let workflow = WorkflowApi::new(&pool, schema);
    let flows = Arc::new(workflow.flows(app::FEED, config.settings()));
    let limit = config.common.server.max_message_bytes;
    let reads = app::filing::Reads {
        peers: links.calls.peers.clone(),
        credentials: links.calls.credentials.clone(),
        timeout: config.peer_timeout,
    };
    let reconciliation = ReconciliationServiceServer::new(grpc::ReconciliationApi::new(
        pool.clone(),
        reads.clone(),
        config.reconciliation_settled_for,
    ));
    let dispute = DisputeServiceServer::new(grpc::DisputeApi::new(
        pool.clone(),
        flows.clone(),
        reads.clone(),
        links.store.clone(),
        config.workflow.feed.clone(),
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let resume_window = config.store.upload_resume_window;
    let reconcile = Reconcile {
        pool: pool.clone(),
        reads,
        every: config.reconciliation_interval,
        settled_for: config.reconciliation_settled_for,
    };
    workflow
        .relay(
            links.calls,
            reactions::Completions {
                flows: flows.clone(),
            },
            config.workflow.outbox.clone(),
        )
        .timers(reactions::Timers { flows }, config.workflow.timers.clone())
        .janitor(config.workflow.retention)
        .into_api(
            tonic::service::Routes::new(dispute).add_service(reconciliation),
            &SPEC,
        )
        .with_background(move |draining| report_claims(pool, draining))
        .with_background(move |draining| reconcile.run(draining))
        .with_background(move |draining| sweep_partials(links.store, resume_window, draining))
}

/// `ta.dispute.claims` (claims in progress, by `status`) and
/// `ta.dispute.decisions_overdue` (escalated claims past `decision_due_at`,
/// for operators), sampled every 15 s.
async fn report_claims(pool: sqlx::PgPool, draining: ta_workflow::Shutdown) {
    use ta_runtime::telemetry::{KeyValue, gauge, sample_every};
    let claims = gauge("ta.dispute.claims", "Claims in progress", "{claim}");
    let overdue = gauge(
        "ta.dispute.decisions_overdue",
        "Escalated claims past their decision target",
        "{claim}",
    );
    #[allow(clippy::cast_precision_loss)]
    sample_every(Duration::from_secs(15), draining, || async {
        match storage::claims::claim_figures(&pool).await {
            Ok((by_status, late)) => {
                for status in ["opening", "negotiating", "escalated"] {
                    let n = by_status
                        .iter()
                        .find(|(s, _)| s == status)
                        .map_or(0, |(_, n)| *n);
                    claims.set(n as f64, &[KeyValue::new("status", status)]);
                }
                overdue.set(late as f64, &[]);
            }
            Err(error) => tracing::debug!(?error, "claim figures not sampled"),
        }
    })
    .await;
}

/// The periodic cross-service reconciliation.
struct Reconcile {
    pool: sqlx::PgPool,
    reads: app::filing::Reads,
    every: Duration,
    settled_for: Duration,
}

impl Reconcile {
    /// Compares the services' records every `every` and publishes
    /// `ta.reconciliation.differences` by `kind`; each difference is logged
    /// as a warning, so an operator sees both sides' figures.
    async fn run(self, draining: ta_workflow::Shutdown) {
        use ta_runtime::telemetry::{KeyValue, gauge, sample_every};
        let differences = gauge(
            "ta.reconciliation.differences",
            "Differences between what the services record of the same orders",
            "{difference}",
        );
        #[allow(clippy::cast_precision_loss)]
        sample_every(self.every, draining, || async {
            match app::reconciliation::run(&self.reads, &self.pool, self.settled_for).await {
                Ok(reconciled) => {
                    for kind in domain::reconciliation::Kind::ALL {
                        let n = reconciled.report.count(kind);
                        differences.set(n as f64, &[KeyValue::new("kind", kind.as_str())]);
                    }
                    for difference in &reconciled.report.differences {
                        tracing::warn!(
                            kind = difference.kind.as_str(),
                            contract_id = difference.ids.contract_id,
                            summary = difference.summary,
                            "the services' records differ"
                        );
                    }
                }
                Err(error) => tracing::info!(%error, "reconciliation not run; next time"),
            }
        })
        .await;
    }
}

/// Removes resumable uploads left untouched past their window, every minute.
async fn sweep_partials(store: EvidenceStore, window: Duration, draining: ta_workflow::Shutdown) {
    ta_runtime::telemetry::sample_every(Duration::from_secs(60), draining, || {
        let store = store.clone();
        async move { store.sweep_partials(window).await }
    })
    .await;
}
