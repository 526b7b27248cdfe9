//! Escrow's use cases. Each runs in the caller's transaction (the shared
//! pipeline's, once the API serves them): it locks the escrow account row
//! first, applies the domain rules, moves money through the ledger and
//! saves. Every movement names its purpose, so a retried or concurrent
//! request for the same milestone, claim or cancellation moves money once.
//!
//! `context` holds what they share beyond the transaction (the gateway, the
//! feed, the timers, the settings); `events` and `deadlines` keep the feed
//! and the timers in step with a change; `reactions` is what a timer firing
//! does; `worker` runs what no request waits for.

use sqlx::PgConnection;
use ta_runtime::{
    ServiceError,
    auth::{Principal, Role},
};

use crate::{
    domain::EscrowAccount,
    storage::{self, accounts::AccountFilter},
};

pub mod accounts;
pub mod amendments;
pub mod context;
pub mod deadlines;
pub mod events;
pub mod funding;
pub mod gateway_events;
pub mod reactions;
pub mod settlement;
pub mod transfers;
pub mod worker;

/// Whether the caller may see the account at all: its buyer, the owner of
/// its supplier, staff, back ends and services. Anyone else is told what an id that
/// does not exist is told (`ServiceError::unseen`), so that asking cannot
/// tell which accounts exist.
pub async fn may_see(
    conn: &mut PgConnection,
    principal: &Principal,
    account: &EscrowAccount,
) -> Result<bool, ServiceError> {
    Ok(match principal.role {
        _ if principal.sees_everything() => true,
        Role::Buyer => principal.subject == account.buyer_principal_id,
        Role::Supplier => {
            storage::accounts::get_terms(conn, account.id)
                .await?
                .supplier_owner_principal_id
                == principal.subject
        }
        _ => false,
    })
}

/// Narrows an account listing to what the caller may see: a buyer its own
/// accounts (naming another buyer is PERMISSION_DENIED, as ListContracts
/// answers), a supplier those of the suppliers it owns (its other filters
/// narrow that further); staff, back ends and services see every account.
pub fn scope_accounts(
    principal: &Principal,
    filter: &mut AccountFilter,
) -> Result<(), ServiceError> {
    match principal.role {
        _ if principal.sees_everything() => {}
        Role::Buyer => {
            let named_another = principal.narrow_to_self(&mut filter.buyer_principal_id);
            if named_another {
                return Err(ServiceError::PermissionDenied(
                    "a buyer lists only its own escrow accounts".into(),
                ));
            }
        }
        Role::Supplier => filter.supplier_owner_principal_id = Some(principal.subject.clone()),
        _ => {
            return Err(ServiceError::PermissionDenied(
                "only parties, staff and the platform list escrow accounts".into(),
            ));
        }
    }
    Ok(())
}
