#!/usr/bin/env bash
# End-to-end relay benchmark: smtp-source → MTA → smtp-sink, for switchyard and for Postfix,
# same machine, same run, same sink program.
#
#   bench/relay.sh [MESSAGES] [SESSIONS] [BYTES]     defaults: 20000 20 5120
#
# The clock runs from the first injected message until the MTA has handed the last one to
# the sink (switchyard: switchyard_delivery_total{outcome="delivered"}; Postfix: its queue
# is empty again). Both fsync each message before accepting it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
. bench/postfix.sh

N=${1:-20000}; S=${2:-20}; L=${3:-5120}
work=$(mktemp -d /var/tmp/switchyard-relay.XXXXXX)
chmod 755 "$work"  # Postfix runs as user postfix and must reach its queue
base=$((20000 + RANDOM % 10000))
sy_port=$base; sy_http=$((base + 1)); pf_port=$((base + 2)); sink_port=$((base + 3))
cleanup() {
  [ -n "${sy_pid:-}" ] && kill "$sy_pid" 2>/dev/null || true
  [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
  postfix_stop "$work/postfix"
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q
smtp-sink -u root 127.0.0.1:$sink_port 256 &
sink_pid=$!

cat > "$work/switchyard.toml" <<CONF
hostname = "switchyard.bench.test"
data_dir = "$work/switchyard-data"
[smtp]
listen = ["127.0.0.1:$sy_port"]
[http]
listen = "127.0.0.1:$sy_http"
[routes]
"example.org" = "127.0.0.1:$sink_port"
CONF
target/release/switchyard serve --config "$work/switchyard.toml" 2>"$work/switchyard.log" &
sy_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$sy_port) 2>/dev/null && break; sleep 0.1; done

postfix_start "$work/postfix" "$pf_port" "relayhost = [127.0.0.1]:$sink_port" "smtp_tls_security_level = none"

now() { date +%s.%N; }

sy_delivered() {
  curl -s "127.0.0.1:$sy_http/metrics" | awk '/^switchyard_delivery_total\{.*outcome="delivered"/{s+=$2} END{print s+0}'
}
pf_queued() {
  find "$work/postfix/spool/incoming" "$work/postfix/spool/active" "$work/postfix/spool/deferred" \
       "$work/postfix/spool/maildrop" -type f 2>/dev/null | wc -l
}

start=$(now)
smtp-source -d -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$sy_port"
injected=$(now)
until [ "$(sy_delivered)" -ge "$N" ]; do sleep 0.05; done
sy_end=$(now)
sy_rate=$(echo "$N / ($sy_end - $start)" | bc -l)
sy_inject=$(echo "$N / ($injected - $start)" | bc -l)

start=$(now)
smtp-source -d -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$pf_port"
injected=$(now)
sleep 0.5
until [ "$(pf_queued)" -eq 0 ]; do sleep 0.05; done
pf_end=$(now)
pf_rate=$(echo "$N / ($pf_end - $start)" | bc -l)
pf_inject=$(echo "$N / ($injected - $start)" | bc -l)
pf_deferred=$(grep -c "status=deferred" "$work/postfix/maillog" || true)
sy_other=$(curl -s "127.0.0.1:$sy_http/metrics" | awk '/^switchyard_delivery_total\{.*outcome="(transient|bounced)"/{s+=$2} END{print s+0}')

printf 'messages=%s sessions=%s bytes=%s\n' "$N" "$S" "$L"
printf 'switchyard: %.0f msg/s end to end (injection alone %.0f msg/s; %s deferred/bounced)\n' "$sy_rate" "$sy_inject" "$sy_other"
printf 'postfix:    %.0f msg/s end to end (injection alone %.0f msg/s; %s deferred)\n' "$pf_rate" "$pf_inject" "$pf_deferred"
printf 'ratio:      %.2fx\n' "$(echo "$sy_rate / $pf_rate" | bc -l)"
