#!/usr/bin/env python3
"""Guess a user's password from one address while the real user logs in from another.

  auth_guess.py HOST PORT USER GOOD_PASSWORD GUESSES ATTACKER_IP USER_IP

The attacker reconnects from ATTACKER_IP and tries GUESSES wrong passwords (AUTH PLAIN).
Once it is under way, the real user connects from USER_IP, logs in with GOOD_PASSWORD and
sends one message. Prints one JSON line: how many guesses were checked (535), refused
(454), otherwise answered, and how long the real user's login and send took.
"""
import base64
import json
import smtplib
import sys
import threading
import time


def plain(user, password):
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


def main():
    host, port, user, good, guesses, attacker, real = sys.argv[1:8]
    port, guesses = int(port), int(guesses)
    counts = {"checked": 0, "refused": 0, "other": 0}
    started = threading.Event()

    def attack():
        done = 0
        while done < guesses:
            try:
                s = smtplib.SMTP(host, port, source_address=(attacker, 0), timeout=30)
                s.ehlo("attacker.test")
            except (smtplib.SMTPException, OSError):
                counts["other"] += 1
                done += 1
                continue
            try:
                while done < guesses:
                    code, _ = s.docmd("AUTH", "PLAIN " + plain(user, "wrong-%d" % done))
                    done += 1
                    started.set()
                    if code == 535:
                        counts["checked"] += 1
                    elif code == 454:
                        counts["refused"] += 1
                        break
                    else:
                        counts["other"] += 1
                        break
            except (smtplib.SMTPException, OSError):
                pass
            try:
                s.close()
            except OSError:
                pass

    t = threading.Thread(target=attack)
    t.start()
    started.wait(30)
    time.sleep(0.2)
    t0 = time.time()
    s = smtplib.SMTP(host, port, source_address=(real, 0), timeout=30)
    s.ehlo("user.test")
    s.login(user, good)
    s.sendmail("me@tenant.test", ["rcpt@example.org"], b"Subject: real user\r\n\r\nhi\r\n")
    s.quit()
    took = time.time() - t0
    t.join()
    print(json.dumps(counts | {"user_seconds": took}))


if __name__ == "__main__":
    sys.exit(main())
