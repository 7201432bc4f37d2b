#!/usr/bin/env bash
# End-to-end relay benchmark: smtp-source → MTA → smtp-sink, for switchyard and for Postfix,
# same machine, same run, same sink program.
#
#   bench/relay.sh [MESSAGES] [SESSIONS] [BYTES]     defaults: 20000 20 5120
#   RECONNECT=1 bench/relay.sh ...   a new connection per message (as many injecting
#                                    applications do) instead of smtp-source -d
#   PROFILE=FILE bench/relay.sh ...  perf record -g of the switchyard daemon's run
#   DKIM=1 bench/relay.sh ...        both MTAs sign every message with one RSA-2048 key:
#                                    switchyard's [[dkim]], Postfix through the OpenDKIM
#                                    milter (Debian's opendkim), relaxed/relaxed
#
# The clock runs from the first injected message until the MTA has handed the last one to
# the sink (switchyard: switchyard_delivery_total{outcome="delivered"}; Postfix: its queue
# is empty again). Both fsync each message before accepting it. CPU: user+system seconds of
# the MTA's own processes (switchyard's daemon; Postfix's master, its children and what
# they left behind) per 1,000 messages.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
. bench/postfix.sh
. bench/switchyard.sh

N=${1:-20000}; S=${2:-20}; L=${3:-5120}
keep=-d
[ "${RECONNECT:-0}" = 1 ] && keep=
tick=$(getconf CLK_TCK)
# user+system clock ticks of one process (with its reaped children when $2 = all).
ticks() { awk -v all="${2:-}" '{ t = $14 + $15; if (all) t += $16 + $17; print t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
pf_ticks() {
  local master; master=$(head -1 "$work/postfix/spool/pid/master.pid" 2>/dev/null | tr -d ' ')
  [ -n "$master" ] || { echo 0; return; }
  local total; total=$(ticks "$master" all)
  for child in $(pgrep -P "$master"); do total=$((total + $(ticks "$child"))); done
  # The OpenDKIM milter signs for Postfix: its CPU is Postfix's signing cost.
  [ -n "${dkim_pid:-}" ] && total=$((total + $(ticks "$dkim_pid")))
  echo "$total"
}
work=$(mktemp -d /var/tmp/switchyard-relay.XXXXXX)
chmod 755 "$work"  # Postfix runs as user postfix and must reach its queue
base=$((20000 + RANDOM % 10000))
sy_port=$base; sy_http=$((base + 1)); pf_port=$((base + 2)); sink_port=$((base + 3))
cleanup() {
  [ -n "${sy_pid:-}" ] && kill "$sy_pid" 2>/dev/null || true
  [ -n "${dkim_pid:-}" ] && kill "$dkim_pid" 2>/dev/null || true
  [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
  postfix_stop "$work/postfix"
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q
smtp-sink -u root 127.0.0.1:$sink_port 256 &
sink_pid=$!

sy_config "$work" "example.org=127.0.0.1:$sink_port"
pf_extra=()
if [ "${DKIM:-0}" = 1 ]; then
  # smtp-source writes "From: <bench@example.com>": one key signs for example.com at both.
  target/release/switchyard dkim-keygen --domain example.com --selector bench \
    --algorithm rsa2048 --out "$work/dkim.pem" >/dev/null
  printf '\n[[dkim]]\ndomain = "example.com"\nselector = "bench"\nkey_file = "%s"\n' \
    "$work/dkim.pem" >> "$work/switchyard.toml"
  milter_port=$((base + 4))
  cat > "$work/opendkim.conf" <<OPENDKIM
Mode s
Domain example.com
Selector bench
KeyFile $work/dkim.pem
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
Socket inet:$milter_port@127.0.0.1
InternalHosts 127.0.0.1
Syslog no
RequireSafeKeys false
OPENDKIM
  /usr/sbin/opendkim -x "$work/opendkim.conf" -f -l &
  dkim_pid=$!
  pf_extra=("smtpd_milters = inet:127.0.0.1:$milter_port" "milter_default_action = tempfail")
fi
sy_start "$work"

postfix_start "$work/postfix" "$pf_port" "relayhost = [127.0.0.1]:$sink_port" "smtp_tls_security_level = none" "${pf_extra[@]}"

now() { date +%s.%N; }

sy_delivered() { sy_metric '^switchyard_delivery_total\{.*outcome="delivered"'; }

if [ -n "${PROFILE:-}" ]; then
  perf record -g -o "$PROFILE" -p "$sy_pid" 2>/dev/null &
  perf_pid=$!
fi
cpu0=$(ticks "$sy_pid")
start=$(now)
smtp-source $keep -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$sy_port"
injected=$(now)
until [ "$(sy_delivered)" -ge "$N" ]; do sleep 0.05; done
sy_end=$(now)
sy_cpu=$(echo "($(ticks "$sy_pid") - $cpu0) / $tick * 1000 / $N" | bc -l)
if [ -n "${perf_pid:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
sy_rate=$(echo "$N / ($sy_end - $start)" | bc -l)
sy_inject=$(echo "$N / ($injected - $start)" | bc -l)

cpu0=$(pf_ticks)
start=$(now)
smtp-source $keep -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$pf_port"
injected=$(now)
sleep 0.5
until [ "$(postfix_queued "$work/postfix")" -eq 0 ]; do sleep 0.05; done
pf_end=$(now)
pf_cpu=$(echo "($(pf_ticks) - $cpu0) / $tick * 1000 / $N" | bc -l)
pf_rate=$(echo "$N / ($pf_end - $start)" | bc -l)
pf_inject=$(echo "$N / ($injected - $start)" | bc -l)
pf_deferred=$(grep -c "status=deferred" "$work/postfix/maillog" || true)
sy_other=$(curl -s "127.0.0.1:$sy_http/metrics" | awk '/^switchyard_delivery_total\{.*outcome="(transient|bounced)"/{s+=$2} END{print s+0}')

printf 'messages=%s sessions=%s bytes=%s connections=%s dkim=%s\n' "$N" "$S" "$L" "$([ -n "$keep" ] && echo kept || echo per-message)" "$([ "${DKIM:-0}" = 1 ] && echo rsa2048 || echo off)"
printf 'switchyard: %.0f msg/s end to end (injection alone %.0f msg/s; %s deferred/bounced); %.3f CPU s per 1000\n' "$sy_rate" "$sy_inject" "$sy_other" "$sy_cpu"
printf 'postfix:    %.0f msg/s end to end (injection alone %.0f msg/s; %s deferred); %.3f CPU s per 1000\n' "$pf_rate" "$pf_inject" "$pf_deferred" "$pf_cpu"
printf 'ratio:      %.2fx (CPU per message: postfix/switchyard %.1fx)\n' "$(echo "$sy_rate / $pf_rate" | bc -l)" "$(echo "$pf_cpu / $sy_cpu" | bc -l)"
