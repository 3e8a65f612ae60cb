# bench/lib.sh — what the relay benchmarks share; sourced (`. "$(dirname "$0")/lib.sh"`).
# Sets here (bench/), repo, shared (the team files: ../shared or $SHARED_DIR), BENCH_DIR
# (scratch: logs and results, exported for the shared scripts) and relay_bin (the release
# icebreaker-relay, built if missing; RELAY_BIN= another build, e.g. an older commit).
here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
repo=$(dirname "$here")
shared=${SHARED_DIR:-$repo/../shared}
export BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/icebreaker-bench}
mkdir -p "$BENCH_DIR"
relay_bin=${RELAY_BIN:-$repo/target/release/icebreaker-relay}
[[ -x $relay_bin ]] || (cd "$repo" && cargo build --release -p icebreaker-relay)
