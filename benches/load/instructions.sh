#!/usr/bin/env bash
# User-space instructions per proxied request, under valgrind's callgrind: deterministic to a
# fraction of a percent, so it shows a change that the ±10% run-to-run noise of requests/s on a
# shared machine hides. For each row it runs the gateway twice under callgrind with wrk -c4
# driving one route for SHORT and then LONG seconds; the difference in instructions over the
# difference in requests cancels start-up and connection set-up. Rows: auth off, HS256 through
# the verified-token cache, HS256 without it, HS256 cached with one CEL rule. (Valgrind has no AVX-512, so crypto-heavy rows
# would not count what the real CPU runs; they are left out.)
#
# Needs: a release build, Debian's nginx, wrk and valgrind. It installs nothing and stops
# everything it started. With TOP=1 it also prints the functions that execute the most
# instructions in the LONG run of each row.
#
# Usage: benches/load/instructions.sh        (SHORT=2 LONG=8 seconds by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
SHORT=${SHORT:-2}
LONG=${LONG:-8}
need nginx wrk valgrind callgrind_annotate taskset python3

start_upstream 1
hs_routes_config

run() { # run SECONDS PATH TOKEN -> "requests instructions" for one gateway run under callgrind
    local out="$WORK/callgrind.out"
    start 0 "$WORK/valgrind.log" valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$BIN" run -c "$WORK/portcullis.yaml"
    local vg=${PIDS[-1]}
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$GW") 2>/dev/null && break
        sleep 0.1
    done
    local hdr=()
    [ -n "$3" ] && hdr=(-H "Authorization: Bearer $3")
    curl -s -o /dev/null "${hdr[@]}" "http://127.0.0.1:$GW$2"
    taskset -c 1 wrk -t1 -c4 -d"$1" "${hdr[@]}" "http://127.0.0.1:$GW$2" >"$WORK/wrk"
    grep -q Non-2xx "$WORK/wrk" && { echo "non-2xx answers on $2" >&2; exit 1; }
    kill -INT "$vg"
    wait "$vg" || true
    unset 'PIDS[-1]'
    echo "$(awk '/requests in/ {print $1}' "$WORK/wrk") $(awk '/^(summary|totals):/ {print $2; exit}' "$out")"
}

row() { # row NAME PATH [TOKEN]
    local short long
    read -r -a short <<<"$(run "$SHORT" "$2" "${3:-}")"
    read -r -a long <<<"$(run "$LONG" "$2" "${3:-}")"
    awk -v name="$1" -v r1="${short[0]}" -v i1="${short[1]}" -v r2="${long[0]}" -v i2="${long[1]}" \
        'BEGIN { printf "%-16s %7.0f instructions per request  (%d and %d requests)\n",
                 name, (i2 - i1) / (r2 - r1), r1, r2 }'
    if [ -n "${TOP:-}" ]; then
        callgrind_annotate --inclusive=no "$WORK/callgrind.out" 2>/dev/null |
            awk '/file:function/ {on=1; next} on && NF {print} on && ++n > 16 {exit}' | cut -c1-160
    fi
}

row "auth off" /off/x
row "HS256 (cache)" /hs/x "$TOKEN"
row "HS256 no cache" /hs-nocache/x "$TOKEN"
row "HS256 + CEL" /hs-expr/x "$TOKEN"
