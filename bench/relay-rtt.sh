#!/usr/bin/env bash
# relay-rtt.sh — the round trip a relay adds, icebreaker-relay beside coturn in one run:
# ../shared/bench/turn-rtt.py (one allocation, ChannelData ping-pong to an echo peer, and the
# same ping-pong direct) against each server in turn, REPS times, alternating. Prints a
# Markdown table of medians (µs). BASELINE=path/to/an/older/icebreaker-relay adds that build.
#
#   bench/relay-rtt.sh                 # REPS=5 COUNT=5000
set -euo pipefail
. "$(dirname "$0")/lib.sh"
REPS=${REPS:-5}
COUNT=${COUNT:-5000}
COTURN_PORT=${COTURN_PORT:-3579}
OURS_PORT=${OURS_PORT:-3679}
BASE_PORT=${BASE_PORT:-3779}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  bash "$shared/bench/coturn.sh" stop lt "$COTURN_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT
bash "$shared/bench/coturn.sh" start lt "$COTURN_PORT" >/dev/null
start() { # bin port ports
  "$1" --listen "127.0.0.1:$2" --user test:test --realm example.org --allow-peer 127.0.0.0/8 \
    --relay-ports "$3" --log warn >"$BENCH_DIR/rtt-$2.log" 2>&1 &
  pids+=($!)
}
start "$relay_bin" "$OURS_PORT" 54000-55999
servers="coturn:$COTURN_PORT ours:$OURS_PORT"
if [[ -n ${BASELINE:-} ]]; then start "$BASELINE" "$BASE_PORT" 56000-57999; servers="coturn:$COTURN_PORT base:$BASE_PORT ours:$OURS_PORT"; fi
sleep 0.5
results=$BENCH_DIR/rtt.jsonl
: >"$results"
for rep in $(seq "$REPS"); do
  for s in $servers; do
    line=$(python3 "$shared/bench/turn-rtt.py" --port "${s##*:}" --count "$COUNT" --peer-port 3470 2>/dev/null || echo null)
    echo "{\"server\":\"${s%%:*}\",\"r\":$line}" >>"$results"
    echo "${s%%:*} rep $rep: $line" >&2
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def get(r, key):
    k, _, q = key.partition(".")
    v = r.get(k)
    return v.get(q) if q and isinstance(v, dict) else (None if q else v)
def med(server, key):
    xs = [get(r["r"], key) for r in rows if r["server"] == server and r["r"]]
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
print("| server | direct p50 µs | via relay p50 µs | via relay p99 µs | added p50 µs | added vs coturn |")
print("|---|---|---|---|---|---|")
base = med("coturn", "relay_overhead_us_p50")
for s, name in (("coturn", "coturn 4.6.1"), ("base", "icebreaker-relay (baseline)"), ("ours", "icebreaker-relay")):
    o = med(s, "relay_overhead_us_p50")
    if o is None:
        continue
    ratio = f"**{o / base:.2f}×**" if s != "coturn" and base else ""
    print(f"| {name} | {med(s, 'direct_rtt_us.p50'):.1f} | {med(s, 'turn_rtt_us.p50'):.1f} | {med(s, 'turn_rtt_us.p99'):.1f} | {o:.1f} | {ratio} |")
PY
