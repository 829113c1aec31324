#!/usr/bin/env bash
# Two server binaries side by side in one run: each scenario at one concurrency, on SQLite and
# on PostgreSQL, the binaries taking turns (A B A B ...) so that machine noise falls on both.
# Reports calls/s, p99, and the server's and the database's CPU per call (todo-bench
# --server-pid / --database-process), each binary's median over the rounds and the ratio B / A.
#
#   bench/compare.sh OLD_SERVER_BIN NEW_SERVER_BIN
#   COMPARE_SCENARIOS="update create-keyed" COMPARE_ROUNDS=3 bench/compare.sh a/todo-server b/todo-server
#
# Every server gets a fresh database (PostgreSQL: todo_compare, dropped and created again).
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || { echo "usage: $0 OLD_SERVER_BIN NEW_SERVER_BIN" >&2; exit 2; }
bins=("$1" "$2")
SCENARIOS="${COMPARE_SCENARIOS:-update create-keyed create-unkeyed replay get}"
BACKENDS="${COMPARE_BACKENDS:-postgres sqlite}"
ROUNDS="${COMPARE_ROUNDS:-3}"
CONCURRENCY="${COMPARE_CONCURRENCY:-32}"
DURATION="${COMPARE_DURATION:-4s}"
POOL="${BENCH_DB_POOL:-16}"
PG="${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres

out="bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
cargo build --release -p todo-bench --bins 2>&1 | tail -n 1
bench_bin=target/release/todo-bench
{
  echo "A: $1 ($(sha256sum "$1" | cut -c1-12))"
  echo "B: $2 ($(sha256sum "$2" | cut -c1-12))"
  echo "$CONCURRENCY in flight, $DURATION per run, $ROUNDS rounds, pool $POOL, $(nproc) cores"
} > "$out/setup.txt"
cat "$out/setup.txt"

. bench/server.sh

for round in $(seq 1 "$ROUNDS"); do
  for backend in $BACKENDS; do
    for which in 0 1; do
      if [ "$backend" = sqlite ]; then
        dir=$(mktemp -d); url="sqlite:$dir/compare.db"
      else
        psql -d test -qc "DROP DATABASE IF EXISTS todo_compare" -c "CREATE DATABASE todo_compare" 2>/dev/null
        url="$PG/todo_compare"
      fi
      start_server "${bins[$which]}" "$url" "$out/server.log"
      label="$backend $([ "$which" = 0 ] && echo A || echo B) $round"
      for scenario in $SCENARIOS; do
        "$bench_bin" --target "http://$server_addr" --scenario "$scenario" \
          --concurrency "$CONCURRENCY" --connections 4 --duration "$DURATION" --warmup 1s \
          --server-pid "$server_pid" --database-process postgres \
          --json --label "$label" 2>/dev/null >> "$out/results.jsonl"
        tail -n 1 "$out/results.jsonl" | cut -c1-160
      done
      stop_server
      [ "$backend" = sqlite ] && rm -rf "$dir"
    done
  done
done

python3 - "$out" <<'EOF' | tee "$out/report.md"
import json, statistics, sys
from collections import defaultdict
out = sys.argv[1]
runs = defaultdict(list)
for line in open(f"{out}/results.jsonl"):
    r = json.loads(line)
    backend, which, _ = r["label"].split()
    runs[(backend, r["scenario"], which)].append(r)
def median(rows, key):
    values = [row.get(key) for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None
print(open(f"{out}/setup.txt").read())
print("| backend | scenario | calls/s A | calls/s B | B/A | server us/call A | B | B/A | db us/call A | B | B/A | errors A / B | p99 ms A / B |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for backend, scenario in sorted({(b, s) for b, s, _ in runs}):
    a, b = runs[(backend, scenario, "A")], runs[(backend, scenario, "B")]
    cells = []
    for key in ("calls_per_second", "server_cpu_us_per_call", "database_cpu_us_per_call"):
        x, y = median(a, key), median(b, key)
        ratio = f"{y / x:.2f}" if x and y else "-"
        fmt = lambda v: "-" if v is None else f"{v:.0f}"
        cells += [fmt(x), fmt(y), ratio]
    errors = f"{sum(sum(r['errors'].values()) for r in a)} / {sum(sum(r['errors'].values()) for r in b)}"
    p99 = lambda rows: statistics.median(r["latency_ms"]["p99"] for r in rows)
    print(f"| {backend} | {scenario} | " + " | ".join(cells) + f" | {errors} | {p99(a):.1f} / {p99(b):.1f} |")
EOF
echo "report: $out/report.md"
