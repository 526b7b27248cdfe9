-- The workflow tables of one service, installed into its own schema by
-- ta_workflow::install. `{schema}` is replaced by the schema's name.

-- Intended calls to other services, written in the same transaction as the
-- state change that causes them.
CREATE TABLE {schema}.workflow_outbox (
    id               bigserial PRIMARY KEY,
    target           text NOT NULL,
    method           text NOT NULL,
    idempotency_key  text NOT NULL,
    request          bytea NOT NULL,
    -- Which completion the owning service runs on the answer.
    completion       text NOT NULL,
    traceparent      text,
    tracestate       text,
    -- pending: to be called; answered: the answer is stored, its completion
    -- still has to run; completed: done; parked: gave up until re-driven.
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'answered', 'completed', 'parked')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When the row may next be claimed; while a relay holds it, the end of its lease.
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claim_token      uuid,
    -- The answer: gRPC code (0 = OK), message, encoded response on OK.
    answer_code      integer,
    answer_message   text,
    response         bytea,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    parked_at        timestamptz,
    completed_at     timestamptz,
    -- One intent per key: writing the same call twice is a caller bug.
    UNIQUE (target, method, idempotency_key)
);
CREATE INDEX workflow_outbox_due ON {schema}.workflow_outbox (next_attempt_at)
    WHERE status IN ('pending', 'answered');
CREATE INDEX workflow_outbox_parked ON {schema}.workflow_outbox (id) WHERE status = 'parked';

-- Domain events, appended in the same transaction as the change. `sequence`
-- is given after commit, in commit order, by one numbering writer at a time
-- (see feed.rs): NULL until then.
CREATE TABLE {schema}.workflow_feed_events (
    id           bigserial PRIMARY KEY,
    feed         text NOT NULL,
    sequence     bigint,
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind         text NOT NULL,
    subject_id   text NOT NULL,
    payload      bytea NOT NULL,
    traceparent  text,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (feed, sequence)
);
CREATE INDEX workflow_feed_events_unnumbered ON {schema}.workflow_feed_events (feed, xid, id)
    WHERE sequence IS NULL;

-- Where this service is in each feed it consumes.
CREATE TABLE {schema}.workflow_feed_cursors (
    feed           text PRIMARY KEY,
    last_sequence  bigint NOT NULL CHECK (last_sequence >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Due actions. At most one scheduled timer per (kind, subject).
CREATE TABLE {schema}.workflow_timers (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    subject_id   text NOT NULL,
    due_at       timestamptz NOT NULL,
    -- due_at, pushed later after a failed handler.
    fire_after   timestamptz NOT NULL,
    payload      bytea NOT NULL,
    traceparent  text,
    tracestate   text,
    status       text NOT NULL DEFAULT 'scheduled'
                 CHECK (status IN ('scheduled', 'fired', 'cancelled')),
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    fired_at     timestamptz
);
CREATE UNIQUE INDEX workflow_timers_live ON {schema}.workflow_timers (kind, subject_id)
    WHERE status = 'scheduled';
CREATE INDEX workflow_timers_due ON {schema}.workflow_timers (fire_after)
    WHERE status = 'scheduled';
