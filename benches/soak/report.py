#!/usr/bin/env python3
"""The soak's report: reads what run.sh left in $WORK, prints markdown tables, exits 1 if a
check failed. Inputs: load.json (load.py), h2.log (h2load runs), peer*.access (what reached the
upstreams), chaos.log, requests_before/requests_after (portcullis_requests_total), and the
environment (FD_*, RSS_*, RELOADS_*, CERT_*, JWKS_ERRORS, DURATION)."""

import glob
import json
import os
import re
import sys
from collections import Counter

work = os.environ["WORK"]
env = lambda k: int(os.environ[k])
load = json.load(open(f"{work}/load.json"))
chaos = open(f"{work}/chaos.log").read().splitlines()

# Answers the clients saw, by kind. A status is a number; an error a word (reset, timeout, ...).
EXPECT = {k["name"]: k["expect"] for k in json.load(open(f"{work}/plan.json"))["kinds"]}
seen = {kind: Counter(c) for kind, c in load["counts"].items()}
h2 = {}
h2_runs = Counter()
for line in open(f"{work}/h2.log"):
    kind, sent, done, s2, s4, s5, errored, timeout = line.split()
    sent, done, s2, s4, s5, errored, timeout = map(int, (sent, done, s2, s4, s5, errored, timeout))
    c = h2.setdefault(kind, Counter())
    c["2xx"] += s2
    c["4xx"] += s4
    c["5xx"] += s5
    c["lost"] += sent - done + errored + timeout  # no output at all: done is 0
    h2_runs[kind] += 1
H2_EXPECT = {"h2_valid": "2xx", "h2_forged": "4xx"}

checks = []


def check(name, ok, detail):
    checks.append((name, ok, detail))


# 1. Every request got its kind's answer.
wrong = {k: {o: n for o, n in c.items() if o != str(EXPECT[k])} for k, c in seen.items()}
wrong = {k: v for k, v in wrong.items() if v}
h2_wrong = {k: {o: n for o, n in c.items() if o != H2_EXPECT[k] and n} for k, c in h2.items()}
h2_wrong = {k: v for k, v in h2_wrong.items() if v}
total_h1 = sum(sum(c.values()) for c in seen.values())
total_h2 = sum(sum(v for o, v in c.items() if o != "lost") for c in h2.values())
check("every HTTP/1.1 request got the answer its kind promises", not wrong,
      f"{total_h1} requests; wrong: {wrong or 'none'}; first: {load['anomalies'][:5]}")
check("every h2 request got the answer its kind promises", not h2_wrong and total_h2 > 0,
      f"{total_h2} requests in {sum(h2_runs.values())} h2load runs; wrong: {h2_wrong or 'none'}")

# 2. Nothing refused reached an upstream.
reached = Counter()
for f in glob.glob(f"{work}/peer*.access"):
    for line in open(f):
        reached[line.split(" ", 1)[0]] += 1
refused_kinds = [k for k, e in EXPECT.items() if e != 200] + ["h2_forged"]
leaked = {k: reached[k] for k in refused_kinds if reached[k]}
check("no expired, forged, missing or revoked token reached an upstream", not leaked,
      f"reached: {leaked or 'none of ' + ', '.join(refused_kinds)}")
admitted = sum(n for k, n in reached.items() if k in EXPECT and EXPECT[k] == 200) + reached["h2_valid"]
answered = sum(int(c.get("200", 0)) for c in seen.values()) + h2.get("h2_valid", Counter())["2xx"]

# 3. Memory and descriptors.
rss_warm, rss_end = env("RSS_WARM"), env("RSS_END")
# Caches, pools and the allocator are still filling for the first minutes: the RSS check is
# judged on runs of 5 minutes or more (60 s warm-up) and only reported on shorter ones.
judged = env("DURATION") >= 300
check("RSS at the end within 10% of RSS after warm-up", rss_end <= rss_warm * 1.10 or not judged,
      f"{rss_warm / 1024:.1f} MiB after warm-up, {rss_end / 1024:.1f} MiB at the end "
      f"({(rss_end / rss_warm - 1) * 100:+.1f}%)" + ("" if judged else "; not judged: run under 300 s"))
fd_before, fd_after = env("FD_BEFORE"), env("FD_AFTER")
check("open descriptors back to their level before the load", fd_after <= fd_before,
      f"{fd_before} before the load, {fd_after} after it stopped")


# 4. /metrics agrees with the clients.
def by_class(path):
    c = Counter()
    for line in open(path):
        m = re.search(r'status="(\d)\d\d"\}\s+(\d+)', line)
        if m:
            c[m.group(1) + "xx"] += int(m.group(2))
    return c


served = by_class(f"{work}/requests_after")
served.subtract(by_class(f"{work}/requests_before"))
client = Counter()
for c in seen.values():
    for o, n in c.items():
        if o.isdigit():
            client[o[0] + "xx"] += n
for c in h2.values():
    for o in ("2xx", "4xx", "5xx"):
        client[o] += c[o]
classes = sorted(set(served) | set(client))
check("/metrics requests by status class equal the clients' counts",
      all(served[k] == client[k] for k in classes),
      "; ".join(f"{k}: metrics {served[k]}, clients {client[k]}" for k in classes))

# 5. The chaos loop's own checks.
n = lambda s: sum(1 for line in chaos if s in line)
ok_reloads, bad_reloads = n("reload valid counted"), n("reload invalid counted")
check("every valid reload applied, every invalid one refused",
      n("NOT counted") == 0 and ok_reloads == env("RELOADS_OK") and bad_reloads == env("RELOADS_ERR"),
      f"{ok_reloads} valid and {bad_reloads} invalid reloads sent; metrics: {env('RELOADS_OK')} ok, "
      f"{env('RELOADS_ERR')} error")
check("every rotated certificate served within 3 s", n("certificate NOT served") == 0,
      f"{n('certificate rotated')} rotations, {n('certificate served')} checked served; "
      f"metrics: {env('CERT_OK')} ok, {env('CERT_ERRORS')} error")

print(f"## Soak: {env('DURATION')} s\n")
print("| chaos event | times |\n|---|---:|")
for label, key in [("reload (valid config)", "reload valid"), ("reload (invalid config, refused)", "reload invalid"),
                   ("upstream peer killed (SIGKILL) and restarted", "killed"),
                   ("identity provider refusing connections for 30 s", "jwks down"),
                   ("identity provider key rotation", "clients sign with k2"),
                   ("redis-server restarted", "redis down"), ("revocation file rewritten", "revocation file"),
                   ("TLS certificate rotated", "certificate rotated")]:
    print(f"| {label} | {n(key)} |")
print(f"\nJWKS fetches that failed (the provider away): {env('JWKS_ERRORS')}. The peers logged "
      f"{admitted} admitted requests; the clients got {answered} answers 200.\n")
print("| kind | expected | answers |\n|---|---|---|")
for k in EXPECT:
    c = seen.get(k, Counter())
    print(f"| {k} | {EXPECT[k]} | {', '.join(f'{o}: {v}' for o, v in sorted(c.items()))} |")
for k in H2_EXPECT:
    c = h2.get(k, Counter())
    print(f"| {k} (h2/TLS) | {H2_EXPECT[k]} | {', '.join(f'{o}: {v}' for o, v in sorted(c.items()) if v)} |")
print("\n| check | result | detail |\n|---|---|---|")
for name, ok, detail in checks:
    print(f"| {name} | {'pass' if ok else '**FAIL**'} | {detail} |")
sys.exit(0 if all(ok for _, ok, _ in checks) else 1)
