"""A TLS server for the tests: answers every GET with JSON naming the SNI it was sent, or, for
`/jwks` when a JWKS file is given, with that file.

Usage: tls_echo.py CERT KEY [JWKS]  -- prints the port it listens on (127.0.0.1), then serves.
"""
import http.server
import json
import ssl
import sys

SNI = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/jwks" and len(sys.argv) > 3:
            with open(sys.argv[3], "rb") as f:
                body = f.read()
        else:
            body = json.dumps({"tls": True, "path": self.path, "sni": SNI.get("name")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])

    def remember(sock, name, _ctx):
        SNI["name"] = name

    ctx.sni_callback = remember
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


main()
