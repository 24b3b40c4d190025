#!/usr/bin/env bash
# Side-by-side load benchmark on one machine: portcullis (auth off, HS256, RS256, ES256, with and
# without the verified-token cache), nginx as a plain reverse proxy (the ceiling), and HAProxy 2.6
# with jwt_verify (the peer that verifies JWTs natively). Same token, same loopback nginx
# upstream, keep-alive everywhere, wrk -t1 -c64. The proxy under test is pinned to core 0 with one
# worker thread; wrk and the upstream share core 1.
#
# Needs: a release build (cargo build --release), and Debian's nginx, haproxy and wrk
# (apt-get install nginx haproxy wrk). It installs nothing and stops everything it started.
#
# Usage: benches/load/run.sh            (DURATION=10s CONNECTIONS=64 by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
KEYS="$ROOT/tests/keys"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
SECRET="benchmark-secret-benchmark-secret-0123456789"
need nginx haproxy wrk taskset curl python3

# --- the upstream: nginx answering a small JSON body -------------------------------------------
start_upstream "$LOAD_CORE"

# --- tokens ------------------------------------------------------------------------------------
CLAIMS=(--sub user-1234567890 --iss https://issuer.example --aud api --ttl 2h --claim scope="read:items write:items")
TOKEN_HS=$("$BIN" token --secret "$SECRET" --alg HS256 "${CLAIMS[@]}")
TOKEN_RS=$("$BIN" token --key "$KEYS/rsa_private.pem" --alg RS256 "${CLAIMS[@]}")
TOKEN_ES=$("$BIN" token --key "$KEYS/ec_private.pem" --alg ES256 "${CLAIMS[@]}")
# A token with one signature character changed, well inside the signature (the last character
# carries padding bits that lenient decoders ignore).
bad() {
    local t=$1 n=${#1}
    local c=${t:n-10:1}
    [ "$c" = A ] && c=B || c=A
    echo "${t:0:n-10}$c${t:n-9}"
}

# --- portcullis --------------------------------------------------------------------------------
GW=$(port); GW_ADMIN=$(port)
cat >"$WORK/portcullis.yaml" <<EOF
server: {listen: ["127.0.0.1:$GW"], admin: "127.0.0.1:$GW_ADMIN", threads: 1}
upstreams:
  api: {peers: ["127.0.0.1:$UP"]}
keys:
  hs: {secret: "$SECRET"}
  rs: {pem_file: "$KEYS/rsa_public.pem"}
  es: {pem_file: "$KEYS/ec_public.pem"}
auth:
  hs:         {keys: hs, algorithms: [HS256], issuer: "https://issuer.example", audience: api}
  rs:         {keys: rs, algorithms: [RS256], issuer: "https://issuer.example", audience: api}
  es:         {keys: es, algorithms: [ES256], issuer: "https://issuer.example", audience: api}
  hs_nocache: {keys: hs, algorithms: [HS256], issuer: "https://issuer.example", audience: api, cache: false}
  rs_nocache: {keys: rs, algorithms: [RS256], issuer: "https://issuer.example", audience: api, cache: false}
  es_nocache: {keys: es, algorithms: [ES256], issuer: "https://issuer.example", audience: api, cache: false}
routes:
  - {prefix: /off/, upstream: api}
  - {prefix: /hs/, upstream: api, auth: hs}
  - {prefix: /rs/, upstream: api, auth: rs}
  - {prefix: /es/, upstream: api, auth: es}
  - {prefix: /hs-nocache/, upstream: api, auth: hs_nocache}
  - {prefix: /rs-nocache/, upstream: api, auth: rs_nocache}
  - {prefix: /es-nocache/, upstream: api, auth: es_nocache}
EOF
"$BIN" check -c "$WORK/portcullis.yaml" >/dev/null

# --- nginx, plain reverse proxy ----------------------------------------------------------------
NG=$(port)
cat >"$WORK/proxy.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/proxy.pid;
error_log $WORK/proxy.err;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:$NG;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF

# --- HAProxy: plain, and jwt_verify per algorithm (alg pinned, exp checked) --------------------
HA=$(port)
haproxy_conf() { # haproxy_conf ALG KEY  (ALG "none" = no verification)
    cat <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:$HA
EOF
    if [ "$1" != none ]; then
        cat <<EOF
    http-request deny deny_status 401 unless { req.hdr(authorization) -m found }
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.alg) -m str $1 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$2") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
EOF
    fi
    cat <<EOF
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:$UP
EOF
}

# --- measuring ----------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
to_ms() { # 1.23ms | 456.00us | 1.02s -> milliseconds
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'
}
check_status() { # check_status WANT URL [TOKEN]
    local got
    if [ -n "${3:-}" ]; then
        got=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $3" "$2")
    else
        got=$(curl -s -o /dev/null -w '%{http_code}' "$2")
    fi
    [ "$got" = "$1" ] || { echo "correctness: $2 gave $got, expected $1" >&2; exit 1; }
}
measure() { # measure NAME URL [TOKEN]
    local name=$1 url=$2 token=${3:-} out
    if [ -n "$token" ]; then
        check_status 200 "$url" "$token"
        check_status 401 "$url" "$(bad "$token")"
        check_status 401 "$url"
        out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $token" "$url")
    else
        check_status 200 "$url"
        out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
    fi
    local rps p50 p99 max non2xx
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
    max=$(to_ms "$(awk '$1=="Latency" {print $4; exit}' <<<"$out")")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    [ -z "$non2xx" ] || { echo "$name: $non2xx non-2xx responses under load" >&2; exit 1; }
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "$max" >>"$RESULTS"
    printf '%-26s %9s req/s  p50 %6s ms  p99 %6s ms  max %7s ms\n' "$name" "$rps" "$p50" "$p99" "$max" >&2
}

echo "warming up and measuring ($DURATION per row, $CONNECTIONS connections)..." >&2
start "$PROXY_CORE" "$WORK/portcullis.log" "$BIN" run -c "$WORK/portcullis.yaml"
wait_port "$GW"
G="http://127.0.0.1:$GW"
measure "portcullis auth off" "$G/off/x"
measure "portcullis HS256" "$G/hs/x" "$TOKEN_HS"
measure "portcullis RS256" "$G/rs/x" "$TOKEN_RS"
measure "portcullis ES256" "$G/es/x" "$TOKEN_ES"
measure "portcullis HS256 no cache" "$G/hs-nocache/x" "$TOKEN_HS"
measure "portcullis RS256 no cache" "$G/rs-nocache/x" "$TOKEN_RS"
measure "portcullis ES256 no cache" "$G/es-nocache/x" "$TOKEN_ES"
RSS=$(awk '/VmRSS/ {print $2}' "/proc/${PIDS[-1]}/status")
stop_last

start "$PROXY_CORE" "$WORK/nginx.log" nginx -c "$WORK/proxy.conf" -p "$WORK"
wait_port "$NG"
measure "nginx plain proxy" "http://127.0.0.1:$NG/x"
stop_last

for row in "none -" "HS256 $SECRET" "RS256 $KEYS/rsa_public.pem" "ES256 $KEYS/ec_public.pem"; do
    set -- $row
    haproxy_conf "$1" "$2" >"$WORK/haproxy.cfg"
    start "$PROXY_CORE" "$WORK/haproxy.log" haproxy -f "$WORK/haproxy.cfg" -db
    wait_port "$HA"
    case $1 in
        none) measure "haproxy plain proxy" "http://127.0.0.1:$HA/x" ;;
        HS256) measure "haproxy jwt_verify HS256" "http://127.0.0.1:$HA/x" "$TOKEN_HS" ;;
        RS256) measure "haproxy jwt_verify RS256" "http://127.0.0.1:$HA/x" "$TOKEN_RS" ;;
        ES256) measure "haproxy jwt_verify ES256" "http://127.0.0.1:$HA/x" "$TOKEN_ES" ;;
    esac
    stop_last
done

# --- report -------------------------------------------------------------------------------------
rps() { awk -F'\t' -v n="$1" '$1==n {print $2}' "$RESULTS"; }
ratio() { awk -v a="$(rps "$1")" -v b="$(rps "$2")" 'BEGIN { printf "%.2f", a/b }'; }
echo
echo "| row | requests/s | p50 ms | p99 ms | max ms |"
echo "|---|---:|---:|---:|---:|"
awk -F'\t' '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}' "$RESULTS"
echo
echo "| ratio | value |"
echo "|---|---:|"
echo "| portcullis auth off / nginx plain | $(ratio 'portcullis auth off' 'nginx plain proxy') |"
echo "| portcullis HS256 / haproxy HS256 | $(ratio 'portcullis HS256' 'haproxy jwt_verify HS256') |"
echo "| portcullis RS256 (cache) / haproxy RS256 | $(ratio 'portcullis RS256' 'haproxy jwt_verify RS256') |"
echo "| portcullis ES256 (cache) / haproxy ES256 | $(ratio 'portcullis ES256' 'haproxy jwt_verify ES256') |"
echo "| portcullis RS256 no cache / haproxy RS256 | $(ratio 'portcullis RS256 no cache' 'haproxy jwt_verify RS256') |"
echo "| portcullis ES256 no cache / haproxy ES256 | $(ratio 'portcullis ES256 no cache' 'haproxy jwt_verify ES256') |"
echo "| portcullis HS256 / portcullis auth off | $(ratio 'portcullis HS256' 'portcullis auth off') |"
echo "| portcullis auth off / haproxy plain | $(ratio 'portcullis auth off' 'haproxy plain proxy') |"
echo
echo "portcullis RSS after its rows: ${RSS} KiB"
