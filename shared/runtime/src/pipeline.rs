//! The one pipeline every mutating RPC of every service runs through:
//!
//! 1. the caller (principal and method path) set by the auth layer;
//! 2. the idempotency key's shape, and the handler's parsing of the request
//!    into a domain command, all field violations reported together;
//! 3. one transaction: apply the command, then, when staff act, the audit
//!    entry (who, duty, method, resource, reason, trace, request), then the
//!    answer under the key (principal, method path) as its last statement;
//!    a serialization failure or deadlock (a concurrent change won) reruns it
//!    a bounded number of times; with group commit ([`Mutations::grouped`])
//!    the transaction is shared with concurrent requests and this request's
//!    part of it is one savepoint ([`crate::group_commit`]);
//! 4. the stored answer, or the replayed one for a retried key.
//!
//! A handler is then two steps: `prepare` with its parse function (pure), and
//! `execute` with its apply function (domain + storage).
//! The key scope comes from the route, never from a hand-typed method name, so
//! two RPCs whose requests encode alike cannot share keys.

use std::{sync::Arc, time::Duration};

use sqlx::{PgConnection, PgPool};
use ta_proto::IdempotentRequest;

use crate::{
    ServiceError, Violations,
    audit::{self, AuditTrail},
    auth::{self, Caller, Principal},
    group_commit::{GroupCommit, GroupCommitConfig},
    idempotency::{IdempotencyKeys, KeyScope, validate_key},
};

/// How many times a transaction that lost to a concurrent one is rerun.
const SERIALIZATION_RETRIES: u32 = 3;

/// Runs keyed mutations over one service's pool and idempotency table.
#[derive(Clone, Debug)]
pub struct Mutations {
    pool: PgPool,
    keys: IdempotencyKeys,
    audit: AuditTrail,
    /// Set when concurrent mutations share transactions
    /// ([`Mutations::grouped`]).
    group: Option<Arc<GroupCommit>>,
}

impl Mutations {
    /// `schema` is the service's own schema (its `idempotency_keys` and
    /// `audit_entries` tables).
    pub fn new(pool: PgPool, schema: &'static str) -> Self {
        Self {
            audit: AuditTrail::new(pool.clone(), schema),
            pool,
            keys: IdempotencyKeys::new(schema),
            group: None,
        }
    }

    /// The same pipeline with [`Mutations::execute`]'s transactions shared
    /// by concurrent requests (group commit); a `max_items` of 1 keeps one
    /// transaction per request.
    #[must_use]
    pub fn grouped(mut self, config: GroupCommitConfig) -> Self {
        self.group = (config.max_items > 1).then(|| Arc::new(GroupCommit::new(config)));
        self
    }

    /// What group commit did so far, when it is on.
    pub fn group_stats(&self) -> Option<crate::group_commit::GroupStats> {
        self.group.as_ref().map(|group| group.stats())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs a read (no key, no transaction of its own) on a connection of
    /// the pool: a read RPC's one step.
    ///
    /// # Errors
    /// `work`'s, or the pool's when no connection comes.
    pub async fn read<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, ServiceError>,
    ) -> Result<T, tonic::Status> {
        let mut conn = self.pool.acquire().await.map_err(ServiceError::from)?;
        Ok(work(&mut conn).await?)
    }

    /// The stored answer of a prepared mutation whose key was used before
    /// (`IDEMPOTENCY_KEY_REUSED` when it was for another request), or `None`
    /// for a fresh key. For a use case that must answer a retry before doing
    /// anything else (reading another service, calling the payment gateway):
    /// it looks first, then works in several transactions, and ends with
    /// [`Mutations::answer`].
    pub async fn replay<Q, C, R>(
        &self,
        prepared: &Prepared<Q, C>,
    ) -> Result<Option<R>, ServiceError>
    where
        Q: IdempotentRequest,
        R: prost::Message + Default,
    {
        self.keys
            .stored(&self.pool, &prepared.scope(), &prepared.request)
            .await
    }

    /// Stores the answer of a multi-transaction use case under its key, in
    /// one transaction with `answer`'s last reads; a concurrent twin that
    /// stored first wins and its answer is returned instead.
    pub async fn answer<Q, C, R>(
        &self,
        prepared: &Prepared<Q, C>,
        answer: impl AsyncFnOnce(&mut PgConnection) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError>
    where
        Q: IdempotentRequest,
        R: prost::Message + Default,
    {
        let audit = prepared.audit_entry();
        self.keys
            .run(
                &self.pool,
                &prepared.scope(),
                &prepared.request,
                async |tx| {
                    let response = answer(tx).await?;
                    self.audit_in(tx, audit.as_ref()).await?;
                    Ok(response)
                },
            )
            .await
    }

    /// Writes a staff action's entry in its transaction.
    async fn audit_in(
        &self,
        tx: &mut PgConnection,
        entry: Option<&audit::Entry>,
    ) -> Result<(), ServiceError> {
        match entry {
            Some(entry) => self.audit.record(tx, entry).await,
            None => Ok(()),
        }
    }

    /// Checks a mutating request: the caller, the key's shape, `parse`,
    /// which turns the request into a command and records every bad field in
    /// the violations it is given (it may return early with
    /// `InvalidArgument(vec![])` once it recorded why), and a staff caller's
    /// reason.
    pub fn prepare<Q, C>(
        &self,
        request: tonic::Request<Q>,
        parse: impl FnOnce(&Q, &Principal, &mut Violations) -> Result<C, ServiceError>,
    ) -> Result<Prepared<Q, C>, tonic::Status>
    where
        Q: IdempotentRequest,
    {
        let caller = auth::caller(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        validate_key(request.idempotency_key(), &mut violations);
        let parsed = parse(&request, &caller.principal, &mut violations);
        if let Err(ServiceError::InvalidArgument(more)) = &parsed {
            violations.extend(more.iter().cloned());
        }
        audit::check_reason(&caller.principal, request.reason(), &mut violations);
        if !violations.is_empty() {
            return Err(violations.into_error().into());
        }
        Ok(Prepared {
            #[cfg(debug_assertions)]
            defect_key: test_defect::forgotten_key(&caller.method, request.idempotency_key()),
            caller,
            request,
            command: parsed?,
        })
    }

    /// Runs a prepared mutation once under its key: the function `apply`
    /// returns changes the service's state in the transaction and builds the
    /// answer. A rerun after a lost race asks `apply` for a fresh one. When
    /// grouped, the transaction may be shared with concurrent requests
    /// ([`crate::group_commit`]): the answer comes after its commit.
    // `apply` makes an `AsyncFnOnce` rather than being an `AsyncFn`: the
    // futures of the latter are not provably `Send` for tonic today.
    pub async fn execute<Q, C, R, A>(
        &self,
        prepared: &Prepared<Q, C>,
        apply: impl Fn() -> A,
    ) -> Result<tonic::Response<R>, tonic::Status>
    where
        Q: IdempotentRequest,
        R: prost::Message + Default,
        A: AsyncFnOnce(&mut PgConnection) -> Result<R, ServiceError>,
    {
        let scope = prepared.scope();
        let audit = prepared.audit_entry();
        let mut attempt = 0;
        loop {
            let work = apply();
            let item = async |tx: &mut PgConnection| {
                let response = work(tx).await?;
                self.audit_in(tx, audit.as_ref()).await?;
                Ok(response)
            };
            let outcome = match &self.group {
                None => {
                    self.keys
                        .run(&self.pool, &scope, &prepared.request, item)
                        .await
                }
                Some(group) => {
                    group
                        .run(&self.pool, async |conn, part| {
                            self.keys
                                .run_in_shared(conn, part, &scope, &prepared.request, item)
                                .await
                        })
                        .await
                }
            };
            match outcome {
                Err(ServiceError::Aborted(reason)) if attempt < SERIALIZATION_RETRIES => {
                    attempt += 1;
                    tracing::debug!(%reason, attempt, "transaction lost to a concurrent one; rerunning");
                    tokio::time::sleep(jitter(attempt)).await;
                }
                outcome => return outcome.map(tonic::Response::new).map_err(Into::into),
            }
        }
    }
}

impl Mutations {
    /// The stored answer when `request`'s key already has one: a retry after
    /// success. A handler that reads other services or applies rules that
    /// change with time (a deadline "in the future") before its transaction
    /// asks this first, so such a retry replays the first answer instead of
    /// reading again and answering an error. `None` for a new key (or a
    /// malformed one, which `prepare` reports).
    ///
    /// # Errors
    /// The caller is missing (no auth layer), or the key holds another
    /// request (`IDEMPOTENCY_KEY_REUSED`); database errors.
    pub async fn replayed<Q, R>(
        &self,
        request: &tonic::Request<Q>,
    ) -> Result<Option<tonic::Response<R>>, tonic::Status>
    where
        Q: IdempotentRequest,
        R: prost::Message + Default,
    {
        let caller = auth::caller(request)?;
        let message = request.get_ref();
        let mut violations = Violations::new();
        validate_key(message.idempotency_key(), &mut violations);
        if !violations.is_empty() {
            return Ok(None);
        }
        let scope = KeyScope {
            principal_id: &caller.principal.subject,
            method: &caller.method,
            key: message.idempotency_key(),
        };
        let stored = self.keys.stored(&self.pool, &scope, message).await?;
        Ok(stored.map(tonic::Response::new))
    }
}

/// A checked mutating request: who asks, what they sent, what it means.
pub struct Prepared<Q, C> {
    caller: Caller,
    request: Q,
    pub command: C,
    /// The test-only defect's stand-in key (debug builds only; see
    /// [`test_defect`]).
    #[cfg(debug_assertions)]
    defect_key: Option<String>,
}

impl<Q: IdempotentRequest, C> Prepared<Q, C> {
    pub fn principal(&self) -> &Principal {
        &self.caller.principal
    }

    /// The audit trail's entry of this request, when staff make it.
    fn audit_entry(&self) -> Option<audit::Entry> {
        audit::Entry::of(&self.caller.principal, &self.caller.method, &self.request)
    }

    /// The caller's key, scoped to the caller and the method.
    pub fn scope(&self) -> KeyScope<'_> {
        #[cfg(debug_assertions)]
        if let Some(key) = &self.defect_key {
            return KeyScope {
                principal_id: &self.caller.principal.subject,
                method: &self.caller.method,
                key,
            };
        }
        KeyScope {
            principal_id: &self.caller.principal.subject,
            method: &self.caller.method,
            key: self.request.idempotency_key(),
        }
    }
}

/// A DELIBERATE DEFECT FOR TESTS ONLY, compiled into debug builds alone
/// (`cfg(debug_assertions)`; a release build has no trace of it): with
/// `TA_TEST_DEFECT_SKIP_IDEMPOTENCY` set to a full method path (e.g.
/// `/tradeassurance.escrow.v1.EscrowService/ReleaseToSupplier`), that
/// method's mutations run under a fresh stand-in key every call, so the
/// idempotency lookup never finds the earlier answer and a retried request
/// is worked again as a new one. The chaos run's checker (`bench`, `make
/// chaos`) must catch it; nothing else may set it.
#[cfg(debug_assertions)]
mod test_defect {
    pub const VARIABLE: &str = "TA_TEST_DEFECT_SKIP_IDEMPOTENCY";

    /// The stand-in key when the defect is switched on for `method`.
    pub fn forgotten_key(method: &str, key: &str) -> Option<String> {
        let target = std::env::var(VARIABLE).ok()?;
        (!target.is_empty() && target == method)
            .then(|| format!("{key}#defect-{}", uuid::Uuid::new_v4()))
    }
}

/// A few milliseconds, growing with the attempt and spread so that two
/// transactions that collided do not collide again in step.
fn jitter(attempt: u32) -> Duration {
    let spread = u64::from(uuid::Uuid::new_v4().as_u128() as u8 % 8);
    Duration::from_millis(u64::from(attempt) * 5 + spread)
}
