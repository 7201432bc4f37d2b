#!/usr/bin/env bash
# Soak: MINUTES (default 10) of steady injection at RATE msg/s (default 100) against
# `switchyard sink` answering with random deferrals (10 %) and bounces (5 %); queues churn
# over 20 tenants x 5 campaigns x 50 domains. Every second: RSS, open fds, spool size on
# disk, spooled messages, live scheduled queues. Written to bench/results/soak.csv, plotted
# to bench/results/soak.png (matplotlib, installed with pip if missing), and summed up:
# the steady level (minutes 3-4) against the last minute.
#
#   bench/soak.sh [MINUTES] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/switchyard.sh
minutes=${1:-10}; rate=${2:-100}
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib 2>/dev/null \
  || pip install -q --break-system-packages matplotlib
work=$(mktemp -d /var/tmp/switchyard-soak.XXXXXX)
base=$((20000 + RANDOM % 10000))
sy_port=$base; sy_http=$((base + 1)); sink_port=$((base + 2))
sy_cleanup_on_exit "$work"
cargo build --release -q

cat > "$work/responses.toml" <<TOML
[default]
bounce = 5
defer = 10
TOML
target/release/switchyard sink --listen "127.0.0.1:$sink_port" --responses "$work/responses.toml" \
  2>"$work/sink.log" & pids+=($!)
routes=()
for d in $(seq 0 49); do routes+=("d$d.soak.test=127.0.0.1:$sink_port"); done
sy_config "$work" "${routes[@]}"
printf '[queue]\nreap_after = "30s"\nretry_interval = "20s"\nmax_retry_interval = "1m"\nmax_age = "3m"\n' \
  >> "$work/switchyard.toml"
sy_start "$work"

python3 - "$sy_port" "$rate" "$((minutes * 60))" > "$work/inject.log" 2>&1 <<'PY' & pids+=($!)
import smtplib, sys, time
port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
body = "Subject: soak\r\n\r\n" + ("x" * 70 + "\r\n") * 30
start, n, errors = time.monotonic(), 0, 0
s = None
while time.monotonic() - start < seconds and n < rate * seconds:
    due = start + n / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    try:
        if s is None:
            s = smtplib.SMTP("127.0.0.1", port, timeout=30)
            s.ehlo("soak.test")
        t, c, d = n % 20, (n // 20) % 5, (n // 100) % 50
        msg = f"X-Tenant: t{t}\r\nX-Campaign: c{c}\r\n{body}"
        s.sendmail("soak@sender.test", [f"u{n}@d{d}.soak.test"], msg)
    except Exception as e:
        errors += 1
        s = None
    n += 1
print(f"injected {n} ({errors} errors) in {time.monotonic() - start:.0f} s")
PY
inject_pid=${pids[-1]}

csv=bench/results/soak.csv
echo "seconds,rss_kib,fds,spool_bytes,spool_messages,scheduled_queues" > "$csv"
t0=$(date +%s)
while kill -0 "$inject_pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS:/{print $2}' "/proc/$sy_pid/status")
  fds=$(ls "/proc/$sy_pid/fd" | wc -l)
  spool=$(du -sb "$work/data/spool" | cut -f1)
  msgs=$(sy_metric '^switchyard_spool_messages ')
  queues=$(sy_metric '^switchyard_scheduled_queues ')
  echo "$(( $(date +%s) - t0 )),$rss,$fds,$spool,$msgs,$queues" >> "$csv"
  sleep 1
done
cat "$work/inject.log"

python3 - "$csv" bench/results/soak.png "$minutes" "$rate" <<'PY'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
t = [int(r["seconds"]) for r in rows]
series = [("rss_kib", "RSS (MiB)", 1 / 1024), ("fds", "open fds", 1),
          ("spool_bytes", "spool on disk (MiB)", 1 / 2**20),
          ("spool_messages", "spooled messages", 1), ("scheduled_queues", "live scheduled queues", 1)]
fig, axes = plt.subplots(len(series), 1, figsize=(9, 12), sharex=True)
for ax, (key, label, scale) in zip(axes, series):
    ax.plot(t, [float(r[key]) * scale for r in rows])
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
axes[-1].set_xlabel("seconds")
fig.suptitle(f"switchyard soak: {sys.argv[4]} msg/s for {sys.argv[3]} min, sink with 10 % deferrals, 5 % bounces")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=80)
def mean(key, lo, hi):
    v = [float(r[key]) for r in rows if lo <= int(r["seconds"]) < hi]
    return sum(v) / len(v) if v else float("nan")
end = t[-1]
for key, label, scale in series:
    steady, last = mean(key, 180, 240), mean(key, end - 60, end + 1)
    print(f"{label:>24}: minutes 3-4 {steady * scale:10.1f}   last minute {last * scale:10.1f}   "
          f"change {100 * (last - steady) / steady if steady else 0:+6.1f} %   max {max(float(r[key]) for r in rows) * scale:10.1f}")
PY
echo "plot: bench/results/soak.png, samples: $csv"
