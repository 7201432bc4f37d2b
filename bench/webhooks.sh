#!/usr/bin/env bash
# Webhooks' cost on the hot path: smtp-source → switchyard → smtp-sink (kept connections),
# the same run three ways, RUNS times in turn, and the medians:
#   none  no [[webhook]];
#   down  one webhook (every record type) whose endpoint refuses connections throughout;
#   up    the same webhook to a live receiver (tests/py/webhook_receiver.py, verifying each
#         batch with the standardwebhooks library), which notes every record's lag from
#         its log timestamp to the arrival of its batch.
#
#   bench/webhooks.sh [MESSAGES] [RUNS]      defaults: 20000 3
#
# Reports each mode's end-to-end rate and its ratio to "none", the daemon's RSS after the
# run (down: also 5 s later, still failing), and the lag's p50/p99/max for "up".
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
. bench/switchyard.sh

N=${1:-20000}; RUNS=${2:-3}; S=20; L=5120
work=$(mktemp -d /var/tmp/switchyard-webhooks.XXXXXX)
sy_cleanup_on_exit "$work"
cargo build --release -q
python3 -c 'import standardwebhooks' 2>/dev/null || python3 -m pip install -q standardwebhooks 2>/dev/null ||
  python3 -m pip install -q --break-system-packages standardwebhooks
base=$((20000 + RANDOM % 10000))
sink_port=$((base + 3)); hook_port=$((base + 4)); dead_port=$((base + 5))
smtp-sink -u root 127.0.0.1:$sink_port 256 &
pids+=($!)
key="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
echo "$key" > "$work/keys.txt"

now() { date +%s.%N; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# run MODE RUN: prints "MODE rate rss_after rss_later"
run() {
  local mode=$1 dir="$work/$1-$2"
  mkdir -p "$dir"
  sy_port=$((base + 10 + $2 * 4)); sy_http=$((sy_port + 1))
  sy_config "$dir" "example.org=127.0.0.1:$sink_port"
  case $mode in
    down) url="http://127.0.0.1:$dead_port/events" ;;
    up) url="http://127.0.0.1:$hook_port/events" ;;
    *) url= ;;
  esac
  if [ -n "$url" ]; then
    printf '\n[[webhook]]\nname = "bench"\nurl = "%s"\nsecret_file = "%s"\n' \
      "$url" "$work/keys.txt" >> "$dir/switchyard.toml"
  fi
  sy_start "$dir"
  local start end
  start=$(now)
  smtp-source -d -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.org "127.0.0.1:$sy_port"
  until [ "$(sy_metric '^switchyard_delivery_total\{.*outcome="delivered"')" -ge "$N" ]; do sleep 0.05; done
  end=$(now)
  local rss_after rss_later
  rss_after=$(rss_kib "$sy_pid")
  rss_later=$rss_after
  if [ "$mode" = down ]; then sleep 5; rss_later=$(rss_kib "$sy_pid"); fi
  if [ "$mode" = up ]; then
    # Until every record (a Reception and a Delivery per message) has arrived.
    for _ in $(seq 600); do
      [ "$(wc -l < "$work/lag.txt")" -ge $((2 * N * $2)) ] && break
      sleep 0.05
    done
  fi
  kill "$sy_pid"; wait "$sy_pid" 2>/dev/null || true; sy_pid=
  echo "$mode $(echo "$N / ($end - $start)" | bc -l) $rss_after $rss_later"
}

python3 tests/py/webhook_receiver.py --listen "127.0.0.1:$hook_port" --secret "$key" \
  --out /dev/null --lag "$work/lag.txt" > "$work/receiver.out" &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/receiver.out" 2>/dev/null && break; sleep 0.05; done
: > "$work/lag.txt"
out="$work/results.txt"
for r in $(seq "$RUNS"); do
  for mode in none down up; do run "$mode" "$r" >> "$out"; done
done
python3 - "$out" "$work/lag.txt" "$N" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(mode, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == mode)
none = med("none", 1)
print(f"messages={sys.argv[3]} runs={len(rows) // 3} (20 sessions, 5 KiB, kept connections)")
for mode in ("none", "down", "up"):
    rates = [float(r[1]) for r in rows if r[0] == mode]
    line = f"{mode:5} {med(mode, 1):8.0f} msg/s  {med(mode, 1) / none * 100:6.1f} % of none  (runs: {', '.join(f'{x:.0f}' for x in rates)})  RSS after {med(mode, 2) / 1024:.0f} MiB"
    if mode == "down":
        line += f", 5 s later {med(mode, 3) / 1024:.0f} MiB"
    print(line)
lags = sorted(float(x) for x in open(sys.argv[2]) if x.strip())
if lags:
    q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
    print(f"up: lag from record timestamp to POST over {len(lags)} records: p50 {q(0.5):.3f} s, p99 {q(0.99):.3f} s, max {lags[-1]:.3f} s")
PY
