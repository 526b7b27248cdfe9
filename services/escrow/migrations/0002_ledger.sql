-- The double-entry ledger. See storage/ledger.rs for how balances are kept.

-- Ledger accounts are resources: (kind, owner, currency) names one.
CREATE TABLE escrow.ledger_accounts (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('escrow_held', 'buyer_refund_payable',
                      'supplier_payable', 'gateway_clearing', 'suspense', 'fees',
                      'financing_partner')),
    owner         text NOT NULL,
    currency      text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    non_negative  boolean NOT NULL,
    -- Eager accounts keep their whole balance here, changed with every
    -- posting. Shared (hot) accounts keep the balance as of their last
    -- roll-up here; the postings since then wait in balance_deltas.
    eager         boolean NOT NULL,
    balance_minor bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, owner, currency),
    CHECK (NOT non_negative OR balance_minor >= 0)
);

-- A transfer is one movement (one or more legs committed together) or one
-- hold. Every movement names its purpose, and a purpose moves money once.
CREATE TABLE escrow.transfers (
    id                 uuid PRIMARY KEY,
    purpose_scope      text NOT NULL,
    purpose            text NOT NULL,
    escrow_account_id  uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (purpose_scope, purpose)
);

CREATE TABLE escrow.holds (
    id                 uuid PRIMARY KEY REFERENCES escrow.transfers (id),
    debit_account_id   uuid NOT NULL REFERENCES escrow.ledger_accounts (id),
    credit_account_id  uuid NOT NULL REFERENCES escrow.ledger_accounts (id),
    currency           text NOT NULL,
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    status             text NOT NULL CHECK (status IN ('pending', 'posted', 'voided')),
    posted_minor       bigint CHECK (posted_minor > 0 AND posted_minor <= amount_minor),
    escrow_account_id  uuid,
    expires_at         timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    resolved_at        timestamptz,
    CHECK (debit_account_id <> credit_account_id),
    CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CHECK ((status = 'posted') = (posted_minor IS NOT NULL))
);

CREATE INDEX holds_pending_debit_idx ON escrow.holds (debit_account_id) WHERE status = 'pending';
CREATE INDEX holds_pending_credit_idx ON escrow.holds (credit_account_id) WHERE status = 'pending';
CREATE INDEX holds_pending_expiry_idx ON escrow.holds (expires_at) WHERE status = 'pending';

-- Immutable: never updated or deleted (the trigger below); a mistake is
-- corrected by a new transfer.
CREATE TABLE escrow.postings (
    seq                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 uuid NOT NULL UNIQUE,
    transfer_id        uuid NOT NULL REFERENCES escrow.transfers (id),
    debit_account_id   uuid NOT NULL REFERENCES escrow.ledger_accounts (id),
    credit_account_id  uuid NOT NULL REFERENCES escrow.ledger_accounts (id),
    currency           text NOT NULL,
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    -- A hold posts at most once.
    hold_id            uuid UNIQUE REFERENCES escrow.holds (id),
    escrow_account_id  uuid,
    posted_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account_id <> credit_account_id)
);

CREATE INDEX postings_debit_idx ON escrow.postings (debit_account_id);
CREATE INDEX postings_credit_idx ON escrow.postings (credit_account_id);
CREATE INDEX postings_escrow_account_idx ON escrow.postings (escrow_account_id, seq);

CREATE FUNCTION escrow.refuse_posting_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'escrow.postings is append-only: correct a posting with a new transfer'
        USING ERRCODE = 'P0001';
END
$$;

CREATE TRIGGER postings_append_only
    BEFORE UPDATE OR DELETE ON escrow.postings
    FOR EACH ROW EXECUTE FUNCTION escrow.refuse_posting_change();

CREATE TRIGGER postings_no_truncate
    BEFORE TRUNCATE ON escrow.postings
    FOR EACH STATEMENT EXECUTE FUNCTION escrow.refuse_posting_change();

-- The signed effect of each posting on a shared account, until a roll-up
-- folds it into the account's balance_minor (and deletes it). Derived data:
-- the postings stay the record.
CREATE TABLE escrow.balance_deltas (
    posting_id    uuid NOT NULL REFERENCES escrow.postings (id),
    account_id    uuid NOT NULL REFERENCES escrow.ledger_accounts (id),
    amount_minor  bigint NOT NULL,
    PRIMARY KEY (posting_id, account_id)
);

CREATE INDEX balance_deltas_account_idx ON escrow.balance_deltas (account_id);
