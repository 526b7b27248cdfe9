-- The hold deadline of each escrow account: the latest time by which the
-- contract will have released or refunded the money held (its delivery
-- deadline + inspection period + claim window). A `hold_deadline` timer fires
-- at it. While the account is frozen the deadline is paused: hold_paused_at
-- is when the first active freeze began, and lifting the last one moves
-- hold_until later by the time spent frozen.

ALTER TABLE escrow.escrow_accounts
    ADD COLUMN hold_until timestamptz,
    ADD COLUMN hold_paused_at timestamptz;

-- Accounts opened before the field existed: thirty days after their last
-- payment's due date (the service arms their timers at start-up).
UPDATE escrow.escrow_accounts e
SET hold_until = coalesce(
        (SELECT max(p.due_at) FROM escrow.scheduled_payments p WHERE p.escrow_account_id = e.id),
        e.created_at) + interval '30 days',
    hold_paused_at = CASE WHEN EXISTS (
            SELECT 1 FROM escrow.freezes f WHERE f.escrow_account_id = e.id AND f.lifted_at IS NULL)
        THEN now() END;

ALTER TABLE escrow.escrow_accounts ALTER COLUMN hold_until SET NOT NULL;
