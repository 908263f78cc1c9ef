#!/usr/bin/env bash
# One bulk CONNECT tunnel through one Sluice binary against direct, for
# same-sitting A/B runs of two builds (no peer): the bulk origin
# (bench/origin.py bulk) on 127.0.0.1:18091, Sluice on :18090 allowing it;
# each round downloads MIB MiB with curl directly, then through the proxy
# (`curl -p -x`: a CONNECT tunnel even for http://), and prints both rates,
# their ratio and Sluice's CPU ticks (10 ms, user + system, /proc/PID/stat)
# for the proxied download. Direct varies from round to round on a shared
# machine: alternate the binaries and compare ratios and CPU, not rates.
#
#   bench/ab-bulk.sh BIN [ROUNDS=3] [MIB=2048]
#   for i in 1 2 3; do bench/ab-bulk.sh A 2; bench/ab-bulk.sh B 2; done
set -e
BIN=$1; R=${2:-3}; MIB=${3:-2048}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
cd "$(mktemp -d /tmp/sluice-ab-bulk.XXXXXX)"
python3 "$here/origin.py" bulk 18091 > origin.log 2>&1 &
OP=$!
bench_yaml 18090 18091 "$PWD/flows.jsonl" > s.yaml
RUST_LOG=warn "$BIN" run -c s.yaml > out.log 2> err.log &
SP=$!
trap 'kill $SP $OP 2>/dev/null || true' EXIT
sleep 1
N=$((MIB * 1024 * 1024))
for _ in $(seq "$R"); do
  d=$(curl -s -o /dev/null -w '%{speed_download}' "http://127.0.0.1:18091/bytes/$N")
  t0=$(ticks "$SP")
  s=$(curl -s -p -x http://127.0.0.1:18090 -o /dev/null -w '%{speed_download}' "http://127.0.0.1:18091/bytes/$N")
  t1=$(ticks "$SP")
  awk -v d="$d" -v s="$s" -v t=$((t1 - t0)) -v m="$MIB" 'BEGIN {
    printf "direct %.0f MiB/s  sluice %.0f MiB/s  ratio %.2f  sluice CPU %d ticks = %.0f ms per GiB\n",
      d / 1048576, s / 1048576, s / d, t, t * 10 * 1024 / m }'
done
rm -f flows.jsonl
