#!/usr/bin/env bash
# Sluice's transparent listener behind deploy/transparent/sluice.nft, against
# plain forwarding through the same gateway; see bench/README.md.
#
#   bench/transparent.sh                  # build Sluice (release), run, write bench/transparent-results.md
#   SLUICE_BIN=path bench/transparent.sh  # use that binary, skip the build
#   LOADGEN_BIN=path bench/transparent.sh # the same for sluice-loadgen (tunnel client, echo origin)
#
# Three network namespaces (client, gateway, origin; veth links, as in
# crates/sluice/tests/transparent.rs). Columns:
#   direct       the gateway forwards (the ruleset with its redirect removed
#                and its final forward drop turned into an accept);
#   transparent  the ruleset as shipped: every TCP connection from the client
#                is redirected to Sluice's listen.transparent in the gateway.
# The client always connects to the origin's own address and never names a
# proxy. Needs root, ip (iproute2), nft, curl, python3, cargo (or the two
# *_BIN variables).
#
# Knobs: ROUNDS [3], BULK_MIB [1024], TUNNELS [20000], TUNNEL_SECONDS [10],
# IDLE_TUNNELS [2000] (RSS per idle transparent tunnel, measured first);
# SLUICE_REV names the binary's commit in the report (default: the tree's
# HEAD, "+ uncommitted changes" when crates/ differ from it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cmdline="bench/transparent.sh${*:+ $*}"
for v in ROUNDS BULK_MIB TUNNELS TUNNEL_SECONDS IDLE_TUNNELS SLUICE_BIN LOADGEN_BIN SLUICE_REV; do
    if [[ -n ${!v:-} ]]; then cmdline="$v=\"${!v}\" $cmdline"; fi
done
ROUNDS=${ROUNDS:-3}
BULK_MIB=${BULK_MIB:-1024}
TUNNELS=${TUNNELS:-20000}
TUNNEL_SECONDS=${TUNNEL_SECONDS:-10}
IDLE_TUNNELS=${IDLE_TUNNELS:-2000}

need() { command -v "$1" >/dev/null || { echo "error: $1 not found (apt-get install -y $2)" >&2; exit 2; }; }
need python3 python3
need curl curl
need ip iproute2
need nft nftables
[[ $(id -u) == 0 ]] || { echo "error: needs root (network namespaces, nftables)" >&2; exit 2; }

hard=$(ulimit -Hn)
if [[ $hard == unlimited || $hard -gt 65536 ]]; then hard=65536; fi
ulimit -n "$hard"

CLIENT_IP=192.0.2.2
GW_LAN=192.0.2.1
ORIGIN=198.51.100.10
BULK_PORT=8080
# One echo port per column: the columns never share TIME_WAIT 4-tuples.
declare -A ECHO=([direct]=7000 [transparent]=7001 [idle]=7002)
SLUICE_PORT=3129
MARK=0x5c

tag=$$
NC=slbc-$tag NG=slbg-$tag NO=slbo-$tag
T=$(mktemp -d /tmp/sluice-tbench.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() {
    local rc=$?
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    for n in "$NC" "$NG" "$NO"; do ip netns del "$n" 2>/dev/null || true; done
    if [[ $rc -ne 0 ]]; then echo "bench failed (exit $rc); logs kept in $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
inns() { local n=$1; shift; ip netns exec "$n" "$@"; }
wait_port() { # ns, addr, port, name, pid
    for _ in $(seq 100); do
        if ! kill -0 "$5" 2>/dev/null; then echo "error: $4 exited; see $T" >&2; exit 1; fi
        if inns "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "error: $4 does not listen on $2:$3; see $T" >&2
    exit 1
}

# shellcheck source=bench/build.sh
source "$here/build.sh"

# ---------------------------------------------------------------- namespaces
for n in "$NC" "$NG" "$NO"; do ip netns add "$n"; done
ip -n "$NG" link add lan0 type veth peer name eth0 netns "$NC"
ip -n "$NG" link add wan0 type veth peer name eth0 netns "$NO"
ip -n "$NC" addr add "$CLIENT_IP/24" dev eth0
ip -n "$NG" addr add "$GW_LAN/24" dev lan0
ip -n "$NG" addr add 198.51.100.1/24 dev wan0
ip -n "$NO" addr add "$ORIGIN/24" dev eth0
for x in "$NC eth0" "$NG lan0" "$NG wan0" "$NO eth0"; do
    read -r n dev <<<"$x"
    ip -n "$n" link set "$dev" up
    ip -n "$n" link set lo up
done
ip -n "$NC" route add default via "$GW_LAN"
ip -n "$NO" route add default via 198.51.100.1
inns "$NG" sysctl -qw net.ipv4.ip_forward=1
# Tens of thousands of short connections to one origin port per round: the
# client (to the origin) and the gateway (Sluice dialing the origin) would
# run out of ephemeral ports to TIME_WAIT (loopback reuses them by default,
# veth does not), and connect() gets slow long before it fails. These
# namespaces are the bench's own.
for n in "$NC" "$NG"; do
    inns "$n" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
done

# ---------------------------------------------------------------- origins
# ip netns exec execs the command: $! is the process itself, which cleanup stops.
ORIGIN_HOST=$ORIGIN ip netns exec "$NO" python3 "$here/origin.py" bulk "$BULK_PORT" >"$T/origin-bulk.log" 2>&1 &
pids+=($!); wait_port "$NO" "$ORIGIN" "$BULK_PORT" origin-bulk $!
ORIGIN_HOST=$ORIGIN ip netns exec "$NO" "$LOADGEN_BIN" echo "${ECHO[direct]}" "${ECHO[transparent]}" "${ECHO[idle]}" \
    >"$T/origin-echo.log" 2>&1 &
pids+=($!)
for p in "${ECHO[@]}"; do wait_port "$NO" "$ORIGIN" "$p" origin-echo $!; done

# ---------------------------------------------------------------- sluice
cat >"$T/sluice.yaml" <<EOF
listen:
  http: $GW_LAN:3128   # unused; builds before f440650 refuse to start without it
  transparent: $GW_LAN:$SLUICE_PORT
  transparent_mark: $MARK
zones:
  - name: bench
    sources: [192.0.2.0/24]
    mode: enforce
    allow:
      - cidr: $ORIGIN/32
        ports: any
limits:
  max_connections: 100000
  max_connections_per_source: 100000
log:
  flows: $T/sluice-flows.jsonl
EOF
RUST_LOG=warn ip netns exec "$NG" "$SLUICE_BIN" run -c "$T/sluice.yaml" >"$T/sluice.out" 2>"$T/sluice.err" &
SPID=$!; pids+=($SPID)
wait_port "$NG" "$GW_LAN" "$SLUICE_PORT" sluice "$SPID"

# The ruleset as shipped, defines pointed at this run; "direct": the same
# ruleset without the redirect, and forwarding allowed (the forward chain's
# policy drop would drop the origin's replies, which a redirected connection
# never forwards).
sed -e "s/^define LAN_IF .*/define LAN_IF = \"lan0\"/" \
    -e "s/^define SLUICE_PORT .*/define SLUICE_PORT = $SLUICE_PORT/" \
    -e "s/^define SLUICE_MARK .*/define SLUICE_MARK = $MARK/" \
    "$root/deploy/transparent/sluice.nft" >"$T/transparent.nft"
grep -q 'redirect to :\$SLUICE_PORT' "$T/transparent.nft" || { echo "error: no redirect in the ruleset" >&2; exit 1; }
sed -e '/redirect to :\$SLUICE_PORT/d' \
    -e 's/iifname \$LAN_IF counter drop comment "every other way out"/iifname $LAN_IF counter accept comment "bench: plain forwarding"/' \
    -e 's/hook forward priority filter; policy drop;/hook forward priority filter; policy accept;/' \
    "$T/transparent.nft" >"$T/direct.nft"
grep -q 'plain forwarding' "$T/direct.nft" && grep -q 'hook forward.*policy accept' "$T/direct.nft" || { echo "error: could not derive the direct ruleset" >&2; exit 1; }
ruleset() { inns "$NG" nft -f "$T/$1.nft"; }

# Sanity: each mode reaches the origin, and the transparent one through Sluice.
for mode in direct transparent; do
    ruleset "$mode"
    inns "$NC" curl -sf --max-time 10 "http://$ORIGIN:$BULK_PORT/bytes/10" -o /dev/null ||
        { echo "error: $mode: client cannot reach the origin" >&2; exit 1; }
done
sleep 0.5
grep -q '"listener":"transparent"' "$T/sluice-flows.jsonl" ||
    { echo "error: no transparent flow record: the redirect does not reach Sluice; see $T" >&2; exit 1; }

cpu() { if [[ $1 == direct ]]; then echo -; else python3 "$here/client.py" cpu --pid "$SPID"; fi; }
R=$T/results.jsonl
: >"$R"
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

# RSS per idle transparent tunnel, first, while Sluice is fresh (as in
# bench/proxy.sh): IDLE_TUNNELS connections to the origin's echo port that
# the ruleset redirects, each echoing "ping" and staying open.
ruleset transparent
c0=$(cpu transparent)
out=$(timeout 120 ip netns exec "$NC" python3 "$here/client.py" idle --direct \
    --target "$ORIGIN:${ECHO[idle]}" --pid "$SPID" --n "$IDLE_TUNNELS")
emit idle transparent "$out" "$c0"
log "idle transparent: $out"
sleep 1 # let the closes settle

bytes=$((BULK_MIB * 1024 * 1024))
for round in $(seq "$ROUNDS"); do
    for who in direct transparent; do
        ruleset "$who"
        c0=$(cpu "$who")
        read -r speed size code < <(inns "$NC" curl -s --max-time 120 -o /dev/null \
            -w '%{speed_download} %{size_download} %{http_code}\n' "http://$ORIGIN:$BULK_PORT/bytes/$bytes" || true)
        if [[ ${code:-} != 200 || ${size:-0} != "$bytes" ]]; then
            echo "error: bulk download $who got code=${code:-none} size=${size:-0}" >&2; exit 1
        fi
        emit bulk "$who" "{\"round\":$round,\"bytes\":$bytes,\"bytes_per_second\":$speed}" "$c0"
        log "bulk round $round $who: $((speed / 1048576)) MiB/s"
    done
done
for round in $(seq "$ROUNDS"); do
    for who in direct transparent; do
        ruleset "$who"
        c0=$(cpu "$who")
        out=$(timeout $((TUNNEL_SECONDS + 30)) ip netns exec "$NC" "$LOADGEN_BIN" tunnels --proxy direct \
            --target "$ORIGIN:${ECHO[$who]}" --concurrency 32 --count "$TUNNELS" --seconds "$TUNNEL_SECONDS")
        emit tunnels "$who" "{\"round\":$round,${out#\{}" "$c0"
        log "tunnels round $round $who: $out"
    done
done

flows=$(grep -c '"listener":"transparent"' "$T/sluice-flows.jsonl" || true)
{
    echo "cmdline=$cmdline"
    echo "nproc=$(nproc)"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "kernel=$(uname -sr)"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "mem=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "load=$load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
    echo "busy=$busy_start at start, $(busy) at end"
    echo "sluice=${SLUICE_REV:-$(cd "$root" && git rev-parse --short HEAD)$(cd "$root" && git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' + uncommitted changes')}"
    echo "curl=$(curl -V | head -1 | awk '{print $2}')"
    echo "python=$(python3 -c 'import platform; print(platform.python_version())')"
    echo "nft=$(nft -v | awk '{print $2}')"
    echo "rounds=$ROUNDS"; echo "bulk_mib=$BULK_MIB"; echo "tunnels=$TUNNELS"
    echo "flows=$flows"
} >"$T/machine.env"
python3 "$here/report.py" --transparent "$R" "$T/machine.env" >"$here/transparent-results.md"
python3 "$here/report.py" --block transparent "$here/README.md" "$here/transparent-results.md" --no-title
python3 "$here/report.py" --block transparent "$here/results.md" "$here/transparent-results.md"
cat "$here/transparent-results.md"
log "wrote bench/transparent-results.md and its rows into bench/results.md and bench/README.md"
