#!/usr/bin/env bash
# bench/miss-ab.sh BIN_A BIN_B
# Two builds' node-tier miss paths measured at the same time, so the machine's noise (other
# tenants, frequency) falls on both alike: each build runs an edge whose 2 KiB L1 keeps nothing
# in front of one cache node (start_tier_pair in lib.sh, as bench/miss-path.sh), and all four processes share
# core 0 (nice -20); two wrk -t1 -c32, one per build, share core 1. The build that needs less CPU
# per request serves more of them. Prints, per size and rep, both builds' req/s and p99, B / A,
# and the CPU per request each pair used (from /proc: user + system); then the median of B / A.
#   SIZES="1k 16k" DUR=10s REPS=5 CONNS=32; EDGE_CAPACITY_A / _B: an edge's L1 (default 2KiB;
#   give one 1GiB to compare the miss path with the edge's hit path)
# Sequential runs of bench/miss-path.sh moved by +-30 % between runs of the same build on this
# machine; side by side, the same build against itself reads 1.00 within 2 %. Each rep swaps
# which wrk starts first; in short runs req/s depends on that order, CPU per request does not.
set -euo pipefail
A="$(cd "$1" && pwd)"; B="$(cd "$2" && pwd)"
SIZES="${SIZES:-1k 16k}"; DUR="${DUR:-10s}"; REPS="${REPS:-5}"; CONNS="${CONNS:-32}"
BENCH="$(cd "$(dirname "$0")" && pwd)"; DATA="${DATADIR:-${TMPDIR:-/tmp}/bench-data}"
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"
# A server left from an interrupted run would answer in place of the build under test.
for p in 18506 18507 18508 18509 18516 18517 18518 18519; do require_free_port $p; done
COUNT_SMALL=1000 COUNT_1M=16 "$BENCH/make-objects.sh" "$DATA" >/dev/null
OUT="$(mktemp -d "${TMPDIR:-/tmp}/miss-ab.XXXXXX")"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done; sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
OP=18480
out="$(BENCH_SERVER_CPUS=1 ORIGIN_ACCESS_LOG=off "$BENCH/start-origin.sh" $OP "$DATA")"; PIDS+=("$(echo "$out" | tail -1)")
# Pair a: node on 18506, edge on 18507 (admins 18508, 18509); pair b: 18516-18519.
declare -A EDGE_PORT EDGE_ADMIN SERVERS
for x in a b; do
  bin=$A; base=18500; cap="${EDGE_CAPACITY_A:-2KiB}"
  if [ $x = b ]; then bin=$B; base=18510; cap="${EDGE_CAPACITY_B:-2KiB}"; fi
  start_tier_pair "$bin" "$OUT" $x $base $OP "$cap"
  EDGE_PORT[$x]=$((base + 7)); EDGE_ADMIN[$x]=$((base + 9)); SERVERS[$x]="$PAIR_NODE $PAIR_EDGE"
done
# This script runs wrk: its autogroup gets nice -20 too, as the servers' do.
echo -20 >"/proc/$$/autogroup" 2>/dev/null || true
# shellcheck disable=SC2086
for x in a b; do warm_tier_pair "${EDGE_PORT[$x]}" $SIZES; done
# CPU ticks of a pair: "node edge".
# shellcheck disable=SC2086
ticks() { process_ticks $1; }
ratios=()
load() { taskset -c 1 wrk -t1 -c"$CONNS" -d"$DUR" --latency -s "$BENCH/random-1000.lua" "http://127.0.0.1:${EDGE_PORT[$1]}" -- "/obj/$2" "$(miss_keys "$2")" >"$OUT/wrk-$1"; }
n=0
for s in $SIZES; do for _ in $(seq 1 "$REPS"); do
  ta0="$(ticks "${SERVERS[a]}")"; tb0="$(ticks "${SERVERS[b]}")"
  n=$((n + 1)); if [ $((n % 2)) = 1 ]; then first=a; second=b; else first=b; second=a; fi
  load $first "$s" & W1=$!
  load $second "$s" & W2=$!
  wait $W1 || die "wrk against pair $first failed"
  wait $W2 || die "wrk against pair $second failed"
  ta1="$(ticks "${SERVERS[a]}")"; tb1="$(ticks "${SERVERS[b]}")"
  line="$(python3 - "$OUT" "$s" "$ta0" "$ta1" "$tb0" "$tb1" <<'EOF'
import os, re, sys
out, size = sys.argv[1], sys.argv[2]
(an0, ae0), (an1, ae1), (bn0, be0), (bn1, be1) = (map(int, a.split()) for a in sys.argv[3:7])
ta0, ta1, tb0, tb1 = an0 + ae0, an1 + ae1, bn0 + be0, bn1 + be1
hz = os.sysconf('SC_CLK_TCK')
def parse(x):
    t = open(f'{out}/wrk-{x}').read()
    n = int(re.search(r'(\d+) requests in', t).group(1))
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', t).group(1))
    p99 = re.search(r'\s99%\s+(\S+)', t).group(1)
    errs = f'errors({x})' if re.search(r'Non-2xx|Socket errors', t) else ''
    return n, rps, p99, errs
(na, ra, pa, ea), (nb, rb, pb, eb) = parse('a'), parse('b')
us = lambda t, n: t * 1e6 / hz / max(n, 1)
ca, cb = us(ta1 - ta0, na), us(tb1 - tb0, nb)
split = lambda n0, n1, e0, e1, n: f'node {us(n1 - n0, n):.1f} + edge {us(e1 - e0, n):.1f}'
print(f'{size} A {ra:.0f} req/s p99={pa} cpu={ca:.1f}us ({split(an0, an1, ae0, ae1, na)})  '
      f'B {rb:.0f} req/s p99={pb} cpu={cb:.1f}us ({split(bn0, bn1, be0, be1, nb)})  '
      f'B/A req/s={rb / ra:.3f} cpu={cb / ca:.3f} {ea}{eb}')
EOF
)"
  echo "$line"; ratios+=("$s $(echo "$line" | sed -E 's/.*B\/A req\/s=([0-9.]+) cpu=([0-9.]+).*/\1 \2/')")
done; done
printf '%s\n' "${ratios[@]}" | python3 -c "
import sys, statistics as st, collections
d = collections.defaultdict(list)
for l in sys.stdin:
    s, r, c = l.split(); d[s].append((float(r), float(c)))
for s, v in d.items():
    print(f'{s}: B/A req/s median {st.median(x[0] for x in v):.3f} ({min(x[0] for x in v):.3f}-{max(x[0] for x in v):.3f}), cpu per request median {st.median(x[1] for x in v):.3f}')
"
for x in a b; do echo "$x: $(curl -s "http://127.0.0.1:${EDGE_ADMIN[$x]}/metrics" | grep '^cdn_fetches_total' | grep -o 'source="[a-z]*"} [0-9]*' | paste -sd' ')"; done
echo "OUT=$OUT"
