#!/usr/bin/env python3
"""A small image registry for the pull tests, on 127.0.0.1 only.

    registry.py LAYOUT REPO [--corrupt-layers] [--no-auth]

Serves the OCI layout folder LAYOUT (as mkimage.py writes it) as repository
REPO through the OCI distribution API: GET /v2/REPO/manifests/<tag or
digest> (every tag answers with the layout's index, so clients must pick
the linux/amd64 manifest from it) and GET /v2/REPO/blobs/<digest> (sent
through a redirect, as registries backed by blob storage do). Requests need
an anonymous bearer token, got from /token after a 401 carrying
WWW-Authenticate: Bearer realm=...,service=...,scope=... With
--corrupt-layers, layer blobs come back with one byte changed. Prints
"PORT <n>" once listening; a line on stdin or its end stops it. Every
request is counted in /stats (JSON) so tests can see what was fetched.
"""
import hashlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "hutch-test-token"
SERVICE = "hutch-test-registry"


class Registry(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, code, body=b"", ctype="application/json", headers=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        if self.server.no_auth:
            return True
        if self.headers.get("Authorization") == "Bearer " + TOKEN:
            return True
        port = self.server.server_address[1]
        scope = "repository:%s:pull" % self.server.repo
        self.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', headers={
            "WWW-Authenticate": 'Bearer realm="http://127.0.0.1:%d/token",service="%s",'
                                'scope="%s"' % (port, SERVICE, scope)})
        return False

    def blob(self, hexd):
        path = os.path.join(self.server.layout, "blobs", "sha256", hexd)
        if len(hexd) != 64 or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def do_GET(self):
        if self.path == "/stats":
            with self.server.lock:
                return self.send(200, json.dumps(self.server.stats).encode())
        self.server.count(self.path.split("?")[0])
        base = "/v2/%s/" % self.server.repo
        if self.path.startswith("/token?"):
            want = "scope=repository%%3A%s%%3Apull" % self.server.repo.replace("/", "%2F")
            if "service=" + SERVICE not in self.path or want not in self.path:
                return self.send(403, b'{"errors":[{"code":"DENIED"}]}')
            return self.send(200, json.dumps({"token": TOKEN}).encode())
        if self.path.startswith("/blobstore/"):
            data = self.blob(self.path[len("/blobstore/"):])
            if data is None:
                return self.send(404)
            if self.server.corrupt and self.server.is_layer(self.path[-64:]):
                data = data[:-1] + bytes([data[-1] ^ 1])
            return self.send(200, data, "application/octet-stream")
        if self.path == "/v2/":
            return self.send(200, b"{}") if self.authorized() else None
        if not self.path.startswith(base):
            return self.send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
        if not self.authorized():
            return None
        rest = self.path[len(base):]
        if rest.startswith("manifests/"):
            return self.manifest(rest[len("manifests/"):])
        if rest.startswith("blobs/sha256:"):
            hexd = rest[len("blobs/sha256:"):]
            if self.blob(hexd) is None:
                return self.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            return self.send(307, headers={"Location": "/blobstore/" + hexd})
        return self.send(404)

    def manifest(self, ref):
        if ref.startswith("sha256:"):
            data = self.blob(ref[7:])
            if data is None:
                return self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            mt = json.loads(data).get("mediaType",
                                      "application/vnd.oci.image.manifest.v1+json")
        else:
            with open(os.path.join(self.server.layout, "index.json"), "rb") as f:
                index = json.load(f)
            index["mediaType"] = "application/vnd.oci.image.index.v1+json"
            # An attestation-like entry first: clients must pick by platform.
            index["manifests"].insert(0, dict(index["manifests"][0],
                                              platform={"os": "unknown",
                                                        "architecture": "unknown"}))
            data = json.dumps(index).encode()
            mt = index["mediaType"]
        return self.send(200, data, mt, {
            "Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest()})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, layout, repo, corrupt, no_auth):
        super().__init__(("127.0.0.1", 0), Registry)
        self.layout, self.repo, self.corrupt, self.no_auth = layout, repo, corrupt, no_auth
        self.stats, self.lock = {}, threading.Lock()
        with open(os.path.join(layout, "index.json"), "rb") as f:
            desc = json.load(f)["manifests"][0]
        with open(os.path.join(layout, "blobs", "sha256", desc["digest"][7:]), "rb") as f:
            self.layers = {d["digest"][7:] for d in json.load(f)["layers"]}

    def is_layer(self, hexd):
        return hexd in self.layers

    def count(self, path):
        kind = "blob" if "/blobstore/" in path else path.split("/")[-2] if "/v2/" in path \
            else "token"
        with self.lock:
            self.stats[kind] = self.stats.get(kind, 0) + 1


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__)
    srv = Server(args[0], args[1], "--corrupt-layers" in sys.argv, "--no-auth" in sys.argv)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("PORT %d" % srv.server_address[1], flush=True)
    sys.stdin.readline()
    srv.shutdown()


if __name__ == "__main__":
    main()
