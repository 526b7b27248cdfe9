-- ListContracts: the buyer's own order reference, and an index for each
-- filter shape and sort (created or last changed, either direction, ties by
-- contract id). A btree serves its order both ways, so every listing index
-- keeps (time, contract_id) in one direction: the earlier ones had
-- `created_at DESC, contract_id` (mixed), which serves neither full order.

ALTER TABLE contract.contracts
    ADD COLUMN external_reference text
        CHECK (external_reference IS NULL OR char_length(external_reference) BETWEEN 1 AND 128);

-- Unique per buyer; also the exact-match search, with or without the buyer.
CREATE UNIQUE INDEX contracts_external_reference_per_buyer
    ON contract.contracts (external_reference, buyer_principal_id)
    WHERE external_reference IS NOT NULL;

DROP INDEX contract.contracts_buyer_idx;
DROP INDEX contract.contracts_supplier_idx;
DROP INDEX contract.contracts_supplier_owner_idx;
DROP INDEX contract.contracts_status_idx;

-- Staff and the platform, no party named.
CREATE INDEX contracts_created_idx ON contract.contracts (created_at, contract_id);
CREATE INDEX contracts_updated_idx ON contract.contracts (updated_at, contract_id);
-- A buyer's own.
CREATE INDEX contracts_buyer_created_idx
    ON contract.contracts (buyer_principal_id, created_at, contract_id);
CREATE INDEX contracts_buyer_updated_idx
    ON contract.contracts (buyer_principal_id, updated_at, contract_id);
-- A supplier owner's own.
CREATE INDEX contracts_supplier_owner_created_idx
    ON contract.contracts (supplier_principal_id, created_at, contract_id);
CREATE INDEX contracts_supplier_owner_updated_idx
    ON contract.contracts (supplier_principal_id, updated_at, contract_id);
-- One supplier's.
CREATE INDEX contracts_supplier_created_idx
    ON contract.contracts (supplier_id, created_at, contract_id);
CREATE INDEX contracts_supplier_updated_idx
    ON contract.contracts (supplier_id, updated_at, contract_id);
-- By status (operators' queues).
CREATE INDEX contracts_status_created_idx
    ON contract.contracts (status, created_at, contract_id);
CREATE INDEX contracts_status_updated_idx
    ON contract.contracts (status, updated_at, contract_id);
