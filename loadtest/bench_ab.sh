#!/usr/bin/env bash
# A/B benchmark of two gateway builds in one sitting, runs interleaved (A, B, A, B) so
# both see the same machine noise: durable batch and stream ingest (file store, fsync,
# dedup on) and end-to-end ads with 4 remote workers (redb queue).
# Usage: loadtest/bench_ab.sh BEFORE_RELEASE_DIR AFTER_RELEASE_DIR
#   (each a target/release directory holding adflow-gateway and adflow-loadtest; each
#   gateway runs in the directory holding its own configs/default.toml: DIR/../.. or DIR)
# Env: DUR (seconds per run, default 8), ROUNDS (default 2), MODES (default "batch stream e2e"; also e2e_half: ads at HALF_RATE/s, default 5000).
set -euo pipefail
A=$1
B=$2
DUR=${DUR:-8}
ROUNDS=${ROUNDS:-2}
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(date -u +%FT%TZ)"
echo "== A = $A"
echo "== B = $B"

one() { # label dir workers loadtest-args...
  local label=$1 dir=$2 workers=$3; shift 3
  local data; data=$(mktemp -d /tmp/adflow-ab.XXXXXX)
  local cwd=$dir/../..; [ -f "$cwd/configs/default.toml" ] || cwd=$dir
  (cd "$cwd" && exec env ADFLOW_STORAGE__FILE__DIR=$data/events ADFLOW_QUEUE__PATH=$data/queue.redb ADFLOW_SERVER__LISTEN=127.0.0.1:50571 \
    ADFLOW_METRICS__LISTEN= ADFLOW_WORKERS__IN_PROCESS=$workers ADFLOW_LOG__LEVEL=warn "$dir/adflow-gateway") &
  local gp=$!
  wait_port 50571
  local out
  out=$("$dir/adflow-loadtest" "$@" --addr 127.0.0.1:50571 --duration "$DUR" --warmup 1 --quiet 2>&1 | tr '\n' ' ')
  local rss; rss=$(grep VmHWM /proc/$gp/status | awk '{print $2/1024}')
  kill -TERM $gp; wait $gp 2>/dev/null || true
  rm -rf "$data"
  printf '%-3s %-7s peak_rss=%sMB %s\n' "$label" "$MODE" "$rss" "$out"
}

for r in $(seq 1 "$ROUNDS"); do
  echo "-- round $r"
  for side in A B; do
    dir=${!side}
    for m in ${MODES:-batch stream e2e}; do
      case $m in
        batch) MODE=batch one "$side" "$dir" 0 batch --concurrency 8 --connections 4 --batch-size 1000 --ack durable ;;
        stream) MODE=stream one "$side" "$dir" 0 stream --concurrency 4 --connections 4 --batch-size 1000 --inflight 8 --ack durable ;;
        e2e) MODE=e2e one "$side" "$dir" 0 e2e -c 8 --batch-size 100 --workers 4 ;;
        e2e_half) MODE=e2e_half one "$side" "$dir" 0 e2e -c 16 --batch-size 20 --rate "${HALF_RATE:-5000}" --workers 4 ;;
      esac
    done
  done
done
