#!/usr/bin/env bash
# relay-vs-coturn.sh — icebreaker-relay and coturn side by side in one run, same loads,
# same client (coturn's turnutils_uclient via ../shared/bench/turn-load.sh), alternating
# servers per repetition so machine noise hits both alike. Prints a Markdown table.
#
#   bench/relay-vs-coturn.sh              # default loads, 3 repetitions
#   REPS=5 LOADS="50:5 50:1 100:1" bench/relay-vs-coturn.sh
#
# LOADS: CLIENTS:INTERVAL_MS pairs (UDP, ChannelData, 100 B, echo peer). Everything binds
# 127.0.0.1; the servers are stopped at the end (only the processes started here).
# BASELINE=path/to/an/older/icebreaker-relay adds a third server, so a change to the data
# path is measured against the build before it in the same run (`base` rows).
# MODE=c2c: allocations relay to each other (turn-load.sh's client-to-client load).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[[ -x $shared/bench/turn-load.sh || -f $shared/bench/turn-load.sh ]] || { echo "need $shared/bench (team files)" >&2; exit 1; }
REPS=${REPS:-3}
LOADS=${LOADS:-"50:5 50:1 100:1"}
PROTO=${PROTO:-udp}
COTURN_PORT=${COTURN_PORT:-3578}
OURS_PORT=${OURS_PORT:-3678}

ours_pid=""
base_pid=""
BASE_PORT=${BASE_PORT:-3778}
cleanup() {
  [[ -n $ours_pid ]] && kill "$ours_pid" 2>/dev/null && wait "$ours_pid" 2>/dev/null || true
  [[ -n $base_pid ]] && kill "$base_pid" 2>/dev/null && wait "$base_pid" 2>/dev/null || true
  bash "$shared/bench/coturn.sh" stop lt "$COTURN_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

bash "$shared/bench/coturn.sh" start lt "$COTURN_PORT" >/dev/null
# Same users, realm and lifetime cap as the coturn script; loopback peers allowed.
"$relay_bin" --listen "127.0.0.1:$OURS_PORT" --user test:test --realm example.org \
  --allow-peer 127.0.0.0/8 --relay-ports 54000-57999 --default-lifetime 60 --max-lifetime 120 \
  --log warn >"$BENCH_DIR/ours.log" 2>&1 &
ours_pid=$!
servers="coturn ours"
if [[ -n ${BASELINE:-} ]]; then
  "$BASELINE" --listen "127.0.0.1:$BASE_PORT" --user test:test --realm example.org \
    --allow-peer 127.0.0.0/8 --relay-ports 58000-61999 --default-lifetime 60 --max-lifetime 120 \
    --log warn >"$BENCH_DIR/base.log" 2>&1 &
  base_pid=$!
  servers="coturn base ours"
fi
sleep 0.5

results=$BENCH_DIR/results.jsonl
: >"$results"
for load in $LOADS; do
  c=${load%%:*}; i=${load##*:}
  for rep in $(seq "$REPS"); do
    for server in $servers; do
      port=$COTURN_PORT; [[ $server == ours ]] && port=$OURS_PORT; [[ $server == base ]] && port=$BASE_PORT
      line=$(CLIENTS=$c INTERVAL_MS=$i PROTO=$PROTO MODE=${MODE:-peer} PEER_PORT=$((3490 + rep)) bash "$shared/bench/turn-load.sh" "$port" 2>/dev/null || true)
      echo "{\"server\":\"$server\",\"load\":\"$load\",\"rep\":$rep,\"r\":${line:-null}}" >>"$results"
      echo "$server $load rep $rep: $line" >&2
    done
  done
done

python3 - "$results" "$PROTO ${MODE:-peer}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
proto = sys.argv[2]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
print(f"| load ({proto}, ChannelData, 100 B, echo peer) | server | msgs/s (plateau) | loss % | server CPU µs/msg | msgs per CPU-s vs coturn |")
print("|---|---|---|---|---|---|")
for load in dict.fromkeys(r["load"] for r in rows):
    stats = {}
    for server in ("coturn", "base", "ours"):
        rs = [r["r"] for r in rows if r["load"] == load and r["server"] == server and r["r"]]
        stats[server] = dict(
            mps=med(r.get("plateau_msgs_s") or r.get("peak_1s_msgs_s") for r in rs),
            loss=med(r.get("loss_pct") for r in rs),
            us=med(r.get("server_us_per_msg") for r in rs),
        )
    c, i = load.split(":")
    for server, name in (("coturn", "coturn 4.6.1"), ("base", "icebreaker-relay (baseline)"), ("ours", "icebreaker-relay")):
        s = stats[server]
        if s["us"] is None and server == "base":
            continue
        ratio = ""
        if server != "coturn" and s["us"] and stats["coturn"]["us"]:
            ratio = f"**{stats['coturn']['us'] / s['us']:.2f}×**"
        fmt = lambda v, p="{:.0f}": (p.format(v) if v is not None else "n/a")
        print(f"| {c} clients every {i} ms | {name} | {fmt(s['mps'])} | {fmt(s['loss'], '{:.2f}')} | {fmt(s['us'], '{:.1f}')} | {ratio} |")
PY
