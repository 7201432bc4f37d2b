#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests drive (real SMTP clients
# and servers, DNS, Prometheus), each checked by the capability a test uses rather than by a
# command's presence, then builds once in release and runs every test.
#
# Needs root (apt-get) on a machine where something is missing. tests/common/tools.rs names
# the same capabilities: a test run without this script fails naming the missing package.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

# capability check            | Debian package(s) that bring it
CHECKS=(
  "command -v swaks                              |swaks"
  "perl -MIO::Socket::SSL -e1                    |libio-socket-ssl-perl"
  "perl -MNet::SSLeay -e1                        |libnet-ssleay-perl"
  "perl -MAuthen::SASL -e1                       |libauthen-sasl-perl"
  "command -v smtp-source                        |postfix"
  "command -v smtp-sink                          |postfix"
  "dnsmasq --version                             |dnsmasq-base"
  "promtool --version                            |prometheus"
  "prometheus --version                          |prometheus"
  "python3 -c 'import smtplib, ssl, asyncio'     |python3"
  "python3 -m pip --version                      |python3-pip"
  "redis-server --version                        |redis-server"
  "redis-cli --version                           |redis-tools"
)
# capability check            | PyPI package
PIP_CHECKS=(
  "python3 -c 'import aiosmtpd.controller'       |aiosmtpd"
  "python3 -c 'import dkim'                      |dkimpy"
  "python3 -c 'import nacl.signing'              |pynacl"
  "python3 -c 'import standardwebhooks'          |standardwebhooks"
)

passes() { bash -c "$1" >/dev/null 2>&1; }
check() { echo "${1%%|*}" | sed 's/ *$//'; }
package() { echo "${1##*|}"; }

missing_apt() {
  local line
  for line in "${CHECKS[@]}"; do
    passes "$(check "$line")" || package "$line"
  done | sort -u
}

mapfile -t missing < <(missing_apt)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix only lends its smtp-source/smtp-sink tools (and, in bench/, a comparison smtpd):
  # no mail system is configured.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for line in "${PIP_CHECKS[@]}"; do
  passes "$(check "$line")" && continue
  pkg=$(package "$line")
  echo "test.sh: installing $pkg (pip)"
  # A Debian python3 is "externally managed"; a pyenv or venv python3 is not.
  python3 -m pip install -q "$pkg" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "$pkg"
done

# Every capability, checked again: a failed install stops here, naming what is missing.
failed=0
for line in "${CHECKS[@]}" "${PIP_CHECKS[@]}"; do
  if ! passes "$(check "$line")"; then
    echo "test.sh: still missing after install: \`$(check "$line")\` (package $(package "$line"))" >&2
    failed=1
  fi
done
[ $failed -eq 0 ] || exit 1

# The actors' modules depend on each other only in the direction of the mail.
python3 scripts/module-cycles.py actors/src

cargo build --release --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast
else
  cargo test --release --workspace --no-fail-fast
fi
