#!/usr/bin/env python3
"""Inject one message into each of TENANTS x CAMPAIGNS x DOMAINS distinct scheduled queues.

  inject_queues.py PORT TENANTS CAMPAIGNS DOMAINS [THREADS]
"""
import smtplib
import sys
import threading

port, tenants, campaigns, domains = (int(x) for x in sys.argv[1:5])
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 4
combos = [(t, c, d) for t in range(tenants) for c in range(campaigns) for d in range(domains)]
body = "Subject: queue test\r\n\r\n" + ("x" * 70 + "\r\n") * 10
errors = []


def worker(part):
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.ehlo("bench.test")
            for t, c, d in part:
                msg = f"X-Tenant: t{t}\r\nX-Campaign: c{c}\r\n{body}"
                s.sendmail("bench@example.com", [f"user@d{d}.bench.test"], msg)
    except Exception as e:
        errors.append(repr(e))


parts = [combos[i::threads] for i in range(threads)]
ts = [threading.Thread(target=worker, args=(p,)) for p in parts]
for t in ts:
    t.start()
for t in ts:
    t.join()
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
