#!/usr/bin/env bash
# New CONNECT tunnels through two Sluice binaries side by side, for the
# same-sitting A/B of a change (no peer): one echo origin per binary
# (sluice-loadgen echo), both binaries running at once, ROUNDS rounds that
# alternate A and B so that a busy spell of the machine hits both alike.
# Each round: TUNNELS tunnels (at most 10 s) from `sluice-loadgen tunnels`
# with 32 concurrent clients; the proxy's CPU ticks (user + system,
# /proc/PID/stat) over the round give CPU per tunnel.
#
#   bench/ab-tunnels.sh A_BIN B_BIN LOADGEN_BIN      # ROUNDS [3], TUNNELS [10000]
#   PROTO=socks5 bench/ab-tunnels.sh ...             # the SOCKS5 listener instead
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
A=$1 B=$2 LG=$3
ROUNDS=${ROUNDS:-3}
TUNNELS=${TUNNELS:-10000}
PROTO=${PROTO:-connect}
T=$(mktemp -d /tmp/sluice-abt.XXXXXX)
trap bench_cleanup EXIT
declare -A PID PORT ECHO
for who in a b; do ECHO[$who]=$(freeport); done
"$LG" echo "${ECHO[a]}" "${ECHO[b]}" >"$T/echo.log" 2>&1 &
pids+=($!)
for who in a b; do
    bin=$A; [[ $who == b ]] && bin=$B
    http=$(freeport); socks=$(freeport)
    bench_yaml "$http" "${ECHO[a]}, ${ECHO[b]}" "$T/$who-flows.jsonl" "$socks" >"$T/$who.yaml"
    RUST_LOG=warn "$bin" run -c "$T/$who.yaml" >"$T/$who.out" 2>"$T/$who.err" &
    PID[$who]=$!; pids+=($!)
    if [[ $PROTO == socks5 ]]; then PORT[$who]=$socks; else PORT[$who]=$http; fi
done
sleep 1.5
flag=()
[[ $PROTO == socks5 ]] && flag=(--socks5)
for round in $(seq "$ROUNDS"); do
    for who in a b; do
        t0=$(ticks "${PID[$who]}")
        out=$(timeout 40 "$LG" tunnels --proxy "127.0.0.1:${PORT[$who]}" "${flag[@]}" \
            --target "127.0.0.1:${ECHO[$who]}" --concurrency 32 --count "$TUNNELS" --seconds 10)
        t1=$(ticks "${PID[$who]}")
        python3 - "$who" "$round" "$out" "$((t1 - t0))" <<'PY'
import json, sys
who, rnd, out, ticks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
us = ticks * 10_000 / max(out["ok"], 1)
setup = out.get("setup_p99_ms")
setup = f" set-up p99 {setup:.2f} ms" if setup is not None else ""
print(f"round {rnd} {who}: {out['per_second']:.0f} tunnels/s p99 {out['p99_ms']:.1f} ms{setup} "
      f"errors {out['errors']} cpu {us:.0f} us/tunnel")
PY
    done
done
