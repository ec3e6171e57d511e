#!/usr/bin/env bash
# bench/miss-path.sh BIN_DIR [perf]
# Our node-tier miss path alone, set up as ../shared two-tier.sh sets up its chains: an edge
# whose 2 KiB L1 keeps nothing, in front of one cache node (every request misses the edge and
# hits the node), both on core 0 at nice -20, wrk -t1 -c32 on core 1 over 1,000 objects of
# each size (fetched twice first). Prints req/s, p99, UDP datagrams per request (from
# /proc/net/snmp: what quinn's batching does) and which source the edge filled from (a run
# where the edge fell back to the origin is not a node-tier run).
#   SIZES="1k 16k" (also 256k, 1m) DUR=6s REPS=1 CONNS=32 (wrk's connections); NODE_ARGS /
#   EDGE_ARGS: extra flags. Also prints the edge's and the node's CPU time per request.
#   With "perf": records both processes (perf record -e cpu-clock --call-graph $CG, default fp)
#   for PSLEEP seconds (default 8) into OUT/perf-SIZE.data.
# To compare two builds, alternate them: for i in 1 2 3; do for d in A B; do bench/miss-path.sh $d; done; done
set -euo pipefail
BIN="$(cd "$1" && pwd)"; PERF="${2:-}"; SIZES="${SIZES:-1k 16k}"; DUR="${DUR:-6s}"; REPS="${REPS:-1}"; CONNS="${CONNS:-32}"
BENCH="$(cd "$(dirname "$0")" && pwd)"; DATA="${DATADIR:-${TMPDIR:-/tmp}/bench-data}"
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"
COUNT_SMALL=1000 COUNT_1M=16 "$BENCH/make-objects.sh" "$DATA" >/dev/null 2>&1
OUT="$(mktemp -d "${TMPDIR:-/tmp}/miss-path.XXXXXX")"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done; sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
OP=18480; BASE=18480; EDGE=$((BASE + 7)); EADMIN=$((BASE + 9))
out="$(BENCH_SERVER_CPUS=1 ORIGIN_ACCESS_LOG=off "$BENCH/start-origin.sh" $OP "$DATA")"; PIDS+=("$(echo "$out" | tail -1)")
start_tier_pair "$BIN" "$OUT" 0 $BASE $OP 2KiB
# This script runs wrk: its autogroup gets nice -20 too, as the servers' do.
echo -20 >"/proc/$$/autogroup" 2>/dev/null || true
# shellcheck disable=SC2086
warm_tier_pair $EDGE $SIZES
udp() { awk '/^Udp:/ {n++} n==2 && /^Udp:/ {print $2, $5; exit}' /proc/net/snmp; }
# CPU time (user + system, clock ticks) of the node and the edge: CPU per request holds up on
# a machine shared with other work, where req/s does not.
ticks() { process_ticks "${PIDS[1]}" "${PIDS[2]}"; }
for s in $SIZES; do for _ in $(seq 1 "$REPS"); do
  if [ -n "$PERF" ]; then
    perf record -e cpu-clock --call-graph "${CG:-fp}" -o "$OUT/perf-$s.data" \
      -p "$(pgrep -d, -f "$BIN/(edge|cache-node) ")" -- sleep "${PSLEEP:-8}" >/dev/null 2>&1 & PP=$!
  fi
  u0="$(udp)"; t0="$(ticks)"
  o="$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DUR" --latency -s "$BENCH/random-1000.lua" "http://127.0.0.1:$EDGE" -- "/obj/$s" "$(miss_keys "$s")")"
  u1="$(udp)"; t1="$(ticks)"
  if [ -n "$PERF" ]; then wait "$PP"; fi
  n="$(echo "$o" | awk '/requests in/ {print $1}')"
  per="$(python3 -c "a='$u0'.split(); b='$u1'.split(); print(round((int(b[1])-int(a[1]))/max($n,1), 2))")"
  cpu="$(python3 -c "import os; hz=os.sysconf('SC_CLK_TCK'); a='$t0'.split(); b='$t1'.split(); n=max($n,1); print('cpu_us_per_request node=%.1f edge=%.1f' % tuple((int(y)-int(x))*1e6/hz/n for x,y in zip(a,b)))")"
  echo "$s c=$CONNS $(echo "$o" | awk '/Requests\/sec/ {print $2}') req/s p99=$(echo "$o" | awk '$1=="99%" {print $2}') udp_out_per_request=$per $cpu $(echo "$o" | awk '/Non-2xx|Socket errors/ {printf "%s ", $0}')"
done; done
curl -s "http://127.0.0.1:$EADMIN/metrics" | grep '^cdn_fetches_total' | sed 's/^/  /'
echo "OUT=$OUT"
