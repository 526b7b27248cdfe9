-- Penalty points are recorded once per claim, and a claim's id is
-- `claim_id` everywhere (dispute's name for it).
ALTER TABLE supplier_registry.penalties RENAME COLUMN dispute_id TO claim_id;
