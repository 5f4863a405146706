-- Roles and databases for the Digital Marketplace stack.  Idempotent: safe on every start.
-- Run with: psql -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres -f create-databases.sql
--
-- The apps connect as the OS user they run as (root in the container) to
-- postgresql://localhost/digitalmarketplace, so `root` is a login superuser, as in the
-- previous container; `digitalmarketplace` exists for dumps whose objects are owned by it.

SELECT format('CREATE ROLE %I WITH LOGIN SUPERUSER', r)
  FROM unnest(ARRAY['root', 'digitalmarketplace']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
\gexec

SELECT format('CREATE DATABASE %I OWNER postgres ENCODING %L TEMPLATE template0', d, 'UTF8')
  FROM unnest(ARRAY['digitalmarketplace', 'digitalmarketplace_test', 'dmp_contained_example']) AS d
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d)
\gexec
