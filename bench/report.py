#!/usr/bin/env python3
"""Turns bench/proxy.sh's results.jsonl and machine.env into bench/results.md;
with --readme README results.md, copies the results into README's results block.

Rates are the median of the rounds; CPU time is summed over the rounds and
divided by the work done in them.
"""

import json
import statistics
import sys

COLS = ["direct", "sluice", "squid", "tinyproxy"]


def load(results, env):
    data = {}
    with open(results) as f:
        for line in f:
            r = json.loads(line)
            d = r["data"]
            for k in ("proxy_cpu_s", "proxy_user_s", "proxy_sys_s"):
                d[k] = r.get(k)
            data.setdefault((r["measure"], r["who"]), []).append(d)
    m = {}
    with open(env) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            m[k] = v
    return data, m


def fmt(x, digits=0):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def med(rounds, key):
    vals = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(vals) if vals else None


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def update_readme(readme, results):
    """Copies results.md, less its raw numbers, between the README's markers."""
    with open(results) as f:
        text = f.read()
    body = text.split("## Raw numbers")[0].strip()
    body = body.split("\n", 1)[1].strip()  # drop the title
    body = body.replace("## Machine", "### Machine")
    with open(readme) as f:
        r = f.read()
    if BEGIN not in r or END not in r:
        sys.exit(f"{readme}: no {BEGIN} … {END} block")
    head, rest = r.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(readme, "w") as f:
        f.write(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def main():
    if sys.argv[1] == "--readme":
        update_readme(sys.argv[2], sys.argv[3])
        return
    data, m = load(sys.argv[1], sys.argv[2])
    rounds_n = m["rounds"]
    notes = []

    def get(measure, who):
        return data.get((measure, who))

    rows = []

    # 1. bulk
    vals, cells = {}, {}
    for w in COLS:
        rs = get("bulk", w)
        if rs:
            vals[w] = med(rs, "bytes_per_second") / 2**20
            cells[w] = fmt(vals[w])
    rows.append(("bulk", f"CONNECT bulk throughput, MiB/s ({m['bulk_mib']} MiB download, median of {rounds_n})",
                 vals, cells, "≥ 1.2 × squid", lambda s, q: s >= 1.2 * q))

    # 2. tunnels
    vals, cells = {}, {}
    for w in COLS:
        rs = get("tunnels", w)
        if rs:
            vals[w] = med(rs, "per_second")
            cells[w] = f"{fmt(vals[w])} ({fmt(med(rs, 'p50_ms'), 1)} / {fmt(med(rs, 'p99_ms'), 1)} ms)"
            errors = sum(r["errors"] for r in rs)
            if errors:
                total = sum(r["ok"] + r["errors"] for r in rs)
                samples = [s for r in rs for s in r["error_samples"]][:5]
                cells[w] += " †"
                notes.append(f"tunnels via {w}: {errors} failed of {total}: {samples}")
    rows.append(("tunnels", f"New CONNECT tunnels/s, 32 concurrent clients (p50 / p99 setup latency), median of {rounds_n}",
                 vals, cells, "≥ 2 × squid", lambda s, q: s >= 2 * q))

    # 3. http
    vals, cells = {}, {}
    for w in COLS:
        rs = get("http", w)
        if rs:
            vals[w] = med(rs, "per_second")
            cells[w] = f"{fmt(vals[w])} ({fmt(med(rs, 'p50_ms'), 2)} / {fmt(med(rs, 'p99_ms'), 2)} ms)"
            requests = sum(r["requests"] for r in rs)
            errs = {}
            for r in rs:
                for k, v in r["errors"].items():
                    if v:
                        errs[k] = errs.get(k, 0) + v
            if set(errs) == {"read"} and abs(errs["read"] - requests) <= 64 * len(rs):
                cells[w] += " ‡"
                notes.append(
                    f"HTTP via {w}: {errs['read']:,} read errors for {requests:,} requests: the proxy "
                    "closes the client connection after every response (no keep-alive to the client), "
                    "so wrk reconnects for each request (wrk counts each close as a read error; no "
                    "status errors)")
            elif errs:
                cells[w] += " †"
                notes.append(f"HTTP via {w}: wrk errors {errs} in {requests:,} requests")
    rows.append(("http", f"Keep-alive HTTP req/s, `wrk -t2 -c32 -d{m['wrk_seconds']}s`, 100-byte body (p50 / p99), median of {rounds_n}",
                 vals, cells, "≥ 2 × squid", lambda s, q: s >= 2 * q))

    # 4. idle RSS
    vals, cells = {}, {}
    for w in COLS:
        rs = get("idle", w)
        if rs:
            d = rs[0]
            vals[w] = d["per_tunnel_kib"]
            cells[w] = fmt(d["per_tunnel_kib"], 1)
            if d["errors"] or d["alive_after"] != d["opened"]:
                cells[w] += " †"
                notes.append(
                    f"idle via {w}: {d['errors']} failed to open {d['error_samples']}, "
                    f"{d['alive_after']} of {d['opened']} still relaying after the measurement")
    rows.append(("idle", f"RSS per idle tunnel, KiB ({int(m['idle_tunnels']):,} open tunnels)",
                 vals, cells, "≤ 16 KiB", lambda s, q: s <= 16))

    out = []
    out.append("# Sluice proxy benchmark results\n")
    out.append(f"Run {m['date']} with `{m['cmdline']}` (see README.md for what each number means).\n")
    out.append("| measure | direct | sluice | squid | tinyproxy | sluice/squid | sluice/direct | target | met |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for key, label, vals, cells, target, ok in rows:
        s, q, d = vals.get("sluice"), vals.get("squid"), vals.get("direct")
        rs, rd = ratio(s, q), ratio(s, d)
        if s is None or (q is None and key != "idle"):
            met = "—"
        else:
            met = "yes" if ok(s, q) else "**no**"
        out.append(
            f"| {label} | {cells.get('direct', '—')} | {cells.get('sluice', '—')} | {cells.get('squid', '—')} "
            f"| {cells.get('tinyproxy', '—')} | {fmt(rs, 2)} | {fmt(rd, 2)} | {target} | {met} |")
    out.append("")
    out.append("Higher is better except for RSS. The ratios are of the sluice column. \"direct\" is the "
               "same client against the origin without a proxy (no RSS: there is no proxy process).")
    if notes:
        out.append("")
        for n in notes:
            out.append(f"- {n}")
        out.append("")
        out.append("† errors during the measurement; ‡ see the note.")
    out.append("")
    out.append("Proxy CPU time per unit of work, shown as total (user + system): all threads and "
               "child processes, from /proc/PID/stat (10 ms ticks) over all rounds; lower is better. "
               "Unlike the rates above it hardly depends on the client, the origin or what else "
               "the machine runs. On loopback, system time includes the receiving side's TCP "
               "processing, which the kernel runs in the sender's context:")
    out.append("")
    out.append("| measure | sluice | squid | tinyproxy | sluice/squid |")
    out.append("|---|---:|---:|---:|---:|")
    for measure, label, scale, count in [
        ("bulk", "CPU per GiB relayed, ms", 1000, lambda r: r["bytes"] / 2**30),
        ("tunnels", "CPU per tunnel, µs", 1e6, lambda r: r["ok"] + r["errors"]),
        ("http", "CPU per request, µs", 1e6, lambda r: r["requests"]),
    ]:
        per, cell = {}, {}
        for w in COLS[1:]:
            rs = get(measure, w)
            if rs and all(r.get("proxy_cpu_s") is not None for r in rs):
                units = sum(count(r) for r in rs)
                if units:
                    per[w] = sum(r["proxy_cpu_s"] for r in rs) * scale / units
                    user = sum(r.get("proxy_user_s") or 0 for r in rs) * scale / units
                    system = sum(r.get("proxy_sys_s") or 0 for r in rs) * scale / units
                    cell[w] = f"{fmt(per[w])} ({fmt(user)} + {fmt(system)})"
        r = ratio(per.get("sluice"), per.get("squid"))
        out.append(f"| {label} | " + " | ".join(cell.get(w, "—") for w in COLS[1:]) + f" | {fmt(r, 2)} |")
    client = {}
    for w in COLS:
        rs = get("tunnels", w)
        if rs and all("client_cpu_s" in r for r in rs):
            n = sum(r["ok"] + r["errors"] for r in rs)
            if n:
                client[w] = sum(r["client_cpu_s"] for r in rs) * 1e6 / n
    if client:
        out.append("")
        out.append("The tunnel client (one Python asyncio process) itself used "
                   + ", ".join(f"{fmt(v)} µs ({w})" for w, v in client.items())
                   + " of CPU per tunnel, on the same CPUs as the proxy: the direct column is the "
                   "client's own ceiling, and a rate near it says more about the client than about "
                   "the proxy.")
    out.append("")
    out.append("## Machine\n")
    out.append(f"- CPU: {m['cpu']}, `nproc` = {m['nproc']}; memory {m['mem']}")
    out.append(f"- kernel: {m['kernel']}")
    out.append(f"- load average (1/5/15 min): {m['load']}; compiler/linker processes of other "
               f"work running: {m['busy']}")
    out.append(f"- sluice {m['sluice']} (release build); squid {m['squid']}; tinyproxy {m['tinyproxy']}; "
               f"wrk {m['wrk']}; curl {m['curl']}; Python {m['python']} (origins and tunnel client)")
    out.append("- everything on 127.0.0.1: clients, proxy and origins share the same CPUs")
    out.append("")
    out.append("## Raw numbers\n")
    out.append("```json")
    for (measure, who), rs in data.items():
        for d in rs:
            out.append(json.dumps({"measure": measure, "who": who, **d}))
    out.append("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
