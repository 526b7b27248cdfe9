-- ListClaims: an index for each filter shape, all in the listing's order
-- (filed_at, claim_id), which a btree serves in either direction. The first
-- party indexes lacked the claim id, so a page token's tie-break was not
-- served by them.

DROP INDEX dispute.claims_by_buyer;
DROP INDEX dispute.claims_by_supplier;

CREATE INDEX claims_buyer_by_filing ON dispute.claims (buyer_principal_id, filed_at, claim_id);
CREATE INDEX claims_supplier_owner_by_filing
    ON dispute.claims (supplier_principal_id, filed_at, claim_id);
CREATE INDEX claims_supplier_by_filing ON dispute.claims (supplier_id, filed_at, claim_id);
CREATE INDEX claims_contract_by_filing ON dispute.claims (contract_id, filed_at, claim_id);
CREATE INDEX claims_status_by_filing ON dispute.claims (status, filed_at, claim_id);
CREATE INDEX claims_reason_by_filing ON dispute.claims (reason, filed_at, claim_id);
-- The arbiters' queue: escalated claims (decision overdue: their
-- decision_due_at has passed), newest first.
CREATE INDEX claims_escalated_by_filing ON dispute.claims (filed_at, claim_id)
    INCLUDE (decision_due_at) WHERE status = 'escalated';
