#!/usr/bin/env python3
"""Idle tunnels and CPU readings for bench/proxy.sh. Prints one JSON object
(idle) or one line (cpu) on stdout. New tunnels per second are measured by
the compiled crates/sluice-loadgen (`sluice-loadgen tunnels`), not here.

    client.py idle --proxy 127.0.0.1:P --target 127.0.0.1:E --pid PID [--n 2000] [--socks5]
    client.py idle --direct --target ORIGIN:E --pid PID [--n 2000]
        RSS per idle tunnel (CONNECT; SOCKS5 with --socks5; with --direct,
        connections to the target that a transparent proxy intercepts): warm up with 32 tunnels, read the proxy's RSS
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
import socket
import sys


def addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


async def recv_exact(loop, s, n):
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(s, n - len(buf))
        if not chunk:
            raise ConnectionError("proxy closed during the SOCKS5 handshake")
        buf += chunk
    return buf


async def socks5_connect(loop, s, target):
    """A SOCKS5 CONNECT (no authentication) to an IPv4 target on s."""
    await loop.sock_sendall(s, b"\x05\x01\x00")
    if await recv_exact(loop, s, 2) != b"\x05\x00":
        raise ConnectionError("SOCKS5 method refused")
    addr = socket.inet_aton(target[0]) + target[1].to_bytes(2, "big")
    await loop.sock_sendall(s, b"\x05\x01\x00\x01" + addr)
    reply = await recv_exact(loop, s, 10)
    if reply[1] != 0:
        raise ConnectionError(f"SOCKS5 reply {reply[1]}")


async def open_tunnel(loop, proxy, target, payload=b"x", socks5=False):
    """A CONNECT (or SOCKS5) tunnel through proxy to the echo origin at
    target, checked by echoing payload through it; with no proxy, a
    connection to target itself (redirected to a transparent proxy)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if proxy is None:
            await loop.sock_connect(s, target)
            return await echo_check(loop, s, payload)
        await loop.sock_connect(s, proxy)
        if socks5:
            await socks5_connect(loop, s, target)
            return await echo_check(loop, s, payload)
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
        return await echo_check(loop, s, payload)
    except BaseException:
        s.close()
        raise


async def echo_check(loop, s, payload):
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
    proxy, target = (None if a.direct else addr(a.proxy)), addr(a.target)
    # Warm-up: first-use allocations are not per-tunnel costs.
    warm = await asyncio.gather(
        *(open_tunnel(loop, proxy, target, socks5=a.socks5) for _ in range(32))
    )
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
                return await asyncio.wait_for(
                    open_tunnel(loop, proxy, target, b"ping", a.socks5), 20
                )
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
    ap.add_argument("mode", choices=["idle", "cpu"])
    ap.add_argument("--proxy")
    ap.add_argument("--target")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--socks5", action="store_true", help="SOCKS5 tunnels instead of CONNECT")
    ap.add_argument(
        "--direct",
        action="store_true",
        help="connect to the target itself (a transparent proxy intercepts it); no --proxy",
    )
    a = ap.parse_args()
    if a.mode == "cpu":
        print("%.2f %.2f" % cpu_seconds(a.pid))
        return
    out = asyncio.run(idle(a))
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
