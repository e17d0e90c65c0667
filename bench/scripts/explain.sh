#!/usr/bin/env bash
# Where PostgreSQL time goes in Cloacina's hot statements (see bench/FINDINGS.md).
#
#   bench/scripts/explain.sh [PSQL-CONNECTION-ARGS…]   default: -h 127.0.0.1 -U postgres -d test
#
# Builds a throw-away schema bench_explain from the library's PostgreSQL
# migrations, fills it with 50,000 pending single-task runs as createRun
# writes them, EXPLAIN ANALYZEs the claim (before and after 25,000 claimed,
# not yet vacuumed outbox rows), a 300-event insert and the completion's
# pipeline lock and updates, and times 100,000 event inserts with and
# without the event table's four secondary indexes. Writes happen in
# rolled-back transactions or in the throw-away schema, dropped at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
args=("$@")
[[ ${#args[@]} -eq 0 ]] && args=(-h 127.0.0.1 -U postgres -d test)
{
	echo '\set ON_ERROR_STOP 1'
	echo 'DROP SCHEMA IF EXISTS bench_explain CASCADE;'
	echo 'CREATE SCHEMA bench_explain;'
	sed 's/{{schema}}/bench_explain/g' "$root"/driver/postgres/migrations/*.sql
	cat "$here/explain-queries.sql"
} | psql -X -q "${args[@]}"
