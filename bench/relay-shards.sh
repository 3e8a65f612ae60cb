#!/usr/bin/env bash
# relay-shards.sh — how the kernel's SO_REUSEPORT hashing spreads clients over the relay's
# shards: for each client count, a fresh icebreaker-relay (THREADS shards) carries a short
# uclient load (every 1 ms, echo peer), and its /metrics give each shard's share of the
# relayed packets. Prints a Markdown table; REPS runs per count (each run hashes anew:
# uclient's source ports are random).
#
#   bench/relay-shards.sh                  # THREADS=2 COUNTS="2 4 8 50" REPS=3
set -euo pipefail
. "$(dirname "$0")/lib.sh"
THREADS=${THREADS:-2}
COUNTS=${COUNTS:-"2 4 8 50"}
REPS=${REPS:-3}
PORT=${PORT:-3689}
pid=""
trap '[[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true' EXIT
echo "| clients | run | packets per shard (share) | busiest shard / even share |"
echo "|---|---|---|---|"
for c in $COUNTS; do
  for rep in $(seq "$REPS"); do
    "$relay_bin" --listen "127.0.0.1:$PORT" --user test:test --realm example.org --allow-peer 127.0.0.0/8 \
      --relay-ports 54000-57999 --threads "$THREADS" --metrics-listen 127.0.0.1:0 --log info >"$BENCH_DIR/shards.log" 2>&1 &
    pid=$!
    sleep 0.5
    maddr=$(grep -o 'metrics on.*addr=[0-9.:]*' "$BENCH_DIR/shards.log" | grep -o '[0-9.]*:[0-9]*$')
    CLIENTS=$c INTERVAL_MS=1 SEND_SECONDS=3 PEER_PORT=3497 bash "$shared/bench/turn-load.sh" "$PORT" >/dev/null 2>&1 || true
    curl -s "http://$maddr/metrics" | python3 -c '
import re, sys
c, rep, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
per = {}
for l in sys.stdin:
    m = re.match(r"icebreaker_relay_packets_total\{.*shard=\"(\d+)\".*\} (\d+)", l)
    if m:
        per[int(m.group(1))] = per.get(int(m.group(1)), 0) + int(m.group(2))
tot = sum(per.values()) or 1
cells = ", ".join(f"{per.get(s, 0)} ({100 * per.get(s, 0) / tot:.0f} %)" for s in range(n))
print(f"| {c} | {rep} | {cells} | {max(per.values(), default=0) * n / tot:.2f} |")
' "$c" "$rep" "$THREADS"
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
