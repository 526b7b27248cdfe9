-- The two test services of the workflow tests: `probe`, a leaf that applies
-- keyed effects and publishes a feed, and `caller`, which calls it through
-- its outbox, consumes its feed and keeps timers. No unique constraints on
-- what is counted: a duplicate would show up as a second row.

CREATE SCHEMA probe;
CREATE TABLE probe.idempotency_keys (
    principal_id text NOT NULL,
    method       text NOT NULL,
    key          text NOT NULL,
    request      bytea NOT NULL,
    response     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, method, key)
);
CREATE TABLE probe.applied_effects (
    id               bigserial PRIMARY KEY,
    effect_id        text NOT NULL,
    idempotency_key  text NOT NULL,
    traceparent      text,
    applied_at       timestamptz NOT NULL DEFAULT now()
);

CREATE SCHEMA caller;
CREATE TABLE caller.idempotency_keys (
    principal_id text NOT NULL,
    method       text NOT NULL,
    key          text NOT NULL,
    request      bytea NOT NULL,
    response     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, method, key)
);
CREATE TABLE caller.orders (
    order_id  text PRIMARY KEY,
    status    text NOT NULL
);
CREATE TABLE caller.completions (
    outbox_id    bigint NOT NULL,
    effect_id    text NOT NULL,
    outcome      text NOT NULL,
    application  bigint,
    code         integer NOT NULL
);
CREATE TABLE caller.fired (
    timer_id    bigint NOT NULL,
    kind        text NOT NULL,
    subject_id  text NOT NULL,
    trace_id    text NOT NULL
);
CREATE TABLE caller.consumed (
    sequence    bigint NOT NULL,
    subject_id  text NOT NULL,
    trace_id    text NOT NULL
);
