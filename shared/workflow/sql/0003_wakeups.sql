-- Wakes the workers that wait for rows of these tables (the relay, the open
-- event streams) when such a row is committed, instead of leaving them to
-- their next poll. NOTIFY is delivered at commit, and only then, so a woken
-- worker finds the row visible; the notification travels with the writer's
-- own COMMIT, costing it no round trip. The channel is the schema's name
-- (which the owning service alone uses), the payload says which table.
-- Postgres folds identical notifications of one transaction into one.

CREATE FUNCTION {schema}.workflow_wake() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA, TG_ARGV[0]);
    RETURN NULL;
END
$$;

-- Once per statement, not per row: a transaction writing many calls or
-- events sends one notification per table.
CREATE TRIGGER workflow_outbox_written AFTER INSERT ON {schema}.workflow_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.workflow_wake('outbox');

-- A parked row an operator re-drove is due at once. Row-level, so the
-- relay's own claims and completions (every other UPDATE) notify nobody.
CREATE TRIGGER workflow_outbox_redriven AFTER UPDATE OF status ON {schema}.workflow_outbox
    FOR EACH ROW WHEN (OLD.status = 'parked' AND NEW.status IN ('pending', 'answered'))
    EXECUTE FUNCTION {schema}.workflow_wake('outbox');

CREATE TRIGGER workflow_feed_appended AFTER INSERT ON {schema}.workflow_feed_events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.workflow_wake('feed');
