#!/usr/bin/env python3
"""Scores `sluice detect` alerts against bench/detect-gen.py's labels (issue 12).

    bench/detect-score.py ALERTS.jsonl LABELS.json RECORDS.jsonl

- Recall per kind: a planted anomaly is found when an alert of severity
  `warning` or above names its source (`src`) and, for kinds that have one,
  its destination (`dst` equal to the label's, or one a dot-suffix of the
  other, or one of the label's `dst_alt`), with `ts` from one minute before
  the anomaly's start to one hour after it. Reported twice: an alert of the
  right kind, and an alert of any kind. "late" counts anomalies found (right
  kind) only after that hour but before the anomaly ended (plus an hour);
  "right kind, no dst" those missed where an alert of the right kind named
  the source in time but no destination.
- False warnings: alerts of severity `warning` or above that match no
  anomaly (same source, destination as above or none, any kind, from
  5 minutes before its start to 2 hours after its end), per 10,000 benign
  flows (records that are not interim records, less the anomalies' flows).
- Benign big transfers (nightly backups, a developer's push, CI artifacts):
  alerts of severity `warning` or above naming the transfer's source and
  destination (or no destination) from 5 minutes before it began to an hour
  after it ended. This must be 0; `info` alerts are counted apart.

Prints a table and summary lines; always exits 0 (a benchmark reports, it
does not fail).
"""

import collections
import datetime
import json
import os
import sys

SEVERITY = {"info": 0, "warning": 1, "critical": 2}
MIN = 60.0
HOUR = 3600.0


def when(text):
    """Seconds since the epoch of an RFC 3339 UTC time."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def norm(name):
    return name.lower().rstrip(".") if isinstance(name, str) else name


def dst_matches(alert_dst, names):
    """The alert's destination names the labelled one: equal, or one is a
    dot-suffix of the other (`x.example.com` vs `example.com`)."""
    a = norm(alert_dst)
    if not a:
        return False
    for n in names:
        n = norm(n)
        if not n:
            continue
        if a == n or a.endswith("." + n) or n.endswith("." + a):
            return True
    return False


def load_alerts(path, problems):
    alerts = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                a = json.loads(line)
                a["_t"] = when(a["ts"])
                a["_sev"] = SEVERITY.get(a.get("severity"), -1)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                problems.append("%s:%d: not an alert (%s)" % (path, i, e))
                continue
            alerts.append(a)
    return alerts


def count_flows(path):
    records = interim = 0
    with open(path, "rb") as f:
        for line in f:
            records += 1
            if b'"interim":true' in line:
                interim += 1
    return records, records - interim


def main(argv):
    if len(argv) != 4:
        print(__doc__.strip().split("\n\n")[1].strip(), file=sys.stderr)
        print("detect-score: error: expected ALERTS.jsonl LABELS.json RECORDS.jsonl")
        return 0
    problems = []
    try:
        alerts = load_alerts(argv[1], problems)
        with open(argv[2]) as f:
            labels = json.load(f)
        records, flows = count_flows(argv[3])
    except (OSError, ValueError) as e:
        print("detect-score: error: %s" % e)
        return 0
    for p in problems[:5]:
        print("detect-score: warning: %s" % p, file=sys.stderr)
    anomalies = labels.get("anomalies", [])
    benign = labels.get("benign", [])
    for a in anomalies:
        a["_start"], a["_end"] = when(a["start"]), when(a["end"])
        a["_names"] = [a["dst"]] + list(a.get("dst_alt") or []) if a.get("dst") else []
    for b in benign:
        b["_start"], b["_end"] = when(b["start"]), when(b["end"])

    warn = [x for x in alerts if x["_sev"] >= 1]
    per_kind = collections.OrderedDict()
    for a in anomalies:
        k = per_kind.setdefault(a["kind"], {"planted": 0, "right": 0, "any": 0, "late": 0, "nodst": 0, "missed": []})
        k["planted"] += 1
        right = any_kind = late = nodst = False
        a["_first"] = None
        for x in warn:
            if x.get("src") != a["src"]:
                continue
            if a["_names"] and not dst_matches(x.get("dst"), a["_names"]):
                if not x.get("dst") and x.get("kind") == a["kind"] and \
                        a["_start"] - MIN <= x["_t"] <= a["_start"] + HOUR:
                    nodst = True  # the right kind about the source, naming no destination
                continue
            in_hour = a["_start"] - MIN <= x["_t"] <= a["_start"] + HOUR
            if in_hour:
                any_kind = True
                if x.get("kind") == a["kind"]:
                    right = True
                    if a["_first"] is None or x["_t"] < a["_first"]["_t"]:
                        a["_first"] = x
            elif x.get("kind") == a["kind"] and a["_start"] <= x["_t"] <= a["_end"] + HOUR:
                late = True
        k["right"] += right
        k["any"] += any_kind
        k["late"] += late and not right
        k["nodst"] += nodst and not right
        if not right:
            k["missed"].append(a)

    def explained(x):
        for a in anomalies:
            if x.get("src") != a["src"]:
                continue
            if not (a["_start"] - 5 * MIN <= x["_t"] <= a["_end"] + 2 * HOUR):
                continue
            if not a["_names"] or not x.get("dst") or dst_matches(x["dst"], a["_names"]):
                return True
        return False

    false = [x for x in warn if not explained(x)]
    benign_flows = max(1, flows - int(labels.get("anomaly_flows", 0)))

    transfer_hits, transfer_info = [], []
    for b in benign:
        for x in alerts:
            if x.get("src") != b["src"]:
                continue
            if not (b["_start"] - 5 * MIN <= x["_t"] <= b["_end"] + HOUR):
                continue
            if x.get("dst") and not dst_matches(x["dst"], [b["dst"]]):
                continue
            (transfer_hits if x["_sev"] >= 1 else transfer_info).append((b, x))

    # Benign events (a new workstation's first days, a newly allowed vendor):
    # warning+ alerts there are false warnings too; listed apart.
    event_hits = collections.Counter()
    for e in labels.get("benign_events", []):
        t0 = when(e["start"])
        for x in warn:
            if not (t0 <= x["_t"] <= t0 + 2 * 24 * HOUR):
                continue
            if e["kind"] == "new-source" and x.get("src") == e["src"]:
                event_hits[e["kind"]] += 1
            elif e["kind"] == "new-vendor" and dst_matches(x.get("dst"), ["twilio.com"]):
                event_hits[e["kind"]] += 1

    # === report ===
    print("## sluice detect: %d alerts (%d warning or above) over %d records (%d flows)"
          % (len(alerts), len(warn), records, flows))
    print()
    print("| kind | planted | found (right kind) | found (any kind) | found late | right kind, no dst | recall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    tot = {"planted": 0, "right": 0, "any": 0, "late": 0, "nodst": 0}
    for kind, k in per_kind.items():
        for f in tot:
            tot[f] += k[f]
        print("| %s | %d | %d | %d | %d | %d | %.0f%% |"
              % (kind, k["planted"], k["right"], k["any"], k["late"], k["nodst"], 100.0 * k["right"] / k["planted"]))
    if tot["planted"]:
        print("| **all** | %d | %d | %d | %d | %d | %.0f%% |"
              % (tot["planted"], tot["right"], tot["any"], tot["late"], tot["nodst"],
                 100.0 * tot["right"] / tot["planted"]))
    print()
    by_kind = collections.Counter(x.get("kind") for x in false)
    by_zone = collections.Counter(x.get("zone") for x in false)
    print("| false warnings by kind | count | per 10,000 benign flows |")
    print("|---|---:|---:|")
    for kind, n in by_kind.most_common():
        print("| %s | %d | %.2f |" % (kind, n, n * 10000.0 / benign_flows))
    print("| **all** | %d | %.2f |" % (len(false), len(false) * 10000.0 / benign_flows))
    print()
    print("| alert severity | count |")
    print("|---|---:|")
    for sev, n in sorted(collections.Counter(x.get("severity") for x in alerts).items(), key=lambda s: SEVERITY.get(s[0], -1)):
        print("| %s | %d |" % (sev, n))
    print()
    print("| anomaly | src | dst | start | found by | after | severity |")
    print("|---|---|---|---|---|---:|---|")
    for a in anomalies:
        x = a["_first"]
        print("| %s | %s | %s | %s | %s | %s | %s |" % (
            a["kind"], a["src"], a["dst"] or "", a["start"][:16].replace("T", " "),
            x.get("kind") if x else "**missed**",
            "%.0f min" % ((x["_t"] - a["_start"]) / MIN) if x else "",
            x.get("severity") if x else ""))
    print()
    for kind, k in per_kind.items():
        for a in k["missed"]:
            print("missed %s: src %s dst %s from %s (%s)" % (kind, a["src"], a["dst"], a["start"], a.get("note", "")))
    if false:
        print("false warnings by zone: %s" % ", ".join("%s %d" % (z, n) for z, n in by_zone.most_common()))
        shown = collections.Counter()
        for x in false:  # the first few of each kind, so that one kind does not hide the others
            shown[x.get("kind")] += 1
            if shown[x.get("kind")] <= 4:
                print("  false: %s %s %s src %s dst %s: %s" % (x.get("ts"), x.get("severity"), x.get("kind"),
                                                           x.get("src"), x.get("dst"), x.get("summary")))
    for b, x in transfer_hits[:10]:
        print("  benign %s alerted: %s %s %s src %s dst %s" % (b["kind"], x.get("ts"), x.get("severity"), x.get("kind"),
                                                           x.get("src"), x.get("dst")))
    print()
    for kind, k in per_kind.items():
        print("recall %s: %d/%d right kind, %d/%d any kind" % (kind, k["right"], k["planted"], k["any"], k["planted"]))
    if tot["planted"]:
        print("recall all: %d/%d right kind (%.0f%%), %d/%d any kind (%.0f%%)"
              % (tot["right"], tot["planted"], 100.0 * tot["right"] / tot["planted"],
                 tot["any"], tot["planted"], 100.0 * tot["any"] / tot["planted"]))
    print("false warnings: %d (%.2f per 10,000 benign flows; %d benign flows)"
          % (len(false), len(false) * 10000.0 / benign_flows, benign_flows))
    print("benign big transfers alerted: %d warning+ alerts on %d of %d transfers (must be 0); %d info alerts"
          % (len(transfer_hits), len({id(b) for b, _ in transfer_hits}), len(benign), len(transfer_info)))
    if labels.get("benign_events"):
        print("benign events alerted (warning+, first 2 days): %s"
              % ", ".join("%s %d" % (e["kind"], event_hits[e["kind"]]) for e in labels["benign_events"]))
    if problems:
        print("unreadable alert lines: %d" % len(problems))
    return 0


if __name__ == "__main__":
    try:
        main(sys.argv)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # `| head`: no traceback
    except Exception as e:  # a benchmark reports; it never fails the run
        print("detect-score: error: %s: %s" % (type(e).__name__, e))
    sys.exit(0)
