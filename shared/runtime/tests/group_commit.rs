//! Group commit gives the same results as applying the same commands one by
//! one: for random sequences of transfers on a small ledger (fresh, replayed
//! under their key, sent again under a used key with another request,
//! refused by the rules, failing in SQL after a write, naming an unknown
//! account), every answer, the balances, the journal and the recorded keys
//! are the same whether the commands run one transaction each or gathered
//! into shared transactions. Batches open one at a time here
//! (`batches_in_flight: 1`), so the arrival order is the order applied.
//! With two batches in flight the order may differ, so that run checks
//! what must hold in any order: money conserved, each acknowledged transfer
//! journaled exactly once, a replay answering what its first run answered.
//!
//! The commands are a toy transfer carried in `ReleaseToSupplierRequest`'s
//! fields (escrow account = from, reason = to), because the pipeline takes
//! any keyed request; the answer is the sender's balance after it.

use std::{collections::BTreeMap, sync::Arc};

use sqlx::{PgConnection, PgPool};
use ta_proto::{common::Money, escrow::ReleaseToSupplierRequest};
use ta_runtime::{
    ServiceError, Violations,
    auth::{Caller, Principal, Role},
    group_commit::GroupCommitConfig,
    idempotency::IdempotencyKeys,
    pipeline::{Mutations, Prepared},
};

const METHOD: &str = "/tradeassurance.escrow.v1.EscrowService/ReleaseToSupplier";
const ACCOUNTS: [&str; 4] = ["a", "b", "c", "d"];
/// A transfer of this amount fails in SQL after its first write.
const FAILING_AMOUNT: i64 = 13;

#[derive(Clone, Debug)]
struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

#[derive(Clone, Debug)]
struct Command {
    principal: &'static str,
    key: String,
    transfer: Transfer,
}

type Outcome = Result<i64, (tonic::Code, String)>;

/// xorshift64*: the cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn commands(rng: &mut Rng, count: usize) -> Vec<Command> {
    let mut made: Vec<Command> = Vec::new();
    for n in 0..count {
        let principal = if rng.below(2) == 0 {
            "buyer-1"
        } else {
            "buyer-2"
        };
        let fresh = |rng: &mut Rng| Transfer {
            from: rng.pick(&ACCOUNTS).to_owned(),
            to: rng.pick(&ACCOUNTS).to_owned(),
            amount: 1 + rng.below(60) as i64,
        };
        let command = match rng.below(10) {
            // A retry: the same key and request.
            0 | 1 if !made.is_empty() => made[rng.below(made.len() as u64) as usize].clone(),
            // The same key with another request.
            2 if !made.is_empty() => {
                let earlier = &made[rng.below(made.len() as u64) as usize];
                Command {
                    transfer: Transfer {
                        amount: earlier.transfer.amount + 1,
                        ..earlier.transfer.clone()
                    },
                    ..earlier.clone()
                }
            }
            3 => Command {
                principal,
                key: format!("k{n}"),
                transfer: Transfer {
                    from: "nobody".into(),
                    ..fresh(rng)
                },
            },
            4 => Command {
                principal,
                key: format!("k{n}"),
                transfer: Transfer {
                    amount: FAILING_AMOUNT,
                    ..fresh(rng)
                },
            },
            _ => Command {
                principal,
                key: format!("k{n}"),
                transfer: fresh(rng),
            },
        };
        made.push(command);
    }
    made
}

async fn ledger(pool: &PgPool, schema: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.balances (account text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
         CREATE TABLE {schema}.journal (seq bigserial PRIMARY KEY, sender text NOT NULL, receiver text NOT NULL, amount bigint NOT NULL);
         INSERT INTO {schema}.balances VALUES ('a', 100), ('b', 100), ('c', 100), ('d', 100);"
    )))
    .execute(pool)
    .await
    .unwrap();
    IdempotencyKeys::new(Box::leak(schema.to_owned().into_boxed_str()))
        .install(pool)
        .await
        .unwrap();
}

/// The use case: both rows locked in one order, the rule decided here, then
/// the writes.
async fn transfer(
    conn: &mut PgConnection,
    schema: &str,
    t: &Transfer,
) -> Result<Money, ServiceError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT account, balance FROM {schema}.balances WHERE account = ANY($1) ORDER BY account FOR UPDATE"
    )))
    .bind(vec![t.from.clone(), t.to.clone()])
    .fetch_all(&mut *conn)
    .await?;
    let balances: BTreeMap<String, i64> = rows.into_iter().collect();
    let Some(&from_balance) = balances.get(&t.from) else {
        return Err(ServiceError::NotFound {
            resource: "account",
            id: t.from.clone(),
        });
    };
    if from_balance < t.amount {
        return Err(ServiceError::FailedPrecondition(format!(
            "{} holds {from_balance}, less than {}",
            t.from, t.amount
        )));
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.balances SET balance = balance - $2 WHERE account = $1"
    )))
    .bind(&t.from)
    .bind(t.amount)
    .execute(&mut *conn)
    .await?;
    if t.amount == FAILING_AMOUNT {
        sqlx::query("SELECT 1 / 0").execute(&mut *conn).await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.balances SET balance = balance + $2 WHERE account = $1;"
    )))
    .bind(&t.to)
    .bind(t.amount)
    .execute(&mut *conn)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.journal (sender, receiver, amount) VALUES ($1, $2, $3)"
    )))
    .bind(&t.from)
    .bind(&t.to)
    .bind(t.amount)
    .execute(&mut *conn)
    .await?;
    Ok(Money {
        currency_code: "USD".into(),
        amount_minor: from_balance - t.amount,
    })
}

fn prepared(
    mutations: &Mutations,
    command: &Command,
) -> Prepared<ReleaseToSupplierRequest, Transfer> {
    let mut request = tonic::Request::new(ReleaseToSupplierRequest {
        idempotency_key: command.key.clone(),
        escrow_account_id: command.transfer.from.clone(),
        reason: command.transfer.to.clone(),
        amount: Some(Money {
            currency_code: "USD".into(),
            amount_minor: command.transfer.amount,
        }),
        ..Default::default()
    });
    request.extensions_mut().insert(Caller {
        principal: Principal {
            subject: command.principal.into(),
            role: Role::Buyer,
        },
        method: METHOD.into(),
    });
    mutations
        .prepare(request, |req, _, _: &mut Violations| {
            Ok(Transfer {
                from: req.escrow_account_id.clone(),
                to: req.reason.clone(),
                amount: req.amount.as_ref().map_or(0, |m| m.amount_minor),
            })
        })
        .expect("every command is well formed")
}

async fn apply(mutations: &Mutations, schema: &'static str, command: &Command) -> Outcome {
    let prepared = prepared(mutations, command);
    let t = &prepared.command;
    mutations
        .execute(&prepared, || async |tx| transfer(tx, schema, t).await)
        .await
        .map(|answer| answer.into_inner().amount_minor)
        .map_err(|status| (status.code(), status.message().to_owned()))
}

/// Every command at once, spawned in order.
async fn apply_together(
    mutations: &Arc<Mutations>,
    schema: &'static str,
    commands: &[Command],
) -> Vec<Outcome> {
    let tasks: Vec<_> = commands
        .iter()
        .cloned()
        .map(|command| {
            let mutations = mutations.clone();
            tokio::spawn(async move { apply(&mutations, schema, &command).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("no command panics"));
    }
    outcomes
}

#[derive(Debug, PartialEq, Eq)]
struct State {
    balances: Vec<(String, i64)>,
    journal: Vec<(String, String, i64)>,
    keys: Vec<(String, String)>,
}

async fn state(pool: &PgPool, schema: &str, ordered_journal: bool) -> State {
    let order = if ordered_journal {
        "seq"
    } else {
        "sender, receiver, amount"
    };
    State {
        balances: sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT account, balance FROM {schema}.balances ORDER BY account"
        )))
        .fetch_all(pool)
        .await
        .unwrap(),
        journal: sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT sender, receiver, amount FROM {schema}.journal ORDER BY {order}"
        )))
        .fetch_all(pool)
        .await
        .unwrap(),
        keys: sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT principal_id, key FROM {schema}.idempotency_keys ORDER BY 1, 2"
        )))
        .fetch_all(pool)
        .await
        .unwrap(),
    }
}

#[sqlx::test(migrations = false)]
async fn batches_answer_and_change_what_one_by_one_does(pool: PgPool) {
    let mut rng = Rng(0x5EED_2026_1208);
    let (mut grouped_items, mut grouped_batches) = (0, 0);
    for case in 0..24 {
        let one_by_one: &'static str = Box::leak(format!("serial_{case}").into_boxed_str());
        let together: &'static str = Box::leak(format!("grouped_{case}").into_boxed_str());
        ledger(&pool, one_by_one).await;
        ledger(&pool, together).await;
        let count = 12 + rng.below(30) as usize;
        let commands = commands(&mut rng, count);
        let max_items = 2 + rng.below(12) as u16;

        let serial = Mutations::new(pool.clone(), one_by_one);
        let mut expected = Vec::new();
        for command in &commands {
            expected.push(apply(&serial, one_by_one, command).await);
        }

        let grouped = Arc::new(
            Mutations::new(pool.clone(), together).grouped(GroupCommitConfig {
                max_items,
                batches_in_flight: 1,
            }),
        );
        let outcomes = apply_together(&grouped, together, &commands).await;
        for (n, (got, want)) in outcomes.iter().zip(&expected).enumerate() {
            assert_eq!(
                got, want,
                "case {case} (max {max_items}), command {n}: {:?}",
                commands[n]
            );
        }
        assert_eq!(
            state(&pool, together, true).await,
            state(&pool, one_by_one, true).await,
            "case {case}: the ledger after the batches"
        );
        let stats = grouped.group_stats().expect("grouped");
        assert_eq!(stats.items, commands.len() as u64, "case {case}");
        assert_eq!(stats.rerun_batches, 0, "case {case}");
        grouped_items += stats.items;
        grouped_batches += stats.batches;
    }
    assert!(
        grouped_batches * 2 < grouped_items,
        "the commands really shared transactions: {grouped_items} in {grouped_batches} batches"
    );
}

#[sqlx::test(migrations = false)]
async fn parallel_batches_keep_every_acknowledged_transfer_exactly_once(pool: PgPool) {
    // Two batches over four accounts deadlock often (each holds the rows of
    // all its items until it commits); Postgres breaks each deadlock after
    // `deadlock_timeout`, and the victim item reruns. A short timeout keeps
    // the test quick.
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("deadlock_timeout", "20ms")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    let mut rng = Rng(0x0B47_C4E5);
    for case in 0..4 {
        let schema: &'static str = Box::leak(format!("parallel_{case}").into_boxed_str());
        ledger(&pool, schema).await;
        let commands = commands(&mut rng, 60);
        let grouped = Arc::new(
            Mutations::new(pool.clone(), schema).grouped(GroupCommitConfig {
                max_items: 8,
                batches_in_flight: 3,
            }),
        );
        let outcomes = apply_together(&grouped, schema, &commands).await;
        let after = state(&pool, schema, false).await;
        assert_eq!(
            after.balances.iter().map(|(_, b)| b).sum::<i64>(),
            400,
            "case {case}: money is conserved"
        );
        // Under each key, every acknowledged command is the same transfer
        // with the same answer: the one run that was journaled.
        let mut acknowledged: BTreeMap<(&str, &str), (&Transfer, i64)> = BTreeMap::new();
        for (command, outcome) in commands.iter().zip(&outcomes) {
            if let Ok(answer) = outcome {
                let scope = (command.principal, command.key.as_str());
                let (transfer, first_answer) = *acknowledged
                    .entry(scope)
                    .or_insert((&command.transfer, *answer));
                assert_eq!(
                    (transfer.amount, first_answer),
                    (command.transfer.amount, *answer),
                    "case {case}: two acknowledged answers under one key"
                );
            }
        }
        let mut journaled: Vec<(String, String, i64)> = acknowledged
            .values()
            .map(|(t, _)| (t.from.clone(), t.to.clone(), t.amount))
            .collect();
        journaled.sort();
        assert_eq!(
            after.journal, journaled,
            "case {case}: each acknowledged transfer once"
        );
        assert_eq!(
            after.keys.len(),
            acknowledged.len(),
            "case {case}: one key per acknowledged run"
        );
    }
}
