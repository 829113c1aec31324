#!/usr/bin/env bash
# The database's side of four calls, measured alone with pgbench (no gRPC, no service): a keyed
# create (bench/keyed-create.sql, the service's one statement), an unkeyed create (one INSERT),
# a replay (the same statement as a keyed create, for a key that exists) and a GetTodo (one
# primary-key SELECT). Shows what the SQL itself costs in the ratios bench/run.sh reports.
#
#   bench/sql-floors.sh [database with the service's schema, default todo_bench] [levels]
set -euo pipefail
cd "$(dirname "$0")/.."
DB="${1:-todo_bench}"
LEVELS="${2:-1 32}"
DURATION="${BENCH_DURATION:-5}"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A todo to get, and one stored key to replay (the keyed create run once with a fixed key).
sed -e "s/'pgbench-' || :client_id || '-' || :n/'pgbench-replayed'/g" \
    -e "s/'bench ' || :n/'bench replayed'/" -e 's/:now_us/(extract(epoch from now())::bigint * 1000000)/g' \
    bench/keyed-create.sql | grep -v '^\\set' > "$tmp/replay.sql"
psql -d "$DB" -qAt -f "$tmp/replay.sql" > /dev/null
id=$(psql -d "$DB" -qAtc "SELECT id FROM todos LIMIT 1")
echo "SELECT id, title, description, completed, create_time_us, update_time_us, revision, owner FROM todos WHERE id = '$id' AND owner = 'anonymous' LIMIT 1;" > "$tmp/get.sql"
cat > "$tmp/unkeyed.sql" <<'SQL'
\set n random(1, 1000000000000)
\set now_us 1800000000000000 + random(0, 1000000000)
INSERT INTO "todos" ("id", "title", "description", "completed", "create_time_us", "update_time_us", "revision", "owner") VALUES (gen_random_uuid(), 'bench ' || :n, '', false, :now_us, :now_us, 1, 'anonymous');
SQL

printf '| statement |'; for c in $LEVELS; do printf ' %s clients |' "$c"; done; echo
printf '|---|'; for _ in $LEVELS; do printf -- '---|'; done; echo
for name in keyed-create:bench/keyed-create.sql unkeyed-create:$tmp/unkeyed.sql replay:$tmp/replay.sql get:$tmp/get.sql; do
  printf '| %s |' "${name%%:*}"
  for c in $LEVELS; do
    tps=$(pgbench -n -M prepared -c "$c" -j "$(( c < 2 ? 1 : 2 ))" -T "$DURATION" -f "${name#*:}" "$DB" 2>/dev/null \
          | sed -nE 's/^tps = ([0-9.]+).*/\1/p')
    printf ' %.0f tx/s |' "$tps"
  done
  echo
done
