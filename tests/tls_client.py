"""A TLS client for the tests: connects, reports what the handshake gave, and optionally sends
HTTP/1.1 requests on the one connection.

Usage: tls_client.py PORT [--sni NAME] [--alpn P1,P2] [--tls 1.2|1.3] [--cafile F]
                          [--cert F --key F] [--ciphers OPENSSL-LIST] [--header "K: V"]...
                          [--get PATH]... [--pause SECONDS] [--resume N [--fresh K]]
Prints one JSON object: version, alpn, cert_sha256 (of the leaf), and statuses of the requests.
With --resume N, N more connections follow, each offering the session the one before it got
(after its requests, so a TLS 1.3 ticket has arrived) and making the same requests; "resumed"
lists whether the server took each one up, "resumed_statuses" their requests' statuses. With
--fresh K, K connections of their own (no session offered, the same requests) come first, so
the first session is offered after the server has made K more.
Certificates are not verified unless --cafile is given (the tests look at which one was sent).
"""
import hashlib
import json
import socket
import ssl
import sys
import time

args = sys.argv[1:]
port = int(args.pop(0))
sni, alpn, version, cafile, gets, pause, resume, fresh = None, None, None, None, [], 0.0, 0, 0
cert, key, headers, ciphers = None, None, [], None
proxy = None  # bytes sent before the TLS handshake (a PROXY protocol header)
while args:
    flag = args.pop(0)
    value = args.pop(0)
    if flag == "--sni":
        sni = value
    elif flag == "--alpn":
        alpn = value.split(",")
    elif flag == "--tls":
        version = value
    elif flag == "--cafile":
        cafile = value
    elif flag == "--get":
        gets.append(value)
    elif flag == "--pause":
        pause = float(value)
    elif flag == "--resume":
        resume = int(value)
    elif flag == "--fresh":
        fresh = int(value)
    elif flag == "--cert":
        cert = value
    elif flag == "--key":
        key = value
    elif flag == "--ciphers":
        ciphers = value
    elif flag == "--header":
        headers.append(value)
    elif flag == "--proxy-v1":
        proxy = value.encode() + b"\r\n"
    elif flag == "--proxy-v2":
        import ipaddress, struct
        src_ip, src_port = value.rsplit(":", 1)
        body = ipaddress.IPv4Address(src_ip).packed + bytes([127, 0, 0, 1]) + struct.pack("!HH", int(src_port), 443)
        proxy = b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body
    else:
        sys.exit(f"unknown flag {flag}")

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
if cafile:
    ctx.load_verify_locations(cafile)
else:
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
if alpn:
    ctx.set_alpn_protocols(alpn)
if ciphers:
    ctx.set_ciphers(ciphers)
if cert:
    ctx.load_cert_chain(cert, key)
if version == "1.2":
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
elif version == "1.3":
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3


def connect(session=None):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if proxy:
        raw.sendall(proxy)
    return ctx.wrap_socket(raw, server_hostname=sni, session=session)


def requests(s, out):
    """Send the --get requests on `s`; returns their statuses and bodies."""
    statuses, bodies = [], []
    f = s.makefile("rb")
    for i, path in enumerate(gets):
        if i > 0 and pause:
            time.sleep(pause)
        host = sni or "127.0.0.1"
        extra = "".join(f"{h}\r\n" for h in headers)
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
            line = f.readline()
        except (ssl.SSLError, OSError) as e:
            out["error"] = str(e)
            break
        if not line:
            out["error"] = "connection closed"
            break
        status = line.split(b" ")[1].decode()
        length = 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
            if k.strip().lower() == "www-authenticate":
                out["www_authenticate"] = v.strip()
        bodies.append(f.read(length).decode(errors="replace"))
        statuses.append(int(status))
    return statuses, bodies


out = {}
try:
    s = connect()
except (ssl.SSLError, OSError) as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
out["version"] = s.version()
out["alpn"] = s.selected_alpn_protocol()
out["cert_sha256"] = hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()
# Under TLS 1.3 a refused client certificate shows only on the first read or write (the
# statuses, or "error"); with no requests, try a read to surface it.
out["statuses"], out["bodies"] = requests(s, out)
if resume:
    out["resumed"], out["resumed_statuses"] = [], []
    for _ in range(fresh):
        other = connect()
        requests(other, out)
        other.close()
    for _ in range(resume):
        s = connect(s.session)
        out["resumed"].append(s.session_reused)
        out["resumed_statuses"].append(requests(s, out)[0])
print(json.dumps(out))
