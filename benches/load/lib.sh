# Shared by the load scripts: tools check, a work folder, processes started pinned and stopped by
# PID on exit, free ports, and the nginx upstream answering a small JSON body.
# Source it; it sets ROOT, BIN, WORK, PIDS.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-"$ROOT/target/release/portcullis"} # BIN=... to measure another build

need() { # need TOOL...: fail unless every tool is installed
    for tool in "$@"; do
        command -v "$tool" >/dev/null ||
            { echo "missing $tool (Debian: nginx haproxy wrk; linux-perf, valgrind)" >&2; exit 1; }
    done
    [ -x "$BIN" ] || { echo "missing $BIN: run cargo build --release" >&2; exit 1; }
}

WORK=$(mktemp -d /tmp/portcullis-load.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}

start() { # start CORE LOG CMD...: run pinned to CORE, remember the pid
    local core=$1 log=$2
    shift 2
    taskset -c "$core" "$@" >"$log" 2>&1 &
    PIDS+=($!)
}

stop_last() {
    local pid=${PIDS[-1]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'PIDS[-1]'
}

nginx_conf() { # nginx_conf NAME HTTP_BLOCK: $WORK/NAME.conf, one worker in the foreground, no logs
    cat >"$WORK/$1.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1.err;
events { worker_connections ${NGINX_CONNECTIONS:-4096}; }
http {
    access_log off;
    keepalive_requests 10000000;
$2
}
CONF
}

bench_cert() { # bench_cert: one self-signed ECDSA P-256 certificate for bench.test, $WORK/cert.pem and key.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
        -addext subjectAltName=DNS:bench.test -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
}

tls_sessions() { # tls_sessions PORT PATH true|false [HEADER]: two reconnects offering the session
    # before them must (true) or must not (false) be resumed, over TLS 1.3, each answering 200.
    local r
    r=$(python3 "$(dirname "${BASH_SOURCE[0]}")/../../tests/tls_client.py" "$1" \
        ${4:+--header "$4"} --get "$2" --resume 2)
    python3 -c 'import json, sys
r = json.loads(sys.argv[1]); want = sys.argv[2] == "true"
assert r.get("version") == "TLSv1.3", r
assert r.get("resumed") == [want, want], r
assert r.get("resumed_statuses") == [[200], [200]], r' "$r" "$3" ||
        { echo "TLS sessions on port $1: $r (resumption expected: $3)" >&2; exit 1; }
}

start_upstream() { # start_upstream CORE: nginx on a free port, in $UP
    UP=$(port)
    nginx_conf upstream "    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP;
        location / { default_type application/json; return 200 '{\"ok\":true,\"service\":\"bench\"}'; }
    }"
    start "$1" "$WORK/upstream.log" nginx -c "$WORK/upstream.conf" -p "$WORK"
    wait_port "$UP"
}

# hs_routes_config: after start_upstream, a one-thread portcullis config in $WORK/portcullis.yaml
# listening on a free port ($GW) with four routes to the upstream: /off/ (no auth), /hs/ (HS256
# through the verified-token cache), /hs-nocache/ (HS256, cache: false) and /hs-expr/ (as /hs/
# with one CEL rule, issue 17's first example); $TOKEN is valid for all. Used by the per-request counting scripts (allocs.sh, instructions.sh).
ISSUER=https://issuer.example
SECRET="benchmark-secret-benchmark-secret-0123456789"
hs_routes_config() {
    local secret=$SECRET
    GW=$(port)
    cat >"$WORK/portcullis.yaml" <<CONF
server: {listen: ["127.0.0.1:$GW"], threads: 1}
upstreams:
  api: {peers: ["127.0.0.1:$UP"]}
keys:
  hs: {secret: "$secret"}
auth:
  hs:         {keys: hs, algorithms: [HS256], issuer: "$ISSUER"}
  hs_nocache: {keys: hs, algorithms: [HS256], issuer: "$ISSUER", cache: false}
  hs_expr:
    keys: hs
    algorithms: [HS256]
    issuer: "$ISSUER"
    require: [{expr: 'claims.tier == "gold" || request.method == "GET"'}]
routes:
  - {prefix: /off/, upstream: api}
  - {prefix: /hs/, upstream: api, auth: hs}
  - {prefix: /hs-nocache/, upstream: api, auth: hs_nocache}
  - {prefix: /hs-expr/, upstream: api, auth: hs_expr}
CONF
    TOKEN=$("$BIN" token --secret "$secret" --alg HS256 --sub user-1 --iss "$ISSUER" --ttl 2h)
}

nginx_proxy_conf() { # nginx_proxy_conf NAME PORT [HTTP_LINES]: nginx as a plain keep-alive reverse proxy to $UP
    nginx_conf "$1" "${3:-}
    upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:$2;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
}

to_ms() { # 1.23ms | 456.00us | 1.02s -> milliseconds
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'
}

haproxy_head() { # haproxy_head: HAProxy's global, defaults and the backend `be` (the upstream)
    cat <<CONF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
backend be
    http-reuse always
    server s1 127.0.0.1:$UP
CONF
}

# haproxy_frontend NAME PORT ALG KEY [ISS]: a frontend to `be` that, unless ALG is "none", lets
# through only a token with that alg, a valid signature, an unexpired exp (and that iss).
haproxy_frontend() {
    cat <<EOF
frontend $1
    bind 127.0.0.1:$2
EOF
    if [ "$3" != none ]; then
        cat <<EOF
    http-request deny deny_status 401 unless { req.hdr(authorization) -m found }
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.alg) -m str $3 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$4") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
EOF
        [ -z "${5:-}" ] ||
            echo "    http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str $5 }"
    fi
    echo "    default_backend be"
}
