-- The buyer may counter-offer: an offer is made by either party and answered
-- by the other.
ALTER TABLE dispute.offers
    ADD COLUMN made_by text NOT NULL DEFAULT 'supplier' CHECK (made_by IN ('supplier', 'buyer'));
