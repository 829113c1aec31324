# Sourced by bench/run.sh and bench/compare.sh: start and stop a release server for a run.
# start_server BINARY DATABASE_URL LOG sets server_pid and server_addr (the port is the
# system's choice, read from the server's JSON log line "serving gRPC"); POOL is the pool size.

server_pid=""
server_addr=""
start_server() {
  "$1" --listen-addr 127.0.0.1:0 --metrics-enabled false --sweep-enabled false \
    --database-url "$2" --db-pool-size "$POOL" --log-format json --request-timeout 60s \
    > "$3" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    server_addr=$(grep -m1 '"serving gRPC"' "$3" 2>/dev/null | sed -E 's/.*"addr":"([^"]+)".*/\1/' || true)
    [ -n "$server_addr" ] && return 0
    sleep 0.1
  done
  echo "the server did not start" >&2; cat "$3" >&2; exit 1
}
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
