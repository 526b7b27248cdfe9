-- Included by roles.sql once per service, with :role (also the schema's name)
-- and :password set. Idempotent.

SELECT format('CREATE ROLE %I', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec

ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
  NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 100 PASSWORD :'password';
-- Unqualified names resolve in the service's own schema only.
ALTER ROLE :"role" SET search_path = :"role";

SELECT format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO %I', current_database(), :'role') \gexec

CREATE SCHEMA IF NOT EXISTS :"role" AUTHORIZATION :"role";
ALTER SCHEMA :"role" OWNER TO :"role";
REVOKE ALL ON SCHEMA :"role" FROM PUBLIC;
