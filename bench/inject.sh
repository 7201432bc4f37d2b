#!/usr/bin/env bash
# Injection benchmark: Postfix's smtp-source against switchyard and against Postfix's smtpd
# (queueing only: defer_transports = smtp), same machine, same run, same disk.
#
#   bench/inject.sh [MESSAGES] [SESSIONS] [BYTES]     defaults: 20000 20 5120
#
# Both fsync a message before its 250. Prints msg/s of each and the ratio, for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
. bench/postfix.sh

N=${1:-20000}; S=${2:-20}; L=${3:-5120}
work=$(mktemp -d /var/tmp/switchyard-bench.XXXXXX)
chmod 755 "$work"  # Postfix runs as user postfix and must reach its queue
sy_port=$((20000 + RANDOM % 10000)); sy_http=$((sy_port + 1)); pf_port=$((sy_port + 2))
cleanup() {
  [ -n "${sy_pid:-}" ] && kill "$sy_pid" 2>/dev/null || true
  postfix_stop "$work/postfix"
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q
cat > "$work/switchyard.toml" <<CONF
hostname = "switchyard.bench.test"
data_dir = "$work/switchyard-data"
[smtp]
listen = ["127.0.0.1:$sy_port"]
[http]
listen = "127.0.0.1:$sy_http"
CONF
target/release/switchyard serve --config "$work/switchyard.toml" 2>"$work/switchyard.log" &
sy_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$sy_port) 2>/dev/null && break; sleep 0.1; done

postfix_start "$work/postfix" "$pf_port" "defer_transports = smtp"

# Returns messages per second; -d keeps each session's connection for many messages, as an
# ESP's injector does.
run_source() {
  local port=$1 start end
  start=$(date +%s.%N)
  smtp-source -d -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$port"
  end=$(date +%s.%N)
  echo "$N / ($end - $start)" | bc -l
}

sy_rate=$(run_source "$sy_port")
pf_rate=$(run_source "$pf_port")
spooled=$(curl -s "127.0.0.1:$sy_http/metrics" | awk '/^switchyard_spool_messages /{print $2}')
pf_queued=$(find "$work/postfix/spool/deferred" "$work/postfix/spool/active" "$work/postfix/spool/incoming" -type f 2>/dev/null | wc -l)

printf 'messages=%s sessions=%s bytes=%s\n' "$N" "$S" "$L"
printf 'switchyard: %.0f msg/s (spool holds %s)\n' "$sy_rate" "$spooled"
printf 'postfix:    %.0f msg/s (queue holds %s)\n' "$pf_rate" "$pf_queued"
printf 'ratio:      %.2fx\n' "$(echo "$sy_rate / $pf_rate" | bc -l)"
