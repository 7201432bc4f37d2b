#!/usr/bin/env bash
# Isolation: does one tenant's held mail, or one stuck site's queue, slow everyone else?
#
#   bench/isolation.sh [MESSAGES] [HELD] [STUCK]     defaults: 20000 10000 100000
#
# The same relay — smtp-source -d, 20 sessions, MESSAGES x 5 KiB of the default tenant to
# example.org, relayed to Postfix's smtp-sink — on a fresh daemon three times:
#   1. alone (the baseline);
#   2. with HELD messages of four other tenants queued while those tenants are suspended
#      (POST /api/v1/suspensions, then injected with tests/py/smtp_client.py);
#   3. with STUCK messages queued for stuck.test, whose MX accepts TCP and never answers
#      (bench/held_sink.py), so they stay in their scheduled and ready queues.
# Each measured relay starts after SETTLE seconds of quiet (default 10), so the queued mail
# is a steady state (the spool's background flushes of what was just written are done), as
# a stuck site or a long suspension is in production.
# Reports each run's injection and end-to-end rates and their ratio to the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
. bench/switchyard.sh
N=${1:-20000}; HELD=${2:-10000}; STUCK=${3:-100000}
work=$(mktemp -d /var/tmp/switchyard-isolation.XXXXXX)
base=$((20000 + RANDOM % 10000))
sy_port=$base; sy_http=$((base + 1)); sink_port=$((base + 2)); held_port=$((base + 3))
sy_cleanup_on_exit "$work"
cargo build --release -q
smtp-sink -u root 127.0.0.1:$sink_port 256 & pids+=($!)
python3 bench/held_sink.py "$held_port" >/dev/null & pids+=($!)
sleep 0.5

now() { date +%s.%N; }
start() {  # a fresh daemon and spool
  [ -n "${sy_pid:-}" ] && { kill "$sy_pid"; wait "$sy_pid" 2>/dev/null || true; }
  rm -rf "$work/data"
  sy_config "$work" "example.org=127.0.0.1:$sink_port" "held.test=127.0.0.1:$sink_port" \
    "stuck.test=127.0.0.1:$held_port"
  sy_start "$work"
}
relay() {  # relay LABEL: the measured run; prints "LABEL inject e2e"
  sleep "${SETTLE:-10}"
  local before; before=$(sy_metric '^switchyard_delivery_total\{.*outcome="delivered"')
  local t0; t0=$(now)
  smtp-source -d -s 20 -m "$N" -l 5120 -f bench@example.com -t rcpt@example.org "127.0.0.1:$sy_port"
  local t1; t1=$(now)
  until [ "$(sy_metric '^switchyard_delivery_total\{.*outcome="delivered"')" -ge $((before + N)) ]; do sleep 0.02; done
  local t2; t2=$(now)
  printf '%s %.0f %.0f\n' "$1" "$(echo "$N / ($t1 - $t0)" | bc -l)" "$(echo "$N / ($t2 - $t0)" | bc -l)"
}

start
relay baseline > "$work/results"

start
for t in 0 1 2 3; do
  curl -s -o /dev/null -X POST "127.0.0.1:$sy_http/api/v1/suspensions" \
    -d "{\"tenant\":\"held$t\",\"duration\":\"1h\",\"reason\":\"bench\"}"
done
python3 tests/py/smtp_client.py inject 127.0.0.1 "$sy_port" --count "$HELD" --threads 4 \
  --tenant-prefix held --rcpt u@held.test --size 5000 --out "$work/held-acks" >/dev/null
held_queued=$(sy_metric '^switchyard_scheduled_messages\{tenant="held')
relay "held=$held_queued" >> "$work/results"

start
smtp-source -d -s 20 -m "$STUCK" -l 5120 -f bench@example.com -t rcpt@stuck.test "127.0.0.1:$sy_port"
stuck_queued=$(sy_metric '^switchyard_scheduled_messages\{.*domain="stuck.test"')
relay "stuck=$stuck_queued" >> "$work/results"

awk 'NR==1 {bi=$2; be=$3}
     {printf "%-14s injection %6d msg/s (%5.1f%% of baseline)  end to end %6d msg/s (%5.1f%%)\n", $1, $2, 100*$2/bi, $3, 100*$3/be}' "$work/results"
