-- Supplier search by name, sorted by rating, response rate or remaining cover;
-- trust and safety's queue of submitted verifications; a supplier account's own
-- suppliers; cover reservations listed newest first. Every index below serves
-- one search or listing shape (tests/search.rs checks each with EXPLAIN). The
-- registry's event feed lives in the workflow tables, which ta_workflow
-- installs into this schema at start, as in contract, escrow and dispute.

-- When the supplier last submitted its verification: the queue's order.
ALTER TABLE supplier_registry.suppliers
    ADD COLUMN verification_submitted_at timestamptz;
-- A supplier waiting in the queue before this column existed: its last change
-- is the best known time of its submission. Verified and rejected ones keep
-- no time (the SUBMITTED_AT sort leaves them out).
UPDATE supplier_registry.suppliers SET verification_submitted_at = updated_at
    WHERE verification = 'submitted';

-- The sort keys as the API shows them (Supplier::average_rating_centi,
-- response_rate_basis_points, cover_remaining), kept by Postgres so an index
-- can serve each order. Sorting by remaining cover means a reservation or a
-- release now also updates that index (and so, no longer a heap-only update,
-- the supplier table's other indexes): the price of serving the sort.
ALTER TABLE supplier_registry.suppliers
    ADD COLUMN average_rating_centi bigint GENERATED ALWAYS AS (
        CASE WHEN review_count = 0 THEN 0
             ELSE (rating_sum * 200 + review_count) / (2 * review_count) END) STORED,
    ADD COLUMN response_rate_basis_points bigint GENERATED ALWAYS AS (
        CASE WHEN inquiry_count = 0 THEN 0
             ELSE replied_inquiry_count * 10000 / inquiry_count END) STORED,
    ADD COLUMN cover_remaining_minor bigint GENERATED ALWAYS AS (
        GREATEST(ta_limit_minor - cover_reserved_minor, 0)) STORED;

-- Name search: full-text over the legal name with the `simple` configuration
-- (no stemming, no stop words: names are not prose, and in any language).
CREATE INDEX suppliers_name_search_idx ON supplier_registry.suppliers
    USING gin (to_tsvector('simple', legal_name));

-- The sorts, each with its tie-break on the id.
CREATE INDEX suppliers_by_rating_idx ON supplier_registry.suppliers
    (average_rating_centi DESC, id DESC);
CREATE INDEX suppliers_by_response_rate_idx ON supplier_registry.suppliers
    (response_rate_basis_points DESC, id DESC);
CREATE INDEX suppliers_by_cover_remaining_idx ON supplier_registry.suppliers
    (ta_limit_currency, cover_remaining_minor DESC, id DESC)
    WHERE ta_limit_currency IS NOT NULL;
CREATE INDEX suppliers_by_submission_idx ON supplier_registry.suppliers
    (verification_submitted_at, id) WHERE verification_submitted_at IS NOT NULL;

-- Staff filters: the verification queue (oldest submission first) and status.
CREATE INDEX suppliers_verification_queue_idx ON supplier_registry.suppliers
    (verification, verification_submitted_at, id);
CREATE INDEX suppliers_status_idx ON supplier_registry.suppliers (status, id);

-- A supplier account's own suppliers.
CREATE INDEX suppliers_owner_idx ON supplier_registry.suppliers (owner_principal_id, id);

-- Cover reservations, newest first: all of them, and per supplier.
CREATE INDEX cover_reservations_newest_idx ON supplier_registry.cover_reservations
    (reserved_at DESC, contract_id DESC);
CREATE INDEX cover_reservations_supplier_newest_idx ON supplier_registry.cover_reservations
    (supplier_id, reserved_at DESC, contract_id DESC);
