#!/usr/bin/env python3
"""Real SMTP client (Python smtplib) for switchyard's tests.

  send HOST PORT --count N --rcpt A [--rcpt B ...] [--tenant T] [--campaign C]
      one session, N messages with send_message(); prints one JSON line per message
  inject HOST PORT --count N --threads K --out FILE [--tenant-prefix P] [--campaign C]
         [--rcpt ADDR] [--seconds S] [--timeout T]
      K sessions in parallel, N messages in all (or as many as fit in S seconds), one
      transaction each; after every 250 appends "message-id tenant campaign" to FILE
      (flushed), so a test can SIGKILL the daemon mid-stream and know exactly which
      messages were acknowledged. Any reply but 250 is an error (exit 1).
"""
import argparse
import json
import smtplib
import sys
import threading
import time
from email.message import EmailMessage
from email.utils import make_msgid


def make(i, rcpts, tenant=None, campaign=None, size=0):
    m = EmailMessage()
    m["From"] = "sender@example.com"
    m["To"] = ", ".join(rcpts)
    m["Subject"] = f"test {i}"
    m["Message-ID"] = make_msgid(domain="test.switchyard")
    if tenant:
        m["X-Tenant"] = tenant
    if campaign:
        m["X-Campaign"] = campaign
    m.set_content(("hello %d\n" % i) + ("x" * 70 + "\n") * (size // 71))
    return m


def cmd_send(a):
    with smtplib.SMTP(a.host, a.port, timeout=30) as s:
        s.ehlo("client.test")
        for i in range(a.count):
            m = make(i, a.rcpt, a.tenant, a.campaign)
            refused = s.send_message(m, from_addr=a.sender, to_addrs=a.rcpt)
            print(json.dumps({"message_id": m["Message-ID"], "refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}}))
    return 0


def cmd_inject(a):
    lock = threading.Lock()
    out = open(a.out, "a", buffering=1)
    per = [a.count // a.threads + (1 if t < a.count % a.threads else 0) for t in range(a.threads)]
    errors = []
    deadline = time.monotonic() + a.seconds if a.seconds else None

    def worker(t):
        tenant = f"{a.tenant_prefix}{t}"
        try:
            with smtplib.SMTP(a.host, a.port, timeout=a.timeout) as s:
                s.ehlo("client.test")
                for i in range(per[t]):
                    if deadline and time.monotonic() > deadline:
                        break
                    m = make(i, [a.rcpt], tenant, a.campaign, a.size)
                    s.mail("sender@example.com")
                    s.rcpt(a.rcpt)
                    code, text = s.data(m.as_bytes())
                    if code != 250:
                        raise RuntimeError(f"DATA got {code} {text!r}")
                    with lock:
                        out.write(f"{m['Message-ID']} {tenant} {a.campaign}\n")
                        out.flush()
        except Exception as e:  # the daemon may be killed under us: that is the test
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--rcpt", action="append", required=True)
    s.add_argument("--tenant")
    s.add_argument("--campaign")
    s.add_argument("--sender", default="sender@example.com")
    i = sub.add_parser("inject")
    i.add_argument("host")
    i.add_argument("port", type=int)
    i.add_argument("--count", type=int, required=True)
    i.add_argument("--threads", type=int, default=4)
    i.add_argument("--out", required=True)
    i.add_argument("--tenant-prefix", default="tenant")
    i.add_argument("--campaign", default="camp")
    i.add_argument("--size", type=int, default=0)
    i.add_argument("--rcpt", default="rcpt@example.net")
    i.add_argument("--seconds", type=float, default=0)
    i.add_argument("--timeout", type=float, default=30)
    a = p.parse_args()
    return cmd_send(a) if a.cmd == "send" else cmd_inject(a)


if __name__ == "__main__":
    sys.exit(main())
