-- Fulfilment: what happened after signing. The funding state is a projection
-- of escrow's event feed (escrow owns payment deadlines and funding); reports
-- and shipments are kept whole, oldest first.

ALTER TABLE contract.contracts
    ADD COLUMN signed_at                 timestamptz,
    -- RecordClaimOpened recorded a claim that dispute has not confirmed yet.
    ADD COLUMN claim_pending             boolean NOT NULL DEFAULT false,
    ADD COLUMN claim_reason              text,
    ADD COLUMN received_at               timestamptz,
    ADD COLUMN accepted_at               timestamptz,
    ADD COLUMN acceptance                text CHECK (acceptance IN ('explicit', 'automatic', 'claim_outcome')),
    -- When the goods count as accepted; moved forward while a claim pauses it.
    ADD COLUMN acceptance_due_at         timestamptz,
    -- The shipment deadline in force: the signed terms', or a claim's decision.
    ADD COLUMN shipment_deadline         timestamptz,
    ADD COLUMN agreed_shipment_deadline  timestamptz,
    ADD COLUMN shipment_overdue          boolean NOT NULL DEFAULT false,
    -- While a claim is open: since when the contract's timers are paused.
    ADD COLUMN paused_at                 timestamptz,
    -- The inspecting agency's principal in the signed terms ('' for none).
    ADD COLUMN inspection_agency         text NOT NULL DEFAULT '';

CREATE INDEX contracts_escrow_idx ON contract.contracts (escrow_account_id);
CREATE INDEX contracts_supplier_owner_idx ON contract.contracts (supplier_principal_id, created_at DESC, contract_id);
CREATE INDEX contracts_status_idx ON contract.contracts (status, created_at DESC, contract_id);
CREATE INDEX contracts_agency_idx ON contract.contracts (inspection_agency, shipment_deadline, contract_id)
    WHERE inspection_agency <> '';

CREATE TABLE contract.payments (
    contract_id    uuid NOT NULL REFERENCES contract.contracts (contract_id),
    milestone_id   text NOT NULL,
    position       integer NOT NULL,
    amount_minor   bigint NOT NULL CHECK (amount_minor > 0),
    due_at         timestamptz NOT NULL,
    funded_at      timestamptz,
    overdue        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (contract_id, milestone_id)
);

CREATE TABLE contract.inspection_reports (
    report_id         uuid PRIMARY KEY,
    contract_id       uuid NOT NULL REFERENCES contract.contracts (contract_id),
    contract_version  integer NOT NULL,
    -- The encoded InspectionReport.
    report            bytea NOT NULL,
    passed            boolean NOT NULL,
    submitted_at      timestamptz NOT NULL
);
CREATE INDEX inspection_reports_contract_idx ON contract.inspection_reports (contract_id, submitted_at, report_id);

CREATE TABLE contract.shipments (
    contract_id      uuid NOT NULL REFERENCES contract.contracts (contract_id),
    seq              integer NOT NULL CHECK (seq >= 1),
    carrier          text NOT NULL,
    tracking_number  text NOT NULL,
    shipped_at       timestamptz NOT NULL,
    late             boolean NOT NULL,
    final            boolean NOT NULL,
    PRIMARY KEY (contract_id, seq)
);
