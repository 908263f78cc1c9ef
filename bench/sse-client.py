#!/usr/bin/env python3
"""Live-stream subscribers for bench/sse-subscribers.sh: opens N clients of
/api/v1/flows/stream on the admin address, reads every stream as fast as it
comes (one process, selectors, 1 MiB reads, counting without parsing), and
on SIGINT prints the flow events received and the records each subscriber
was told it skipped (`event: lagged`), in total and the fewest per stream.

    sse-client.py 127.0.0.1:PORT N
"""

import re
import selectors
import signal
import socket
import sys


def main():
    host, _, port = sys.argv[1].rpartition(":")
    n = int(sys.argv[2])
    sel = selectors.DefaultSelector()
    counts = {}
    for _ in range(n):
        s = socket.create_connection((host, int(port)))
        s.sendall(
            f"GET /api/v1/flows/stream HTTP/1.1\r\nHost: {sys.argv[1]}\r\n\r\n".encode()
        )
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        counts[s] = [0, 0, b""]
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    skipped = re.compile(rb'"skipped":(\d+)')
    while not stop:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(s)
                continue
            c = counts[s]
            # Keep a short tail so a marker split across reads is counted once.
            buf = c[2] + data
            c[0] += buf.count(b"event: flow\n") - c[2].count(b"event: flow\n")
            c[1] += sum(int(m) for m in skipped.findall(data))
            c[2] = buf[-16:]
    flows = [c[0] for c in counts.values()]
    skips = [c[1] for c in counts.values()]
    print(
        f"subscribers={n} flow_events_total={sum(flows)} fewest_per_stream={min(flows)} "
        f"skipped_total={sum(skips)}"
    )


if __name__ == "__main__":
    main()
