-- When each scheduled payment became fully funded (shown as
-- ScheduledPayment.funded_at); unset while anything of it is still due.
ALTER TABLE escrow.scheduled_payments ADD COLUMN funded_at timestamptz;
UPDATE escrow.scheduled_payments SET funded_at = now() WHERE funded_minor >= amount_minor;
