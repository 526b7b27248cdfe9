-- The sandbox gateway's state: what it did per idempotency key, the webhooks
-- it owes (an outbox) with every delivery attempt, and the injected faults.

-- One row per operation, keyed by the client's idempotency key: a charge,
-- a bank transfer awaiting its credit, a Pay Later application, a payout or
-- a refund. `request` is the body as understood (a replay must match it);
-- `response` the first answer, replayed to the same key.
CREATE TABLE gateway_sandbox.operations (
    id               text PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    kind             text NOT NULL
        CHECK (kind IN ('charge', 'bank_transfer', 'pay_later', 'payout', 'refund')),
    request          jsonb NOT NULL,
    response         jsonb NOT NULL,
    client_reference text NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    currency         text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status           text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- What arrived for a bank transfer or Pay Later, once it did.
    settled_minor    bigint CHECK (settled_minor > 0),
    failure_code     text,
    failure_message  text,
    -- A refund's charge, bank transfer or Pay Later operation.
    source_id        text REFERENCES gateway_sandbox.operations (id),
    -- The payer, the financing partner or the payout's beneficiary.
    counterparty     text,
    -- When the settlement worker settles it (NULL: only the control API does).
    settle_at        timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    settled_at       timestamptz,
    CHECK ((source_id IS NOT NULL) = (kind = 'refund'))
);

CREATE INDEX operations_due ON gateway_sandbox.operations (settle_at)
    WHERE status = 'pending' AND settle_at IS NOT NULL;
CREATE INDEX operations_by_source ON gateway_sandbox.operations (source_id)
    WHERE source_id IS NOT NULL;

-- The webhook outbox. `payload` is the exact JSON text delivered (signed anew
-- at every attempt). `next_attempt_at` NULL: nothing due (delivered, lost by
-- a fault until re-driven).
CREATE TABLE gateway_sandbox.events (
    id              text PRIMARY KEY,
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    operation_id    text NOT NULL REFERENCES gateway_sandbox.operations (id),
    type            text NOT NULL,
    payload         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    delivered_at    timestamptz,
    lost            boolean NOT NULL DEFAULT false,
    duplicate       boolean NOT NULL DEFAULT false
);

CREATE INDEX events_due ON gateway_sandbox.events (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX events_by_operation ON gateway_sandbox.events (operation_id);

CREATE TABLE gateway_sandbox.delivery_attempts (
    event_id     text NOT NULL REFERENCES gateway_sandbox.events (id),
    attempt      integer NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    signature    text NOT NULL,
    -- The receiver's answer, or why there was none.
    status_code  integer,
    error        text,
    PRIMARY KEY (event_id, attempt)
);

-- The faults set through PUT /sandbox/faults (absent: the process's defaults),
-- with the counters every process shares.
CREATE TABLE gateway_sandbox.faults (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    settings           jsonb NOT NULL,
    fail_nth_kind      text,
    fail_nth_remaining integer NOT NULL DEFAULT 0 CHECK (fail_nth_remaining >= 0),
    lose_next          integer NOT NULL DEFAULT 0 CHECK (lose_next >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
