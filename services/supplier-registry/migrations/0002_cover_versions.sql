-- A reservation's amount follows the contract's signed amendments; the
-- version orders them so a late redelivery cannot undo a newer adjustment.
ALTER TABLE supplier_registry.cover_reservations
    ADD COLUMN contract_version integer NOT NULL DEFAULT 1 CHECK (contract_version >= 1);
