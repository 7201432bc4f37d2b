#!/usr/bin/env python3
"""A receiving SMTP server (aiosmtpd) for switchyard's delivery tests.

  sink.py --port P [--host 127.0.0.1] --record FILE [--mode MODE] [--tls CERT KEY]

MODE: accept (default) | always451 | fail-first:N (451 the first N tries of each
Message-ID, then 250) | reject550
Every DATA is recorded as one JSON line in FILE: message_id, peer (client IP), ehlo,
tls (bool), mail_from, rcpts, code, and content_file: the message exactly as received
(dot-stuffing undone), kept in FILE.d/. Prints "ready" once listening.
"""
import argparse
import asyncio
import json
import os
import re
import ssl
import sys
import threading
import time

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, record, mode):
        self.record = open(record, "a", buffering=1)
        self.store = record + ".d"
        os.makedirs(self.store, exist_ok=True)
        self.stored = 0
        self.mode = mode
        self.tries = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        content = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        m = re.search(rb"(?im)^Message-ID:\s*(\S+)", content)
        mid = m.group(1).decode() if m else ""
        with self.lock:
            n = self.tries.get(mid, 0) + 1
            self.tries[mid] = n
            self.stored += 1
            content_file = os.path.join(self.store, "%d.eml" % self.stored)
        with open(content_file, "wb") as f:
            f.write(envelope.original_content or content)
        if self.mode == "always451":
            code, reply = 451, "451 4.3.0 try again later"
        elif self.mode == "reject550":
            code, reply = 550, "550 5.7.26 This message does not have authentication information"
        elif self.mode.startswith("fail-first:") and n <= int(self.mode.split(":")[1]):
            code, reply = 451, "451 4.7.1 greylisted, try again"
        else:
            code, reply = 250, "250 2.0.0 OK received"
        self.record.write(json.dumps({
            "message_id": mid,
            "peer": session.peer[0],
            "ehlo": session.host_name,
            "tls": session.ssl is not None,
            "mail_from": envelope.mail_from,
            "rcpts": envelope.rcpt_tos,
            "code": code,
            "content_file": content_file,
            "time": time.time(),
        }) + "\n")
        return reply


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--mode", default="accept")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    a = p.parse_args()
    kwargs = {}
    if a.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        kwargs["tls_context"] = ctx
    controller = Controller(Handler(a.record, a.mode), hostname=a.host, port=a.port,
                            decode_data=False, data_size_limit=50 * 1024 * 1024, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
