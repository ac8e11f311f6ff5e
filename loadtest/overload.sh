#!/usr/bin/env bash
# 2x streaming overload plus ordinary unary callers, one gateway build at a time.
# Usage: loadtest/overload.sh RELEASE_DIR LABEL   (RELEASE_DIR holds adflow-gateway and adflow-loadtest)
set -u
dir=$1; label=$2
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
data=$(mktemp -d /tmp/adflow-ov.XXXXXX)
cwd=$dir/../..; [ -f "$cwd/configs/default.toml" ] || cwd=$dir
(cd "$cwd" && exec env ADFLOW_STORAGE__FILE__DIR=$data/events ADFLOW_QUEUE__PATH=$data/queue.redb ADFLOW_SERVER__LISTEN=127.0.0.1:50591 \
  ADFLOW_METRICS__LISTEN= ADFLOW_WORKERS__IN_PROCESS=0 ADFLOW_LOG__LEVEL=error "$dir/adflow-gateway") &
gp=$!
wait_port 50591
"$dir/adflow-loadtest" stream --concurrency 16 --connections 8 --batch-size 1000 --inflight 32 --ack durable --addr 127.0.0.1:50591 --duration 15 --warmup 1 --quiet > /tmp/ov-$label-stream.txt 2>&1 &
sp=$!
sleep 2
"$dir/adflow-loadtest" unary --concurrency 16 --connections 2 --ack durable --addr 127.0.0.1:50591 --duration 10 --warmup 0 --quiet > /tmp/ov-$label-unary.txt 2>&1
wait $sp
rss=$(grep VmHWM /proc/$gp/status | awk '{print $2/1024}')
kill -TERM $gp; wait $gp 2>/dev/null
rm -rf "$data"
echo "$label peak_rss=${rss}MB"
echo "  stream: $(grep -E 'throughput|status codes' /tmp/ov-$label-stream.txt | tr -s ' ' | tr '\n' ' ')"
echo "  unary:  $(grep -E 'throughput|status codes' /tmp/ov-$label-unary.txt | tr -s ' ' | tr '\n' ' ')"
