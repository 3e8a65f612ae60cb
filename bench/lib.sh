# bench/lib.sh — what the relay benchmarks share; sourced (`. "$(dirname "$0")/lib.sh"`).
# Sets here (bench/), repo, shared (the team files: ../shared or $SHARED_DIR), BENCH_DIR
# (scratch: logs and results, exported for the shared scripts) and relay_bin (the release
# icebreaker-relay, built if missing).
here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
repo=$(dirname "$here")
shared=${SHARED_DIR:-$repo/../shared}
export BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/icebreaker-bench}
mkdir -p "$BENCH_DIR"
relay_bin=$repo/target/release/icebreaker-relay
[[ -x $relay_bin ]] || (cd "$repo" && cargo build --release -p icebreaker-relay)
