#!/usr/bin/env python3
"""Tunnel clients for bench/proxy.sh. Prints one JSON object on stdout.

    client.py tunnels --proxy 127.0.0.1:P|direct --target 127.0.0.1:E
                      [--concurrency 32] [--count 5000] [--seconds 15] [--socks5]
        New tunnels per second. Each tunnel: TCP connect to the proxy, send
        CONNECT, read the 200, send one byte, read it back from the echo
        origin, close. Latency = connect start -> echoed byte received (the
        tunnel is usable end to end). "direct" skips the proxy (and is also
        how the transparent bench connects: straight to the origin address).
        With --socks5 the proxy speaks SOCKS5 instead of CONNECT: greeting
        05 01 00, answer 05 00, request 05 01 00 01 <IPv4> <port>, the
        10-byte reply (05 00 00 01 ...), then the same echo byte.

    client.py idle --proxy 127.0.0.1:P --target 127.0.0.1:E --pid PID [--n 2000]
        RSS per idle tunnel: warm up with 32 tunnels, read the proxy's RSS
        (VmRSS of PID and its descendants), open N tunnels that each relay
        "ping" both ways and stay open, wait 1 s, read RSS again, check that
        every tunnel still relays, close them all.

    client.py cpu --pid PID
        User and system CPU seconds used so far by PID and its descendants.
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time


def addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


async def recv_exact(loop, s, n, what):
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(s, n - len(buf))
        if not chunk:
            raise ConnectionError(f"proxy closed during the SOCKS5 {what}")
        buf += chunk
    return buf


async def open_tunnel(loop, proxy, target, payload=b"x", socks5=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if proxy is not None and socks5:
            await loop.sock_connect(s, proxy)
            # Greeting and request in one write each; the reply is exactly
            # 10 bytes for an IPv4 bound address.
            await loop.sock_sendall(s, b"\x05\x01\x00")
            m = await recv_exact(loop, s, 2, "method answer")
            if m != b"\x05\x00":
                raise ConnectionError(f"SOCKS5 method answer {m.hex()}")
            req = b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + target[1].to_bytes(2, "big")
            await loop.sock_sendall(s, req)
            rep = await recv_exact(loop, s, 10, "reply")
            if rep[:2] != b"\x05\x00" or rep[3] != 1:
                raise ConnectionError(f"SOCKS5 reply {rep.hex()}")
        elif proxy is not None:
            await loop.sock_connect(s, proxy)
            hp = f"{target[0]}:{target[1]}"
            await loop.sock_sendall(s, f"CONNECT {hp} HTTP/1.1\r\nHost: {hp}\r\n\r\n".encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await loop.sock_recv(s, 4096)
                if not chunk:
                    raise ConnectionError("proxy closed before answering CONNECT")
                buf += chunk
                if len(buf) > 65536:
                    raise ConnectionError("oversized CONNECT answer")
            status = buf.split(b" ", 2)[1] if b" " in buf else b"?"
            if status != b"200":
                raise ConnectionError("CONNECT answered " + buf.split(b"\r\n", 1)[0].decode(errors="replace"))
            if buf.index(b"\r\n\r\n") + 4 != len(buf):
                raise ConnectionError("bytes after the CONNECT answer")
        else:
            await loop.sock_connect(s, target)
        await loop.sock_sendall(s, payload)
        got = b""
        while len(got) < len(payload):
            chunk = await loop.sock_recv(s, 4096)
            if not chunk:
                raise ConnectionError("tunnel closed before the echo")
            got += chunk
        if got != payload:
            raise ConnectionError("echo mismatch")
        return s
    except BaseException:
        s.close()
        raise


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


async def tunnels(a):
    loop = asyncio.get_running_loop()
    proxy = None if a.proxy == "direct" else addr(a.proxy)
    target = addr(a.target)
    lat, errors, samples = [], 0, []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + a.seconds
    issued = 0

    async def worker():
        nonlocal issued, errors
        while issued < a.count and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter()
            try:
                s = await asyncio.wait_for(open_tunnel(loop, proxy, target, socks5=a.socks5), 10)
            except Exception as e:  # counted, a few kept as samples
                errors += 1
                if len(samples) < 5:
                    samples.append(f"{type(e).__name__}: {e}")
                continue
            lat.append(time.perf_counter() - t0)
            s.close()

    await asyncio.gather(*(worker() for _ in range(a.concurrency)))
    elapsed = time.perf_counter() - started
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    lat.sort()
    return {
        "ok": len(lat),
        "errors": errors,
        "error_samples": samples,
        "seconds": round(elapsed, 3),
        "per_second": len(lat) / elapsed,
        "p50_ms": pct(lat, 50) * 1000 if lat else None,
        "p99_ms": pct(lat, 99) * 1000 if lat else None,
        "client_cpu_s": round(client_cpu, 3),
    }


def tree(pid):
    """pid and every descendant."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                parents[int(d)] = int(st[st.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):
                pass
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        seen.add(p)
        todo.extend(c for c, pp in parents.items() if pp == p and c not in seen)
    return seen


def cpu_seconds(pid):
    """(user, system) CPU seconds of pid and every descendant (all threads)."""
    user = system = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2 :].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, ValueError):
            pass
    tck = os.sysconf("SC_CLK_TCK")
    return user / tck, system / tck


def rss_kib(pid):
    """VmRSS of pid and every descendant, in KiB."""
    procs = tree(pid)
    total = 0
    for p in procs:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total, len(procs)


async def idle(a):
    loop = asyncio.get_running_loop()
    proxy, target = addr(a.proxy), addr(a.target)
    # Warm-up: first-use allocations are not per-tunnel costs.
    warm = await asyncio.gather(*(open_tunnel(loop, proxy, target) for _ in range(32)))
    for s in warm:
        s.close()
    await asyncio.sleep(0.5)
    before, procs = rss_kib(a.pid)
    sem = asyncio.Semaphore(64)
    errors, samples = 0, []

    async def one():
        nonlocal errors
        async with sem:
            try:
                return await asyncio.wait_for(open_tunnel(loop, proxy, target, b"ping"), 20)
            except Exception as e:
                errors += 1
                if len(samples) < 5:
                    samples.append(f"{type(e).__name__}: {e}")
                return None

    socks = [s for s in await asyncio.gather(*(one() for _ in range(a.n))) if s is not None]
    await asyncio.sleep(1.0)
    after, procs_after = rss_kib(a.pid)

    # Every tunnel must still relay after the measurement.
    async def still(s):
        async with sem:
            try:
                await loop.sock_sendall(s, b"pong")
                got = b""
                while len(got) < 4:
                    chunk = await asyncio.wait_for(loop.sock_recv(s, 16), 10)
                    if not chunk:
                        return False
                    got += chunk
                return got == b"pong"
            except Exception:
                return False

    alive = sum(await asyncio.gather(*(still(s) for s in socks)))
    for s in socks:
        s.close()
    n = len(socks)
    return {
        "opened": n,
        "errors": errors,
        "error_samples": samples,
        "alive_after": alive,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "processes": [procs, procs_after],
        "per_tunnel_kib": (after - before) / n if n else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["tunnels", "idle", "cpu"])
    ap.add_argument("--proxy")
    ap.add_argument("--target")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--socks5", action="store_true", help="the proxy speaks SOCKS5, not CONNECT")
    a = ap.parse_args()
    if a.mode == "cpu":
        print("%.2f %.2f" % cpu_seconds(a.pid))
        return
    out = asyncio.run(tunnels(a) if a.mode == "tunnels" else idle(a))
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
