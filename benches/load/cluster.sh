#!/usr/bin/env bash
# Shared rate limits: the same per-sub limit kept in the process (`scope: local`), in a
# loopback Redis (`scope: cluster`, one GCRA script step per request) and batched through it
# (`sync: 100ms`), side by side. HS256 token
# through the verified-token cache, keep-alive, wrk -t1 -c64; portcullis on core 0 with one
# worker thread; wrk, the nginx upstream and redis-server share core 1. The limit is set high
# enough that nothing is refused, so the rows measure the cost of the check itself. Also reports
# Redis's CPU time per 1000 requests of the cluster rows; `cluster sync` is the batched mode
# (`sync: 100ms`: admitted in-process, counts pushed every 100 ms).
#
# Needs: a release build, Debian's nginx, wrk and redis-server. It installs nothing and stops
# everything it started.
#
# Usage: benches/load/cluster.sh          (DURATION=10s CONNECTIONS=64 ROUNDS=3 by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
need nginx wrk redis-server taskset curl

start_upstream 1
REDIS=$(port)
start 1 "$WORK/redis.log" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no
REDIS_PID=${PIDS[-1]}
wait_port "$REDIS"

GW=$(port)
cat >"$WORK/portcullis.yaml" <<CONF
server: {listen: ["127.0.0.1:$GW"], threads: 1}
cluster:
  redis: {url: "redis://127.0.0.1:$REDIS/0", timeout: 100ms}
upstreams:
  api: {peers: ["127.0.0.1:$UP"]}
keys:
  hs: {secret: "$SECRET"}
auth:
  hs: {keys: hs, algorithms: [HS256]}
rate_limits:
  local:   {key: "claim:sub", rate: 1000000/s, burst: 1000000000}
  cluster: {key: "claim:sub", rate: 1000000/s, burst: 1000000000, scope: cluster}
  synced:  {key: "claim:sub", rate: 1000000/s, burst: 1000000000, scope: cluster, sync: 100ms}
routes:
  - {prefix: /hs/, upstream: api, auth: hs}
  - {prefix: /local/, upstream: api, auth: hs, rate_limit: local}
  - {prefix: /cluster/, upstream: api, auth: hs, rate_limit: cluster}
  - {prefix: /synced/, upstream: api, auth: hs, rate_limit: synced}
CONF
TOKEN=$("$BIN" token --secret "$SECRET" --alg HS256 --sub user-1 --ttl 2h)
start 0 "$WORK/portcullis.log" "$BIN" run -c "$WORK/portcullis.yaml"
wait_port "$GW"
G="http://127.0.0.1:$GW"
for _ in $(seq 100); do # until it has connected to Redis
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$G/cluster/x")" = 200 ] &&
        redis-cli -p "$REDIS" exists portcullis:rl:cluster:user-1 | grep -q 1 && break
    sleep 0.1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # measure NAME URL
    local name=$1 url=$2 out before after rps p50 p99 non2xx extra=""
    before=$(cpu_ticks "$REDIS_PID")
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $TOKEN" "$url")
    after=$(cpu_ticks "$REDIS_PID")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    [ -z "$non2xx" ] || { echo "$name: $non2xx non-2xx responses" >&2; exit 1; }
    local total
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    if [ "$name" != "no limit" ] && [ "$name" != "local" ]; then
        # clock ticks (1/100 s) -> ms of Redis CPU per 1000 requests
        extra=$(awk -v t=$((after - before)) -v n="$total" 'BEGIN { printf "  redis %.2f ms CPU / 1k req", t * 10 * 1000 / n }')
    fi
    printf 'round %s  %-14s %9s req/s  p50 %6s ms  p99 %6s ms%s\n' "$round" "$name" "$rps" "$p50" "$p99" "$extra"
}
for round in $(seq "$ROUNDS"); do
    measure "no limit" "$G/hs/x"
    measure "local" "$G/local/x"
    measure "cluster exact" "$G/cluster/x"
    measure "cluster sync" "$G/synced/x"
done
