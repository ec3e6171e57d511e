#!/usr/bin/env bash
# bench/fanout.sh [OUTDIR]
# Purge fan-out with many edges: how long a purge takes to be acknowledged by every member,
# and how many messages it costs, as the number of edges grows. For each EDGES in
# EDGES_LIST (default "10 25 50") starts `cdn-cluster --nodes NODES --edges EDGES` (release
# binaries from BIN, default target/release; the whole cluster in one process on
# BENCH_SERVER_CPUS, default 0,1), waits until a purge is acknowledged by all NODES + EDGES
# members, then sends REPS URL purges through a node's admin API and REPS through an edge's,
# each checked to be acknowledged by every member, and records:
#   elapsed_ms      the answer's own figure (first send to last acknowledgement)
#   round trip      the client's time for the POST
#   applied/purge   cdn_purges_total summed over every member, per purge (each member applies
#                   it once per copy it receives)
#   udp/purge       UDP datagrams the machine sent during the purges, less the cluster's own
#                   background rate (gossip, keep-alives) measured over as long just before
# Output: OUTDIR/fanout.tsv (edges, via, elapsed_ms, rtt_ms), OUTDIR/summary.txt, OUTDIR/logs/.
# Knobs: BIN, NODES (3), EDGES_LIST, REPS (30), FANOUT_PORT (18600: edge i on P+i, admin
# A = P+100: edge i's admin on A+i, node j's on A+50+j, so at most 50 edges).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
. "$here/lib.sh"

OUTDIR="${1:-$(mktemp -d "${TMPDIR:-/tmp}/bench-fanout.XXXXXX")}"
BIN="${BIN:-$root/target/release}"
NODES="${NODES:-3}"
EDGES_LIST="${EDGES_LIST:-10 25 50}"
REPS="${REPS:-30}"
P="${FANOUT_PORT:-18600}"
A=$((P + 100))
SERVER_CPUS="${BENCH_SERVER_CPUS:-0,1}"
TOKEN="bench-fanout-token"
for c in taskset curl python3; do command -v "$c" >/dev/null || die "$c not found"; done
[ -x "$BIN/cdn-cluster" ] || die "$BIN/cdn-cluster not found (cargo build --release -p cdn-cluster)"
mkdir -p "$OUTDIR/logs"
: >"$OUTDIR/fanout.tsv"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUTDIR/fanout.log" >&2; }

udp_out() { awk '/^Udp:/ {n++} n==2 && /^Udp:/ {print $5; exit}' /proc/net/snmp; }

# applied EDGES: cdn_purges_total summed over every member. Each series is counted once:
# members in one process share one metrics registry, so each member's /metrics lists all.
applied() {
    local e="$1" i
    for i in $(seq 0 $((e - 1))) $(seq 50 $((50 + NODES - 1))); do
        curl -sf "http://127.0.0.1:$((A + i))/metrics" | grep '^cdn_purges_total' || true
    done | sort -u | awk '{s += $2} END {printf "%d\n", s}'
}

# purge EDGES VIA ADMIN_PORT URL: one purge, checked to reach every member, recorded.
purge() {
    local e="$1" via="$2" port="$3" url="$4" out
    out="$(curl -s -w ' %{time_total}' -X POST -H "Authorization: Bearer $TOKEN" \
        -d "{\"urls\":[\"$url\"]}" "http://127.0.0.1:$port/purge")"
    python3 - "$e" "$via" "$out" "$((NODES + e))" >>"$OUTDIR/fanout.tsv" <<'EOF' || die "purge via $via failed: $out"
import json, sys
edges, via, out, members = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
body, rtt = out.rsplit(" ", 1)
r = json.loads(body)
assert not r["missing"] and len(r["acked"]) == members, (len(r["acked"]), r["missing"])
print(f"{edges}\t{via}\t{r['elapsed_ms']}\t{float(rtt) * 1000:.2f}")
EOF
}

: >"$OUTDIR/counts.tsv"
for e in $EDGES_LIST; do
    [ "$e" -le 50 ] || die "at most 50 edges (admin ports)"
    log "cluster: $NODES nodes, $e edges"
    taskset -c "$SERVER_CPUS" "$BIN/cdn-cluster" --nodes "$NODES" --edges "$e" --edge-port "$P" \
        --admin-port "$A" --admin-token "$TOKEN" --capacity 64MiB --edge-capacity 8MiB \
        >"$OUTDIR/logs/cluster-$e.log" 2>&1 &
    CLUSTER=$!
    trap 'kill "$CLUSTER" 2>/dev/null || true; wait "$CLUSTER" 2>/dev/null || true' EXIT
    # Ready when a purge reaches every member (every edge linked to the nodes).
    ready=0
    for _ in $(seq 1 300); do
        out="$(curl -s -X POST -H "Authorization: Bearer $TOKEN" -d '{"urls":["/warm"]}' \
            "http://127.0.0.1:$((A + 50))/purge" 2>/dev/null || true)"
        if python3 -c "import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if len(r['acked']) == $((NODES + e)) and not r['missing'] else 1)" "$out" 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.2
    done
    [ "$ready" = 1 ] || die "the cluster with $e edges never acknowledged a purge from every member"
    # The background: UDP sent while idle, over about as long as the purges take.
    u0="$(udp_out)"; t0="$(date +%s.%N)"
    sleep 3
    u1="$(udp_out)"; t1="$(date +%s.%N)"
    a0="$(applied "$e")"; u2="$(udp_out)"; t2="$(date +%s.%N)"
    for r in $(seq 1 "$REPS"); do
        purge "$e" node "$((A + 50))" "/fanout/node/$r"
        purge "$e" edge "$A" "/fanout/edge/$r"
    done
    u3="$(udp_out)"; t3="$(date +%s.%N)"; a1="$(applied "$e")"
    echo -e "$e\t$((2 * REPS))\t$((a1 - a0))\t$u0\t$u1\t$t0\t$t1\t$u2\t$u3\t$t2\t$t3" >>"$OUTDIR/counts.tsv"
    kill "$CLUSTER" 2>/dev/null || true
    wait "$CLUSTER" 2>/dev/null || true
    trap - EXIT
done

python3 - "$OUTDIR" "$NODES" <<'EOF' | tee "$OUTDIR/summary.txt"
import collections, sys
out, nodes = sys.argv[1], int(sys.argv[2])
rows = collections.defaultdict(list)
for line in open(f"{out}/fanout.tsv"):
    e, via, ms, rtt = line.split("\t")
    rows[(int(e), via)].append((float(ms), float(rtt)))
def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]
print(f"{nodes} nodes; URL purges, each acknowledged by every member")
print("edges\tvia\tpurges\telapsed_ms p50/p99/max\tround trip ms p50/p99/max\tapplied/purge\tudp/purge")
counts = {}
for line in open(f"{out}/counts.tsv"):
    e, n, appl, u0, u1, t0, t1, u2, u3, t2, t3 = line.split("\t")
    idle_rate = (int(u1) - int(u0)) / (float(t1) - float(t0))
    udp = (int(u3) - int(u2)) - idle_rate * (float(t3) - float(t2))
    counts[int(e)] = (int(appl) / int(n), udp / int(n))
for (e, via), v in sorted(rows.items()):
    ms = [x[0] for x in v]
    rtt = [x[1] for x in v]
    appl, udp = counts.get(e, (0, 0))
    print(f"{e}\t{via}\t{len(v)}\t{q(ms, .5):.0f}/{q(ms, .99):.0f}/{max(ms):.0f}\t"
          f"{q(rtt, .5):.1f}/{q(rtt, .99):.1f}/{max(rtt):.1f}\t{appl:.1f}\t{udp:.0f}")
EOF
