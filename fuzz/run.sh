#!/usr/bin/env bash
# Fuzz every target (or those named) for MINUTES each (default 10), one after another.
#
#   fuzz/run.sh [-m MINUTES] [TARGET...]
#
# cargo-fuzz (libFuzzer) is installed if missing; it wants nightly flags, which
# RUSTC_BOOTSTRAP=1 allows on the stable toolchain. The corpus is fuzz/corpus/<target>/ (kept
# in the repo, minimised afterwards with `cargo fuzz cmin`); KumoMTA's shaping files from
# ../shared/data are extra seeds for the shaping and config targets when present. A crash is
# copied to fuzz/regressions/<target>/, which tests/fuzzing.rs replays on every test run.
# A summary line per target (runs, seconds, corpus size, crashes) goes to stdout and to
# fuzz/results.txt.
set -uo pipefail
cd "$(dirname "$0")"
minutes=10
if [ "${1:-}" = "-m" ]; then minutes=$2; shift 2; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(smtp_command data_reader outbound_reply config shaping mta_sts_policy)
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -s none -a -O || exit 1
shared=../../shared/data/kumomta
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "regressions/$t"
  extra=()
  if [ "$t" = shaping ] || [ "$t" = config ]; then
    if [ -d "$shared" ]; then
      mkdir -p "/tmp/switchyard-fuzz-seeds-$t"
      find "$shared" -name '*.toml' -exec cp {} "/tmp/switchyard-fuzz-seeds-$t/" \;
      extra=("/tmp/switchyard-fuzz-seeds-$t")
    else
      echo "note: $shared absent, fuzzing $t without KumoMTA's files as seeds"
    fi
  fi
  # Crashes of earlier runs are kept in regressions/ already; count only this run's.
  for c in artifacts/"$t"/crash-* artifacts/"$t"/timeout-* artifacts/"$t"/oom-*; do
    [ -e "$c" ] && cp "$c" "regressions/$t/" && rm "$c"
  done
  log="artifacts/$t/fuzz.log"
  start=$(date +%s)
  cargo fuzz run -s none -a -O "$t" "corpus/$t" "${extra[@]}" -- \
    -max_total_time=$((minutes * 60)) -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  crashes=0
  for c in artifacts/"$t"/crash-* artifacts/"$t"/timeout-* artifacts/"$t"/oom-*; do
    [ -e "$c" ] || continue
    cp "$c" "regressions/$t/"
    crashes=$((crashes + 1))
  done
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cargo fuzz cmin -s none -a -O "$t" "corpus/$t" >/dev/null 2>&1
  line="$(date -u +%F) $t: ${secs}s, ${runs:-?} runs, corpus $(ls "corpus/$t" | wc -l) files, exit $rc, crashes $crashes"
  echo "$line" | tee -a results.txt
done
