//! Group commit: keyed mutations that arrive together share one
//! transaction, one `BEGIN` and one `COMMIT` (one WAL flush), and the locks
//! one of them takes serve the next without a wait.
//!
//! The shape follows TigerBeetle's batching, with a result per item:
//! - **No timer.** The first request that finds no open batch leads one: it
//!   publishes the batch, waits for a commit slot (at most `batches in
//!   flight` transactions at once), begins the transaction and runs its own
//!   item. Whatever arrives while the batch is open joins it, up to
//!   `max_items`; a batch closes when every member that joined has run.
//! - **Items run one after another on the batch's connection, in arrival
//!   order,** each in its own task (its use case borrows its request, so it
//!   cannot be handed to another task) and inside its own savepoint: a
//!   failing item rolls back to its savepoint and cannot fail the others.
//!   Each records its own idempotency key before it releases the savepoint.
//!   The leader's item, first in the transaction, needs no savepoint: when
//!   it fails the transaction is rolled back and a fresh one chained before
//!   any member runs, so a batch of one costs what a lone transaction does.
//! - **An answer only after the commit.** Every item waits for the batch's
//!   end: committed, it answers its own result; otherwise all answer the
//!   batch's failure (the database went away: UNAVAILABLE), or rerun (below).
//! - **A member dropped while it runs** (its caller went away) leaves a
//!   statement half read on the connection: the batch is rolled back whole
//!   and every other item reruns, as after a lost serialization race, so no
//!   change commits without its recorded answer. The same holds when the
//!   leader itself is dropped.
//!
//! Batches of one service run in parallel up to the slots; two batches
//! that want the same rows wait on each other's locks as two transactions
//! would, and a deadlock costs its victim item one rerun.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, Semaphore, watch};

use crate::{ServiceError, db};

/// How requests are gathered: the settings of a service that groups its
/// keyed calls (escrow, supplier-registry).
#[derive(clap::Args, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Group commit: the most concurrent keyed calls that share one
    /// transaction, each in its own savepoint; 1 gives every call its own.
    #[arg(long = "group-commit-max-items", env = "GROUP_COMMIT_MAX_ITEMS",
          value_name = "GROUP_COMMIT_MAX_ITEMS", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_items: u16,
    /// Group commit: how many shared transactions may be open at once (each
    /// holds a pooled connection until it commits).
    #[arg(long = "group-commit-batches", env = "GROUP_COMMIT_BATCHES",
          value_name = "GROUP_COMMIT_BATCHES", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub batches_in_flight: u16,
}

/// What grouping did so far (for tests and the logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub batches: u64,
    pub items: u64,
    pub rerun_batches: u64,
}

/// The gatherer of one service's keyed mutations.
#[derive(Debug)]
pub struct GroupCommit {
    config: GroupCommitConfig,
    open: Mutex<Open>,
    slots: Semaphore,
    batches: AtomicU64,
    items: AtomicU64,
    rerun_batches: AtomicU64,
}

#[derive(Debug, Default)]
struct Open {
    batch: Option<Arc<Batch>>,
    joined: usize,
}

type SharedTx = Arc<AsyncMutex<Option<Transaction<'static, Postgres>>>>;

#[derive(Debug)]
struct Batch {
    /// The transaction; `None` until the leader began it, or when it could
    /// not be begun.
    tx: SharedTx,
    /// Members that joined and have not finished running.
    pending: watch::Sender<usize>,
    end: watch::Sender<End>,
    /// A member or the leader was dropped mid-work: nothing may commit.
    poisoned: AtomicBool,
    /// A savepoint statement failed: the transaction may have lost earlier
    /// items' work without an error of its own (a `COMMIT` of an aborted
    /// transaction rolls back and reports no error), so it must not commit;
    /// how the batch then ends.
    broken: Mutex<Option<End>>,
}

/// How a batch ended, as every item of it is told.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Open,
    Committed,
    /// Rolled back whole; every item reruns.
    Rerun,
    Unavailable,
    DeadlineExceeded,
    Failed,
}

impl End {
    fn of(error: &ServiceError) -> Self {
        match error {
            ServiceError::Unavailable(_) => Self::Unavailable,
            ServiceError::DeadlineExceeded => Self::DeadlineExceeded,
            ServiceError::Aborted(_) => Self::Rerun,
            _ => Self::Failed,
        }
    }

    /// An item's answer once its batch ended: its own result when the batch
    /// committed, the batch's failure otherwise.
    fn conclude<R>(&self, own: Option<Result<R, ServiceError>>) -> Result<R, ServiceError> {
        match self {
            Self::Committed => own.unwrap_or_else(|| Err(rerun())),
            Self::Open | Self::Rerun => Err(rerun()),
            Self::Unavailable => Err(ServiceError::Unavailable(
                "the database is unavailable; retry later".into(),
            )),
            Self::DeadlineExceeded => Err(ServiceError::DeadlineExceeded),
            Self::Failed => Err(ServiceError::internal(
                "the batch's transaction failed to commit",
            )),
        }
    }
}

fn rerun() -> ServiceError {
    ServiceError::Aborted("the batch this request ran in was rolled back; retry the request".into())
}

impl Batch {
    fn new() -> Self {
        Self {
            tx: Arc::new(AsyncMutex::new(None)),
            pending: watch::Sender::new(0),
            end: watch::Sender::new(End::Open),
            poisoned: AtomicBool::new(false),
            broken: Mutex::new(None),
        }
    }

    fn break_with(&self, error: &ServiceError) {
        let mut broken = self
            .broken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        broken.get_or_insert(match End::of(error) {
            End::Unavailable => End::Unavailable,
            _ => End::Rerun,
        });
    }

    fn broken(&self) -> Option<End> {
        self.broken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    async fn ended(&self) -> End {
        let mut end = self.end.subscribe();
        match end.wait_for(|end| *end != End::Open).await {
            Ok(end) => end.clone(),
            // The sender lives in the batch, which this borrows.
            Err(_) => End::Rerun,
        }
    }
}

enum Seat {
    Leader(
        Arc<Batch>,
        OwnedMutexGuard<Option<Transaction<'static, Postgres>>>,
    ),
    Member(Arc<Batch>),
}

impl GroupCommit {
    pub fn new(config: GroupCommitConfig) -> Self {
        Self {
            config: GroupCommitConfig {
                max_items: config.max_items.max(1),
                batches_in_flight: config.batches_in_flight.max(1),
            },
            open: Mutex::new(Open::default()),
            slots: Semaphore::new(usize::from(config.batches_in_flight.max(1))),
            batches: AtomicU64::new(0),
            items: AtomicU64::new(0),
            rerun_batches: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> GroupCommitConfig {
        self.config
    }

    pub fn stats(&self) -> GroupStats {
        GroupStats {
            batches: self.batches.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            rerun_batches: self.rerun_batches.load(Ordering::Relaxed),
        }
    }

    /// Runs `item` in the open batch, or leads a new one, and answers once
    /// the batch ended. `item` brackets its work with its [`Part`]: `open`
    /// before, then `keep` or `discard`.
    pub async fn run<R>(
        &self,
        pool: &PgPool,
        item: impl AsyncFnOnce(&mut PgConnection, Part<'_>) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError> {
        match self.seat() {
            Seat::Member(batch) => self.as_member(&batch, item).await,
            Seat::Leader(batch, tx) => self.as_leader(pool, &batch, tx, item).await,
        }
    }

    fn seat(&self) -> Seat {
        self.items.fetch_add(1, Ordering::Relaxed);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.joined < usize::from(self.config.max_items)
            && let Some(batch) = open.batch.clone()
        {
            open.joined += 1;
            batch.pending.send_modify(|pending| *pending += 1);
            return Seat::Member(batch);
        }
        let batch = Arc::new(Batch::new());
        let tx = batch
            .tx
            .clone()
            .try_lock_owned()
            .expect("a batch's transaction is free when the batch is made");
        open.batch = Some(batch.clone());
        open.joined = 1;
        Seat::Leader(batch, tx)
    }

    /// Closes `batch` to newcomers once no member is still to run; `false`
    /// when one joined meanwhile.
    fn close(&self, batch: &Arc<Batch>, only_when_idle: bool) -> bool {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if only_when_idle && *batch.pending.borrow() != 0 {
            return false;
        }
        if open.batch.as_ref().is_some_and(|b| Arc::ptr_eq(b, batch)) {
            open.batch = None;
            open.joined = 0;
        }
        true
    }

    async fn as_member<R>(
        &self,
        batch: &Arc<Batch>,
        item: impl AsyncFnOnce(&mut PgConnection, Part<'_>) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError> {
        let mut seat = MemberSeat {
            batch,
            running: false,
            finished: false,
        };
        let mut tx = batch.tx.lock().await;
        let own = match tx.as_mut() {
            Some(tx) if !batch.is_poisoned() => {
                seat.running = true;
                let own = item(
                    tx,
                    Part {
                        batch,
                        first: false,
                    },
                )
                .await;
                seat.running = false;
                Some(own)
            }
            _ => None,
        };
        drop(tx);
        seat.finish();
        batch.ended().await.conclude(own)
    }

    async fn as_leader<R>(
        &self,
        pool: &PgPool,
        batch: &Arc<Batch>,
        mut tx: OwnedMutexGuard<Option<Transaction<'static, Postgres>>>,
        item: impl AsyncFnOnce(&mut PgConnection, Part<'_>) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError> {
        let mut lead = Lead {
            group: self,
            batch,
            ended: false,
        };
        let _slot = self.slots.acquire().await;
        let own = match db::begin(pool).await {
            Ok(begun) => item(tx.insert(begun), Part { batch, first: true }).await,
            Err(error) => {
                drop(tx);
                lead.end(End::of(&error));
                return Err(error);
            }
        };
        drop(tx);
        let mut pending = batch.pending.subscribe();
        loop {
            // The sender lives in the batch, which this borrows.
            let _ = pending.wait_for(|pending| *pending == 0).await;
            if self.close(batch, true) {
                break;
            }
        }
        let taken = batch.tx.lock().await.take();
        let end = match (taken, batch.broken()) {
            (Some(tx), None) if !batch.is_poisoned() => match tx.commit().await {
                Ok(()) => End::Committed,
                Err(error) => End::of(&ServiceError::from(error)),
            },
            (Some(tx), broken) => {
                db::rollback(tx).await;
                broken.unwrap_or(End::Rerun)
            }
            (None, broken) => broken.unwrap_or(End::Rerun),
        };
        lead.end(end.clone());
        end.conclude(Some(own))
    }
}

/// A member's place in its batch: when dropped before it finished running,
/// it gives its place up, and poisons the batch if it was mid-work.
struct MemberSeat<'a> {
    batch: &'a Batch,
    running: bool,
    finished: bool,
}

impl MemberSeat<'_> {
    fn finish(&mut self) {
        self.finished = true;
        self.batch.pending.send_modify(|pending| *pending -= 1);
    }
}

impl Drop for MemberSeat<'_> {
    fn drop(&mut self) {
        if self.running {
            self.batch.poison();
        }
        if !self.finished {
            self.batch.pending.send_modify(|pending| *pending -= 1);
        }
    }
}

/// The leader's duty to end its batch: dropped before it did, the batch is
/// closed, poisoned and every member told to rerun.
struct Lead<'a> {
    group: &'a GroupCommit,
    batch: &'a Arc<Batch>,
    ended: bool,
}

impl Lead<'_> {
    fn end(&mut self, end: End) {
        self.ended = true;
        self.group.close(self.batch, false);
        self.group.batches.fetch_add(1, Ordering::Relaxed);
        if end == End::Rerun {
            self.group.rerun_batches.fetch_add(1, Ordering::Relaxed);
        }
        self.batch.end.send_replace(end);
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.batch.poison();
            self.end(End::Rerun);
        }
    }
}

/// One item's part of a shared transaction: a savepoint, or for the
/// transaction's first item the transaction itself (its failure rolls the
/// transaction back and chains a fresh one, a batch of one then costing
/// what a lone transaction does). The statements are sent here rather than
/// through sqlx's nested transactions: a failed `SAVEPOINT` there rolls the
/// whole transaction back and forgets it, after which the batch's `COMMIT`
/// would be skipped yet reported as done. A failure of any of them breaks
/// the batch: it is rolled back and no item of it is acknowledged.
pub struct Part<'a> {
    batch: &'a Batch,
    first: bool,
}

impl Part<'_> {
    /// Before the item's first statement.
    pub async fn open(&self, conn: &mut PgConnection) -> Result<(), ServiceError> {
        if self.first {
            return Ok(());
        }
        self.bracket(conn, "SAVEPOINT group_item").await
    }

    /// The item's work stays in the transaction.
    pub async fn keep(&self, conn: &mut PgConnection) -> Result<(), ServiceError> {
        if self.first {
            return Ok(());
        }
        self.bracket(conn, "RELEASE SAVEPOINT group_item").await
    }

    /// The item's work is undone; the transaction goes on without it.
    pub async fn discard(&self, conn: &mut PgConnection) -> Result<(), ServiceError> {
        let statement = if self.first {
            "ROLLBACK AND CHAIN"
        } else {
            "ROLLBACK TO SAVEPOINT group_item; RELEASE SAVEPOINT group_item"
        };
        self.bracket(conn, statement).await
    }

    async fn bracket(
        &self,
        conn: &mut PgConnection,
        statement: &'static str,
    ) -> Result<(), ServiceError> {
        match sqlx::raw_sql(statement).execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(error) => {
                let error = ServiceError::from(error);
                self.batch.break_with(&error);
                Err(error)
            }
        }
    }
}
