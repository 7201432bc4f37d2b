#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests drive (real SMTP clients
# and servers, DNS, Prometheus) when missing, then builds once in release and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

apt_missing=()
command -v swaks >/dev/null || apt_missing+=(swaks)
command -v smtp-source >/dev/null || apt_missing+=(postfix)
command -v dnsmasq >/dev/null || apt_missing+=(dnsmasq)
{ command -v promtool && command -v prometheus; } >/dev/null || apt_missing+=(prometheus)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix only lends its smtp-source/smtp-sink tools (and, in bench/, a comparison smtpd):
  # no mail system is configured.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install -q aiosmtpd

cargo build --release --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast
else
  cargo test --release --workspace --no-fail-fast
fi
