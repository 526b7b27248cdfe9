-- What the served API records beside the ledger and the accounts: the terms
-- an account was opened with, the gateway's side of funding attempts, money
-- sent out through the gateway, and every gateway event seen.

-- One row per escrow account, written when it opens.
CREATE TABLE escrow.account_terms (
    escrow_account_id            uuid PRIMARY KEY REFERENCES escrow.escrow_accounts (id),
    payment_scheme               text NOT NULL CHECK (payment_scheme IN ('direct', 'pay_later')),
    financing_partner_id         text NOT NULL DEFAULT '',
    supplier_owner_principal_id  text NOT NULL,
    -- The contract version whose schedule the account holds (amendments raise it).
    contract_version             integer NOT NULL DEFAULT 1,
    CHECK ((payment_scheme = 'pay_later') = (financing_partner_id <> ''))
);

CREATE INDEX account_terms_owner_idx ON escrow.account_terms (supplier_owner_principal_id);

-- The gateway's answer to a funding attempt.
CREATE TABLE escrow.attempt_gateway (
    funding_attempt_id  uuid PRIMARY KEY REFERENCES escrow.funding_attempts (id),
    gateway_reference   text NOT NULL UNIQUE,
    failure_message     text NOT NULL DEFAULT '',
    beneficiary_name    text,
    iban                text,
    bic                 text,
    payment_reference   text,
    loan_reference      text
);

-- Payouts to suppliers and refunds to buyers sent through the gateway; each
-- holds its amount (holds.id = id) until the gateway reports back.
CREATE TABLE escrow.gateway_transfers (
    id                 uuid PRIMARY KEY REFERENCES escrow.holds (id),
    direction          text NOT NULL CHECK (direction IN ('payout', 'buyer_refund')),
    status             text NOT NULL CHECK (status IN ('pending', 'paid', 'failed')),
    supplier_id        text,
    escrow_account_id  uuid REFERENCES escrow.escrow_accounts (id),
    currency           text NOT NULL,
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    gateway_reference  text NOT NULL UNIQUE,
    failure_code       text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL,
    resolved_at        timestamptz,
    CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CHECK ((direction = 'payout') = (supplier_id IS NOT NULL))
);

CREATE INDEX gateway_transfers_created_idx ON escrow.gateway_transfers (created_at DESC, id DESC);

-- Every authenticated gateway event, once: the same event id again is a
-- duplicate whatever idempotency key it comes with.
CREATE TABLE escrow.gateway_events (
    event_id            text PRIMARY KEY,
    kind                text NOT NULL,
    gateway_reference   text NOT NULL,
    outcome             text NOT NULL CHECK (outcome IN ('applied', 'duplicate', 'ignored')),
    -- Set for items that matched nothing expected.
    unmatched           text CHECK (unmatched IN ('LATE_CREDIT', 'UNKNOWN_REFERENCE')),
    currency            text,
    amount_minor        bigint,
    funding_attempt_id  uuid REFERENCES escrow.funding_attempts (id),
    -- The gateway's id of the refund of a credit parked in suspense.
    refund_reference    text,
    received_at         timestamptz NOT NULL
);

CREATE INDEX gateway_events_unmatched_idx ON escrow.gateway_events (received_at, event_id)
    WHERE unmatched IS NOT NULL;

-- Why a transfer moved money and who asked, for the statement.
CREATE TABLE escrow.transfer_notes (
    transfer_id         uuid PRIMARY KEY REFERENCES escrow.transfers (id),
    reason              text NOT NULL,
    actor_principal_id  text NOT NULL,
    actor_role          text NOT NULL
);
