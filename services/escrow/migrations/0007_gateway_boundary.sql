-- The payment gateway is a remote system: every call escrow makes to it is
-- recorded (with its own idempotency key) and committed before the call, made
-- outside any transaction, and resolved by the answer, a webhook or a status
-- query by key. See app/funding.rs and app/transfers.rs.

-- A funding attempt is written before the gateway is asked. `gateway_key` is
-- the key the gateway sees (derived from the caller's idempotency key, so a
-- retried FundEscrow resumes the same attempt); `answered_at` is when the
-- gateway's answer to the start call was recorded: NULL means the call's
-- outcome is not known yet, and the gateway worker asks the gateway by key
-- once `check_at` passes.
ALTER TABLE escrow.funding_attempts
    ADD COLUMN gateway_key text UNIQUE,
    ADD COLUMN answered_at timestamptz,
    ADD COLUMN check_at timestamptz;

UPDATE escrow.funding_attempts SET answered_at = created_at;

CREATE INDEX funding_attempts_unanswered_idx ON escrow.funding_attempts (check_at)
    WHERE answered_at IS NULL;

-- Payouts, buyer refunds and refunds of credits parked in suspense: one row
-- per movement, written (with its hold) before the gateway is asked.
-- sending: not yet accepted by the gateway (sent, and sent again with the
--          same key, until it answers);
-- pending: accepted, awaiting its paid or failed report;
-- unknown: no report by its expiry: asked by key until the gateway says.
ALTER TABLE escrow.gateway_transfers
    DROP CONSTRAINT gateway_transfers_status_check,
    DROP CONSTRAINT gateway_transfers_check,
    DROP CONSTRAINT gateway_transfers_check1,
    DROP CONSTRAINT gateway_transfers_direction_check,
    ALTER COLUMN gateway_reference DROP NOT NULL,
    ADD COLUMN gateway_key text UNIQUE,
    ADD COLUMN source_reference text,
    ADD COLUMN funding_attempt_id uuid REFERENCES escrow.funding_attempts (id),
    ADD COLUMN beneficiary text,
    ADD COLUMN sends integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text NOT NULL DEFAULT '',
    ADD COLUMN check_at timestamptz;

UPDATE escrow.gateway_transfers SET gateway_key = 'legacy:' || id::text,
    beneficiary = coalesce(supplier_id, escrow_account_id::text);

ALTER TABLE escrow.gateway_transfers
    ALTER COLUMN gateway_key SET NOT NULL,
    ALTER COLUMN beneficiary SET NOT NULL,
    ADD CONSTRAINT gateway_transfers_status_check
        CHECK (status IN ('sending', 'pending', 'unknown', 'paid', 'failed')),
    ADD CONSTRAINT gateway_transfers_direction_check
        CHECK (direction IN ('payout', 'buyer_refund', 'suspense_refund')),
    ADD CONSTRAINT gateway_transfers_resolved_check
        CHECK ((status IN ('sending', 'pending', 'unknown')) = (resolved_at IS NULL)),
    ADD CONSTRAINT gateway_transfers_supplier_check
        CHECK ((direction = 'payout') = (supplier_id IS NOT NULL)),
    ADD CONSTRAINT gateway_transfers_reference_check
        CHECK (status = 'sending' OR gateway_reference IS NOT NULL);

CREATE INDEX gateway_transfers_due_idx ON escrow.gateway_transfers (check_at)
    WHERE status IN ('sending', 'pending', 'unknown');
CREATE INDEX gateway_transfers_attempt_idx ON escrow.gateway_transfers (funding_attempt_id)
    WHERE funding_attempt_id IS NOT NULL;

-- Events name escrow's own record (`client_reference`) beside the gateway's id.
ALTER TABLE escrow.gateway_events
    ADD COLUMN client_reference text,
    DROP CONSTRAINT gateway_events_unmatched_check,
    ADD CONSTRAINT gateway_events_unmatched_check
        CHECK (unmatched IN ('LATE_CREDIT', 'UNKNOWN_REFERENCE', 'PAID_AFTER_FAILURE'));
