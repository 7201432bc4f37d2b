#!/usr/bin/env python3
"""Inject from several clients, each over one session at a time, until the server goes away.

  inject_until_closed.py HOST PORT CLIENTS STARTED_FILE

Each message goes to its own recipient (c<client>-<n>@example.org). Writes STARTED_FILE once
every client has had a message accepted. When the server ends a session, the client notes
how: with a reply (e.g. 421 4.3.2) or silently (the connection closed without one). It then
reconnects; a refused connection (the listener is closed) ends the client. Prints one JSON
line: accepted recipients, replies that ended sessions, and the silent closes.
"""
import json
import smtplib
import socket
import sys
import threading
import time


def main():
    host, port, clients, started_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    accepted, endings, silent = [], [], []
    lock = threading.Lock()
    first = [threading.Event() for _ in range(clients)]

    def client(c):
        n = 0
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                s = smtplib.SMTP(host, port, timeout=30)
                s.ehlo("load.test")
            except (ConnectionRefusedError, OSError) as e:
                if isinstance(e, smtplib.SMTPServerDisconnected):
                    with lock:
                        silent.append("at greeting")
                    continue
                return  # the listener is closed
            except smtplib.SMTPConnectError as e:
                with lock:
                    endings.append(e.smtp_code)
                return
            try:
                while True:
                    n += 1
                    rcpt = "c%d-%d@example.org" % (c, n)
                    msg = ("Subject: load\r\nMessage-ID: <%s>\r\n\r\nbody\r\n" % rcpt).encode()
                    s.sendmail("load@tenant.test", [rcpt], msg)
                    with lock:
                        accepted.append(rcpt)
                    first[c].set()
            except smtplib.SMTPServerDisconnected:
                with lock:
                    silent.append(rcpt)
            except smtplib.SMTPResponseException as e:
                with lock:
                    endings.append(e.smtp_code)
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    silent.append("%s: %r" % (rcpt, e))
            try:
                s.close()
            except OSError:
                pass

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for e in first:
        e.wait(30)
    open(started_file, "w").write("started\n")
    for t in threads:
        t.join()
    print(json.dumps({"accepted": accepted, "endings": endings, "silent": silent}))


if __name__ == "__main__":
    sys.exit(main())
