#!/usr/bin/env python3
"""Verify every DKIM-Signature of messages with dkimpy, the independent judge.

  dkim_verify.py KEYS.json MESSAGE.eml...

KEYS.json maps "selector._domainkey.domain" to its TXT record ("v=DKIM1; k=...; p=...");
no DNS is asked. Prints one JSON line per message:
{"file": ..., "signatures": [{"d": ..., "s": ..., "a": ..., "h": ..., "ok": true}, ...]}
"""
import json
import sys

import dkim
from dkim.util import parse_tag_value


def main():
    keys = json.load(open(sys.argv[1]))

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        record = keys.get(name.rstrip("."))
        return record.encode() if record else None

    for path in sys.argv[2:]:
        message = open(path, "rb").read()
        d = dkim.DKIM(message)
        sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
        out = []
        for idx, value in enumerate(sigs):
            tags = parse_tag_value(value)
            try:
                ok = dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
            except Exception as e:  # a verifier error is a failed check, with its reason
                ok = False
                tags[b"error"] = str(e).encode()
            out.append({k: tags.get(k.encode(), b"").decode() for k in ("d", "s", "a", "h", "error")}
                       | {"ok": bool(ok)})
        print(json.dumps({"file": path, "signatures": out}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
