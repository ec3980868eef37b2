#!/usr/bin/env python3
"""A registry token service (the bearer flow of docker's token auth spec).

  token_server.py CERT KEY TOKEN_CERT TOKEN_KEY USER:PASS ANON_REPO PORT_FILE LOG

Serves GET /token?service=S&scope=repository:NAME:pull over HTTPS on a free
port of 127.0.0.1 (written to PORT_FILE). With Basic credentials equal to
USER:PASS it grants pull on any repository; without credentials, on ANON_REPO
only (an empty grant otherwise, as Docker Hub does); wrong credentials get 401.
Tokens are JWTs signed RS256 with TOKEN_KEY (openssl), the certificate in
their x5c header, which the registry trusts (rootcertbundle). Each request
is logged to LOG as "anon|user|refused SCOPE".
"""
import base64, http.server, json, os, ssl, subprocess, sys, time, urllib.parse

cert, key, tcert, tkey, creds, anon_repo, port_file, log = sys.argv[1:9]

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

with open(tcert) as f:
    pem = f.read()
der = base64.b64decode("".join(l for l in pem.splitlines() if "-----" not in l))

def token(sub, access):
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
    now = int(time.time())
    claims = {"iss": "ocivm-test-issuer", "sub": sub, "aud": "ocivm-test", "exp": now + 600, "nbf": now - 60,
              "iat": now, "jti": b64u(os.urandom(12)), "access": access}
    signing = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", tkey], input=signing.encode(),
                         stdout=subprocess.PIPE, check=True).stdout
    return signing + "." + b64u(sig)

class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        scope = q.get("scope", [""])[0]
        auth = self.headers.get("Authorization", "")
        who = "anon"
        if auth.startswith("Basic "):
            if base64.b64decode(auth[6:]).decode() != creds:
                with open(log, "a") as f:
                    f.write("refused %s\n" % scope)
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"details":"wrong credentials"}')
                return
            who = "user"
        access = []
        parts = scope.split(":")
        if u.path == "/token" and len(parts) == 3 and parts[0] == "repository":
            if who == "user" or parts[1] == anon_repo:
                access = [{"type": "repository", "name": parts[1], "actions": ["pull"]}]
        with open(log, "a") as f:
            f.write("%s %s\n" % (who, scope))
        body = json.dumps({"token": token(creds.split(":")[0] if who == "user" else "", access)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.replace(port_file + ".tmp", port_file)
srv.serve_forever()
