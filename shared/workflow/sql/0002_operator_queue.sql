-- What needs an operator besides calls that kept failing: a refusal the
-- owning service escalated, and feed events a consumer could not apply.

-- A parked row the completion handler escalated: the receiver refused a
-- call that moves money (say), which no retry changes. Its answer is kept;
-- re-driving calls again (receivers store successes only, so the call runs
-- anew) and hands the new answer to the handler.
ALTER TABLE {schema}.workflow_outbox
    ADD COLUMN escalated boolean NOT NULL DEFAULT false;

-- Events of a consumed feed that were not applied: `failing` while the
-- consumer still retries it (the feed waits), `parked` once it gave up (the
-- cursor moved past it) or the handler asked for an operator, `redriven` when
-- an operator put it back (the consumer applies it again from `payload`),
-- `applied` once that worked. A `gap` names sequences the producer's feed
-- never delivered: there is no event to apply, only the fact to look into.
CREATE TABLE {schema}.workflow_feed_parked (
    id               bigserial PRIMARY KEY,
    feed             text NOT NULL,
    sequence         bigint NOT NULL CHECK (sequence > 0),
    kind             text NOT NULL DEFAULT 'event' CHECK (kind IN ('event', 'gap')),
    -- The feed's response as received (encoded); empty for a gap.
    payload          bytea NOT NULL,
    traceparent      text,
    status           text NOT NULL
                     CHECK (status IN ('failing', 'parked', 'redriven', 'applied')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    -- For a gap: the last sequence missing (`sequence` is the first).
    last_sequence    bigint,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    parked_at        timestamptz,
    applied_at       timestamptz,
    UNIQUE (feed, sequence)
);
CREATE INDEX workflow_feed_parked_open ON {schema}.workflow_feed_parked (feed, next_attempt_at)
    WHERE status IN ('parked', 'redriven');
