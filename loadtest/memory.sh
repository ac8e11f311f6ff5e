#!/usr/bin/env bash
# Gateway memory under full batch load and under 2x streaming overload, split into the
# dedup window (its own budget, `ingest.dedup.max_memory_mb`, reported as
# `dedup_memory_bytes`) and everything else. Samples VmRSS and the gauge every 0.5 s.
# Usage: loadtest/memory.sh RELEASE_DIR [SECS]
# Env: MODES (default "batch-full stream-2x unary-2x"); gateway settings pass through
# (e.g. ADFLOW_INGEST__STREAM_MAX_INFLIGHT=8).
set -u
MODES=${MODES:-batch-full stream-2x unary-2x}
dir=$1; secs=${2:-15}
port=50597; mport=9597
cwd=$dir/../..; [ -f "$cwd/configs/default.toml" ] || cwd=$dir
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
run() {
  local label=$1; shift
  case " $MODES " in *" $label "*) ;; *) return 0 ;; esac
  local data; data=$(mktemp -d /work/adflow-mem.XXXXXX)
  (cd "$cwd" && exec env ADFLOW_STORAGE__FILE__DIR=$data/events ADFLOW_QUEUE__PATH=$data/queue.redb \
    ADFLOW_SERVER__LISTEN=127.0.0.1:$port ADFLOW_METRICS__LISTEN=127.0.0.1:$mport ADFLOW_WORKERS__IN_PROCESS=0 \
    ADFLOW_LOG__LEVEL=error "$dir/adflow-gateway") &
  local gp=$!
  wait_port $port; wait_port $mport
  "$@" >/tmp/mem-$label.txt 2>&1 &
  local lp=$!
  local peak=0 peak_other=0 peak_dedup=0
  while kill -0 $lp 2>/dev/null; do
    local rss dd other
    rss=$(awk '/VmRSS/ {print $2*1024}' /proc/$gp/status)
    dd=$(curl -s 127.0.0.1:$mport/metrics | awk '/^dedup_memory_bytes / {printf "%.0f", $2}')
    dd=${dd:-0}; other=$((rss - dd))
    [ "$rss" -gt "$peak" ] && peak=$rss
    [ "$dd" -gt "$peak_dedup" ] && peak_dedup=$dd
    [ "$other" -gt "$peak_other" ] && peak_other=$other
    sleep 0.5
  done
  wait $lp
  local hwm; hwm=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$gp/status)
  kill -TERM $gp; wait $gp 2>/dev/null
  rm -rf "$data"
  printf '%-22s peak RSS %4d MB (VmHWM %s MB) = dedup window up to %4d MB + everything else up to %4d MB; %s\n' \
    "$label" $((peak >> 20)) "$hwm" $((peak_dedup >> 20)) $((peak_other >> 20)) \
    "$(grep -E 'throughput' /tmp/mem-$label.txt | tr -s ' ' | head -1)"
}
L=$dir/adflow-loadtest
run batch-full "$L" batch --concurrency 8 --connections 4 --batch-size 1000 --ack durable --addr 127.0.0.1:$port --duration "$secs" --warmup 1 --quiet
run stream-2x "$L" stream --concurrency 16 --connections 8 --batch-size 1000 --inflight 32 --ack durable --addr 127.0.0.1:$port --duration "$secs" --warmup 1 --quiet
run unary-2x "$L" unary --concurrency 512 --connections 16 --ack durable --addr 127.0.0.1:$port --duration "$secs" --warmup 1 --quiet
