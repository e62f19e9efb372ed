#!/usr/bin/env bash
# Streaming benchmark (issue 16, part 4): peak RSS and time of `simulate
# --ratio 1.0:3.0:0.1 --out` and of `tune` (its defaults) against the trace
# length, on generated load-level traces of 40 layers, 128 experts, 8 GPUs
# (scripts/bench/gen_trace.py; 10k, 80k, 250k, 1M layer-steps), measured
# with /usr/bin/time -v. With BASE=path/to/an/older/llep-trace, the same
# commands at 80k layer-steps also run on that binary (today's, before
# streaming) for the comparison. LABEL names the binary in the CSV
# (default "streamed"). Each length also runs `report` on the results of
# `simulate --ratio 1.3 --out` (EP, LLEP at 1.3 and ideal: 3 rows per
# layer-step); with BASE set, the older binary's `report` runs at
# REPORT_BASE_STEPS steps (default 2000 25000; it needs about 9 GiB at
# 25000).
#
# COMMANDS picks what runs (default "simulate tune report"; e.g.
# COMMANDS=report for the report rows alone; "report-eplb" runs `report`
# on `simulate --policy ep,llep,eplb,eplb+llep,ideal --redundant 16 --ratio
# 1.3` results, which draw the policy comparison). The reports' inputs are
# kept in WORKDIR (r13-STEPS.parquet, e13-STEPS.parquet) and reused.
#
# Usage: scripts/bench/stream.sh [WORKDIR] [STEPS...]
#   WORKDIR: traces and outputs (default /tmp/llep-stream-bench)
#   STEPS:   steps of 40 layers per trace (default 250 2000 6250 25000)
# Writes reports/bench/stream.csv (one line per run) and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/llep-trace}
WORK=${1:-/tmp/llep-stream-bench}
shift || true
STEPS=("${@:-250 2000 6250 25000}")
# shellcheck disable=SC2206
STEPS=(${STEPS[*]})
mkdir -p "$WORK"
CSV=reports/bench/stream.csv
[ -f "$CSV" ] || echo "binary,command,layer_steps,peak_rss_kib,wall_s,user_s,sys_s,load_before,date" > "$CSV"

measure() { # label binary command-name layer-steps args...
  local label=$1 bin=$2 what=$3 ls=$4
  shift 4
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  /usr/bin/time -v "$bin" "$@" > "$WORK/$label-$what-$ls.out" 2> "$WORK/$label-$what-$ls.time"
  local rss wall user sys
  rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$WORK/$label-$what-$ls.time")
  wall=$(awk -F': ' '/Elapsed \(wall/ {print $2}' "$WORK/$label-$what-$ls.time" |
    awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  user=$(awk -F': ' '/User time/ {print $2}' "$WORK/$label-$what-$ls.time")
  sys=$(awk -F': ' '/System time/ {print $2}' "$WORK/$label-$what-$ls.time")
  echo "$label,$what,$ls,$rss,$wall,$user,$sys,$load,$(date -u +%FT%TZ)" | tee -a "$CSV"
}

COMMANDS=" ${COMMANDS:-simulate tune report} "
for s in "${STEPS[@]}"; do
  t="$WORK/t$s.parquet"
  [ -f "$t" ] || python3 scripts/bench/gen_trace.py --steps "$s" --layers 40 --out "$t"
  ls=$((s * 40))
  if [[ $COMMANDS == *" simulate "* ]]; then
    measure "${LABEL:-streamed}" "$BIN" simulate "$ls" simulate --trace "$t" --ratio 1.0:3.0:0.1 --out "$WORK/sim-$s.parquet"
    rm -f "$WORK/sim-$s.parquet"
  fi
  if [[ $COMMANDS == *" tune "* ]]; then
    measure "${LABEL:-streamed}" "$BIN" tune "$ls" tune --trace "$t"
  fi
  if [[ $COMMANDS == *" report "* ]]; then
    r="$WORK/r13-$s.parquet"
    [ -f "$r" ] || "$BIN" simulate --trace "$t" --ratio 1.3 --out "$r" > /dev/null
    measure "${LABEL:-streamed}" "$BIN" report "$ls" report "$r" --out "$WORK/rep-${LABEL:-streamed}-$s"
    if [ -n "${BASE:-}" ] && [[ " ${REPORT_BASE_STEPS:-2000 25000} " == *" $s "* ]]; then
      measure before "$BASE" report "$ls" report "$r" --out "$WORK/rep-base-$s"
    fi
  fi
  if [[ $COMMANDS == *" report-eplb "* ]]; then
    # the policy comparison's input: EP, LLEP at 1.3, EPLB and EPLB+LLEP
    # (R = 16), ideal: 5 rows per layer-step
    r="$WORK/e13-$s.parquet"
    [ -f "$r" ] || "$BIN" simulate -q --trace "$t" --policy ep,llep,eplb,eplb+llep,ideal --redundant 16 --ratio 1.3 --out "$r" > /dev/null
    measure "${LABEL:-streamed}" "$BIN" report-eplb "$ls" report "$r" --out "$WORK/rep-eplb-${LABEL:-streamed}-$s"
  fi
  if [ -n "${BASE:-}" ] && [ "$s" = 2000 ] && [[ $COMMANDS == *" simulate "* ]]; then
    measure before "$BASE" simulate "$ls" simulate --trace "$t" --ratio 1.0:3.0:0.1 --out "$WORK/sim-base-$s.parquet"
    measure before "$BASE" tune "$ls" tune --trace "$t"
    rm -f "$WORK/sim-base-$s.parquet"
  fi
done
