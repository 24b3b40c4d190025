#!/usr/bin/env bash
# System calls per proxied request, by name: nginx as a plain reverse proxy against portcullis
# with auth off, each traced with `strace -f -c` while wrk drives a fixed number of requests
# over 4 keep-alive connections (a short and a long run; the difference over the difference in
# requests cancels connection set-up). strace slows the proxy a lot; the counts are exact all the
# same. User-space instructions (instructions.sh) leave the kernel out; on a machine whose
# system calls are slow, this is the other half of requests/s.
#
# Needs: a release build, Debian's nginx, wrk and strace. It installs nothing and stops
# everything it started.
#
# Usage: benches/load/syscalls.sh        (SHORT=2 LONG=6 seconds by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
SHORT=${SHORT:-2}
LONG=${LONG:-6}
need nginx wrk strace taskset python3

start_upstream 1
hs_routes_config
NG=$(port)
nginx_proxy_conf proxy "$NG"

# trace SECONDS PORT PID -> "requests" and $WORK/strace (strace -c table) of one wrk run
trace() {
    strace -f -c -o "$WORK/strace" -p "$3" 2>/dev/null &
    local st=$!
    sleep 0.5
    taskset -c 1 wrk -t1 -c4 -d"$1" "http://127.0.0.1:$2/off/x" >"$WORK/wrk"
    kill -INT "$st"
    wait "$st" || true
    awk '/requests in/ {print $1}' "$WORK/wrk"
}

# table NAME PORT PID: calls per request of every system call seen, largest first
table() {
    local r1 r2
    r1=$(trace "$SHORT" "$2" "$3"); cp "$WORK/strace" "$WORK/short"
    r2=$(trace "$LONG" "$2" "$3"); cp "$WORK/strace" "$WORK/long"
    python3 - "$1" "$r1" "$r2" "$WORK/short" "$WORK/long" <<'PY'
import sys
name, r1, r2, short, long = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def calls(path):
    out = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            out[f[-1]] = int(f[3])
    return out
a, b = calls(short), calls(long)
per = {k: (b.get(k, 0) - a.get(k, 0)) / (r2 - r1) for k in set(a) | set(b)}
print(f"{name}: {sum(per.values()):.2f} system calls per request ({r1} and {r2} requests)")
for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
    if v >= 0.01:
        print(f"    {k:<16} {v:6.2f}")
PY
}

start 0 "$WORK/nginx.log" nginx -c "$WORK/proxy.conf" -p "$WORK" -g "master_process off;"
wait_port "$NG"
table "nginx plain proxy" "$NG" "${PIDS[-1]}"
stop_last
start 0 "$WORK/portcullis.log" "$BIN" run -c "$WORK/portcullis.yaml"
wait_port "$GW"
table "portcullis auth off" "$GW" "${PIDS[-1]}"
