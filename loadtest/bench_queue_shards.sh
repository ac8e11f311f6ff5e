#!/usr/bin/env bash
# Issue 15 (queue half) in one sitting: ads end to end on the Redis queue, 2 gateways and
# 4 workers (the e2e row of bench_backends.sh), with K = queue.redis.shards:
#   1. one Redis, K=1        (the layout of today's queue)
#   2. one Redis, K=3        (three shards on one server: only the per-claim cost of shards)
#   3. 3-node cluster, K=1   (the queue on one node, as today on a cluster)
#   4. 3-node cluster, K=3   (one shard per node)
# and, when BASE is set to a release target dir built from the commit before the shards
# (e.g. b537ac3), row 0: one Redis with that build ("today").
# Each configuration runs twice on a fresh queue: unlimited submitters (ads/s acked: the
# throughput; submissions outrun the workers, so Redis also stores a growing backlog), and
# submitters held at RATE ads/s (default 6000, below every configuration's throughput, so
# submitted = completed and the cost per ad is clean). Per run: ads/s acked (the load
# tester's measured window), every redis-server's CPU (cores over the run) and
# `INFO commandstats` calls (reset before the run), the Redis CPU and commands per 1,000
# completed ads (completions from the queue's `P:done` counters, over the same window as
# the CPU), and the top commands by time.
# Usage: loadtest/bench_queue_shards.sh     Env: DUR (measured seconds, default 10), RATE,
#        BASE (see above) and BASE_SRC (its source checkout, for its configs/default.toml;
#        default BASE/../..), BIN (release dir of this build, default target/release),
#        SKIP_BUILD=1 (use BIN as it is), ONLY (a regex: run only the labels it matches).
# Each run waits until no compiler (rustc) runs, samples twice a second whether one
# starts during the run, and says so ("quiet" or "NOT quiet").
# Ports: redis 6421, cluster 7204-7206, gateways 50801-50802 (the session's own range).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
RATE=${RATE:-6000}
B=${BIN:-target/release}
[ -n "${SKIP_BUILD:-}" ] || CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -q -p adflow-gateway -p adflow-loadtest
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
# The whole machine: busy and steal ticks (all cores).
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8, $9}' /proc/stat; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
TMP=$(mktemp -d /tmp/adflow-bench15.XXXXXX)
SP=6421
CP=(7204 7205 7206)
GA_PORT=50801
GB_PORT=50802
HZ=$(getconf CLK_TCK)

redis-server --port $SP --bind 127.0.0.1 --save '' --appendonly no --daemonize no --logfile "$TMP/single.log" &
PIDS+=($!)
for p in "${CP[@]}"; do
  mkdir -p "$TMP/c$p"
  redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$TMP/c$p/nodes.conf" \
    --dir "$TMP/c$p" --save '' --appendonly no --daemonize no --logfile "$TMP/c$p/redis.log" &
  PIDS+=($!)
done
wait_port $SP
for p in "${CP[@]}"; do wait_port "$p"; done
redis-cli --cluster create "${CP[@]/#/127.0.0.1:}" --cluster-yes >"$TMP/cluster.log"
for _ in $(seq 1 100); do redis-cli -p "${CP[0]}" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1; done
pid_of() { redis-cli -p "$1" info server | tr -d '\r' | awk -F: '/^process_id/{print $2}'; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(date -u +%FT%TZ)"
echo "== compilers running at the start: $(pgrep -x rustc | wc -l) (0: the machine was quiet apart from this)"
echo "== queue shard prefixes (K=3) and where the cluster puts them:"
for t in 'adflow:q' 'adflow:q:1.4' 'adflow:q:2'; do
  echo "   {$t} slot $(redis-cli -p "${CP[0]}" cluster keyslot "{$t}")"
done
redis-cli -p "${CP[0]}" cluster slots | paste -sd' ' | sed 's/^/   slots: /'

# run LABEL BIN_DIR "PORTS" SHARDS [LOADTEST ARGS]: 2 gateways + the e2e load on the
# Redis at PORTS.
run() {
  local label=$1 bin=$2 ports=$3 shards=$4
  shift 4
  [[ "$label" =~ ${ONLY:-.} ]] || return 0
  local name=${label//[^A-Za-z0-9]/_}
  for _ in $(seq 1 1200); do [ -z "$(pgrep -x rustc)" ] && break; sleep 0.5; done
  local p cfg="$TMP/$name.toml" nodes=""
  echo "== $label"
  for p in $ports; do redis-cli -p "$p" FLUSHALL >/dev/null 2>&1 || true; redis-cli -p "$p" CONFIG RESETSTAT >/dev/null; done
  if [ "$(echo $ports | wc -w)" -gt 1 ]; then
    for p in $ports; do nodes+="\"redis://127.0.0.1:$p/\","; done
    printf '[redis]\ncluster_nodes = [%s]\n' "${nodes%,}" >"$cfg"
  else
    printf '[redis]\nurl = "redis://127.0.0.1:%s/"\n' "$ports" >"$cfg"
  fi
  printf '[storage]\nbackend = "redis"\n[queue]\nbackend = "redis"\n' >>"$cfg"
  # The build before the shards does not know the key.
  [ "$shards" = "-" ] || printf '[queue.redis]\nshards = %s\n' "$shards" >>"$cfg"
  local g=() port cwd=$PWD
  if [ "$shards" = "-" ]; then
    cwd="$TMP/base-cwd"
    mkdir -p "$cwd/configs"
    cp "${BASE_SRC:-$bin/../..}/configs/default.toml" "$cwd/configs/"
  fi
  for port in $GA_PORT $GB_PORT; do
    (cd "$cwd" && exec env ADFLOW_SERVER__LISTEN=127.0.0.1:$port ADFLOW_LOG__LEVEL=warn ADFLOW_METRICS__LISTEN= ADFLOW_DASHBOARD__LISTEN= \
      ADFLOW_STORAGE__RESILIENCE__SPILL_DIR="$TMP/$name-$port/spill" ADFLOW_WORKERS__IN_PROCESS=0 \
      "$bin/adflow-gateway" --config "$cfg") & g+=($!)
    PIDS+=($!)
    wait_port $port
  done
  local rp=() c0=() c1=()
  for p in $ports; do rp+=("$(pid_of "$p")"); done
  for p in "${rp[@]}"; do c0+=("$(cpu "$p")"); done
  local g0=$(( $(cpu ${g[0]}) + $(cpu ${g[1]}) )) t0
  t0=$(date +%s.%N)
  (while sleep 0.5; do pgrep -x rustc >/dev/null && echo busy; done) >"$TMP/$name.busy" & local sampler=$!
  local m0
  m0=$(machine)
  "$bin/adflow-loadtest" e2e --addr 127.0.0.1:$GA_PORT,127.0.0.1:$GB_PORT -c 8 --connections 4 --batch-size 100 \
    --duration "$DUR" --warmup 1 --workers 4 --quiet "$@" >"$TMP/$name.out" 2>&1 & local lt=$!
  local l0=0 l1=0
  while kill -0 $lt 2>/dev/null; do l1=$(cpu $lt 2>/dev/null || echo "$l1"); sleep 0.2; done
  wait $lt || true
  grep -E 'ads acked|submit' "$TMP/$name.out" || true
  local m1
  m1=$(machine)
  local t1 g1 done=0 submitted=0 i=0 calls total_calls=0 total_cpu=0
  t1=$(date +%s.%N)
  kill $sampler 2>/dev/null; wait $sampler 2>/dev/null || true
  if [ -s "$TMP/$name.busy" ]; then echo "  NOT quiet: a compiler ran during $(wc -l <"$TMP/$name.busy") of the half-second samples"; else echo "  quiet: no compiler ran during the run"; fi
  g1=$(( $(cpu ${g[0]}) + $(cpu ${g[1]}) ))
  for p in "${rp[@]}"; do c1+=("$(cpu "$p")"); done
  # Completions and submissions: every shard's counters (any node of a cluster answers
  # for its own keys; -c follows redirects).
  local pre
  for pre in 'adflow:q' 'adflow:q:1.4' 'adflow:q:2'; do
    local pp=${ports%% *}
    done=$(( done + $(redis-cli -c -p "$pp" GET "{$pre}:done" | tr -dc 0-9 || echo 0) + 0 ))
    submitted=$(( submitted + $(redis-cli -c -p "$pp" GET "{$pre}:seq" | tr -dc 0-9 || echo 0) + 0 ))
  done
  local el
  el=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
  for p in $ports; do
    calls=$(redis-cli -p "$p" info commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_/{s+=$2} END{print s+0}')
    local evs
    evs=$(redis-cli -p "$p" info commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_(evalsha|eval):/{s+=$2} END{print s+0}')
    local cores
    cores=$(awk -v a="${c0[$i]}" -v b="${c1[$i]}" -v e="$el" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz/e}')
    printf '  redis :%s  %s cores  commandstats calls %s (scripts %s)\n' "$p" "$cores" "$calls" "$evs"
    total_calls=$(( total_calls + calls ))
    total_cpu=$(( total_cpu + ${c1[$i]} - ${c0[$i]} ))
    i=$(( i + 1 ))
  done
  awk -v cpu="$total_cpu" -v hz="$HZ" -v e="$el" -v d="$done" -v s="$submitted" -v c="$total_calls" \
    -v ga="$g0" -v gb="$g1" -v lt="$l1" -v m0="$m0" -v m1="$m1" 'BEGIN{
      split(m0, a, " "); split(m1, b, " ");
      printf "  all redis: %.2f cores; gateways: %.2f cores; load tester: %.2f cores; machine busy %.2f cores (steal %.2f)\n", cpu/hz/e, (gb-ga)/hz/e, lt/hz/e, (b[1]-a[1])/hz/e, (b[2]-a[2])/hz/e;
      printf "  %d ads submitted, %d completed in %.1f s\n", s, d, e;
      if (d > 0) printf "  per 1,000 completed ads: redis CPU %.1f ms, %.0f redis commands\n", cpu/hz*1000*1000/d, c*1000/d }'
  # Where the Redis time goes: the top commands over every node (calls per 1,000
  # completed ads; usec per call; share of all command time). Script bodies count as
  # evalsha, their inner commands again under their own names.
  for p in $ports; do redis-cli -p "$p" info commandstats | tr -d '\r'; done |
    awk -F'[:=,]' -v d="$done" '/^cmdstat_/{k=substr($1, 9); c[k]+=$3; u[k]+=$5} END{
      for (k in c) if (k != "evalsha" && k != "eval") t+=u[k];
      for (k in c) printf "    %-22s %9.0f calls/1k ads %7.2f us/call %5.1f%%\n", k, (d>0?c[k]*1000/d:0), u[k]/c[k], (k=="evalsha"||k=="eval")?0:100*u[k]/t}' |
    sort -k2 -n -r | head -14
  for x in "${g[@]}"; do kill -TERM "$x"; wait "$x" 2>/dev/null || true; done
}

for mode in max rate; do
  args=()
  [ $mode = max ] || args=(--rate "$RATE")
  m="unlimited submitters"
  [ $mode = max ] || m="submitters at $RATE ads/s"
  if [ -n "${BASE:-}" ]; then
    run "one Redis, the build before shards (today), $m" "$BASE" "$SP" - "${args[@]}"
  fi
  run "one Redis, K=1, $m" "$B" "$SP" 1 "${args[@]}"
  run "one Redis, K=3, $m" "$B" "$SP" 3 "${args[@]}"
  run "3-node cluster, K=1, $m" "$B" "${CP[*]}" 1 "${args[@]}"
  run "3-node cluster, K=3, $m" "$B" "${CP[*]}" 3 "${args[@]}"
done
echo "== compilers running at the end: $(pgrep -x rustc | wc -l)"
rm -rf "$TMP"
