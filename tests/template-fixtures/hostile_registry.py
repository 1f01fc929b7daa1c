#!/usr/bin/env python3
"""A registry that misbehaves, for the pull tests; loopback only.

    hostile_registry.py MODE

Listens on 127.0.0.1 (the registry) and 127.0.0.2 (the "other host": not
in the client's list of hosts allowed plain http). Prints "PORT <a> <b>"
once both listen, then serves until killed. GET /hits on either server
answers how many requests the 127.0.0.2 one received besides /hits.

Modes (every /v2/ request of the registry answers so):
  realm-http     401 whose Bearer realm is http://127.0.0.2:<b>/token
  redirect-http  307 to http://127.0.0.2:<b>/elsewhere
  redirect-file  307 to file:///etc/passwd
  redirect-loop  307 to the same path, forever
  auth-loop      401 with a realm on 127.0.0.1 even when the token is sent
  endless        200 with a chunked body that never ends
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"hits": 0, "tokens": 0}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, code, body=b"{}", headers=None):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/hits":
            with LOCK:
                return self.send(200, json.dumps(STATE).encode())
        if self.server.other:
            with LOCK:
                STATE["hits"] += 1
            return self.send(200, json.dumps({"token": "stolen"}).encode())
        if self.path.startswith("/token"):
            with LOCK:
                STATE["tokens"] += 1
            return self.send(200, json.dumps({"token": "t"}).encode())
        self.registry(self.server.mode, self.server.other_port)

    def registry(self, mode, other):
        port = self.server.server_address[1]
        if mode == "realm-http":
            realm = "http://127.0.0.2:%d/token" % other
            return self.send(401, headers={
                "WWW-Authenticate": 'Bearer realm="%s",service="s"' % realm})
        if mode == "auth-loop":
            realm = "http://127.0.0.1:%d/token" % port
            return self.send(401, headers={
                "WWW-Authenticate": 'Bearer realm="%s",service="s"' % realm})
        if mode == "redirect-http":
            return self.send(307, headers={
                "Location": "http://127.0.0.2:%d/elsewhere" % other})
        if mode == "redirect-file":
            return self.send(307, headers={"Location": "file:///etc/passwd"})
        if mode == "redirect-loop":
            return self.send(307, headers={"Location": self.path})
        if mode == "endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b" " * 65536
            try:
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                return None
        return self.send(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, mode, other):
        super().__init__((addr, 0), Handler)
        self.mode, self.other, self.other_port = mode, other, 0


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    reg = Server("127.0.0.1", sys.argv[1], False)
    other = Server("127.0.0.2", sys.argv[1], True)
    reg.other_port = other.server_address[1]
    for s in (reg, other):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("PORT %d %d" % (reg.server_address[1], other.server_address[1]), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
