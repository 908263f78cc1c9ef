#!/usr/bin/env bash
# The flow bus's cost on the HTTP path, and one follower's rate.
#
# One Sluice binary, one origin (bench/origin.py) and one nats-server -js,
# all on free loopback ports. Rounds alternate two Sluice processes that
# differ only in `bus:` (off / on, publishing every record to JetStream):
# per round, 2 s of wrk warm-up, then WRK_SECONDS of `wrk -t2 -c32`
# keep-alive requests for 100-byte bodies while Sluice's CPU ticks (user +
# system, /proc/PID/stat) are counted; the report gives CPU µs per request
# for each and the ratio (goal: bus on ≤ 1.05 × off). Then one follower
# (crates/sluice-bus/examples/follow.rs, a fresh durable consumer) reads
# every record the "on" rounds published and reports records/s, and so
# does `sluice detect --follow` (the detectors on every record). Last,
# publishing alone (crates/sluice-bus/examples/publish.rs): the "on"
# flow log's records fed at PUBLISH_RATE a second for 10 s into nothing
# and into the bus, in one process, whose CPU (ns per thread from
# schedstat) gives the bus's µs per record — the steady figure, which the
# HTTP rounds' noise on a shared machine can hide.
#
#   bench/bus.sh                 # ~1 minute after the build
#   ROUNDS=5 WRK_SECONDS=8 PARTITIONS=8 PUBLISH_RATE=8000 bench/bus.sh
#
# Needs wrk, python3, nats-server (apt-get install wrk nats-server).
# SLUICE_BIN / FOLLOW_BIN / PUBLISH_BIN: use those binaries instead of
# release builds.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
WRK_SECONDS=${WRK_SECONDS:-5}
PARTITIONS=${PARTITIONS:-8}
PUBLISH_RATE=${PUBLISH_RATE:-8000}
NATS=${NATS:-$(command -v nats-server || echo /usr/sbin/nats-server)}
for t in wrk python3 "$NATS"; do
    command -v "$t" >/dev/null || { echo "error: $t is missing (apt-get install wrk python3 nats-server)" >&2; exit 2; }
done
target=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [[ -z ${SLUICE_BIN:-} || -z ${FOLLOW_BIN:-} || -z ${PUBLISH_BIN:-} ]]; then
    (cd "$root" && cargo build --release -q -p sluice && cargo build --release -q -p sluice-bus --example follow --example publish)
fi
SLUICE_BIN=${SLUICE_BIN:-$target/release/sluice}
FOLLOW_BIN=${FOLLOW_BIN:-$target/release/examples/follow}
PUBLISH_BIN=${PUBLISH_BIN:-$target/release/examples/publish}

dir=$(mktemp -d /tmp/sluice-bench-bus.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "error: nothing on port $1" >&2; exit 2; }
busy_start=$(ps -eo comm= | grep -cxE 'rustc|cargo|cc|cc1|ld' || true)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

origin_port=$(free_port)
python3 "$root/bench/origin.py" http "$origin_port" > "$dir/origin.log" 2>&1 &
pids+=($!)
nats_port=$(free_port)
"$NATS" -js -a 127.0.0.1 -p "$nats_port" -sd "$dir/nats" > "$dir/nats.log" 2>&1 &
pids+=($!)
wait_port "$origin_port"; wait_port "$nats_port"

# start LABEL BUS_YAML → pid and port in $spid $sport
start() {
    local port admin; port=$(free_port); admin=$(free_port)
    cat > "$dir/$1.yaml" <<Y
listen:
  http: 127.0.0.1:$port
  admin: 127.0.0.1:$admin
zones:
  - name: bench
    sources: [127.0.0.0/8]
    mode: enforce
    allow:
      - cidr: 127.0.0.1/32
        ports: [$origin_port]
limits:
  max_connections: 100000
  max_connections_per_source: 100000
log:
  flows: $dir/flows-$1.jsonl
$2
Y
    RUST_LOG=warn "$SLUICE_BIN" run -c "$dir/$1.yaml" > /dev/null 2> "$dir/$1.err" &
    pids+=($!)
    spid=$!; sport=$port; sadmin=$admin
    wait_port "$port"
}
start off ""
off_pid=$spid; off_port=$sport
start on "bus:
  url: nats://127.0.0.1:$nats_port
  partitions: $PARTITIONS
  queue: 100000
detect:
  max_lateness: 1s"
on_pid=$spid; on_port=$sport; on_admin=$sadmin

cat > "$dir/w.lua" <<W
wrk.path = "http://127.0.0.1:$origin_port/bytes/100"
wrk.headers["Host"] = "127.0.0.1:$origin_port"
W
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# round LABEL PID PORT → appends "label requests ticks rps" to results
round() {
    wrk -t2 -c32 -d2s -s "$dir/w.lua" "http://127.0.0.1:$3" > /dev/null
    local t0 t1 out
    t0=$(ticks "$2")
    out=$(wrk -t2 -c32 -d"${WRK_SECONDS}s" -s "$dir/w.lua" "http://127.0.0.1:$3")
    t1=$(ticks "$2")
    local reqs rps
    reqs=$(awk '/requests in/ {print $1}' <<< "$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
    echo "$1 $reqs $((t1 - t0)) $rps" >> "$dir/results"
    echo "round $1: $reqs requests, $rps req/s, $((t1 - t0)) CPU ticks" >&2
}
for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then round off "$off_pid" "$off_port"; round on "$on_pid" "$on_port"
    else round on "$on_pid" "$on_port"; round off "$off_pid" "$off_port"; fi
done

# Everything the "on" process recorded must reach the stream before the
# follower is timed.
metric() { curl -s "http://127.0.0.1:$on_admin/metrics" | awk -v m="$1" '$1 == m {printf "%d", $2}'; }
for _ in $(seq 600); do
    recorded=$(wc -l < "$dir/flows-on.jsonl")
    published=$(metric sluice_bus_published_total); dropped=$(metric sluice_bus_dropped_total)
    (( published + dropped >= recorded )) && break
    sleep 0.1
done
echo "bus on: $recorded records, $published published, $dropped dropped" >&2
follow=$("$FOLLOW_BIN" "nats://127.0.0.1:$nats_port" --partitions "$PARTITIONS" --durable "bench$$" --count "$published" --idle-ms 5000)

# The real follower: `sluice detect --follow` with the "on" configuration
# (every detector at its defaults but `max_lateness: 1s`, so that it judges
# records as it reads them rather than at exit), a fresh durable consumer, stopped once
# its CPU time has stood still for 2 s (at most 120 s); it reports records
# and records/s from its first record to its last.
"$SLUICE_BIN" detect -c "$dir/on.yaml" --follow "nats://127.0.0.1:$nats_port" --durable "detect$$" \
    > "$dir/detect-alerts.jsonl" 2> "$dir/detect.err" &
dpid=$!; pids+=($dpid)
prev=-1; still=0; moved=0
for _ in $(seq 1200); do
    sleep 0.1
    t=$(ticks "$dpid")
    if [[ $t == "$prev" ]]; then still=$((still + 1)); else still=0; moved=$((moved + 1)); fi
    prev=$t
    (( moved > 1 && still >= 20 )) && break
done
detect_ticks=$(ticks "$dpid")
kill -TERM "$dpid"; wait "$dpid" 2>/dev/null || true
detect_line=$(grep -o 'followed .*' "$dir/detect.err" | tail -1)

# Publishing alone, off and on in one process (a stream of its own ids).
publish=$("$PUBLISH_BIN" "nats://127.0.0.1:$nats_port" "$dir/flows-on.jsonl" --rate "$PUBLISH_RATE" --seconds 10 --partitions "$PARTITIONS" 2> "$dir/publish.err")

python3 - "$dir/results" "$hz" "$published" "$follow" "$busy_start" "$load_start" "$recorded" "$dropped" "$detect_line" "$detect_ticks" "$publish" <<'P'
import json, sys
rows = [l.split() for l in open(sys.argv[1])]
hz = int(sys.argv[2])
def per(label):
    reqs = sum(int(r[1]) for r in rows if r[0] == label)
    ticks = sum(int(r[2]) for r in rows if r[0] == label)
    rps = [float(r[3]) for r in rows if r[0] == label]
    return reqs, ticks * 1e6 / hz / reqs, sorted(rps)[len(rps) // 2]
off, on = per("off"), per("on")
f = json.loads(sys.argv[4])
print(f"| measure | bus off | bus on | on/off |")
print(f"|---|---:|---:|---:|")
print(f"| Sluice CPU per request, µs (user + system, all rounds) | {off[1]:.1f} | {on[1]:.1f} | {on[1] / off[1]:.3f} |")
print(f"| keep-alive req/s, median round (`wrk -t2 -c32`) | {off[2]:,.0f} | {on[2]:,.0f} | {on[2] / off[2]:.3f} |")
print(f"| requests measured | {off[0]:,} | {on[0]:,} | |")
print()
print(f"Bus on: {int(sys.argv[7]):,} records (warm-up included), {int(sys.argv[3]):,} published, {int(sys.argv[8]):,} dropped.")
print()
print(f"One follower (`examples/follow`, fresh durable consumer, all partitions): "
      f"{f['records']:,} of {int(sys.argv[3]):,} records in {f['seconds']:.2f} s = "
      f"{f['records_per_second']:,.0f} records/s; by partition {f['by_partition']}")
print(f"`sluice detect --follow` (fresh durable consumer, all partitions, detectors at their defaults): {sys.argv[9]}; "
      f"{int(sys.argv[10]) * 1e6 / int(sys.argv[2]) / max(int(sys.argv[3]), 1):.1f} µs CPU per record")
pub = json.loads(sys.argv[11])
print(f"Publishing alone (`examples/publish`, {pub['records']:,} records at {pub['rate']:,}/s, {pub['published']:,} acknowledged): "
      f"{pub['off_us_per_record']:.2f} µs CPU per record fed into nothing, {pub['on_us_per_record']:.2f} into the bus: "
      f"{pub['bus_us_per_record']:.2f} µs per record, {100 * pub['bus_us_per_record'] / off[1]:.1f} % of bus-off CPU per request; "
      f"the publisher's own thread {pub['bus_thread_us_per_record']:.2f} µs per record, "
      f"{100 * pub['bus_thread_us_per_record'] / off[1]:.1f} %")
print(f"Machine: {open('/proc/cpuinfo').read().count('processor')} CPUs, load average at start {sys.argv[6]}, "
      f"compiler processes at start {sys.argv[5]}")
P
