#!/usr/bin/env python3
"""Summarize a bench/suite.sh output dir: bench/suite-summary.py OUTDIR > summary.md

Reads OUTDIR/runs.tsv (one row per loadgen run), prints per (scenario, target) the median
of the repetitions ([min-max] for requests/s) and the ratios ours/theirs computed from the
medians of the same run; then the wrk outside check (OUTDIR/wrk/summary.md) and the memory
benchmark (OUTDIR/memory.txt) when present.
"""
import csv
import os
import statistics
import sys

out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "runs.tsv")), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault((r["scenario"], r["target"]), []).append(r)


def med(key, runs):
    vals = [float(r[key]) for r in runs if r[key] != ""]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    return "" if v is None else f"{v:,.{digits}f}"


print("# Benchmark suite\n")
versions = os.path.join(out, "versions.txt")
if os.path.exists(versions):
    for line in open(versions):
        print(f"- {line.strip()}")
    print()
print("Medians of the repetitions (loadgen on its own core, the server on the other). "
      "Latency in ms; `origin` is the requests the origin served during the run.\n")
print("| scenario | target | req/s | [min-max] | MiB/s | p50 | p99 | errors | origin | edge hit | node hit |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
scenarios = []
for (s, t), runs in by.items():
    if s not in scenarios:
        scenarios.append(s)
    rps = [float(r["rps"]) for r in runs]
    print(f"| {s} | {t} | {fmt(med('rps', runs))} | {fmt(min(rps))}-{fmt(max(rps))} "
          f"| {fmt(med('mibps', runs), 1)} | {fmt(med('p50_us', runs) / 1000, 2)} "
          f"| {fmt(med('p99_us', runs) / 1000, 2)} | {fmt(med('errors', runs))} "
          f"| {fmt(med('origin_requests', runs))} | {fmt(med('edge_hit', runs), 3)} "
          f"| {fmt(med('node_hit', runs), 3)} |")

print("\nRatios, ours / theirs (throughput: above 1 is better for us; p99 and origin "
      "requests, cold start only: below 1 is better for us):\n")
print("| scenario | vs | req/s ratio | p99 ratio | origin requests ratio |")
print("|---|---|---:|---:|---:|")
for s in scenarios:
    ours = "edge-l1-off" if s.startswith("node-") else "edge"
    mine = by.get((s, ours))
    if not mine:
        continue
    for (s2, t), theirs in by.items():
        if s2 != s or t == ours:
            continue

        def ratio(key):
            a, b = med(key, mine), med(key, theirs)
            return "" if a is None or not b else f"{a / b:.2f}"

        origin = ratio("origin_requests") if s.startswith("cold-") else ""
        print(f"| {s} | {t} | {ratio('rps')} | {ratio('p99_us')} | {origin} |")

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
