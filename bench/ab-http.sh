#!/usr/bin/env bash
# Keep-alive HTTP through one Sluice binary, for same-sitting A/B runs of two
# builds (no peer): an origin (bench/origin.py) on 127.0.0.1:18081, Sluice on
# :18080 allowing it, 3 s of wrk warm-up, then 8 s of `wrk -t2 -c32` while
# Sluice's CPU ticks (user + system, /proc/PID/stat) are counted.
#
#   bench/ab-http.sh BIN LABEL     # prints req/s, latency and CPU ticks
#   for i in 1 2 3; do bench/ab-http.sh A a; bench/ab-http.sh B b; done
set -e
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
cd "$(mktemp -d /tmp/sluice-ab.XXXXXX)"
BIN=$1; L=$2
python3 "$here/origin.py" http 18081 > origin.log 2>&1 &
OP=$!
bench_yaml 18080 18081 "$PWD/flows-$L.jsonl" > s.yaml
RUST_LOG=warn "$BIN" run -c s.yaml > out.log 2> err.log &
SP=$!
sleep 1
cat > w.lua <<W
wrk.path = "http://127.0.0.1:18081/bytes/100"
wrk.headers["Host"] = "127.0.0.1:18081"
W
wrk -t2 -c32 -d3s -s w.lua http://127.0.0.1:18080 > /dev/null
t0=$(ticks "$SP")
wrk -t2 -c32 -d8s -s w.lua http://127.0.0.1:18080 | grep -E "Requests/sec|Latency"
t1=$(ticks "$SP")
echo "sluice CPU ticks (10 ms) during the 8 s run: $((t1-t0))"
kill $SP $OP 2>/dev/null; wait 2>/dev/null || true
rm -f "$PWD/flows-$L.jsonl"
