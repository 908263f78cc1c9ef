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


def detection_cost(data):
    """Detection's cost on the HTTP path when `sluice-nodetect` (the same
    binary, its zone `detect: off`) ran beside `sluice`: the proxy's CPU
    seconds per request over every round of measure 3, both columns."""
    per = {}
    for who in ("sluice", "sluice-nodetect"):
        rs = data.get(("http", who)) or []
        reqs = sum(d.get("requests") or 0 for d in rs)
        cpu = sum(d.get("proxy_cpu_s") or 0 for d in rs)
        if reqs and cpu:
            per[who] = (cpu / reqs * 1e6, reqs, cpu)
    if len(per) < 2:
        return []
    on, off = per["sluice"], per["sluice-nodetect"]
    return ["", "## Detection on the HTTP path (sluice vs sluice-nodetect)", "",
            "| column | requests | proxy CPU s | CPU µs per request |", "|---|---:|---:|---:|",
            f"| sluice (detection on) | {on[1]} | {on[2]:.2f} | {on[0]:.1f} |",
            f"| sluice-nodetect (`detect: off`) | {off[1]} | {off[2]:.2f} | {off[0]:.1f} |",
            "", f"Detection adds {(on[0] / off[0] - 1) * 100:+.1f} % CPU per request (goal ≤ +5 %)."]


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
    # The transparent rows have their own block in the README.
    tb, te = "<!-- transparent:begin -->", "<!-- transparent:end -->"
    if tb in body and te in body:
        body = (body.split(tb, 1)[0].rstrip() + "\n\n" + body.split(te, 1)[1].lstrip()).strip()
    body = body.replace("## Machine", "### Machine")
    with open(readme) as f:
        r = f.read()
    if BEGIN not in r or END not in r:
        sys.exit(f"{readme}: no {BEGIN} … {END} block")
    head, rest = r.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(readme, "w") as f:
        f.write(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def update_block(name, path, source, title=True):
    """Puts source's table part (up to its raw numbers) between
    <!-- NAME:begin --> and <!-- NAME:end --> in path; where path has no
    such block, adds one before path's raw numbers (or at the end). Without
    title, source's first line (its heading) is left out."""
    b, e = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    with open(source) as f:
        body = f.read().split("### Raw numbers")[0].strip()
    if not title:
        body = body.split("\n", 1)[1].strip()
    with open(path) as f:
        r = f.read()
    if b in r and e in r:
        head, rest = r.split(b, 1)
        _, tail = rest.split(e, 1)
    elif "\n## Raw numbers" in r:
        head, tail = r.split("\n## Raw numbers", 1)
        head, tail = head.rstrip("\n") + "\n\n", "\n\n## Raw numbers" + tail
    else:
        head, tail = r.rstrip("\n") + "\n\n", "\n"
    with open(path, "w") as f:
        f.write(f"{head}{b}\n{body}\n{e}{tail}")


def transparent(results, env):
    """The transparent rows (bench/transparent.sh), in the proxy table's format."""
    data, m = load(results, env)
    rounds_n = m["rounds"]
    notes = []
    get = lambda measure, who: data.get((measure, who))
    out = []
    out.append("## Transparent listener (bench/transparent.sh)\n")
    out.append(f"Run {m['date']} with `{m['cmdline']}`: client, gateway and origin network namespaces "
               "joined by veth pairs; Sluice's `listen.transparent` in the gateway behind "
               "`deploy/transparent/sluice.nft`. The client connects to the origin's own address "
               "(198.51.100.10) and never names a proxy. \"direct\" is the same client through the "
               "same gateway with the ruleset's redirect removed and its forward chain's drops "
               "turned into accepts (plain forwarding, conntrack and the nat hook still in place). "
               "squid and tinyproxy were not run in this setup (squid's `intercept` mode would be "
               "the peer), so the squid-relative targets cannot be judged here; the ratio to "
               f"direct is the comparison. {int(m['flows']):,} transparent flow records were written.\n")
    out.append("| measure | direct | sluice | squid | tinyproxy | sluice/squid | sluice/direct | target | met |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
    rb = {w: get("bulk", w) for w in ("direct", "transparent")}
    if all(rb.values()):
        d, t = (med(rb[w], "bytes_per_second") / 2**20 for w in ("direct", "transparent"))
        out.append(f"| Transparent bulk throughput, MiB/s ({m['bulk_mib']} MiB HTTP download redirected, "
                   f"median of {rounds_n}) | {fmt(d)} | {fmt(t)} | not run | not run | — | {fmt(ratio(t, d), 2)} "
                   "| ≥ 1.2 × squid | — |")
    rt = {w: get("tunnels", w) for w in ("direct", "transparent")}
    if all(rt.values()):
        cells, vals = {}, {}
        for w, rs in rt.items():
            vals[w] = med(rs, "per_second")
            cells[w] = tunnel_cell(rs)
            errors = sum(r["errors"] for r in rs)
            if errors:
                total = sum(r["ok"] + r["errors"] for r in rs)
                samples = [x for r in rs for x in r["error_samples"]][:5]
                cells[w] += " †"
                notes.append(f"tunnels {w}: {errors} failed of {total}: {samples}")
        out.append(f"| New transparent tunnels/s, 32 concurrent clients (p50 / p99 ms connect to echo; set-up p99: connect to the proxy's answer), median of "
                   f"{rounds_n} | {cells['direct']} | {cells['transparent']} | not run | not run | — "
                   f"| {fmt(ratio(vals['transparent'], vals['direct']), 2)} | ≥ 2 × squid | — |")
    ri = get("idle", "transparent")
    if ri:
        d = ri[0]
        cell = fmt(d["per_tunnel_kib"], 1)
        if d["errors"] or d["alive_after"] != d["opened"]:
            cell += " †"
            notes.append(
                f"idle: {d['errors']} failed to open {d['error_samples']}, "
                f"{d['alive_after']} of {d['opened']} still relaying after the measurement")
        met = "yes" if d["per_tunnel_kib"] <= 16 else "**no**"
        out.append(f"| RSS per idle transparent tunnel, KiB ({d['opened']:,} open tunnels; RSS "
                   f"{d['rss_before_kib']:,} KiB before them) | — | {cell} | not run | not run | — | — "
                   f"| ≤ 16 KiB | {met} |")
    for n in notes:
        out.append(f"\n- {n}\n\n† errors during the measurement.")
    out.append("")
    cpu = []
    for measure, label, scale, count in [
        ("bulk", "CPU per GiB relayed, ms", 1000, lambda r: r["bytes"] / 2**30),
        ("tunnels", "CPU per tunnel, µs", 1e6, lambda r: r["ok"] + r["errors"]),
    ]:
        rs = get(measure, "transparent")
        if rs and all(r.get("proxy_cpu_s") is not None for r in rs):
            units = sum(count(r) for r in rs)
            tot = sum(r["proxy_cpu_s"] for r in rs) * scale / units
            user = sum(r.get("proxy_user_s") or 0 for r in rs) * scale / units
            system = sum(r.get("proxy_sys_s") or 0 for r in rs) * scale / units
            name, unit = label.split(", ")
            cpu.append(f"{name} {fmt(tot)} {unit} ({fmt(user)} user + {fmt(system)} system)")
    if cpu:
        out.append("Sluice's CPU time in these rounds (all threads, /proc/PID/stat): " + "; ".join(cpu) + ".")
        out.append("")
    out.append(f"Machine: {m['cpu']}, `nproc` = {m['nproc']}, {m['mem']}; {m['kernel']}; load average "
               f"(1/5/15 min) {m['load']}; compiler/linker processes of other work running: {m['busy']}; "
               f"sluice {m['sluice']} (release build); curl {m['curl']}; nft {m['nft']}; Python {m['python']} "
               "(bulk origin); tunnel client and echo origin: `sluice-loadgen` (compiled, one "
               "current_thread tokio process each).")
    out.append("")
    out.append("### Raw numbers\n")
    out.append("```json")
    for (measure, who), rs in data.items():
        for d in rs:
            out.append(json.dumps({"measure": measure, "who": who, **d}))
    out.append("```")
    return "\n".join(out)


def tunnel_cell(rs):
    """A tunnels cell: rate, then the p50 / p99 of connect-to-echo (the
    tunnel usable end to end), then the p99 of set-up (connect to the
    proxy's answer; direct: the TCP connect) where the client reported it."""
    cell = f"{fmt(med(rs, 'per_second'))} ({fmt(med(rs, 'p50_ms'), 1)} / {fmt(med(rs, 'p99_ms'), 1)} ms"
    if all(r.get("setup_p99_ms") is not None for r in rs):
        cell += f"; set-up p99 {fmt(med(rs, 'setup_p99_ms'), 2)} ms"
    return cell + ")"


def budget(get, nproc):
    """Where the CPUs went in the tunnels and HTTP rounds: per tunnel (per
    request), the proxy's, the client's and the origin's CPU, and the share
    of all CPUs busy (rounds measured with `machine_busy`). With every CPU
    busy, the rate is nproc / the sum: a proxy's rate depends on the
    client's and the origin's CPU as much as on its own."""
    out = []
    for measure, origin, unit, count, cols in [
        ("tunnels", "echo_cpu_s", "tunnel", lambda r: r["ok"] + r["errors"], COLS[:2] + ["socks5"] + COLS[2:]),
        ("http", "origin_cpu_s", "request", lambda r: r["requests"], COLS),
    ]:
        rows = []
        for w in cols:
            rs = get(measure, w)
            if not rs or not all("machine_busy" in r and "client_cpu_s" in r and origin in r for r in rs):
                continue
            n = sum(count(r) for r in rs)
            if not n:
                continue
            proxy = sum(r.get("proxy_cpu_s") or 0 for r in rs) * 1e6 / n
            client = sum(r["client_cpu_s"] for r in rs) * 1e6 / n
            orig = sum(r[origin] for r in rs) * 1e6 / n
            total = proxy + client + orig
            busy = med(rs, "machine_busy")
            rows.append(f"| {w} | {fmt(med(rs, 'per_second'))} | {fmt(proxy) if proxy else '—'} | {fmt(client)} "
                        f"| {fmt(orig)} | {fmt(total)} | {fmt(busy * 100)} % | {fmt(nproc * 1e6 / total)} |")
        if not rows:
            continue
        client = "`sluice-loadgen tunnels`" if measure == "tunnels" else "wrk"
        source = "echo origin (`sluice-loadgen echo`)" if measure == "tunnels" else "HTTP origin (`origin.py http`)"
        out += ["", f"What bounds the {measure} rate: CPU per {unit} of the proxy, the client ({client}) and "
                f"the {source} in those rounds, the share of all CPUs busy (/proc/stat, median round; "
                "other work on the machine counts too) and the rate those CPUs would give with every "
                "one busy (nproc / the sum). A proxy that leaves CPUs idle is limited by itself (squid: "
                "one thread); one that keeps them busy is limited by the sum.", "",
                f"| column | {unit}s/s | proxy µs | client µs | origin µs | sum µs | CPUs busy | rate at 100 % busy |",
                "|---|---:|---:|---:|---:|---:|---:|---:|", *rows]
    return out


def main():
    if sys.argv[1] == "--readme":
        update_readme(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1] == "--block":
        update_block(sys.argv[2], sys.argv[3], sys.argv[4], title="--no-title" not in sys.argv[5:])
        return
    if sys.argv[1] == "--transparent":
        print(transparent(sys.argv[2], sys.argv[3]))
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
            cells[w] = tunnel_cell(rs)
            errors = sum(r["errors"] for r in rs)
            if errors:
                total = sum(r["ok"] + r["errors"] for r in rs)
                samples = [s for r in rs for s in r["error_samples"]][:5]
                cells[w] += " †"
                notes.append(f"tunnels via {w}: {errors} failed of {total}: {samples}")
    rows.append(("tunnels", f"New CONNECT tunnels/s, 32 concurrent clients (p50 / p99 ms connect to echo; set-up p99: connect to the proxy's answer), median of {rounds_n}",
                 vals, cells, "≥ 2 × squid", lambda s, q: s >= 2 * q))

    # 1b, 2b. SOCKS5 through Sluice's listen.socks5 (column "socks5" in the
    # raw numbers). squid and tinyproxy have no SOCKS5 listener: squid's
    # CONNECT numbers stand in as the reference peer, tinyproxy is left out.
    connect_rows = {r[0]: r for r in rows}
    for key, measure, label, target, ok in [
        ("bulk", "bulk",
         f"SOCKS5 bulk throughput, MiB/s (`curl --socks5`, {m['bulk_mib']} MiB download, median of {rounds_n}); squid column: its CONNECT",
         "≥ 1.2 × squid CONNECT", lambda s, q: s >= 1.2 * q),
        ("tunnels", "tunnels",
         f"New SOCKS5 tunnels/s, 32 concurrent clients (p50 / p99 ms connect to echo; set-up p99: connect to the proxy's answer), median of {rounds_n}; squid column: its CONNECT",
         "≥ 2 × squid CONNECT", lambda s, q: s >= 2 * q),
    ]:
        rs = get(measure, "socks5")
        if not rs:
            continue
        _, _, cvals, ccells, _, _ = connect_rows[key]
        vals = {w: cvals[w] for w in ("direct", "squid") if w in cvals}
        cells = {w: ccells[w] for w in ("direct", "squid") if w in ccells}
        if "squid" in cells:
            cells["squid"] += " (CONNECT)"
        cells["tinyproxy"] = "no SOCKS5"
        if measure == "bulk":
            vals["sluice"] = med(rs, "bytes_per_second") / 2**20
            cells["sluice"] = fmt(vals["sluice"])
        else:
            vals["sluice"] = med(rs, "per_second")
            cells["sluice"] = tunnel_cell(rs)
            errors = sum(r["errors"] for r in rs)
            if errors:
                total = sum(r["ok"] + r["errors"] for r in rs)
                samples = [x for r in rs for x in r["error_samples"]][:5]
                cells["sluice"] += " †"
                notes.append(f"SOCKS5 tunnels via sluice: {errors} failed of {total}: {samples}")
        rows.append((key + "-socks5", label, vals, cells, target, ok))

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
               "same client against the origin without a proxy (no RSS: there is no proxy process). "
               "The SOCKS5 rows are Sluice's `listen.socks5` (same process, same policy); squid and "
               "tinyproxy have no SOCKS5 listener, so those rows compare with squid's CONNECT numbers "
               "of the same rounds and leave tinyproxy out; their direct column is the CONNECT rows' one.")
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
    for measure, label, scale, count, socks in [
        ("bulk", "CPU per GiB relayed, ms", 1000, lambda r: r["bytes"] / 2**30, False),
        ("tunnels", "CPU per tunnel, µs", 1e6, lambda r: r["ok"] + r["errors"], False),
        ("bulk", "SOCKS5: CPU per GiB relayed, ms (squid: CONNECT)", 1000, lambda r: r["bytes"] / 2**30, True),
        ("tunnels", "SOCKS5: CPU per tunnel, µs (squid: CONNECT)", 1e6, lambda r: r["ok"] + r["errors"], True),
        ("http", "CPU per request, µs", 1e6, lambda r: r["requests"], False),
    ]:
        if socks and not get(measure, "socks5"):
            continue
        per, cell = {}, {}
        for w in (["sluice", "squid"] if socks else COLS[1:]):
            rs = get(measure, "socks5" if socks and w == "sluice" else w)
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
    for w in COLS[:2] + ["socks5"] + COLS[2:]:
        rs = get("tunnels", w)
        if rs and all("client_cpu_s" in r for r in rs):
            n = sum(r["ok"] + r["errors"] for r in rs)
            if n:
                client[w] = sum(r["client_cpu_s"] for r in rs) * 1e6 / n
    if client:
        out.append("")
        out.append("The tunnel client (`sluice-loadgen`, compiled, one current_thread tokio process) itself used "
                   + ", ".join(f"{fmt(v)} µs ({w})" for w, v in client.items())
                   + " of CPU per tunnel, on the same CPUs as the proxy: the direct column is the "
                   "client's own ceiling, and a rate near it says more about the client than about "
                   "the proxy.")
    out.extend(budget(get, int(m["nproc"])))
    out.append("")
    out.append("## Machine\n")
    out.append(f"- CPU: {m['cpu']}, `nproc` = {m['nproc']}; memory {m['mem']}")
    out.append(f"- kernel: {m['kernel']}")
    out.append(f"- load average (1/5/15 min): {m['load']}; compiler/linker processes of other "
               f"work running: {m['busy']}")
    out.append(f"- sluice {m['sluice']} (release build); squid {m['squid']}; tinyproxy {m['tinyproxy']}; "
               f"wrk {m['wrk']}; curl {m['curl']}; Python {m['python']} (HTTP and bulk origins, idle-tunnel "
               "client); tunnel client and echo origin: `sluice-loadgen` (compiled, one current_thread "
               "tokio process each)")
    out.append("- everything on 127.0.0.1: clients, proxy and origins share the same CPUs")
    out.extend(detection_cost(data))
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
