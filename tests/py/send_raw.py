#!/usr/bin/env python3
"""Send one message file as it is, over SMTP.

  send_raw.py HOST PORT SENDER RECIPIENT FILE [--smtputf8]
"""
import smtplib
import sys


def main():
    host, port, sender, rcpt, path = sys.argv[1:6]
    options = ["SMTPUTF8"] if "--smtputf8" in sys.argv[6:] else []
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        s.ehlo("client.test")
        s.sendmail(sender, [rcpt], open(path, "rb").read(), mail_options=options)
    print("sent")


if __name__ == "__main__":
    sys.exit(main())
