#!/usr/bin/env bash
# bench/suite.sh [OUTDIR]
# The whole comparison, one command. Builds the release binaries (or takes them from BIN),
# installs Varnish and nginx from Debian's packages if absent, starts one origin-stub for
# everyone, our cluster (a node, an edge, and a second edge whose L1 holds nothing so every
# request goes to the node tier), Varnish and nginx proxy_cache in front of it, for the node
# tier the two-process chains of ../shared/bench/two-tier.sh (an nginx reverse proxy in front
# of an nginx proxy_cache; a varnishd passing everything to a caching varnishd), and with
# BASELINE_BIN a second, identical cluster of another build, all pinned to the server core
# (BENCH_SERVER_CPUS, 0) with loadgen on the other (BENCH_CLIENT_CPUS, 1), then runs each
# scenario REPS times, interleaving the targets, with the same loadgen settings for all:
#   hit-{1k,16k,1m}-hot    edge hits, one key
#   hit-{1k,16k}-zipf      edge hits, 10,000 keys, Zipf 0.99 (every key warmed first)
#   hit-1m-zipf            edge hits, 256 keys, Zipf 0.99 (10,000 x 1 MiB would not fit)
#   node-{1k,16k}-zipf     the node tier: our edge misses (2 KiB L1) and our node answers, against
#                          the chains (front misses, back hits); 10,000 keys, Zipf 0.99, every
#                          key fetched twice through each front first, the back's hits checked
#   cold-1k-zipf           from cold, origin 20 ms away: COLD_REQUESTS requests over 10,000
#                          keys, Zipf 0.99, 64 connections; origin requests counted
#   scale-out              (SCALE=1 only) node-tier req/s with 1, 2, 4, 8 nodes (SCALE_NODES) in
#                          one cluster, each node capped at SCALE_QUOTA_PCT % of a core with a
#                          cgroup v1 CPU quota, SCALE_EDGES edges with a 2 KiB L1 in front;
#                          CPU use recorded: a run with under SCALE_IDLE_MIN_PCT % of the machine
#                          idle (or taken by processes of positive nice, which ours preempt) is
#                          limited by the machine, not by the nodes
# With BASELINE_BIN (another build's cache-node and edge) its targets base-edge and
# base-edge-l1-off run right after ours in every scenario ours run in.
# then (WRK=1) bench/compare.sh as the outside check with wrk, (MEMORY=1) bench/memory.sh, and
# (PURGE=1) bench/purge.sh: tag and prefix purges acknowledged by every member over PURGE_N
# objects per member, and edge hits during 100 tag purges/s.
# Output: OUTDIR/summary.md (medians, ratios ours/theirs, ours/baseline from the same run),
# OUTDIR/runs.tsv, OUTDIR/checks.tsv (was the node tier hit where it should be),
# OUTDIR/scale-out.tsv, OUTDIR/json/*.json (every loadgen report), OUTDIR/plots/*.svg
# (plots/scale-out.svg: req/s against the number of nodes), OUTDIR/wrk/, OUTDIR/memory.txt,
# OUTDIR/purge/summary.txt.
# Knobs: DUR (10), REPS (3), CONNS (32), CONNS_1M (8), COLD_REQUESTS (20000), SCENARIOS,
# TARGETS ("edge varnish nginx-cache"), CHAINS ("nginx-chain varnish-chain", the node tier's
# anchors), BIN (a directory with cache-node, edge, origin-stub, loadgen, and cdn-cluster for
# WRK and PURGE: no cargo build), BASELINE_BIN (a directory with the cache-node and edge to
# compare ours with), SCALE (0), SCALE_NODES ("1 2 4 8", at most 20), SCALE_QUOTA_PCT (10),
# SCALE_PERIOD_US (100000, the CFS period the quota is a share of), SCALE_EDGES (2, at most 4),
# SCALE_KEYS (10000), SCALE_CONNS (64 per node: loadgen's connections over all the edges are N x
# this, so each node sees the same concurrency whatever N; a node's cost per request falls
# with its concurrency, so a fixed total would charge the larger clusters more), SCALE_CPUS
# (every core: nodes, edges and loadgen alike), SCALE_IDLE_MIN_PCT (20), WRK (1), MEMORY (1),
# MEMORY_N (1000000), PURGE (1), PURGE_N (100000), ports SUITE_PORT (18300..18379 by default):
#   P+0 origin, P+1 node (QUIC), P+2 node admin, P+3 edge, P+4 edge admin, P+5 edge with no L1,
#   P+6 its admin, P+7 varnish, P+8 nginx-cache;
#   P+10 nginx-chain front, P+11 its back, P+12 varnish-chain front, P+13 its back;
#   P+21..P+26 the baseline's node, node admin, edge, edge admin, edge with no L1, its admin;
#   scale-out: P+30 origin, P+31.. edges, P+35.. their admins, P+40+k node k (QUIC),
#   P+60+k its admin.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
. "$here/lib.sh"

OUTDIR="${1:-$(mktemp -d "${TMPDIR:-/tmp}/bench-suite.XXXXXX")}"
DUR="${DUR:-10}"
REPS="${REPS:-3}"
CONNS="${CONNS:-32}"
CONNS_1M="${CONNS_1M:-8}"
COLD_REQUESTS="${COLD_REQUESTS:-20000}"
SCENARIOS="${SCENARIOS:-hit-1k-hot hit-1k-zipf hit-16k-hot hit-16k-zipf hit-1m-hot hit-1m-zipf node-1k-zipf node-16k-zipf cold-1k-zipf scale-out}"
TARGETS="${TARGETS:-edge varnish nginx-cache}"
CHAINS="${CHAINS-nginx-chain varnish-chain}"
BIN="${BIN:-}"
BASELINE_BIN="${BASELINE_BIN:-}"
SCALE="${SCALE:-0}"
SCALE_NODES="${SCALE_NODES:-1 2 4 8}"
SCALE_QUOTA_PCT="${SCALE_QUOTA_PCT:-10}"
SCALE_PERIOD_US="${SCALE_PERIOD_US:-100000}"
SCALE_EDGES="${SCALE_EDGES:-2}"
SCALE_KEYS="${SCALE_KEYS:-10000}"
SCALE_CONNS="${SCALE_CONNS:-64}"
SCALE_CPUS="${SCALE_CPUS:-0-$(($(nproc) - 1))}"
export SCALE_IDLE_MIN_PCT="${SCALE_IDLE_MIN_PCT:-20}"
WRK="${WRK:-1}"
MEMORY="${MEMORY:-1}"
MEMORY_N="${MEMORY_N:-1000000}"
PURGE="${PURGE:-1}"
PURGE_N="${PURGE_N:-100000}"
P="${SUITE_PORT:-18300}"
export BENCH_SERVER_CPUS="${BENCH_SERVER_CPUS:-0}"
export BENCH_NICE="${BENCH_NICE:--20}"
CLIENT_CPUS="${BENCH_CLIENT_CPUS:-1}"
ORIGIN_PORT=$P NODE_PORT=$((P + 1)) NODE_ADMIN=$((P + 2)) EDGE_PORT=$((P + 3))
EDGE_ADMIN=$((P + 4)) MISS_EDGE_PORT=$((P + 5)) MISS_EDGE_ADMIN=$((P + 6))
VARNISH_PORT=$((P + 7)) NGINX_PORT=$((P + 8))
NGINX_FRONT=$((P + 10)) NGINX_BACK=$((P + 11)) VARNISH_FRONT=$((P + 12)) VARNISH_BACK=$((P + 13))
BASE=20 # the baseline's ports: ours + 20
SCALE_P=$((P + 30))

# Which scenarios run: scale-out only with SCALE=1, after the others (it has its own servers).
MAIN_SCENARIOS="" RUN_SCALE=0 SKIPPED_SCALE=0 NEED_HIT=0 NEED_NODE=0
for s in $SCENARIOS; do
    case "$s" in
        scale-out) if [ "$SCALE" = 1 ]; then RUN_SCALE=1; else SKIPPED_SCALE=1; fi ;;
        node-1k-zipf | node-16k-zipf) MAIN_SCENARIOS+=" $s" NEED_NODE=1 ;;
        hit-1k-hot | hit-1k-zipf | hit-16k-hot | hit-16k-zipf | hit-1m-hot | hit-1m-zipf | cold-1k-zipf)
            MAIN_SCENARIOS+=" $s" NEED_HIT=1
            ;;
        *) die "unknown scenario $s (hit-{1k,16k,1m}-{hot,zipf}, node-{1k,16k}-zipf, cold-1k-zipf, scale-out)" ;;
    esac
done
for t in $TARGETS; do
    case "$t" in edge | varnish | nginx-cache) ;; *) die "unknown target $t (edge, varnish, nginx-cache)" ;; esac
done
for t in $CHAINS; do
    case "$t" in nginx-chain | varnish-chain) ;; *) die "unknown chain $t (nginx-chain, varnish-chain)" ;; esac
done

# Our TCP ports must be free (a previous run's servers may still be exiting); the QUIC port
# is UDP and is checked by the node itself, which exits naming it. The other servers' start
# scripts check their own ports.
if [ -n "$MAIN_SCENARIOS" ]; then
    ports="$ORIGIN_PORT $NODE_ADMIN $EDGE_PORT $EDGE_ADMIN $MISS_EDGE_PORT $MISS_EDGE_ADMIN"
    [ -n "$BASELINE_BIN" ] && ports+=" $((NODE_ADMIN + BASE)) $((EDGE_PORT + BASE)) $((EDGE_ADMIN + BASE))
        $((MISS_EDGE_PORT + BASE)) $((MISS_EDGE_ADMIN + BASE))"
    for port in $ports; do
        for _ in $(seq 1 50); do port_busy "$port" || break; sleep 0.2; done
        require_free_port "$port"
    done
fi
mkdir -p "$OUTDIR/json" "$OUTDIR/plots" "$OUTDIR/logs"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUTDIR/suite.log" >&2; }
for c in taskset curl python3; do command -v "$c" >/dev/null || die "$c not found"; done
[ "$SKIPPED_SCALE" = 1 ] && log "scale-out skipped: SCALE=1 turns it on"
if [ -n "$BIN" ]; then
    bin="$(cd "$BIN" && pwd)" || die "BIN=$BIN is not a directory"
    for b in cache-node edge origin-stub loadgen; do [ -x "$bin/$b" ] || die "$bin/$b not found"; done
else
    (cd "$root" && cargo build --release -q -p cache-node -p edge -p origin-stub -p loadgen)
    bin="$root/target/release"
fi
base_bin=""
if [ -n "$BASELINE_BIN" ]; then
    base_bin="$(cd "$BASELINE_BIN" && pwd)" || die "BASELINE_BIN=$BASELINE_BIN is not a directory"
    for b in cache-node edge; do [ -x "$base_bin/$b" ] || die "$base_bin/$b not found"; done
fi

declare -A PORT_OF=() PID_OF=() DIR_OF=()
OURS=()
CGROUPS=()
cleanup() {
    for p in "${OURS[@]}"; do kill "$p" 2>/dev/null || true; done
    for name in "${!PID_OF[@]}"; do
        if [ -n "${DIR_OF[$name]:-}" ]; then "$here/stop.sh" "${PID_OF[$name]}" "${DIR_OF[$name]}" >&2 || true; fi
    done
    wait 2>/dev/null || true
    local g
    for g in "${CGROUPS[@]}"; do
        # A cgroup can be removed once its last task is gone, which takes a moment after exit.
        for _ in $(seq 1 50); do rmdir "$g" 2>/dev/null && break; sleep 0.1; done
        [ ! -d "$g" ] || log "WARNING: could not remove the cgroup $g"
    done
    CGROUPS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pinned() { # pinned NAME CMD...: a server of ours on the server core, as nice as the others
    local name="$1"
    shift
    # shellcheck disable=SC2046
    setsid $(server_pin) "$@" </dev/null >"$OUTDIR/logs/$name.log" 2>&1 &
    PID_OF[$name]=$!
    OURS+=("$!")
    boost "$!"
}
up() { # up PORT PATH: waits for an answer
    for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$1$2" && return 0; sleep 0.1; done
    die "127.0.0.1:$1$2 never answered (logs in $OUTDIR/logs)"
}
# start_cluster PREFIX BIN_DIR PORT_OFFSET: a node, an edge (PREFIXedge) and an edge whose L1
# holds nothing (PREFIXedge-l1-off) from BIN_DIR, with their own TLS dir, on our ports + offset.
start_cluster() {
    local pre="$1" b="$2" o="$3" tls="$OUTDIR/${1}tls"
    rm -rf "$tls" # a reused OUTDIR: init-tls refuses to replace a CA
    "$b/cache-node" init-tls --dir "$tls" >/dev/null
    pinned "${pre}node" "$b/cache-node" --id node-0 --listen "127.0.0.1:$((NODE_PORT + o))" \
        --admin "127.0.0.1:$((NODE_ADMIN + o))" --origin "http://127.0.0.1:$ORIGIN_PORT" \
        --capacity 4GiB --tls-dir "$tls"
    pinned "${pre}edge" "$b/edge" --id edge-0 --listen "127.0.0.1:$((EDGE_PORT + o))" \
        --admin "127.0.0.1:$((EDGE_ADMIN + o))" --seed "127.0.0.1:$((NODE_PORT + o))" \
        --origin "http://127.0.0.1:$ORIGIN_PORT" --capacity 2GiB --tls-dir "$tls"
    pinned "${pre}edge-l1-off" "$b/edge" --id edge-1 --listen "127.0.0.1:$((MISS_EDGE_PORT + o))" \
        --admin "127.0.0.1:$((MISS_EDGE_ADMIN + o))" --seed "127.0.0.1:$((NODE_PORT + o))" \
        --origin "http://127.0.0.1:$ORIGIN_PORT" --capacity 2KiB --tls-dir "$tls"
    up "$((NODE_ADMIN + o))" /healthz
    up "$((EDGE_PORT + o))" "/ready?size=1"
    up "$((MISS_EDGE_PORT + o))" "/ready?size=1"
    PORT_OF[${pre}edge]=$((EDGE_PORT + o))
    PORT_OF[${pre}edge-l1-off]=$((MISS_EDGE_PORT + o))
}
# start_server NAME SCRIPT UPSTREAM_PORT PORT [VAR=VALUE...]: bench/start-SCRIPT.sh (pinned,
# nice, its own state dir), stopped by cleanup with bench/stop.sh.
start_server() {
    local name="$1" script="$2" upstream="$3" port="$4" out
    shift 4
    out="$(env "$@" "$here/start-$script.sh" "$upstream" "$port")" || die "starting $name failed"
    PID_OF[$name]="$(echo "$out" | tail -n 1)"
    DIR_OF[$name]="$(echo "$out" | sed -n 's/^STATE_DIR=//p')"
    PORT_OF[$name]=$port
}
binfo() { # binfo DIR: which binaries these are
    local b out=""
    for b in edge cache-node; do
        out+="$b $(sha256sum "$1/$b" | cut -c1-12) ($(date -r "$1/$b" '+%Y-%m-%d %H:%M')), "
    done
    echo "${out%, }"
}

if [ -n "$MAIN_SCENARIOS" ]; then
    # The origin runs on the client core: it only works while caches fill.
    taskset -c "$CLIENT_CPUS" "$bin/origin-stub" --listen "127.0.0.1:$ORIGIN_PORT" \
        >"$OUTDIR/logs/origin.log" 2>&1 &
    OURS+=($!)
    up "$ORIGIN_PORT" "/ready?size=1"
    start_cluster "" "$bin" 0
    [ -n "$base_bin" ] && start_cluster base- "$base_bin" "$BASE"
    if [ "$NEED_HIT" = 1 ]; then
        for t in $TARGETS; do
            case "$t" in
                varnish) start_server varnish varnish "$ORIGIN_PORT" "$VARNISH_PORT" ;;
                nginx-cache) start_server nginx-cache nginx-cache "$ORIGIN_PORT" "$NGINX_PORT" ;;
            esac
        done
    fi
    if [ "$NEED_NODE" = 1 ]; then
        # The chains of ../shared/bench/two-tier.sh: the back caches, the front passes.
        for t in $CHAINS; do
            case "$t" in
                nginx-chain)
                    start_server nginx-chain-back nginx-cache "$ORIGIN_PORT" "$NGINX_BACK"
                    start_server nginx-chain nginx-cache "$NGINX_BACK" "$NGINX_FRONT" \
                        NGINX_CONF_TMPL="$here/nginx-proxy.conf.tmpl"
                    ;;
                varnish-chain)
                    start_server varnish-chain-back varnish "$ORIGIN_PORT" "$VARNISH_BACK"
                    start_server varnish-chain varnish "$VARNISH_BACK" "$VARNISH_FRONT" \
                        VARNISH_VCL_TMPL="$here/varnish-pass.vcl.tmpl" VARNISH_STORAGE=64m
                    ;;
            esac
        done
    fi
fi
{
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
    echo "cpu: $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')"
    if [ -n "$BIN" ]; then
        echo "ours: binaries from $bin: $(binfo "$bin")"
    else
        echo "ours: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown): $(binfo "$bin")"
    fi
    [ -n "$base_bin" ] && echo "baseline: binaries from $base_bin: $(binfo "$base_bin")"
    command -v varnishd >/dev/null && echo "varnish: $(varnishd -V 2>&1 | head -n 1)"
    command -v nginx >/dev/null && echo "nginx: $(nginx -v 2>&1)"
} >"$OUTDIR/versions.txt"
log "$(tr '\n' ';' <"$OUTDIR/versions.txt")"

# scenario -> "SIZE KEYS DIST CONNS"
shape() {
    case "$1" in
        hit-1k-hot) echo "1024 1 uniform $CONNS" ;;
        hit-1k-zipf | node-1k-zipf) echo "1024 10000 zipf:0.99 $CONNS" ;;
        hit-16k-hot) echo "16384 1 uniform $CONNS" ;;
        hit-16k-zipf | node-16k-zipf) echo "16384 10000 zipf:0.99 $CONNS" ;;
        hit-1m-hot) echo "1048576 1 uniform $CONNS_1M" ;;
        hit-1m-zipf) echo "1048576 256 zipf:0.99 $CONNS_1M" ;;
        cold-1k-zipf) echo "1024 10000 zipf:0.99 64" ;;
        *) die "unknown scenario $1" ;;
    esac
}
# scenario -> the targets, in the order they take turns: the baseline right after ours.
targets_of() {
    local t out=""
    case "$1" in
        node-*)
            out="edge-l1-off"
            [ -n "$base_bin" ] && out+=" base-edge-l1-off"
            out+=" $CHAINS"
            ;;
        *)
            for t in $TARGETS; do
                out+=" $t"
                [ "$t" = edge ] && [ -n "$base_bin" ] && out+=" base-edge"
            done
            ;;
    esac
    echo "$out"
}
lg() { taskset -c "$CLIENT_CPUS" "$bin/loadgen" "$@"; }

echo -e "scenario\ttarget\trep\trps\tmibps\tp50_us\tp99_us\terrors\torigin_requests\tedge_hit\tnode_hit" \
    >"$OUTDIR/runs.tsv"
echo -e "scenario\ttarget\twhen\tresult\twhat" >"$OUTDIR/checks.tsv"
record() { # record SCENARIO TARGET REP JSON
    python3 - "$@" >>"$OUTDIR/runs.tsv" <<'PY'
import json, sys
s, t, rep, path = sys.argv[1:]
r = json.load(open(path))["load"]
o = r.get("origin_requests")
print("\t".join(map(str, [s, t, rep, round(r["rps"]), round(r["bytes_per_sec"] / 2**20, 1),
      r["p50_us"], r["p99_us"], r["errors"], "" if o is None else o,
      round(r["tiers"]["edge_hit"], 4), round(r["tiers"]["node_hit"], 4)])))
PY
}
check() { # check SCENARIO TARGET WHEN OK|WARNING TEXT
    echo -e "$1\t$2\t$3\t$4\t$5" >>"$OUTDIR/checks.tsv"
    log "check $1 $2 ($3): $4: $5"
}
vstat() { # vstat NAME: "cache_hit cache_miss s_pass" of the varnishd started as NAME
    sleep 0.5 # a worker adds its counters to the totals when it goes idle
    varnishstat -1 -n "${DIR_OF[$1]}/varnish" -f MAIN.cache_hit -f MAIN.cache_miss -f MAIN.s_pass |
        awk '{v[$1] = $2} END {print v["MAIN.cache_hit"] + 0, v["MAIN.cache_miss"] + 0, v["MAIN.s_pass"] + 0}'
}
# check_varnish_chain SCENARIO WHEN BEFORE_FRONT BEFORE_BACK REQUESTS: the front passed every
# request (no hit of its own), the back answered each from its cache (no miss).
check_varnish_chain() {
    local f0="$3" b0="$4" n="$5" f1 b1 verdict
    f1="$(vstat varnish-chain)"
    b1="$(vstat varnish-chain-back)"
    verdict="$(python3 - "$f0" "$f1" "$b0" "$b1" "$n" <<'PY'
import sys
f0, f1, b0, b1 = ([int(x) for x in a.split()] for a in sys.argv[1:5])
n = int(sys.argv[5])
fh, fp, bh, bm = f1[0] - f0[0], f1[2] - f0[2], b1[0] - b0[0], b1[1] - b0[1]
ok = fh == 0 and bm == 0 and bh >= fp > 0 and (n < 0 or fp >= n)
print(("OK" if ok else "WARNING") + f"\tfront: {fh} hits, {fp} passes; back: {bh} hits, {bm} misses"
      + ("" if n < 0 else f" ({n} requests sent)"))
PY
)"
    check "$1" varnish-chain "$2" "${verdict%%$'\t'*}" "${verdict#*$'\t'}"
}
# check_back SCENARIO TARGET PATH KEYS: after warming, a few keys through the target's front
# must be answered by its back from its cache.
check_back() {
    local s="$1" t="$2" path="$3" keys="$4" k n=0 ok=0 hdr f0="" b0="" want
    if [ "$t" = varnish-chain ]; then f0="$(vstat varnish-chain)" b0="$(vstat varnish-chain-back)"; fi
    case "$t" in
        *edge-l1-off) want='^x-cache: MISS, HIT from' ;;
        nginx-chain) want='^x-cache-status: HIT' ;;
        *) want='' ;;
    esac
    for k in 0 1 2 $((keys / 2)) $((keys - 1)); do
        hdr="$(curl -s -D - -o /dev/null "http://127.0.0.1:${PORT_OF[$t]}${path//"{key}"/$k}" | tr -d '\r')"
        n=$((n + 1))
        if [ -z "$want" ] || grep -qi "$want" <<<"$hdr"; then ok=$((ok + 1)); fi
    done
    if [ "$t" = varnish-chain ]; then
        check_varnish_chain "$s" warm "$f0" "$b0" "$n"
    else
        local result=OK
        [ "$ok" = "$n" ] || result=WARNING
        check "$s" "$t" warm "$result" "$ok of $n sampled keys answered with ${want#^}"
    fi
}

for s in $MAIN_SCENARIOS; do
    read -r size keys dist conns <<<"$(shape "$s")"
    targets="$(targets_of "$s")"
    path="/$s/{key}?size=$size&cc=max-age%3D86400"
    passes=1
    [ "${s%%-*}" = node ] && passes=2 # twice through each front: the back holds every key
    if [ "${s%%-*}" != cold ]; then
        for t in $targets; do
            log "$s: warming $t ($keys keys, $passes x)"
            for _ in $(seq 1 "$passes"); do
                lg --target "127.0.0.1:${PORT_OF[$t]}" -c 8 -d 600 --requests "$keys" --keys "$keys" \
                    --dist seq --path "$path" >/dev/null
            done
            if [ "${s%%-*}" = node ]; then check_back "$s" "$t" "$path" "$keys"; fi
        done
    fi
    for rep in $(seq 1 "$REPS"); do
        for t in $targets; do
            json="$OUTDIR/json/$s-$t-$rep.json"
            if [ "${s%%-*}" = cold ]; then
                # A fresh set of keys per run: cold for whoever is measured.
                lg --target "127.0.0.1:${PORT_OF[$t]}" -c "$conns" -d 600 --requests "$COLD_REQUESTS" \
                    --keys "$keys" --dist "$dist" --seed "$rep" --origin "127.0.0.1:$ORIGIN_PORT" \
                    --path "/$s-$t-$rep/{key}?size=$size&cc=max-age%3D86400&latency_ms=20" \
                    --json "$json" --plot "$OUTDIR/plots/$s-$t-$rep.svg" >/dev/null
            else
                if [ "$t" = varnish-chain ]; then
                    f0="$(vstat varnish-chain)" b0="$(vstat varnish-chain-back)"
                fi
                lg --target "127.0.0.1:${PORT_OF[$t]}" -c "$conns" -d "$DUR" --keys "$keys" \
                    --dist "$dist" --seed "$rep" --path "$path" --origin "127.0.0.1:$ORIGIN_PORT" \
                    --json "$json" --plot "$OUTDIR/plots/$s-$t-$rep.svg" >/dev/null
            fi
            record "$s" "$t" "$rep" "$json"
            row="$(tail -n 1 "$OUTDIR/runs.tsv")"
            log "$s $t rep $rep: $(cut -f4-11 <<<"$row" | tr '\t' ' ')"
            if [ "${s%%-*}" = node ]; then
                # The node tier answered every request: no origin request during the run, and
                # our edges say the node had it.
                origin="$(cut -f9 <<<"$row")" node_hit="$(cut -f11 <<<"$row")"
                result=OK what="origin requests $origin"
                [ "${origin:-0}" = 0 ] || result=WARNING
                case "$t" in
                    *edge-l1-off)
                        what+=", node hit $node_hit"
                        if awk "BEGIN {exit !($node_hit < 0.99)}"; then result=WARNING; fi
                        ;;
                esac
                check "$s" "$t" "rep $rep" "$result" "$what"
                if [ "$t" = varnish-chain ]; then check_varnish_chain "$s" "rep $rep" "$f0" "$b0" -1; fi
            fi
        done
    done
done
cleanup
OURS=()
PID_OF=()

# --- scale-out: one cluster of N nodes, each capped to SCALE_QUOTA_PCT % of a core --------------
cpu_snap() { # "total idle niced" ticks of the machine: niced is what processes of positive nice took
    awk '/^cpu / {printf "%.0f %.0f %.0f\n", $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6, $3}' /proc/stat
}
node_requests() { # node_requests ADMIN_PORT...: the requests the nodes received so far, summed
    python3 - "$@" <<'PY'
import json, sys, urllib.request
print(sum(json.load(urllib.request.urlopen(f"http://127.0.0.1:{p}/status", timeout=5))["requests"]
          for p in sys.argv[1:]))
PY
}
proc_ticks() { # proc_ticks PID...: user + system clock ticks of the processes so far
    local p t=0 v
    for p in "$@"; do
        v="$(awk '{printf "%.0f\n", $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)"
        t=$((t + v))
    done
    echo "$t"
}
throttled() { # throttled CGROUP...: "periods throttled_periods", summed
    local g
    for g in "$@"; do cat "$g/cpu.stat"; done |
        awk '$1 == "nr_periods" {p += $2} $1 == "nr_throttled" {t += $2} END {printf "%.0f %.0f\n", p, t}'
}
members_ready() { # members_ready N ADMIN_PORT...: each lists N nodes alive, with its link up
    python3 - "$@" <<'PY'
import json, sys, urllib.request
n = int(sys.argv[1])
for port in sys.argv[2:]:
    try:
        doc = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2))
    except Exception:
        sys.exit(1)
    up = [m for m in doc.get("members", []) if m.get("state") == "alive" and m.get("link") == "up"]
    if len(up) != n:
        sys.exit(1)
PY
}
wait_members() { # wait_members N WHAT ADMIN_PORT...
    local n="$1" what="$2" deadline=$((SECONDS + 60)) port
    shift 2
    while ! members_ready "$n" "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            for port in "$@"; do curl -s "http://127.0.0.1:$port/status" >"$OUTDIR/logs/scale-status-$port.json" || true; done
            die "scale-out: the $what never all listed $n nodes alive and linked (logs/scale-status-*.json)"
        fi
        sleep 0.5
    done
}
scale_out() {
    local cg_root=/sys/fs/cgroup/cpu n k e max_n=0 period="$SCALE_PERIOD_US" quota
    if [ ! -w "$cg_root/cgroup.procs" ] || [ ! -e "$cg_root/cpu.cfs_quota_us" ]; then
        log "WARNING: scale-out skipped: no writable cgroup v1 CPU controller at $cg_root"
        return 0
    fi
    for n in $SCALE_NODES; do [ "$n" -gt "$max_n" ] && max_n=$n; done
    [ "$max_n" -le 20 ] || die "SCALE_NODES: at most 20 nodes"
    if [ "$SCALE_EDGES" -lt 1 ] || [ "$SCALE_EDGES" -gt 4 ]; then die "SCALE_EDGES: 1 to 4"; fi
    quota=$((SCALE_QUOTA_PCT * period / 100))
    [ "$quota" -ge 1000 ] || die "SCALE_QUOTA_PCT=$SCALE_QUOTA_PCT of SCALE_PERIOD_US=$period is under 1 ms, the kernel's least"
    local origin=$SCALE_P tls="$OUTDIR/scale-tls" path lg_cpu="$OUTDIR/logs/scale-loadgen-cpu"
    path="/scale-out/{key}?size=1024&cc=max-age%3D86400"
    rm -rf "$tls"
    "$bin/cache-node" init-tls --dir "$tls" >/dev/null
    echo -e "nodes\trep\trps\tp50_us\tp99_us\terrors\tnode_hit\torigin_requests\tseconds\tidle_pct\tniced_pct\tbusy_cores\tnodes_cores\tnodes_cap_cores\tthrottled_pct\tnode_requests_per_request\tnode_us_per_request\tedges_cores\tloadgen_cores\tother_cores" \
        >"$OUTDIR/scale-out.tsv"
    for n in $SCALE_NODES; do
        log "scale-out: $n node(s), each capped at $SCALE_QUOTA_PCT % of a core, $SCALE_EDGES edge(s)"
        for port in "$origin" $(seq $((SCALE_P + 1)) $((SCALE_P + 4 + SCALE_EDGES))) \
            $(seq $((P + 60)) $((P + 59 + n))); do
            for _ in $(seq 1 50); do port_busy "$port" || break; sleep 0.2; done
            require_free_port "$port"
        done
        # shellcheck disable=SC2046
        setsid $(BENCH_SERVER_CPUS="$SCALE_CPUS" server_pin) "$bin/origin-stub" --listen "127.0.0.1:$origin" \
            </dev/null >"$OUTDIR/logs/scale-origin.log" 2>&1 &
        OURS+=($!)
        up "$origin" "/ready?size=1"
        local node_pids=() edge_pids=() groups=() node_admins=() edge_admins=() targets=()
        for k in $(seq 0 $((n - 1))); do
            local g="$cg_root/bench-suite-$$-node$k"
            mkdir "$g" || die "could not create the cgroup $g"
            CGROUPS+=("$g")
            groups+=("$g")
            echo "$period" >"$g/cpu.cfs_period_us"
            echo "$quota" >"$g/cpu.cfs_quota_us"
            local seed=()
            if [ "$k" -gt 0 ]; then seed=(--seed "127.0.0.1:$((P + 40))"); fi
            # The node enters its cgroup before it starts: every thread it makes is capped.
            # shellcheck disable=SC2016
            BENCH_SERVER_CPUS="$SCALE_CPUS" pinned "scale-$n-node-$k" \
                bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$g" \
                "$bin/cache-node" --id "node-$k" --listen "127.0.0.1:$((P + 40 + k))" \
                --admin "127.0.0.1:$((P + 60 + k))" "${seed[@]}" --origin "http://127.0.0.1:$origin" \
                --capacity 1GiB --tls-dir "$tls"
            node_pids+=("${PID_OF[scale-$n-node-$k]}")
            node_admins+=($((P + 60 + k)))
        done
        for k in "${node_admins[@]}"; do up "$k" /healthz; done
        wait_members "$n" nodes "${node_admins[@]}"
        for e in $(seq 0 $((SCALE_EDGES - 1))); do
            BENCH_SERVER_CPUS="$SCALE_CPUS" pinned "scale-$n-edge-$e" "$bin/edge" --id "edge-$e" \
                --listen "127.0.0.1:$((SCALE_P + 1 + e))" --admin "127.0.0.1:$((SCALE_P + 5 + e))" \
                --seed "127.0.0.1:$((P + 40))" --origin "http://127.0.0.1:$origin" --capacity 2KiB \
                --tls-dir "$tls"
            edge_pids+=("${PID_OF[scale-$n-edge-$e]}")
            edge_admins+=($((SCALE_P + 5 + e)))
            targets+=(--target "127.0.0.1:$((SCALE_P + 1 + e))")
        done
        for e in $(seq 0 $((SCALE_EDGES - 1))); do up $((SCALE_P + 1 + e)) "/ready?size=1"; done
        wait_members "$n" edges "${edge_admins[@]}"
        log "scale-out: $n node(s) and every edge list all $n; warming $SCALE_KEYS keys"
        taskset -c "$SCALE_CPUS" "$bin/loadgen" "${targets[@]}" -c 8 -d 600 --requests "$SCALE_KEYS" \
            --keys "$SCALE_KEYS" --dist seq --path "$path" >/dev/null
        for rep in $(seq 1 "$REPS"); do
            local json="$OUTDIR/json/scale-out-$n-$rep.json" c0 c1 n0 n1 e0 e1 t0 t1 w0 w1 r0 r1 lgpid
            c0="$(cpu_snap)" n0="$(proc_ticks "${node_pids[@]}")" e0="$(proc_ticks "${edge_pids[@]}")"
            r0="$(node_requests "${node_admins[@]}")"
            t0="$(throttled "${groups[@]}")" w0="$(date +%s.%N)"
            # loadgen shares the cores with the servers here, so it gets their nice value
            # (and autogroup nice) too; its CPU time is read from its rusage.
            # shellcheck disable=SC2046
            setsid $(BENCH_SERVER_CPUS="$SCALE_CPUS" server_pin) python3 -c '
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_utime + u.ru_stime:.3f}\n")
sys.exit(rc)' "$lg_cpu" "$bin/loadgen" "${targets[@]}" -c "$((SCALE_CONNS * n))" -d "$DUR" --keys "$SCALE_KEYS" \
                --dist zipf:0.99 --seed "$rep" --path "$path" --origin "127.0.0.1:$origin" \
                --json "$json" --plot "$OUTDIR/plots/scale-out-$n-$rep.svg" </dev/null &
            lgpid=$!
            boost "$lgpid"
            wait "$lgpid" || die "scale-out: loadgen failed with $n node(s)"
            w1="$(date +%s.%N)" c1="$(cpu_snap)" n1="$(proc_ticks "${node_pids[@]}")"
            e1="$(proc_ticks "${edge_pids[@]}")" t1="$(throttled "${groups[@]}")" r1="$(node_requests "${node_admins[@]}")"
            python3 - "$n" "$rep" "$json" "$w0" "$w1" "$c0" "$c1" "$n0" "$n1" "$e0" "$e1" "$t0" "$t1" "$r0" "$r1" \
                "$(cat "$lg_cpu")" "$(getconf CLK_TCK)" "$(nproc)" "$SCALE_QUOTA_PCT" \
                >>"$OUTDIR/scale-out.tsv" <<'PY'
import json, sys
(n, rep, path, w0, w1, c0, c1, n0, n1, e0, e1, t0, t1, r0, r1, lg_cpu, hz, ncpu, pct) = sys.argv[1:]
r = json.load(open(path))["load"]
wall = float(w1) - float(w0)
(tot0, idle0, nice0), (tot1, idle1, nice1) = (map(int, c.split()) for c in (c0, c1))
dt, di, dn = tot1 - tot0, idle1 - idle0, nice1 - nice0
node_reqs = int(r1) - int(r0)
hz, ncpu = int(hz), int(ncpu)
busy = (dt - di) / dt * ncpu
nodes = (int(n1) - int(n0)) / hz / wall
edges = (int(e1) - int(e0)) / hz / wall
lg = float(lg_cpu) / wall
(p0, th0), (p1, th1) = (map(int, t.split()) for t in (t0, t1))
thr = (th1 - th0) / (p1 - p0) * 100 if p1 > p0 else 0.0
o = r.get("origin_requests")
print("\t".join(map(str, [n, rep, round(r["rps"]), r["p50_us"], r["p99_us"], r["errors"],
      round(r["tiers"]["node_hit"], 4), "" if o is None else o, round(wall, 2),
      round(di / dt * 100, 1), round(dn / dt * 100, 1), round(busy, 2), round(nodes, 2), round(int(n) * int(pct) / 100, 2),
      round(thr, 1), round(node_reqs / r["requests"], 3) if r["requests"] else "",
      round(nodes * wall / r["requests"] * 1e6, 1) if r["requests"] else "", round(edges, 2),
      round(lg, 2), round(busy - nodes - edges - lg, 2)])))
PY
            log "scale-out $n node(s) rep $rep: $(tail -n 1 "$OUTDIR/scale-out.tsv" | cut -f3-20 | tr '\t' ' ')"
        done
        cleanup
        OURS=()
        PID_OF=()
    done
}
if [ "$RUN_SCALE" = 1 ]; then
    scale_out
fi

binenv=() # BIN, if given, goes to the other benchmarks too: nothing is built
if [ -n "$BIN" ]; then binenv=(BIN="$bin"); fi
if [ "$WRK" = 1 ]; then
    if [ -n "$BIN" ] && [ ! -x "$bin/cdn-cluster" ]; then
        log "WARNING: the wrk comparison skipped: it needs $bin/cdn-cluster"
    else
        log "outside check: bench/compare.sh with wrk"
        env "${binenv[@]}" DUR="${DUR}s" REPS="$REPS" SIZES="1k 16k 1m" TARGETS="origin varnish nginx-cache" \
            "$here/compare.sh" "$OUTDIR/wrk" >"$OUTDIR/logs/wrk.log" 2>&1 ||
            log "WARNING: the wrk comparison failed, see $OUTDIR/logs/wrk.log"
    fi
fi
if [ "$MEMORY" = 1 ]; then
    log "memory: bench/memory.sh $MEMORY_N 1024"
    env "${binenv[@]}" "$here/memory.sh" "$MEMORY_N" 1024 >"$OUTDIR/memory.txt" 2>"$OUTDIR/logs/memory.log" ||
        log "WARNING: the memory benchmark failed, see $OUTDIR/logs/memory.log"
fi
if [ "$PURGE" = 1 ]; then
    if [ ! -x "$bin/cdn-cluster" ]; then
        log "WARNING: the purge benchmark skipped: it needs $bin/cdn-cluster"
    else
        log "purge: bench/purge.sh over $PURGE_N objects per member"
        BIN="$bin" N="$PURGE_N" DUR="$DUR" "$here/purge.sh" "$OUTDIR/purge" >"$OUTDIR/logs/purge.log" 2>&1 ||
            log "WARNING: the purge benchmark failed, see $OUTDIR/logs/purge.log"
    fi
fi
python3 "$here/suite-summary.py" "$OUTDIR" >"$OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
log "summary: $OUTDIR/summary.md"
