#!/usr/bin/env bash
# bench/memory.sh [N] [SIZE]
# A cache node loaded through the network (loadgen -> edge with a tiny L1 -> node -> origin-stub)
# with N objects of SIZE bytes (default 1,000,000 x 1 KiB), each requested once in turn, then
# its resident memory, in two configurations, on each store engine in ENGINES (default
# "compact moka"; CDN_STORE_ENGINE, if set, is the only one):
#   roomy: capacity for all of them -> bytes per object over the payload (target: < 250);
#   full:  capacity for a quarter of them (the store evicts) -> resident memory against
#          capacity + 64 MiB (the target: within 15 %).
# Needs only the workspace's release binaries (built here, or taken from BIN); prints one line
# per configuration.
set -euo pipefail
N="${1:-1000000}"
SIZE="${2:-1024}"
ENGINES="${ENGINES:-${CDN_STORE_ENGINE:-compact moka}}"
unset CDN_STORE_ENGINE
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${BIN:-}" ]; then # already built binaries: nothing is built
    bin="$(cd "$BIN" && pwd)"
else
    (cd "$root" && cargo build --release -q -p cache-node -p edge -p origin-stub -p loadgen)
    bin="$root/target/release"
fi
tmp="$(mktemp -d "${TMPDIR:-/tmp}/bench-memory.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$bin/cache-node" init-tls --dir "$tmp/tls" >/dev/null

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
wait_http() { for _ in $(seq 1 200); do curl -sf "http://$1$2" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "$1 never answered" >&2; return 1; }

"$bin/origin-stub" --listen 127.0.0.1:28880 >"$tmp/origin.log" 2>&1 &
pids+=($!)
wait_http 127.0.0.1:28880 "/ready?size=1"

run() {
    local name="$1" capacity="$2" port="$3" engine="$4"
    "$bin/cache-node" --id "node-$name" --listen "127.0.0.1:$port" --admin "127.0.0.1:$((port + 1))" \
        --origin http://127.0.0.1:28880 --capacity "$capacity" --store-engine "$engine" \
        --tls-dir "$tmp/tls" >"$tmp/$name-$engine-node.log" 2>&1 &
    local node=$!
    pids+=("$node")
    "$bin/edge" --id "edge-$name" --listen "127.0.0.1:$((port + 2))" --admin "127.0.0.1:$((port + 3))" \
        --seed "127.0.0.1:$port" --origin http://127.0.0.1:28880 --capacity 4KiB \
        --tls-dir "$tmp/tls" >"$tmp/$name-$engine-edge.log" 2>&1 &
    local edge=$!
    pids+=("$edge")
    wait_http "127.0.0.1:$((port + 1))" /healthz
    wait_http "127.0.0.1:$((port + 2))" "/ready?size=1"
    # The edge answers from the origin until its link to the node is up: wait for the link, or
    # the first requests would never reach the node.
    local linked=0
    for _ in $(seq 1 200); do
        if curl -sf "http://127.0.0.1:$((port + 3))/status" | python3 -c '
import json, sys
sys.exit(0 if any(m["link"] == "up" for m in json.load(sys.stdin)["members"]) else 1)'; then
            linked=1
            break
        fi
        sleep 0.05
    done
    [ "$linked" = 1 ] || { echo "the edge never linked to the node ($name, $engine)" >&2; return 1; }
    local before
    before="$(rss_kib "$node")"
    "$bin/loadgen" --target "127.0.0.1:$((port + 2))" -c 32 -d 3600 --requests "$N" --keys "$N" \
        --dist seq --path "/m/{key}?size=$SIZE&cc=max-age%3D86400" >"$tmp/$name-$engine-load.txt"
    sleep 1
    local after status entries charged cap_bytes
    after="$(rss_kib "$node")"
    status="$(curl -sf "http://127.0.0.1:$((port + 1))/status")"
    entries="$(echo "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["entries"])')"
    charged="$(echo "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')"
    cap_bytes="$(echo "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["capacity"])')"
    kill "$node" "$edge" 2>/dev/null || true
    wait "$node" "$edge" 2>/dev/null || true
    python3 - "$name" "$engine" "$N" "$SIZE" "$before" "$after" "$entries" "$charged" "$cap_bytes" <<'PY'
import sys
name, engine, n, size, before, after, entries, charged, cap = sys.argv[1:]
n, size, before, after, entries, charged, cap = map(int, (n, size, before, after, entries, charged, cap))
rss = after * 1024
grown = (after - before) * 1024
print(f"{name} ({engine}): {entries:,} of {n:,} objects of {size} B stored; node RSS {rss / 2**20:.0f} MiB "
      f"(grew {grown / 2**20:.0f} MiB); store charge {charged / 2**20:.0f} MiB of {cap / 2**20:.0f} MiB capacity")
if name == "roomy":
    print(f"  {(grown - entries * size) / max(entries, 1):.0f} bytes per object over the payload (target < 250)")
else:
    limit = 1.15 * cap + 64 * 2**20
    print(f"  RSS / (capacity + 64 MiB) = {rss / (cap + 64 * 2**20):.2f}; within 15 %: {rss <= limit}")
PY
}

for engine in $ENGINES; do
    run roomy "$(( (N * (SIZE + 2048)) / 1024 ))KiB" 28900 "$engine"
    run full "$(( (N * SIZE / 4) / 1024 ))KiB" 28910 "$engine"
done
