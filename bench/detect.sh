#!/usr/bin/env bash
# Detection benchmark (issue 12): generate weeks of labelled flow records
# (bench/detect-gen.py), run `sluice detect` over them in release mode,
# timing it (records/s, peak RSS), and score the alerts
# (bench/detect-score.py). A benchmark: it reports, it never fails on a
# number. See bench/README.md "Detection".
#
# Knobs: SEED [1], WEEKS [3], SCALE [60] (workstations; servers and CI
# runners scale with it), SLUICE_BIN (a binary instead of building),
# KEEP=1 (keep the work directory), GEN_ARGS (more detect-gen.py options).
set -euo pipefail
cd "$(dirname "$0")/.."

SEED=${SEED:-1}
WEEKS=${WEEKS:-3}
SCALE=${SCALE:-60}
KEEP=${KEEP:-0}

for tool in python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "detect.sh: $tool is missing (apt-get install python3 time)" >&2; exit 1; }
done
python3 -c 'import mmdb_writer' 2>/dev/null ||
  { echo "detect.sh: Python package mmdb-writer is missing (python3 -m pip install mmdb-writer)" >&2; exit 1; }

work=$(mktemp -d /tmp/sluice-detect.XXXXXX)
cleanup() {
  if [ "$KEEP" = 1 ] || [ "${ok:-0}" != 1 ]; then
    echo "detect.sh: files kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

echo "detect.sh: generating (seed $SEED, $WEEKS weeks, scale $SCALE) into $work" >&2
start=$(date +%s%N)
# shellcheck disable=SC2086
python3 bench/detect-gen.py --seed "$SEED" --weeks "$WEEKS" --scale "$SCALE" --out "$work" ${GEN_ARGS:-} 2>"$work/gen.err"
gen_ms=$((($(date +%s%N) - start) / 1000000))
tail -n 1 "$work/gen.err" >&2

if [ -z "${SLUICE_BIN:-}" ]; then
  cargo build --release -q -p sluice
  SLUICE_BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
  binary="release build of $(git rev-parse --short HEAD 2>/dev/null || echo 'this tree')"
else
  binary="SLUICE_BIN=$SLUICE_BIN"
fi
records=$(wc -l <"$work/records.jsonl")

set +e
/usr/bin/time -v -o "$work/time.txt" "$SLUICE_BIN" detect -c "$work/sluice.yaml" "$work/records.jsonl" \
  >"$work/alerts.jsonl" 2>"$work/detect.err"
rc=$?
set -e
if [ "$rc" != 0 ]; then
  echo "detect.sh: sluice detect exited $rc; its stderr:" >&2
  tail -n 20 "$work/detect.err" >&2
fi
wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt")
rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
secs=$(echo "$wall" | awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }')
rate=$(awk -v n="$records" -v s="$secs" 'BEGIN { if (s > 0) printf "%d", n / s; else print "n/a" }')

echo
echo "## detect benchmark"
echo
echo "- machine: $(nproc) CPUs, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- sluice: $binary"
echo "- command: SEED=$SEED WEEKS=$WEEKS SCALE=$SCALE bench/detect.sh"
printf -- '- generated %s records in %d.%d s\n' "$records" $((gen_ms / 1000)) $((gen_ms % 1000 / 100))
echo "- sluice detect: exit $rc, ${secs} s wall, ${rate} records/s, peak RSS $((rss_kb / 1024)) MiB"
echo
python3 bench/detect-score.py "$work/alerts.jsonl" "$work/labels.json" "$work/records.jsonl"
if [ -s "$work/detect.err" ]; then
  echo
  echo "sluice detect's stderr (last lines):"
  tail -n 5 "$work/detect.err" | sed 's/^/    /'
fi
[ "$rc" = 0 ] && ok=1
