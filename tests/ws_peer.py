"""A WebSocket echo server and client for the tests (the `websockets` package).

  ws_peer.py server              -- prints its port (127.0.0.1), echoes every message back
  ws_peer.py client URL [TOKEN]  -- sends two messages, prints JSON: the echoes, or the HTTP
                                    status that refused the upgrade
"""
import json
import sys

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import serve


def echo(ws):
    for message in ws:
        ws.send(message)


if sys.argv[1] == "server":
    with serve(echo, "127.0.0.1", 0) as server:
        print(server.socket.getsockname()[1], flush=True)
        server.serve_forever()
else:
    url = sys.argv[2]
    token = sys.argv[3] if len(sys.argv) > 3 else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            got = []
            for m in ["ping", "pong" * 1000]:
                ws.send(m)
                got.append(len(ws.recv(timeout=10)))
            print(json.dumps({"echoed": got}))
    except InvalidStatus as e:
        print(json.dumps({"status": e.response.status_code}))
