#!/usr/bin/env bash
# run.sh — Icebreaker signaling and the PeerJS server side by side: the same client
# (load.mjs, or icebreaker-sigload with CLIENT=rust), the same loads, one run; prints a
# Markdown table with ours/PeerJS ratios.
#
#   bench/signaling/run.sh                                   # PeerJS only
#   OURS_BIN=target/release/icebreaker bench/signaling/run.sh
#   OURS_BIN=stub bench/signaling/run.sh                     # tests this tool (stub-v1.mjs)
#   REPS=3 IDLE_N=30000 bench/signaling/run.sh
#   CLIENT=rust OURS_BIN=target/release/icebreaker bench/signaling/run.sh
#
# Client (CLIENT, default node): node = load.mjs; rust = icebreaker-sigload (bench/sigload,
# same modes, options and JSON line, far less CPU per message, so "max" measures the servers
# rather than the client). Build it first: cargo build --release -p icebreaker-sigload.
# SIGLOAD_BIN overrides its path (default target/release/icebreaker-sigload), SIGLOAD_FLAGS
# adds flags (e.g. "--threads 1"). The table is made by load.mjs either way.
#
# Loads (LOADS, default "idle paced max"), each against every server, alternating which server
# goes first per repetition so machine noise hits both alike; medians over REPS:
#   idle   IDLE_N joined, silent connections: server KiB of RSS and µs of CPU per connection
#   paced  PAIRS pairs, SIZE-byte signals at RATE msg/s in total for DURATION_S s: latency, loss
#   max    PAIRS pairs as fast as they go, INFLIGHT undelivered per sender, for MAX_DURATION_S s
#
# Everything binds 127.0.0.1. Both servers run under `timeout`, every load too, and the EXIT
# trap stops the servers this script started (and nothing else). Scratch files and the raw
# results (results.jsonl, one client JSON line per load) go to BENCH_DIR. Exit status 1 if
# any load reported failures (the table lists them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# --- Our server's interface: edit here when the binary's flags change. {PORT} becomes a free
# port. OURS_BIN may be several words ("node path.mjs"); "stub" means stub-v1.mjs.
OURS_BIN=${OURS_BIN:-}
OURS_FLAGS=${OURS_FLAGS:-"--listen 127.0.0.1:{PORT} --no-relay --rate-limit 100000 --max-connections-per-ip 1000000"}
OURS_WS_PATH=${OURS_WS_PATH:-/ws}

# --- Client.
CLIENT=${CLIENT:-node}
SIGLOAD_BIN=${SIGLOAD_BIN:-$here/../../target/release/icebreaker-sigload}
SIGLOAD_FLAGS=${SIGLOAD_FLAGS:-}

# --- Loads.
IDLE_N=${IDLE_N:-10000}
HOLD_S=${HOLD_S:-5}
PAIRS=${PAIRS:-100}
RATE=${RATE:-20000}
DURATION_S=${DURATION_S:-10}
MAX_DURATION_S=${MAX_DURATION_S:-$DURATION_S}
SIZE=${SIZE:-500}
INFLIGHT=${INFLIGHT:-8}
REPS=${REPS:-1}
LOADS=${LOADS:-"idle paced max"}
PAUSE_S=${PAUSE_S:-2}          # between loads: lets the server finish tearing down connections
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/icebreaker-bench/signaling}
mkdir -p "$BENCH_DIR"
log() { echo "[run.sh] $*" >&2; }

# Per-load time limits (the client has its own watchdog too; these catch a wedged one).
idle_limit=$((90 + IDLE_N / 100 + HOLD_S))
paced_limit=$((90 + PAIRS / 50 + DURATION_S))
max_limit=$((90 + PAIRS / 50 + MAX_DURATION_S))
SERVER_MAX_S=${SERVER_MAX_S:-$(((idle_limit + paced_limit + max_limit + 3 * PAUSE_S) * 2 + 120))}  # one repetition

case $CLIENT in
  node) client_cmd=(node "$here/load.mjs") ;;
  rust)
    if [[ ! -x $SIGLOAD_BIN ]]; then
      log "CLIENT=rust: no executable $SIGLOAD_BIN (cargo build --release -p icebreaker-sigload, or set SIGLOAD_BIN)"
      exit 2
    fi
    read -ra sigload_flags <<<"$SIGLOAD_FLAGS"
    client_cmd=("$SIGLOAD_BIN" "${sigload_flags[@]}")
    ;;
  *) log "CLIENT must be node or rust, got $CLIENT"; exit 2 ;;
esac
log "client: ${client_cmd[*]}"

# --- Dependencies (package-lock.json pins them).
if [[ ! -d $here/node_modules/peer || ! -d $here/node_modules/ws ]]; then
  log "installing node dependencies"
  (cd "$here" && timeout 300 npm ci --no-audit --no-fund >&2)
fi

# --- File descriptors: the client and each server hold one per connection (each its own
# limit, inherited from here). Raising the hard limit needs CAP_SYS_RESOURCE; without it
# (some containers, even as root) a server can't hold more than the hard limit.
want_fds=$(( (IDLE_N > 2 * PAIRS ? IDLE_N : 2 * PAIRS) + 256 ))
if (( $(ulimit -n) < want_fds )); then
  ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
if (( $(ulimit -n) < want_fds )); then
  log "open-file limit is $(ulimit -n) (hard $(ulimit -Hn)), need $want_fds for IDLE_N=$IDLE_N / PAIRS=$PAIRS;" \
    "raise the hard limit (needs CAP_SYS_RESOURCE) or lower IDLE_N"
  exit 2
fi

# --- Servers (bench/signaling/lib.sh: pids, cleanup, free_port, wait_listening).
. "$here/lib.sh"
status=0
declare -A url

# Servers are (re)started for every repetition: a process that already served a load keeps
# its grown heap, and the next idle run would then read far less memory per connection.
start_servers() {
  : >"$BENCH_DIR/peerjs.out"  # before the fork: a stale "listening" line must not be read
  timeout -k 5 "$SERVER_MAX_S" node "$here/peerjs-server.mjs" --port 0 \
    >"$BENCH_DIR/peerjs.out" 2>>"$BENCH_DIR/peerjs.log" &
  pids+=($!)
  wait_listening peerjs "$BENCH_DIR/peerjs.out" "$!"
  url[peerjs]="ws://127.0.0.1:$(listening_port "$BENCH_DIR/peerjs.out")"
  if [[ -n $OURS_BIN ]]; then
    local port flags
    port=$(free_port)
    read -ra flags <<<"${OURS_FLAGS//\{PORT\}/$port}"
    timeout -k 5 "$SERVER_MAX_S" "${ours_cmd[@]}" "${flags[@]}" \
      >"$BENCH_DIR/ours.out" 2>>"$BENCH_DIR/ours.log" &
    pids+=($!)
    wait_listening ours "$port" "$!"
    url[ours]="ws://127.0.0.1:$port$OURS_WS_PATH"
  fi
  log "servers: $(for s in "${servers[@]}"; do printf '%s=%s ' "$s" "${url[$s]}"; done)"
}
stop_servers() {
  local p
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { log "a server exited during the run (see $BENCH_DIR/*.log)"; status=1; }
  done
  cleanup
}

servers=(peerjs)
if [[ -n $OURS_BIN ]]; then
  [[ $OURS_BIN == stub ]] && OURS_BIN="node $here/stub-v1.mjs"
  read -ra ours_cmd <<<"$OURS_BIN"
  log "ours: ${ours_cmd[*]} $OURS_FLAGS"
  servers+=(ours)
else
  log "OURS_BIN not set: measuring PeerJS only"
fi
: >"$BENCH_DIR/peerjs.log"; : >"$BENCH_DIR/ours.log"

# --- Loads. The server pid is found by load.mjs from the listening port (it may be a child
# of the timeout process, or of a wrapper script).
results=$BENCH_DIR/results.jsonl
: >"$results"
run_load() { # server load rep
  local server=$1 load=$2 rep=$3 rc=0 line limit
  local -a args=(--target "$server" --url "${url[$server]}" --label "$server/$load/$rep" --quiet)
  case $load in
    idle)  limit=$idle_limit;  args=(idle "${args[@]}" --connections "$IDLE_N" --hold-s "$HOLD_S") ;;
    paced) limit=$paced_limit; args=(throughput "${args[@]}" --pairs "$PAIRS" --rate "$RATE" --duration-s "$DURATION_S" --size "$SIZE") ;;
    max)   limit=$max_limit;   args=(throughput "${args[@]}" --pairs "$PAIRS" --rate 0 --inflight "$INFLIGHT" --duration-s "$MAX_DURATION_S" --size "$SIZE") ;;
  esac
  line=$(timeout -k 5 "$limit" "${client_cmd[@]}" "${args[@]}") || rc=$?
  [[ $line == \{* ]] || line=null
  echo "{\"server\":\"$server\",\"load\":\"$load\",\"rep\":$rep,\"rc\":$rc,\"r\":$line}" >>"$results"
  log "$server $load rep $rep (exit $rc): $line"
  (( rc == 0 )) || status=1
  sleep "$PAUSE_S"
}

# idle goes first so it always meets freshly started servers.
loads=()
for load in $LOADS; do [[ $load =~ ^(idle|paced|max)$ ]] || { log "unknown load $load"; exit 2; }; done
for load in idle paced max; do [[ " $LOADS " == *" $load "* ]] && loads+=("$load"); done
for rep in $(seq "$REPS"); do
  start_servers
  order=("${servers[@]}")
  (( rep % 2 == 0 && ${#servers[@]} == 2 )) && order=("${servers[1]}" "${servers[0]}")
  for load in "${loads[@]}"; do
    for server in "${order[@]}"; do run_load "$server" "$load" "$rep"; done
  done
  stop_servers
done

{
  echo "Signaling load, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, node $(node --version), client $CLIENT."
  echo "idle: $IDLE_N connections; paced: $PAIRS pairs, $SIZE B signals, $RATE msg/s for $DURATION_S s;" \
    "max: $PAIRS pairs, $INFLIGHT in flight each, $MAX_DURATION_S s. Client and servers share the machine."
  echo
  node "$here/load.mjs" report "$results"
} | tee "$BENCH_DIR/report.md"
exit "$status"
