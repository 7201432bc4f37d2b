#!/usr/bin/env python3
"""An HTTPS server publishing MTA-STS policies, for switchyard's MTA-STS tests.

  mta_sts_server.py --listen IP:PORT --cert CERT --key KEY --root DIR --log FILE

GET /.well-known/mta-sts.txt with Host mta-sts.DOMAIN answers DIR/DOMAIN.txt as text/plain;
a file whose first line is "REDIRECT URL" answers 301 to URL instead; anything else is 404.
Every request is appended to FILE as one JSON line {"host", "path", "status"}. Prints
"ready" once listening.
"""
import argparse
import json
import os
from http.server import BaseHTTPRequestHandler

from http_serve import serve


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    log = open(args.log, "a", buffering=1)

    class Policy(BaseHTTPRequestHandler):
        def do_GET(self):
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            domain = host[len("mta-sts."):] if host.startswith("mta-sts.") else None
            path = os.path.join(args.root, f"{domain}.txt") if domain else None
            status, headers, body = 404, {"Content-Type": "text/plain"}, b"not found\n"
            if self.path == "/.well-known/mta-sts.txt" and path and os.path.exists(path):
                with open(path, "rb") as f:
                    body = f.read()
                if body.startswith(b"REDIRECT "):
                    target = body.split(b"\n")[0][len(b"REDIRECT "):].decode()
                    status, headers, body = 301, {"Location": target}, b""
                else:
                    status = 200
            log.write(json.dumps({"host": host, "path": self.path, "status": status}) + "\n")
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    serve(args.listen, Policy, args.cert, args.key)


if __name__ == "__main__":
    main()
