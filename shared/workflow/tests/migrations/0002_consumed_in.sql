-- The transaction that applied each consumed event, so a test can see
-- events applied together.
ALTER TABLE caller.consumed ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
