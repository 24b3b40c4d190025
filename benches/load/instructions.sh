#!/usr/bin/env bash
# User-space instructions per proxied request, under valgrind's callgrind: deterministic to a
# fraction of a percent, so it shows a change that the ±10% run-to-run noise of requests/s on a
# shared machine hides. For each row it runs the proxy twice under callgrind with wrk -c4
# driving one URL for SHORT and then LONG seconds; the difference in instructions over the
# difference in requests cancels start-up and connection set-up. Rows, all in one run so the
# ratios are of one machine and one moment: nginx as a plain reverse proxy and HAProxy plain and
# with jwt_verify HS256 (alg pinned, exp and iss checked), then portcullis with auth off, HS256
# through the verified-token cache, HS256 without it, HS256 cached with one CEL rule (every
# portcullis policy checks iss too). With h2load installed (Debian's nghttp2-client), two more
# rows: nginx and portcullis (auth off) over h2c, 64 streams on 4 connections (h2load -c4 -m16).
# Each proxy runs one worker thread, keep-alive to the same nginx upstream. (Valgrind has no AVX-512, so crypto-heavy rows would not count what the real
# CPU runs; they are left out.)
#
# Two more rows measure Rust reference proxies built from benches/load/reference (not part of
# portcullis): the least a tokio keep-alive proxy can do, and a hyper 1 proxy (NO_REFERENCE=1
# leaves them out).
#
# Needs: a release build, Debian's nginx, haproxy, wrk and valgrind, and cargo for the
# reference proxies. It installs nothing and stops everything it started. With TOP=1 it also prints the functions that execute the most
# instructions in the LONG run of each row. ONLY=portcullis leaves the peers' rows out.
#
# Usage: benches/load/instructions.sh        (SHORT=2 LONG=8 seconds by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
SHORT=${SHORT:-2}
LONG=${LONG:-8}
need nginx haproxy wrk valgrind callgrind_annotate taskset python3

start_upstream 1
hs_routes_config

NG=$(port); NG_H2C=$(port)
nginx_proxy_conf proxy "$NG"
# the same proxy, on a second port with h2c (prior knowledge)
sed -i "s|listen 127.0.0.1:$NG;|listen 127.0.0.1:$NG; listen 127.0.0.1:$NG_H2C http2;|" "$WORK/proxy.conf"
HA_PLAIN=$(port); HA_HS=$(port)
{
    haproxy_head
    haproxy_frontend plain "$HA_PLAIN" none -
    haproxy_frontend hs "$HA_HS" HS256 "$SECRET" "$ISSUER"
} >"$WORK/haproxy.cfg"

# run SECONDS URL TOKEN PROGRAM...: "requests instructions" of one run of PROGRAM under
# callgrind, stopped with SIGINT (or $STOP: HAProxy in the foreground ignores SIGINT)
run() {
    local seconds=$1 url=$2 token=$3 out="$WORK/callgrind.out"
    shift 3
    start 0 "$WORK/valgrind.log" valgrind --tool=callgrind --callgrind-out-file="$out" "$@"
    local vg=${PIDS[-1]} port=${url#http://127.0.0.1:}
    port=${port%%/*}
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    local hdr=()
    [ -n "$token" ] && hdr=(-H "Authorization: Bearer $token")
    curl -s -o /dev/null "${hdr[@]}" "$url"
    local requests
    if [ -n "${H2C:-}" ]; then # h2c with prior knowledge: 64 streams over 4 connections
        taskset -c 1 h2load -c4 -m16 -D "$seconds" "${hdr[@]}" "$url" >"$WORK/h2load"
        awk '/^status codes:/ { if ($5 + $7 + $9 > 0) exit 1 }' "$WORK/h2load" ||
            { echo "non-2xx answers on $url" >&2; exit 1; }
        requests=$(awk '/^requests:/ {print $8}' "$WORK/h2load")
    else
        taskset -c 1 wrk -t1 -c4 -d"$seconds" "${hdr[@]}" "$url" >"$WORK/wrk"
        grep -q Non-2xx "$WORK/wrk" && { echo "non-2xx answers on $url" >&2; exit 1; }
        requests=$(awk '/requests in/ {print $1}' "$WORK/wrk")
    fi
    kill "-${STOP:-INT}" "$vg"
    wait "$vg" || true
    unset 'PIDS[-1]'
    echo "$requests $(awk '/^(summary|totals):/ {print $2; exit}' "$out")"
}

row() { # row NAME URL TOKEN PROGRAM...
    local name=$1 short long
    shift
    read -r -a short <<<"$(run "$SHORT" "$@")"
    read -r -a long <<<"$(run "$LONG" "$@")"
    awk -v name="$name" -v r1="${short[0]}" -v i1="${short[1]}" -v r2="${long[0]}" -v i2="${long[1]}" \
        'BEGIN { printf "%-26s %7.0f instructions per request  (%d and %d requests)\n",
                 name, (i2 - i1) / (r2 - r1), r1, r2 }'
    if [ -n "${TOP:-}" ]; then
        callgrind_annotate --inclusive=no "$WORK/callgrind.out" 2>/dev/null |
            awk '/file:function/ {on=1; next} on && NF {print} on && ++n > 16 {exit}' | cut -c1-160
    fi
}

# Two Rust reference proxies (benches/load/reference, built here into target/reference): the
# least a tokio keep-alive proxy does per request, and a hyper 1 proxy — what a proxied request
# costs in Rust without Pingora's layers, to read portcullis' rows against.
if [ "${ONLY:-}" != portcullis ] && [ -z "${NO_REFERENCE:-}" ]; then
    need cargo
    cargo build --release --locked --quiet --manifest-path "$ROOT/benches/load/reference/Cargo.toml" \
        --target-dir "$ROOT/target/reference"
    REF_FLOOR=$(port); REF_HYPER=$(port)
fi

GATEWAY=("$BIN" run -c "$WORK/portcullis.yaml")
G="http://127.0.0.1:$GW"
if [ "${ONLY:-}" != portcullis ]; then
    # nginx's worker must be the process callgrind watches: no master.
    row "nginx plain proxy" "http://127.0.0.1:$NG/x" "" nginx -c "$WORK/proxy.conf" -p "$WORK" -g "master_process off;"
    STOP=TERM row "haproxy plain proxy" "http://127.0.0.1:$HA_PLAIN/x" "" haproxy -db -f "$WORK/haproxy.cfg"
    STOP=TERM row "haproxy jwt_verify HS256" "http://127.0.0.1:$HA_HS/x" "$TOKEN" haproxy -db -f "$WORK/haproxy.cfg"
    if [ -n "${REF_FLOOR:-}" ]; then
        # started in the background by a script, they ignore SIGINT: stopped with SIGTERM
        STOP=TERM row "rust floor (tokio+httparse)" "http://127.0.0.1:$REF_FLOOR/x" "" \
            "$ROOT/target/reference/release/floor" "127.0.0.1:$REF_FLOOR" "127.0.0.1:$UP"
        STOP=TERM row "rust hyper 1 proxy" "http://127.0.0.1:$REF_HYPER/x" "" \
            "$ROOT/target/reference/release/hyper" "127.0.0.1:$REF_HYPER" "127.0.0.1:$UP"
    fi
fi
row "auth off" "$G/off/x" "" "${GATEWAY[@]}"
row "HS256 (cache)" "$G/hs/x" "$TOKEN" "${GATEWAY[@]}"
row "HS256 no cache" "$G/hs-nocache/x" "$TOKEN" "${GATEWAY[@]}"
row "HS256 + CEL" "$G/hs-expr/x" "$TOKEN" "${GATEWAY[@]}"
if command -v h2load >/dev/null; then
    [ "${ONLY:-}" = portcullis ] ||
        H2C=1 row "h2c nginx plain proxy" "http://127.0.0.1:$NG_H2C/x" "" nginx -c "$WORK/proxy.conf" -p "$WORK" -g "master_process off;"
    H2C=1 row "h2c auth off" "$G/off/x" "" "${GATEWAY[@]}"
else
    echo "(no h2load: the h2c rows are left out; Debian: nghttp2-client)"
fi
