-- The remedy the buyer asks for, and a decided new shipment date.
ALTER TABLE dispute.claims
    ADD COLUMN remedy text NOT NULL DEFAULT 'refund'
        CHECK (remedy IN ('refund', 'return_and_refund', 'reshipment')),
    ADD COLUMN new_shipment_deadline timestamptz;
