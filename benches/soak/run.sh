#!/usr/bin/env bash
# Soak and chaos: a release build under a mixed client load for DURATION seconds while a chaos
# loop breaks what production breaks, then checks that nothing was lost.
#
# Load (all at once):
#   - benches/soak/load.py: HTTP/1.1 keep-alive connections, connections that close after every
#     request, and TLS connections (HTTP/1.1 by ALPN), picking per request among valid HS256,
#     RS256, ES256 and identity-provider (remote JWKS) tokens, an HS256 token through a cluster
#     (Redis) rate limit, expired, forged (bad signature; HS256 signed with the RSA public key),
#     missing and revoked (by the file; through Redis) tokens, a public route and a dead route;
#   - h2load over h2/TLS, new connections (full handshakes) every run: a valid and a forged token.
# Chaos, on a schedule it logs (seconds from the start):
#   - every 10 s a reload (SIGHUP) of a changed valid config; at 30 s past every minute an
#     invalid one, which must be refused (and the valid one is written back);
#   - every 20 s one of the three upstream peers is killed (SIGKILL), and restarted 10 s later;
#   - the identity provider's JWKS server refuses connections for 30 s every 2 minutes (from 60 s),
#     and rotates its signing key once (at 120 s: new key published, clients switch to it, the
#     old key withdrawn 30 s later);
#   - redis-server (cluster limits, shared revocation; append-only file) restarts every 3 minutes
#     (from 90 s), down for 3 s;
#   - the revocation file is rewritten by rename every 15 s;
#   - the TLS certificate and key are replaced by rename every 30 s, and 3 s later the served
#     certificate must be the new one.
# Checks (each a line of the report; any failure makes the exit status 1):
#   - every request got the answer its kind promises (no reset, no timeout, no 5xx except the
#     dead route's 502), over HTTP/1.1 and h2;
#   - no expired, forged, missing-token or revoked request reached an upstream (their access logs);
#   - RSS at the end within 10% of RSS after warm-up (judged on runs of 300 s or more); open
#     descriptors back to their level before the load once it stops;
#   - what the peers logged of the admitted kinds equals the clients' 200s (reported);
#   - /metrics request counts by status class equal the clients' own counts; reloads counted as
#     the chaos loop made them; every certificate rotation served.
#
# Needs: a release build; Debian's nginx, redis-server, nghttp2-client (h2load), openssl; Python
# 3 with `cryptography`. It installs nothing and stops everything it started.
# Usage: benches/soak/run.sh        (DURATION=600 seconds, CONNECTIONS=24 by default)
set -euo pipefail

. "$(dirname "$0")/../load/lib.sh"
SOAK="$ROOT/benches/soak"
KEYS="$ROOT/tests/keys"
DURATION=${DURATION:-600}
CONNECTIONS=${CONNECTIONS:-24}
WARMUP=${WARMUP:-$((DURATION < 300 ? DURATION / 5 : 60))}
REPORT=${REPORT:-"$WORK/report.md"}
SECRET="soak-secret-soak-secret-soak-secret-0123"
need nginx redis-server h2load openssl curl python3
python3 -c 'import cryptography' 2>/dev/null || { echo "missing Python module cryptography" >&2; exit 1; }

# Processes the chaos loop restarts are tracked by pid files, not lib.sh's list.
stop_pidfiles() {
    for f in "$WORK"/pids/*; do
        kill -9 "$(cat "$f" 2>/dev/null)" 2>/dev/null || true
    done
}
trap 'jobs -p | xargs -r kill 2>/dev/null || true; stop_pidfiles; cleanup' EXIT
mkdir -p "$WORK/pids" "$WORK/idp" "$WORK/tls" "$WORK/redis"
now() { echo $(($(date +%s) - T0)); }
log() { echo "$(now) $*" >>"$WORK/chaos.log"; }
metric() { # metric PREFIX: the sum of the samples whose line starts with PREFIX
    curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v p="$1" 'index($0, p) == 1 {s += $NF} END {printf "%d", s}'
}
OK_RELOADS='portcullis_config_reloads_total{result="ok"}'
BAD_RELOADS='portcullis_config_reloads_total{result="error"}'
reload() { # reload valid|invalid: SIGHUP, then wait until the gateway has counted the reload
    local counter=$OK_RELOADS before
    [ "$1" = invalid ] && counter=$BAD_RELOADS
    before=$(metric "$counter")
    kill -HUP "$GW_PID"
    for _ in $(seq 50); do
        [ "$(metric "$counter")" -gt "$before" ] && { log "reload $1 counted"; return; }
        sleep 0.1
    done
    log "reload $1 NOT counted"
}

GW=$(port); GW_TLS=$(port); ADMIN=$(port); DEAD=$(port); JWKS=$(port); REDIS=$(port)
PEERS=("$(port)" "$(port)" "$(port)")

# --- upstream peers: nginx, one process each, logging the soak kind of what reached them -----------
peer_conf() { # peer_conf I
    cat >"$WORK/peer$1.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/pids/peer$1;
error_log $WORK/peer$1.err;
events { worker_connections 4096; }
http {
    log_format soak '\$http_x_soak_kind \$uri';
    access_log $WORK/peer$1.access soak;
    keepalive_timeout 5s;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:${PEERS[$1]};
        location /health { access_log off; return 200 'ok'; }
        location / { default_type application/json; return 200 '{"peer":$1}'; }
    }
}
CONF
}
# Processes the chaos loop kills are started in a subshell, so that no job notice reports them.
start_peer() { (nginx -c "$WORK/peer$1.conf" -p "$WORK" >>"$WORK/peer$1.out" 2>&1 &); }
for i in 0 1 2; do peer_conf "$i"; start_peer "$i"; wait_port "${PEERS[$i]}"; done

# --- the identity provider: two RSA keys, a JWKS served by a small HTTP server -----------------------
python3 - "$WORK/idp" <<'PY'
import base64, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
out = sys.argv[1]
def b64(n):
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
for kid in ("k1", "k2"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    open(f"{out}/{kid}.pem", "wb").write(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub = key.public_key().public_numbers()
    json.dump({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(pub.n), "e": b64(pub.e)},
              open(f"{out}/{kid}.jwk", "w"))
PY
publish_jwks() { # publish_jwks KID...: the served set, replaced by rename
    python3 -c 'import json,sys; d=sys.argv[1]; json.dump({"keys":[json.load(open(f"{d}/{k}.jwk")) for k in sys.argv[2:]]}, open(f"{d}/www/jwks.json.tmp","w"))' "$WORK/idp" "$@"
    mv "$WORK/idp/www/jwks.json.tmp" "$WORK/idp/www/jwks.json"
}
mkdir -p "$WORK/idp/www"
publish_jwks k1
start_jwks() {
    (python3 -m http.server --bind 127.0.0.1 --directory "$WORK/idp/www" "$JWKS" >>"$WORK/jwks.log" 2>&1 &
        echo $! >"$WORK/pids/jwks")
}
start_jwks
wait_port "$JWKS"

# --- redis (append-only, so shared revocations survive its restarts) -------------------------------
start_redis() {
    (redis-server --port "$REDIS" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes --save "" \
        >>"$WORK/redis.log" 2>&1 &
        echo $! >"$WORK/pids/redis")
}
start_redis
wait_port "$REDIS"

# --- TLS certificate, replaced by rename ----------------------------------------------------------
new_cert() { # a fresh self-signed P-256 certificate; prints its serial
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=soak.test \
        -addext subjectAltName=DNS:soak.test -keyout "$WORK/tls/key.new" -out "$WORK/tls/cert.new" 2>/dev/null
    mv "$WORK/tls/key.new" "$WORK/tls/key.pem"
    mv "$WORK/tls/cert.new" "$WORK/tls/cert.pem"
    openssl x509 -in "$WORK/tls/cert.pem" -noout -serial
}
new_cert >/dev/null
served_serial() {
    openssl s_client -connect "127.0.0.1:$GW_TLS" -servername soak.test </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null || true
}

# --- revocation file ----------------------------------------------------------------------------
write_revoked() {
    printf 'sub: [revoked-file]\njti: [rotating-%s]\n' "$RANDOM$RANDOM" >"$WORK/revoked.yaml.tmp"
    mv "$WORK/revoked.yaml.tmp" "$WORK/revoked.yaml"
}
write_revoked

# --- the gateway's config: VARIANT (0 or 1) changes one route, so every reload swaps in a new
# policy (a reload drops the removed route's metric series: no load goes to it, so the request
# totals that report.py compares with the clients' counts are not changed by that) -------------
write_config() { # write_config VARIANT [invalid]
    cat >"$WORK/portcullis.yaml.tmp" <<CONF
server:
  listen: ["127.0.0.1:$GW", {addr: "127.0.0.1:$GW_TLS", tls: edge}]
  admin: "127.0.0.1:$ADMIN"
  threads: 2
  pid_file: $WORK/portcullis.pid
tls:
  edge: {certificates: [{cert: "$WORK/tls/cert.pem", key: "$WORK/tls/key.pem"}]}
cluster:
  redis: {url: "redis://127.0.0.1:$REDIS/0", timeout: 50ms}
  on_error: local
upstreams:
  api:
    peers: ["127.0.0.1:${PEERS[0]}", "127.0.0.1:${PEERS[1]}", "127.0.0.1:${PEERS[2]}"]
    tries: 3
    connect_timeout: 1s
    read_timeout: 5s
    health_check: {kind: http, path: /health, interval: 1s, timeout: 500ms, unhealthy_after: 1, healthy_after: 2}
  dead: {peers: ["127.0.0.1:$DEAD"], tries: 1}
keys:
  hs: {secret: "$SECRET"}
  rs: {pem_file: "$KEYS/rsa_public.pem"}
  es: {pem_file: "$KEYS/ec_public.pem"}
  idp: {jwks_url: "http://127.0.0.1:$JWKS/jwks.json", refresh: 10s, timeout: 1s}
auth:
  hs: {keys: hs, algorithms: [HS256], issuer: soak, audience: api}
  rs: {keys: rs, algorithms: [RS256], issuer: soak, audience: api}
  es: {keys: es, algorithms: [ES256], issuer: soak, audience: api}
  idp: {keys: idp, algorithms: [RS256], issuer: soak, audience: api}
revocation:
  file: "$WORK/revoked.yaml"
  shared: true
  refresh: 5s
rate_limits:
  shared: {key: "claim:sub", rate: 1000000/s, burst: 1000000000, scope: cluster}
routes:
  - {prefix: /public/, upstream: api}
  - {prefix: /hs/, upstream: api, auth: hs}
  - {prefix: /rs/, upstream: api, auth: rs}
  - {prefix: /es/, upstream: api, auth: es}
  - {prefix: /idp/, upstream: api, auth: idp}
  - {prefix: /limited/, upstream: api, auth: hs, rate_limit: shared}
  - {prefix: /dead/, upstream: dead}
  - {prefix: /variant-$1/, upstream: api}
CONF
    [ "${2:-}" = invalid ] && echo "  - {prefix: /broken/, upstream: api, no_such_field: 1}" >>"$WORK/portcullis.yaml.tmp"
    mv "$WORK/portcullis.yaml.tmp" "$WORK/portcullis.yaml"
}
write_config 0
"$BIN" check -c "$WORK/portcullis.yaml" >/dev/null

# --- tokens ---------------------------------------------------------------------------------------
mint() { "$BIN" token --iss soak --aud api --ttl 24h "$@"; }
T_HS=$(mint --secret "$SECRET" --sub user-hs)
T_RS=$(mint --key "$KEYS/rsa_private.pem" --sub user-rs)
T_ES=$(mint --key "$KEYS/ec_private.pem" --sub user-es)
mint --key "$WORK/idp/k1.pem" --kid k1 --sub user-idp >"$WORK/idp/token"
T_EXPIRED=$("$BIN" token --secret "$SECRET" --iss soak --aud api --sub user-hs --ttl 0 --claim exp=1600000000)
T_FORGED=$(mint --secret "a-different-secret-a-different-secret-0123" --sub user-hs)
T_CONFUSED=$(mint --secret="$(cat "$KEYS/rsa_public.pem")" --alg HS256 --sub user-rs)
T_REVOKED_FILE=$(mint --secret "$SECRET" --sub revoked-file)
T_REVOKED_SHARED=$(mint --secret "$SECRET" --sub revoked-shared)

# --- start ----------------------------------------------------------------------------------------
"$BIN" run -c "$WORK/portcullis.yaml" >"$WORK/portcullis.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_port "$GW"
for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/readyz")" = 200 ] && break
    sleep 0.1
done
"$BIN" revoke -c "$WORK/portcullis.yaml" --sub revoked-shared --ttl 24h >/dev/null
sleep 2 # the shared revocation reaches the in-process set

cat >"$WORK/plan.json" <<JSON
{"host": "127.0.0.1", "port": $GW, "tls_port": $GW_TLS, "connections": $CONNECTIONS,
 "close_share": 0.15, "tls_share": 0.2,
 "kinds": [
  {"name": "public",         "path": "/public/x",  "expect": 200, "weight": 10},
  {"name": "valid_hs",       "path": "/hs/x",      "expect": 200, "weight": 20, "token": "$T_HS"},
  {"name": "valid_rs",       "path": "/rs/x",      "expect": 200, "weight": 10, "token": "$T_RS"},
  {"name": "valid_es",       "path": "/es/x",      "expect": 200, "weight": 10, "token": "$T_ES"},
  {"name": "valid_idp",      "path": "/idp/x",     "expect": 200, "weight": 10, "token_file": "$WORK/idp/token"},
  {"name": "limited",        "path": "/limited/x", "expect": 200, "weight": 10, "token": "$T_HS"},
  {"name": "expired",        "path": "/hs/x",      "expect": 401, "weight": 5,  "token": "$T_EXPIRED"},
  {"name": "forged",         "path": "/hs/x",      "expect": 401, "weight": 5,  "token": "$T_FORGED"},
  {"name": "key_confusion",  "path": "/rs/x",      "expect": 401, "weight": 2,  "token": "$T_CONFUSED"},
  {"name": "missing",        "path": "/es/x",      "expect": 401, "weight": 5},
  {"name": "revoked_file",   "path": "/hs/x",      "expect": 401, "weight": 3,  "token": "$T_REVOKED_FILE"},
  {"name": "revoked_shared", "path": "/limited/x", "expect": 401, "weight": 3,  "token": "$T_REVOKED_SHARED"},
  {"name": "dead_route",     "path": "/dead/x",    "expect": 502, "weight": 2}
 ]}
JSON
# A warm-up request of every kind, then the descriptor level before the load.
python3 "$SOAK/load.py" "$WORK/plan.json" 1 "$WORK/probe.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d["anomaly_total"] > 0)' "$WORK/probe.json" ||
    { echo "the gateway does not answer as the plan expects before any chaos:" >&2; cat "$WORK/probe.json" >&2; exit 1; }
sleep 6 # the peers close the probe's idle upstream connections (keepalive_timeout 5s)
for i in 0 1 2; do : >"$WORK/peer$i.access"; done # from here on, the run's own record
FD_BEFORE=$(ls "/proc/$GW_PID/fd" | wc -l)
RELOADS_OK_BEFORE=$(metric "$OK_RELOADS")
RELOADS_ERR_BEFORE=$(metric "$BAD_RELOADS")
REQS_BEFORE=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | grep '^portcullis_requests_total' || true)

T0=$(date +%s)
END=$((T0 + DURATION))
: >"$WORK/chaos.log"

# --- the load -------------------------------------------------------------------------------------
python3 "$SOAK/load.py" "$WORK/plan.json" "$DURATION" "$WORK/load.json" &
LOAD_PID=$!
H2_REQUESTS=200 # per h2load run
h2_loop() { # h2_loop NAME TOKEN PATH: h2load runs of new TLS connections until the end
    while [ "$(date +%s)" -lt "$END" ]; do
        h2load -n "$H2_REQUESTS" -c 2 -m 8 -H "authorization: Bearer $2" -H "x-soak-kind: $1" \
            "https://127.0.0.1:$GW_TLS$3" 2>&1 |
            awk -v k="$1" -v n="$H2_REQUESTS" '/^requests:/ {d=$6; e=$12; t=$14} /^status codes:/ {s2=$3; s4=$7; s5=$9}
                END {print k, n, d+0, s2+0, s4+0, s5+0, e+0, t+0}' >>"$WORK/h2.log"
        sleep 0.5
    done
}
h2_loop h2_valid "$T_HS" /hs/x &
H2_VALID=$!
h2_loop h2_forged "$T_FORGED" /hs/x &
H2_FORGED=$!

# --- the chaos loop -------------------------------------------------------------------------------
event() { # event SECOND: what the schedule does at that second
    local t=$1 victim serial
    if ((t % 10 == 0)); then variant=$((1 - variant)); write_config "$variant"; reload valid; fi
    if ((t % 60 == 35)); then write_config "$variant" invalid; reload invalid; write_config "$variant"; fi
    if ((t % 20 == 5)); then
        victim=$(((t / 20) % 3)); kill -9 "$(cat "$WORK/pids/peer$victim")"; log "peer $victim killed"
    fi
    if ((t % 20 == 15)); then victim=$(((t / 20) % 3)); start_peer "$victim"; log "peer $victim restarted"; fi
    if ((t >= 60 && t % 120 == 60)); then kill -9 "$(cat "$WORK/pids/jwks")"; log "jwks down"; fi
    if ((t >= 60 && t % 120 == 90)); then start_jwks; log "jwks up"; fi
    if ((t == 120)); then publish_jwks k1 k2; log "jwks publishes k2"; fi
    if ((t == 122)); then
        mint --key "$WORK/idp/k2.pem" --kid k2 --sub user-idp >"$WORK/idp/token.tmp"
        mv "$WORK/idp/token.tmp" "$WORK/idp/token"; log "clients sign with k2"
    fi
    if ((t == 152)); then publish_jwks k2; log "jwks withdraws k1"; fi
    if ((t >= 90 && t % 180 == 90)); then kill "$(cat "$WORK/pids/redis")"; log "redis down"; fi
    if ((t >= 90 && t % 180 == 93)); then start_redis; log "redis up"; fi
    if ((t % 15 == 7)); then write_revoked; log "revocation file rewritten"; fi
    if ((t % 30 == 20)); then serial=$(new_cert); echo "$serial" >"$WORK/tls/expected"; log "certificate rotated $serial"; fi
    if ((t % 30 == 23)) && [ -f "$WORK/tls/expected" ]; then
        if [ "$(served_serial)" = "$(cat "$WORK/tls/expected")" ]; then log "certificate served"; else log "certificate NOT served"; fi
    fi
    return 0
}
chaos() { # every second of the run once, in order, even when one second's events take longer
    local done=0 t s
    variant=0
    while [ "$(date +%s)" -lt "$END" ]; do
        t=$(now)
        for ((s = done + 1; s <= t; s++)); do event "$s"; done
        ((t > done)) && done=$t
        sleep 0.2
    done
}
chaos &
CHAOS_PID=$!

sleep "$WARMUP"
RSS_WARM=$(awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status")
while kill -0 "$LOAD_PID" 2>/dev/null; do
    RSS_END=$(awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status")
    sleep 1
done
wait "$LOAD_PID"
wait "$CHAOS_PID" || true
wait "$H2_VALID" "$H2_FORGED"
# Everything back up, the valid config in force; then the descriptors settle.
for i in 0 1 2; do kill -0 "$(cat "$WORK/pids/peer$i")" 2>/dev/null || start_peer "$i"; done
kill -0 "$(cat "$WORK/pids/redis")" 2>/dev/null || start_redis
kill -0 "$(cat "$WORK/pids/jwks")" 2>/dev/null || start_jwks
FD_AFTER=0
for _ in $(seq 30); do
    sleep 1
    FD_AFTER=$(ls "/proc/$GW_PID/fd" | wc -l)
    [ "$FD_AFTER" -le "$FD_BEFORE" ] && break
done

# --- checks and report -------------------------------------------------------------------------------
METRICS=$(curl -s "http://127.0.0.1:$ADMIN/metrics")
export WORK FD_BEFORE FD_AFTER RSS_WARM RSS_END DURATION
RELOADS_OK=$(($(metric "$OK_RELOADS") - RELOADS_OK_BEFORE))
RELOADS_ERR=$(($(metric "$BAD_RELOADS") - RELOADS_ERR_BEFORE))
CERT_OK=$(metric 'portcullis_tls_certificate_reloads_total{profile="edge",result="ok"}')
CERT_ERRORS=$(metric 'portcullis_tls_certificate_reloads_total{profile="edge",result="error"}')
JWKS_ERRORS=$(metric 'portcullis_jwks_fetches_total{keys="idp",result="error"}')
export RELOADS_OK RELOADS_ERR CERT_OK CERT_ERRORS JWKS_ERRORS
echo "$METRICS" | grep '^portcullis_requests_total' >"$WORK/requests_after" || true
echo "$REQS_BEFORE" >"$WORK/requests_before"
python3 "$SOAK/report.py" | tee "$REPORT"
