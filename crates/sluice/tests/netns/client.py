"""One client exchange for the transparent-gateway test, run inside the
client network namespace. Prints one JSON object: what happened.

usage: client.py PROTO TARGET [options]
PROTO: tls | http | tcp | udp | dns
TARGET: IP:PORT or NAME:PORT (a name only through a proxy)
--via direct | connect:IP:PORT | socks5:IP:PORT   (default direct)
--sni NAME      TLS server name (none: no SNI extension)
--host NAME     HTTP Host header
--split         send the ClientHello in two writes, 0.5 s apart
--ca FILE       trust this CA for TLS
--payload TEXT  bytes for tcp
--chunks N      tcp: send the payload N times, --pause seconds apart (a slow upload)
--name NAME     query name for dns
"""
import argparse
import json
import socket
import ssl
import struct
import time

p = argparse.ArgumentParser()
p.add_argument("proto")
p.add_argument("target")
p.add_argument("--via", default="direct")
p.add_argument("--sni")
p.add_argument("--host")
p.add_argument("--split", action="store_true")
p.add_argument("--ca")
p.add_argument("--payload", default="hello")
p.add_argument("--name", default="example.test")
p.add_argument("--timeout", type=float, default=5.0)
p.add_argument("--chunks", type=int, default=1)
p.add_argument("--pause", type=float, default=0.0)
a = p.parse_args()
host, port = a.target.rsplit(":", 1)
port = int(port)
out = {"ok": False}


def recv_all(s):
    data = b""
    while True:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except OSError as e:
            out["recv_error"] = str(e)
            break
        if not d:
            break
        data += d
    return data


def body_of(data):
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else None
    out["status"] = int(status) if status and status.isdigit() else None
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"sluice-rule":
            out["sluice_rule"] = v.strip().decode()
    try:
        out["body"] = json.loads(body)
    except ValueError:
        out["body"] = body.decode("latin-1")


def open_stream():
    kind, _, proxy = a.via.partition(":")
    if kind == "direct":
        return socket.create_connection((host, port), timeout=a.timeout)
    pip, pport = proxy.rsplit(":", 1)
    s = socket.create_connection((pip, int(pport)), timeout=a.timeout)
    if kind == "connect":
        s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(1)
            if not d:
                break
            head += d
        code = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
        out["proxy_status"] = code
        if code != 200:
            raise ConnectionError("proxy answered %d" % code)
        return s
    # SOCKS5, no authentication, CONNECT by name or address.
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        raise ConnectionError("socks5 method refused")
    try:
        addr = b"\x01" + socket.inet_aton(host)
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
    rep = s.recv(4)
    out["proxy_status"] = rep[1] if len(rep) > 1 else -1
    if len(rep) < 4 or rep[1] != 0:
        raise ConnectionError("socks5 reply %r" % rep)
    alen = {1: 4, 4: 16}.get(rep[3])
    if alen is None:
        alen = s.recv(1)[0]
    s.recv(alen + 2)
    return s


def tls():
    ctx = ssl.create_default_context(cafile=a.ca)
    if not a.sni:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outb, server_hostname=a.sni or None)
    s = open_stream()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outb.read()
    if a.split:
        s.sendall(hello[:40])
        time.sleep(0.5)
        s.sendall(hello[40:])
    else:
        s.sendall(hello)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outb.read()
            if pending:
                s.sendall(pending)
            d = s.recv(65536)
            if not d:
                raise ConnectionError("closed during the TLS handshake")
            inc.write(d)
    s.sendall(outb.read())
    obj.write(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (a.sni or host)).encode())
    s.sendall(outb.read())
    data = b""
    while True:
        try:
            data += obj.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
        d = s.recv(65536)
        if not d:
            break
        inc.write(d)
    body_of(data)


def http():
    s = open_stream()
    s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (a.host or host)).encode())
    body_of(recv_all(s))


def tcp():
    s = open_stream()
    for i in range(a.chunks):
        if i and a.pause:
            time.sleep(a.pause)
        s.sendall(a.payload.encode())
    s.shutdown(socket.SHUT_WR)
    data = recv_all(s)
    out["body"] = data.decode("latin-1")
    out["sent"] = len(a.payload.encode()) * a.chunks
    out["received"] = len(data)


def udp():
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(a.timeout)
    s.sendto(b"ping", (host, port))
    out["body"] = s.recvfrom(4096)[0].decode("latin-1")


def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(a.timeout)
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in a.name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00\x00\x01\x00\x01"
    s.sendto(q, (host, port))
    out["body"] = s.recvfrom(4096)[0].hex()


try:
    {"tls": tls, "http": http, "tcp": tcp, "udp": udp, "dns": dns}[a.proto]()
    out["ok"] = bool(out.get("body"))
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
