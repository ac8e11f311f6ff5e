#!/usr/bin/env bash
# Side-by-side ingest benchmark: the bare tonic ceiling server and the adflow gateway,
# same machine, same sitting, same shapes (unary c=64 over 4 conns; batches of 1000 with
# 8 in flight over 4 conns; 4 streams of 1000-event batches).
# Usage: loadtest/bench.sh [CEILING_DIR]   (CEILING_DIR: a built copy of shared/tools/ceiling)
# Env: DUR (seconds per run, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
CEIL=${1:-}
B=target/release
cargo build --release -q -p adflow-gateway -p adflow-loadtest
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(date -u +%FT%TZ)"
if [ -n "$CEIL" ]; then
  echo "== ceiling (bare tonic server that only decodes and counts)"
  "$CEIL/target/release/ceiling-server" --addr 127.0.0.1:50551 & CP=$!
  wait_port 50551
  C="$CEIL/target/release/ceiling-client --addr 127.0.0.1:50551 --duration $DUR --warmup 1"
  $C --mode unary --concurrency 64 --conns 4
  $C --mode batch --batch 1000 --concurrency 8 --conns 4
  $C --mode stream --batch 1000 --streams 4
  kill $CP; wait $CP 2>/dev/null || true
fi

echo "== adflow gateway (file store, fsync per commit, durable acks, dedup on)"
DATA=$(mktemp -d /tmp/adflow-bench.XXXXXX)
ADFLOW_STORAGE__FILE__DIR=$DATA ADFLOW_SERVER__LISTEN=127.0.0.1:50561 ADFLOW_LOG__LEVEL=warn $B/adflow-gateway & GP=$!
wait_port 50561
L="$B/adflow-loadtest"
run() { local c0 t0 c1 t1; c0=$(cpu $GP); t0=$(date +%s.%N); "$L" "$@" --addr 127.0.0.1:50561 --duration "$DUR" --warmup 1 --quiet;
        c1=$(cpu $GP); t1=$(date +%s.%N); awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "  gateway CPU: %.2f cores\n", (b-a)/hz/(e-s)}'; }
rss() { echo "  gateway peak RSS so far: $(grep VmHWM /proc/$GP/status | awk '{print $2/1024 " MB"}')"; }
run unary --concurrency 64 --connections 4 --ack durable; rss
run batch --concurrency 8 --connections 4 --batch-size 1000 --ack durable; rss
run stream --concurrency 4 --connections 4 --batch-size 1000 --inflight 8 --ack durable; rss
echo "== for reference: unary with ACK_MODE_ACCEPTED (no wait for the fsync)"
run unary --concurrency 64 --connections 4 --ack accepted; rss
kill -TERM $GP; wait $GP || true
echo "  stored: $(du -sh "$DATA" | cut -f1) in $(ls "$DATA" | wc -l) segment(s)"
rm -rf "$DATA"
