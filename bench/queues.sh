#!/usr/bin/env bash
# Scale benchmark of the delivery engine.
#
#   bench/queues.sh [QUEUES_T QUEUES_C QUEUES_D] [MESSAGES]   defaults: 100 10 100 1000000
#
# 1. T x C x D distinct scheduled queues (tenant x campaign x domain), one message each,
#    routed to a held sink (accepts TCP, never answers): RSS per live queue. Then restart
#    against an accepting sink with reap_after = 5s: everything is delivered, the queues
#    reap themselves; RSS per queue after reaping.
# 2. MESSAGES queued 5 KiB messages (smtp-source, 20 sessions) for the held sink: RSS; then
#    SIGKILL and restart: time until every message is back in its queue, and RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
. bench/switchyard.sh
T=${1:-100}; C=${2:-10}; D=${3:-100}; M=${4:-1000000}
Q=$((T * C * D))
work=$(mktemp -d /var/tmp/switchyard-queues.XXXXXX)
base=$((20000 + RANDOM % 10000))
sy_port=$base; sy_http=$((base + 1)); held_port=$((base + 2)); sink_port=$((base + 3))
sy_cleanup_on_exit "$work"
cargo build --release -q

python3 bench/held_sink.py "$held_port" >/dev/null & pids+=($!)
smtp-sink -u root 127.0.0.1:$sink_port 256 & pids+=($!)
sleep 0.5

config() {  # config ROUTE_PORT REAP_AFTER DATA_DIR
  {
    echo "hostname = \"switchyard.bench.test\""
    echo "data_dir = \"$3\""
    echo "[smtp]"; echo "listen = [\"127.0.0.1:$sy_port\"]"
    echo "[http]"; echo "listen = \"127.0.0.1:$sy_http\""
    echo "[queue]"; echo "reap_after = \"$2\""
    echo "[dns]"; echo "nameservers = [\"127.0.0.1:9\"]"
    echo "[routes]"
    for d in $(seq 0 $((D - 1))); do echo "\"d$d.bench.test\" = \"127.0.0.1:$1\""; done
    echo "\"example.org\" = \"127.0.0.1:$1\""
  } > "$work/switchyard.toml"
}
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$sy_pid/status"; }
metric() { curl -s "127.0.0.1:$sy_http/metrics" | awk -v m="$1" '$1 ~ m {s+=$2} END{printf "%d\n", s}'; }
now() { date +%s.%N; }
recovered_after() {  # seconds from $1 until the log says the spool is recovered
  until grep -q "spool recovered" "$work/switchyard.log"; do sleep 0.05; done
  echo "$(now) - $1" | bc -l
}

# --- 1. many queues ---
config "$held_port" "5s" "$work/q"
sy_start "$work"
sleep 1
base_rss=$(rss_kib)
python3 bench/inject_queues.py "$sy_port" "$T" "$C" "$D" 4
sleep 2
live_rss=$(rss_kib)
live_queues=$(metric '^switchyard_scheduled_queues')
kill -9 "$sy_pid"; wait "$sy_pid" 2>/dev/null || true
config "$sink_port" "5s" "$work/q"
: > "$work/switchyard.log"
sy_start "$work"
until [ "$(metric '^switchyard_delivery_total[{].*outcome="delivered"')" -ge "$Q" ]; do sleep 0.2; done
delivered_rss=$(rss_kib)
sleep 12   # reap_after = 5s, checked every 1.25 s
reaped_rss=$(rss_kib)
left_queues=$(metric '^switchyard_scheduled_queues')
kill "$sy_pid"; wait "$sy_pid" 2>/dev/null || true
printf 'queues: %s distinct tenant x campaign x domain queues (%s live with a held message)\n' "$Q" "$live_queues"
printf '  RSS empty daemon %s KiB; with %s live queues %s KiB => %.0f bytes per live queue\n' \
  "$base_rss" "$Q" "$live_rss" "$(echo "($live_rss - $base_rss) * 1024 / $Q" | bc -l)"
printf '  after delivering all (restart, accepting sink) %s KiB; after reaping (%s queues left) %s KiB => %.0f bytes per reaped queue\n' \
  "$delivered_rss" "$left_queues" "$reaped_rss" "$(echo "($reaped_rss - $base_rss) * 1024 / $Q" | bc -l)"

# --- 2. a million queued messages ---
[ "$M" -gt 0 ] || exit 0
config "$held_port" "5m" "$work/m"
: > "$work/switchyard.log"
sy_start "$work"
t0=$(now)
smtp-source -d -s 20 -m "$M" -l 5120 -f bench@example.com -t rcpt@example.org "127.0.0.1:$sy_port"
inject_s=$(echo "$(now) - $t0" | bc -l)
sleep 2
queued=$(metric '^switchyard_spool_messages$')
queued_rss=$(rss_kib)
kill -9 "$sy_pid"; wait "$sy_pid" 2>/dev/null || true
: > "$work/switchyard.log"
t0=$(now)
sy_start "$work"
recovery_s=$(recovered_after "$t0")
sleep 1
recovered_rss=$(rss_kib)
printf 'messages: %s queued 5 KiB messages (injected in %.1f s), spool holds %s\n' "$M" "$inject_s" "$queued"
printf '  RSS while queued %s KiB (%.0f MiB); after SIGKILL + restart: recovered in %.1f s, RSS %s KiB (%.0f MiB)\n' \
  "$queued_rss" "$(echo "$queued_rss / 1024" | bc -l)" "$recovery_s" "$recovered_rss" "$(echo "$recovered_rss / 1024" | bc -l)"
