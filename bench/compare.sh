#!/usr/bin/env bash
# bench/compare.sh [OUTDIR]
# The side-by-side cache-HIT comparison with wrk: builds the release binaries, starts
# our edge (cdn-cluster with 1 node and 1 edge, room for every object in the edge's L1) in front of the same nginx origin that
# run-anchors.sh starts, pinned to the server core like every other cache, then runs
# run-anchors.sh with it as an extra target (Varnish, nginx proxy_cache, Traffic Server when
# installed, and the origin itself as the reference), interleaved, REPS times each.
# Results: OUTDIR/summary.md (medians, ratios to the origin), OUTDIR/runs.tsv, OUTDIR/raw/.
# Knobs: everything run-anchors.sh takes (SIZES, PATTERNS, REPS, DUR, TARGETS, ...) plus
# EDGE_PORT (18090), BIN (a directory with cdn-cluster: no cargo build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
OUTDIR="${1:-$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")}"
EDGE_PORT="${EDGE_PORT:-18090}"
ORIGIN_PORT="${ORIGIN_PORT:-18080}"
SERVER_CPUS="${BENCH_SERVER_CPUS:-0}"

if [ -n "${BIN:-}" ]; then # already built binaries: nothing is built
    bin="$(cd "$BIN" && pwd)"
else
    (cd "$root" && cargo build --release -p cdn-cluster -p loadgen)
    bin="$root/target/release"
fi
log="$OUTDIR/edge.log"
mkdir -p "$OUTDIR"
# The edge fronts the origin run-anchors.sh is about to start; connections are made lazily.
nice -n "${BENCH_NICE:--20}" taskset -c "$SERVER_CPUS" "$bin/cdn-cluster" \
    --origin "http://127.0.0.1:$ORIGIN_PORT" --nodes 1 --edges 1 \
    --capacity 2GiB --edge-capacity 1GiB \
    --edge-port "$EDGE_PORT" --admin-port "$((EDGE_PORT + 1000))" >"$log" 2>&1 &
edge_pid=$!
trap 'kill "$edge_pid" 2>/dev/null; wait "$edge_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q "cdn-cluster is up" "$log" 2>/dev/null && break
    kill -0 "$edge_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
grep -q "cdn-cluster is up" "$log" || { echo "cdn-cluster did not come up" >&2; exit 1; }

EXTRA_TARGETS="edge=$EDGE_PORT" EXTRA_PIDS="$edge_pid" ORIGIN_PORT="$ORIGIN_PORT" \
    "$here/run-anchors.sh" "$OUTDIR"
echo "summary: $OUTDIR/summary.md"
