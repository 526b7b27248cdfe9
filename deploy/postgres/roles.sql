-- One database role and one schema per service, in the platform's database on
-- the managed Postgres instance. Run once per environment, and again after any
-- change (it is idempotent), as the instance's admin user:
--
--   psql "postgres://<admin>@<host>:5432/trade_assurance" -v ON_ERROR_STOP=1 \
--     -v supplier_registry_password="$(openssl rand -hex 24)" \
--     -v contract_password=... -v escrow_password=... -v dispute_password=... \
--     -f deploy/postgres/roles.sql
--
-- Each role owns its schema and nothing else: no privilege on the other
-- services' schemas, none on `public`, not a superuser, cannot create roles or
-- databases. The service then creates its tables itself, with its own
-- migrations, at start (sqlx; its migration table lives in its schema too).
--
-- Why each role keeps CREATE on the database: sqlx runs
-- `CREATE SCHEMA IF NOT EXISTS <schema>` before migrating (services/*/sqlx.toml,
-- `create-schemas`), and Postgres checks the CREATE privilege on the database
-- before it looks whether the schema exists. The privilege lets a role create
-- new, empty schemas of its own; it gives no access to another service's
-- schema, and the schemas below exist (with their owners) before any service
-- starts, so none can be taken by another role. To withdraw it too, drop
-- `create-schemas` from the services' sqlx.toml and revoke CREATE below, or give
-- each service its own database.
--
-- deploy/tools/test_roles.py runs this file on a throwaway cluster, applies each
-- service's migrations as its role, and checks that the roles cannot reach each
-- other's schemas.

\set ON_ERROR_STOP on

-- Nobody gets anything by default: not the database, not the public schema.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
REVOKE ALL ON SCHEMA public FROM PUBLIC;

-- The services, as (role = schema, password variable).
\set role supplier_registry
\set password :supplier_registry_password
\ir service-role.sql
\set role contract
\set password :contract_password
\ir service-role.sql
\set role escrow
\set password :escrow_password
\ir service-role.sql
\set role dispute
\set password :dispute_password
\ir service-role.sql
