#!/usr/bin/env bash
# Loading a large policy end to end: `sluice check` on a generated 74 MB
# file of 200 zones and 1,000,000 host rules (bench/policy-gen.py), timed
# with /usr/bin/time -v (wall clock, CPU, peak RSS). Results: bench/README.md
# ("Policy at scale").
#
#   bench/policy-scale.sh                 # builds release, 3 rounds
#   ROUNDS=5 SLUICE_BIN=path bench/policy-scale.sh
#
# Knobs: ZONES [200], RULES [1000000], ROUNDS [3], SLUICE_BIN (skip the
# build), KEEP=1 keeps the generated file in the work directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
ZONES=${ZONES:-200}
RULES=${RULES:-1000000}
ROUNDS=${ROUNDS:-3}

if [ -z "${SLUICE_BIN:-}" ]; then
    (cd "$root" && cargo build --release -p sluice >&2)
    SLUICE_BIN=${CARGO_TARGET_DIR:-$root/target}/release/sluice
fi
work=$(mktemp -d /tmp/sluice-policy-scale.XXXXXX)
cleanup() { [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

python3 "$here/policy-gen.py" "$ZONES" "$RULES" >"$work/big.yaml"
bytes=$(stat -c %s "$work/big.yaml")
echo "file: $(( bytes / 1000000 )) MB, $ZONES zones, $RULES host rules ($work/big.yaml)"
# The last zone's last rule: a lookup that has to get past every other zone.
last=$(( ZONES - 1 ))
from="10.$(( last / 256 )).$(( last % 256 )).7"
target="svc$(( RULES / ZONES - 1 )).team$(( (RULES / ZONES - 1) / 100 )).zone$last.example.com:443"
cmd=("$SLUICE_BIN" check -c "$work/big.yaml" --from "$from" "$target")
echo "command: /usr/bin/time -v sluice check -c big.yaml --from $from $target"
echo "machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GB, load $(cut -d' ' -f1-3 /proc/loadavg)"

printf '%-6s %8s %8s %8s %10s\n' round wall_s user_s sys_s max_rss_mb
for r in $(seq 1 "$ROUNDS"); do
    set +e
    /usr/bin/time -v "${cmd[@]}" >"$work/out" 2>"$work/time"
    code=$?
    set -e
    # `check` exits 0 (allow) or 1 (deny); 2 is a configuration error.
    if [ "$code" -gt 1 ]; then
        cat "$work/out" "$work/time" >&2
        exit 1
    fi
    awk -v r="$r" '
        /Elapsed \(wall clock\)/ { n = split($NF, t, ":"); wall = (n == 3) ? t[1]*3600 + t[2]*60 + t[3] : t[1]*60 + t[2] }
        /User time/ { user = $NF }
        /System time/ { sys = $NF }
        /Maximum resident set size/ { rss = $NF / 1024 }
        END { printf "%-6s %8.2f %8.2f %8.2f %10.0f\n", r, wall, user, sys, rss }
    ' "$work/time"
done
echo "decision: $(head -c 300 "$work/out")"
