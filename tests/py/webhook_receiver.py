#!/usr/bin/env python3
"""A webhook endpoint for switchyard's tests: verifies each batch with the Standard
Webhooks reference library and records what it got.

  webhook_receiver.py --listen IP:PORT --secret whsec_... --out FILE
                      [--fail-every N] [--status CODE] [--lag FILE]
                      [--cert PEM --key PEM]

Each POST is checked with standardwebhooks' Webhook(secret).verify(body, headers). Every
--fail-every'th request (counting from 1) is answered 500 before anything is recorded;
--status answers every request with CODE (e.g. 400). Otherwise the answer is 204 and FILE
gets one JSON line per request: {"webhook_id", "verified", "error", "records": [...]}.
With --lag, FILE gets instead one line per record: seconds from the record's timestamp to
the arrival of its batch (bench/webhooks.sh). With --cert and --key it serves HTTPS.
Prints "ready" once listening.
"""
import argparse
import datetime
import json
import threading
from http.server import BaseHTTPRequestHandler

from http_serve import serve
from standardwebhooks.webhooks import Webhook


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--status", type=int, default=0)
    ap.add_argument("--lag")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    out = open(args.out, "a", buffering=1)
    lag_out = open(args.lag, "a", buffering=1) if args.lag else None
    verifier = Webhook(args.secret)
    lock = threading.Lock()
    seen = {"requests": 0}

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            arrival = datetime.datetime.now(datetime.timezone.utc)
            with lock:
                seen["requests"] += 1
                n = seen["requests"]
            if args.status:
                return self.answer(args.status)
            if args.fail_every and n % args.fail_every == 0:
                return self.answer(500)
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified, error = True, None
            try:
                verifier.verify(body, headers)
            except Exception as e:  # noqa: BLE001 - any failure is what we record
                verified, error = False, f"{type(e).__name__}: {e}"
            try:
                records = json.loads(body)
            except ValueError as e:
                records, verified, error = [], False, f"not JSON: {e}"
            if args.lag:
                lags = []
                for r in records:
                    t = datetime.datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
                    lags.append(f"{(arrival - t).total_seconds():.4f}")
                with lock:
                    lag_out.write("".join(f"{x}\n" for x in lags))
                return self.answer(204 if verified else 400)
            line = {
                "webhook_id": headers.get("webhook-id"),
                "content_type": headers.get("content-type"),
                "verified": verified,
                "error": error,
                "records": records,
            }
            with lock:
                out.write(json.dumps(line) + "\n")
            self.answer(204)

        def answer(self, code):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    serve(args.listen, Receiver, args.cert, args.key)


if __name__ == "__main__":
    main()
