-- Claims, their offers, evidence (the files themselves live in the evidence
-- store, addressed by SHA-256) and the readable timeline.

CREATE TABLE dispute.claims (
    claim_id                        uuid PRIMARY KEY,
    contract_id                     text NOT NULL,
    escrow_account_id               text NOT NULL,
    buyer_principal_id              text NOT NULL,
    supplier_id                     text NOT NULL,
    supplier_principal_id           text NOT NULL,
    reason                          text NOT NULL CHECK (reason IN (
        'late_shipment', 'non_delivery', 'quality_mismatch', 'damage', 'short_quantity', 'other')),
    quality_criterion_ids           text[] NOT NULL DEFAULT '{}',
    currency                        char(3) NOT NULL,
    amount_claimed_minor            bigint NOT NULL CHECK (amount_claimed_minor > 0),
    -- What escrow held when the claim was filed, then what it froze.
    held_minor                      bigint NOT NULL CHECK (held_minor >= amount_claimed_minor),
    description                     text NOT NULL,
    status                          text NOT NULL CHECK (status IN (
        'opening', 'negotiating', 'escalated', 'settled', 'decided', 'withdrawn', 'refused')),
    -- The contract had shipped (or delivered) when the claim was filed: a
    -- settlement releases what is not refunded.
    goods_shipped                   boolean NOT NULL,
    filed_at                        timestamptz NOT NULL,
    negotiation_ends_at             timestamptz NOT NULL,
    auto_escalate_at                timestamptz NOT NULL,
    supplier_rejected_at            timestamptz,
    supplier_rejection_reason       text NOT NULL DEFAULT '',
    supplier_counter_evidence_ids   text[] NOT NULL DEFAULT '{}',
    escalated_at                    timestamptz,
    escalated_by_principal_id       text NOT NULL DEFAULT '',
    escalated_by_role               text NOT NULL DEFAULT '',
    escalation_reason               text NOT NULL DEFAULT '',
    decision_due_at                 timestamptz,
    outcome                         text CHECK (outcome IN ('full_refund', 'partial_refund', 'release_to_supplier')),
    refund_minor                    bigint CHECK (refund_minor >= 0),
    resolution_reason               text NOT NULL DEFAULT '',
    penalty_points                  integer NOT NULL DEFAULT 0 CHECK (penalty_points BETWEEN 0 AND 100),
    accepted_offer_id               text NOT NULL DEFAULT '',
    resolved_by_principal_id        text NOT NULL DEFAULT '',
    resolved_by_role                text NOT NULL DEFAULT '',
    resolved_at                     timestamptz,
    withdrawn_at                    timestamptz,
    withdrawal_reason               text NOT NULL DEFAULT '',
    refusal_reason                  text NOT NULL DEFAULT '',
    effects_completed_at            timestamptz,
    updated_at                      timestamptz NOT NULL,
    CHECK ((outcome IS NULL) = (refund_minor IS NULL))
);

-- One claim in progress per contract (the contract refuses a second one too).
CREATE UNIQUE INDEX claims_one_open_per_contract ON dispute.claims (contract_id)
    WHERE status IN ('opening', 'negotiating', 'escalated');
CREATE INDEX claims_by_buyer ON dispute.claims (buyer_principal_id, filed_at DESC);
CREATE INDEX claims_by_supplier ON dispute.claims (supplier_principal_id, filed_at DESC);
CREATE INDEX claims_by_filing ON dispute.claims (filed_at DESC, claim_id DESC);

CREATE TABLE dispute.offers (
    offer_id              uuid PRIMARY KEY,
    claim_id              uuid NOT NULL REFERENCES dispute.claims (claim_id),
    position              integer NOT NULL CHECK (position >= 1),
    kind                  text NOT NULL CHECK (kind IN ('full_refund', 'partial_refund')),
    refund_minor          bigint NOT NULL CHECK (refund_minor > 0),
    message               text NOT NULL,
    status                text NOT NULL CHECK (status IN ('open', 'accepted', 'rejected', 'superseded', 'lapsed')),
    made_at               timestamptz NOT NULL,
    responded_at          timestamptz,
    rejection_reason      text NOT NULL DEFAULT '',
    counter_evidence_ids  text[] NOT NULL DEFAULT '{}',
    UNIQUE (claim_id, position)
);

CREATE UNIQUE INDEX offers_one_open_per_claim ON dispute.offers (claim_id) WHERE status = 'open';

CREATE TABLE dispute.evidence (
    evidence_id               uuid PRIMARY KEY,
    claim_id                  uuid NOT NULL REFERENCES dispute.claims (claim_id),
    kind                      text NOT NULL CHECK (kind IN ('photo', 'video', 'inspection_report', 'document')),
    filename                  text NOT NULL,
    content_type              text NOT NULL,
    size_bytes                bigint NOT NULL CHECK (size_bytes > 0),
    -- Lower-case hex; the file's key in the evidence store.
    sha256_hex                char(64) NOT NULL CHECK (sha256_hex ~ '^[0-9a-f]{64}$'),
    description               text NOT NULL DEFAULT '',
    quality_criterion_ids     text[] NOT NULL DEFAULT '{}',
    uploaded_by_principal_id  text NOT NULL,
    uploaded_by_role          text NOT NULL,
    uploaded_at               timestamptz NOT NULL,
    -- The same file added to a claim twice is the same evidence.
    UNIQUE (claim_id, sha256_hex)
);

CREATE INDEX evidence_by_claim ON dispute.evidence (claim_id, uploaded_at, evidence_id);

CREATE TABLE dispute.timeline (
    claim_id             uuid NOT NULL REFERENCES dispute.claims (claim_id),
    entry                integer NOT NULL CHECK (entry >= 1),
    occurred_at          timestamptz NOT NULL,
    actor_principal_id   text NOT NULL,
    actor_role           text NOT NULL,
    kind                 text NOT NULL,
    description          text NOT NULL,
    currency             char(3),
    amount_minor         bigint,
    PRIMARY KEY (claim_id, entry),
    CHECK ((currency IS NULL) = (amount_minor IS NULL))
);
