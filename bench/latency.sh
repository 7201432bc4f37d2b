#!/usr/bin/env bash
# Injection latency at half the peak rate: switchyard_injection_seconds (DATA to the 250
# after the fsync) while smtp-source keeps the rate near half of what 20 sessions reach.
#
#   bench/latency.sh [MESSAGES]      default 20000
#
# 1. Peak: smtp-source -d -s 20 -m MESSAGES -l 5120 into switchyard (relaying to
#    smtp-sink): the injection rate P.
# 2. Fewer sessions, one more each time, until a run injects at least P/2; that run's
#    latency histogram (the difference of /metrics before and after) gives p50 and p99.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
. bench/switchyard.sh
N=${1:-20000}
work=$(mktemp -d /var/tmp/switchyard-latency.XXXXXX)
base=$((20000 + RANDOM % 10000))
sy_port=$base; sy_http=$((base + 1)); sink_port=$((base + 2))
cleanup() {
  [ -n "${sy_pid:-}" ] && kill "$sy_pid" 2>/dev/null || true
  [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q
smtp-sink -u root 127.0.0.1:$sink_port 256 & sink_pid=$!
sy_config "$work" "example.org=127.0.0.1:$sink_port"
sy_start "$work"

now() { date +%s.%N; }
buckets() { curl -s "127.0.0.1:$sy_http/metrics" | grep '^switchyard_injection_seconds_bucket' > "$1"; }
run() {  # run SESSIONS: injection rate
  local t0; t0=$(now)
  smtp-source -d -s "$1" -m "$N" -l 5120 -f bench@example.com -t rcpt@example.org "127.0.0.1:$sy_port"
  echo "$N / ($(now) - $t0)" | bc -l
}
quantiles() {  # quantiles BEFORE AFTER: p50 and p99 of the runs in between
  python3 - "$1" "$2" <<'PY'
import re, sys
def read(p):
    out = {}
    for line in open(p):
        m = re.search(r'le="([^"]+)"\} (\S+)', line)
        if m:
            out[float("inf") if m.group(1) == "+Inf" else float(m.group(1))] = float(m.group(2))
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
les = sorted(b)
cum = [(le, b[le] - a.get(le, 0)) for le in les]
total = cum[-1][1]
def q(p):
    prev_le, prev_n = 0.0, 0.0
    for le, n in cum:
        if n >= p * total:
            if le == float("inf"):
                return prev_le
            frac = (p * total - prev_n) / max(n - prev_n, 1)
            return prev_le + frac * (le - prev_le)
        prev_le, prev_n = le, n
print(f"p50 {q(0.5)*1000:.2f} ms, p99 {q(0.99)*1000:.2f} ms (of {total:.0f}; "
      f"{100*dict(cum)[0.01]/total:.2f}% within 10 ms)")
PY
}

peak=$(run 20)
printf 'peak with 20 sessions: %.0f msg/s\n' "$peak"
for s in $(seq 1 19); do
  buckets "$work/before"
  rate=$(run "$s")
  buckets "$work/after"
  if [ "$(echo "$rate >= $peak / 2" | bc -l)" = 1 ]; then
    printf 'half the peak: %d sessions, %.0f msg/s: %s\n' "$s" "$rate" "$(quantiles "$work/before" "$work/after")"
    exit 0
  fi
done
echo "no session count reached half the peak" >&2
exit 1
