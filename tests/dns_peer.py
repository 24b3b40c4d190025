#!/usr/bin/env python3
"""A loopback DNS server for the tests (dnslib): answers A and AAAA queries from a JSON file
that it reads on every query, so a test changes a name's addresses by rewriting the file.

  dns_peer.py ZONE_FILE      (binds 127.0.0.1 on a free UDP port and prints the port)

ZONE_FILE: {"ttl": 300, "names": {"api.test.": ["127.0.0.1", "::1"]}, "fail": false}
With "fail": true every query is answered SERVFAIL; a name not in the file is NXDOMAIN.
The number of queries so far is written to ZONE_FILE.count. Stops on SIGTERM.
"""

import argparse
import ipaddress
import json
import signal
import socketserver
import sys

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return
        reply = query.reply()
        name = str(query.q.qname)
        qtype = QTYPE[query.q.qtype]
        self.server.queries += 1
        with open(self.server.zone + ".count", "w") as f:
            f.write(str(self.server.queries))
        try:
            with open(self.server.zone) as f:
                zone = json.load(f)
        except (OSError, ValueError):
            zone = {"fail": True}
        if zone.get("fail"):
            reply.header.rcode = RCODE.SERVFAIL
        else:
            ttl = int(zone.get("ttl", 300))
            addrs = zone.get("names", {}).get(name.lower())
            if addrs is None:
                reply.header.rcode = RCODE.NXDOMAIN
            for a in addrs or []:
                ip = ipaddress.ip_address(a)
                if ip.version == 4 and qtype == "A":
                    reply.add_answer(RR(name, QTYPE.A, rdata=A(a), ttl=ttl))
                elif ip.version == 6 and qtype == "AAAA":
                    reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(a), ttl=ttl))
        sock.sendto(reply.pack(), self.client_address)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("zone")
    args = p.parse_args()
    server = socketserver.UDPServer(("127.0.0.1", 0), Handler)
    server.zone = args.zone
    server.queries = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
