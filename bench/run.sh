#!/usr/bin/env bash
# The TodoService benchmark, in one run on one machine: the release server on SQLite and on
# PostgreSQL, every todo-bench scenario at several concurrency levels, pgbench running the
# exact SQL of one keyed create at the same client counts (the floor), the server's peak RSS,
# and keyed create / replay with 10 million rows in the key table against an almost empty one.
# Writes bench/results/<time>/ (JSON lines, report.md, latency.svg) and bench/results/latest.
#
#   bench/run.sh                       # full run (about 10 minutes)
#   BENCH_DURATION=2s BENCH_LEVELS="1 32" SCALE_ROWS=100000 bench/run.sh   # a quick one
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${BENCH_DURATION:-5s}"
WARMUP="${BENCH_WARMUP:-1s}"
LEVELS="${BENCH_LEVELS:-1 8 32 64}"
SCENARIOS="${BENCH_SCENARIOS:-create-keyed create-unkeyed replay get list update mixed health}"
POOL="${BENCH_DB_POOL:-16}"
SCALE_ROWS="${SCALE_ROWS:-10000000}"
PG="${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
export PGHOST PGPORT PGUSER

out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
echo "results in $out"

cargo build --release -p todo-service -p todo-bench --bins 2>&1 | tail -n 1
server_bin=target/release/todo-server
bench_bin=target/release/todo-bench

{
  echo "{\"key\": \"machine\", \"nproc\": $(nproc), \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"memory_kib\": $(grep MemTotal /proc/meminfo | awk '{print $2}'), \"postgres\": \"$(psql -d test -Atc 'show server_version')\", \"duration\": \"$DURATION\", \"pool\": $POOL}"
} > "$out/machine.json"

. bench/server.sh
peak_rss_kib() { grep VmHWM "/proc/$server_pid/status" | awk '{print $2}'; }
fresh_pg_db() { # $1 = name
  psql -d test -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" 2>/dev/null
}
bench() { # label scenario concurrency
  # CPU per call: the server's (its pid) and the database's (every `postgres` process; on
  # SQLite the database runs inside the server), over the measured window only.
  "$bench_bin" --target "http://$server_addr" --scenario "$2" --concurrency "$3" \
    --connections "$(( $3 < 4 ? 1 : 4 ))" --duration "$DURATION" --warmup "$WARMUP" \
    --server-pid "$server_pid" --database-process postgres \
    --json --label "$1" 2>/dev/null >> "$out/results.jsonl"
  tail -n 1 "$out/results.jsonl"
}
# CPU ticks (1/100 s) of every PostgreSQL process, plus the CPU of the ones that have exited
# (the postmaster's cutime + cstime: pgbench's backends end with it), for pgbench's database
# CPU per transaction.
pg_cpu_ticks() {
  # (processes that exit while being read make cat fail: not an error here)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '$2 == "(postgres)" {t += $14 + $15 + $16 + $17} END {print t + 0}'
}

for backend in sqlite postgres; do
  if [ "$backend" = sqlite ]; then
    dir=$(mktemp -d); url="sqlite:$dir/bench.db"
  else
    fresh_pg_db todo_bench; url="$PG/todo_bench"
  fi
  start_server "$server_bin" "$url" "$out/server.log"
  for scenario in $SCENARIOS; do
    for c in $LEVELS; do bench "$backend" "$scenario" "$c"; done
  done
  echo "{\"key\": \"rss\", \"label\": \"$backend\", \"peak_rss_kib\": $(peak_rss_kib)}" >> "$out/rss.jsonl"
  stop_server
  [ "$backend" = sqlite ] && rm -rf "$dir"
done

# The floor: pgbench running the service's SQL for one keyed create, same client counts,
# same TCP connection to 127.0.0.1 (and the same TLS negotiation) as the service.
pgbench_floor() { # $1 = libpq sslmode, $2 = tls true/false
  for c in $LEVELS; do
    before=$(pg_cpu_ticks)
    result=$(PGSSLMODE=$1 pgbench -n -M prepared -c "$c" -j "$(( c < 2 ? 1 : 2 ))" -T "${DURATION%s}" \
          -f bench/keyed-create.sql todo_bench 2>/dev/null)
    after=$(pg_cpu_ticks)
    tps=$(echo "$result" | sed -nE 's/^tps = ([0-9.]+).*/\1/p')
    txs=$(echo "$result" | sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p')
    db_us=$(awk -v t="$(( after - before ))" -v n="$txs" 'BEGIN {printf "%.1f", (n > 0 ? t * 10000 / n : 0)}')
    echo "{\"key\": \"pgbench\", \"tls\": $2, \"concurrency\": $c, \"tps\": $tps, \"database_cpu_us_per_tx\": $db_us}" | tee -a "$out/pgbench.jsonl"
  done
}
pgbench_floor prefer true

# The same comparison without TLS on either side (loopback: TLS protects nothing there).
start_server "$server_bin" "$PG/todo_bench?sslmode=disable" "$out/server.log"
for c in $LEVELS; do bench "postgres-no-tls" create-keyed "$c"; done
stop_server
pgbench_floor disable false

# Scale: keyed create and replay at 32 in flight, almost empty key table vs SCALE_ROWS rows.
fresh_pg_db todo_bench_scale
start_server "$server_bin" "$PG/todo_bench_scale" "$out/server.log"
for scenario in create-keyed replay; do bench "pg-empty" "$scenario" 32; done
stop_server
now_us=$(( $(date +%s) * 1000000 ))
echo "loading $SCALE_ROWS key rows"
psql -d todo_bench_scale -qc "INSERT INTO idempotency_keys (caller, method, key, fingerprint, response, created_at_us)
  SELECT 'anonymous', '/todo.v1.TodoService/CreateTodo', 'scale-' || g, sha256(g::text::bytea),
         decode('0a2430316132', 'hex'), $now_us - g
  FROM generate_series(1, $SCALE_ROWS) AS g" -c "VACUUM ANALYZE idempotency_keys"
rows=$(psql -d todo_bench_scale -Atc "SELECT count(*) FROM idempotency_keys")
start_server "$server_bin" "$PG/todo_bench_scale" "$out/server.log"
for scenario in create-keyed replay; do bench "pg-${rows}-keys" "$scenario" 32; done
stop_server

python3 bench/report.py "$out"
rm -rf bench/last-run && mkdir -p bench/last-run && cp "$out"/*.jsonl "$out"/machine.json "$out"/report.md "$out"/latency.svg bench/last-run/
ln -sfn "$(basename "$out")" bench/results/latest
echo "report: $out/report.md"
