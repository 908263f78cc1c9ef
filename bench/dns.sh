#!/usr/bin/env bash
# DNS benchmark: dnsperf against Sluice's DNS listener and directly against
# the same upstream (dnsmasq answering `*.bench.test` from its own
# configuration), in one run, on loopback.
#
#   apt-get install -y dnsperf dnsmasq-base   # once
#   bench/dns.sh                              # ~1 minute after the build
#
# Two query sets: "cached" loops over 10 names (after the first round every
# Sluice answer comes from its cache) and "uncached" sends every name once
# (every Sluice answer needs the upstream). Knobs: SECONDS_PER_RUN [10],
# UNCACHED_NAMES [200000], CLIENTS [4], OUTSTANDING [100], SLUICE_BIN.
# Prints a Markdown table and writes it to bench/dns-results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
UNCACHED_NAMES=${UNCACHED_NAMES:-200000}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}

for cmd in dnsperf dnsmasq dig; do
  command -v "$cmd" >/dev/null || { echo "missing $cmd: apt-get install -y dnsperf dnsmasq-base bind9-dnsutils" >&2; exit 2; }
done
if [ -z "${SLUICE_BIN:-}" ]; then
  cargo build --release -q -p sluice
  SLUICE_BIN=target/release/sluice
fi

WORK=$(mktemp -d /tmp/sluice-dns-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 0 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
}
trap cleanup EXIT
trap 'KEEP=1' ERR

free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Upstream: dnsmasq, no cache, no resolv.conf, answers *.bench.test itself
# with TTL 300 (its default for local answers, 0, would make Sluice cache nothing).
UP=$(free_port)
dnsmasq --no-daemon --no-resolv --no-hosts --cache-size=0 --pid-file= \
  --user=root --listen-address=127.0.0.1 --bind-interfaces --port="$UP" \
  --address=/bench.test/151.101.1.1 --local-ttl=300 --dns-forward-max=10000 \
  --log-facility="$WORK/dnsmasq.log" &
DNSMASQ_PID=$!
PIDS+=($DNSMASQ_PID)
for _ in $(seq 100); do
  dig +short +tries=1 +time=1 @127.0.0.1 -p "$UP" www1.bench.test 2>/dev/null | grep -q . && break
  sleep 0.1
done

cat > "$WORK/sluice.yaml" <<EOF
listen:
  http: 127.0.0.1:0
  dns: 127.0.0.1:0
dns:
  upstreams: [127.0.0.1:$UP]
  cache_size: $((UNCACHED_NAMES * 2))
  rate_limit_qps: 1000000000
zones:
  - name: bench
    sources: [127.0.0.0/8]
    allow:
      - host: "*.bench.test"
        ports: [443]
log:
  flows: $WORK/flows.jsonl
EOF
RUST_LOG=warn "$SLUICE_BIN" run -c "$WORK/sluice.yaml" 2> "$WORK/sluice.err" &
SLUICE_PID=$!
PIDS+=($SLUICE_PID)
SLUICE_DNS=""
for _ in $(seq 100); do
  SLUICE_DNS=$(sed -n 's/^sluice: DNS listening on 127.0.0.1://p' "$WORK/sluice.err")
  [ -n "$SLUICE_DNS" ] && break
  sleep 0.1
done
[ -n "$SLUICE_DNS" ] || { cat "$WORK/sluice.err" >&2; exit 1; }

for i in $(seq 10); do echo "www$i.bench.test A"; done > "$WORK/cached.txt"
python3 - "$WORK" "$UNCACHED_NAMES" <<'EOF'
import sys
work, n = sys.argv[1], int(sys.argv[2])
for tag in ("direct", "sluice"):
    with open(f"{work}/uncached-{tag}.txt", "w") as f:
        for i in range(n):
            f.write(f"u{i}-{tag}.bench.test A\n")
EOF

# CPU ticks (user + system, all threads) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run PID PORT FILE [extra dnsperf args] -> "qps avg_ms lost cpu_us_per_query"
# (CPU of the server process only, from /proc: unlike the rate, it hardly
# depends on what else the machine runs).
run() {
  local pid=$1 port=$2 file=$3; shift 3
  local before after
  before=$(ticks "$pid")
  dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$SECONDS_PER_RUN" \
    -c "$CLIENTS" -q "$OUTSTANDING" -t 2 "$@" > "$WORK/out.txt" 2>&1 || true
  after=$(ticks "$pid")
  python3 - "$WORK/out.txt" "$((after - before))" "$(getconf CLK_TCK)" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
qps = re.search(r"Queries per second:\s+([\d.]+)", t)
lat = re.search(r"Average Latency \(s\):\s+([\d.]+)", t)
lost = re.search(r"Queries lost:\s+(\d+)", t)
done = re.search(r"Queries completed:\s+(\d+)", t)
if not qps or not done or int(done.group(1)) == 0:
    print("0 0 ? 0"); sys.stderr.write(t); sys.exit()
cpu_us = ticks / hz * 1e6 / int(done.group(1))
print(f"{float(qps.group(1)):.0f}", f"{float(lat.group(1))*1000:.2f}", lost.group(1), f"{cpu_us:.1f}")
EOF
}

# Warm Sluice's cache for the cached set.
dnsperf -s 127.0.0.1 -p "$SLUICE_DNS" -d "$WORK/cached.txt" -n 1 >/dev/null 2>&1 || true

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
read -r dc_q dc_l dc_x dc_c < <(run "$DNSMASQ_PID" "$UP" "$WORK/cached.txt")
read -r sc_q sc_l sc_x sc_c < <(run "$SLUICE_PID" "$SLUICE_DNS" "$WORK/cached.txt")
read -r du_q du_l du_x du_c < <(run "$DNSMASQ_PID" "$UP" "$WORK/uncached-direct.txt" -n 1)
read -r su_q su_l su_x su_c < <(run "$SLUICE_PID" "$SLUICE_DNS" "$WORK/uncached-sluice.txt" -n 1)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

ratio() { python3 -c "a,b=float('$1'),float('$2'); print(f'{a/b:.2f}' if b else '-')"; }
CPU=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
TABLE=$(cat <<EOF
| query set | direct q/s | direct avg latency | direct CPU/query | Sluice q/s | Sluice avg latency | Sluice CPU/query | q/s Sluice / direct |
|---|---:|---:|---:|---:|---:|---:|---:|
| cached (10 names, looped) | $dc_q | ${dc_l} ms | ${dc_c} µs | $sc_q | ${sc_l} ms | ${sc_c} µs | $(ratio "$sc_q" "$dc_q") |
| uncached (every name once) | $du_q | ${du_l} ms | ${du_c} µs | $su_q | ${su_l} ms | ${su_c} µs | $(ratio "$su_q" "$du_q") |

Lost queries: direct $dc_x / $du_x, Sluice $sc_x / $su_x (cached / uncached). CPU/query is the
server process's user + system time over the queries it answered; Sluice's includes writing one
flow record per query, and its uncached figure excludes the upstream's own work.
Load average (1/5/15 min): $LOAD_START at start, $LOAD_END at end.
Machine: $(nproc) cores ($CPU), $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -sr).
Command: \`SECONDS_PER_RUN=$SECONDS_PER_RUN UNCACHED_NAMES=$UNCACHED_NAMES CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING bench/dns.sh\`
(dnsperf $(dpkg-query -W -f='${Version}' dnsperf 2>/dev/null), dnsmasq $(dnsmasq --version | head -1 | awk '{print $3}')), $(date -u +%Y-%m-%d).
EOF
)
echo "$TABLE"
printf '# DNS benchmark results\n\n%s\n' "$TABLE" > bench/dns-results.md
