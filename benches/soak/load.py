#!/usr/bin/env python3
"""The soak's HTTP/1.1 client: a mixed load that remembers the answer to every request.

Each connection loops: pick a request kind (weighted), send it, read the whole answer, count
(kind, status) or (kind, error). Kinds carry their expected status, so a wrong answer is known
at once; the first anomalies are kept with their time for the report. Most connections are
keep-alive; a share sends `Connection: close` and opens a new connection for every request;
a share runs over TLS (HTTP/1.1 by ALPN). Every request carries `x-soak-kind`, which the
upstreams log, so the run can cross-check what reached them.

Usage: load.py PLAN.json DURATION_S OUT.json
PLAN: {"host", "port", "tls_port", "connections", "close_share", "tls_share",
       "kinds": [{"name", "path", "token"?, "token_file"?, "expect", "weight"}]}
A kind with `token_file` re-reads its token when the file changes (key rotation).
"""

import asyncio
import json
import os
import random
import ssl
import sys
import time

TIMEOUT = 10.0  # a request without a complete answer by then is a timeout


class Kind:
    def __init__(self, spec):
        self.name = spec["name"]
        self.path = spec["path"]
        self.expect = spec["expect"]
        self.weight = spec["weight"]
        self.token = spec.get("token")
        self.token_file = spec.get("token_file")
        self.mtime = None
        self.refresh()

    def refresh(self):
        if not self.token_file:
            return
        m = os.stat(self.token_file).st_mtime_ns
        if m != self.mtime:
            with open(self.token_file) as f:
                self.token = f.read().strip()
            self.mtime = m

    def request(self, host, close):
        lines = [f"GET {self.path} HTTP/1.1", f"Host: {host}", f"x-soak-kind: {self.name}"]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Stats:
    def __init__(self):
        self.counts = {}  # kind -> status or error -> n
        self.anomalies = []  # first ones, with time
        self.anomaly_total = 0
        self.start = time.time()

    def add(self, kind, outcome):
        per = self.counts.setdefault(kind.name, {})
        per[str(outcome)] = per.get(str(outcome), 0) + 1
        if outcome != kind.expect:
            self.anomaly_total += 1
            if len(self.anomalies) < 50:
                self.anomalies.append(
                    {"t": round(time.time() - self.start, 2), "kind": kind.name, "got": outcome,
                     "expected": kind.expect})


async def read_answer(reader):
    """Status of one whole HTTP/1.1 answer (the body read to its end); raises on a short read."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304):
        await reader.read()  # to the end of the connection
        headers["connection"] = "close"
    return status, headers.get("connection", "").lower() == "close"


def drop(writer):
    if writer is not None:
        writer.close()
    return None


async def connection(plan, kinds, weights, stats, deadline, close, use_tls, ctx):
    port = plan["tls_port"] if use_tls else plan["port"]
    reader = writer = None
    while time.time() < deadline:
        kind = random.choices(kinds, weights)[0]
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(plan["host"], port, ssl=ctx if use_tls else None,
                                            server_hostname="soak.test" if use_tls else None),
                    TIMEOUT)
            writer.write(kind.request("soak.test", close))
            status, closed = await asyncio.wait_for(read_answer(reader), TIMEOUT)
            stats.add(kind, status)
            if close or closed:
                writer.close()
                writer = None
        except asyncio.TimeoutError:
            stats.add(kind, "timeout")
            writer = drop(writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError) as e:
            stats.add(kind, "tls_error" if isinstance(e, ssl.SSLError) else "reset")
            writer = drop(writer)
    if writer is not None:
        writer.close()


async def refresher(kinds, deadline):
    while time.time() < deadline:
        for k in kinds:
            k.refresh()
        await asyncio.sleep(0.2)


async def main():
    plan = json.load(open(sys.argv[1]))
    duration = float(sys.argv[2])
    out = sys.argv[3]
    kinds = [Kind(k) for k in plan["kinds"]]
    weights = [k.weight for k in kinds]
    stats = Stats()
    deadline = time.time() + duration
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the certificate rotates under the run; the script checks it
    ctx.set_alpn_protocols(["http/1.1"])
    n = plan["connections"]
    n_close = max(1, round(n * plan["close_share"]))
    n_tls = max(1, round(n * plan["tls_share"]))
    tasks = [refresher(kinds, deadline)]
    for i in range(n):
        tasks.append(connection(plan, kinds, weights, stats, deadline, close=i < n_close,
                                use_tls=n_close <= i < n_close + n_tls, ctx=ctx))
    await asyncio.gather(*tasks)
    json.dump({"counts": stats.counts, "anomalies": stats.anomalies,
               "anomaly_total": stats.anomaly_total, "seconds": time.time() - stats.start},
              open(out, "w"), indent=1)


if __name__ == "__main__":
    asyncio.run(main())
