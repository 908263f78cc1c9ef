#!/usr/bin/env python3
"""Realistic, labelled flow records for Sluice's detectors (issue 12).

Writes, into --out DIR:

- records.jsonl   weeks of flow records exactly as Sluice writes them (every
                  field, in order, null where it does not apply), mostly in
                  `ts` order with a few records a few minutes late, as a merged
                  log of several replicas is;
- labels.json     the planted anomalies (kind, src, dst as an alert names it,
                  start, end) and the benign big transfers, which must raise
                  nothing;
- sluice.yaml     the policy the records were judged by (zones, sources,
                  allow/deny rules, `countries:` per zone, `detect.geoip`);
- countries.mmdb  a GeoLite2-Country-layout database (`country.iso_code`) for
                  every address the records use (needs PyPI `mmdb-writer`;
                  --no-mmdb skips it).

Deterministic from --seed: the same arguments give byte-identical files.
Only the Python 3 standard library is needed for the records.

The traffic: an office (workstations behind the HTTP proxy in `open` mode,
with a blocklist; office hours, quiet weekends, lunch dips, people on leave,
a chat app's long tunnel with interim records, tracker denials on news
sites, one-off visits to new sites, developers pushing to their git host),
servers (transparent listener, `enforce`, 24/7 with an evening peak,
monitoring agents that post every 60 s or 5 min, nightly package updates,
hourly log shipping, a few telemetry denials a day), CI runners (`report`
mode being rolled out: would-be denials pass and are recorded; job bursts
in office hours and a nightly build) and a backup host (a nightly
incremental backup of gigabytes to its bucket, a full one on Sundays).
DNS queries through the DNS listener for what hosts connect to, CDN hash
names and an antivirus's hash lookups (long, high-entropy, benign).

Anomalies start after the learning period (--learn-days, default 8).
The addresses are fictional: destination blocks are assigned to countries
by the generated countries.mmdb only; nothing is ever dialed.
"""

import argparse
import base64
import bisect
import datetime
import hashlib
import importlib.util
import ipaddress
import itertools
import json
import math
import os
import random
import sys

DAY = 86_400_000
HOUR = 3_600_000
MIN = 60_000
SEC = 1000

# === time ===

_day_prefix = {}


def rfc(ms):
    """RFC 3339 UTC with milliseconds, as Sluice writes it."""
    d, rem = divmod(ms, DAY)
    p = _day_prefix.get(d)
    if p is None:
        p = (datetime.datetime(1970, 1, 1) + datetime.timedelta(days=d)).strftime("%Y-%m-%dT")
        _day_prefix[d] = p
    s, milli = divmod(rem, 1000)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return "%s%02d:%02d:%02d.%03dZ" % (p, h, m, s, milli)


def js(v):
    """A JSON value as serde_json writes it (no spaces)."""
    return "null" if v is None else json.dumps(v, separators=(",", ":"))


# === destinations and countries ===

# Fictional /16 blocks per country: the generated countries.mmdb is the
# only thing that places them, and no record is ever dialed.
COUNTRY_BLOCKS = {
    "US": ["23.40", "34.120", "44.210", "52.90"],
    "DE": ["49.12", "78.46", "85.214"],
    "NL": ["77.60", "145.80"],
    "IE": ["52.210", "63.34"],
    "GB": ["81.2", "151.101"],
    "FR": ["91.160", "163.172"],
    "JP": ["133.242"],
    "BR": ["177.10"],
    "SG": ["128.199"],
    "RU": ["95.163"],
    "CN": ["114.80"],
    "IR": ["5.160"],
}
_block_next = {}
_PREFIX_COUNTRY = {b: c for c, bs in COUNTRY_BLOCKS.items() for b in bs}


# IPv6 /32s for the services that have AAAA records (fictional too).
COUNTRY_BLOCKS6 = {"US": "2600:1f18", "IE": "2a05:d018", "NL": "2a02:2e0", "DE": "2a01:4f8"}
_PREFIX6_COUNTRY = {b: c for c, b in COUNTRY_BLOCKS6.items()}


def country_of(ip):
    if ":" in ip:
        a, b, _ = ip.split(":", 2)
        return _PREFIX6_COUNTRY.get(a + ":" + b)
    a, b, _ = ip.split(".", 2)
    return _PREFIX_COUNTRY.get(a + "." + b)


def alloc_block(country):
    """The next free /24 in the country's blocks."""
    blocks = COUNTRY_BLOCKS[country]
    n = _block_next.get(country, 0)
    _block_next[country] = n + 1
    b16 = blocks[n % len(blocks)]
    third = 10 + n // len(blocks)
    if third > 250:
        raise SystemExit("detect-gen: out of addresses for %s" % country)
    return "%s.%d" % (b16, third)


def h32(*parts):
    return int.from_bytes(hashlib.blake2b("|".join(parts).encode(), digest_size=4).digest(), "big")


class Svc:
    """A destination service: a registrable domain, its host names and the
    /24 its addresses come from."""

    def __init__(self, key, domain, hosts, country, port=443, out=(2e3, 1.0), inb=(40e3, 1.3), dur=(3e3, 1.2),
                 cdn=None, v6=False):
        self.key = key
        self.cdn = cdn
        self.v6 = v6 and country in COUNTRY_BLOCKS6
        self.domain = domain
        self.hosts = hosts
        self.country = country
        self.port = port
        self.block = alloc_block(country)
        self.out = out  # (median bytes, lognormal sigma)
        self.inb = inb
        self.dur = dur

    def ips(self, host):
        base = h32(host) % 200 + 20
        return ["%s.%d" % (self.block, base + k) for k in range(1 + h32(host, "n") % 3)]

    def cnames(self, host):
        """The CNAME chain a resolver hands back before the addresses, as
        Sluice's records write it (`CNAME target.`)."""
        if self.cdn == "akamai":
            return ["CNAME %s.edgekey.net." % host, "CNAME e%d.a.akamaiedge.net." % (h32(host) % 90000)]
        if self.cdn == "fastly":
            return ["CNAME %s.map.fastly.net." % host.split(".")[-2]]
        if self.cdn == "azure":
            return ["CNAME %s-%s.trafficmanager.net." % (host.split(".")[0], hexlabel(random.Random(host), 6)),
                    "CNAME %s.azureedge.net." % host.replace(".", "-")]
        return []

    def ips6(self, host):
        if not self.v6:
            return []
        return [ipaddress.ip_address("%s:%x:%x::%x" % (COUNTRY_BLOCKS6[self.country], int(self.block.split(".")[-1]),
                                                        h32(host) % 0xFFFF, 0x200e + k)).compressed
                for k in range(1 + h32(host, "n") % 2)]  # RFC 5952 text, as Rust writes it

    def ip(self, host, rng):
        """An address the host resolves to: IPv6 for a share of flows where
        the service has AAAA records (happy eyeballs), else IPv4."""
        if self.v6 and rng.random() < 0.3:
            ips = self.ips6(host)
        else:
            ips = self.ips(host)
        return ips[rng.randrange(len(ips))]


def S(*a, **k):
    s = Svc(*a, **k)
    SERVICES[s.key] = s
    return s


SERVICES = {}
# Office: the web as people use it.
S("google", "google.com", ["www.google.com", "accounts.google.com", "mail.google.com", "docs.google.com", "drive.google.com", "calendar.google.com"], "US", v6=True)
S("gstatic", "gstatic.com", ["www.gstatic.com", "fonts.gstatic.com", "ssl.gstatic.com"], "US", out=(900, 0.5), inb=(30e3, 1.2), v6=True)
S("googleapis", "googleapis.com", ["fonts.googleapis.com", "www.googleapis.com", "content-autofill.googleapis.com", "safebrowsing.googleapis.com"], "US", out=(1.5e3, 0.6), v6=True)
S("office", "office.com", ["www.office.com", "outlook.office.com"], "IE", inb=(120e3, 1.2), cdn="azure", v6=True)
S("o365", "office365.com", ["outlook.office365.com", "substrate.office365.com"], "IE", out=(6e3, 1.2), inb=(60e3, 1.4), v6=True)
S("msol", "microsoftonline.com", ["login.microsoftonline.com"], "IE", out=(3e3, 0.5), inb=(15e3, 0.6))
S("slack", "slack.com", ["app.slack.com", "edgeapi.slack.com", "files.slack.com", "wss-primary.slack.com"], "US", out=(3e3, 1.0), inb=(50e3, 1.4))
S("zoom", "zoom.us", ["zoom.us", "us05web.zoom.us", "us05log.zoom.us"], "US", out=(2e3, 0.8), inb=(20e3, 1.0))
S("notion", "notion.so", ["www.notion.so", "msgstore.www.notion.so"], "US", out=(4e3, 1.1), inb=(80e3, 1.2))
S("figma", "figma.com", ["www.figma.com", "s3-figma-videos-production-sig.figma.com"], "US", inb=(200e3, 1.5))
S("bbc", "bbc.co.uk", ["www.bbc.co.uk", "static.files.bbci.co.uk"], "GB", inb=(400e3, 1.0), cdn="akamai")
S("spiegel", "spiegel.de", ["www.spiegel.de", "cdn.prod.www.spiegel.de"], "DE", inb=(500e3, 1.0), cdn="akamai")
S("heise", "heise.de", ["www.heise.de", "heise.cloudimg.io"], "DE", inb=(300e3, 1.0), cdn="akamai")
S("lemonde", "lemonde.fr", ["www.lemonde.fr", "img.lemde.fr"], "FR", inb=(350e3, 1.0), cdn="fastly")
S("nytimes", "nytimes.com", ["www.nytimes.com", "static01.nyt.com"], "US", inb=(450e3, 1.0), cdn="fastly")
S("wikipedia", "wikipedia.org", ["de.wikipedia.org", "en.wikipedia.org"], "NL", inb=(120e3, 1.0), v6=True)
S("wikimedia", "wikimedia.org", ["upload.wikimedia.org", "meta.wikimedia.org"], "NL", inb=(200e3, 1.2), v6=True)
S("stackoverflow", "stackoverflow.com", ["stackoverflow.com", "cdn.sstatic.net"], "US", inb=(150e3, 1.0), cdn="fastly")
S("linkedin", "linkedin.com", ["www.linkedin.com", "media.licdn.com"], "IE", inb=(250e3, 1.1), cdn="akamai")
S("amazon", "amazon.de", ["www.amazon.de", "m.media-amazon.com"], "DE", inb=(300e3, 1.1), cdn="akamai")
S("cloudflare", "cloudflare.com", ["cdnjs.cloudflare.com", "challenges.cloudflare.com"], "US", out=(800, 0.4), inb=(40e3, 1.2), v6=True)
S("cloudfront", "cloudfront.net", [], "US", out=(900, 0.4), inb=(150e3, 1.5))  # hash hosts
S("googlevideo", "googlevideo.com", [], "US", out=(3e3, 0.5), inb=(40e6, 1.0), dur=(120e3, 0.8), v6=True)  # hash hosts
S("wetransfer", "wetransfer.com", ["wetransfer.com", "storm-eu.wetransfer.com"], "NL", out=(50e3, 1.2), inb=(30e3, 1.0))
S("dropbox", "dropbox.com", ["www.dropbox.com", "content.dropboxapi.com"], "US", out=(200e3, 1.2), inb=(100e3, 1.5))
# Developers and CI.
S("github", "github.com", ["github.com", "api.github.com", "codeload.github.com", "collector.github.com"], "US", out=(8e3, 1.5), inb=(300e3, 1.8))
S("ghuc", "githubusercontent.com", ["raw.githubusercontent.com", "objects.githubusercontent.com", "avatars.githubusercontent.com"], "US", inb=(400e3, 1.6))
S("npm", "npmjs.org", ["registry.npmjs.org"], "US", out=(1.2e3, 0.4), inb=(500e3, 1.5), cdn="fastly")
S("pypi", "pypi.org", ["pypi.org"], "US", out=(1.2e3, 0.4), inb=(80e3, 1.0))
S("pyhosted", "pythonhosted.org", ["files.pythonhosted.org"], "US", out=(1.2e3, 0.4), inb=(2e6, 1.5), cdn="fastly")
S("crates", "crates.io", ["index.crates.io", "static.crates.io"], "US", out=(1.2e3, 0.4), inb=(300e3, 1.5))
S("rustlang", "rust-lang.org", ["static.rust-lang.org"], "US", out=(1.2e3, 0.4), inb=(30e6, 1.0))
S("dockerio", "docker.io", ["registry-1.docker.io", "auth.docker.io"], "US", out=(2e3, 0.5), inb=(20e3, 1.0))
S("dockercom", "docker.com", ["production.cloudflare.docker.com"], "US", out=(1.5e3, 0.4), inb=(80e6, 1.2))
S("yarn", "yarnpkg.com", ["registry.yarnpkg.com"], "US", out=(1.2e3, 0.4), inb=(400e3, 1.4))
S("gitlab", "gitlab.com", ["gitlab.com"], "US", out=(8e3, 1.5), inb=(300e3, 1.6))
# Operating systems and certificates.
S("msupdate", "windowsupdate.com", ["download.windowsupdate.com", "ctldl.windowsupdate.com"], "IE", port=80, out=(700, 0.3), inb=(2e6, 2.0), cdn="akamai")
S("mstelemetry", "microsoft.com", ["v10.events.data.microsoft.com", "settings-win.data.microsoft.com", "go.microsoft.com"], "IE", out=(6e3, 0.8), inb=(2e3, 0.6), cdn="azure")
S("digicert", "digicert.com", ["ocsp.digicert.com"], "US", port=80, out=(450, 0.1), inb=(1.8e3, 0.2), dur=(80, 0.5))
# Servers.
S("debian", "debian.org", ["deb.debian.org", "security.debian.org"], "NL", port=80, out=(400, 0.2), inb=(3e6, 1.8), cdn="fastly")
S("datadog", "datadoghq.eu", ["api.datadoghq.eu", "http-intake.logs.datadoghq.eu"], "DE", out=(6e3, 0.6), inb=(300, 0.2), dur=(250, 0.4))
S("stripe", "stripe.com", ["api.stripe.com"], "US", out=(2.5e3, 0.6), inb=(4e3, 0.6), dur=(400, 0.6))
S("sendgrid", "sendgrid.com", ["api.sendgrid.com"], "US", out=(15e3, 1.0), inb=(600, 0.3), dur=(300, 0.5))
S("sentry", "sentry.io", ["o450123.ingest.sentry.io"], "US", out=(9e3, 1.0), inb=(400, 0.2), dur=(200, 0.5))
S("twilio", "twilio.com", ["api.twilio.com"], "US", out=(1.5e3, 0.5), inb=(1.2e3, 0.4), dur=(350, 0.5))
S("letsencrypt", "letsencrypt.org", ["acme-v02.api.letsencrypt.org"], "US", out=(3e3, 0.5), inb=(6e3, 0.5))
S("logs", "amazonaws.com", ["corp-logs.s3.eu-central-1.amazonaws.com"], "DE", out=(20e6, 0.4), inb=(2e3, 0.3), dur=(20e3, 0.6))
S("artifacts", "amazonaws.com", ["corp-artifacts.s3.eu-central-1.amazonaws.com"], "DE", out=(150e6, 0.8), inb=(3e3, 0.3), dur=(60e3, 0.6))
S("backup", "amazonaws.com", ["corp-backup.s3.eu-central-1.amazonaws.com"], "DE", out=(600e6, 0.4), inb=(40e3, 0.4), dur=(300e3, 0.3))
# Trackers (office blocklist) and what servers try without being allowed.
S("trackers", "", ["securepubads.g.doubleclick.net", "ib.adnxs.com", "trc.taboola.com", "widgets.outbrain.com",
                   "static.criteo.net", "sb.scorecardresearch.com", "pixel.quantserve.com", "c.amazon-adsystem.com"], "US")
S("ubuntu", "ubuntu.com", ["motd.ubuntu.com", "connectivity-check.ubuntu.com", "changelogs.ubuntu.com"], "GB", out=(500, 0.2), inb=(2e3, 0.5))
S("snapcraft", "snapcraft.io", ["api.snapcraft.io"], "GB")
S("nodejs", "nodejs.org", ["nodejs.org"], "US")

TRACKER_DOMAINS = ["doubleclick.net", "adnxs.com", "taboola.com", "outbrain.com", "criteo.net",
                   "scorecardresearch.com", "quantserve.com", "amazon-adsystem.com"]

NEWS = ["bbc", "spiegel", "heise", "lemonde", "nytimes", "linkedin", "amazon"]
OFFICE_COMMON = {"google": 10, "gstatic": 8, "googleapis": 6, "office": 5, "o365": 9, "msol": 3, "slack": 8, "zoom": 2,
                 "notion": 3, "wikipedia": 3, "wikimedia": 2, "stackoverflow": 2, "cloudflare": 3, "cloudfront": 4,
                 "mstelemetry": 2}
DEV = {"github": 8, "ghuc": 4, "npm": 2, "pypi": 1, "pyhosted": 1, "crates": 1, "dockerio": 1, "dockercom": 1,
       "gitlab": 1, "stackoverflow": 4}

WORDS = ["river", "maple", "quartz", "nimbus", "orbit", "pixel", "harbor", "cedar", "lumen", "vertex", "atlas",
         "ember", "fjord", "granite", "helix", "iris", "juniper", "kepler", "lotus", "meadow", "nova", "onyx",
         "prairie", "quill", "raven", "sierra", "tundra", "umber", "violet", "willow", "yonder", "zephyr",
         "bistro", "garden", "travel", "recipe", "cycling", "chess", "vinyl", "camera", "hiking", "poetry"]
TLDS = ["com", "de", "net", "org", "io", "fr", "nl", "co.uk", "eu"]

# === the policy (written to sluice.yaml, and used to judge the records) ===


class Rule:
    def __init__(self, id, host=None, cidr=None, ports=None):
        self.id = id
        self.host = host
        self.cidr = ipaddress.ip_network(cidr) if cidr else None
        self.ports = ports  # list of ints, or None (any)
        target = "host %s" % host if host else "cidr %s" % cidr
        self.text = target + (" ports %s" % json.dumps(ports, separators=(",", ":")) if ports else "")

    def match_name(self, name, port):
        if not self.host or (self.ports is not None and port is not None and port not in self.ports):
            return False
        if self.host.startswith("*."):
            return name.endswith(self.host[1:])
        return name == self.host

    def match_ip(self, ip, port):
        if not self.cidr or (self.ports is not None and port not in self.ports):
            return False
        return ipaddress.ip_address(ip) in self.cidr

    def yaml(self, deny=False):
        out = "      - id: %s\n" % self.id
        out += ('        host: "%s"\n' % self.host) if self.host else "        cidr: %s\n" % self.cidr
        if self.ports is not None:
            out += "        ports: [%s]\n" % ", ".join(str(p) for p in self.ports)
        elif not deny:
            out += "        ports: any\n"
        return out


class Zone:
    def __init__(self, name, mode, sources, countries, allow, deny, users=()):
        self.name = name
        self.users = list(users)
        self.mode = mode
        self.sources = sources
        self.countries = countries
        self.allow = allow
        self.deny = deny
        self._cache = {}

    def decide(self, name, ip, port, dns=False):
        """(verdict, enforced, rule, reason) as Sluice's two phases give them
        for these rules (no cidr allow rules, so a name never waits on one)."""
        key = (name, ip, port, dns)
        d = self._cache.get(key)
        if d is None:
            d = self._decide(name, ip, port, dns)
            if len(self._cache) < 200_000:
                self._cache[key] = d
        return d

    def _decide(self, name, ip, port, dns):
        report = self.mode == "report"
        if name is not None:
            for r in self.deny:
                if r.match_name(name, None if dns else port):
                    return ("deny", not report, r.id, "matches deny rule %s (%s)" % (r.id, r.text))
            for r in self.allow:
                if r.match_name(name, None if dns else port):
                    return ("allow", True, r.id, "matches allow rule %s (%s)" % (r.id, r.text))
            what = "%s (DNS)" % name if dns else "%s port %d" % (name, port)
            if ip is not None and not dns:
                for r in self.deny:
                    if r.match_ip(ip, port):
                        return ("deny", not report, r.id, "%s matches deny rule %s (%s)" % (ip, r.id, r.text))
        else:
            for r in self.deny:
                if r.match_ip(ip, port):
                    return ("deny", not report, r.id, "matches deny rule %s (%s)" % (r.id, r.text))
            for r in self.allow:
                if r.match_ip(ip, port):
                    return ("allow", True, r.id, "matches allow rule %s (%s)" % (r.id, r.text))
            what = "%s port %d" % (ip, port)
        if self.mode == "open":
            return ("allow", True, "default", "%s: no deny rule of zone %s matches (open mode)" % (what, self.name))
        return ("deny", self.mode == "enforce", "default",
                "%s: no rule of zone %s allows it (%s mode)" % (what, self.name, self.mode))

    def yaml(self):
        out = "  - name: %s\n    mode: %s\n" % (self.name, self.mode)
        out += "    sources: [%s]\n" % ", ".join(self.sources)
        if self.users:
            out += "    users: [%s]\n" % ", ".join(self.users)
        out += "    countries: [%s]\n" % ", ".join(self.countries)
        if self.allow:
            out += "    allow:\n" + "".join(r.yaml() for r in self.allow)
        if self.deny:
            out += "    deny:\n" + "".join(r.yaml(deny=True) for r in self.deny)
        return out


def host_rules(prefix, domains, ports):
    rules = []
    for d in domains:
        slug = d.replace(".", "-")
        rules.append(Rule("%s-%s" % (prefix, slug), host=d, ports=ports))
        if not d.startswith("corp-"):
            rules.append(Rule("%s-%s-sub" % (prefix, slug), host="*." + d, ports=ports))
    return rules


def make_zones():
    office = Zone(
        "office", "open", ["10.10.0.0/16"], ["US", "DE", "NL", "IE", "GB", "FR"],
        allow=[],
        deny=[Rule("office-ads-%s" % d.split(".")[0], host="*." + d) for d in TRACKER_DOMAINS]
        + [Rule("office-paste", host="*.pastebin.com"), Rule("office-paste-apex", host="pastebin.com"),
           Rule("office-mega", host="*.mega.nz"), Rule("office-transfer-sh", host="transfer.sh"),
           Rule("office-no-lateral", cidr="0.0.0.0/0", ports=[22, 23, 445, 3389])],
    )
    servers = Zone(
        "servers", "enforce", ["10.20.0.0/16"], ["US", "DE", "NL", "IE"],
        allow=host_rules("srv", ["debian.org"], [80, 443])
        + host_rules("srv", ["datadoghq.eu", "stripe.com", "sendgrid.com", "sentry.io", "letsencrypt.org"], [443])
        + [Rule("srv-logs-bucket", host="corp-logs.s3.eu-central-1.amazonaws.com", ports=[443]),
           # Added with a policy change in the third week (SMS notifications).
           Rule("srv-twilio", host="api.twilio.com", ports=[443])],
        deny=[],
    )
    ci = Zone(
        "ci", "report", ["10.30.0.0/16"], ["US", "DE", "NL", "IE"],
        allow=[Rule("ci-github", host="github.com", ports=[443]), Rule("ci-github-api", host="api.github.com", ports=[443]),
               Rule("ci-github-codeload", host="codeload.github.com", ports=[443])]
        + host_rules("ci", ["crates.io", "rust-lang.org", "npmjs.org", "pypi.org", "pythonhosted.org", "docker.io", "docker.com"], [443])
        + [Rule("ci-artifacts-bucket", host="corp-artifacts.s3.eu-central-1.amazonaws.com", ports=[443])],
        deny=[],
    )
    backup = Zone(
        "backup", "enforce", ["10.40.0.0/28"], ["DE"],
        allow=[Rule("backup-bucket", host="corp-backup.s3.eu-central-1.amazonaws.com", ports=[443])],
        deny=[],
    )
    contractors = Zone(
        "contractors", "enforce", ["10.50.0.0/24"], ["US", "DE", "NL", "IE", "GB", "FR"],
        users=CONTRACTORS,
        allow=host_rules("ctr", ["google.com", "gstatic.com", "slack.com", "github.com", "microsoftonline.com",
                                 "office365.com", "zoom.us"], [443])
        # googleapis.com and githubusercontent.com are public suffixes: name the hosts.
        + [Rule("ctr-%s" % h.replace(".", "-"), host=h, ports=[443])
           for h in SERVICES["googleapis"].hosts + SERVICES["ghuc"].hosts]
        + [Rule("ctr-ocsp", host="ocsp.digicert.com", ports=[80])],
        deny=[],
    )
    return {z.name: z for z in (office, contractors, servers, ci, backup)}


# External developers, authenticated at the proxy (a fixed, published
# password: the hash only has to be valid for `sluice validate`).
CONTRACTORS = ["ext-anna", "ext-bo", "ext-chen", "ext-dara", "ext-emil", "ext-femi"]
CONTRACTOR_HASH = "$argon2id$v=19$m=19456,t=2,p=1$XDWqSwKieGg0tg5EzpvIrg$Fy/fs9MBeCdYF4RlQvBnKHPlpV35K9B9ztZUy0wXCQU"


# === records ===

LINE = ('{"ts":"%s","start":"%s","duration_ms":%d,"id":"%016x","listener":"%s","protocol":"%s","src":"%s",'
        '"user":%s,"zone":"%s","mode":"%s","dst_host":%s,"dst_ip":%s,"dst_port":%s,"sni":%s,"original_dst":%s,'
        '"grant":null,"method":%s,"status":%s,"qtype":%s,"answers":%s,"verdict":"%s","enforced":%s,"rule":%s,'
        '"reason":%s,"bytes_out":%d,"bytes_in":%d,"route":%s,"policy_hash":"%s","error":%s,"error_kind":%s,'
        '"interim":%s,"country":%s,"tls":%s,"intercepted":null,"findings":null,"exporter":null,"packets":null}')


class Out:
    """Collects records by the day they are written in, sorts each day by
    write time and writes it once no later record can land in it."""

    def __init__(self, path, seed, interim_ms, country_field, late_rate):
        self.f = open(path, "w", encoding="ascii")
        self.rng = random.Random("%s:out" % seed)
        self.next_id = self.rng.getrandbits(63)
        self.buckets = {}
        self.interim_ms = interim_ms
        self.country_field = country_field
        self.late_rate = late_rate
        self.count = 0
        self.flows = 0
        self.policy_hashes = []
        self.stalls = {}

    def policy_hash(self, ms):
        i = 0
        for i_, (since, _) in enumerate(self.policy_hashes):
            if ms >= since:
                i = i_
        return self.policy_hashes[i][1]

    def emit(self, ts, line, fid=0):
        late = self.rng.random()
        emit = ts + (self.rng.randint(5_000, 240_000) if late < self.late_rate else 0)
        # A replica's sink stalls for a minute now and then: its records
        # (a third of the traffic) reach the merged log together, late.
        stall = self.stalls.get(ts // MIN)
        if stall and fid % 3 == 0:
            emit = max(emit, ts + stall)
        self.buckets.setdefault(emit // DAY, []).append((emit, line + "\n"))
        self.count += 1

    def flush_through(self, day):
        for d in sorted(k for k in self.buckets if k <= day):
            items = self.buckets.pop(d)
            items.sort()
            self.f.writelines(l for _, l in items)
            del items

    def close(self):
        self.flush_through(10**9)
        self.f.close()

    def flow(self, zone, listener, protocol, src, start, dur, host=None, ip=None, port=443, method=None, status=None,
             bytes_out=0, bytes_in=0, decision=None, error=None, error_kind=None, tls=None, sni=None,
             original_dst=None, qtype=None, answers=None, user=None):
        """One flow: a record, or interim records every interim_ms plus a
        closing one, each with the bytes since the previous."""
        verdict, enforced, rule, reason = decision
        fid = self.next_id
        self.next_id = (self.next_id + 1) & 0xFFFFFFFFFFFFFFFF
        self.flows += 1
        dialed = ip is not None and (verdict == "allow" or not enforced) and error_kind != "resolve"
        route = '"direct"' if dialed else "null"
        country = js(country_of(ip)) if (self.country_field and ip) else "null"
        common = (listener, protocol, src, js(user), zone.name, zone.mode, js(host), js(ip), js(port), js(sni), js(original_dst),
                  js(method), js(status), js(qtype), js(answers), verdict, "true" if enforced else "false", js(rule),
                  js(reason))
        ph = self.policy_hash(start)
        tail_err = (js(error), js(error_kind))
        tls_s = js(tls)
        n_interim = (dur - 1) // self.interim_ms if (dur > self.interim_ms and listener != "dns") else 0
        if n_interim == 0:
            self.emit(start + dur, LINE % ((rfc(start + dur), rfc(start), dur, fid) + common
                                          + (bytes_out, bytes_in, route, ph) + tail_err + ("null", country, tls_s)), fid)
            return fid
        # Bytes spread over the intervals with some burstiness.
        weights = [0.2 + self.rng.random() for _ in range(n_interim + 1)]
        tw = sum(weights)
        s_rfc = rfc(start)
        left_out, left_in = bytes_out, bytes_in
        for k in range(n_interim):
            t = start + (k + 1) * self.interim_ms
            bo = int(bytes_out * weights[k] / tw)
            bi = int(bytes_in * weights[k] / tw)
            left_out -= bo
            left_in -= bi
            self.emit(t, LINE % ((rfc(t), s_rfc, t - start, fid) + common
                                 + (bo, bi, route, ph) + ("null", "null", "true", country, tls_s)), fid)
        self.emit(start + dur, LINE % ((rfc(start + dur), s_rfc, dur, fid) + common
                                      + (left_out, left_in, route, ph) + tail_err + ("false", country, tls_s)), fid)
        return fid


def lognorm(rng, median, sigma):
    return median * math.exp(rng.gauss(0, sigma))


def b32label(rng, n):
    raw = bytes(rng.getrandbits(8) for _ in range(n))
    return base64.b32encode(raw).decode().rstrip("=").lower()


def hexlabel(rng, n):
    return "%0*x" % (n, rng.getrandbits(4 * n))


# === sources ===


class Source:
    zone = None
    user = None

    def __init__(self, ip, g, idx):
        self.ip = ip
        self.g = g
        self.idx = idx
        self.rng = random.Random("%s:%s" % (g.seed, ip))

    def port(self):
        return self.rng.randint(32768, 60999)

    def src(self):
        return "%s:%d" % (self.ip, self.port())

    # --- building blocks ---

    def dns(self, t, name, qtype="A", answers=None, bytes_in=None):
        """A DNS query through the DNS listener, judged by the zone; answers
        from the service (CNAME chain, then addresses) unless given."""
        z = self.g.zones[self.zone]
        dec = z.decide(name, None, None, dns=True)
        if answers is None:
            if dec[0] == "allow" or not dec[1]:
                svc = self.g.svc_of(name)
                answers = (svc.cnames(name) + svc.ips(name)) if svc else [self.g.novel_ip(name)]
                if qtype == "AAAA":
                    answers = [a for a in answers if a.startswith("CNAME")] + (svc.ips6(name) if svc else [])
            else:
                answers = []
        if dec[0] == "deny" and dec[1]:
            answers = []
        q = 29 + len(name)
        size = bytes_in if bytes_in is not None else q + sum(16 if a[0].isdigit() else len(a) for a in answers) + (0 if answers else 40)
        dur = max(0, int(lognorm(self.rng, 12, 1.0))) if answers else int(lognorm(self.rng, 3, 0.5))
        self.g.out.flow(z, "dns", "dns", self.src(), t, dur, host=name, ip=None, port=None, qtype=qtype,
                        answers=answers, bytes_out=q, bytes_in=size, decision=dec, user=self.user)
        return dur

    def tunnel(self, t, host, svc=None, ip=None, port=443, out=None, inb=None, dur=None, listener="http",
               with_dns=0.0, fail=0.004):
        """A CONNECT (or transparent TLS, or SOCKS5) flow to host or ip."""
        g = self.g
        z = g.zones[self.zone]
        rng = self.rng
        if svc is None and host is not None:
            svc = g.svc_of(host)
        if ip is None and host is not None:
            ip = svc.ip(host, rng) if svc else g.novel_ip(host)
        if with_dns and host and self.user is None and rng.random() < with_dns:
            t += self.dns(t - 40, host) + 40
            if rng.random() < 0.4:
                self.dns(t - 38, host, qtype="AAAA")
        dec = z.decide(host, ip, port)
        if out is None:
            out = lognorm(rng, *(svc.out if svc else (2e3, 1.0)))
        if inb is None:
            inb = lognorm(rng, *(svc.inb if svc else (40e3, 1.2)))
        if dur is None:
            dur = lognorm(rng, *(svc.dur if svc else (3e3, 1.2)))
        dur = int(dur)
        if listener == "http":
            proto, method = "connect", "CONNECT"
        elif listener == "socks5":
            proto, method = "socks5", None
        else:
            proto, method = ("tls", None) if port == 443 else ("http-transparent", "GET")
        sni = host if host and port == 443 else None
        original_dst = "%s:%d" % (ip, port) if listener == "transparent" else None
        blocked = dec[0] == "deny" and dec[1]
        if blocked:
            status = 403 if listener == "http" or proto == "http-transparent" else None
            return g.out.flow(z, listener, proto, self.src(), t, int(lognorm(rng, 2, 0.5)),
                              host=host, ip=None if host else ip, port=port, method=method, status=status,
                              decision=dec, sni=None if listener == "http" else sni,
                              original_dst=original_dst, user=self.user)
        error = error_kind = None
        status = 200 if listener == "http" else (200 if proto == "http-transparent" else None)
        if rng.random() < fail:
            kinds = ["connect", "timeout", "timeout", "upstream-closed"]
            kind = rng.choice(kinds + ["resolve"] if listener == "http" and host else kinds)
            if kind == "connect":
                error, error_kind, status, out, inb, dur = "connect %s:%d: Connection refused (os error 111)" % (ip, port), kind, 502, 0, 0, int(lognorm(rng, 30, 0.5))
            elif kind == "timeout":
                error, error_kind, status, out, inb, dur = "connect timed out after 10000ms", kind, 504, 0, 0, 10_000 + rng.randint(0, 5)
            elif kind == "resolve":
                error, error_kind, status, out, inb, dur = "resolve %s: no answer from any upstream within 2000ms" % host, kind, 502, 0, 0, 2000 + rng.randint(0, 9)
                ip = None
            else:
                error, error_kind = "origin: connection reset by peer", "upstream-closed"
                out, inb = int(out * rng.random()), int(inb * rng.random())
            if listener != "http" and status not in (None, 200):
                status = None if proto == "tls" else 502
        return g.out.flow(z, listener, proto, self.src(), t, dur, host=host, ip=ip, port=port, method=method,
                          status=status, bytes_out=int(out), bytes_in=int(inb), decision=dec, error=error,
                          error_kind=error_kind, tls=True if port in (443, 5001, 8443) else (False if port == 80 else None),
                          sni=sni, original_dst=original_dst, user=self.user)

    def http(self, t, host, method="GET", path_bytes=None, svc=None, status=200):
        """An absolute-form HTTP request through the proxy."""
        g = self.g
        z = g.zones[self.zone]
        svc = svc or g.svc_of(host)
        ip = svc.ip(host, self.rng)
        dec = z.decide(host, ip, 80)
        if dec[0] == "deny" and dec[1]:
            g.out.flow(z, "http", "http", self.src(), t, int(lognorm(self.rng, 2, 0.5)), host=host, port=80,
                       method=method, status=403, decision=dec, tls=False, user=self.user)
            return
        out = lognorm(self.rng, *svc.out) if method == "POST" else 0
        inb = lognorm(self.rng, *svc.inb)
        g.out.flow(z, "http", "http", self.src(), t, int(lognorm(self.rng, *svc.dur)), host=host, ip=ip, port=80,
                   method=method, status=status, bytes_out=int(out), bytes_in=int(inb), decision=dec, tls=False,
                   user=self.user)

    def day(self, d):
        raise NotImplementedError


def poisson_times(rng, t0, t1, per_hour):
    """Event times of a Poisson process between t0 and t1."""
    out = []
    if per_hour <= 0:
        return out
    mean = HOUR / per_hour
    t = t0 + rng.expovariate(1.0) * mean
    while t < t1 and len(out) < 100_000:
        out.append(int(t))
        t += rng.expovariate(1.0) * mean
    return out


class Workstation(Source):
    zone = "office"

    def __init__(self, ip, g, idx):
        super().__init__(ip, g, idx)
        r = self.rng
        self.dev = r.random() < 0.35
        self.chat_app = r.random() < 0.3
        self.always_on = r.random() < 0.3
        self.rate = r.uniform(5, 14)  # activities an hour at the desk
        self.arrive = r.gauss(8.3, 0.6)
        self.hours = r.gauss(8.6, 0.6)
        w = dict(OFFICE_COMMON)
        for n in r.sample(NEWS, 3):
            w[n] = r.uniform(1, 4)
        if self.dev:
            for k, v in DEV.items():
                w[k] = w.get(k, 0) + v * r.uniform(0.5, 1.5)
        if r.random() < 0.4:
            w["dropbox"] = r.uniform(0.5, 2)
        if r.random() < 0.3:
            w["figma"] = r.uniform(1, 3)
        self.weights = w
        self.reweigh()
        self.leave_days = set()
        start = r.randint(0, g.days)
        if r.random() < 0.35:
            self.leave_days = set(range(start, start + r.randint(2, 6)))
        self.cdn_hosts = ["d%s.cloudfront.net" % hexlabel(r, 13) for _ in range(6)]
        self.video = ["rr%d---sn-%s%s.googlevideo.com" % (r.randint(1, 5), b32label(r, 5)[:4], hexlabel(r, 4))
                      for _ in range(8)] if r.random() < 0.25 else []
        # Some people use a service by address: a vendor's VPN portal, a
        # branch office's NAS, a time-tracking box.
        self.ip_dests = r.sample(g.office_ip_dests, r.randint(1, 2)) if r.random() < 0.35 else []
        self.big_push_days = set()
        self.novel_seen = []
        self.no_novelty = False
        self.first_day = 0

    def reweigh(self):
        self.keys = sorted(self.weights)
        self.cum = list(itertools.accumulate(self.weights[k] for k in self.keys))

    def pick(self):
        x = self.rng.random() * self.cum[-1]
        return self.keys[min(bisect.bisect_right(self.cum, x), len(self.keys) - 1)]

    def activity(self, t):
        r = self.rng
        key = self.pick()
        svc = SERVICES[key]
        if key == "cloudfront":
            host = r.choice(self.cdn_hosts)
        else:
            host = svc.hosts[0] if r.random() < 0.5 else r.choice(svc.hosts)
        for _ in range(1 + int(r.expovariate(0.8))):
            t += r.randint(50, 20_000)
            h = host if r.random() < 0.7 else (svc.hosts and r.choice(svc.hosts)) or host
            self.tunnel(t, h, svc=svc, with_dns=0.3)
        if key in NEWS and r.random() < 0.45:
            # A page's ad and tracker calls, denied by the blocklist.
            for th in r.sample(SERVICES["trackers"].hosts, min(8, 1 + int(r.expovariate(0.45)))):
                t += r.randint(20, 900)
                if r.random() < 0.5:
                    self.dns(t - 20, th)
                self.tunnel(t, th, svc=SERVICES["trackers"])
        if key == "github" and r.random() < 0.3:
            # git push: a larger upload, seen weekly at this size.
            self.tunnel(t + r.randint(1000, 60_000), "github.com", svc=svc, out=lognorm(r, 2e6, 1.1),
                        inb=lognorm(r, 30e3, 0.8), dur=lognorm(r, 8e3, 0.8))
        if key == "o365" and r.random() < 0.05:
            self.tunnel(t + r.randint(1000, 60_000), "outlook.office365.com", svc=svc, out=lognorm(r, 3e6, 0.8),
                        inb=lognorm(r, 10e3, 0.5))  # an email with an attachment
        if r.random() < 0.08:
            # The antivirus asks about a file's hash over DNS: long, random, benign.
            self.dns(t + r.randint(0, 5000), "%s.%s.v2.sophosxl.net" % (hexlabel(r, 32), hexlabel(r, 8)),
                     answers=[], bytes_in=150)

    def background(self, t0, t1):
        r = self.rng
        for t in poisson_times(r, t0, t1, 0.8):
            if r.random() < 0.6:
                self.tunnel(t, "v10.events.data.microsoft.com", with_dns=0.5)
            elif r.random() < 0.5:
                self.tunnel(t, "settings-win.data.microsoft.com", with_dns=0.5)
            else:
                self.http(t, "ctldl.windowsupdate.com")

    def novelty(self, t):
        g, r = self.g, self.rng
        if self.novel_seen and r.random() < 0.15:
            name = r.choice(self.novel_seen)  # back a few days later, still small
        else:
            name = "%s%s.%s" % (r.choice(WORDS), r.choice(WORDS), r.choice(TLDS))
            self.novel_seen.append(name)
        host = "www." + name if r.random() < 0.6 else name
        country = r.choice(["US", "DE", "NL", "GB", "FR", "IE"]) if r.random() < 0.9 else r.choice(["JP", "BR", "SG"])
        ip = g.novel_ip(host, country)
        for k in range(r.randint(1, 3)):
            self.tunnel(t + k * r.randint(100, 3000), host, ip=ip, out=lognorm(r, 1.5e3, 0.4),
                        inb=lognorm(r, 60e3, 1.0), dur=lognorm(r, 1500, 0.8), with_dns=0.5 if k == 0 else 0)

    def chat(self, t0, t1):
        r = self.rng
        t = t0
        while t < t1 - 5 * MIN:
            dur = min(int(r.uniform(1, 4) * HOUR), t1 - t)
            mins = dur / MIN
            self.tunnel(t, "wss-primary.slack.com", svc=SERVICES["slack"], out=mins * lognorm(r, 800, 0.5),
                        inb=mins * lognorm(r, 4000, 0.7), dur=dur, fail=0.05)
            t += dur + r.randint(1000, 30_000)

    def day(self, d):
        g, r = self.g, self.rng
        if d < self.first_day:
            return
        t0 = g.start_ms + d * DAY
        dow = g.weekday(d)
        work = (dow < 5 and d not in self.leave_days and r.random() > 0.03) or d in self.big_push_days
        if self.always_on:
            self.background(t0, t0 + DAY)
        if not work:
            if dow >= 5 and r.random() < 0.08:
                s = t0 + int(r.uniform(10, 20) * HOUR)
                for t in poisson_times(r, s, s + int(r.uniform(0.5, 2) * HOUR), self.rate * 0.6):
                    self.activity(t)
            return
        arrive = t0 + int((self.arrive + r.gauss(0, 0.3)) * HOUR)
        leave = arrive + int((self.hours + r.gauss(0, 0.5)) * HOUR)
        lunch = t0 + int(r.gauss(12.3, 0.3) * HOUR)
        lunch_end = lunch + int(r.uniform(0.5, 1.0) * HOUR)
        if not self.always_on:
            self.background(arrive, leave)
        for a, b, rate in ((arrive, lunch, self.rate), (lunch, lunch_end, self.rate * 0.25),
                           (lunch_end, leave, self.rate * 0.9)):
            for t in poisson_times(r, a, b, rate):
                self.activity(t)
        if self.chat_app:
            self.chat(arrive + r.randint(0, 120_000), leave)
        for ip, port, out, inb in self.ip_dests:
            for t in poisson_times(r, arrive, leave, 0.4):
                self.tunnel(t, None, ip=ip, port=port, out=lognorm(r, out, 1.0), inb=lognorm(r, inb, 1.0),
                            dur=lognorm(r, 20e3, 1.2))
        for t in poisson_times(r, lunch, lunch_end + HOUR, 3 if self.video else 0):
            self.tunnel(t, r.choice(self.video), with_dns=0.8)
        for t in poisson_times(r, arrive, leave, 0.12):
            self.http(t, "ocsp.digicert.com", method="POST")
        if self.dev and r.random() < 0.05:
            # git over ssh through SOCKS5: port 22 is closed to everyone.
            self.tunnel(r.randint(arrive, leave), "github.com", port=22, listener="socks5")
        if not self.no_novelty and r.random() < 0.7:
            self.novelty(r.randint(arrive, leave))
        if d in self.big_push_days:
            t = r.randint(arrive + HOUR, leave - HOUR)
            size = r.uniform(1.0, 2.5) * 1e9
            self.tunnel(t, "github.com", out=size, inb=lognorm(r, 200e3, 0.5), dur=size / r.uniform(8e6, 15e6) * 1000)
            if t - g.start_ms >= g.learn_ms:
                g.benign.append({"kind": "dev-push", "src": self.ip, "dst": "github.com", "start": t,
                                 "end": t + int(size / 8e6 * 1000), "bytes_out": int(size)})


class Contractor(Workstation):
    """An external developer on a laptop in the contractors' segment, logged
    in at the proxy: a narrower allowlist (`enforce`), so news sites and
    everything else are ordinary denials; no DNS through Sluice."""

    zone = "contractors"

    def __init__(self, ip, g, idx):
        super().__init__(ip, g, idx)
        self.user = CONTRACTORS[idx % len(CONTRACTORS)]
        self.always_on = False
        self.video = []
        self.ip_dests = []
        self.dev = True
        allowed = ("google", "gstatic", "googleapis", "slack", "github", "ghuc", "msol", "o365", "zoom")
        # Mostly what the allowlist lets out; now and then something else (denied).
        self.weights = {k: (w if k in allowed else w * 0.03) for k, w in self.weights.items()}
        self.weights["github"] = self.weights.get("github", 0) + 6
        self.reweigh()

    def background(self, t0, t1):
        pass  # an unmanaged laptop: no fleet telemetry


class Server(Source):
    zone = "servers"

    def __init__(self, ip, g, idx):
        super().__init__(ip, g, idx)
        r = self.rng
        self.fast_monitor = idx < 2  # these agents post every 60 s
        self.apis = [k for k in ("stripe", "sendgrid", "sentry") if r.random() < 0.6] or ["sentry"]
        self.api_rate = r.uniform(4, 20)
        self.update_at = r.uniform(6.0, 6.9)
        self.ships_logs = r.random() < 0.7
        self.uses_twilio = "stripe" in self.apis

    def day(self, d):
        g, r = self.g, self.rng
        t0 = g.start_ms + d * DAY
        # Monitoring agent: a steady heartbeat, learned from day one.
        period = MIN if self.fast_monitor else 5 * MIN
        t = t0 + (h32(self.ip) % period)
        while t < t0 + DAY:
            self.tunnel(t, "api.datadoghq.eu", listener="transparent", fail=0.001)
            t += period + r.randint(-300, 300)
        # Application API calls, peaking in the evening.
        for hour in range(24):
            rate = self.api_rate * (0.3 + 0.7 * math.exp(-((hour - 19) / 4.0) ** 2) + 0.2 * (g.weekday(d) < 5))
            for t in poisson_times(r, t0 + hour * HOUR, t0 + (hour + 1) * HOUR, rate):
                key = r.choice(self.apis)
                if self.uses_twilio and t >= g.twilio_from and r.random() < 0.3:
                    key = "twilio"  # a new, allowed vendor: new but not anomalous
                host = SERVICES[key].hosts[0]
                if r.random() < 0.1:
                    self.dns(t - 30, host)
                self.tunnel(t, host, listener="transparent")
        # Nightly package updates over plain HTTP.
        tu = t0 + int((self.update_at + r.uniform(0, 0.05)) * HOUR)
        self.dns(tu - 50, "deb.debian.org")
        for k in range(r.randint(2, 6) if r.random() < 0.8 else r.randint(15, 40)):
            tu += r.randint(200, 4000)
            self.tunnel(tu, "deb.debian.org" if k % 3 else "security.debian.org", listener="transparent", port=80,
                        out=400, dur=lognorm(r, 2000, 1.0))
        # Hourly log shipping.
        if self.ships_logs:
            for hour in range(24):
                self.tunnel(t0 + hour * HOUR + 5 * MIN + r.randint(0, 60_000), "corp-logs.s3.eu-central-1.amazonaws.com",
                            listener="transparent", with_dns=0.2)
        # What the distribution tries and the policy does not allow.
        for _ in range(r.randint(1, 4)):
            t = t0 + r.randint(0, DAY - 1)
            svc = SERVICES[r.choice(["ubuntu", "ubuntu", "snapcraft", "nodejs"])]
            host = r.choice(svc.hosts)
            self.dns(t - 40, host)
        if r.random() < 0.5:
            t = t0 + r.randint(0, DAY - 1)
            self.tunnel(t, "motd.ubuntu.com", listener="transparent")
        if r.random() < 0.02:
            self.tunnel(t0 + r.randint(0, DAY - 1), "acme-v02.api.letsencrypt.org", listener="transparent")


class Runner(Source):
    zone = "ci"

    def job(self, t):
        r = self.rng
        t += r.randint(0, 5000)
        self.tunnel(t, "github.com", inb=lognorm(r, 30e6, 1.2), dur=lognorm(r, 8e3, 0.8))
        t += r.randint(2000, 15000)
        eco = r.choice(["rust", "python", "node"])
        for _ in range(r.randint(3, 25)):
            t += r.randint(100, 3000)
            if eco == "rust":
                host = r.choice(["index.crates.io", "static.crates.io", "static.crates.io"])
            elif eco == "python":
                host = r.choice(["pypi.org", "files.pythonhosted.org", "files.pythonhosted.org"])
            else:
                host = "registry.npmjs.org"
            self.tunnel(t, host, with_dns=0.1)
        if eco == "rust" and r.random() < 0.1:
            self.tunnel(t, "static.rust-lang.org")
        if r.random() < 0.3:
            t += r.randint(1000, 5000)
            self.tunnel(t, "auth.docker.io")
            self.tunnel(t + 300, "registry-1.docker.io")
            for _ in range(r.randint(1, 6)):
                self.tunnel(t + r.randint(500, 20_000), "production.cloudflare.docker.com")
        if r.random() < 0.05:
            # Not yet in the allowlist being rolled out: recorded as would-be denials.
            host = r.choice(["objects.githubusercontent.com", "raw.githubusercontent.com", "registry.yarnpkg.com"])
            self.tunnel(t + r.randint(500, 9000), host)
        t += r.randint(60_000, 600_000)
        if r.random() < 0.4:
            size = lognorm(r, 120e6, 0.6)
            self.tunnel(t, "corp-artifacts.s3.eu-central-1.amazonaws.com", out=size, dur=size / r.uniform(20e6, 60e6) * 1000)
            if size > 250e6 and t - self.g.start_ms >= self.g.learn_ms:
                self.g.benign.append({"kind": "ci-artifact", "src": self.ip, "dst": "corp-artifacts.s3.eu-central-1.amazonaws.com",
                                      "start": t, "end": t + int(size / 20e6 * 1000), "bytes_out": int(size)})

    def day(self, d):
        g, r = self.g, self.rng
        t0 = g.start_ms + d * DAY
        weekday = g.weekday(d) < 5
        for hour in range(24):
            busy = weekday and 8 <= hour < 19
            rate = (r.uniform(1.5, 4) if busy else 0.15) / max(1, g.n_runners / 4)
            for t in poisson_times(r, t0 + hour * HOUR, t0 + (hour + 1) * HOUR, rate):
                self.job(t)
        if self.idx == 0:
            self.job(t0 + 2 * HOUR + r.randint(0, 600_000))  # the nightly build


class BackupHost(Source):
    zone = "backup"

    def day(self, d):
        g, r = self.g, self.rng
        t0 = g.start_ms + d * DAY + int(r.uniform(1.0, 1.1) * HOUR)
        full = g.weekday(d) == 6
        total = lognorm(r, 45e9 if full else 12e9, 0.15)
        parts = max(8, int(total / 800e6))
        self.dns(t0 - 100, "corp-backup.s3.eu-central-1.amazonaws.com")
        lanes = [t0 + k * 500 for k in range(4)]  # four multipart uploads at a time
        end = t0
        for k in range(parts):
            lane = k % 4
            size = total / parts * r.uniform(0.9, 1.1)
            dur = int(size / r.uniform(25e6, 40e6) * 1000)
            self.tunnel(lanes[lane], "corp-backup.s3.eu-central-1.amazonaws.com", out=size,
                        inb=lognorm(r, 4e3, 0.3), dur=dur, fail=0.01)
            lanes[lane] += dur + r.randint(100, 2000)
            end = max(end, lanes[lane])
        if r.random() < 0.7:
            self.tunnel(g.start_ms + d * DAY + r.randint(0, DAY - 1), "motd.ubuntu.com", with_dns=1.0)
        if d * DAY >= g.learn_ms:
            g.benign.append({"kind": "backup-full" if full else "backup", "src": self.ip,
                             "dst": "corp-backup.s3.eu-central-1.amazonaws.com", "start": t0, "end": end,
                             "bytes_out": int(total)})


# === anomalies ===


class Anomaly:
    def __init__(self, kind, src, dst, day, hour, note, dst_alt=()):
        self.kind = kind
        self.src = src
        self.dst = dst
        self.dst_alt = list(dst_alt)
        self.day = day
        self.hour = hour
        self.note = note
        self.start = None
        self.end = None
        self.flows = 0


def plant(g):
    """Places one or more anomalies of each kind after the learning period,
    each on its own source and day-hour. Returns the list."""
    r = random.Random("%s:plant" % g.seed)
    first = g.learn_days + 1
    last = g.days - 1
    if last < first:
        return []
    days = [d for d in range(first, last + 1) if g.weekday(d) < 5] or list(range(first, last + 1))
    ws = list(g.workstations)
    r.shuffle(ws)
    srv = list(g.servers)
    r.shuffle(srv)
    runners = list(g.runners)
    r.shuffle(runners)

    def take(pool):
        return pool.pop() if len(pool) > 1 else pool[0]

    def when():
        return r.choice(days), r.uniform(10, 16)

    out = []

    def add(kind, src, dst, fn, note, dst_alt=(), day_hour=None):
        d, h = day_hour or when()
        a = Anomaly(kind, src.ip, dst, d, h, note, dst_alt)
        a.source = src
        a.fn = fn
        out.append(a)
        return a

    rare_ip = lambda country: g.anomaly_ip(country)

    # volume: one big upload to a usual destination (a long tunnel with interim records).
    w = take(ws)
    add("volume", w, "google.com", lambda a, t: vol_single(g, a, t, "drive.google.com", 4.2e9),
        "4.2 GB in one 40-minute tunnel to drive.google.com (a usual destination)", ["drive.google.com"])
    # volume split across many flows to a destination seen before at small size.
    w = take(ws)
    w.weights["wetransfer"] = 1.0
    w.reweigh()
    add("volume", w, "wetransfer.com", lambda a, t: vol_split(g, a, t, "storm-eu.wetransfer.com", 300, 12e6),
        "about 3.6 GB in 300 flows of ~12 MB to wetransfer.com over 90 min", ["storm-eu.wetransfer.com"])
    # volume to an address never seen.
    w = take(ws)
    ip = rare_ip("US")
    add("volume", w, ip, lambda a, t, ip=ip: vol_ip(g, a, t, ip, 2.5e9), "2.5 GB in 6 flows to a never-seen IP")
    # new destination: a never-seen registrable domain, repeated.
    w = take(ws)
    add("new-destination", w, "cloudsync-hub.io", lambda a, t: newdest(g, a, t, "api.cloudsync-hub.io", 60),
        "60 flows of 2-8 MB over 3 h to a never-seen domain", ["api.cloudsync-hub.io"])
    # new destination: a bare IP, from a CI runner (report mode: would-be denials that still leave).
    ru = take(runners)
    ip2 = rare_ip("NL")
    add("new-destination", ru, ip2, lambda a, t, ip=ip2: newdest_ip(g, a, t, ip, 40),
        "40 flows of 1-5 MB over 2 h to a never-seen IP (report mode, would-be denied)")
    # geo: named host in a country outside the zone's list.
    w = take(ws)
    ipg = rare_ip("RU")
    add("geo", w, "filebox-mirror.ru", lambda a, t, ip=ipg: geo(g, a, t, "upload.filebox-mirror.ru", ip, 20, 30e6),
        "600 MB in 20 flows to upload.filebox-mirror.ru (RU)", ["upload.filebox-mirror.ru", ipg])
    # geo: bare IP.
    w = take(ws)
    ipc = rare_ip("CN")
    add("geo", w, ipc, lambda a, t, ip=ipc: geo(g, a, t, None, ip, 10, 25e6), "250 MB in 10 flows to a CN address")
    # beaconing: a workstation, every 60 s +- 3 s for 7 h.
    w = take(ws)
    add("beaconing", w, "telemetry-update.net", lambda a, t: beacon(g, a, t, "cdn.telemetry-update.net", None, 60_000, 3_000, 7),
        "every 60 s +- 3 s for 7 h to cdn.telemetry-update.net", ["cdn.telemetry-update.net"])
    # beaconing: a CI runner (report mode), every 60 s +- 1.5 s for 5 h, to an IP.
    ru = take(runners)
    ipb = rare_ip("US")
    add("beaconing", ru, ipb, lambda a, t, ip=ipb: beacon(g, a, t, None, ip, 60_000, 1_500, 5),
        "every 60 s +- 1.5 s for 5 h to a bare IP (report mode)", day_hour=(r.choice(days), r.uniform(1, 4)))
    # dns-tunnel: allowed queries with long high-entropy labels.
    w = take(ws)
    add("dns-tunnel", w, "dnsbeam.net", lambda a, t: dns_tunnel(g, a, t, "x.dnsbeam.net", 2500, 40),
        "2500 TXT/A queries with base32 labels under x.dnsbeam.net in 40 min", ["x.dnsbeam.net"])
    # dns-tunnel: every query denied.
    s = take(srv)
    add("dns-tunnel", s, "cdn-dnsx.com", lambda a, t: dns_tunnel(g, a, t, "d.cdn-dnsx.com", 1800, 30),
        "1800 queries with hex labels under d.cdn-dnsx.com in 30 min, every one denied", ["d.cdn-dnsx.com"])
    # denied-burst: a server reaching for 50 distinct hosts it may not.
    s = take(srv)
    add("denied-burst", s, None, lambda a, t: burst_names(g, a, t, 50, 3), "50 distinct denied destinations in 3 min")
    # denied-burst: a workstation scanning port 445/22 across the internet.
    w = take(ws)
    add("denied-burst", w, None, lambda a, t: burst_scan(g, a, t, 60, 2), "60 distinct IPs on 445/22 in 2 min (SOCKS5)")
    # Sources with an anomaly do nothing novel of their own that day: keeps labels unambiguous.
    return out


def vol_single(g, a, t, host, size):
    src = a.source
    dur = 40 * MIN
    src.tunnel(t, host, out=size, inb=lognorm(src.rng, 2e6, 0.3), dur=dur, with_dns=1.0, fail=0)
    return t + dur, 1


def vol_split(g, a, t, host, n, each):
    src, r = a.source, a.source.rng
    t1 = t
    for k in range(n):
        t1 = t + int(k * 90 * MIN / n) + r.randint(0, 5000)
        src.tunnel(t1, host, out=lognorm(r, each, 0.2), inb=lognorm(r, 5e3, 0.3), dur=lognorm(r, 8000, 0.3), fail=0)
    return t1, n


def vol_ip(g, a, t, ip, size):
    src, r = a.source, a.source.rng
    t1 = t
    for k in range(6):
        d = int(size / 6 / 15e6 * 1000)
        src.tunnel(t1, None, ip=ip, out=size / 6, inb=lognorm(r, 5e4, 0.3), dur=d, fail=0)
        t1 += d + r.randint(1000, 20_000)
    return t1, 6


def newdest(g, a, t, host, n):
    src, r = a.source, a.source.rng
    t1 = t
    g.novel_ip(host, "US")
    for k in range(n):
        t1 = t + int(k * 3 * HOUR / n) + r.randint(0, 60_000)
        src.tunnel(t1, host, out=r.uniform(2e6, 8e6), inb=lognorm(r, 20e3, 0.4), dur=lognorm(r, 4000, 0.4),
                   with_dns=0.3, fail=0)
    return t1, n


def newdest_ip(g, a, t, ip, n):
    src, r = a.source, a.source.rng
    t1 = t
    for k in range(n):
        t1 = t + int(k * 2 * HOUR / n) + r.randint(0, 60_000)
        src.tunnel(t1, None, ip=ip, out=r.uniform(1e6, 5e6), inb=lognorm(r, 10e3, 0.4), dur=lognorm(r, 3000, 0.4), fail=0)
    return t1, n


def geo(g, a, t, host, ip, n, each):
    src, r = a.source, a.source.rng
    t1 = t
    if host:
        g.novel_names[host] = ip
    for k in range(n):
        t1 = t + k * r.randint(30_000, 120_000)
        src.tunnel(t1, host, ip=ip, out=lognorm(r, each, 0.2), inb=lognorm(r, 4e3, 0.3), dur=lognorm(r, 6000, 0.3),
                   with_dns=0.3 if host else 0, fail=0)
    return t1, n


def beacon(g, a, t, host, ip, period, jitter, hours):
    src, r = a.source, a.source.rng
    if host:
        g.novel_ip(host, "US")
    t1 = t
    n = 0
    while t1 < t + hours * HOUR:
        src.tunnel(t1, host, ip=ip, out=lognorm(r, 600, 0.2), inb=lognorm(r, 900, 0.3), dur=lognorm(r, 250, 0.3),
                   with_dns=0.05 if host else 0, fail=0.002)
        n += 1
        t1 += period + r.randint(-jitter, jitter)
    return t1, n


def dns_tunnel(g, a, t, base, n, minutes):
    src, r = a.source, a.source.rng
    t1 = t
    g.novel_ip(base, "US")
    for k in range(n):
        t1 = t + int(k * minutes * MIN / n) + r.randint(0, 300)
        if base.endswith("dnsbeam.net"):
            name = "%s.%s.%s" % (b32label(r, 30), b32label(r, 18), base)
        else:
            name = "%s.%s.%s" % (hexlabel(r, 60), hexlabel(r, 30), base)
        qtype = "TXT" if r.random() < 0.7 else "A"
        z = g.zones[src.zone]
        dec = z.decide(name, None, None, dns=True)
        if dec[0] == "allow":
            answers = ["TXT %s" % b32label(r, 40)] if qtype == "TXT" else [g.novel_ip(base)]
        else:
            answers = []
        src.dns(t1, name, qtype=qtype, answers=answers,
                bytes_in=(29 + len(name) + 90) if answers else (29 + len(name) + 40))
    return t1, n


def burst_names(g, a, t, n, minutes):
    src, r = a.source, a.source.rng
    t1 = t
    for k in range(n):
        t1 = t + int(k * minutes * MIN / n) + r.randint(0, 1500)
        if k % 3 == 0:
            ip = g.anomaly_ip(r.choice(["US", "DE", "NL"]))
            src.tunnel(t1, None, ip=ip, listener="transparent")
        else:
            host = "%s.%s" % (r.choice(["api", "cdn", "dl", "files", "gw", "sync"]), "%s%s.%s" % (r.choice(WORDS), r.choice(WORDS), r.choice(["com", "net", "io", "org"])))
            if r.random() < 0.5:
                src.dns(t1 - 30, host)
            src.tunnel(t1, host, listener="transparent")
    return t1, n


def burst_scan(g, a, t, n, minutes):
    src, r = a.source, a.source.rng
    t1 = t
    for k in range(n):
        t1 = t + int(k * minutes * MIN / n) + r.randint(0, 800)
        ip = g.anomaly_ip(r.choice(["US", "DE", "NL", "FR"]))
        src.tunnel(t1, None, ip=ip, port=r.choice([445, 445, 22]), listener="socks5")
    return t1, n


# === the run ===


class Gen:
    def __init__(self, args):
        self.seed = args.seed
        self.days = args.weeks * 7
        self.learn_days = args.learn_days
        self.learn_ms = args.learn_days * DAY
        dt = datetime.datetime.strptime(args.start, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
        self.start_ms = int(dt.timestamp()) * 1000
        self.start_weekday = dt.weekday()
        self.zones = make_zones()
        self.host_svc = {}
        for s in SERVICES.values():
            for h in s.hosts:
                self.host_svc[h] = s
        self.novel_names = {}
        self.hosting = {}
        self.office_ip_dests = [(self.anomaly_ip("DE"), 443, 3e3, 60e3), (self.anomaly_ip("NL"), 5001, 20e3, 5e6),
                                (self.anomaly_ip("GB"), 8443, 2e3, 8e3)]
        self.benign = []
        os.makedirs(args.out, exist_ok=True)
        self.out = Out(os.path.join(args.out, "records.jsonl"), args.seed, args.interim * SEC,
                       args.country_field, args.late)
        hr = random.Random("%s:policy" % args.seed)
        self.out.policy_hashes = [(self.start_ms + d * DAY + hr.randint(9, 17) * HOUR, "%016x" % hr.getrandbits(64))
                                  for d in (0, 4, 11, 17)]
        self.out.policy_hashes[0] = (0, self.out.policy_hashes[0][1])
        sr = random.Random("%s:stalls" % args.seed)
        for d in range(self.days):
            for _ in range(6):
                minute = (self.start_ms + d * DAY) // MIN + sr.randrange(24 * 60)
                self.out.stalls[minute] = sr.randint(60_000, 180_000)
        self.twilio_from = self.out.policy_hashes[2][0] + 30 * MIN
        self.benign_events = []
        scale = args.scale
        self.workstations = [Workstation("10.10.%d.%d" % (1 + i // 200, 10 + i % 200), self, i) for i in range(scale)]
        self.servers = [Server("10.20.%d.%d" % (i // 200, 10 + i % 200), self, i) for i in range(max(3, scale // 4))]
        self.n_runners = max(2, scale // 6)
        self.runners = [Runner("10.30.%d.%d" % (i // 200, 10 + i % 200), self, i) for i in range(self.n_runners)]
        self.backups = [BackupHost("10.40.0.10", self, 0)]
        self.contractors = [Contractor("10.50.0.%d" % (10 + i), self, i) for i in range(min(len(CONTRACTORS), max(2, scale // 20)))]
        # Someone new starts after the learning period: a source with no history.
        self.newcomers = []
        join = self.learn_days + 2
        while join < self.days and self.weekday(join) >= 5:
            join += 1
        if join < self.days:
            w = Workstation("10.10.%d.%d" % (1 + scale // 200, 10 + scale % 200), self, scale)
            w.first_day = join
            self.newcomers.append(w)
            self.benign_events.append({"kind": "new-source", "src": w.ip, "start": self.start_ms + join * DAY,
                                       "note": "a new workstation's first day: every destination is new to it"})
        if self.twilio_from < self.start_ms + self.days * DAY and any(s.uses_twilio for s in self.servers):
            self.benign_events.append({"kind": "new-vendor", "src": "servers",
                                       "start": self.twilio_from,
                                       "note": "servers start calling api.twilio.com after a policy change allowed it"})
        dev = [w for w in self.workstations if w.dev] or self.workstations[:1]
        r = random.Random("%s:pushes" % args.seed)
        for w in dev[:3]:
            # Working days: a push happens at the desk.
            ok = [d for d in range(1, self.days) if self.weekday(d) < 5 and d not in w.leave_days]
            learning = [d for d in ok if d < self.learn_days] or [min(1, self.days - 1)]
            after = [d for d in ok if d > self.learn_days]
            w.big_push_days = set(r.sample(learning, min(len(learning), r.randint(1, 2))))  # seen while learning
            if after:
                w.big_push_days |= set(r.sample(after, min(len(after), 2)))

    def weekday(self, d):
        return (self.start_weekday + d) % 7

    def svc_of(self, host):
        s = self.host_svc.get(host)
        if s is None:
            if host.endswith(".cloudfront.net"):
                return SERVICES["cloudfront"]
            if host.endswith(".googlevideo.com"):
                return SERVICES["googlevideo"]
        return s

    def novel_ip(self, host, country=None):
        """The address of a name no service owns: in one of a few shared
        hosting /24s of the country (sites share hosting, as they do)."""
        ip = self.novel_names.get(host)
        if ip is None:
            c = country or "US"
            pool = self.hosting.get(c)
            if pool is None:
                pool = self.hosting[c] = [alloc_block(c) for _ in range(4)]
            ip = "%s.%d" % (pool[h32(host) % len(pool)], 10 + h32(host, "ip") % 240)
            self.novel_names[host] = ip
        return ip

    def anomaly_ip(self, country):
        """An address in a /24 nothing else uses: never seen before."""
        blk = alloc_block(country)
        return "%s.%d" % (blk, random.Random("%s:%s" % (self.seed, blk)).randint(10, 250))

    def run(self):
        anomalies = plant(self)
        by_day = {}
        for a in anomalies:
            by_day.setdefault(a.day, []).append(a)
            a.source.no_novelty_days = getattr(a.source, "no_novelty_days", set()) | {a.day}
        sources = self.workstations + self.newcomers + self.contractors + self.servers + self.runners + self.backups
        for d in range(self.days):
            for s in sources:
                if isinstance(s, Workstation):
                    s.no_novelty = d in getattr(s, "no_novelty_days", ())
                s.day(d)
            for a in by_day.get(d, []):
                t = self.start_ms + d * DAY + int(a.hour * HOUR)
                before = self.out.flows
                a.start = t
                a.end, _ = a.fn(a, t)
                a.flows = self.out.flows - before
            self.out.flush_through(self.start_ms // DAY + d)
            print("detect-gen: day %d/%d, %d records" % (d + 1, self.days, self.out.count), file=sys.stderr)
        self.out.close()
        return anomalies


def write_labels(g, anomalies, path):
    doc = {
        "format": "sluice detect-gen labels v1",
        "seed": g.seed,
        "start": rfc(g.start_ms),
        "end": rfc(g.start_ms + g.days * DAY),
        "learn_until": rfc(g.start_ms + g.learn_ms),
        "records": g.out.count,
        "flows": g.out.flows,
        "anomaly_flows": sum(a.flows for a in anomalies),
        "anomalies": [
            {"kind": a.kind, "src": a.src, "dst": a.dst, "dst_alt": a.dst_alt,
             "zone": a.source.zone, "start": rfc(a.start), "end": rfc(a.end), "flows": a.flows, "note": a.note}
            for a in anomalies
        ],
        "benign": [
            {"kind": b["kind"], "src": b["src"], "dst": b["dst"], "start": rfc(b["start"]), "end": rfc(b["end"]),
             "bytes_out": b["bytes_out"]}
            for b in sorted(g.benign, key=lambda b: b["start"])
        ],
        "benign_events": [dict(e, start=rfc(e["start"])) for e in g.benign_events],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def write_config(g, path, detect_keys):
    out = ["# Written by bench/detect-gen.py (seed %s): the policy the records in\n" % g.seed,
           "# records.jsonl were judged by. `countries:` (per zone) and `detect.geoip`\n",
           "# (relative to this file) are the detectors' keys; --plain-config leaves\n",
           "# them out for a sluice that does not know them yet.\n",
           "listen:\n  http: 127.0.0.1:3128\n  socks5: 127.0.0.1:1080\n  transparent: 127.0.0.1:3129\n",
           "  dns: 127.0.0.1:5353\n  admin: 127.0.0.1:9901\n",
           "mode: enforce\n"]
    if detect_keys:
        out.append("detect:\n  geoip: countries.mmdb\n")
    out.append("users:\n")
    for u in CONTRACTORS:
        out.append("  - name: %s\n    password_hash: \"%s\"\n" % (u, CONTRACTOR_HASH))
    out.append("zones:\n")
    for z in g.zones.values():
        y = z.yaml()
        if not detect_keys:
            y = "".join(l for l in y.splitlines(True) if not l.strip().startswith("countries:"))
        out.append(y)
    with open(path, "w") as f:
        f.write("".join(out))


def write_mmdb(g, path):
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet
    except ImportError:
        raise SystemExit("detect-gen: countries.mmdb needs PyPI mmdb-writer: `python3 -m pip install mmdb-writer` (or pass --no-mmdb)")
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country",
                   languages=["en"], description="Sluice detect-gen fictional countries")
    by_country = {}
    for c, blocks in COUNTRY_BLOCKS.items():
        for b in blocks:
            by_country.setdefault(c, []).append(b + ".0.0/16")
    for c, b in COUNTRY_BLOCKS6.items():
        by_country.setdefault(c, []).append(b + "::/32")
    for c, nets in sorted(by_country.items()):
        w.insert_network(IPSet(nets), {"country": {"iso_code": c, "names": {"en": c}}})
    # The metadata's build_epoch is the wall clock; pin it to the data's
    # first day so that the same arguments give the same bytes.
    import mmdb_writer

    clock = mmdb_writer.time.time
    mmdb_writer.time.time = lambda: g.start_ms / 1000
    try:
        w.to_db_file(path)
    finally:
        mmdb_writer.time.time = clock


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", default="1", help="seed (any string); the same seed gives the same files")
    p.add_argument("--weeks", type=int, default=3, help="weeks of records (default 3)")
    p.add_argument("--scale", type=int, default=60,
                   help="workstations in the office zone; servers scale/4, CI runners scale/6 (default 60)")
    p.add_argument("--out", default="detect-data", help="output directory (created)")
    p.add_argument("--start", default="2026-01-05", help="first day, UTC (default 2026-01-05, a Monday)")
    p.add_argument("--learn-days", type=int, default=8, help="days before the first anomaly (default 8)")
    p.add_argument("--interim", type=int, default=60, help="seconds between interim records of a long flow (log.interim)")
    p.add_argument("--late", type=float, default=0.005, help="share of records written up to 4 min late (default 0.005)")
    p.add_argument("--country-field", action="store_true", help="fill records' `country` (as a gateway with a country database does)")
    p.add_argument("--plain-config", action="store_true", help="leave `detect` and `countries` out of sluice.yaml")
    p.add_argument("--no-mmdb", action="store_true", help="do not write countries.mmdb")
    args = p.parse_args()
    if args.weeks < 1 or args.scale < 1:
        p.error("--weeks and --scale must be at least 1")
    if args.weeks > 52 or args.scale > 2000:
        p.error("--weeks is at most 52 and --scale at most 2000")
    if args.learn_days < 0 or args.interim < 1 or not 0 <= args.late <= 1:
        p.error("--learn-days must be 0 or more, --interim 1 or more, --late between 0 and 1")
    try:
        datetime.datetime.strptime(args.start, "%Y-%m-%d")
    except ValueError:
        p.error("--start must be a date, YYYY-MM-DD (got %r)" % args.start)
    if args.weeks * 7 <= args.learn_days + 1:
        print("detect-gen: warning: no day after the learning period: no anomalies planted", file=sys.stderr)
    if not args.no_mmdb:
        if importlib.util.find_spec("mmdb_writer") is None:
            raise SystemExit("detect-gen: countries.mmdb needs PyPI mmdb-writer: `python3 -m pip install mmdb-writer` (or pass --no-mmdb)")
    g = Gen(args)
    anomalies = g.run()
    write_labels(g, anomalies, os.path.join(args.out, "labels.json"))
    write_config(g, os.path.join(args.out, "sluice.yaml"), not args.plain_config)
    if not args.no_mmdb:
        write_mmdb(g, os.path.join(args.out, "countries.mmdb"))
    print("detect-gen: %d records (%d flows), %d anomalies, %d benign big transfers in %s"
          % (g.out.count, g.out.flows, len(anomalies), len(g.benign), args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
