//! Helpers shared by escrow's tests.

#![allow(dead_code)]

use escrow::domain::{AccountKey, LedgerStore};
use sqlx::{PgConnection, PgPool};
use ta_runtime::{ServiceError, money::Currency};

pub static MIGRATOR: &sqlx::migrate::Migrator = &escrow::storage::MIGRATOR;

pub fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

pub fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

/// Runs `work` in its own transaction, committed only when it succeeds.
pub async fn in_tx<T>(
    pool: &PgPool,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    let mut tx = pool.begin().await?;
    let value = work(&mut tx).await?;
    tx.commit().await?;
    Ok(value)
}

pub async fn posted<L: LedgerStore>(ledger: &mut L, account: &AccountKey) -> i64 {
    ledger.balance(account).await.unwrap().posted
}

/// The ledger is sound: reconciliation finds nothing.
pub async fn assert_sound<L: LedgerStore>(ledger: &mut L) {
    let found = ledger.reconcile().await.unwrap();
    assert!(found.is_empty(), "reconciliation found {found:#?}");
}
