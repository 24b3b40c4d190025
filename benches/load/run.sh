#!/usr/bin/env bash
# Side-by-side load benchmark on one machine: portcullis (auth off, HS256, RS256, ES256, with and
# without the verified-token cache), nginx as a plain reverse proxy (the ceiling), and HAProxy 2.6
# with jwt_verify (the peer that verifies JWTs natively). Same token, same loopback nginx
# upstream, keep-alive everywhere, wrk -t1 -c64. The proxies are pinned to core 0 with one worker
# thread each (only the one under test is busy); wrk and the upstream share core 1.
#
# Needs: a release build (cargo build --release), and Debian's nginx, haproxy and wrk
# (apt-get install nginx haproxy wrk). It installs nothing and stops everything it started.
#
# It measures every row ROUNDS times, each portcullis row right after the peer row it is compared
# with, and reports each row's median round (requests/s and that round's latencies) and, for each
# ratio, the median of the per-round ratios: on a shared machine one 10 s row can be off by 10%,
# and two rows minutes apart by more.
#
# REFERENCE=1 adds two rows after nginx's in every round: the Rust reference proxies of
# benches/load/reference (built here with cargo; see instructions.sh), a tokio floor and a hyper 1
# proxy, each with its ratio to nginx — what requests/s a proxy of another shape than Pingora's
# reaches on the same machine.
#
# Usage: benches/load/run.sh            (DURATION=10s CONNECTIONS=64 ROUNDS=3 by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
KEYS="$ROOT/tests/keys"
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
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
nginx_proxy_conf proxy "$NG"

# --- HAProxy: one process, a frontend per row: plain, and jwt_verify per algorithm (alg pinned,
# exp and iss checked) ------------------------------------------------------------------------
HA_PLAIN=$(port); HA_HS=$(port); HA_RS=$(port); HA_ES=$(port)
{
    haproxy_head
    haproxy_frontend plain "$HA_PLAIN" none -
    haproxy_frontend hs "$HA_HS" HS256 "$SECRET" "$ISSUER"
    haproxy_frontend rs "$HA_RS" RS256 "$KEYS/rsa_public.pem" "$ISSUER"
    haproxy_frontend es "$HA_ES" ES256 "$KEYS/ec_public.pem" "$ISSUER"
} >"$WORK/haproxy.cfg"

# --- measuring ----------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
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
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$rps" "$p50" "$p99" "$max" >>"$RESULTS"
    printf 'round %s  %-26s %9s req/s  p50 %6s ms  p99 %6s ms  max %7s ms\n' "$round" "$name" "$rps" "$p50" "$p99" "$max" >&2
}

echo "warming up and measuring ($ROUNDS rounds, $DURATION per row, $CONNECTIONS connections)..." >&2
# All three proxies run side by side on the proxy core for the whole script (an idle one waits in
# epoll and costs nothing); each round measures every row, each portcullis row next to the peer
# row it is compared with, so a ratio compares two measurements seconds apart.
start "$PROXY_CORE" "$WORK/portcullis.log" "$BIN" run -c "$WORK/portcullis.yaml"
PORTCULLIS_PID=${PIDS[-1]}
start "$PROXY_CORE" "$WORK/nginx.log" nginx -c "$WORK/proxy.conf" -p "$WORK"
start "$PROXY_CORE" "$WORK/haproxy.log" haproxy -f "$WORK/haproxy.cfg" -db
for p in "$GW" "$NG" "$HA_PLAIN" "$HA_HS" "$HA_RS" "$HA_ES"; do wait_port "$p"; done
if [ -n "${REFERENCE:-}" ]; then
    need cargo
    cargo build --release --locked --quiet --manifest-path "$ROOT/benches/load/reference/Cargo.toml" \
        --target-dir "$ROOT/target/reference"
    REF_FLOOR=$(port); REF_HYPER=$(port)
    for proxy in floor hyper; do
        [ $proxy = floor ] && p=$REF_FLOOR || p=$REF_HYPER
        start "$PROXY_CORE" "$WORK/$proxy.log" "$ROOT/target/reference/release/$proxy" \
            "127.0.0.1:$p" "127.0.0.1:$UP"
        wait_port "$p"
    done
fi
G="http://127.0.0.1:$GW"
one_round() {
    measure "nginx plain proxy" "http://127.0.0.1:$NG/x"
    if [ -n "${REFERENCE:-}" ]; then
        measure "rust floor proxy" "http://127.0.0.1:$REF_FLOOR/x"
        measure "rust hyper proxy" "http://127.0.0.1:$REF_HYPER/x"
    fi
    measure "portcullis auth off" "$G/off/x"
    measure "haproxy plain proxy" "http://127.0.0.1:$HA_PLAIN/x"
    measure "haproxy jwt_verify HS256" "http://127.0.0.1:$HA_HS/x" "$TOKEN_HS"
    measure "portcullis HS256" "$G/hs/x" "$TOKEN_HS"
    measure "portcullis HS256 no cache" "$G/hs-nocache/x" "$TOKEN_HS"
    measure "haproxy jwt_verify RS256" "http://127.0.0.1:$HA_RS/x" "$TOKEN_RS"
    measure "portcullis RS256" "$G/rs/x" "$TOKEN_RS"
    measure "portcullis RS256 no cache" "$G/rs-nocache/x" "$TOKEN_RS"
    measure "haproxy jwt_verify ES256" "http://127.0.0.1:$HA_ES/x" "$TOKEN_ES"
    measure "portcullis ES256" "$G/es/x" "$TOKEN_ES"
    measure "portcullis ES256 no cache" "$G/es-nocache/x" "$TOKEN_ES"
}
for round in $(seq "$ROUNDS"); do
    one_round
done
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$PORTCULLIS_PID/status")

# --- report -------------------------------------------------------------------------------------
# Each row's median round (by requests/s), in the order the rows were first measured.
MEDIANS="$WORK/medians.tsv"
awk -F'\t' '!seen[$2]++ {print $2}' "$RESULTS" | while IFS= read -r name; do
    awk -F'\t' -v n="$name" '$2==n' "$RESULTS" | sort -t"$(printf '\t')" -k3,3n |
        awk -v r="$ROUNDS" 'NR == int((r + 1) / 2)'
done >"$MEDIANS"
echo
echo "Median of $ROUNDS rounds per row (the round's own latencies), and every round's requests/s:"
echo
echo "| row | requests/s | p50 ms | p99 ms | max ms | rounds req/s |"
echo "|---|---:|---:|---:|---:|---|"
while IFS=$'\t' read -r _ name r p50 p99 max; do
    all=$(awk -F'\t' -v n="$name" '$2==n {printf "%s%s", sep, $3; sep=" / "}' "$RESULTS")
    echo "| $name | $r | $p50 | $p99 | $max | $all |"
done <"$MEDIANS"
# A ratio per round (both rows of that round), then the median of those.
ratio() { # ratio LABEL ROW_A ROW_B
    awk -F'\t' -v a="$2" -v b="$3" -v label="$1" -v r="$ROUNDS" '
        $2==a {x[$1]=$3} $2==b {y[$1]=$3}
        END {
            for (i = 1; i <= r; i++) { v[i] = x[i] / y[i]; all = all sep sprintf("%.2f", v[i]); sep = " / " }
            for (i = 1; i <= r; i++) for (j = i + 1; j <= r; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            printf "| %s | %.2f | %s |\n", label, v[int((r + 1) / 2)], all
        }' "$RESULTS"
}
echo
echo "| ratio | median | per round |"
echo "|---|---:|---|"
ratio "portcullis auth off / nginx plain" "portcullis auth off" "nginx plain proxy"
ratio "portcullis HS256 / haproxy HS256" "portcullis HS256" "haproxy jwt_verify HS256"
ratio "portcullis RS256 (cache) / haproxy RS256" "portcullis RS256" "haproxy jwt_verify RS256"
ratio "portcullis ES256 (cache) / haproxy ES256" "portcullis ES256" "haproxy jwt_verify ES256"
ratio "portcullis RS256 no cache / haproxy RS256" "portcullis RS256 no cache" "haproxy jwt_verify RS256"
ratio "portcullis ES256 no cache / haproxy ES256" "portcullis ES256 no cache" "haproxy jwt_verify ES256"
ratio "portcullis HS256 / portcullis auth off" "portcullis HS256" "portcullis auth off"
ratio "portcullis auth off / haproxy plain" "portcullis auth off" "haproxy plain proxy"
if [ -n "${REFERENCE:-}" ]; then
    ratio "rust floor proxy / nginx plain" "rust floor proxy" "nginx plain proxy"
    ratio "rust hyper proxy / nginx plain" "rust hyper proxy" "nginx plain proxy"
fi
echo
echo "portcullis RSS after all rounds: ${RSS} KiB"
