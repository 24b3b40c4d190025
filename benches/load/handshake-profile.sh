#!/usr/bin/env bash
# Where a new TLS connection's CPU goes, portcullis and nginx side by side: timer samples
# (`perf record -e cpu-clock`, which works where hardware counters do not) on the proxy process
# while h2load makes full handshakes (a new connection, one HTTP/1.1 request, Connection: close;
# both proxies keep no session, since h2load offers the previous connection's on every
# reconnect; TLS 1.3 for both, as nginx 1.22 stops at 1.2 unless told). One ECDSA P-256
# certificate; one proxy thread on core 0, h2load and the upstream on core 1. For each proxy it
# prints connections/s, how busy the proxy's core was, CPU per connection, and that CPU split
# into kernel, crypto, TLS state machine, allocator, memcpy/memset and the rest of user space.
# (nginx's libcrypto is stripped, so its crypto is one lump.)
#
# Needs: a release build, Debian's nginx, nghttp2-client (h2load), linux-perf, openssl. It
# installs nothing and stops everything it started.
# Usage: benches/load/handshake-profile.sh      (HANDSHAKES=12000 by default)
set -euo pipefail

. "$(dirname "$0")/lib.sh"
HANDSHAKES=${HANDSHAKES:-12000}
need nginx h2load perf openssl taskset python3

start_upstream 1
bench_cert
GW=$(port)
cat >"$WORK/portcullis.yaml" <<CONF
server: {listen: [{addr: "127.0.0.1:$GW", tls: bench}], threads: 1}
tls:
  bench: {certificates: [{cert: "$WORK/cert.pem", key: "$WORK/key.pem"}], session_resumption: false}
upstreams:
  api: {peers: ["127.0.0.1:$UP"]}
routes:
  - {prefix: /, upstream: api}
CONF
start 0 "$WORK/portcullis.log" "$BIN" run -c "$WORK/portcullis.yaml"
GW_PID=${PIDS[-1]}
NG=$(port)
nginx_conf proxy "    upstream up { server 127.0.0.1:$UP; keepalive 128; }
    server {
        listen 127.0.0.1:$NG ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
start 0 "$WORK/nginx.log" nginx -c "$WORK/proxy.conf" -p "$WORK" -g "master_process off;"
NG_PID=${PIDS[-1]}
wait_port "$GW"
wait_port "$NG"
for p in "$GW" "$NG"; do tls_sessions "$p" /x false; done

profile() { # profile NAME PID PORT
    local data="$WORK/$1.perf" t0 t1
    perf record -q -e cpu-clock -F 1999 -p "$2" -o "$data" >/dev/null 2>&1 &
    local rec=$!
    sleep 0.5
    t0=$(date +%s.%N)
    taskset -c 1 h2load --h1 -c64 -n "$HANDSHAKES" -H "Connection: close" \
        "https://127.0.0.1:$3/x" >"$WORK/$1.h2load"
    t1=$(date +%s.%N)
    kill -INT "$rec"
    wait "$rec" || true
    grep -q "$HANDSHAKES succeeded" "$WORK/$1.h2load" ||
        { echo "$1: not every connection succeeded" >&2; cat "$WORK/$1.h2load" >&2; exit 1; }
    perf report -i "$data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null >"$WORK/$1.report"
    local samples
    samples=$(perf script -i "$data" -F ip 2>/dev/null | wc -l)
    python3 - "$1" "$WORK/$1.report" "$samples" "$t0" "$t1" "$HANDSHAKES" <<'PY'
import re, sys
name, report, samples, t0, t1, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
cats = {}
for line in open(report):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s{2,}", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(4)
    low = sym.lower()
    if dso.startswith("[kernel"):
        c = "kernel"
    elif "libcrypto" in dso or "aws_lc" in sym or sym.startswith("Lcurve") or any(k in low for k in ("x25519", "sha256", "aes_", "gcm", "p256", "ecdsa")):
        c = "crypto"
    elif "libssl" in dso or "rustls" in sym:
        c = "TLS state machine"
    elif any(k in low for k in ("malloc", "free", "mi_")):
        c = "allocator"
    elif any(k in low for k in ("memmove", "memcpy", "memset")):
        c = "memcpy/memset"
    else:
        c = "rest of user space"
    cats[c] = cats.get(c, 0.0) + pct
cpu = samples / 1999.0          # seconds of CPU sampled
wall = t1 - t0 + 0.5            # the recording also covers the half second before the run
per = cpu / n * 1e6
print(f"{name:11s} {n / (t1 - t0):7.0f} connections/s, core {100 * cpu / wall:3.0f}% busy, {per:4.0f} µs CPU per connection:")
for c, p in sorted(cats.items(), key=lambda kv: -kv[1]):
    print(f"    {c:20s} {p:5.1f}%  {per * p / 100:5.0f} µs")
PY
}

profile portcullis "$GW_PID" "$GW"
profile nginx "$NG_PID" "$NG"
