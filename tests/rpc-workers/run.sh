#!/usr/bin/env bash
# End-to-end test of the RPC workers in examples/rpc-workers/ (docs/redis.md §11):
# a real Redis, two gateway nodes of the built binary, the Python and the Node worker,
# and a WebSocket client (client.mjs) calling `rpc` through both nodes.
#
#   tests/rpc-workers/setup.sh                       # once: redis-py, npm packages
#   tests/rpc-workers/run.sh [path/to/switchboard]   # default target/debug/switchboard
#
# Checks: (a) calls through both nodes are answered by both workers; (b) application
# errors pass through; (c) a worker SIGKILLed while holding a request has it finished by
# a worker of the other language, with exactly one reply to the client; (d) with no
# worker the client gets 118 timeout; (e) a worker started later deletes the expired
# request without handling it. Exits non-zero with `FAIL: ...` when a check fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/rpc-workers
WORKERS=$ROOT/examples/rpc-workers
BIN=${1:-$ROOT/target/debug/switchboard}
[[ $BIN == /* ]] || BIN=$PWD/$BIN

# Messages go to fd 3, the script's stderr, even where a step silences fd 2.
exec 3>&2
fail() { echo "FAIL: $*" >&3; exit 1; }
step() { echo "== $*"; }

[[ -x $BIN ]] || fail "no gateway binary at $BIN (build it, or pass its path)"
for tool in redis-server redis-cli python3 node; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
python3 -c 'import redis' 2>/dev/null || fail "python3 cannot import redis: run tests/rpc-workers/setup.sh"
[[ -d $WORKERS/node_modules/redis && -d $HERE/node_modules/ws ]] || fail "npm packages missing: run tests/rpc-workers/setup.sh"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sb-rpc-workers.XXXXXX")
PIDS=() # every process we start, stopped on exit

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # SIGTERM first (gateways and workers stop gracefully), then SIGKILL what is left.
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((rc != 0)); then
    # The logs are about to be deleted: show their ends, where the cause usually is.
    for log in "$TMP"/*.log; do
      [[ -s $log ]] || continue
      echo "---- $(basename "$log") (last 15 lines)" >&3
      tail -n 15 "$log" >&3
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # runs cleanup through the EXIT trap

# A free TCP port: bind port 0 and let the kernel choose. Never 6379, which may be a
# developer's own Redis.
free_port() {
  local port
  while :; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    [[ $port != 6379 ]] && { echo "$port"; return; }
  done
}

# wait_until <seconds> <description> <command...>: polls the command until it succeeds.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not within ${limit}s"
    sleep 0.1
  done
}

# wait_exit <pid> <seconds>: waits for a process we started; its exit status is returned.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "process $pid did not exit within $2s"
    sleep 0.1
  done
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
stream_empty() { [[ $(rcli XLEN "$1") == 0 ]]; }
http_ok() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1"; }

# start_worker <name> <worker file> [VAR=value ...]: starts a worker (route `votes`
# unless RPC_ROUTE=... is given) and waits for its `ready <consumer>` line. Sets
# WORKER_PID and WORKER_CONSUMER.
start_worker() {
  local name=$1 file=$2
  shift 2
  local runner=python3
  [[ $file == *.mjs ]] && runner=node
  env REDIS_URL="redis://127.0.0.1:$REDIS_PORT" "$@" "$runner" "$WORKERS/$file" \
    >"$TMP/$name.out" 2>"$TMP/$name.log" &
  WORKER_PID=$!
  PIDS+=("$WORKER_PID")
  wait_until 15 "worker $name ready" grep -q '^ready ' "$TMP/$name.out"
  WORKER_CONSUMER=$(sed -n 's/^ready //p' "$TMP/$name.out" | head -n 1)
}

# stop_worker <pid> <name>: SIGTERM, and the worker must exit 0 (graceful stop).
stop_worker() {
  kill -TERM "$1"
  local rc=0
  wait_exit "$1" 10 || rc=$?
  ((rc == 0)) || fail "worker $2 exited with status $rc after SIGTERM, expected 0"
}

# Runs client.mjs in the foreground (the kill test starts it in the background itself).
client() { TOKEN=$TOKEN node "$HERE/client.mjs" "$@"; }

# ---------------------------------------------------------------------------------------
step "redis and two gateway nodes"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
  >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_until 10 "redis-server on port $REDIS_PORT" rcli ping

# The `votes.` route's timeout must outlast the kill test (hold, kill, claim); `slow`
# has no worker and a short timeout for the 118 check.
cat >"$TMP/gateway.toml" <<EOF
[node]
shutdown_timeout_ms = 3000
shutdown_reconnect_jitter_ms = 200

[broker]
url = "redis://127.0.0.1:$REDIS_PORT"

[auth]
hmac_secret = "rpc-workers-test-secret"

[rpc]
timeout_ms = 5000

[[rpc.routes]]
prefix = "votes."
stream = "votes"
timeout_ms = 20000

[[rpc.routes]]
method = "slow"
stream = "slow"
timeout_ms = 1000
EOF

URLS=()
for n in 1 2; do
  port=$(free_port)
  # NO_COLOR: plain text in the log files shown on failure.
  NO_COLOR=1 SWITCHBOARD_NODE__NAME="node-$n" "$BIN" --config "$TMP/gateway.toml" --listen "127.0.0.1:$port" \
    >"$TMP/gateway-$n.log" 2>&1 &
  PIDS+=($!)
  # /readyz is 200 once the node's Redis connections work (operations.md, Readiness).
  wait_until 30 "gateway node-$n ready on port $port" http_ok "http://127.0.0.1:$port/readyz"
  URLS+=("ws://127.0.0.1:$port/ws")
done

# A connection token signed with the configured secret (operations.md, `switchboard token`).
TOKEN=$("$BIN" token --config "$TMP/gateway.toml" --user alice --ttl 600)

# ---------------------------------------------------------------------------------------
step "workers: python and node"

start_worker python-1 worker.py
PY_PID=$WORKER_PID PY_CONSUMER=$WORKER_CONSUMER
start_worker node-1 worker.mjs
NODE_PID=$WORKER_PID

step "a. votes.cast through both nodes, answered by both workers"
client cast "${URLS[0]}" "${URLS[1]}" 20 || fail "check a (votes.cast)"

step "b. votes.fail: the worker's error reaches the client"
client fail "${URLS[1]}" || fail "check b (votes.fail)"

stream_empty 'sb:rpc:{votes}' || fail "answered requests left in sb:rpc:{votes}"

# ---------------------------------------------------------------------------------------
step "c. python worker killed while holding a request, a node worker finishes it"

# Only the Python worker may take the request.
stop_worker "$NODE_PID" node-1

# Not through client(): a background function would be a subshell, whose pid is not
# node's, and stopping it on exit would leave node running.
TOKEN=$TOKEN node "$HERE/client.mjs" hold "${URLS[0]}" 15000 >"$TMP/hold.out" 2>&1 &
HOLD_PID=$!
PIDS+=("$HOLD_PID")

# XPENDING's summary: count, smallest id, greatest id, then consumer/count pairs.
held_by_python() {
  local summary
  summary=$(rcli XPENDING 'sb:rpc:{votes}' workers | tr '\n' ' ')
  [[ $summary == "1 "*" $PY_CONSUMER 1 " ]]
}
wait_until 15 "votes.hold pending with the python worker ($PY_CONSUMER)" held_by_python

# 2>/dev/null: bash's own "Killed" notice for its job, which looks like a failure.
{
  kill -KILL "$PY_PID"
  wait_exit "$PY_PID" 10 || true # its status is the SIGKILL's
} 2>/dev/null

# The request has been pending since the Python worker read it: a claimer that claims
# after 500 ms of idleness takes it at once, and doesn't hold it (HOLD_MAX_MS=0).
start_worker node-2 worker.mjs CLAIM_AFTER_MS=500 HOLD_MAX_MS=0
CLAIMER_PID=$WORKER_PID

hold_rc=0
wait_exit "$HOLD_PID" 40 || hold_rc=$?
cat "$TMP/hold.out"
((hold_rc == 0)) || fail "check c (kill and claim): client exited with status $hold_rc"
grep -q 'claimed 1 request' "$TMP/node-2.log" || fail "check c: the node worker did not XAUTOCLAIM the request"
stream_empty 'sb:rpc:{votes}' || fail "check c: sb:rpc:{votes} not empty: $(rcli XRANGE 'sb:rpc:{votes}' - +)"
[[ $(rcli XPENDING 'sb:rpc:{votes}' workers | head -n 1) == 0 ]] ||
  fail "check c: pending entries left: $(rcli XPENDING 'sb:rpc:{votes}' workers)"

# ---------------------------------------------------------------------------------------
step "d. no worker: 118 timeout at the route's deadline"

stop_worker "$CLAIMER_PID" node-2
client timeout "${URLS[1]}" || fail "check d (timeout)"

step "e. a worker started after the deadline deletes the request without handling it"

# The expired `slow` request is still in its stream; answering it (`late`) deletes it.
[[ $(rcli XLEN 'sb:rpc:{slow}') == 1 ]] || fail "check e: expected the timed-out request in sb:rpc:{slow}"
start_worker python-slow worker.py RPC_ROUTE=slow
wait_until 10 "the expired request deleted" stream_empty 'sb:rpc:{slow}'
grep -q 'slow .* expired; not handling it' "$TMP/python-slow.log" || fail "check e: the worker did not see the request as expired"
grep -q 'slow .* -> late' "$TMP/python-slow.log" || fail "check e: sb_rpc_reply did not answer late"
stop_worker "$WORKER_PID" python-slow

echo "PASS: rpc workers (python, node) against two gateway nodes"
