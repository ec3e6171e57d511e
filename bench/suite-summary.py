#!/usr/bin/env python3
"""Summarize a bench/suite.sh output dir: bench/suite-summary.py OUTDIR > summary.md

Reads OUTDIR/runs.tsv (one row per loadgen run), prints per (scenario, target) the median
of the repetitions ([min-max] for requests/s) and the ratios ours/theirs computed from the
medians of the same run: against the other caches, the node tier against the two-process
chains, against the baseline build (BASELINE_BIN) and the node tier against our own edge hits;
then the checks that the node tier answered where it should (OUTDIR/checks.tsv), the scale-out
table (OUTDIR/scale-out.tsv, drawn into OUTDIR/plots/scale-out.svg), the wrk outside check
(OUTDIR/wrk/summary.md) and the memory benchmark (OUTDIR/memory.txt) when present.
"""
import csv
import os
import statistics
import sys

out = sys.argv[1]
IDLE_MIN_PCT = float(os.environ.get("SCALE_IDLE_MIN_PCT", "20"))


def read_tsv(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    return list(csv.DictReader(open(path), delimiter="\t"))


rows = read_tsv("runs.tsv")
by = {}
for r in rows:
    by.setdefault((r["scenario"], r["target"]), []).append(r)


def med(key, runs):
    vals = [float(r[key]) for r in runs if r[key] != ""]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    return "" if v is None else f"{v:,.{digits}f}"


def ms(v):
    return "" if v is None else fmt(v / 1000, 2)


def ratio(a, b):
    return "" if a is None or not b else f"{a / b:.2f}"


def ours_of(s):
    return "edge-l1-off" if s.startswith("node-") else "edge"


def is_baseline(t):
    return t.startswith("base-")


print("# Benchmark suite\n")
versions = os.path.join(out, "versions.txt")
if os.path.exists(versions):
    for line in open(versions):
        print(f"- {line.strip()}")
    print()
scenarios = []
for s, _ in by:
    if s not in scenarios:
        scenarios.append(s)
if rows:
    print("Medians of the repetitions (loadgen on its own core, the server on the other). "
          "Latency in ms; `origin` is the requests the origin served during the run.\n")
    print("| scenario | target | req/s | [min-max] | MiB/s | p50 | p99 | errors | origin | edge hit | node hit |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for (s, t), runs in by.items():
        rps = [float(r["rps"]) for r in runs]
        print(f"| {s} | {t} | {fmt(med('rps', runs))} | {fmt(min(rps))}-{fmt(max(rps))} "
              f"| {fmt(med('mibps', runs), 1)} | {ms(med('p50_us', runs))} "
              f"| {ms(med('p99_us', runs))} | {fmt(med('errors', runs))} "
              f"| {fmt(med('origin_requests', runs))} | {fmt(med('edge_hit', runs), 3)} "
              f"| {fmt(med('node_hit', runs), 3)} |")

    print("\nRatios, ours / theirs (throughput: above 1 is better for us; p99 and origin "
          "requests, cold start only: below 1 is better for us). Ours is `edge`, and "
          "`edge-l1-off` in the node-tier scenarios:\n")
    print("| scenario | vs | req/s ratio | p99 ratio | origin requests ratio |")
    print("|---|---|---:|---:|---:|")
    for s in scenarios:
        mine = by.get((s, ours_of(s)))
        if not mine:
            continue
        for (s2, t), theirs in by.items():
            if s2 != s or t == ours_of(s) or is_baseline(t):
                continue
            origin = (ratio(med("origin_requests", mine), med("origin_requests", theirs))
                      if s.startswith("cold-") else "")
            print(f"| {s} | {t} | {ratio(med('rps', mine), med('rps', theirs))} "
                  f"| {ratio(med('p99_us', mine), med('p99_us', theirs))} | {origin} |")

# The node tier (our edge misses, our node hits) against the chains (front misses, back hits).
chains = [(s, t) for (s, t) in by if s.startswith("node-") and t.endswith("-chain")]
if chains:
    print("\n## Node tier against the two-process chains\n")
    print("Ours: an edge with a 2 KiB L1 (every request misses it) in front of one node over "
          "QUIC (a hit). `nginx-chain`: an nginx reverse proxy (upstream keepalive) in front of "
          "an nginx proxy_cache; `varnish-chain`: a varnishd passing everything to a caching "
          "varnishd. Every server on the server core. Medians; p99 in ms.\n")
    print("| scenario | vs | req/s ours | req/s theirs | req/s ratio | p99 ours | p99 theirs | p99 ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for s, t in chains:
        mine, theirs = by.get((s, "edge-l1-off")), by[(s, t)]
        if not mine:
            continue
        print(f"| {s} | {t} | {fmt(med('rps', mine))} | {fmt(med('rps', theirs))} "
              f"| {ratio(med('rps', mine), med('rps', theirs))} | {ms(med('p99_us', mine))} "
              f"| {ms(med('p99_us', theirs))} | {ratio(med('p99_us', mine), med('p99_us', theirs))} |")

# Ours against the baseline build, same run, the binaries taking turns.
base = [(s, t) for (s, t) in by if is_baseline(t)]
if base:
    print("\n## Ours / baseline (BASELINE_BIN)\n")
    print("The same servers from another build, measured right after ours in every repetition. "
          "Ratios of the medians; `per-rep` is the range of the ratios of the repetitions taken "
          "in pairs (rep i of ours / rep i of the baseline). req/s: above 1, ours is faster; "
          "p99: below 1, ours is faster.\n")
    print("| scenario | target | req/s ours | req/s baseline | req/s ratio | per-rep | p99 ours | p99 baseline | p99 ratio |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for s, t in base:
        ours_t = t[len("base-"):]
        mine, theirs = by.get((s, ours_t)), by[(s, t)]
        if not mine:
            continue
        b_rep = {r["rep"]: float(r["rps"]) for r in theirs}
        pairs = [float(r["rps"]) / b_rep[r["rep"]] for r in mine if b_rep.get(r["rep"])]
        spread = f"{min(pairs):.2f}-{max(pairs):.2f}" if pairs else ""
        print(f"| {s} | {ours_t} | {fmt(med('rps', mine))} | {fmt(med('rps', theirs))} "
              f"| {ratio(med('rps', mine), med('rps', theirs))} | {spread} "
              f"| {ms(med('p99_us', mine))} | {ms(med('p99_us', theirs))} "
              f"| {ratio(med('p99_us', mine), med('p99_us', theirs))} |")

# The cost of the node tier: node-Xk-zipf (edge-l1-off) against hit-Xk-zipf (edge), same shape.
tier = []
for s in scenarios:
    if s.startswith("node-"):
        hit = "hit-" + s[len("node-"):]
        mine, hits = by.get((s, "edge-l1-off")), by.get((hit, "edge"))
        if mine and hits:
            tier.append((s, hit, mine, hits))
if tier:
    print("\n## Our node tier against our edge hits (same keys, sizes and distribution)\n")
    print("| node tier | edge hits | req/s node tier | req/s edge hits | ratio | p99 node tier | p99 edge hits |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s, hit, mine, hits in tier:
        print(f"| {s} | {hit} | {fmt(med('rps', mine))} | {fmt(med('rps', hits))} "
              f"| {ratio(med('rps', mine), med('rps', hits))} | {ms(med('p99_us', mine))} "
              f"| {ms(med('p99_us', hits))} |")

checks = read_tsv("checks.tsv")
if checks:
    bad = [c for c in checks if c["result"] != "OK"]
    print("\n## Checks: the node tier answered where it should\n")
    print("After warming, a few keys through each front: ours must say `MISS, HIT from` a node, "
          "the nginx chain's back `X-Cache-Status: HIT`, the Varnish chain's front no hit and "
          "its back no miss (varnishstat); during every node-tier run the origin must see no "
          f"request and our edge's node-hit ratio must be at least 0.99. {len(checks)} checks, "
          f"{len(bad)} warnings.\n")
    print("| scenario | target | when | result | what |")
    print("|---|---|---|---|---|")
    for c in bad + [c for c in checks if c["result"] == "OK"]:
        print(f"| {c['scenario']} | {c['target']} | {c['when']} | {c['result']} | {c['what']} |")


def svg_scale(points, pct, path):
    """req/s against N (measured, and the ideal N x one node), in the style of loadgen's
    --plot charts (white, sans-serif, 2 px lines with dots, legend upper left)."""
    w, h, left, right, top, bottom = 600, 450, 80, 20, 50, 55
    ns = [p[0] for p in points]
    one = next((p[1] for p in points if p[0] == 1), None)
    ideal = [(n, n * one) for n in ns] if one else []
    max_n = max(ns)
    max_y = max([p[1] for p in points] + [y for _, y in ideal] + [1]) * 1.1

    def x(n):
        return left + (n / max_n) * (w - left - right) if max_n else left

    def y(v):
        return h - bottom - (v / max_y) * (h - top - bottom)

    e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
         f'viewBox="0 0 {w} {h}" font-family="sans-serif">',
         f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
         f'<text x="{w / 2}" y="28" font-size="18" text-anchor="middle">Scale-out: node tier, '
         f'each node capped at {pct:g} % of a core</text>']
    step = 10 ** max(len(str(int(max_y))) - 1, 0)
    while max_y / step < 4:
        step /= 2
    v = 0.0
    while v <= max_y:
        e.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - right}" y2="{y(v):.1f}" '
                 f'stroke="#000000" stroke-opacity="0.1"/>')
        e.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="12" '
                 f'text-anchor="end">{v:,.0f}</text>')
        v += step
    for n in ns:
        e.append(f'<line x1="{x(n):.1f}" y1="{top}" x2="{x(n):.1f}" y2="{h - bottom}" '
                 f'stroke="#000000" stroke-opacity="0.1"/>')
        e.append(f'<text x="{x(n):.1f}" y="{h - bottom + 18}" font-size="12" '
                 f'text-anchor="middle">{n}</text>')
    e.append(f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
             f'fill="none" stroke="#000000"/>')
    e.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" font-size="14" '
             f'text-anchor="middle">nodes</text>')
    e.append(f'<text transform="translate(18,{(top + h - bottom) / 2}) rotate(-90)" '
             f'font-size="14" text-anchor="middle">requests / s</text>')
    series = [("measured (median)", "#e6194b", [(n, v) for n, v, _ in points], "")]
    if ideal:
        series.append(("ideal: N x one node", "#3cb44b", ideal, ' stroke-dasharray="6,4"'))
    for i, (label, color, pts, dash) in enumerate(series):
        d = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in pts)
        e.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for n, v in pts:
            e.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>')
        ly = top + 18 + 18 * i
        e.append(f'<line x1="{left + 12}" y1="{ly}" x2="{left + 28}" y2="{ly}" stroke="{color}" '
                 f'stroke-width="2"{dash}/>')
        e.append(f'<text x="{left + 34}" y="{ly + 4}" font-size="12">{label}</text>')
    limited = [(n, v) for n, v, lim in points if lim]
    for n, v in limited:
        e.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="7" fill="none" stroke="#000000"/>')
    if limited:
        ly = top + 18 + 18 * len(series)
        e.append(f'<circle cx="{left + 20}" cy="{ly}" r="6" fill="none" stroke="#000000"/>')
        e.append(f'<text x="{left + 34}" y="{ly + 4}" font-size="12">under '
                 f'{IDLE_MIN_PCT:g} % of the machine free: limited by the machine</text>')
    e.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(e) + "\n")


scale = read_tsv("scale-out.tsv")
if scale:
    by_n = {}
    for r in scale:
        by_n.setdefault(int(r["nodes"]), []).append(r)
    pct = float(scale[0]["nodes_cap_cores"]) / int(scale[0]["nodes"]) * 100
    one = med("rps", by_n[1]) if 1 in by_n else None
    print("\n## Scale-out\n")
    print(f"One cluster of N nodes, each capped at {pct:g} % of a core (cgroup v1 CPU quota), "
          "edges with a 2 KiB L1 in front (every request answered by the node tier), Zipf 0.99. "
          "Medians. `ideal` is N x the one-node result. CPU during the run: `idle` is the "
          "machine's idle share, `niced` the share processes of positive nice took (builds: ours, "
          "at nice -20, take it from them when they need it), so `free` = idle + niced is what "
          "the benchmark left unused; `cores` are the nodes' use against their cap, the edges' "
          "and loadgen's (`other`: every other process). `node req / req`: requests the nodes "
          "received per request loadgen sent (above 1: hedges and retries between the tiers; "
          "below 1: requests for the same key coalesced at the edge); `node us / req`: the nodes' "
          "CPU time per request loadgen sent (constant if the nodes scale). "
          "`limited` marks runs with under "
          f"{IDLE_MIN_PCT:g} % free, where the curve says more about the machine than about the "
          "design.\n")
    print("| nodes | req/s | [min-max] | ideal | / ideal | p99 | node hit | errors | idle % "
          "| niced % | free % | nodes cores / cap | throttled % | node req / req | node us / req | edges cores "
          "| loadgen cores | other cores | limited |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    points = []
    for n in sorted(by_n):
        runs = by_n[n]
        rps = [float(r["rps"]) for r in runs]
        ideal = n * one if one else None
        free = statistics.median(float(r["idle_pct"]) + float(r["niced_pct"]) for r in runs)
        limited = free < IDLE_MIN_PCT
        points.append((n, med("rps", runs), limited))
        print(f"| {n} | {fmt(med('rps', runs))} | {fmt(min(rps))}-{fmt(max(rps))} | {fmt(ideal)} "
              f"| {ratio(med('rps', runs), ideal)} | {ms(med('p99_us', runs))} "
              f"| {fmt(med('node_hit', runs), 3)} | {fmt(med('errors', runs))} "
              f"| {fmt(med('idle_pct', runs), 1)} | {fmt(med('niced_pct', runs), 1)} | {fmt(free, 1)} "
              f"| {fmt(med('nodes_cores', runs), 2)} / {fmt(med('nodes_cap_cores', runs), 2)} "
              f"| {fmt(med('throttled_pct', runs), 1)} | {fmt(med('node_requests_per_request', runs), 3)} "
              f"| {fmt(med('node_us_per_request', runs), 1)} "
              f"| {fmt(med('edges_cores', runs), 2)} | {fmt(med('loadgen_cores', runs), 2)} "
              f"| {fmt(med('other_cores', runs), 2)} | {'**yes**' if limited else 'no'} |")
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    svg_scale(points, pct, os.path.join(out, "plots", "scale-out.svg"))
    print("\nThe curve: `plots/scale-out.svg`.")

wrk = os.path.join(out, "wrk", "summary.md")
if os.path.exists(wrk):
    print("\n## Outside check: the same caches under wrk (bench/compare.sh)\n")
    text = open(wrk).read()
    print(text.split("\n", 1)[1] if text.startswith("#") else text)
mem = os.path.join(out, "memory.txt")
if os.path.exists(mem):
    print("\n## Memory (bench/memory.sh)\n")
    print("```")
    print(open(mem).read().rstrip())
    print("```")
