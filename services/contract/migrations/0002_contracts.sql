-- Contracts, their immutable versions, signatures and the readable timeline.
-- Terms are stored as the encoded protobuf ContractTerms of their version
-- (with the server-computed totals); what is queried or constrained is also a
-- column.

CREATE TABLE contract.contracts (
    contract_id               uuid PRIMARY KEY,
    buyer_principal_id        text NOT NULL,
    supplier_id               uuid NOT NULL,
    -- The supplier's owner, from supplier-registry at creation.
    supplier_principal_id     text NOT NULL,
    protection                text NOT NULL CHECK (protection IN ('trade_assurance', 'none')),
    status                    text NOT NULL CHECK (status IN (
        'draft', 'awaiting_signatures', 'activating', 'awaiting_payment', 'partially_funded',
        'funded', 'signed_unprotected', 'shipped', 'delivered', 'completed', 'in_dispute',
        'cancelled', 'refunded')),
    status_before_dispute     text,
    latest_version            integer NOT NULL CHECK (latest_version >= 1),
    signed_version            integer NOT NULL DEFAULT 0 CHECK (signed_version >= 0),
    pending_amendment         integer NOT NULL DEFAULT 0 CHECK (pending_amendment >= 0),
    currency                  char(3) NOT NULL,
    total_minor               bigint NOT NULL CHECK (total_minor > 0),
    escrow_account_id         text,
    open_claim_id             text,
    activation_refusal        text NOT NULL DEFAULT '',
    cancellation_reason       text NOT NULL DEFAULT '',
    created_at                timestamptz NOT NULL,
    updated_at                timestamptz NOT NULL,
    CHECK (signed_version <= latest_version),
    CHECK (pending_amendment = 0 OR pending_amendment > signed_version)
);

-- Listing by party, newest first, with a stable tie-break for page tokens.
CREATE INDEX contracts_buyer_idx ON contract.contracts (buyer_principal_id, created_at DESC, contract_id);
CREATE INDEX contracts_supplier_idx ON contract.contracts (supplier_id, created_at DESC, contract_id);

CREATE TABLE contract.versions (
    contract_id              uuid NOT NULL REFERENCES contract.contracts (contract_id),
    version                  integer NOT NULL CHECK (version >= 1),
    terms                    bytea NOT NULL,
    currency                 char(3) NOT NULL,
    total_minor              bigint NOT NULL CHECK (total_minor > 0),
    created_by_principal_id  text NOT NULL,
    created_by_role          text NOT NULL,
    change_note              text NOT NULL DEFAULT '',
    created_at               timestamptz NOT NULL,
    PRIMARY KEY (contract_id, version)
);

CREATE TABLE contract.signatures (
    contract_id   uuid NOT NULL REFERENCES contract.contracts (contract_id),
    version       integer NOT NULL,
    party         text NOT NULL CHECK (party IN ('buyer', 'supplier')),
    principal_id  text NOT NULL,
    signed_at     timestamptz NOT NULL,
    PRIMARY KEY (contract_id, version, party),
    FOREIGN KEY (contract_id, version) REFERENCES contract.versions (contract_id, version)
);

CREATE TABLE contract.timeline (
    contract_id          uuid NOT NULL REFERENCES contract.contracts (contract_id),
    entry                integer NOT NULL CHECK (entry >= 1),
    occurred_at          timestamptz NOT NULL,
    actor_principal_id   text NOT NULL,
    actor_role           text NOT NULL,
    kind                 text NOT NULL,
    description          text NOT NULL,
    -- The money the event moved, if any.
    currency             char(3),
    amount_minor         bigint,
    PRIMARY KEY (contract_id, entry),
    CHECK ((currency IS NULL) = (amount_minor IS NULL))
);
