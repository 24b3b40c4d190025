#!/usr/bin/env bash
# Heap allocations per proxied request, counted exactly: uprobes on mimalloc's allocation entry
# points in the release binary, counted with `perf stat` while wrk drives one route (uprobes slow
# the gateway down to a few thousand requests/s; the counts are exact all the same). Rows: auth
# off, HS256 with the verified-token cache, HS256 without.
#
# Needs: a release build, Debian's nginx and wrk, and perf (linux-perf) with uprobes; run as
# root. It installs nothing; it removes the probes it added and stops everything it started.
#
# Usage: benches/load/allocs.sh        (SHORT=1s LONG=4s CONNECTIONS=64 by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
SHORT=${SHORT:-1s}
LONG=${LONG:-4s}
CONNECTIONS=${CONNECTIONS:-64}
need nginx wrk perf taskset python3

# Rust's global allocator (src/allocator.rs) calls into mimalloc through these six: the plain
# entry points for alignments up to 16 bytes, the aligned ones for the rest.
FUNCS=(mi_malloc mi_zalloc mi_realloc mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned)
GROUP=portcullis_allocs
remove_probes() { perf probe -q -d "$GROUP:*" 2>/dev/null || true; }
remove_probes
for f in "${FUNCS[@]}"; do
    perf probe -q -f -x "$BIN" --add "$GROUP:$f=$f" ||
        { echo "perf probe could not add a uprobe on $f (root and uprobes needed)" >&2; exit 1; }
done
trap 'remove_probes; cleanup' EXIT

start_upstream 1
hs_routes_config
start 0 "$WORK/portcullis.log" "$BIN" run -c "$WORK/portcullis.yaml"
GW_PID=${PIDS[-1]}
wait_port "$GW"

window() { # window SECONDS PATH [TOKEN] -> "requests allocations" of one wrk run of SECONDS
    local hdr=()
    [ -n "${3:-}" ] && hdr=(-H "Authorization: Bearer $3")
    perf stat -x, -e "$GROUP:*" -p "$GW_PID" -o "$WORK/stat" &
    local stat=$!
    sleep 0.2
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$1" "${hdr[@]}" "http://127.0.0.1:$GW$2" >"$WORK/wrk"
    kill -INT "$stat"
    wait "$stat" || true
    echo "$(awk '/requests in/ {print $1}' "$WORK/wrk") $(awk -F, '$3 ~ /portcullis_allocs/ {n += $1} END {print n}' "$WORK/stat")"
}

count() { # count NAME PATH [TOKEN]
    # Every wrk run opens its connections anew, and a connection costs allocations of its own
    # (accept, session, buffers). Two runs of different lengths over the same number of
    # connections: the difference is what the extra requests cost, with connection costs gone.
    local short long
    read -r -a short <<<"$(window "$SHORT" "$2" "${3:-}")"
    read -r -a long <<<"$(window "$LONG" "$2" "${3:-}")"
    awk -v name="$1" -v r1="${short[0]}" -v a1="${short[1]}" -v r2="${long[0]}" -v a2="${long[1]}" \
        -v c="$CONNECTIONS" 'BEGIN {
            per = (a2 - a1) / (r2 - r1)
            printf "%-16s %5.1f allocations per request, %6.0f per connection  (%d and %d requests)\n",
                name, per, (a1 - per * r1) / c, r1, r2
        }'
}

count "auth off" /off/x
count "HS256 (cache)" /hs/x "$TOKEN"
count "HS256 no cache" /hs-nocache/x "$TOKEN"
