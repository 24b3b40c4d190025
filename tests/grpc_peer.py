"""A gRPC server and client for the tests (grpcio, raw bytes: no generated code).

  grpc_peer.py server            -- prints the port it listens on (127.0.0.1, plaintext h2), serves
  grpc_peer.py client PORT [TOKEN] [BURST]
                                 -- calls through PORT and prints one JSON object with what it saw
  grpc_peer.py peers PORT        -- the peers the server at PORT has seen (JSON list)

Service /test.Echo: Unary (answers JSON with the request, the x-user metadata it received and
the peer it came from; sets a trailer; sleeps 0.2 s so that concurrent calls overlap), Stream
(three messages, then a trailer), Peers (JSON list of the peers seen so far).
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc

PEERS = set()
LOCK = threading.Lock()


def unary(request, context):
    md = dict(context.invocation_metadata())
    with LOCK:
        PEERS.add(context.peer())
    time.sleep(0.2)
    context.set_trailing_metadata((("x-trailer", "unary-done"),))
    return json.dumps({"got": request.decode(), "x-user": md.get("x-user")}).encode()


def stream(request, context):
    for i in range(3):
        yield f"{request.decode()}-{i}".encode()
    context.set_trailing_metadata((("x-trailer", "stream-done"),))


def peers(request, context):
    with LOCK:
        return json.dumps(sorted(PEERS)).encode()


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Peers": grpc.unary_unary_rpc_method_handler(peers),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def outcome(call_fn):
    try:
        value, call = call_fn()
        return {"code": call.code().name, "response": value, "trailers": dict(call.trailing_metadata() or ())}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details(), "trailers": dict(e.trailing_metadata() or ())}


def client(port, token, burst):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    md = (("authorization", f"Bearer {token}"), ("x-user", "mallory")) if token else ()
    unary_call = channel.unary_unary("/test.Echo/Unary")
    stream_call = channel.unary_stream("/test.Echo/Stream")
    out = {}
    r = outcome(lambda: unary_call.with_call(b"hello", metadata=md, timeout=10))
    if "response" in r:
        r["response"] = json.loads(r["response"])
    out["unary"] = r
    try:
        it = stream_call(b"s", metadata=md, timeout=10)
        msgs = [m.decode() for m in it]
        out["stream"] = {"code": it.code().name, "messages": msgs, "trailers": dict(it.trailing_metadata())}
    except grpc.RpcError as e:
        out["stream"] = {"code": e.code().name, "details": e.details()}
    if burst:
        with futures.ThreadPoolExecutor(max_workers=burst) as pool:
            calls = [pool.submit(unary_call, b"b", metadata=md, timeout=20) for _ in range(burst)]
            out["burst_ok"] = sum(1 for c in calls if json.loads(c.result())["got"] == "b")
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    elif sys.argv[1] == "peers":
        call = grpc.insecure_channel(f"127.0.0.1:{sys.argv[2]}").unary_unary("/test.Echo/Peers")
        print(call(b"", timeout=10).decode())
    else:
        client(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None,
               int(sys.argv[4]) if len(sys.argv) > 4 else 0)
