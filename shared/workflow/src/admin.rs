//! `tradeassurance.ops.v1.WorkflowAdminService`, served by every process over
//! its own schema: the operators' queue (parked outbox rows, escalated
//! refusals among them, and parked feed events), re-driving an item, and the
//! backlog of the outbox, the timers and the consumers. Operators only (the
//! proto's access option).

use std::time::Duration;

use sqlx::PgPool;
use ta_proto::ops as pb;
use ta_runtime::{ServiceError, pipeline::Mutations, timestamps};
use tonic::{Request, Response, Status};

use crate::{
    Schema,
    consumer::{ParkedEventView, ParkedEvents},
    outbox::{Outbox, OutboxRowView},
    timers::Timers,
};

pub use pb::workflow_admin_service_server::WorkflowAdminServiceServer;

/// The gRPC service name, for a server's served services and its policy.
pub const SERVICE_NAME: &str = "tradeassurance.ops.v1.WorkflowAdminService";

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 500;

/// The operator RPC over one service's outbox and timers.
pub struct WorkflowAdmin {
    pool: PgPool,
    outbox: Outbox,
    timers: Timers,
    parked_events: ParkedEvents,
    mutations: Mutations,
}

impl WorkflowAdmin {
    /// Re-drives are keyed mutations: they use `schema`'s `idempotency_keys`.
    pub fn new(pool: PgPool, schema: Schema) -> Self {
        Self {
            mutations: Mutations::new(pool.clone(), schema.name()),
            pool,
            outbox: Outbox::new(schema),
            timers: Timers::new(schema),
            parked_events: ParkedEvents::new(schema),
        }
    }

    /// The tonic service, ready to add to a server's routes.
    pub fn into_server(self) -> WorkflowAdminServiceServer<Self> {
        WorkflowAdminServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::workflow_admin_service_server::WorkflowAdminService for WorkflowAdmin {
    async fn list_parked_outbox_rows(
        &self,
        request: Request<pb::ListParkedOutboxRowsRequest>,
    ) -> Result<Response<pb::ListParkedOutboxRowsResponse>, Status> {
        let request = request.into_inner();
        let page_size = page(request.page_size, request.after_id)?;
        let rows = self
            .outbox
            .parked(&self.pool, request.after_id, page_size)
            .await?;
        Ok(Response::new(pb::ListParkedOutboxRowsResponse {
            rows: rows.iter().map(row_to_proto).collect(),
        }))
    }

    async fn redrive_outbox_row(
        &self,
        request: Request<pb::RedriveOutboxRowRequest>,
    ) -> Result<Response<pb::RedriveOutboxRowResponse>, Status> {
        let prepared = self.mutations.prepare(request, |request, _, violations| {
            violations.require(request.id > 0, "id", "must be a parked outbox row's id");
            Ok(request.id)
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let row = self.outbox.redrive(tx, prepared.command).await?;
                    tracing::info!(
                        outbox.id = row.id,
                        operator = %prepared.principal().subject,
                        "parked outbox row re-driven"
                    );
                    Ok(pb::RedriveOutboxRowResponse {
                        row: Some(row_to_proto(&row)),
                    })
                }
            })
            .await
    }

    async fn list_parked_feed_events(
        &self,
        request: Request<pb::ListParkedFeedEventsRequest>,
    ) -> Result<Response<pb::ListParkedFeedEventsResponse>, Status> {
        let request = request.into_inner();
        let page_size = page(request.page_size, request.after_id)?;
        let events = self
            .parked_events
            .list(&self.pool, request.after_id, page_size)
            .await?;
        Ok(Response::new(pb::ListParkedFeedEventsResponse {
            events: events.iter().map(event_to_proto).collect(),
        }))
    }

    async fn redrive_feed_event(
        &self,
        request: Request<pb::RedriveFeedEventRequest>,
    ) -> Result<Response<pb::RedriveFeedEventResponse>, Status> {
        let prepared = self.mutations.prepare(request, |request, _, violations| {
            violations.require(request.id > 0, "id", "must be a parked feed event's id");
            Ok(request.id)
        })?;
        self.mutations
            .execute(&prepared, || {
                async |tx| {
                    let event = self.parked_events.redrive(tx, prepared.command).await?;
                    tracing::info!(
                        feed = %event.feed,
                        feed.sequence = event.sequence,
                        operator = %prepared.principal().subject,
                        "parked feed event re-driven"
                    );
                    Ok(pb::RedriveFeedEventResponse {
                        event: Some(event_to_proto(&event)),
                    })
                }
            })
            .await
    }

    async fn get_workflow_backlog(
        &self,
        _request: Request<pb::GetWorkflowBacklogRequest>,
    ) -> Result<Response<pb::GetWorkflowBacklogResponse>, Status> {
        let outbox = self.outbox.backlog(&self.pool).await?;
        let timers = self.timers.overdue(&self.pool).await?;
        let feed_events_parked = self.parked_events.count(&self.pool).await?;
        Ok(Response::new(pb::GetWorkflowBacklogResponse {
            outbox_pending: outbox.pending,
            oldest_outbox_pending_age: outbox.oldest_pending_age.map(to_proto_duration),
            outbox_parked: outbox.parked,
            timers_overdue: timers.count,
            oldest_timer_overdue_age: timers.oldest_age.map(to_proto_duration),
            feed_events_parked,
        }))
    }
}

fn row_to_proto(row: &OutboxRowView) -> pb::OutboxRow {
    pb::OutboxRow {
        id: row.id,
        target: row.target.clone(),
        method: row.method.clone(),
        idempotency_key: row.idempotency_key.clone(),
        attempts: row.attempts,
        last_error: row.last_error.clone().unwrap_or_default(),
        created_at: Some(timestamps::to_proto(row.created_at)),
        parked_at: row.parked_at.map(timestamps::to_proto),
        escalated: row.escalated,
    }
}

fn event_to_proto(event: &ParkedEventView) -> pb::ParkedFeedEvent {
    pb::ParkedFeedEvent {
        id: event.id,
        feed: event.feed.clone(),
        sequence: event.sequence,
        gap: event.gap,
        last_sequence: event.last_sequence.unwrap_or(0),
        attempts: event.attempts,
        last_error: event.last_error.clone().unwrap_or_default(),
        first_failed_at: Some(timestamps::to_proto(event.first_failed_at)),
        parked_at: event.parked_at.map(timestamps::to_proto),
    }
}

/// A listing's page size (0: the default) and its `after_id`, checked.
fn page(page_size: u32, after_id: i64) -> Result<u32, ServiceError> {
    if after_id < 0 {
        return Err(ServiceError::invalid("after_id", "must not be negative"));
    }
    match page_size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size <= MAX_PAGE_SIZE => Ok(size),
        _ => Err(ServiceError::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE_SIZE}"),
        )),
    }
}

fn to_proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}
