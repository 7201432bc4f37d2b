#!/usr/bin/env bash
# The hot-path figures of BENCHMARKS.md: bench/relay.sh three times in each mode, switchyard
# and Postfix in the same run each time, and the medians.
#
#   bench/hotpath.sh [RUNS]      default 3
#   DKIM=1 bench/hotpath.sh      instead: 10,000 x 5 KiB, kept connections, both MTAs
#                                signing with one RSA-2048 key (Postfix with OpenDKIM)
#
# Modes: 20,000 x 5 KiB with kept connections (smtp-source -d); the same with a new
# connection per message; 2,000 x 100 KiB with kept connections. Each line reports the
# median end-to-end rates, their ratio, and the median CPU seconds per 1,000 messages.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
mode() {  # mode LABEL ENV ARGS...
  local label=$1 env=$2; shift 2
  for _ in $(seq "$runs"); do
    env $env bench/relay.sh "$@" | awk -v l="$label" '
      /^switchyard:/ {sy=$2; syc=$(NF-4)} /^postfix:/ {pf=$2; pfc=$(NF-4)}
      END {print l, sy, pf, syc, pfc}' >> "$out"
  done
}
if [ "${DKIM:-0}" = 1 ]; then
  # Both MTAs sign every message with one RSA-2048 key (Postfix through OpenDKIM);
  # Postfix then relays ~200 msg/s, so fewer messages keep a run near a minute.
  mode "5KiB-kept-dkim" "DKIM=1" 10000 20 5120
else
  mode "5KiB-kept" "RECONNECT=0" 20000 20 5120
  mode "5KiB-reconnect" "RECONNECT=1" 20000 20 5120
  mode "100KiB-kept" "RECONNECT=0" 2000 20 102400
fi
python3 - "$out" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for label in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == label]
    sy = [float(r[1]) for r in rs]; pf = [float(r[2]) for r in rs]
    ratios = [a / b for a, b in zip(sy, pf)]
    syc = [float(r[3]) for r in rs]; pfc = [float(r[4]) for r in rs]
    print(f"{label:15} switchyard {statistics.median(sy):7.0f} msg/s  postfix {statistics.median(pf):5.0f} msg/s"
          f"  ratio {statistics.median(ratios):5.2f}x (runs: {', '.join(f'{x:.2f}' for x in ratios)})"
          f"  CPU s/1000: switchyard {statistics.median(syc):.3f}, postfix {statistics.median(pfc):.3f}")
PY
