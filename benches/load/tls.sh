#!/usr/bin/env bash
# TLS and HTTP/2 side by side: portcullis (rustls; aws-lc-rs, and ring for comparison), nginx
# (OpenSSL) and HAProxy (OpenSSL), one ECDSA P-256 certificate, the same loopback nginx
# upstream (HTTP/1.1 keep-alive behind every proxy). Rows:
#   - HTTPS keep-alive with an HS256 token (wrk -t1 -c64): portcullis verifies it, HAProxy
#     jwt_verify verifies it, nginx proxies without a check (the ceiling);
#   - new TLS connections per second, one request each: full handshakes (h2load, against a
#     second listener of each proxy with session resumption off — h2load offers the previous
#     connection's session on every reconnect, so without that its handshakes are resumptions)
#     and resumed ones (wrk: OpenSSL keeps the session across its reconnects);
#   - HTTP/2 over TLS, 64 streams over 4 connections (h2load -c4 -m16).
# Every proxy speaks TLS 1.2 and 1.3 and clients choose 1.3 (nginx 1.22 needs `ssl_protocols` for
# it: without, its default stops at 1.2, and a 1.2 resumption needs no key exchange at all). The
# setup checks, before measuring, that each proxy's full-handshake port never resumes, that its
# other port does, and that every handshake is TLS 1.3.
# The proxies are pinned to core 0 with one worker thread each; the clients and the upstream
# share core 1. Every row is measured ROUNDS times next to its peer rows; the report gives each
# row's median round and the median of the per-round ratios.
#
# Needs: a release build, and Debian's nginx haproxy wrk nghttp2-client openssl (it installs
# nothing and stops everything it started).
# Usage: benches/load/tls.sh       (DURATION=10 seconds, CONNECTIONS=64, ROUNDS=3 by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
need nginx haproxy wrk h2load openssl taskset curl python3
# ONLY="full h2" runs only the rows of those kinds (keepalive, full, resumed, h2).
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

start_upstream "$LOAD_CORE"
TOKEN=$("$BIN" token --secret "$SECRET" --alg HS256 --sub user-1234567890 --ttl 2h)

# --- one ECDSA P-256 certificate for all three ------------------------------------------------
bench_cert
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"

# --- portcullis, twice: aws-lc-rs (the default) and ring ----------------------------------------
portcullis_conf() { # portcullis_conf FILE PORT FULL_PORT (the second: no session resumption)
    cat >"$1" <<EOF
server: {listen: [{addr: "127.0.0.1:$2", tls: bench}, {addr: "127.0.0.1:$3", tls: full}], threads: 1}
tls:
  bench: {certificates: [{cert: "$WORK/cert.pem", key: "$WORK/key.pem"}]}
  full: {certificates: [{cert: "$WORK/cert.pem", key: "$WORK/key.pem"}], session_resumption: false}
upstreams:
  api: {peers: ["127.0.0.1:$UP"]}
keys:
  hs: {secret: "$SECRET"}
auth:
  hs: {keys: hs, algorithms: [HS256]}
routes:
  - {prefix: /hs/, upstream: api, auth: hs}
  - {prefix: /, upstream: api}
EOF
}
GW=$(port); GW_RING=$(port); GW_FULL=$(port); GW_RING_FULL=$(port)
portcullis_conf "$WORK/portcullis.yaml" "$GW" "$GW_FULL"
portcullis_conf "$WORK/portcullis-ring.yaml" "$GW_RING" "$GW_RING_FULL"

# --- nginx: TLS, h2, plain proxy ----------------------------------------------------------------
NG=$(port); NG_FULL=$(port)
nginx_conf proxy "    upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 10000000; }
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:$NG ssl http2;
        ssl_session_cache shared:SSL:10m;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }
    server {
        listen 127.0.0.1:$NG_FULL ssl;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"

# --- HAProxy: TLS (h2 and http/1.1 by ALPN), jwt_verify HS256 with the algorithm pinned ----------
HA=$(port)
{ haproxy_head; cat <<EOF; } >"$WORK/haproxy.cfg"
frontend tls
    bind 127.0.0.1:$HA ssl crt $WORK/haproxy.pem alpn h2,http/1.1
    http-request deny deny_status 401 unless { req.hdr(authorization) -m found }
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$SECRET") -m int 1 }
    default_backend be
EOF
# The same, with no session cache and no tickets, for the full-handshake row: HAProxy's session
# cache is process-wide, hence a second process (HAProxy merges a second global section).
HA_FULL=$(port)
{ sed '/^frontend tls/,$d' "$WORK/haproxy.cfg"
  printf 'global\n    tune.ssl.cachesize 0\n'
  sed -n '/^frontend tls/,$p' "$WORK/haproxy.cfg" |
      sed "s|bind 127.0.0.1:$HA ssl crt $WORK/haproxy.pem alpn h2,http/1.1|bind 127.0.0.1:$HA_FULL ssl crt $WORK/haproxy.pem no-tls-tickets|"
} >"$WORK/haproxy-full.cfg"
grep -q "bind 127.0.0.1:$HA_FULL" "$WORK/haproxy-full.cfg"

start "$PROXY_CORE" "$WORK/portcullis.log" "$BIN" run -c "$WORK/portcullis.yaml"
start "$PROXY_CORE" "$WORK/portcullis-ring.log" env PORTCULLIS_TLS_PROVIDER=ring "$BIN" run -c "$WORK/portcullis-ring.yaml"
start "$PROXY_CORE" "$WORK/nginx.log" nginx -c "$WORK/proxy.conf" -p "$WORK"
start "$PROXY_CORE" "$WORK/haproxy.log" haproxy -f "$WORK/haproxy.cfg" -db
start "$PROXY_CORE" "$WORK/haproxy-full.log" haproxy -f "$WORK/haproxy-full.cfg" -db
for p in "$GW" "$GW_RING" "$GW_FULL" "$GW_RING_FULL" "$NG" "$NG_FULL" "$HA" "$HA_FULL"; do wait_port "$p"; done

# --- correctness first: every row's URL answers as it should -------------------------------------
expect() { # expect CODE URL [curl args]
    local want=$1 url=$2
    shift 2
    local got
    got=$(curl -sk -o /dev/null -w '%{http_code}' "$@" "$url")
    [ "$got" = "$want" ] || { echo "correctness: $url gave $got, expected $want" >&2; exit 1; }
}
AUTH="Authorization: Bearer $TOKEN"
for base in "https://127.0.0.1:$GW/hs" "https://127.0.0.1:$GW_RING/hs" "https://127.0.0.1:$HA"; do
    expect 200 "$base/x" -H "$AUTH"
    expect 401 "$base/x"
    expect 200 "$base/x" -H "$AUTH" --http2
done
expect 200 "https://127.0.0.1:$NG/x" --http2
# Sessions: TLS 1.3 everywhere; the full-handshake ports never resume, the others do.
for p in "$NG" "$HA" "$GW" "$GW_RING"; do tls_sessions "$p" /hs/x true "$AUTH"; done
for p in "$NG_FULL" "$HA_FULL" "$GW_FULL" "$GW_RING_FULL"; do tls_sessions "$p" /hs/x false "$AUTH"; done

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
record() { # record NAME VALUE UNIT
    printf '%s\t%s\t%s\t%s\n' "$round" "$1" "$2" "$3" >>"$RESULTS"
    printf 'round %s  %-40s %10s %s\n' "$round" "$1" "$2" "$3" >&2
}
wrk_row() { # wrk_row NAME URL TOKEN UNIT [wrk args]: one wrk run, no non-2xx allowed
    local name=$1 url=$2 token=$3 unit=$4 out rps non2xx auth=()
    shift 4
    [ -z "$token" ] || auth=(-H "Authorization: Bearer $token")
    out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "${auth[@]}" "$@" "$url")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    [ -z "$non2xx" ] || { echo "$name: $non2xx non-2xx responses" >&2; exit 1; }
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    record "$name" "$rps" "$unit"
}
keepalive() { wrk_row "$1" "$2" "${3:-}" "req/s"; } # keepalive NAME URL [TOKEN]
# resumed NAME URL [TOKEN]: a new connection per request, the TLS session resumed
resumed() { wrk_row "$1" "$2" "${3:-}" "conn/s" -H "Connection: close"; }
h2load_row() { # h2load_row NAME URL TOKEN UNIT [h2load args]: one run, no non-2xx allowed
    local name=$1 url=$2 token=$3 unit=$4 out rps auth=()
    shift 4
    [ -z "$token" ] || auth=(-H "Authorization: Bearer $token")
    out=$(taskset -c "$LOAD_CORE" h2load "$@" "${auth[@]}" "$url")
    grep -q "status codes: .* 0 3xx, 0 4xx, 0 5xx" <<<"$out" || { echo "$name: $(grep 'status codes' <<<"$out")" >&2; exit 1; }
    rps=$(awk '/^finished in/ {gsub(",", "", $4); printf "%.0f", $4}' <<<"$out")
    record "$name" "$rps" "$unit"
}
# full NAME URL [TOKEN]: a new connection and a full handshake per request (the URL's port keeps
# no sessions, so the one h2load offers is refused); HTTP/1.1 with Connection: close, 64 clients; a fixed count, since h2load's -D does
# not end when the server closes every connection
full() { h2load_row "$1" "$2" "${3:-}" "conn/s" --h1 -c"$CONNECTIONS" -n "${HANDSHAKES:-20000}" -H "Connection: close"; }
# h2 NAME URL [TOKEN]: 64 streams over 4 connections
h2() { h2load_row "$1" "$2" "${3:-}" "req/s" -c4 -m16 -D "$DURATION"; }

echo "measuring ($ROUNDS rounds, ${DURATION}s per row)..." >&2
for round in $(seq "$ROUNDS"); do
    if want keepalive; then
        keepalive "https keep-alive nginx (no auth)" "https://127.0.0.1:$NG/x"
        keepalive "https keep-alive haproxy HS256" "https://127.0.0.1:$HA/x" "$TOKEN"
        keepalive "https keep-alive portcullis HS256" "https://127.0.0.1:$GW/hs/x" "$TOKEN"
        keepalive "https keep-alive portcullis ring HS256" "https://127.0.0.1:$GW_RING/hs/x" "$TOKEN"
    fi
    if want full; then
        full "full handshakes nginx" "https://127.0.0.1:$NG_FULL/x"
        full "full handshakes haproxy HS256" "https://127.0.0.1:$HA_FULL/x" "$TOKEN"
        full "full handshakes portcullis HS256" "https://127.0.0.1:$GW_FULL/hs/x" "$TOKEN"
        full "full handshakes portcullis ring HS256" "https://127.0.0.1:$GW_RING_FULL/hs/x" "$TOKEN"
    fi
    if want resumed; then
        resumed "resumed connections nginx" "https://127.0.0.1:$NG/x"
        resumed "resumed connections haproxy HS256" "https://127.0.0.1:$HA/x" "$TOKEN"
        resumed "resumed connections portcullis HS256" "https://127.0.0.1:$GW/hs/x" "$TOKEN"
        resumed "resumed connections portcullis ring HS256" "https://127.0.0.1:$GW_RING/hs/x" "$TOKEN"
    fi
    if want h2; then
        h2 "h2 nginx (no auth)" "https://127.0.0.1:$NG/x"
        h2 "h2 haproxy HS256" "https://127.0.0.1:$HA/x" "$TOKEN"
        h2 "h2 portcullis HS256" "https://127.0.0.1:$GW/hs/x" "$TOKEN"
        h2 "h2 portcullis ring HS256" "https://127.0.0.1:$GW_RING/hs/x" "$TOKEN"
    fi
done

# --- report: each row's median round, and median per-round ratios to nginx ------------------------
echo
printf '%-42s %10s  %s\n' "row" "median" "rounds"
awk -F'\t' '!seen[$2]++ {print $2}' "$RESULTS" | while IFS= read -r name; do
    vals=$(awk -F'\t' -v n="$name" '$2==n {print $3}' "$RESULTS" | sort -n | tr '\n' ' ')
    med=$(awk -F'\t' -v n="$name" '$2==n {print $3}' "$RESULTS" | sort -n | awk -v r="$ROUNDS" 'NR == int((r + 1) / 2)')
    unit=$(awk -F'\t' -v n="$name" '$2==n {print $4; exit}' "$RESULTS")
    printf '%-42s %10s  %s(%s)\n' "$name" "$med $unit" "$vals" "$unit"
done
echo
echo "Ratios to the nginx row of the same kind (median of per-round ratios):"
ratio() { # ratio ROW PEER
    awk -F'\t' -v a="$1" -v b="$2" '$2==a {x[$1]=$3} $2==b {y[$1]=$3}
        END { n=0; for (r in x) if (y[r] > 0) v[++n] = x[r] / y[r];
              for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t=v[i]; v[i]=v[j]; v[j]=t }
              if (n) printf "%.2f", v[int((n + 1) / 2)]; else printf "-" }' "$RESULTS"
}
for kind in "https keep-alive|nginx (no auth)|HS256" "full handshakes|nginx|HS256" \
    "resumed connections|nginx|HS256" "h2|nginx (no auth)|HS256"; do
    IFS='|' read -r prefix peer_name suffix <<<"$kind"
    for who in "haproxy" "portcullis" "portcullis ring"; do
        row="$prefix $who${suffix:+ $suffix}"
        printf '  %-42s %s x %s\n' "$row" "$(ratio "$row" "$prefix $peer_name")" "$prefix $peer_name"
    done
done
