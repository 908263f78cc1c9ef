#!/usr/bin/env bash
# NetFlow ingest: Sluice's collector (`listen.netflow`) against nfcapd
# (nfdump), fed the same IPFIX and v5 datagrams at the same offered rates,
# taking turns, in one run; and Sluice's memory with 100 exporters and
# their templates. See bench/README.md ("NetFlow collector").
#
#   apt-get install -y nfdump python3   # once
#   bench/netflow.sh                    # ~2 minutes after the build
#
# Knobs: ROUNDS [3], SECONDS_PER_RATE [3], RATES ["100000 300000 1000000"]
# offered flows/s, FORMATS ["ipfix v5"]; SLUICE_BIN=path skips the build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "netflow.sh: $*" >&2; }
command -v nfcapd >/dev/null || { echo "error: nfcapd not found (apt-get install nfdump)" >&2; exit 2; }
if [[ -z ${SLUICE_BIN:-} ]]; then
    log "building sluice (release)"
    (cd "$root" && cargo build --release -p sluice -q)
    SLUICE_BIN=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/sluice
fi
out=$(mktemp -d /tmp/sluice-bench-netflow.XXXXXX)
trap 'rm -rf "$out"' EXIT
rev=$(cd "$root" && git rev-parse --short HEAD)
{
    echo "## NetFlow ingest, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $rev"
    echo
    echo "Machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load at start $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Command: \`ROUNDS=${ROUNDS:-3} SECONDS_PER_RATE=${SECONDS_PER_RATE:-3} bench/netflow.sh\` (medians of the rounds)."
    echo
    python3 "$root/bench/netflow.py" "$SLUICE_BIN" "$out"
} | tee "$root/bench/netflow-results.md"
