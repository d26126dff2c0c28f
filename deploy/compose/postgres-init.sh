#!/bin/sh
# Run once by the postgres image on a new data directory (docker-entrypoint-initdb.d), as the
# owner. Creates the runtime login uidflow_run in the group role uidflow_runtime, which
# `uidflow migrate` grants the data rights on every table (and nothing else).
set -eu
psql -v ON_ERROR_STOP=1 -v password="$UIDFLOW_RUN_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
SELECT 'CREATE ROLE uidflow_runtime NOLOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'uidflow_runtime') \gexec
CREATE ROLE uidflow_run LOGIN PASSWORD :'password' IN ROLE uidflow_runtime;
SQL
