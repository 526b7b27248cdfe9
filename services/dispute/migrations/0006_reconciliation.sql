-- The claims the cross-service reconciliation compares with escrow's
-- freezes: those not final, and final ones whose effects are on their way.
-- Most claims are final and done, so the index stays small.
CREATE INDEX claims_to_reconcile ON dispute.claims (claim_id)
    WHERE status IN ('opening', 'negotiating', 'escalated')
       OR (effects_completed_at IS NULL AND status <> 'refused');
