-- Release per milestone: terms may tie payment milestones to shipment lots
-- (PaymentMilestone.lot, kept in the stored terms). A shipment is a lot,
-- numbered by `seq` in the order shipments are recorded. A lot before the
-- final one is received and accepted on its own, and its acceptance
-- releases its milestones from escrow.

ALTER TABLE contract.shipments
    ADD COLUMN received_at         timestamptz,
    -- Receipt plus the later of the inspection period and the claim window;
    -- moved forward while a claim pauses it. Only for lots before the final.
    ADD COLUMN acceptance_due_at   timestamptz,
    ADD COLUMN accepted_at         timestamptz,
    ADD COLUMN acceptance          text CHECK (acceptance IN ('explicit', 'automatic', 'claim_outcome')),
    -- The milestones this lot's own acceptance released, and their sum.
    ADD COLUMN released_milestones text[] NOT NULL DEFAULT '{}',
    ADD COLUMN released_minor      bigint NOT NULL DEFAULT 0 CHECK (released_minor >= 0),
    -- Those of them escrow has not answered yet: no claim opens meanwhile.
    ADD COLUMN release_pending     text[] NOT NULL DEFAULT '{}';
