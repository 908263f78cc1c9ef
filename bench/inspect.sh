#!/usr/bin/env bash
# Content inspection's cost on loopback: a large upload through a zone
# without inspection and through one with every DLP detector (MB/s), and
# the added time per small request of clamd (INSTREAM) and ICAP (c-icap
# virus_scan over that clamd) scans. See README "Inspection".
#
#   bench/inspect.sh                  # build Sluice (release), run, print a Markdown table
#   SLUICE_BIN=path bench/inspect.sh  # use that binary, skip the build
#
# The upload rows also give Sluice's own CPU seconds (from /proc), and the
# DLP rate per core from the difference: on a small machine the client and
# the origin share the cores, so MB/s alone understates the proxy.
#
# Knobs (environment), defaults in brackets: UPLOAD_MIB [1024] MiB per
# upload; REQUESTS [200] small requests per scanner measure.
# The scanner alone (no sockets): cargo bench -p sluice-inspect --bench dlp
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
UPLOAD_MIB=${UPLOAD_MIB:-1024}
REQUESTS=${REQUESTS:-200}

need() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || { echo "error: $1 not found (apt-get install -y $2)" >&2; exit 2; }; }
need python3 python3
need curl curl
need clamd clamav-daemon
need c-icap c-icap
[ -f /usr/lib/x86_64-linux-gnu/c_icap/virus_scan.so ] || { echo "error: c-icap virus_scan missing (apt-get install -y libc-icap-mod-virus-scan)" >&2; exit 2; }

if [[ -z ${SLUICE_BIN:-} ]]; then
    (cd "$root" && cargo build --release -q -p sluice)
    SLUICE_BIN="${CARGO_TARGET_DIR:-$root/target}/release/sluice"
fi

work=$(mktemp -d /tmp/sluice-bench-inspect.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# An origin that reads and discards request bodies (Content-Length or
# chunked) and answers "ok", keep-alive, a thread per connection.
cat >"$work/sink.py" <<'EOF'
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
            cl = next((int(h.split(":",1)[1]) for h in head if h.startswith("content-length:")), None)
            if cl is not None:
                left = cl
                while left:
                    b = f.read(min(left, 1 << 20))
                    if not b: return
                    left -= len(b)
            elif any(h.startswith("transfer-encoding:") and "chunked" in h for h in head):
                while True:
                    n = int(f.readline().split(b";")[0], 16)
                    if n == 0:
                        f.readline(); break
                    left = n
                    while left:
                        b = f.read(min(left, 1 << 20))
                        if not b: return
                        left -= len(b)
                    f.readline()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except Exception:
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF

# Text-like upload data (words, digits, base64), generated on the fly.
cat >"$work/gen.py" <<'EOF'
import sys
line = b"user=alice&note=The quick brown fox 1234 jumps over dGhlIGxhenkgZG9n 42 times;\n"
block = line * ((1 << 20) // len(line) + 1)
block = block[: 1 << 20]
out = sys.stdout.buffer
for _ in range(int(sys.argv[1])):
    out.write(block)
EOF

origin_port=$(free_port)
python3 "$work/sink.py" "$origin_port" >"$work/sink.log" 2>&1 & pids+=($!)

# clamd with a one-signature database (no freshclam), c-icap over it.
mkdir -p "$work/db"
printf 'Sluice.Bench.Sig:0:*:%s\n' "$(printf 'SLUICE-BENCH-MARKER' | od -An -tx1 | tr -d ' \n')" >"$work/db/bench.ndb"
cat >"$work/clamd.conf" <<EOF
LocalSocket $work/clamd.sock
DatabaseDirectory $work/db
Foreground yes
LogFile $work/clamd.log
StreamMaxLength 64M
EOF
clamd -c "$work/clamd.conf" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 1 200); do [ -S "$work/clamd.sock" ] && break; sleep 0.1; done
icap_port=$(free_port)
cat >"$work/c-icap.conf" <<EOF
PidFile $work/c-icap.pid
CommandsSocket $work/c-icap.ctl
StartServers 1
MaxServers 2
ThreadsPerChild 8
Port 127.0.0.1:$icap_port
TmpDir $work
ServerLog $work/icap-server.log
AccessLog $work/icap-access.log
ModulesDir /usr/lib/x86_64-linux-gnu/c_icap
ServicesDir /usr/lib/x86_64-linux-gnu/c_icap
TemplateDir /usr/share/c_icap/templates/
LoadMagicFile /etc/c-icap/c-icap.magic
Module common clamd_mod.so
clamd_mod.ClamdSocket $work/clamd.sock
Service antivirus_module virus_scan.so
ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple
virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE
virus_scan.DefaultEngine clamd
EOF
c-icap -N -f "$work/c-icap.conf" >/dev/null 2>&1 & pids+=($!)
sleep 2

# One zone per source address: 127.0.0.1 nothing inspected, .2 every DLP
# detector, .3 clamd, .4 ICAP.
proxy_port=$(free_port)
cat >"$work/sluice.yaml" <<EOF
listen:
  http: 127.0.0.1:$proxy_port
log:
  flows: $work/flows.jsonl
inspect:
  clamd: {address: "unix:$work/clamd.sock", max_size: 1MiB}
  icap: {reqmod: "icap://127.0.0.1:$icap_port/avscan", preview: 1KiB, max_size: 1MiB}
zones:
  - name: plain
    sources: [127.0.0.1/32]
    allow: [{cidr: 127.0.0.1/32, ports: any}]
  - name: dlp
    sources: [127.0.0.2/32]
    allow: [{cidr: 127.0.0.1/32, ports: any}]
    inspect:
      dlp: {card: block, iban: block, aws: block, gcp: block, azure: block, github: block, gitlab: block, slack: block, stripe: block, pem: block, jwt: block}
  - name: clamd
    sources: [127.0.0.3/32]
    allow: [{cidr: 127.0.0.1/32, ports: any}]
    inspect: {malware: block}
  - name: icap
    sources: [127.0.0.4/32]
    allow: [{cidr: 127.0.0.1/32, ports: any}]
    inspect: {icap: true}
EOF
"$SLUICE_BIN" run -c "$work/sluice.yaml" 2>"$work/sluice.err" & pids+=($!)
sluice_pid=$!
for _ in $(seq 1 100); do grep -q "listening" "$work/sluice.err" 2>/dev/null && break; sleep 0.1; done
proxy="http://127.0.0.1:$proxy_port"
url="http://127.0.0.1:$origin_port/upload"

# Sluice's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$sluice_pid/stat"; }
tck=$(getconf CLK_TCK)
upload() { # source-address -> "MB/s <Sluice CPU seconds>"
    local t0 t1 c0 c1
    c0=$(cpu_ticks)
    t0=$(date +%s.%N)
    python3 "$work/gen.py" "$UPLOAD_MIB" | curl -sS -o /dev/null --interface "$1" -x "$proxy" -X POST -T - "$url"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks)
    python3 -c "print('%.0f %.2f' % ($UPLOAD_MIB * 1.048576 / ($t1 - $t0), ($c1 - $c0) / $tck))"
}
small() { # source-address -> ms per request
    # One keep-alive connection from that source, each request written in
    # one send: a client that writes the head and the body separately
    # (urllib3 2) meets Nagle and the receiver's delayed ACK, ~40 ms a
    # request whatever the proxy does, which would hide what is measured.
    python3 - "$1" "$proxy_port" "$url" "$REQUESTS" <<'EOF'
import socket, sys, time
src, port, url, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
host = url.split("/")[2]
body = b"x" * 1024
req = ("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (url, host, len(body))).encode() + body
s = socket.create_connection(("127.0.0.1", port), source_address=(src, 0))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
def one():
    global buf
    s.sendall(req)
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        assert d, "connection closed"
        buf += d
    head, _, buf = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(buf) < length:
        buf += s.recv(65536)
    buf = buf[length:]
for _ in range(10):
    one()
t = time.perf_counter()
for _ in range(n):
    one()
print("%.2f" % ((time.perf_counter() - t) * 1000 / n))
EOF
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
read -r plain_up plain_cpu < <(upload 127.0.0.1)
read -r dlp_up dlp_cpu < <(upload 127.0.0.2)
# What DLP costs Sluice per byte, whatever the client and origin (which
# share the machine) allow: the upload's CPU seconds with DLP less
# without, as a rate per core.
dlp_rate=$(python3 -c "d = $dlp_cpu - $plain_cpu; print('%.2f GB/s' % ($UPLOAD_MIB * 1.048576e-3 / d) if d > 0 else 'n/a')")
plain_ms=$(small 127.0.0.1)
clamd_ms=$(small 127.0.0.3)
icap_ms=$(small 127.0.0.4)

echo "| measure | result |"
echo "|---|---|"
echo "| ${UPLOAD_MIB} MiB upload, zone without inspection | $plain_up MB/s |"
echo "| ${UPLOAD_MIB} MiB upload, every DLP detector (block) | $dlp_up MB/s |"
echo "| Sluice CPU for that upload, without / with DLP | ${plain_cpu} s / ${dlp_cpu} s |"
echo "| DLP in Sluice per core (upload size / added CPU) | $dlp_rate |"
echo "| 1 KiB POST, no inspection (keep-alive, mean of $REQUESTS) | $plain_ms ms |"
echo "| 1 KiB POST, clamd INSTREAM | $clamd_ms ms |"
echo "| 1 KiB POST, ICAP REQMOD (c-icap virus_scan → clamd) | $icap_ms ms |"
echo
# What the scanners saw, so that a fast figure is not a skipped scan.
echo "Checks: c-icap logged $(grep -c . "$work/icap-access.log" 2>/dev/null || echo 0) ICAP requests; Sluice recorded $(grep -c '"zone":"clamd"' "$work/flows.jsonl") clamd-zone and $(grep -c '"zone":"icap"' "$work/flows.jsonl") ICAP-zone flows; load average before/after: $load0 / $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Command: bench/inspect.sh (UPLOAD_MIB=$UPLOAD_MIB REQUESTS=$REQUESTS), $(nproc) cores, $(date -u +%F)."
