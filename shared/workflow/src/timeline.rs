//! A readable history of one aggregate (a contract, a claim), written once
//! for every service that keeps one: each step numbered without gaps, with
//! its actor, time, machine-readable action, readable detail and the money
//! it moved; and the page of it a `Get...Timeline` RPC answers.
//!
//! The table stays the service's own (created by its migrations), in its
//! schema, keyed by the aggregate's id column:
//!
//! ```sql
//! CREATE TABLE <schema>.timeline (
//!     <subject>            uuid NOT NULL REFERENCES ...,
//!     entry                integer NOT NULL CHECK (entry >= 1),
//!     occurred_at          timestamptz NOT NULL,
//!     actor_principal_id   text NOT NULL,
//!     actor_role           text NOT NULL,
//!     kind                 text NOT NULL,
//!     description          text NOT NULL,
//!     currency             char(3),
//!     amount_minor         bigint,
//!     PRIMARY KEY (<subject>, entry),
//!     CHECK ((currency IS NULL) = (amount_minor IS NULL))
//! );
//! ```
//!
//! Entries are numbered `max + 1` in the appending transaction: the caller
//! holds the aggregate's row lock, so concurrent steps of one aggregate
//! serialize and the numbers have no gaps.

use sqlx::{AssertSqlSafe, FromRow, PgConnection};
use ta_proto::common::{PageRequest, TimelineEntry as PbTimelineEntry};
use ta_runtime::{
    ServiceError, Violations,
    auth::Actor,
    money::{Currency, Money},
    paging, timestamps,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Schema;

/// The kind of a timeline page token.
const PAGES: &str = "timeline";

/// One service's timeline table: `<schema>.timeline`, keyed by `subject`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeline {
    schema: Schema,
    subject: &'static str,
}

/// One line of the readable history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    /// Its number, from 1; ignored when appending (the table numbers it).
    pub entry: u32,
    pub occurred_at: OffsetDateTime,
    pub actor_principal_id: String,
    pub actor_role: String,
    /// Machine-readable action, e.g. `contract.signed`.
    pub kind: String,
    /// Readable: who did what and why.
    pub description: String,
    /// The money the step moved, if any.
    pub money: Option<Money>,
}

impl TimelineEntry {
    /// A step `actor` took at `at`, to append.
    pub fn step(
        at: OffsetDateTime,
        actor: &Actor,
        kind: &str,
        description: String,
        money: Option<Money>,
    ) -> Self {
        Self {
            entry: 0,
            occurred_at: at,
            actor_principal_id: actor.principal_id.clone(),
            actor_role: actor.role.as_str().into(),
            kind: kind.into(),
            description,
            money,
        }
    }

    /// The entry as the API shows it.
    pub fn into_proto(self) -> PbTimelineEntry {
        PbTimelineEntry {
            occurred_at: Some(timestamps::to_proto(self.occurred_at)),
            actor: Some(Actor::stored(self.actor_principal_id, &self.actor_role).to_proto()),
            action: self.kind,
            detail: self.description,
            money: self.money.map(Money::to_proto),
        }
    }
}

/// The page of a timeline a request asks for: its size and the entry it
/// continues after (0 from the start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub after: u32,
}

impl Page {
    /// The page `page` asks for; a bad size or a token another listing
    /// issued is recorded in `violations`.
    pub fn parse(page: Option<&PageRequest>, violations: &mut Violations) -> Self {
        let limit = paging::page_size(page, violations);
        let after = paging::cursor(page, PAGES, violations, |fields| {
            fields.first().and_then(|f| f.parse::<u32>().ok())
        })
        .unwrap_or(0);
        Self { limit, after }
    }
}

#[derive(FromRow)]
struct TimelineRow {
    entry: i32,
    occurred_at: OffsetDateTime,
    actor_principal_id: String,
    actor_role: String,
    kind: String,
    description: String,
    currency: Option<String>,
    amount_minor: Option<i64>,
}

impl TimelineRow {
    fn into_entry(self) -> Result<TimelineEntry, ServiceError> {
        let corrupt = |what: &str| {
            ServiceError::internal(format!("a timeline row holds an impossible {what}"))
        };
        let money = match (self.currency, self.amount_minor) {
            (Some(code), Some(amount_minor)) => {
                let currency = Currency::parse(code.trim()).ok_or_else(|| corrupt("currency"))?;
                Some(Money::new(amount_minor, currency))
            }
            _ => None,
        };
        Ok(TimelineEntry {
            entry: u32::try_from(self.entry).map_err(|_| corrupt("entry number"))?,
            occurred_at: self.occurred_at,
            actor_principal_id: self.actor_principal_id,
            actor_role: self.actor_role,
            kind: self.kind,
            description: self.description,
            money,
        })
    }
}

impl Timeline {
    /// The timeline of `schema`, keyed by the column `subject` (the
    /// aggregate's id, e.g. `contract_id`).
    ///
    /// # Errors
    /// `subject` is not a plain column name (lowercase letters, digits and
    /// `_`, starting with a letter).
    pub fn new(schema: Schema, subject: &'static str) -> Result<Self, String> {
        if Schema::new(subject).is_err() {
            return Err(format!("`{subject}` is not a plain column name"));
        }
        Ok(Self { schema, subject })
    }

    fn sql(self, statement: &str) -> String {
        self.schema
            .sql(statement)
            .replace("{subject}", self.subject)
    }

    /// Appends `entry` (its number is ignored) to the timeline of `subject`,
    /// whose row the caller has locked; returns the entry's number.
    ///
    /// # Errors
    /// Database errors.
    pub async fn append(
        self,
        tx: &mut PgConnection,
        subject: Uuid,
        entry: &TimelineEntry,
    ) -> Result<u32, ServiceError> {
        let number: i32 = sqlx::query_scalar(AssertSqlSafe(self.sql(
            "INSERT INTO {schema}.timeline ({subject}, entry, occurred_at, actor_principal_id, \
             actor_role, kind, description, currency, amount_minor) \
             SELECT $1, coalesce(max(entry), 0) + 1, $2, $3, $4, $5, $6, $7, $8 \
             FROM {schema}.timeline WHERE {subject} = $1 RETURNING entry",
        )))
        .bind(subject)
        .bind(entry.occurred_at)
        .bind(&entry.actor_principal_id)
        .bind(&entry.actor_role)
        .bind(&entry.kind)
        .bind(&entry.description)
        .bind(entry.money.map(|m| m.currency.as_str()))
        .bind(entry.money.map(|m| m.amount_minor))
        .fetch_one(tx)
        .await?;
        u32::try_from(number).map_err(|_| ServiceError::internal("a timeline entry number below 1"))
    }

    /// The entries of `subject` after entry `after`, oldest first, at most
    /// `limit`.
    ///
    /// # Errors
    /// Database errors; `Internal` for a row no append writes.
    pub async fn entries(
        self,
        conn: &mut PgConnection,
        subject: Uuid,
        after: u32,
        limit: i64,
    ) -> Result<Vec<TimelineEntry>, ServiceError> {
        let rows: Vec<TimelineRow> = sqlx::query_as(AssertSqlSafe(self.sql(
            "SELECT entry, occurred_at, actor_principal_id, actor_role, kind, description, \
             currency, amount_minor FROM {schema}.timeline WHERE {subject} = $1 AND entry > $2 \
             ORDER BY entry LIMIT $3",
        )))
        .bind(subject)
        .bind(i32::try_from(after).unwrap_or(i32::MAX))
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.into_iter().map(TimelineRow::into_entry).collect()
    }

    /// Whether `subject`'s timeline holds a step taken by an actor of
    /// `actor_role` whose kind is one of `kinds` (e.g. whether a claim's
    /// supplier answered it).
    ///
    /// # Errors
    /// Database errors.
    pub async fn has_step(
        self,
        conn: &mut PgConnection,
        subject: Uuid,
        actor_role: &str,
        kinds: &[&str],
    ) -> Result<bool, ServiceError> {
        let found: bool = sqlx::query_scalar(AssertSqlSafe(self.sql(
            "SELECT EXISTS (SELECT 1 FROM {schema}.timeline \
             WHERE {subject} = $1 AND actor_role = $2 AND kind = ANY($3))",
        )))
        .bind(subject)
        .bind(actor_role)
        .bind(kinds)
        .fetch_one(conn)
        .await?;
        Ok(found)
    }

    /// The page of `subject`'s timeline a `Get...Timeline` RPC answers: its
    /// entries in proto and the next page's token (empty on the last page).
    /// The caller checked that its principal may read it.
    ///
    /// # Errors
    /// As [`Timeline::entries`].
    pub async fn page(
        self,
        conn: &mut PgConnection,
        subject: Uuid,
        page: Page,
    ) -> Result<(Vec<PbTimelineEntry>, String), ServiceError> {
        let rows = self
            .entries(conn, subject, page.after, page.limit.saturating_add(1))
            .await?;
        let (rows, next) = paging::split_page(rows, page.limit, |e| {
            paging::token(PAGES, &[&e.entry.to_string()])
        });
        Ok((
            rows.into_iter().map(TimelineEntry::into_proto).collect(),
            next,
        ))
    }
}

/// A service's `storage::timeline` functions over its [`Timeline`]
/// (`<schema>.timeline` keyed by the column `subject`), written once:
/// `timeline_table()` (the table, e.g. for [`Timeline::has_step`]),
/// `append_timeline`, `list_timeline` and `page_timeline`. E.g.
/// `ta_workflow::timeline_storage!(super::schema(), "claim_id");`. The
/// calling crate depends on `sqlx`, `uuid`, `ta-proto` and `ta-runtime`.
#[macro_export]
macro_rules! timeline_storage {
    ($schema:expr, $subject:literal) => {
        /// The service's timeline table.
        pub fn timeline_table() -> $crate::timeline::Timeline {
            // A plain column name.
            $crate::timeline::Timeline::new($schema, $subject).unwrap_or_else(|_| unreachable!())
        }

        /// Appends to a locked aggregate's timeline; returns the entry's number.
        ///
        /// # Errors
        /// Database errors.
        pub async fn append_timeline(
            tx: &mut ::sqlx::PgConnection,
            subject: ::uuid::Uuid,
            entry: &$crate::timeline::TimelineEntry,
        ) -> Result<u32, ::ta_runtime::ServiceError> {
            timeline_table().append(tx, subject, entry).await
        }

        /// Entries after `after`, oldest first, at most `limit`.
        ///
        /// # Errors
        /// Database errors.
        pub async fn list_timeline(
            conn: &mut ::sqlx::PgConnection,
            subject: ::uuid::Uuid,
            after: u32,
            limit: i64,
        ) -> Result<Vec<$crate::timeline::TimelineEntry>, ::ta_runtime::ServiceError> {
            timeline_table().entries(conn, subject, after, limit).await
        }

        /// The page of the timeline its `Get...Timeline` RPC answers, and
        /// the next page's token.
        ///
        /// # Errors
        /// Database errors.
        pub async fn page_timeline(
            conn: &mut ::sqlx::PgConnection,
            subject: ::uuid::Uuid,
            page: $crate::timeline::Page,
        ) -> Result<(Vec<::ta_proto::common::TimelineEntry>, String), ::ta_runtime::ServiceError> {
            timeline_table().page(conn, subject, page).await
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new("contract").unwrap()
    }

    #[test]
    fn the_subject_is_a_plain_column() {
        assert!(Timeline::new(schema(), "contract_id").is_ok());
        for bad in ["", "Contract_id", "id; drop", "a-b", "1id"] {
            assert!(Timeline::new(schema(), bad).is_err(), "{bad}");
        }
        let timeline = Timeline::new(schema(), "claim_id").unwrap();
        assert_eq!(
            timeline.sql("SELECT 1 FROM {schema}.timeline WHERE {subject} = $1"),
            "SELECT 1 FROM contract.timeline WHERE claim_id = $1"
        );
    }

    #[test]
    fn a_page_continues_after_the_entry_its_token_names() {
        let mut v = Violations::new();
        assert_eq!(
            Page::parse(None, &mut v),
            Page {
                limit: 20,
                after: 0
            }
        );
        let next = PageRequest {
            page_size: 2,
            page_token: paging::token(PAGES, &["7"]),
        };
        assert_eq!(
            Page::parse(Some(&next), &mut v),
            Page { limit: 2, after: 7 }
        );
        assert!(v.is_empty());
        let foreign = PageRequest {
            page_size: 0,
            page_token: paging::token("contracts", &["7"]),
        };
        Page::parse(Some(&foreign), &mut v);
        assert!(!v.is_empty());
    }

    #[test]
    fn an_entry_reads_back_as_the_api_shows_it() {
        let usd = Currency::parse("USD").unwrap();
        let at = OffsetDateTime::UNIX_EPOCH;
        let entry = TimelineEntry::step(
            at,
            &Actor::service("escrow"),
            "payment.received",
            "paid".into(),
            Some(Money::new(500, usd)),
        );
        assert_eq!(entry.actor_role, "service");
        let shown = entry.into_proto();
        assert_eq!(shown.action, "payment.received");
        assert_eq!(shown.detail, "paid");
        assert_eq!(shown.money, Some(Money::new(500, usd).to_proto()));
        assert_eq!(shown.actor.map(|a| a.principal_id), Some("escrow".into()));
    }
}
