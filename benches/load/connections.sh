#!/usr/bin/env bash
# Memory per idle keep-alive client connection: portcullis and nginx (plain reverse proxy) side
# by side. For each proxy, N connections (CONNECTIONS=10000) each send one request through it,
# read the answer and then stay open and idle; the proxy's RSS (the whole process tree) before
# and after, over N, is what one idle connection costs. An edge holding many mobile keep-alive
# clients pays this for each. Both proxies run one worker and keep their default buffers; the
# script raises the descriptor limit for itself and the proxies.
#
# Needs: a release build and Debian's nginx. It installs nothing and stops everything it started.
# Usage: benches/load/connections.sh        (CONNECTIONS=10000 by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
CONNECTIONS=${CONNECTIONS:-10000}
need nginx python3
# Each process needs a descriptor per connection (nginx two: its worker_connections count both
# sides), within the hard limit.
FDS=$((CONNECTIONS * 2 + 1024))
HARD=$(ulimit -Hn)
[ "$HARD" = unlimited ] || [ "$HARD" -ge "$FDS" ] || FDS=$HARD
[ "$FDS" -gt $((CONNECTIONS + 200)) ] ||
    { echo "the descriptor limit ($HARD) is too low for $CONNECTIONS connections" >&2; exit 1; }
ulimit -n "$FDS"
export NGINX_CONNECTIONS=$FDS

start_upstream 1
GW=$(port)
cat >"$WORK/portcullis.yaml" <<CONF
server:
  listen: ["127.0.0.1:$GW"]
  threads: 1
  limits: {max_connections: $((CONNECTIONS + 100)), idle_timeout: 10m}
upstreams:
  api: {peers: ["127.0.0.1:$UP"]}
routes:
  - {prefix: /, upstream: api}
CONF
start 0 "$WORK/portcullis.log" "$BIN" run -c "$WORK/portcullis.yaml"
PORTCULLIS_PID=${PIDS[-1]}
NG=$(port)
nginx_proxy_conf proxy "$NG" "    keepalive_timeout 10m;"
start 0 "$WORK/nginx.log" nginx -c "$WORK/proxy.conf" -p "$WORK"
NGINX_PID=${PIDS[-1]}
wait_port "$GW"
wait_port "$NG"

tree_rss_kib() { # the RSS of a process and its children, KiB
    local pids
    pids=$(ps -o pid= --ppid "$1"; echo "$1")
    # shellcheck disable=SC2086
    ps -o rss= -p $(echo $pids | tr ' ' ,) | awk '{s += $1} END {print s}'
}

measure() { # measure NAME PORT PID
    python3 - "$2" "$CONNECTIONS" "$WORK/hold.$1" <<'PY' &
import socket, sys, time, os
port, n, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
req = b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n"
def one():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(4096)
    return s
one().close()  # the first request: upstream connection, lazy set-up
open(marker + ".warm", "w").close()
while not os.path.exists(marker + ".go"):
    time.sleep(0.05)
held = [one() for _ in range(n)]
open(marker + ".held", "w").close()
while not os.path.exists(marker + ".done"):
    time.sleep(0.05)
PY
    local client=$! before after
    until [ -f "$WORK/hold.$1.warm" ]; do sleep 0.05; done
    sleep 1
    before=$(tree_rss_kib "$3")
    touch "$WORK/hold.$1.go"
    until [ -f "$WORK/hold.$1.held" ]; do sleep 0.1; done
    sleep 2
    after=$(tree_rss_kib "$3")
    touch "$WORK/hold.$1.done"
    wait "$client"
    awk -v name="$1" -v b="$before" -v a="$after" -v n="$CONNECTIONS" 'BEGIN {
        printf "%-12s RSS %7.1f MiB -> %7.1f MiB with %d idle connections: %5.1f KiB each\n",
               name, b / 1024, a / 1024, n, (a - b) / n }'
}
measure portcullis "$GW" "$PORTCULLIS_PID"
measure nginx "$NG" "$NGINX_PID"
