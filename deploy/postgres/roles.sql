-- Roles for paracle-nb runbooks: least privilege.
--
-- paracle_runbook  : diagnosis only. pg_monitor reads pg_stat_activity (all
--                    sessions' queries), pg_stat_statements and settings.
--                    Runbook sessions are also read-only and time-limited.
-- paracle_remediate: what the applied remediations need on top: end or
--                    cancel other roles' sessions (pg_signal_backend; never a
--                    superuser's). CREATE INDEX needs the table's owner
--                    (grant that role to paracle_remediate if the indexes
--                    are to be built from a runbook); ALTER SYSTEM needs a
--                    superuser and is best done by the DBA on call.
--
-- Run as a superuser (or the managed service's admin role). Set passwords
-- out of band (\password in psql), never in this file.

CREATE ROLE paracle_runbook LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
    CONNECTION LIMIT 5;
GRANT pg_monitor TO paracle_runbook;
ALTER ROLE paracle_runbook SET default_transaction_read_only = on;
ALTER ROLE paracle_runbook SET statement_timeout = '10s';
-- Optional, for the slow-queries runbook's EXPLAIN (ANALYZE): it runs the
-- slow statement inside a read-only transaction that is rolled back, and
-- needs to read the tables it names. Without this grant that one step says
-- so, and the rest of the diagnosis still runs.
-- GRANT SELECT ON ALL TABLES IN SCHEMA public TO paracle_runbook;

CREATE ROLE paracle_remediate LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
    CONNECTION LIMIT 3;
GRANT pg_monitor, pg_signal_backend TO paracle_remediate;
-- Optional, for CREATE INDEX CONCURRENTLY from the slow-queries runbook:
-- GRANT paracle TO paracle_remediate;   -- paracle owns the application tables

-- pg_stat_statements must be installed in the application database:
-- CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
