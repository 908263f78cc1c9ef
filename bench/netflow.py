#!/usr/bin/env python3
"""NetFlow ingest: Sluice's collector against nfcapd, fed the same datagrams.

    netflow.py SLUICE_BIN OUT_DIR

Driven by bench/netflow.sh (see bench/README.md). For each format (IPFIX
with a template and 30 flows a datagram, v5 with 30), each offered rate and
each round, it starts one collector at a time on a free loopback port (both
with a 4 MiB receive buffer), sends the same datagrams paced at that rate
for SECONDS, waits until the collector's CPU time stops growing, and counts
what it stored: lines in Sluice's flow log, flows in nfcapd's files
(`nfdump -I`). Rate = flows stored / (first datagram sent → collector
idle). Also: Sluice's memory with 100 exporters and their templates.
Prints a Markdown report.
"""

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = float(os.environ.get("SECONDS_PER_RATE", "3"))
RATES = [int(r) for r in os.environ.get("RATES", "100000 300000 1000000").split()]
FORMATS = os.environ.get("FORMATS", "ipfix v5").split()
EXPORT = int(time.time())
TICK = os.sysconf("SC_CLK_TCK")


def ipfix_datagrams(n):
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (152, 8), (153, 8)]
    tmpl = struct.pack("!HH", 256, len(fields)) + b"".join(struct.pack("!HH", f, l) for f, l in fields)
    tset = struct.pack("!HH", 2, 4 + len(tmpl)) + tmpl
    out = []
    for k in range(n):
        recs = b""
        for i in range(30):
            j = k * 30 + i
            src = bytes([10, 1, (j >> 8) & 0xFF, j & 0xFF])
            dst = bytes([93, 184, (j >> 4) & 0xFF, (j * 7) & 0xFF or 1])
            ms = EXPORT * 1000 - 5000
            recs += src + dst + struct.pack("!HHBQQQQ", 30000 + i, 443, 6, 1500 + i, 3, ms, ms + 4000)
        dset = struct.pack("!HH", 256, 4 + len(recs)) + recs
        body = (tset if k % 100 == 0 else b"") + dset
        out.append(struct.pack("!HHIII", 10, 16 + len(body), EXPORT, k, 1) + body)
    return out


def v5_datagrams(n):
    out = []
    for k in range(n):
        b = struct.pack("!HHIIIIBBH", 5, 30, 100_000, EXPORT, 0, k * 30, 0, 0, 0)
        for i in range(30):
            j = k * 30 + i
            src = bytes([10, 1, (j >> 8) & 0xFF, j & 0xFF])
            dst = bytes([93, 184, (j >> 4) & 0xFF, (j * 7) & 0xFF or 1])
            b += src + dst + b"\0" * 8 + struct.pack("!IIIIHHBBBBHHBBH", 3, 1500 + i, 95_000, 99_000, 30000 + i, 443, 0, 0x18, 6, 0, 0, 0, 24, 24, 0)
        out.append(b)
    return out


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sluice:
    name = "sluice"

    def __init__(self, binary, d):
        self.flows = os.path.join(d, "flows.jsonl")
        cfg = os.path.join(d, "sluice.yaml")
        with open(cfg, "w") as f:
            f.write(
                "listen:\n  netflow: 127.0.0.1:0\n"
                f"log:\n  flows: {self.flows}\n"
                "netflow:\n  exporters: [127.0.0.0/8]\n  gateways: [10.0.9.1/32]\n"
                "zones:\n  - name: bench\n    sources: [10.0.0.0/8]\n    allow:\n"
                # Marked `bypass: true`: the bench measures ingest, not
                # alerting (every flow here would be a new bypass alert,
                # one JSON line on stderr each).
                "      - cidr: 93.184.0.0/16\n        ports: [443]\n        bypass: true\n"
            )
        self.p = subprocess.Popen([binary, "run", "-c", cfg], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.port = None
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.p.stderr.readline()
            m = re.search(r"NetFlow collector listening on [\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if line.startswith("sluice: policy "):
                break
            if not line and self.p.poll() is not None:
                raise SystemExit("sluice did not start")
        # Keep stderr drained (alerts and diagnostics).
        import threading

        threading.Thread(target=lambda: [None for _ in self.p.stderr], daemon=True).start()

    def stored(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=30)
        with open(self.flows, "rb") as f:
            return sum(1 for _ in f)


class Nfcapd:
    name = "nfcapd"

    def __init__(self, d):
        self.dir = os.path.join(d, "nfcapd")
        os.makedirs(self.dir)
        self.port = free_udp_port()
        self.p = subprocess.Popen(
            ["nfcapd", "-b", "127.0.0.1", "-p", str(self.port), "-w", self.dir, "-B", str(4 << 20), "-t", "3600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # nfcapd prints nothing when ready; it binds at once.

    def stored(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=30)
        out = subprocess.run(["nfdump", "-R", self.dir, "-I"], capture_output=True, text=True).stdout
        m = re.search(r"^Flows:\s+(\d+)", out, re.M)
        return int(m.group(1)) if m else 0


def wait_idle(pid, quiet=0.5, limit=120):
    """Waits until the process's CPU time stops growing; returns when it last grew."""
    last, last_change, start = cpu_seconds(pid), time.time(), time.time()
    while time.time() - start < limit:
        time.sleep(0.05)
        now = cpu_seconds(pid)
        if now != last:
            last, last_change = now, time.time()
        elif time.time() - last_change >= quiet:
            break
    return last_change, last


def measure(collector, datagrams, rate):
    """Sends datagrams at `rate` flows/s for SECONDS; returns (offered, stored, wall, cpu)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", collector.port))
    per_s = rate / 30.0
    total = int(per_s * SECONDS)
    cpu0 = cpu_seconds(collector.p.pid)
    t0 = time.time()
    sent = 0
    batch = max(1, int(per_s / 1000))
    while sent < total:
        for _ in range(batch):
            s.send(datagrams[sent % len(datagrams)])
            sent += 1
        ahead = t0 + sent / per_s - time.time()
        if ahead > 0:
            time.sleep(ahead)
    t1, cpu1 = wait_idle(collector.p.pid)
    stored = collector.stored()
    return sent * 30, stored, max(t1 - t0, 1e-6), cpu1 - cpu0


def memory(binary, d):
    """RSS with 100 exporters, each with 8 IPFIX templates in 2 domains."""
    sl = Sluice(binary, d)
    base = rss_kb(sl.p.pid)
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (152, 8), (153, 8), (10, 4), (14, 4), (6, 1)]
    for e in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.1.{e + 1}", 0))
        for domain in (1, 2):
            sets = b""
            for t in range(4):
                tmpl = struct.pack("!HH", 256 + t, len(fields)) + b"".join(struct.pack("!HH", f, l) for f, l in fields)
                sets += struct.pack("!HH", 2, 4 + len(tmpl)) + tmpl
            s.sendto(struct.pack("!HHIII", 10, 16 + len(sets), EXPORT, 0, domain) + sets, ("127.0.0.1", sl.port))
        s.close()
    wait_idle(sl.p.pid)
    after = rss_kb(sl.p.pid)
    sl.stored()
    return base, after


def main():
    binary, out_dir = sys.argv[1], sys.argv[2]
    rows = []
    for fmt in FORMATS:
        datagrams = ipfix_datagrams(2000) if fmt == "ipfix" else v5_datagrams(2000)
        for rate in RATES:
            results = {"sluice": [], "nfcapd": []}
            for _ in range(ROUNDS):
                # Taking turns, so that both meet the same machine.
                for make in (lambda d: Sluice(binary, d), Nfcapd):
                    with tempfile.TemporaryDirectory(dir=out_dir) as d:
                        c = make(d)
                        results[c.name].append(measure(c, datagrams, rate))
            rows.append((fmt, rate, results))
    with tempfile.TemporaryDirectory(dir=out_dir) as d:
        base, after = memory(binary, d)

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]

    print("| format | offered flows/s | sluice stored flows/s | sluice stored/offered | sluice CPU µs/flow | nfcapd stored flows/s | nfcapd stored/offered | nfcapd CPU µs/flow | sluice/nfcapd |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fmt, rate, r in rows:
        def cols(xs):
            rate_s = med([st / wall for _, st, wall, _ in xs])
            kept = med([st / off for off, st, _, _ in xs])
            cpu = med([cpu / max(st, 1) * 1e6 for _, st, _, cpu in xs])
            return rate_s, kept, cpu
        s_rate, s_kept, s_cpu = cols(r["sluice"])
        n_rate, n_kept, n_cpu = cols(r["nfcapd"])
        print(f"| {fmt} | {rate:,} | {s_rate:,.0f} | {s_kept:.2f} | {s_cpu:.2f} | {n_rate:,.0f} | {n_kept:.2f} | {n_cpu:.2f} | {s_rate / max(n_rate, 1):.2f} |")
    print()
    print(f"Memory, 100 exporters × 2 domains × 4 IPFIX templates of 12 fields (800 templates): RSS {base:,} kB before, {after:,} kB after (+{after - base:,} kB).")


if __name__ == "__main__":
    main()
