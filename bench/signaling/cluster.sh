#!/usr/bin/env bash
# cluster.sh — Icebreaker signaling on one node against two nodes sharing rooms through
# Redis, with the same client (icebreaker-sigload) and the same loads in one run; the PeerJS
# server's idle memory as the anchor. Prints a Markdown table (medians over REPS).
#
#   cargo build --release -p icebreaker -p icebreaker-sigload
#   bench/signaling/cluster.sh
#   REPS=3 RATE=20000 PAIRS=100 bench/signaling/cluster.sh
#
# Setups (each started fresh per repetition, every load against each in turn):
#   single   one node, no --redis (the in-process bus): today's single-node figures
#   local    one node with --redis, both members of every pair on it (the Redis bus's cost
#            when no signal leaves the node: membership and seqs still go through Redis)
#   cross    two nodes with --redis, every pair split across them (--url2): every signal
#            goes node → Redis → node
# Loads:
#   idle     IDLE_N joined, silent connections; KiB of RSS per connection summed over every
#            process of the setup (both nodes and redis-server for cross), PeerJS beside it
#   paced    PAIRS pairs, SIZE-byte signals at RATE msg/s in total for DURATION_S s
#   max      PAIRS pairs as fast as they go, INFLIGHT undelivered per sender
# Server CPU is summed the same way (nodes + redis-server).
#
# Needs redis-server, node (for the PeerJS server) and the two release binaries. Everything
# binds 127.0.0.1 on free ports; the EXIT trap stops only what this script started.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

OURS_BIN=${OURS_BIN:-$root/target/release/icebreaker}
SIGLOAD_BIN=${SIGLOAD_BIN:-$root/target/release/icebreaker-sigload}
NODE_FLAGS=${NODE_FLAGS:-"--no-relay --rate-limit 100000 --rate-burst 100000 --max-connections-per-ip 1000000"}
IDLE_N=${IDLE_N:-10000}
HOLD_S=${HOLD_S:-5}
PAIRS=${PAIRS:-100}
RATE=${RATE:-20000}
DURATION_S=${DURATION_S:-10}
SIZE=${SIZE:-500}
INFLIGHT=${INFLIGHT:-8}
REPS=${REPS:-1}
LOADS=${LOADS:-"idle paced max"}
SETUPS=${SETUPS:-"single local cross"}
PAUSE_S=${PAUSE_S:-2}
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/icebreaker-bench/cluster}
mkdir -p "$BENCH_DIR"
log() { echo "[cluster.sh] $*" >&2; }

for b in "$OURS_BIN" "$SIGLOAD_BIN"; do
  [[ -x $b ]] || { log "no executable $b (cargo build --release -p icebreaker -p icebreaker-sigload)"; exit 2; }
done
command -v redis-server >/dev/null || { log "needs redis-server (apt-get install redis-server)"; exit 2; }
if [[ " $LOADS " == *" idle "* && ( ! -d $here/node_modules/peer ) ]]; then
  log "installing node dependencies (the PeerJS server)"
  (cd "$here" && timeout 300 npm ci --no-audit --no-fund >&2)
fi
want_fds=$(( (IDLE_N > 2 * PAIRS ? IDLE_N : 2 * PAIRS) + 256 ))
if (( $(ulimit -n) < want_fds )); then ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; fi

. "$here/lib.sh"  # pids, cleanup, free_port, wait_listening

# pid of the process listening on a port (the server, not its `timeout` parent)
listener_pid() {
  local port=$1 ino
  ino=$(awk -v p="$(printf '%04X' "$port")" '$4=="0A" && $2 ~ ":"p"$" {print $10; exit}' /proc/net/tcp)
  [[ -n $ino ]] || return 1
  for fd in /proc/[0-9]*/fd/*; do
    [[ $(readlink "$fd" 2>/dev/null) == "socket:[$ino]" ]] && { echo "$fd" | cut -d/ -f3; return 0; }
  done 2>/dev/null
  return 1
}

declare -A url url2 also
start() { # setup
  local s=$1 rport p1 p2
  case $s in
    single)
      p1=$(free_port)
      read -ra f <<<"$NODE_FLAGS"
      timeout -k 5 3600 "$OURS_BIN" --listen "127.0.0.1:$p1" "${f[@]}" >>"$BENCH_DIR/single.log" 2>&1 &
      pids+=($!); wait_listening single "$p1" "$!"
      url[single]="ws://127.0.0.1:$p1/ws"; url2[single]=""; also[single]=""
      ;;
    local|cross)
      rport=$(free_port)
      timeout -k 5 3600 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
        >>"$BENCH_DIR/redis-$s.log" 2>&1 &
      pids+=($!); wait_listening "redis-$s" "$rport" "$!"
      local rpid; rpid=$(listener_pid "$rport")
      read -ra f <<<"$NODE_FLAGS"
      p1=$(free_port)
      timeout -k 5 3600 "$OURS_BIN" --listen "127.0.0.1:$p1" "${f[@]}" --redis "redis://127.0.0.1:$rport/" \
        --node-id "$s-1" >>"$BENCH_DIR/$s-1.log" 2>&1 &
      pids+=($!); wait_listening "$s-1" "$p1" "$!"
      url[$s]="ws://127.0.0.1:$p1/ws"; url2[$s]=""; also[$s]="--also-pid $rpid"
      if [[ $s == cross ]]; then
        p2=$(free_port)
        timeout -k 5 3600 "$OURS_BIN" --listen "127.0.0.1:$p2" "${f[@]}" --redis "redis://127.0.0.1:$rport/" \
          --node-id "$s-2" >>"$BENCH_DIR/$s-2.log" 2>&1 &
        pids+=($!); wait_listening "$s-2" "$p2" "$!"
        url2[$s]="--url2 ws://127.0.0.1:$p2/ws"
        also[$s]="--also-pid $rpid --also-pid $(listener_pid "$p2")"
      fi
      ;;
    peerjs)
      : >"$BENCH_DIR/peerjs.out"
      timeout -k 5 3600 node "$here/peerjs-server.mjs" --port 0 >"$BENCH_DIR/peerjs.out" 2>>"$BENCH_DIR/peerjs.log" &
      pids+=($!)
      wait_listening peerjs "$BENCH_DIR/peerjs.out" "$!"
      url[peerjs]="ws://127.0.0.1:$(listening_port "$BENCH_DIR/peerjs.out")"
      url2[peerjs]=""; also[peerjs]=""
      ;;
  esac
}

results=$BENCH_DIR/results.jsonl
: >"$results"
status=0
run_load() { # setup load rep
  local s=$1 load=$2 rep=$3 rc=0 line target=ours
  [[ $s == peerjs ]] && target=peerjs
  local -a args=(--target "$target" --url "${url[$s]}" --label "$s/$load/$rep" --quiet)
  read -ra extra <<<"${url2[$s]} ${also[$s]}"
  case $load in
    idle)  args=(idle "${args[@]}" --connections "$IDLE_N" --hold-s "$HOLD_S") ;;
    paced) args=(throughput "${args[@]}" --pairs "$PAIRS" --rate "$RATE" --duration-s "$DURATION_S" --size "$SIZE") ;;
    max)   args=(throughput "${args[@]}" --pairs "$PAIRS" --rate 0 --inflight "$INFLIGHT" --duration-s "$DURATION_S" --size "$SIZE") ;;
  esac
  line=$(timeout -k 5 600 "$SIGLOAD_BIN" "${args[@]}" "${extra[@]}") || rc=$?
  [[ $line == \{* ]] || line=null
  echo "{\"setup\":\"$s\",\"load\":\"$load\",\"rep\":$rep,\"rc\":$rc,\"r\":$line}" >>"$results"
  log "$s $load rep $rep (exit $rc): $line"
  (( rc == 0 )) || status=1
  sleep "$PAUSE_S"
}

for rep in $(seq "$REPS"); do
  for load in idle paced max; do
    [[ " $LOADS " == *" $load "* ]] || continue
    setups=($SETUPS)
    [[ $load == idle ]] && setups=(peerjs "${setups[@]}")
    # alternate the order per repetition so machine noise hits every setup alike
    (( rep % 2 == 0 )) && setups=($(printf '%s\n' "${setups[@]}" | tac))
    for s in "${setups[@]}"; do
      # idle meets a fresh process (a grown heap would hide per-connection memory)
      start "$s"
      run_load "$s" "$load" "$rep"
      cleanup
    done
  done
done

python3 - "$results" <<'EOF' | tee "$BENCH_DIR/report.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(setup, load, key):
    v = [r["r"][key] for r in rows if r["setup"] == setup and r["load"] == load
         and r["r"] and r["r"].get(key) is not None]
    return statistics.median(v) if v else None
def f(x, d=1):
    return "–" if x is None else f"{x:.{d}f}"
setups = [s for s in ["single", "local", "cross"] if any(r["setup"] == s for r in rows)]
reps = max((r["rep"] for r in rows), default=0)
print(f"medians of {reps} run(s)\n")
if any(r["load"] == "idle" for r in rows):
    pj = med("peerjs", "idle", "kib_per_conn")
    print("| idle | KiB/conn (all processes) | × PeerJS | µs CPU/conn |")
    print("|---|---:|---:|---:|")
    print(f"| PeerJS | {f(pj, 2)} | 1.00 | {f(med('peerjs', 'idle', 'us_cpu_per_conn'), 0)} |")
    for s in setups:
        k = med(s, "idle", "kib_per_conn")
        ratio = None if (k is None or not pj) else k / pj
        print(f"| {s} | {f(k, 2)} | {f(ratio, 2)} | {f(med(s, 'idle', 'us_cpu_per_conn'), 0)} |")
    print()
for load in ["paced", "max"]:
    if not any(r["load"] == load for r in rows):
        continue
    base = med("single", load, "achieved_msgs_per_s")
    print(f"| {load} | msg/s | × single | p50 ms | p99 ms | max ms | server CPU % | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in setups:
        m = med(s, load, "achieved_msgs_per_s")
        ratio = None if (m is None or not base) else m / base
        lost = sum((r["r"] or {}).get("lost", 0) or 0 for r in rows if r["setup"] == s and r["load"] == load)
        print(f"| {s} | {f(m, 0)} | {f(ratio, 2)} | {f(med(s, load, 'latency_ms_p50'), 2)} | "
              f"{f(med(s, load, 'latency_ms_p99'), 2)} | {f(med(s, load, 'latency_ms_max'), 1)} | "
              f"{f(med(s, load, 'server_cpu_pct'), 0)} | {lost} |")
    print()
bad = [r for r in rows if r["rc"] != 0]
for r in bad:
    print(f"- {r['setup']}/{r['load']}/{r['rep']}: exit {r['rc']}, failures {(r['r'] or {}).get('failures')}")
EOF
exit $status
