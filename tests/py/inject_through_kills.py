#!/usr/bin/env python3
"""Inject from several clients while the server is killed and restarted under them.

  inject_through_kills.py HOST PORT CLIENTS RATE ACKS STOP_FILE

Each client sends one message per transaction, RATE messages a second at most, each with
its own recipient and Message-ID: c<client>-<n>@example.org, and every 8th to
c<client>-<n>@bounce.test (which the test's receiver refuses). Clients 0, 2, ... are tenant
t0, the others t1. After every 250 "recipient unix-time" is appended to ACKS (flushed at once), so
the test knows exactly which messages were acknowledged whenever the server dies. A refused
connection or a session cut by the kill is retried after a moment; clients stop when
STOP_FILE exists (or after 5 minutes). Prints one JSON line: messages acknowledged, sessions
cut, and replies other than 250.
"""
import json
import os
import smtplib
import sys
import threading
import time


def main():
    host, port, clients, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    acks_file, stop_file = sys.argv[5], sys.argv[6]
    acks = open(acks_file, "a", buffering=1)
    lock = threading.Lock()
    totals = {"acknowledged": 0, "cut": 0, "other_replies": []}
    give_up = time.monotonic() + 300

    def stopped():
        return os.path.exists(stop_file) or time.monotonic() > give_up

    def client(c):
        n = 0
        tenant = "t%d" % (c % 2)
        while not stopped():
            try:
                s = smtplib.SMTP(host, port, timeout=20)
                s.ehlo("crash.test")
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # down, or starting: try again
                continue
            try:
                while not stopped():
                    n += 1
                    domain = "bounce.test" if n % 8 == 0 else "example.org"
                    rcpt = "c%d-%d@%s" % (c, n, domain)
                    msg = (
                        "From: sender@%s.test\r\nTo: %s\r\nSubject: crash loop %d\r\n"
                        "Message-ID: <c%d-%d@crash.test>\r\nX-Tenant: %s\r\n\r\nbody %d\r\n"
                        % (tenant, rcpt, n, c, n, tenant, n)
                    ).encode()
                    started = time.monotonic()
                    s.mail("sender@%s.test" % tenant)
                    code, text = s.rcpt(rcpt)
                    if code != 250:
                        with lock:
                            totals["other_replies"].append([rcpt, code, text.decode()])
                        s.rset()
                        continue
                    code, text = s.data(msg)
                    if code == 250:
                        with lock:
                            acks.write("%s %.3f\n" % (rcpt, time.time()))
                            totals["acknowledged"] += 1
                    else:
                        with lock:
                            totals["other_replies"].append([rcpt, code, text.decode()])
                    pause = 1.0 / rate - (time.monotonic() - started)
                    if pause > 0:
                        time.sleep(pause)
            except (OSError, smtplib.SMTPException):
                with lock:
                    totals["cut"] += 1
            try:
                s.close()
            except OSError:
                pass

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acks.close()
    print(json.dumps(totals))


if __name__ == "__main__":
    sys.exit(main())
