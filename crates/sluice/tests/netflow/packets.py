#!/usr/bin/env python3
"""NetFlow v5, v9 and IPFIX datagrams built with scapy, sent to a collector.

    packets.py SCENARIO HOST PORT [SOURCE_IP]

Scenarios: v5, v9, ipfix, bypass, grant, malformed, pcap (writes the pcap that
softflowd reads to HOST, which is then a file path). Each datagram goes
out of one UDP socket (bound to SOURCE_IP when given), in order. Prints
one line: the number of datagrams sent. The expectations live in
crates/sluice/tests/netflow.rs.
"""

import random
import socket
import struct
import sys
import time

try:
    from scapy.layers.netflow import (
        NetflowDataflowsetV9,
        NetflowFlowsetV9,
        NetflowHeader,
        NetflowHeaderV5,
        NetflowHeaderV9,
        NetflowHeaderV10,
        NetflowOptionsFlowset10,
        NetflowOptionsFlowsetOptionV9,
        NetflowOptionsFlowsetScopeV9,
        NetflowOptionsFlowsetV9,
        NetflowRecordV5,
        NetflowRecordV9,
        NetflowTemplateFieldV9,
        NetflowTemplateV9,
    )
except ImportError:
    sys.exit("scapy is not installed: pip install scapy (or apt-get install python3-scapy)")

EXPORT = 1_750_000_000  # 2025-06-15T15:06:40Z
UPTIME = 100_000


def ip4(a):
    return socket.inet_pton(socket.AF_INET, a)


def ip6(a):
    return socket.inet_pton(socket.AF_INET6, a)


def template(tid, fields):
    return NetflowTemplateV9(
        templateID=tid,
        template_fields=[NetflowTemplateFieldV9(fieldType=t, fieldLength=l) for t, l in fields],
    )


def data(tid, *records):
    return NetflowDataflowsetV9(templateID=tid, records=[NetflowRecordV9(fieldValue=r) for r in records])


def v9(source_id, *sets):
    p = NetflowHeader(version=9) / NetflowHeaderV9(sysUptime=UPTIME, unixSecs=EXPORT, SourceID=source_id)
    for s in sets:
        p = p / s
    return bytes(p)


def ipfix(domain, *sets):
    p = NetflowHeader(version=10) / NetflowHeaderV10(ExportTime=EXPORT, ObservationDomainID=domain)
    for s in sets:
        p = p / s
    # scapy 2.8 leaves the version's two bytes out of the message length
    # (RFC 7011 counts the whole message): set it right.
    b = bytes(p)
    return b[:2] + struct.pack("!H", len(b)) + b[4:]


def ipfix_raw(domain, body):
    """An IPFIX datagram around sets written by hand (lengths as given)."""
    return struct.pack("!HHIII", 10, 16 + len(body), EXPORT, 0, domain) + body


def v5(*records, sampling=0):
    p = NetflowHeader(version=5) / NetflowHeaderV5(
        sysUptime=UPTIME, unixSecs=EXPORT, unixNanoSeconds=0, samplingInterval=sampling
    )
    for r in records:
        p = p / r
    return bytes(p)


def v5rec(src, sport, dst, dport, proto, pkts, octets, first=90_000, last=99_000):
    return NetflowRecordV5(
        src=src, dst=dst, srcport=sport, dstport=dport, prot=proto,
        dpkts=pkts, dOctets=octets, first=first, last=last,
    )


# v9 template: src, dst, sport, dport, proto, bytes, packets, first, last.
V9_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (22, 4), (21, 4)]


def v9rec(src, sport, dst, dport, proto, octets, pkts, first=90_000, last=99_000):
    return (ip4(src) + ip4(dst) + struct.pack("!HHBIIII", sport, dport, proto, octets, pkts, first, last))


# IPFIX template: 64-bit counts, millisecond times.
IPFIX_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (152, 8), (153, 8)]
START_MS = EXPORT * 1000 - 10_000
END_MS = EXPORT * 1000 - 1_000


def ipfixrec(src, sport, dst, dport, proto, octets, pkts):
    return ip4(src) + ip4(dst) + struct.pack("!HHBQQQQ", sport, dport, proto, octets, pkts, START_MS, END_MS)


V6_FIELDS = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4)]


def v6rec(src, sport, dst, dport, proto, octets, pkts):
    return ip6(src) + ip6(dst) + struct.pack("!HHBII", sport, dport, proto, octets, pkts)


def scenario_v5():
    return [
        v5(
            v5rec("10.0.1.7", 40000, "140.82.112.3", 443, 6, 3, 1200),
            v5rec("140.82.112.3", 443, "10.0.1.7", 40000, 6, 2, 800),
        ),
        # Sampled 1 in 100 (mode 1 in the top two bits).
        v5(v5rec("10.0.1.9", 5353, "9.9.9.9", 53, 17, 1, 80), sampling=0x4000 | 100),
    ]


def scenario_v9():
    return [
        # Data before its template: kept, decoded when the template comes.
        v9(1, data(300, v9rec("10.0.1.7", 40001, "151.101.1.69", 443, 6, 500, 5))),
        v9(1, NetflowFlowsetV9(flowSetID=0, templates=[template(300, V9_FIELDS)])),
        # Domain 2 samples 1 in 10 (an options template and its record).
        v9(
            2,
            NetflowOptionsFlowsetV9(
                templateID=301,
                scopes=[NetflowOptionsFlowsetScopeV9(scopeFieldType=1, scopeFieldlength=4)],
                options=[NetflowOptionsFlowsetOptionV9(optionFieldType=34, optionFieldlength=4)],
                pad=b"\x00\x00",
            ),
            data(301, struct.pack("!II", 0, 10)),
            NetflowFlowsetV9(flowSetID=0, templates=[template(302, V9_FIELDS)]),
            data(302, v9rec("10.0.1.8", 40002, "104.16.0.1", 443, 6, 100, 1)),
        ),
        # Template 300 changes: now IPv6.
        v9(
            1,
            NetflowFlowsetV9(flowSetID=0, templates=[template(300, V6_FIELDS)]),
            data(300, v6rec("2001:db8:1::7", 40003, "2a04:4e42::223", 443, 6, 700, 7)),
        ),
    ]


def scenario_ipfix():
    return [
        ipfix(5, data(400, ipfixrec("10.0.1.7", 40010, "151.101.1.69", 443, 6, 1500, 10))),
        ipfix(5, NetflowFlowsetV9(flowSetID=2, templates=[template(400, IPFIX_FIELDS)])),
        # Domain 6 samples 1 in 4 (samplingPacketInterval in an options record).
        ipfix(
            6,
            NetflowOptionsFlowset10(
                templateID=401,
                scopes=[NetflowOptionsFlowsetScopeV9(scopeFieldType=149, scopeFieldlength=4)],
                options=[NetflowOptionsFlowsetOptionV9(optionFieldType=305, optionFieldlength=4)],
                pad=b"\x00\x00",
            ),
            data(401, struct.pack("!II", 6, 4)),
            NetflowFlowsetV9(flowSetID=2, templates=[template(402, IPFIX_FIELDS)]),
            data(402, ipfixrec("10.0.1.8", 40011, "104.16.0.2", 853, 6, 100, 1)),
        ),
        # Template 400 changes: now IPv6 and UDP.
        ipfix(
            5,
            NetflowFlowsetV9(flowSetID=2, templates=[template(400, V6_FIELDS)]),
            data(400, v6rec("2001:db8:1::8", 40012, "2a04:4e42::224", 443, 17, 900, 9)),
        ),
    ]


def scenario_bypass():
    return [
        v5(
            # To the gateway and the gateway's own egress: not recorded.
            v5rec("10.0.1.7", 40100, "10.0.9.1", 3128, 6, 10, 2000),
            v5rec("10.0.9.1", 40200, "140.82.112.3", 443, 6, 10, 2000),
            # Direct to an allowed address, a denied one, a resolver, and
            # a destination allowed with `bypass: true`.
            v5rec("10.0.1.7", 40101, "140.82.112.3", 443, 6, 4, 900),
            v5rec("10.0.1.7", 40102, "185.199.108.153", 443, 6, 5, 1000),
            v5rec("10.0.1.7", 40103, "9.9.9.9", 53, 17, 1, 70),
            v5rec("10.0.1.7", 40104, "151.101.1.69", 443, 6, 6, 1100),
        )
    ]


def scenario_grant():
    # To the address the DNS listener answered for app.example.com.
    return [v5(v5rec("10.0.1.7", 40300, "93.184.216.34", 443, 6, 4, 400))]


def scenario_malformed():
    rnd = random.Random(16)
    good = scenario_v5() + scenario_v9() + scenario_ipfix()
    out = [
        # Short.
        b"\x00",
        b"\x00\x05",
        b"\x00\x09\x00\x01",
        b"\x00\x0a\x00\x10\x00",
        # Unknown versions (1 and 7 are real NetFlow, not taken).
        bytes(NetflowHeader(version=1)) + b"\x00" * 14,
        struct.pack("!H", 7) + b"\x00" * 22,
        struct.pack("!H", 42) + b"\x00" * 40,
        # Wrong lengths: a v5 count beyond its records, an IPFIX length
        # that is not the datagram's, a v9 set longer than the datagram,
        # a v9 set of length 0.
        struct.pack("!HH", 5, 5) + v5(v5rec("10.0.1.7", 1, "140.82.112.3", 2, 6, 1, 1))[4:],
        struct.pack("!HH", 10, 200) + ipfix(5)[4:],
        v9(1) + struct.pack("!HH", 256, 400) + b"\x00" * 8,
        v9(1) + struct.pack("!HH", 256, 0),
    ]
    # A template that claims 10000 fields.
    out.append(ipfix_raw(7, struct.pack("!HHHH", 2, 12, 500, 10000) + struct.pack("!HH", 8, 4)))
    # Template bombs: 10 datagrams of 300 distinct templates each.
    for k in range(10):
        body = b"".join(struct.pack("!HHHH", 1000 + k * 300 + i, 1, 8, 4) for i in range(300))
        out.append(ipfix_raw(9, struct.pack("!HH", 2, 4 + len(body)) + body))
    # Data for templates that never come (the pending queue stays bounded).
    for k in range(300):
        body = b"\x01" * 1200
        out.append(ipfix_raw(11, struct.pack("!HH", 5000 + k, 4 + len(body)) + body))
    # Mutations of valid datagrams: bytes changed, cut, or extended.
    for _ in range(600):
        b = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(1, 6)):
            i = rnd.randrange(len(b))
            op = rnd.randrange(4)
            if op == 0:
                b[i] = rnd.randrange(256)
            elif op == 1:
                del b[i:]
                if not b:
                    b = bytearray(b"\x00")
            elif op == 2:
                b[i] = 0xFF
            else:
                b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        out.append(bytes(b))
    return out


def write_pcap(path):
    """The flows softflowd is fed: TCP both ways and a UDP query."""
    from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

    t0 = 1_750_000_000.0
    pk = []

    def add(p, t):
        p = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p
        p.time = t
        pk.append(p)

    for i in range(3):
        add(IP(src="10.0.1.7", dst="140.82.112.3") / TCP(sport=40000, dport=443, flags="PA") / Raw(b"x" * (100 * (i + 1))), t0 + i)
    add(IP(src="140.82.112.3", dst="10.0.1.7") / TCP(sport=443, dport=40000, flags="PA") / Raw(b"y" * 500), t0 + 1.5)
    add(IP(src="10.0.1.8", dst="9.9.9.9") / UDP(sport=5000, dport=53) / Raw(b"q" * 30), t0 + 2)
    wrpcap(path, pk)


def main():
    name = sys.argv[1]
    if name == "pcap":
        write_pcap(sys.argv[2])
        print(5)
        return
    host, port = sys.argv[2], int(sys.argv[3])
    packets = globals()["scenario_" + name]()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    if len(sys.argv) > 4:
        s.bind((sys.argv[4], 0))
    for i, p in enumerate(packets):
        s.sendto(p, (host, port))
        # Paced, so that a burst never overflows the collector's receive
        # buffer (the test counts what was dropped and why).
        if i % 4 == 3:
            time.sleep(0.001)
    print(len(packets))


if __name__ == "__main__":
    main()
