-- See ta_runtime::idempotency.
CREATE TABLE escrow.idempotency_keys (
    principal_id  text NOT NULL,
    method        text NOT NULL,
    key           text NOT NULL,
    request       bytea NOT NULL,
    response      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, method, key)
);
