#!/usr/bin/env python3
"""CPU-heavy inspection load for bench/hol.sh: while it runs, a proxy
spends its CPU on TLS interception with a new leaf certificate per
connection and on DLP scans of large uploads.

  heavy.py --proxy PORT --tls-port PORT --sink-port PORT --ca FILE
           [--src 127.0.0.2] [--tls-src SRC] [--tls-workers 2] [--dlp-workers 1]
           [--upload-mib 32] [--seconds 10]

- A TLS worker loops: TCP to the proxy from --tls-src (default --src), `CONNECT
  127.0.0.1:TLS_PORT`, a TLS handshake with SNI `h<N>-<run>.hol.test`
  (a name never used before, so the proxy mints and signs a leaf for every
  connection: its cache never hits) trusting only --ca (the proxy's
  interception CA), one `GET /` with `Connection: close`, read to the end.
- A DLP worker loops: an absolute-form `POST http://127.0.0.1:SINK_PORT/up`
  of --upload-mib MiB of text-like data (no secret: every byte is scanned,
  nothing is refused), then the answer.

Every loop is bounded by --seconds (an upload under way is finished).
Prints one JSON object: handshakes and uploads done, MiB uploaded, errors
(the first three kept). Threads: the handshakes and sends release the GIL.
"""

import argparse
import itertools
import json
import os
import socket
import ssl
import threading
import time

LINE = b"user=alice&note=The quick brown fox 1234 jumps over dGhlIGxhenkgZG9n 42 times;\n"
BLOCK = (LINE * ((1 << 20) // len(LINE) + 1))[: 1 << 20]
TIMEOUT = 30.0


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            raise ConnectionError("closed before the answer's head")
        buf += b
        if len(buf) > 65536:
            raise ConnectionError("oversized head")
    return buf


def connect(args, src=None):
    s = socket.socket()
    s.settimeout(TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((src or args.src, 0))
    s.connect(("127.0.0.1", args.proxy))
    return s


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.handshakes = 0
        self.uploads = 0
        self.mib = 0
        self.errors = 0
        self.samples = []

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, what):
        with self.lock:
            self.errors += 1
            if len(self.samples) < 3:
                self.samples.append(what)


def tls_worker(args, end, names, ctx, tally):
    target = "127.0.0.1:%d" % args.tls_port
    while time.monotonic() < end:
        name = names()
        try:
            s = connect(args, args.tls_src)
            s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
            head = read_head(s)
            if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                raise ConnectionError("CONNECT answered %r" % head[:60])
            t = ctx.wrap_socket(s, server_hostname=name)
            t.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % name).encode())
            got = b""
            while True:
                b = t.recv(65536)
                if not b:
                    break
                got += b
            t.close()
            if not got.startswith(b"HTTP/1.1 200"):
                raise ConnectionError("GET answered %r" % got[:60])
            tally.add(handshakes=1)
        except (OSError, ssl.SSLError, ConnectionError) as e:
            tally.error("tls %s: %s" % (name, e))
            time.sleep(0.05)


def dlp_worker(args, end, tally):
    n = args.upload_mib << 20
    head = (
        "POST http://127.0.0.1:%d/up HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
        % (args.sink_port, args.sink_port, n)
    ).encode()
    while time.monotonic() < end:
        try:
            s = connect(args)
            s.sendall(head)
            for _ in range(args.upload_mib):
                s.sendall(BLOCK)
            got = read_head(s)
            s.close()
            if not got.startswith(b"HTTP/1.1 200"):
                raise ConnectionError("POST answered %r" % got[:60])
            tally.add(uploads=1, mib=args.upload_mib)
        except (OSError, ConnectionError) as e:
            tally.error("upload: %s" % e)
            time.sleep(0.05)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", type=int, required=True)
    p.add_argument("--tls-port", type=int, required=True)
    p.add_argument("--sink-port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--src", default="127.0.0.2")
    p.add_argument("--tls-src", default=None)
    p.add_argument("--tls-workers", type=int, default=2)
    p.add_argument("--dlp-workers", type=int, default=1)
    p.add_argument("--upload-mib", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    run = os.urandom(4).hex()
    counter = itertools.count()
    lock = threading.Lock()

    def gen():
        with lock:
            i = next(counter)
        return "h%d-%s.hol.test" % (i, run)

    tally = Tally()
    start = time.monotonic()
    end = start + args.seconds
    threads = [threading.Thread(target=tls_worker, args=(args, end, gen, ctx, tally)) for _ in range(args.tls_workers)]
    threads += [threading.Thread(target=dlp_worker, args=(args, end, tally)) for _ in range(args.dlp_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    print(
        json.dumps(
            {
                "seconds": round(took, 3),
                "handshakes": tally.handshakes,
                "handshakes_per_s": round(tally.handshakes / took, 1),
                "uploads": tally.uploads,
                "upload_mib_per_s": round(tally.mib / took, 1),
                "errors": tally.errors,
                "error_samples": tally.samples,
            }
        )
    )


if __name__ == "__main__":
    main()
