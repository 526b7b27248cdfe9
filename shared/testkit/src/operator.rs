//! A finance operator at a service's workflow admin API: the parked outbox
//! rows, the backlog, and a row re-driven.

use ta_proto::ops::{self, workflow_admin_service_client::WorkflowAdminServiceClient};
use ta_runtime::auth::Role;
use tonic::transport::Channel;

use crate::authorized;

pub type Admin = WorkflowAdminServiceClient<Channel>;

/// The outbox rows parked for an operator, as the finance operator
/// `operator` lists them.
pub async fn parked(admin: &mut Admin, operator: &str) -> Vec<ops::OutboxRow> {
    admin
        .list_parked_outbox_rows(authorized(
            ops::ListParkedOutboxRowsRequest::default(),
            operator,
            Role::Finance,
        ))
        .await
        .expect("parked rows")
        .into_inner()
        .rows
}

/// The workflow backlog, as the finance operator `operator` reads it.
pub async fn backlog(admin: &mut Admin, operator: &str) -> ops::GetWorkflowBacklogResponse {
    admin
        .get_workflow_backlog(authorized(
            ops::GetWorkflowBacklogRequest {},
            operator,
            Role::Finance,
        ))
        .await
        .expect("backlog")
        .into_inner()
}

/// Re-drives the parked row `id` (the callee is back) as the finance
/// operator `operator`, with `idempotency_key`.
pub async fn redrive(admin: &mut Admin, operator: &str, idempotency_key: &str, id: i64) {
    admin
        .redrive_outbox_row(authorized(
            ops::RedriveOutboxRowRequest {
                idempotency_key: idempotency_key.into(),
                id,
                reason: "the callee is back".into(),
            },
            operator,
            Role::Finance,
        ))
        .await
        .expect("re-driven");
}

/// Waits (see [`crate::eventually`], naming `what`) until a refused call is
/// parked for an operator (escalated); returns the parked rows then.
pub async fn escalated(admin: &Admin, operator: &str, what: &str) -> Vec<ops::OutboxRow> {
    crate::eventually(what, || {
        let mut admin = admin.clone();
        async move {
            parked(&mut admin, operator)
                .await
                .iter()
                .any(|r| r.escalated)
        }
    })
    .await;
    parked(&mut admin.clone(), operator).await
}
