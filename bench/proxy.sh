#!/usr/bin/env bash
# Sluice vs squid vs tinyproxy on loopback; see bench/README.md.
#
#   bench/proxy.sh                  # build Sluice (release), run everything, write bench/results.md
#   SLUICE_BIN=path bench/proxy.sh  # use that binary, skip the build
#   LOADGEN_BIN=path bench/proxy.sh # the same for sluice-loadgen (tunnel client, echo origin)
#
# Knobs (environment), defaults in brackets: ROUNDS [3] rounds of measures 1-3;
# per round and column: BULK_MIB [1024] MiB downloaded, TUNNELS [20000] tunnels
# (at most TUNNEL_SECONDS [10] s), WRK_SECONDS [5] s of wrk; IDLE_TUNNELS [2000];
# ONLY ["sluice squid tinyproxy"] the proxies to run; SLUICE_REV names the
# binary's commit in the report (default: the tree's HEAD, "+ uncommitted
# changes" when crates/ differ from it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cmdline="bench/proxy.sh${*:+ $*}"
for v in ROUNDS BULK_MIB TUNNELS TUNNEL_SECONDS WRK_SECONDS IDLE_TUNNELS ONLY SLUICE_BIN LOADGEN_BIN SLUICE_REV; do
    if [[ -n ${!v:-} ]]; then cmdline="$v=\"${!v}\" $cmdline"; fi
done
ROUNDS=${ROUNDS:-3}
BULK_MIB=${BULK_MIB:-1024}
TUNNELS=${TUNNELS:-20000}
TUNNEL_SECONDS=${TUNNEL_SECONDS:-10}
WRK_SECONDS=${WRK_SECONDS:-5}
IDLE_TUNNELS=${IDLE_TUNNELS:-2000}
ONLY=${ONLY:-"sluice squid tinyproxy"}

need() { command -v "$1" >/dev/null || { echo "error: $1 not found (apt-get install -y $2)" >&2; exit 2; }; }
need python3 python3
need curl curl
need wrk wrk
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time not found (apt-get install -y time)" >&2; exit 2; }
for p in $ONLY; do
    case $p in
        squid) need squid squid ;;
        tinyproxy) need tinyproxy tinyproxy ;;
    esac
done

# 2,000 tunnels need ~4,000 descriptors in the proxy, 2,000 in the client and
# in the echo origin; every child inherits this.
hard=$(ulimit -Hn)
if [[ $hard == unlimited || $hard -gt 65536 ]]; then hard=65536; fi
ulimit -n "$hard"
if (( hard < 3 * IDLE_TUNNELS )); then
    echo "error: open-file hard limit $hard is too low for $IDLE_TUNNELS tunnels" >&2
    exit 2
fi

T=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() {
    local rc=$?
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        echo "bench failed (exit $rc); logs kept in $T" >&2
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

freeport() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port, name, pid
    for _ in $(seq 100); do
        if ! kill -0 "$3" 2>/dev/null; then echo "error: $2 exited; see $T" >&2; exit 1; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "error: $2 does not listen on $1; see $T" >&2
    exit 1
}

# ---------------------------------------------------------------- build
# shellcheck source=bench/build.sh
source "$here/build.sh"

# ---------------------------------------------------------------- origins
HTTP_PORT=$(freeport)
BULK_PORT=$(freeport)
# One echo port per client so that no two columns share TIME_WAIT 4-tuples.
declare -A ECHO
for who in direct sluice socks5 squid tinyproxy sluice-nodetect; do ECHO[$who]=$(freeport); done
ECHO_PORTS="${ECHO[direct]} ${ECHO[sluice]} ${ECHO[socks5]} ${ECHO[squid]} ${ECHO[tinyproxy]} ${ECHO[sluice-nodetect]}"
ALL_PORTS="$HTTP_PORT $BULK_PORT $ECHO_PORTS"

python3 "$here/origin.py" http "$HTTP_PORT" >"$T/origin-http.log" 2>&1 &
pids+=($!); ORIGIN_HTTP_PID=$!; wait_port "$HTTP_PORT" origin-http $!
python3 "$here/origin.py" bulk "$BULK_PORT" >"$T/origin-bulk.log" 2>&1 &
pids+=($!); wait_port "$BULK_PORT" origin-bulk $!
# shellcheck disable=SC2086
"$LOADGEN_BIN" echo $ECHO_PORTS >"$T/origin-echo.log" 2>&1 &
pids+=($!); ECHO_PID=$!
for p in $ECHO_PORTS; do wait_port "$p" origin-echo $!; done

# ---------------------------------------------------------------- proxies
declare -A PORT PID
start_sluice() { start_sluice_as sluice on; }
# The same binary with detection off for its zone (`detect: off`): put it
# beside `sluice` in ONLY for detection's cost in the same run, e.g.
# ONLY="sluice sluice-nodetect".
start_sluice-nodetect() { start_sluice_as sluice-nodetect off; }
start_sluice_as() {
    local name=$1 detect=$2 port admin socks
    port=$(freeport); admin=$(freeport); socks=$(freeport)
    cat >"$T/$name.yaml" <<EOF
listen:
  http: 127.0.0.1:$port
  socks5: 127.0.0.1:$socks
  admin: 127.0.0.1:$admin
zones:
  - name: bench
    sources: [127.0.0.0/8]
    mode: enforce
    detect: $detect
    allow:
      - cidr: 127.0.0.1/32
        ports: [$(echo "$ALL_PORTS" | tr ' ' ',' | sed 's/,/, /g')]
limits:
  max_connections: 100000
  max_connections_per_source: 100000
log:
  flows: $T/$name-flows.jsonl
EOF
    RUST_LOG=warn "$SLUICE_BIN" run -c "$T/$name.yaml" >"$T/$name.out" 2>"$T/$name.err" &
    PID[$name]=$!; pids+=($!)
    PORT[$name]=$port
    wait_port "$port" "$name" "${PID[$name]}"
    [[ $name == sluice ]] || return 0
    # The SOCKS5 listener of the same process: its own column in measures 1
    # and 2 ("socks5"), its CPU is Sluice's.
    PID[socks5]=${PID[sluice]}
    PORT[socks5]=$socks
    wait_port "$socks" sluice-socks5 "${PID[sluice]}"
}
start_squid() {
    local port
    port=$(freeport)
    mkdir -p "$T/squid"; chmod 777 "$T/squid"
    cat >"$T/squid.conf" <<EOF
http_port 127.0.0.1:$port
acl SSL_ports port $ALL_PORTS
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow localhost
http_access deny all
cache deny all
access_log none
cache_store_log none
cache_log $T/squid/cache.log
pid_filename $T/squid/squid.pid
coredump_dir $T/squid
netdb_filename none
pinger_enable off
max_filedescriptors $(ulimit -n)
shutdown_lifetime 0 seconds
EOF
    squid -N -f "$T/squid.conf" >"$T/squid.out" 2>&1 &
    PID[squid]=$!; pids+=($!)
    PORT[squid]=$port
    wait_port "$port" squid "${PID[squid]}"
}
start_tinyproxy() {
    local port
    port=$(freeport)
    {
        echo "User nobody"
        echo "Group nogroup"
        echo "Port $port"
        echo "Listen 127.0.0.1"
        echo "Timeout 600"
        echo "LogLevel Error"
        echo "MaxClients $((IDLE_TUNNELS + 1000))"
        echo "Allow 127.0.0.1"
        for p in $ALL_PORTS; do echo "ConnectPort $p"; done
    } >"$T/tinyproxy.conf"
    tinyproxy -d -c "$T/tinyproxy.conf" >"$T/tinyproxy.out" 2>&1 &
    PID[tinyproxy]=$!; pids+=($!)
    PORT[tinyproxy]=$port
    wait_port "$port" tinyproxy "${PID[tinyproxy]}"
}
for p in $ONLY; do "start_$p"; done
log "origins: http $HTTP_PORT, bulk $BULK_PORT, echo $ECHO_PORTS; proxies:$(for p in $ONLY; do printf ' %s %s' "$p" "${PORT[$p]}"; done)"

# Sanity: every proxy serves both a tunnel and an absolute-form request.
for p in $ONLY; do
    curl -sf -p -x "http://127.0.0.1:${PORT[$p]}" "http://127.0.0.1:$BULK_PORT/bytes/10" -o /dev/null ||
        { echo "error: CONNECT through $p fails" >&2; exit 1; }
    curl -sf -x "http://127.0.0.1:${PORT[$p]}" "http://127.0.0.1:$HTTP_PORT/bytes/10" -o /dev/null ||
        { echo "error: absolute-form through $p fails" >&2; exit 1; }
done
# SOCKS5 (Sluice only: squid and tinyproxy have no SOCKS5 listener).
COLS=$ONLY
if [[ " $ONLY " == *" sluice "* ]]; then
    # After the word `sluice` (not inside `sluice-nodetect`).
    COLS=$(for p in $ONLY; do if [[ $p == sluice ]]; then printf 'sluice socks5 '; else printf '%s ' "$p"; fi; done)
    curl -sf --socks5 "127.0.0.1:${PORT[socks5]}" "http://127.0.0.1:$BULK_PORT/bytes/10" -o /dev/null ||
        { echo "error: SOCKS5 through sluice fails" >&2; exit 1; }
fi

R=$T/results.jsonl
: >"$R"
# "user system" CPU seconds the proxy process (all threads, all children) has
# used so far; "-" for direct.
cpu() { if [[ $1 == direct ]]; then echo -; else python3 "$here/client.py" cpu --pid "${PID[$1]}"; fi; }
emit() { # measure who json cpu_before
    local c=null u=null s=null
    if [[ $4 != - ]]; then
        read -r u s < <(python3 -c 'import sys; a, b = sys.argv[1].split(), sys.argv[2].split()
print(round(float(b[0]) - float(a[0]), 2), round(float(b[1]) - float(a[1]), 2))' "$4" "$(cpu "$2")")
        c=$(python3 -c "print(round($u + $s, 2))")
    fi
    printf '{"measure":"%s","who":"%s","proxy_cpu_s":%s,"proxy_user_s":%s,"proxy_sys_s":%s,"data":%s}\n' \
        "$1" "$2" "$c" "$u" "$s" "$3" >>"$R"
}

# ---------------------------------------------------------------- 4. idle RSS
# First, while the proxies are fresh: allocators keep memory that earlier
# measures freed, and tunnels reusing it would look cheaper than they are.
for who in $ONLY; do
    c0=$(cpu "$who")
    out=$(timeout 120 python3 "$here/client.py" idle --proxy "127.0.0.1:${PORT[$who]}" \
        --target "127.0.0.1:${ECHO[$who]}" --pid "${PID[$who]}" --n "$IDLE_TUNNELS")
    emit idle "$who" "$out" "$c0"
    log "idle $who: $out"
    sleep 1 # let the closes settle before the next proxy
done

# Measures 1-3 run in ROUNDS rounds, each round visiting every column in turn,
# so that a slow spell of a busy machine hits every column alike; the report
# takes the median round and sums the CPU time.
bytes=$((BULK_MIB * 1024 * 1024))
cat >"$T/done.lua" <<'LUA'
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests":%d,"seconds":%.3f,"per_second":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
      summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(99) / 1000,
      e.connect, e.read, e.write, e.status, e.timeout))
end
LUA
for who in direct $ONLY; do
    if [[ $who == direct ]]; then
        { echo "wrk.path = \"/bytes/100\""; cat "$T/done.lua"; } >"$T/wrk-$who.lua"
    else
        {
            echo "wrk.path = \"http://127.0.0.1:$HTTP_PORT/bytes/100\""
            echo "wrk.headers[\"Host\"] = \"127.0.0.1:$HTTP_PORT\""
            cat "$T/done.lua"
        } >"$T/wrk-$who.lua"
    fi
done

# `"KEY":CPU seconds of PID since E0,"machine_busy":share of all CPUs busy
# since the /proc/stat line M0,` for a round's JSON.
budget() { # key e0 pid m0
    python3 - "$2" "$(python3 "$here/client.py" cpu --pid "$3")" "$4" "$(head -1 /proc/stat)" "$1" <<'PY'
import sys
e0, e1 = (sum(map(float, a.split())) for a in sys.argv[1:3])
m0, m1 = ([int(x) for x in a.split()[1:9]] for a in sys.argv[3:5])
d = [b - a for a, b in zip(m0, m1)]
idle = d[3] + d[4]
print(f'"{sys.argv[5]}":{e1 - e0:.2f},"machine_busy":{1 - idle / max(sum(d), 1):.3f},')
PY
}

# ---------------------------------------------------------------- 1. bulk
for round in $(seq "$ROUNDS"); do
    for who in direct $COLS; do
        c0=$(cpu "$who")
        args=(-s --max-time 120 -o /dev/null -w '%{speed_download} %{size_download} %{http_code}\n')
        if [[ $who == socks5 ]]; then args+=(--socks5 "127.0.0.1:${PORT[$who]}")
        elif [[ $who != direct ]]; then args+=(-p -x "http://127.0.0.1:${PORT[$who]}"); fi
        read -r speed size code < <(curl "${args[@]}" "http://127.0.0.1:$BULK_PORT/bytes/$bytes" || true)
        if [[ ${code:-} != 200 || ${size:-0} != "$bytes" ]]; then
            echo "error: bulk download via $who got code=${code:-none} size=${size:-0}" >&2; exit 1
        fi
        emit bulk "$who" "{\"round\":$round,\"bytes\":$bytes,\"bytes_per_second\":$speed}" "$c0"
        log "bulk round $round $who: $((speed / 1048576)) MiB/s"
    done
done

# ---------------------------------------------------------------- 2. tunnels/s
for round in $(seq "$ROUNDS"); do
    for who in direct $COLS; do
        proxy=direct
        if [[ $who != direct ]]; then proxy="127.0.0.1:${PORT[$who]}"; fi
        socks=()
        if [[ $who == socks5 ]]; then socks=(--socks5); fi
        c0=$(cpu "$who")
        e0=$(python3 "$here/client.py" cpu --pid "$ECHO_PID")
        m0=$(head -1 /proc/stat)
        out=$(timeout $((TUNNEL_SECONDS + 30)) "$LOADGEN_BIN" tunnels --proxy "$proxy" "${socks[@]}" \
            --target "127.0.0.1:${ECHO[$who]}" --concurrency 32 --count "$TUNNELS" --seconds "$TUNNEL_SECONDS")
        # The whole machine's budget of the round: the echo origin's CPU
        # and the share of all CPUs busy (/proc/stat), beside the proxy's
        # and the client's (bench/README.md, "What bounds the tunnel rate").
        budget=$(budget echo_cpu_s "$e0" "$ECHO_PID" "$m0")
        emit tunnels "$who" "{\"round\":$round,$budget${out#\{}" "$c0"
        log "tunnels round $round $who: $out"
    done
done

# ---------------------------------------------------------------- 3. HTTP req/s
for round in $(seq "$ROUNDS"); do
    for who in direct $ONLY; do
        url="http://127.0.0.1:$HTTP_PORT/"
        if [[ $who != direct ]]; then url="http://127.0.0.1:${PORT[$who]}/"; fi
        c0=$(cpu "$who")
        o0=$(python3 "$here/client.py" cpu --pid "$ORIGIN_HTTP_PID")
        m0=$(head -1 /proc/stat)
        /usr/bin/time -f '%U %S' -o "$T/wrk-time" \
            wrk -t2 -c32 -d"${WRK_SECONDS}s" --timeout 5s -s "$T/wrk-$who.lua" "$url" >"$T/wrk-$who-$round.out"
        budget=$(budget origin_cpu_s "$o0" "$ORIGIN_HTTP_PID" "$m0")
        budget+=$(awk '{printf "\"client_cpu_s\":%.2f,", $1 + $2}' "$T/wrk-time")
        out=$(grep '^{' "$T/wrk-$who-$round.out" | tail -1)
        emit http "$who" "{\"round\":$round,$budget${out#\{}" "$c0"
        log "http round $round $who: $out"
    done
done

# ---------------------------------------------------------------- report
busy_end=$(busy)
{
    echo "cmdline=$cmdline"
    echo "nproc=$(nproc)"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "kernel=$(uname -sr)"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "mem=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "load=$load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
    echo "busy=$busy_start at start, $busy_end at end"
    echo "sluice=${SLUICE_REV:-$(cd "$root" && git rev-parse --short HEAD)$(cd "$root" && git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' + uncommitted changes')}"
    echo "squid=$(squid -v 2>/dev/null | sed -n 's/^Squid Cache: Version //p')"
    echo "tinyproxy=$(tinyproxy -v 2>/dev/null | awk '{print $2}')"
    echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    echo "curl=$(curl -V | head -1 | awk '{print $2}')"
    echo "python=$(python3 -c 'import platform; print(platform.python_version())')"
    echo "rounds=$ROUNDS"; echo "bulk_mib=$BULK_MIB"; echo "tunnels=$TUNNELS"
    echo "tunnel_seconds=$TUNNEL_SECONDS"; echo "wrk_seconds=$WRK_SECONDS"; echo "idle_tunnels=$IDLE_TUNNELS"
} >"$T/machine.env"
python3 "$here/report.py" "$R" "$T/machine.env" >"$here/results.md"
# Keep the last transparent run's rows (bench/transparent.sh) in results.md.
if [[ -f $here/transparent-results.md ]]; then
    python3 "$here/report.py" --block transparent "$here/results.md" "$here/transparent-results.md"
fi
python3 "$here/report.py" --readme "$here/README.md" "$here/results.md"
cat "$here/results.md"
log "wrote bench/results.md and the results section of bench/README.md"
