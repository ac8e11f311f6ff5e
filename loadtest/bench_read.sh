#!/usr/bin/env bash
# Reading the event log back (issue 16), file store, release build, one sitting:
#   1. fill the store with N events (batch mode, durable acks);
#   2. `read` from the oldest event to the end: events/s and MB/s (goal >= 1M events/s);
#   3. follow-mode lag (now - received_at, p50/p99; goal p99 <= 50 ms) of a `read --follow`
#      while another loadtest process ingests at full load (stream mode), then at half of
#      that rate.
# Usage: loadtest/bench_read.sh   Env: EVENTS (default 5000000), DUR (seconds, default 10),
# PORT (default 50581), GW_ENV (extra VAR=value settings for the gateway), B (release binaries to use; default: build target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-5000000}; DUR=${DUR:-10}; PORT=${PORT:-50581}
# B: a directory holding release binaries to use as they are (default: build them here).
if [ -z "${B:-}" ]; then B=target/release; cargo build --release -q -p adflow-gateway -p adflow-loadtest; fi
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(date -u +%FT%TZ)"
DATA=$(mktemp -d /tmp/adflow-read.XXXXXX)
env ADFLOW_STORAGE__FILE__DIR=$DATA/events ADFLOW_QUEUE__PATH=$DATA/queue.redb ADFLOW_SERVER__LISTEN=127.0.0.1:$PORT \
  ADFLOW_METRICS__LISTEN= ADFLOW_DASHBOARD__LISTEN= ADFLOW_WORKERS__IN_PROCESS=0 ADFLOW_LOG__LEVEL=warn ${GW_ENV:-} $B/adflow-gateway & GP=$!
trap 'kill -TERM $GP 2>/dev/null; wait $GP 2>/dev/null; rm -rf "$DATA"' EXIT
wait_port "$PORT"
L="$B/adflow-loadtest"; A="--addr 127.0.0.1:$PORT"
echo "== fill: $EVENTS events"
$L batch $A --count "$EVENTS" --concurrency 8 --connections 4 --batch-size 1000 --ack durable --quiet | grep -E 'throughput|events '
echo "  stored: $(du -sh "$DATA/events" | cut -f1)"
echo "== read from the oldest event to the end (batches of 10000)"
$L read $A --from oldest --batch-size 10000 --duration 600 --quiet
echo "== follow-mode lag under full ingest load (stream mode, durable acks)"
$L stream $A --concurrency 4 --connections 4 --batch-size 1000 --inflight 8 --ack durable --duration $((DUR + 2)) --warmup 0 --quiet > "$DATA/ingest.txt" &
IP=$!
$L read $A --follow --duration "$DUR" --warmup 1 --quiet
wait $IP; echo "  ingest meanwhile: $(grep -E 'throughput|latency' "$DATA/ingest.txt" | tr -s ' ' | tr '\n' ' ')"
RATE=$(grep -E 'throughput' "$DATA/ingest.txt" | awk '{print int($2/2)}')
# The lag above is at least the events the load generator keeps in flight divided by the
# rate (Little's law: 4 streams x 8 batches x 1000 = 32k events). Full load with 2 batches
# in flight per stream shows what the gateway adds when the client does not queue.
echo "== follow-mode lag under full ingest load, 2 batches in flight per stream"
$L stream $A --concurrency 4 --connections 4 --batch-size 1000 --inflight 2 --ack durable --duration $((DUR + 2)) --warmup 0 --quiet > "$DATA/ingest2.txt" &
IP=$!
$L read $A --follow --duration "$DUR" --warmup 1 --quiet
wait $IP; echo "  ingest meanwhile: $(grep -E 'throughput|latency' "$DATA/ingest2.txt" | tr -s ' ' | tr '\n' ' ')"
echo "== follow-mode lag at half that rate ($RATE events/s)"
$L stream $A --concurrency 4 --connections 4 --batch-size 1000 --inflight 8 --ack durable --rate "$RATE" --duration $((DUR + 2)) --warmup 0 --quiet > "$DATA/ingest.txt" &
IP=$!
$L read $A --follow --duration "$DUR" --warmup 1 --quiet
wait $IP; echo "  ingest meanwhile: $(grep -E 'throughput|latency' "$DATA/ingest.txt" | tr -s ' ' | tr '\n' ' ')"
echo "  gateway peak RSS: $(grep VmHWM /proc/$GP/status | awk '{print $2/1024 " MB"}')"
