#!/usr/bin/env bash
# Proves the README's two commands on a machine as a new user has it: removes the packages
# the tests drive, clones this repository afresh, runs `cargo run --release -- serve` and
# sends it a first message, then runs `scripts/test.sh` (which must install them again).
#
# Run on demand, as root, never from .ci/run: it uninstalls packages from this machine.
#   scripts/fresh-check.sh [--keep-clone]
# The clone goes to a new directory under /tmp with ../shared linked beside it (the
# KumoMTA data files some tests read), as CI lays it out. Logs: <clone>/fresh-check-*.log.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
keep=0
[ "${1:-}" = "--keep-clone" ] && keep=1
[ "$(id -u)" -eq 0 ] || { echo "fresh-check.sh: run as root (it removes packages)" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"

echo "== removing the packages the tests drive"
export DEBIAN_FRONTEND=noninteractive
apt-get remove -y -qq --purge swaks libio-socket-ssl-perl libnet-ssleay-perl \
  libauthen-sasl-perl dnsmasq dnsmasq-base prometheus postfix >/dev/null 2>&1 || true
python3 -m pip uninstall -y -q aiosmtpd dkimpy pynacl 2>/dev/null ||
  python3 -m pip uninstall -y -q --break-system-packages aiosmtpd dkimpy pynacl 2>/dev/null || true
for probe in "command -v swaks" "perl -MIO::Socket::SSL -e1" "perl -MNet::SSLeay -e1" \
  "perl -MAuthen::SASL -e1" "command -v smtp-source" "command -v dnsmasq" \
  "command -v promtool" "python3 -c 'import aiosmtpd'" "python3 -c 'import dkim'" \
  "python3 -c 'import nacl'"; do
  if bash -c "$probe" >/dev/null 2>&1; then
    echo "fresh-check.sh: \`$probe\` still works after removal" >&2
    exit 1
  fi
done
echo "   gone: swaks, Perl TLS/SASL, postfix tools, dnsmasq, prometheus, aiosmtpd, dkimpy, pynacl"

work="$(mktemp -d /tmp/switchyard-fresh.XXXXXX)"
git clone -q "$repo" "$work/main"
[ -d "$repo/../shared" ] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
cd "$work/main"
echo "== fresh clone at $work/main ($(git rev-parse --short HEAD))"

echo "== command 1: cargo run --release -- serve"
mkdir -p "$work/serve"
(cd "$work/serve" && exec cargo run --release --manifest-path "$work/main/Cargo.toml" -- serve) \
  >"$work/main/fresh-check-serve.log" 2>&1 &
serve=$!
trap 'kill -TERM $serve 2>/dev/null || true' EXIT
python3 - <<'PY'
import smtplib, time, urllib.request, json
deadline = time.time() + 1800  # the first cold release build
while True:
    try:
        s = smtplib.SMTP("127.0.0.1", 2525, timeout=10)
        break
    except OSError:
        if time.time() > deadline:
            raise SystemExit("the daemon never listened on 127.0.0.1:2525")
        time.sleep(2)
s.ehlo()
assert s.mail("me@example.com")[0] == 250
assert s.rcpt("someone@sink.test")[0] == 250
code, text = s.data(b"Subject: first\r\nX-Tenant: acme\r\n\r\nhello\r\n")
assert code == 250, (code, text)
s.quit()
health = json.load(urllib.request.urlopen("http://127.0.0.1:8025/api/v1/health"))
assert health.get("status") == "ok", health
print("   first message:", code, text.decode(), "| /health:", health)
PY
kill -TERM "$serve" 2>/dev/null; pkill -TERM -f "$work/main/target/release/switchyard serve" || true
wait "$serve" || true

echo "== command 2: scripts/test.sh"
set +e
scripts/test.sh 2>&1 | tee "$work/main/fresh-check-test.log"
rc=${PIPESTATUS[0]}
set -e
echo "== scripts/test.sh exited $rc"
[ $keep -eq 1 ] || [ $rc -ne 0 ] || rm -rf "$work"
exit $rc
