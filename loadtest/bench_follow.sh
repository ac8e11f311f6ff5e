#!/usr/bin/env bash
# Follow-mode lag at full ingest load (issue 16), two builds alternated in one sitting.
# Each run starts a fresh gateway (file store, built-in defaults: it runs in an empty
# working directory, so builds with different config keys compare fairly), then for DUR
# seconds a `stream` ingest at full speed (4 streams x INFLIGHT batches of 1000 events in
# flight, durable acks) beside a `read --follow`, and prints the follow lag
# (now - received_at), the ingest throughput and ack latency, and the CPU seconds each
# process used. FILL events are stored first (batch mode) when set, so the dedup window
# and the checkpoints have grown as on a gateway that has been running for a while.
# Usage: loadtest/bench_follow.sh OLD_RELEASE_DIR NEW_RELEASE_DIR
# Env: RUNS (pairs, default 3), DUR (default 10), INFLIGHT (default 2), FILL (default 0),
# PORT (default 50591), GW_ENV (extra VAR=value settings for both gateways).
set -uo pipefail
OLD=$(realpath "$1"); NEW=$(realpath "$2")
RUNS=${RUNS:-3}; DUR=${DUR:-10}; INFLIGHT=${INFLIGHT:-2}; FILL=${FILL:-0}; PORT=${PORT:-50591}
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
one() {
  local B=$1 DATA; DATA=$(mktemp -d /tmp/adflow-follow.XXXXXX)
  (cd "$DATA" && exec env ADFLOW_STORAGE__FILE__DIR="$DATA/events" ADFLOW_QUEUE__PATH="$DATA/queue.redb" \
    ADFLOW_SERVER__LISTEN=127.0.0.1:$PORT ADFLOW_METRICS__LISTEN= ADFLOW_DASHBOARD__LISTEN= \
    ADFLOW_WORKERS__IN_PROCESS=0 ADFLOW_LOG__LEVEL=error ${GW_ENV:-} "$B/adflow-gateway") & local GP=$!
  wait_port "$PORT" || { echo "gateway did not start"; return 1; }
  local L="$B/adflow-loadtest" A="--addr 127.0.0.1:$PORT"
  if [ "$FILL" -gt 0 ]; then
    $L batch $A --count "$FILL" --concurrency 8 --connections 4 --batch-size 1000 --ack durable --quiet | grep -E '^  throughput' | sed 's/^  /  fill /'
  fi
  /usr/bin/time -f "%U %S" -o "$DATA/icpu" $L stream $A --concurrency 4 --connections 4 --batch-size 1000 \
    --inflight "$INFLIGHT" --ack durable --duration $((DUR + 2)) --warmup 0 --quiet > "$DATA/ingest.txt" &
  local IP=$!
  /usr/bin/time -f "%U %S" -o "$DATA/rcpu" $L read $A --follow --duration "$DUR" --warmup 1 --quiet | grep -E 'lag' | sed 's/ (now.*//'
  wait $IP
  echo "  ingest: $(grep -E 'throughput|latency' "$DATA/ingest.txt" | sed 's/(.*//' | tr -s ' ' | tr '\n' ' ')"
  echo "  cpu seconds: gateway $(awk '{print ($14+$15)/100}' /proc/$GP/stat) ingest $(awk '{print $1+$2}' "$DATA/icpu") reader $(awk '{print $1+$2}' "$DATA/rcpu")"
  echo "  gateway wrote $(awk '/^write_bytes/ {print int($2/1048576)}' /proc/$GP/io) MiB to disk for $(du -sm "$DATA/events" | cut -f1) MiB of segments"
  kill -TERM $GP; wait $GP; rm -rf "$DATA"
}
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(date -u +%FT%TZ)"
echo "== follow lag at full load: $INFLIGHT batches in flight per stream, ${DUR} s, fill $FILL"
for r in $(seq 1 "$RUNS"); do
  echo "-- run $r old ($OLD)"; one "$OLD"
  echo "-- run $r new ($NEW)"; one "$NEW"
done
