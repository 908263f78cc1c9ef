#!/usr/bin/env bash
# Keep-alive HTTP through Sluice with and without live-stream subscribers on
# the admin listener, in one sitting: an origin (bench/origin.py), Sluice
# with `listen.http` and `listen.admin` on free loopback ports, then for each
# subscriber count N: N clients of /api/v1/flows/stream (bench/sse-client.py,
# one Python process reading every stream and counting its events), 3 s of
# wrk warm-up, 8 s of `wrk -t2 -c32` while Sluice's CPU ticks are counted.
#
#   bench/sse-subscribers.sh BIN [N...]     # default N: 0 128
#
# Prints, per N: requests/s, latency, Sluice's CPU µs per request, and the
# events the subscribers received (and were told they skipped).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$(realpath "$1"); shift
COUNTS=("${@:-0 128}")
# shellcheck disable=SC2206
COUNTS=(${COUNTS[*]})
work=$(mktemp -d /tmp/sluice-sse.XXXXXX)
cd "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OPORT=$(free_port); HPORT=$(free_port); APORT=$(free_port)
python3 "$here/origin.py" http "$OPORT" > origin.log 2>&1 &
pids+=($!)
cat > s.yaml <<Y
listen:
  http: 127.0.0.1:$HPORT
  admin: 127.0.0.1:$APORT
admin:
  max_streams: 96
zones:
  - name: bench
    sources: [127.0.0.0/8]
    mode: enforce
    allow:
      - cidr: 127.0.0.1/32
        ports: [$OPORT]
limits:
  max_connections: 100000
  max_connections_per_source: 100000
log:
  flows: $work/flows.jsonl
Y
cat > w.lua <<W
wrk.path = "http://127.0.0.1:$OPORT/bytes/100"
wrk.headers["Host"] = "127.0.0.1:$OPORT"
W
for n in "${COUNTS[@]}"; do
  RUST_LOG=warn "$BIN" run -c s.yaml > out.log 2> err.log &
  sp=$!; pids+=($sp)
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$APORT/healthz" > /dev/null && break; sleep 0.1; done
  cp_=""
  if [ "$n" -gt 0 ]; then
    python3 "$here/sse-client.py" "127.0.0.1:$APORT" "$n" > sse.out 2>&1 &
    cp_=$!; pids+=($cp_)
    sleep 1
  fi
  wrk -t2 -c32 -d3s -s w.lua "http://127.0.0.1:$HPORT" > /dev/null
  t0=$(awk '{print $14+$15}' /proc/$sp/stat)
  out=$(wrk -t2 -c32 -d8s -s w.lua "http://127.0.0.1:$HPORT")
  t1=$(awk '{print $14+$15}' /proc/$sp/stat)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  lat=$(echo "$out" | awk '/Latency/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "subscribers=$n req/s=$rps latency=$lat sluice_cpu_us_per_request=$(( (t1-t0) * 10000 / reqs ))"
  if [ -n "$cp_" ]; then
    kill -INT "$cp_"; wait "$cp_" 2>/dev/null || true
    cat sse.out
  fi
  kill "$sp"; wait "$sp" 2>/dev/null || true
done
