#!/usr/bin/env python3
"""Local HTTP origins for bench/proxy.sh (loopback only).

    origin.py http PORT        HTTP/1.1 keep-alive server: GET /bytes/N -> N bytes
    origin.py bulk PORT        same protocol, thread per connection, body sent with
                               sendall() from one preallocated zero buffer (bulk rate)

The TCP echo origin of the tunnel and idle-tunnel measures is the compiled
crates/sluice-loadgen (`sluice-loadgen echo PORT...`), not here.

Each mode prints "ready" on stdout once it listens. The address is
127.0.0.1 unless ORIGIN_HOST says otherwise (bench/transparent.sh binds the
origin namespace's address).
"""

import asyncio
import os
import socket
import sys
import threading

RESPONSES = {}
HOST = os.environ.get("ORIGIN_HOST", "127.0.0.1")


def head_for(n, close=False):
    conn = b"close" if close else b"keep-alive"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\nConnection: %s\r\n\r\n" % (n, conn)
    )


def parse(head):
    """(status, length, close) for a request head (bytes, without the blank line)."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3:
        return 400, 0, True
    path, version = parts[1], parts[2]
    # Proxies send origin-form; accept absolute-form too.
    if path.startswith(b"http://"):
        path = b"/" + path[7:].partition(b"/")[2]
    low = rest.lower()
    if version == b"HTTP/1.0":
        close = b"connection: keep-alive" not in low
    else:
        close = b"connection: close" in low
    if path.startswith(b"/bytes/"):
        try:
            return 200, int(path[7:]), close
        except ValueError:
            return 400, 0, True
    return 200, 2, close


def response(status, n, close):
    key = (status, n, close)
    r = RESPONSES.get(key)
    if r is None:
        if status != 200:
            r = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        else:
            r = head_for(n, close) + b"x" * n
        if n <= 1 << 20:
            RESPONSES[key] = r
    return r


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.buf) > 65536:
                    self.t.close()
                return
            head, self.buf = self.buf[:i], self.buf[i + 4 :]
            status, n, close = parse(head)
            self.t.write(response(status, n, close))
            if close:
                self.t.close()
                return


async def serve(factory, ports):
    loop = asyncio.get_running_loop()
    servers = []
    for p in ports:
        servers.append(
            await loop.create_server(factory, HOST, p, backlog=4096, reuse_address=True)
        )
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


ZEROS = memoryview(bytearray(4 << 20))


def bulk_conn(c):
    with c:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
                if len(buf) > 65536:
                    return
            head, _, buf = buf.partition(b"\r\n\r\n")
            status, n, close = parse(head)
            if status != 200:
                c.sendall(response(status, 0, True))
                return
            c.sendall(head_for(n, close))
            while n > 0:
                k = min(n, len(ZEROS))
                c.sendall(ZEROS[:k])
                n -= k
            if close:
                return


def bulk(port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(1024)
    print("ready", flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=bulk_conn, args=(c,), daemon=True).start()


def main():
    mode, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
    if mode == "http":
        asyncio.run(serve(Http, ports))
    elif mode == "bulk":
        bulk(ports[0])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
