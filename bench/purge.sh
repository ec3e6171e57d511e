#!/usr/bin/env bash
# bench/purge.sh [OUTDIR]
# What a tag or prefix purge costs, acknowledged by every member, as the store grows.
# Starts `cdn-cluster --nodes 1 --edges 1` (release binaries from BIN, default target/release;
# the cluster on BENCH_SERVER_CPUS, loadgen and the purging client on BENCH_CLIENT_CPUS), loads
# N objects of 1 KiB through the edge in 100 groups (`/g<j>/<key>`, `Surrogate-Key: grp g<j>`,
# so both the node and the edge's L1 hold every one), then times purges through the edge's
# admin API (`elapsed_ms` of the answer, and the client's round trip), each checked to be
# acknowledged by every member:
#   none     REPS purges of a tag, then of a prefix, that match nothing
#   1pct     REPS purges of one group (1 %): tag g<j>, then prefix /g<j>/ (never the same group)
#   all      ALL_REPS purges of the tag grp (everything), reloading every object before each
# and (STORM=1) the edge-hit p99 over 1,000 hot keys for DUR seconds, alone and while a client
# sends 100 tag purges/s (tags matching nothing).
# Then how long the sweepers take to reclaim what the last purge of everything removed.
# Output: OUTDIR/purge.tsv (kind, elapsed_ms, round-trip ms), OUTDIR/summary.txt (p50, p99, max
# per kind; hit p99 with and without the storm), OUTDIR/logs/.
# Knobs: BIN, N (100000), REPS (20), ALL_REPS (3), STORM (1), DUR (10), CAPACITY per member
# (2GiB: 1,000,000 objects; give 4 KiB per object beyond), RECLAIM_WAIT (120 s),
# PURGE_PORT (18400..).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
. "$here/lib.sh"

OUTDIR="${1:-$(mktemp -d "${TMPDIR:-/tmp}/bench-purge.XXXXXX")}"
BIN="${BIN:-$root/target/release}"
N="${N:-100000}"
REPS="${REPS:-20}"
ALL_REPS="${ALL_REPS:-3}"
STORM="${STORM:-1}"
DUR="${DUR:-10}"
CAPACITY="${CAPACITY:-2GiB}"
RECLAIM_WAIT="${RECLAIM_WAIT:-120}"
P="${PURGE_PORT:-18400}"
SERVER_CPUS="${BENCH_SERVER_CPUS:-0}"
CLIENT_CPUS="${BENCH_CLIENT_CPUS:-1}"
EDGE_PORT=$P ADMIN_PORT=$((P + 10)) TOKEN="bench-purge-token"
GROUPS_N=100
PER_GROUP=$((N / GROUPS_N))
[ "$REPS" -le 50 ] || die "REPS is at most 50 (half of the 100 groups each for tags and prefixes)"
for c in taskset curl python3; do command -v "$c" >/dev/null || die "$c not found"; done
for b in cdn-cluster loadgen; do [ -x "$BIN/$b" ] || die "$BIN/$b not built (cargo build --release)"; done
mkdir -p "$OUTDIR/logs"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUTDIR/purge.log" >&2; }

taskset -c "$SERVER_CPUS" "$BIN/cdn-cluster" --nodes 1 --edges 1 --edge-port "$EDGE_PORT" \
    --admin-port "$ADMIN_PORT" --admin-token "$TOKEN" --capacity "$CAPACITY" --edge-capacity "$CAPACITY" \
    >"$OUTDIR/logs/cluster.log" 2>&1 &
CLUSTER=$!
trap 'kill "$CLUSTER" 2>/dev/null || true; wait "$CLUSTER" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$EDGE_PORT/ready?size=1" && break
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$EDGE_PORT/ready?size=1" || die "the edge never answered"

load() { # load: every object, through the edge (a miss fills the node and the edge)
    local j
    for j in $(seq 0 $((GROUPS_N - 1))); do
        taskset -c "$CLIENT_CPUS" "$BIN/loadgen" --target "127.0.0.1:$EDGE_PORT" -c 8 \
            --dist seq --keys "$PER_GROUP" --requests "$PER_GROUP" \
            --path "/g$j/{key}?size=1024&tags=grp%20g$j" >>"$OUTDIR/logs/load.log" 2>&1 ||
            die "loading group $j failed (logs/load.log)"
    done
}

# purge KIND JSON: one purge through the edge's admin API, checked and recorded.
purge() {
    local kind="$1" body="$2" out
    out="$(curl -s -w ' %{time_total}' -X POST -H "Authorization: Bearer $TOKEN" \
        -d "$body" "http://127.0.0.1:$ADMIN_PORT/purge")"
    python3 - "$kind" "$out" >>"$OUTDIR/purge.tsv" <<'EOF' || die "purge $body failed: $out"
import json, sys
kind, out = sys.argv[1], sys.argv[2]
body, rtt = out.rsplit(" ", 1)
r = json.loads(body)
assert not r["missing"] and len(r["acked"]) == 2, r
print(f"{kind}\t{r['elapsed_ms']}\t{float(rtt) * 1000:.2f}")
EOF
}

held() { # entries in the node's and the edge's store
    for a in $((ADMIN_PORT + 50)) "$ADMIN_PORT"; do
        curl -s "http://127.0.0.1:$a/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["entries"], end=" ")'
    done
}

: >"$OUTDIR/purge.tsv"
log "loading $N objects ($GROUPS_N groups of $PER_GROUP)"
load
log "held (node, edge): $(held)"
for i in $(seq 1 "$REPS"); do purge none "{\"tags\":[\"nothing-$i\"]}"; done
for i in $(seq 1 "$REPS"); do purge none "{\"prefixes\":[\"/nothing-$i/\"]}"; done
for i in $(seq 0 $((REPS - 1))); do purge 1pct "{\"tags\":[\"g$i\"]}"; done
for i in $(seq 50 $((50 + REPS - 1))); do purge 1pct "{\"prefixes\":[\"/g$i/\"]}"; done
log "after the 1 % purges, held (node, edge): $(held)"
for i in $(seq 1 "$ALL_REPS"); do
    [ "$i" = 1 ] || { log "reloading"; load; }
    log "held before purge of everything (node, edge): $(held)"
    purge all '{"tags":["grp"]}'
done
# How long the sweepers take to hand back the memory of what the last purge removed (polled
# for at most RECLAIM_WAIT seconds).
t0=$(date +%s.%N) node="?" edge="?"
for _ in $(seq 1 $((RECLAIM_WAIT * 5))); do
    read -r node edge <<<"$(held)"
    [ "$node" -le $((N / 100)) ] && [ "$edge" -le $((N / 100)) ] && break
    sleep 0.2
done
log "reclaimed: held (node, edge) $node $edge, $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)") s after the purge of everything"

if [ "$STORM" = 1 ]; then
    log "storm: loading the hot keys"
    load
    hits() { # hits NAME: DUR seconds of edge hits over 1,000 keys of group 99
        taskset -c "$CLIENT_CPUS" "$BIN/loadgen" --target "127.0.0.1:$EDGE_PORT" -c 16 \
            -d "$DUR" --dist uniform --keys "$PER_GROUP" --rate 20000 \
            --path "/g99/{key}?size=1024&tags=grp%20g99" --json "$OUTDIR/hits-$1.json" \
            >"$OUTDIR/logs/hits-$1.log" 2>&1
    }
    hits quiet
    taskset -c "$CLIENT_CPUS" python3 - "$ADMIN_PORT" "$TOKEN" "$DUR" >"$OUTDIR/storm.txt" 2>&1 <<'EOF' &
import http.client, json, sys, time
port, token, dur = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
start, sent, slow = time.monotonic(), 0, []
while time.monotonic() - start < dur + 1:
    due = start + sent / 100
    if due > time.monotonic():
        time.sleep(due - time.monotonic())
    c.request("POST", "/purge", json.dumps({"tags": [f"storm-{sent}"]}),
              {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = json.loads(c.getresponse().read())
    slow.append(r["elapsed_ms"])
    sent += 1
slow.sort()
print(f"storm: {sent} purges in {time.monotonic() - start:.1f} s, elapsed_ms p50 {slow[len(slow) // 2]} "
      f"p99 {slow[int(len(slow) * 0.99)]} max {slow[-1]}")
EOF
    STORM_PID=$!
    sleep 0.5
    hits storm
    wait "$STORM_PID" || true
fi

python3 - "$OUTDIR" "$N" "$STORM" >"$OUTDIR/summary.txt" <<'EOF'
import json, os, sys
out, n, storm = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
rows = [l.split("\t") for l in open(os.path.join(out, "purge.tsv")) if l.strip()]
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]
print(f"{n} objects per member (node and edge L1)")
print("kind\tpurges\telapsed_ms p50/p99/max\tround trip ms p50/p99/max")
for kind in ("none", "1pct", "all"):
    e = [int(r[1]) for r in rows if r[0] == kind]
    t = [float(r[2]) for r in rows if r[0] == kind]
    if e:
        print(f"{kind}\t{len(e)}\t{pct(e, .5)}/{pct(e, .99)}/{max(e)}\t"
              f"{pct(t, .5):.1f}/{pct(t, .99):.1f}/{max(t):.1f}")
for line in open(os.path.join(out, "purge.log")):
    if "reclaimed" in line:
        print(line.strip())
if storm:
    for name in ("quiet", "storm"):
        try:
            j = json.load(open(os.path.join(out, f"hits-{name}.json")))["load"]
        except OSError:
            continue
        print(f"edge hits, {name}: {j['rps']:.0f}/s, p50 {j['p50_us'] / 1000:.2f} "
              f"p99 {j['p99_us'] / 1000:.2f} p99.9 {j['p999_us'] / 1000:.2f} ms, "
              f"errors {j['errors']}, edge hit ratio {j['edge_hit_ratio']:.3f}")
    s = os.path.join(out, "storm.txt")
    if os.path.exists(s):
        print(open(s).read().strip())
EOF
cat "$OUTDIR/summary.txt"
