#!/usr/bin/env bash
# relay-tls-vs-coturn.sh — TURN over TLS: icebreaker-relay (--tls-listen) and coturn
# (--tls-listening-port) side by side in one run, same certificate, same client (coturn's
# turnutils_uclient -t -S: TLS over TCP, ChannelData, 100 B to an echo peer), alternating
# servers per repetition. Prints a Markdown table of server CPU per echoed message.
#
#   bench/relay-tls-vs-coturn.sh                 # LOADS="20:5 50:5", 3 repetitions
#   REPS=5 LOADS="50:2" bench/relay-tls-vs-coturn.sh
#   PROTO=dtls bench/relay-tls-vs-coturn.sh      # TURN over DTLS (RFC 7350): uclient -S
#                                                # over UDP, to the same ports' UDP side
#
# LOADS: CLIENTS:INTERVAL_MS. Everything binds 127.0.0.1; only processes started here are
# stopped. Needs coturn (turnserver, turnutils_*) and openssl.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
REPS=${REPS:-3}
LOADS=${LOADS:-"20:5 50:5"}
SEND_SECONDS=${SEND_SECONDS:-8}
PROTO=${PROTO:-tls}
case $PROTO in
  tls)  tcp_flag=(-t); coturn_dtls=(--no-dtls); label="TLS over TCP" ;;
  dtls) tcp_flag=();   coturn_dtls=(--no-tls);  label="DTLS over UDP" ;;
  *) echo "PROTO is tls or dtls" >&2; exit 2 ;;
esac
work=$(mktemp -d "${TMPDIR:-/tmp}/icebreaker-tls-bench.XXXXXX")
for t in turnserver turnutils_uclient turnutils_peer openssl; do
  command -v $t >/dev/null || { echo "need $t (apt-get install -y coturn openssl)" >&2; exit 1; }
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$work/key.pem" -out "$work/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

turnserver -n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port 3778 \
  --tls-listening-port 5778 --cert "$work/cert.pem" --pkey "$work/key.pem" "${coturn_dtls[@]}" --no-cli \
  --no-rfc5780 --fingerprint --realm example.org --lt-cred-mech --user test:test \
  --allow-loopback-peers --min-port 50000 --max-port 51999 --max-allocate-lifetime=120 \
  --db "$work/turndb" --log-file "$work/coturn.log" --simple-log --no-stdout-log \
  --relay-threads 2 >/dev/null 2>&1 &
pids+=($!); coturn_pid=$!
"$relay_bin" --listen 127.0.0.1:3878 --tls-listen 127.0.0.1:5878 --cert "$work/cert.pem" \
  --key "$work/key.pem" --user test:test --realm example.org --allow-peer 127.0.0.0/8 \
  --relay-ports 54000-55999 --default-lifetime 60 --max-lifetime 120 --log warn >"$work/ours.log" 2>&1 &
pids+=($!); ours_pid=$!
turnutils_peer -L 127.0.0.1 -p 3890 >/dev/null 2>&1 &
pids+=($!)
sleep 1

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime+stime, clock ticks
tick=$(getconf CLK_TCK)
results=$work/results.txt
: >"$results"
for load in $LOADS; do
  c=${load%%:*}; i=${load##*:}
  n=$(( SEND_SECONDS * 1000 / i ))
  for rep in $(seq "$REPS"); do
    for server in coturn ours; do
      if [[ $server == coturn ]]; then pid=$coturn_pid port=5778; else pid=$ours_pid port=5878; fi
      before=$(cpu "$pid")
      out=$(timeout 120 turnutils_uclient "${tcp_flag[@]}" -S -p "$port" -e 127.0.0.1 -r 3890 -c -u test -w test \
        -m "$c" -n "$n" -l 100 -z "$i" 127.0.0.1 2>&1 || true)
      after=$(cpu "$pid")
      # A run that never finished (uclient killed by the timeout) prints no totals: it
      # counts as nothing echoed of what it was to send, not as the end of the benchmark.
      recv=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2 || true)
      sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2 || true)
      [[ -n $sent ]] || { sent=$(( c * n )); echo "$server $load rep $rep: uclient did not finish" >&2; }
      echo "$load $server ${sent:-0} ${recv:-0} $(( after - before ))" >>"$results"
      echo "$server $load rep $rep: sent=${sent:-?} recv=${recv:-?} cpu_ticks=$(( after - before ))" >&2
    done
  done
done

python3 - "$results" "$tick" "$label" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
tick = int(sys.argv[2])
print(f"| load ({sys.argv[3]}, ChannelData, 100 B, echo peer) | server | echoed | loss % | server CPU µs/msg | msgs per CPU-s vs coturn |")
print("|---|---|---|---|---|---|")
for load in dict.fromkeys(r[0] for r in rows):
    us = {}
    for server, name in (("coturn", "coturn 4.6.1"), ("ours", "icebreaker-relay")):
        rs = [r for r in rows if r[0] == load and r[1] == server]
        per = [int(r[4]) * 1e6 / tick / int(r[3]) for r in rs if int(r[3]) > 0]
        loss = [100 * (int(r[2]) - int(r[3])) / int(r[2]) for r in rs if int(r[2]) > 0]
        us[server] = statistics.median(per) if per else None
        ratio = f"**{us['coturn'] / us['ours']:.2f}×**" if server == "ours" and us["ours"] and us["coturn"] else ""
        c, i = load.split(":")
        echoed = statistics.median(int(r[3]) for r in rs) if rs else 0
        fmt = lambda v, p: p.format(v) if v is not None else "n/a"
        print(f"| {c} clients every {i} ms | {name} | {echoed:.0f} | {fmt(statistics.median(loss) if loss else None, '{:.2f}')} | {fmt(us[server], '{:.1f}')} | {ratio} |")
PY
