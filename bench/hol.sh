#!/usr/bin/env bash
# Head-of-line blocking under CPU-heavy inspection (issue 17): the latency
# of cheap CONNECT tunnels at a steady rate (new ones, and echoes through
# held ones) while the same Sluice process
# intercepts TLS to ever new host names (a leaf minted and signed per
# connection, rustls on both sides) and DLP-scans large uploads. Two
# builds side by side, both running at once, alternating within each
# round, so that a busy spell of the machine hits both alike; meant for
# the per-core build against the multi-thread runtime (bench/README.md,
# "CPU-heavy inspection and per-core runtimes").
#
#   bench/hol.sh A_BIN B_BIN [LOADGEN_BIN]
#
# Knobs (environment), defaults in brackets: LABEL_A [a], LABEL_B [b];
# ROUNDS [3]; PHASE_SECONDS [10] per phase; PHASES ["quiet tls dlp both"]
# (quiet: the cheap load alone; tls: with interception; dlp: with
# uploads; both: with both); RATE [200] new cheap tunnels a second
# (open loop, `sluice-loadgen tunnels --rate`); KEEP [64] held tunnels
# and PING_RATE [200] one-byte echoes a second through them (`--keep`,
# opened afresh each phase); TLS_WORKERS [2],
# DLP_WORKERS [1], UPLOAD_MIB [32] for bench/heavy.py; TLS_SRC
# [127.0.0.2] the source of the intercepted connections (127.0.0.3: a
# zone that intercepts and inspects nothing else).
#
# Cheap tunnels come from 127.0.0.1 (a zone without inspection) to an echo
# origin (sluice-loadgen echo); the heavy load from 127.0.0.2 (a zone
# with `inspect.tls: ["*.hol.test"]` and every DLP detector) to haproxy
# (TLS, a wildcard certificate from a root in `inspect.extra_roots`) and a
# Python sink that reads and discards uploads. Prints a Markdown table:
# per round, build and phase, the new tunnels' p50/p99/max set-up latency
# (connect start to the echoed byte), the held tunnels' p50/p99/max echo
# round trip, errors, what the heavy load achieved, Sluice's CPU seconds
# and the load average.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
A=$1 B=$2
LG=${3:-${CARGO_TARGET_DIR:-$here/../target}/release/sluice-loadgen}
LABEL_A=${LABEL_A:-a} LABEL_B=${LABEL_B:-b}
ROUNDS=${ROUNDS:-3}
PHASE_SECONDS=${PHASE_SECONDS:-10}
PHASES=${PHASES:-quiet tls dlp both}
RATE=${RATE:-200}
KEEP=${KEEP:-64} PING_RATE=${PING_RATE:-200}
TLS_WORKERS=${TLS_WORKERS:-2} DLP_WORKERS=${DLP_WORKERS:-1} UPLOAD_MIB=${UPLOAD_MIB:-32}
TLS_SRC=${TLS_SRC:-127.0.0.2}
for tool in haproxy openssl python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install -y $tool)" >&2; exit 2; }
done
T=$(mktemp -d /tmp/sluice-hol.XXXXXX)
trap bench_cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The TLS origin's CA and wildcard certificate; the interception CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=hol origin CA" -keyout "$T/origin-ca.key" -out "$T/origin-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=*.hol.test" \
    -keyout "$T/origin.key" -out "$T/origin.csr" 2>/dev/null
printf 'subjectAltName=DNS:*.hol.test\nextendedKeyUsage=serverAuth\n' >"$T/ext"
openssl x509 -req -in "$T/origin.csr" -CA "$T/origin-ca.pem" -CAkey "$T/origin-ca.key" \
    -CAcreateserial -days 2 -extfile "$T/ext" -out "$T/origin.pem" 2>/dev/null
cat "$T/origin.pem" "$T/origin.key" >"$T/origin-bundle.pem"
"$A" ca init --out "$T/ca" >/dev/null

ECHO=$(freeport) TLS=$(freeport) SINK=$(freeport)
"$LG" echo "$ECHO" >"$T/echo.log" 2>&1 & pids+=($!)
cat >"$T/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend tls
  bind 127.0.0.1:$TLS ssl crt $T/origin-bundle.pem alpn http/1.1
  http-request return status 200 content-type text/plain string "ok"
EOF
haproxy -db -f "$T/haproxy.cfg" >"$T/haproxy.log" 2>&1 & pids+=($!)
cat >"$T/sink.py" <<'EOF'
import socket, sys, threading
def serve(c):
    f = c.makefile("rb")
    try:
        while True:
            head = []
            while True:
                line = f.readline(65536)
                if not line: return
                if line in (b"\r\n", b"\n"): break
                head.append(line.decode("latin1").strip().lower())
            left = next((int(h.split(":", 1)[1]) for h in head if h.startswith("content-length:")), 0)
            while left:
                b = f.read(min(left, 1 << 20))
                if not b: return
                left -= len(b)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except Exception:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
python3 "$T/sink.py" "$SINK" >"$T/sink.log" 2>&1 & pids+=($!)

declare -A PID PORT BIN
BIN[a]=$A BIN[b]=$B
for who in a b; do
    PORT[$who]=$(freeport)
    cat >"$T/$who.yaml" <<EOF
listen:
  http: 127.0.0.1:${PORT[$who]}
inspect:
  ca: {cert_file: $T/ca/sluice-ca.pem, key_file: $T/ca/sluice-ca.key}
  extra_roots: [$T/origin-ca.pem]
zones:
  - name: cheap
    sources: [127.0.0.1/32]
    allow: [{cidr: 127.0.0.1/32, ports: [$ECHO]}]
  - name: heavy
    sources: [127.0.0.2/32]
    allow: [{cidr: 127.0.0.1/32, ports: [$TLS, $SINK]}]
    inspect:
      tls: ["*.hol.test"]
      dlp: {card: block, iban: block, aws: block, gcp: block, azure: block, github: block, gitlab: block, slack: block, stripe: block, pem: block, jwt: block}
  - name: tls-only
    sources: [127.0.0.3/32]
    allow: [{cidr: 127.0.0.1/32, ports: [$TLS]}]
    inspect:
      tls: ["*.hol.test"]
limits:
  max_connections: 100000
  max_connections_per_source: 100000
log:
  flows: $T/$who-flows.jsonl
EOF
    RUST_LOG=warn "${BIN[$who]}" run -c "$T/$who.yaml" >"$T/$who.out" 2>"$T/$who.err" &
    PID[$who]=$!; pids+=($!)
done
sleep 2
for who in a b; do
    kill -0 "${PID[$who]}" 2>/dev/null || { echo "error: sluice $who did not start:" >&2; cat "$T/$who.err" >&2; exit 1; }
done

tck=$(getconf CLK_TCK)
heavy_args() { # PHASE
    case $1 in
        tls) echo "--tls-workers $TLS_WORKERS --dlp-workers 0" ;;
        dlp) echo "--tls-workers 0 --dlp-workers $DLP_WORKERS" ;;
        both) echo "--tls-workers $TLS_WORKERS --dlp-workers $DLP_WORKERS" ;;
    esac
}

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "A = $LABEL_A ($A), B = $LABEL_B ($B); $RATE new tunnels/s and $PING_RATE echoes/s through $KEEP held tunnels, $PHASE_SECONDS s a phase; heavy: $TLS_WORKERS TLS workers from $TLS_SRC, $DLP_WORKERS DLP workers x $UPLOAD_MIB MiB"
echo
echo "| round | build | phase | new: ok/err | p50 ms | p99 ms | max ms | held: ok/err | p50 ms | p99 ms | max ms | TLS handshakes/s | DLP MiB/s | heavy err | Sluice CPU s | load |"
echo "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
for round in $(seq "$ROUNDS"); do
    order="a b"; (( round % 2 == 0 )) && order="b a"
    for phase in $PHASES; do
        for who in $order; do
            label=$LABEL_A; [[ $who == b ]] && label=$LABEL_B
            heavy_pid=
            if [[ $phase != quiet ]]; then
                # shellcheck disable=SC2046
                python3 "$here/heavy.py" --proxy "${PORT[$who]}" --tls-port "$TLS" --sink-port "$SINK" \
                    --ca "$T/ca/sluice-ca.pem" --upload-mib "$UPLOAD_MIB" --tls-src "$TLS_SRC" \
                    --seconds "$((PHASE_SECONDS + 2))" $(heavy_args "$phase") >"$T/heavy.json" 2>"$T/heavy.err" &
                heavy_pid=$!
                sleep 1
            fi
            t0=$(ticks "${PID[$who]}")
            "$LG" tunnels --proxy "127.0.0.1:${PORT[$who]}" --target "127.0.0.1:$ECHO" \
                --keep "$KEEP" --rate "$PING_RATE" --seconds "$PHASE_SECONDS" >"$T/held.json" &
            held_pid=$!
            "$LG" tunnels --proxy "127.0.0.1:${PORT[$who]}" --target "127.0.0.1:$ECHO" \
                --rate "$RATE" --concurrency 64 --count 10000000 --seconds "$PHASE_SECONDS" >"$T/cheap.json"
            wait "$held_pid" || true
            t1=$(ticks "${PID[$who]}")
            hs='' mib='' herr=''
            if [[ -n $heavy_pid ]]; then
                wait "$heavy_pid" || true
                read -r hs mib herr < <(python3 -c 'import json,sys; h=json.load(open(sys.argv[1])); print(h["handshakes_per_s"], h["upload_mib_per_s"], h["errors"])' "$T/heavy.json" 2>/dev/null || echo "? ? ?")
            fi
            python3 - "$T/cheap.json" "$T/held.json" "$round" "$label" "$phase" "$hs" "$mib" "$herr" "$(( t1 - t0 ))" "$tck" "$(cut -d' ' -f1 /proc/loadavg)" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
k = json.load(open(sys.argv[2]))
rnd, label, phase, hs, mib, herr, dt, tck, load = sys.argv[3:]
f = lambda v: "-" if v is None else "%.2f" % v
cols = lambda x: "%d/%d | %s | %s | %s" % (x["ok"], x["errors"], f(x["p50_ms"]), f(x["p99_ms"]), f(x["max_ms"]))
print("| %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %s |" % (
    rnd, label, phase, cols(r), cols(k), hs or "-", mib or "-", herr or "-", int(dt) / int(tck), load))
for name, x in (("new", r), ("held", k)):
    if x["errors"]:
        print("%s tunnels' errors: %s" % (name, x["error_samples"]), file=sys.stderr)
EOF
            if [[ -n $heavy_pid && -s $T/heavy.err ]]; then cat "$T/heavy.err" >&2; fi
            if [[ -n $heavy_pid ]] && grep -q '"errors": [1-9]' "$T/heavy.json"; then
                echo "heavy errors: $(cat "$T/heavy.json")" >&2
            fi
        done
    done
done
for who in a b; do
    echo "sluice $who: $(wc -l <"$T/$who-flows.jsonl") flow records, intercepted $(grep -c '"intercepted":true' "$T/$who-flows.jsonl" || true)"
done
