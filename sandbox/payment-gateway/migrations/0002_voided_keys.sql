-- Keys a client gave up on: `POST /v1/operations/{key}/void` records one
-- when no operation has the key, and a later call under it is refused, so a
-- call still on its way (held in a paused process, a retry in flight) can
-- never act after the client concluded that nothing happened.
CREATE TABLE gateway_sandbox.voided_keys (
    idempotency_key text PRIMARY KEY,
    voided_at       timestamptz NOT NULL DEFAULT now()
);
