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

start_upstream() { # start_upstream CORE: nginx on a free port, in $UP
    UP=$(port)
    cat >"$WORK/upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/upstream.pid;
error_log $WORK/upstream.err;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP;
        location / { default_type application/json; return 200 '{"ok":true,"service":"bench"}'; }
    }
}
CONF
    start "$1" "$WORK/upstream.log" nginx -c "$WORK/upstream.conf" -p "$WORK"
    wait_port "$UP"
}
