#!/usr/bin/env python3
"""A plain-HTTP registry that misbehaves on purpose (ocivm pull's hostile cases).

  hostile_registry.py LAYOUT PORT_FILE

Serves the single image of the OCI layout LAYOUT under repository "good",
and for each other repository one way of lying or inflating:
  flaky       503, then 429 (Retry-After: 1), then the good image
  bigmanifest a 5 MiB manifest
  redirect    a manifest that redirects to itself forever
  longblob    the good manifest, its layer served with extra bytes
  foreign     a manifest with a non-distributable layer
  urls        a layer with "urls" (fetched from elsewhere)
  lying       a manifest whose Docker-Content-Digest is another digest
  deep        a manifest nested 100000 levels deep
  hugeheader  a 20 KiB response header
  schema1     a Docker schema 1 manifest
  baddigest   a layer digest that would climb out of a directory
  artifact    a manifest whose config is not an image config
"""
import hashlib, http.server, json, os, sys

layout, port_file = sys.argv[1], sys.argv[2]
blobs = os.path.join(layout, "blobs", "sha256")
idx = json.load(open(os.path.join(layout, "index.json")))
good_digest = idx["manifests"][0]["digest"]
good = open(os.path.join(blobs, good_digest[7:]), "rb").read()
man = json.loads(good)
counts = {}

def manifest_variant(repo):
    m = json.loads(good)
    if repo == "foreign":
        m["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    elif repo == "urls":
        m["layers"][0]["urls"] = ["https://example.invalid/layer"]
    elif repo == "baddigest":
        m["layers"][0]["digest"] = "sha256:../../../../etc/passwd"
    elif repo == "artifact":
        m["config"]["mediaType"] = "application/vnd.example.thing.v1+json"
    return json.dumps(m).encode()

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, code, body=b"", ctype="application/json", headers=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = self.path.split("/")
        if self.path == "/v2/" or len(parts) < 5:
            return self.send(200, b"{}")
        repo, kind, ref = parts[2], parts[3], parts[4]
        counts[repo] = counts.get(repo, 0) + 1
        mt = "application/vnd.oci.image.manifest.v1+json"
        if repo == "flaky" and counts[repo] == 1:
            return self.send(503, b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}')
        if repo == "flaky" and counts[repo] == 2:
            return self.send(429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}', headers=[("Retry-After", "1")])
        if kind == "manifests":
            if repo == "bigmanifest":
                return self.send(200, b'{"schemaVersion":2,"x":"' + b"a" * (5 << 20) + b'"}', mt)
            if repo == "redirect":
                return self.send(302, b"", headers=[("Location", self.path)])
            if repo == "lying":
                return self.send(200, good, mt, [("Docker-Content-Digest", "sha256:" + "0" * 64)])
            if repo == "deep":
                return self.send(200, b"[" * 100000 + b"]" * 100000, mt)
            if repo == "hugeheader":
                return self.send(200, good, mt, [("X-Filler", "a" * 20000)])
            if repo == "schema1":
                return self.send(200, b'{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}',
                                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
            body = manifest_variant(repo)
            return self.send(200, body, mt, [("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())])
        if kind == "blobs":
            if not ref.startswith("sha256:") or "/" in ref[7:] or not os.path.exists(os.path.join(blobs, ref[7:])):
                return self.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            data = open(os.path.join(blobs, ref[7:]), "rb").read()
            if repo == "longblob" and ref != man["config"]["digest"]:
                data += b"extra bytes the manifest did not announce"
            return self.send(200, data, "application/octet-stream")
        self.send(404, b"{}")

class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # ocivm's TLS probe of a plain-HTTP insecure registry resets; not news

srv = Server(("127.0.0.1", 0), H)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.replace(port_file + ".tmp", port_file)
srv.serve_forever()
