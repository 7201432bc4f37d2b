#!/usr/bin/env python3
"""Send incompressible messages over one session until the server refuses one.

  fill.py HOST PORT MAX SIZE PREFIX

Each message (SIZE bytes of random base64 lines) goes to PREFIX-<n>@example.org. Stops at
the first refusal or after MAX messages. Prints one JSON line: the accepted recipients and
the refusal (code, text) if there was one.
"""
import base64
import json
import os
import smtplib
import sys


def main():
    host, port, most, size, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    accepted, refusal = [], None
    s = smtplib.SMTP(host, port, timeout=60)
    s.ehlo("fill.test")
    for n in range(most):
        rcpt = "%s-%d@example.org" % (prefix, n)
        body = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
        msg = b"Subject: fill\r\nMessage-ID: <" + rcpt.encode() + b">\r\n\r\n" + body
        try:
            s.sendmail("fill@tenant.test", [rcpt], msg)
            accepted.append(rcpt)
        except smtplib.SMTPDataError as e:
            refusal = [e.smtp_code, e.smtp_error.decode(errors="replace")]
            break
        except smtplib.SMTPResponseException as e:
            refusal = [e.smtp_code, e.smtp_error.decode(errors="replace")]
            break
    try:
        s.quit()
    except (smtplib.SMTPException, OSError):
        pass
    print(json.dumps({"accepted": accepted, "refusal": refusal}))


if __name__ == "__main__":
    sys.exit(main())
