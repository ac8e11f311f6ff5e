#!/usr/bin/env bash
# Restart time of one gateway at a given stored size (issue 16): time from process start
# to grpc.health.v1 SERVING for EventIngest, the events read back at start, and RSS then.
# Usage: loadtest/restart.sh RELEASE_DIR [LOAD_SECS] [LINK_FACTOR]
#   1. fills a fresh data dir with LOAD_SECS of durable batch load (~110 MB/s here);
#   2. measures: a clean restart (SIGTERM wrote a checkpoint), a restart after kill -9
#      under load (the last scheduled checkpoint), a full rebuild (checkpoint removed);
#   3. with LINK_FACTOR > 1: renumbers the sealed segments and hardlinks them LINK_FACTOR-1
#      more times under lower numbers (every name is a real segment of real records, read
#      by a full rebuild like any other; no extra disk), rebuilds once at that size, and
#      measures the same three restarts there.
set -u
dir=$1; load=${2:-28}; factor=${3:-1}
port=50595
data=$(mktemp -d /work/adflow-restart.XXXXXX)
cwd=$dir/../..; [ -f "$cwd/configs/default.toml" ] || cwd=$dir
log=$data/gateway.log
start_gw() {
  (cd "$cwd" && exec env ADFLOW_STORAGE__FILE__DIR=$data/events ADFLOW_QUEUE__PATH=$data/queue.redb \
    ADFLOW_SERVER__LISTEN=127.0.0.1:$port ADFLOW_METRICS__LISTEN= ADFLOW_WORKERS__IN_PROCESS=0 \
    ADFLOW_STORAGE__FILE__RETENTION_HOURS=0 ADFLOW_LOG__LEVEL=info NO_COLOR=1 "$dir/adflow-gateway" >>"$log" 2>&1) &
  gp=$!
}
serving() {
  grpcurl -plaintext -max-time 2 -d '{"service":"adflow.v1.EventIngest"}' 127.0.0.1:$port grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING
}
# Starts the gateway and prints seconds to SERVING, events read back, RSS.
measure() {
  local label=$1 t0 t1 rss ev
  : >"$log"
  t0=$(date +%s.%N)
  start_gw
  until serving; do sleep 0.02; done
  t1=$(date +%s.%N)
  rss=$(grep VmRSS /proc/$gp/status | awk '{printf "%.0f", $2/1024}')
  ev=$(grep -o 'rebuilt from the event store events=[0-9]*' "$log" | grep -o '[0-9]*$')
  local cp; cp=$(grep -c 'checkpoint loaded' "$log")
  printf '%-34s %6.2f s to SERVING, read back %10s events, checkpoint used: %s, RSS %s MB, store %s\n' \
    "$label" "$(echo "$t1 - $t0" | bc)" "$ev" "$([ "$cp" -gt 0 ] && echo yes || echo no)" "$rss" "$(du -sh --apparent-size "$data/events" | cut -f1)"
}
stop_gw() { kill -TERM $gp; wait $gp 2>/dev/null; }
load() { "$dir/adflow-loadtest" batch --concurrency 8 --connections 4 --batch-size 1000 --ack durable --addr 127.0.0.1:$port --duration "$1" --warmup 0 --quiet >/dev/null 2>&1; }
three() {
  local size=$1
  measure "$size clean restart"; stop_gw
  measure "$size restart after kill -9 (setup)" >/dev/null
  load 6; kill -9 $gp; wait $gp 2>/dev/null
  measure "$size after kill -9 under load"; stop_gw
  rm -f "$data/events/checkpoint.bin"
  measure "$size full rebuild (no checkpoint)"; stop_gw
}

start_gw; until serving; do sleep 0.05; done
load "$load"; stop_gw
three "$(du -sh --apparent-size "$data/events" | cut -f1)"
if [ "$factor" -gt 1 ]; then
  ev=$data/events
  segs=$(ls "$ev" | grep -E '^segment-[0-9]+\.log$' | sort)
  n=$(echo "$segs" | wc -l)
  # Move the real segments to the top of the numbering, then link copies below them.
  shift=$(( n * (factor - 1) ))
  for f in $(echo "$segs" | sort -r); do
    i=$((10#$(echo "$f" | grep -o '[0-9]\+'))); mv "$ev/$f" "$ev/$(printf 'segment-%020d.log' $((i + shift)))"
  done
  last=$(ls "$ev" | grep -E '^segment-' | sort | tail -1)
  k=1
  for r in $(seq 1 $((factor - 1))); do
    for f in $(ls "$ev" | grep -E '^segment-' | sort | head -$n); do
      [ "$f" = "$last" ] && continue
      ln "$ev/$f" "$ev/$(printf 'segment-%020d.log' $k)" 2>/dev/null; k=$((k + 1))
    done
  done
  rm -f "$ev/checkpoint.bin"
  measure "$(du -sh --apparent-size "$ev" | cut -f1) first start (full rebuild)"; stop_gw
  three "$(du -sh --apparent-size "$ev" | cut -f1)"
fi
rm -rf "$data"
