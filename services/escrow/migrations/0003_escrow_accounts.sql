-- Escrow accounts (one per contract), their payment schedule, freezes and
-- funding attempts. The money itself lives in the ledger.

CREATE TABLE escrow.escrow_accounts (
    id                  uuid PRIMARY KEY,
    contract_id         text NOT NULL UNIQUE,
    buyer_principal_id  text NOT NULL,
    supplier_id         text NOT NULL,
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status              text NOT NULL
        CHECK (status IN ('awaiting_funding', 'partially_funded', 'funded', 'closed')),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    closed_at           timestamptz,
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

CREATE TABLE escrow.scheduled_payments (
    escrow_account_id  uuid NOT NULL REFERENCES escrow.escrow_accounts (id),
    milestone_id       text NOT NULL,
    position           integer NOT NULL,
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    funded_minor       bigint NOT NULL DEFAULT 0
        CHECK (funded_minor >= 0 AND funded_minor <= amount_minor),
    due_at             timestamptz NOT NULL,
    PRIMARY KEY (escrow_account_id, milestone_id),
    UNIQUE (escrow_account_id, position)
);

CREATE TABLE escrow.freezes (
    escrow_account_id  uuid NOT NULL REFERENCES escrow.escrow_accounts (id),
    claim_id           text NOT NULL,
    reason             text NOT NULL,
    frozen_at          timestamptz NOT NULL,
    lifted_at          timestamptz,
    PRIMARY KEY (escrow_account_id, claim_id)
);

CREATE TABLE escrow.funding_attempts (
    id                    uuid PRIMARY KEY,
    escrow_account_id     uuid NOT NULL REFERENCES escrow.escrow_accounts (id),
    milestone_id          text NOT NULL,
    method                text NOT NULL CHECK (method IN ('card', 'bank_transfer', 'pay_later')),
    amount_minor          bigint NOT NULL CHECK (amount_minor > 0),
    status                text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- What the ledger received for it; may be below amount_minor.
    received_minor        bigint CHECK (received_minor > 0),
    financing_partner_id  text,
    hold_id               uuid REFERENCES escrow.holds (id),
    failure_code          text NOT NULL DEFAULT '',
    -- The gateway's id of the credit that settled it: the same credit again
    -- is a duplicate, another one is money to park in suspense.
    credit_reference      text,
    created_at            timestamptz NOT NULL,
    expires_at            timestamptz NOT NULL,
    resolved_at           timestamptz,
    FOREIGN KEY (escrow_account_id, milestone_id)
        REFERENCES escrow.scheduled_payments (escrow_account_id, milestone_id),
    CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CHECK ((method = 'pay_later') = (financing_partner_id IS NOT NULL))
);

-- One pending attempt per scheduled payment.
CREATE UNIQUE INDEX funding_attempts_one_pending_idx
    ON escrow.funding_attempts (escrow_account_id, milestone_id) WHERE status = 'pending';
CREATE INDEX funding_attempts_hold_idx ON escrow.funding_attempts (hold_id);
