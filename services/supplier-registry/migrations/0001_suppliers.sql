-- Suppliers and everything the registry knows about them. Every table lives in
-- the service's own schema.

CREATE TABLE supplier_registry.suppliers (
    id                            uuid PRIMARY KEY,
    owner_principal_id            text NOT NULL,
    legal_name                    text NOT NULL,
    country_code                  text NOT NULL,
    business_licence_number       text NOT NULL,
    contacts                      jsonb NOT NULL,
    verification                  text NOT NULL
        CHECK (verification IN ('unverified', 'submitted', 'verified', 'rejected')),
    verification_rejection_reason text NOT NULL DEFAULT '',
    status                        text NOT NULL
        CHECK (status IN ('active', 'restricted', 'suspended')),
    status_reason                 text NOT NULL DEFAULT '',
    enrolled                      boolean NOT NULL DEFAULT false,
    ta_limit_currency             text,
    ta_limit_minor                bigint NOT NULL DEFAULT 0 CHECK (ta_limit_minor >= 0),
    -- Sum of active cover reservations; kept on the row so a reservation
    -- checks and updates it under the supplier's row lock.
    cover_reserved_minor          bigint NOT NULL DEFAULT 0 CHECK (cover_reserved_minor >= 0),
    rating_sum                    bigint NOT NULL DEFAULT 0,
    review_count                  bigint NOT NULL DEFAULT 0,
    inquiry_count                 bigint NOT NULL DEFAULT 0,
    replied_inquiry_count         bigint NOT NULL DEFAULT 0,
    penalty_points                integer NOT NULL DEFAULT 0,
    created_at                    timestamptz NOT NULL,
    updated_at                    timestamptz NOT NULL,
    CHECK (enrolled = (ta_limit_currency IS NOT NULL)),
    -- One registration per business licence and country.
    UNIQUE (country_code, business_licence_number)
);

CREATE INDEX suppliers_country_idx ON supplier_registry.suppliers (country_code, id);

CREATE TABLE supplier_registry.cover_reservations (
    contract_id   text PRIMARY KEY,
    supplier_id   uuid NOT NULL REFERENCES supplier_registry.suppliers (id),
    currency      text NOT NULL,
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    status        text NOT NULL CHECK (status IN ('active', 'released')),
    reserved_at   timestamptz NOT NULL,
    released_at   timestamptz,
    CHECK ((status = 'released') = (released_at IS NOT NULL))
);

CREATE INDEX cover_reservations_active_idx
    ON supplier_registry.cover_reservations (supplier_id) WHERE status = 'active';

CREATE TABLE supplier_registry.completed_contracts (
    contract_id         text PRIMARY KEY,
    supplier_id         uuid NOT NULL REFERENCES supplier_registry.suppliers (id),
    buyer_principal_id  text NOT NULL,
    completed_at        timestamptz NOT NULL
);

CREATE TABLE supplier_registry.reviews (
    contract_id         text PRIMARY KEY REFERENCES supplier_registry.completed_contracts (contract_id),
    supplier_id         uuid NOT NULL REFERENCES supplier_registry.suppliers (id),
    buyer_principal_id  text NOT NULL,
    rating              smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment             text NOT NULL,
    created_at          timestamptz NOT NULL
);

CREATE INDEX reviews_supplier_idx ON supplier_registry.reviews (supplier_id, created_at DESC, contract_id);

CREATE TABLE supplier_registry.inquiries (
    supplier_id  uuid NOT NULL REFERENCES supplier_registry.suppliers (id),
    inquiry_id   text NOT NULL,
    received_at  timestamptz NOT NULL,
    replied_at   timestamptz,
    PRIMARY KEY (supplier_id, inquiry_id)
);

CREATE TABLE supplier_registry.penalties (
    dispute_id   text PRIMARY KEY,
    supplier_id  uuid NOT NULL REFERENCES supplier_registry.suppliers (id),
    points       integer NOT NULL CHECK (points > 0),
    reason       text NOT NULL,
    recorded_at  timestamptz NOT NULL
);

-- See ta_runtime::idempotency.
CREATE TABLE supplier_registry.idempotency_keys (
    principal_id  text NOT NULL,
    method        text NOT NULL,
    key           text NOT NULL,
    request       bytea NOT NULL,
    response      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, method, key)
);
