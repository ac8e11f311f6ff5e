#!/usr/bin/env bash
# Issue 15: shared-mode ingest on one Redis next to raw pipelined XADD, in one sitting,
# for one or two gateway builds (before / after). For each build: events only, + shared
# analytics counters, + shared dedup (the defaults for several gateways). Reports events/s,
# the ratio to raw XADD, Redis CPU per 1,000 events and Redis commands per event.
# Usage: loadtest/bench_shared.sh CEILING_DIR BIN_DIR [BIN_DIR_BEFORE]
#   CEILING_DIR: a built copy of shared/tools/ceiling (for redis-bench)
#   BIN_DIR: holds adflow-gateway and adflow-loadtest (e.g. target/release)
# Env: DUR (seconds per run, default 10), RP (redis port, default 6393).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
CEIL=${1:?usage: loadtest/bench_shared.sh CEILING_DIR BIN_DIR [BIN_DIR_BEFORE]}
AFTER=${2:?usage: loadtest/bench_shared.sh CEILING_DIR BIN_DIR [BIN_DIR_BEFORE]}
BEFORE=${3:-}
RP=${RP:-6393}
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
TMP=$(mktemp -d /tmp/adflow-bench15.XXXXXX)
redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no --daemonize no --logfile "$TMP/redis.log" & PIDS+=($!)
wait_port $RP
REDIS=$(redis-cli -p $RP info server | tr -d "\r" | awk -F: '/^process_id/{print $2}')
RURL="redis://127.0.0.1:$RP/"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(date -u +%FT%TZ)"
echo "== redis: $(redis-server --version | awk '{print $3}')"

calls() { redis-cli -p $RP info commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_/{n+=$3} END{print n+0}'; }

raw_xadd() {
  echo "== raw pipelined XADD (ceiling redis-bench, one connection, pipelines of 1000)"
  redis-cli -p $RP FLUSHALL >/dev/null
  local r0 t0
  r0=$(cpu $REDIS); t0=$(date +%s.%N)
  "$CEIL/target/release/redis-bench" --url "$RURL" --batch 1000 --duration "$DUR" | tee "$TMP/raw.txt"
  awk -v ra="$r0" -v rb="$(cpu $REDIS)" -v s="$t0" -v e="$(date +%s.%N)" -v hz="$(getconf CLK_TCK)" \
    'BEGIN{printf "  CPU: redis-server %.2f cores\n", (rb-ra)/hz/(e-s)}'
}

# run BIN LABEL ENV...: one gateway of build BIN with the env overrides, batch load, report.
run() {
  local bin=$1 label=$2; shift 2
  redis-cli -p $RP FLUSHALL >/dev/null
  redis-cli -p $RP CONFIG RESETSTAT >/dev/null
  # A build reads configs/default.toml from its working directory: use the build's own
  # copy when it has one (an older build refuses keys it does not know).
  local cwd=.; [ -f "$bin/configs/default.toml" ] && cwd=$bin
  (cd "$cwd" && exec env ADFLOW_SERVER__LISTEN=127.0.0.1:50591 ADFLOW_LOG__LEVEL=warn ADFLOW_METRICS__LISTEN= \
    ADFLOW_DASHBOARD__LISTEN= ADFLOW_STORAGE__BACKEND=redis ADFLOW_STORAGE__REDIS__URL=$RURL \
    ADFLOW_QUEUE__BACKEND=embedded ADFLOW_QUEUE__PATH="$TMP/q-$RANDOM.redb" \
    ADFLOW_STORAGE__RESILIENCE__SPILL_DIR="$TMP/spill-$RANDOM" ADFLOW_WORKERS__IN_PROCESS=0 \
    "$@" "$bin/adflow-gateway") &
  local gp=$!
  PIDS+=($gp)
  wait_port 50591
  echo "== $label ($bin)"
  local c0 r0 t0 out
  c0=$(cpu $gp); r0=$(cpu $REDIS); t0=$(date +%s.%N)
  out=$("$bin/adflow-loadtest" batch --addr 127.0.0.1:50591 --duration "$DUR" --warmup 0 --quiet --ack durable \
    -c 8 --connections 4 --batch-size 1000)
  local c1 r1 t1 n ev
  c1=$(cpu $gp); r1=$(cpu $REDIS); t1=$(date +%s.%N)
  echo "$out" | grep -E "throughput|latency|events " | head -4
  n=$(calls)
  # Accepted events (the CPU window is the load's: no warm-up).
  ev=$(echo "$out" | awk '/^ *events /{print $4}')
  awk -v a="$c0" -v b="$c1" -v ra="$r0" -v rb="$r1" -v s="$t0" -v e="$t1" -v hz="$(getconf CLK_TCK)" -v n="$n" -v ev="$ev" \
    'BEGIN{printf "  CPU: gateway %.2f cores, redis-server %.2f cores; events accepted %d; redis CPU per 1000 events %.2f ms; redis commands per event %.2f\n",
      (b-a)/hz/(e-s), (rb-ra)/hz/(e-s), ev, (rb-ra)/hz*1e6/ev, n/ev}'
  kill -TERM $gp; wait $gp 2>/dev/null || true
}

modes() {
  local bin=$1
  run "$bin" "events only" ADFLOW_ANALYTICS__SHARED=false ADFLOW_INGEST__DEDUP__SHARED=false
  run "$bin" "events + shared counters" ADFLOW_INGEST__DEDUP__SHARED=false
  run "$bin" "events + shared counters + shared dedup (several-gateway defaults)"
}

raw_xadd
[ -n "$BEFORE" ] && modes "$BEFORE"
modes "$AFTER"
raw_xadd
rm -rf "$TMP"
