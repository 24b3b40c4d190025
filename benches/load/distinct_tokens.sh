#!/usr/bin/env bash
# Memory under many distinct tokens: 100,000 different valid HS256 tokens (one per subject) sent
# round-robin for DURATION (default 60s) through a protected, per-sub rate-limited route, with
# the verified-token cache at its default size and at a small one. Reports the gateway's RSS
# before and after, and the throughput. Needs what run.sh needs.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-60s}
TOKENS=${TOKENS:-100000}
need nginx wrk taskset python3
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_upstream 1

python3 - "$SECRET" "$TOKENS" >"$WORK/tokens.txt" <<'EOF'
import base64, hmac, hashlib, json, sys, time
secret, n = sys.argv[1].encode(), int(sys.argv[2])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
exp = int(time.time()) + 7200
for i in range(n):
    body = b64(json.dumps({"sub": f"user-{i:06d}", "exp": exp, "scope": "read write"}, separators=(",", ":")).encode())
    msg = f"{head}.{body}".encode()
    sig = b64(hmac.new(secret, msg, hashlib.sha256).digest())
    print(f"{head}.{body}.{sig}")
EOF
cat >"$WORK/tokens.lua" <<EOF
local tokens, i = {}, 0
for line in io.lines("$WORK/tokens.txt") do tokens[#tokens + 1] = line end
request = function()
    i = i % #tokens + 1
    return wrk.format("GET", "/api/x", {["Authorization"] = "Bearer " .. tokens[i]})
end
EOF

for size in 65536 1024; do
    GW=$(port)
    cat >"$WORK/gw.yaml" <<EOF
server: {listen: ["127.0.0.1:$GW"], threads: 1}
upstreams: {api: {peers: ["127.0.0.1:$UP"]}}
keys: {hs: {secret: "$SECRET"}}
auth: {p: {keys: hs, algorithms: [HS256], cache_size: $size}}
rate_limits: {per_sub: {key: "claim:sub", rate: 100/s, burst: 100}}
routes: [{prefix: /api/, upstream: api, auth: p, rate_limit: per_sub}]
EOF
    start 0 "$WORK/gw.log" "$BIN" run -c "$WORK/gw.yaml"
    GW_PID=${PIDS[-1]}
    wait_port "$GW"
    before=$(rss "$GW_PID")
    out=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" -s "$WORK/tokens.lua" "http://127.0.0.1:$GW")
    after=$(rss "$GW_PID")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "| $TOKENS distinct tokens, cache_size $size | $rps req/s | RSS $before KiB -> $after KiB | non-2xx: ${non2xx:-0} |"
    stop_last
done
