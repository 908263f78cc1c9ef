"""Origin servers for the transparent-gateway test, run inside the origin
network namespace: TLS and HTTP servers that say which address answered,
a TCP echo, a DNS stub, and listeners that must never be reached (they log
every contact). Every contact is appended to LOG as one JSON line.

usage: origin.py LOG CERT KEY DNS_MAP_JSON SPEC...
SPEC: tls:IP:PORT | http:IP:PORT | echo:IP:PORT | udp:IP:PORT | dns:IP:PORT
"""
import json
import socket
import socketserver
import ssl
import struct
import sys
import threading

LOG, CERT, KEY, NAMES = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
lock = threading.Lock()


def family(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def addr(ip, port):
    return ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port)


def log(**kv):
    with lock, open(LOG, "a") as f:
        f.write(json.dumps(kv) + "\n")


def http_answer(conn, kind, local, sni):
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    host = ""
    for line in data.split(b"\r\n")[1:]:
        if line.lower().startswith(b"host:"):
            host = line[5:].strip().decode("latin-1")
    body = json.dumps({"origin": local, "kind": kind, "host": host, "sni": sni}).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def tcp_server(kind, ip, port):
    ctx = None
    if kind == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERT, KEY)
    s = socket.socket(family(ip), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(64)

    def handle(conn, peer):
        local = addr(ip, port)
        log(kind=kind, local=local, peer=addr(peer[0], peer[1]))
        try:
            if kind == "echo":
                conn.settimeout(10)
                while True:
                    d = conn.recv(4096)
                    if not d:
                        break
                    conn.sendall(b"echo " + local.encode() + b" " + d)
            elif kind == "tls":
                box = {}
                ctx2 = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx2.load_cert_chain(CERT, KEY)
                ctx2.sni_callback = lambda sock, name, c: box.__setitem__("sni", name)
                t = ctx2.wrap_socket(conn, server_side=True)
                http_answer(t, kind, local, box.get("sni"))
                t.close()
            else:
                http_answer(conn, kind, local, None)
        except Exception as e:  # a refused or cut connection is fine here
            log(kind=kind, local=local, error=str(e))
        finally:
            conn.close()

    def loop():
        while True:
            c, p = s.accept()
            threading.Thread(target=handle, args=(c, p), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def dns_answer(q):
    if len(q) < 12:
        return None
    i, labels = 12, []
    while q[i] != 0:
        n = q[i]
        labels.append(q[i + 1:i + 1 + n].decode("latin-1").lower())
        i += 1 + n
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    qend = i + 5
    name = ".".join(labels)
    ips = NAMES.get(name)
    rdata = [socket.inet_aton(a) for a in (ips or []) if qtype == 1 and ":" not in a]
    flags = 0x8580 if ips is not None else 0x8583
    r = q[:2] + struct.pack("!HHHHH", flags, 1, len(rdata), 0, 0) + q[12:qend]
    for d in rdata:
        r += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 0, len(d)) + d
    return r, name


def udp_server(kind, ip, port):
    s = socket.socket(family(ip), socket.SOCK_DGRAM)
    s.bind((ip, port))

    def loop():
        while True:
            d, peer = s.recvfrom(4096)
            local = addr(ip, port)
            peer = (peer[0], peer[1])
            if kind == "dns":
                a = dns_answer(d)
                log(kind=kind, local=local, peer=addr(*peer), name=a and a[1])
                if a:
                    s.sendto(a[0], peer)
            else:
                log(kind=kind, local=local, peer=addr(*peer))
                s.sendto(b"pong", peer)

    threading.Thread(target=loop, daemon=True).start()


for spec in sys.argv[5:]:
    kind, rest = spec.split(":", 1)
    ip, port = rest.rsplit(":", 1)
    (udp_server if kind in ("udp", "dns") else tcp_server)(kind, ip, int(port))
print("ready", flush=True)
threading.Event().wait()
