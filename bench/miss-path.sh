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
COUNT_SMALL=1000 COUNT_1M=16 "$BENCH/make-objects.sh" "$DATA" >/dev/null 2>&1
OUT="$(mktemp -d "${TMPDIR:-/tmp}/miss-path.XXXXXX")"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done; sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
OP=18480; NODE=18486; EDGE=18487; NADMIN=18488; EADMIN=18489
out="$(BENCH_SERVER_CPUS=1 ORIGIN_ACCESS_LOG=off "$BENCH/start-origin.sh" $OP "$DATA")"; PIDS+=("$(echo "$out" | tail -1)")
"$BIN/cache-node" init-tls --dir "$OUT/tls" >/dev/null
# shellcheck disable=SC2086
setsid taskset -c 0 nice -n -20 "$BIN/cache-node" --id node-0 --listen 127.0.0.1:$NODE --admin 127.0.0.1:$NADMIN \
  --origin http://127.0.0.1:$OP --capacity 2GiB --tls-dir "$OUT/tls" ${NODE_ARGS:-} </dev/null >"$OUT/node.log" 2>&1 & PIDS+=($!)
# shellcheck disable=SC2086
setsid taskset -c 0 nice -n -20 "$BIN/edge" --id edge-0 --listen 127.0.0.1:$EDGE --admin 127.0.0.1:$EADMIN \
  --seed 127.0.0.1:$NODE --origin http://127.0.0.1:$OP --capacity 2KiB --tls-dir "$OUT/tls" ${EDGE_ARGS:-} </dev/null >"$OUT/edge.log" 2>&1 & PIDS+=($!)
# nice -20 counts only within a session's autogroup (kernel.sched_autogroup_enabled): the
# servers (each in its own session) and this script (wrk) also get autogroup nice -20, so a
# build in another session does not take half the core from them.
for p in "${PIDS[1]}" "${PIDS[2]}" $$; do echo -20 >"/proc/$p/autogroup" 2>/dev/null || true; done
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$EADMIN/status" && break; sleep 0.1; done
# Objects per size: 1,000 (16 of 1 MiB).
keys() { if [ "$1" = 1m ]; then echo 16; else echo 1000; fi; }
for s in $SIZES; do for _ in 1 2; do for i in $(seq 0 $(($(keys "$s") - 1))); do curl -s -o /dev/null "http://127.0.0.1:$EDGE/obj/$s/$i"; done; done; done
udp() { awk '/^Udp:/ {n++} n==2 && /^Udp:/ {print $2, $5; exit}' /proc/net/snmp; }
# CPU time (user + system, clock ticks) of the edge and the node: CPU per request holds up on
# a machine shared with other work, where req/s does not.
ticks() { for p in "${PIDS[1]}" "${PIDS[2]}"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | paste -sd' '; }
for s in $SIZES; do for _ in $(seq 1 "$REPS"); do
  if [ -n "$PERF" ]; then
    perf record -e cpu-clock --call-graph "${CG:-fp}" -o "$OUT/perf-$s.data" \
      -p "$(pgrep -d, -f "$BIN/(edge|cache-node) ")" -- sleep "${PSLEEP:-8}" >/dev/null 2>&1 & PP=$!
  fi
  u0="$(udp)"; t0="$(ticks)"
  o="$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DUR" --latency -s "$BENCH/random-1000.lua" "http://127.0.0.1:$EDGE" -- "/obj/$s" "$(keys "$s")")"
  u1="$(udp)"; t1="$(ticks)"
  if [ -n "$PERF" ]; then wait "$PP"; fi
  n="$(echo "$o" | awk '/requests in/ {print $1}')"
  per="$(python3 -c "a='$u0'.split(); b='$u1'.split(); print(round((int(b[1])-int(a[1]))/max($n,1), 2))")"
  cpu="$(python3 -c "import os; hz=os.sysconf('SC_CLK_TCK'); a='$t0'.split(); b='$t1'.split(); n=max($n,1); print('cpu_us_per_request node=%.1f edge=%.1f' % tuple((int(y)-int(x))*1e6/hz/n for x,y in zip(a,b)))")"
  echo "$s c=$CONNS $(echo "$o" | awk '/Requests\/sec/ {print $2}') req/s p99=$(echo "$o" | awk '$1=="99%" {print $2}') udp_out_per_request=$per $cpu $(echo "$o" | awk '/Non-2xx|Socket errors/ {printf "%s ", $0}')"
done; done
curl -s "http://127.0.0.1:$EADMIN/metrics" | grep '^cdn_fetches_total' | sed 's/^/  /'
echo "OUT=$OUT"
