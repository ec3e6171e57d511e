#!/usr/bin/env bash
# bench/suite.sh [OUTDIR]
# The whole comparison, one command. Builds the release binaries, installs Varnish and nginx
# from Debian's packages if absent, starts one origin-stub for everyone, our cluster (a node,
# an edge, and a second edge whose L1 holds nothing so every request goes to the node tier),
# Varnish and nginx proxy_cache in front of it, all pinned to the server core
# (BENCH_SERVER_CPUS, 0) with loadgen on the other (BENCH_CLIENT_CPUS, 1), then runs each
# scenario REPS times, interleaving the targets, with the same loadgen settings for all:
#   hit-{1k,16k,1m}-hot    edge hits, one key
#   hit-{1k,16k}-zipf      edge hits, 10,000 keys, Zipf 0.99 (every key warmed first)
#   hit-1m-zipf            edge hits, 256 keys, Zipf 0.99 (10,000 x 1 MiB would not fit)
#   node-1k-zipf           ours only: the edge misses, the node tier answers (vs our edge hits)
#   cold-1k-zipf           from cold, origin 20 ms away: COLD_REQUESTS requests over 10,000
#                          keys, Zipf 0.99, 64 connections; origin requests counted
# then (WRK=1) bench/compare.sh as the outside check with wrk, (MEMORY=1) bench/memory.sh, and
# (PURGE=1) bench/purge.sh: tag and prefix purges acknowledged by every member over PURGE_N
# objects per member, and edge hits during 100 tag purges/s.
# Output: OUTDIR/summary.md (medians, ratios ours/theirs from the same run), OUTDIR/runs.tsv,
# OUTDIR/json/*.json (every loadgen report), OUTDIR/plots/*.svg, OUTDIR/wrk/, OUTDIR/memory.txt,
# OUTDIR/purge/summary.txt.
# Knobs: DUR (10), REPS (3), CONNS (32), CONNS_1M (8), COLD_REQUESTS (20000), SCENARIOS,
# TARGETS ("edge varnish nginx-cache"), WRK (1), MEMORY (1), MEMORY_N (1000000), PURGE (1),
# PURGE_N (100000), ports
# SUITE_PORT (18300.., ten in a row).
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
SCENARIOS="${SCENARIOS:-hit-1k-hot hit-1k-zipf hit-16k-hot hit-16k-zipf hit-1m-hot hit-1m-zipf node-1k-zipf cold-1k-zipf}"
TARGETS="${TARGETS:-edge varnish nginx-cache}"
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

# Our TCP ports must be free (a previous run's servers may still be exiting); the QUIC port
# is UDP and is checked by the node itself, which exits naming it.
for port in $ORIGIN_PORT $NODE_ADMIN $EDGE_PORT $EDGE_ADMIN $MISS_EDGE_PORT $MISS_EDGE_ADMIN; do
    for _ in $(seq 1 50); do port_busy "$port" || break; sleep 0.2; done
    require_free_port "$port"
done
mkdir -p "$OUTDIR/json" "$OUTDIR/plots" "$OUTDIR/logs"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUTDIR/suite.log" >&2; }
for c in taskset curl python3; do command -v "$c" >/dev/null || die "$c not found"; done
(cd "$root" && cargo build --release -q -p cache-node -p edge -p origin-stub -p loadgen)
bin="$root/target/release"

declare -A PORT_OF=() PID_OF=() DIR_OF=()
OURS=()
cleanup() {
    for p in "${OURS[@]}"; do kill "$p" 2>/dev/null || true; done
    for name in "${!PID_OF[@]}"; do
        [ -n "${DIR_OF[$name]:-}" ] && "$here/stop.sh" "${PID_OF[$name]}" "${DIR_OF[$name]}" >&2 || true
    done
    wait 2>/dev/null || true
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

# The origin runs on the client core: it only works while caches fill.
taskset -c "$CLIENT_CPUS" "$bin/origin-stub" --listen "127.0.0.1:$ORIGIN_PORT" \
    >"$OUTDIR/logs/origin.log" 2>&1 &
OURS+=($!)
up "$ORIGIN_PORT" "/ready?size=1"
"$bin/cache-node" init-tls --dir "$OUTDIR/tls" >/dev/null
pinned node "$bin/cache-node" --id node-0 --listen "127.0.0.1:$NODE_PORT" \
    --admin "127.0.0.1:$NODE_ADMIN" --origin "http://127.0.0.1:$ORIGIN_PORT" \
    --capacity 4GiB --tls-dir "$OUTDIR/tls"
pinned edge "$bin/edge" --id edge-0 --listen "127.0.0.1:$EDGE_PORT" \
    --admin "127.0.0.1:$EDGE_ADMIN" --seed "127.0.0.1:$NODE_PORT" \
    --origin "http://127.0.0.1:$ORIGIN_PORT" --capacity 2GiB --tls-dir "$OUTDIR/tls"
pinned edge-l1-off "$bin/edge" --id edge-1 --listen "127.0.0.1:$MISS_EDGE_PORT" \
    --admin "127.0.0.1:$MISS_EDGE_ADMIN" --seed "127.0.0.1:$NODE_PORT" \
    --origin "http://127.0.0.1:$ORIGIN_PORT" --capacity 2KiB --tls-dir "$OUTDIR/tls"
up "$NODE_ADMIN" /healthz
up "$EDGE_PORT" "/ready?size=1"
up "$MISS_EDGE_PORT" "/ready?size=1"
PORT_OF[edge]=$EDGE_PORT
PORT_OF[edge-l1-off]=$MISS_EDGE_PORT
for t in $TARGETS; do
    case "$t" in
        edge) ;;
        varnish | nginx-cache)
            port=$VARNISH_PORT
            [ "$t" = nginx-cache ] && port=$NGINX_PORT
            out="$("$here/start-$t.sh" "$ORIGIN_PORT" "$port")" || die "starting $t failed"
            PID_OF[$t]="$(echo "$out" | tail -n 1)"
            DIR_OF[$t]="$(echo "$out" | sed -n 's/^STATE_DIR=//p')"
            PORT_OF[$t]=$port
            ;;
        *) die "unknown target $t (edge, varnish, nginx-cache)" ;;
    esac
done
{
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
    echo "cpu: $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')"
    echo "ours: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
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
        hit-16k-zipf) echo "16384 10000 zipf:0.99 $CONNS" ;;
        hit-1m-hot) echo "1048576 1 uniform $CONNS_1M" ;;
        hit-1m-zipf) echo "1048576 256 zipf:0.99 $CONNS_1M" ;;
        cold-1k-zipf) echo "1024 10000 zipf:0.99 64" ;;
        *) die "unknown scenario $1" ;;
    esac
}
lg() { taskset -c "$CLIENT_CPUS" "$bin/loadgen" "$@"; }

echo -e "scenario\ttarget\trep\trps\tmibps\tp50_us\tp99_us\terrors\torigin_requests\tedge_hit\tnode_hit" \
    >"$OUTDIR/runs.tsv"
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

for s in $SCENARIOS; do
    read -r size keys dist conns <<<"$(shape "$s")"
    targets="$TARGETS"
    [ "$s" = node-1k-zipf ] && targets="edge-l1-off edge"
    path="/$s/{key}?size=$size&cc=max-age%3D86400"
    if [ "${s%%-*}" != cold ]; then
        for t in $targets; do
            log "$s: warming $t ($keys keys)"
            lg --target "127.0.0.1:${PORT_OF[$t]}" -c 8 -d 600 --requests "$keys" --keys "$keys" \
                --dist seq --path "$path" >/dev/null
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
                lg --target "127.0.0.1:${PORT_OF[$t]}" -c "$conns" -d "$DUR" --keys "$keys" \
                    --dist "$dist" --seed "$rep" --path "$path" --origin "127.0.0.1:$ORIGIN_PORT" \
                    --json "$json" --plot "$OUTDIR/plots/$s-$t-$rep.svg" >/dev/null
            fi
            record "$s" "$t" "$rep" "$json"
            log "$s $t rep $rep: $(tail -n 1 "$OUTDIR/runs.tsv" | cut -f4-11 | tr '\t' ' ')"
        done
    done
done
cleanup
OURS=()
PID_OF=()

if [ "$WRK" = 1 ]; then
    log "outside check: bench/compare.sh with wrk"
    DUR="${DUR}s" REPS="$REPS" SIZES="1k 16k 1m" TARGETS="origin varnish nginx-cache" \
        "$here/compare.sh" "$OUTDIR/wrk" >"$OUTDIR/logs/wrk.log" 2>&1 ||
        log "WARNING: the wrk comparison failed, see $OUTDIR/logs/wrk.log"
fi
if [ "$MEMORY" = 1 ]; then
    log "memory: bench/memory.sh $MEMORY_N 1024"
    "$here/memory.sh" "$MEMORY_N" 1024 >"$OUTDIR/memory.txt" 2>"$OUTDIR/logs/memory.log" ||
        log "WARNING: the memory benchmark failed, see $OUTDIR/logs/memory.log"
fi
if [ "$PURGE" = 1 ]; then
    log "purge: bench/purge.sh over $PURGE_N objects per member"
    BIN="$bin" N="$PURGE_N" DUR="$DUR" "$here/purge.sh" "$OUTDIR/purge" >"$OUTDIR/logs/purge.log" 2>&1 ||
        log "WARNING: the purge benchmark failed, see $OUTDIR/logs/purge.log"
fi
python3 "$here/suite-summary.py" "$OUTDIR" >"$OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
log "summary: $OUTDIR/summary.md"
