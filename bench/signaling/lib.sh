# bench/signaling/lib.sh — what run.sh and cluster.sh share; sourced after BENCH_DIR and
# `log` are set. Servers are started under `timeout` and their pids kept in `pids`: the
# EXIT trap (and `cleanup`) signals only those, and `timeout` passes TERM on to its server.
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits up to 15 s for server NAME (started as PID, logging to $BENCH_DIR/NAME.log) to
# listen: on a port, or, given a file, until the file has a `listening PORT` line.
wait_listening() { # name port-or-file pid
  local i
  for i in $(seq 150); do
    kill -0 "$3" 2>/dev/null || { log "$1 exited early:"; tail -n 20 "$BENCH_DIR/$1.log" >&2; exit 1; }
    if [[ $2 =~ ^[0-9]+$ ]]; then
      (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    elif grep -q '^listening ' "$2" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  log "$1 did not start listening within 15 s"; exit 1
}

# The port in a `listening PORT` line of FILE (the PeerJS wrapper prints one).
listening_port() { awk '/^listening /{print $2; exit}' "$1"; }
