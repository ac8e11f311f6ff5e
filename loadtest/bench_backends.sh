#!/usr/bin/env bash
# Issue 4 benchmarks in one sitting: ingest with the file, redis and mongodb backends,
# the redis backend next to raw pipelined XADD of the same payload (the ceiling's
# redis-bench), and ads end to end on the Redis queue with 2 gateways and 4 workers.
# Usage: loadtest/bench_backends.sh CEILING_DIR   (a built copy of shared/tools/ceiling)
# Env: DUR (seconds per run, default 10); MONGO_URI to use a running MongoDB(-wire) server
# (nx-27017 runs one instance per machine: with one already up, pass its URI).
# Needs redis-server, and nx-27017 on PATH unless MONGO_URI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
CEIL=${1:?usage: loadtest/bench_backends.sh CEILING_DIR}
B=target/release
cargo build --release -q -p adflow-gateway -p adflow-loadtest
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
TMP=$(mktemp -d /tmp/adflow-bench4.XXXXXX)
RP=6391
MP=27021
redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no --daemonize no --logfile "$TMP/redis.log" & PIDS+=($!); REDIS=$!
if [ -z "${MONGO_URI:-}" ]; then
  nx-27017 --db memory -p $MP --log-file "$TMP/nx.log" >"$TMP/nx.out" 2>&1 & PIDS+=($!)
  wait_port $MP || { echo "nx-27017 did not start (one already running? set MONGO_URI)"; cat "$TMP/nx.out"; exit 1; }
fi
wait_port $RP
REDIS=$(redis-cli -p $RP info server | tr -d "\r" | awk -F: "/^process_id/{print \$2}")
RURL="redis://127.0.0.1:$RP/"
MURI="${MONGO_URI:-mongodb://127.0.0.1:$MP/?directConnection=true}"
L="$B/adflow-loadtest"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(date -u +%FT%TZ)"

raw_xadd() {
  echo "== raw pipelined XADD (ceiling redis-bench, one connection, pipelines of 1000)"
  redis-cli -p $RP FLUSHALL >/dev/null
  "$CEIL/target/release/redis-bench" --url "$RURL" --batch 1000 --duration "$DUR"
}

# gateway NAME PORT ENV...: starts a gateway with the given env overrides.
gateway() {
  local name=$1 port=$2; shift 2
  env ADFLOW_SERVER__LISTEN=127.0.0.1:$port ADFLOW_LOG__LEVEL=warn ADFLOW_METRICS__LISTEN= \
    ADFLOW_STORAGE__FILE__DIR="$TMP/$name/events" ADFLOW_QUEUE__PATH="$TMP/$name/queue.redb" \
    ADFLOW_STORAGE__RESILIENCE__SPILL_DIR="$TMP/$name/spill" ADFLOW_WORKERS__IN_PROCESS=0 \
    "$@" $B/adflow-gateway & GP=$!
  PIDS+=($GP)
  wait_port "$port"
}

ingest() {  # $1 = label, $2 = port, rest = loadtest args
  local label=$1 port=$2; shift 2
  echo "== ingest: $label"
  local c0 t0 c1 t1 r0 r1
  c0=$(cpu $GP); r0=$(cpu $REDIS); t0=$(date +%s.%N)
  "$L" batch --addr 127.0.0.1:$port --duration "$DUR" --warmup 1 --quiet --ack durable "$@"
  c1=$(cpu $GP); r1=$(cpu $REDIS); t1=$(date +%s.%N)
  awk -v a="$c0" -v b="$c1" -v ra="$r0" -v rb="$r1" -v s="$t0" -v e="$t1" -v hz="$(getconf CLK_TCK)" \
    'BEGIN{printf "  CPU: gateway %.2f cores, redis-server %.2f cores\n", (b-a)/hz/(e-s), (rb-ra)/hz/(e-s)}'
}

stop_gw() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }

raw_xadd

gateway file 50571
ingest "file backend (fsync per commit)" 50571 -c 8 --connections 4 --batch-size 1000
stop_gw $GP

R=(ADFLOW_STORAGE__BACKEND=redis ADFLOW_STORAGE__REDIS__URL=$RURL)
redis-cli -p $RP FLUSHALL >/dev/null
gateway redis-plain 50572 "${R[@]}" ADFLOW_ANALYTICS__SHARED=false ADFLOW_INGEST__DEDUP__SHARED=false
ingest "redis backend, events only (dedup and analytics in gateway memory: one gateway)" 50572 -c 8 --connections 4 --batch-size 1000
stop_gw $GP

redis-cli -p $RP FLUSHALL >/dev/null
gateway redis-counters 50573 "${R[@]}" ADFLOW_INGEST__DEDUP__SHARED=false
ingest "redis backend, events + shared analytics counters in the same MULTI/EXEC" 50573 -c 8 --connections 4 --batch-size 1000
stop_gw $GP

redis-cli -p $RP FLUSHALL >/dev/null
gateway redis-shared 50577 "${R[@]}"
ingest "redis backend, defaults for several gateways: events + counters + shared dedup (SET NX EX per event)" 50577 -c 8 --connections 4 --batch-size 1000
stop_gw $GP

raw_xadd

gateway mongo 50574 ADFLOW_STORAGE__BACKEND=mongodb ADFLOW_STORAGE__MONGODB__URI="$MURI" ADFLOW_STORAGE__MONGODB__DATABASE="bench_$$_$(date +%s)"
ingest "mongodb backend (nx-27017 wire server on SQLite)" 50574 -c 4 --connections 4 --batch-size 500
stop_gw $GP

echo "== e2e: ads on the Redis queue, 2 gateways, 4 workers (2 per gateway), SubmitAds of 100 spread over both"
redis-cli -p $RP FLUSHALL >/dev/null
Q=(ADFLOW_STORAGE__BACKEND=redis ADFLOW_STORAGE__REDIS__URL=$RURL ADFLOW_QUEUE__BACKEND=redis ADFLOW_QUEUE__REDIS__URL=$RURL)
gateway e2e-a 50575 "${Q[@]}"; GA=$GP
gateway e2e-b 50576 "${Q[@]}"; GB=$GP
c0=$(( $(cpu $GA) + $(cpu $GB) )); r0=$(cpu $REDIS); t0=$(date +%s.%N)
"$L" e2e --addr 127.0.0.1:50575,127.0.0.1:50576 -c 8 --connections 4 --batch-size 100 --duration "$DUR" --warmup 1 --workers 4 --quiet
c1=$(( $(cpu $GA) + $(cpu $GB) )); r1=$(cpu $REDIS); t1=$(date +%s.%N)
awk -v a="$c0" -v b="$c1" -v ra="$r0" -v rb="$r1" -v s="$t0" -v e="$t1" -v hz="$(getconf CLK_TCK)" \
  'BEGIN{printf "  CPU: both gateways %.2f cores, redis-server %.2f cores\n", (b-a)/hz/(e-s), (rb-ra)/hz/(e-s)}'
echo "== e2e at about half that rate (latency), fresh queue"
stop_gw $GA; stop_gw $GB
redis-cli -p $RP FLUSHALL >/dev/null
gateway e2e-c 50578 "${Q[@]}"; GA=$GP
gateway e2e-d 50579 "${Q[@]}"; GB=$GP
"$L" e2e --addr 127.0.0.1:50578,127.0.0.1:50579 -c 16 --connections 4 --batch-size 20 --rate "${HALF_RATE:-6000}" --duration "$DUR" --warmup 1 --workers 4 --quiet
stop_gw $GA; stop_gw $GB
rm -rf "$TMP"
