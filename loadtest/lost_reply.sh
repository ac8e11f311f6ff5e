#!/usr/bin/env bash
# Lost Redis replies must not store a batch twice (promise 2). Starts a throwaway
# redis-server (no persistence) and a gateway on the redis backend, sends exactly N events
# in durable batches while Redis is paused four times past the store's 2 s response
# timeout (`CLIENT PAUSE 2300 ALL`), then reads the whole stream back and prints how many
# events it holds: more than N means some batch was written twice.
# Usage: loadtest/lost_reply.sh RELEASE_DIR   Env: N (default 1500000), PORT, REDIS_PORT.
set -euo pipefail
B=$1; N=${N:-1500000}; PORT=${PORT:-50701}; RP=${REDIS_PORT:-6397}
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
DATA=$(mktemp -d /tmp/adflow-lost.XXXXXX)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$DATA" > /dev/null & RPID=$!
wait_port "$RP"
env ADFLOW_STORAGE__BACKEND=redis ADFLOW_STORAGE__REDIS__URL=redis://127.0.0.1:$RP/ \
  ADFLOW_STORAGE__RESILIENCE__SPILL_DIR=$DATA/spill ADFLOW_QUEUE__PATH=$DATA/queue.redb \
  ADFLOW_SERVER__LISTEN=127.0.0.1:$PORT ADFLOW_METRICS__LISTEN= ADFLOW_DASHBOARD__LISTEN= \
  ADFLOW_WORKERS__IN_PROCESS=0 ADFLOW_LOG__LEVEL=warn "$B/adflow-gateway" 2> "$DATA/gateway.log" & GP=$!
trap 'kill -TERM $GP 2>/dev/null; wait $GP 2>/dev/null; kill $RPID 2>/dev/null; wait $RPID 2>/dev/null; rm -rf "$DATA"' EXIT
wait_port "$PORT"
( sleep 2; for _ in 1 2 3 4; do redis-cli -p "$RP" CLIENT PAUSE 2300 ALL > /dev/null; sleep 2.6; done ) & PP=$!
"$B/adflow-loadtest" batch --addr 127.0.0.1:$PORT --count "$N" --concurrency 8 --connections 4 \
  --batch-size 1000 --ack durable --quiet | grep -E 'throughput|events |status'
wait $PP
sleep 3
echo "sent: $N; the stream holds:"
"$B/adflow-loadtest" read --addr 127.0.0.1:$PORT --from oldest --batch-size 10000 --duration 60 --quiet | grep -E 'throughput'
