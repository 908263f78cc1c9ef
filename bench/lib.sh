# Shared set-up of the A/B bench scripts; sourced (`. "$here/lib.sh"`), never
# run. Scripts that start processes append their PIDs to `pids` and put their
# files in `$T`; `bench_cleanup` (their EXIT trap) stops the one and removes
# the other.

pids=()

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n ${T:-} ]]; then rm -rf "$T"; fi
}

# A free TCP port on 127.0.0.1 (bound and released: another process may take
# it in between, which the bench then reports as a failed start).
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# User + system CPU ticks (10 ms) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The Sluice configuration every A/B bench runs: an HTTP listener on
# HTTP_PORT (and a SOCKS5 one on SOCKS_PORT if given), one enforcing zone for
# loopback that allows 127.0.0.1 on PORTS ("a, b, …"), limits high enough for
# the load, flow records to FLOWS.
#   bench_yaml HTTP_PORT PORTS FLOWS [SOCKS_PORT] > s.yaml
bench_yaml() {
    cat <<Y
listen:
  http: 127.0.0.1:$1
${4:+  socks5: 127.0.0.1:$4
}zones:
  - name: bench
    sources: [127.0.0.0/8]
    mode: enforce
    allow:
      - cidr: 127.0.0.1/32
        ports: [$2]
limits:
  max_connections: 100000
  max_connections_per_source: 100000
log:
  flows: $3
Y
}
