-- Listings of escrow accounts and gateway transfers (ListEscrowAccounts,
-- ListGatewayTransfers): an index for each filter, each ending in the
-- listings' order (newest created first, ties by id), so a page is read
-- from the index in order and never by reading the whole table.

-- The owner of the account's supplier, beside it in its terms, so a
-- supplier's own listing is one index range.
ALTER TABLE escrow.escrow_accounts ADD COLUMN supplier_owner_principal_id text;

UPDATE escrow.escrow_accounts a SET supplier_owner_principal_id = t.supplier_owner_principal_id
FROM escrow.account_terms t WHERE t.escrow_account_id = a.id;

-- Staff and the platform, unfiltered or by created range.
CREATE INDEX escrow_accounts_created_idx ON escrow.escrow_accounts (created_at DESC, id DESC);
-- A buyer's own accounts (and staff filtering by buyer).
CREATE INDEX escrow_accounts_buyer_idx
    ON escrow.escrow_accounts (buyer_principal_id, created_at DESC, id DESC);
-- A supplier's own accounts.
CREATE INDEX escrow_accounts_owner_idx
    ON escrow.escrow_accounts (supplier_owner_principal_id, created_at DESC, id DESC);
CREATE INDEX escrow_accounts_supplier_idx
    ON escrow.escrow_accounts (supplier_id, created_at DESC, id DESC);
CREATE INDEX escrow_accounts_status_idx
    ON escrow.escrow_accounts (status, created_at DESC, id DESC);
CREATE INDEX escrow_accounts_currency_idx
    ON escrow.escrow_accounts (currency, created_at DESC, id DESC);
-- By contract: the UNIQUE (contract_id) index. Holding money or not: the
-- (kind, owner, currency) index of escrow.ledger_accounts (no index on its
-- balance, whose every change would then stop being a HOT update).

-- Transfers by kind/direction, status, supplier, and by what an unmatched
-- item names (its id, gateway_reference and funding_attempt_id have theirs).
CREATE INDEX gateway_transfers_direction_idx
    ON escrow.gateway_transfers (direction, created_at DESC, id DESC);
CREATE INDEX gateway_transfers_status_idx
    ON escrow.gateway_transfers (status, created_at DESC, id DESC);
CREATE INDEX gateway_transfers_supplier_idx
    ON escrow.gateway_transfers (supplier_id, created_at DESC, id DESC)
    WHERE supplier_id IS NOT NULL;
CREATE INDEX gateway_transfers_source_idx ON escrow.gateway_transfers (source_reference)
    WHERE source_reference IS NOT NULL;
