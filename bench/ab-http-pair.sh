#!/usr/bin/env bash
# Keep-alive HTTP through two Sluice binaries at the same time, for A/B runs
# on a machine shared with other work: each binary has its own origin
# (bench/origin.py) and its own `wrk -t1 -c16`, both run together, so a busy
# spell of the machine hits both alike. Per round: 2 s of warm-up, then 8 s
# while each process's CPU ticks (user + system, /proc/PID/stat) are counted.
#
#   bench/ab-http-pair.sh A_BIN B_BIN ROUNDS   # prints CPU per request of each
set -e
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
d=$(mktemp -d /tmp/sluice-ab-pair.XXXXXX); cd $d
# Everything started is stopped on an error or Ctrl-C too.
trap 'kill $(cat pids 2>/dev/null) 2>/dev/null' EXIT
start() { # bin port oport
python3 $here/origin.py http $3 > origin-$2.log 2>&1 &
echo $! >> pids
bench_yaml "$2" "$3" "$d/flows-$2.jsonl" > s-$2.yaml
RUST_LOG=warn "$1" run -c s-$2.yaml > out-$2.log 2> err-$2.log &
echo $! >> pids
SP=$!
cat > w-$2.lua <<W
wrk.path = "http://127.0.0.1:$3/bytes/100"
wrk.headers["Host"] = "127.0.0.1:$3"
W
}
# Started from this shell (not a subshell), so that `wait` reaps them.
start $1 18100 18101; PA=$SP
start $2 18102 18103; PB=$SP
sleep 1
uptime
for i in $(seq $3); do
  wrk -t1 -c16 -d2s -s w-18100.lua http://127.0.0.1:18100 >/dev/null & W=$!
  wrk -t1 -c16 -d2s -s w-18102.lua http://127.0.0.1:18102 >/dev/null; wait $W
  a0=$(awk '{print $14+$15}' /proc/$PA/stat); b0=$(awk '{print $14+$15}' /proc/$PB/stat)
  wrk -t1 -c16 -d8s -s w-18100.lua http://127.0.0.1:18100 > wa & W=$!
  wrk -t1 -c16 -d8s -s w-18102.lua http://127.0.0.1:18102 > wb; wait $W
  a1=$(awk '{print $14+$15}' /proc/$PA/stat); b1=$(awk '{print $14+$15}' /proc/$PB/stat)
  ra=$(awk '/requests in/{print $1}' wa); rb=$(awk '/requests in/{print $1}' wb)
  python3 -c "print('round $i: A', $ra, 'req', round(($a1-$a0)*10000/$ra,1), 'µs/req | B', $rb, 'req', round(($b1-$b0)*10000/$rb,1), 'µs/req')"
done
uptime
trap - EXIT
kill $(cat pids); wait 2>/dev/null || true
